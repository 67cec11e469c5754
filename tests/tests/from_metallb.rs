//! Users arriving with MetalLB: MetalLB's controller and speaker (built from its Go module,
//! `scripts/images peers`) installed on the real cluster from MetalLB's own manifest with
//! its default settings, serving a dual-stack Service in L2 mode; then the switch to Herald
//! as docs/migrate-from-metallb.md tells it, and the way back, each judged by clients on the
//! LAN sending requests all along. Named `journey_*` like the other real-cluster tests.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use herald_lab::controller::convert;
use herald_lab::objects::{allocated_by_herald, apply, condition, ips, wait_for, wait_for_event};
use herald_lab::real_cluster::journey::{
    LAN_POOL, LATER, Requests, Traffic, deploy_web, judge_switch, web_ready_on, web_vips,
};
use herald_lab::real_cluster::{
    Cluster, ClusterOptions, METALLB_L2_ADVERTISEMENT, METALLB_POOL, metallb_manifest,
    metallb_namespace_and_crds,
};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;

const SETTLE: Duration = Duration::from_secs(30);

/// A real cluster whose nodes hold MetalLB's images.
async fn cluster_with_metallb_images() -> Cluster {
    herald_lab::init_tracing();
    Cluster::start(ClusterOptions {
        peers: true,
        ..ClusterOptions::default()
    })
    .await
    .expect("cluster")
}

/// MetalLB serves the Service (one answer per VIP, the app reached); then, requests going on,
/// the switch as the migration guide tells it: MetalLB's configuration converted, Herald
/// installed with default values (it leaves MetalLB's Service as it is, with a `ForeignIPs`
/// Warning), MetalLB's controller and speakers removed, the converted configuration applied,
/// the rest of MetalLB removed. The Service keeps both its IPs, Herald's controller adopts them, one node
/// answers for each, and the client is served throughout. Prints the longest gap the client
/// saw and how many requests failed.
#[tokio::test]
async fn journey_from_metallb_to_herald_every_ip_kept() {
    let cluster = cluster_with_metallb_images().await;
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
    let kept = wait_for(
        &svcs,
        "web",
        "Herald's condition on its IPs",
        allocated_by_herald,
    )
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
    let steps = format!(
        "from MetalLB to Herald: Herald installed after {:.1} s, MetalLB's speakers gone after {:.1} s, the IPs adopted after {:.1} s; {v4} kept, answered by {herald_node}",
        installed.as_secs_f64(),
        speakers_gone.as_secs_f64(),
        adopted.as_secs_f64()
    );
    judge_switch("web", &steps, started, &requests.finish());
    let body = cluster
        .get_from_client(v4, 80, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("GET {v4} through Herald: {e:#}\n{}", cluster.diagnose()));
    assert!(body.starts_with("pod=web-"), "{body}");
}

/// The way back, as docs/migrate-from-metallb.md tells it: Herald serves a dual-stack Service
/// and one asking for its IP with MetalLB's annotation, clients sending requests to both;
/// MetalLB installed with its pool only (its controller takes the Services over with the IPs
/// they have, its speakers announce nothing yet; a Service created while both controllers
/// run gets one IP they agree on); Herald's L2Advertisements deleted and
/// MetalLB's applied; Herald uninstalled and its pools and CRDs removed. Every IP is kept,
/// MetalLB's speakers answer for it, a new Service gets an IP from MetalLB, and no client
/// waits a second. Prints the longest gap each client saw.
#[tokio::test]
async fn journey_from_herald_back_to_metallb_every_ip_kept() {
    let cluster = cluster_with_metallb_images().await;
    let client = cluster.client();
    if let Err(e) = cluster.install_herald(&[]) {
        panic!("helm install: {e:#}\n{}", cluster.diagnose());
    }
    apply(&client, LAN_POOL).await;
    deploy_web(&client, 2, Traffic::Cluster).await;
    apply(
        &client,
        "apiVersion: v1
kind: Service
metadata:
  name: pinned
  namespace: default
  annotations: {metallb.io/loadBalancerIPs: 192.0.2.110}
spec:
  type: LoadBalancer
  ipFamilies: [IPv4]
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]",
    )
    .await;
    web_ready_on(&client, 2, SETTLE).await;
    let (v4, v6) = web_vips(&client).await;
    let pinned: IpAddr = "192.0.2.110".parse().expect("ip");
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    wait_for(&svcs, "pinned", "its requested IP", |s| {
        (ips(s) == [pinned.to_string()]).then_some(())
    })
    .await;
    let herald_nodes: Vec<String> = [v4, v6, pinned]
        .iter()
        .map(|ip| cluster.one_answer(*ip, SETTLE, |_| true))
        .collect();
    let before = [
        ips(&svcs.get("web").await.expect("web")),
        vec![pinned.to_string()],
    ];

    let requests = Requests::start(&cluster, v4);
    let pinned_requests = Requests::start(&cluster, pinned);
    let started = Instant::now();
    // 1. MetalLB's namespace, CRDs and pool first: a MetalLB controller that starts with no
    //    pool clears the status of every Service it serves. Then the rest of MetalLB, with
    //    no L2Advertisement: its controller takes over the Services with the IPs in their
    //    status (marking them with the pool it found them in); its speakers announce
    //    nothing yet.
    let crds = metallb_namespace_and_crds().expect("MetalLB's CRDs");
    cluster.kubectl_apply(&crds).expect("MetalLB's CRDs");
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/ipaddresspools.metallb.io",
            "--timeout=60s",
        ])
        .expect("MetalLB's CRDs established");
    cluster.kubectl_apply(METALLB_POOL).expect("MetalLB's pool");
    if let Err(e) = cluster.install_metallb_with(&[]).await {
        panic!("installing MetalLB: {e:#}\n{}", cluster.diagnose());
    }
    for name in ["web", "pinned"] {
        wait_for(&svcs, name, "MetalLB's pool annotation", |s| {
            let from = s.metadata.annotations.as_ref()?;
            (from.get("metallb.io/ip-allocated-from-pool")? == "lan").then_some(())
        })
        .await;
    }
    let taken_over = started.elapsed();
    // Both controllers now serve the Services: a Service created meanwhile gets one IP that
    // both agree on (each takes over an IP it finds in a status), and keeps it.
    apply(
        &client,
        "apiVersion: v1
kind: Service
metadata: {name: during, namespace: default}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]",
    )
    .await;
    let during = wait_for(&svcs, "during", "an IP both controllers agree on", |s| {
        let from = s.metadata.annotations.as_ref()?;
        let metallb = from.get("metallb.io/ip-allocated-from-pool")? == "lan";
        let herald = condition(s).is_some_and(|(status, _, _)| status == "True");
        (metallb && herald).then(|| ips(s))
    })
    .await;
    // 2. Herald's speakers stop, MetalLB's start.
    cluster
        .kubectl(&["delete", "l2advertisements.herald.dev", "--all"])
        .expect("deleting Herald's L2Advertisements");
    if let Err(e) = cluster.apply_metallb(&[METALLB_L2_ADVERTISEMENT]).await {
        panic!("MetalLB's L2Advertisement: {e:#}\n{}", cluster.diagnose());
    }
    let handed_over = started.elapsed();
    // 3. Herald uninstalled; then its pools (their finalizer first: the controller that
    //    would remove it is gone) and its CRDs.
    cluster
        .helm(&[
            "uninstall",
            herald_lab::real_cluster::RELEASE,
            "-n",
            herald_lab::real_cluster::NAMESPACE,
            "--wait",
            "--timeout",
            "120s",
        ])
        .expect("helm uninstall");
    let pools = cluster
        .kubectl(&["get", "ippools.herald.dev", "-o", "name"])
        .expect("Herald's pools");
    for pool in pools.lines() {
        cluster
            .kubectl(&[
                "patch",
                pool,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ])
            .expect("removing the pool's finalizer");
    }
    let crds = herald_lab::bins::repo_root().join("charts/herald/files/crds");
    cluster
        .kubectl(&[
            "delete",
            "-f",
            crds.to_str().expect("path"),
            "--timeout",
            "60s",
        ])
        .unwrap_or_else(|e| panic!("deleting Herald's CRDs: {e:#}\n{}", cluster.diagnose()));
    let removed = started.elapsed();

    // MetalLB answers for every IP (one node each), and each Service kept its IPs.
    for ip in [v4, v6, pinned] {
        cluster.one_answer(ip, SETTLE, |_| true);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = [
        ips(&svcs.get("web").await.expect("web")),
        ips(&svcs.get("pinned").await.expect("pinned")),
    ];
    assert_eq!(after, before, "the Services' IPs");
    assert_eq!(
        ips(&svcs.get("during").await.expect("during")),
        during,
        "the IPs of the Service created while both ran"
    );
    let metallb_speakers = cluster
        .kubectl(&[
            "-n",
            "metallb-system",
            "get",
            "pods",
            "-l",
            "component=speaker",
            "-o",
            "name",
        ])
        .expect("MetalLB's speakers");
    assert_eq!(metallb_speakers.lines().count(), 3, "{metallb_speakers}");
    let steps = format!(
        "from Herald (answering from {herald_nodes:?}) back to MetalLB: MetalLB took the Services over after {:.1} s, the announcements after {:.1} s, Herald gone after {:.1} s",
        taken_over.as_secs_f64(),
        handed_over.as_secs_f64(),
        removed.as_secs_f64()
    );
    judge_switch("web", &steps, started, &requests.finish());
    judge_switch("pinned", &steps, started, &pinned_requests.finish());
    // MetalLB allocates for new Services from then on.
    apply(&client, LATER).await;
    let later = wait_for(&svcs, "later", "an IP from MetalLB", |s| {
        let from = s.metadata.annotations.as_ref()?;
        (from.get("metallb.io/ip-allocated-from-pool")? == "lan").then(|| ips(s))
    })
    .await;
    assert!(
        later.iter().all(|ip| !after
            .iter()
            .flatten()
            .chain(&during)
            .any(|taken| taken == ip)),
        "{later:?} against {after:?} and {during:?}"
    );
}
