//! `herald-bench-peers-bgp`: Herald and MetalLB side by side in BGP mode on the real cluster,
//! each installed alone on a fresh 3-node cluster as its users install it, behind the same
//! FRR router (bgpd, bfdd and zebra on the LAN, configured as docs/configuration.md's FRR
//! example: BFD offered to every node at 300 ms x 3, only the pool's host routes taken,
//! ECMP in its kernel, flows hashed by ports) with a client behind it. Herald: `helm install` with default values and the BGP quick start of
//! docs/install.md as written (BFD at its defaults). MetalLB: its own
//! manifest (native BGP, no FRR; the schema of its `BGPPeer` AS numbers mended, without
//! which Kubernetes 1.36 refuses every `BGPPeer`: `metallb_manifest_for_bgp`) and the
//! `IPAddressPool`, `BGPPeer` and `BGPAdvertisement` of its BGP docs; its native mode has
//! neither BFD nor graceful restart. The same app
//! (`web`, 2 replicas behind an IPv4 LoadBalancer Service), the systems interleaved round by
//! round. Run through `bench/peers-bgp` (needs root).
//!
//! Per round and system:
//! 1. at rest: RSS and CPU of every speaker and controller process over 20 s;
//! 2. five Services created one after another: the time from each create until the
//!    router's kernel forwards its IPv4 address to every node;
//! 3. every speaker restarted (`kubectl rollout restart` of the DaemonSet) under steady
//!    requests from the client behind the router: the longest gap and the failed requests;
//! 4. a node without the app's pods dies (its link down first, as a machine losing power,
//!    then kubelet, containerd and its pods killed) under steady requests: the time until the router stops forwarding to it,
//!    the longest gap and the failed requests.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use herald_lab::objects::{apply, ips, wait_for};
use herald_lab::process::usage;
use herald_lab::real_cluster::journey::{
    Requests, Traffic, deploy_web, failed, keep_web_off, longest_gap, web_ready_on,
};
use herald_lab::real_cluster::routed::Routed;
use herald_lab::real_cluster::{Cluster, ClusterOptions};
use herald_lab::router::Router;
use herald_lab::side_by_side::{AtRest, HERALD, Installed, METALLB, rounds_and_systems};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams};

const SETTLE: Duration = Duration::from_secs(60);
/// How long the client goes on once the router has moved (the system recovered as it says).
const AFTER: Duration = Duration::from_secs(3);
/// Services created per round, one after another.
const CREATED: usize = 5;

/// MetalLB's BGP configuration as its docs write it: the IPv4 pool of Herald's quick start
/// (its native BGP mode refuses an IPv6 pool: "native bgp mode does not support ipv6"), the
/// router as a peer, every pool advertised.
const METALLB_BGP: [&str; 3] = [
    "apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: routed, namespace: metallb-system}
spec: {addresses: [198.51.100.0/24]}",
    "apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: tor, namespace: metallb-system}
spec: {myASN: 64512, peerASN: 64500, peerAddress: 192.0.2.1}",
    "apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: routed, namespace: metallb-system}
spec: {ipAddressPools: [routed]}",
];

/// The app's Service for both systems: IPv4, every node serving it.
const WEB_V4: &str = "apiVersion: v1
kind: Service
metadata: {name: web-v4, namespace: default}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum System {
    Herald,
    Metallb,
}

impl System {
    fn facts(self) -> &'static Installed {
        match self {
            System::Herald => &HERALD,
            System::Metallb => &METALLB,
        }
    }

    fn name(self) -> &'static str {
        self.facts().name
    }

    /// Installs and configures it as its docs tell users to, and waits until it runs.
    async fn install(self, cluster: &Cluster) -> Result<()> {
        match self {
            System::Herald => {
                cluster.install_herald(&[])?;
                let quick_start =
                    herald_lab::docs::block_after("docs/install.md", "## BGP quick start")?;
                apply(&cluster.client(), &quick_start).await;
            }
            System::Metallb => cluster.install_metallb_bgp(&METALLB_BGP).await?,
        }
        Ok(())
    }
}

/// What the client behind the router saw through one fault.
struct Seen {
    gap: Duration,
    failed: usize,
    requests: usize,
    /// From the fault until the router forwards as it should again.
    moved: Option<Duration>,
}

impl Seen {
    /// Ends `requests` once the client has gone on for `AFTER`, with what the router did.
    async fn of(requests: Requests, moved: Option<Duration>) -> Self {
        tokio::time::sleep(AFTER).await;
        let outcomes = requests.finish();
        Self {
            gap: longest_gap(&outcomes),
            failed: failed(&outcomes),
            requests: outcomes.len(),
            moved,
        }
    }
}

/// Waits until the router forwards `prefix` to exactly `hops`; how long that took.
fn router_forwards(
    routed: &Routed,
    prefix: &str,
    hops: &[String],
    within: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let want: std::collections::BTreeSet<String> = hops.iter().cloned().collect();
    routed
        .router
        .wait_for(&format!("{prefix} via {want:?}"), within, || {
            (routed.router.kernel_next_hops(prefix) == want).then_some(())
        })?;
    Ok(started.elapsed())
}

/// One round of one system on a fresh cluster; one line per measure.
async fn round(system: System, number: usize, results: &mut Results) -> Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        peers: system == System::Metallb,
        ..ClusterOptions::default()
    })
    .await?;
    let router = herald_lab::docs::block_after("docs/configuration.md", "#### FRR")?;
    let mut routed = Routed::around_configured(cluster, &router)?;
    let client = routed.cluster.client();
    system.install(&routed.cluster).await.with_context(|| {
        format!(
            "installing {}\n{}",
            system.name(),
            routed.cluster.diagnose()
        )
    })?;
    deploy_web(&client, 2, Traffic::Cluster).await;
    web_ready_on(&client, 2, SETTLE).await;
    // An IPv4 Service in front of the app (MetalLB's native BGP has no IPv6).
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services.delete("web", &DeleteParams::default()).await?;
    apply(&client, WEB_V4).await;
    let vip: IpAddr = wait_for(&services, "web-v4", "its IP", |s| ips(s).first().cloned())
        .await
        .parse()?;
    let prefix = format!("{vip}/32");
    let every_node: Vec<String> = routed.every_node().into_iter().collect();
    router_forwards(&routed, &prefix, &every_node, SETTLE)
        .with_context(|| routed.cluster.diagnose())?;
    routed.until_served(vip, SETTLE).await?;

    for (binary, rss, cpu, count) in usage(&system.facts().binaries, Duration::from_secs(20)).await
    {
        println!(
            "{} round {number} at rest: {binary} x{count}: RSS {rss:.1} MiB, CPU {cpu:.2}% of a core (mean per process)",
            system.name()
        );
        results.rest(system, &binary, rss, cpu);
    }

    // Services created: from each create until the router forwards to every node.
    for i in 0..CREATED {
        let name = format!("probe-{i}");
        let svc: Service = serde_yaml_ng::from_str(&format!(
            "metadata: {{name: {name}}}\nspec: {{type: LoadBalancer, selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}"
        ))?;
        let created = Instant::now();
        services.create(&Default::default(), &svc).await?;
        let ip = wait_for(&services, &name, "its IP", |s| ips(s).first().cloned()).await;
        let ip: IpAddr = ip.parse()?;
        let hops = router_forwards(&routed, &format!("{ip}/32"), &every_node, SETTLE)
            .map(|_| created.elapsed())
            .with_context(|| format!("{name} at the router"))?;
        println!(
            "{} round {number} Service created: at the router through every node after {} ms",
            system.name(),
            hops.as_millis()
        );
        results.created(system, hops);
        services.delete(&name, &DeleteParams::default()).await?;
        // Gone from the router before the next is created (it may get the same IP).
        router_forwards(&routed, &format!("{ip}/32"), &[], SETTLE)
            .with_context(|| format!("{name} withdrawn"))?;
    }

    // Every speaker restarted, one node after another.
    let requests = Requests::start_in(&routed.far.ns, vip);
    tokio::time::sleep(Duration::from_secs(1)).await;
    system.facts().restart_speakers(&routed.cluster)?;
    let moved = router_forwards(&routed, &prefix, &every_node, SETTLE).ok();
    results.seen(
        system,
        number,
        "rolling restart",
        Seen::of(requests, moved).await,
    );

    // A node without the app dies: the router must stop sending it flows.
    let dying = routed
        .cluster
        .nodes
        .last()
        .map(|n| n.name.clone())
        .context("no node")?;
    keep_web_off(&client, &dying).await;
    web_ready_on(&client, 2, SETTLE).await;
    routed.until_served(vip, SETTLE).await?;
    let dying_hop = routed.cluster.node(&dying).host.v4.to_string();
    let survivors: Vec<String> = every_node
        .iter()
        .filter(|h| **h != dying_hop)
        .cloned()
        .collect();
    let requests = Requests::start_in(&routed.far.ns, vip);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // As a machine losing power: its link goes first, so that nothing it runs says
    // goodbye (a killed process's sockets would send FINs the router acts on at once).
    let dying_ns = routed.cluster.node(&dying).host.ns.clone();
    herald_lab::netns::ip(&["-n", &dying_ns, "link", "set", "eth0", "down"])?;
    routed.cluster.kill_node(&dying)?;
    let moved = router_forwards(&routed, &prefix, &survivors, Duration::from_secs(300))?;
    results.seen(
        system,
        number,
        "node death",
        Seen::of(requests, Some(moved)).await,
    );
    Ok(())
}

/// Every measure, for the summary.
#[derive(Default)]
struct Results {
    faults: BTreeMap<(&'static str, System), Vec<Seen>>,
    created: BTreeMap<System, Vec<Duration>>,
    rest: AtRest,
}

fn median_and_worst<T: Ord + Copy>(mut values: Vec<T>) -> Option<(T, T)> {
    values.sort_unstable();
    Some((*values.get(values.len() / 2)?, *values.last()?))
}

impl Results {
    fn seen(&mut self, system: System, number: usize, fault: &'static str, seen: Seen) {
        println!(
            "{} round {number} {fault}: router moved after {}, longest gap {} ms, {} of {} requests failed",
            system.name(),
            seen.moved
                .map_or_else(|| "(never)".to_owned(), |d| format!("{} ms", d.as_millis())),
            seen.gap.as_millis(),
            seen.failed,
            seen.requests,
        );
        self.faults.entry((fault, system)).or_default().push(seen);
    }

    fn created(&mut self, system: System, took: Duration) {
        self.created.entry(system).or_default().push(took);
    }

    fn rest(&mut self, system: System, binary: &str, rss: f64, cpu: f64) {
        self.rest.record(system.name(), binary, rss, cpu);
    }

    fn summary(&self) {
        println!(
            "\n| fault | system | router forwarding as it should after, median (worst) | longest gap, median (worst) | failed requests, median (worst) | runs |"
        );
        println!("|---|---|---|---|---|---|");
        for ((fault, system), runs) in &self.faults {
            let moved = median_and_worst(runs.iter().filter_map(|s| s.moved).collect());
            let gaps = median_and_worst(runs.iter().map(|s| s.gap).collect());
            let fails = median_and_worst(runs.iter().map(|s| s.failed).collect());
            let ms = |d: Option<(Duration, Duration)>| {
                d.map_or_else(
                    || "-".to_owned(),
                    |(m, w)| format!("{} ms ({} ms)", m.as_millis(), w.as_millis()),
                )
            };
            println!(
                "| {fault} | {} | {} | {} | {} | {} |",
                system.name(),
                ms(moved),
                ms(gaps),
                fails.map_or_else(|| "-".to_owned(), |(m, w)| format!("{m} ({w})")),
                runs.len()
            );
        }
        println!(
            "\n| system | Service created to the router forwarding to every node, median | worst | Services |"
        );
        println!("|---|---|---|---|");
        for (system, took) in &self.created {
            if let Some((median, worst)) = median_and_worst(took.clone()) {
                println!(
                    "| {} | {} ms | {} ms | {} |",
                    system.name(),
                    median.as_millis(),
                    worst.as_millis(),
                    took.len()
                );
            }
        }
        self.rest.print();
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    herald_lab::init_tracing();
    let (rounds, systems) = rounds_and_systems(&[System::Herald, System::Metallb], System::name)?;
    let mut results = Results::default();
    for number in 1..=rounds {
        for system in systems.iter().copied() {
            round(system, number, &mut results)
                .await
                .with_context(|| format!("{} round {number}", system.name()))?;
        }
    }
    results.summary();
    Ok(())
}
