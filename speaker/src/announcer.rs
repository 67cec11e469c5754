//! Answers for the IPs this node owns, one task per interface: gratuitous ARP / unsolicited
//! NA a few times when an IP is gained (and every `refresh` if set), and answers to ARP
//! requests and Neighbor Solicitations for owned IPs only. Each task also probes its IPs and
//! watches the link for another host answering for them (`conflicts`), and publishes what it
//! finds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::conflicts::{Conflict, ForeignAnswers};
use crate::interfaces::Interface;
use crate::link_socket::LinkSocket;
use crate::metrics::{ForeignLabels, Metrics, Protocol, ProtocolLabels};
use crate::packet::{self, MacAddr, Query};

/// How often a task probes the next due IPs and re-reads its conflicts.
const PROBE_TICK: Duration = Duration::from_millis(200);

/// Conflicts found, per interface index.
pub type Conflicts = BTreeMap<u32, BTreeSet<Conflict>>;

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
type Task = (watch::Sender<BTreeSet<IpAddr>>, JoinHandle<()>, Interface);

/// The interface a task serves.
struct Link {
    index: u32,
    name: String,
    mac: MacAddr,
}

pub struct Announcer {
    refresh: Duration,
    metrics: Metrics,
    links: BTreeMap<u32, Task>,
    conflicts: Arc<watch::Sender<Conflicts>>,
}

impl Announcer {
    pub fn new(refresh: Duration, metrics: Metrics) -> Self {
        Self {
            refresh,
            metrics,
            links: BTreeMap::new(),
            conflicts: Arc::new(watch::channel(Conflicts::new()).0),
        }
    }

    /// Another host answering for IPs this node announces, as the tasks find it.
    pub fn conflicts(&self) -> watch::Receiver<Conflicts> {
        self.conflicts.subscribe()
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
            let mut gone = BTreeSet::new();
            self.conflicts.send_if_modified(|all| {
                gone = all.remove(&index).unwrap_or_default();
                !gone.is_empty()
            });
            publish_metrics(&self.metrics, &gone, &BTreeSet::new());
        }
        for (index, ips) in plan {
            if ips.is_empty() {
                continue;
            }
            if let Some((tx, _, _)) = self.links.get(index) {
                tx.send_if_modified(|old| {
                    let changed = old != ips;
                    if changed {
                        old.clone_from(ips);
                    }
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
                Link {
                    index: *index,
                    name: iface.name.clone(),
                    mac: MacAddr::new(mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]),
                },
                rx,
                self.refresh,
                self.metrics.clone(),
                self.conflicts.clone(),
            ));
            self.links.insert(*index, (tx, task, iface.clone()));
        }
        let announced: usize = plan.values().map(BTreeSet::len).sum();
        self.metrics.ips_announced.set(announced as i64);
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
    link: Link,
    mut owned: watch::Receiver<BTreeSet<IpAddr>>,
    refresh: Duration,
    metrics: Metrics,
    conflicts: Arc<watch::Sender<Conflicts>>,
) {
    let Link { index, name, mac } = link;
    let mut current: BTreeSet<IpAddr> = BTreeSet::new();
    // Pending announcements: when, and which IP.
    let mut due: BTreeSet<(Instant, IpAddr)> = BTreeSet::new();
    let mut next_refresh = Instant::now() + refresh;
    let mut buf = vec![0u8; 2048];
    // One line a second at most: under Service churn the owned set changes many times.
    let mut log_limit = crate::logs::RateLimit::new(Duration::from_secs(1));
    let mut foreign = ForeignAnswers::default();
    let mut found: BTreeSet<Conflict> = BTreeSet::new();
    let mut probe_tick = tokio::time::interval(PROBE_TICK);
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                foreign.owned(&wanted, now.into_std());
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
                    let frame = buf.get(..n).unwrap_or_default();
                    // A packet socket also sees this node's own frames: nothing to answer.
                    if packet::eth_source(frame).is_some_and(|source| source != mac) {
                        if let Some(claim) = packet::claim(frame) {
                            foreign.saw(claim, mac, Instant::now().into_std());
                        }
                        if let Some(q) = packet::parse(frame) {
                            answer(&socket, mac, &current, &q, &metrics, &name);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(interface = %name, "receiving: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = probe_tick.tick() => {
                let now = Instant::now().into_std();
                for ip in foreign.due(now) {
                    probe(&socket, mac, ip, &name);
                }
                let now_found = foreign.conflicts(now);
                if now_found != found {
                    publish_metrics(&metrics, &found, &now_found);
                    conflicts.send_modify(|all| {
                        if now_found.is_empty() {
                            all.remove(&index);
                        } else {
                            all.insert(index, now_found.clone());
                        }
                    });
                    found = now_found;
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                while let Some((t, ip)) = due.first().copied() {
                    if t > now { break; }
                    due.pop_first();
                    announce(&socket, mac, ip, &metrics, &name);
                }
                if !refresh.is_zero() && now >= next_refresh {
                    for ip in &current { announce(&socket, mac, *ip, &metrics, &name); }
                    next_refresh = now + refresh;
                }
            }
        }
    }
}

/// The foreign-answer gauge follows the conflicts found: one series per IP and other MAC.
fn publish_metrics(metrics: &Metrics, before: &BTreeSet<Conflict>, after: &BTreeSet<Conflict>) {
    let labels = |c: &Conflict| ForeignLabels {
        ip: c.ip.to_string(),
        mac: c.mac.to_string(),
    };
    for c in before.difference(after) {
        metrics.foreign_answers.remove(&labels(c));
    }
    for c in after.difference(before) {
        metrics.foreign_answers.get_or_create(&labels(c)).set(1);
    }
}

/// Asks the link who has `ip` (an ARP probe or a DAD solicitation): another holder answers.
fn probe(socket: &LinkSocket, mac: MacAddr, ip: IpAddr, name: &str) {
    let frame = match ip {
        IpAddr::V4(v4) => packet::arp_probe(mac, v4),
        IpAddr::V6(v6) => packet::dad_probe(mac, v6),
    };
    if let Err(e) = socket.send(&frame) {
        tracing::debug!(interface = %name, %ip, "probing: {e}");
    }
}

fn announce(socket: &LinkSocket, mac: MacAddr, ip: IpAddr, metrics: &Metrics, name: &str) {
    let frame = match ip {
        IpAddr::V4(v4) => packet::gratuitous_arp(mac, v4),
        IpAddr::V6(v6) => packet::neighbor_advert(mac, v6, None),
    };
    match socket.send(&frame) {
        Ok(()) => {
            metrics
                .announcements
                .get_or_create(&ProtocolLabels {
                    protocol: Protocol::of(ip),
                })
                .inc();
        }
        Err(e) => tracing::warn!(interface = %name, %ip, "announcing: {e}"),
    }
}

fn answer(
    socket: &LinkSocket,
    mac: MacAddr,
    owned: &BTreeSet<IpAddr>,
    query: &Query,
    metrics: &Metrics,
    name: &str,
) {
    if !owned.contains(&query.target()) {
        return;
    }
    let frame = match *query {
        Query::Arp {
            sender_mac,
            sender_ip,
            target,
        } => packet::arp_reply(mac, target, sender_mac, sender_ip),
        Query::NeighborSolicit {
            reply_mac,
            source_ip,
            target,
        } => packet::neighbor_advert(mac, target, Some((reply_mac, source_ip))),
    };
    match socket.send(&frame) {
        Ok(()) => {
            metrics
                .answers
                .get_or_create(&ProtocolLabels {
                    protocol: Protocol::of(query.target()),
                })
                .inc();
        }
        Err(e) => tracing::warn!(interface = %name, "answering: {e}"),
    }
}
