//! `herald-cluster-demo`: Herald's main job the way users run it, in plain words. A real
//! cluster on this machine (a control plane, three nodes each with containerd, kubelet and
//! kube-proxy, a client, one LAN), `helm install` of the chart with default values, an app
//! behind a LoadBalancer Service reached by the client through its VIP, then the announcing
//! node dies and the client's requests flow through another. `--keep` leaves it running
//! for kubectl until Ctrl-C.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use herald_lab::objects::apply;
use herald_lab::real_cluster::journey::{
    LAN_POOL, Requests, Traffic, deploy_web, failed, keep_web_off, longest_gap, web_ready_on,
    web_vips,
};
use herald_lab::real_cluster::{Cluster, ClusterOptions, NAMESPACE, mac_text};

#[tokio::main]
async fn main() -> Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo runs nodes in network namespaces: run it as root");
    }
    println!(
        "Building the images (Herald, pause, a test app) and starting a real cluster: etcd, kube-apiserver,\n\
         kube-controller-manager and kube-scheduler, and three nodes each running containerd, kubelet and\n\
         kube-proxy in its own network namespace, with a client, on one LAN (192.0.2.0/24, 2001:db8::/64)..."
    );
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    println!(
        "Cluster ready in {:.1}s: nodes n1 {}, n2 {}, n3 {}; client {}.",
        cluster.startup().as_secs_f64(),
        cluster.nodes[0].host.v4,
        cluster.nodes[1].host.v4,
        cluster.nodes[2].host.v4,
        cluster.client_host().v4
    );

    let started = Instant::now();
    cluster.install_herald(&[])?;
    println!(
        "\n1. helm install herald charts/herald --namespace {NAMESPACE} (default values, the image built here):\n   \
         the controller (2 replicas) and a speaker on every node are Ready after {:.1}s.",
        started.elapsed().as_secs_f64()
    );
    let client = cluster.client();
    apply(&client, LAN_POOL).await;
    println!(
        "2. Applied IPPool 'lan' (192.0.2.100-192.0.2.119, 2001:db8::100-2001:db8::11f) and an L2Advertisement\n   \
         with no interfaces (each node announces on the link of the IP's subnet)."
    );
    deploy_web(&client, 2, Traffic::Cluster).await;
    web_ready_on(&client, 2, Duration::from_secs(60)).await;
    let (v4, v6) = web_vips(&client).await;
    println!(
        "3. Deployment 'web' (2 pods) behind Service 'web' (type LoadBalancer, dual-stack) got {v4} and {v6}."
    );
    let owner = cluster.one_answer(v4, Duration::from_secs(30), |_| true);
    let owner6 = cluster.one_answer(v6, Duration::from_secs(30), |_| true);
    println!(
        "4. The client's ARP request for {v4} got exactly one answer, from {owner} ({}); its Neighbor\n   \
         Solicitation for {v6} one answer, from {owner6}.",
        mac_text(cluster.node(&owner).host.mac)
    );
    for vip in [v4, v6] {
        let body = cluster.get_from_client(vip, 80, Duration::from_secs(2))?;
        println!("   GET http://{vip}/ from the client, through kube-proxy: \"{body}\"");
    }

    // The app leaves the announcing node first, so what the client sees next is Herald's
    // failover alone (a dead node's pods stay endpoints until its Lease runs out).
    keep_web_off(&client, &owner).await;
    web_ready_on(&client, 2, Duration::from_secs(60)).await;
    let requests = Requests::start(&cluster, v4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.kill_node(&owner)?;
    println!(
        "\n5. Node {owner} died: its kubelet, containerd, kube-proxy and pods killed, its link down. The client keeps\n   \
         sending requests to {v4}..."
    );
    let next = cluster.one_answer(v4, Duration::from_secs(30), |n| n != owner);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcomes = requests.finish();
    println!(
        "6. Node {next} took over {v4}: the longest time the client went without an answer was {} ms\n   \
         ({} of {} requests failed).",
        longest_gap(&outcomes).as_millis(),
        failed(&outcomes),
        outcomes.len()
    );

    if keep {
        // The dead node stays registered (Ready until its Lease runs out, then NotReady) and
        // would still take new pods: removed, as an operator removes a machine that is gone.
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
        nodes.delete(&owner, &Default::default()).await?;
        println!(
            "\n7. Node {owner} is dead for good: its Node object is deleted, so nothing is scheduled on it\n   \
             (its pods are garbage-collected); the cluster you keep has the other nodes."
        );
        let bins = herald_lab::bins::bin_dir();
        println!(
            "\nStill running. In another shell:\n  export KUBECONFIG={}\n  {bins}/kubectl get nodes,pods -A -o wide\n  \
             {bins}/kubectl get svc,ippools,l2advertisements,l2announcements\n  {bins}/helm list -A\n\
             Ctrl-C stops and removes everything.",
            cluster.kubeconfig().display(),
            bins = bins.display()
        );
        tokio::signal::ctrl_c().await?;
    }
    println!("\nCleaning up: every process, mount, cgroup, namespace and file of the cluster.");
    drop(cluster);
    Ok(())
}
