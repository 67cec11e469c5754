use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::service::{ServiceIps, labelled};

fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
    serde_yaml_ng::from_str(s).expect("yaml")
}

fn service(name: &str, ip: &str, local: bool) -> (String, Arc<ServiceIps>) {
    let svc: herald_api::LbService = yaml(&format!(
        "metadata: {{name: {name}, namespace: default}}
spec: {{type: LoadBalancer, externalTrafficPolicy: {}}}
status:
  loadBalancer: {{ingress: [{{ip: '{ip}'}}]}}
  conditions: [{{type: herald.dev/IPAllocated, status: 'True', reason: Allocated, message: '', lastTransitionTime: '2026-01-01T00:00:00Z'}}]",
        if local { "Local" } else { "Cluster" }
    ));
    let kept = ServiceIps::of(svc).expect("an allocated LoadBalancer");
    (format!("default/{name}"), Arc::new(kept))
}

fn node(zone: &str) -> NodeFacts {
    NodeFacts {
        ready: true,
        excluded: false,
        live: true,
        labels: BTreeMap::from([("zone".to_owned(), zone.to_owned())]),
    }
}

fn snapshot() -> Snapshot {
    Snapshot::one_lan_interface()
}

struct Fixture {
    services: HashMap<String, Arc<ServiceIps>>,
    nodes: BTreeMap<String, NodeFacts>,
    pools: Vec<IPPool>,
    ads: Vec<L2Advertisement>,
    bgp_ads: Vec<BGPAdvertisement>,
    endpoints: BTreeMap<&'static str, BTreeSet<&'static str>>,
    /// Nodes whose heartbeats say they are on another subnet than the pool's.
    off_subnet: BTreeSet<&'static str>,
    /// Nodes whose speakers are not candidates now (silent or on standby) but were heard:
    /// their subnets are remembered, not live.
    remembered: BTreeSet<&'static str>,
    joining: BTreeSet<String>,
    restarting: BTreeSet<String>,
    /// What every deciding node announces now (the same set for all, for brevity).
    announcing: BTreeSet<IpAddr>,
}

impl Fixture {
    fn new() -> Self {
        Self {
            services: HashMap::from([service("web", "192.0.2.10", false)]),
            nodes: ["a", "b", "c"]
                .iter()
                .map(|n| (n.to_string(), node("x")))
                .collect(),
            pools: vec![yaml(
                "metadata: {name: lan, labels: {site: one}}\nspec: {addresses: [192.0.2.0/24]}",
            )],
            ads: vec![yaml("metadata: {name: all}\nspec: {}")],
            bgp_ads: Vec::new(),
            endpoints: BTreeMap::new(),
            off_subnet: BTreeSet::new(),
            remembered: BTreeSet::new(),
            joining: BTreeSet::new(),
            restarting: BTreeSet::new(),
            announcing: BTreeSet::new(),
        }
    }

    /// The view of node `me` (node "a" reports IPs nobody may announce; nodes in
    /// `off_subnet` are on 10.0.0.0/8), handed to `f`.
    fn view_as<R>(&self, me: &str, f: impl FnOnce(&View) -> R) -> R {
        let pools: Vec<&IPPool> = self.pools.iter().collect();
        let ads: Vec<&L2Advertisement> = self.ads.iter().collect();
        let bgp_ads: Vec<&BGPAdvertisement> = self.bgp_ads.iter().collect();
        let snap = snapshot();
        let subnets: BTreeMap<String, Vec<IpNetwork>> = self
            .nodes
            .keys()
            .map(|n| {
                let subnet = if self.off_subnet.contains(n.as_str()) {
                    "10.0.0.0/8"
                } else {
                    "192.0.2.0/24"
                };
                (n.clone(), vec![subnet.parse().unwrap()])
            })
            .collect();
        let (remembered, subnets): (BTreeMap<_, _>, BTreeMap<_, _>) = subnets
            .into_iter()
            .partition(|(n, _)| self.remembered.contains(n.as_str()));
        let targets = Targets::with_serving(&self.services, self.endpoints.clone());
        f(&View {
            me,
            reports_unannounced: me == "a",
            targets: &targets,
            nodes: &self.nodes,
            node_subnets: &subnets,
            remembered_subnets: &remembered,
            pools: &pools,
            advertisements: &ads,
            bgp_advertisements: &bgp_ads,
            interfaces: &snap,
            joining: &self.joining,
            restarting: &self.restarting,
            announcing: &self.announcing,
        })
    }

    fn decide_as(&self, me: &str) -> Decision {
        self.view_as(me, decide)
    }

    fn segment_of(&self, me: &str) -> BTreeSet<String> {
        self.view_as(me, segment)
    }

    /// Who announces 192.0.2.10 (the node whose decision has it announced), or why nobody
    /// does (from the reporter's decision).
    fn owner(&self) -> Result<String, NoOwner> {
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let owners: Vec<&String> = self
            .nodes
            .keys()
            .filter(|me| self.decide_as(me).announced().any(|a| a == ip))
            .collect();
        match owners.as_slice() {
            [] => Err(self.decide_as("a").ips[&ip]
                .outcome
                .clone()
                .expect_err("nobody announces, so the reporter says why")),
            [one] => Ok(one.to_string()),
            many => panic!("several owners: {many:?}"),
        }
    }
}

#[test]
fn exactly_one_node_announces_and_only_it_keeps_the_ip() {
    let f = Fixture::new();
    let ip: IpAddr = "192.0.2.10".parse().unwrap();
    let owner = f.owner().expect("an owner");
    for me in ["a", "b", "c"] {
        let d = f.decide_as(me);
        let answers = d.plan.get(&2).is_some_and(|ips| ips.contains(&ip));
        assert_eq!(answers, me == owner, "{me}");
        if me == owner {
            assert_eq!(d.ips[&ip].outcome, Ok(vec!["eth0".to_owned()]));
            assert_eq!(d.ips[&ip].services, ["default/web"]);
        } else {
            // The others keep nothing about it, not even the reporter.
            assert!(d.ips.is_empty(), "{me}: {:?}", d.ips);
        }
    }
}

#[test]
fn ips_nobody_may_announce_are_kept_by_the_reporter_only() {
    let mut f = Fixture::new();
    f.ads.clear();
    let ip: IpAddr = "192.0.2.10".parse().unwrap();
    assert_eq!(
        f.decide_as("a").ips[&ip].outcome,
        Err(NoOwner::NotAdvertised("lan".into()))
    );
    assert!(f.decide_as("b").ips.is_empty());
    assert!(f.decide_as("a").plan.is_empty());
}

#[test]
fn services_sharing_an_ip_are_announced_together() {
    let mut f = Fixture::new();
    f.services.extend([service("web-udp", "192.0.2.10", false)]);
    f.services.extend([service("other", "192.0.2.11", false)]);
    let ip: IpAddr = "192.0.2.10".parse().unwrap();
    let owner = f.owner().expect("an owner");
    assert_eq!(
        f.decide_as(&owner).ips[&ip].services,
        ["default/web", "default/web-udp"]
    );
}

#[test]
fn no_advertisement_excluded_nodes_and_node_selectors() {
    let mut f = Fixture::new();
    f.ads = vec![yaml(
        "metadata: {name: other}\nspec: {ipPools: [elsewhere]}",
    )];
    assert_eq!(f.owner(), Err(NoOwner::NotAdvertised("lan".into())));
    f.ads = vec![yaml(
        "metadata: {name: sel}\nspec: {ipPoolSelectors: [{matchLabels: {site: one}}], nodeSelectors: [{matchLabels: {zone: y}}]}",
    )];
    assert_eq!(f.owner(), Err(NoOwner::AllExcluded));
    f.nodes.insert("d".into(), node("y"));
    assert_eq!(f.owner(), Ok("d".into()));
    f.nodes.get_mut("d").unwrap().excluded = true;
    assert_eq!(f.owner(), Err(NoOwner::AllExcluded));
}

#[test]
fn service_selectors_choose_the_services_an_advertisement_announces() {
    let mut f = Fixture::new();
    let ip: IpAddr = "192.0.2.10".parse().unwrap();
    f.ads = vec![
        yaml(
            "metadata: {name: l2}\nspec: {serviceSelectors: [{matchLabels: {l2: 'yes'}}], interfaces: [eth0]}",
        ),
        yaml(
            "metadata: {name: other}\nspec: {serviceSelectors: [{matchLabels: {app: other}}], interfaces: [\"nothing*\"]}",
        ),
    ];
    assert_eq!(
        f.owner(),
        Err(NoOwner::ServiceNotSelected("lan".into())),
        "an unlabelled Service is selected by neither"
    );
    // A Service sharing the IP that one advertisement selects brings the IP in, on the
    // interfaces of that advertisement only.
    f.services.extend([labelled(
        service("web-udp", "192.0.2.10", false),
        &[("l2", "yes")],
    )]);
    let owner = f.owner().expect("an owner");
    assert_eq!(
        f.decide_as(&owner).ips[&ip].outcome,
        Ok(vec!["eth0".to_owned()])
    );

    // Not selected by L2 but by a BGPAdvertisement: not L2's to warn about.
    f.services.remove("default/web-udp");
    f.bgp_ads = vec![yaml("metadata: {name: routed}\nspec: {}")];
    assert!(f.decide_as("a").ips.is_empty());
    f.bgp_ads = vec![yaml(
        "metadata: {name: routed}\nspec: {serviceSelectors: [{matchLabels: {bgp: 'yes'}}]}",
    )];
    assert_eq!(f.owner(), Err(NoOwner::ServiceNotSelected("lan".into())));
    f.ads.clear();
    assert_eq!(f.owner(), Err(NoOwner::NotAdvertised("lan".into())));
}

#[test]
fn local_traffic_policy_follows_ready_endpoints() {
    let mut f = Fixture::new();
    f.services = HashMap::from([service("web", "192.0.2.10", true)]);
    assert_eq!(f.owner(), Err(NoOwner::NoLocalEndpoint));
    f.endpoints.insert("default/web", BTreeSet::from(["c"]));
    assert_eq!(f.owner(), Ok("c".into()));
    f.endpoints.insert("default/web", BTreeSet::from(["b"]));
    assert_eq!(f.owner(), Ok("b".into()));
}

#[test]
fn a_dead_owner_is_replaced() {
    let mut f = Fixture::new();
    let first = f.owner().unwrap();
    f.nodes.get_mut(&first).unwrap().live = false;
    let second = f.owner().unwrap();
    assert_ne!(first, second);
    f.nodes.get_mut(&first).unwrap().live = true;
    assert_eq!(
        f.owner().unwrap(),
        first,
        "ownership returns when the node does"
    );
}

#[test]
fn every_node_judges_itself_on_subnet_as_its_peers_judge_it() {
    // Each node's own interfaces (the fixture's snapshot: on 192.0.2.0/24) do not decide
    // whether it is on the IP's subnet; what it told its peers does. Otherwise a node could
    // count itself in while the others count it out (two owners), or the reverse (none).
    for on in ["a", "b", "c"] {
        let mut f = Fixture::new();
        f.off_subnet = ["a", "b", "c"].into_iter().filter(|n| *n != on).collect();
        assert_eq!(f.owner(), Ok(on.to_owned()), "only {on} is on the subnet");
    }
}

/// The owner of 192.0.2.10, and the node that owns it while the owner is away.
fn owner_and_stand_in(f: &mut Fixture) -> (String, String) {
    let owner = f.owner().expect("an owner");
    let away = f.nodes.remove(&owner).expect("owner");
    let stand_in = f.owner().expect("a stand-in");
    f.nodes.insert(owner.clone(), away);
    (owner, stand_in)
}

#[test]
fn a_joining_owner_gets_the_ip_only_once_it_has_settled_and_a_stand_in_answers_meanwhile() {
    let ip: IpAddr = "192.0.2.10".parse().unwrap();
    let mut f = Fixture::new();
    // The owner restarts: while it is away, the next in rank announces the IP.
    let (owner, stand_in) = owner_and_stand_in(&mut f);
    // Back but still settling (it does not answer yet): the stand-in keeps the IP...
    f.joining.insert(owner.clone());
    f.announcing.insert(ip);
    assert!(f.decide_as(&stand_in).announced().any(|a| a == ip));
    // ...while a node that does not announce it gives nothing to the joining one either
    // (a speaker starting for the first time)...
    f.announcing.clear();
    assert!(!f.decide_as(&stand_in).announced().any(|a| a == ip));
    // ...unless it was killed and restarted within a failure timeout, never counted dead:
    // then the stand-in answers, and nobody else would.
    f.restarting.insert(owner.clone());
    assert!(f.decide_as(&stand_in).announced().any(|a| a == ip));
    let third = f
        .nodes
        .keys()
        .find(|n| **n != owner && **n != stand_in)
        .cloned()
        .expect("a third node");
    assert!(
        !f.decide_as(&third).announced().any(|a| a == ip),
        "only the stand-in"
    );
    // Settled: the IP is its owner's again, and only its owner's.
    f.announcing.insert(ip);
    f.joining.clear();
    f.restarting.clear();
    assert_eq!(f.owner(), Ok(owner));
}

#[test]
fn an_owner_whose_heartbeats_lapsed_leaves_its_ip_to_the_stand_in_until_it_settles() {
    let ip: IpAddr = "192.0.2.10".parse().unwrap();
    let mut f = Fixture::new();
    let (owner, stand_in) = owner_and_stand_in(&mut f);
    // The owner was not scheduled for longer than a failure timeout (a stopped VM, CPU
    // starvation): its peers counted it dead and the stand-in took the IP over; both had
    // been announcing it. Back, the owner counts itself as joining (its peers hear it
    // joining, or on standby while it holds back): the stand-in keeps the IP and the owner
    // does not answer beside it.
    f.joining.insert(owner.clone());
    f.announcing.insert(ip);
    assert!(f.decide_as(&stand_in).announced().any(|a| a == ip));
    assert!(
        !f.decide_as(&owner).announced().any(|a| a == ip),
        "the lapsed owner answers beside its stand-in"
    );
    // Settled: its own again.
    f.joining.clear();
    assert!(f.decide_as(&owner).announced().any(|a| a == ip));
    assert!(!f.decide_as(&stand_in).announced().any(|a| a == ip));
    // Alone, a lapsed node answers at once: nobody else would.
    f.nodes.retain(|n, _| *n == owner);
    f.joining.insert(owner.clone());
    assert_eq!(f.owner(), Ok(owner));
}

fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// Liveness is kept fast only among competitors: the nodes on the pool's subnet (when some
/// are), or every allowed node (when none is); symmetric, and empty for a node that may
/// announce nothing.
#[test]
fn a_segment_is_the_nodes_competing_for_the_same_ips() {
    let mut f = Fixture::new();
    f.nodes.insert("d".into(), node("y"));
    f.off_subnet.insert("d");
    // a, b, c on the pool's subnet: each other's segment; d, off the subnet, competes for
    // nothing while they live, so it is in nobody's segment and has none.
    assert_eq!(f.segment_of("a"), names(&["b", "c"]));
    assert_eq!(f.segment_of("b"), names(&["a", "c"]));
    assert_eq!(f.segment_of("d"), names(&[]));
    // A second pool no node has a subnet for (forced interfaces): every allowed node
    // competes for it, so everyone is in everyone's segment.
    f.pools.push(yaml(
        "metadata: {name: vlan}\nspec: {addresses: [198.51.100.0/24]}",
    ));
    assert_eq!(f.segment_of("d"), names(&["a", "b", "c"]));
    assert_eq!(f.segment_of("a"), names(&["b", "c", "d"]));
    // Advertisements that allow some nodes only: the others are out of the segment.
    f.ads = vec![yaml(
        "metadata: {name: x}\nspec: {nodeSelectors: [{matchLabels: {zone: x}}]}",
    )];
    assert_eq!(f.segment_of("a"), names(&["b", "c"]));
    assert_eq!(f.segment_of("d"), names(&[]));
    // An excluded node competes for nothing.
    f.nodes.get_mut("c").unwrap().excluded = true;
    assert_eq!(f.segment_of("a"), names(&["b"]));
    assert_eq!(f.segment_of("c"), names(&[]));
    // Symmetric whatever the set-up.
    for me in ["a", "b", "c", "d"] {
        for peer in f.segment_of(me) {
            assert!(f.segment_of(&peer).contains(me), "{me} -> {peer}");
        }
    }
}

/// A speaker cut off from gossip (silent, or on standby because it hears nobody) stays in
/// the segments it was in while its node is Ready, and keeps its own: when it hears again,
/// every competitor already heartbeats it at the segment's pace and it them. Without this,
/// it and they would meet only in the next round, and it could claim IPs with a view that
/// misses a competitor for up to a round (answers from two nodes).
#[test]
fn a_speaker_cut_off_stays_in_the_segments_it_was_in() {
    let mut f = Fixture::new();
    f.remembered.insert("c");
    assert_eq!(f.segment_of("a"), names(&["b", "c"]));
    // c itself remembers a and b, heard before it was cut off.
    f.remembered = BTreeSet::from(["a", "b"]);
    assert_eq!(f.segment_of("c"), names(&["a", "b"]));
    // A remembered node whose Node is not Ready (powered off) is dropped from segments.
    f.remembered = BTreeSet::from(["c"]);
    f.nodes.get_mut("c").unwrap().ready = false;
    assert_eq!(f.segment_of("a"), names(&["b"]));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
    /// The shortcut through the subnet index picks the owner the full election over every
    /// node picks: for any mix of ready, live, excluded, on- and off-subnet nodes.
    #[test]
    fn the_subnet_shortcut_elects_whom_the_full_election_elects(
        facts in proptest::collection::vec((proptest::bool::ANY, proptest::bool::ANY, proptest::bool::ANY, proptest::bool::ANY), 1..8)
    ) {
        let mut f = Fixture::new();
        f.nodes.clear();
        for (i, (ready, live, excluded, off)) in facts.iter().enumerate() {
            let name = ["a", "b", "c", "d", "e", "f", "g", "h"][i];
            let mut n = node("x");
            (n.ready, n.live, n.excluded) = (*ready, *live, *excluded);
            f.nodes.insert(name.to_owned(), n);
            if *off {
                f.off_subnet.insert(name);
            }
        }
        // "a" reports; keep it in the cluster so a reason is always given.
        f.nodes.entry("a".to_owned()).or_insert_with(|| node("x"));
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let reference = election::eligible(&f.nodes, &|_| true, None).ok().and_then(|e| {
            let candidates: Vec<Candidate> = e
                .iter()
                .map(|node| Candidate { node, on_subnet: !f.off_subnet.contains(node), preference: 0 })
                .collect();
            election::owner(ip, &candidates).map(str::to_owned)
        });
        proptest::prop_assert_eq!(f.owner().ok(), reference);
    }
}

/// `preferredNodeSelectors`: every speaker elects the most preferred eligible node, the next
/// most preferred when it may not announce, and the advertisement must select the node for
/// its preference to count.
#[test]
fn preferred_nodes_win_while_eligible_and_failover_goes_to_the_next() {
    let mut f = Fixture::new();
    let hashed = f.owner().expect("an owner");
    // Prefer another node than the one the hash picks, and a third one a little.
    let others: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| n.to_string())
        .filter(|n| *n != hashed)
        .collect();
    let (edge, backup) = (&others[0], &others[1]);
    f.nodes.insert(edge.clone(), node("edge"));
    f.nodes.insert(backup.clone(), node("backup"));
    f.ads = vec![yaml(
        "metadata: {name: all}\nspec: {preferredNodeSelectors: [{weight: 50, preference: {matchLabels: {zone: edge}}}, {weight: 10, preference: {matchLabels: {zone: backup}}}]}",
    )];
    assert_eq!(f.owner(), Ok(edge.clone()));
    f.nodes.get_mut(edge.as_str()).expect("edge").ready = false;
    assert_eq!(f.owner(), Ok(backup.clone()));
    f.nodes.get_mut(backup.as_str()).expect("backup").live = false;
    assert_eq!(f.owner(), Ok(hashed.clone()), "nobody preferred is left");
    f.nodes.get_mut(edge.as_str()).expect("edge").ready = true;
    assert_eq!(f.owner(), Ok(edge.clone()), "back to the preferred node");
    // A preference in an advertisement that does not select the node gives it nothing.
    f.ads = vec![
        yaml("metadata: {name: all}\nspec: {}"),
        yaml(
            "metadata: {name: elsewhere}\nspec: {nodeSelectors: [{matchLabels: {zone: nowhere}}], preferredNodeSelectors: [{weight: 50, preference: {matchLabels: {zone: edge}}}]}",
        ),
    ];
    assert_eq!(f.owner(), Ok(hashed));
}
