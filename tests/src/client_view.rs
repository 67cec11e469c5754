//! What a client on the namespace LAN sees of the VIPs: who answers each ARP request, per
//! round of requests; and the speaker-side probes and faults the speaker's end-to-end tests
//! and its fault benchmark share (readiness, metrics, blocked gossip).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::Api;

use crate::l2::{KEY, accept_locally, speaker};
use crate::netns::{Lan, http_get_in, resolve};
use crate::objects::{allocated, apply, lb};
use crate::{ControlPlane, Process};

/// `count` IPv4 LoadBalancer Services `vip0`..; their IPs, accepted on every node.
pub async fn vips(client: &Client, lan: &Lan, count: usize) -> Vec<IpAddr> {
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let mut ips = Vec::new();
    for i in 0..count {
        apply(client, &lb(&format!("vip{i}"), "", "")).await;
    }
    for i in 0..count {
        let got = allocated(&svcs, &format!("vip{i}"), 1).await;
        ips.push(got[0].parse().expect("ip"));
    }
    accept_locally(lan, &ips);
    ips
}

/// One round: the nodes answering each VIP (one ARP request each).
pub fn round(lan: &Lan, vips: &[IpAddr]) -> BTreeMap<IpAddr, Vec<String>> {
    vips.iter()
        .map(|ip| {
            let macs = resolve(&lan.client, *ip, Duration::from_millis(100)).expect("arp");
            let nodes = macs
                .iter()
                .map(|m| lan.node_of_mac(*m).unwrap_or_else(|| format!("{m:02x?}")))
                .collect();
            (*ip, nodes)
        })
        .collect()
}

pub fn single(answers: &BTreeMap<IpAddr, Vec<String>>) -> bool {
    answers.values().all(|nodes| nodes.len() == 1)
}

/// Waits until every VIP has exactly one answer in three rounds in a row; returns the owners.
pub fn settled(lan: &Lan, vips: &[IpAddr], within: Duration) -> BTreeMap<IpAddr, String> {
    let deadline = Instant::now() + within;
    let mut streak = 0;
    loop {
        let answers = round(lan, vips);
        streak = if single(&answers) { streak + 1 } else { 0 };
        if streak == 3 {
            return answers
                .into_iter()
                .map(|(ip, mut nodes)| (ip, nodes.remove(0)))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "not one answer per VIP within {within:?}: {answers:?}"
        );
    }
}

/// Asserts exactly one answer per VIP, never from `never`, in each of `rounds` rounds.
pub fn stays_single(lan: &Lan, vips: &[IpAddr], rounds: usize, never: Option<&str>) {
    for _ in 0..rounds {
        let answers = round(lan, vips);
        assert!(single(&answers), "two answers or none: {answers:?}");
        if let Some(never) = never {
            assert!(
                answers.values().flatten().all(|n| n != never),
                "{never} answers: {answers:?}"
            );
        }
    }
}

pub fn ready(lan: &Lan, node: &str) -> bool {
    http_get_in(&lan.node(node).ns, 9473, "/readyz").is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
}

pub fn metric(lan: &Lan, node: &str, name: &str) -> Option<f64> {
    let text = http_get_in(&lan.node(node).ns, 9473, "/metrics").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls `check` every 100 ms until it holds; panics after `within`.
pub fn eventually(what: &str, within: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn speakers(cp: &ControlPlane, lan: &Lan, nodes: &[&str]) -> Vec<Process> {
    nodes
        .iter()
        .map(|n| speaker(cp, lan, n, KEY, &format!("speaker-{n}")))
        .collect()
}

/// Drops UDP to the gossip port arriving at `node` (its heartbeats still go out).
pub fn block_inbound_gossip(lan: &Lan, node: &str, block: bool) {
    if block {
        nft(lan, node, &gossip_rules(&["input"]));
    } else {
        nft(lan, node, "delete table inet herald_test\n");
    }
}

/// Drops the gossip to and from `node` (ARP still flows): a partition of the gossip port only.
pub fn partition_gossip(lan: &Lan, node: &str) {
    nft(lan, node, &gossip_rules(&["input", "output"]));
}

/// An nftables table dropping UDP to the gossip port on the hooks `hooks`.
fn gossip_rules(hooks: &[&str]) -> String {
    let mut script = String::from("add table inet herald_test\n");
    for hook in hooks {
        script.push_str(&format!(
            "add chain inet herald_test {hook} {{ type filter hook {hook} priority 0; }}\nadd rule inet herald_test {hook} udp dport {} drop\n",
            crate::l2::GOSSIP_PORT
        ));
    }
    script
}

/// Runs an nft script in `node`'s namespace.
fn nft(lan: &Lan, node: &str, script: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &lan.node(node).ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft (scripts/setup installs nftables)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("nft script");
    assert!(child.wait().expect("nft").success(), "nft failed");
}

/// A speaker whose wall clock runs an hour behind (libfaketime; its monotonic clock is the
/// real one), as after a VM restore or on a board without an RTC.
pub struct ClockBehind(Process);

impl ClockBehind {
    pub fn start(cp: &ControlPlane, lan: &Lan, node: &str) -> Self {
        let mut cmd = crate::l2::speaker_command(cp, &lan.node(node).ns, node, KEY);
        cmd.env(
            "LD_PRELOAD",
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        )
        .env("FAKETIME", "-3600")
        .env("DONT_FAKE_MONOTONIC", "1");
        let log = format!("speaker-{node}-behind");
        let process = Process::spawn(&log, cmd, &cp.dir().join(format!("{log}.log")))
            .expect("speaker (scripts/setup installs faketime)");
        Self(process)
    }
}

impl Drop for ClockBehind {
    /// Stops the speaker and removes the shared memory libfaketime leaves behind when its
    /// process is killed.
    fn drop(&mut self) {
        let pid = self.0.pid();
        self.0.kill();
        for path in [
            format!("/dev/shm/faketime_shm_{pid}"),
            format!("/dev/shm/sem.faketime_sem_{pid}"),
        ] {
            let _ = std::fs::remove_file(path);
        }
    }
}
