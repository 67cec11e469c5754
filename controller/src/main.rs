//! `herald-controller`: allocates external IPs to LoadBalancer Services. `main` only wires.

use std::path::PathBuf;

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
    /// Write Herald's CRD manifests (generated from the Rust types).
    Crds {
        /// Directory to write them to; `-` prints them to stdout.
        #[arg(long, default_value = herald_api::crds::CHART_CRD_DIR)]
        out: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Crds { out } => write_crds(&out),
    }
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
