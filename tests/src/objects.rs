//! Creating Kubernetes objects from YAML and reading back what Herald wrote on them.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Service};
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::ApiResource;

/// How long a test waits for the controller to act before failing.
pub const WAIT: Duration = Duration::from_secs(30);

/// Server-side applies every document of `yaml` (namespaced objects default to `default`).
pub async fn apply(client: &Client, yaml: &str) {
    for doc in yaml.split("\n---\n") {
        let value: serde_json::Value = serde_yaml_ng::from_str(doc).expect("yaml");
        let kind = value["kind"].as_str().expect("kind").to_owned();
        let api_version = value["apiVersion"].as_str().expect("apiVersion").to_owned();
        let name = value["metadata"]["name"].as_str().expect("name").to_owned();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
        let ar = ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: api_version.clone(),
            kind: kind.clone(),
            plural: format!("{}s", kind.to_lowercase()),
        };
        let api: Api<DynamicObject> = if cluster_scoped(&kind) {
            Api::all_with(client.clone(), &ar)
        } else {
            let ns = value["metadata"]["namespace"].as_str().unwrap_or("default");
            Api::namespaced_with(client.clone(), ns, &ar)
        };
        api.patch(
            &name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&value),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
    }
}

fn cluster_scoped(kind: &str) -> bool {
    matches!(
        kind,
        "IPPool"
            | "L2Advertisement"
            | "BGPPeer"
            | "BGPAdvertisement"
            | "Namespace"
            | "Node"
            | "CustomResourceDefinition"
            | "ClusterRole"
            | "ClusterRoleBinding"
    )
}

/// A LoadBalancer Service in `default` with port 80; `extra_meta` and `extra_spec` are
/// appended to the flow mappings (start them with `, `).
pub fn lb(name: &str, extra_meta: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default{extra_meta}}}\nspec: {{type: LoadBalancer, ports: [{{port: 80}}]{extra_spec}}}"
    )
}

/// Waits until `check` returns `Some`, polling the Service.
pub async fn wait_for<T>(
    api: &Api<Service>,
    name: &str,
    what: &str,
    check: impl Fn(&Service) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(svc) = api.get(name).await
            && let Some(v) = check(&svc)
        {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the Service has exactly `count` IPs; returns them.
pub async fn allocated(api: &Api<Service>, name: &str, count: usize) -> Vec<String> {
    wait_for(api, name, "its IPs", |s| {
        let ips = ips(s);
        (ips.len() == count).then_some(ips)
    })
    .await
}

/// `(ip, ipMode)` of each `status.loadBalancer.ingress` entry.
pub fn ingress(svc: &Service) -> Vec<(String, Option<String>)> {
    let lb = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.clone());
    lb.unwrap_or_default()
        .into_iter()
        .filter_map(|i| Some((i.ip?, i.ip_mode)))
        .collect()
}

/// The IPs of `status.loadBalancer.ingress`.
pub fn ips(svc: &Service) -> Vec<String> {
    ingress(svc).into_iter().map(|(ip, _)| ip).collect()
}

/// The Service's IPs once Herald's condition says it allocated them (status `True`).
pub fn allocated_by_herald(svc: &Service) -> Option<Vec<String>> {
    (herald_api::service::allocated_condition(svc)?.status == "True").then(|| ips(svc))
}

/// Herald's condition `(status, reason, message)`.
pub fn condition(svc: &Service) -> Option<(String, String, String)> {
    let c = herald_api::service::allocated_condition(svc)?.clone();
    Some((c.status, c.reason, c.message))
}

/// An Event as a test reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenEvent {
    /// `Normal` or `Warning`.
    pub kind: String,
    pub reason: String,
    pub message: String,
}

/// The Events Herald's controller or speakers published about the object `name` in
/// `default`. Other components' Events (the API server's own
/// `ClusterIPNotAllocated`, the scheduler's) are left out: a test waiting for "a Warning"
/// means one of Herald's.
pub async fn events(client: &Client, name: &str) -> Vec<SeenEvent> {
    events_in(client, "default", name).await
}

/// `events` in `namespace`.
pub async fn events_in(client: &Client, namespace: &str, name: &str) -> Vec<SeenEvent> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("events");
    list.items
        .into_iter()
        .filter(|e| {
            e.reporting_component
                .as_deref()
                .is_some_and(|c| c.starts_with("herald-"))
        })
        .map(|e| SeenEvent {
            kind: e.type_.unwrap_or_default(),
            reason: e.reason.unwrap_or_default(),
            message: e.message.unwrap_or_default(),
        })
        .collect()
}

/// Waits until an Event about `name` matches.
pub async fn wait_for_event(
    client: &Client,
    name: &str,
    matches: impl Fn(&SeenEvent) -> bool,
) -> SeenEvent {
    wait_for_event_in(client, "default", name, matches).await
}

/// `wait_for_event` in `namespace`.
pub async fn wait_for_event_in(
    client: &Client,
    namespace: &str,
    name: &str,
    matches: impl Fn(&SeenEvent) -> bool,
) -> SeenEvent {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let all = events_in(client, namespace, name).await;
        if let Some(e) = all.iter().find(|e| matches(e)) {
            return e.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: timed out waiting for an Event; have {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `check` finds what it wants in the IPPool `name` (`None`: it does not exist).
pub async fn wait_for_pool<T>(
    pools: &Api<herald_api::IPPool>,
    name: &str,
    what: &str,
    check: impl Fn(Option<&herald_api::IPPool>) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let pool = pools.get_opt(name).await.expect("get pool");
        if let Some(v) = check(pool.as_ref()) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "IPPool {name}: timed out waiting for {what}: {pool:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
