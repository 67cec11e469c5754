//! Herald as users install it: the chart installed with `helm install` (default values, the
//! image built here) on a real cluster of kubelet, containerd and kube-proxy nodes
//! (tests/src/real_cluster), judged by a client on the LAN. One cluster at a time; every test is
//! named `journey_*` (scripts/test runs them once, on the current Kubernetes).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use herald_lab::objects::{apply, ips};
use herald_lab::real_cluster::journey::{
    LAN_POOL, Requests, Traffic, deploy_web, failed, keep_web_off, longest_gap, pin_web_to,
    roll_speakers_under, web_ready_on, web_vips,
};
use herald_lab::real_cluster::routed::Routed;
use herald_lab::real_cluster::{Cluster, ClusterOptions, NodeLink, ProxyMode};
use herald_lab::router::{LAN_ROUTER_ASN, Peering, Router};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;

const SETTLE: Duration = Duration::from_secs(30);

async fn cluster_with_herald(options: ClusterOptions) -> Cluster {
    herald_lab::init_tracing();
    let cluster = Cluster::start(options).await.expect("cluster");
    if let Err(e) = cluster.install_herald(&[]) {
        panic!("helm install: {e:#}\n{}", cluster.diagnose());
    }
    apply(&cluster.client(), LAN_POOL).await;
    cluster
}

/// A Deployment behind a LoadBalancer Service is reached through both VIPs, with
/// kube-proxy (nftables, its default) in the path, and exactly one node answers ARP and NDP
/// for them.
#[tokio::test]
async fn journey_service_reached_through_one_answer_per_vip() {
    service_reached_through_one_answer_per_vip(ProxyMode::Nftables).await;
}

/// The journey above with kube-proxy in iptables mode.
#[tokio::test]
async fn journey_service_reached_with_kube_proxy_in_iptables_mode() {
    service_reached_through_one_answer_per_vip(ProxyMode::Iptables).await;
}

async fn service_reached_through_one_answer_per_vip(proxy_mode: ProxyMode) {
    let cluster = cluster_with_herald(ClusterOptions {
        proxy_mode,
        ..ClusterOptions::default()
    })
    .await;
    let client = cluster.client();
    deploy_web(&client, 2, Traffic::Cluster).await;
    web_ready_on(&client, 2, SETTLE).await;
    let (v4, v6) = web_vips(&client).await;
    for vip in [v4, v6] {
        let owner = cluster.one_answer(vip, SETTLE, |_| true);
        assert!(
            cluster.nodes.iter().any(|n| n.name == owner),
            "{vip} answered by {owner}, not a node"
        );
        for _ in 0..20 {
            assert_eq!(cluster.answers(vip), vec![owner.clone()], "{vip}");
        }
        let body = cluster
            .get_from_client(vip, 80, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("GET {vip}: {e:#}\n{}", cluster.diagnose()));
        assert!(body.starts_with("pod=web-"), "{vip}: {body}");
    }
}

/// `externalTrafficPolicy: Local` keeps the client's address, only a node with a
/// ready pod announces, and the announcement follows the pod.
#[tokio::test]
async fn journey_local_traffic_keeps_the_client_address_and_follows_the_pod() {
    let cluster = cluster_with_herald(ClusterOptions::default()).await;
    let client = cluster.client();
    let client_ip = cluster.client_host().v4.to_string();
    deploy_web(&client, 1, Traffic::Local).await;
    pin_web_to(&client, "n2").await;
    assert_eq!(web_ready_on(&client, 1, SETTLE).await, ["n2"]);
    let (v4, v6) = web_vips(&client).await;
    for vip in [v4, v6] {
        assert_eq!(cluster.one_answer(vip, SETTLE, |n| n == "n2"), "n2");
    }
    kubectl_herald_says_what_the_client_sees(&cluster, &[v4, v6]).await;
    // Every request lands on the node with the pod, and the pod sees the client itself.
    for _ in 0..20 {
        let body = cluster
            .get_from_client(v4, 80, Duration::from_secs(2))
            .expect("GET through the VIP");
        assert!(
            body.ends_with(&format!("client={client_ip}")),
            "the pod saw another address than the client's {client_ip}: {body}"
        );
    }
    // The pod moves: so does the announcement, and requests keep landing on a pod.
    pin_web_to(&client, "n3").await;
    assert_eq!(web_ready_on(&client, 1, SETTLE).await, ["n3"]);
    for vip in [v4, v6] {
        assert_eq!(cluster.one_answer(vip, SETTLE, |n| n == "n3"), "n3");
    }
    let body = cluster
        .get_from_client(v4, 80, Duration::from_secs(2))
        .expect("GET after the move");
    assert!(body.ends_with(&format!("client={client_ip}")), "{body}");
    // Scaled to a pod on every node but n1: one node answers, never n1.
    keep_web_off(&client, "n1").await;
    herald_lab::real_cluster::journey::patch_web(
        &client,
        serde_json::json!({"spec": {"replicas": 2, "template": {"spec": {"nodeSelector": null,
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}},
                "matchLabelKeys": ["pod-template-hash"]}]}}}}),
    )
    .await;
    let mut nodes = web_ready_on(&client, 2, SETTLE).await;
    nodes.sort();
    assert_eq!(nodes, ["n2", "n3"]);
    for vip in [v4, v6] {
        let owner = cluster.one_answer(vip, SETTLE, |n| n == "n2" || n == "n3");
        for _ in 0..10 {
            assert_eq!(cluster.answers(vip), vec![owner.clone()]);
        }
    }
}

/// `kubectl herald` (the plugin on the PATH, as users install it) names the node the
/// client's ARP and NDP asks are answered by, and says why the others may not announce; its
/// pools and nodes reports agree.
async fn kubectl_herald_says_what_the_client_sees(cluster: &Cluster, vips: &[IpAddr]) {
    let json = |args: &[&str]| -> serde_json::Value {
        let out = cluster
            .kubectl_herald(&[args, &["-o", "json"]].concat())
            .unwrap_or_else(|e| panic!("kubectl herald {args:?}: {e:#}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    };
    let explained = json(&["explain", "svc/web"]);
    for vip in vips {
        let on_the_wire = cluster.answers(*vip);
        let address = explained["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["ip"] == vip.to_string())
            .unwrap_or_else(|| panic!("{vip} not explained: {explained:#}"));
        assert_eq!(
            [address["answeredBy"].as_str().unwrap_or("nobody")],
            on_the_wire.as_slice(),
            "{vip}: {address:#}"
        );
        assert_eq!(address["pool"], "lan", "{address:#}");
    }
    for node in ["n1", "n3"] {
        let verdict = explained["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["node"] == node)
            .unwrap_or_else(|| panic!("{node} not listed: {explained:#}"));
        assert_eq!(
            verdict["whyNot"][0],
            "no ready endpoint of the Service on it (externalTrafficPolicy: Local)",
            "{verdict:#}"
        );
    }
    let text = cluster
        .kubectl_herald(&["explain", "svc/web"])
        .expect("kubectl herald explain");
    assert!(
        text.contains(&format!("{}: IPPool lan", vips[0])) && text.contains("by node n2 on "),
        "{text}"
    );
    let pools = json(&["pools"]);
    let lan = &pools["pools"][0];
    assert_eq!(
        (&lan["name"], &lan["assigned"]),
        (&"lan".into(), &2.into()),
        "{pools:#}"
    );
    let nodes = json(&["nodes"]);
    let n2 = nodes
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == "n2")
        .unwrap_or_else(|| panic!("n2: {nodes:#}"));
    assert_eq!(n2["speakerReady"], true, "{n2:#}");
    let answers: Vec<&str> = n2["answersFor"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(answers.len(), 2, "{n2:#}");
    assert!(
        answers.iter().all(|a| a.starts_with("default/web ")),
        "{n2:#}"
    );
}

/// Nodes whose address sits on a bridge or a macvlan announce with the default
/// L2Advertisement, from the MAC of the device holding the address.
#[tokio::test]
async fn journey_nodes_on_a_bridge_or_macvlan_announce() {
    let cluster = cluster_with_herald(ClusterOptions {
        links: vec![NodeLink::Bridge, NodeLink::Macvlan, NodeLink::Plain],
        ..ClusterOptions::default()
    })
    .await;
    let client = cluster.client();
    deploy_web(&client, 1, Traffic::Local).await;
    for node in ["n1", "n2"] {
        pin_web_to(&client, node).await;
        assert_eq!(web_ready_on(&client, 1, SETTLE).await, [node]);
        let (v4, v6) = web_vips(&client).await;
        for vip in [v4, v6] {
            assert_eq!(
                cluster.one_answer(vip, SETTLE, |n| n == node),
                node,
                "{vip} on {node}\n{}",
                cluster.diagnose()
            );
        }
        let body = cluster
            .get_from_client(v4, 80, Duration::from_secs(2))
            .expect("GET through the VIP");
        assert!(body.starts_with("pod=web-"), "{body}");
    }
}

/// The announcing node dies (kubelet, containerd, kube-proxy and its pods killed);
/// the client's requests flow again through another node. Prints the gap it saw.
#[tokio::test]
async fn journey_node_death_moves_the_vip() {
    let mut cluster = cluster_with_herald(ClusterOptions::default()).await;
    let client = cluster.client();
    deploy_web(&client, 2, Traffic::Cluster).await;
    let (v4, _) = web_vips(&client).await;
    let owner = cluster.one_answer(v4, SETTLE, |_| true);
    // The app runs elsewhere: the gap measured is Herald's, not the endpoints' (a dead node's
    // pods stay endpoints until its Lease expires, ~50 s).
    keep_web_off(&client, &owner).await;
    let nodes = web_ready_on(&client, 2, SETTLE).await;
    assert!(!nodes.contains(&owner), "{nodes:?}");
    let requests = Requests::start(&cluster, v4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.kill_node(&owner).expect("killing the node");
    let next = cluster.one_answer(v4, SETTLE, |n| n != owner);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = requests.finish();
    let gap = longest_gap(&outcomes);
    println!(
        "node death: {owner} killed, {next} answers; longest client gap {} ms, {} of {} requests failed",
        gap.as_millis(),
        failed(&outcomes),
        outcomes.len()
    );
    assert!(
        outcomes.last().is_some_and(|o| o.answer.is_some()),
        "requests did not flow again: {:?}",
        outcomes.last()
    );
    assert!(gap < Duration::from_secs(5), "gap {gap:?}");
}

/// `helm upgrade` with a changed value rolls every speaker under steady traffic;
/// the VIP is never unanswered for longer than a failover. Prints the gap.
#[tokio::test]
async fn journey_rolling_upgrade_keeps_the_vip() {
    let cluster = cluster_with_herald(ClusterOptions::default()).await;
    let client = cluster.client();
    deploy_web(&client, 2, Traffic::Cluster).await;
    web_ready_on(&client, 2, SETTLE).await;
    let (v4, _) = web_vips(&client).await;
    cluster.one_answer(v4, SETTLE, |_| true);
    let (rolled, outcomes) = roll_speakers_under(&cluster, Requests::start(&cluster, v4)).await;
    let gap = longest_gap(&outcomes);
    println!(
        "rolling upgrade ({}): longest client gap {} ms, {} of {} requests failed",
        rolled.trim(),
        gap.as_millis(),
        failed(&outcomes),
        outcomes.len()
    );
    assert!(gap < Duration::from_secs(1), "gap {gap:?}");
    cluster.one_answer(v4, SETTLE, |_| true);
    // Handing IPs over and back is no foreign answer.
    let events = herald_lab::objects::events(&client, "web").await;
    assert!(
        events.iter().all(|e| e.reason != "ForeignAnswer"),
        "{events:?}"
    );
}

/// Another host answers ARP for a VIP Herald announces (kube-proxy's IPVS mode
/// without strictARP binds every Service IP on every node; here the VIP is bound to another
/// node's loopback with the kernel's default `arp_ignore`). The announcing speaker notices:
/// a Warning Event on the Service and a metric naming the other MAC and the fix.
#[tokio::test]
async fn journey_a_foreign_answer_for_a_vip_is_reported() {
    let cluster = cluster_with_herald(ClusterOptions::default()).await;
    let client = cluster.client();
    deploy_web(&client, 1, Traffic::Cluster).await;
    web_ready_on(&client, 1, SETTLE).await;
    let (v4, _) = web_vips(&client).await;
    let owner = cluster.one_answer(v4, SETTLE, |_| true);
    let other = cluster
        .nodes
        .iter()
        .find(|n| n.name != owner)
        .expect("another node");
    let ns = other.host.ns.clone();
    let other_mac = herald_lab::real_cluster::mac_text(other.host.mac);
    for key in [
        "net.ipv4.conf.all.arp_ignore",
        "net.ipv4.conf.eth0.arp_ignore",
    ] {
        herald_lab::netns::sysctl(&ns, key, "0").expect("default arp_ignore");
    }
    herald_lab::netns::ip(&["-n", &ns, "addr", "add", &format!("{v4}/32"), "dev", "lo"])
        .expect("binding the VIP");
    // The trap, as a client sees it: two answers.
    let mut both = false;
    for _ in 0..20 {
        let answers = cluster.answers(v4);
        if answers.len() == 2 {
            both = true;
            break;
        }
    }
    assert!(both, "the other node's kernel does not answer for {v4}");
    let message = herald_lab::objects::wait_for_event(&client, "web", |e| {
        e.kind == "Warning" && e.reason == "ForeignAnswer"
    })
    .await
    .message;
    assert!(
        message.contains(&other_mac) && message.contains(&owner) && message.contains("strictARP"),
        "{message}"
    );
    let metrics = herald_lab::netns::http_get_in(&cluster.node(&owner).host.ns, 9473, "/metrics")
        .expect("speaker metrics");
    let series = format!("herald_speaker_foreign_answers{{ip=\"{v4}\",mac=\"{other_mac}\"}} 1");
    assert!(metrics.contains(&series), "no {series} in:\n{metrics}");
}

/// `helm install` with default values runs the controller and one Ready speaker
/// per node, a pool and an advertisement with no interfaces are enough to serve a Service, and
/// `helm uninstall` leaves nothing of Herald's behind but its CRDs.
#[tokio::test]
async fn journey_helm_install_serves_and_uninstall_leaves_nothing() {
    let cluster = cluster_with_herald(ClusterOptions::default()).await;
    let ns = herald_lab::real_cluster::NAMESPACE;
    let jsonpath = |kind: &str, path: &str| {
        cluster
            .kubectl(&["-n", ns, "get", kind, "-o", &format!("jsonpath={path}")])
            .unwrap_or_else(|e| panic!("{kind}: {e:#}"))
    };
    assert_eq!(
        jsonpath("deployment/herald-controller", "{.status.readyReplicas}"),
        "2"
    );
    assert_eq!(
        jsonpath("daemonset/herald-speaker", "{.status.numberReady}"),
        "3"
    );
    let mut speaker_nodes: Vec<String> = jsonpath(
        "pods",
        "{range .items[?(@.metadata.labels.app\\.kubernetes\\.io/component==\"speaker\")]}{.spec.nodeName} {end}",
    )
    .split_whitespace()
    .map(str::to_owned)
    .collect();
    speaker_nodes.sort();
    assert_eq!(speaker_nodes, ["n1", "n2", "n3"]);

    let client = cluster.client();
    deploy_web(&client, 1, Traffic::Cluster).await;
    web_ready_on(&client, 1, SETTLE).await;
    let (v4, v6) = web_vips(&client).await;
    for vip in [v4, v6] {
        cluster.one_answer(vip, SETTLE, |_| true);
    }
    let records = || {
        cluster
            .kubectl(&["get", "l2announcements", "-A", "-o", "name"])
            .expect("listing L2Announcements")
    };
    herald_lab::client_view::eventually("L2Announcements written", SETTLE, || {
        records().lines().count() == 2
    });

    cluster
        .helm(&[
            "uninstall",
            herald_lab::real_cluster::RELEASE,
            "-n",
            ns,
            "--wait",
            "--timeout",
            "120s",
        ])
        .expect("helm uninstall");
    let left = || {
        let mut left = records();
        for kind in [
            "leases",
            "secrets",
            "pods",
            "configmaps,serviceaccounts,services",
        ] {
            let names = cluster
                .kubectl(&["-n", ns, "get", kind, "-o", "name"])
                .unwrap_or_default();
            // Kubernetes' own: the namespace's root CA and default ServiceAccount.
            left.extend(
                names
                    .lines()
                    .filter(|n| !n.ends_with("/kube-root-ca.crt") && !n.ends_with("/default"))
                    .map(|n| format!("{n}\n")),
            );
        }
        left
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = left();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left a minute after helm uninstall:\n{left}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The CRDs stay (helm.sh/resource-policy: keep), and with them the users' pools.
    assert!(cluster.kubectl(&["get", "ippools", "lan"]).is_ok());
}

/// Applies a `helm template` render with `kubectl apply -f`, as a GitOps tool would, and
/// waits for the controller and the speakers to be rolled out.
fn apply_render(cluster: &Cluster, render: &str) {
    let ns = herald_lab::real_cluster::NAMESPACE;
    cluster
        .kubectl_apply(render)
        .unwrap_or_else(|e| panic!("kubectl apply: {e:#}"));
    for what in ["deployment/herald-controller", "daemonset/herald-speaker"] {
        if let Err(e) = cluster.rollout_status(ns, what, "180s") {
            panic!("{what} not rolled out: {e:#}\n{}", cluster.diagnose());
        }
    }
}

/// Herald's pods as `name uid restarts`, one per line, sorted.
fn herald_pods(cluster: &Cluster) -> String {
    let out = cluster
        .kubectl(&[
            "-n",
            herald_lab::real_cluster::NAMESPACE,
            "get",
            "pods",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.metadata.uid} {.status.containerStatuses[0].restartCount}{\"\\n\"}{end}",
        ])
        .expect("pods");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    lines.join("\n")
}

fn gossip_key(cluster: &Cluster) -> String {
    cluster
        .kubectl(&[
            "-n",
            herald_lab::real_cluster::NAMESPACE,
            "get",
            "secret",
            "herald-gossip",
            "-o",
            "jsonpath={.data.key}",
        ])
        .expect("the gossip Secret")
}

/// GitOps. `helm template` piped to `kubectl apply` (what Argo CD and Flux do):
/// two renders of the same values are identical, the first serves, and applying a later
/// render over it changes nothing: the same gossip key, no pod restarted, one answer per VIP.
#[tokio::test]
async fn journey_gitops_renders_applied_in_turn_change_nothing() {
    herald_lab::init_tracing();
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster");
    let first = cluster.render_herald(&[]).expect("helm template");
    cluster
        .kubectl(&["create", "namespace", herald_lab::real_cluster::NAMESPACE])
        .expect("namespace");
    apply_render(&cluster, &first);
    let client = cluster.client();
    apply(&client, LAN_POOL).await;
    deploy_web(&client, 2, Traffic::Cluster).await;
    web_ready_on(&client, 2, SETTLE).await;
    let (v4, v6) = web_vips(&client).await;
    let owners: Vec<String> = [v4, v6]
        .iter()
        .map(|vip| cluster.one_answer(*vip, SETTLE, |_| true))
        .collect();
    let (key, pods) = (gossip_key(&cluster), herald_pods(&cluster));
    assert!(key.len() > 40, "no gossip key: {key:?}");

    // Later, the tool renders again and applies.
    let second = cluster.render_herald(&[]).expect("helm template");
    assert_eq!(first, second, "two renders of the same values differ");
    apply_render(&cluster, &second);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        gossip_key(&cluster),
        key,
        "applying a render again changed the gossip key"
    );
    assert_eq!(
        herald_pods(&cluster),
        pods,
        "applying a render again restarted pods"
    );
    for (vip, owner) in [v4, v6].iter().zip(&owners) {
        for _ in 0..20 {
            assert_eq!(&cluster.answers(*vip), &vec![owner.clone()], "{vip}");
        }
        let body = cluster
            .get_from_client(*vip, 80, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("GET {vip}: {e:#}\n{}", cluster.diagnose()));
        assert!(body.starts_with("pod=web-"), "{vip}: {body}");
    }
}

/// beside MetalLB. Its speakers' memberlist holds port 7946 (UDP and TCP) on
/// every node's host network; Herald installed with default values runs there, and serves.
#[tokio::test]
async fn journey_side_by_side_with_a_memberlist_on_7946() {
    herald_lab::init_tracing();
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster");
    // A stand-in for memberlist on each node: the sockets it binds (kept open here).
    let mut memberlist = Vec::new();
    for node in &cluster.nodes {
        let sockets = herald_lab::netns::in_ns(&node.host.ns, || {
            (
                std::net::UdpSocket::bind("0.0.0.0:7946").expect("UDP 7946"),
                std::net::TcpListener::bind("0.0.0.0:7946").expect("TCP 7946"),
            )
        })
        .expect("in the node's namespace");
        memberlist.push(sockets);
    }
    if let Err(e) = cluster.install_herald(&[]) {
        panic!(
            "helm install beside a memberlist on 7946: {e:#}\n{}",
            cluster.diagnose()
        );
    }
    let client = cluster.client();
    apply(&client, LAN_POOL).await;
    deploy_web(&client, 2, Traffic::Cluster).await;
    web_ready_on(&client, 2, SETTLE).await;
    let (v4, v6) = web_vips(&client).await;
    for vip in [v4, v6] {
        let owner = cluster.one_answer(vip, SETTLE, |_| true);
        for _ in 0..10 {
            assert_eq!(cluster.answers(vip), vec![owner.clone()], "{vip}");
        }
        let body = cluster
            .get_from_client(vip, 80, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("GET {vip}: {e:#}\n{}", cluster.diagnose()));
        assert!(body.starts_with("pod=web-"), "{vip}: {body}");
    }
    drop(memberlist);
}

/// BGP mode as users install it: `helm install` with default values, a `BGPPeer` to the
/// rack's router (FRR) with graceful restart, and a client behind the router. The router
/// installs a route to the Service IP through every node (ECMP), the client is served
/// through it, and a rolling upgrade of the speakers (`helm upgrade`) fails no request: the
/// router keeps each restarting node's route until its new speaker has sent it again.
#[tokio::test]
async fn journey_bgp_serves_a_client_behind_the_router_through_a_rolling_upgrade() {
    let routed = routed_herald().await;
    let (cluster, router, far) = (&routed.cluster, &routed.router, &routed.far);
    let client = cluster.client();
    deploy_web(&client, 2, Traffic::Cluster).await;
    web_ready_on(&client, 2, SETTLE).await;
    apply(
        &client,
        "apiVersion: v1
kind: Service
metadata: {name: web-routed, namespace: default, annotations: {herald.dev/pool: routed}}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]",
    )
    .await;
    let vip = routed.vip_of("web-routed").await;
    let prefix = format!("{vip}/32");
    let every_node = routed.every_node();
    router
        .wait_for("a route through every node", SETTLE, || {
            (router.kernel_next_hops(&prefix) == every_node).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.diagnose()));
    until_served(&routed, vip).await;

    let (rolled, outcomes) = roll_speakers_under(cluster, Requests::start_in(&far.ns, vip)).await;
    let gap = longest_gap(&outcomes);
    println!(
        "BGP rolling upgrade ({}): longest gap {} ms, {} of {} requests from behind the router failed",
        rolled.trim(),
        gap.as_millis(),
        failed(&outcomes),
        outcomes.len()
    );
    assert_eq!(failed(&outcomes), 0, "longest gap {gap:?}");
    router
        .wait_for("every node's route back", SETTLE, || {
            (router.kernel_next_hops(&prefix) == every_node).then_some(())
        })
        .expect("routes after the upgrade");
}

/// `helm upgrade` that rolls the controller (default values: two replicas, one leading)
/// while Services keep being created: the Lease changes hands, every Service gets an IP,
/// none twice, none renumbered, and none waits for a leader to appear: a released Lease is
/// taken at once, not after the 15 s it would take to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journey_helm_upgrade_of_the_controller_keeps_allocating() {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::time::Instant;

    let cluster = cluster_with_herald(ClusterOptions::default()).await;
    let client = cluster.client();
    let holder = || {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(client.clone(), herald_lab::real_cluster::NAMESPACE);
        async move {
            leases
                .get("herald-controller")
                .await
                .ok()
                .and_then(|l| l.spec?.holder_identity)
        }
    };
    // Room for every Service created meanwhile (198.18.0.0/15 is for benchmarks: only the
    // lab's namespaces see it).
    apply(
        &client,
        "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {name: bulk}\nspec: {addresses: [198.18.0.0/22], autoAssign: false}",
    )
    .await;
    let before = holder().await.expect("a leader before the upgrade");
    let creating = Arc::new(AtomicBool::new(true));
    // Set only once the creator has returned: a create still in flight when `creating` drops
    // is not in a list the watcher made before it, so the watcher must not stop on `creating`.
    let all_created = Arc::new(AtomicBool::new(false));
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    // One Service every 250 ms, and the first time each is seen with an IP.
    let creator = tokio::spawn({
        let (services, creating) = (services.clone(), creating.clone());
        async move {
            let mut created = BTreeMap::new();
            let mut i = 0;
            while creating.load(Ordering::Relaxed) {
                let name = format!("during-{i:03}");
                let svc: Service = serde_yaml_ng::from_str(&format!(
                    "metadata: {{name: {name}, annotations: {{herald.dev/pool: bulk}}}}\nspec: {{type: LoadBalancer, ports: [{{port: 80}}]}}"
                ))
                .expect("service");
                services
                    .create(&Default::default(), &svc)
                    .await
                    .expect("create");
                created.insert(name, Instant::now());
                i += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            created
        }
    });
    let watcher = tokio::spawn({
        let (services, all_created) = (services.clone(), all_created.clone());
        async move {
            let mut seen: BTreeMap<String, (Instant, Vec<String>)> = BTreeMap::new();
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                // Read before the list: a list started after the creator returned holds
                // every Service it made.
                let finished = all_created.load(Ordering::Acquire);
                let list = services.list(&Default::default()).await.expect("list");
                let now = Instant::now();
                let mut waiting = 0;
                for svc in &list.items {
                    let name = svc.metadata.name.clone().unwrap_or_default();
                    if !name.starts_with("during-") {
                        continue;
                    }
                    match ips(svc) {
                        got if got.is_empty() => waiting += 1,
                        got => {
                            let first = seen.entry(name.clone()).or_insert((now, got.clone()));
                            assert_eq!(first.1, got, "{name} was renumbered");
                        }
                    }
                }
                if finished && waiting == 0 {
                    return seen;
                }
                assert!(Instant::now() < deadline, "{waiting} Services still wait");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let upgraded = tokio::task::block_in_place(|| {
        cluster.upgrade_herald(&["--set", "controller.podAnnotations.rolled=again"])
    });
    if let Err(e) = upgraded {
        panic!("helm upgrade: {e:#}\n{}", cluster.diagnose());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    creating.store(false, Ordering::Relaxed);
    let created = creator.await.expect("creator");
    all_created.store(true, Ordering::Release);
    let seen = watcher.await.expect("watcher");
    let after = holder().await.expect("a leader after the upgrade");
    assert_ne!(before, after, "the upgrade did not move the Lease");

    let mut waits: Vec<(Duration, &String)> = created
        .iter()
        .map(|(name, at)| {
            let (got, _) = seen
                .get(name)
                .unwrap_or_else(|| panic!("{name} never got an IP"));
            (got.saturating_duration_since(*at), name)
        })
        .collect();
    waits.sort();
    let all: BTreeSet<&String> = seen.values().flat_map(|(_, ips)| ips).collect();
    assert_eq!(all.len(), seen.len(), "an IP was given twice");
    let (longest, which) = waits.last().expect("Services were created");
    tracing::info!(
        services = waits.len(),
        median_ms = waits[waits.len() / 2].0.as_millis() as u64,
        longest_ms = longest.as_millis() as u64,
        %which,
        %before,
        %after,
        "Services created during helm upgrade of the controller"
    );
    // With a standby sleeping until the Lease expired, Services waited 6.9 s; a released
    // Lease is taken within a second. 3 s leaves room for a loaded machine.
    assert!(
        *longest < Duration::from_secs(3),
        "{which} waited {longest:?} for an IP during the upgrade"
    );
}

/// A real cluster with Herald behind FRR (`Routed`), graceful restart on, and a pool `routed`
/// (not auto-assigned) announced by BGP.
async fn routed_herald() -> Routed {
    let cluster = cluster_with_herald(ClusterOptions::default()).await;
    let routed = Routed::around(cluster, Peering::default()).expect("FRR and a client behind it");
    apply(
        &routed.cluster.client(),
        &format!(
            "apiVersion: herald.dev/v1alpha1
kind: IPPool
metadata: {{name: routed}}
spec: {{addresses: [198.51.100.0/24], autoAssign: false}}
---
apiVersion: herald.dev/v1alpha1
kind: BGPPeer
metadata: {{name: tor}}
spec: {{myASN: 64512, peerASN: {LAN_ROUTER_ASN}, peerAddress: {}, enableGracefulRestart: true}}
---
apiVersion: herald.dev/v1alpha1
kind: BGPAdvertisement
metadata: {{name: routed}}
spec: {{ipPools: [routed]}}",
            routed.router_host.v4
        ),
    )
    .await;
    routed
}

/// Waits until the client behind the router is served through `vip`; says what the cluster
/// looks like when it is not.
async fn until_served(routed: &Routed, vip: IpAddr) {
    if let Err(e) = routed.until_served(vip, SETTLE).await {
        panic!("{e:#}\n{}", routed.cluster.diagnose());
    }
}

/// `externalTrafficPolicy: Local` over BGP: the router's next hops are the nodes with a
/// ready pod; a rolling update of the app (with a preStop delay, as users configure it)
/// under steady requests from behind the router loses none; the pods see the client's own
/// address; the next hops follow the new pods.
#[tokio::test]
async fn journey_bgp_local_traffic_follows_a_rolling_update_without_a_failed_request() {
    let routed = routed_herald().await;
    let (cluster, router, far) = (&routed.cluster, &routed.router, &routed.far);
    let client = cluster.client();
    deploy_web(&client, 2, Traffic::Cluster).await;
    herald_lab::real_cluster::journey::patch_web(
        &client,
        serde_json::json!({"spec": {"template": {"spec": {"terminationGracePeriodSeconds": 15,
            "containers": [{"name": "app", "lifecycle": {"preStop": {"sleep": {"seconds": 3}}}}]}}}}),
    )
    .await;
    let serving = web_ready_on(&client, 2, SETTLE).await;
    apply(
        &client,
        "apiVersion: v1
kind: Service
metadata: {name: web-local, namespace: default, annotations: {herald.dev/pool: routed}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]",
    )
    .await;
    let vip = routed.vip_of("web-local").await;
    let prefix = format!("{vip}/32");
    let expected = routed.next_hops(&serving);
    router
        .wait_for("a route through each node with a pod", SETTLE, || {
            (router.kernel_next_hops(&prefix) == expected).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.diagnose()));
    until_served(&routed, vip).await;

    let requests = Requests::start_in(&far.ns, vip);
    let started = std::time::Instant::now();
    // The router's next hops as they change, for the timeline a failure prints.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = std::thread::spawn({
        let (ns, prefix, sampling) = (router.ns().to_owned(), prefix.clone(), sampling.clone());
        move || {
            let mut changes: Vec<(Duration, String)> = Vec::new();
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let out = std::process::Command::new("ip")
                    .args(["-n", &ns, "route", "show", &prefix])
                    .output()
                    .map(|o| {
                        String::from_utf8_lossy(&o.stdout)
                            .split_whitespace()
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                if changes.last().is_none_or(|(_, last)| *last != out) {
                    changes.push((started.elapsed(), out));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            changes
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    herald_lab::real_cluster::journey::patch_web(
        &client,
        serde_json::json!({"spec": {"template": {"metadata": {"annotations": {"rolled": "once"}}}}}),
    )
    .await;
    let now_serving = web_ready_on(&client, 2, Duration::from_secs(120)).await;
    // The old pods' preStop delay, then their exit.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let outcomes = requests.finish();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let routes = sampler.join().expect("sampler");
    let timeline: Vec<String> = routes
        .iter()
        .map(|(t, r)| format!("{:>6} ms route {r}", t.as_millis()))
        .chain(
            outcomes
                .iter()
                .filter(|o| o.answer.is_none())
                .map(|o| format!("{:>6} ms request failed", (o.at - started).as_millis())),
        )
        .collect();
    let mut timeline = timeline;
    timeline.sort();
    let gap = longest_gap(&outcomes);
    println!(
        "BGP, externalTrafficPolicy Local, rolling update of the app: longest gap {} ms, {} of {} requests failed",
        gap.as_millis(),
        failed(&outcomes),
        outcomes.len()
    );
    assert_eq!(
        failed(&outcomes),
        0,
        "longest gap {gap:?}; timeline:\n{}\n{}",
        timeline.join("\n"),
        cluster.diagnose()
    );
    let client_ip = far.v4.to_string();
    assert!(
        outcomes
            .iter()
            .filter_map(|o| o.answer.as_deref())
            .all(|a| a.ends_with(&format!("client={client_ip}"))),
        "a pod saw another address than the client's {client_ip}"
    );
    let expected = routed.next_hops(&now_serving);
    router
        .wait_for("the routes through the new pods' nodes", SETTLE, || {
            (router.kernel_next_hops(&prefix) == expected).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.diagnose()));
}
