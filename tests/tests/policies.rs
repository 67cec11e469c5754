//! Pool choice, address families, sharing and pool edits, end to end on the real API server.
//! Services are created one after another and each waited for, so every expected address is
//! exact: allocation is deterministic (lowest free address of the first eligible pool).

use herald_lab::ControlPlane;
use herald_lab::objects::{
    SeenEvent, allocated, apply, condition, ips, lb, wait_for, wait_for_event,
};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;

const POOLS: &str = "apiVersion: herald.dev/v1alpha1
kind: IPPool
metadata: {name: general}
spec: {addresses: [192.0.2.0/30, 2001:db8::/126]}
---
apiVersion: herald.dev/v1alpha1
kind: IPPool
metadata: {name: manual}
spec: {addresses: [198.51.100.0/30], autoAssign: false}
---
apiVersion: herald.dev/v1alpha1
kind: IPPool
metadata: {name: old-routers}
spec: {addresses: [198.51.100.255-198.51.101.1], autoAssign: false, avoidBuggyIPs: true}
---
apiVersion: herald.dev/v1alpha1
kind: IPPool
metadata: {name: team}
spec:
  addresses: [203.0.113.0/30]
  serviceAllocation: {priority: 1, namespaceSelectors: [{matchLabels: {tier: team}}]}
---
apiVersion: herald.dev/v1alpha1
kind: IPPool
metadata: {name: web}
spec:
  addresses: [203.0.113.8/30]
  serviceAllocation: {priority: 2, serviceSelectors: [{matchExpressions: [{key: app, operator: In, values: [web]}]}]}";

#[tokio::test]
async fn pool_choice_families_and_sharing() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    let _controller = herald_lab::controller::spawn(&cp, "controller", &[]);
    apply(&client, POOLS).await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");

    // Pools without serviceAllocation serve everyone; autoAssign: false ones only on request.
    apply(&client, &lb("plain", "", "")).await;
    assert_eq!(allocated(&svcs, "plain", 1).await, ["192.0.2.0"]);

    // Families.
    apply(
        &client,
        &lb(
            "v6",
            "",
            ", ipFamilyPolicy: SingleStack, ipFamilies: [IPv6]",
        ),
    )
    .await;
    assert_eq!(allocated(&svcs, "v6", 1).await, ["2001:db8::"]);
    apply(
        &client,
        &lb(
            "dual",
            "",
            ", ipFamilyPolicy: RequireDualStack, ipFamilies: [IPv6, IPv4]",
        ),
    )
    .await;
    assert_eq!(
        allocated(&svcs, "dual", 2).await,
        ["2001:db8::1", "192.0.2.1"]
    );
    apply(
        &client,
        &lb(
            "prefer",
            "",
            ", ipFamilyPolicy: PreferDualStack, ipFamilies: [IPv4, IPv6]",
        ),
    )
    .await;
    assert_eq!(
        allocated(&svcs, "prefer", 2).await,
        ["192.0.2.2", "2001:db8::2"]
    );
    // Dual-stack required from an IPv4-only pool: nothing, and a Warning saying why.
    apply(
        &client,
        &lb(
            "dual-manual",
            ", annotations: {herald.dev/pool: manual}",
            ", ipFamilyPolicy: RequireDualStack, ipFamilies: [IPv4, IPv6]",
        ),
    )
    .await;
    let SeenEvent {
        reason, message, ..
    } = wait_for_event(&client, "dual-manual", |e| e.kind == "Warning").await;
    assert_eq!(reason, "NoEligiblePool");
    assert!(
        message.contains("RequireDualStack") && message.contains("IPPool manual has none"),
        "{message}"
    );
    assert!(ips(&svcs.get("dual-manual").await.unwrap()).is_empty());

    // A pool by name (ours and MetalLB's annotation), autoAssign: false included.
    apply(
        &client,
        &lb(
            "by-name",
            ", annotations: {metallb.universe.tf/address-pool: manual}",
            "",
        ),
    )
    .await;
    assert_eq!(allocated(&svcs, "by-name", 1).await, ["198.51.100.0"]);
    // avoidBuggyIPs skips .255 and .0.
    apply(
        &client,
        &lb("old", ", annotations: {herald.dev/pool: old-routers}", ""),
    )
    .await;
    assert_eq!(allocated(&svcs, "old", 1).await, ["198.51.101.1"]);

    // serviceAllocation: a Service selector and a namespace selector, by priority.
    apply(&client, &lb("shop", ", labels: {app: web}", "")).await;
    assert_eq!(allocated(&svcs, "shop", 1).await, ["203.0.113.8"]);
    apply(
        &client,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a, labels: {tier: team}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: team-a, labels: {app: web}}\nspec: {type: LoadBalancer, ports: [{port: 80}]}",
    )
    .await;
    let team: Api<Service> = Api::namespaced(client.clone(), "team-a");
    // Both `team` (priority 1) and `web` (priority 2) admit it: priority 1 wins.
    assert_eq!(allocated(&team, "api", 1).await, ["203.0.113.0"]);

    // Sharing: same key, different ports: one IP. A clash on a requested IP: a Warning.
    apply(
        &client,
        &lb("share-a", ", annotations: {herald.dev/sharing-key: k}", ""),
    )
    .await;
    let shared = allocated(&svcs, "share-a", 1).await;
    assert_eq!(shared, ["192.0.2.3"]);
    apply(
        &client,
        "apiVersion: v1\nkind: Service\nmetadata: {name: share-b, namespace: default, annotations: {metallb.io/allow-shared-ip: k}}\nspec: {type: LoadBalancer, ports: [{port: 443}]}",
    )
    .await;
    assert_eq!(allocated(&svcs, "share-b", 1).await, shared);
    apply(
        &client,
        &lb(
            "share-clash",
            ", annotations: {herald.dev/sharing-key: k, herald.dev/ips: 192.0.2.3}",
            "",
        ),
    )
    .await;
    let c = wait_for(&svcs, "share-clash", "a failure", |s| {
        condition(s).filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(c.1, "IPInUse");
    assert!(
        c.2.contains("port 80/TCP clashes with default/share-"),
        "{}",
        c.2
    );
    wait_for_event(&client, "share-clash", |e| {
        e.kind == "Warning" && e.reason == "IPInUse"
    })
    .await;
    // Another key never joins.
    apply(
        &client,
        &lb(
            "other-key",
            ", annotations: {herald.dev/sharing-key: other, herald.dev/ips: 192.0.2.3}",
            ", ports: [{port: 8080}]",
        ),
    )
    .await;
    let c = wait_for(&svcs, "other-key", "a failure", |s| {
        condition(s).filter(|c| c.0 == "False")
    })
    .await;
    assert!(c.2.contains("with a different sharing key"), "{}", c.2);

    // Every IPv4 of `general` is used; nothing was given twice except the shared one.
    let mut seen = std::collections::BTreeMap::new();
    for api in [&svcs, &team] {
        for s in api.list(&Default::default()).await.unwrap() {
            for ip in ips(&s) {
                seen.entry(ip)
                    .or_insert_with(Vec::new)
                    .push(s.metadata.name.clone().unwrap());
            }
        }
    }
    for (ip, holders) in &seen {
        if ip != "192.0.2.3" {
            assert_eq!(holders.len(), 1, "{ip} held by {holders:?}");
        }
    }
}

#[tokio::test]
async fn a_pool_edit_moves_only_the_services_whose_ip_left_it() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    let _controller = herald_lab::controller::spawn(&cp, "controller", &[]);
    let pool = |addresses: &str| {
        format!(
            "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {{name: lan}}\nspec: {{addresses: [{addresses}]}}"
        )
    };
    apply(&client, &pool("192.0.2.64/30")).await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    apply(&client, &lb("first", "", "")).await;
    assert_eq!(allocated(&svcs, "first", 1).await, ["192.0.2.64"]);
    apply(&client, &lb("second", "", "")).await;
    assert_eq!(allocated(&svcs, "second", 1).await, ["192.0.2.65"]);

    // .64 leaves the pool: `first` moves to a free address with a Warning; `second` stays.
    apply(&client, &pool("192.0.2.65-192.0.2.67")).await;
    wait_for(&svcs, "first", "a new IP", |s| {
        (ips(s) == ["192.0.2.66"]).then_some(())
    })
    .await;
    let message = wait_for_event(&client, "first", |e| {
        e.kind == "Warning" && e.reason == "IPMoved"
    })
    .await
    .message;
    assert_eq!(
        message,
        "192.0.2.64 is no longer in any IPPool (a pool was edited or deleted); the Service now has 192.0.2.66 from IPPool lan"
    );
    assert_eq!(ips(&svcs.get("second").await.unwrap()), ["192.0.2.65"]);

    // Shrunk below what is in use: the Service that cannot move waits, nothing is doubled.
    apply(&client, &pool("192.0.2.66/32")).await;
    let c = wait_for(&svcs, "second", "a failure", |s| {
        condition(s).filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(c.1, "PoolExhausted");
    assert!(ips(&svcs.get("second").await.unwrap()).is_empty());
    assert_eq!(ips(&svcs.get("first").await.unwrap()), ["192.0.2.66"]);
}

#[tokio::test]
async fn ips_written_by_another_load_balancer_are_adopted_or_reserved_then_freed() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    apply(&client, "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {name: lan}\nspec: {addresses: [192.0.2.0/30]}").await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    // Before Herald runs, as MetalLB left them: a Service Herald serves with 192.0.2.2, and one
    // of another class holding 192.0.2.0.
    apply(&client, &lb("migrated", "", "")).await;
    apply(
        &client,
        &lb("theirs", "", ", loadBalancerClass: other.example/lb"),
    )
    .await;
    for (name, ip) in [("migrated", "192.0.2.2"), ("theirs", "192.0.2.0")] {
        let status = serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}});
        svcs.patch_status(
            name,
            &kube::api::PatchParams::apply("metallb").force(),
            &kube::api::Patch::Apply(&status),
        )
        .await
        .expect("status");
    }
    let _controller = herald_lab::controller::spawn(&cp, "controller", &[]);
    // Adopted: same IP, now with Herald's condition.
    wait_for(&svcs, "migrated", "Herald's condition", |s| {
        condition(s).filter(|c| c.0 == "True").map(|_| ())
    })
    .await;
    assert_eq!(ips(&svcs.get("migrated").await.unwrap()), ["192.0.2.2"]);
    // Reserved: new Services skip 192.0.2.0, and the other class's Service is untouched.
    apply(&client, &lb("new-1", "", "")).await;
    assert_eq!(allocated(&svcs, "new-1", 1).await, ["192.0.2.1"]);
    apply(&client, &lb("new-2", "", "")).await;
    assert_eq!(allocated(&svcs, "new-2", 1).await, ["192.0.2.3"]);
    assert!(condition(&svcs.get("theirs").await.unwrap()).is_none());
    // The other load balancer's Service goes away: its IP is free for Herald at once.
    apply(&client, &lb("waiting", "", "")).await;
    wait_for(&svcs, "waiting", "a failure", |s| {
        condition(s).filter(|c| c.0 == "False")
    })
    .await;
    svcs.delete("theirs", &Default::default())
        .await
        .expect("delete");
    assert_eq!(allocated(&svcs, "waiting", 1).await, ["192.0.2.0"]);
}
