//! `herald-speaker`: makes allocated IPs reachable on the LAN with ARP and NDP. `main` only
//! wires.

mod announcements;
mod announcer;
mod bgp_plan;
mod bgp_records;
mod bgp_secrets;
mod bgp_sessions;
mod conflicts;
mod election;
mod endpoints;
mod gossip;
mod gossip_secret;
mod interfaces;
mod isolation;
mod lapse;
mod link_socket;
mod logs;
mod membership;
mod metrics;
mod node;
mod notes;
mod packet;
mod pass;
mod plan;
mod prose;
mod run;
mod service;
mod settle;
mod targets;

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
#[command(group(clap::ArgGroup::new("gossip-keys").required(true).args(["gossip_key", "gossip_secret"])))]
struct RunArgs {
    /// This node's name (the chart passes spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// UDP port of the speakers' heartbeats (not 7946: MetalLB's memberlist may run beside).
    #[arg(long, env = "HERALD_GOSSIP_PORT", default_value_t = 9474)]
    gossip_port: u16,
    /// Shared secret that authenticates heartbeats (16 bytes at least), fixed for the
    /// process's life. Or use --gossip-secret.
    #[arg(long, env = "HERALD_GOSSIP_KEY", hide_env_values = true)]
    gossip_key: Option<String>,
    /// The Secret holding the gossip keys (`NAME` in this pod's namespace, or
    /// `NAMESPACE/NAME`): field `key` signs, `acceptedKey` is also accepted during a key
    /// rotation. Watched: a rotation needs no restart. The chart's controller creates it.
    #[arg(long, env = "HERALD_GOSSIP_SECRET")]
    gossip_secret: Option<String>,
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
    /// Heartbeat every interval only the segment (the nodes competing for the same IPs) and
    /// every other node once per 10-second round: the per-node cost of liveness bounded by
    /// the segment, not the cluster (docs/benchmarks.md, 5,000 nodes). `false`: every node
    /// every interval.
    #[arg(long, env = "HERALD_SEGMENTED_LIVENESS", default_value_t = true, action = clap::ArgAction::Set)]
    segmented_liveness: bool,
    /// Announce from nodes labelled node.kubernetes.io/exclude-from-external-load-balancers
    /// too (MetalLB's flag): for single-node and control-plane-only clusters whose nodes
    /// carry the label. Every speaker must have the same setting.
    #[arg(long, env = "HERALD_IGNORE_EXCLUDE_LB")]
    ignore_exclude_lb: bool,
    /// Treat cordoned nodes as excluded: their IPs move and their BGP routes are withdrawn
    /// as soon as they are cordoned, before a drain evicts their pods. Every speaker must
    /// have the same setting.
    #[arg(long, env = "HERALD_EXCLUDE_CORDONED")]
    exclude_cordoned: bool,
    /// Interfaces never chosen unless an L2Advertisement names them, comma-separated, `*`
    /// standing for any run of characters. Default: the devices CNI plugins and container
    /// runtimes create.
    #[arg(
        long,
        env = "HERALD_IGNORED_INTERFACES",
        value_delimiter = ',',
        default_values_t = interfaces::DEFAULT_IGNORED.map(str::to_owned)
    )]
    ignored_interfaces: Vec<String>,
    /// Milliseconds a node newly serving an externalTrafficPolicy Local Service waits before
    /// its BGP route draws that Service's traffic, so its kube-proxy has programmed the new
    /// endpoint (it syncs at most once a second by default). Not when it is the only node
    /// serving; withdrawals never wait. 0: announce at once.
    #[arg(long, env = "HERALD_LOCAL_SETTLE_MS", default_value_t = pass::LOCAL_SETTLE.as_millis() as u64, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    local_settle_ms: u64,
}

fn main() -> Result<()> {
    let Command::Run(args) = Cli::parse().command;
    herald_telemetry::init_logging(args.log_json);
    let gossip_keys = match (args.gossip_key, args.gossip_secret) {
        (Some(key), _) => gossip_secret::KeySource::Fixed(std::sync::Arc::new(
            membership::Keys::new(key.as_bytes(), None).context("--gossip-key")?,
        )),
        (None, Some(secret)) => gossip_secret::KeySource::Secret(secret),
        (None, None) => anyhow::bail!("give --gossip-key or --gossip-secret"),
    };
    if args.failure_timeout_ms <= args.heartbeat_ms {
        anyhow::bail!("--failure-timeout-ms must be larger than --heartbeat-ms");
    }
    let config = run::Config {
        node: args.node_name,
        gossip_port: args.gossip_port,
        gossip_keys,
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        failure_timeout: Duration::from_millis(args.failure_timeout_ms),
        refresh: Duration::from_secs(args.refresh_seconds),
        metrics_address: args.metrics_address,
        records_owner: args.records_owner,
        segmented_liveness: args.segmented_liveness,
        ignored_interfaces: args.ignored_interfaces,
        local_settle: Duration::from_millis(args.local_settle_ms),
        exclusion: election::Exclusion {
            by_label: !args.ignore_exclude_lb,
            cordoned: args.exclude_cordoned,
        },
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
