//! What the side-by-side benches (`bench/peers`, `bench/peers-bgp`) share: their arguments
//! and their table of what each system's processes take at rest.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

/// `[ROUNDS [SYSTEM...]]` from the command line: the rounds (default 3) and the systems of
/// `all` named, by `name`, case aside (default: all of them).
pub fn rounds_and_systems<S: Copy>(
    all: &[S],
    name: impl Fn(S) -> &'static str,
) -> Result<(usize, Vec<S>)> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()
        .context("ROUNDS must be a number")?
        .unwrap_or(3);
    let named: Vec<String> = std::env::args().skip(2).collect();
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
