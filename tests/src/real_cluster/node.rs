//! One real node: containerd, kubelet and kube-proxy in the node's network namespace, with
//! every path of their own under the node's directory. The settings that make them run
//! inside a container, on a kernel shared with the other nodes, are set where they are
//! written, each with its reason.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::host;
use crate::bins::go_binary;
use crate::netns::{Host, command_in_net};
use crate::process::Process;

/// Which proxier kube-proxy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    Nftables,
    Iptables,
}

impl ProxyMode {
    fn name(self) -> &'static str {
        match self {
            Self::Nftables => "nftables",
            Self::Iptables => "iptables",
        }
    }
}

/// The pod network of node `index` (1-based): one /24 and one /64 on its own bridge.
pub fn pod_cidrs(index: usize) -> (String, String) {
    (
        format!("10.244.{index}.0/24"),
        format!("fd00:10:244:{index:x}::/64"),
    )
}

/// Both families of the whole pod network (kube-proxy's `clusterCIDR`).
pub const CLUSTER_CIDRS: &str = "10.244.0.0/16,fd00:10:244::/48";

pub struct Node {
    pub name: String,
    pub host: Host,
    // Drop order: kube-proxy and kubelet before containerd.
    proxy: Option<Process>,
    kubelet: Option<Process>,
    containerd: Option<Process>,
    dir: PathBuf,
    cgroup: String,
    /// The kubeconfig of the node's daemons (the API server's LAN address).
    kubeconfig: PathBuf,
}

/// What every node shares: where its files go, how it reaches the API server, what it loads.
pub struct Shared<'a> {
    pub base: &'a Path,
    pub prefix: &'a str,
    /// A kubeconfig whose server is the API server's LAN address.
    pub kubeconfig: &'a Path,
    pub images: &'a [PathBuf],
    pub proxy_mode: ProxyMode,
}

impl Node {
    /// Starts containerd (images loaded), then kubelet and kube-proxy. Returns once they run;
    /// the Node turns Ready on its own (`Cluster` waits for it).
    pub fn start(index: usize, name: &str, host: Host, shared: &Shared) -> Result<Self> {
        let dir = shared.base.join(name);
        std::fs::create_dir_all(&dir)?;
        let cgroup = format!("{}-{name}", shared.prefix);
        host::create_cgroup(&cgroup)?;
        let mut node = Self {
            name: name.to_owned(),
            host,
            proxy: None,
            kubelet: None,
            containerd: None,
            dir,
            cgroup,
            kubeconfig: shared.kubeconfig.to_owned(),
        };
        node.write_cni(index)?;
        node.start_containerd()?;
        node.load_images(shared.images)?;
        node.start_kubelet()?;
        node.start_proxy(shared)?;
        Ok(node)
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The pids cgroup of the node's daemons and everything they start outside pods.
    fn daemons_cgroup(&self) -> String {
        format!("{}-daemons", self.cgroup)
    }

    fn spawn(&self, name: &str, cmd: Command) -> Result<Process> {
        let process = Process::spawn(name, cmd, &self.dir.join(format!("{name}.log")))?;
        host::adopt(&self.daemons_cgroup(), process.pid())?;
        Ok(process)
    }

    fn write_cni(&self, index: usize) -> Result<()> {
        let (v4, v6) = pod_cidrs(index);
        let conf = self.dir.join("cni");
        std::fs::create_dir_all(&conf)?;
        // ipMasq: pods reach the API server and the LAN as the node.
        let list = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "herald-pods",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
                 "hairpinMode": true,
                 "ipam": {"type": "host-local",
                          "dataDir": self.dir.join("cni-ipam"),
                          "ranges": [[{"subnet": v4}], [{"subnet": v6}]],
                          "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        std::fs::write(
            conf.join("10-herald.conflist"),
            serde_json::to_vec_pretty(&list)?,
        )?;
        Ok(())
    }

    fn start_containerd(&mut self) -> Result<()> {
        let d = |p: &str| self.dir.join(p).display().to_string();
        let pause = format!("herald.local/pause:{}", versions("PAUSE_TAG")?);
        let config = format!(
            r#"version = 3
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.nri.v1.nri"]
  disable = true
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{pause}"
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{cni}"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "{runc}"
        SystemdCgroup = false
"#,
            root = d("containerd/root"),
            state = d("containerd/state"),
            sock = self.sock().display(),
            cni = d("cni"),
            runc = d("runc"),
        );
        let path = self.dir.join("containerd.toml");
        std::fs::write(&path, config)?;
        let mut cmd = command_in_net(&self.host.ns, &go_binary("containerd")?);
        cmd.arg("--config").arg(&path).args(["--log-level", "warn"]);
        // The shim and runc are found on PATH.
        cmd.env("PATH", path_with_bins()?);
        self.containerd = Some(self.spawn("containerd", cmd)?);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.sock().exists() {
            if let Some(exited) = self.containerd.as_mut().and_then(Process::exited) {
                bail!("{exited}");
            }
            if Instant::now() > deadline {
                bail!("containerd of {} did not open its socket in 30s", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn load_images(&self, images: &[PathBuf]) -> Result<()> {
        for image in images {
            let out = Command::new(go_binary("ctr")?)
                .arg("--address")
                .arg(self.sock())
                .args(["--namespace", "k8s.io", "images", "import", "--local"])
                .arg(image)
                .output()?;
            if !out.status.success() {
                bail!(
                    "ctr images import {} on {}: {}",
                    image.display(),
                    self.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(())
    }

    fn start_kubelet(&mut self) -> Result<()> {
        let d = |p: &str| self.dir.join(p).display().to_string();
        // Loose eviction and image GC thresholds: a busy disk must evict nothing here.
        let config = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup}
containerRuntimeEndpoint: unix://{sock}
address: {address}
readOnlyPort: 0
authentication:
  anonymous: {{enabled: true}}
  webhook: {{enabled: false}}
authorization: {{mode: AlwaysAllow}}
podLogsDir: {logs}
staticPodPath: {manifests}
failSwapOn: false
evictionHard: {{memory.available: "1Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
shutdownGracePeriod: 0s
maxPods: 30
"#,
            cgroup = self.cgroup,
            sock = self.sock().display(),
            address = self.host.v4,
            logs = d("pod-logs"),
            manifests = d("manifests"),
        );
        std::fs::create_dir_all(self.dir.join("manifests"))?;
        let path = self.dir.join("kubelet.yaml");
        std::fs::write(&path, config)?;
        let mut cmd = command_in_net(&self.host.ns, &go_binary("kubelet")?);
        cmd.arg("--config")
            .arg(&path)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--root-dir", &d("kubelet")])
            .args(["--cert-dir", &d("kubelet-pki")])
            .args(["--hostname-override", &self.name])
            .args(["--node-ip", &format!("{},{}", self.host.v4, self.host.v6)])
            .args(["--v", "1"]);
        cmd.env("PATH", path_with_bins()?);
        self.kubelet = Some(self.spawn("kubelet", cmd)?);
        Ok(())
    }

    fn start_proxy(&mut self, shared: &Shared) -> Result<()> {
        let config = format!(
            r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: {mode}
hostnameOverride: {name}
clusterCIDR: {cidrs}
clientConnection:
  kubeconfig: {kubeconfig}
metricsBindAddress: 127.0.0.1:10249
# nf_conntrack_max is machine-wide: leave it alone.
conntrack:
  maxPerCore: 0
"#,
            mode = shared.proxy_mode.name(),
            name = self.name,
            cidrs = CLUSTER_CIDRS,
            kubeconfig = self.kubeconfig.display(),
        );
        let path = self.dir.join("kube-proxy.yaml");
        std::fs::write(&path, config)?;
        let mut cmd = command_in_net(&self.host.ns, &go_binary("kube-proxy")?);
        cmd.arg("--config").arg(&path).args(["--v", "1"]);
        self.proxy = Some(self.spawn("kube-proxy", cmd)?);
        Ok(())
    }

    /// The node dies: kube-proxy, kubelet, containerd, every shim and container killed at once.
    pub fn kill(&mut self) {
        for p in [&mut self.proxy, &mut self.kubelet, &mut self.containerd]
            .into_iter()
            .flatten()
        {
            p.signal(libc::SIGKILL);
        }
        host::kill_in(&[
            Path::new("/sys/fs/cgroup/pids").join(self.daemons_cgroup()),
            Path::new("/sys/fs/cgroup/pids").join(&self.cgroup),
        ]);
        self.proxy = None;
        self.kubelet = None;
        self.containerd = None;
    }

    /// Starves the node's pods of CPU until the guard is dropped: together they may use
    /// `quota` of CPU time per 100 ms (a CFS quota on the node's pod cgroup), and one busy
    /// loop per core in that cgroup competes with them for it. The node's own daemons are
    /// not held. (The nodes share this machine's cores: busy loops alone would starve every
    /// node alike, and a quota alone would not bite a process that needs little.)
    pub fn starve(&self, quota: Duration) -> Result<Starved> {
        let dir = Path::new("/sys/fs/cgroup/cpu").join(&self.cgroup);
        let write = |file: &str, value: &str| {
            std::fs::write(dir.join(file), value)
                .with_context(|| format!("{value} into {}", dir.join(file).display()))
        };
        write("cpu.cfs_period_us", "100000")?;
        write("cpu.cfs_quota_us", &quota.as_micros().max(1000).to_string())?;
        let mut starved = Starved {
            quota_file: dir.join("cpu.cfs_quota_us"),
            loops: Vec::new(),
        };
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let procs = dir.join("cgroup.procs");
        for _ in 0..cores {
            // The loop joins the cgroup before it spins.
            let script = format!("echo $$ > '{}' && while :; do :; done", procs.display());
            let child = Command::new("sh")
                .args(["-c", &script])
                .spawn()
                .context("starting a busy loop")?;
            starved.loops.push(child);
        }
        Ok(starved)
    }

    /// Last lines of one daemon's log (containerd, kubelet, kube-proxy), for failure messages.
    pub fn log_tail(&self, daemon: &str, lines: usize) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{daemon}.log"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts the kubelet again if it exited, as its service manager would on a real node
    /// (a kubelet exits on some start-up races and relies on being restarted); says why in
    /// the log. Returns whether it was restarted.
    pub fn restart_exited_kubelet(&mut self) -> Result<bool> {
        let Some(exited) = self.kubelet.as_mut().and_then(Process::exited) else {
            return Ok(false);
        };
        tracing::warn!(node = %self.name, "kubelet exited, restarting it: {exited}");
        let log = self.dir.join("kubelet.log");
        let _ = std::fs::rename(&log, self.dir.join("kubelet.log.1"));
        self.start_kubelet()?;
        Ok(true)
    }

    /// Whether any of the node's daemons has exited (with its last log lines).
    pub fn exited(&mut self) -> Option<String> {
        [&mut self.containerd, &mut self.kubelet, &mut self.proxy]
            .into_iter()
            .flatten()
            .find_map(Process::exited)
    }
}

/// `PATH` with the Go-built binaries first (containerd finds its shim there).
fn path_with_bins() -> Result<String> {
    let bins = crate::bins::bin_dir();
    let path = std::env::var("PATH").unwrap_or_default();
    Ok(format!("{}:{path}", bins.display()))
}

/// A value pinned in scripts/versions.env.
pub fn versions(key: &str) -> Result<String> {
    let path = crate::bins::repo_root().join("scripts/versions.env");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(|v| v.trim().to_owned())
        .with_context(|| format!("{key} not in {}", path.display()))
}

/// A node's routes: the default through the control-plane host (as a real node has one: a
/// locally started connection to a ClusterIP is routed before kube-proxy rewrites it, and
/// finds no route without one; that host forwards nothing, so nothing leaves the LAN), and
/// the pod network of every other node through that node's LAN address.
pub fn routes(
    ns: &str,
    gateway: (IpAddr, IpAddr),
    others: &[(usize, IpAddr, IpAddr)],
) -> Result<()> {
    // A node forwards (kubeadm's preflight demands it): a node with no pod yet has had no CNI
    // plugin turn it on, and kube-proxy's DNAT to a pod elsewhere would go nowhere.
    for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
        crate::netns::sysctl(ns, key, "1")?;
    }
    crate::netns::ip(&[
        "-n",
        ns,
        "route",
        "add",
        "default",
        "via",
        &gateway.0.to_string(),
    ])?;
    crate::netns::ip(&[
        "-n",
        ns,
        "-6",
        "route",
        "add",
        "default",
        "via",
        &gateway.1.to_string(),
    ])?;
    pod_routes(ns, others)
}

/// Routes from `ns` to the pods of `nodes` (index, IPv4, IPv6), through each node.
pub fn pod_routes(ns: &str, nodes: &[(usize, IpAddr, IpAddr)]) -> Result<()> {
    for (index, v4, v6) in nodes {
        let (p4, p6) = pod_cidrs(*index);
        crate::netns::ip(&["-n", ns, "route", "add", &p4, "via", &v4.to_string()])?;
        crate::netns::ip(&["-n", ns, "-6", "route", "add", &p6, "via", &v6.to_string()])?;
    }
    Ok(())
}

/// A node's pods starved of CPU (`Node::starve`): dropping it ends that.
pub struct Starved {
    quota_file: PathBuf,
    loops: Vec<std::process::Child>,
}

impl Drop for Starved {
    fn drop(&mut self) {
        for child in &mut self.loops {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(e) = std::fs::write(&self.quota_file, "-1") {
            tracing::warn!("lifting the CPU quota {}: {e}", self.quota_file.display());
        }
    }
}
