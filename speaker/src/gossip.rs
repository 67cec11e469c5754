//! The UDP side of `membership`: sends this speaker's heartbeat to every other node each
//! interval, receives theirs, expires the silent, and says "leaving" on shutdown.
//!
//! Under CPU starvation this thread may run late; before it expires anyone it reads every
//! heartbeat already queued on the socket, so a peer is dead only if its heartbeats did not
//! arrive, not because this thread did not look.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, watch};

use crate::membership::{DecodeError, Heartbeat, Keys, Kind, MAX_MESSAGE, Members};
use crate::metrics::Departure;

pub struct Gossip {
    socket: UdpSocket,
    /// Replaced whole when the gossip Secret changes (a key rotation).
    keys: RwLock<Arc<Keys>>,
    me: String,
    port: u16,
    dual_stack: bool,
    incarnation: u64,
    seq: Mutex<u64>,
    pub members: Mutex<Members>,
    /// Peers gone since the last `take_departures`, and when they were last heard: the start
    /// of a takeover, for its histogram.
    departures: Mutex<Vec<(Departure, Instant)>>,
}

/// Departures kept between two decision passes at most (a mass failure is counted up to it).
const MAX_DEPARTURES: usize = 1024;

impl Gossip {
    pub async fn bind(
        port: u16,
        keys: Arc<Keys>,
        me: String,
        timeout: Duration,
    ) -> Result<Arc<Self>> {
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
        // A new incarnation per start: the peers hear a restarted speaker whatever its clock
        // says (membership refuses replays by incarnation and counter).
        let mut incarnation = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut incarnation)
            .map_err(|_| anyhow::anyhow!("no randomness for the gossip incarnation"))?;
        Ok(Arc::new(Self {
            socket,
            keys: RwLock::new(keys),
            me,
            port,
            dual_stack,
            incarnation: u64::from_be_bytes(incarnation),
            seq: Mutex::new(0),
            members: Mutex::new(Members::new(timeout)),
            departures: Mutex::new(Vec::new()),
        }))
    }

    /// Takes new keys (the gossip Secret changed): the next heartbeat is signed with them.
    pub fn set_keys(&self, keys: Arc<Keys>) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    fn keys(&self) -> Arc<Keys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The peers gone since the last call, with when each was last heard.
    pub fn take_departures(&self) -> Vec<(Departure, Instant)> {
        std::mem::take(&mut *self.departures.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn departed(&self, how: Departure, last_heard: Instant) {
        let mut departures = self.departures.lock().unwrap_or_else(|p| p.into_inner());
        if departures.len() < MAX_DEPARTURES {
            departures.push((how, last_heard));
        }
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
            incarnation: self.incarnation,
            seq: self.next_seq(),
            subnets,
        };
        let bytes = hb.encode(&self.keys());
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

    /// Heartbeats out, heartbeats in, expiry; `changed` is notified whenever the
    /// candidates or a member's subnets change, or a speaker with another key shows up.
    /// `standby`: heartbeat as on standby (settling, or isolated), not as a candidate.
    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        peers: watch::Receiver<Vec<IpAddr>>,
        subnets: watch::Receiver<Vec<IpNetwork>>,
        standby: watch::Receiver<bool>,
        changed: Arc<Notify>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut log = RejectionLog::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let peers = peers.borrow().clone();
                    let subnets = subnets.borrow().clone();
                    let kind = if *standby.borrow() { Kind::Standby } else { Kind::Alive };
                    self.send_all(kind, subnets, &peers).await;
                    // Whatever arrived while this thread was not running counts first.
                    while let Ok((n, from)) = self.socket.try_recv_from(&mut buf) {
                        self.handle(&buf[..n], from, &changed, &mut log);
                    }
                    let (dead, rejecting) = self
                        .members
                        .lock()
                        .map(|mut m| {
                            let before = m.rejecting().count();
                            let dead = m.expire(Instant::now());
                            (dead, before != m.rejecting().count())
                        })
                        .unwrap_or_default();
                    if !dead.is_empty() {
                        for (_, last_heard) in &dead {
                            self.departed(Departure::Died, *last_heard);
                        }
                        let names: Vec<&String> = dead.iter().map(|(n, _)| n).collect();
                        tracing::info!(dead = %crate::logs::bounded_list(&names), "speakers stopped answering");
                    }
                    if !dead.is_empty() || rejecting {
                        changed.notify_one();
                    }
                }
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((n, from)) => self.handle(&buf[..n], from, &changed, &mut log),
                    Err(e) => {
                        tracing::warn!("receiving gossip: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    fn handle(&self, datagram: &[u8], from: SocketAddr, changed: &Notify, log: &mut RejectionLog) {
        match Heartbeat::decode(datagram, &self.keys()) {
            Ok(hb) if hb.node != self.me => {
                let (node, kind) = (hb.node.clone(), hb.kind);
                let moved = self
                    .members
                    .lock()
                    .map(|mut m| m.receive(hb, Instant::now()))
                    .unwrap_or(false);
                if moved {
                    if kind == Kind::Leaving {
                        self.departed(Departure::Left, Instant::now());
                    }
                    tracing::info!(%node, ?kind, "membership changed");
                    changed.notify_one();
                }
            }
            Ok(_) => {}
            Err(e @ DecodeError::BadTag) => {
                let ip = from.ip().to_canonical();
                let new = self
                    .members
                    .lock()
                    .map(|mut m| {
                        let new = !m.rejecting().any(|r| r == ip);
                        m.rejected(ip, Instant::now());
                        new
                    })
                    .unwrap_or(false);
                if new {
                    changed.notify_one();
                }
                // A misconfigured speaker is worth a warning, but not 10 a second.
                if log.due() {
                    tracing::warn!(%from, "rejected a heartbeat: {e}");
                }
            }
            Err(e) => tracing::debug!(%from, "ignoring datagram: {e}"),
        }
    }

    /// Tells every peer this speaker is going, so its IPs move without waiting for expiry.
    pub async fn leave(&self, peers: &[IpAddr]) {
        self.send_all(Kind::Leaving, Vec::new(), peers).await;
    }
}

/// At most one rejection warning a minute.
#[derive(Default)]
struct RejectionLog(Option<Instant>);

impl RejectionLog {
    fn due(&mut self) -> bool {
        let due = self.0.is_none_or(|t| t.elapsed() > Duration::from_secs(60));
        if due {
            self.0 = Some(Instant::now());
        }
        due
    }
}
