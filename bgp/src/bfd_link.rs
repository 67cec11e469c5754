//! BFD over UDP, single hop (RFC 5881): one receiving socket per local address on port
//! 3784, shared by this process's sessions from that address and told apart by the peer's
//! address; each session sends from its own port (49152-65535) with TTL 255, and only
//! packets that arrive with TTL 255 are read (from one hop away, nothing further). Thin:
//! the decisions are `bfd`'s.

use std::collections::BTreeMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::bfd::{self, Change, Config, Diag, Packet, Session};

/// What the BGP session sees of its BFD session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Not Up yet (the router may not run BFD with this node).
    Waiting,
    Up,
    /// Down after being Up, and why.
    Down(Diag),
    /// The sockets could not be opened (port 3784 taken by another daemon on the node...).
    Unavailable(String),
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::Waiting => f.write_str("Waiting"),
            Health::Up => f.write_str("Up"),
            Health::Down(why) => write!(f, "Down ({why})"),
            Health::Unavailable(why) => write!(f, "Unavailable ({why})"),
        }
    }
}

/// Packets queued per session before more are dropped (a flood from the LAN).
const QUEUE: usize = 16;
/// Sending ports (RFC 5881 §4).
const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

type Sessions = Arc<Mutex<BTreeMap<IpAddr, mpsc::Sender<Packet>>>>;

/// One receiving socket and the sessions it serves.
struct Listener {
    sessions: Sessions,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The receiving sockets of this process, by local address, while a session uses them.
static LISTENERS: Mutex<BTreeMap<IpAddr, Weak<Listener>>> = Mutex::new(BTreeMap::new());

/// A session's place on its listener: its packets, until dropped.
struct Membership {
    listener: Arc<Listener>,
    peer: IpAddr,
    packets: mpsc::Receiver<Packet>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        lock(&self.listener.sessions).remove(&self.peer);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn join(local: IpAddr, peer: IpAddr) -> io::Result<Membership> {
    let listener = {
        let mut all = lock(&LISTENERS);
        match all.get(&local).and_then(Weak::upgrade) {
            Some(l) => l,
            None => {
                let l = Arc::new(listen(local)?);
                all.insert(local, Arc::downgrade(&l));
                l
            }
        }
    };
    let (tx, packets) = mpsc::channel(QUEUE);
    lock(&listener.sessions).insert(peer, tx);
    Ok(Membership {
        listener,
        peer,
        packets,
    })
}

fn listen(local: IpAddr) -> io::Result<Listener> {
    let socket = std::net::UdpSocket::bind((local, bfd::PORT))
        .map_err(|e| io::Error::new(e.kind(), format!("port {} on {local}: {e}", bfd::PORT)))?;
    socket.set_nonblocking(true)?;
    let socket = UdpSocket::from_std(socket)?;
    match local {
        IpAddr::V4(_) => setsockopt(&socket, sockopt::Ipv4RecvTtl, &true),
        IpAddr::V6(_) => setsockopt(&socket, sockopt::Ipv6RecvHopLimit, &true),
    }
    .map_err(io::Error::from)?;
    let sessions = Sessions::default();
    let task = tokio::spawn(receive(socket, sessions.clone()));
    Ok(Listener { sessions, task })
}

/// Reads control packets and hands each to its session; drops those from further than one
/// hop, those the RFC says to drop, those no session waits for, and a flood's excess.
async fn receive(socket: UdpSocket, sessions: Sessions) {
    // Longer datagrams are cut: a control packet with authentication is under 100 bytes.
    let mut buf = [0u8; 128];
    loop {
        let got = socket
            .async_io(Interest::READABLE, || recv_with_ttl(&socket, &mut buf))
            .await;
        let (len, from, ttl) = match got {
            Ok(got) => got,
            Err(e) => {
                tracing::debug!("receiving BFD: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if ttl != Some(bfd::TTL) {
            continue;
        }
        let Ok(packet) = bfd::decode(buf.get(..len).unwrap_or_default()) else {
            continue;
        };
        let session = lock(&sessions).get(&from).cloned();
        if let Some(session) = session {
            let _ = session.try_send(packet);
        }
    }
}

/// One datagram: its length, its sender's address and the TTL (hop limit) it arrived with.
fn recv_with_ttl(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, IpAddr, Option<u8>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut control = nix::cmsg_space!(libc::c_int);
    let msg = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let ttl = msg.cmsgs().map_err(io::Error::from)?.find_map(|c| match c {
        ControlMessageOwned::Ipv4Ttl(t) | ControlMessageOwned::Ipv6HopLimit(t) => {
            u8::try_from(t).ok()
        }
        _ => None,
    });
    let from = msg.address.as_ref().and_then(|a| match a.family()? {
        nix::sys::socket::AddressFamily::Inet => a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())),
        nix::sys::socket::AddressFamily::Inet6 => a
            .as_sockaddr_in6()
            .map(|s| IpAddr::V6(s.ip()).to_canonical()),
        _ => None,
    });
    let from = from.ok_or_else(|| io::Error::other("a datagram without a sender"))?;
    Ok((msg.bytes, from, ttl))
}

/// The sending socket: a free port of RFC 5881's range on `local`, TTL 255, aimed at the
/// peer.
async fn sender(local: IpAddr, peer: IpAddr, seed: u32) -> io::Result<UdpSocket> {
    let span = u32::from(SOURCE_PORTS.end() - SOURCE_PORTS.start()) + 1;
    let mut last = None;
    for attempt in 0..64u32 {
        let offset = seed.wrapping_add(attempt.wrapping_mul(7919)) % span;
        let port = SOURCE_PORTS.start() + u16::try_from(offset).unwrap_or(0);
        match UdpSocket::bind(SocketAddr::new(local, port)).await {
            Ok(socket) => {
                match local {
                    IpAddr::V4(_) => socket.set_ttl(u32::from(bfd::TTL))?,
                    IpAddr::V6(_) => setsockopt(&socket, sockopt::Ipv6Ttl, &i32::from(bfd::TTL))
                        .map_err(io::Error::from)?,
                }
                socket.connect(SocketAddr::new(peer, bfd::PORT)).await?;
                return Ok(socket);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free source port")))
}

/// This process's discriminators: distinct per session, and unlikely to repeat one a router
/// remembers from before a restart.
fn discriminator() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| {
            d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(16)
        });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (clock ^ n.wrapping_mul(0x9e37_79b9) ^ std::process::id()).max(1)
}

/// A small generator for the transmit jitter (xorshift; nothing depends on its quality).
struct Jitter(u32);

impl Jitter {
    fn next(&mut self) -> f64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        f64::from(x) / f64::from(u32::MAX)
    }
}

/// Runs one BFD session from `local` to `peer` until the returned future is dropped,
/// telling `health` how it goes. Sockets that cannot be opened are said as `Unavailable`.
pub async fn run(config: Config, local: IpAddr, peer: IpAddr, health: watch::Sender<Health>) {
    let local = local.to_canonical();
    let peer = peer.to_canonical();
    let discriminator = discriminator();
    let opened = match join(local, peer) {
        Ok(membership) => sender(local, peer, discriminator)
            .await
            .map(|socket| (membership, socket)),
        Err(e) => Err(e),
    };
    let (mut membership, socket) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            tracing::warn!(%peer, "BFD cannot run: {e}");
            let _ = health.send(Health::Unavailable(e.to_string()));
            return;
        }
    };
    let mut session = Session::new(config, discriminator);
    let mut jitter = Jitter(discriminator);
    let mut next_send = Instant::now();
    let send = |p: &Packet| {
        // A lost packet is what BFD is built to survive; the next one follows.
        let _ = socket.try_send(&bfd::encode(p));
    };
    loop {
        let deadline = session.detection_deadline().map(Instant::from_std);
        let out = tokio::select! {
            packet = membership.packets.recv() => match packet {
                Some(p) => session.receive(&p, std::time::Instant::now()),
                None => return,
            },
            () = tokio::time::sleep_until(next_send) => {
                next_send = match session.transmit(jitter.next()) {
                    Some((p, after)) => {
                        send(&p);
                        Instant::now() + after
                    }
                    // Nothing to send for now: look again soon.
                    None => Instant::now() + Duration::from_millis(100),
                };
                continue;
            }
            () = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                session.expire(std::time::Instant::now())
            }
        };
        if let Some(p) = &out.send {
            send(p);
            // The rate may have changed with the state: the next packet follows it.
            if let Some((_, after)) = session.transmit(jitter.next()) {
                next_send = Instant::now() + after;
            }
        }
        match out.change {
            Some(Change::Up) => {
                tracing::info!(%peer, "BFD session Up");
                let _ = health.send(Health::Up);
            }
            // Down from Up: the path failed. From Init: it never worked, still waiting.
            Some(Change::Down(why)) if *health.borrow() == Health::Up => {
                tracing::info!(%peer, "BFD session Down: {why}");
                let _ = health.send(Health::Down(why));
            }
            Some(Change::Down(_)) => {}
            None => {}
        }
    }
}
