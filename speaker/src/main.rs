//! `herald-speaker`: makes allocated IPs reachable on the LAN with ARP and NDP. `main` only
//! wires.

mod announcements;
mod announcer;
mod conflicts;
mod election;
mod endpoints;
mod gossip;
mod interfaces;
mod isolation;
mod link_socket;
mod logs;
mod membership;
mod metrics;
mod notes;
mod packet;
mod plan;
mod run;
mod service;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "herald-speaker",
    version,
    about = "Herald's speaker: answers ARP and NDP for allocated IPs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Announce the IPs this node owns (uses the in-cluster config or KUBECONFIG).
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// This node's name (the chart passes spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// UDP port of the speakers' heartbeats.
    #[arg(long, env = "HERALD_GOSSIP_PORT", default_value_t = 7946)]
    gossip_port: u16,
    /// Shared secret that authenticates heartbeats (the chart fills it from a Secret).
    #[arg(long, env = "HERALD_GOSSIP_KEY", hide_env_values = true)]
    gossip_key: String,
    /// Milliseconds between heartbeats.
    #[arg(long, env = "HERALD_HEARTBEAT_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    heartbeat_ms: u64,
    /// Milliseconds of silence after which a speaker counts as dead and its IPs move.
    #[arg(long, env = "HERALD_FAILURE_TIMEOUT_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    failure_timeout_ms: u64,
    /// Seconds between repeated gratuitous ARP / unsolicited NA for owned IPs (0: only when
    /// an IP is gained).
    #[arg(long, env = "HERALD_REFRESH_SECONDS", default_value_t = 30)]
    refresh_seconds: u64,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (host network: pick a free port).
    #[arg(long, env = "HERALD_METRICS_ADDRESS", default_value = "0.0.0.0:9473")]
    metrics_address: SocketAddr,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "HERALD_LOG_JSON")]
    log_json: bool,
    /// The ClusterRole that owns the L2Announcements this speaker writes (the chart passes
    /// its speaker ClusterRole): uninstalling Herald deletes it, and Kubernetes' garbage
    /// collector then deletes every record. Without it a record is owned by its Service.
    #[arg(long, env = "HERALD_RECORDS_OWNER")]
    records_owner: Option<String>,
}

fn main() -> Result<()> {
    let Command::Run(args) = Cli::parse().command;
    herald_telemetry::init_logging(args.log_json);
    if args.gossip_key.len() < 16 {
        anyhow::bail!("--gossip-key must be at least 16 bytes (the chart generates 32)");
    }
    if args.failure_timeout_ms <= args.heartbeat_ms {
        anyhow::bail!("--failure-timeout-ms must be larger than --heartbeat-ms");
    }
    let config = run::Config {
        node: args.node_name,
        gossip_port: args.gossip_port,
        gossip_key: args.gossip_key.into_bytes(),
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        failure_timeout: Duration::from_millis(args.failure_timeout_ms),
        refresh: Duration::from_secs(args.refresh_seconds),
        metrics_address: args.metrics_address,
        records_owner: args.records_owner,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the API server")?;
            run::run(client, config, herald_telemetry::shutdown_signal()).await
        })
}
