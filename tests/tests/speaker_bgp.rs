//! BGP mode end to end: speakers in node namespaces, the real API server and controller, and
//! a real router on the LAN that every node peers with, FRR and BIRD 2 alike. What the
//! router does with the routes is read from its own kernel, where it installs the ECMP
//! routes it chose (and, for what only FRR shows, from `vtysh ... json`).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use herald_api::{BGPSession, BGPSessionSpec};
use herald_lab::Process;
use herald_lab::client_view::metric;
use herald_lab::netns::{self, Lan};
use herald_lab::objects::{apply, events_in, ips, wait_for, wait_for_event};
use herald_lab::process_cluster::{KEY, endpoints_on, ready_node, setup, speaker, speakers};
use herald_lab::router::{
    Bird, Frr, LAN_ROUTER_ASN as ROUTER_ASN, Peering, Router, RouterConfig, on_lan,
};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams};

const CLUSTER_ASN: u32 = 64512;
/// How long the router may take to show a change: generous, so a loaded machine does not
/// fail the test; the time each change took is printed (docs/benchmarks.md has the figures).
const WITHIN: Duration = Duration::from_secs(10);

/// Polls `check` every 50 ms for at most `WITHIN`; panics naming `what` after that.
fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WITHIN;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "no {what} within {WITHIN:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the router forwards `prefix` to exactly `expected` (none: no route); returns
/// how long it took.
fn wait_next_hops(router: &impl Router, prefix: &str, expected: &[IpAddr]) -> Duration {
    let expected: BTreeSet<String> = expected.iter().map(ToString::to_string).collect();
    let started = Instant::now();
    let what = format!("next hops {expected:?} for {prefix}");
    let deadline = started + WITHIN;
    while router.kernel_next_hops(prefix) != expected {
        assert!(
            Instant::now() < deadline,
            "{what} within {WITHIN:?}: has {:?}",
            router.kernel_next_hops(prefix)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    eprintln!("{what} after {took:?}");
    took
}

/// A router at 192.0.2.1 on the LAN, accepting sessions from its hosts; its address.
fn router_on<R>(lan: &mut Lan, start: fn(&str, &RouterConfig) -> anyhow::Result<R>) -> (R, String) {
    let (router, host) = on_lan(lan, start, Peering::default()).expect("router");
    (router, host.v4.to_string())
}

/// The routed pool (BGP only: the LAN pool of `setup` stays L2's), one peer and one
/// advertisement naming the pool, as a user writes them.
fn bgp_config(router_ip: &str, peer_extra: &str) -> String {
    format!(
        "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {{name: routed}}\nspec: {{addresses: [198.51.100.0/24, '2001:db8:100::/64'], autoAssign: false}}\n---\napiVersion: herald.dev/v1alpha1\nkind: BGPPeer\nmetadata: {{name: tor}}\nspec: {{myASN: {CLUSTER_ASN}, peerASN: {ROUTER_ASN}, peerAddress: {router_ip}{peer_extra}}}\n---\napiVersion: herald.dev/v1alpha1\nkind: BGPAdvertisement\nmetadata: {{name: routed}}\nspec: {{ipPools: [routed]}}"
    )
}

/// Cordons `node` (`kubectl cordon`, the first step of `kubectl drain`), or uncordons it.
async fn cordon(client: &kube::Client, node: &str, on: bool) {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    nodes
        .patch(
            node,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"unschedulable": on}})),
        )
        .await
        .expect("cordon");
}

/// `node`'s BGPSession with the peer `tor`, once `check` holds for it.
async fn session_record(
    client: &kube::Client,
    node: &str,
    check: impl Fn(&BGPSessionSpec) -> bool,
) -> BGPSessionSpec {
    session_record_of(client, node, "tor", check).await
}

/// The BGPSession of `node` with `peer` once `check` holds (panics after `WITHIN`).
async fn session_record_of(
    client: &kube::Client,
    node: &str,
    peer: &str,
    check: impl Fn(&BGPSessionSpec) -> bool,
) -> BGPSessionSpec {
    let api: Api<BGPSession> = Api::all(client.clone());
    let name = herald_api::bgp_session::name(node, peer);
    let deadline = Instant::now() + WITHIN;
    loop {
        let got = api.get_opt(&name).await.ok().flatten().map(|s| s.spec);
        if let Some(spec) = got.as_ref().filter(|s| check(s)) {
            return spec.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{name}: not as expected within {WITHIN:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A LoadBalancer Service `name` from the routed pool; its IPs.
async fn routed_service(
    client: &kube::Client,
    name: &str,
    spec_extra: &str,
    count: usize,
) -> Vec<String> {
    apply(client, &format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default, annotations: {{herald.dev/pool: routed}}}}\nspec: {{type: LoadBalancer, ports: [{{port: 8080}}]{spec_extra}}}")).await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    wait_for(&svcs, name, "its IPs", |s| {
        (ips(s).len() == count).then(|| ips(s))
    })
    .await
}

/// Points 1 and 2 of BGP mode against `R`: sessions from every node, a dual-stack Service's
/// host routes with every eligible node as next hop (ECMP in the router's kernel),
/// `externalTrafficPolicy: Local` following ready endpoints, an excluded node withdrawing
/// with its session up, deletion withdrawing, a stopped speaker (no graceful restart)
/// withdrawing.
async fn announces_and_withdraws<R: Router>(start: fn(&str, &RouterConfig) -> anyhow::Result<R>) {
    let (cp, mut lan, _controller) = setup(2).await;
    let client = cp.client();
    let (router, router_ip) = router_on(&mut lan, start);
    let (n1, n2) = (IpAddr::V4(lan.nodes[0].v4), IpAddr::V4(lan.nodes[1].v4));
    let (n1_v6, n2_v6) = (IpAddr::V6(lan.nodes[0].v6), IpAddr::V6(lan.nodes[1].v6));
    apply(&client, &bgp_config(&router_ip, "")).await;

    // Sessions from both nodes, soon after their speakers start.
    let started = Instant::now();
    let speakers: Vec<Process> = speakers(&cp, &lan);
    let nodes: BTreeSet<String> = [n1, n2].iter().map(ToString::to_string).collect();
    eventually("both sessions Established", || {
        (router.established() == nodes).then_some(())
    });
    eprintln!(
        "both sessions Established {:?} after the speakers started",
        started.elapsed()
    );

    // A dual-stack Service: its /32 and /128 via both nodes.
    let got = routed_service(
        &client,
        "web",
        ", ipFamilyPolicy: PreferDualStack, ipFamilies: [IPv4, IPv6]",
        2,
    )
    .await;
    let (v4, v6) = (format!("{}/32", got[0]), format!("{}/128", got[1]));
    // Not before it has an endpoint: a route would draw traffic nothing serves.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        router.kernel_next_hops(&v4).is_empty(),
        "announced with no endpoint"
    );
    // One ready pod, on n2: every eligible node announces (externalTrafficPolicy Cluster).
    endpoints_on(&client, "web", &[("n2", true)]).await;
    wait_next_hops(&router, &v4, &[n1, n2]);
    wait_next_hops(&router, &v6, &[n1_v6, n2_v6]);
    // The speakers say so in their metrics.
    let family =
        |f: &str| format!("herald_speaker_bgp_prefixes_advertised{{peer=\"tor\",family=\"{f}\"}}");
    assert_eq!(metric(&lan, "n1", &family("ipv4")), Some(1.0));
    assert_eq!(metric(&lan, "n1", &family("ipv6")), Some(1.0));
    assert_eq!(
        metric(&lan, "n1", "herald_speaker_bgp_session_up{peer=\"tor\"}"),
        Some(1.0)
    );

    // externalTrafficPolicy Local: only nodes with a ready endpoint, following them.
    let local = routed_service(&client, "local", ", externalTrafficPolicy: Local", 1).await;
    let local = format!("{}/32", local[0]);
    endpoints_on(&client, "local", &[("n2", true)]).await;
    wait_next_hops(&router, &local, &[n2]);
    endpoints_on(&client, "local", &[("n2", false), ("n1", true)]).await;
    wait_next_hops(&router, &local, &[n1]);
    endpoints_on(&client, "local", &[("n1", true), ("n2", true)]).await;
    wait_next_hops(&router, &local, &[n1, n2]);
    // n1 withdrew and announced again, each timed from the endpoints' change to its UPDATE
    // (the settle time before announcing a node's first ready pod is not counted).
    let delay = |what: &str| {
        metric(
            &lan,
            "n1",
            &format!("herald_speaker_bgp_update_delay_seconds_{what}{{peer=\"tor\"}}"),
        )
        .unwrap_or_default()
    };
    let (count, sum) = (delay("count"), delay("sum"));
    assert!(count >= 2.0, "n1 timed {count} changes");
    assert!(sum / count < 0.5, "{count} changes took {sum} s");

    // A node excluded from load balancers (before a drain) withdraws its routes; its session
    // stays up.
    ready_node(
        &client,
        "n1",
        &n1.to_string(),
        "node.kubernetes.io/exclude-from-external-load-balancers: \"\"",
    )
    .await;
    wait_next_hops(&router, &v4, &[n2]);
    wait_next_hops(&router, &local, &[n2]);
    assert!(
        router.established().contains(&n1.to_string()),
        "n1's session stays up"
    );
    ready_node(&client, "n1", &n1.to_string(), "").await;
    wait_next_hops(&router, &v4, &[n1, n2]);

    // A deleted Service is withdrawn everywhere.
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    svcs.delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    wait_next_hops(&router, &v4, &[]);
    wait_next_hops(&router, &v6, &[]);

    // A speaker stopped (SIGTERM) without graceful restart: it says Cease and the router
    // withdraws its routes at once; the other node keeps announcing.
    speakers[1].signal(libc::SIGTERM);
    wait_next_hops(&router, &local, &[n1]);
}

#[tokio::test]
async fn frr_gets_every_eligible_nodes_routes_and_their_withdrawals() {
    announces_and_withdraws(Frr::start).await;
}

#[tokio::test]
async fn bird_gets_every_eligible_nodes_routes_and_their_withdrawals() {
    announces_and_withdraws(Bird::start).await;
}

/// A dual-stack Service `web` from the routed pool with a ready pod on n1; once the router
/// forwards both its IPs through both nodes, its IPs (IPv4 first).
async fn dual_stack_web_through_both_nodes(
    client: &kube::Client,
    lan: &Lan,
    router: &impl Router,
) -> Vec<String> {
    let got = routed_service(
        client,
        "web",
        ", ipFamilyPolicy: PreferDualStack, ipFamilies: [IPv4, IPv6]",
        2,
    )
    .await;
    endpoints_on(client, "web", &[("n1", true)]).await;
    let (n1, n2) = (IpAddr::V4(lan.nodes[0].v4), IpAddr::V4(lan.nodes[1].v4));
    let (n1_v6, n2_v6) = (IpAddr::V6(lan.nodes[0].v6), IpAddr::V6(lan.nodes[1].v6));
    wait_next_hops(router, &format!("{}/32", got[0]), &[n1, n2]);
    wait_next_hops(router, &format!("{}/128", got[1]), &[n1_v6, n2_v6]);
    got
}

/// The router configuration docs/configuration.md shows for `R` and the quick start of
/// docs/install.md, as written: both nodes' sessions Established with BFD Up, a dual-stack
/// Service's routes through both nodes in the router's kernel, a prefix outside the
/// documented pool (announced by a second advertisement) refused by the router's filter,
/// and a node whose link goes taken off the router within BFD's time, graceful restart
/// notwithstanding.
async fn documented_router_and_quick_start<R: Router>(
    heading: &str,
    start: fn(&str, &str) -> anyhow::Result<R>,
) {
    let (cp, mut lan, _controller) = setup(2).await;
    let client = cp.client();
    let host = lan.add_host("router", 1).expect("router host");
    let config = herald_lab::docs::block_after("docs/configuration.md", heading).expect("docs");
    let router = start(&host.ns, &config).expect("the documented router configuration");
    let quick_start =
        herald_lab::docs::block_after("docs/install.md", "## BGP quick start").expect("docs");
    apply(&client, &quick_start).await;
    let _speakers: Vec<Process> = speakers(&cp, &lan);
    let got = dual_stack_web_through_both_nodes(&client, &lan, &router).await;
    let (n1, n2) = (IpAddr::V4(lan.nodes[0].v4), IpAddr::V4(lan.nodes[1].v4));
    for node in ["n1", "n2"] {
        session_record(&client, node, |s| {
            s.state == "Established" && s.bfd.as_deref() == Some("Up")
        })
        .await;
    }

    // A pool the router's filter does not know, announced all the same: refused.
    apply(&client, "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {name: stray}\nspec: {addresses: [100.64.0.0/24], autoAssign: false}\n---\napiVersion: herald.dev/v1alpha1\nkind: BGPAdvertisement\nmetadata: {name: stray}\nspec: {ipPools: [stray]}").await;
    apply(&client, "apiVersion: v1\nkind: Service\nmetadata: {name: stray, namespace: default, annotations: {herald.dev/pool: stray}}\nspec: {type: LoadBalancer, ports: [{port: 8080}]}").await;
    endpoints_on(&client, "stray", &[("n1", true)]).await;
    // Sent: each node now announces two IPv4 prefixes.
    for node in ["n1", "n2"] {
        session_record(&client, node, |s| s.advertised_ipv4 == 2).await;
    }
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let stray = wait_for(&svcs, "stray", "its IP", |s| ips(s).first().cloned()).await;
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        router.kernel_next_hops(&format!("{stray}/32")).is_empty(),
        "the router took a prefix outside the documented pool"
    );
    wait_next_hops(&router, &format!("{}/32", got[0]), &[n1, n2]);

    // n2's link goes: with graceful restart and BFD both on, BFD going down must end n2's
    // routes at once, not keep them stale for the restart time (120 s) as for a restart.
    let n2_ns = lan.node("n2").ns.clone();
    netns::ip(&["-n", &n2_ns, "link", "set", "eth0", "down"]).expect("link down");
    let took = wait_next_hops(&router, &format!("{}/32", got[0]), &[n1]);
    assert!(
        took < Duration::from_secs(3),
        "a dead node's routes stayed {took:?} (BFD detects in 0.9 s)"
    );
}

#[tokio::test]
async fn the_documented_routers_and_quick_start_work_together_frr() {
    documented_router_and_quick_start("#### FRR", Frr::start_configured).await;
}

#[tokio::test]
async fn the_documented_routers_and_quick_start_work_together_bird() {
    documented_router_and_quick_start("#### BIRD 2", Bird::start_configured).await;
}

/// A router with a session per family (an IPv4 and an IPv6 neighbor per node): with
/// `addressFamilies`, each session carries its own family only, and the router still
/// forwards both families through every node.
#[tokio::test]
async fn a_session_per_family_carries_only_its_family() {
    let (cp, mut lan, _controller) = setup(2).await;
    let client = cp.client();
    let host = lan.add_host("router", 1).expect("router host");
    let router = Frr::start(
        &host.ns,
        &RouterConfig {
            asn: ROUTER_ASN,
            router_id: host.v4,
            listen: &["192.0.2.0/24", "2001:db8::/64"],
            password: None,
            bfd: false,
        },
    )
    .expect("FRR");
    apply(&client, &format!("{}\n---\napiVersion: herald.dev/v1alpha1\nkind: BGPPeer\nmetadata: {{name: tor6}}\nspec: {{myASN: {CLUSTER_ASN}, peerASN: {ROUTER_ASN}, peerAddress: '{}', addressFamilies: [IPv6]}}",
        bgp_config(&host.v4.to_string(), ", addressFamilies: [IPv4]"), host.v6)).await;
    let _speakers: Vec<Process> = speakers(&cp, &lan);
    let got = dual_stack_web_through_both_nodes(&client, &lan, &router).await;
    let (n1_v6, n2_v6) = (IpAddr::V6(lan.nodes[0].v6), IpAddr::V6(lan.nodes[1].v6));
    for node in ["n1", "n2"] {
        session_record_of(&client, node, "tor", |s| {
            s.state == "Established" && (s.advertised_ipv4, s.advertised_ipv6) == (1, 0)
        })
        .await;
        session_record_of(&client, node, "tor6", |s| {
            s.state == "Established" && (s.advertised_ipv4, s.advertised_ipv6) == (0, 1)
        })
        .await;
    }
    // The router's own view: the IPv6 route came over the IPv6 sessions only.
    let v6 = router
        .vtysh(&format!("show bgp ipv6 unicast {}/128 json", got[1]))
        .expect("vtysh");
    let peers: BTreeSet<String> = v6["paths"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["peer"]["peerId"].as_str().map(str::to_owned))
        .collect();
    let expected: BTreeSet<String> = [n1_v6, n2_v6].iter().map(ToString::to_string).collect();
    assert_eq!(peers, expected, "{v6}");
}

/// `passive: true`: the nodes connect to nobody; a router with a neighbor per node that
/// opens the sessions itself reaches each node on port 179 and learns its routes.
#[tokio::test]
async fn a_passive_peer_waits_for_the_router_to_connect() {
    let (cp, mut lan, _controller) = setup(2).await;
    let client = cp.client();
    let host = lan.add_host("router", 1).expect("router host");
    let (n1, n2) = (IpAddr::V4(lan.nodes[0].v4), IpAddr::V4(lan.nodes[1].v4));
    let neighbors: String = [n1, n2]
        .iter()
        .map(|n| format!(" neighbor {n} remote-as {CLUSTER_ASN}\n neighbor {n} timers connect 1\n"))
        .collect();
    let router = Frr::start_configured(
        &host.ns,
        &format!("router bgp {ROUTER_ASN}\n bgp router-id {}\n no bgp ebgp-requires-policy\n{neighbors} address-family ipv4 unicast\n  maximum-paths 16\n exit-address-family\nexit\n", host.v4),
    )
    .expect("FRR");
    apply(
        &client,
        &bgp_config(&host.v4.to_string(), ", passive: true"),
    )
    .await;
    let _speakers: Vec<Process> = speakers(&cp, &lan);
    let prefix = format!("{}/32", routed_service(&client, "web", "", 1).await[0]);
    endpoints_on(&client, "web", &[("n1", true)]).await;
    wait_next_hops(&router, &prefix, &[n1, n2]);
    // The router connected: the nodes' end of each session is port 179.
    for node in [n1, n2] {
        let neighbor = router
            .vtysh(&format!("show bgp neighbors {node} json"))
            .expect("vtysh");
        assert_eq!(neighbor[node.to_string()]["portForeign"], 179, "{neighbor}");
    }
    for node in ["n1", "n2"] {
        session_record(&client, node, |s| s.state == "Established").await;
    }
}

/// BFD beside BGP against `R`: every node's BFD session comes Up (its BGPSession says so);
/// when a node's link goes (a node dying, as the router sees it) the router drops that
/// node's routes within BFD's detection time (100 ms x 3) instead of the hold time (90 s),
/// the other node's session staying up; with the link back, the session, BFD and the route
/// come back.
async fn bfd_takes_a_dead_nodes_routes_away<R: Router>(
    start: fn(&str, &RouterConfig) -> anyhow::Result<R>,
) {
    let (cp, mut lan, _controller) = setup(2).await;
    let client = cp.client();
    let peering = Peering {
        bfd: true,
        ..Peering::default()
    };
    let (router, host) = on_lan(&mut lan, start, peering).expect("router");
    let (n1, n2) = (IpAddr::V4(lan.nodes[0].v4), IpAddr::V4(lan.nodes[1].v4));
    apply(
        &client,
        &bgp_config(
            &host.v4.to_string(),
            ", bfd: {receiveInterval: 100, transmitInterval: 100}",
        ),
    )
    .await;
    let _speakers: Vec<Process> = speakers(&cp, &lan);
    let prefix = format!("{}/32", routed_service(&client, "web", "", 1).await[0]);
    endpoints_on(&client, "web", &[("n1", true)]).await;
    wait_next_hops(&router, &prefix, &[n1, n2]);
    for node in ["n1", "n2"] {
        session_record(&client, node, |s| s.bfd.as_deref() == Some("Up")).await;
    }

    // n2's link goes: the router hears no more BFD from it.
    let n2_ns = lan.node("n2").ns.clone();
    netns::ip(&["-n", &n2_ns, "link", "set", "eth0", "down"]).expect("link down");
    let took = wait_next_hops(&router, &prefix, &[n1]);
    eprintln!("n2's route gone {took:?} after its link went (BFD 100 ms x 3; hold time 90 s)");
    assert!(
        router.established().contains(&n1.to_string()),
        "n1's session stays up"
    );

    // Back: the session, BFD and the route.
    netns::ip(&["-n", &n2_ns, "link", "set", "eth0", "up"]).expect("link up");
    wait_next_hops(&router, &prefix, &[n1, n2]);
    session_record(&client, "n2", |s| {
        s.state == "Established" && s.bfd.as_deref() == Some("Up")
    })
    .await;
}

#[tokio::test]
async fn frr_drops_a_dead_nodes_routes_when_bfd_says_so() {
    bfd_takes_a_dead_nodes_routes_away(Frr::start).await;
}

#[tokio::test]
async fn bird_drops_a_dead_nodes_routes_when_bfd_says_so() {
    bfd_takes_a_dead_nodes_routes_away(Bird::start).await;
}

/// `aggregationLength`: FRR learns one /24 for the Services of the pool, through every
/// node, and drops it when the last Service in it goes.
#[tokio::test]
async fn frr_gets_one_aggregate_for_the_services_in_it() {
    let (cp, mut lan, _controller) = setup(2).await;
    let client = cp.client();
    let (router, router_ip) = router_on(&mut lan, Frr::start);
    let (n1, n2) = (IpAddr::V4(lan.nodes[0].v4), IpAddr::V4(lan.nodes[1].v4));
    apply(&client, &bgp_config(&router_ip, "")).await;
    apply(
        &client,
        "apiVersion: herald.dev/v1alpha1\nkind: BGPAdvertisement\nmetadata: {name: routed}\nspec: {ipPools: [routed], aggregationLength: 24}",
    )
    .await;
    let _speakers: Vec<Process> = speakers(&cp, &lan);
    for name in ["a", "b"] {
        routed_service(&client, name, "", 1).await;
        endpoints_on(&client, name, &[("n1", true)]).await;
    }
    wait_next_hops(&router, "198.51.100.0/24", &[n1, n2]);
    let held = router
        .vtysh("show bgp ipv4 unicast json")
        .expect("the router's table");
    let prefixes: Vec<&String> = held["routes"].as_object().expect("routes").keys().collect();
    assert_eq!(prefixes, ["198.51.100.0/24"], "no host routes");
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    svcs.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        router.kernel_next_hops("198.51.100.0/24"),
        [n1, n2].iter().map(ToString::to_string).collect(),
        "b still holds the aggregate"
    );
    svcs.delete("b", &DeleteParams::default())
        .await
        .expect("delete");
    wait_next_hops(&router, "198.51.100.0/24", &[]);
}

/// One pool announced both ways at once: the LAN's pool of `setup` (its L2Advertisement)
/// selected by a BGPAdvertisement too. One node answers ARP for the Service's IP on the
/// LAN, and the router has a route to it through both nodes.
#[tokio::test]
async fn one_pool_announced_by_l2_and_bgp_at_once() {
    let (cp, mut lan, _controller) = setup(2).await;
    let client = cp.client();
    let (router, router_ip) = router_on(&mut lan, Frr::start);
    let (n1, n2) = (IpAddr::V4(lan.nodes[0].v4), IpAddr::V4(lan.nodes[1].v4));
    apply(&client, &format!("apiVersion: herald.dev/v1alpha1\nkind: BGPPeer\nmetadata: {{name: tor}}\nspec: {{myASN: {CLUSTER_ASN}, peerASN: {ROUTER_ASN}, peerAddress: {router_ip}}}\n---\napiVersion: herald.dev/v1alpha1\nkind: BGPAdvertisement\nmetadata: {{name: lan}}\nspec: {{ipPools: [lan]}}")).await;
    let _speakers: Vec<Process> = speakers(&cp, &lan);
    apply(&client, "apiVersion: v1\nkind: Service\nmetadata: {name: both, namespace: default}\nspec: {type: LoadBalancer, ports: [{port: 8080}]}").await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let ip: IpAddr = wait_for(&svcs, "both", "an IP", |s| ips(s).first().cloned())
        .await
        .parse()
        .expect("ip");
    endpoints_on(&client, "both", &[("n1", true)]).await;
    wait_next_hops(&router, &format!("{ip}/32"), &[n1, n2]);
    let owner = eventually("one ARP answer", || {
        let answers = netns::resolve(&lan.client, ip, Duration::from_millis(150)).ok()?;
        match answers.as_slice() {
            [mac] => lan.node_of_mac(*mac),
            _ => None,
        }
    });
    for _ in 0..10 {
        let answers = netns::resolve(&lan.client, ip, Duration::from_millis(150)).expect("resolve");
        assert_eq!(
            answers
                .iter()
                .map(|m| lan.node_of_mac(*m))
                .collect::<Vec<_>>(),
            [Some(owner.clone())],
            "one answer per request for {ip}"
        );
    }
}

/// Labels choose the way out for the Services of one pool: the L2Advertisement selects
/// `announce: l2`, the BGPAdvertisement `announce: bgp`. Each Service is announced its way
/// only, neither gets a NotAdvertised Warning, and a Service relabelled moves from the
/// router to one ARP answer on the LAN.
#[tokio::test]
async fn service_labels_choose_l2_or_bgp_within_one_pool() {
    let (cp, mut lan, _controller) = setup(2).await;
    let client = cp.client();
    let (router, router_ip) = router_on(&mut lan, Frr::start);
    let (n1, n2) = (IpAddr::V4(lan.nodes[0].v4), IpAddr::V4(lan.nodes[1].v4));
    apply(&client, &format!("apiVersion: herald.dev/v1alpha1\nkind: BGPPeer\nmetadata: {{name: tor}}\nspec: {{myASN: {CLUSTER_ASN}, peerASN: {ROUTER_ASN}, peerAddress: {router_ip}}}\n---\napiVersion: herald.dev/v1alpha1\nkind: BGPAdvertisement\nmetadata: {{name: lan}}\nspec: {{ipPools: [lan], serviceSelectors: [{{matchLabels: {{announce: bgp}}}}]}}\n---\napiVersion: herald.dev/v1alpha1\nkind: L2Advertisement\nmetadata: {{name: lan}}\nspec: {{serviceSelectors: [{{matchLabels: {{announce: l2}}}}]}}")).await;
    let _speakers: Vec<Process> = speakers(&cp, &lan);
    let labelled = |name: &str, way: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default, labels: {{announce: {way}}}}}\nspec: {{type: LoadBalancer, ports: [{{port: 8080}}]}}"
        )
    };
    apply(&client, &labelled("on-lan", "l2")).await;
    apply(&client, &labelled("routed", "bgp")).await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let mut ip_of = std::collections::BTreeMap::new();
    for name in ["on-lan", "routed"] {
        let ip: IpAddr = wait_for(&svcs, name, "an IP", |s| ips(s).first().cloned())
            .await
            .parse()
            .expect("ip");
        endpoints_on(&client, name, &[("n1", true)]).await;
        ip_of.insert(name, ip);
    }
    let (on_lan_ip, routed_ip) = (ip_of["on-lan"], ip_of["routed"]);
    let answers =
        |ip: IpAddr| netns::resolve(&lan.client, ip, Duration::from_millis(150)).expect("resolve");
    wait_next_hops(&router, &format!("{routed_ip}/32"), &[n1, n2]);
    eventually("one ARP answer for the L2 Service", || {
        (answers(on_lan_ip).len() == 1).then_some(())
    });
    for _ in 0..5 {
        assert_eq!(answers(on_lan_ip).len(), 1, "one answer for {on_lan_ip}");
        assert!(answers(routed_ip).is_empty(), "{routed_ip} is BGP's only");
    }
    assert!(
        router
            .kernel_next_hops(&format!("{on_lan_ip}/32"))
            .is_empty(),
        "{on_lan_ip} is L2's only"
    );
    for name in ["on-lan", "routed"] {
        let warned: Vec<String> = events_in(&client, "default", name)
            .await
            .into_iter()
            .filter(|e| e.reason == "NotAdvertised")
            .map(|e| e.message)
            .collect();
        assert!(warned.is_empty(), "{name}: {warned:?}");
    }

    // Relabelled: off the router, onto the LAN.
    apply(&client, &labelled("routed", "l2")).await;
    wait_next_hops(&router, &format!("{routed_ip}/32"), &[]);
    eventually("one ARP answer for the relabelled Service", || {
        (answers(routed_ip).len() == 1).then_some(())
    });
    // Labelled for neither: nobody announces it, and the Service is told why.
    apply(&client, &labelled("routed", "none")).await;
    let warning = wait_for_event(&client, "routed", |e| e.reason == "NotAdvertised")
        .await
        .message;
    assert!(
        warning.contains("selects the Service by its serviceSelectors"),
        "{warning}"
    );
}

/// Point 6 against `R`: with graceful restart, a speaker's SIGTERM leaves its routes at the
/// router; a Service deleted while it is away is gone once it is back (End-of-RIB), the
/// others are its again. A SIGTERM on a drained node withdraws them.
async fn keeps_routes_across_a_restart<R: Router>(
    start: fn(&str, &RouterConfig) -> anyhow::Result<R>,
) {
    let (cp, mut lan, _controller) = setup(2).await;
    let client = cp.client();
    let (router, router_ip) = router_on(&mut lan, start);
    let (n1, n2) = (IpAddr::V4(lan.nodes[0].v4), IpAddr::V4(lan.nodes[1].v4));
    apply(
        &client,
        &bgp_config(&router_ip, ", enableGracefulRestart: true"),
    )
    .await;
    let mut speakers: Vec<Process> = speakers(&cp, &lan);
    let kept = format!("{}/32", routed_service(&client, "kept", "", 1).await[0]);
    let deleted = format!("{}/32", routed_service(&client, "deleted", "", 1).await[0]);
    endpoints_on(&client, "kept", &[("n1", true)]).await;
    endpoints_on(&client, "deleted", &[("n1", true)]).await;
    wait_next_hops(&router, &kept, &[n1, n2]);
    wait_next_hops(&router, &deleted, &[n1, n2]);
    session_record(&client, "n2", |s| {
        s.state == "Established" && s.graceful_restart
    })
    .await;

    // n2's speaker stops as a rolling upgrade stops it; its routes stay at the router.
    speakers[1].signal(libc::SIGTERM);
    eventually("n2's speaker to exit", || speakers[1].exited().map(|_| ()));
    eventually("n2's session to go", || {
        (!router.established().contains(&n2.to_string())).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        router.kernel_next_hops(&kept),
        [n1, n2].iter().map(ToString::to_string).collect(),
        "the router keeps n2's route while its speaker restarts"
    );
    // While it is away a Service is deleted: n1 withdraws it at once, n2's route stays.
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    svcs.delete("deleted", &DeleteParams::default())
        .await
        .expect("delete");
    wait_next_hops(&router, &deleted, &[n2]);

    // Back: n2 sends its table again and End-of-RIB; the deleted Service's route is gone,
    // nothing stale is left behind.
    speakers[1] = speaker(&cp, &lan, "n2", KEY, "speaker-n2-again");
    eventually("n2's session back", || {
        router.established().contains(&n2.to_string()).then_some(())
    });
    wait_next_hops(&router, &deleted, &[]);
    wait_next_hops(&router, &kept, &[n1, n2]);

    // Drained, then stopped (a node leaving for maintenance): the cordon alone keeps the
    // route (these speakers do not exclude cordoned nodes), the stop withdraws it at once
    // instead of leaving the router a stale route to a node that is not coming back.
    cordon(&client, "n2", true).await;
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        router.kernel_next_hops(&kept),
        [n1, n2].iter().map(ToString::to_string).collect(),
        "a cordon alone keeps the route"
    );
    speakers[1].signal(libc::SIGTERM);
    wait_next_hops(&router, &kept, &[n1]);
}

#[tokio::test]
async fn frr_keeps_a_restarting_speakers_routes_with_graceful_restart() {
    keeps_routes_across_a_restart(Frr::start).await;
}

#[tokio::test]
async fn bird_keeps_a_restarting_speakers_routes_with_graceful_restart() {
    keeps_routes_across_a_restart(Bird::start).await;
}

/// Point 8 of BGP mode: a session signed with TCP-MD5 from a Secret. A missing Secret
/// refuses the peer with a Warning naming it; a wrong password leaves the session down; the
/// right one brings it up, a rotation (router and Secret) brings it back; the password shows
/// nowhere (the speaker's log, Events, metrics).
#[tokio::test]
async fn a_password_from_a_secret_signs_the_session_and_is_shown_nowhere() {
    const OLD: &str = "correct-horse-battery";
    const NEW: &str = "staple-rotated-2026";
    const WRONG: &str = "not-the-password";
    let (cp, mut lan, _controller) = setup(1).await;
    let client = cp.client();
    let (router, host) = on_lan(
        &mut lan,
        Frr::start,
        Peering {
            password: Some(OLD),
            ..Peering::default()
        },
    )
    .expect("FRR");
    let n1 = lan.nodes[0].v4.to_string();
    apply(
        &client,
        &bgp_config(
            &host.v4.to_string(),
            ", passwordSecret: {name: tor-password}",
        ),
    )
    .await;
    let _speaker = speaker(&cp, &lan, "n1", KEY, "speaker-n1");
    let secret = |password: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: tor-password, namespace: default}}\ntype: kubernetes.io/basic-auth\nstringData: {{password: {password}}}"
        )
    };

    // No Secret yet: refused, and said on the Node.
    let event = wait_for_event(&client, "n1", |e| e.reason == "BGPPeerRefused").await;
    assert_eq!(
        event.message,
        "not speaking BGP with BGPPeer tor: its password Secret \"tor-password\" does not exist in Herald's namespace"
    );
    let refused = session_record(&client, "n1", |s| s.state == "Refused").await;
    assert_eq!(
        refused.last_error.as_deref(),
        Some("its password Secret \"tor-password\" does not exist in Herald's namespace")
    );
    // The wrong password: the router drops every segment, the session stays down.
    apply(&client, &secret(WRONG)).await;
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        router.established().is_empty(),
        "a wrong password must not establish"
    );
    // The right one: Established, the route announced.
    apply(&client, &secret(OLD)).await;
    eventually("the signed session", || {
        router.established().contains(&n1).then_some(())
    });
    let ip = format!("{}/32", routed_service(&client, "web", "", 1).await[0]);
    endpoints_on(&client, "web", &[("n1", true)]).await;
    wait_next_hops(&router, &ip, &[lan.nodes[0].v4.into()]);

    // Rotation: the router moves to a new password (its session drops), then the Secret.
    router
        .configure_bgp(ROUTER_ASN, &[&format!("neighbor NODES password {NEW}")])
        .expect("new password at the router");
    apply(&client, &secret(NEW)).await;
    eventually("the session back with the new password", || {
        router.established().contains(&n1).then_some(())
    });
    wait_next_hops(&router, &ip, &[lan.nodes[0].v4.into()]);

    session_record(&client, "n1", |s| s.state == "Established").await;

    // Nowhere to be seen.
    let records = format!(
        "{:?}",
        Api::<BGPSession>::all(client.clone())
            .list(&Default::default())
            .await
            .expect("list")
            .items
    );
    let log = std::fs::read_to_string(cp.dir().join("speaker-n1.log")).expect("speaker log");
    let events = format!("{:?}", events_in(&client, "default", "n1").await);
    let metrics = netns::http_get_in(&lan.node("n1").ns, 9473, "/metrics").expect("metrics");
    for password in [OLD, NEW, WRONG] {
        for (what, text) in [
            ("log", &log),
            ("Events", &events),
            ("metrics", &metrics),
            ("BGPSessions", &records),
        ] {
            assert!(
                !text.contains(password),
                "the password shows in the speaker's {what}"
            );
        }
    }
}

/// The speakers' exclusion settings, as the chart passes them: with `--ignore-exclude-lb` a
/// node labelled `node.kubernetes.io/exclude-from-external-load-balancers` still announces
/// (BGP and L2: a single-node or control-plane-only cluster); with `--exclude-cordoned` a
/// cordoned node withdraws its routes before a drain, its session up, and they come back
/// when it is uncordoned.
#[tokio::test]
async fn exclusion_follows_the_speakers_settings() {
    let (cp, mut lan, _controller) = setup(2).await;
    let client = cp.client();
    let (router, router_ip) = router_on(&mut lan, Frr::start);
    let (n1, n2) = (IpAddr::V4(lan.nodes[0].v4), IpAddr::V4(lan.nodes[1].v4));
    let label = "node.kubernetes.io/exclude-from-external-load-balancers: \"\"";
    ready_node(&client, "n1", &n1.to_string(), label).await;
    apply(&client, &bgp_config(&router_ip, "")).await;
    let _speakers: Vec<Process> = (1..=2)
        .map(|i| {
            let node = format!("n{i}");
            let mut cmd =
                herald_lab::process_cluster::speaker_command(&cp, &lan.node(&node).ns, &node, KEY);
            cmd.args(["--ignore-exclude-lb", "--exclude-cordoned"]);
            Process::spawn(&node, cmd, &cp.dir().join(format!("speaker-{node}.log")))
                .expect("speaker")
        })
        .collect();
    let ip = format!("{}/32", routed_service(&client, "web", "", 1).await[0]);
    endpoints_on(&client, "web", &[("n1", true)]).await;
    wait_next_hops(&router, &ip, &[n1, n2]);

    // L2 too: only the labelled node serves a Local Service, and it answers.
    apply(&client, "apiVersion: v1\nkind: Service\nmetadata: {name: lan, namespace: default}\nspec: {type: LoadBalancer, externalTrafficPolicy: Local, ports: [{port: 8080}]}").await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let lan_ip: IpAddr = wait_for(&svcs, "lan", "an IP", |s| ips(s).first().cloned())
        .await
        .parse()
        .expect("ip");
    herald_lab::process_cluster::accept_locally(&lan, &[lan_ip]);
    endpoints_on(&client, "lan", &[("n1", true)]).await;
    let n1_mac = lan.nodes[0].mac;
    eventually("n1 answering ARP", || {
        let answers = netns::resolve(&lan.client, lan_ip, Duration::from_millis(200)).ok()?;
        (answers == [n1_mac]).then_some(())
    });

    // Cordoning n2 withdraws its route; its session stays up. Uncordoning brings it back.
    cordon(&client, "n2", true).await;
    wait_next_hops(&router, &ip, &[n1]);
    assert!(
        router.established().contains(&n2.to_string()),
        "n2's session stays up"
    );
    cordon(&client, "n2", false).await;
    wait_next_hops(&router, &ip, &[n1, n2]);
}
