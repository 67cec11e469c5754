use super::*;

fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
    serde_yaml_ng::from_str(s).expect("yaml")
}

const HEARTBEAT: Duration = Duration::from_millis(100);
const SETTLE: Duration = Duration::from_millis(600);

fn service(name: &str, ip: &str) -> (String, Arc<ServiceIps>) {
    let svc: herald_api::LbService = yaml(&format!(
        "metadata: {{name: {name}, namespace: default}}
spec: {{type: LoadBalancer}}
status:
  loadBalancer: {{ingress: [{{ip: '{ip}'}}]}}
  conditions: [{{type: herald.dev/IPAllocated, status: 'True', reason: Allocated, message: '', lastTransitionTime: '2026-01-01T00:00:00Z'}}]"
    ));
    let kept = ServiceIps::of(svc).expect("an allocated LoadBalancer");
    (format!("default/{name}"), Arc::new(kept))
}

/// A Ready node whose InternalIP is 192.0.2.<host>.
fn node(name: &str, host: u8) -> (String, Arc<NodeView>) {
    let ip = IpAddr::from([192, 0, 2, host]);
    let view = NodeView {
        name: name.into(),
        uid: format!("uid-{name}").into(),
        labels: BTreeMap::new(),
        ready: true,
        network_unavailable: false,
        unschedulable: false,
        internal_ip: Some(ip),
        addresses: Box::new([ip]),
    };
    (
        herald_api::ObjectKey::cluster(name).to_string(),
        Arc::new(view),
    )
}

/// Node `a`'s speaker on a LAN of nodes a (192.0.2.1), b (.2) and c (.3), one Service IP in
/// an advertised pool.
struct Lan {
    services: HashMap<String, Arc<ServiceIps>>,
    nodes: HashMap<String, Arc<NodeView>>,
    slices: HashMap<String, Arc<ServingNodes>>,
    pools: Vec<IPPool>,
    ads: Vec<L2Advertisement>,
    gossiped: Gossiped,
    interfaces: Snapshot,
    start: Instant,
}

impl Lan {
    fn new() -> Self {
        let subnet: IpNetwork = "192.0.2.0/24".parse().unwrap();
        Self {
            services: HashMap::from([service("web", "192.0.2.100")]),
            nodes: HashMap::from([node("a", 1), node("b", 2), node("c", 3)]),
            slices: HashMap::new(),
            pools: vec![yaml(
                "metadata: {name: lan}\nspec: {addresses: [192.0.2.100-192.0.2.199]}",
            )],
            ads: vec![yaml("metadata: {name: all}\nspec: {}")],
            gossiped: Gossiped {
                node_subnets: ["a", "b", "c"]
                    .iter()
                    .map(|n| (n.to_string(), vec![subnet]))
                    .collect(),
                heard: ["b", "c"].iter().map(|n| n.to_string()).collect(),
                ..Gossiped::default()
            },
            interfaces: Snapshot::one_lan_interface(),
            start: Instant::now(),
        }
    }

    /// Node `a`'s pass state, started at `start`.
    fn speaker(&self, segmented: bool) -> Pass {
        Pass::new("a", segmented, HEARTBEAT, SETTLE, self.start)
    }

    /// One pass of `pass` at `start + at`.
    fn pass(
        &self,
        pass: &mut Pass,
        at: Duration,
        departures: Vec<(Departure, Instant)>,
        claims: &mut BTreeSet<String>,
    ) -> Outcome {
        let pools: Vec<&IPPool> = self.pools.iter().collect();
        let ads: Vec<&L2Advertisement> = self.ads.iter().collect();
        let inputs = Inputs {
            now: self.start + at,
            stores: Stores {
                services: &self.services,
                nodes: &self.nodes,
                slices: &self.slices,
                pools: &pools,
                advertisements: &ads,
                bgp_peers: &[],
                bgp_advertisements: &[],
                bgp_secrets: &BTreeMap::new(),
            },
            gossiped: &self.gossiped,
            interfaces: &self.interfaces,
            departures,
        };
        pass.run(inputs, claims)
    }

    /// Gives the Service an IP whose election, among each set of nodes given, has the winner
    /// given (rendezvous hashing: which IP a node wins is a property of the hash, so look
    /// for one).
    fn an_ip_won(&mut self, cases: &[(&[&str], &str)]) -> IpAddr {
        let ip = (100..200)
            .map(|h| IpAddr::from([192, 0, 2, h]))
            .find(|ip| cases.iter().all(|(nodes, w)| winner(nodes, *ip) == *w))
            .expect("an IP of 100 for each few-node case");
        self.services = HashMap::from([service("web", &ip.to_string())]);
        ip
    }

    /// Gives the Service an IP that `node` wins among a, b and c.
    fn an_ip_won_by(&mut self, node: &str) -> IpAddr {
        self.an_ip_won(&[(&["a", "b", "c"], node)])
    }
}

/// The election's winner of `ip` among `nodes`, all on its subnet.
fn winner<'a>(nodes: &[&'a str], ip: IpAddr) -> &'a str {
    let candidates: Vec<crate::election::Candidate> = nodes
        .iter()
        .map(|node| crate::election::Candidate {
            node,
            on_subnet: true,
            preference: 0,
        })
        .collect();
    crate::election::owner(ip, &candidates).expect("a winner")
}

const LATER: Duration = Duration::from_secs(1);

#[test]
fn a_starting_speaker_claims_nothing_until_it_has_heard_its_peers() {
    let mut lan = Lan::new();
    let ip = lan.an_ip_won_by("a");
    let mut pass = lan.speaker(true);
    let early = lan.pass(&mut pass, Duration::ZERO, Vec::new(), &mut BTreeSet::new());
    assert!(early.standing_by && early.l2.ips.is_empty() && early.l2.plan.is_empty());
    assert_eq!(
        early.look_again,
        Some(lan.start + SETTLE),
        "looks again once settled"
    );
    assert_eq!(early.tally.ownership_changes, 0);

    let settled = lan.pass(&mut pass, SETTLE, Vec::new(), &mut BTreeSet::new());
    assert!(!settled.standing_by && !settled.isolated);
    assert_eq!(settled.l2.announced().collect::<Vec<_>>(), [ip]);
    assert_eq!(settled.l2.plan[&2], BTreeSet::from([ip]), "answers on eth0");
    assert_eq!(settled.look_again, None);
    assert_eq!(settled.tally.ownership_changes, 1);
    assert_eq!(settled.tally.members, 3);

    let again = lan.pass(&mut pass, SETTLE + LATER, Vec::new(), &mut BTreeSet::new());
    assert_eq!(again.tally.ownership_changes, 0, "changes are counted once");
}

#[test]
fn an_ip_won_by_a_peer_is_left_to_it() {
    let mut lan = Lan::new();
    lan.an_ip_won_by("b");
    let mut pass = lan.speaker(true);
    let outcome = lan.pass(&mut pass, SETTLE, Vec::new(), &mut BTreeSet::new());
    assert!(outcome.l2.announced().next().is_none() && outcome.l2.plan.is_empty());
}

#[test]
fn a_takeover_is_timed_from_the_peers_last_heartbeat_to_the_pass_that_takes_its_ip() {
    let mut lan = Lan::new();
    // b holds the IP while it lives; a gets it when b is gone.
    let ip = lan.an_ip_won(&[(&["a", "b", "c"], "b"), (&["a", "c"], "a")]);
    let mut pass = lan.speaker(true);
    let before = lan.pass(&mut pass, SETTLE, Vec::new(), &mut BTreeSet::new());
    assert!(before.l2.announced().next().is_none());

    // b dies: last heard at SETTLE + 1 s, out of the candidates 550 ms later.
    let last_heard = lan.start + SETTLE + LATER;
    lan.gossiped.node_subnets.remove("b");
    lan.gossiped.heard.remove("b");
    let after = lan.pass(
        &mut pass,
        SETTLE + LATER + Duration::from_millis(550),
        vec![(Departure::Died, last_heard)],
        &mut BTreeSet::new(),
    );
    assert_eq!(after.l2.announced().collect::<Vec<_>>(), [ip]);
    assert_eq!(
        after.tally.takeovers,
        [(Departure::Died, Duration::from_millis(550))]
    );
    assert_eq!(after.tally.members, 2);
}

#[test]
fn a_departure_that_gives_this_node_nothing_yet_counts_only_for_a_few_seconds() {
    let mut lan = Lan::new();
    // c's IP goes to b when c leaves; a gains an IP of its own only later.
    lan.an_ip_won(&[(&["a", "b", "c"], "c"), (&["a", "b"], "b")]);
    let mut pass = lan.speaker(true);
    lan.pass(&mut pass, SETTLE, Vec::new(), &mut BTreeSet::new());
    lan.gossiped.node_subnets.remove("c");
    lan.gossiped.heard.remove("c");
    let left_at = lan.start + SETTLE + LATER;
    let nothing = lan.pass(
        &mut pass,
        SETTLE + LATER,
        vec![(Departure::Left, left_at)],
        &mut BTreeSet::new(),
    );
    assert!(nothing.l2.announced().next().is_none() && nothing.tally.takeovers.is_empty());

    // A gain within the window still counts the departure (a held-over IP).
    lan.an_ip_won(&[(&["a", "b"], "a")]);
    let soon = lan.pass(
        &mut pass,
        SETTLE + LATER * 2,
        Vec::new(),
        &mut BTreeSet::new(),
    );
    assert_eq!(soon.l2.announced().count(), 1);
    assert_eq!(soon.tally.takeovers, [(Departure::Left, LATER)]);

    // A departure, then a gain only once its window is over: not a takeover.
    lan.an_ip_won(&[(&["a", "b"], "b")]);
    let gone_at = lan.start + SETTLE + LATER * 3;
    lan.pass(
        &mut pass,
        SETTLE + LATER * 3,
        vec![(Departure::Died, gone_at)],
        &mut BTreeSet::new(),
    );
    let late = SETTLE + LATER * 3 + DEPARTURE_RELEVANCE;
    lan.pass(&mut pass, late, Vec::new(), &mut BTreeSet::new());
    lan.an_ip_won(&[(&["a", "b"], "a")]);
    let gained = lan.pass(&mut pass, late + LATER, Vec::new(), &mut BTreeSet::new());
    assert_eq!(gained.tally.ownership_changes, 1);
    assert!(
        gained.tally.takeovers.is_empty(),
        "{:?}",
        gained.tally.takeovers
    );
}

#[test]
fn a_speaker_with_proof_its_peers_run_unheard_stands_down_and_says_so_once() {
    let mut lan = Lan::new();
    lan.an_ip_won_by("a");
    // a hears nobody; b's datagrams fail authentication, c announced over a's claim.
    lan.gossiped.heard.clear();
    lan.gossiped.node_subnets.retain(|n, _| n == "a");
    lan.gossiped.rejecting = vec![IpAddr::from([192, 0, 2, 2])];
    let mut claims = BTreeSet::from(["c".to_owned()]);
    let mut pass = lan.speaker(true);
    // Proof counts after a grace of three heartbeats: not yet.
    let first = lan.pass(&mut pass, SETTLE, Vec::new(), &mut claims);
    assert!(!first.isolated && first.isolation_changed.is_none());
    assert_eq!(first.look_again, Some(lan.start + SETTLE + HEARTBEAT));
    assert_eq!(
        first.l2.announced().count(),
        1,
        "alone, it serves meanwhile"
    );

    let at = SETTLE + HEARTBEAT * 3;
    let isolated = lan.pass(&mut pass, at, Vec::new(), &mut claims);
    assert!(isolated.isolated && isolated.standing_by);
    assert!(isolated.l2.ips.is_empty() && isolated.l2.plan.is_empty());
    let verdict = isolated.isolation_changed.expect("said once");
    assert_eq!(
        verdict.unheard,
        BTreeMap::from([
            ("b".to_owned(), Proof::WrongKey),
            ("c".to_owned(), Proof::Announces)
        ])
    );
    assert_eq!(isolated.tally.ownership_changes, 1, "its IP is let go");
    let still = lan.pass(&mut pass, at + LATER, Vec::new(), &mut claims);
    assert!(
        still.isolated && still.isolation_changed.is_none(),
        "not said again"
    );

    // Heard again: c's claim is forgotten, b's key matches; it serves and says so.
    lan = Lan {
        start: lan.start,
        ..Lan::new()
    };
    lan.an_ip_won_by("a");
    let back = lan.pass(&mut pass, at + LATER * 2, Vec::new(), &mut claims);
    assert!(
        claims.is_empty(),
        "a claim by a node heard again no longer counts"
    );
    assert!(!back.isolated && !back.standing_by);
    assert!(back.isolation_changed.is_some_and(|v| !v.isolated));
    assert_eq!(back.l2.announced().count(), 1);
}

#[test]
fn a_claim_by_a_node_that_is_not_ready_is_no_proof() {
    let mut lan = Lan::new();
    lan.gossiped.heard.clear();
    lan.gossiped.node_subnets.retain(|n, _| n == "a");
    let mut not_ready = (*lan.nodes["/c"]).clone();
    not_ready.ready = false;
    lan.nodes.insert("/c".into(), Arc::new(not_ready));
    let mut claims = BTreeSet::from(["c".to_owned()]);
    let mut pass = lan.speaker(true);
    let outcome = lan.pass(&mut pass, SETTLE + LATER, Vec::new(), &mut claims);
    assert!(claims.is_empty());
    assert!(!outcome.isolated && outcome.look_again.is_none());
}

#[test]
fn heartbeats_go_to_the_segment_every_interval_and_to_every_node_in_rounds() {
    let mut lan = Lan::new();
    // d is on another subnet, outside every range a competes for.
    lan.nodes.extend([node("d", 4)]);
    let mut d = (*lan.nodes["/d"]).clone();
    d.internal_ip = Some(IpAddr::from([10, 0, 0, 4]));
    lan.nodes.insert("/d".into(), Arc::new(d));
    lan.gossiped
        .node_subnets
        .insert("d".into(), vec!["10.0.0.0/8".parse().unwrap()]);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let all = vec![ip("10.0.0.4"), ip("192.0.2.2"), ip("192.0.2.3")];

    let mut segmented = lan.speaker(true);
    let outcome = lan.pass(&mut segmented, SETTLE, Vec::new(), &mut BTreeSet::new());
    assert_eq!(outcome.peers.all, all);
    assert_eq!(outcome.peers.segment, [ip("192.0.2.2"), ip("192.0.2.3")]);

    let mut everyone = lan.speaker(false);
    let outcome = lan.pass(&mut everyone, SETTLE, Vec::new(), &mut BTreeSet::new());
    assert_eq!(outcome.peers.segment, all);
    // Settling changes what it announces, not whom it heartbeats.
    let settling = lan.pass(
        &mut everyone,
        Duration::ZERO,
        Vec::new(),
        &mut BTreeSet::new(),
    );
    assert_eq!(settling.peers.segment, all);
}

#[test]
fn the_first_live_speaker_counts_the_ips_nobody_may_announce_and_the_others_do_not() {
    let mut lan = Lan::new();
    lan.services.extend([
        service("stray", "198.51.100.7"),
        service("web2", "192.0.2.150"),
    ]);
    lan.ads.clear();
    let mut pass = lan.speaker(true);
    let reporter = lan.pass(&mut pass, SETTLE, Vec::new(), &mut BTreeSet::new());
    let counts: BTreeMap<&str, usize> = reporter.tally.unannounced.iter().copied().collect();
    assert_eq!(
        counts.len(),
        NoOwner::LABELS.len(),
        "every reason, zeros too"
    );
    // One IP in no pool, two in a pool no L2Advertisement selects.
    assert_eq!(counts["NotAdvertised"], 3);

    // With a live speaker alphabetically before it, a counts nothing.
    lan.gossiped
        .node_subnets
        .insert("0-first".into(), vec!["192.0.2.0/24".parse().unwrap()]);
    let mut pass = lan.speaker(true);
    let other = lan.pass(&mut pass, SETTLE, Vec::new(), &mut BTreeSet::new());
    assert!(other.tally.unannounced.iter().all(|(_, n)| *n == 0));
}

#[test]
fn with_externaltrafficpolicy_local_only_a_node_with_a_serving_endpoint_announces() {
    let mut lan = Lan::new();
    let ip = lan.an_ip_won_by("a");
    let local: herald_api::LbService = yaml(&format!(
        "metadata: {{name: web, namespace: default}}
spec: {{type: LoadBalancer, externalTrafficPolicy: Local}}
status:
  loadBalancer: {{ingress: [{{ip: '{ip}'}}]}}
  conditions: [{{type: herald.dev/IPAllocated, status: 'True', reason: Allocated, message: '', lastTransitionTime: '2026-01-01T00:00:00Z'}}]"
    ));
    lan.services = HashMap::from([(
        "default/web".to_owned(),
        Arc::new(ServiceIps::of(local).expect("kept")),
    )]);
    let serving = |nodes: &[&str]| ServingNodes {
        service: "default/web".into(),
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
        draining: Vec::new(),
        any_serving: !nodes.is_empty(),
    };
    lan.slices = HashMap::from([("default/web-x".to_owned(), Arc::new(serving(&["c"])))]);
    let mut pass = lan.speaker(true);
    let elsewhere = lan.pass(&mut pass, SETTLE, Vec::new(), &mut BTreeSet::new());
    assert!(
        elsewhere.l2.announced().next().is_none(),
        "c serves it, not a"
    );

    lan.slices = HashMap::from([("default/web-x".to_owned(), Arc::new(serving(&["a", "c"])))]);
    let here = lan.pass(&mut pass, SETTLE + LATER, Vec::new(), &mut BTreeSet::new());
    let winner = ["a", "c"]
        .into_iter()
        .max_by_key(|n| crate::election::weight(n, ip))
        .expect("two");
    assert_eq!(here.l2.announced().next().is_some(), winner == "a");
}
