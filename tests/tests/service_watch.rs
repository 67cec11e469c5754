//! Both binaries list Services in protobuf (`herald_runtime::service_watch`), with field numbers
//! of our own: on a real API server, every field Herald reads must come out of the protobuf
//! list exactly as it does out of the JSON one, and the watch that follows must see changes.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{Stream, StreamExt};
use herald_api::{LbService, ServiceObject};
use herald_lab::ControlPlane;
use herald_lab::objects::{apply, wait_for};
use herald_runtime::service_watch;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};

type Events = dyn Stream<Item = Result<Event<ServiceObject>, watcher::Error>> + Unpin;

/// The stream's next event, within 30 s and without error.
async fn next_event(events: &mut Events) -> Event<ServiceObject> {
    tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .expect("an event within 30 s")
        .expect("the stream goes on")
        .expect("no error")
}

/// The objects of a stream's first complete list, by `namespace/name`.
async fn first_list(events: &mut Events) -> BTreeMap<String, LbService> {
    let mut listed = BTreeMap::new();
    loop {
        match next_event(events).await {
            Event::Init => listed.clear(),
            Event::InitApply(o) => {
                listed.insert(o.service.key(), o.service);
            }
            Event::InitDone => return listed,
            other => panic!("before the list ended: {other:?}"),
        }
    }
}

/// How a proxy between Herald and the API server treats a protobuf request.
#[derive(Clone, Copy, Debug)]
enum JsonOnly {
    /// Answers 406 Not Acceptable.
    Refuses,
    /// Asks the API server for JSON instead: a JSON body comes back.
    Rewrites,
}

/// `client` behind a proxy that never passes protobuf on.
fn json_only(client: &kube::Client, proxy: JsonOnly) -> kube::Client {
    let inner = client.clone();
    let service = tower::service_fn(move |mut request: http::Request<kube::client::Body>| {
        let inner = inner.clone();
        async move {
            let accept = http::header::ACCEPT;
            let protobuf = request
                .headers()
                .get(&accept)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("protobuf"));
            match proxy {
                JsonOnly::Refuses if protobuf => {
                    let mut response = http::Response::new(kube::client::Body::from(Vec::new()));
                    *response.status_mut() = http::StatusCode::NOT_ACCEPTABLE;
                    return Ok(response);
                }
                JsonOnly::Rewrites if protobuf => {
                    let json = http::HeaderValue::from_static("application/json");
                    request.headers_mut().insert(accept, json);
                }
                _ => {}
            }
            inner.send(request).await
        }
    });
    kube::Client::new(service, "default")
}

/// Behind a proxy that refuses protobuf or turns it into JSON, Services are listed and
/// watched in JSON: the same objects as the protobuf list, and the watch follows.
#[tokio::test]
async fn behind_a_proxy_without_protobuf_services_are_listed_in_json() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    apply(
        &client,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {type: LoadBalancer, ports: [{port: 80}]}",
    )
    .await;
    for proxy in [JsonOnly::Refuses, JsonOnly::Rewrites] {
        // A watch's first list may be served from the API server's cache (resourceVersion
        // 0), which can lag a write just made: listed again until it holds the Service.
        // The cache only moves forward, so the JSON list made after it holds it too.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let direct = loop {
            let mut protobuf = service_watch::events(client.clone(), watcher::Config::default());
            let listed = first_list(&mut protobuf).await;
            if listed.contains_key("default/web") {
                break listed;
            }
            assert!(std::time::Instant::now() < deadline, "{listed:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut events =
            service_watch::events(json_only(&client, proxy), watcher::Config::default());
        assert_eq!(first_list(&mut events).await, direct, "{proxy:?}");
        let name = format!("after-{proxy:?}").to_lowercase();
        apply(
            &client,
            &format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}"),
        )
        .await;
        loop {
            match next_event(&mut events).await {
                Event::Apply(o) if o.service.key() == format!("default/{name}") => break,
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn services_listed_in_protobuf_read_as_in_json_and_the_watch_follows() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    apply(
        &client,
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  labels: {tier: front}
  annotations: {herald.dev/pool: lan, metallb.universe.tf/allow-shared-ip: k, unrelated: x}
  finalizers: [herald.dev/test]
spec:
  type: LoadBalancer
  loadBalancerClass: herald.dev/l2
  loadBalancerIP: 192.0.2.7
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv6, IPv4]
  externalTrafficPolicy: Local
  selector: {app: web}
  ports: [{name: http, port: 80, protocol: TCP}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: default}
spec: {ports: [{port: 8080}]}"#,
    )
    .await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let status = serde_json::json!({"status": {
        "loadBalancer": {"ingress": [{"ip": "192.0.2.7", "ipMode": "VIP"}, {"ip": "2001:db8::7"}]},
        "conditions": [{"type": "herald.dev/IPAllocated", "status": "True", "reason": "IPAllocated",
            "message": "assigned 192.0.2.7", "lastTransitionTime": "2026-01-01T00:00:00Z",
            "observedGeneration": 1}]}});
    services
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status");
    // Held by its finalizer: listed with a deletionTimestamp.
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete");

    // The API server makes `default/kubernetes` on its own, some time after it is ready: wait
    // for it, so that both lists below are taken of the same Services.
    wait_for(
        &services,
        "kubernetes",
        "the API server's own Service",
        |_| Some(()),
    )
    .await;

    // Listed until the list holds both (the delete was the last write): a first list may
    // come from the API server's cache, which can lag (see above).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (from_protobuf, mut protobuf) = loop {
        let mut protobuf = service_watch::events(client.clone(), watcher::Config::default());
        let listed = first_list(&mut protobuf).await;
        if listed.contains_key("default/kubernetes")
            && listed
                .get("default/web")
                .is_some_and(|web| web.metadata.deleting)
        {
            break (listed, protobuf);
        }
        assert!(std::time::Instant::now() < deadline, "{listed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut json = watcher::watcher(
        Api::<ServiceObject>::all(client.clone()),
        watcher::Config::default(),
    )
    .boxed();
    let from_json = first_list(&mut json).await;
    assert_eq!(from_protobuf, from_json);

    // Not equal by being empty: what was set came through.
    let web = &from_protobuf["default/web"];
    assert!(web.spec.load_balancer && web.spec.local_traffic && web.metadata.deleting);
    assert_eq!(web.spec.ports.len(), 2);
    assert_eq!(web.spec.ip_families.as_slice().len(), 2);
    assert_eq!(web.spec.load_balancer_ip.as_deref(), Some("192.0.2.7"));
    assert_eq!(
        web.spec.load_balancer_class.as_deref(),
        Some("herald.dev/l2")
    );
    assert_eq!(web.status.ingress.len(), 2);
    assert!(web.allocated_by_herald());
    assert!(web.metadata.uid.is_some());
    assert_eq!(web.labels().get("tier").map(String::as_str), Some("front"));
    assert_eq!(
        web.annotation(&herald_api::keys::SHARING_KEYS),
        Ok(Some("k"))
    );
    assert!(from_protobuf.contains_key("default/kubernetes"));

    // The watch after the protobuf list: a change, then a deletion.
    apply(
        &client,
        "apiVersion: v1\nkind: Service\nmetadata: {name: plain, namespace: default, labels: {v: '2'}}\nspec: {ports: [{port: 8080}]}",
    )
    .await;
    services
        .delete("plain", &DeleteParams::default())
        .await
        .expect("delete");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match next_event(&mut protobuf).await {
            Event::Apply(o) if o.service.key() == "default/plain" => {
                seen.push(format!("changed {:?}", o.service.labels().get("v")))
            }
            Event::Delete(o) => seen.push(format!("deleted {}", o.service.key())),
            _ => {}
        }
    }
    assert_eq!(seen, ["changed Some(\"2\")", "deleted default/plain"]);
}
