//! The controller on a real kube-apiserver: LoadBalancer Services get IPs from IPPools, with
//! Events and a status condition; IPs are released and reused; bad requests are explained.

use std::time::Duration;

use herald_lab::ControlPlane;
use herald_lab::objects::{
    apply, condition, events, ingress, ips, lb, wait_for, wait_for_event, wait_for_pool,
};
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

#[tokio::test]
async fn services_get_ips_release_them_and_wait_when_exhausted() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    let _controller = herald_lab::controller::spawn(&cp, "controller", &[]);
    apply(&client, "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {name: lan}\nspec: {addresses: [192.0.2.10-192.0.2.11]}").await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");

    apply(&client, &lb("a", "", "")).await;
    apply(&client, "apiVersion: v1\nkind: Service\nmetadata: {name: plain, namespace: default}\nspec: {ports: [{port: 80}]}").await;
    let a = wait_for(&services, "a", "an IP", |s| ingress(s).first().cloned()).await;
    assert_eq!(a, ("192.0.2.10".into(), Some("VIP".into())));
    let svc = services.get("a").await.unwrap();
    assert_eq!(condition(&svc).unwrap().0, "True");
    wait_for_event(&client, "a", |e| {
        e.kind == "Normal"
            && e.reason == "IPAllocated"
            && e.message == "assigned 192.0.2.10 from IPPool lan"
    })
    .await;

    apply(&client, &lb("b", "", "")).await;
    wait_for(&services, "b", "an IP", |s| {
        ingress(s).first().filter(|i| i.0 == "192.0.2.11").cloned()
    })
    .await;

    // The pool is exhausted: c waits with a Warning Event and a condition saying why.
    apply(&client, &lb("c", "", "")).await;
    let why = wait_for(&services, "c", "a failure condition", |s| {
        condition(s).filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(why.1, "PoolExhausted");
    assert!(
        why.2.contains("no free IPv4 address in IPPool(s) lan"),
        "{why:?}"
    );
    assert!(ingress(&services.get("c").await.unwrap()).is_empty());
    wait_for_event(&client, "c", |e| {
        e.kind == "Warning" && e.reason == "PoolExhausted"
    })
    .await;

    // Deleting a frees its IP, and c gets it by itself.
    services
        .delete("a", &DeleteParams::default())
        .await
        .expect("delete a");
    wait_for(&services, "c", "the freed IP", |s| {
        ingress(s).first().filter(|i| i.0 == "192.0.2.10").cloned()
    })
    .await;

    // Changing b away from LoadBalancer releases its IP and clears the status Herald wrote.
    let patch = serde_json::json!({"spec": {"type": "ClusterIP"}});
    services
        .patch("b", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("to ClusterIP");
    wait_for(&services, "b", "a cleared status", |s| {
        (ingress(s).is_empty() && condition(s).is_none()).then_some(())
    })
    .await;
    apply(&client, &lb("d", "", "")).await;
    wait_for(&services, "d", "b's old IP", |s| {
        ingress(s).first().filter(|i| i.0 == "192.0.2.11").cloned()
    })
    .await;

    // The Service that was never a LoadBalancer was never touched.
    let plain = services.get("plain").await.unwrap();
    assert!(
        plain
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_none()
    );
    assert!(ingress(&plain).is_empty());
    assert!(events(&client, "plain").await.is_empty());

    // Pool status counts what is in use (written at most once a second).
    let pools = Api::<herald_api::IPPool>::all(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut status = pools.get("lan").await.unwrap().status.unwrap_or_default();
    while status.assigned != 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = pools.get("lan").await.unwrap().status.unwrap_or_default();
    }
    assert_eq!(
        (status.assigned, status.available.as_str()),
        (2, "0"),
        "{status:?}"
    );
}

#[tokio::test]
async fn impossible_requests_are_explained_and_fixed_without_restart() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    let _controller = herald_lab::controller::spawn(&cp, "controller", &[]);
    apply(&client, "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {name: lan}\nspec: {addresses: [192.0.2.0/28]}").await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");

    apply(
        &client,
        &lb(
            "owner",
            ", annotations: {metallb.io/loadBalancerIPs: 192.0.2.5}",
            "",
        ),
    )
    .await;
    apply(
        &client,
        &lb(
            "malformed",
            ", annotations: {herald.dev/ips: 192.0.2.500}",
            "",
        ),
    )
    .await;
    apply(&client, &lb("outside", "", ", loadBalancerIP: 203.0.113.7")).await;
    apply(
        &client,
        &lb("taken", ", annotations: {herald.dev/ips: 192.0.2.5}", ""),
    )
    .await;
    apply(&client, &lb("fine", "", "")).await;
    // A pool name of 100 KiB: quoted for 64 bytes, and the message still says what is wrong.
    let huge = "q".repeat(100 * 1024);
    apply(
        &client,
        &lb(
            "unknown-pool",
            &format!(", annotations: {{herald.dev/pool: {huge}}}"),
            "",
        ),
    )
    .await;
    let no_such_pool = format!("IPPool \"{}...\" does not exist", "q".repeat(61));

    wait_for(&services, "owner", "its requested IP", |s| {
        ingress(s).first().filter(|i| i.0 == "192.0.2.5").cloned()
    })
    .await;
    let cases = [
        (
            "malformed",
            "InvalidRequest",
            "requested IP \"192.0.2.500\" is not an IP address",
        ),
        (
            "outside",
            "NotInPool",
            "requested IP 203.0.113.7 is not in any IPPool",
        ),
        (
            "taken",
            "IPInUse",
            "requested IP 192.0.2.5 cannot be used: it is used by default/owner, which does not allow sharing",
        ),
        ("unknown-pool", "NoSuchPool", no_such_pool.as_str()),
    ];
    for (name, reason, message) in cases {
        let c = wait_for(&services, name, "a failure condition", |s| {
            condition(s).filter(|c| c.0 == "False")
        })
        .await;
        assert_eq!((c.1.as_str(), c.2.as_str()), (reason, message), "{name}");
        wait_for_event(&client, name, |e| {
            e.kind == "Warning" && e.reason == reason && e.message == message
        })
        .await;
    }
    // Other Services are unaffected.
    wait_for(&services, "fine", "an IP", |s| {
        ingress(s).first().filter(|i| i.0 == "192.0.2.0").cloned()
    })
    .await;

    // Fixing the Service fixes it, no restart needed.
    apply(
        &client,
        &lb(
            "malformed",
            ", annotations: {herald.dev/ips: 192.0.2.9}",
            "",
        ),
    )
    .await;
    wait_for(&services, "malformed", "the fixed IP", |s| {
        ingress(s).first().filter(|i| i.0 == "192.0.2.9").cloned()
    })
    .await;
    let c = condition(&services.get("malformed").await.unwrap()).unwrap();
    assert_eq!(c.0, "True");

    // A Service of another class is never touched.
    apply(
        &client,
        &lb("foreign", "", ", loadBalancerClass: other.example/lb"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let foreign = services.get("foreign").await.unwrap();
    assert!(
        ingress(&foreign).is_empty() && condition(&foreign).is_none(),
        "{:?}",
        foreign.status
    );
    assert_eq!(foreign.name_any(), "foreign");
}

/// A Service deleted and created again (a Helm reinstall, a GitOps prune, a changed
/// immutable field) gets the same IP: reserved for it in the pool, or kept for it for the
/// pool's retainFor after it went, also across a controller killed in between. Nobody else
/// gets those IPs meanwhile, whatever it asks for; a short retention frees its IP for a
/// waiting Service when it ends.
#[tokio::test]
async fn deleted_and_recreated_services_keep_their_ips_across_a_controller_restart() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    let mut first = herald_lab::controller::spawn(&cp, "controller-1", &["--leader-elect=false"]);
    apply(&client, "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {name: lan}\nspec: {addresses: [192.0.2.20-192.0.2.23], retainFor: 1h, reservations: [{service: default/pinned, addresses: [192.0.2.23]}]}").await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let pools = Api::<herald_api::IPPool>::all(client.clone());
    let ip_of = |name: &'static str, ip: &'static str| {
        let services = services.clone();
        async move {
            wait_for(&services, name, ip, |s| {
                ingress(s).first().filter(|i| i.0 == ip).cloned()
            })
            .await
        }
    };

    apply(&client, &lb("web", "", "")).await;
    ip_of("web", "192.0.2.20").await;
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete web");
    // The pool records what it keeps, and until when.
    let retained = wait_for_pool(&pools, "lan", "web's IP retained", |p| {
        p?.status
            .clone()?
            .retained
            .into_iter()
            .find(|r| r.address == "192.0.2.20" && r.service == "default/web")
    })
    .await;
    let until: k8s_openapi::jiff::Timestamp = retained.until.parse().expect("until");
    let left = until.duration_since(k8s_openapi::jiff::Timestamp::now());
    assert!(
        left.as_secs() > 3500 && left.as_secs() <= 3600,
        "kept for the pool's retainFor: {retained:?}"
    );

    // The controller dies; the one after it knows only what the API says.
    first.process.kill();
    let _second = herald_lab::controller::spawn(&cp, "controller-2", &["--leader-elect=false"]);
    apply(&client, &lb("other", "", "")).await;
    ip_of("other", "192.0.2.21").await;
    apply(&client, &lb("third", "", "")).await;
    ip_of("third", "192.0.2.22").await;
    apply(&client, &lb("fourth", "", "")).await;
    let waiting = wait_for(&services, "fourth", "no IP left for it", |s| {
        condition(s).filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(waiting.1, "PoolExhausted", "{waiting:?}");
    // Asked for by name, by another Service: refused, saying for whom.
    apply(
        &client,
        &lb(
            "squatter",
            ", annotations: {herald.dev/ips: 192.0.2.20}",
            "",
        ),
    )
    .await;
    let refused = wait_for(&services, "squatter", "a refusal", |s| {
        condition(s).filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(refused.1, "IPReserved");
    assert!(
        refused.2.starts_with(
            "requested IP 192.0.2.20 cannot be used: it is kept for Service default/web, which gave it up, until "
        ),
        "{refused:?}"
    );
    apply(
        &client,
        &lb(
            "squatter",
            ", annotations: {herald.dev/ips: 192.0.2.23}",
            "",
        ),
    )
    .await;
    wait_for(&services, "squatter", "the reservation's refusal", |s| {
        condition(s).filter(|c| c.2 == "requested IP 192.0.2.23 cannot be used: IPPool lan reserves it for Service default/pinned")
    })
    .await;

    // Both come back to their own IPs.
    apply(&client, &lb("web", "", "")).await;
    ip_of("web", "192.0.2.20").await;
    apply(&client, &lb("pinned", "", "")).await;
    ip_of("pinned", "192.0.2.23").await;
    wait_for_pool(&pools, "lan", "the retention over", |p| {
        p?.status.as_ref()?.retained.is_empty().then_some(())
    })
    .await;

    // A short retention ends on its own: the Service waiting gets the IP when it does.
    let pool = "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {name: lan}\nspec: {addresses: [192.0.2.20-192.0.2.23], retainFor: 3s, reservations: [{service: default/pinned, addresses: [192.0.2.23]}]}";
    apply(&client, pool).await;
    services
        .delete("third", &DeleteParams::default())
        .await
        .expect("delete third");
    let deleted = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        ips(&services.get("fourth").await.expect("fourth")).is_empty(),
        "the kept IP went to another Service at once"
    );
    ip_of("fourth", "192.0.2.22").await;
    let waited = deleted.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(8),
        "given when the 3 s retention ended, not at a later retry: {waited:?}"
    );
}
