//! What the side-by-side benches (`bench/peers`, `bench/peers-bgp`) share: what each system
//! looks like once installed, their arguments and their table of what each system's
//! processes take at rest.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use crate::real_cluster::{Cluster, NAMESPACE};

/// Where a system runs once installed as its docs say.
pub struct Installed {
    pub name: &'static str,
    pub namespace: &'static str,
    pub speaker_daemonset: &'static str,
    /// The speaker's and the controller's binaries, as their images start them.
    pub binaries: [&'static str; 2],
}

impl Installed {
    /// Every speaker restarted, one node after another (`kubectl rollout restart` of its
    /// DaemonSet), until the rollout is complete.
    pub fn restart_speakers(&self, cluster: &Cluster) -> Result<()> {
        cluster.kubectl(&[
            "-n",
            self.namespace,
            "rollout",
            "restart",
            self.speaker_daemonset,
        ])?;
        cluster.rollout_status(self.namespace, self.speaker_daemonset, "300s")?;
        Ok(())
    }
}

pub const HERALD: Installed = Installed {
    name: "Herald",
    namespace: NAMESPACE,
    speaker_daemonset: "daemonset/herald-speaker",
    binaries: ["/herald-speaker", "/herald-controller"],
};

pub const METALLB: Installed = Installed {
    name: "MetalLB",
    namespace: "metallb-system",
    speaker_daemonset: "daemonset/speaker",
    binaries: ["/speaker", "/controller"],
};

pub const KUBE_VIP: Installed = Installed {
    name: "kube-vip",
    namespace: "kube-system",
    speaker_daemonset: "daemonset/kube-vip-ds",
    binaries: ["/kube-vip", "/kube-vip-cloud-provider"],
};

/// `[ROUNDS [SYSTEM...]]` from the command line, `--` options aside (`option`): the rounds
/// (default 3) and the systems of `all` named, by `name`, case aside (default: all of them).
pub fn rounds_and_systems<S: Copy>(
    all: &[S],
    name: impl Fn(S) -> &'static str,
) -> Result<(usize, Vec<S>)> {
    let positional: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let rounds: usize = positional
        .first()
        .map(|a| a.parse())
        .transpose()
        .context("ROUNDS must be a number")?
        .unwrap_or(3);
    let named: Vec<String> = positional.into_iter().skip(1).collect();
    let systems: Vec<S> = all
        .iter()
        .copied()
        .filter(|s| named.is_empty() || named.iter().any(|n| n.eq_ignore_ascii_case(name(*s))))
        .collect();
    if systems.is_empty() {
        let known: Vec<&str> = all.iter().map(|s| name(*s)).collect();
        bail!("no system named {named:?}: {}", known.join(", "));
    }
    Ok((rounds, systems))
}

/// The value of `--NAME=VALUE` on the command line, if given.
pub fn option(name: &str) -> Option<String> {
    let prefix = format!("--{name}=");
    std::env::args().find_map(|a| a.strip_prefix(&prefix).map(str::to_owned))
}

/// RSS and CPU at rest per process and system, one entry per round.
#[derive(Default)]
pub struct AtRest {
    runs: BTreeMap<(String, &'static str), Vec<(f64, f64)>>,
}

impl AtRest {
    pub fn record(&mut self, system: &'static str, binary: &str, rss: f64, cpu: f64) {
        self.runs
            .entry((binary.to_owned(), system))
            .or_default()
            .push((rss, cpu));
    }

    /// The medians, as a Markdown table.
    pub fn print(&self) {
        println!(
            "\n| process | system | RSS MiB, median | CPU % of a core at rest, median | runs |"
        );
        println!("|---|---|---|---|---|");
        for ((binary, system), runs) in &self.runs {
            let mut rss: Vec<f64> = runs.iter().map(|r| r.0).collect();
            let mut cpu: Vec<f64> = runs.iter().map(|r| r.1).collect();
            rss.sort_by(f64::total_cmp);
            cpu.sort_by(f64::total_cmp);
            println!(
                "| {binary} | {system} | {:.1} | {:.2} | {} |",
                rss[rss.len() / 2],
                cpu[cpu.len() / 2],
                runs.len()
            );
        }
    }
}
