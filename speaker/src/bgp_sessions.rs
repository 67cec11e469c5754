//! The BGP sessions this node keeps: one task per peer (`herald_bgp::peer::run`), started,
//! told new routes, restarted with new settings and stopped as each pass's `bgp_plan`
//! decision says. Route changes reach the session at once (no debounce): the task sends the
//! UPDATEs as soon as it sees them. Thin: the decisions are `bgp_plan`'s.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_bgp::peer::{self, Peer, Status, Stop};
use herald_bgp::rib::Routes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use herald_runtime::Publisher;

use crate::bgp_plan::BgpDecision;
use crate::metrics::{BgpPeerLabels, BgpPrefixLabels, Metrics};
use crate::prose;

/// How long a stopping session may take to say Cease before the process goes on.
const STOP_GRACE: Duration = Duration::from_secs(1);

struct Running {
    peer: Peer,
    routes: watch::Sender<Routes>,
    stop: watch::Sender<Stop>,
    task: JoinHandle<()>,
}

pub struct Sessions {
    running: BTreeMap<String, Running>,
    metrics: Metrics,
    events: Publisher,
    node: String,
    /// What was said about peers refused and communities left out, so each is said once.
    said_refused: BTreeMap<String, String>,
    said_bad_communities: Vec<String>,
}

impl Sessions {
    pub fn new(metrics: Metrics, events: Publisher, node: &str) -> Self {
        Self {
            running: BTreeMap::new(),
            metrics,
            events,
            node: node.to_owned(),
            said_refused: BTreeMap::new(),
            said_bad_communities: Vec::new(),
        }
    }

    /// Makes the running sessions what `decision` says: new peers connect, peers gone or
    /// changed are closed with Cease (a changed one then connects anew), and every session
    /// is given its routes.
    /// `node_uid`: this node's Node, the subject of the Warnings about refused peers.
    pub fn apply(&mut self, decision: BgpDecision, node_uid: &str) {
        let BgpDecision {
            sessions,
            refused,
            waiting: _,
            bad_communities,
        } = decision;
        self.say(refused, bad_communities, node_uid);
        let gone: Vec<String> = self
            .running
            .iter()
            .filter(|(name, r)| sessions.get(*name).is_none_or(|plan| plan.peer != r.peer))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(r) = self.running.remove(&name) {
                tracing::info!(peer = %name, "closing the BGP session (peer removed or changed)");
                let _ = r.stop.send(Stop::Cease);
                self.forget_metrics(&name);
            }
        }
        for (name, plan) in sessions {
            match self.running.get(&name) {
                Some(r) => {
                    r.routes.send_if_modified(|old| {
                        let differs = *old != plan.routes;
                        if differs {
                            *old = plan.routes;
                        }
                        differs
                    });
                }
                None => {
                    let running = self.start(&name, plan.peer, plan.routes);
                    self.running.insert(name, running);
                }
            }
        }
    }

    fn start(&self, name: &str, peer: Peer, routes: Routes) -> Running {
        tracing::info!(peer = %name, address = %peer.address, "opening a BGP session");
        let (routes_tx, routes_rx) = watch::channel(routes);
        let (status_tx, status_rx) = watch::channel(Status::Connecting);
        let (stop_tx, stop_rx) = watch::channel(Stop::Run);
        let task = tokio::spawn(peer::run(peer.clone(), routes_rx, status_tx, stop_rx));
        tokio::spawn(report(name.to_owned(), status_rx, self.metrics.clone()));
        Running {
            peer,
            routes: routes_tx,
            stop: stop_tx,
            task,
        }
    }

    fn forget_metrics(&self, name: &str) {
        let peer = name.to_owned();
        self.metrics
            .bgp_session_up
            .remove(&BgpPeerLabels { peer: peer.clone() });
        for family in ["ipv4", "ipv6"] {
            self.metrics.bgp_prefixes.remove(&BgpPrefixLabels {
                peer: peer.clone(),
                family,
            });
        }
    }

    /// Says which peers this node cannot speak with (a log line and a Warning Event on its
    /// Node) and which communities are left out (a log line), each when it changes.
    fn say(
        &mut self,
        refused: BTreeMap<String, String>,
        bad_communities: Vec<String>,
        node_uid: &str,
    ) {
        for (peer, why) in &refused {
            if self.said_refused.get(peer) != Some(why) {
                let note = prose::bgp_peer_refused(peer, why);
                tracing::warn!("{}", note.message);
                let (events, node, uid) =
                    (self.events.clone(), self.node.clone(), node_uid.to_owned());
                tokio::spawn(async move {
                    if let Err(e) = events.about_node(&node, &uid, &note).await {
                        tracing::warn!("publishing the BGPPeerRefused event: {e}");
                    }
                });
            }
        }
        self.said_refused = refused;
        for bad in &bad_communities {
            if !self.said_bad_communities.contains(bad) {
                tracing::warn!("BGPAdvertisement {bad}: left out of the routes");
            }
        }
        self.said_bad_communities = bad_communities;
    }

    /// Ends every session as `how` says and waits (a second at most) for each to finish.
    pub async fn stop_all(self, how: Stop) {
        for r in self.running.values() {
            let _ = r.stop.send(how);
        }
        for (name, r) in self.running {
            if tokio::time::timeout(STOP_GRACE, r.task).await.is_err() {
                tracing::warn!(peer = %name, "the BGP session did not close within {STOP_GRACE:?}");
            }
        }
    }
}

/// Follows one session's status into the metrics and the log until the session ends.
async fn report(peer: String, mut status: watch::Receiver<Status>, metrics: Metrics) {
    let mut was_up = false;
    while status.changed().await.is_ok() {
        let now = status.borrow_and_update().clone();
        let (up, (v4, v6)) = match &now {
            Status::Established { advertised, .. } => (true, *advertised),
            _ => (false, (0, 0)),
        };
        if up && !was_up {
            tracing::info!(%peer, "BGP session Established");
        }
        was_up = up;
        metrics
            .bgp_session_up
            .get_or_create(&BgpPeerLabels { peer: peer.clone() })
            .set(i64::from(up));
        for (family, count) in [("ipv4", v4), ("ipv6", v6)] {
            metrics
                .bgp_prefixes
                .get_or_create(&BgpPrefixLabels {
                    peer: peer.clone(),
                    family,
                })
                .set(count as i64);
        }
    }
}
