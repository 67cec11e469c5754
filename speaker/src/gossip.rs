//! The UDP side of `membership`: sends this speaker's heartbeat to every other node each
//! interval, receives theirs, expires the silent, and says "leaving" on shutdown.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, watch};

use crate::membership::{DecodeError, Heartbeat, Key, Kind, MAX_MESSAGE, Members};

pub struct Gossip {
    socket: UdpSocket,
    key: Key,
    me: String,
    port: u16,
    dual_stack: bool,
    seq: Mutex<u64>,
    pub members: Mutex<Members>,
}

impl Gossip {
    pub async fn bind(port: u16, key: Key, me: String, timeout: Duration) -> Result<Arc<Self>> {
        // Dual-stack where the kernel allows it; IPv4 only otherwise.
        let (socket, dual_stack) = match UdpSocket::bind(("::", port)).await {
            Ok(s) => (s, true),
            Err(_) => (
                UdpSocket::bind(("0.0.0.0", port))
                    .await
                    .with_context(|| format!("binding the gossip port {port}"))?,
                false,
            ),
        };
        // Start-time based so that a restarted speaker's heartbeats are newer than the
        // ones it sent before (replays of old heartbeats are refused).
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or_default();
        Ok(Arc::new(Self {
            socket,
            key,
            me,
            port,
            dual_stack,
            seq: Mutex::new(start),
            members: Mutex::new(Members::new(timeout)),
        }))
    }

    fn next_seq(&self) -> u64 {
        let mut seq = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        *seq += 1;
        *seq
    }

    async fn send_all(&self, kind: Kind, subnets: Vec<IpNetwork>, peers: &[IpAddr]) {
        let hb = Heartbeat {
            kind,
            node: self.me.clone(),
            seq: self.next_seq(),
            subnets,
        };
        let bytes = hb.encode(&self.key);
        for peer in peers {
            let ip = match peer {
                IpAddr::V4(v4) if self.dual_stack => IpAddr::V6(v4.to_ipv6_mapped()),
                other => *other,
            };
            let to = SocketAddr::new(ip, self.port);
            if let Err(e) = self.socket.send_to(&bytes, to).await {
                tracing::debug!(%to, "sending heartbeat: {e}");
            }
        }
    }

    /// Heartbeats out, heartbeats in, expiry; `changed` is notified whenever the live set
    /// or a member's subnets change.
    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        peers: watch::Receiver<Vec<IpAddr>>,
        subnets: watch::Receiver<Vec<IpNetwork>>,
        changed: Arc<Notify>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut last_rejection_logged: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let peers = peers.borrow().clone();
                    let subnets = subnets.borrow().clone();
                    self.send_all(Kind::Alive, subnets, &peers).await;
                    let dead = self.members.lock().map(|mut m| m.expire(Instant::now())).unwrap_or_default();
                    if !dead.is_empty() {
                        tracing::info!(?dead, "speakers stopped answering");
                        changed.notify_one();
                    }
                }
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((n, from)) => {
                        match Heartbeat::decode(&buf[..n], &self.key) {
                            Ok(hb) if hb.node != self.me => {
                                let (node, kind) = (hb.node.clone(), hb.kind);
                                let moved = self.members.lock().map(|mut m| m.receive(hb, Instant::now())).unwrap_or(false);
                                if moved {
                                    tracing::info!(%node, ?kind, "membership changed");
                                    changed.notify_one();
                                }
                            }
                            Ok(_) => {}
                            Err(e @ DecodeError::BadTag) => {
                                // A misconfigured speaker is worth a warning, but not 10 a second.
                                if last_rejection_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                                    tracing::warn!(%from, "rejected a heartbeat: {e}");
                                    last_rejection_logged = Some(Instant::now());
                                }
                            }
                            Err(e) => tracing::debug!(%from, "ignoring datagram: {e}"),
                        }
                    }
                    Err(e) => {
                        tracing::warn!("receiving gossip: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    /// Tells every peer this speaker is going, so its IPs move without waiting for expiry.
    pub async fn leave(&self, peers: &[IpAddr]) {
        self.send_all(Kind::Leaving, Vec::new(), peers).await;
    }
}
