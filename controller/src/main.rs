//! `herald-controller`: allocates external IPs to LoadBalancer Services. `main` only wires.

#![forbid(unsafe_code)]

mod allocator;
mod convert;
mod convert_cilium;
mod convert_kube_vip;
mod events;
mod gossip_secret;
mod leader;
mod metrics;
mod pool_writes;
mod pools;
mod run;
mod service;
mod state;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "herald-controller",
    version,
    about = "Herald's controller: external IPs for LoadBalancer Services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Allocate IPs to LoadBalancer Services (uses the in-cluster config or KUBECONFIG).
    Run {
        /// `spec.loadBalancerClass` this controller serves.
        #[arg(long, env = "HERALD_LOAD_BALANCER_CLASS", default_value = herald_api::keys::DEFAULT_LOAD_BALANCER_CLASS)]
        load_balancer_class: String,
        /// Leave Services without a `loadBalancerClass` to another load balancer.
        #[arg(long, env = "HERALD_IGNORE_UNSET_CLASS")]
        ignore_unset_class: bool,
        /// Log as JSON lines instead of text.
        #[arg(long, env = "HERALD_LOG_JSON")]
        log_json: bool,
        /// Where `/metrics`, `/healthz` and `/readyz` are served.
        #[arg(long, env = "HERALD_METRICS_ADDRESS", default_value = "0.0.0.0:9472")]
        metrics_address: SocketAddr,
        #[command(flatten)]
        leader: leader::LeaderArgs,
        #[command(flatten)]
        gossip: GossipArgs,
    },
    /// Convert MetalLB's configuration (IPAddressPool, L2Advertisement, BGPPeer,
    /// BGPAdvertisement, Community; YAML on stdin) to Herald's (stdout).
    ConvertMetallb,
    /// Convert kube-vip's IP range ConfigMap (YAML on stdin) to Herald's IPPools and an
    /// L2Advertisement (stdout).
    ConvertKubeVip,
    /// Convert Cilium's CiliumLoadBalancerIPPool and CiliumL2AnnouncementPolicy (YAML on
    /// stdin) to Herald's IPPool and L2Advertisement (stdout).
    ConvertCilium,
    /// Write Herald's CRD manifests (generated from the Rust types).
    Crds {
        /// Directory to write them to; `-` prints them to stdout.
        #[arg(long, default_value = herald_api::crds::CHART_CRD_DIR)]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
struct GossipArgs {
    /// Create the speakers' gossip Secret (`NAME` in this pod's namespace, or
    /// `NAMESPACE/NAME`) with a random key when it is missing; one that exists is never
    /// changed. The chart passes it unless `speaker.gossipSecret` names a Secret of yours.
    #[arg(long, env = "HERALD_GOSSIP_SECRET")]
    gossip_secret: Option<String>,
    /// The ClusterRole that owns the Secret it creates (the chart passes its controller
    /// ClusterRole), so uninstalling Herald removes it.
    #[arg(long, env = "HERALD_GOSSIP_SECRET_OWNER", requires = "gossip_secret")]
    gossip_secret_owner: Option<String>,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Crds { out } => write_crds(&out),
        Command::ConvertMetallb => convert_stdin(convert::convert),
        Command::ConvertKubeVip => convert_stdin(convert_kube_vip::convert),
        Command::ConvertCilium => convert_stdin(convert_cilium::convert),
        Command::Run {
            load_balancer_class,
            ignore_unset_class,
            log_json,
            metrics_address,
            leader,
            gossip,
        } => {
            herald_telemetry::init_logging(log_json);
            let config = service::ClassConfig {
                class: load_balancer_class,
                serve_unset: !ignore_unset_class,
            };
            // One thread: decisions are serial anyway and the API server is the bottleneck;
            // fewer threads also mean fewer malloc arenas (memory at 10,000 Services).
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(serve(config, metrics_address, leader, gossip))
        }
    }
}

async fn serve(
    config: service::ClassConfig,
    metrics_address: SocketAddr,
    leader: leader::LeaderArgs,
    gossip: GossipArgs,
) -> Result<()> {
    let mut registry = herald_telemetry::registry("controller");
    let metrics = metrics::Metrics::register(&mut registry);
    let health = Arc::new(herald_telemetry::Health::new());
    let bound =
        herald_telemetry::serve(metrics_address, Arc::new(registry), health.clone()).await?;
    tracing::info!(%bound, "serving /metrics, /healthz and /readyz");
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server")?;
    if let Some(name) = gossip.gossip_secret {
        // Every replica, leader or not: the speakers must not wait on an election.
        let secret = herald_api::gossip::SecretRef::parse(&name, client.default_namespace());
        tokio::spawn(gossip_secret::keep(
            client.clone(),
            secret,
            gossip.gossip_secret_owner,
        ));
    }
    let identity = leader.identity();
    // A replica waiting for the Lease is ready: it serves its role (standing by), and a
    // Deployment rollout must not stall on it.
    let mut election = tokio::select! {
        e = leader::Election::start(&client, &leader, &identity) => e?,
        _ = herald_telemetry::shutdown_signal() => return Ok(()),
    };
    // Readiness: a standby that reached the Lease is ready (it can take over); the leader is
    // ready once its caches synced and its first pass is done (`run` says so).
    health.set_ready(election.elected());
    tokio::select! {
        r = election.lead() => r?,
        _ = herald_telemetry::shutdown_signal() => return Ok(()),
    }
    health.set_ready(false);
    metrics.leader.set(1);
    let result = tokio::select! {
        r = run::run(client, config, metrics.clone(), identity, health.clone()) => r,
        r = election.lost() => r,
        _ = herald_telemetry::shutdown_signal() => Ok(()),
    };
    election.release().await;
    result
}

/// Reads YAML on stdin, writes the converted YAML to stdout and each warning to stderr.
fn convert_stdin(
    convert: fn(&str) -> Result<convert::Converted, convert::ConvertError>,
) -> Result<()> {
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input).context("reading stdin")?;
    let (yaml, warnings) = convert(&input)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    if yaml.ends_with('\n') || yaml.is_empty() {
        print!("{yaml}");
    } else {
        println!("{yaml}");
    }
    Ok(())
}

fn write_crds(out: &std::path::Path) -> Result<()> {
    let files = herald_api::crds::render()?;
    if out.as_os_str() == "-" {
        for (_, yaml) in files {
            print!("---\n{yaml}");
        }
        return Ok(());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (name, yaml) in files {
        let path = out.join(name);
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
