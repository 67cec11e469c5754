//! The controller under crashes and with two replicas: state is rebuilt from the API, no IP
//! is ever handed out twice, existing assignments never change, and only the Lease holder
//! writes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use herald_lab::ControlPlane;
use herald_lab::controller::{Controller, http_get, spawn};
use herald_lab::objects::{WAIT, apply, ips, lb};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};

fn pool(addresses: &str) -> String {
    format!(
        "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {{name: lan}}\nspec: {{addresses: [{addresses}]}}"
    )
}

/// Creates `names` with 16 requests in flight, as `kubectl apply` of a large manifest would.
async fn create_all(client: &Client, names: impl Iterator<Item = String>) {
    stream::iter(names)
        .for_each_concurrent(16, |name| async move {
            let value: serde_json::Value = serde_yaml_ng::from_str(&lb(&name, "", "")).unwrap();
            Api::<Service>::namespaced(client.clone(), "default")
                .patch(&name, &PatchParams::apply("test"), &Patch::Apply(&value))
                .await
                .unwrap_or_else(|e| panic!("creating {name}: {e}"));
        })
        .await;
}

/// name -> IPs of every Service in `default`.
async fn assignments(client: &Client) -> BTreeMap<String, Vec<String>> {
    Api::<Service>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(|s| (s.metadata.name.clone().unwrap_or_default(), ips(s)))
        .collect()
}

/// Waits until `count` Services hold one IP each; returns the assignments.
async fn all_allocated(client: &Client, count: usize) -> BTreeMap<String, Vec<String>> {
    let deadline = Instant::now() + WAIT * 4;
    loop {
        let now = assignments(client).await;
        let done = now.values().filter(|ips| ips.len() == 1).count();
        if done == count {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {count} Services allocated"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn assert_distinct(assigned: &BTreeMap<String, Vec<String>>) {
    let mut holder: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, ips) in assigned {
        for ip in ips {
            if let Some(other) = holder.insert(ip, name) {
                panic!("{ip} given to both {other} and {name}");
            }
        }
    }
}

#[tokio::test]
async fn kill_9_in_the_middle_of_500_creations_loses_and_moves_nothing() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    apply(&client, &pool("198.51.100.0/24, 203.0.113.0/24")).await;
    let mut first = spawn(&cp, "controller-1", &["--leader-elect=false"]);

    // Kill the controller while Services are still being created and allocated.
    let creating = tokio::spawn({
        let client = client.clone();
        async move { create_all(&client, (0..500).map(|i| format!("svc-{i:03}"))).await }
    });
    let deadline = Instant::now() + WAIT;
    while assignments(&client)
        .await
        .values()
        .filter(|i| !i.is_empty())
        .count()
        < 100
    {
        assert!(Instant::now() < deadline, "no allocations before the kill");
        assert!(first.process.exited().is_none(), "controller died");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.process.kill();
    let before_restart = assignments(&client).await;
    let held = before_restart.values().filter(|i| !i.is_empty()).count();
    tracing::info!(held, created = before_restart.len(), "controller killed");
    assert_distinct(&before_restart);
    creating.await.expect("creating");

    let _second = spawn(&cp, "controller-2", &["--leader-elect=false"]);
    let after = all_allocated(&client, 500).await;
    assert_distinct(&after);
    for (name, ips) in &before_restart {
        if !ips.is_empty() {
            assert_eq!(&after[name], ips, "{name}'s IP changed across the restart");
        }
    }
    assert!(held < 500, "the kill came too late to prove anything");
}

async fn lease_holder(client: &Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), "default")
        .get_opt("herald-controller")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
}

/// Two controller replicas, `replica-a` and `replica-b`, started with `extra` flags.
fn two_replicas(cp: &ControlPlane, extra: &[&str]) -> BTreeMap<String, Controller> {
    ["replica-a", "replica-b"]
        .into_iter()
        .map(|name| (name.to_owned(), spawn(cp, name, extra)))
        .collect()
}

/// The replica holding the Lease, and the other.
async fn leader_and_standby(
    client: &Client,
    replicas: &BTreeMap<String, Controller>,
) -> (String, String) {
    let leader = lease_holder(client).await.expect("a Lease holder");
    let standby = replicas
        .keys()
        .find(|k| **k != leader)
        .cloned()
        .expect("standby");
    (leader, standby)
}

#[tokio::test]
async fn two_replicas_one_writer_and_the_standby_takes_over() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    apply(&client, &pool("203.0.113.0/24")).await;
    let mut replicas = two_replicas(&cp, &["--lease-duration", "3"]);

    // 200 Services at once: 200 distinct IPs.
    create_all(&client, (0..200).map(|i| format!("burst-{i:03}"))).await;
    let burst = all_allocated(&client, 200).await;
    assert_distinct(&burst);

    let (leader, standby) = leader_and_standby(&client, &replicas).await;
    // Health and metrics: both ready; only the leader says it leads and counts allocations.
    for (name, c) in &replicas {
        let (code, _) = http_get(c.metrics_port, "/readyz").await.expect("readyz");
        assert_eq!(code, 200, "{name} /readyz");
        let (code, _) = http_get(c.metrics_port, "/healthz").await.expect("healthz");
        assert_eq!(code, 200, "{name} /healthz");
    }
    // Pool gauges follow within a second (pool statuses are written at most once a second).
    let expected = [
        "herald_controller_leader 1",
        "herald_controller_allocations_total 200",
        "herald_pool_addresses_assigned{pool=\"lan\",family=\"ipv4\"} 200",
        // A float gauge (an IPv6 /64 holds 2^64).
        "herald_pool_addresses_available{pool=\"lan\",family=\"ipv4\"} 56.0",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = http_get(replicas[&leader].metrics_port, "/metrics")
            .await
            .expect("metrics");
        let missing: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|line| !metrics.lines().any(|l| l == *line))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing {missing:?} in:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, standby_metrics) = http_get(replicas[&standby].metrics_port, "/metrics")
        .await
        .expect("metrics");
    assert!(
        standby_metrics
            .lines()
            .any(|l| l == "herald_controller_leader 0"),
        "{standby_metrics}"
    );
    assert!(
        !standby_metrics.contains("herald_controller_allocations_total 2"),
        "the standby allocated: {standby_metrics}"
    );

    // Kill -9 the leader: the standby takes the Lease and serves new Services; nothing that
    // was assigned changes.
    let killed_at = Instant::now();
    replicas.get_mut(&leader).expect("leader").process.kill();
    create_all(&client, (0..10).map(|i| format!("after-{i}"))).await;
    let after = all_allocated(&client, 210).await;
    let took = killed_at.elapsed();
    assert_eq!(
        lease_holder(&client).await.as_deref(),
        Some(standby.as_str())
    );
    tracing::info!(
        ?took,
        "standby took over and allocated after a kill -9 of the leader"
    );
    assert_distinct(&after);
    for (name, ips) in &burst {
        assert_eq!(&after[name], ips, "{name} changed owner's hands");
    }
    let new_ips: BTreeSet<&String> = after
        .iter()
        .filter(|(n, _)| n.starts_with("after-"))
        .flat_map(|(_, ips)| ips)
        .collect();
    assert_eq!(new_ips.len(), 10);
}

/// At rest the leader renews its Lease when a third of its life is left (every 10 s with the
/// default 15 s), not in a loop: each renewal is a write to the API server and etcd, and
/// the standby's watch hears each.
#[tokio::test]
async fn the_leader_renews_its_lease_every_few_seconds_not_in_a_loop() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    let _replicas = two_replicas(&cp, &[]);
    let leases = Api::<Lease>::namespaced(client.clone(), "default");
    let renewed = || async {
        leases
            .get_opt("herald-controller")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec)
            .and_then(|s| s.renew_time.zip(s.acquire_time))
            .map(|(renew, acquire)| (renew.0 != acquire.0, renew.0))
    };
    // The first renewal comes about 10 s after the Lease is taken.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !renewed().await.is_some_and(|(once, _)| once) {
        assert!(Instant::now() < deadline, "the Lease was never renewed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut seen = BTreeSet::new();
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(5) {
        if let Some((_, renew)) = renewed().await {
            seen.insert(renew.to_string());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen.len() <= 2,
        "{} renewals in 5 s: {seen:?}",
        seen.len() - 1
    );
}

/// A rolling upgrade stops the leader with SIGTERM: it releases the Lease, and the standby,
/// which watches the Lease, takes it at once instead of when it would have expired (15 s,
/// the default users run), so a Service created meanwhile waits well under the Lease's life.
#[tokio::test]
async fn a_released_lease_is_taken_by_the_standby_within_a_second() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    apply(&client, &pool("203.0.113.0/24")).await;
    // The default Lease duration, as users run it.
    let replicas = two_replicas(&cp, &[]);
    create_all(&client, ["first".to_owned()].into_iter()).await;
    all_allocated(&client, 1).await;
    let (leader, standby) = leader_and_standby(&client, &replicas).await;

    let stopped = Instant::now();
    replicas[&leader].process.signal(libc::SIGTERM);
    let deadline = stopped + Duration::from_secs(10);
    let took = loop {
        if lease_holder(&client).await.as_deref() == Some(standby.as_str()) {
            break stopped.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the standby did not take the Lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tracing::info!(?took, "the standby holds the released Lease");
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // And serves: a Service created now gets its IP from the new leader.
    let created = Instant::now();
    create_all(&client, ["second".to_owned()].into_iter()).await;
    all_allocated(&client, 2).await;
    tracing::info!(waited = ?created.elapsed(), "a new Service's IP from the new leader");
    assert!(
        created.elapsed() < Duration::from_secs(2),
        "{:?}",
        created.elapsed()
    );
}

/// An HA control plane: the controller's API server goes down while Services change through
/// the other one. It comes back with a fresh watch cache, where the controller's watch cannot
/// resume (410 Gone): the controller must list again and see every change it missed. Two
/// addresses: the Services created meanwhile only both get one if the deleted Service's
/// address was seen free.
#[tokio::test]
async fn changes_made_through_another_api_server_while_ours_was_down_are_all_seen() {
    herald_lab::init_tracing();
    let mut cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    apply(&client, &pool("198.51.100.10-198.51.100.11")).await;
    let mut controller = spawn(&cp, "controller", &[]);
    create_all(&client, ["first".to_owned(), "kept".to_owned()].into_iter()).await;
    let before = all_allocated(&client, 2).await;

    let (_second, other) = cp.second_apiserver().await.expect("second API server");
    cp.stop_apiserver();
    Api::<Service>::namespaced(other.clone(), "default")
        .delete("first", &Default::default())
        .await
        .expect("deleting through the other API server");
    create_all(&other, ["late".to_owned()].into_iter()).await;
    cp.restart_apiserver().await.expect("API server back");

    let after = all_allocated(&client, 2).await;
    assert_distinct(&after);
    assert!(!after.contains_key("first"), "{after:?}");
    assert_eq!(after["kept"], before["kept"], "kept's IP changed");
    assert_eq!(
        after["late"], before["first"],
        "the freed address went to late"
    );
    assert!(controller.process.exited().is_none(), "controller died");
}
