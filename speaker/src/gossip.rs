//! The UDP side of `membership`: sends this speaker's heartbeat to its segment each interval
//! and to every other node each `FAR_ROUND`, receives theirs, expires the silent, and says
//! "leaving" on shutdown. A node whose heartbeats arrive at the segment's pace gets ours at
//! that pace too (segments are symmetric, this makes them so while views differ), and a
//! speaker heard for the first time (a start) is answered at once, so it learns this one's
//! subnets without waiting for a round.
//!
//! Under CPU starvation this thread may run late; before it expires anyone it reads every
//! heartbeat already queued on the socket, so a peer is dead only if its heartbeats did not
//! arrive, not because this thread did not look.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use parking_lot::{Mutex, RwLock};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, watch};

use crate::lapse::Lapse;
use crate::membership::{DecodeError, Heartbeat, Keys, Kind, MAX_MESSAGE, Members};
use crate::metrics::Departure;
use crate::pass::Gossiped;

/// Where heartbeats go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peers {
    /// The segment (`plan::segment`): every interval.
    pub segment: Vec<IpAddr>,
    /// Every other node: every `FAR_ROUND`.
    pub all: Vec<IpAddr>,
}

/// How often every node hears from every other: enough to know each other's subnets (who is
/// in whose segment), at a cost per node of (nodes / 10) datagrams a second each way.
pub const FAR_ROUND: Duration = Duration::from_secs(10);

/// Silence after which a node heard only in rounds counts as dead: three rounds missed.
pub fn far_timeout(timeout: Duration) -> Duration {
    FAR_ROUND * 3 + timeout
}

pub struct Gossip {
    socket: UdpSocket,
    /// Replaced whole when the gossip Secret changes (a key rotation).
    keys: RwLock<Arc<Keys>>,
    me: String,
    port: u16,
    dual_stack: bool,
    incarnation: u64,
    seq: Mutex<u64>,
    members: Mutex<Members>,
    /// Peers gone since the last `take_departures`, and when they were last heard: the start
    /// of a takeover, for its histogram.
    departures: Mutex<Vec<(Departure, Instant)>>,
    /// Senders at the segment's pace: address and last heartbeat. Each gets ours at that
    /// pace while it keeps it.
    senders: Mutex<Senders>,
    timeout: Duration,
    /// How long a speaker heard anew counts as joining: a timeout and a heartbeat. Its
    /// peers and the speaker itself after a lapse use the same.
    settle: Duration,
    /// Set by `leave`: the heartbeat thread sends nothing more.
    leaving: std::sync::atomic::AtomicBool,
    /// Whether this speaker ran too late for its peers to hear it (`lapse`).
    lapse: Mutex<Lapse>,
}

/// Who heartbeats this node: every sender's last heartbeat, and those at the segment's pace.
#[derive(Default)]
struct Senders {
    last: HashMap<IpAddr, Instant>,
    fast: HashMap<IpAddr, Instant>,
}

/// How the run loop steers the heartbeat thread: each a watch the thread follows.
pub struct Steering {
    /// Where heartbeats go.
    pub peers: watch::Sender<Peers>,
    /// The subnets this node can announce on (its heartbeats say them).
    pub subnets: watch::Sender<Vec<IpNetwork>>,
    /// On standby: heard by the others, taking no IP.
    pub standby: watch::Sender<bool>,
}

/// Binds the gossip socket and runs the heartbeats on a thread of their own, with its own
/// runtime: a long decision pass (10,000 Services) must never delay them, or the other
/// speakers would count this one dead. `changed` is told when the members change.
pub async fn start(
    port: u16,
    keys: Arc<Keys>,
    me: String,
    timeout: Duration,
    heartbeat: Duration,
    changed: Arc<Notify>,
) -> Result<(Arc<Gossip>, Steering)> {
    let (peers, peers_rx) = watch::channel(Peers::default());
    let (subnets, subnets_rx) = watch::channel(Vec::new());
    let (standby, standby_rx) = watch::channel(false);
    let (started_tx, started) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("gossip".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = started_tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                match Gossip::bind(port, keys, me, timeout, heartbeat).await {
                    Ok(gossip) => {
                        let _ = started_tx.send(Ok(gossip.clone()));
                        gossip
                            .run(heartbeat, peers_rx, subnets_rx, standby_rx, changed)
                            .await;
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                    }
                }
            });
        })
        .context("starting the gossip thread")?;
    let gossip = started.await.context("the gossip thread ended")??;
    Ok((
        gossip,
        Steering {
            peers,
            subnets,
            standby,
        },
    ))
}

/// Departures kept between two decision passes at most (a mass failure is counted up to it).
const MAX_DEPARTURES: usize = 1024;

impl Gossip {
    pub async fn bind(
        port: u16,
        keys: Arc<Keys>,
        me: String,
        timeout: Duration,
        heartbeat: Duration,
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
            members: Mutex::new(Members::new(timeout).with_far_timeout(far_timeout(timeout))),
            departures: Mutex::new(Vec::new()),
            senders: Mutex::new(Senders::default()),
            timeout,
            settle: timeout + heartbeat,
            leaving: std::sync::atomic::AtomicBool::new(false),
            lapse: Mutex::new(Lapse::default()),
        }))
    }

    /// Takes new keys (the gossip Secret changed): the next heartbeat is signed with them.
    pub fn set_keys(&self, keys: Arc<Keys>) {
        *self.keys.write() = keys;
    }

    fn keys(&self) -> Arc<Keys> {
        self.keys.read().clone()
    }

    /// The peers gone since the last call, with when each was last heard.
    /// How long a speaker heard anew counts as joining (`settle`).
    pub fn settle(&self) -> Duration {
        self.settle
    }

    /// What the heartbeats say now, for a pass: `me` with `own_subnets` (what its heartbeats
    /// tell the others) among the candidates, and the peers heard for less than the settle
    /// time counted as joining; `me` too, while it holds back after its heartbeats lapsed.
    pub fn view(&self, me: &str, own_subnets: Vec<IpNetwork>) -> Gossiped {
        let settle = self.settle;
        let rejoining = self.lapse.lock().rejoining(Instant::now(), settle);
        let members = self.members.lock();
        Gossiped {
            node_subnets: members
                .candidates()
                .map(|n| (n.to_owned(), members.subnets(n).to_vec()))
                .chain([(me.to_owned(), own_subnets)])
                .collect(),
            remembered: members
                .remembered()
                .map(|(n, subnets)| (n.to_owned(), subnets.to_vec()))
                .collect(),
            joining: members
                .joining(settle, Instant::now())
                .chain(rejoining.then_some(me))
                .map(str::to_owned)
                .collect(),
            restarting: members
                .restarting(settle, Instant::now())
                .map(str::to_owned)
                .collect(),
            heard: members.heard().map(str::to_owned).collect(),
            rejecting: members.rejecting().collect(),
        }
    }

    pub fn take_departures(&self) -> Vec<(Departure, Instant)> {
        std::mem::take(&mut *self.departures.lock())
    }

    fn departed(&self, how: Departure, last_heard: Instant) {
        let mut departures = self.departures.lock();
        if departures.len() < MAX_DEPARTURES {
            departures.push((how, last_heard));
        }
    }

    fn next_seq(&self) -> u64 {
        let mut seq = self.seq.lock();
        *seq += 1;
        *seq
    }

    /// Addresses sending at the segment's pace now (their last two heartbeats, and the last
    /// one, within a timeout).
    fn reciprocal(&self, now: Instant) -> Vec<IpAddr> {
        let mut senders = self.senders.lock();
        let timeout = self.timeout;
        senders
            .fast
            .retain(|_, last| now.saturating_duration_since(*last) <= timeout);
        senders.fast.keys().copied().collect()
    }

    fn heard_from(&self, ip: IpAddr, now: Instant) {
        let mut senders = self.senders.lock();
        if let Some(last) = senders.last.insert(ip, now)
            && now.saturating_duration_since(last) <= self.timeout
        {
            senders.fast.insert(ip, now);
        }
    }

    /// Forgets senders silent for a far timeout (once a round: the map holds every node).
    fn forget_senders(&self, now: Instant) {
        let forget = far_timeout(self.timeout);
        let mut senders = self.senders.lock();
        senders
            .last
            .retain(|_, last| now.saturating_duration_since(*last) <= forget);
    }

    async fn send_all(&self, kind: Kind, subnets: Vec<IpNetwork>, peers: &[IpAddr]) {
        if kind != Kind::Leaving && self.leaving.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
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
        mut peers: watch::Receiver<Peers>,
        subnets: watch::Receiver<Vec<IpNetwork>>,
        standby: watch::Receiver<bool>,
        changed: Arc<Notify>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut log = RejectionLog::default();
        // Rounds to every node; a node not greeted yet (this speaker just started, or the
        // node is new) is greeted at the next tick, so it knows this one at once.
        let mut next_round = Instant::now() + FAR_ROUND;
        let mut all: BTreeSet<IpAddr> = BTreeSet::new();
        let mut segment: Vec<IpAddr> = Vec::new();
        let mut fresh: Vec<IpAddr> = Vec::new();
        // As long as it holds back after a lapse, this speaker is on standby for its peers:
        // they keep its IPs (`lapse`).
        let kind = |standby: &watch::Receiver<bool>| {
            if *standby.borrow() || self.lapse.lock().rejoining(Instant::now(), self.settle) {
                Kind::Standby
            } else {
                Kind::Alive
            }
        };
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = Instant::now();
                    // The peer sets change rarely: they are copied only then (5,000 nodes).
                    if peers.has_changed().unwrap_or(false) {
                        let p = peers.borrow_and_update();
                        let now_all: BTreeSet<IpAddr> = p.all.iter().copied().collect();
                        fresh.extend(now_all.difference(&all));
                        all = now_all;
                        segment.clone_from(&p.segment);
                    }
                    let mut targets: BTreeSet<IpAddr> = if now >= next_round {
                        next_round = now + FAR_ROUND;
                        self.forget_senders(now);
                        fresh.clear();
                        all.clone()
                    } else {
                        fresh.drain(..).collect()
                    };
                    targets.extend(segment.iter().copied());
                    targets.extend(self.reciprocal(now));
                    let targets: Vec<IpAddr> = targets.into_iter().collect();
                    self.send_all(kind(&standby), subnets.borrow().clone(), &targets).await;
                    let lapsed = {
                        let mut lapse = self.lapse.lock();
                        let gap = lapse.sent(now, self.timeout);
                        gap.map(|gap| (gap, lapse.hold(self.settle)))
                    };
                    if let Some((gap, hold)) = lapsed {
                        tracing::warn!(
                            silent_ms = gap.as_millis() as u64,
                            hold_ms = hold.as_millis() as u64,
                            "this speaker was not scheduled for longer than the failure timeout (CPU starvation, a paused machine): its peers took its IPs over, and it leaves them there until it has run on time for the hold"
                        );
                        changed.notify_one();
                    }
                    // Whatever arrived while this thread was not running counts first.
                    while let Ok((n, from)) = self.socket.try_recv_from(&mut buf) {
                        if let Some(new) = self.handle(&buf[..n], from, &changed, &mut log) {
                            self.send_all(kind(&standby), subnets.borrow().clone(), &[new]).await;
                        }
                    }
                    let (dead, rejecting) = {
                        let mut m = self.members.lock();
                        if lapsed.is_some() {
                            m.excuse(Instant::now());
                        }
                        let before = m.rejecting().count();
                        let dead = m.expire(Instant::now());
                        (dead, before != m.rejecting().count())
                    };
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
                    Ok((n, from)) => {
                        if let Some(new) = self.handle(&buf[..n], from, &changed, &mut log) {
                            self.send_all(kind(&standby), subnets.borrow().clone(), &[new]).await;
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

    /// Applies one datagram; returns the address of a speaker heard for the first time
    /// (started), to be answered at once.
    fn handle(
        &self,
        datagram: &[u8],
        from: SocketAddr,
        changed: &Notify,
        log: &mut RejectionLog,
    ) -> Option<IpAddr> {
        match Heartbeat::decode(datagram, &self.keys()) {
            Ok(hb) if hb.node != self.me => {
                let (node, kind) = (hb.node.clone(), hb.kind);
                let now = Instant::now();
                let ip = from.ip().to_canonical();
                if kind != Kind::Leaving {
                    self.heard_from(ip, now);
                }
                let (moved, new) = {
                    let mut m = self.members.lock();
                    let new = kind != Kind::Leaving && m.is_new(&hb.node, hb.incarnation);
                    (m.receive(hb, now), new)
                };
                if moved {
                    if kind == Kind::Leaving {
                        self.departed(Departure::Left, Instant::now());
                    }
                    tracing::info!(%node, ?kind, "membership changed");
                    changed.notify_one();
                }
                new.then_some(ip)
            }
            Ok(_) => None,
            Err(e @ DecodeError::BadTag) => {
                let ip = from.ip().to_canonical();
                let (new, answer) = {
                    let mut m = self.members.lock();
                    let new = !m.rejecting().any(|r| r == ip);
                    (new, m.rejected(ip, Instant::now()))
                };
                if new {
                    changed.notify_one();
                }
                // A misconfigured speaker is worth a warning, but not 10 a second.
                if log.due() {
                    tracing::warn!(%from, "rejected a heartbeat: {e}");
                }
                // Answered (at most once a timeout): it rejects the answer in turn, and so
                // has proof that speakers run that it cannot hear, before it claims anything.
                answer.then_some(ip)
            }
            Err(e) => {
                tracing::debug!(%from, "ignoring datagram: {e}");
                None
            }
        }
    }

    /// Tells every peer this speaker is going, so its IPs move without waiting for expiry;
    /// no heartbeat goes out after it.
    pub async fn leave(&self, peers: &[IpAddr]) {
        self.leaving
            .store(true, std::sync::atomic::Ordering::Relaxed);
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
