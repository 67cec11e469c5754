//! Which node announces an IP. Every speaker runs this on the same view and reaches the same
//! answer without talking to the others: rendezvous (highest random weight) hashing over the
//! eligible nodes, so when a node leaves only its own IPs move, and each to a different
//! survivor. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::node::NodeView;

/// One node as far as one IP is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub node: &'a str,
    /// The node has an interface in a subnet containing the IP. Such nodes are preferred:
    /// an off-subnet node can answer ARP only if the announcing interface is forced.
    pub on_subnet: bool,
    /// How much the advertisements prefer the node (`preferredNodeSelectors`): among the
    /// on-subnet nodes, those with the highest score compete.
    pub preference: u32,
}

/// The owner of `ip` among `candidates`: the on-subnet nodes if there are any, else all;
/// of those the most preferred; among those the one with the highest weight for (node, ip).
pub fn owner<'a>(ip: IpAddr, candidates: &[Candidate<'a>]) -> Option<&'a str> {
    let any_on_subnet = candidates.iter().any(|c| c.on_subnet);
    let near = || {
        candidates
            .iter()
            .filter(move |c| c.on_subnet || !any_on_subnet)
    };
    let best = near().map(|c| c.preference).max()?;
    near()
        .filter(|c| c.preference == best)
        // Ties are impossible in practice (64-bit weights); the name breaks them anyway.
        .max_by_key(|c| (weight(c.node, ip), c.node))
        .map(|c| c.node)
}

/// A stable 64-bit weight of (node, ip): FNV-1a over both, then a SplitMix64 finaliser so
/// that similar names do not give similar weights. Stable across builds and versions, unlike
/// `std`'s hasher, because speakers of different versions must agree during an upgrade.
pub fn weight(node: &str, ip: IpAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    // No allocation: this runs for every candidate of every IP of every pass.
    let (v4, v6);
    let ip_bytes: &[u8] = match ip {
        IpAddr::V4(a) => {
            v4 = a.octets();
            &v4
        }
        IpAddr::V6(a) => {
            v6 = a.octets();
            &v6
        }
    };
    for b in node
        .as_bytes()
        .iter()
        .chain([0u8].iter())
        .chain(ip_bytes.iter())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// What a node looks like to eligibility.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub ready: bool,
    /// Labelled `node.kubernetes.io/exclude-from-external-load-balancers`.
    pub excluded: bool,
    /// Its speaker is a live member.
    pub live: bool,
    pub labels: BTreeMap<String, String>,
}

/// Which nodes count as excluded from load balancers, besides those an advertisement does
/// not select. Every speaker must run with the same (the chart gives them all the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exclusion {
    /// The `node.kubernetes.io/exclude-from-external-load-balancers` label excludes a node
    /// (`--ignore-exclude-lb` turns this off, for single-node and control-plane-only
    /// clusters whose nodes carry it).
    pub by_label: bool,
    /// A cordoned node is excluded (`--exclude-cordoned`): its IPs and routes move before
    /// a drain evicts its pods.
    pub cordoned: bool,
}

impl Default for Exclusion {
    fn default() -> Self {
        Self {
            by_label: true,
            cordoned: false,
        }
    }
}

impl NodeFacts {
    /// What the API says of `node`. A node counts as ready when its `Ready` condition is
    /// True and its `NetworkUnavailable` condition is not: the network plugin says its pod
    /// network is not set up, so traffic for a Service sent there would not reach the pods
    /// (MetalLB moves IPs away from such nodes too).
    pub fn of(node: &NodeView, live: bool, exclusion: Exclusion) -> Self {
        let labelled = node
            .labels
            .contains_key(herald_api::keys::EXCLUDE_FROM_LB_LABEL);
        NodeFacts {
            ready: node.ready && !node.network_unavailable,
            excluded: (exclusion.by_label && labelled)
                || (exclusion.cordoned && node.unschedulable),
            live,
            labels: node.labels.clone(),
        }
    }
}

/// Why nobody may announce an IP.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum NoOwner {
    #[error("no L2Advertisement selects IPPool {0}, so its IPs are not announced")]
    NotAdvertised(String),
    #[error(
        "no L2Advertisement of IPPool {0} selects the Service by its serviceSelectors, so its IP is not announced"
    )]
    ServiceNotSelected(String),
    #[error("{0} is in no IPPool, so no L2Advertisement can select it")]
    NoPool(IpAddr),
    #[error(
        "every node is excluded (labelled node.kubernetes.io/exclude-from-external-load-balancers, cordoned with --exclude-cordoned, or not matched by the L2Advertisement's nodeSelectors)"
    )]
    AllExcluded,
    #[error("no ready node runs a live speaker")]
    NoLiveNode,
    #[error("externalTrafficPolicy is Local and no node has a ready endpoint")]
    NoLocalEndpoint,
}

impl NoOwner {
    /// Every `label`, so a metric lists each (at 0 too).
    pub const LABELS: [&'static str; 4] = [
        "NotAdvertised",
        "AllNodesExcluded",
        "NoLiveSpeaker",
        "NoLocalEndpoint",
    ];

    /// The cause as a metric label: the Event reason, or `NoLocalEndpoint`.
    pub fn label(&self) -> &'static str {
        self.reason().unwrap_or("NoLocalEndpoint")
    }

    /// Event reason; `None` when the situation is normal and needs no Warning.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            NoOwner::NotAdvertised(_) | NoOwner::ServiceNotSelected(_) => Some("NotAdvertised"),
            NoOwner::NoPool(_) => Some("NotAdvertised"),
            NoOwner::AllExcluded => Some("AllNodesExcluded"),
            NoOwner::NoLiveNode => Some("NoLiveSpeaker"),
            NoOwner::NoLocalEndpoint => None,
        }
    }
}

/// Nodes that may announce, given the nodes an advertisement allows (`allowed`, `None` when
/// no advertisement selects the pool) and, for `externalTrafficPolicy: Local`, the nodes with
/// a ready endpoint.
pub fn eligible<'a>(
    nodes: impl IntoIterator<Item = (&'a String, &'a NodeFacts)>,
    allowed: &dyn Fn(&NodeFacts) -> bool,
    local_endpoints: Option<&BTreeSet<&str>>,
) -> Result<Vec<&'a str>, NoOwner> {
    let admitted: Vec<(&String, &NodeFacts)> = nodes
        .into_iter()
        .filter(|(_, n)| !n.excluded && allowed(n))
        .collect();
    if admitted.is_empty() {
        return Err(NoOwner::AllExcluded);
    }
    let live: Vec<(&String, &NodeFacts)> = admitted
        .into_iter()
        .filter(|(_, n)| n.ready && n.live)
        .collect();
    if live.is_empty() {
        return Err(NoOwner::NoLiveNode);
    }
    let with_endpoints: Vec<&str> = live
        .into_iter()
        .filter(|(name, _)| local_endpoints.is_none_or(|e| e.contains(name.as_str())))
        .map(|(name, _)| name.as_str())
        .collect();
    if with_endpoints.is_empty() {
        return Err(NoOwner::NoLocalEndpoint);
    }
    Ok(with_endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_exclude_label_and_cordoning_exclude_as_configured() {
        let mut view: NodeView = serde_yaml_ng::from_str::<k8s_openapi::api::core::v1::Node>(
            "metadata: {name: a, labels: {node.kubernetes.io/exclude-from-external-load-balancers: ''}}",
        )
        .ok()
        .and_then(NodeView::of)
        .expect("a node");
        let by_default = Exclusion::default();
        let ignoring_label = Exclusion {
            by_label: false,
            ..by_default
        };
        let cordoned_too = Exclusion {
            by_label: false,
            cordoned: true,
        };
        assert!(NodeFacts::of(&view, true, by_default).excluded);
        assert!(!NodeFacts::of(&view, true, ignoring_label).excluded);
        view.unschedulable = true;
        assert!(
            !NodeFacts::of(&view, true, ignoring_label).excluded,
            "cordoning counts only when asked"
        );
        assert!(NodeFacts::of(&view, true, cordoned_too).excluded);
    }

    #[test]
    fn a_node_whose_network_is_unavailable_does_not_count_as_ready() {
        let node = |conditions: &str| -> NodeView {
            let node: k8s_openapi::api::core::v1::Node = serde_yaml_ng::from_str(&format!(
                "metadata: {{name: n1, labels: {{zone: a}}}}\nstatus: {{conditions: [{conditions}]}}"
            ))
            .expect("yaml");
            NodeView::of(node).expect("named")
        };
        let ready = "{type: Ready, status: 'True'}";
        assert!(NodeFacts::of(&node(ready), true, Exclusion::default()).ready);
        let unavailable = format!("{ready}, {{type: NetworkUnavailable, status: 'True'}}");
        assert!(!NodeFacts::of(&node(&unavailable), true, Exclusion::default()).ready);
        let available = format!("{ready}, {{type: NetworkUnavailable, status: 'False'}}");
        assert!(NodeFacts::of(&node(&available), true, Exclusion::default()).ready);
        assert!(
            !NodeFacts::of(
                &node("{type: Ready, status: 'False'}"),
                true,
                Exclusion::default()
            )
            .ready
        );
        let facts = NodeFacts::of(&node(ready), false, Exclusion::default());
        assert!(!facts.live && !facts.excluded);
        assert_eq!(facts.labels.get("zone").map(String::as_str), Some("a"));
    }

    fn candidates<'a>(names: &[&'a str]) -> Vec<Candidate<'a>> {
        names
            .iter()
            .map(|n| Candidate {
                node: n,
                on_subnet: true,
                preference: 0,
            })
            .collect()
    }

    #[test]
    fn same_view_same_owner_regardless_of_order() {
        let a = candidates(&["node-a", "node-b", "node-c"]);
        let mut b = a.clone();
        b.reverse();
        for i in 0..50u8 {
            let ip = ip(&format!("192.0.2.{i}"));
            assert_eq!(owner(ip, &a), owner(ip, &b));
        }
        assert_eq!(owner(ip("192.0.2.1"), &[]), None);
    }

    #[test]
    fn a_leaving_node_moves_only_its_own_ips_and_spreads_them() {
        let all = candidates(&["node-a", "node-b", "node-c", "node-d"]);
        let without_a: Vec<Candidate> =
            all.iter().filter(|c| c.node != "node-a").cloned().collect();
        let mut moved_to = BTreeSet::new();
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for i in 0..1000u32 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::from(
                0x2001_0db8_u128 << 96 | u128::from(i),
            ));
            let before = owner(ip, &all).expect("owner");
            let after = owner(ip, &without_a).expect("owner");
            *per_node.entry(before).or_default() += 1;
            if before == "node-a" {
                moved_to.insert(after);
            } else {
                assert_eq!(before, after, "{ip} moved although its owner stayed");
            }
        }
        // Spread: every node owns a fair share, and node-a's IPs go to all survivors.
        for (node, n) in &per_node {
            assert!((150..350).contains(n), "{node} owns {n} of 1000");
        }
        assert_eq!(moved_to.len(), 3);
    }

    #[test]
    fn on_subnet_nodes_win_over_off_subnet_ones() {
        for i in 0..50u8 {
            let ip = ip(&format!("192.0.2.{i}"));
            let mixed = [
                Candidate {
                    node: "far-1",
                    on_subnet: false,
                    preference: 0,
                },
                Candidate {
                    node: "near",
                    on_subnet: true,
                    preference: 0,
                },
                Candidate {
                    node: "far-2",
                    on_subnet: false,
                    preference: 0,
                },
            ];
            assert_eq!(owner(ip, &mixed), Some("near"));
        }
        // Nobody on the subnet: an off-subnet node still announces (a forced interface).
        let far = [Candidate {
            node: "far",
            on_subnet: false,
            preference: 0,
        }];
        assert_eq!(owner(ip("192.0.2.1"), &far), Some("far"));
    }

    /// The most preferred eligible nodes win, on every IP; without them the next most
    /// preferred, then anyone; never an off-subnet node over an on-subnet one.
    #[test]
    fn the_most_preferred_node_wins_and_failover_goes_to_the_next() {
        let node = |node, on_subnet, preference| Candidate {
            node,
            on_subnet,
            preference,
        };
        for i in 0..50u8 {
            let ip: IpAddr = format!("192.0.2.{i}").parse().expect("ip");
            let all = [
                node("edge-1", true, 100),
                node("edge-2", true, 100),
                node("zone-a", true, 10),
                node("zone-b", true, 0),
                node("far", false, 1000),
            ];
            let first = owner(ip, &all).expect("owner");
            assert!(first.starts_with("edge-"), "{ip}: {first}");
            let no_edge: Vec<Candidate> = all
                .iter()
                .filter(|c| !c.node.starts_with("edge-"))
                .cloned()
                .collect();
            assert_eq!(owner(ip, &no_edge), Some("zone-a"));
            assert_eq!(owner(ip, &no_edge[1..]), Some("zone-b"));
        }
        // Between equally preferred nodes, IPs still spread.
        let both = [node("edge-1", true, 5), node("edge-2", true, 5)];
        let owners: BTreeSet<&str> = (0..50u8)
            .filter_map(|i| owner(format!("192.0.2.{i}").parse().expect("ip"), &both))
            .collect();
        assert_eq!(owners.len(), 2);
    }

    #[test]
    fn weights_are_stable_across_builds() {
        // Pinned values: a change here breaks agreement between speaker versions.
        assert_ne!(
            weight("node-a", ip("192.0.2.10")),
            weight("node-b", ip("192.0.2.10"))
        );
        assert_eq!(
            weight("node-a", ip("192.0.2.10")),
            10_032_305_604_240_994_480
        );
    }

    fn node(ready: bool, excluded: bool, live: bool, zone: &str) -> NodeFacts {
        NodeFacts {
            ready,
            excluded,
            live,
            labels: BTreeMap::from([("zone".to_owned(), zone.to_owned())]),
        }
    }

    #[test]
    fn eligibility_filters_and_says_why_nobody_is_left() {
        let nodes = BTreeMap::from([
            ("a".to_owned(), node(true, false, true, "x")),
            ("b".to_owned(), node(true, true, true, "x")),
            ("c".to_owned(), node(false, false, true, "x")),
            ("d".to_owned(), node(true, false, false, "x")),
            ("e".to_owned(), node(true, false, true, "y")),
        ]);
        let any = |_: &NodeFacts| true;
        assert_eq!(eligible(&nodes, &any, None), Ok(vec!["a", "e"]));
        let zone_x = |n: &NodeFacts| n.labels.get("zone").is_some_and(|z| z == "x");
        assert_eq!(eligible(&nodes, &zone_x, None), Ok(vec!["a"]));
        let endpoints = BTreeSet::from(["e", "c"]);
        assert_eq!(eligible(&nodes, &any, Some(&endpoints)), Ok(vec!["e"]));
        assert_eq!(
            eligible(&nodes, &zone_x, Some(&endpoints)),
            Err(NoOwner::NoLocalEndpoint)
        );
        let zone_z = |n: &NodeFacts| n.labels.get("zone").is_some_and(|z| z == "z");
        assert_eq!(eligible(&nodes, &zone_z, None), Err(NoOwner::AllExcluded));
        let only_b = BTreeMap::from([("b".to_owned(), node(true, true, true, "x"))]);
        assert_eq!(eligible(&only_b, &any, None), Err(NoOwner::AllExcluded));
        let only_dead = BTreeMap::from([("d".to_owned(), node(true, false, false, "x"))]);
        assert_eq!(eligible(&only_dead, &any, None), Err(NoOwner::NoLiveNode));
    }
}
