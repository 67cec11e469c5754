//! BGP mode end to end: speakers in node namespaces, the real API server and controller, and
//! a real FRR router on the LAN that every node peers with. What the router learns is read
//! from FRR itself (`vtysh ... json`) and from its kernel, where zebra installs the ECMP
//! routes it chose.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use herald_lab::Process;
use herald_lab::client_view::metric;
use herald_lab::netns::Lan;
use herald_lab::objects::{apply, ips, wait_for};
use herald_lab::process_cluster::{KEY, endpoints_on, ready_node, setup, speaker};
use herald_lab::router::{Frr, RouterConfig};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams};

const ROUTER_ASN: u32 = 64500;
const CLUSTER_ASN: u32 = 64512;
/// How long the router may take to show a change: generous, so a loaded machine does not
/// fail the test; the time each change took is printed (docs/benchmarks.md has the figures).
const WITHIN: Duration = Duration::from_secs(10);

/// The next hops of the router's valid paths to `prefix` (empty when it has none).
fn next_hops(router: &Frr, prefix: &str) -> BTreeSet<String> {
    let family = if prefix.contains(':') { "ipv6" } else { "ipv4" };
    let Ok(json) = router.vtysh(&format!("show bgp {family} unicast {prefix} json")) else {
        return BTreeSet::new();
    };
    json["paths"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["valid"].as_bool() == Some(true))
        .filter_map(|p| p["nexthops"][0]["ip"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until the router's next hops to `prefix` are `expected`; returns how long it took.
fn wait_next_hops(router: &Frr, prefix: &str, expected: &[IpAddr]) -> Duration {
    let expected: BTreeSet<String> = expected.iter().map(ToString::to_string).collect();
    let started = Instant::now();
    router
        .wait_for(
            &format!("next hops {expected:?} for {prefix}"),
            WITHIN,
            || (next_hops(router, prefix) == expected).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}: has {:?}", next_hops(router, prefix)));
    let took = started.elapsed();
    eprintln!("{prefix}: next hops {expected:?} after {took:?}");
    took
}

/// The router's Established sessions, by the node address they come from.
fn established(router: &Frr) -> BTreeSet<String> {
    let Ok(summary) = router.vtysh("show bgp summary json") else {
        return BTreeSet::new();
    };
    summary["ipv4Unicast"]["peers"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, p)| p["state"] == "Established")
        .map(|(key, _)| key.trim_start_matches('*').to_owned())
        .collect()
}

fn router_on(lan: &mut Lan) -> (Frr, String) {
    let host = lan.add_host("router", 1).expect("router host");
    let router = Frr::start(
        &host.ns,
        &RouterConfig {
            asn: ROUTER_ASN,
            router_id: host.v4,
            listen: &["192.0.2.0/24"],
        },
    )
    .expect("FRR");
    (router, host.v4.to_string())
}

#[tokio::test]
async fn every_eligible_node_announces_each_service_ip_to_the_router_and_withdraws_as_the_cluster_changes()
 {
    let (cp, mut lan, _controller) = setup(2).await;
    let client = cp.client();
    let (router, router_ip) = router_on(&mut lan);
    let (n1, n2) = (IpAddr::V4(lan.nodes[0].v4), IpAddr::V4(lan.nodes[1].v4));
    let (n1_v6, n2_v6) = (IpAddr::V6(lan.nodes[0].v6), IpAddr::V6(lan.nodes[1].v6));
    // A routed pool, announced over BGP only (the LAN pool of `setup` stays L2's), as a user
    // writes it: one peer, one advertisement naming the pool.
    apply(&client, &format!("apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {{name: routed}}\nspec: {{addresses: [198.51.100.0/24, '2001:db8:100::/64'], autoAssign: false}}\n---\napiVersion: herald.dev/v1alpha1\nkind: BGPPeer\nmetadata: {{name: tor}}\nspec: {{myASN: {CLUSTER_ASN}, peerASN: {ROUTER_ASN}, peerAddress: {router_ip}}}\n---\napiVersion: herald.dev/v1alpha1\nkind: BGPAdvertisement\nmetadata: {{name: routed}}\nspec: {{ipPools: [routed]}}")).await;

    // Sessions from both nodes, soon after their speakers start.
    let started = Instant::now();
    let speakers: Vec<Process> = (1..=2)
        .map(|i| speaker(&cp, &lan, &format!("n{i}"), KEY, &format!("speaker-n{i}")))
        .collect();
    let nodes: BTreeSet<String> = [n1, n2].iter().map(ToString::to_string).collect();
    router
        .wait_for("both sessions Established", WITHIN, || {
            (established(&router) == nodes).then_some(())
        })
        .expect("sessions");
    eprintln!(
        "both sessions Established {:?} after the speakers started",
        started.elapsed()
    );

    // A dual-stack Service from the routed pool: its /32 and /128 via both nodes, ECMP in the
    // router's kernel.
    apply(&client, "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default, annotations: {herald.dev/pool: routed}}\nspec: {type: LoadBalancer, ipFamilyPolicy: PreferDualStack, ipFamilies: [IPv4, IPv6], ports: [{port: 8080}]}").await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let got = wait_for(&svcs, "web", "two IPs", |s| {
        (ips(s).len() == 2).then(|| ips(s))
    })
    .await;
    let (v4, v6) = (format!("{}/32", got[0]), format!("{}/128", got[1]));
    wait_next_hops(&router, &v4, &[n1, n2]);
    wait_next_hops(&router, &v6, &[n1_v6, n2_v6]);
    let kernel = router.kernel_route(&got[0]);
    assert!(
        kernel.contains(&format!("via {n1}")) && kernel.contains(&format!("via {n2}")),
        "ECMP over both nodes in the router's kernel: {kernel}"
    );
    // The speakers say so in their metrics.
    let prefixes = metric(
        &lan,
        "n1",
        "herald_speaker_bgp_prefixes_advertised{peer=\"tor\",family=\"ipv4\"}",
    );
    assert_eq!(prefixes, Some(1.0));
    assert_eq!(
        metric(&lan, "n1", "herald_speaker_bgp_session_up{peer=\"tor\"}"),
        Some(1.0)
    );

    // externalTrafficPolicy Local: only nodes with a ready endpoint, following them.
    apply(&client, "apiVersion: v1\nkind: Service\nmetadata: {name: local, namespace: default, annotations: {herald.dev/pool: routed}}\nspec: {type: LoadBalancer, externalTrafficPolicy: Local, ports: [{port: 8080}]}").await;
    let local = wait_for(&svcs, "local", "an IP", |s| ips(s).first().cloned()).await;
    let local = format!("{local}/32");
    endpoints_on(&client, "local", &[("n2", true)]).await;
    wait_next_hops(&router, &local, &[n2]);
    endpoints_on(&client, "local", &[("n2", false), ("n1", true)]).await;
    wait_next_hops(&router, &local, &[n1]);
    endpoints_on(&client, "local", &[("n1", true), ("n2", true)]).await;
    wait_next_hops(&router, &local, &[n1, n2]);

    // A node excluded from load balancers withdraws its routes; its session stays up.
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
        established(&router).contains(&n1.to_string()),
        "n1's session stays up"
    );
    ready_node(&client, "n1", &n1.to_string(), "").await;
    wait_next_hops(&router, &v4, &[n1, n2]);

    // A deleted Service is withdrawn everywhere.
    svcs.delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    wait_next_hops(&router, &v4, &[]);
    wait_next_hops(&router, &v6, &[]);

    // A speaker stopped (SIGTERM) without graceful restart: the router withdraws its
    // routes (Cease); the other node keeps announcing.
    speakers[1].signal(libc::SIGTERM);
    wait_next_hops(&router, &local, &[n1]);
    drop(speakers);
}

/// The router's paths to `prefix`, as (next hop, stale).
fn paths(router: &Frr, prefix: &str) -> BTreeSet<(String, bool)> {
    let Ok(json) = router.vtysh(&format!("show bgp ipv4 unicast {prefix} json")) else {
        return BTreeSet::new();
    };
    json["paths"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let hop = p["nexthops"][0]["ip"].as_str()?.to_owned();
            Some((hop, p["stale"].as_bool() == Some(true)))
        })
        .collect()
}

#[tokio::test]
async fn with_graceful_restart_a_restarting_speakers_routes_stay_at_the_router_and_only_deleted_ones_go()
 {
    let (cp, mut lan, _controller) = setup(2).await;
    let client = cp.client();
    let (router, router_ip) = router_on(&mut lan);
    let (n1, n2) = (lan.nodes[0].v4.to_string(), lan.nodes[1].v4.to_string());
    apply(&client, &format!("apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {{name: routed}}\nspec: {{addresses: [198.51.100.0/24], autoAssign: false}}\n---\napiVersion: herald.dev/v1alpha1\nkind: BGPPeer\nmetadata: {{name: tor}}\nspec: {{myASN: {CLUSTER_ASN}, peerASN: {ROUTER_ASN}, peerAddress: {router_ip}, enableGracefulRestart: true}}\n---\napiVersion: herald.dev/v1alpha1\nkind: BGPAdvertisement\nmetadata: {{name: routed}}\nspec: {{ipPools: [routed]}}")).await;
    let mut speakers: Vec<Process> = (1..=2)
        .map(|i| speaker(&cp, &lan, &format!("n{i}"), KEY, &format!("speaker-n{i}")))
        .collect();
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let mut prefixes = Vec::new();
    for name in ["kept", "deleted"] {
        apply(&client, &format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default, annotations: {{herald.dev/pool: routed}}}}\nspec: {{type: LoadBalancer, ports: [{{port: 8080}}]}}")).await;
        let ip = wait_for(&svcs, name, "an IP", |s| ips(s).first().cloned()).await;
        prefixes.push(format!("{ip}/32"));
    }
    let (kept, deleted) = (&prefixes[0], &prefixes[1]);
    let both: BTreeSet<(String, bool)> = [(n1.clone(), false), (n2.clone(), false)].into();
    for prefix in &prefixes {
        router
            .wait_for("both paths", WITHIN, || {
                (paths(&router, prefix) == both).then_some(())
            })
            .expect("announced by both nodes");
    }

    // n2's speaker restarts (SIGTERM, as a rolling upgrade does): the router keeps its paths,
    // marked stale, instead of withdrawing them.
    speakers[1].signal(libc::SIGTERM);
    let stale: BTreeSet<(String, bool)> = [(n1.clone(), false), (n2.clone(), true)].into();
    router
        .wait_for("n2's path stale", WITHIN, || {
            (paths(&router, kept) == stale).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}", paths(&router, kept)));
    // While it is away a Service is deleted: n1 withdraws it at once, n2's stale path stays.
    svcs.delete("deleted", &DeleteParams::default())
        .await
        .expect("delete");
    router
        .wait_for("n1's path withdrawn", WITHIN, || {
            (paths(&router, deleted) == [(n2.clone(), true)].into()).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}", paths(&router, deleted)));

    // Back: n2 sends its table again and End-of-RIB; the kept path is fresh, the deleted
    // Service's stale path is gone (nothing stale is left behind).
    speakers[1] = speaker(&cp, &lan, "n2", KEY, "speaker-n2-again");
    router
        .wait_for("fresh paths", WITHIN, || {
            (paths(&router, kept) == both).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}", paths(&router, kept)));
    router
        .wait_for("the deleted Service gone", WITHIN, || {
            paths(&router, deleted).is_empty().then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}", paths(&router, deleted)));
}
