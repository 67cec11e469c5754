//! What a client on the namespace LAN sees of the VIPs: who answers each ARP request, per
//! round of requests; and the speaker-side probes the speaker's end-to-end tests and its
//! fault benchmark share (readiness, metrics). The faults they inject are in `faults`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::Api;

use crate::netns::{Lan, http_get_in, resolve};
use crate::objects::{allocated, apply, lb};
use crate::process_cluster::{KEY, accept_locally, speaker};
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
