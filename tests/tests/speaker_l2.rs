//! The speaker on a real LAN of network namespaces with the real API server: exactly one node
//! answers ARP and NDP for a Service IP, a client reaches it over TCP, and ownership moves
//! when the owner's link is cut, its speaker is killed or stopped, or its endpoints move.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use herald_lab::Process;
use herald_lab::client_view::metric;
use herald_lab::netns::{self, Lan, http_get_in, resolve, tcp_hello};
use herald_lab::objects::{apply, ips, wait_for, wait_for_event};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;

use herald_lab::process_cluster::{
    KEY, PORT, accept_locally, endpoints_on, ready_node, setup, speaker, speaker_in, speakers,
    web_service,
};

/// Polls until exactly one node answers for `ip`; returns its name.
fn owner(lan: &Lan, ip: IpAddr, not: Option<&str>, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = resolve(&lan.client, ip, Duration::from_millis(150)).expect("resolve");
        if let [mac] = last.as_slice()
            && let Some(node) = lan.node_of_mac(*mac)
            && Some(node.as_str()) != not
        {
            return node;
        }
    }
    panic!("no single answer for {ip} (not {not:?}) within {within:?}; last answers: {last:?}");
}

#[tokio::test]
async fn one_node_answers_and_ownership_survives_link_loss_kill_and_stop() {
    let (cp, lan, _controller) = setup(3).await;
    let client = cp.client();
    let mut speakers: Vec<Process> = speakers(&cp, &lan);
    apply(&client, "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {type: LoadBalancer, ipFamilyPolicy: PreferDualStack, ipFamilies: [IPv4, IPv6], ports: [{port: 8080}]}").await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let got = wait_for(&svcs, "web", "two IPs", |s| {
        (ips(s).len() == 2).then(|| ips(s))
    })
    .await;
    let v4: IpAddr = got[0].parse().unwrap();
    let v6: IpAddr = got[1].parse().unwrap();
    accept_locally(&lan, &[v4, v6]);

    // Exactly one answer, from the owner, for ARP and for NDP; TCP reaches that node.
    let first = owner(&lan, v4, None, Duration::from_secs(15));
    assert_eq!(tcp_hello(&lan.client, v4, PORT).expect("tcp"), first);
    let v6_owner = owner(&lan, v6, None, Duration::from_secs(15));
    let answers = resolve(&lan.client, v6, Duration::from_millis(300)).expect("ndp");
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(tcp_hello(&lan.client, v6, PORT).expect("tcp v6"), v6_owner);
    let message = wait_for_event(&client, "web", |e| {
        e.reason == "IPAnnounced" && e.message.starts_with(&format!("{v4} "))
    })
    .await
    .message;
    assert_eq!(
        message,
        format!("{v4} is announced by node {first} on eth0")
    );
    // kubectl shows where each IP is announced.
    let announcement = |ip: IpAddr| {
        let api: Api<herald_api::L2Announcement> = Api::namespaced(client.clone(), "default");
        let name = herald_api::announcement::name("web", ip);
        async move {
            api.get(&name)
                .await
                .ok()
                .map(|a| (a.spec.node, a.spec.interfaces))
        }
    };
    assert_eq!(
        announcement(v4).await,
        Some((first.clone(), vec!["eth0".to_owned()]))
    );
    assert_eq!(announcement(v6).await.map(|a| a.0), Some(v6_owner.clone()));
    // Members: every speaker hears the other two.
    let metrics = http_get_in(&lan.node(&first).ns, 9473, "/metrics").expect("metrics");
    assert!(metrics.contains("herald_speaker_members 3"), "{metrics}");

    // A cut link: the owner's speaker lives on but another node takes over.
    let owner_ns = lan.node(&first).ns.clone();
    netns::ip(&["-n", &owner_ns, "link", "set", "eth0", "down"]).expect("link down");
    let cut = Instant::now();
    let second = owner(&lan, v4, Some(&first), Duration::from_secs(10));
    tracing::info!(took = ?cut.elapsed(), from = %first, to = %second, "failover after a cut link");
    assert_eq!(tcp_hello(&lan.client, v4, PORT).expect("tcp"), second);
    netns::ip(&["-n", &owner_ns, "link", "set", "eth0", "up"]).expect("link up");
    // Back: rendezvous hashing gives the IP back to its first owner.
    let back = owner(&lan, v4, Some(&second), Duration::from_secs(10));
    assert_eq!(back, first);

    // kill -9 the owner's speaker.
    let idx = |n: &str| n.trim_start_matches('n').parse::<usize>().unwrap() - 1;
    speakers[idx(&first)].kill();
    let killed = Instant::now();
    let after_kill = owner(&lan, v4, Some(&first), Duration::from_secs(10));
    tracing::info!(took = ?killed.elapsed(), to = %after_kill, "failover after kill -9");
    assert_eq!(tcp_hello(&lan.client, v4, PORT).expect("tcp"), after_kill);
    // The taker counts the takeover in its histogram, from the dead peer's last heartbeat.
    let takeovers = |node: &str, peer: &str| {
        let name = format!("herald_speaker_takeover_seconds_count{{peer=\"{peer}\"}}");
        metric(&lan, node, &name).unwrap_or(0.0)
    };
    assert!(takeovers(&after_kill, "died") >= 1.0);

    // SIGTERM: the speaker leaves and the last node takes over.
    let total = |node: &str| takeovers(node, "left") + takeovers(node, "died");
    let before: Vec<f64> = (1..=3).map(|i| total(&format!("n{i}"))).collect();
    speakers[idx(&after_kill)].signal(libc::SIGTERM);
    let stopped = Instant::now();
    let last = owner(&lan, v4, Some(&after_kill), Duration::from_secs(10));
    tracing::info!(took = ?stopped.elapsed(), to = %last, "handover after SIGTERM");
    assert!(last != first && last != after_kill);
    assert_eq!(tcp_hello(&lan.client, v4, PORT).expect("tcp"), last);
    // Counted too (as "left", or "died" should the leave datagram be lost).
    assert!(
        total(&last) > before[idx(&last)],
        "no takeover counted after a leave"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while announcement(v4).await.map(|a| a.0) != Some(last.clone()) {
        assert!(
            Instant::now() < deadline,
            "the L2Announcement still names {:?}",
            announcement(v4).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until nobody answers for `ip` (three empty rounds in a row).
fn silent(lan: &Lan, ip: IpAddr, within: Duration) {
    let deadline = Instant::now() + within;
    let mut quiet = 0;
    while Instant::now() < deadline {
        let answers = resolve(&lan.client, ip, Duration::from_millis(150)).expect("resolve");
        quiet = if answers.is_empty() { quiet + 1 } else { 0 };
        if quiet == 3 {
            return;
        }
    }
    panic!("{ip} is still answered after {within:?}");
}

#[tokio::test]
async fn local_policy_exclusions_and_the_gossip_key() {
    let (cp, lan, _controller) = setup(3).await;
    let client = cp.client();
    // n3 is excluded from load balancers: it must never announce.
    ready_node(
        &client,
        "n3",
        &lan.node("n3").v4.to_string(),
        "node.kubernetes.io/exclude-from-external-load-balancers: \"\"",
    )
    .await;
    let _speakers: Vec<Process> = speakers(&cp, &lan);
    // A speaker with the wrong key (in the client namespace, as node "intruder"): it sends
    // heartbeats to every node, and none of them counts it as a member.
    let port = cp.port();
    lan.forward_api_into(&lan.client.ns, port).expect("forward");
    let _intruder = speaker_in(
        &cp,
        &lan.client.ns,
        "intruder",
        "not-the-right-key-at-all",
        "intruder",
    );

    apply(&client, "apiVersion: v1\nkind: Service\nmetadata: {name: local, namespace: default}\nspec: {type: LoadBalancer, externalTrafficPolicy: Local, ports: [{port: 8080}]}").await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let ip: IpAddr = wait_for(&svcs, "local", "an IP", |s| ips(s).first().cloned())
        .await
        .parse()
        .unwrap();
    accept_locally(&lan, &[ip]);

    // No endpoint anywhere: nobody answers.
    silent(&lan, ip, Duration::from_secs(10));
    // A ready endpoint on n2 only: n2 answers, whatever the hash prefers.
    endpoints_on(&client, "local", &[("n2", true)]).await;
    assert_eq!(owner(&lan, ip, None, Duration::from_secs(10)), "n2");
    // It becomes not ready and n1 gets one: the IP moves to n1.
    endpoints_on(&client, "local", &[("n2", false), ("n1", true)]).await;
    assert_eq!(owner(&lan, ip, Some("n2"), Duration::from_secs(10)), "n1");
    // Only the excluded node has an endpoint: nobody answers.
    endpoints_on(&client, "local", &[("n3", true)]).await;
    silent(&lan, ip, Duration::from_secs(10));
    wait_for_event(&client, "local", |e| {
        e.message == format!("{ip} is announced by node n1 on eth0")
    })
    .await;

    // The intruder heard nobody it could authenticate and nobody counts it.
    for ns in [&lan.node("n1").ns, &lan.node("n2").ns] {
        let metrics = http_get_in(ns, 9473, "/metrics").expect("metrics");
        assert!(metrics.contains("herald_speaker_members 3\n"), "{metrics}");
    }
    let metrics = http_get_in(&lan.client.ns, 9473, "/metrics").expect("metrics");
    assert!(metrics.contains("herald_speaker_members 1\n"), "{metrics}");
}

/// An L2Advertisement's `interfaces` may be patterns: `eth*` announces on the node's eth0; a
/// pattern no interface matches announces nowhere, and the Service's Events say why.
#[tokio::test]
async fn interface_patterns_choose_where_an_ip_is_announced() {
    let (cp, lan, _controller) = setup(1).await;
    let client = cp.client();
    apply(&client, "apiVersion: herald.dev/v1alpha1\nkind: L2Advertisement\nmetadata: {name: lan}\nspec: {interfaces: [\"nothing*\"]}").await;
    let _speaker = speaker(&cp, &lan, "n1", KEY, "speaker-n1");
    let ip = web_service(&client, &lan).await;
    let nowhere = wait_for_event(&client, "web", |e| e.reason == "NoInterface")
        .await
        .message;
    assert!(
        nowhere.starts_with(&format!("{ip} is not answered for: node n1 owns it")),
        "{nowhere}"
    );
    silent(&lan, ip, Duration::from_secs(5));
    apply(&client, "apiVersion: herald.dev/v1alpha1\nkind: L2Advertisement\nmetadata: {name: lan}\nspec: {interfaces: [\"eth*\"]}").await;
    assert_eq!(owner(&lan, ip, None, Duration::from_secs(10)), "n1");
    let message = wait_for_event(&client, "web", |e| e.reason == "IPAnnounced")
        .await
        .message;
    assert_eq!(message, format!("{ip} is announced by node n1 on eth0"));
}

/// `preferredNodeSelectors`: the IPs the hash spreads over the nodes all go to the preferred
/// node, one answer each; when its speaker dies they move to the others and come back when
/// it returns.
#[tokio::test]
async fn preferred_nodes_answer_while_they_live_and_take_their_ips_back() {
    let (cp, lan, _controller) = setup(3).await;
    let client = cp.client();
    let mut speakers: Vec<Process> = speakers(&cp, &lan);
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let mut vips = Vec::new();
    for i in 0..6 {
        let name = format!("web-{i}");
        apply(&client, &format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{type: LoadBalancer, ports: [{{port: 8080}}]}}")).await;
        let ip: IpAddr = wait_for(&svcs, &name, "an IP", |s| ips(s).first().cloned())
            .await
            .parse()
            .expect("ip");
        vips.push(ip);
    }
    accept_locally(&lan, &vips);
    let owners = |not: Option<&str>| -> Vec<String> {
        vips.iter()
            .map(|ip| owner(&lan, *ip, not, Duration::from_secs(15)))
            .collect()
    };
    let spread = owners(None);
    assert!(
        spread.iter().any(|n| n != "n3"),
        "the hash alone must put some IP elsewhere than n3 for this test to prove anything: {spread:?}"
    );

    ready_node(&client, "n3", &lan.node("n3").v4.to_string(), "role: edge").await;
    apply(&client, "apiVersion: herald.dev/v1alpha1\nkind: L2Advertisement\nmetadata: {name: lan}\nspec: {preferredNodeSelectors: [{weight: 100, preference: {matchLabels: {role: edge}}}]}").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while owners(None).iter().any(|n| n != "n3") {
        assert!(
            Instant::now() < deadline,
            "not all on n3: {:?}",
            owners(None)
        );
    }

    // The preferred node's speaker dies: every IP is answered by one other node.
    speakers[2].kill();
    let moved = owners(Some("n3"));
    assert!(moved.iter().all(|n| n != "n3"), "{moved:?}");
    // It comes back: it takes them back.
    speakers[2] = speaker(&cp, &lan, "n3", KEY, "speaker-n3-again");
    let deadline = Instant::now() + Duration::from_secs(20);
    while owners(None).iter().any(|n| n != "n3") {
        assert!(
            Instant::now() < deadline,
            "not back on n3: {:?}",
            owners(None)
        );
    }
}

/// The owner's speaker killed with -9 and restarted at once (as kubelet restarts a
/// container) is never silent for a failure timeout, so it is never counted dead: while the
/// restarted speaker settles, the node that owns the IP without it answers (a stand-in), then
/// the owner again. Before, nobody answered until the restarted speaker settled.
#[tokio::test]
async fn an_owner_killed_and_restarted_at_once_is_stood_in_for_while_it_settles() {
    let (cp, lan, _controller) = setup(3).await;
    let client = cp.client();
    let mut speakers: Vec<Process> = speakers(&cp, &lan);
    let ip = web_service(&client, &lan).await;
    let first = owner(&lan, ip, None, Duration::from_secs(15));
    let i = first
        .trim_start_matches('n')
        .parse::<usize>()
        .expect("n<i>")
        - 1;
    speakers[i].kill();
    speakers[i] = speaker(&cp, &lan, &first, KEY, "speaker-restarted");
    // Answers as the client sees them, every ~80 ms for 3 s.
    let started = Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < Duration::from_secs(3) {
        let answers = resolve(&lan.client, ip, Duration::from_millis(60)).expect("resolve");
        let nodes: Vec<String> = answers
            .iter()
            .map(|mac| lan.node_of_mac(*mac).unwrap_or_else(|| format!("{mac:?}")))
            .collect();
        seen.push((started.elapsed().as_millis(), nodes));
    }
    let stood_in = seen
        .iter()
        .position(|(_, nodes)| nodes.len() == 1 && nodes[0] != first);
    let back = stood_in.and_then(|at| {
        seen[at..]
            .iter()
            .position(|(_, nodes)| *nodes == [first.clone()])
    });
    assert!(
        stood_in.is_some() && back.is_some(),
        "no stand-in answered, then {first} again: {seen:?}"
    );
}
