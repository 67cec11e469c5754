//! `herald-bench-peers`: Herald, MetalLB and kube-vip side by side on the real cluster, L2
//! mode, each installed alone on a fresh 3-node cluster as its users install it (Herald:
//! `helm install` with default values and a pool with an L2Advertisement; MetalLB: its own
//! manifest and an IPAddressPool with an L2Advertisement; kube-vip: its RBAC, the DaemonSet
//! its manifest generator writes for Services in ARP mode with an election per Service, and
//! its cloud provider with a ConfigMap of the same ranges), the same app (`web`, 2 replicas
//! behind a dual-stack LoadBalancer Service), the same client and the same faults, the
//! systems interleaved round by round. Run through `bench/peers` (needs root).
//!
//! Per round and system, against the node answering for the Service's IPv4 address:
//! 1. at rest: RSS and CPU of every speaker and controller process over 20 s;
//! 2. the speaker's pod on that node deleted (the DaemonSet makes a new one);
//! 3. the speaker's process on that node killed with SIGKILL (kubelet restarts it);
//! 4. every speaker restarted (`kubectl rollout restart` of the DaemonSet);
//! 5. gossip blocked inbound on that node for 30 s (its speaker's memberlist or heartbeat
//!    port dropped by nftables; for kube-vip, whose speakers agree through Leases, the API
//!    server's answers to that node), then let through again;
//! 6. the node's CPUs starved for 20 s, the app's pods elsewhere: every pod on it held to
//!    2 ms of CPU per 100 ms together (a CFS quota on its pod cgroup), and one busy loop per
//!    core in that cgroup competing for it (the nodes share this machine's cores, so busy
//!    loops alone would starve every node alike);
//! 7. the node dies (kubelet, containerd and its pods killed, its link down), the app's pods
//!    elsewhere.
//!
//! For each fault, a client sends requests through the VIP all along (the longest gap
//! between two answered requests and the failed ones), and a second one asks for the VIP's
//! MAC every 100 ms or so (the asks with two answering MACs, and with none).
//!
//! With `--services=N`, each round measures at rest only, instead of the faults: with the one
//! Service, then with N more (IPv6, from a range each system is given as its users add one):
//! how long until every one has an IP, then, a minute later, whether sampled IPs are answered
//! by one node, and the RSS and CPU of every speaker and controller, and of the API server
//! and etcd, over 20 s.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use herald_lab::bins::go_binary;
use herald_lab::control_plane::NAMESPACE_PORT;
use herald_lab::faults::nft_in;
use herald_lab::netns::{self, Host};
use herald_lab::objects::apply;
use herald_lab::process::{processes, usage};
use herald_lab::real_cluster::journey::{
    LAN_POOL, Requests, Traffic, deploy_web, failed, keep_web_off, longest_gap, web_ready_on,
    web_vips,
};
use herald_lab::real_cluster::{Cluster, ClusterOptions};
use herald_lab::side_by_side::{
    AtRest, HERALD, Installed, KUBE_VIP, METALLB, option, rounds_and_systems,
};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

const SETTLE: Duration = Duration::from_secs(60);
/// How long the client goes on once a fault is over (the system recovered as it says).
const AFTER: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum System {
    Herald,
    Metallb,
    KubeVip,
}

impl System {
    fn facts(self) -> &'static Installed {
        match self {
            System::Herald => &HERALD,
            System::Metallb => &METALLB,
            System::KubeVip => &KUBE_VIP,
        }
    }

    fn name(self) -> &'static str {
        self.facts().name
    }

    /// What its speakers hear each other on: an nftables match. kube-vip's speakers agree
    /// through Leases: the API server's answers (its port on the LAN).
    fn gossip(self) -> String {
        match self {
            System::Herald => "udp dport 9474".into(),
            System::Metallb => "meta l4proto { tcp, udp } th dport 7946".into(),
            System::KubeVip => format!("tcp sport {NAMESPACE_PORT}"),
        }
    }

    fn speaker_pods(self) -> &'static str {
        match self {
            System::Herald => "app.kubernetes.io/component=speaker",
            System::Metallb => "app=metallb,component=speaker",
            System::KubeVip => "app.kubernetes.io/name=kube-vip-ds",
        }
    }

    /// Installs it as its docs tell users to, and waits until it runs.
    async fn install(self, cluster: &Cluster) -> Result<()> {
        match self {
            System::Herald => {
                cluster.install_herald(&[])?;
                apply(&cluster.client(), LAN_POOL).await;
            }
            System::Metallb => cluster.install_metallb().await?,
            System::KubeVip => cluster.install_kube_vip().await?,
        }
        Ok(())
    }
}

/// What a client saw through one fault.
#[derive(Debug, Clone)]
struct Seen {
    gap: Duration,
    failed: usize,
    requests: usize,
    two_macs: usize,
    no_mac: usize,
    asks: usize,
    /// Several nodes still answered the VIP a minute after the fault was over.
    stuck: bool,
}

/// Asks for the VIP's MAC from the client, over and over, on a thread.
struct Asker {
    stop: Arc<AtomicBool>,
    worker: JoinHandle<(usize, usize, usize)>,
}

impl Asker {
    fn start(client: &Host, ip: IpAddr) -> Self {
        let client = client.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let worker = std::thread::spawn(move || {
            let (mut two, mut none, mut asks) = (0, 0, 0);
            while !stopped.load(Ordering::Relaxed) {
                let answers =
                    netns::resolve(&client, ip, Duration::from_millis(100)).unwrap_or_default();
                let mut macs = answers.clone();
                macs.sort_unstable();
                macs.dedup();
                asks += 1;
                match macs.len() {
                    0 => none += 1,
                    1 => {}
                    _ => two += 1,
                }
            }
            (two, none, asks)
        });
        Self { stop, worker }
    }

    fn finish(self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.worker.join().unwrap_or_default()
    }
}

/// Requests and asks through a VIP, from before a fault until after it.
struct Watch {
    requests: Requests,
    asker: Asker,
}

impl Watch {
    /// Starts both, and lets them run 2 s before the fault.
    async fn start(cluster: &Cluster, ip: IpAddr) -> Self {
        let watch = Self {
            requests: Requests::start(cluster, ip),
            asker: Asker::start(&cluster.lan().client, ip),
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        watch
    }

    /// Lets them run `after` more (the fault is over), then says what they saw.
    async fn finish(self, after: Duration) -> Seen {
        tokio::time::sleep(after).await;
        let outcomes = self.requests.finish();
        let (two_macs, no_mac, asks) = self.asker.finish();
        Seen {
            gap: longest_gap(&outcomes),
            failed: failed(&outcomes),
            requests: outcomes.len(),
            two_macs,
            no_mac,
            asks,
            stuck: false,
        }
    }
}

/// The node answering for `ip` once one does; when several still answer a minute later
/// (the system never settled after the last fault), says so with what their nodes hold,
/// and goes on with the first (the next faults are still measured).
fn owner(cluster: &Cluster, system: System, ip: IpAddr) -> (String, bool) {
    let deadline = Instant::now() + SETTLE;
    let mut streak = 0;
    loop {
        let mut answers = cluster.answers(ip);
        answers.dedup();
        streak = if answers.len() == 1 { streak + 1 } else { 0 };
        if streak == 3 {
            return (answers[0].clone(), false);
        }
        if Instant::now() > deadline && !answers.is_empty() {
            println!(
                "{}: {answers:?} still answer {ip} {}s after the fault",
                system.name(),
                SETTLE.as_secs()
            );
            for node in &answers {
                let ns = &cluster.node(node).host.ns;
                let addresses = std::process::Command::new("ip")
                    .args(["-n", ns, "-brief", "address", "show", "eth0"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                    .unwrap_or_default();
                println!("  {node}: {addresses}");
                let logs = cluster
                    .kubectl(&[
                        "-n",
                        system.facts().namespace,
                        "get",
                        "pod",
                        "-l",
                        system.speaker_pods(),
                        "--field-selector",
                        &format!("spec.nodeName={node}"),
                        "-o",
                        "name",
                    ])
                    .and_then(|pod| {
                        cluster.kubectl(&[
                            "-n",
                            system.facts().namespace,
                            "logs",
                            pod.trim(),
                            "--tail",
                            "15",
                        ])
                    })
                    .unwrap_or_else(|e| e.to_string());
                println!("{logs}");
            }
            return (answers[0].clone(), true);
        }
    }
}

/// Waits until the speaker on `node` runs again under another pid than `old`.
async fn speaker_back(system: System, node_ns: &str, old: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = processes(system.facts().binaries[0], Some(node_ns));
        if now.iter().any(|p| *p != old) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the speaker on {node_ns} did not come back");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ends `watch` once a fault is over and records what it saw, with whether the system
/// settled on one answer afterwards; returns the node answering now.
async fn record(
    watch: Watch,
    cluster: &Cluster,
    system: System,
    ip: IpAddr,
    number: usize,
    fault: &'static str,
    results: &mut Results,
) -> String {
    let seen = watch.finish(AFTER).await;
    let (owner, stuck) = owner(cluster, system, ip);
    results.seen(system, number, fault, Seen { stuck, ..seen });
    owner
}

/// One round of one system on a fresh cluster; one line per measure.
async fn round(
    system: System,
    number: usize,
    many: Option<usize>,
    results: &mut Results,
) -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        peers: system == System::Metallb,
        kube_vip: system == System::KubeVip,
        ..ClusterOptions::default()
    })
    .await?;
    let client = cluster.client();
    system
        .install(&cluster)
        .await
        .with_context(|| format!("installing {}\n{}", system.name(), cluster.diagnose()))?;
    deploy_web(&client, 2, Traffic::Cluster).await;
    web_ready_on(&client, 2, SETTLE).await;
    let (v4, _) = web_vips(&client).await;
    cluster.one_answer(v4, SETTLE, |_| true);

    at_rest(system, number, "", results).await?;
    if let Some(many) = many {
        at_scale(&cluster, system, number, many, results).await?;
        return Ok(());
    }

    let ns = system.facts().namespace;
    // The speaker's pod on the answering node deleted.
    let (owner, _) = self::owner(&cluster, system, v4);
    let watch = Watch::start(&cluster, v4).await;
    cluster.kubectl(&[
        "-n",
        ns,
        "delete",
        "pod",
        "-l",
        system.speaker_pods(),
        "--field-selector",
        &format!("spec.nodeName={owner}"),
        "--wait=false",
    ])?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.rollout_status(ns, system.facts().speaker_daemonset, "180s")?;
    let owner = record(
        watch,
        &cluster,
        system,
        v4,
        number,
        "speaker pod deleted",
        results,
    )
    .await;

    // The speaker's process on the answering node killed with SIGKILL.
    let owner_ns = cluster.node(&owner).host.ns.clone();
    let pids = processes(system.facts().binaries[0], Some(&owner_ns));
    let [pid] = pids.as_slice() else {
        bail!("speakers on {owner}: {pids:?}");
    };
    let watch = Watch::start(&cluster, v4).await;
    // SAFETY: kill(2) with a pid read from /proc just now and a valid signal.
    if unsafe { libc::kill(*pid as i32, libc::SIGKILL) } != 0 {
        bail!("kill -9 {pid}: {}", std::io::Error::last_os_error());
    }
    speaker_back(system, &owner_ns, *pid).await?;
    record(
        watch,
        &cluster,
        system,
        v4,
        number,
        "speaker killed (-9)",
        results,
    )
    .await;

    // Every speaker restarted, one node after another.
    let watch = Watch::start(&cluster, v4).await;
    system.facts().restart_speakers(&cluster)?;
    let owner = record(
        watch,
        &cluster,
        system,
        v4,
        number,
        "rolling restart",
        results,
    )
    .await;

    // Gossip blocked inbound on the answering node for 30 s.
    let owner_ns = cluster.node(&owner).host.ns.clone();
    let watch = Watch::start(&cluster, v4).await;
    nft_in(
        &owner_ns,
        &format!(
            "add table inet herald_bench\nadd chain inet herald_bench input {{ type filter hook input priority 0; }}\nadd rule inet herald_bench input {} drop\n",
            system.gossip()
        ),
    )?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    nft_in(&owner_ns, "delete table inet herald_bench\n")?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    record(
        watch,
        &cluster,
        system,
        v4,
        number,
        "gossip blocked 30 s",
        results,
    )
    .await;

    // The answering node's CPUs starved for 20 s; the app runs elsewhere, so the gap is the
    // load balancer's.
    let (owner, _) = self::owner(&cluster, system, v4);
    keep_web_off(&client, &owner).await;
    web_ready_on(&client, 2, SETTLE).await;
    let (owner, _) = self::owner(&cluster, system, v4);
    let watch = Watch::start(&cluster, v4).await;
    let starved = cluster.node(&owner).starve(Duration::from_millis(2))?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    drop(starved);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let owner = record(
        watch,
        &cluster,
        system,
        v4,
        number,
        "CPU starved 20 s",
        results,
    )
    .await;

    // The answering node dies (it may be another one now: the app is kept off it too).
    keep_web_off(&client, &owner).await;
    web_ready_on(&client, 2, SETTLE).await;
    let (owner, _) = self::owner(&cluster, system, v4);
    let watch = Watch::start(&cluster, v4).await;
    cluster.kill_node(&owner)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Several frames from one node (a reply and its gratuitous ARPs) are one answer.
        let mut answers = cluster.answers(v4);
        answers.dedup();
        if matches!(answers.as_slice(), [one] if *one != owner) {
            break;
        }
        if Instant::now() > deadline {
            bail!("no other node answers for {v4} within 60 s: {answers:?}");
        }
    }
    let seen = watch.finish(AFTER).await;
    results.seen(system, number, "node death", seen);
    drop(cluster);
    Ok(())
}

/// RSS and CPU of the system's speakers and controllers and of the control plane over 20 s,
/// recorded with `label` after each process's name.
async fn at_rest(system: System, number: usize, label: &str, results: &mut Results) -> Result<()> {
    let apiserver = go_binary("kube-apiserver")?;
    let etcd = go_binary("etcd")?;
    let control_plane = [
        apiserver.to_str().context("path")?,
        etcd.to_str().context("path")?,
    ];
    let binaries: Vec<&str> = system
        .facts()
        .binaries
        .iter()
        .copied()
        .chain(control_plane)
        .collect();
    for (binary, rss, cpu, count) in usage(&binaries, Duration::from_secs(20)).await {
        let name = binary.rsplit('/').next().unwrap_or(&binary);
        let name = format!("{name}{label}");
        println!(
            "{} round {number} at rest: {name} x{count}: RSS {rss:.1} MiB, CPU {cpu:.2}% of a core (mean per process)",
            system.name()
        );
        results.rest(system, &name, rss, cpu);
    }
    Ok(())
}

/// The range each system is given for the many Services: IPv6 in the LAN's subnet, so each
/// announces it as it does its first range.
const MANY_RANGE: &str = "2001:db8::1000-2001:db8::17ff";

impl System {
    /// Adds `MANY_RANGE` as its users add a range.
    async fn add_range(self, cluster: &Cluster) -> Result<()> {
        match self {
            System::Herald => {
                apply(
                    &cluster.client(),
                    &format!(
                        "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {{name: many}}\nspec: {{addresses: ['{MANY_RANGE}']}}"
                    ),
                )
                .await;
            }
            System::Metallb => {
                cluster
                    .apply_metallb(&[&format!(
                        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: many, namespace: metallb-system}}\nspec: {{addresses: ['{MANY_RANGE}']}}"
                    )])
                    .await?;
            }
            System::KubeVip => {
                let maps: Api<ConfigMap> = Api::namespaced(cluster.client(), "kube-system");
                let map = maps.get("kubevip").await?;
                let ranges = map
                    .data
                    .as_ref()
                    .and_then(|d| d.get("range-global"))
                    .context("kube-vip's range-global")?;
                let patch =
                    serde_json::json!({"data": {"range-global": format!("{ranges},{MANY_RANGE}")}});
                maps.patch("kubevip", &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
        }
        Ok(())
    }
}

/// `many` more Services (IPv6, in front of `web`) created 16 at a time; the time until each
/// has an IP in its status, then, a minute later, sampled IPs asked for and the processes at
/// rest.
async fn at_scale(
    cluster: &Cluster,
    system: System,
    number: usize,
    many: usize,
    results: &mut Results,
) -> Result<()> {
    system.add_range(cluster).await?;
    let svcs: Api<Service> = Api::namespaced(cluster.client(), "default");
    let started = Instant::now();
    let created: Vec<Result<Service>> = futures::stream::iter(0..many)
        .map(|i| {
            let svcs = svcs.clone();
            async move {
                let svc: Service = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("many-{i}"), "labels": {"bench": "many"}},
                    "spec": {
                        "type": "LoadBalancer",
                        "ipFamilies": ["IPv6"],
                        "selector": {"app": "web"},
                        "ports": [{"port": 80, "targetPort": 8080}]
                    }
                }))?;
                Ok(svcs.create(&PostParams::default(), &svc).await?)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    if let Some(Err(e)) = created.iter().find(|c| c.is_err()) {
        bail!("creating {many} Services: {e:#}");
    }
    let created_in = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    let listed = ListParams::default().labels("bench=many");
    let ips = loop {
        let list = svcs.list(&listed).await?;
        let ips: Vec<IpAddr> = list
            .items
            .iter()
            .filter_map(|s| {
                let ingress = s
                    .status
                    .as_ref()?
                    .load_balancer
                    .as_ref()?
                    .ingress
                    .as_ref()?;
                ingress.first()?.ip.as_ref()?.parse().ok()
            })
            .collect();
        if ips.len() == many || Instant::now() > deadline {
            break ips;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let allocated_in = started.elapsed();
    // What follows an allocation (announcements, their records, Leases) has settled.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let sampled: Vec<IpAddr> = ips
        .iter()
        .step_by((ips.len() / 5).max(1))
        .copied()
        .collect();
    let one_answer = sampled
        .iter()
        .filter(|ip| {
            let mut answers = cluster.answers(**ip);
            answers.dedup();
            answers.len() == 1
        })
        .count();
    println!(
        "{} round {number}, {many} Services: created in {:.1} s, {} of {many} with an IP after {:.1} s; of {} sampled IPs, {one_answer} answered by one node",
        system.name(),
        created_in.as_secs_f64(),
        ips.len(),
        allocated_in.as_secs_f64(),
        sampled.len()
    );
    results.scale(system, ips.len() == many, allocated_in);
    at_rest(system, number, &format!(", {many} Services"), results).await
}

/// Every measure, for the summary.
#[derive(Default)]
struct Results {
    faults: BTreeMap<(&'static str, System), Vec<Seen>>,
    rest: AtRest,
    /// With `--services`: per run, whether every Service got an IP and when the last did.
    scale: BTreeMap<System, Vec<(bool, Duration)>>,
}

impl Results {
    fn seen(&mut self, system: System, number: usize, fault: &'static str, seen: Seen) {
        println!(
            "{} round {number} {fault}: longest gap {} ms, {} of {} requests failed, {} of {} asks answered by two MACs, {} by none{}",
            system.name(),
            seen.gap.as_millis(),
            seen.failed,
            seen.requests,
            seen.two_macs,
            seen.asks,
            seen.no_mac,
            if seen.stuck {
                "; several nodes still answer a minute later"
            } else {
                ""
            }
        );
        self.faults.entry((fault, system)).or_default().push(seen);
    }

    fn rest(&mut self, system: System, binary: &str, rss: f64, cpu: f64) {
        self.rest.record(system.name(), binary, rss, cpu);
    }

    fn scale(&mut self, system: System, all: bool, last: Duration) {
        self.scale.entry(system).or_default().push((all, last));
    }

    fn summary(&self) {
        println!(
            "\n| fault | system | longest gap, median (worst) | failed requests, median (worst) | asks answered by two MACs, worst | asks answered by none, worst | runs | runs with several nodes answering a minute later |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for ((fault, system), runs) in &self.faults {
            let mut gaps: Vec<u128> = runs.iter().map(|s| s.gap.as_millis()).collect();
            let mut fails: Vec<usize> = runs.iter().map(|s| s.failed).collect();
            gaps.sort_unstable();
            fails.sort_unstable();
            let two = runs.iter().map(|s| s.two_macs).max().unwrap_or(0);
            let none = runs.iter().map(|s| s.no_mac).max().unwrap_or(0);
            let stuck = runs.iter().filter(|s| s.stuck).count();
            println!(
                "| {fault} | {} | {} ms ({} ms) | {} ({}) | {two} | {none} | {} | {stuck} |",
                system.name(),
                gaps[gaps.len() / 2],
                gaps[gaps.len() - 1],
                fails[fails.len() / 2],
                fails[fails.len() - 1],
                runs.len()
            );
        }
        self.rest.print();
        for (system, runs) in &self.scale {
            let mut times: Vec<Duration> = runs.iter().map(|r| r.1).collect();
            times.sort_unstable();
            println!(
                "{}: every Service with an IP after {:.1} s, median ({:.1} s worst); runs where some never got one: {}",
                system.name(),
                times[times.len() / 2].as_secs_f64(),
                times[times.len() - 1].as_secs_f64(),
                runs.iter().filter(|r| !r.0).count()
            );
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    herald_lab::init_tracing();
    let (rounds, systems) = rounds_and_systems(
        &[System::Herald, System::Metallb, System::KubeVip],
        System::name,
    )?;
    let many: Option<usize> = option("services")
        .map(|n| n.parse())
        .transpose()
        .context("--services=N: N must be a number")?;
    let mut results = Results::default();
    for number in 1..=rounds {
        for system in systems.iter().copied() {
            round(system, number, many, &mut results)
                .await
                .with_context(|| format!("{} round {number}", system.name()))?;
        }
    }
    results.summary();
    Ok(())
}
