//! What the real-cluster journeys do as a user and see as a client: the objects a user
//! writes (a pool, an advertisement with no `interfaces`, an app behind a LoadBalancer
//! Service), who answers ARP/NDP for a VIP, and requests through it over time.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Client;
use kube::api::{Api, ListParams};

use super::Cluster;
use crate::netns::{self, resolve};
use crate::objects::{allocated, apply};

/// The pool and advertisement a user writes first: a range of the LAN in each family, and an
/// L2Advertisement with no `interfaces` (every node may announce on the link of its subnet).
pub const LAN_POOL: &str = "apiVersion: herald.dev/v1alpha1
kind: IPPool
metadata: {name: lan}
spec: {addresses: [192.0.2.100-192.0.2.119, 2001:db8::100-2001:db8::11f]}
---
apiVersion: herald.dev/v1alpha1
kind: L2Advertisement
metadata: {name: lan}
spec: {}";

/// How `web` is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    Cluster,
    Local,
}

/// The test app (`herald.local/app:v1`) as a Deployment `web` of `replicas` in `default`,
/// behind a dual-stack LoadBalancer Service `web` on port 80.
pub async fn deploy_web(client: &Client, replicas: u32, policy: Traffic) {
    let policy = match policy {
        Traffic::Cluster => "Cluster",
        Traffic::Local => "Local",
    };
    apply(
        client,
        &format!(
            "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: default}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: app
          image: herald.local/app:v1
          imagePullPolicy: IfNotPresent
          ports: [{{containerPort: 8080}}]
          env: [{{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
          readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: LoadBalancer
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  externalTrafficPolicy: {policy}
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]"
        ),
    )
    .await;
}

/// The IPv4 and IPv6 VIP of `web`, once both are allocated.
pub async fn web_vips(client: &Client) -> (IpAddr, IpAddr) {
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let ips: Vec<IpAddr> = allocated(&svcs, "web", 2)
        .await
        .iter()
        .map(|ip| ip.parse().expect("ip"))
        .collect();
    let v4 = *ips.iter().find(|ip| ip.is_ipv4()).expect("an IPv4 VIP");
    let v6 = *ips.iter().find(|ip| ip.is_ipv6()).expect("an IPv6 VIP");
    (v4, v6)
}

/// Waits until `web`'s rollout is complete with `count` ready pods (no old ones left);
/// returns the nodes they run on.
pub async fn web_ready_on(client: &Client, count: usize, within: Duration) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + within;
    loop {
        let rolled_out = deployments.get("web").await.ok().is_some_and(|d| {
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let generation = d.metadata.generation;
            d.status.is_some_and(|s| {
                s.observed_generation == generation
                    && s.replicas == Some(want)
                    && s.updated_replicas == Some(want)
                    && s.ready_replicas == Some(want)
            })
        });
        let nodes: Vec<String> = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
            .filter_map(|p| p.spec?.node_name)
            .collect();
        if rolled_out && nodes.len() == count {
            return nodes;
        }
        assert!(
            Instant::now() < deadline,
            "web: rolled out {rolled_out}, {} ready pods instead of {count} within {within:?}",
            nodes.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Patches `web`'s Deployment spec (a strategic merge patch, as `kubectl patch` makes:
/// a container named in it is changed, not replaced).
pub async fn patch_web(client: &Client, patch: serde_json::Value) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    api.patch(
        "web",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Strategic(&patch),
    )
    .await
    .expect("patching web");
}

/// Keeps `web`'s pods off `node` (and lets them anywhere else).
pub async fn keep_web_off(client: &Client, node: &str) {
    patch_web(
        client,
        serde_json::json!({"spec": {"template": {"spec": {"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
                "matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "NotIn",
                                      "values": [node]}]}]}}}}}}}),
    )
    .await;
}

/// Puts `web`'s pods on `node` only.
pub async fn pin_web_to(client: &Client, node: &str) {
    patch_web(
        client,
        serde_json::json!({"spec": {"template": {"spec": {
            "nodeSelector": {"kubernetes.io/hostname": node}}}}}),
    )
    .await;
}

impl Cluster {
    /// The nodes whose MAC answered one ARP request (IPv4) or Neighbor Solicitation (IPv6)
    /// from the client for `ip`; an unknown MAC is named by its address.
    pub fn answers(&self, ip: IpAddr) -> Vec<String> {
        resolve(&self.lan().client, ip, Duration::from_millis(200))
            .expect("asking for the VIP")
            .into_iter()
            .map(|m| {
                self.node_of_mac(m)
                    .map(str::to_owned)
                    .unwrap_or_else(|| super::mac_text(m))
            })
            .collect()
    }

    /// Waits until exactly one node answers for `ip` three times in a row, and it is one
    /// `accept` allows; returns it.
    pub fn one_answer(
        &self,
        ip: IpAddr,
        within: Duration,
        accept: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        let mut streak = 0;
        loop {
            let answers = self.answers(ip);
            streak = match answers.as_slice() {
                [one] if accept(one) => streak + 1,
                _ => 0,
            };
            if streak == 3 {
                return answers[0].clone();
            }
            assert!(
                Instant::now() < deadline,
                "{ip}: not one acceptable answer within {within:?}: {answers:?}"
            );
        }
    }
}

/// The test app's answer in a whole HTTP response: its body, `pod=NAME client=ADDRESS`.
pub fn app_answer(response: &str) -> Option<String> {
    response
        .split("\r\n\r\n")
        .nth(1)
        .map(|b| b.trim().to_owned())
        .filter(|b| b.starts_with("pod="))
}

/// Requests through a VIP from the client, one after another, each with short timeouts, on
/// a thread; `finish` gives what happened.
pub struct Requests {
    stop: Arc<AtomicBool>,
    worker: JoinHandle<Vec<Outcome>>,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub at: Instant,
    /// The app's answer body, or `None` when the request failed.
    pub answer: Option<String>,
}

impl Requests {
    pub fn start(cluster: &Cluster, ip: IpAddr) -> Self {
        Self::start_in(&cluster.lan().client.ns, ip)
    }

    /// From a client in namespace `ns` (one behind a router, say).
    pub fn start_in(ns: &str, ip: IpAddr) -> Self {
        let ns = ns.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let worker = std::thread::spawn(move || {
            let mut out = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let answer = netns::http_get(
                    &ns,
                    SocketAddr::new(ip, 80),
                    "/",
                    Duration::from_millis(300),
                )
                .ok()
                .and_then(|a| app_answer(&a));
                let failed = answer.is_none();
                out.push(Outcome {
                    at: Instant::now(),
                    answer,
                });
                // A failed request already waited its timeout; a good one leaves room.
                if !failed {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            out
        });
        Self { stop, worker }
    }

    pub fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        self.worker.join().expect("request thread")
    }
}

/// Rolls every speaker (`Cluster::roll_speakers`) while `requests` run, from a second
/// before until two seconds after; kubectl's words on the rollout and what the requests saw.
pub async fn roll_speakers_under(cluster: &Cluster, requests: Requests) -> (String, Vec<Outcome>) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rolled = cluster
        .roll_speakers()
        .expect("helm upgrade rolling the speakers");
    tokio::time::sleep(Duration::from_secs(2)).await;
    (rolled, requests.finish())
}

/// The longest time between two answered requests (from the first answer to the last).
pub fn longest_gap(outcomes: &[Outcome]) -> Duration {
    longest_gap_from(outcomes).map_or(Duration::MAX, |(_, gap)| gap)
}

/// The longest gap between two answered requests, and the answer it began after.
pub fn longest_gap_from(outcomes: &[Outcome]) -> Option<(Instant, Duration)> {
    let answered: Vec<Instant> = outcomes
        .iter()
        .filter(|o| o.answer.is_some())
        .map(|o| o.at)
        .collect();
    answered
        .windows(2)
        .map(|w| (w[0], w[1] - w[0]))
        .max_by_key(|(_, gap)| *gap)
}

/// A Service `later` in front of `web`, created once a switch is over: whoever serves the
/// Services then allocates it.
pub const LATER: &str = "apiVersion: v1
kind: Service
metadata: {name: later, namespace: default}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]";

/// What the client of `name` saw through a switch from one load balancer to another,
/// printed after `steps` (what happened when): the longest gap, when it began after
/// `started`, and the failed requests. No gap may reach a second, and the client is served
/// at the end.
pub fn judge_switch(name: &str, steps: &str, started: Instant, outcomes: &[Outcome]) {
    let (began, gap) = longest_gap_from(outcomes).expect("answered requests");
    println!(
        "{steps}; {name}: longest gap {} ms from {:.1} s, {} of {} requests failed",
        gap.as_millis(),
        began.saturating_duration_since(started).as_secs_f64(),
        failed(outcomes),
        outcomes.len()
    );
    assert!(gap < Duration::from_secs(1), "{name}: longest gap {gap:?}");
    assert!(
        outcomes.last().is_some_and(|o| o.answer.is_some()),
        "{name}: the client is served after the switch"
    );
}

/// How many requests failed.
pub fn failed(outcomes: &[Outcome]) -> usize {
    outcomes.iter().filter(|o| o.answer.is_none()).count()
}
