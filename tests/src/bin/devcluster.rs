//! `herald-devcluster`: a local control plane (etcd + kube-apiserver, Herald's CRDs installed)
//! for trying Herald by hand. Prints a KUBECONFIG line and runs until Ctrl-C or SIGTERM, then
//! stops everything and removes its files.

use anyhow::{Context, Result};
use herald_lab::ControlPlane;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    herald_lab::init_tracing();
    // Optional: copy the kubeconfig where a script can find it.
    let copy_to = std::env::args().nth(1);
    let started = std::time::Instant::now();
    let cp = ControlPlane::start()
        .await
        .context("starting the local control plane")?;
    if let Some(path) = &copy_to {
        std::fs::copy(cp.kubeconfig(), path)
            .with_context(|| format!("copying kubeconfig to {path}"))?;
    }
    let kubeconfig = copy_to.unwrap_or_else(|| cp.kubeconfig().display().to_string());
    println!(
        "control plane ready at {} in {:.1}s",
        cp.url(),
        started.elapsed().as_secs_f64()
    );
    println!("export KUBECONFIG={kubeconfig}");
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("stopping the control plane");
    Ok(())
}
