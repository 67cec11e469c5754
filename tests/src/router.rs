//! Real routers in a network namespace, each accepting BGP from any host of the LAN and
//! installing ECMP routes in its own kernel table: Debian's FRR (zebra, bfdd and bgpd, a pathspace
//! of its own (`-N`), a peer group with `remote-as external` and `bgp listen range`, queried
//! with `vtysh -N NAME -c '... json'`) and BIRD 2 (`neighbor range ... external`, `merge
//! paths` into the kernel, queried with `birdc`). Both are stopped, and their files removed,
//! on drop. What both show alike is behind `Router`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::{Host, Lan};

/// The AS of the LAN's router (`on_lan`).
pub const LAN_ROUTER_ASN: u32 = 64500;

/// What the LAN's router asks of the nodes besides BGP.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peering<'a> {
    /// The TCP-MD5 password every session must sign with (FRR only).
    pub password: Option<&'a str>,
    /// BFD with every node, 100 ms x 3.
    pub bfd: bool,
}

/// A router at 192.0.2.1 on `lan` (a host of its own), AS `LAN_ROUTER_ASN`, accepting
/// sessions from every host of the LAN as `peering` says.
pub fn on_lan<R>(
    lan: &mut Lan,
    start: fn(&str, &RouterConfig) -> Result<R>,
    peering: Peering,
) -> Result<(R, Host)> {
    let host = lan.add_host("router", 1)?;
    let router = start(
        &host.ns,
        &RouterConfig {
            asn: LAN_ROUTER_ASN,
            router_id: host.v4,
            listen: &["192.0.2.0/24"],
            password: peering.password,
            bfd: peering.bfd,
        },
    )?;
    Ok((router, host))
}

/// A client on a network of its own behind a router (203.0.113.0/24): what reaches a Service
/// IP from another rack or the outside, through the routes the router learned. The router
/// forwards; the namespace goes on drop.
pub struct Behind {
    pub ns: String,
    pub v4: Ipv4Addr,
}

/// The network behind the router, as the nodes route to it.
pub const BEHIND: &str = "203.0.113.0/24";

impl Behind {
    /// A namespace `ROUTER_NS-far` linked to the router's namespace, its default route via
    /// the router (203.0.113.1); the router forwards.
    pub fn create(router_ns: &str) -> Result<Self> {
        use crate::netns::{ip, sysctl};
        let ns = format!("{router_ns}-far");
        ip(&["netns", "add", &ns])?;
        let far = Self {
            ns: ns.clone(),
            v4: Ipv4Addr::new(203, 0, 113, 2),
        };
        ip(&[
            "-n", router_ns, "link", "add", "far0", "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ])?;
        ip(&[
            "-n",
            router_ns,
            "addr",
            "add",
            "203.0.113.1/24",
            "dev",
            "far0",
        ])?;
        ip(&["-n", router_ns, "link", "set", "far0", "up"])?;
        ip(&["-n", &ns, "addr", "add", "203.0.113.2/24", "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "route", "add", "default", "via", "203.0.113.1"])?;
        sysctl(router_ns, "net.ipv4.ip_forward", "1")?;
        // Flows spread over the next hops by ports too, as a data-centre router hashes.
        sysctl(router_ns, "net.ipv4.fib_multipath_hash_policy", "1")?;
        Ok(far)
    }
}

impl Drop for Behind {
    fn drop(&mut self) {
        let _ = crate::netns::ip(&["netns", "del", &self.ns]);
    }
}

/// FRR's daemons, installed by scripts/setup (Debian's `frr` package).
const FRR: &str = "/usr/lib/frr";

/// The daemons a router runs, in start order (stopped in reverse): one list, so none
/// started is left running.
const DAEMONS: [&str; 3] = ["zebra", "bfdd", "bgpd"];

pub struct Frr {
    /// The pathspace: config under /etc/frr/NAME, sockets and pid files under
    /// /var/run/frr/NAME.
    name: String,
    ns: String,
    config_dir: PathBuf,
    run_dir: PathBuf,
}

/// How the router peers.
pub struct RouterConfig<'a> {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// Prefixes whose hosts may open sessions (`bgp listen range`).
    pub listen: &'a [&'a str],
    /// The TCP-MD5 password every session must sign with (FRR only).
    pub password: Option<&'a str>,
    /// BFD with every peer, 100 ms x 3 (FRR: bfdd and a profile; BIRD: `bfd on`).
    pub bfd: bool,
}

impl Frr {
    /// Starts FRR's `DAEMONS` in `ns`, in a pathspace named after it, peering as `config`
    /// says.
    pub fn start(ns: &str, config: &RouterConfig) -> Result<Self> {
        Self::start_with(ns, |router| router.frr_conf(config))
    }

    /// Starts FRR with `config` as written (a user's `frr.conf`; only where it logs is
    /// added).
    pub fn start_configured(ns: &str, config: &str) -> Result<Self> {
        Self::start_with(ns, |router| {
            format!("log file {}/frr.log\n!\n{config}", router.run_dir.display())
        })
    }

    fn start_with(ns: &str, conf: impl FnOnce(&Self) -> String) -> Result<Self> {
        let name = ns.replace('-', "_");
        let config_dir = PathBuf::from(format!("/etc/frr/{name}"));
        let run_dir = PathBuf::from(format!("/var/run/frr/{name}"));
        let router = Self {
            name,
            ns: ns.to_owned(),
            config_dir,
            run_dir,
        };
        std::fs::create_dir_all(&router.config_dir)?;
        std::fs::create_dir_all(&router.run_dir)?;
        std::fs::write(router.config_dir.join("frr.conf"), conf(&router))?;
        std::fs::write(
            router.config_dir.join("vtysh.conf"),
            "service integrated-vtysh-config\n",
        )?;
        std::fs::write(
            router.config_dir.join("daemons"),
            DAEMONS.map(|d| format!("{d}=yes\n")).concat(),
        )?;
        for dir in [&router.config_dir, &router.run_dir] {
            let status = Command::new("chown")
                .args(["-R", "frr:frr"])
                .arg(dir)
                .status()
                .context("chown (scripts/setup installs frr, which adds its user)")?;
            if !status.success() {
                bail!("chown frr:frr {}", dir.display());
            }
        }
        let conf = router.config_dir.join("frr.conf");
        for daemon in DAEMONS {
            let out = Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(format!("{FRR}/{daemon}"))
                .args(["-d", "-N", &router.name, "-f"])
                .arg(&conf)
                .output()
                .with_context(|| format!("starting {daemon} (scripts/setup installs frr)"))?;
            if !out.status.success() {
                bail!("{daemon}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        wait_for(ns, "bgpd to answer", Duration::from_secs(10), || {
            router.vtysh("show bgp summary json").is_ok().then_some(())
        })?;
        Ok(router)
    }

    fn frr_conf(&self, config: &RouterConfig) -> String {
        let mut conf = format!(
            "frr defaults datacenter\nhostname {name}\nlog file {run}/frr.log\n!\nbfd\n profile fast\n  receive-interval 100\n  transmit-interval 100\n  detect-multiplier 3\n !\n!\nrouter bgp {asn}\n bgp router-id {id}\n no bgp ebgp-requires-policy\n bgp bestpath as-path multipath-relax\n neighbor NODES peer-group\n neighbor NODES remote-as external\n",
            name = self.name,
            run = self.run_dir.display(),
            asn = config.asn,
            id = config.router_id,
        );
        if let Some(password) = config.password {
            conf.push_str(&format!(" neighbor NODES password {password}\n"));
        }
        if config.bfd {
            conf.push_str(" neighbor NODES bfd profile fast\n");
        }
        for range in config.listen {
            conf.push_str(&format!(" bgp listen range {range} peer-group NODES\n"));
        }
        conf.push_str(
            " address-family ipv4 unicast\n  maximum-paths 16\n exit-address-family\n address-family ipv6 unicast\n  neighbor NODES activate\n  maximum-paths 16\n exit-address-family\n!\n",
        );
        conf
    }

    /// `vtysh -N NAME -c COMMAND` as JSON.
    pub fn vtysh(&self, command: &str) -> Result<serde_json::Value> {
        let out = Command::new("vtysh")
            .args(["-N", &self.name, "-c", command])
            .output()
            .context("vtysh")?;
        if !out.status.success() {
            bail!("vtysh {command}: {}", String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("vtysh {command}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// The router's kernel routes to `prefix` (`ip route show`), as text.
    pub fn kernel_route(&self, prefix: &str) -> String {
        kernel_route(&self.ns, prefix)
    }

    /// Changes the running configuration of `router bgp ASN` (`vtysh -c 'configure
    /// terminal' -c 'router bgp ASN' -c LINE...`).
    pub fn configure_bgp(&self, asn: u32, lines: &[&str]) -> Result<()> {
        let mut cmd = Command::new("vtysh");
        cmd.args(["-N", &self.name, "-c", "configure terminal", "-c"])
            .arg(format!("router bgp {asn}"));
        for line in lines {
            cmd.args(["-c", line]);
        }
        let out = cmd.output().context("vtysh")?;
        if !out.status.success() {
            bail!("vtysh {lines:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

/// What a test reads from any router: its sessions and the routes in its kernel.
pub trait Router {
    /// Polls `check` every 50 ms until it gives a value, for at most `within`.
    fn wait_for<T>(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn() -> Option<T>,
    ) -> Result<T> {
        wait_for(self.ns(), what, within, check)
    }
    /// The peers whose session is Established, by address.
    fn established(&self) -> BTreeSet<String>;
    /// The network namespace it runs in.
    fn ns(&self) -> &str;
    /// The next hops of the router's kernel route to `prefix` (empty when it has none):
    /// what its forwarding uses, ECMP included.
    fn kernel_next_hops(&self, prefix: &str) -> BTreeSet<String> {
        next_hops_of(&kernel_route(self.ns(), prefix))
    }
}

impl Router for Frr {
    fn established(&self) -> BTreeSet<String> {
        let Ok(summary) = self.vtysh("show bgp summary json") else {
            return BTreeSet::new();
        };
        summary["ipv4Unicast"]["peers"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, p)| p["state"] == "Established")
            // A dynamic neighbor of a listen range is listed with a `*` in front.
            .map(|(key, _)| key.trim_start_matches('*').to_owned())
            .collect()
    }

    fn ns(&self) -> &str {
        &self.ns
    }
}

/// The gateways of `ip route show` output: `via X` of a single route or of each `nexthop`
/// line of a multipath one.
fn next_hops_of(route: &str) -> BTreeSet<String> {
    let words: Vec<&str> = route.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "via")
        // `via inet6 ADDR` for an IPv6 gateway of an IPv4 route.
        .map(|w| w[1].to_owned())
        .filter(|hop| hop != "inet6" && hop != "inet")
        .collect()
}

fn kernel_route(ns: &str, prefix: &str) -> String {
    let family = if prefix.contains(':') { "-6" } else { "-4" };
    Command::new("ip")
        .args(["-n", ns, family, "route", "show", prefix])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn wait_for<T>(
    router: &str,
    what: &str,
    within: Duration,
    check: impl Fn() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("router {router}: no {what} within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// BIRD 2 (Debian's `bird2`) in a namespace.
pub struct Bird {
    ns: String,
    dir: PathBuf,
}

impl Bird {
    /// Starts `bird` in `ns` with its config, control socket and pid file in a directory
    /// of its own, peering as `config` says.
    pub fn start(ns: &str, config: &RouterConfig) -> Result<Self> {
        Self::start_with(ns, |router| router.bird_conf(config))
    }

    /// Starts `bird` with `config` as written (a user's `bird.conf`; only where it logs is
    /// added).
    pub fn start_configured(ns: &str, config: &str) -> Result<Self> {
        Self::start_with(ns, |router| {
            format!(
                "log \"{}\" all;\n{config}",
                router.dir.join("bird.log").display()
            )
        })
    }

    fn start_with(ns: &str, conf: impl FnOnce(&Self) -> String) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("herald-bird-{ns}"));
        std::fs::create_dir_all(&dir)?;
        let router = Self {
            ns: ns.to_owned(),
            dir,
        };
        let conf_text = conf(&router);
        let conf = router.dir.join("bird.conf");
        std::fs::write(&conf, conf_text)?;
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "bird", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(router.socket())
            .arg("-P")
            .arg(router.dir.join("bird.pid"))
            .output()
            .context("starting bird (scripts/setup installs bird2)")?;
        if !out.status.success() {
            bail!("bird: {}", String::from_utf8_lossy(&out.stderr));
        }
        wait_for(ns, "bird to answer", Duration::from_secs(10), || {
            router.birdc("show status").is_ok().then_some(())
        })?;
        Ok(router)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// BIRD's own defaults but one: after a session fails (hold timer, BFD), it takes a
    /// node back after 1-5 s rather than its default 60-300 s (`error wait time`), so a test
    /// sees a node that comes back within its patience.
    fn bird_conf(&self, config: &RouterConfig) -> String {
        let mut conf = format!(
            "router id {id};\nlog \"{log}\" all;\nprotocol device {{ }}\nprotocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}\nprotocol kernel {{ ipv6 {{ import none; export all; }}; merge paths on; }}\n",
            id = config.router_id,
            log = self.dir.join("bird.log").display(),
        );
        if config.bfd {
            conf.push_str("protocol bfd {\n  interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };\n}\n");
        }
        for (i, range) in config.listen.iter().enumerate() {
            conf.push_str(&format!(
                "protocol bgp nodes{i} {{\n  local as {asn};\n  neighbor range {range} external;\n  dynamic name \"node{i}_\";\n  graceful restart on;\n  error wait time 1, 5;\n{bfd}  ipv4 {{ import all; export none; }};\n  ipv6 {{ import all; export none; }};\n}}\n",
                asn = config.asn,
                bfd = if config.bfd { "  bfd on;\n" } else { "" },
            ));
        }
        conf
    }

    /// `birdc -s SOCKET COMMAND`, its output as text.
    pub fn birdc(&self, command: &str) -> Result<String> {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.socket())
            .args(command.split_whitespace())
            .output()
            .context("birdc")?;
        if !out.status.success() {
            bail!("birdc {command}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Router for Bird {
    fn established(&self) -> BTreeSet<String> {
        // `show protocols all`: a block per protocol, with `BGP state:` and `Neighbor
        // address:` lines.
        let Ok(text) = self.birdc("show protocols all") else {
            return BTreeSet::new();
        };
        let mut up = BTreeSet::new();
        let mut state = "";
        for line in text.lines() {
            let line = line.trim();
            if let Some(s) = line.strip_prefix("BGP state:") {
                state = s.trim();
            } else if let Some(addr) = line.strip_prefix("Neighbor address:")
                && state == "Established"
            {
                up.insert(addr.trim().to_owned());
            }
        }
        up
    }

    fn ns(&self) -> &str {
        &self.ns
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(self.dir.join("bird.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            // SAFETY: a signal to a pid read from the daemon's own pid file.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        for daemon in DAEMONS.iter().rev() {
            let pid_file = self.run_dir.join(format!("{daemon}.pid"));
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                // SAFETY: a signal to a pid read from the daemon's own pid file.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.config_dir);
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}
