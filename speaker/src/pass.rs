//! One pass of the speaker: from what the watches, the heartbeats and the interfaces show, to
//! what this node announces, whom it heartbeats, whether it stands by, and which metrics
//! move. Pure: no I/O, and the clock is an input. `run` reads the inputs, performs the
//! [`Outcome`] and turns its [`Tally`] into metrics; the words said to users are in `prose`.
//! A new rule goes here (or in the module it calls), with a unit test that needs no API
//! server and no network.
//!
//! The pass works out [`Targets`] once (what every Service IP asks of its announcer) and
//! hands them to each way of announcing: L2 (`plan`: an election among the nodes, ARP and
//! NDP) is one; another protocol decides from the same targets beside it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_api::{BGPAdvertisement, BGPPeer, IPPool, L2Advertisement, ObjectKey};
use ipnetwork::IpNetwork;

use crate::bgp_plan::{self, BgpDecision, BgpView};
use crate::bgp_secrets::SecretState;
use crate::election::{Exclusion, NoOwner, NodeFacts};
use crate::endpoints::ServingNodes;
use crate::gossip::Peers;
use crate::interfaces::Snapshot;
use crate::isolation::{Isolation, Proof, Verdict};
use crate::metrics::Departure;
use crate::node::NodeView;
use crate::plan::{self, Decision, View};
use crate::service::ServiceIps;
use crate::settle::Settle;
use crate::targets::Targets;

/// How long after a peer's departure a gain of IPs counts as taking over from it.
const DEPARTURE_RELEVANCE: Duration = Duration::from_secs(5);

/// What the heartbeats say, copied out once per pass (the gossip thread needs its lock for
/// every heartbeat, and a pass over 10,000 Services must not hold it).
#[derive(Debug, Default, Clone)]
pub struct Gossiped {
    /// The candidates, this speaker too, each with the subnets it can announce on.
    pub node_subnets: BTreeMap<String, Vec<IpNetwork>>,
    /// Speakers heard before that are not candidates now, with their last subnets.
    pub remembered: BTreeMap<String, Vec<IpNetwork>>,
    /// Candidates heard for less than a settle time.
    pub joining: BTreeSet<String>,
    /// Of those, the ones that replaced a live incarnation of themselves (killed and
    /// restarted at once): a stand-in answers for them.
    pub restarting: BTreeSet<String>,
    /// Every speaker heard (on standby too), this one not included.
    pub heard: BTreeSet<String>,
    /// Addresses whose datagrams failed authentication lately.
    pub rejecting: Vec<IpAddr>,
}

/// What the watches show, read in place for one pass.
pub struct Stores<'a> {
    /// Services with IPs, by `namespace/name`.
    pub services: &'a HashMap<String, Arc<ServiceIps>>,
    /// Nodes, by their cache key (`/name`).
    pub nodes: &'a HashMap<String, Arc<NodeView>>,
    /// EndpointSlices, by their cache key.
    pub slices: &'a HashMap<String, Arc<ServingNodes>>,
    pub pools: &'a [&'a IPPool],
    pub advertisements: &'a [&'a L2Advertisement],
    pub bgp_peers: &'a [&'a BGPPeer],
    pub bgp_advertisements: &'a [&'a BGPAdvertisement],
    /// The peers' password Secrets, by name.
    pub bgp_secrets: &'a BTreeMap<String, SecretState>,
}

/// Everything one pass reads.
pub struct Inputs<'a> {
    pub now: Instant,
    pub stores: Stores<'a>,
    pub gossiped: &'a Gossiped,
    pub interfaces: &'a Snapshot,
    /// Peers gone since the last pass, and when each was last heard (or left).
    pub departures: Vec<(Departure, Instant)>,
}

/// What the pass keeps between passes.
pub struct Pass {
    me: String,
    /// Work out the segment (`--segmented-liveness`); else every node is heartbeated every
    /// interval.
    segmented: bool,
    /// Which nodes count as excluded from load balancers.
    exclusion: Exclusion,
    heartbeat: Duration,
    /// Until the first heartbeats had time to arrive this speaker would think it is alone and
    /// claim every IP: it decides nothing before this.
    settled_at: Instant,
    isolation: Isolation,
    was_isolated: bool,
    /// IPs this node announced after the last pass (the ownership-change metric); not the
    /// whole last decision, which at 10,000 IPs is megabytes.
    owned: BTreeSet<IpAddr>,
    /// Departures that gave this node no IP yet (a held-over IP may still come).
    departures: Vec<(Departure, Instant)>,
    /// When this node started serving each Local Service: BGP routes wait for its
    /// kube-proxy.
    settle: Settle,
}

/// How long a node newly serving a Local Service waits before its BGP route draws traffic
/// (`settle`): kube-proxy programs a new local endpoint within its one-second minimum sync
/// period, plus the sync itself.
pub const LOCAL_SETTLE: Duration = Duration::from_secs(2);

/// What one pass decided.
#[derive(Debug)]
pub struct Outcome {
    /// The L2 announcer's share: the IPs this node answers ARP and NDP for, on which
    /// interfaces, and what it reports about them.
    pub l2: Decision,
    /// The BGP sessions and what each router is told: decided while standing by too (gossip
    /// plays no part in BGP).
    pub bgp: BgpDecision,
    /// Where heartbeats go.
    pub peers: Peers,
    /// Settling or isolated: heard by the others, announcing nothing, not ready.
    pub standing_by: bool,
    /// Cut off from peers that run: heartbeats say "on standby" so they take its IPs.
    pub isolated: bool,
    /// The isolation verdict, when it changed (to be said: `prose::isolation`).
    pub isolation_changed: Option<Verdict>,
    /// Look again by then even if nothing changes (settling ends, a proof's grace ends, a
    /// joining peer settles).
    pub look_again: Option<Instant>,
    pub tally: Tally,
}

/// What the pass amounts to, for the metrics.
#[derive(Debug, Default, PartialEq)]
pub struct Tally {
    /// IPs gained or lost by this node.
    pub ownership_changes: u64,
    /// Takeovers counted this pass: how the peer went, and from its last heartbeat (or
    /// leave) until this node took its IPs.
    pub takeovers: Vec<(Departure, Duration)>,
    /// IPs nobody may announce, per reason (`NoOwner::LABELS`, every one, zeros too);
    /// counted by the reporter only.
    pub unannounced: Vec<(&'static str, usize)>,
    /// Live speakers, this one included.
    pub members: usize,
}

impl Pass {
    /// `settle`: how long to listen before deciding anything (a failure timeout and a
    /// heartbeat). A node with proof of life must stay unheard three heartbeats to count.
    pub fn new(
        me: &str,
        segmented: bool,
        heartbeat: Duration,
        settle: Duration,
        now: Instant,
    ) -> Self {
        Self {
            me: me.to_owned(),
            segmented,
            exclusion: Exclusion::default(),
            heartbeat,
            settled_at: now + settle,
            isolation: Isolation::new(heartbeat * 3),
            was_isolated: false,
            owned: BTreeSet::new(),
            departures: Vec::new(),
            settle: Settle::new(LOCAL_SETTLE),
        }
    }

    /// How long a node newly serving a Local Service waits before announcing it over BGP.
    pub fn settling_local(mut self, wait: Duration) -> Self {
        self.settle = Settle::new(wait);
        self
    }

    /// Which nodes count as excluded (default: those labelled, not those cordoned).
    pub fn excluding(mut self, exclusion: Exclusion) -> Self {
        self.exclusion = exclusion;
        self
    }

    /// One pass. `claims`: nodes that announced an IP over this speaker's claim (`notes`);
    /// those heard again or no longer Ready are forgotten here.
    pub fn run(&mut self, mut inputs: Inputs, claims: &mut BTreeSet<String>) -> Outcome {
        let now = inputs.now;
        let settling = now < self.settled_at;
        self.departures.append(&mut inputs.departures);
        let verdict = self.judge(&inputs, claims);
        let isolation_changed = (verdict.isolated != self.was_isolated).then(|| {
            self.was_isolated = verdict.isolated;
            verdict.clone()
        });
        let standing_by = settling || verdict.isolated;
        let targets = Targets::new(inputs.stores.services, inputs.stores.slices);
        let (local_announcing, settled_by) = self.settle.update(now, targets.local_endpoints());
        let (l2, bgp, segment) = self.decide(&inputs, standing_by, &targets, &local_announcing);
        let peers = peers_of(inputs.stores.nodes, &self.me, segment.as_ref());

        let now_owned: BTreeSet<IpAddr> = l2.announced().collect();
        let mut tally = Tally {
            ownership_changes: now_owned.symmetric_difference(&self.owned).count() as u64,
            members: inputs.gossiped.heard.len() + 1,
            ..Tally::default()
        };
        // The first pass that takes IPs over after a departure counts the takeover.
        if now_owned.difference(&self.owned).next().is_some() {
            tally.takeovers = self
                .departures
                .drain(..)
                .map(|(how, last_heard)| (how, now.saturating_duration_since(last_heard)))
                .collect();
        }
        // A departure that gave this node nothing yet may still (a held-over IP): kept a
        // few seconds, then it was not this node's to take.
        self.departures
            .retain(|(_, at)| now.saturating_duration_since(*at) < DEPARTURE_RELEVANCE);
        self.owned = now_owned;
        tally.unannounced = NoOwner::LABELS
            .iter()
            .map(|reason| {
                let count = l2
                    .ips
                    .values()
                    .filter(|d| d.outcome.as_ref().is_err_and(|e| e.label() == *reason))
                    .count();
                (*reason, count)
            })
            .collect();

        let joining = !standing_by && !inputs.gossiped.joining.is_empty();
        let look_again = [
            settling.then_some(self.settled_at),
            // Proof of an unheard peer counts once its grace is over; a joining peer gets
            // its IPs once it has settled.
            (verdict.pending || joining).then_some(now + self.heartbeat),
            // A Local Service this node serves may go out over BGP.
            settled_by,
        ]
        .into_iter()
        .flatten()
        .min();
        Outcome {
            l2,
            bgp,
            peers,
            standing_by,
            isolated: verdict.isolated,
            isolation_changed,
            look_again,
            tally,
        }
    }

    /// Whether this speaker is cut off from peers that run (see `isolation`): proof of life
    /// from the datagrams that fail authentication and from announcements over its claims,
    /// about nodes the API shows Ready.
    fn judge(&mut self, inputs: &Inputs, claims: &mut BTreeSet<String>) -> Verdict {
        let nodes = inputs.stores.nodes;
        let Gossiped {
            heard, rejecting, ..
        } = inputs.gossiped;
        let mut proof = BTreeMap::new();
        // Datagrams failing authentication come from a few addresses if any: the Nodes are
        // looked through only then (5,000 of them, every pass).
        if !rejecting.is_empty() {
            for node in nodes.values().filter(|n| n.ready) {
                if node.addresses.iter().any(|a| rejecting.contains(a)) {
                    proof.insert(node.name.to_string(), Proof::WrongKey);
                }
            }
        }
        // A claim stands until its node is heard again or stops being Ready.
        let ready = |name: &str| {
            nodes
                .get(&ObjectKey::cluster(name).to_string())
                .is_some_and(|n| n.ready)
        };
        claims.retain(|node| ready(node) && !heard.contains(node));
        for node in claims.iter() {
            proof.entry(node.clone()).or_insert(Proof::Announces);
        }
        self.isolation.judge(&self.me, heard, proof, inputs.now)
    }

    /// The L2 decision (nothing while standing by), the BGP decision and, with segmented
    /// liveness, the segment: a speaker standing by decides nothing for L2 but keeps its
    /// segment hearing it.
    fn decide(
        &self,
        inputs: &Inputs,
        standing_by: bool,
        targets: &Targets,
        local_announcing: &BTreeMap<&str, BTreeSet<&str>>,
    ) -> (Decision, BgpDecision, Option<BTreeSet<String>>) {
        let Inputs {
            stores, gossiped, ..
        } = inputs;
        let node_subnets = &gossiped.node_subnets;
        let nodes: BTreeMap<String, NodeFacts> = stores
            .nodes
            .values()
            .map(|n| {
                let facts = NodeFacts::of(n, node_subnets.contains_key(&*n.name), self.exclusion);
                (n.name.to_string(), facts)
            })
            .collect();
        let view = View {
            me: &self.me,
            // The alphabetically first live speaker reports IPs nobody may announce: one
            // Warning per Service, not one per node.
            reports_unannounced: node_subnets.keys().next() == Some(&self.me),
            targets,
            nodes: &nodes,
            node_subnets,
            remembered_subnets: &gossiped.remembered,
            pools: stores.pools,
            advertisements: stores.advertisements,
            bgp_advertisements: stores.bgp_advertisements,
            interfaces: inputs.interfaces,
            joining: &gossiped.joining,
            restarting: &gossiped.restarting,
            announcing: &self.owned,
        };
        let decision = if standing_by {
            Decision::default()
        } else {
            plan::decide(&view)
        };
        let segment = self.segmented.then(|| plan::segment(&view));
        let bgp = bgp_plan::decide(&BgpView {
            me: &self.me,
            node: stores
                .nodes
                .get(&ObjectKey::cluster(&self.me).to_string())
                .map(|n| &**n),
            targets,
            local_announcing,
            pools: stores.pools,
            peers: stores.bgp_peers,
            advertisements: stores.bgp_advertisements,
            interfaces: inputs.interfaces,
            secrets: stores.bgp_secrets,
            exclusion: self.exclusion,
        });
        (decision, bgp, segment)
    }
}

/// Where heartbeats go: every other node's first InternalIP, and among them the segment's
/// (`None`: every node is heartbeated every interval).
pub fn peers_of(
    nodes: &HashMap<String, Arc<NodeView>>,
    me: &str,
    segment: Option<&BTreeSet<String>>,
) -> Peers {
    let mut peers = Peers::default();
    for n in nodes.values() {
        if &*n.name == me {
            continue;
        }
        if let Some(ip) = n.internal_ip {
            peers.all.push(ip);
            if segment.is_none_or(|s| s.contains(&*n.name)) {
                peers.segment.push(ip);
            }
        }
    }
    peers.all.sort_unstable();
    peers.segment.sort_unstable();
    peers
}

#[cfg(test)]
mod tests;
