use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::*;
use crate::election::Exclusion;
use crate::service::{ServiceIps, allocated, labelled};

fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
    serde_yaml_ng::from_str(s).expect("yaml")
}

fn node(name: &str, labels: &[(&str, &str)], ready: bool) -> NodeView {
    NodeView {
        name: name.into(),
        uid: "u".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ready,
        network_unavailable: false,
        unschedulable: false,
        internal_ip: Some("10.0.0.1".parse().expect("ip")),
        addresses: Box::new(["10.0.0.1".parse().expect("ip")]),
    }
}

/// A node on the router's LAN: eth0 with an IPv4 and a global and link-local IPv6 address.
fn lan() -> Snapshot {
    Snapshot::lan_interface(&["fe80::1/64", "192.0.2.11/24", "2001:db8::11/64"])
}

struct Fixture {
    services: HashMap<String, Arc<ServiceIps>>,
    /// Per Local Service, the nodes announcing it (`settle`'s answer).
    serving: BTreeMap<&'static str, BTreeSet<&'static str>>,
    node: NodeView,
    pools: Vec<IPPool>,
    peers: Vec<BGPPeer>,
    ads: Vec<BGPAdvertisement>,
    interfaces: Snapshot,
    secrets: BTreeMap<String, SecretState>,
}

impl Fixture {
    fn new() -> Self {
        Self {
            services: HashMap::from([
                allocated("shop", "web", &["198.51.100.10", "2001:db8:100::10"], false),
                allocated("shop", "other-pool", &["203.0.113.5"], false),
            ]),
            serving: BTreeMap::new(),
            node: node("a", &[("rack", "r1")], true),
            pools: vec![
                yaml(
                    "metadata: {name: routed}\nspec: {addresses: [198.51.100.0/24, '2001:db8:100::/64']}",
                ),
                yaml("metadata: {name: lan-only}\nspec: {addresses: [203.0.113.0/24]}"),
            ],
            peers: vec![yaml(
                "metadata: {name: tor}\nspec: {myASN: 64512, peerASN: 64500, peerAddress: 192.0.2.1}",
            )],
            ads: vec![yaml("metadata: {name: routed}\nspec: {ipPools: [routed]}")],
            interfaces: lan(),
            secrets: BTreeMap::new(),
        }
    }

    fn decide(&self) -> BgpDecision {
        let targets = Targets::with_serving(&self.services, self.serving.clone());
        let pools: Vec<&IPPool> = self.pools.iter().collect();
        let peers: Vec<&BGPPeer> = self.peers.iter().collect();
        let ads: Vec<&BGPAdvertisement> = self.ads.iter().collect();
        decide(&BgpView {
            local_announcing: &self.serving,
            me: "a",
            node: Some(&self.node),
            targets: &targets,
            pools: &pools,
            peers: &peers,
            advertisements: &ads,
            interfaces: &self.interfaces,
            secrets: &self.secrets,
            exclusion: Exclusion::default(),
        })
    }

    fn routes(&self, peer: &str) -> Vec<String> {
        self.decide().sessions[peer]
            .routes
            .announced()
            .map(ToString::to_string)
            .collect()
    }
}

#[test]
fn a_selected_node_announces_the_advertised_pools_ips_as_host_routes_of_both_families() {
    let f = Fixture::new();
    assert_eq!(
        f.routes("tor"),
        ["198.51.100.10/32", "2001:db8:100::10/128"],
        "the pool no BGPAdvertisement selects stays off BGP"
    );
    let plan = &f.decide().sessions["tor"];
    assert_eq!(plan.peer.address, "192.0.2.1:179".parse().expect("addr"));
    assert_eq!(plan.peer.session.peer_asn, Some(64500));
    assert_eq!(plan.peer.session.hold_time, Duration::from_secs(90));
    assert_eq!(plan.peer.session.keepalive, Duration::from_secs(30));
    assert_eq!(plan.peer.session.graceful_restart, None);
    assert!(plan.routes.speaker.external);
    // Next hops and router ID: the node's addresses on the router's subnet, never the
    // link-local one, not the InternalIP elsewhere.
    assert_eq!(
        plan.routes.speaker.next_hop_v4,
        Some("192.0.2.11".parse().expect("ip"))
    );
    assert_eq!(
        plan.routes.speaker.next_hop_v6,
        Some("2001:db8::11".parse().expect("ip"))
    );
    assert_eq!(
        plan.peer.session.router_id,
        "192.0.2.11".parse::<Ipv4Addr>().expect("ip")
    );
}

/// eBGP to a directly connected router leaves with TTL 1 (as routers expect of a single-hop
/// session), over several hops with 255; iBGP with the kernel's default.
#[test]
fn the_sessions_ttl_follows_the_hops_to_the_router() {
    let mut f = Fixture::new();
    assert_eq!(f.decide().sessions["tor"].peer.ttl, Some(1));
    f.peers = vec![yaml(
        "metadata: {name: tor}\nspec: {myASN: 64512, peerASN: 64500, peerAddress: 192.0.2.1, ebgpMultiHop: true}",
    )];
    assert_eq!(f.decide().sessions["tor"].peer.ttl, Some(255));
    f.peers = vec![yaml(
        "metadata: {name: tor}\nspec: {myASN: 64512, peerASN: 64512, peerAddress: 192.0.2.1}",
    )];
    assert_eq!(f.decide().sessions["tor"].peer.ttl, None);
    // BFD is single hop: asking for both is refused, saying so.
    f.peers = vec![yaml(
        "metadata: {name: tor}\nspec: {myASN: 64512, peerASN: 64500, peerAddress: 192.0.2.1, ebgpMultiHop: true, bfd: {}}",
    )];
    let decision = f.decide();
    assert!(decision.sessions.is_empty());
    assert!(
        decision.refused["tor"].contains("BFD single hop"),
        "{:?}",
        decision.refused
    );
}

#[test]
fn a_peer_with_bfd_runs_it_with_its_timers_and_the_defaults_for_the_rest() {
    let mut f = Fixture::new();
    assert_eq!(f.decide().sessions["tor"].peer.bfd, None);
    f.peers = vec![yaml(
        "metadata: {name: tor}\nspec: {myASN: 64512, peerASN: 64500, peerAddress: 192.0.2.1, bfd: {receiveInterval: 100, passiveMode: true}}",
    )];
    assert_eq!(
        f.decide().sessions["tor"].peer.bfd,
        Some(bfd::Config {
            transmit_interval: Duration::from_millis(300),
            receive_interval: Duration::from_millis(100),
            detect_mult: 3,
            passive: true,
        })
    );
}

/// A node's address added or replaced on the interface facing the router changes the next
/// hops the routes carry, not the session: the running session re-announces rather than
/// being opened anew (a flap of every route on the router).
#[test]
fn a_new_address_changes_the_next_hops_not_the_session() {
    let mut f = Fixture::new();
    f.interfaces = Snapshot::lan_interface(&["fe80::1/64", "192.0.2.11/24"]);
    let before = f.decide().sessions["tor"].clone();
    assert_eq!(before.routes.speaker.next_hop_v6, None);
    assert_eq!(
        before.routes.announced().count(),
        1,
        "no IPv6 route without an IPv6 next hop"
    );
    f.interfaces = lan();
    let after = f.decide().sessions["tor"].clone();
    assert_eq!(after.peer, before.peer);
    assert_eq!(
        after.routes.speaker.next_hop_v6,
        Some("2001:db8::11".parse().expect("ip"))
    );
    assert_eq!(after.routes.announced().count(), 2);
}

#[test]
fn peers_and_advertisements_select_nodes_and_peers() {
    let mut f = Fixture::new();
    f.peers.push(yaml(
        "metadata: {name: other-rack}\nspec: {myASN: 64512, peerASN: 64500, peerAddress: 192.0.2.2, nodeSelectors: [{matchLabels: {rack: r2}}]}",
    ));
    f.peers.push(yaml(
        "metadata: {name: spine}\nspec: {myASN: 64512, peerASN: 64501, peerAddress: 192.0.2.3}",
    ));
    let sessions: Vec<String> = f.decide().sessions.into_keys().collect();
    assert_eq!(
        sessions,
        ["spine", "tor"],
        "a peer for rack r2 only is not spoken to from r1"
    );

    // An advertisement for one peer tells that peer only.
    f.ads = vec![yaml(
        "metadata: {name: routed}\nspec: {ipPools: [routed], peers: [spine]}",
    )];
    assert!(f.routes("tor").is_empty());
    assert_eq!(f.routes("spine").len(), 2);

    // An advertisement for other nodes: this node tells nobody, its sessions stay.
    f.ads = vec![yaml(
        "metadata: {name: routed}\nspec: {ipPools: [routed], nodeSelectors: [{matchLabels: {rack: r2}}]}",
    )];
    let decision = f.decide();
    assert_eq!(decision.sessions.len(), 2);
    assert!(
        decision
            .sessions
            .values()
            .all(|s| s.routes.routes.is_empty())
    );

    // Pools by label.
    f.pools[0].metadata.labels = Some(BTreeMap::from([("bgp".into(), "yes".into())]));
    f.ads = vec![yaml(
        "metadata: {name: labelled}\nspec: {ipPoolSelectors: [{matchLabels: {bgp: 'yes'}}]}",
    )];
    assert_eq!(f.routes("tor").len(), 2);
}

/// `aggregationLength`: the IPs of a pool are announced as the prefixes holding them, one
/// route for several Services; another advertisement without it adds the host routes.
#[test]
fn aggregation_announces_the_prefix_holding_the_ips() {
    let mut f = Fixture::new();
    f.services
        .extend([allocated("shop", "api", &["198.51.100.77"], false)]);
    f.ads = vec![yaml(
        "metadata: {name: routed}\nspec: {ipPools: [routed], aggregationLength: 24, aggregationLengthV6: 64, communities: ['64500:1']}",
    )];
    assert_eq!(f.routes("tor"), ["198.51.100.0/24", "2001:db8:100::/64"]);
    f.ads.push(yaml(
        "metadata: {name: hosts}\nspec: {ipPools: [routed], localPref: 200}",
    ));
    assert_eq!(
        f.routes("tor"),
        [
            "198.51.100.0/24",
            "198.51.100.10/32",
            "198.51.100.77/32",
            "2001:db8:100::/64",
            "2001:db8:100::10/128"
        ]
    );
    let decision = f.decide();
    let routes = &decision.sessions["tor"].routes.routes;
    let aggregate = &routes[&"198.51.100.0/24".parse().expect("net")];
    assert_eq!(aggregate.communities, [(64500 << 16) | 1]);
    assert_eq!(
        aggregate.local_pref, None,
        "the host routes' advertisement is not the aggregate's"
    );
}

#[test]
fn service_selectors_choose_the_services_an_advertisement_announces() {
    let mut f = Fixture::new();
    f.services.extend([labelled(
        allocated("shop", "api", &["198.51.100.77"], false),
        &[("bgp", "yes")],
    )]);
    f.ads = vec![yaml(
        "metadata: {name: chosen}\nspec: {ipPools: [routed], serviceSelectors: [{matchLabels: {bgp: 'yes'}}], communities: ['64500:1']}",
    )];
    assert_eq!(f.routes("tor"), ["198.51.100.77/32"]);
    // Another advertisement for every Service: all are announced, the community only on
    // the Service the first one selects.
    f.ads
        .push(yaml("metadata: {name: all}\nspec: {ipPools: [routed]}"));
    assert_eq!(
        f.routes("tor"),
        [
            "198.51.100.10/32",
            "198.51.100.77/32",
            "2001:db8:100::10/128"
        ]
    );
    let decision = f.decide();
    let routes = &decision.sessions["tor"].routes.routes;
    assert_eq!(
        routes[&"198.51.100.77/32".parse().expect("net")].communities,
        [(64500 << 16) | 1]
    );
    assert!(
        routes[&"198.51.100.10/32".parse().expect("net")]
            .communities
            .is_empty()
    );
    // A label removed: its route goes with it when only the selecting advertisement is left.
    f.ads.pop();
    f.services
        .extend([allocated("shop", "api", &["198.51.100.77"], false)]);
    assert!(f.routes("tor").is_empty());
}

#[test]
fn a_service_is_announced_only_while_it_has_a_serving_endpoint() {
    let f = Fixture::new();
    let web_only = [(
        "shop/web-1".to_owned(),
        Arc::new(crate::endpoints::ServingNodes {
            service: "shop/web".into(),
            nodes: vec!["b".into()],
            draining: Vec::new(),
            any_serving: true,
        }),
    )];
    let decide = |slices: &HashMap<String, Arc<crate::endpoints::ServingNodes>>| {
        let targets = Targets::new(&f.services, slices);
        let pools: Vec<&IPPool> = f.pools.iter().collect();
        let peers: Vec<&BGPPeer> = f.peers.iter().collect();
        let ads: Vec<&BGPAdvertisement> = vec![&f.ads[0]];
        decide(&BgpView {
            local_announcing: &BTreeMap::new(),
            me: "a",
            node: Some(&f.node),
            targets: &targets,
            pools: &pools,
            peers: &peers,
            advertisements: &ads,
            interfaces: &f.interfaces,
            secrets: &f.secrets,
            exclusion: Exclusion::default(),
        })
        .sessions["tor"]
            .routes
            .routes
            .len()
    };
    assert_eq!(
        decide(&HashMap::new()),
        0,
        "no endpoint anywhere: nothing to route to"
    );
    // A Cluster Service served from another node: every eligible node announces it.
    assert_eq!(decide(&HashMap::from(web_only)), 2);
}

#[test]
fn local_traffic_is_announced_only_from_nodes_serving_it() {
    let mut f = Fixture::new();
    f.services = HashMap::from([allocated("shop", "web", &["198.51.100.10"], true)]);
    assert!(f.routes("tor").is_empty(), "no endpoint anywhere");
    f.serving = BTreeMap::from([("shop/web", BTreeSet::from(["b"]))]);
    assert!(f.routes("tor").is_empty(), "served from another node only");
    f.serving = BTreeMap::from([("shop/web", BTreeSet::from(["a", "b"]))]);
    assert_eq!(f.routes("tor"), ["198.51.100.10/32"]);
}

#[test]
fn a_node_that_may_not_announce_withdraws_everything_and_keeps_its_sessions() {
    let mut f = Fixture::new();
    f.node = node("a", &[], false);
    assert!(f.routes("tor").is_empty(), "NotReady");
    f.node = node("a", &[], true);
    f.node.network_unavailable = true;
    assert!(f.routes("tor").is_empty(), "NetworkUnavailable");
    f.node = node("a", &[(herald_api::keys::EXCLUDE_FROM_LB_LABEL, "")], true);
    assert!(f.routes("tor").is_empty(), "excluded");
    assert!(f.decide().sessions.contains_key("tor"));
}

#[test]
fn routes_carry_the_advertisements_local_pref_and_communities() {
    let mut f = Fixture::new();
    f.ads = vec![
        yaml(
            "metadata: {name: a}\nspec: {ipPools: [routed], localPref: 100, communities: ['64500:1', no-export]}",
        ),
        yaml(
            "metadata: {name: b}\nspec: {localPref: 200, communities: ['large:64512:1:2', '64500:1', '99999:1']}",
        ),
    ];
    let decision = f.decide();
    let route = &decision.sessions["tor"].routes.routes[&"198.51.100.10/32".parse().expect("net")];
    assert_eq!(route.local_pref, Some(200));
    assert_eq!(route.communities, [64500 << 16 | 1, 0xFFFF_FF01]);
    assert_eq!(route.large_communities, [[64512, 1, 2]]);
    assert_eq!(decision.bad_communities.len(), 1);
    assert!(decision.bad_communities[0].starts_with("b: community \"99999:1\""));
}

#[test]
fn peer_settings_follow_the_spec_and_unusable_peers_are_refused_with_a_reason() {
    let mut f = Fixture::new();
    f.peers = vec![yaml(
        "metadata: {name: tor}\nspec: {myASN: 64512, dynamicASN: internal, peerAddress: '2001:db8::1', peerPort: 1179, holdTime: 9s, keepaliveTime: 3s, connectTime: 30s, routerID: 10.9.9.9, enableGracefulRestart: true}",
    )];
    let plan = &f.decide().sessions["tor"];
    assert_eq!(
        plan.peer.address,
        "[2001:db8::1]:1179".parse().expect("addr")
    );
    assert_eq!(plan.peer.session.peer_asn, Some(64512));
    assert!(!plan.routes.speaker.external);
    assert_eq!(plan.peer.session.hold_time, Duration::from_secs(9));
    assert_eq!(plan.peer.session.keepalive, Duration::from_secs(3));
    assert_eq!(
        plan.peer.session.router_id,
        "10.9.9.9".parse::<Ipv4Addr>().expect("ip")
    );
    assert_eq!(plan.peer.session.graceful_restart, Some(RESTART_TIME));
    assert_eq!(plan.peer.session.connect_retry, Duration::from_secs(30));
    // Both families on one session by default.
    assert_eq!(plan.peer.session.families, Family::ALL.to_vec());
    assert!(plan.routes.speaker.next_hop_v4.is_some() && plan.routes.speaker.next_hop_v6.is_some());
    // One family: offered alone, and the other's routes have no next hop (never sent).
    for (only, family) in [("IPv4", Family::Ipv4Unicast), ("IPv6", Family::Ipv6Unicast)] {
        f.peers[0].spec.address_families = vec![yaml(only)];
        let plan = &f.decide().sessions["tor"];
        assert_eq!(plan.peer.session.families, [family]);
        let speaker = &plan.routes.speaker;
        assert_eq!(
            (speaker.next_hop_v4.is_some(), speaker.next_hop_v6.is_some()),
            (only == "IPv4", only == "IPv6")
        );
    }

    // Passive: listening on port 179 of the node's address facing the router (no
    // connecting out), or of sourceAddress.
    assert_eq!(plan.peer.listen, None);
    f.peers[0].spec.address_families = Vec::new();
    f.peers[0].spec.passive = true;
    let plan = &f.decide().sessions["tor"];
    let facing = plan
        .routes
        .speaker
        .next_hop_v6
        .expect("an IPv6 address facing the router");
    assert_eq!(plan.peer.listen, Some(SocketAddr::new(facing, 179)));
    f.peers[0].spec.source_address = Some("2001:db8::99".into());
    assert_eq!(
        f.decide().sessions["tor"].peer.listen,
        Some("[2001:db8::99]:179".parse().expect("addr"))
    );
    f.peers[0].spec.source_address = None;
    f.peers[0].spec.passive = false;

    // A router beyond the node's subnets: the InternalIP is the next hop.
    f.peers = vec![yaml(
        "metadata: {name: far}\nspec: {myASN: 64512, dynamicASN: external, peerAddress: 10.20.0.1}",
    )];
    let plan = &f.decide().sessions["far"];
    assert_eq!(plan.peer.session.peer_asn, None);
    assert_eq!(plan.peer.session.connect_retry, session::CONNECT_RETRY);
    // A retry sooner than an attempt may take cuts the attempt short.
    f.peers[0].spec.connect_time = Some("1s".into());
    let plan = &f.decide().sessions["far"];
    assert_eq!(
        (plan.peer.session.connect_retry, plan.peer.connect_timeout),
        (Duration::from_secs(1), Duration::from_secs(1))
    );
    assert!(plan.routes.speaker.external);
    assert_eq!(
        plan.routes.speaker.next_hop_v4,
        Some("10.0.0.1".parse().expect("ip"))
    );

    // No IPv4 anywhere and no routerID: refused, saying why.
    f.interfaces = Snapshot::default();
    f.node.addresses = Box::new([]);
    let decision = f.decide();
    assert!(decision.sessions.is_empty());
    assert!(decision.refused["far"].contains("routerID"));
}

#[test]
fn nothing_is_decided_before_the_node_is_known() {
    let f = Fixture::new();
    let targets = Targets::with_serving(&f.services, BTreeMap::new());
    let decision = decide(&BgpView {
        local_announcing: &BTreeMap::new(),
        me: "a",
        node: None,
        targets: &targets,
        pools: &[],
        peers: &[&f.peers[0]],
        advertisements: &[],
        interfaces: &f.interfaces,
        secrets: &f.secrets,
        exclusion: Exclusion::default(),
    });
    assert!(decision.sessions.is_empty());
}

#[test]
fn a_password_comes_from_its_secret_and_a_secret_that_cannot_serve_refuses_the_peer() {
    let mut f = Fixture::new();
    f.peers[0].spec.password_secret = Some(yaml("{name: tor-password}"));
    let secret = |state| BTreeMap::from([("tor-password".to_owned(), state)]);

    f.secrets = secret(SecretState::Waiting);
    let decision = f.decide();
    assert!(decision.sessions.is_empty() && decision.refused.is_empty());
    assert!(
        decision.waiting.contains("tor"),
        "nothing said while it is read"
    );

    f.secrets = secret(SecretState::Missing);
    assert_eq!(
        f.decide().refused["tor"],
        "its password Secret \"tor-password\" does not exist in Herald's namespace"
    );
    f.secrets = secret(SecretState::Data(BTreeMap::from([(
        "other".into(),
        b"x".to_vec(),
    )])));
    assert_eq!(
        f.decide().refused["tor"],
        "its password Secret \"tor-password\" has no key \"password\""
    );
    f.secrets = secret(SecretState::Data(BTreeMap::from([(
        "password".into(),
        vec![b'x'; 81],
    )])));
    assert!(f.decide().refused["tor"].contains("at most 80"));

    f.secrets = secret(SecretState::Data(BTreeMap::from([(
        "password".into(),
        b"s3cret".to_vec(),
    )])));
    let decision = f.decide();
    assert_eq!(
        decision.sessions["tor"].peer.password,
        Some(Password::new(b"s3cret").expect("fits"))
    );
    // Nothing the speaker logs or reports shows it.
    assert!(!format!("{decision:?}").contains("s3cret"));
    assert!(!format!("{:?}", f.secrets).contains("s3cret"));

    // A rotated password is a changed session (closed and opened again with it).
    f.secrets = secret(SecretState::Data(BTreeMap::from([(
        "password".into(),
        b"rotated".to_vec(),
    )])));
    assert_ne!(
        f.decide().sessions["tor"].peer,
        decision.sessions["tor"].peer
    );
}

#[test]
fn a_stop_keeps_routes_only_on_a_node_that_stays_in_service() {
    let mut n = node("a", &[], true);
    assert_eq!(stop_of(Some(&n)).0, Stop::Restart);
    n.unschedulable = true;
    assert_eq!(stop_of(Some(&n)).0, Stop::Cease, "drained");
    n.unschedulable = false;
    n.ready = false;
    assert_eq!(stop_of(Some(&n)).0, Stop::Cease, "shutting down");
    assert_eq!(stop_of(None).0, Stop::Cease, "deleted");
}
