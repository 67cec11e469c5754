//! From what the cluster and the network look like to who announces every IP, and what this
//! node answers for on which interface. Every speaker computes the same owners from the same
//! view. Pure.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use herald_api::{BGPAdvertisement, IPPool, IpRange, L2Advertisement};
use ipnetwork::IpNetwork;

use crate::announcer::Plan;
use crate::election::{self, Candidate, NoOwner, NodeFacts};
use crate::interfaces::Snapshot;
use crate::targets::{Target, Targets};

/// Everything the decision depends on.
pub struct View<'a> {
    pub me: &'a str,
    /// This node reports the IPs nobody may announce (one reporter for all speakers).
    pub reports_unannounced: bool,
    /// Every Service IP and what it asks of its announcer (the protocol seam: `targets`).
    pub targets: &'a Targets<'a>,
    pub nodes: &'a BTreeMap<String, NodeFacts>,
    /// The live speakers, this one included, each with the subnets it can announce on:
    /// peers' from their heartbeats, this node's the `Snapshot::subnets` it sends them. One
    /// source for every node, so every speaker judges every node (itself too) alike.
    pub node_subnets: &'a BTreeMap<String, Vec<IpNetwork>>,
    /// Speakers heard before that are not candidates now (on standby or silent, not left),
    /// with the subnets they last said: they stay in segments (`segment`).
    pub remembered_subnets: &'a BTreeMap<String, Vec<IpNetwork>>,
    pub pools: &'a [&'a IPPool],
    pub advertisements: &'a [&'a L2Advertisement],
    /// Only to know which IPs BGP announces: L2 does not warn that it does not.
    pub bgp_advertisements: &'a [&'a BGPAdvertisement],
    pub interfaces: &'a Snapshot,
    /// Speakers heard for less than their settle time: they do not answer yet. Their IPs
    /// are answered meanwhile by this node where it answers already (make before break).
    /// This node itself, after its heartbeats lapsed (`lapse`).
    pub joining: &'a BTreeSet<String>,
    /// Of those, the speakers killed and restarted at once (never counted dead): the IPs
    /// they owned are answered meanwhile by the node owning them without the joining ones
    /// (the stand-in), which did not answer them before.
    pub restarting: &'a BTreeSet<String>,
    /// The IPs this node announces now. One whose owner becomes a joining node stays with
    /// this node until that node has settled and answers (make before break).
    pub announcing: &'a BTreeSet<IpAddr>,
}

/// The outcome for one IP this node speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpDecision {
    /// Services holding the IP (several when shared), by key.
    pub services: Vec<String>,
    /// `Ok`: this node announces the IP, on these interfaces (none when none is up).
    /// `Err`: nobody may announce it, and why (this node reports it).
    pub outcome: Result<Vec<String>, NoOwner>,
}

/// This node's share of the decision. Every speaker decides for every IP, but keeps only the
/// IPs it speaks for: at 10,000 IPs the whole decision is megabytes, and each IP has one
/// speaker that acts on it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// The IPs this node announces and, when it reports for everyone, the IPs nobody may
    /// announce.
    pub ips: BTreeMap<IpAddr, IpDecision>,
    pub plan: Plan,
    /// This node reports for everyone (IPs nobody may announce, stale L2Announcements).
    pub reporter: bool,
}

impl Decision {
    /// The IPs this node announces.
    pub fn announced(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ips
            .iter()
            .filter(|(_, d)| d.outcome.is_ok())
            .map(|(ip, _)| *ip)
    }
}

/// An IPPool with what every IP in it shares, worked out once per pass.
struct PoolFacts<'a> {
    name: &'a str,
    ranges: Vec<IpRange>,
    /// The advertisements selecting the pool (none: `NotAdvertised`).
    advertisements: Vec<&'a L2Advertisement>,
    /// Interfaces forced by those advertisements (empty: the ones on the IP's subnet).
    forced: Vec<String>,
    /// Some advertisement selects Services by label: which apply depends on the IP.
    by_service: bool,
    /// A `BGPAdvertisement` selects the pool: an IP that L2 does not announce may be
    /// announced by BGP, so L2 does not warn about it.
    bgp: Vec<&'a BGPAdvertisement>,
}

/// The advertisements that apply to one IP, and the interfaces they force.
struct Applied<'p, 'a> {
    advertisements: Cow<'p, [&'a L2Advertisement]>,
    forced: Cow<'p, [String]>,
}

impl Applied<'_, '_> {
    /// Whether one of the advertisements lets `node` announce.
    fn allows(&self, node: &NodeFacts) -> bool {
        any_selects(&self.advertisements, node)
    }

    /// How much the advertisements letting `node` announce prefer it: the most any does.
    fn preference(&self, node: Option<&NodeFacts>) -> u32 {
        let Some(node) = node else { return 0 };
        self.advertisements
            .iter()
            .filter(|ad| ad.spec.scope.selects_node(&node.labels))
            .map(|ad| ad.spec.preference(&node.labels))
            .max()
            .unwrap_or(0)
    }
}

/// Whether one of `ads` lets `node` announce.
fn any_selects(ads: &[&L2Advertisement], node: &NodeFacts) -> bool {
    ads.iter()
        .any(|ad| ad.spec.scope.selects_node(&node.labels))
}

/// The union of the interfaces the advertisements name.
fn forced_by(ads: &[&L2Advertisement]) -> Vec<String> {
    let forced: BTreeSet<&String> = ads.iter().flat_map(|ad| &ad.spec.interfaces).collect();
    forced.into_iter().cloned().collect()
}

impl<'a> PoolFacts<'a> {
    fn new(pool: &'a IPPool, all: &[&'a L2Advertisement], bgp: &[&'a BGPAdvertisement]) -> Self {
        let advertisements: Vec<&L2Advertisement> = all
            .iter()
            .copied()
            .filter(|ad| ad.spec.scope.selects_pool(pool))
            .collect();
        Self {
            name: pool.metadata.name.as_deref().unwrap_or_default(),
            ranges: pool.ranges().collect(),
            forced: forced_by(&advertisements),
            by_service: advertisements
                .iter()
                .any(|ad| !ad.spec.scope.service_selectors.is_empty()),
            advertisements,
            bgp: bgp
                .iter()
                .copied()
                .filter(|ad| ad.spec.scope.selects_pool(pool))
                .collect(),
        }
    }

    /// Whether one of the pool's advertisements (whatever Services they select) lets `node`
    /// announce: who competes with whom, for segments.
    fn allows(&self, node: &NodeFacts) -> bool {
        any_selects(&self.advertisements, node)
    }

    /// The advertisements that apply to `target`, or why none does.
    fn applied<'p>(&'p self, target: &Target) -> Result<Applied<'p, 'a>, NoOwner> {
        if self.advertisements.is_empty() {
            return Err(NoOwner::NotAdvertised(self.name.to_owned()));
        }
        if !self.by_service {
            return Ok(Applied {
                advertisements: Cow::Borrowed(&self.advertisements),
                forced: Cow::Borrowed(&self.forced),
            });
        }
        let ads: Vec<&L2Advertisement> = self
            .advertisements
            .iter()
            .copied()
            .filter(|ad| target.selected_by(&ad.spec.scope))
            .collect();
        if ads.is_empty() {
            return Err(NoOwner::ServiceNotSelected(self.name.to_owned()));
        }
        Ok(Applied {
            forced: Cow::Owned(forced_by(&ads)),
            advertisements: Cow::Owned(ads),
        })
    }

    /// Whether a `BGPAdvertisement` announces `target`.
    fn announced_by_bgp(&self, target: &Target) -> bool {
        self.bgp.iter().any(|ad| target.selected_by(&ad.spec.scope))
    }
}

/// The L2 announcer's share of the targets: one owner per IP, elected among the nodes that
/// may announce it.
pub fn decide(view: &View) -> Decision {
    let pools: Vec<PoolFacts> = view
        .pools
        .iter()
        .map(|p| PoolFacts::new(p, view.advertisements, view.bgp_advertisements))
        .collect();
    let index = SubnetIndex::new(view.node_subnets.iter());
    let mut decision = Decision {
        reporter: view.reports_unannounced,
        ..Decision::default()
    };
    for target in view.targets.iter() {
        let ip = target.ip;
        let owner = owner(view, &index, &pools, &target, None);
        let outcome = match owner {
            // Held over, or stood in for: the owner has not settled yet, so it does not
            // answer yet. A stand-in answers for a speaker killed and restarted within a
            // failure timeout: never counted dead, its IPs would go unanswered until it
            // settled. This node counts itself as joining when it ran too late for its
            // peers to hear it (its heartbeats lapsed): they took its IPs over and hold
            // them until it settles, so it answers only where nobody else can.
            Ok((owner, forced))
                if (owner == view.me
                    && !(view.joining.contains(view.me)
                        && stand_in(view, &index, &pools, &target).is_some()))
                    || (owner != view.me
                        && view.joining.contains(owner)
                        && view.announcing.contains(&ip))
                    || (view.restarting.contains(owner)
                        && stand_in(view, &index, &pools, &target) == Some(view.me)) =>
            {
                let mut names = Vec::new();
                for iface in view.interfaces.announce_on(ip, &forced) {
                    decision.plan.entry(iface.index).or_default().insert(ip);
                    names.push(iface.name.clone());
                }
                Ok(names)
            }
            Ok(_) => continue,
            Err(_) if !view.reports_unannounced => continue,
            Err(NoOwner::NotAdvertised(_) | NoOwner::ServiceNotSelected(_))
                if pools
                    .iter()
                    .find(|p| p.ranges.iter().any(|r| r.contains(ip)))
                    .is_some_and(|p| p.announced_by_bgp(&target)) =>
            {
                continue;
            }
            Err(e) => Err(e),
        };
        let services = target.service_keys().map(str::to_owned).collect();
        decision.ips.insert(ip, IpDecision { services, outcome });
    }
    decision
}

/// The live speakers by subnet: a cluster has few subnets and many nodes, so "who is on the
/// subnet of this IP" is a look at a few subnets, not at every node (5,000 in the benchmark,
/// for every IP of every pass).
struct SubnetIndex<'a>(BTreeMap<IpNetwork, Vec<&'a str>>);

impl<'a> SubnetIndex<'a> {
    fn new(node_subnets: impl Iterator<Item = (&'a String, &'a Vec<IpNetwork>)>) -> Self {
        let mut by_subnet: BTreeMap<IpNetwork, Vec<&str>> = BTreeMap::new();
        for (node, nets) in node_subnets {
            for net in nets {
                by_subnet.entry(*net).or_default().push(node);
            }
        }
        Self(by_subnet)
    }

    /// The nodes with an interface in a subnet holding `ip`.
    fn on_subnet(&self, ip: IpAddr) -> BTreeSet<&'a str> {
        self.0
            .iter()
            .filter(|(net, _)| net.contains(ip))
            .flat_map(|(_, nodes)| nodes.iter().copied())
            .collect()
    }
}

/// The nodes this one must hear within a failure timeout: those it competes with for some
/// IP. For each range of each pool this node may announce, the competitors are the nodes
/// the pool's advertisements allow that have an interface in the range's subnet (the
/// election prefers them, so nobody else can win while one lives), or every allowed node
/// when none has (forced interfaces). Every speaker computes this from the same facts, so
/// the relation is symmetric; a node outside it is heard only in the slower rounds to every
/// node, which is enough to know its subnets. The cost of liveness per node is bounded by
/// its segment, not by the cluster.
pub fn segment(view: &View) -> BTreeSet<String> {
    let mut peers = BTreeSet::new();
    let Some(me) = view.nodes.get(view.me).filter(|m| !m.excluded) else {
        return peers;
    };
    // A speaker that went quiet or stood by stays in the segment while its node is Ready:
    // when it hears again, every peer it competes with heartbeats it already, and it them,
    // so nobody claims an IP with a view that misses a competitor for a whole round.
    let remembered = view.remembered_subnets.iter().filter(|(node, _)| {
        !view.node_subnets.contains_key(*node) && view.nodes.get(*node).is_some_and(|n| n.ready)
    });
    let index = SubnetIndex::new(view.node_subnets.iter().chain(remembered));
    for pool in view
        .pools
        .iter()
        .map(|p| PoolFacts::new(p, view.advertisements, view.bgp_advertisements))
    {
        if !pool.allows(me) {
            continue;
        }
        let allowed = |node: &str| {
            view.nodes
                .get(node)
                .is_some_and(|n| !n.excluded && pool.allows(n))
        };
        for range in &pool.ranges {
            let mut on_subnet = index.on_subnet(range.start());
            on_subnet.retain(|n| allowed(n));
            if on_subnet.is_empty() {
                // Nobody is on the subnet: every allowed node competes, this one too.
                peers.extend(
                    view.nodes
                        .keys()
                        .filter(|n| allowed(n))
                        .map(String::to_owned),
                );
            } else if on_subnet.contains(view.me) {
                peers.extend(on_subnet.iter().map(|n| (*n).to_owned()));
            }
        }
    }
    peers.remove(view.me);
    peers
}

/// Who answers for the target's IP while its owner settles: its owner among the nodes that
/// are not joining.
fn stand_in<'v>(
    view: &View<'v>,
    index: &SubnetIndex<'v>,
    pools: &[PoolFacts],
    target: &Target,
) -> Option<&'v str> {
    owner(view, index, pools, target, Some(view.joining))
        .ok()
        .map(|(node, _)| node)
}

/// The owner of the target's IP (among the nodes not in `skip`) and the interfaces forced by
/// the advertisements that select its pool.
fn owner<'v, 'p>(
    view: &View<'v>,
    index: &SubnetIndex<'v>,
    pools: &'p [PoolFacts],
    target: &Target,
    skip: Option<&BTreeSet<String>>,
) -> Result<(&'v str, Cow<'p, [String]>), NoOwner> {
    let skipped = |node: &str| skip.is_some_and(|s| s.contains(node));
    let ip = target.ip;
    let pool = pools
        .iter()
        .find(|p| p.ranges.iter().any(|r| r.contains(ip)))
        .ok_or(NoOwner::NoPool(ip))?
        .applied(target)?;
    // Every sharer of the IP must be served from the owner (ETP Local: `serving_nodes`).
    let local = target.serving_nodes.as_ref();
    // The election prefers nodes on the IP's subnet: when some of them are eligible, the
    // owner is among them, and the rest of the cluster need not be looked at.
    let near = index.on_subnet(ip);
    if !near.is_empty() {
        let subset = near
            .iter()
            .filter(|n| !skipped(n))
            .filter_map(|n| view.nodes.get_key_value(*n));
        if let Ok(eligible) = election::eligible(subset, &|n| pool.allows(n), local) {
            let candidates: Vec<Candidate> = eligible
                .iter()
                .map(|node| Candidate {
                    node,
                    on_subnet: true,
                    preference: pool.preference(view.nodes.get(*node)),
                })
                .collect();
            if let Some(owner) = election::owner(ip, &candidates) {
                return Ok((owner, pool.forced));
            }
        }
    }
    let eligible = election::eligible(view.nodes, &|n| pool.allows(n), local)?;
    let candidates: Vec<Candidate> = eligible
        .iter()
        .filter(|node| !skipped(node))
        .map(|node| Candidate {
            node,
            on_subnet: view
                .node_subnets
                .get(*node)
                .is_some_and(|nets| nets.iter().any(|n| n.contains(ip))),
            preference: pool.preference(view.nodes.get(*node)),
        })
        .collect();
    let owner = election::owner(ip, &candidates).ok_or(NoOwner::NoLiveNode)?;
    Ok((owner, pool.forced))
}

#[cfg(test)]
mod tests;
