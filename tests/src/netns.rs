//! A LAN in network namespaces: a bridge namespace, node namespaces and a client namespace,
//! each with one veth `eth0` on the bridge. Only documentation addresses are used and
//! nothing is routed out of the namespaces. Everything is removed on drop.
//!
//! Threads enter a namespace with `setns` (a network namespace is per thread), so the test
//! process can send raw frames from the client, run TCP responders on the nodes, and forward
//! the API server's loopback port into each node namespace (the API server stays on the
//! root namespace's loopback).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One namespace on the LAN.
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub mac: [u8; 6],
}

pub struct Lan {
    prefix: String,
    pub nodes: Vec<Host>,
    pub client: Host,
    /// Hosts added after creation (`add_host`), removed with the rest.
    others: Vec<Host>,
    stop: Arc<AtomicBool>,
}

impl Lan {
    /// `nodes` node namespaces (192.0.2.11.., 2001:db8::11..) and a client (192.0.2.200).
    pub fn create(nodes: usize) -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("h{}{n}", std::process::id() % 100_000);
        let bridge = format!("{prefix}-br");
        ip(&["netns", "add", &bridge])?;
        let mut lan = Lan {
            prefix: prefix.clone(),
            nodes: Vec::new(),
            client: Host {
                ns: String::new(),
                v4: Ipv4Addr::UNSPECIFIED,
                v6: Ipv6Addr::UNSPECIFIED,
                mac: [0; 6],
            },
            others: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        for i in 0..nodes {
            let host = lan.create_host(&format!("n{}", i + 1), 11 + i as u8)?;
            lan.nodes.push(host);
        }
        lan.client = lan.create_host("client", 200)?;
        Ok(lan)
    }

    /// Another host `name` on the LAN (192.0.2.`last`, 2001:db8::`last`), a control-plane
    /// host say; removed with the LAN.
    pub fn add_host(&mut self, name: &str, last: u8) -> Result<Host> {
        let host = self.create_host(name, last)?;
        self.others.push(host.clone());
        Ok(host)
    }

    /// The prefix of every namespace name of this LAN.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn create_host(&self, name: &str, last: u8) -> Result<Host> {
        let ns = format!("{}-{name}", self.prefix);
        let bridge = format!("{}-br", self.prefix);
        ip(&["netns", "add", &ns])?;
        let mac = [0x02, 0x42, 0, 0, 0, last];
        let mac_s = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let port = format!("p-{name}");
        ip(&[
            "-n", &ns, "link", "add", "eth0", "address", &mac_s, "type", "veth", "peer", "name",
            &port, "netns", &bridge,
        ])?;
        ip(&["-n", &bridge, "link", "set", &port, "master", "br0", "up"])?;
        let v4 = Ipv4Addr::new(192, 0, 2, last);
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(last));
        // Like kube-proxy's strict ARP: the kernel must not answer for Service IPs on lo.
        for (key, value) in [
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.eth0.accept_dad", "0"),
        ] {
            sysctl(&ns, key, value)?;
        }
        ip(&["-n", &ns, "addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(Host { ns, v4, v6, mac })
    }

    /// Makes `127.0.0.1:port` in every node namespace reach `127.0.0.1:port` of the root
    /// namespace (the API server), so the same kubeconfig works inside.
    pub fn forward_api(&self, port: u16) -> Result<()> {
        for node in &self.nodes {
            self.forward_api_into(&node.ns, port)?;
        }
        Ok(())
    }

    /// The same for one namespace.
    pub fn forward_api_into(&self, ns: &str, port: u16) -> Result<()> {
        {
            let listener = in_ns(ns, move || TcpListener::bind(("127.0.0.1", port)))??;
            let stop = self.stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(inside) = conn else { continue };
                    let Ok(outside) = TcpStream::connect(("127.0.0.1", port)) else {
                        continue;
                    };
                    pipe(inside, outside);
                }
            });
        }
        Ok(())
    }

    /// A TCP server on `port` in each node namespace that answers with the node's name.
    pub fn responders(&self, port: u16) -> Result<()> {
        for (i, node) in self.nodes.iter().enumerate() {
            let listener = in_ns(&node.ns, move || TcpListener::bind(("::", port)))??;
            let name = format!("n{}", i + 1);
            std::thread::spawn(move || {
                for mut conn in listener.incoming().flatten() {
                    let _ = conn.write_all(name.as_bytes());
                }
            });
        }
        Ok(())
    }

    /// The node (1-based index in names `n1`..) owning a MAC.
    pub fn node_of_mac(&self, mac: [u8; 6]) -> Option<String> {
        self.nodes
            .iter()
            .position(|n| n.mac == mac)
            .map(|i| format!("n{}", i + 1))
    }

    pub fn node(&self, name: &str) -> &Host {
        let i: usize = name.trim_start_matches('n').parse().unwrap_or(1);
        &self.nodes[i - 1]
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<String> = self
            .nodes
            .iter()
            .chain(&self.others)
            .map(|n| n.ns.clone())
            .collect();
        all.push(self.client.ns.clone());
        all.push(format!("{}-br", self.prefix));
        for ns in all {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    };
    copy(a, b2);
    copy(b, a2);
}

/// Runs `f` on a thread inside the network namespace `ns`.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    spawn_in_ns(ns, f)?
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
}

/// Runs `f` on a thread of its own inside the network namespace `ns`, and returns at once:
/// for servers and clients that live as long as a test.
pub fn spawn_in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    Ok(std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow::anyhow!(
                "setns: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(f())
    }))
}

/// A command run inside `ns` (for `Process::spawn`).
pub fn command_in(ns: &str, program: &std::path::Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// A command run in `ns`'s network namespace only. `ip netns exec` also remounts /sys, which
/// hides the cgroup mounts from runc and the kubelet; real-cluster daemons start this way.
pub fn command_in_net(ns: &str, program: &std::path::Path) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/var/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    cmd
}

/// Sets the per-namespace sysctl `key` to `value` in `ns`.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let out = command_in_net(ns, std::path::Path::new("sysctl"))
        .args(["-qw", &format!("{key}={value}")])
        .output()
        .context("running sysctl")?;
    if !out.status.success() {
        bail!(
            "sysctl {key}={value} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A loopback port of the test process's namespace that leads to `target` inside `ns` (the API
/// server of a control plane in a namespace, for the test's clients and kubectl). Stops
/// accepting on drop.
pub struct Forward {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Forward {
    pub fn into_namespace(ns: &str, target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, stopped) = (ns.to_owned(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(outside) = conn else { continue };
                let inside = in_ns(&ns, move || {
                    TcpStream::connect_timeout(&target, Duration::from_secs(5))
                });
                if let Ok(Ok(inside)) = inside {
                    pipe(outside, inside);
                }
            }
        });
        Ok(Self { port, stop })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accepting thread so it sees the flag.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
    }
}

/// Asks for `target` from the client (ARP for IPv4, a multicast Neighbor Solicitation for
/// IPv6) and returns the MAC of every answer received within `wait`.
pub fn resolve(client: &Host, target: IpAddr, wait: Duration) -> Result<Vec<[u8; 6]>> {
    let client = client.clone();
    in_ns(&client.ns.clone(), move || query(&client, target, wait))?
}

fn query(client: &Host, target: IpAddr, wait: Duration) -> Result<Vec<[u8; 6]>> {
    let fd = raw_socket()?;
    let frame = match target {
        IpAddr::V4(t) => arp_request(client, t),
        IpAddr::V6(t) => neighbor_solicit(client, t),
    };
    send_frame(&fd, &frame)?;
    let deadline = Instant::now() + wait;
    let mut answers = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let Some(f) = try_recv_frame(&fd, &mut buf) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        if let Some(mac) = answer_mac(f, target) {
            answers.push(mac);
        }
    }
    Ok(answers)
}

/// Request-to-answer times of `count` ARP requests for `target` from the client, one at a
/// time on one socket (requests without an answer within 500 ms are left out).
pub fn arp_times(client: &Host, target: IpAddr, count: usize) -> Result<Vec<Duration>> {
    let client = client.clone();
    in_ns(&client.ns.clone(), move || -> Result<Vec<Duration>> {
        let fd = raw_socket()?;
        let IpAddr::V4(t) = target else {
            bail!("ARP needs an IPv4 target");
        };
        let frame = arp_request(&client, t);
        let mut out = Vec::with_capacity(count);
        let mut buf = [0u8; 2048];
        for _ in 0..count {
            let start = Instant::now();
            send_frame(&fd, &frame)?;
            while start.elapsed() < Duration::from_millis(500) {
                match try_recv_frame(&fd, &mut buf) {
                    Some(f) if answer_mac(f, target).is_some() => {
                        out.push(start.elapsed());
                        break;
                    }
                    Some(_) => {}
                    None => std::thread::yield_now(),
                }
            }
        }
        Ok(out)
    })?
}

fn send_frame(fd: &std::os::fd::OwnedFd, frame: &[u8]) -> Result<()> {
    // SAFETY: `frame` is valid for its length; `fd` is a bound packet socket.
    if unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) } < 0 {
        bail!("send: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// One frame if one is queued, without waiting.
fn try_recv_frame<'a>(fd: &std::os::fd::OwnedFd, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    // SAFETY: `buf` is valid for its length.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    (n > 0).then(|| &buf[..n as usize])
}

fn raw_socket() -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket syscalls; the fd is owned right away.
    unsafe {
        let raw = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        );
        if raw < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let fd = std::os::fd::OwnedFd::from_raw_fd(raw);
        let index = libc::if_nametoindex(c"eth0".as_ptr());
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = index as i32;
        if libc::bind(
            raw,
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            bail!("bind: {}", std::io::Error::last_os_error());
        }
        Ok(fd)
    }
}

fn arp_request(client: &Host, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&client.mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&client.mac);
    f.extend_from_slice(&client.v4.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

fn neighbor_solicit(client: &Host, target: Ipv6Addr) -> Vec<u8> {
    let t = target.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    let g = group.octets();
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&t);
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&client.mac);
    let sum = icmpv6_checksum(&client.v6, &group, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = vec![0x33, 0x33, g[12], g[13], g[14], g[15]];
    f.extend_from_slice(&client.mac);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&client.v6.octets());
    f.extend_from_slice(&g);
    f.extend_from_slice(&icmp);
    f
}

fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, body: &[u8]) -> u16 {
    let mut data = Vec::new();
    data.extend_from_slice(&src.octets());
    data.extend_from_slice(&dst.octets());
    data.extend_from_slice(&(body.len() as u32).to_be_bytes());
    data.extend_from_slice(&[0, 0, 0, 58]);
    data.extend_from_slice(body);
    if data.len() % 2 == 1 {
        data.push(0);
    }
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The answering MAC if `f` is an ARP reply / Neighbor Advertisement for `target`.
fn answer_mac(f: &[u8], target: IpAddr) -> Option<[u8; 6]> {
    let ethertype = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    match target {
        IpAddr::V4(t) if ethertype == 0x0806 => {
            let arp = f.get(14..42)?;
            // Only answers: a gratuitous reply (its target the address itself, as MetalLB
            // sends on takeover) is an announcement, not an answer to the request.
            (arp[7] == 2 && arp[14..18] == t.octets() && arp[24..28] != t.octets())
                .then(|| arp[8..14].try_into().ok())?
        }
        IpAddr::V6(t) if ethertype == 0x86dd => {
            let icmp = f.get(54..)?;
            // Only answers (Solicited flag): unsolicited announcements are not answers.
            if f.get(20)? != &58
                || icmp.first()? != &136
                || icmp.get(4)? & 0x40 == 0
                || icmp.get(8..24)? != t.octets()
            {
                return None;
            }
            // Target link-layer address option.
            let opt = icmp.get(24..32)?;
            (opt[0] == 2).then(|| opt[2..8].try_into().ok())?
        }
        _ => None,
    }
}

/// Connects from the client to `ip:port` and reads the responder's node name.
pub fn tcp_hello(client: &Host, ip: IpAddr, port: u16) -> Result<String> {
    in_ns(&client.ns.clone(), move || -> Result<String> {
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?
}

/// GET `path` from `127.0.0.1:port` inside `ns`.
pub fn http_get_in(ns: &str, port: u16, path: &str) -> Result<String> {
    http_get(
        ns,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        path,
        Duration::from_secs(5),
    )
}

/// GET `path` from `addr` inside `ns`: the whole answer (status line, headers, body), within
/// `timeout` for the connection and again for the answer.
pub fn http_get(ns: &str, addr: SocketAddr, path: &str, timeout: Duration) -> Result<String> {
    let path = path.to_owned();
    in_ns(ns, move || -> Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?
}
