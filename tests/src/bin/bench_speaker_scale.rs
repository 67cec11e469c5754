//! `herald-bench-speaker-scale`: what one real speaker costs in a cluster of N nodes, against
//! simulated peers. Run through `bench/speaker-scale` (the image's static musl build of the
//! speaker, needs root).
//!
//! For each N: N Node objects in a real API server (the real speaker's node `n1` on a LAN of
//! network namespaces, N-1 simulated nodes), cut into 50-node segments: segment k's nodes
//! report subnet k in their heartbeats and IPPool `seg-k` holds addresses of subnet k
//! (segment 0 is the LAN the real node is on), with one L2Advertisement and no selectors,
//! as users write it. A simulator in the client namespace sends the authenticated heartbeats
//! of the N-1 simulated nodes (the wire format written here again, from the protocol's
//! description, so a change to it shows) and receives the real speaker's. Simulated nodes
//! behave as speakers do (`--protocol segments`, the default): those of the real node's
//! segment heartbeat it every 100 ms, the others once per 10-second round; or as speakers
//! did before segments (`--protocol all-to-all`): every node every 100 ms, to compare.
//! 100 Services hold IPs of segment 0. Measured over 20 steady seconds: the speaker's
//! CPU (share of one core), RSS (and its peak since start), and datagrams in and out per
//! second. Then segment 0's simulated nodes fall silent at once: the real speaker takes
//! their IPs over, and its `herald_speaker_takeover_seconds` histogram gives the time from
//! their last heartbeat to its announcement.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{StreamExt, stream};
use herald_lab::ControlPlane;
use herald_lab::netns::{self, Lan, http_get_in, in_ns};
use herald_lab::objects::apply;
use herald_lab::process::{cpu_seconds, memory_mib};
use herald_lab::process_cluster::{GOSSIP_PORT, KEY, ready_node, speaker_command};
use ring::hmac;

const SEGMENT: usize = 50;
const HEARTBEAT: Duration = Duration::from_millis(100);
const SERVICES: usize = 100;
const STEADY: Duration = Duration::from_secs(20);
/// Simulated nodes' InternalIPs: 10.96.0.0/16, delivered to the simulator's namespace.
const SIM_NET: &str = "10.96.0.0/16";
/// Rounds to every node (speaker/src/gossip.rs `FAR_ROUND`).
const FAR_ROUND: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    /// Every node heartbeats every other every 100 ms (Herald before segments).
    AllToAll,
    /// Segment peers every 100 ms, every other node once per round.
    Segments,
}

fn sim_name(i: usize) -> String {
    format!("sim-{i:05}")
}

fn sim_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// Segment of simulated node `i` (the real node `n1` is in segment 0).
fn segment_of(i: usize) -> usize {
    // n1 takes segment 0's first place.
    (i + 1) / SEGMENT
}

/// The subnet of segment `k`: the LAN for 0, 10.(128 + k / 256).(k % 256).0/24 otherwise.
fn segment_subnet(k: usize) -> (Ipv4Addr, u8) {
    if k == 0 {
        (Ipv4Addr::new(192, 0, 2, 0), 24)
    } else {
        (
            Ipv4Addr::new(10, (128 + k / 256) as u8, (k % 256) as u8, 0),
            24,
        )
    }
}

fn pool_range(k: usize) -> String {
    let (net, _) = segment_subnet(k);
    let o = net.octets();
    if k == 0 {
        // Clear of the LAN's hosts (.11.. nodes, .200 the client).
        "192.0.2.100-192.0.2.199".to_owned()
    } else {
        format!(
            "{}.{}.{}.10-{}.{}.{}.250",
            o[0], o[1], o[2], o[0], o[1], o[2]
        )
    }
}

/// One heartbeat as the speaker's wire format has it (speaker/src/membership.rs, version 2):
/// magic, version, kind, incarnation, counter, name, subnets, HMAC-SHA256 over all of it.
fn heartbeat(
    key: &hmac::Key,
    node: &str,
    incarnation: u64,
    seq: u64,
    subnet: (Ipv4Addr, u8),
) -> Vec<u8> {
    let mut out = b"HRLD".to_vec();
    out.push(2);
    out.push(1); // alive
    out.extend_from_slice(&incarnation.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.push(node.len() as u8);
    out.extend_from_slice(node.as_bytes());
    out.push(1);
    out.push(4);
    out.extend_from_slice(&subnet.0.octets());
    out.push(subnet.1);
    let tag = hmac::sign(key, &out);
    out.extend_from_slice(tag.as_ref());
    out
}

/// The simulated peers: heartbeats to the real speaker, its heartbeats counted.
struct Simulator {
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    /// Segment 0's simulated nodes fall silent when set.
    silence_segment_0: Arc<AtomicBool>,
    last_segment_0: Arc<parking_lot::Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
}

impl Simulator {
    fn start(lan: &Lan, peers: usize, protocol: Protocol) -> Result<Self> {
        let client_ns = lan.client.ns.clone();
        let real: SocketAddr = (IpAddr::V4(lan.node("n1").v4), GOSSIP_PORT).into();
        let socket = in_ns(&client_ns, || {
            std::net::UdpSocket::bind(("0.0.0.0", GOSSIP_PORT))
        })??;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let receiver = socket.try_clone()?;
        let sim = Self {
            sent: Arc::default(),
            received: Arc::default(),
            silence_segment_0: Arc::default(),
            last_segment_0: Arc::default(),
            stop: Arc::default(),
        };
        let (received, stop) = (sim.received.clone(), sim.stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if receiver.recv_from(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let (sent, stop) = (sim.sent.clone(), sim.stop.clone());
        let (silence, last) = (sim.silence_segment_0.clone(), sim.last_segment_0.clone());
        std::thread::spawn(move || {
            let key = hmac::Key::new(hmac::HMAC_SHA256, KEY.as_bytes());
            let names: Vec<String> = (0..peers).map(sim_name).collect();
            let ticks_per_round = (FAR_ROUND.as_millis() / HEARTBEAT.as_millis()) as u64;
            let mut seq = 0u64;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let quiet = silence.load(Ordering::Relaxed);
                for (i, name) in names.iter().enumerate() {
                    let k = segment_of(i);
                    if quiet && k == 0 {
                        continue;
                    }
                    // Outside the real node's segment: once a round, rounds spread over nodes.
                    if protocol == Protocol::Segments
                        && k != 0
                        && !(seq + i as u64).is_multiple_of(ticks_per_round)
                    {
                        continue;
                    }
                    let datagram = heartbeat(&key, name, 7 + i as u64, seq, segment_subnet(k));
                    if socket.send_to(&datagram, real).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if !quiet {
                    let mut last = last.lock();
                    *last = Some(Instant::now());
                }
                next += HEARTBEAT;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        });
        Ok(sim)
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The N-1 simulated Nodes, Ready, with their InternalIPs, and n1.
async fn nodes(client: &kube::Client, lan: &Lan, peers: usize) {
    let mut all: Vec<(String, IpAddr)> = (0..peers)
        .map(|i| (sim_name(i), IpAddr::V4(sim_address(i))))
        .collect();
    all.push(("n1".into(), IpAddr::V4(lan.node("n1").v4)));
    stream::iter(all)
        .for_each_concurrent(32, |(name, ip)| async move {
            ready_node(client, &name, &ip.to_string(), "").await;
        })
        .await;
}

/// One pool per segment, the default advertisement, and `SERVICES` Services holding IPs of
/// segment 0 (status written as the controller would).
async fn pools_and_services(client: &kube::Client, segments: usize) -> Result<()> {
    let mut yaml = String::new();
    for k in 0..segments {
        yaml += &format!(
            "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {{name: seg-{k}}}\nspec: {{addresses: [{}]}}\n---\n",
            pool_range(k)
        );
    }
    yaml +=
        "apiVersion: herald.dev/v1alpha1\nkind: L2Advertisement\nmetadata: {name: lan}\nspec: {}";
    apply(client, &yaml).await;
    let services: Vec<(String, String)> = (0..SERVICES)
        .map(|i| (format!("vip-{i}"), format!("192.0.2.{}", 100 + i)))
        .collect();
    herald_lab::process_cluster::allocated_services(client, &services).await
}

fn metrics(lan: &Lan) -> HashMap<String, f64> {
    http_get_in(&lan.node("n1").ns, 9473, "/metrics")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

async fn run_size(n: usize, protocol: Protocol) -> Result<String> {
    let peers = n - 1;
    let segments = n.div_ceil(SEGMENT);
    let cp = ControlPlane::start().await?;
    let lan = Lan::create(1)?;
    lan.forward_api(cp.port())?;
    // The simulated nodes' addresses reach the simulator: routed from n1 to the client
    // namespace, which takes the whole range as local (no address per node).
    netns::ip(&[
        "-n",
        &lan.client.ns,
        "route",
        "add",
        "local",
        SIM_NET,
        "dev",
        "lo",
    ])?;
    let via = lan.client.v4.to_string();
    netns::ip(&[
        "-n",
        &lan.node("n1").ns,
        "route",
        "add",
        SIM_NET,
        "via",
        &via,
    ])?;
    let client = cp.client();
    nodes(&client, &lan, peers).await;
    pools_and_services(&client, segments).await?;
    let sim = Simulator::start(&lan, peers, protocol)?;
    // Segmented liveness is the default: with `--protocol=all-to-all` only the simulated
    // peers send as speakers did before segments (the receiving side of the old cost).
    let cmd = speaker_command(&cp, &lan.node("n1").ns, "n1", KEY);
    let real = herald_lab::Process::spawn("speaker-n1", cmd, &cp.dir().join("speaker-n1.log"))?;
    // Settled: the speaker hears every peer and owns its share of segment 0.
    let deadline = Instant::now() + Duration::from_secs(120);
    while metrics(&lan).get("herald_speaker_members") != Some(&(n as f64)) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the speaker never heard all {n} members"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

    let pid = real.pid();
    let (t0, c0) = (Instant::now(), cpu_seconds(pid)?);
    let (s0, r0) = (
        sim.sent.load(Ordering::Relaxed),
        sim.received.load(Ordering::Relaxed),
    );
    tokio::time::sleep(STEADY).await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(pid)? - c0) / secs;
    let datagrams_in = (sim.sent.load(Ordering::Relaxed) - s0) as f64 / secs;
    let datagrams_out = (sim.received.load(Ordering::Relaxed) - r0) as f64 / secs;
    let (rss, peak) = (memory_mib(pid, "VmRSS:")?, memory_mib(pid, "VmHWM:")?);
    let m = metrics(&lan);
    let pass = m
        .get("herald_speaker_pass_duration_seconds_sum")
        .copied()
        .unwrap_or_default()
        / m.get("herald_speaker_pass_duration_seconds_count")
            .copied()
            .unwrap_or(1.0);
    let owned_before = metrics(&lan)
        .get("herald_speaker_ips_announced")
        .copied()
        .unwrap_or_default();

    // Segment 0's simulated nodes fall silent: n1 takes their IPs over.
    sim.silence_segment_0.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    let key = "herald_speaker_takeover_seconds_count{peer=\"died\"}";
    while metrics(&lan).get(key).copied().unwrap_or_default() < 1.0 {
        anyhow::ensure!(Instant::now() < deadline, "no takeover counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = metrics(&lan);
    let takeover = m
        .get("herald_speaker_takeover_seconds_sum{peer=\"died\"}")
        .copied()
        .unwrap_or_default()
        / m.get(key).copied().unwrap_or(1.0);
    let owned_after = m
        .get("herald_speaker_ips_announced")
        .copied()
        .unwrap_or_default();
    drop(sim);
    Ok(format!(
        "| {n} | {segments} | {:.1}% | {rss:.1} MiB ({peak:.1}) | {datagrams_in:.0}/s | {datagrams_out:.0}/s | {:.1} ms | {:.0} ms | {owned_before} → {owned_after} |",
        cpu * 100.0,
        pass * 1000.0,
        takeover * 1000.0
    ))
}

#[tokio::main]
async fn main() -> Result<()> {
    herald_lab::init_tracing();
    let mut protocol = Protocol::Segments;
    let mut sizes = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--protocol=all-to-all" => protocol = Protocol::AllToAll,
            "--protocol=segments" => protocol = Protocol::Segments,
            n => sizes.push(n.parse::<usize>().context("sizes are node counts")?),
        }
    }
    let sizes = if sizes.is_empty() {
        vec![100, 1_000, 5_000]
    } else {
        sizes
    };
    println!(
        "| nodes | segments | speaker CPU (one core) | speaker RSS (peak) | datagrams in | datagrams out | decision pass (mean) | takeover (last heartbeat → announced) | IPs announced (before → after) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in sizes {
        println!("{}", run_size(n, protocol).await?);
    }
    Ok(())
}
