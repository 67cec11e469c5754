//! Pool restrictions on every path a Service can ask by, requests checked against the
//! Service's families and against each other, pools in use protected, statuses that tell the
//! truth: end to end on the real API server (cases ported from MetalLB's allocator and
//! controller tests where they exist).

use std::time::Duration;

use herald_api::IPPool;
use herald_lab::ControlPlane;
use herald_lab::control_plane::Options;
use herald_lab::controller::http_get;
use herald_lab::objects::{
    self, apply, condition, ips, wait_for, wait_for_event_in, wait_for_pool,
};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

const POOLS: &str = "apiVersion: herald.dev/v1alpha1
kind: IPPool
metadata: {name: shared}
spec: {addresses: [192.0.2.0/28, 2001:db8::/124]}
---
apiVersion: herald.dev/v1alpha1
kind: IPPool
metadata: {name: team-a}
spec:
  addresses: [198.51.100.0/28]
  serviceAllocation: {priority: 1, namespaces: [team-a]}
---
apiVersion: herald.dev/v1alpha1
kind: IPPool
metadata: {name: prod}
spec:
  addresses: [198.51.100.16/28]
  serviceAllocation: {namespaceSelectors: [{matchLabels: {env: prod}}]}
---
apiVersion: herald.dev/v1alpha1
kind: IPPool
metadata: {name: db}
spec:
  addresses: [198.51.100.32/28]
  serviceAllocation: {serviceSelectors: [{matchLabels: {tier: db}}]}";

/// A LoadBalancer Service `name` in `namespace`; `meta` and `spec` extend the flow mappings.
fn service(namespace: &str, name: &str, meta: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}{meta}}}\nspec: {{type: LoadBalancer, ports: [{{port: 80}}]{spec}}}"
    )
}

/// Waits for Herald's failed condition on the Service and a Warning Event with the same
/// reason; returns (reason, message) and checks the Service holds no IP.
async fn refused(client: &kube::Client, namespace: &str, name: &str) -> (String, String) {
    let api: Api<Service> = Api::namespaced(client.clone(), namespace);
    let (_, reason, message) = wait_for(&api, name, "a refusal", |s| {
        condition(s).filter(|c| c.0 == "False")
    })
    .await;
    wait_for_event_in(client, namespace, name, |e| {
        e.kind == "Warning" && e.reason == reason
    })
    .await;
    assert!(
        ips(&api.get(name).await.expect("get")).is_empty(),
        "{name} holds an IP"
    );
    (reason, message)
}

async fn allocated(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    count: usize,
) -> Vec<String> {
    objects::allocated(&Api::namespaced(client.clone(), namespace), name, count).await
}

#[tokio::test]
async fn a_pool_reserved_for_others_is_refused_however_it_is_asked_for() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    let _controller = herald_lab::controller::spawn(&cp, "controller", &[]);
    apply(&client, POOLS).await;
    apply(
        &client,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {env: prod}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: intruder}",
    )
    .await;

    // Every way of naming an address or a pool, from a namespace the pools do not admit.
    let attempts = [
        (
            "by-ip",
            ", annotations: {herald.dev/ips: 198.51.100.5}",
            "",
            "IPNotAllowed",
            "team-a",
        ),
        (
            "by-metallb-ip",
            ", annotations: {metallb.io/loadBalancerIPs: 198.51.100.6}",
            "",
            "IPNotAllowed",
            "team-a",
        ),
        (
            "by-legacy-ip",
            ", annotations: {metallb.universe.tf/loadBalancerIPs: 198.51.100.7}",
            "",
            "IPNotAllowed",
            "team-a",
        ),
        (
            "by-kube-vip-ip",
            ", annotations: {kube-vip.io/loadbalancerIPs: 198.51.100.9}",
            "",
            "IPNotAllowed",
            "team-a",
        ),
        (
            "by-cilium-ip",
            ", annotations: {lbipam.cilium.io/ips: 198.51.100.10}",
            "",
            "IPNotAllowed",
            "team-a",
        ),
        (
            "by-spec-ip",
            "",
            ", loadBalancerIP: 198.51.100.8",
            "IPNotAllowed",
            "team-a",
        ),
        (
            "by-pool",
            ", annotations: {herald.dev/pool: team-a}",
            "",
            "PoolNotAllowed",
            "team-a",
        ),
        (
            "by-metallb-pool",
            ", annotations: {metallb.io/address-pool: team-a}",
            "",
            "PoolNotAllowed",
            "team-a",
        ),
        (
            "by-legacy-pool",
            ", annotations: {metallb.universe.tf/address-pool: team-a}",
            "",
            "PoolNotAllowed",
            "team-a",
        ),
        (
            "selector-ip",
            ", annotations: {herald.dev/ips: 198.51.100.20}",
            "",
            "IPNotAllowed",
            "prod",
        ),
        (
            "selector-pool",
            ", annotations: {herald.dev/pool: prod}",
            "",
            "PoolNotAllowed",
            "prod",
        ),
        (
            "svc-selector-ip",
            ", annotations: {herald.dev/ips: 198.51.100.33}",
            "",
            "IPNotAllowed",
            "db",
        ),
        (
            "svc-selector-pool",
            ", annotations: {herald.dev/pool: db}",
            "",
            "PoolNotAllowed",
            "db",
        ),
    ];
    for (name, meta, spec, _, _) in &attempts {
        apply(&client, &service("intruder", name, meta, spec)).await;
    }
    for (name, _, _, reason, pool) in &attempts {
        let (got, message) = refused(&client, "intruder", name).await;
        assert_eq!(&got, reason, "{name}: {message}");
        // The pool a Service asked for by name is user text, quoted; a requested IP's pool
        // is named as it is.
        let named = if *reason == "PoolNotAllowed" {
            format!("IPPool \"{pool}\"")
        } else {
            format!("IPPool {pool}")
        };
        assert!(message.contains(&named), "{name}: {message}");
        assert!(message.contains("serviceAllocation"), "{name}: {message}");
    }
    // An automatic pick from the intruder's namespace never lands in a reserved pool.
    apply(&client, &service("intruder", "auto", "", "")).await;
    assert_eq!(
        allocated(&client, "intruder", "auto", 1).await,
        ["192.0.2.0"]
    );

    // The tenants themselves get what they ask for.
    let tenants = [
        (
            "team-a",
            "web",
            ", annotations: {herald.dev/ips: 198.51.100.5}",
            "198.51.100.5",
        ),
        (
            "prod",
            "web",
            ", annotations: {herald.dev/pool: prod}",
            "198.51.100.16",
        ),
        (
            "intruder",
            "db",
            ", labels: {tier: db}, annotations: {herald.dev/ips: 198.51.100.33}",
            "198.51.100.33",
        ),
    ];
    for (namespace, name, meta, _) in &tenants {
        apply(&client, &service(namespace, name, meta, "")).await;
    }
    for (namespace, name, _, ip) in &tenants {
        assert_eq!(
            allocated(&client, namespace, name, 1).await,
            [*ip],
            "{namespace}/{name}"
        );
    }

    // A tenant whose namespace stops matching loses the reserved address, loudly.
    apply(
        &client,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {env: staging}}",
    )
    .await;
    let prod: Api<Service> = Api::namespaced(client.clone(), "prod");
    let (reason, _) = refused(&client, "prod", "web").await;
    assert_eq!(reason, "PoolNotAllowed");
    assert!(ips(&prod.get("web").await.expect("get")).is_empty());
}

/// Sharing an IP across namespaces: a Service that knows another namespace's sharing key
/// (annotations are readable by anyone who can read Services) never attaches its ports to
/// that namespace's IP unless both Services name the other's namespace; a refusal says what
/// to add. Services that shared across namespaces before this was asked for (statuses
/// written by an earlier controller) keep their IP and are told what to add.
#[tokio::test]
async fn sharing_an_ip_across_namespaces_needs_both_sides_to_agree() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    apply(&client, POOLS).await;
    apply(
        &client,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: intruder}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: old-a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: old-b}",
    )
    .await;
    // Two Services of different namespaces sharing one IP, as an earlier controller left
    // them: Herald's condition and the IP in their statuses.
    for (namespace, port) in [("old-a", 80), ("old-b", 81)] {
        apply(
            &client,
            &service(
                namespace,
                "legacy",
                ", annotations: {herald.dev/sharing-key: old}",
                &format!(", ports: [{{port: {port}}}]"),
            ),
        )
        .await;
        let status = serde_json::json!({"apiVersion": "v1", "kind": "Service", "status": {
            "loadBalancer": {"ingress": [{"ip": "192.0.2.9", "ipMode": "VIP"}]},
            "conditions": [{"type": herald_api::keys::IP_ALLOCATED_CONDITION, "status": "True",
                "reason": "Allocated", "message": "assigned 192.0.2.9", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        Api::<Service>::namespaced(client.clone(), namespace)
            .patch_status(
                "legacy",
                &PatchParams::apply("herald-controller").force(),
                &Patch::Apply(&status),
            )
            .await
            .expect("an earlier controller's status");
    }
    let _controller = herald_lab::controller::spawn(&cp, "controller", &[]);
    for namespace in ["old-a", "old-b"] {
        let event = wait_for_event_in(&client, namespace, "legacy", |e| {
            e.reason == "SharingNeedsConsent"
        })
        .await;
        assert!(
            event
                .message
                .contains("it keeps the IP, but add herald.dev/sharing-cross-namespace"),
            "{}",
            event.message
        );
        assert_eq!(
            allocated(&client, namespace, "legacy", 1).await,
            ["192.0.2.9"]
        );
    }

    // A shop Service sharing under a key.
    apply(
        &client,
        &service(
            "shop",
            "web",
            ", annotations: {herald.dev/sharing-key: shop-key}",
            "",
        ),
    )
    .await;
    let shared = allocated(&client, "shop", "web", 1).await[0].clone();
    // Another namespace using the key: an IP of its own, never the shop's.
    apply(
        &client,
        &service(
            "intruder",
            "auto",
            ", annotations: {herald.dev/sharing-key: shop-key}",
            ", ports: [{port: 81}]",
        ),
    )
    .await;
    assert_ne!(allocated(&client, "intruder", "auto", 1).await[0], shared);
    // Asking for the shop's IP by name, with its own consent (Cilium's key): refused.
    apply(&client, &service("intruder", "steal", &format!(", annotations: {{herald.dev/sharing-key: shop-key, herald.dev/ips: '{shared}', lbipam.cilium.io/sharing-cross-namespace: shop}}"), ", ports: [{port: 82}]")).await;
    let (reason, message) = refused(&client, "intruder", "steal").await;
    assert_eq!(reason, "IPInUse", "{message}");
    assert!(message.contains("in namespace shop: sharing an IP across namespaces needs each Service to name the other's namespace (or *) in herald.dev/sharing-cross-namespace"), "{message}");
    // The shop agrees: it joins.
    apply(&client, &service("shop", "web", ", annotations: {herald.dev/sharing-key: shop-key, herald.dev/sharing-cross-namespace: intruder}", "")).await;
    assert_eq!(
        allocated(&client, "intruder", "steal", 1).await,
        [shared.as_str()]
    );
}

#[tokio::test]
async fn requests_are_checked_against_families_and_each_other() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    let _controller = herald_lab::controller::spawn(&cp, "controller", &[]);
    apply(&client, POOLS).await;

    // Families: an IPv6-only Service asking for an IPv4 address, and the reverse.
    apply(
        &client,
        &service(
            "default",
            "v6-asks-v4",
            ", annotations: {herald.dev/ips: 192.0.2.5}",
            ", ipFamilyPolicy: SingleStack, ipFamilies: [IPv6]",
        ),
    )
    .await;
    apply(
        &client,
        &service(
            "default",
            "v4-asks-v6",
            ", annotations: {herald.dev/ips: '2001:db8::5'}",
            ", ipFamilyPolicy: SingleStack, ipFamilies: [IPv4]",
        ),
    )
    .await;
    apply(
        &client,
        &service(
            "default",
            "v4-asks-both",
            ", annotations: {herald.dev/ips: '192.0.2.6,2001:db8::6'}",
            ", ipFamilyPolicy: SingleStack, ipFamilies: [IPv4]",
        ),
    )
    .await;
    for (name, message) in [
        (
            "v6-asks-v4",
            "requested IP 192.0.2.5 is IPv4, but the Service's ipFamilies are [IPv6]",
        ),
        (
            "v4-asks-v6",
            "requested IP 2001:db8::5 is IPv6, but the Service's ipFamilies are [IPv4]",
        ),
        (
            "v4-asks-both",
            "requested IP 2001:db8::6 is IPv6, but the Service's ipFamilies are [IPv4]",
        ),
    ] {
        assert_eq!(
            refused(&client, "default", name).await,
            ("FamilyMismatch".to_owned(), message.to_owned())
        );
    }

    // Two ways of asking, two different addresses: refused naming both (MetalLB refuses too).
    apply(
        &client,
        &service(
            "default",
            "conflict",
            ", annotations: {herald.dev/ips: 192.0.2.7}",
            ", loadBalancerIP: 192.0.2.8",
        ),
    )
    .await;
    let (reason, message) = refused(&client, "default", "conflict").await;
    assert_eq!(reason, "ConflictingRequest");
    assert!(
        message.contains("192.0.2.7") && message.contains("192.0.2.8"),
        "{message}"
    );
    // Fixing the request clears it.
    apply(
        &client,
        &service(
            "default",
            "conflict",
            ", annotations: {herald.dev/ips: 192.0.2.8}",
            ", loadBalancerIP: 192.0.2.8",
        ),
    )
    .await;
    assert_eq!(
        allocated(&client, "default", "conflict", 1).await,
        ["192.0.2.8"]
    );

    // A 200 KB annotation is refused, and the Service does not grow by it.
    let huge = "1".repeat(200_000);
    apply(
        &client,
        &service(
            "default",
            "huge",
            &format!(", annotations: {{herald.dev/ips: '{huge}'}}"),
            "",
        ),
    )
    .await;
    let (reason, message) = refused(&client, "default", "huge").await;
    assert_eq!(reason, "InvalidRequest");
    assert!(
        message.len() < 256,
        "{} bytes in the condition",
        message.len()
    );
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let status = serde_json::to_string(&svcs.get("huge").await.expect("get").status).expect("json");
    assert!(status.len() < 2048, "status is {} bytes", status.len());

    // PreferDualStack from an IPv4-only pool gets IPv4; once the pool has IPv6 too, it gains
    // an IPv6 address and keeps its IPv4 one.
    apply(&client, "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {name: grow}\nspec: {addresses: [203.0.113.0/30], serviceAllocation: {priority: 0}}").await;
    apply(
        &client,
        &service(
            "default",
            "prefer",
            ", annotations: {herald.dev/pool: grow}",
            ", ipFamilyPolicy: PreferDualStack, ipFamilies: [IPv4, IPv6]",
        ),
    )
    .await;
    assert_eq!(
        allocated(&client, "default", "prefer", 1).await,
        ["203.0.113.0"]
    );
    apply(&client, "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {name: grow}\nspec: {addresses: [203.0.113.0/30, '2001:db8:9::/126'], serviceAllocation: {priority: 0}}").await;
    assert_eq!(
        allocated(&client, "default", "prefer", 2).await,
        ["203.0.113.0", "2001:db8:9::"]
    );
}

/// The IPPool's condition `type_` as (status, reason, message), if any.
fn pool_condition(pool: &IPPool, type_: &str) -> Option<(String, String, String)> {
    let c = pool
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the pool carries Herald's finalizer.
async fn protected(pools: &Api<IPPool>, name: &str) {
    wait_for_pool(pools, name, "Herald's finalizer", |p| {
        let finalizers = p?.metadata.finalizers.as_ref()?;
        finalizers
            .iter()
            .any(|f| f == "herald.dev/pool-protection")
            .then_some(())
    })
    .await;
}

/// Draining a pool (`spec.disabled`): its holders keep their addresses, even through a
/// controller restart; nothing new comes from it, automatically, by name or by IP, and a
/// Service asking says why; its `Disabled` condition counts the holders until none is left;
/// enabled again, it serves as before.
#[tokio::test]
async fn a_disabled_pool_drains_its_holders_keep_their_ips_and_it_says_how_many_are_left() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    let mut controller = herald_lab::controller::spawn(&cp, "controller", &[]);
    let pool = |disabled: bool| {
        format!(
            "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {{name: old}}\nspec: {{addresses: [192.0.2.100/30], disabled: {disabled}}}\n---\napiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {{name: new}}\nspec: {{addresses: [198.51.100.0/30]}}"
        )
    };
    apply(&client, &pool(false)).await;
    let pools: Api<IPPool> = Api::all(client.clone());
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    apply(
        &client,
        &service("default", "a", ", annotations: {herald.dev/pool: old}", ""),
    )
    .await;
    assert_eq!(allocated(&client, "default", "a", 1).await, ["192.0.2.100"]);

    apply(&client, &pool(true)).await;
    let (status, reason, message) = wait_for_pool(&pools, "old", "Disabled", |p| {
        pool_condition(p?, "Disabled").filter(|c| c.0 == "True")
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "InUse"),
        "{message}"
    );
    assert!(
        message.contains("1 Service(s) still hold its addresses"),
        "{message}"
    );
    let ready = wait_for_pool(&pools, "old", "not Ready", |p| {
        pool_condition(p?, "Ready").filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(ready.1, "Disabled");
    // New Services: automatic picks come from the other pool; by name or by IP, refused.
    apply(&client, &service("default", "auto", "", "")).await;
    assert_eq!(
        allocated(&client, "default", "auto", 1).await,
        ["198.51.100.0"]
    );
    apply(
        &client,
        &service(
            "default",
            "by-name",
            ", annotations: {herald.dev/pool: old}",
            "",
        ),
    )
    .await;
    let (reason, message) = refused(&client, "default", "by-name").await;
    assert_eq!(reason, "PoolDisabled", "{message}");
    apply(
        &client,
        &service(
            "default",
            "by-ip",
            ", annotations: {herald.dev/ips: 192.0.2.101}",
            "",
        ),
    )
    .await;
    assert_eq!(refused(&client, "default", "by-ip").await.0, "PoolDisabled");
    // The holder keeps its address, through a controller restart too.
    controller.process.kill();
    let _controller = herald_lab::controller::spawn(&cp, "controller-again", &[]);
    apply(
        &client,
        &service("default", "after-restart", "", ", ports: [{port: 81}]"),
    )
    .await;
    assert_eq!(
        allocated(&client, "default", "after-restart", 1).await,
        ["198.51.100.1"]
    );
    assert_eq!(ips(&svcs.get("a").await.expect("get")), ["192.0.2.100"]);

    // The last holder goes: drained, the range free to give back.
    svcs.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let drained = wait_for_pool(&pools, "old", "Drained", |p| {
        pool_condition(p?, "Disabled").filter(|c| c.1 == "Drained")
    })
    .await;
    assert!(drained.2.contains("0 Service(s)"), "{}", drained.2);
    // Enabled again: the waiting Service is served from it.
    apply(&client, &pool(false)).await;
    assert_eq!(allocated(&client, "default", "by-name", 1).await.len(), 1);
}

#[tokio::test]
async fn a_pool_in_use_outlives_its_deletion_and_statuses_tell_the_truth() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    let _controller = herald_lab::controller::spawn(&cp, "controller", &[]);
    let lan = "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {name: lan}\nspec: {addresses: [192.0.2.100/30]}";
    apply(&client, lan).await;
    let pools: Api<IPPool> = Api::all(client.clone());
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    apply(&client, &service("default", "a", "", "")).await;
    apply(
        &client,
        &service("default", "b", "", ", ports: [{port: 81}]"),
    )
    .await;
    assert_eq!(allocated(&client, "default", "a", 1).await, ["192.0.2.100"]);
    assert_eq!(allocated(&client, "default", "b", 1).await, ["192.0.2.101"]);

    // lastTransitionTime stays while the condition's status does, even when the IP changes.
    let since = |s: &Service| {
        s.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "herald.dev/IPAllocated")
            .map(|c| c.last_transition_time.clone())
    };
    let first = since(&svcs.get("a").await.expect("get")).expect("a time");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    apply(
        &client,
        &service(
            "default",
            "a",
            ", annotations: {herald.dev/ips: 192.0.2.103}",
            "",
        ),
    )
    .await;
    wait_for(&svcs, "a", "the requested IP", |s| {
        (ips(s) == ["192.0.2.103"]).then_some(())
    })
    .await;
    wait_for(&svcs, "a", "the new message", |s| {
        condition(s).filter(|c| c.2.contains("192.0.2.103"))
    })
    .await;
    assert_eq!(since(&svcs.get("a").await.expect("get")), Some(first));

    // A hand-edited pool status is put right.
    let lie = serde_json::json!({"apiVersion": "herald.dev/v1alpha1", "kind": "IPPool", "status": {"assigned": 0, "available": "999"}});
    pools
        .patch_status(
            "lan",
            &PatchParams::apply("someone").force(),
            &Patch::Apply(&lie),
        )
        .await
        .expect("edit status");
    wait_for_pool(&pools, "lan", "its status corrected", |p| {
        p?.status
            .as_ref()
            .filter(|s| s.assigned == 2 && s.available == "2")
            .map(|_| ())
    })
    .await;

    // Deleting the pool in use: it stays (Herald's finalizer), shows why, and its Services
    // keep their addresses; nobody gets a new one from it.
    protected(&pools, "lan").await;
    pools
        .delete("lan", &DeleteParams::default())
        .await
        .expect("delete");
    let (status, reason, message) = wait_for_pool(&pools, "lan", "Terminating", |p| {
        pool_condition(p?, "Terminating")
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "InUse"),
        "{message}"
    );
    assert!(message.contains("2 Service(s)"), "{message}");
    let ready = wait_for_pool(&pools, "lan", "not Ready", |p| {
        pool_condition(p?, "Ready").filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(ready.1, "Terminating");
    apply(
        &client,
        &service("default", "c", "", ", ports: [{port: 82}]"),
    )
    .await;
    let (reason, _) = refused(&client, "default", "c").await;
    assert_eq!(reason, "NoEligiblePool");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ips(&svcs.get("a").await.expect("get")), ["192.0.2.103"]);
    assert_eq!(ips(&svcs.get("b").await.expect("get")), ["192.0.2.101"]);

    // An equivalent pool comes in: nothing is renumbered, the old one goes once nobody
    // counts against it, and the waiting Service is served from the new one.
    apply(&client, "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {name: lan-v2}\nspec: {addresses: [192.0.2.100/30]}").await;
    wait_for_pool(&pools, "lan", "the old pool gone", |p| {
        p.is_none().then_some(())
    })
    .await;
    assert_eq!(allocated(&client, "default", "c", 1).await, ["192.0.2.100"]);
    assert_eq!(ips(&svcs.get("a").await.expect("get")), ["192.0.2.103"]);
    assert_eq!(ips(&svcs.get("b").await.expect("get")), ["192.0.2.101"]);

    // A pool whose last Service goes away is deleted then.
    protected(&pools, "lan-v2").await;
    pools
        .delete("lan-v2", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for_pool(&pools, "lan-v2", "Terminating", |p| {
        pool_condition(p?, "Terminating")
    })
    .await;
    for name in ["a", "b", "c"] {
        svcs.delete(name, &DeleteParams::default())
            .await
            .expect("delete service");
    }
    wait_for_pool(&pools, "lan-v2", "the pool gone", |p| {
        p.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_controller_is_ready_only_once_its_caches_have_synced() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start_with(Options {
        install_crds: false,
        ..Options::default()
    })
    .await
    .expect("control plane");
    let controller = herald_lab::controller::spawn(&cp, "controller", &[]);
    // Without the IPPool CRD its watch cannot sync: alive, not ready.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut answered = false;
    while tokio::time::Instant::now() < deadline {
        if let Ok((code, _)) = http_get(controller.metrics_port, "/readyz").await {
            answered = true;
            assert_ne!(code, 200, "ready without an IPPool watch");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(answered, "/readyz never answered");
    cp.install_crds().await.expect("CRDs");
    let deadline = tokio::time::Instant::now() + herald_lab::objects::WAIT;
    loop {
        if let Ok((200, _)) = http_get(controller.metrics_port, "/readyz").await {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready after the CRDs came"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
