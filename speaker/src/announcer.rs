//! Answers for the IPs this node owns, one task per interface: gratuitous ARP / unsolicited
//! NA a few times when an IP is gained (and every `refresh` if set), and answers to ARP
//! requests and Neighbor Solicitations for owned IPs only.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_telemetry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::interfaces::Interface;
use crate::link_socket::LinkSocket;
use crate::metrics;
use crate::packet::{self, MacAddr, Query};

/// How many times, and how far apart, a gained IP is announced.
const BURST: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(500),
    Duration::from_millis(2000),
];

/// The IPs to answer for, per interface index.
pub type Plan = BTreeMap<u32, BTreeSet<IpAddr>>;

/// The task answering on one interface, what it answers for, and the interface it was
/// started for (restarted when the interface changes).
type Link = (watch::Sender<BTreeSet<IpAddr>>, JoinHandle<()>, Interface);

pub struct Announcer {
    refresh: Duration,
    registry: Arc<Registry>,
    links: BTreeMap<u32, Link>,
}

impl Announcer {
    pub fn new(refresh: Duration, registry: Arc<Registry>) -> Self {
        Self {
            refresh,
            registry,
            links: BTreeMap::new(),
        }
    }

    /// Makes the per-interface tasks answer for exactly `plan`.
    pub fn apply(&mut self, plan: &Plan, interfaces: &[Interface]) {
        // Stop tasks of interfaces that have nothing to answer or changed (MAC, index).
        let stale: Vec<u32> = self
            .links
            .iter()
            .filter(|(index, (_, task, iface))| {
                plan.get(index).is_none_or(|ips| ips.is_empty())
                    || task.is_finished()
                    || !interfaces.contains(iface)
            })
            .map(|(i, _)| *i)
            .collect();
        for index in stale {
            if let Some((_, task, iface)) = self.links.remove(&index) {
                task.abort();
                tracing::debug!(interface = %iface.name, "stopped answering");
            }
        }
        for (index, ips) in plan {
            if ips.is_empty() {
                continue;
            }
            if let Some((tx, _, _)) = self.links.get(index) {
                tx.send_if_modified(|old| {
                    let changed = old != ips;
                    *old = ips.clone();
                    changed
                });
                continue;
            }
            let Some(iface) = interfaces.iter().find(|i| i.index == *index) else {
                continue;
            };
            let Some(mac) = iface.mac else { continue };
            let socket = match LinkSocket::open(*index) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(interface = %iface.name, "opening a packet socket: {e}");
                    continue;
                }
            };
            let (tx, rx) = watch::channel(ips.clone());
            let task = tokio::spawn(serve(
                socket,
                iface.name.clone(),
                MacAddr::new(mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]),
                rx,
                self.refresh,
                self.registry.clone(),
            ));
            self.links.insert(*index, (tx, task, iface.clone()));
        }
        let announced: usize = plan.values().map(BTreeSet::len).sum();
        self.registry
            .set(metrics::IPS_ANNOUNCED, &[], announced as f64);
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        for (_, task, _) in self.links.values() {
            task.abort();
        }
    }
}

async fn serve(
    mut socket: LinkSocket,
    name: String,
    mac: MacAddr,
    mut owned: watch::Receiver<BTreeSet<IpAddr>>,
    refresh: Duration,
    registry: Arc<Registry>,
) {
    let mut current: BTreeSet<IpAddr> = BTreeSet::new();
    // Pending announcements: when, and which IP.
    let mut due: BTreeSet<(Instant, IpAddr)> = BTreeSet::new();
    let mut next_refresh = Instant::now() + refresh;
    let mut buf = vec![0u8; 2048];
    // One line a second at most: under Service churn the owned set changes many times.
    let mut log_limit = crate::logs::RateLimit::new(Duration::from_secs(1));
    owned.mark_changed();
    loop {
        let next_due = due.first().map(|(t, _)| *t);
        let wake = match (next_due, refresh.is_zero()) {
            (Some(t), true) => t,
            (Some(t), false) => t.min(next_refresh),
            (None, true) => Instant::now() + Duration::from_secs(3600),
            (None, false) => next_refresh,
        };
        tokio::select! {
            changed = owned.changed() => {
                if changed.is_err() { return; }
                let wanted = owned.borrow_and_update().clone();
                let now = Instant::now();
                for ip in wanted.difference(&current) {
                    for delay in BURST { due.insert((now + delay, *ip)); }
                }
                due.retain(|(_, ip)| wanted.contains(ip));
                let groups = wanted.iter().filter_map(|ip| match ip {
                    IpAddr::V6(v6) => Some(packet::mac_bytes(packet::multicast_mac(packet::solicited_node_group(*v6)))),
                    IpAddr::V4(_) => None,
                }).collect();
                if let Err(e) = socket.set_groups(&groups) {
                    tracing::warn!(interface = %name, "joining solicited-node groups: {e}");
                }
                let gained: Vec<&IpAddr> = wanted.difference(&current).collect();
                let lost: Vec<&IpAddr> = current.difference(&wanted).collect();
                if let Some(suppressed) = log_limit.allow(now.into_std()) {
                    tracing::info!(
                        interface = %name,
                        answering = wanted.len(),
                        gained = %crate::logs::bounded_list(&gained),
                        lost = %crate::logs::bounded_list(&lost),
                        earlier_changes_not_logged = suppressed,
                        "IPs this node answers for changed"
                    );
                }
                current = wanted;
            }
            received = socket.recv(&mut buf) => match received {
                Ok(n) => {
                    if let Some(q) = buf.get(..n).and_then(packet::parse) {
                        answer(&socket, mac, &current, &q, &registry, &name);
                    }
                }
                Err(e) => {
                    tracing::warn!(interface = %name, "receiving: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                while let Some((t, ip)) = due.first().copied() {
                    if t > now { break; }
                    due.pop_first();
                    announce(&socket, mac, ip, &registry, &name);
                }
                if !refresh.is_zero() && now >= next_refresh {
                    for ip in &current { announce(&socket, mac, *ip, &registry, &name); }
                    next_refresh = now + refresh;
                }
            }
        }
    }
}

fn announce(socket: &LinkSocket, mac: MacAddr, ip: IpAddr, registry: &Registry, name: &str) {
    let (frame, kind) = match ip {
        IpAddr::V4(v4) => (packet::gratuitous_arp(mac, v4), "arp"),
        IpAddr::V6(v6) => (packet::neighbor_advert(mac, v6, None), "ndp"),
    };
    match socket.send(&frame) {
        Ok(()) => registry.inc(metrics::ANNOUNCEMENTS, &[("protocol", kind)]),
        Err(e) => tracing::warn!(interface = %name, %ip, "announcing: {e}"),
    }
}

fn answer(
    socket: &LinkSocket,
    mac: MacAddr,
    owned: &BTreeSet<IpAddr>,
    query: &Query,
    registry: &Registry,
    name: &str,
) {
    if !owned.contains(&query.target()) {
        return;
    }
    let (frame, kind) = match *query {
        Query::Arp {
            sender_mac,
            sender_ip,
            target,
        } => (packet::arp_reply(mac, target, sender_mac, sender_ip), "arp"),
        Query::NeighborSolicit {
            reply_mac,
            source_ip,
            target,
        } => (
            packet::neighbor_advert(mac, target, Some((reply_mac, source_ip))),
            "ndp",
        ),
    };
    match socket.send(&frame) {
        Ok(()) => registry.inc(metrics::ANSWERS, &[("protocol", kind)]),
        Err(e) => tracing::warn!(interface = %name, "answering: {e}"),
    }
}
