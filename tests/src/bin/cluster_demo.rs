//! Debug bring-up (to be replaced by the demo).
use herald_tests::cluster::journey::{LAN_POOL, Traffic, deploy_web, web_ready_on, web_vips};
use herald_tests::cluster::{Cluster, ClusterOptions};
use herald_tests::objects::apply;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.install_herald(&[])?;
    apply(&cluster.client(), LAN_POOL).await;
    deploy_web(&cluster.client(), 2, Traffic::Cluster).await;
    web_ready_on(&cluster.client(), 2, Duration::from_secs(30)).await;
    let (v4, v6) = web_vips(&cluster.client()).await;
    println!("{v4} {v6} KUBECONFIG={}", cluster.kubeconfig().display());
    println!("prefix {}", cluster.lan().prefix());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
