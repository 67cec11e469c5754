//! `herald-demo`: Herald's main job on one machine, in plain words. A local control plane,
//! three "nodes" and a client as network namespaces on one LAN, the controller, a speaker per
//! node, and a LoadBalancer Service whose IP answers. Then the owning node's speaker is killed
//! and the client reaches the next node. `--keep` leaves it running until Ctrl-C.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use herald_lab::Process;
use herald_lab::netns::{Lan, resolve, tcp_hello};
use herald_lab::objects::{apply, ips, wait_for};
use herald_lab::process_cluster::{PORT, accept_locally, setup, speakers};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;

fn answering(
    lan: &Lan,
    ip: IpAddr,
    not: Option<&str>,
    within: Duration,
) -> Result<(String, [u8; 6])> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let [m] = resolve(&lan.client, ip, Duration::from_millis(100))?.as_slice()
            && let Some(node) = lan.node_of_mac(*m)
            && Some(node.as_str()) != not
        {
            return Ok((node, *m));
        }
    }
    bail!("nobody answered for {ip} within {within:?}")
}

#[tokio::main]
async fn main() -> Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces: run it as root");
    }
    println!(
        "Starting a local control plane (etcd + kube-apiserver), three node namespaces and a client..."
    );
    let started = Instant::now();
    let (cp, lan, _controller) = setup(3).await;
    let client = cp.client();
    let mut speakers: Vec<Process> = speakers(&cp, &lan);
    println!(
        "Ready in {:.1}s: nodes n1 {}, n2 {}, n3 {} on one LAN; client {}; controller and 3 speakers running.",
        started.elapsed().as_secs_f64(),
        lan.nodes[0].v4,
        lan.nodes[1].v4,
        lan.nodes[2].v4,
        lan.client.v4
    );
    println!(
        "Applied IPPool 'lan' (192.0.2.100-192.0.2.120, 2001:db8::100-2001:db8::120) and L2Advertisement 'lan' (every node, on the interface in the IPs' subnet)."
    );

    apply(&client, "apiVersion: v1\nkind: Service\nmetadata: {name: hello, namespace: default}\nspec: {type: LoadBalancer, ports: [{port: 8080}]}").await;
    // Its endpoints: a responder on every node (what kube-proxy would forward to).
    herald_lab::process_cluster::endpoints_on(
        &client,
        "hello",
        &[("n1", true), ("n2", true), ("n3", true)],
    )
    .await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let ip: IpAddr = wait_for(&svcs, "hello", "an IP", |s| ips(s).first().cloned())
        .await
        .parse()
        .context("Service IP")?;
    println!("\n1. Service default/hello (type LoadBalancer) was assigned {ip}.");
    accept_locally(&lan, &[ip]);

    let (owner, owner_mac) = answering(&lan, ip, None, Duration::from_secs(15))?;
    println!(
        "2. Node {owner} announces it: the client's ARP request for {ip} got exactly one answer, from {} ({owner}'s eth0).",
        herald_lab::real_cluster::mac_text(owner_mac)
    );
    let reached = tcp_hello(&lan.client, ip, PORT)?;
    println!("3. The client connected to {ip}:{PORT} over TCP and was answered by node {reached}.");

    let i: usize = owner.trim_start_matches('n').parse::<usize>()? - 1;
    let killed = Instant::now();
    speakers[i].kill();
    println!("\n4. Killed {owner}'s speaker with SIGKILL...");
    let (next, _) = answering(&lan, ip, Some(&owner), Duration::from_secs(10))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut now_reached = String::new();
    while Instant::now() < deadline {
        if let Ok(n) = tcp_hello(&lan.client, ip, PORT)
            && n != owner
        {
            now_reached = n;
            break;
        }
    }
    println!(
        "5. Node {next} took over: the client's TCP connection to {ip}:{PORT} now reaches node {now_reached}, {:.2}s after the kill.",
        killed.elapsed().as_secs_f64()
    );

    if keep {
        println!(
            "\nStill running. In another shell:\n  export KUBECONFIG={}\n  {}/kubectl get svc,ippools,l2advertisements,l2announcements\nCtrl-C stops and removes everything.",
            cp.kubeconfig().display(),
            herald_lab::bins::bin_dir().display()
        );
        tokio::signal::ctrl_c().await?;
    }
    println!("\nCleaning up (processes, namespaces, control plane).");
    drop(speakers);
    drop(lan);
    drop(cp);
    Ok(())
}
