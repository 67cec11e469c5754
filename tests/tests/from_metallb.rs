//! Users arriving with MetalLB: MetalLB's controller and speaker (built from its Go module,
//! `scripts/images peers`) installed on the real cluster from MetalLB's own manifest with
//! its default settings, serving a dual-stack Service in L2 mode; then the switch to Herald
//! as docs/migrate-from-metallb.md tells it, judged by a client on the LAN sending requests
//! all along. Named `journey_*` like the other real-cluster tests.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use herald_lab::controller::convert;
use herald_lab::objects::{apply, ips, wait_for, wait_for_event};
use herald_lab::real_cluster::journey::{
    Requests, Traffic, deploy_web, failed, longest_gap_from, web_ready_on, web_vips,
};
use herald_lab::real_cluster::{Cluster, ClusterOptions, metallb_manifest};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;

const SETTLE: Duration = Duration::from_secs(30);

/// MetalLB serves the Service (one answer per VIP, the app reached); then, requests going on,
/// the switch as the migration guide tells it: MetalLB's configuration converted, Herald
/// installed with default values (it leaves MetalLB's Service as it is, with a `ForeignIPs`
/// Warning), MetalLB's controller and speakers removed, the converted configuration applied,
/// the rest of MetalLB removed. The Service keeps both its IPs, Herald's controller adopts them, one node
/// answers for each, and the client is served throughout. Prints the longest gap the client
/// saw and how many requests failed.
#[tokio::test]
async fn journey_from_metallb_to_herald_every_ip_kept() {
    herald_lab::init_tracing();
    let cluster = Cluster::start(ClusterOptions {
        peers: true,
        ..ClusterOptions::default()
    })
    .await
    .expect("cluster");
    let client = cluster.client();

    if let Err(e) = cluster.install_metallb().await {
        panic!("installing MetalLB: {e:#}\n{}", cluster.diagnose());
    }
    deploy_web(&client, 2, Traffic::Cluster).await;
    web_ready_on(&client, 2, SETTLE).await;
    let (v4, v6) = web_vips(&client).await;
    let metallb_node = cluster.one_answer(v4, SETTLE, |_| true);
    cluster.one_answer(v6, SETTLE, |_| true);
    let body = cluster
        .get_from_client(v4, 80, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("GET {v4} through MetalLB: {e:#}\n{}", cluster.diagnose()));
    assert!(body.starts_with("pod=web-"), "{body}");
    println!("MetalLB serves {v4} and {v6} from {metallb_node}");

    // The switch, as the migration guide tells it: convert; install Herald (it leaves the
    // Services MetalLB serves as they are); remove MetalLB's controller and speakers; apply
    // the converted configuration (Herald adopts the IPs and announces them); remove the
    // rest of MetalLB.
    let requests = Requests::start(&cluster, v4);
    let started = Instant::now();
    let exported = cluster
        .kubectl(&[
            "get",
            "ipaddresspools.metallb.io,l2advertisements.metallb.io",
            "-n",
            "metallb-system",
            "-o",
            "yaml",
        ])
        .expect("MetalLB's configuration");
    let (converted, _) = convert("convert-metallb", &exported);
    if let Err(e) = cluster.install_herald(&[]) {
        panic!("helm install: {e:#}\n{}", cluster.diagnose());
    }
    let installed = started.elapsed();
    // Herald leaves MetalLB's Service alone and says why.
    let waiting = wait_for_event(&client, "web", |e| e.reason == "ForeignIPs").await;
    assert!(
        waiting.message.contains(&v4.to_string()),
        "{}",
        waiting.message
    );
    // MetalLB's controller first (once gone, nothing clears the Services' statuses when
    // MetalLB's pools are deleted with the rest), then its speakers, each until its pods are
    // gone: no moment with two systems answering.
    for workload in ["deployment/controller", "daemonset/speaker"] {
        cluster
            .kubectl(&[
                "-n",
                "metallb-system",
                "delete",
                workload,
                "--cascade=foreground",
                "--timeout",
                "120s",
            ])
            .unwrap_or_else(|e| {
                panic!(
                    "deleting MetalLB's {workload}: {e:#}\n{}",
                    cluster.diagnose()
                )
            });
    }
    let speakers_gone = started.elapsed();
    apply(&client, &converted).await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let kept = wait_for(&svcs, "web", "Herald's condition on its IPs", |s| {
        let herald = s
            .status
            .as_ref()
            .and_then(|st| st.conditions.as_ref())
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c.type_ == herald_api::keys::IP_ALLOCATED_CONDITION && c.status == "True"
                })
            });
        herald.then(|| ips(s))
    })
    .await;
    let kept: Vec<IpAddr> = kept.iter().map(|ip| ip.parse().expect("ip")).collect();
    assert!(
        kept.contains(&v4) && kept.contains(&v6),
        "{kept:?}, was {v4} and {v6}"
    );
    let adopted = started.elapsed();
    let file = std::env::temp_dir().join(format!("metallb-native-{}.yaml", std::process::id()));
    let manifest = metallb_manifest().expect("MetalLB's manifest");
    std::fs::write(&file, &manifest).expect("writing the manifest");
    cluster
        .kubectl(&[
            "delete",
            "-f",
            file.to_str().expect("path"),
            "--ignore-not-found",
            "--timeout",
            "120s",
        ])
        .unwrap_or_else(|e| panic!("kubectl delete MetalLB: {e:#}\n{}", cluster.diagnose()));
    let _ = std::fs::remove_file(&file);
    let herald_node = cluster.one_answer(v4, SETTLE, |_| true);
    cluster.one_answer(v6, SETTLE, |_| true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcomes = requests.finish();
    let (began, gap) = longest_gap_from(&outcomes).expect("answered requests");
    // When it began, against the steps' times.
    let gap_at = began.saturating_duration_since(started).as_secs_f64();
    println!(
        "from MetalLB to Herald: Herald installed after {:.1} s, MetalLB's speakers gone after {:.1} s, the IPs adopted after {:.1} s; {v4} kept, answered by {herald_node}; longest gap {} ms from {gap_at:.1} s, {} of {} requests failed",
        installed.as_secs_f64(),
        speakers_gone.as_secs_f64(),
        adopted.as_secs_f64(),
        gap.as_millis(),
        failed(&outcomes),
        outcomes.len()
    );
    assert!(gap < Duration::from_secs(1), "longest gap {gap:?}");
    let last = outcomes.last().expect("requests");
    assert!(
        last.answer.is_some(),
        "the client is served after the switch"
    );
    let body = cluster
        .get_from_client(v4, 80, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("GET {v4} through Herald: {e:#}\n{}", cluster.diagnose()));
    assert!(body.starts_with("pod=web-"), "{body}");
}
