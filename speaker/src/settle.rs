//! Which nodes announce each `externalTrafficPolicy: Local` Service over BGP, given when
//! each started serving it. The router sends flows to a new next hop within milliseconds of
//! the route, but the node's kube-proxy programs a new local endpoint only on its next sync
//! (at most once a second by default): a flow arriving in between finds no local endpoint
//! and is dropped. So a node newly ready waits `wait` before it announces, while the nodes
//! serving already do; if none of them is settled, the nodes whose terminating endpoints
//! still serve (a pod in its preStop delay) keep announcing meanwhile; with neither, the new
//! ones announce at once (nothing else would take the traffic). Withdrawals never wait.
//! Every speaker sees the same EndpointSlices at about the same time, so each reaches the
//! same sets and decides for its own node. Pure: the clock is an input.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::targets::LocalEndpoints;

/// When each node started serving each Local Service, remembered between passes.
#[derive(Debug)]
pub struct Settle {
    wait: Duration,
    /// Per Service (`namespace/name`), per node with a ready endpoint: since when.
    since: HashMap<String, HashMap<String, Instant>>,
    /// Whether a pass has run: what serves at the first one (after the caches synced) has
    /// served long enough, so a restarted speaker announces it at once.
    started: bool,
}

/// The nodes announcing each Local Service now, and when that may change by itself.
pub type Announcing<'a> = (BTreeMap<&'a str, BTreeSet<&'a str>>, Option<Instant>);

impl Settle {
    pub fn new(wait: Duration) -> Self {
        Self {
            wait,
            since: HashMap::new(),
            started: false,
        }
    }

    pub fn update<'a>(&mut self, now: Instant, local: LocalEndpoints<'_, 'a>) -> Announcing<'a> {
        let start = if self.started {
            now
        } else {
            now.checked_sub(self.wait).unwrap_or(now)
        };
        self.started = true;
        self.since.retain(|service, nodes| {
            let Some(ready) = local.ready.get(service.as_str()) else {
                return false;
            };
            nodes.retain(|node, _| ready.contains(node.as_str()));
            !nodes.is_empty()
        });
        let mut announcing = BTreeMap::new();
        let mut next: Option<Instant> = None;
        let services: BTreeSet<&'a str> = local
            .ready
            .keys()
            .chain(local.draining.keys())
            .copied()
            .collect();
        for service in services {
            let ready = local.ready.get(service);
            let mut settled = BTreeSet::new();
            // Every pass looks at every Local Service: names are copied only the first
            // time a node serves one.
            if let Some(ready) = ready.filter(|r| !r.is_empty()) {
                if !self.since.contains_key(service) {
                    self.since.insert(service.to_owned(), HashMap::new());
                }
                let Some(since) = self.since.get_mut(service) else {
                    continue;
                };
                for node in ready {
                    let at = match since.get(*node) {
                        Some(at) => *at,
                        None => {
                            since.insert((*node).to_owned(), start);
                            start
                        }
                    };
                    let until = at + self.wait;
                    if now >= until {
                        settled.insert(*node);
                    } else {
                        next = Some(next.map_or(until, |n| n.min(until)));
                    }
                }
            }
            let draining = local.draining.get(service).filter(|d| !d.is_empty());
            let nodes = match (settled.is_empty(), draining) {
                (false, _) => settled,
                (true, Some(draining)) => draining.clone(),
                (true, None) => ready.cloned().unwrap_or_default(),
            };
            announcing.insert(service, nodes);
        }
        (announcing, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Sets<'a> = BTreeMap<&'a str, BTreeSet<&'a str>>;

    fn sets<'a>(pairs: &[(&'a str, &[&'a str])]) -> Sets<'a> {
        pairs
            .iter()
            .map(|(s, nodes)| (*s, nodes.iter().copied().collect()))
            .collect()
    }

    fn announcing<'a>(
        settle: &mut Settle,
        now: Instant,
        ready: &Sets<'a>,
        draining: &Sets<'a>,
    ) -> (Vec<&'a str>, Option<Instant>) {
        let (a, next) = settle.update(now, LocalEndpoints { ready, draining });
        (
            a.get("shop/web").into_iter().flatten().copied().collect(),
            next,
        )
    }

    /// A rolling update of two pods: n1 and n2 serve; a new pod on n3 turns ready, the old
    /// one on n1 terminates, then the one on n2: at every step some node that can take the
    /// traffic announces, and a new node only once it has settled.
    #[test]
    fn a_rolling_update_always_leaves_a_node_able_to_serve_announcing() {
        let wait = Duration::from_secs(2);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut settle = Settle::new(wait);
        let none = Sets::new();
        // Serving at the first pass (a restarted speaker): announced at once.
        let both = sets(&[("shop/web", &["n1", "n2"])]);
        assert_eq!(announcing(&mut settle, at(0), &both, &none).0, ["n1", "n2"]);
        // A new pod on n3 turns ready: n3 waits.
        let three = sets(&[("shop/web", &["n1", "n2", "n3"])]);
        let (nodes, next) = announcing(&mut settle, at(10_000), &three, &none);
        assert_eq!(nodes, ["n1", "n2"]);
        assert_eq!(next, Some(at(12_000)));
        // n1's pod terminates: n1 withdraws, n2 still serves settled.
        let n2_n3 = sets(&[("shop/web", &["n2", "n3"])]);
        let n1 = sets(&[("shop/web", &["n1"])]);
        assert_eq!(announcing(&mut settle, at(10_500), &n2_n3, &n1).0, ["n2"]);
        // A new pod on n1 turns ready and n2's terminates before n3 has settled: the
        // terminating n2 (its preStop delay) keeps announcing rather than nobody or the new.
        let n1_n3 = sets(&[("shop/web", &["n1", "n3"])]);
        let n2 = sets(&[("shop/web", &["n2"])]);
        assert_eq!(announcing(&mut settle, at(11_000), &n1_n3, &n2).0, ["n2"]);
        // n3 settles: it takes over; n1 follows when it has.
        assert_eq!(announcing(&mut settle, at(12_000), &n1_n3, &n2).0, ["n3"]);
        assert_eq!(
            announcing(&mut settle, at(13_000), &n1_n3, &none).0,
            ["n1", "n3"]
        );
    }

    #[test]
    fn with_nothing_else_serving_a_new_node_announces_at_once() {
        let mut settle = Settle::new(Duration::from_secs(2));
        let t0 = Instant::now();
        let none = Sets::new();
        settle.update(
            t0,
            LocalEndpoints {
                ready: &none,
                draining: &none,
            },
        );
        let one = sets(&[("shop/web", &["n1"])]);
        let (nodes, next) = announcing(&mut settle, t0 + Duration::from_secs(5), &one, &none);
        assert_eq!(nodes, ["n1"], "scaled up from zero");
        assert!(next.is_some(), "it settles later all the same");
        // Gone and back: it waits again when another serves.
        let other = sets(&[("shop/web", &["n2"])]);
        let t1 = t0 + Duration::from_secs(60);
        announcing(&mut settle, t1, &other, &none);
        let both = sets(&[("shop/web", &["n1", "n2"])]);
        assert_eq!(
            announcing(&mut settle, t1 + Duration::from_secs(5), &both, &none).0,
            ["n2"]
        );
    }
}
