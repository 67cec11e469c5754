//! One peer over TCP: connects out, frames messages, runs the session's timers and carries
//! out what `session::step` decides; sends the whole table when the session comes up, then
//! End-of-RIB, then only changes (`rib::updates`), as soon as the routes change. Thin: the
//! decisions are `session`'s and `rib`'s.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::bfd;
use crate::bfd_link::{self, Health};
use crate::rib::{self, RibOut};
use crate::session::{self, Action, Event, Negotiated, State, Timer};
use crate::tcp_md5::{self, Password};
use crate::wire::{self, Message, Notification, Update, error};

/// Where and how to reach the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub address: SocketAddr,
    /// Bind to this address before connecting (`None`: the kernel's choice).
    pub source: Option<SocketAddr>,
    /// Passive: never connect out; wait for the peer to connect to this address (port 179
    /// on the node), and take only connections from `address`'s IP.
    pub listen: Option<SocketAddr>,
    pub session: session::Config,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// The TTL (hop limit) the session's packets leave with: 1 for a directly connected
    /// eBGP router, 255 over several hops; `None`: the kernel's default (iBGP).
    pub ttl: Option<u8>,
    /// TCP-MD5 password the router expects (RFC 2385).
    pub password: Option<Password>,
    /// Run BFD with the peer while the session is Established, and end the session when
    /// BFD finds the path down.
    pub bfd: Option<bfd::Config>,
}

/// What the session looks like now, for statuses and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Connecting,
    Established {
        negotiated: Negotiated,
        /// Prefixes the peer was told, per family.
        advertised: (usize, usize),
        /// The BFD session's health (`None`: BFD is not configured).
        bfd: Option<Health>,
    },
    Down(session::Down),
}

/// What the peer should be told, and when the change that made it so was first seen
/// (`None`: nothing to time, such as the first table or a change made on purpose later).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: RibOut,
    pub changed_at: Option<std::time::Instant>,
}

impl From<RibOut> for Desired {
    fn from(routes: RibOut) -> Self {
        Self {
            routes,
            changed_at: None,
        }
    }
}

/// Whether the session should end, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Run,
    /// Withdraw everything: `Cease` (administrative shutdown), then close. The peer drops
    /// this speaker's routes at once.
    Cease,
    /// This speaker restarts and the peer keeps its routes (graceful restart, RFC 4724):
    /// close the connection without a NOTIFICATION, which a peer that negotiated graceful
    /// restart takes as a restart; otherwise the same as `Cease`.
    Restart,
}

/// Runs the session until `stop` says otherwise, then closes it as it says. `routes`:
/// what the peer should be told (next hops included), followed as it changes. `delivered`
/// is told, for each change with a `changed_at` sent to an Established peer, how long it
/// took from then until its last UPDATE was written to the connection.
pub async fn run(
    peer: Peer,
    mut routes: watch::Receiver<Desired>,
    status: watch::Sender<Status>,
    mut stop: watch::Receiver<Stop>,
    mut delivered: impl FnMut(Duration),
) {
    let mut state = State::Idle;
    let mut timers = Timers::default();
    let mut conn: Option<TcpStream> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(wire::MAX_MESSAGE);
    let mut told = RibOut::default();
    let mut pending = VecDeque::from([Event::Start]);
    // The BFD session beside the Established session: it ends when dropped.
    let mut path: Option<Path> = None;
    // Passive: the socket the peer connects to, kept for the session's life so that a
    // peer connecting between attempts waits in its backlog instead of being refused.
    let mut listener: Option<TcpListener> = None;
    // Why the last attempt could not even start (the address to listen on is taken), said
    // instead of a plain connection failure.
    let mut cannot_listen: Option<String> = None;
    loop {
        while let Some(event) = pending.pop_front() {
            let (next, actions) = session::step(&peer.session, state, event);
            state = next;
            for action in actions {
                match action {
                    Action::Connect => {
                        let _ = status.send(Status::Connecting);
                        // A stop ends a connection attempt at once.
                        let attempt = tokio::select! {
                            c = open(&peer, &mut listener) => c,
                            _ = stop.wait_for(|s| *s != Stop::Run) => {
                                Err(Opening::Io(std::io::ErrorKind::Interrupted.into()))
                            }
                        };
                        match attempt {
                            Ok(c) => {
                                conn = Some(c);
                                buf.clear();
                                pending.push_back(Event::TcpConnected);
                            }
                            Err(Opening::Listen(e)) => {
                                cannot_listen = Some(e);
                                pending.push_back(Event::TcpClosed);
                            }
                            Err(Opening::Io(e)) => {
                                tracing::debug!(peer = %peer.address, "connecting: {e}");
                                pending.push_back(Event::TcpClosed);
                            }
                        }
                    }
                    Action::Disconnect => {
                        conn = None;
                        path = None;
                    }
                    Action::Send(message) => {
                        if !send(&mut conn, &message).await {
                            pending.push_back(Event::TcpClosed);
                        }
                    }
                    Action::Arm(timer, after) => timers.arm(timer, after),
                    Action::Disarm(timer) => timers.disarm(timer),
                    Action::Up(negotiated) => {
                        told = RibOut::default();
                        let desired = routes.borrow_and_update().routes.clone();
                        let mut updates = rib::updates(&negotiated.families, &told, &desired);
                        // End-of-RIB per family once the whole table is out (RFC 4724):
                        // a peer holding stale routes from before a restart drops the
                        // ones not sent again.
                        updates.extend(negotiated.families.iter().map(|f| Update::end_of_rib(*f)));
                        if send_all(&mut conn, updates).await {
                            told = desired;
                            path = start_bfd(&peer, &conn);
                            let _ = status.send(Status::Established {
                                advertised: count(&told, &negotiated.families),
                                negotiated,
                                bfd: path.as_ref().map(Path::health),
                            });
                        } else {
                            pending.push_back(Event::TcpClosed);
                        }
                    }
                    Action::Down(why) => {
                        let why = match (why, cannot_listen.take()) {
                            (session::Down::Connection, Some(e)) => session::Down::CannotListen(e),
                            (why, _) => why,
                        };
                        // Once per cause: a router that stays unreachable is not logged at
                        // every attempt.
                        let down = Status::Down(why);
                        if *status.borrow() != down {
                            tracing::info!(peer = %peer.address, status = ?down, "BGP session down");
                        }
                        let _ = status.send(down);
                    }
                    Action::Resend(family) => {
                        if !send_all(
                            &mut conn,
                            rib::updates(&[family], &RibOut::default(), &told),
                        )
                        .await
                        {
                            pending.push_back(Event::TcpClosed);
                        }
                    }
                    Action::Ignored => {}
                }
            }
        }
        let established = matches!(state, State::Established(_));
        let woke = tokio::select! {
            timer = timers.next() => Woke::Timer(timer),
            read = read_message(&mut conn, &mut buf) => Woke::Read(read),
            changed = routes.changed(), if established => Woke::Routes(changed.is_ok()),
            health = changed_health(&mut path), if path.is_some() => Woke::Bfd(health),
            how = stop.wait_for(|s| *s != Stop::Run) => Woke::Stop(how.map_or(Stop::Cease, |h| *h)),
        };
        match woke {
            Woke::Timer(timer) => pending.push_back(Event::Expired(timer)),
            // Herald requires 4-octet AS numbers of every peer (`session::negotiate`).
            Woke::Read(Ok(bytes)) => pending.push_back(match wire::decode(&bytes, true) {
                Ok(message) => Event::Received(message),
                Err(why) => Event::Malformed(why),
            }),
            Woke::Read(Err(Some(why))) => pending.push_back(Event::Malformed(why)),
            Woke::Read(Err(None)) => pending.push_back(Event::TcpClosed),
            Woke::Routes(false) => return,
            Woke::Routes(true) => {
                let State::Established(negotiated) = &state else {
                    continue;
                };
                let Desired {
                    routes: desired,
                    changed_at,
                } = routes.borrow_and_update().clone();
                let updates = rib::updates(&negotiated.families, &told, &desired);
                let sending = !updates.is_empty();
                if send_all(&mut conn, updates).await {
                    if let Some(at) = changed_at.filter(|_| sending) {
                        delivered(at.elapsed());
                    }
                    told = desired;
                    let _ = status.send(Status::Established {
                        advertised: count(&told, &negotiated.families),
                        negotiated: negotiated.clone(),
                        bfd: path.as_ref().map(Path::health),
                    });
                } else {
                    pending.push_back(Event::TcpClosed);
                }
            }
            Woke::Bfd(health) => {
                if let Health::Down(why) = &health {
                    tracing::info!(peer = %peer.address, "BFD found the path down ({why}): ending the session");
                    pending.push_back(Event::PathDown);
                } else if let State::Established(negotiated) = &state {
                    let _ = status.send(Status::Established {
                        advertised: count(&told, &negotiated.families),
                        negotiated: negotiated.clone(),
                        bfd: Some(health),
                    });
                }
            }
            Woke::Stop(how) => {
                // Both offered graceful restart: the peer keeps the routes as stale.
                let kept = peer.session.graceful_restart.is_some()
                    && matches!(&state, State::Established(n) if n.peer_keeps_routes.is_some());
                if how == Stop::Restart && kept {
                    tracing::info!(peer = %peer.address, "restarting: the peer keeps the routes until this node is back");
                    if let Some(mut c) = conn.take() {
                        let _ = c.shutdown().await;
                    }
                    return;
                }
                let why =
                    Notification::new(error::CEASE, error::CEASE_ADMINISTRATIVE_SHUTDOWN, &[]);
                let (_, actions) = session::step(&peer.session, state, Event::Stop(why));
                for action in actions {
                    if let Action::Send(message) = action {
                        send(&mut conn, &message).await;
                    }
                }
                if let Some(mut c) = conn.take() {
                    let _ = c.shutdown().await;
                }
                return;
            }
        }
    }
}

/// What woke the session's loop.
enum Woke {
    Timer(Timer),
    Read(Result<Vec<u8>, Option<Notification>>),
    /// The routes changed (`false`: their sender is gone).
    Routes(bool),
    /// The BFD session's health changed.
    Bfd(Health),
    Stop(Stop),
}

/// A BFD session running for the Established session.
struct Path {
    health: watch::Receiver<Health>,
    task: tokio::task::JoinHandle<()>,
}

impl Path {
    fn health(&self) -> Health {
        self.health.borrow().clone()
    }
}

impl Drop for Path {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// BFD between the connection's two addresses, if the peer asks for it.
fn start_bfd(peer: &Peer, conn: &Option<TcpStream>) -> Option<Path> {
    let config = peer.bfd?;
    let local = conn.as_ref()?.local_addr().ok()?.ip();
    let (tx, health) = watch::channel(Health::Waiting);
    let task = tokio::spawn(bfd_link::run(config, local, peer.address.ip(), tx));
    Some(Path { health, task })
}

/// The next health of the path (never returns when there is none, or its task ended).
async fn changed_health(path: &mut Option<Path>) -> Health {
    if let Some(p) = path
        && p.health.changed().await.is_ok()
    {
        return p.health.borrow_and_update().clone();
    }
    std::future::pending().await
}

/// Sends UPDATEs in order; false when one could not be sent.
async fn send_all(conn: &mut Option<TcpStream>, updates: Vec<Update>) -> bool {
    for update in updates {
        if !send(conn, &Message::Update(update)).await {
            return false;
        }
    }
    true
}

/// Prefixes the peer holds, per family: of the families the session carries.
fn count(told: &RibOut, families: &[wire::Family]) -> (usize, usize) {
    told.announced()
        .filter(|n| families.contains(&wire::Family::of(n)))
        .fold((0, 0), |(v4, v6), n| {
            if n.is_ipv4() {
                (v4 + 1, v6)
            } else {
                (v4, v6 + 1)
            }
        })
}

/// Why a connection could not be had.
enum Opening {
    /// The address to listen on could not be taken (passive).
    Listen(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for Opening {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// A connection with the peer: made (active) or taken from the peer (passive).
async fn open(peer: &Peer, listener: &mut Option<TcpListener>) -> Result<TcpStream, Opening> {
    let Some(at) = peer.listen else {
        return Ok(connect(peer).await?);
    };
    let listening = match listener {
        Some(l) => l,
        None => listener.insert(listen(peer, at).map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    ": a port below 1024 needs the NET_BIND_SERVICE capability"
                }
                std::io::ErrorKind::AddrInUse => ": another process listens there",
                _ => "",
            };
            Opening::Listen(format!("cannot listen on {at}: {e}{hint}"))
        })?),
    };
    loop {
        let (conn, from) = listening.accept().await?;
        if from.ip() != peer.address.ip() {
            // Not the router: closed at once (dropped).
            tracing::debug!(peer = %peer.address, %from, "refused a connection from another address");
            continue;
        }
        set_ttl(&conn, peer)?;
        conn.set_nodelay(true)?;
        return Ok(conn);
    }
}

/// The passive session's socket: only the peer's segments signed with its password (when
/// it has one) get through.
fn listen(peer: &Peer, at: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if at.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if let Some(password) = &peer.password {
        tcp_md5::set(&socket, peer.address.ip(), password)?;
    }
    socket.bind(at)?;
    socket.listen(8)
}

/// The TTL the session's packets leave with, when it is not the kernel's default.
fn set_ttl(socket: &impl std::os::fd::AsFd, peer: &Peer) -> std::io::Result<()> {
    let Some(ttl) = peer.ttl else {
        return Ok(());
    };
    let ttl = i32::from(ttl);
    match peer.address {
        SocketAddr::V4(_) => setsockopt(socket, sockopt::Ipv4Ttl, &ttl),
        SocketAddr::V6(_) => setsockopt(socket, sockopt::Ipv6Ttl, &ttl),
    }
    .map_err(std::io::Error::from)
}

async fn connect(peer: &Peer) -> std::io::Result<TcpStream> {
    let socket = if peer.address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = peer.source {
        socket.bind(source)?;
    }
    if let Some(password) = &peer.password {
        tcp_md5::set(&socket, peer.address.ip(), password)?;
    }
    set_ttl(&socket, peer)?;
    socket.set_nodelay(true)?;
    tokio::time::timeout(peer.connect_timeout, socket.connect(peer.address))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Sends one message; false when there is no connection or it failed.
async fn send(conn: &mut Option<TcpStream>, message: &Message) -> bool {
    let Some(c) = conn else { return false };
    c.write_all(&wire::encode(message)).await.is_ok()
}

/// The next whole message from the connection. `Err(None)`: closed (or none); `Err(Some)`:
/// a header Herald refuses, with the NOTIFICATION to answer. Never returns while there is
/// no connection.
async fn read_message(
    conn: &mut Option<TcpStream>,
    buf: &mut Vec<u8>,
) -> Result<Vec<u8>, Option<Notification>> {
    let Some(c) = conn else {
        return std::future::pending().await;
    };
    loop {
        if let Some(len) = wire::message_length(buf).map_err(Some)?
            && buf.len() >= len
        {
            let rest = buf.split_off(len);
            return Ok(std::mem::replace(buf, rest));
        }
        let mut chunk = [0u8; 4096];
        match c.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The session's timers: when each fires, if armed.
#[derive(Default)]
struct Timers {
    connect_retry: Option<Instant>,
    hold: Option<Instant>,
    keepalive: Option<Instant>,
}

impl Timers {
    fn slot(&mut self, timer: Timer) -> &mut Option<Instant> {
        match timer {
            Timer::ConnectRetry => &mut self.connect_retry,
            Timer::Hold => &mut self.hold,
            Timer::Keepalive => &mut self.keepalive,
        }
    }

    fn arm(&mut self, timer: Timer, after: Duration) {
        *self.slot(timer) = Some(Instant::now() + after);
    }

    fn disarm(&mut self, timer: Timer) {
        *self.slot(timer) = None;
    }

    /// Waits for the earliest armed timer and disarms it (forever when none is armed).
    async fn next(&mut self) -> Timer {
        let earliest = [
            (Timer::ConnectRetry, self.connect_retry),
            (Timer::Hold, self.hold),
            (Timer::Keepalive, self.keepalive),
        ]
        .into_iter()
        .filter_map(|(t, at)| Some((t, at?)))
        .min_by_key(|(_, at)| *at);
        let Some((timer, at)) = earliest else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(at).await;
        self.disarm(timer);
        timer
    }
}
