//! A real Kubernetes cluster on this machine, the way users run Herald: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler in a control-plane namespace, and N nodes, each
//! a network namespace with its own containerd, kubelet and kube-proxy, on one bridge LAN
//! (192.0.2.0/24 and 2001:db8::/64) with a client namespace. Images are built locally
//! (scripts/images) and loaded into every node; Herald is installed with `helm install`.
//!
//! Dropping the `Cluster` stops every process (by cgroup: daemons, shims and containers),
//! unmounts and removes its files, deletes its namespaces and restores the sysctls the
//! kubelet changes, also while a failed test unwinds; a run killed outright is cleaned up by
//! the next cluster (`host::Claim`). One cluster at a time per machine.

pub mod host;
pub mod journey;
pub mod node;
pub mod routed;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::Client;
use kube::api::{Api, ListParams};

use crate::bins::{go_binary, repo_root};
use crate::control_plane::{NAMESPACE_PORT, Placement};
use crate::netns::{self, Host, Lan, command_in_net};
use crate::{ControlPlane, Options, Process};
pub use node::{Node, ProxyMode};

/// The address of the control-plane host on the LAN.
const CONTROL_PLANE_LAST: u8 = 2;
/// How long nodes may take to register and turn Ready once their daemons run.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// Kubelet restarts allowed while the nodes come up (all nodes together).
const MAX_KUBELET_RESTARTS: usize = 3;
/// The namespace and release name the journeys install Herald as.
pub const RELEASE: &str = "herald";
pub const NAMESPACE: &str = "herald-system";

/// How a node's address sits on its LAN link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeLink {
    /// On the veth itself (`eth0`).
    Plain,
    /// On a bridge `br0` with the veth enslaved to it (OVN-Kubernetes' `br-ex`, Proxmox hosts).
    Bridge,
    /// On a macvlan `mv0` over the veth, with its own MAC.
    Macvlan,
}

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub proxy_mode: ProxyMode,
    /// The link of each node, by position; nodes past the end are `Plain`.
    pub links: Vec<NodeLink>,
    /// Load the peers' images too (MetalLB's, `scripts/images peers`).
    pub peers: bool,
    /// Load kube-vip's images too (`scripts/images kube-vip`).
    pub kube_vip: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            proxy_mode: ProxyMode::Nftables,
            links: Vec::new(),
            peers: false,
            kube_vip: false,
        }
    }
}

pub struct Cluster {
    // Field order is drop order: nodes, then the control plane, then the LAN; the claim
    // (which kills what is left in the cluster's cgroups and restores the machine) goes last.
    pub nodes: Vec<Node>,
    scheduler: Process,
    controller_manager: Process,
    cp: ControlPlane,
    lan: Lan,
    claim: host::Claim,
    started: Duration,
}

impl Cluster {
    pub async fn start(options: ClusterOptions) -> Result<Self> {
        let begin = Instant::now();
        let mut images = images()?;
        if options.peers {
            images.extend(peer_images()?);
        }
        if options.kube_vip {
            images.extend(kube_vip_images()?);
        }
        let mut lan = Lan::create(options.nodes)?;
        let claim = host::Claim::take(lan.prefix())?;
        host::become_subreaper();
        let cp_host = lan.add_host("cp", CONTROL_PLANE_LAST)?;
        let cp = ControlPlane::start_with(Options {
            placement: Placement::Namespace {
                ns: cp_host.ns.clone(),
                address: IpAddr::V4(cp_host.v4),
            },
            // Helm installs Herald's CRDs, as it does for users.
            install_crds: false,
            // Webhooks (MetalLB's) are called at their pods' addresses, routed to the nodes
            // below: the control-plane host runs no kube-proxy for ClusterIPs.
            apiserver_args: vec!["--enable-aggregator-routing=true".into()],
            ..Options::default()
        })
        .await?;
        let inside = cp.kubeconfig_for(
            "kubeconfig-lan",
            &format!("https://{}:{NAMESPACE_PORT}", cp_host.v4),
        )?;
        let local = cp.kubeconfig_for(
            "kubeconfig-cp",
            &format!("https://127.0.0.1:{NAMESPACE_PORT}"),
        )?;
        let controller_manager = control_plane_process(
            &cp,
            &cp_host,
            "kube-controller-manager",
            &[
                "--kubeconfig",
                &local.display().to_string(),
                // Pod CIDRs are static per node (routed on the LAN), not allocated.
                "--controllers",
                "*,-nodeipam",
                "--root-ca-file",
                &cp.ca_cert().display().to_string(),
                "--service-account-private-key-file",
                &cp.service_account_key().display().to_string(),
                "--use-service-account-credentials=false",
                "--leader-elect=false",
                "--bind-address",
                "127.0.0.1",
            ],
        )?;
        let scheduler = control_plane_process(
            &cp,
            &cp_host,
            "kube-scheduler",
            &[
                "--kubeconfig",
                &local.display().to_string(),
                "--leader-elect=false",
                "--bind-address",
                "127.0.0.1",
            ],
        )?;

        let mut hosts = lan.nodes.clone();
        for (host, link) in hosts.iter_mut().zip(&options.links) {
            reshape(host, *link)?;
        }
        lan.nodes = hosts.clone();
        let addresses: Vec<(usize, IpAddr, IpAddr)> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (i + 1, IpAddr::V4(h.v4), IpAddr::V6(h.v6)))
            .collect();
        let shared = node::Shared {
            base: claim.base(),
            prefix: lan.prefix(),
            kubeconfig: &inside,
            images: &images,
            proxy_mode: options.proxy_mode,
        };
        node::pod_routes(&cp_host.ns, &addresses)?;
        let gateway = (IpAddr::V4(cp_host.v4), IpAddr::V6(cp_host.v6));
        let mut nodes = Vec::new();
        for (i, host) in hosts.into_iter().enumerate() {
            let others: Vec<_> = addresses.iter().filter(|a| a.0 != i + 1).cloned().collect();
            node::routes(&host.ns, gateway, &others)?;
            let name = format!("n{}", i + 1);
            nodes.push(Node::start(i + 1, &name, host, &shared)?);
        }
        let mut cluster = Self {
            nodes,
            scheduler,
            controller_manager,
            cp,
            lan,
            claim,
            started: Duration::ZERO,
        };
        cluster.wait_nodes_ready().await?;
        cluster.started = begin.elapsed();
        tracing::info!(
            seconds = cluster.started.as_secs_f64(),
            nodes = cluster.nodes.len(),
            "real cluster ready"
        );
        Ok(cluster)
    }

    async fn wait_nodes_ready(&mut self) -> Result<()> {
        let api: Api<NodeObject> = Api::all(self.client());
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut restarts = 0;
        loop {
            let ready = api
                .list(&ListParams::default())
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|n| {
                            n.status
                                .as_ref()
                                .and_then(|s| s.conditions.as_ref())
                                .is_some_and(|c| {
                                    c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                                })
                        })
                        .count()
                })
                .unwrap_or(0);
            if ready == self.nodes.len() {
                return Ok(());
            }
            for node in &mut self.nodes {
                if restarts < MAX_KUBELET_RESTARTS && node.restart_exited_kubelet()? {
                    restarts += 1;
                    continue;
                }
                if let Some(exited) = node.exited() {
                    bail!("a daemon of node {} exited: {exited}", node.name);
                }
            }
            for p in [&mut self.scheduler, &mut self.controller_manager] {
                if let Some(exited) = p.exited() {
                    bail!("{exited}");
                }
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("--- kubelet of {}:\n{}", n.name, n.log_tail("kubelet", 15)))
                    .collect();
                bail!(
                    "{ready} of {} nodes Ready after {READY_TIMEOUT:?}\n{}",
                    self.nodes.len(),
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// How long `start` took, images and all.
    pub fn startup(&self) -> Duration {
        self.started
    }

    /// An admin client (through a loopback port of the test process).
    pub fn client(&self) -> Client {
        self.cp.client()
    }

    /// An admin kubeconfig for kubectl and helm run by the test process.
    pub fn kubeconfig(&self) -> &Path {
        self.cp.kubeconfig()
    }

    pub fn lan(&self) -> &Lan {
        &self.lan
    }

    /// The LAN, to add hosts (a router) to it.
    pub fn lan_mut(&mut self) -> &mut Lan {
        &mut self.lan
    }

    pub fn client_host(&self) -> &Host {
        &self.lan.client
    }

    /// The node `name`; panics when there is none (a test's mistake).
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn node_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.nodes.iter_mut().find(|n| n.name == name)
    }

    /// The node whose LAN MAC is `mac`.
    pub fn node_of_mac(&self, mac: [u8; 6]) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.host.mac == mac)
            .map(|n| n.name.as_str())
    }

    /// Runs `helm ARGS` as the admin; its output, or an error with it.
    pub fn helm(&self, args: &[&str]) -> Result<String> {
        self.tool("helm", args)
    }

    /// Runs `kubectl ARGS` as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.tool("kubectl", args)
    }

    /// Runs `kubectl herald ARGS` as the admin: kubectl finds the plugin on the PATH, as
    /// users install it.
    pub fn kubectl_herald(&self, args: &[&str]) -> Result<String> {
        let plugin = crate::bins::herald_binary("kubectl-herald")?;
        let dir = plugin.parent().context("the plugin's directory")?;
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(
            std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&path)),
        )?;
        self.tool_with("kubectl", &[&["herald"], args].concat(), Some(&path))
    }

    fn tool(&self, name: &str, args: &[&str]) -> Result<String> {
        self.tool_with(name, args, None)
    }

    fn tool_with(
        &self,
        name: &str,
        args: &[&str],
        path: Option<&std::ffi::OsStr>,
    ) -> Result<String> {
        let mut command = Command::new(go_binary(name)?);
        if let Some(path) = path {
            command.env("PATH", path);
        }
        let out = command
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("KUBECACHEDIR", self.claim.base().join("kube-cache"))
            .env("HELM_CACHE_HOME", self.claim.base().join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.claim.base().join("helm/config"))
            .env("HELM_DATA_HOME", self.claim.base().join("helm/data"))
            .output()
            .with_context(|| format!("running {name}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("{name} {}: {}", args.join(" "), text.trim());
        }
        Ok(text)
    }

    /// `helm install` of the chart in this repository with default values, the image built
    /// here, and `extra` arguments (`--set` ...); waits until every pod is Ready.
    pub fn install_herald(&self, extra: &[&str]) -> Result<String> {
        self.helm_release("install", &[&["--create-namespace"], extra].concat())
    }

    /// `helm upgrade` of the release with the chart in this repository, the image built here
    /// and `extra` arguments; waits until every pod is Ready.
    pub fn upgrade_herald(&self, extra: &[&str]) -> Result<String> {
        self.helm_release("upgrade", extra)
    }

    /// `kubectl -n NAMESPACE rollout status WHAT --timeout TIMEOUT`: waits until WHAT (a
    /// `deployment/...` or `daemonset/...`) is rolled out; kubectl's words.
    pub fn rollout_status(&self, namespace: &str, what: &str, timeout: &str) -> Result<String> {
        self.kubectl(&[
            "-n",
            namespace,
            "rollout",
            "status",
            what,
            "--timeout",
            timeout,
        ])
    }

    /// `helm upgrade` with one speaker value changed, which rolls every speaker, then waits
    /// (2 minutes at most) until the DaemonSet is rolled out; kubectl's words.
    pub fn roll_speakers(&self) -> Result<String> {
        self.upgrade_herald(&["--reuse-values", "--set", "speaker.refreshSeconds=20"])?;
        self.rollout_status(NAMESPACE, "daemonset/herald-speaker", "120s")
    }

    /// `kubectl apply -f` of `manifests` (a file, as a user pipes a render into it).
    pub fn kubectl_apply(&self, manifests: &str) -> Result<String> {
        let file = self.claim.base().join("apply.yaml");
        std::fs::write(&file, manifests).context("writing the manifests")?;
        self.kubectl(&["apply", "-f", file.to_str().context("path")?])
    }

    /// `helm template` of the chart in this repository, as GitOps tools render it: default
    /// values, the image built here, and `extra` arguments. The manifests only.
    pub fn render_herald(&self, extra: &[&str]) -> Result<String> {
        let chart = repo_root().join("charts/herald");
        let mut args = vec![
            "template",
            RELEASE,
            chart.to_str().context("chart path")?,
            "--namespace",
            NAMESPACE,
        ];
        args.extend(LOCAL_IMAGE);
        args.extend(extra);
        let out = Command::new(go_binary("helm")?)
            .args(&args)
            .env("HELM_CACHE_HOME", self.claim.base().join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.claim.base().join("helm/config"))
            .env("HELM_DATA_HOME", self.claim.base().join("helm/data"))
            .output()
            .context("running helm template")?;
        if !out.status.success() {
            bail!("helm template: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn helm_release(&self, verb: &str, extra: &[&str]) -> Result<String> {
        let chart = repo_root().join("charts/herald");
        let mut args = vec![
            verb,
            RELEASE,
            chart.to_str().context("chart path")?,
            "--namespace",
            NAMESPACE,
        ];
        args.extend(LOCAL_IMAGE);
        args.extend(["--wait", "--timeout", "180s"]);
        args.extend(extra);
        self.helm(&args)
    }

    /// GET `/` of `ip:port` from the client namespace: the app's answer body
    /// (`pod=NAME client=ADDRESS`).
    pub fn get_from_client(&self, ip: IpAddr, port: u16, timeout: Duration) -> Result<String> {
        let answer = netns::http_get(&self.lan.client.ns, SocketAddr::new(ip, port), "/", timeout)?;
        journey::app_answer(&answer)
            .with_context(|| format!("unexpected answer from {ip}:{port}: {answer:?}"))
    }

    /// What a user would look at when something is wrong: pods, recent events, the
    /// speakers' and controllers' last log lines.
    pub fn diagnose(&self) -> String {
        let mut out = String::new();
        let mut run = |title: &str, args: &[&str]| {
            out.push_str(&format!("--- {title}\n"));
            out.push_str(&self.kubectl(args).unwrap_or_else(|e| format!("{e:#}")));
        };
        run("pods", &["get", "pods", "-A", "-o", "wide"]);
        run(
            "events",
            &["get", "events", "-A", "--sort-by", ".lastTimestamp"],
        );
        run(
            "speakers",
            &[
                "-n",
                NAMESPACE,
                "logs",
                "-l",
                "app.kubernetes.io/component=speaker",
                "--prefix",
                "--tail",
                "15",
            ],
        );
        run(
            "controllers",
            &[
                "-n",
                NAMESPACE,
                "logs",
                "-l",
                "app.kubernetes.io/component=controller",
                "--tail",
                "15",
            ],
        );
        out
    }

    /// The node dies: kubelet, containerd, kube-proxy and its pods killed, and its link down
    /// (a dead machine forwards nothing; its kernel's kube-proxy rules would outlive the
    /// daemons otherwise).
    pub fn kill_node(&mut self, name: &str) -> Result<()> {
        let node = self
            .node_mut(name)
            .with_context(|| format!("no node {name}"))?;
        node.kill();
        netns::ip(&["-n", &node.host.ns, "link", "set", "eth0", "down"])
    }
}

/// The values that point the chart at the image built here.
const LOCAL_IMAGE: [&str; 4] = [
    "--set",
    "image.repository=herald.local/herald",
    "--set",
    "image.tag=dev",
];

/// The image tars (scripts/images, built once per test process): pause, Herald, the app.
fn images() -> Result<Vec<PathBuf>> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    tars(image_dir(&DIR, &[])?, &["pause", "herald", "app"])
}

/// The peers' images (`scripts/images peers`).
fn peer_images() -> Result<Vec<PathBuf>> {
    tars(peer_dir()?, &["metallb-controller", "metallb-speaker"])
}

/// kube-vip's images (`scripts/images kube-vip`).
fn kube_vip_images() -> Result<Vec<PathBuf>> {
    tars(kube_vip_dir()?, &["kube-vip", "kube-vip-cloud-provider"])
}

/// The tar of each image in `names`, as scripts/images saves them in `dir`.
fn tars(dir: PathBuf, names: &[&str]) -> Result<Vec<PathBuf>> {
    Ok(names.iter().map(|n| dir.join(format!("{n}.tar"))).collect())
}

fn kube_vip_dir() -> Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    image_dir(&DIR, &["kube-vip"])
}

fn peer_dir() -> Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    image_dir(&DIR, &["peers"])
}

/// MetalLB's pool as its docs write it: the LAN in each family (the ranges of Herald's
/// `journey::LAN_POOL`).
pub const METALLB_POOL: &str = "apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: lan, namespace: metallb-system}
spec: {addresses: [192.0.2.100-192.0.2.119, '2001:db8::100-2001:db8::11f']}";

/// MetalLB's L2Advertisement of every pool: with it, its speakers announce.
pub const METALLB_L2_ADVERTISEMENT: &str = "apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: lan, namespace: metallb-system}";

impl Cluster {
    /// MetalLB as its docs install it (the cluster started with `peers`), serving the LAN:
    /// `METALLB_POOL` and `METALLB_L2_ADVERTISEMENT`.
    pub async fn install_metallb(&self) -> Result<()> {
        self.install_metallb_with(&[METALLB_POOL, METALLB_L2_ADVERTISEMENT])
            .await
    }

    /// MetalLB's manifest, its controller and speakers rolled out, then each of `config`,
    /// once its webhook serves (the controller makes the webhook's certificate first).
    pub async fn install_metallb_with(&self, config: &[&str]) -> Result<()> {
        self.install_metallb_manifest(&metallb_manifest()?, config)
            .await
    }

    /// MetalLB for BGP (its native mode): as `install_metallb_with`, but with its manifest's
    /// one change that Kubernetes 1.36 requires (`metallb_manifest_for_bgp`).
    pub async fn install_metallb_bgp(&self, config: &[&str]) -> Result<()> {
        self.install_metallb_manifest(&metallb_manifest_for_bgp()?, config)
            .await
    }

    async fn install_metallb_manifest(&self, manifest: &str, config: &[&str]) -> Result<()> {
        self.kubectl_apply(manifest)?;
        for rollout in ["deployment/controller", "daemonset/speaker"] {
            self.rollout_status("metallb-system", rollout, "180s")
                .with_context(|| format!("MetalLB's {rollout}"))?;
        }
        self.apply_metallb(config).await
    }

    /// Applies MetalLB objects, each retried while its webhook does not serve yet.
    pub async fn apply_metallb(&self, config: &[&str]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        for object in config {
            while let Err(e) = self.kubectl_apply(object) {
                if Instant::now() > deadline {
                    return Err(e.context("MetalLB's configuration refused"));
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        Ok(())
    }

    /// kube-vip as its docs install it for Services (the cluster started with `kube_vip`):
    /// its RBAC, the DaemonSet its `manifest daemonset` command generates (ARP, an election
    /// per Service, `eth0`), its cloud provider from that module's manifest, and the
    /// cloud provider's ConfigMap with the ranges of Herald's `journey::LAN_POOL`.
    pub async fn install_kube_vip(&self) -> Result<()> {
        let dir = kube_vip_dir()?;
        let version = node::versions("KUBE_VIP_VERSION")?;
        let provider = node::versions("KUBE_VIP_CLOUD_PROVIDER_VERSION")?;
        self.kubectl_apply(KUBE_VIP_RBAC)?;
        let daemonset = std::fs::read_to_string(dir.join("kube-vip-ds.yaml"))?.replace(
            &format!("ghcr.io/kube-vip/kube-vip:{version}"),
            &format!("herald.local/kube-vip:{version}"),
        );
        self.kubectl_apply(&daemonset)?;
        // Its manifest pulls on every start (`Always`): a mirror of the image would serve
        // that; here the image is only in each node's containerd.
        let cloud_provider = std::fs::read_to_string(dir.join("kube-vip-cloud-controller.yaml"))?
            .replace(
                &format!("ghcr.io/kube-vip/kube-vip-cloud-provider:{provider}"),
                &format!("herald.local/kube-vip-cloud-provider:{provider}"),
            )
            .replace("imagePullPolicy: Always", "imagePullPolicy: IfNotPresent");
        self.kubectl_apply(&cloud_provider)?;
        self.kubectl(&[
            "-n",
            "kube-system",
            "create",
            "configmap",
            "kubevip",
            "--from-literal",
            "range-global=192.0.2.100-192.0.2.119,2001:db8::100-2001:db8::11f",
        ])?;
        for rollout in [
            "daemonset/kube-vip-ds",
            "deployment/kube-vip-cloud-provider",
        ] {
            self.rollout_status("kube-system", rollout, "180s")
                .with_context(|| format!("kube-vip's {rollout}"))?;
        }
        Ok(())
    }
}

/// kube-vip's RBAC for its DaemonSet: the rules of the `rbac.yaml` its docs apply first
/// (kube-vip.io/manifests/rbac.yaml, not part of its Go module).
const KUBE_VIP_RBAC: &str = "apiVersion: v1
kind: ServiceAccount
metadata: {name: kube-vip, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: 'system:kube-vip-role'}
rules:
  - {apiGroups: [''], resources: [services/status], verbs: [update]}
  - {apiGroups: [''], resources: [services, endpoints], verbs: [list, get, watch, update]}
  - {apiGroups: [''], resources: [nodes], verbs: [list, get, watch, update, patch]}
  - {apiGroups: [coordination.k8s.io], resources: [leases], verbs: [list, get, watch, update, create]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: 'system:kube-vip-binding'}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: 'system:kube-vip-role'}
subjects: [{kind: ServiceAccount, name: kube-vip, namespace: kube-system}]";

/// MetalLB's own manifest (`config/manifests/metallb-native.yaml` of the pinned module), its
/// images renamed to the ones built here, as a user mirroring them would.
pub fn metallb_manifest() -> Result<String> {
    let text = std::fs::read_to_string(peer_dir()?.join("metallb-native.yaml"))?;
    let version = node::versions("METALLB_VERSION")?;
    Ok(text
        .replace(
            &format!("quay.io/metallb/controller:{version}"),
            &format!("herald.local/metallb-controller:{version}"),
        )
        .replace(
            &format!("quay.io/metallb/speaker:{version}"),
            &format!("herald.local/metallb-speaker:{version}"),
        ))
}

/// MetalLB's manifest with the schema of its `BGPPeer` AS numbers mended: v0.15.2 declares
/// `myASN` and `peerASN` as `format: int32` with `maximum: 4294967295`, and Kubernetes 1.36
/// refuses every `BGPPeer` against that schema ("Maximum boundary value must be of type
/// integer with format int32"; 1.32 accepts them). Without the format the values are
/// checked by their bounds alone, as MetalLB means them to be. Nothing else changes.
pub fn metallb_manifest_for_bgp() -> Result<String> {
    const DECLARED: &str = "format: int32\n                maximum: 4294967295";
    let text = metallb_manifest()?;
    if !text.contains(DECLARED) {
        bail!("MetalLB's manifest no longer declares its AS numbers as it did: look again");
    }
    Ok(text.replace(DECLARED, "maximum: 4294967295"))
}

/// Of MetalLB's manifest, its namespace and CustomResourceDefinitions alone: what a user
/// applies first to create MetalLB's pools before its controller starts.
pub fn metallb_namespace_and_crds() -> Result<String> {
    let manifest = metallb_manifest()?;
    let wanted = manifest
        .split("\n---\n")
        .filter(|doc| {
            doc.lines()
                .any(|l| l == "kind: CustomResourceDefinition" || l == "kind: Namespace")
        })
        .collect::<Vec<_>>();
    if wanted.len() < 2 {
        bail!("no namespace and CRDs in MetalLB's manifest");
    }
    Ok(wanted.join("\n---\n"))
}

/// `scripts/images ARGS...`, once per process: the directory it printed last.
fn image_dir(once: &OnceLock<Result<PathBuf, String>>, args: &[&str]) -> Result<PathBuf> {
    let dir = once.get_or_init(|| {
        let mut cmd = Command::new(repo_root().join("scripts/images"));
        cmd.args(args);
        // Cargo's per-test variables (CARGO_PKG_*, CARGO_MANIFEST_DIR...) would make the
        // release build inside look changed and rebuild every time.
        for (key, _) in std::env::vars_os() {
            if let Some(k) = key.to_str()
                && k.starts_with("CARGO_")
                && !matches!(k, "CARGO_HOME" | "CARGO_TARGET_DIR")
            {
                cmd.env_remove(k);
            }
        }
        let out = cmd
            .output()
            .map_err(|e| format!("running scripts/images: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "scripts/images failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .map(PathBuf::from)
            .ok_or_else(|| "scripts/images printed no directory".to_owned())
    });
    dir.as_ref().cloned().map_err(|e| anyhow::anyhow!("{e}"))
}

fn control_plane_process(
    cp: &ControlPlane,
    host: &Host,
    name: &str,
    args: &[&str],
) -> Result<Process> {
    let mut cmd = command_in_net(&host.ns, &go_binary(name)?);
    cmd.args(args);
    Process::spawn(name, cmd, &cp.dir().join(format!("{name}.log")))
}

/// Moves the node's addresses from its veth to a bridge or a macvlan on it.
fn reshape(host: &mut Host, link: NodeLink) -> Result<()> {
    let ns = host.ns.clone();
    let ip = |args: &[&str]| {
        let mut all = vec!["-n", ns.as_str()];
        all.extend(args);
        netns::ip(&all)
    };
    let device = match link {
        NodeLink::Plain => return Ok(()),
        NodeLink::Bridge => {
            // The bridge keeps the veth's MAC, as a host bridge over its NIC does.
            ip(&[
                "link",
                "add",
                "br0",
                "address",
                &mac_text(host.mac),
                "type",
                "bridge",
            ])?;
            ip(&["link", "set", "eth0", "master", "br0"])?;
            "br0"
        }
        NodeLink::Macvlan => {
            host.mac[4] = 1;
            ip(&[
                "link",
                "add",
                "mv0",
                "link",
                "eth0",
                "address",
                &mac_text(host.mac),
                "type",
                "macvlan",
                "mode",
                "bridge",
            ])?;
            "mv0"
        }
    };
    let (v4, v6) = (format!("{}/24", host.v4), format!("{}/64", host.v6));
    ip(&["addr", "del", &v4, "dev", "eth0"])?;
    ip(&["addr", "del", &v6, "dev", "eth0"])?;
    ip(&["addr", "add", &v4, "dev", device])?;
    ip(&["addr", "add", &v6, "dev", device, "nodad"])?;
    ip(&["link", "set", device, "up"])?;
    Ok(())
}

pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
