//! `herald-bench-bgp`: BGP mode against a real FRR router on a namespace LAN. Run through
//! `bench/bgp` (release builds).
//!
//! 1. Convergence: N LoadBalancer Services (statuses written directly, as the controller
//!    would, and an EndpointSlice each), from the first write until the router has every
//!    prefix from both nodes.
//! 2. Footprint with those routes and sessions: peak and current RSS of a speaker, its CPU
//!    over 30 idle seconds.
//! 3. Endpoint change to route change at the router: an `externalTrafficPolicy: Local`
//!    Service's only ready endpoint moves between the two nodes; from the EndpointSlice
//!    write until the router's kernel forwards to the new node (p50, p99).
//! 4. A node dying as the router sees it (its link cut), with BFD at 100 ms x 3 on both
//!    sides: from the cut until the router's kernel forwards only to the other node; the
//!    link back, the session and BFD up again, repeated.
//!
//! The sessions run BFD throughout (the footprint includes it).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt;
use herald_lab::Process;
use herald_lab::objects::apply;
use herald_lab::process_cluster::{
    allocated_services, endpoints_on, setup, speakers, static_service,
};
use herald_lab::router::{Frr, LAN_ROUTER_ASN as ROUTER_ASN, Peering, Router, on_lan};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;

/// Prefixes the router holds from each node (`pfxRcd` of its IPv4 sessions).
fn received(router: &Frr) -> Vec<u64> {
    let Ok(summary) = router.vtysh("show bgp ipv4 unicast summary json") else {
        return Vec::new();
    };
    summary["peers"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, p)| p["pfxRcd"].as_u64())
        .collect()
}

fn percentile(sorted: &[Duration], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Creates Services `many-FROM..many-TO` and waits until both nodes' routes to all of them
/// are at the router; returns (writes done, converged) from the first write.
async fn converge(
    client: &kube::Client,
    router: &Frr,
    from: usize,
    to: usize,
) -> Result<(Duration, Duration)> {
    let services: Vec<(String, String)> = (from..to)
        .map(|i| {
            (
                format!("many-{i}"),
                format!("198.18.{}.{}", i / 250, i % 250 + 1),
            )
        })
        .collect();
    let started = Instant::now();
    allocated_services(client, &services).await?;
    // A Service is announced while it has a serving endpoint: one each, on n1.
    futures::stream::iter(&services)
        .map(|(name, _)| endpoints_on(client, name, &[("n1", true)]))
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let written = started.elapsed();
    let deadline = started + Duration::from_secs(600);
    loop {
        let got = received(router);
        if got.len() == 2 && got.iter().all(|n| *n as usize >= to) {
            return Ok((written, started.elapsed()));
        }
        if Instant::now() > deadline {
            bail!("the router has {got:?} of {to} prefixes per node after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn footprint(speakers: &[Process], lan_ns: &str) -> Result<String> {
    let pid = speakers[0].pid();
    let cpu0 = herald_lab::process::cpu_seconds(pid)?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let cpu = (herald_lab::process::cpu_seconds(pid)? - cpu0) / 30.0 * 100.0;
    let metrics = herald_lab::netns::http_get_in(lan_ns, 9473, "/metrics")?;
    let sent = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("herald_speaker_bgp_prefixes_advertised{peer=\"tor\",family=\"ipv4\"} ")
        })
        .unwrap_or("?")
        .to_owned();
    Ok(format!(
        "speaker on n1 with {sent} prefixes advertised: peak RSS {:.1} MiB, RSS now {:.1} MiB, idle CPU {cpu:.2}% of one core",
        herald_lab::process::memory_mib(pid, "VmHWM:")?,
        herald_lab::process::memory_mib(pid, "VmRSS:")?,
    ))
}

/// Rounds of moving the Local Service's endpoint between the nodes; the time from each
/// EndpointSlice write to the router's kernel forwarding to the new node.
async fn endpoint_moves(
    client: &kube::Client,
    router: &Frr,
    prefix: &str,
    nodes: [IpAddr; 2],
    rounds: usize,
) -> Result<Vec<Duration>> {
    let mut samples = Vec::new();
    for round in 0..rounds {
        let (name, hop) = if round % 2 == 0 {
            ("n1", nodes[0])
        } else {
            ("n2", nodes[1])
        };
        let expected = std::collections::BTreeSet::from([hop.to_string()]);
        endpoints_on(client, "local", &[(name, true)]).await;
        let written = Instant::now();
        while router.kernel_next_hops(prefix) != expected {
            if written.elapsed() > Duration::from_secs(10) {
                bail!(
                    "round {round}: the router still forwards {prefix} to {:?}",
                    router.kernel_next_hops(prefix)
                );
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        samples.push(written.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    samples.sort();
    Ok(samples)
}

/// Rounds of cutting n2's link: the time from the cut until the router's kernel forwards
/// `prefix` to n1 only; then the link comes back and both nodes are next hops again.
fn node_deaths(
    router: &Frr,
    n2_ns: &str,
    prefix: &str,
    nodes: [IpAddr; 2],
    rounds: usize,
) -> Result<Vec<Duration>> {
    let both: std::collections::BTreeSet<String> = nodes.iter().map(ToString::to_string).collect();
    let survivor = std::collections::BTreeSet::from([nodes[0].to_string()]);
    let mut samples = Vec::new();
    for round in 0..rounds {
        // Both nodes announce, and BFD has settled (a second at the fast rate).
        let back = Instant::now();
        while router.kernel_next_hops(prefix) != both {
            if back.elapsed() > Duration::from_secs(60) {
                bail!("round {round}: n2 did not come back");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(2));
        herald_lab::netns::ip(&["-n", n2_ns, "link", "set", "eth0", "down"])?;
        let cut = Instant::now();
        while router.kernel_next_hops(prefix) != survivor {
            if cut.elapsed() > Duration::from_secs(120) {
                bail!("round {round}: the router still forwards {prefix} to n2");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        samples.push(cut.elapsed());
        herald_lab::netns::ip(&["-n", n2_ns, "link", "set", "eth0", "up"])?;
    }
    samples.sort();
    Ok(samples)
}

#[tokio::main]
async fn main() -> Result<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000]
    } else {
        sizes
    };
    let (cp, mut lan, mut controller) = setup(2).await;
    // The statuses below are written as the controller would; it would clear them (another
    // class), so it stops here.
    controller.kill();
    let client = cp.client();
    let peering = Peering {
        bfd: true,
        ..Peering::default()
    };
    let (router, host) = on_lan(&mut lan, Frr::start, peering)?;
    apply(&client, &format!("apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {{name: many}}\nspec: {{addresses: [198.18.0.0/15], autoAssign: false}}\n---\napiVersion: herald.dev/v1alpha1\nkind: BGPPeer\nmetadata: {{name: tor}}\nspec: {{myASN: 64512, peerASN: {ROUTER_ASN}, peerAddress: {}, bfd: {{receiveInterval: 100, transmitInterval: 100}}}}\n---\napiVersion: herald.dev/v1alpha1\nkind: BGPAdvertisement\nmetadata: {{name: many}}\nspec: {{ipPools: [many]}}", host.v4)).await;
    let speakers: Vec<Process> = speakers(&cp, &lan);
    let started = Instant::now();
    while router.established().len() < 2 {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("sessions not Established within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "both sessions Established {:.0} ms after the speakers started",
        started.elapsed().as_secs_f64() * 1000.0
    );

    // The Local Service first, so the convergence rounds run with it in the table.
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    static_service(&api, "local", "Local", "198.19.255.1").await?;
    let local = "198.19.255.1/32";
    let nodes = [IpAddr::V4(lan.nodes[0].v4), IpAddr::V4(lan.nodes[1].v4)];
    let moves = endpoint_moves(&client, &router, local, nodes, 50).await?;
    println!(
        "endpoint moved to the other node -> the router's kernel forwards there: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})",
        percentile(&moves, 50),
        percentile(&moves, 99),
        percentile(&moves, 100),
        moves.len()
    );

    // An ETP Cluster Service, announced by both nodes while it has an endpoint.
    static_service(&api, "spread", "Cluster", "198.19.255.2").await?;
    let spread = "198.19.255.2/32";
    endpoints_on(&client, "spread", &[("n1", true)]).await;
    let deaths = node_deaths(&router, &lan.nodes[1].ns, spread, nodes, 10)?;
    println!(
        "node link cut -> the router's kernel forwards to the other node only (BFD 100 ms x 3): p50 {:.0} ms, max {:.0} ms (n={})",
        percentile(&deaths, 50),
        percentile(&deaths, 100),
        deaths.len()
    );

    let mut done = 0;
    for size in sizes {
        let (written, converged) = converge(&client, &router, done, size).await?;
        done = size;
        println!(
            "{size} Services: statuses written in {:.1} s, every prefix from both nodes at the router {:.1} s after the first write",
            written.as_secs_f64(),
            converged.as_secs_f64()
        );
        println!("{}", footprint(&speakers, &lan.nodes[0].ns).await?);
    }
    drop(lan);
    Ok(())
}
