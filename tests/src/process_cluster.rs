//! A Herald cluster on a LAN of network namespaces: Nodes registered on the real API server,
//! an IPPool and L2Advertisement, the controller, and speakers inside the node namespaces.
//! Shared by the speaker's end-to-end tests and its benchmark.

use std::net::IpAddr;
use std::process::Command;

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

use crate::netns::{self, Lan, command_in};
use crate::objects::apply;
use crate::{ControlPlane, Process};

pub const KEY: &str = "test-gossip-key-0123456789";
pub const PORT: u16 = 8080;
/// The speakers' default gossip port (`--gossip-port`), which the speakers here keep.
pub const GOSSIP_PORT: u16 = 9474;

pub async fn ready_node(client: &Client, name: &str, ip: &str, labels: &str) {
    apply(
        client,
        &format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{{labels}}}}}"),
    )
    .await;
    node_conditions(client, name, ip, &[("Ready", true)]).await;
}

/// Sets the Node's address and conditions, as its kubelet and network plugin would.
pub async fn node_conditions(client: &Client, name: &str, ip: &str, conditions: &[(&str, bool)]) {
    let conditions: Vec<serde_json::Value> = conditions
        .iter()
        .map(|(kind, status)| {
            serde_json::json!({"type": kind, "status": if *status { "True" } else { "False" },
                "reason": "Test", "message": "", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                "lastTransitionTime": "2026-01-01T00:00:00Z"})
        })
        .collect();
    let status = serde_json::json!({"apiVersion": "v1", "kind": "Node", "status": {
        "addresses": [{"type": "InternalIP", "address": ip}], "conditions": conditions}});
    Api::<Node>::all(client.clone())
        .patch_status(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&status),
        )
        .await
        .expect("node status");
}

pub fn speaker(cp: &ControlPlane, lan: &Lan, node: &str, key: &str, log: &str) -> Process {
    speaker_in(cp, &lan.node(node).ns, node, key, log)
}

/// A speaker on each node of `lan` (`n1`, `n2`...), with the shared gossip key, each
/// logging to `speaker-NODE`.
pub fn speakers(cp: &ControlPlane, lan: &Lan) -> Vec<Process> {
    (1..=lan.nodes.len())
        .map(|i| speaker(cp, lan, &format!("n{i}"), KEY, &format!("speaker-n{i}")))
        .collect()
}

/// A speaker named `node` in the network namespace `ns` (any namespace of the LAN).
pub fn speaker_in(cp: &ControlPlane, ns: &str, node: &str, key: &str, log: &str) -> Process {
    let cmd = speaker_command(cp, ns, node, key);
    Process::spawn(log, cmd, &cp.dir().join(format!("{log}.log"))).expect("speaker")
}

/// The command `speaker_in` runs, to change before spawning it (its environment, say).
pub fn speaker_command(cp: &ControlPlane, ns: &str, node: &str, key: &str) -> Command {
    // HERALD_SPEAKER_BIN: another build or a wrapper (a heap profiler, docs/benchmarks.md).
    let bin = match std::env::var_os("HERALD_SPEAKER_BIN") {
        Some(bin) => bin.into(),
        None => crate::bins::herald_binary("herald-speaker").expect("speaker binary"),
    };
    let mut cmd = command_in(ns, &bin);
    cmd.args([
        "run",
        "--node-name",
        node,
        "--metrics-address",
        "127.0.0.1:9473",
    ])
    .env("HERALD_GOSSIP_KEY", key)
    .env("KUBECONFIG", cp.kubeconfig())
    .env("RUST_LOG", "info,kube=warn");
    cmd
}

/// Makes every node accept traffic for `ips` the way kube-proxy does, without owning them as
/// interface addresses: a local route, so the kernel itself never answers ARP or NDP for
/// them (Linux answers Neighbor Solicitations for global addresses on any interface).
pub fn accept_locally(lan: &Lan, ips: &[IpAddr]) {
    for node in &lan.nodes {
        for ip in ips {
            let family = if ip.is_ipv4() { "-4" } else { "-6" };
            netns::ip(&[
                "-n",
                &node.ns,
                family,
                "route",
                "add",
                "local",
                &ip.to_string(),
                "dev",
                "lo",
                "table",
                "local",
            ])
            .expect("local route");
        }
    }
}

pub async fn setup(nodes: usize) -> (ControlPlane, Lan, Process) {
    crate::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let lan = Lan::create(nodes).expect("lan");
    let port = cp.port();
    lan.forward_api(port).expect("forward");
    lan.responders(PORT).expect("responders");
    let client = cp.client();
    for (i, host) in lan.nodes.iter().enumerate() {
        ready_node(&client, &format!("n{}", i + 1), &host.v4.to_string(), "").await;
    }
    apply(&client, "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {name: lan}\nspec: {addresses: [192.0.2.100-192.0.2.120, 2001:db8::100-2001:db8::120]}\n---\napiVersion: herald.dev/v1alpha1\nkind: L2Advertisement\nmetadata: {name: lan}\nspec: {}").await;
    let controller = crate::controller::spawn(&cp, "controller", &["--leader-elect=false"]).process;
    (cp, lan, controller)
}

/// Gives `service` (in `default`) one endpoint per `(node, ready)`, as an EndpointSlice.
pub async fn endpoints_on(client: &Client, service: &str, nodes: &[(&str, bool)]) {
    let endpoints: Vec<serde_json::Value> = nodes
        .iter()
        .enumerate()
        .map(|(i, (node, ready))| {
            serde_json::json!({"addresses": [format!("10.244.0.{}", i + 1)], "nodeName": node,
                "conditions": {"ready": ready, "serving": ready}})
        })
        .collect();
    let slice = serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "namespace": "default",
            "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "endpoints": endpoints, "ports": [{"port": 8080, "protocol": "TCP"}]});
    let api: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(client.clone(), "default");
    api.patch(
        &format!("{service}-1"),
        &PatchParams::apply("test").force(),
        &Patch::Apply(&slice),
    )
    .await
    .expect("endpoint slice");
}

/// LoadBalancer Services `(name, ip)` in `default` whose status says Herald's controller
/// allocated `ip` (written directly, as the controller would; their class is one no
/// controller serves), 32 at a time: what speakers announce, without a controller.
pub async fn allocated_services(
    client: &Client,
    services: &[(String, String)],
) -> anyhow::Result<()> {
    use futures::{StreamExt, TryStreamExt};
    let api: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "default");
    futures::stream::iter(services)
        .map(|(name, ip)| {
            let api = api.clone();
            async move { static_service(&api, name, "Cluster", ip).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// One LoadBalancer Service `name` in `default` with `externalTrafficPolicy: policy` and
/// `ip` written in its status as a controller would (a class no controller serves).
pub async fn static_service(
    api: &Api<k8s_openapi::api::core::v1::Service>,
    name: &str,
    policy: &str,
    ip: &str,
) -> anyhow::Result<()> {
    let svc = serde_yaml_ng::from_str(&format!(
        "metadata: {{name: {name}, namespace: default}}\nspec: {{type: LoadBalancer, externalTrafficPolicy: {policy}, allocateLoadBalancerNodePorts: false, loadBalancerClass: bench.example/static, ports: [{{port: 80}}]}}"
    ))?;
    api.create(&Default::default(), &svc).await?;
    let status = serde_json::json!({"apiVersion": "v1", "kind": "Service", "status": {
        "loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]},
        "conditions": [{"type": herald_api::keys::IP_ALLOCATED_CONDITION, "status": "True",
            "reason": "Allocated", "message": "static", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    api.patch_status(
        name,
        &PatchParams::apply("static").force(),
        &Patch::Apply(&status),
    )
    .await?;
    Ok(())
}

/// A LoadBalancer Service `web` (port 8080) in `default`, served by the controller: waits
/// for its IP and makes the nodes accept traffic to it; returns the IP.
pub async fn web_service(client: &Client, lan: &Lan) -> IpAddr {
    apply(client, "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {type: LoadBalancer, ports: [{port: 8080}]}").await;
    let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "default");
    let ip: IpAddr = crate::objects::wait_for(&svcs, "web", "an IP", |s| {
        crate::objects::ips(s).first().cloned()
    })
    .await
    .parse()
    .expect("an IP");
    accept_locally(lan, &[ip]);
    ip
}
