//! Users arriving with kube-vip: kube-vip v1.0.0 (Services in ARP mode, an election per
//! Service) and its cloud provider (the IPAM that fills `kube-vip.io/loadbalancerIPs` from
//! its `kubevip` ConfigMap), built from their Go modules (`scripts/images kube-vip`) and
//! installed on the real cluster as their docs tell it; then the switch to Herald as
//! docs/migrate-from-metallb.md tells it, judged by clients on the LAN sending requests all
//! along. Named `journey_*` like the other real-cluster tests.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use herald_lab::controller::convert;
use herald_lab::objects::{allocated_by_herald, apply, ips, wait_for, wait_for_event};
use herald_lab::real_cluster::journey::{
    LATER, Requests, Traffic, deploy_web, judge_switch, web_ready_on, web_vips,
};
use herald_lab::real_cluster::{Cluster, ClusterOptions};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;

const SETTLE: Duration = Duration::from_secs(30);

/// A Service asking kube-vip for its address with kube-vip's own annotation.
const PINNED: &str = "apiVersion: v1
kind: Service
metadata:
  name: pinned
  namespace: default
  annotations: {kube-vip.io/loadbalancerIPs: 192.0.2.110}
spec:
  type: LoadBalancer
  ipFamilies: [IPv4]
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]";

/// The addresses on each node's `eth0` among `vips`: kube-vip answers ARP by adding a VIP to
/// its leader's interface, so the node's kernel answers for as long as the address stays.
fn vips_on_nodes(cluster: &Cluster, vips: &[IpAddr]) -> Vec<(String, IpAddr)> {
    let mut held = Vec::new();
    for node in &cluster.lan().nodes {
        let out = std::process::Command::new("ip")
            .args(["-n", &node.ns, "-o", "address", "show", "dev", "eth0"])
            .output()
            .expect("ip address");
        let text = String::from_utf8_lossy(&out.stdout);
        for vip in vips {
            let prefix = format!(" {vip}/");
            if text.contains(&prefix) {
                let name = cluster.node_of_mac(node.mac).unwrap_or(&node.ns).to_owned();
                held.push((name, *vip));
            }
        }
    }
    held
}

/// kube-vip serves a dual-stack Service from its ConfigMap's range and one that asked for its
/// IP with kube-vip's annotation (one answer per VIP, the app reached); then, requests going
/// on to both, the switch as the migration guide tells it: kube-vip's ConfigMap converted with
/// `convert-kube-vip`, Herald installed with default values (it leaves kube-vip's Services as
/// they are, with a `ForeignIPs` Warning), kube-vip's cloud provider and DaemonSet removed
/// (kube-vip takes its VIPs off the nodes' interfaces as it stops), the converted
/// configuration applied, the rest of kube-vip removed. Every Service keeps its IPs, Herald's
/// controller adopts them, one node answers for each, and no client waits a second. Prints
/// the longest gap each client saw.
#[tokio::test]
async fn journey_from_kube_vip_to_herald_every_ip_kept() {
    herald_lab::init_tracing();
    let cluster = Cluster::start(ClusterOptions {
        kube_vip: true,
        ..ClusterOptions::default()
    })
    .await
    .expect("cluster");
    let client = cluster.client();
    if let Err(e) = cluster.install_kube_vip().await {
        panic!("installing kube-vip: {e:#}\n{}", cluster.diagnose());
    }
    deploy_web(&client, 2, Traffic::Cluster).await;
    apply(&client, PINNED).await;
    web_ready_on(&client, 2, SETTLE).await;
    let (v4, v6) = web_vips(&client).await;
    let pinned: IpAddr = "192.0.2.110".parse().expect("ip");
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    wait_for(&svcs, "pinned", "its requested IP", |s| {
        (ips(s) == [pinned.to_string()]).then_some(())
    })
    .await;
    let kube_vip_nodes: Vec<String> = [v4, v6, pinned]
        .iter()
        .map(|ip| cluster.one_answer(*ip, SETTLE, |_| true))
        .collect();
    let body = cluster
        .get_from_client(pinned, 80, Duration::from_secs(2))
        .unwrap_or_else(|e| {
            panic!(
                "GET {pinned} through kube-vip: {e:#}\n{}",
                cluster.diagnose()
            )
        });
    assert!(body.starts_with("pod=web-"), "{body}");
    let before = [
        ips(&svcs.get("web").await.expect("web")),
        vec![pinned.to_string()],
    ];
    println!("kube-vip serves {v4}, {v6} and {pinned} from {kube_vip_nodes:?}");

    let requests = Requests::start(&cluster, v4);
    let pinned_requests = Requests::start(&cluster, pinned);
    let started = Instant::now();
    // 1. kube-vip's ConfigMap converted while kube-vip still serves.
    let exported = cluster
        .kubectl(&[
            "-n",
            "kube-system",
            "get",
            "configmap",
            "kubevip",
            "-o",
            "yaml",
        ])
        .expect("kube-vip's ConfigMap");
    let (converted, _) = convert("convert-kube-vip", &exported);
    // 2. Herald installed with default values: it leaves kube-vip's Services alone and says
    //    why.
    if let Err(e) = cluster.install_herald(&[]) {
        panic!("helm install: {e:#}\n{}", cluster.diagnose());
    }
    let installed = started.elapsed();
    for (name, was) in ["web", "pinned"].iter().zip(&before) {
        let waiting = wait_for_event(&client, name, |e| e.reason == "ForeignIPs").await;
        assert!(
            waiting.message.contains(&was[0]),
            "{name}: {}",
            waiting.message
        );
    }
    // 3. kube-vip's cloud provider, then its speakers, each until its pods are gone.
    for workload in [
        "deployment/kube-vip-cloud-provider",
        "daemonset/kube-vip-ds",
    ] {
        cluster
            .kubectl(&[
                "-n",
                "kube-system",
                "delete",
                workload,
                "--cascade=foreground",
                "--timeout",
                "120s",
            ])
            .unwrap_or_else(|e| {
                panic!(
                    "deleting kube-vip's {workload}: {e:#}\n{}",
                    cluster.diagnose()
                )
            });
    }
    let speakers_gone = started.elapsed();
    // kube-vip took its VIPs off the interfaces as it stopped: no kernel goes on answering
    // beside Herald's speaker.
    let left = vips_on_nodes(&cluster, &[v4, v6, pinned]);
    assert!(
        left.is_empty(),
        "VIPs left on nodes after kube-vip stopped: {left:?}"
    );
    // 4. The converted configuration: Herald adopts the IPs in the statuses.
    apply(&client, &converted).await;
    for (name, was) in ["web", "pinned"].iter().zip(&before) {
        let kept = wait_for(
            &svcs,
            name,
            "Herald's condition on its IPs",
            allocated_by_herald,
        )
        .await;
        assert_eq!(&kept, was, "{name}: the IPs kube-vip had given it");
    }
    let adopted = started.elapsed();
    // 5. The rest of kube-vip: its RBAC, its cloud provider's, its ConfigMap.
    for what in [
        "serviceaccount/kube-vip",
        "serviceaccount/kube-vip-cloud-controller",
        "configmap/kubevip",
    ] {
        cluster
            .kubectl(&["-n", "kube-system", "delete", what, "--ignore-not-found"])
            .unwrap_or_else(|e| panic!("deleting {what}: {e:#}"));
    }
    for what in [
        "clusterrolebinding/system:kube-vip-binding",
        "clusterrole/system:kube-vip-role",
        "clusterrolebinding/system:kube-vip-cloud-controller-binding",
        "clusterrole/system:kube-vip-cloud-controller-role",
    ] {
        cluster
            .kubectl(&["delete", what, "--ignore-not-found"])
            .unwrap_or_else(|e| panic!("deleting {what}: {e:#}"));
    }
    let herald_nodes: Vec<String> = [v4, v6, pinned]
        .iter()
        .map(|ip| cluster.one_answer(*ip, SETTLE, |_| true))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = [
        ips(&svcs.get("web").await.expect("web")),
        ips(&svcs.get("pinned").await.expect("pinned")),
    ];
    assert_eq!(after, before, "the Services' IPs");
    let steps = format!(
        "from kube-vip to Herald (answering from {herald_nodes:?}): Herald installed after {:.1} s, kube-vip gone after {:.1} s, the IPs adopted after {:.1} s",
        installed.as_secs_f64(),
        speakers_gone.as_secs_f64(),
        adopted.as_secs_f64()
    );
    judge_switch("web", &steps, started, &requests.finish());
    judge_switch("pinned", &steps, started, &pinned_requests.finish());
    // Herald allocates for new Services from then on, from the converted pool, never an IP
    // a kube-vip Service holds.
    apply(&client, LATER).await;
    let later = wait_for(&svcs, "later", "an IP from Herald", allocated_by_herald).await;
    assert!(
        later
            .iter()
            .all(|ip| !after.iter().flatten().any(|taken| taken == ip)),
        "{later:?} against {after:?}"
    );
}
