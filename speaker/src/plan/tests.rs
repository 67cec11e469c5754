use super::*;
use crate::interfaces::Interface;

fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
    serde_yaml_ng::from_str(s).expect("yaml")
}

fn service(name: &str, ip: &str, local: bool) -> LbService {
    yaml(&format!(
        "metadata: {{name: {name}, namespace: default}}
spec: {{type: LoadBalancer, externalTrafficPolicy: {}}}
status:
  loadBalancer: {{ingress: [{{ip: '{ip}'}}]}}
  conditions: [{{type: herald.dev/IPAllocated, status: 'True', reason: Allocated, message: '', lastTransitionTime: '2026-01-01T00:00:00Z'}}]",
        if local { "Local" } else { "Cluster" }
    ))
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
    Snapshot {
        interfaces: vec![Interface {
            index: 2,
            name: "eth0".into(),
            mac: Some([2, 0, 0, 0, 0, 1]),
            up: true,
            is_virtual: false,
            networks: vec!["192.0.2.1/24".parse().unwrap()],
        }],
        default_v4: None,
        default_v6: None,
    }
}

struct Fixture {
    services: Vec<LbService>,
    nodes: BTreeMap<String, NodeFacts>,
    pools: Vec<IPPool>,
    ads: Vec<L2Advertisement>,
    endpoints: BTreeMap<String, BTreeSet<String>>,
}

impl Fixture {
    fn new() -> Self {
        Self {
            services: vec![service("web", "192.0.2.10", false)],
            nodes: ["a", "b", "c"]
                .iter()
                .map(|n| (n.to_string(), node("x")))
                .collect(),
            pools: vec![yaml(
                "metadata: {name: lan, labels: {site: one}}\nspec: {addresses: [192.0.2.0/24]}",
            )],
            ads: vec![yaml("metadata: {name: all}\nspec: {}")],
            endpoints: BTreeMap::new(),
        }
    }

    fn decide_as(&self, me: &str) -> Decision {
        let services: Vec<&LbService> = self.services.iter().collect();
        let pools: Vec<&IPPool> = self.pools.iter().collect();
        let ads: Vec<&L2Advertisement> = self.ads.iter().collect();
        let snap = snapshot();
        let subnets = |_: &str| vec!["192.0.2.0/24".parse().unwrap()];
        decide(&View {
            me,
            services: &services,
            nodes: &self.nodes,
            subnets: &subnets,
            pools: &pools,
            advertisements: &ads,
            endpoints: &self.endpoints,
            interfaces: &snap,
        })
    }

    fn owner(&self) -> Result<String, NoOwner> {
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        self.decide_as("a").ips[&ip].owner.clone()
    }
}

#[test]
fn exactly_one_node_plans_to_answer_and_all_agree_who() {
    let f = Fixture::new();
    let ip: IpAddr = "192.0.2.10".parse().unwrap();
    let owners: BTreeSet<String> = ["a", "b", "c"]
        .iter()
        .map(|me| f.decide_as(me).ips[&ip].owner.clone().unwrap())
        .collect();
    assert_eq!(owners.len(), 1, "speakers disagree: {owners:?}");
    let owner = owners.into_iter().next().unwrap();
    for me in ["a", "b", "c"] {
        let d = f.decide_as(me);
        let answers = d.plan.get(&2).is_some_and(|ips| ips.contains(&ip));
        assert_eq!(answers, me == owner, "{me}");
        if me == owner {
            assert_eq!(d.ips[&ip].interfaces, ["eth0"]);
        }
    }
}

#[test]
fn only_herald_allocated_load_balancers_are_announced() {
    let mut f = Fixture::new();
    let mut foreign = service("other", "192.0.2.20", false);
    foreign.status.condition = None;
    let mut not_lb = service("clusterip", "192.0.2.21", false);
    not_lb.spec.load_balancer = false;
    let mut failed = service("failed", "192.0.2.22", false);
    if let Some(c) = failed.status.condition.as_mut() {
        c.allocated = false;
    }
    f.services.extend([foreign, not_lb, failed]);
    assert_eq!(f.decide_as("a").ips.len(), 1);
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
fn local_traffic_policy_follows_ready_endpoints() {
    let mut f = Fixture::new();
    f.services = vec![service("web", "192.0.2.10", true)];
    assert_eq!(f.owner(), Err(NoOwner::NoLocalEndpoint));
    f.endpoints
        .insert("default/web".into(), BTreeSet::from(["c".to_owned()]));
    assert_eq!(f.owner(), Ok("c".into()));
    f.endpoints
        .insert("default/web".into(), BTreeSet::from(["b".to_owned()]));
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
