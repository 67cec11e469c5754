//! `kubectl herald`, a kubectl plugin (copy `kubectl-herald` onto the PATH): answers what
//! users otherwise ask in issue trackers. Which IP a Service got and why, who answers for it
//! and why that node, which pools are full, which nodes may not announce. Reads only.

mod explain;
mod facts;
mod nodes;
mod pools;
mod snapshot;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::snapshot::{SPEAKER_SELECTOR, Scope, Snapshot};

#[derive(Parser, Debug)]
#[command(
    name = "kubectl herald",
    bin_name = "kubectl herald",
    about = "Herald as it sees your cluster: why a Service has its IP, who answers for it, pools and nodes",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Output: `text` for people, `json` for scripts.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
    /// The kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Labels of Herald's speaker pods.
    #[arg(long, global = true, default_value = SPEAKER_SELECTOR)]
    speaker_selector: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Why a Service has its IPs (or none, and what to do), who answers for them and why.
    Explain {
        /// `svc/NAME` (or `NAME`).
        service: String,
        /// The Service's namespace (default: the context's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Usage per pool and family, Services waiting, overlaps, drains, reservations.
    Pools,
    /// Speakers per node, whether each may announce, IPs answered for, BGP sessions.
    Nodes,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let (client, default_namespace) = connect(&cli).await?;
    let out = match &cli.command {
        Command::Explain { service, namespace } => {
            let name = service_name(service)?;
            let namespace = namespace.clone().unwrap_or(default_namespace);
            let scope = Scope::Service {
                namespace: &namespace,
                name,
            };
            let snapshot = Snapshot::read(&client, &scope, &cli.speaker_selector).await?;
            let e = explain::explain(&snapshot, &namespace, name)
                .with_context(|| format!("Service {namespace}/{name} not found"))?;
            render(cli.output, &e, explain::text)?
        }
        Command::Pools => {
            let snapshot = Snapshot::read(&client, &Scope::Cluster, &cli.speaker_selector).await?;
            render(cli.output, &pools::pools(&snapshot), pools::text)?
        }
        Command::Nodes => {
            let snapshot = Snapshot::read(&client, &Scope::Cluster, &cli.speaker_selector).await?;
            render(cli.output, &nodes::nodes(&snapshot), |n| nodes::text(n))?
        }
    };
    print!("{out}");
    Ok(())
}

fn render<T: serde::Serialize + ?Sized>(
    output: Output,
    report: &T,
    text: impl Fn(&T) -> String,
) -> Result<String> {
    Ok(match output {
        Output::Text => text(report),
        Output::Json => serde_json::to_string_pretty(report)? + "\n",
    })
}

/// `svc/web`, `service/web`, `services/web` or `web`.
fn service_name(arg: &str) -> Result<&str> {
    let name = match arg.split_once('/') {
        Some(("svc" | "service" | "services", name)) => name,
        Some((kind, _)) => bail!("explain takes a Service (svc/NAME), not a {kind}"),
        None => arg,
    };
    if name.is_empty() {
        bail!("explain needs a Service name: kubectl herald explain svc/NAME");
    }
    Ok(name)
}

/// A client as kubectl would make one, and the context's namespace.
async fn connect(cli: &Cli) -> Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None if cli.context.is_some() => Config::from_kubeconfig(&options).await?,
        None => Config::infer().await?,
    };
    let namespace = config.default_namespace.clone();
    Ok((Client::try_from(config)?, namespace))
}

#[cfg(test)]
mod tests;
