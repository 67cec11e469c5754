//! The controller's I/O: watch Services, IPPools and Namespaces, rebuild the allocator from
//! what the API already says before the first allocation, then reconcile. Decisions are made
//! in `allocator`, `service`, `pools` and `status`; this module only reads and writes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use futures::{StreamExt, stream};
use herald_api::IPPool;
use herald_api::keys::CONTROLLER_MANAGER;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;

use crate::allocator::{Allocator, Request};
use crate::service::{self, ClassConfig, Intent};
use crate::{pools, status};

enum Trigger {
    Service(String),
    /// Pools or namespaces changed, or a watch re-listed: look at every Service again.
    All,
}

/// The Event last published per Service, so Events go out on change only.
type LastEvent = (EventType, String, String);

pub struct Controller {
    client: Client,
    config: ClassConfig,
    services: Store<Service>,
    pools: Store<IPPool>,
    namespaces: Store<Namespace>,
    allocator: Allocator,
    recorder: Recorder,
    last_event: BTreeMap<String, LastEvent>,
    /// Services that want an IP and have none: retried whenever an IP frees up or pools change.
    waiting: BTreeSet<String>,
    last_pool_status: BTreeMap<String, serde_json::Value>,
}

pub async fn run(client: Client, config: ClassConfig) -> Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (services, svc_writer) = reflector::store();
    let (pool_store, pool_writer) = reflector::store();
    let (namespaces, ns_writer) = reflector::store();

    let svc_stream = reflector::reflector(
        svc_writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .map(|e| match e {
        Ok(watcher::Event::Apply(s) | watcher::Event::Delete(s)) => {
            Some(Trigger::Service(service::key(&s)))
        }
        Ok(watcher::Event::InitDone) => Some(Trigger::All),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("watching Services: {e}");
            None
        }
    });
    let pool_stream = reflector::reflector(
        pool_writer,
        watcher(
            Api::<IPPool>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .map(|e| trigger_all("IPPools", e));
    let ns_stream = reflector::reflector(
        ns_writer,
        watcher(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .map(|e| trigger_all("Namespaces", e));
    let merged = stream::select(svc_stream, stream::select(pool_stream, ns_stream));
    tokio::spawn(async move {
        let mut merged = std::pin::pin!(merged);
        while let Some(t) = merged.next().await {
            if let Some(t) = t
                && tx.send(t).is_err()
            {
                return;
            }
        }
    });

    services.wait_until_ready().await.context("Service watch")?;
    pool_store
        .wait_until_ready()
        .await
        .context("IPPool watch")?;
    namespaces
        .wait_until_ready()
        .await
        .context("Namespace watch")?;

    let reporter = Reporter {
        controller: CONTROLLER_MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let mut controller = Controller {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        config,
        services,
        pools: pool_store,
        namespaces,
        allocator: Allocator::new(),
        last_event: BTreeMap::new(),
        waiting: BTreeSet::new(),
        last_pool_status: BTreeMap::new(),
    };
    controller.rebuild();
    tracing::info!(
        services = controller.services.state().len(),
        "state rebuilt from the API; allocating"
    );
    controller.reconcile_all().await;

    while let Some(first) = rx.recv().await {
        // Drain what is queued so a burst of events is handled in one pass.
        let mut keys = BTreeSet::new();
        let mut all = false;
        for t in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match t {
                Trigger::Service(k) => {
                    keys.insert(k);
                }
                Trigger::All => all = true,
            }
        }
        if all {
            controller.reconcile_all().await;
        } else {
            for key in keys {
                controller.reconcile(&key).await;
            }
            controller.retry_waiting().await;
            controller.write_pool_statuses().await;
        }
    }
    anyhow::bail!("watch streams ended")
}

fn trigger_all<K>(what: &str, e: Result<watcher::Event<K>, watcher::Error>) -> Option<Trigger> {
    match e {
        Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
            Some(Trigger::All)
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("watching {what}: {e}");
            None
        }
    }
}

impl Controller {
    fn sorted_services(&self) -> Vec<Arc<Service>> {
        let mut all = self.services.state();
        all.sort_by_key(|s| service::key(s));
        all
    }

    /// Every IP already in a Service's status counts as taken before anything is allocated:
    /// Herald's own assignments are restored, other load balancers' IPs are reserved.
    fn rebuild(&mut self) {
        self.sync_pools();
        for svc in self.sorted_services() {
            let key = service::key(&svc);
            let ips = service::status_ips(&svc);
            if ips.is_empty() {
                continue;
            }
            match (
                service::status_is_ours(&svc),
                service::intent(&svc, &self.config),
            ) {
                (true, Intent::Wants(w)) => {
                    if let Err(e) = self.allocator.restore(&key, &ips, &w.sharing) {
                        tracing::warn!(service = %key, "not restoring its IPs: {e}");
                    }
                }
                (true, _) => {}
                (false, _) => ips
                    .iter()
                    .for_each(|ip| self.allocator.reserve_foreign(*ip)),
            }
        }
    }

    fn sync_pools(&mut self) {
        let parsed = pools::parse(&self.pool_objects());
        self.allocator.set_pools(parsed.into_iter().map(|p| p.pool));
    }

    fn pool_objects(&self) -> Vec<IPPool> {
        self.pools.state().iter().map(|p| (**p).clone()).collect()
    }

    async fn reconcile_all(&mut self) {
        self.sync_pools();
        let mut keys: BTreeSet<String> = self
            .sorted_services()
            .iter()
            .map(|s| service::key(s))
            .collect();
        // Services deleted while a watch was re-listing are known only to the allocator.
        keys.extend(self.last_event.keys().cloned());
        keys.extend(self.waiting.iter().cloned());
        for key in keys {
            self.reconcile(&key).await;
        }
        self.write_pool_statuses().await;
    }

    async fn retry_waiting(&mut self) {
        let waiting: Vec<String> = self.waiting.iter().cloned().collect();
        for key in waiting {
            self.reconcile(&key).await;
        }
    }

    async fn reconcile(&mut self, key: &str) {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let svc = self.services.get(&ObjectRef::new(name).within(ns));
        let Some(svc) = svc else {
            // Deleted: its IPs go back to the pool.
            let freed = self.allocator.release(key);
            if !freed.is_empty() {
                tracing::info!(service = %key, ?freed, "Service deleted; IPs released");
            }
            self.last_event.remove(key);
            self.waiting.remove(key);
            return;
        };
        let result = match service::intent(&svc, &self.config) {
            Intent::NotOurs => {
                self.allocator.release(key);
                self.waiting.remove(key);
                self.last_event.remove(key);
                if service::status_is_ours(&svc) {
                    self.patch_status(&svc, status::service_clear()).await
                } else {
                    self.track_foreign(&svc);
                    Ok(())
                }
            }
            Intent::Invalid(message) => {
                self.allocator.release(key);
                self.fail(&svc, "InvalidRequest", &message).await
            }
            Intent::Wants(wants) => {
                let request = Request {
                    service: key.to_owned(),
                    families: wants.families,
                    requested_ips: wants.requested_ips,
                    pool: wants.pool,
                    eligible_pools: self.eligible_pools(&svc),
                    sharing: wants.sharing,
                };
                match self.allocator.allocate(&request) {
                    Ok(assigned) => {
                        self.waiting.remove(key);
                        let message = format!("assigned {}", status::describe(&assigned));
                        let patch = status::service_patch(&assigned, None, svc.metadata.generation);
                        let changed = self.status_differs(&svc, &patch);
                        let result = if changed {
                            self.patch_status(&svc, patch).await
                        } else {
                            Ok(())
                        };
                        if result.is_ok() {
                            self.event(&svc, EventType::Normal, "IPAllocated", message)
                                .await;
                        }
                        result
                    }
                    Err(e) => self.fail(&svc, e.reason(), &e.to_string()).await,
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(service = %key, "writing status: {e:#}");
        }
    }

    /// IPs another load balancer wrote stay reserved while they are in a status.
    fn track_foreign(&mut self, svc: &Service) {
        for ip in service::status_ips(svc) {
            self.allocator.reserve_foreign(ip);
        }
    }

    async fn fail(&mut self, svc: &Service, reason: &str, message: &str) -> Result<()> {
        let key = service::key(svc);
        self.waiting.insert(key);
        let patch = status::service_patch(&[], Some((reason, message)), svc.metadata.generation);
        let result = if self.status_differs(svc, &patch) {
            self.patch_status(svc, patch).await
        } else {
            Ok(())
        };
        self.event(svc, EventType::Warning, reason, message.to_owned())
            .await;
        result
    }

    fn eligible_pools(&self, svc: &Service) -> Vec<String> {
        let ns = svc.namespace().unwrap_or_default();
        let ns_labels = self
            .namespaces
            .state()
            .into_iter()
            .find(|n| n.name_any() == ns)
            .map(|n| n.labels().clone())
            .unwrap_or_default();
        pools::eligible(&self.pools.state(), &ns, &ns_labels, svc.labels())
    }

    /// Whether applying `patch` would change what the Service shows (times aside).
    fn status_differs(&self, svc: &Service, patch: &serde_json::Value) -> bool {
        let want_ips: Vec<IpAddr> = patch["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str()?.parse().ok())
            .collect();
        let want = &patch["status"]["conditions"][0];
        let have = svc
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.type_ == status::CONDITION);
        let same_condition = have.is_some_and(|c| {
            want["status"] == c.status.as_str()
                && want["reason"] == c.reason.as_str()
                && want["message"] == c.message.as_str()
        });
        service::status_ips(svc) != want_ips || !same_condition
    }

    async fn patch_status(&self, svc: &Service, patch: serde_json::Value) -> Result<()> {
        let api: Api<Service> =
            Api::namespaced(self.client.clone(), &svc.namespace().unwrap_or_default());
        api.patch_status(
            &svc.name_any(),
            &PatchParams::apply(CONTROLLER_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .context("patching Service status")?;
        Ok(())
    }

    async fn event(&mut self, svc: &Service, type_: EventType, reason: &str, note: String) {
        let key = service::key(svc);
        let this = (type_, reason.to_owned(), note.clone());
        if self.last_event.get(&key) == Some(&this) {
            return;
        }
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Allocate".into(),
            secondary: None,
        };
        match self.recorder.publish(&event, &svc.object_ref(&())).await {
            Ok(()) => {
                self.last_event.insert(key, this);
            }
            Err(e) => tracing::warn!(service = %key, "publishing event: {e}"),
        }
    }

    async fn write_pool_statuses(&mut self) {
        let objects = self.pool_objects();
        let api: Api<IPPool> = Api::all(self.client.clone());
        for parsed in pools::parse(&objects) {
            let generation = objects
                .iter()
                .find(|o| o.name_any() == parsed.pool.name)
                .and_then(|o| o.metadata.generation);
            let status = status::pool_status(&parsed, &self.allocator, generation);
            // Compare without timestamps so an unchanged pool is not written again.
            let mut comparable = serde_json::to_value(&status).unwrap_or_default();
            for c in comparable["conditions"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                c["lastTransitionTime"] = serde_json::Value::Null;
            }
            if self.last_pool_status.get(&parsed.pool.name) == Some(&comparable) {
                continue;
            }
            let patch = serde_json::json!({"apiVersion": "herald.dev/v1alpha1", "kind": "IPPool", "status": status});
            match api
                .patch_status(
                    &parsed.pool.name,
                    &PatchParams::apply(CONTROLLER_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                Ok(_) => {
                    self.last_pool_status
                        .insert(parsed.pool.name.clone(), comparable);
                }
                Err(e) => tracing::warn!(pool = %parsed.pool.name, "writing pool status: {e}"),
            }
        }
    }
}
