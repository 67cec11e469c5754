//! A real router in a network namespace: Debian's FRR (zebra and bgpd) with a pathspace of
//! its own (`-N`), configured to accept BGP from any host of the LAN (a peer group with
//! `remote-as external` and `bgp listen range`), ECMP over up to 16 paths into its own
//! kernel table; queried with `vtysh -N NAME -c '... json'`. Stopped, and its files removed,
//! on drop.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// FRR's daemons, installed by scripts/setup (Debian's `frr` package).
const FRR: &str = "/usr/lib/frr";

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
}

impl Frr {
    /// Starts zebra and bgpd in `ns`, in a pathspace named after it.
    pub fn start(ns: &str, config: &RouterConfig) -> Result<Self> {
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
        std::fs::write(router.config_dir.join("frr.conf"), router.frr_conf(config))?;
        std::fs::write(
            router.config_dir.join("vtysh.conf"),
            "service integrated-vtysh-config\n",
        )?;
        std::fs::write(router.config_dir.join("daemons"), "zebra=yes\nbgpd=yes\n")?;
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
        for daemon in ["zebra", "bgpd"] {
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
        router.wait_for("bgpd to answer", Duration::from_secs(10), || {
            router.vtysh("show bgp summary json").is_ok().then_some(())
        })?;
        Ok(router)
    }

    fn frr_conf(&self, config: &RouterConfig) -> String {
        let mut conf = format!(
            "frr defaults datacenter\nhostname {name}\nlog file {run}/frr.log\n!\nrouter bgp {asn}\n bgp router-id {id}\n no bgp ebgp-requires-policy\n bgp bestpath as-path multipath-relax\n neighbor NODES peer-group\n neighbor NODES remote-as external\n",
            name = self.name,
            run = self.run_dir.display(),
            asn = config.asn,
            id = config.router_id,
        );
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
        let family = if prefix.contains(':') { "-6" } else { "-4" };
        Command::new("ip")
            .args(["-n", &self.ns, family, "route", "show", prefix])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Polls `check` every 50 ms until it gives a value, for at most `within`.
    pub fn wait_for<T>(
        &self,
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
                bail!("router {}: no {what} within {within:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        for daemon in ["bgpd", "zebra"] {
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
