//! A real etcd and kube-apiserver for one test: free ports, a private temp dir on tmpfs,
//! generated certificates, an admin kubeconfig, Herald's CRDs installed. Dropping the
//! `ControlPlane` stops both processes and removes every file, also when the test panics.

use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};
use tempfile::TempDir;

use crate::bins::{go_binary, repo_root};
use crate::netns::{self, Forward};
use crate::pki::Pki;
use crate::process::Process;

/// How long a cold API server may take to become ready on a loaded 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Where etcd and the API server run.
#[derive(Debug, Clone)]
pub enum Placement {
    /// On the test machine's loopback, on free ports.
    Loopback,
    /// Inside the network namespace `ns` of a LAN (a real cluster's control-plane host): etcd
    /// on its loopback, the API server on port 6443 of every address and advertised as
    /// `address`, where kubelets, kube-proxies and pods (through the `kubernetes` Service)
    /// reach it. The test process reaches it through a forwarded loopback port.
    Namespace { ns: String, address: IpAddr },
}

impl Placement {
    /// A command that runs `bin` where this placement says.
    fn command(&self, bin: &Path) -> Command {
        match self {
            Placement::Loopback => Command::new(bin),
            Placement::Namespace { ns, .. } => netns::command_in_net(ns, bin),
        }
    }
}

/// The API server's port inside a namespace (`Placement::Namespace`).
pub const NAMESPACE_PORT: u16 = 6443;

/// The `kubernetes` Service's ClusterIP (first of the service range): pods reach the API
/// server there, so the serving certificate names it.
const KUBERNETES_SERVICE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1));

#[derive(Debug, Clone)]
pub struct Options {
    pub placement: Placement,
    /// Install Herald's CRDs from `charts/herald/files/crds` once the server is ready.
    pub install_crds: bool,
    /// Write an audit log of every request (metadata level) to `audit_log()`.
    pub audit: bool,
    /// `--service-cluster-ip-range`: the first range must hold `KUBERNETES_SERVICE_IP`.
    pub service_cidrs: String,
    /// More kube-apiserver flags (after the defaults, so they win).
    pub apiserver_args: Vec<String>,
}

/// The default service range: 65,534 ClusterIPs, like most clusters'.
pub const DEFAULT_SERVICE_CIDRS: &str = "10.96.0.0/16,fd00:10:96::/112";

impl Default for Options {
    fn default() -> Self {
        Self {
            placement: Placement::Loopback,
            install_crds: std::env::var_os("HERALD_NO_CRDS").is_none(),
            audit: false,
            service_cidrs: DEFAULT_SERVICE_CIDRS.to_owned(),
            apiserver_args: Vec::new(),
        }
    }
}

pub struct ControlPlane {
    // Field order is drop order: the API server stops before etcd, the files go last.
    _forward: Option<Forward>,
    apiserver: Process,
    /// How the API server was started, to start it again or a second one beside it.
    apiserver_spec: ApiServer,
    apiserver_port: u16,
    etcd: Process,
    client: Client,
    url: String,
    kubeconfig: PathBuf,
    pki: Pki,
    dir: TempDir,
}

impl ControlPlane {
    /// Starts a control plane on loopback with Herald's CRDs installed.
    pub async fn start() -> Result<Self> {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Result<Self> {
        let started = Instant::now();
        // Ports are picked free and then bound by the child; another test may win the race
        // in between, so a start whose process exited is retried with new ports.
        let mut attempt = 1;
        loop {
            match Self::try_start(&options).await {
                Ok(cp) => {
                    tracing::info!(url = %cp.url, elapsed_ms = started.elapsed().as_millis() as u64, "control plane ready");
                    return Ok(cp);
                }
                Err(StartError::Exited(e)) if attempt < 3 => {
                    tracing::warn!("control plane process exited, retrying with new ports: {e}");
                    attempt += 1;
                }
                Err(StartError::Exited(e)) => return Err(anyhow!(e)),
                Err(StartError::Other(e)) => return Err(e),
            }
        }
    }

    async fn try_start(options: &Options) -> Result<Self, StartError> {
        let dir = scratch_dir()?;
        let root = dir.path();
        let mut sans = vec![IpAddr::V4(Ipv4Addr::LOCALHOST), KUBERNETES_SERVICE_IP];
        if let Placement::Namespace { address, .. } = &options.placement {
            sans.push(*address);
        }
        let pki = Pki::generate(root, &sans)?;
        let (etcd_client, etcd_peer) = (free_port()?, free_port()?);
        let mut etcd = options.placement.command(&go_binary("etcd")?);
        etcd.args(["--name", "herald", "--data-dir"])
            .arg(root.join("etcd"))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{etcd_client}"),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{etcd_client}"),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{etcd_peer}"),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{etcd_peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("herald=http://127.0.0.1:{etcd_peer}"),
            ])
            .args(["--unsafe-no-fsync", "--log-level", "warn"]);
        let etcd = Process::spawn("etcd", etcd, &root.join("etcd.log"))?;

        let (bind, advertise, port) = match &options.placement {
            Placement::Loopback => {
                let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
                (ip, ip, free_port()?)
            }
            Placement::Namespace { address, .. } => {
                (IpAddr::V6(Ipv6Addr::UNSPECIFIED), *address, NAMESPACE_PORT)
            }
        };
        let mut args: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: &dyn AsRef<OsStr>| {
            args.push(name.into());
            args.push(value.as_ref().to_owned());
        };
        flag("--etcd-servers", &format!("http://127.0.0.1:{etcd_client}"));
        flag("--bind-address", &bind.to_string());
        flag("--advertise-address", &advertise.to_string());
        flag("--tls-cert-file", &pki.serving_cert);
        flag("--tls-private-key-file", &pki.serving_key);
        flag("--client-ca-file", &pki.ca_cert);
        flag(
            "--service-account-key-file",
            &pki.service_account_public_key,
        );
        flag(
            "--service-account-signing-key-file",
            &pki.service_account_key,
        );
        flag(
            "--service-account-issuer",
            &"https://kubernetes.default.svc",
        );
        flag("--service-cluster-ip-range", &options.service_cidrs);
        flag("--authorization-mode", &"RBAC");
        // `kubectl logs/exec` reach kubelets by address (node names resolve nowhere).
        flag("--kubelet-preferred-address-types", &"InternalIP,Hostname");
        flag("--v", &"0");
        flag("--cert-dir", &root.join("certs"));
        if let Placement::Loopback = options.placement {
            // No kubelet or kube-proxy reads the `kubernetes` endpoints here, and a loopback
            // advertise address would make the reconciler log errors forever.
            flag("--endpoint-reconciler-type", &"none");
        }
        if options.audit {
            let policy = root.join("audit-policy.yaml");
            std::fs::write(
                &policy,
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules: [{level: Metadata}]\n",
            )?;
            flag("--audit-policy-file", &policy);
            flag("--audit-log-path", &root.join("audit.log"));
            flag("--audit-log-format", &"json");
            flag("--audit-log-mode", &"blocking");
        }
        args.extend(["--allow-privileged".into(), "--profiling=false".into()]);
        args.extend(options.apiserver_args.iter().map(OsString::from));
        let apiserver = ApiServer {
            placement: options.placement.clone(),
            args,
        };
        let process = apiserver.spawn(port, &root.join("kube-apiserver.log"))?;

        let forward = match &options.placement {
            Placement::Loopback => None,
            Placement::Namespace { ns, .. } => Some(Forward::into_namespace(
                ns,
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            )?),
        };
        let url = format!(
            "https://127.0.0.1:{}",
            forward.as_ref().map_or(port, Forward::port)
        );
        let kubeconfig = root.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&url, &pki))?;
        let client = client_from(&kubeconfig).await?;

        let mut cp = Self {
            _forward: forward,
            apiserver: process,
            apiserver_spec: apiserver,
            apiserver_port: port,
            etcd,
            client,
            url,
            kubeconfig,
            pki,
            dir,
        };
        cp.wait_ready().await?;
        if options.install_crds {
            cp.install_crds().await?;
        }
        Ok(cp)
    }

    /// The audit log (with `Options::audit`), one JSON event per line.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    /// A kubeconfig that acts as `user` (impersonation by the admin), so RBAC applies.
    pub fn kubeconfig_as(&self, user: &str) -> Result<PathBuf> {
        let admin = std::fs::read_to_string(&self.kubeconfig)?;
        let mut out = String::new();
        for line in admin.lines() {
            out.push_str(line);
            out.push('\n');
            if line.trim_start().starts_with("client-key:") {
                out.push_str(&format!("    as: {user}\n"));
            }
        }
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-{}", user.replace(':', "-")));
        std::fs::write(&path, out)?;
        Ok(path)
    }

    /// An admin kubeconfig for `server` (the API server's address as seen from elsewhere: a
    /// node namespace, a pod), written as `name` in the scratch directory.
    pub fn kubeconfig_for(&self, name: &str, server: &str) -> Result<PathBuf> {
        let admin = std::fs::read_to_string(&self.kubeconfig)?;
        let path = self.dir.path().join(name);
        std::fs::write(&path, admin.replace(&self.url, server))?;
        Ok(path)
    }

    /// The CA of the API server's certificates (also signs the admin's).
    pub fn ca_cert(&self) -> &Path {
        &self.pki.ca_cert
    }

    /// The key service-account tokens are signed with (for kube-controller-manager).
    pub fn service_account_key(&self) -> &Path {
        &self.pki.service_account_key
    }

    /// An admin client (`system:masters`).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Path of an admin kubeconfig for `kubectl` and for Herald's binaries.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL.
    /// The API server's port.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_default()
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Private scratch directory of this control plane (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Last lines of the API server's log, for failure messages.
    pub fn apiserver_log_tail(&self, lines: usize) -> String {
        self.apiserver.log_tail(lines)
    }

    async fn wait_ready(&mut self) -> Result<(), StartError> {
        wait_ready(&mut self.apiserver, Some(&mut self.etcd), &self.client).await
    }

    /// Kills the API server (etcd keeps everything): a crash, or an HA control plane's member
    /// going down. `restart_apiserver` brings it back.
    pub fn stop_apiserver(&mut self) {
        self.apiserver.kill();
    }

    /// Starts the API server again, with the same flags on the same port (a fresh watch
    /// cache: watches cannot resume from before), and waits until it is ready.
    pub async fn restart_apiserver(&mut self) -> Result<()> {
        self.apiserver.kill();
        self.apiserver = self.apiserver_spec.spawn(
            self.apiserver_port,
            &self.dir.path().join("kube-apiserver-restarted.log"),
        )?;
        self.wait_ready().await.map_err(StartError::into_anyhow)
    }

    /// A second API server on the same etcd, on a free loopback port (an HA control plane's
    /// other member), ready, with an admin client of its own. Stops when the `Process` drops.
    pub async fn second_apiserver(&self) -> Result<(Process, Client)> {
        anyhow::ensure!(
            matches!(self.apiserver_spec.placement, Placement::Loopback),
            "a second API server runs on loopback only"
        );
        let port = free_port()?;
        let mut process = self
            .apiserver_spec
            .spawn(port, &self.dir.path().join("kube-apiserver-second.log"))?;
        let url = format!("https://127.0.0.1:{port}");
        let client = client_from(&self.kubeconfig_for("kubeconfig-second", &url)?).await?;
        wait_ready(&mut process, None, &client)
            .await
            .map_err(StartError::into_anyhow)?;
        Ok((process, client))
    }

    /// Applies every manifest in `charts/herald/files/crds` and waits until each is established.
    pub async fn install_crds(&self) -> Result<()> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let dir = repo_root().join(herald_api::crds::CHART_CRD_DIR);
        let mut names = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let crd: CustomResourceDefinition =
                serde_yaml_ng::from_str(&std::fs::read_to_string(&file)?)
                    .with_context(|| format!("parsing {}", file.display()))?;
            let name = crd.metadata.name.clone().context("CRD without a name")?;
            crds.patch(
                &name,
                &PatchParams::apply("herald-tests").force(),
                &Patch::Apply(&crd),
            )
            .await
            .with_context(|| format!("applying {}", file.display()))?;
            names.push(name);
        }
        for name in names {
            tokio::time::timeout(
                Duration::from_secs(60),
                await_condition(crds.clone(), &name, conditions::is_crd_established()),
            )
            .await
            .with_context(|| format!("CRD {name} not established within 60s"))??;
        }
        Ok(())
    }
}

enum StartError {
    /// etcd or kube-apiserver exited early, most likely because another process took its port.
    Exited(String),
    Other(anyhow::Error),
}

impl StartError {
    fn into_anyhow(self) -> anyhow::Error {
        match self {
            Self::Exited(e) => anyhow!(e),
            Self::Other(e) => e,
        }
    }
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e)
    }
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        Self::Other(e.into())
    }
}

impl Drop for ControlPlane {
    /// A failing test keeps its logs (every process's: API server, etcd, the controllers
    /// and speakers it started in `dir()`) in /tmp/herald-failed, named in its output.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Some(name) = self.dir.path().file_name() else {
            return;
        };
        let keep = Path::new("/tmp/herald-failed").join(name);
        let copied = std::fs::create_dir_all(&keep).and_then(|()| {
            for entry in std::fs::read_dir(self.dir.path())? {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "log")
                    && let Some(file) = path.file_name()
                {
                    std::fs::copy(&path, keep.join(file))?;
                }
            }
            Ok(())
        });
        match copied {
            Ok(()) => eprintln!("logs of the failed test kept in {}", keep.display()),
            Err(e) => eprintln!("keeping the logs in {}: {e}", keep.display()),
        }
    }
}

/// How an API server of this control plane is started: where, and every flag but its port.
#[derive(Debug, Clone)]
struct ApiServer {
    placement: Placement,
    args: Vec<OsString>,
}

impl ApiServer {
    fn spawn(&self, port: u16, log: &Path) -> Result<Process> {
        let mut command = self.placement.command(&apiserver_binary()?);
        // The port first: `Options::apiserver_args`, last, win over every default.
        command
            .args(["--secure-port", &port.to_string()])
            .args(&self.args);
        Process::spawn("kube-apiserver", command, log)
    }
}

/// Waits until the API server answers `/readyz` and serves the `default` namespace.
async fn wait_ready(
    apiserver: &mut Process,
    mut etcd: Option<&mut Process>,
    client: &Client,
) -> Result<(), StartError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    loop {
        let etcd_exited = etcd.as_deref_mut().and_then(Process::exited);
        if let Some(exited) = apiserver.exited().or(etcd_exited) {
            return Err(StartError::Exited(exited));
        }
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(anyhow::Error::from)?;
        let ready = client
            .request_text(request)
            .await
            .is_ok_and(|body| body.trim() == "ok");
        if ready && namespaces.get_opt("default").await.ok().flatten().is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(StartError::Other(anyhow!(
                "kube-apiserver not ready after {READY_TIMEOUT:?}; last log lines:\n{}",
                apiserver.log_tail(30)
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The scratch directory lives on tmpfs when there is one: etcd's writes cost nothing there.
fn scratch_dir() -> Result<TempDir> {
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("herald-cp-");
        b
    };
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        builder.tempdir_in(shm)
    } else {
        builder.tempdir()
    };
    Ok(dir?)
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn kubeconfig_yaml(url: &str, pki: &Pki) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: herald-test
  cluster:
    server: {url}
    certificate-authority: {ca}
users:
- name: herald-admin
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: herald-test
  context: {{cluster: herald-test, user: herald-admin, namespace: default}}
current-context: herald-test
",
        ca = pki.ca_cert.display(),
        cert = pki.admin_cert.display(),
        key = pki.admin_key.display(),
    )
}

/// A client for the kubeconfig at `path`.
pub async fn client_from(path: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    let mut config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    config.read_timeout = Some(Duration::from_secs(30));
    Ok(Client::try_from(config)?)
}

/// The kube-apiserver to run: `$HERALD_KUBE_APISERVER` names another binary of the bin
/// directory (scripts/test runs the end-to-end suite a second time with
/// `kube-apiserver-oldest`, the oldest Kubernetes the chart supports).
fn apiserver_binary() -> Result<std::path::PathBuf> {
    let name = std::env::var("HERALD_KUBE_APISERVER").unwrap_or_else(|_| "kube-apiserver".into());
    go_binary(&name)
}
