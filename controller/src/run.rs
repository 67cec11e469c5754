//! The controller's I/O: watch Services, IPPools and Namespaces, rebuild the state from what
//! the API already says before the first allocation, then reconcile in passes. A pass asks
//! `state` what to write (no I/O there), performs the writes concurrently so one slow round
//! trip does not hold up the next Service, publishes the Events and updates the metrics.
//! Every decision lives in `state` and the modules it uses; this one only reads and writes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{StreamExt, stream};
use herald_api::keys::CONTROLLER_MANAGER;
use herald_api::{IPPool, IPPoolStatus};
use herald_api::{LbService, ServiceObject};
use herald_runtime::service_watch;
use herald_runtime::watch::{Cache, Change, cached, projected_from};
use herald_telemetry::Health;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PartialObjectMetaExt, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;

use crate::events::EventQueue;
use crate::metrics::{Metrics, PoolLabels, ReasonLabels, WriteLabels};
use crate::pool_writes::InFlight;
use crate::service::ClassConfig;
use crate::state::{self, POOL_FINALIZER, State, World, Write};
use herald_api::ObjectKey;
use herald_api::events::Reporter;
use herald_api::service::IpFamily;
use herald_runtime::Publisher;

/// Writes in flight at once. The API server handles these in parallel; more than this only
/// queues inside it.
const WRITE_CONCURRENCY: usize = 32;
/// How often failed writes are retried when nothing else happens.
const RETRY_EVERY: Duration = Duration::from_secs(10);
/// The most often pool statuses are written.
const POOL_STATUS_EVERY: Duration = Duration::from_secs(1);
/// Writes decided before they are performed; bounds a pass's memory at 10,000 Services.
const CHUNK: usize = 256;
/// Services per list call when the controller (re)lists them.
const SERVICE_LIST_PAGE: u32 = 2_000;
/// Writes decided in a long pass wait at most this long for their chunk to fill.
const FLUSH_EVERY: Duration = Duration::from_millis(20);

enum Trigger {
    Service(String),
    /// Pools or namespaces changed, or a watch re-listed: look at every Service again.
    All,
    /// A pool's status or finalizers changed (perhaps by hand): check what it shows.
    PoolMeta,
}

/// The watches' caches, as the state sees them.
struct Caches {
    services: Cache<LbService>,
    pools: Store<IPPool>,
    namespaces: Store<Namespace>,
}

impl World for Caches {
    fn service(&self, key: &str) -> Option<Arc<LbService>> {
        self.services.get(key)
    }
    fn services(&self) -> Vec<Arc<LbService>> {
        self.services.state()
    }
    fn pools(&self) -> Vec<Arc<IPPool>> {
        self.pools.state()
    }
    fn pool(&self, name: &str) -> Option<Arc<IPPool>> {
        self.pools.get(&ObjectRef::new(name))
    }
    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .map(|n| n.labels().clone())
            .unwrap_or_default()
    }
}

pub struct Controller {
    client: Client,
    metrics: Metrics,
    caches: Caches,
    state: State,
    /// Events go to a task of their own (`events`), so that a pass never waits for them.
    events: EventQueue,
    /// Set by the retry tick: look at the Services waiting for an IP.
    retry_waiting: bool,
    /// Pool writes made, and when: not made again while the watch catches up.
    pool_writes_in_flight: InFlight,
    /// Pool statuses are written at most once per `POOL_STATUS_EVERY`: a burst of
    /// allocations becomes one write per pool, not one per Service.
    pool_status_written: Option<tokio::time::Instant>,
    pool_status_pending: bool,
    /// Pools the gauges show.
    gauged_pools: BTreeSet<String>,
    /// When the watch first told of each Service that may want an IP, for the allocation
    /// duration; kept while the Service waits, dropped once it has its IP or wants none.
    arrived: HashMap<String, tokio::time::Instant>,
    /// Services whose status write failed in this pass (not counted as allocated yet).
    failed_writes: BTreeSet<String>,
}

pub async fn run(
    client: Client,
    config: ClassConfig,
    metrics: Metrics,
    instance: String,
    health: Arc<Health>,
) -> Result<()> {
    let started = tokio::time::Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (pool_store, pool_writer) = reflector::store();
    let (namespaces, ns_writer) = reflector::store();

    // Listed in protobuf (`service_watch`); in JSON only where that is refused, then in
    // pages of 2,000: each list call makes etcd count every Service (a paginated list
    // reports how many remain), so 100,000 Services in pages of 500 cost 200 such counts.
    let (services, svc_stream) = projected_from(
        service_watch::events(
            client.clone(),
            watcher::Config::default().page_size(SERVICE_LIST_PAGE),
        ),
        |o: ServiceObject| Some(o.service),
    );
    let svc_stream = svc_stream.map(|e| match e {
        Ok(Change::Object(key)) => Some(Trigger::Service(key)),
        Ok(Change::Relisted) => Some(Trigger::All),
        Err(e) => {
            tracing::warn!("watching Services: {e}");
            None
        }
    });
    // The controller writes pool statuses and finalizers itself: only spec changes
    // (generation) or the deletion of a pool, and label changes of a namespace, call for a
    // full pass; a pool's status or finalizers changing (by hand, too) only for a look at
    // what the pools show.
    let pool_stream = cached(client.clone(), pool_writer, |_| {}).map(trigger_on_change(
        "IPPools",
        |p: &IPPool| {
            (
                p.metadata.generation,
                p.metadata.deletion_timestamp.is_some(),
            )
        },
        |p: &IPPool| (p.status.clone(), p.metadata.finalizers.clone()),
    ));
    let ns_stream = cached(client.clone(), ns_writer, |n: &mut Namespace| {
        n.metadata.managed_fields = None;
    })
    .map(trigger_on_change(
        "Namespaces",
        |n: &Namespace| n.metadata.labels.clone(),
        |_| (),
    ));
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

    let listed = started.elapsed();
    let (events, publisher) = EventQueue::new(
        Publisher::new(
            client.clone(),
            Reporter {
                controller: CONTROLLER_MANAGER.into(),
                instance,
                action: "Allocate".into(),
            },
        ),
        services.clone(),
        metrics.clone(),
    );
    tokio::spawn(publisher);
    let mut controller = Controller::new(
        client, config, metrics, services, pool_store, namespaces, events,
    );
    tracing::info!(
        services = controller.caches.services.len(),
        listed_ms = listed.as_millis() as u64,
        rebuilt_ms = (started.elapsed() - listed).as_millis() as u64,
        "state rebuilt from the API; allocating"
    );
    // The first pass looks at everything: what the watches queued so far is in it.
    while rx.try_recv().is_ok() {}
    let first_pass = tokio::time::Instant::now();
    controller.pass(Vec::new(), true).await;
    tracing::info!(
        pass_ms = first_pass.elapsed().as_millis() as u64,
        "first pass done"
    );
    health.set_ready(true);

    let mut retry = tokio::time::interval(RETRY_EVERY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            t = rx.recv() => match t {
                Some(t) => Some(t),
                None => anyhow::bail!("watch streams ended"),
            },
            _ = retry.tick() => {
                // Safety net: Services waiting for an IP are looked at again even if the
                // event that freed one was missed.
                controller.retry_waiting = true;
                None
            }
            _ = tokio::time::sleep_until(controller.pool_status_due()), if controller.pool_status_pending => None,
            // A retention ends: its address is free for the Services waiting.
            _ = tokio::time::sleep_until(controller.next_expiry()), if controller.state.next_expiry().is_some() => None,
        };
        // Drain what is queued so a burst of events is handled in one pass.
        let mut keys = Vec::new();
        let mut all = false;
        for t in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            match t {
                Trigger::Service(k) => {
                    controller
                        .arrived
                        .entry(k.clone())
                        .or_insert_with(tokio::time::Instant::now);
                    keys.push(k);
                }
                Trigger::All => all = true,
                Trigger::PoolMeta => controller.pool_status_pending = true,
            }
        }
        controller.pass(keys, all).await;
    }
}

/// Maps watch events to a full pass, but only when `full` (what the controller reads of the
/// object to allocate) changed, or the object went away, or a watch (re)listed; to a look at
/// the pools' own statuses when only `meta` (what the controller writes on it) changed.
fn trigger_on_change<K: Resource, Full: Clone + PartialEq, Meta: Clone + PartialEq>(
    what: &'static str,
    full: fn(&K) -> Full,
    meta: fn(&K) -> Meta,
) -> impl FnMut(Result<watcher::Event<K>, watcher::Error>) -> Option<Trigger> {
    let mut seen: BTreeMap<String, (Full, Meta)> = BTreeMap::new();
    move |e| match e {
        Ok(watcher::Event::Apply(o)) => {
            let now = (full(&o), meta(&o));
            match seen.insert(o.name_any(), now.clone()) {
                Some(before) if before.0 == now.0 => {
                    (before.1 != now.1).then_some(Trigger::PoolMeta)
                }
                _ => Some(Trigger::All),
            }
        }
        Ok(watcher::Event::InitApply(o)) => {
            seen.insert(o.name_any(), (full(&o), meta(&o)));
            None
        }
        Ok(watcher::Event::Delete(o)) => {
            seen.remove(&o.name_any());
            Some(Trigger::All)
        }
        Ok(watcher::Event::InitDone) => Some(Trigger::All),
        Ok(watcher::Event::Init) => None,
        Err(e) => {
            tracing::warn!("watching {what}: {e}");
            None
        }
    }
}

impl Controller {
    /// A controller over these caches, its state rebuilt from what they show. Events go out
    /// through `events`.
    fn new(
        client: Client,
        config: ClassConfig,
        metrics: Metrics,
        services: Cache<LbService>,
        pools: Store<IPPool>,
        namespaces: Store<Namespace>,
        events: EventQueue,
    ) -> Self {
        let caches = Caches {
            services,
            pools,
            namespaces,
        };
        let state = State::rebuild(config, &caches);
        Controller {
            client,
            metrics,
            caches,
            state,
            events,
            retry_waiting: false,
            pool_writes_in_flight: InFlight::default(),
            pool_status_written: None,
            pool_status_pending: false,
            gauged_pools: BTreeSet::new(),
            arrived: HashMap::new(),
            failed_writes: BTreeSet::new(),
        }
    }

    /// Looks at `keys` (or every Service), then at Services waiting for an IP if one freed
    /// up, and performs the writes that follow.
    async fn pass(&mut self, keys: Vec<String>, all: bool) {
        let started = tokio::time::Instant::now();
        self.state.expire(Timestamp::now());
        let mut keys = keys;
        if all {
            self.state.sync_pools(&self.caches);
            keys = self.state.every_service(&self.caches);
            self.state.forget_notes_except(&keys);
        }
        for (key, note) in self.events.failures() {
            self.state.event_failed(key, note);
        }
        keys.extend(self.state.take_retry());
        let retry_waiting = std::mem::take(&mut self.retry_waiting);
        // Borrowed from `keys`: a first pass over 100,000 Services holds no second copy of
        // every name.
        let mut seen: HashSet<&str> = HashSet::new();
        // Statuses go out in chunks while the pass goes on (memory stays bounded, the first
        // Services get their IPs at once); Events, which only inform, after every status.
        let mut writes = Vec::new();
        let mut flushed = tokio::time::Instant::now();
        for key in &keys {
            if seen.insert(key.as_str()) {
                writes.extend(self.state.decide(&self.caches, key, Timestamp::now()));
                // A pass over 100,000 Services that need nothing takes seconds: the few
                // that do (a Service created while the controller was down) are written
                // as they come, not after it.
                if writes.len() >= CHUNK || (!writes.is_empty() && flushed.elapsed() >= FLUSH_EVERY)
                {
                    self.execute(std::mem::take(&mut writes)).await;
                    flushed = tokio::time::Instant::now();
                }
            }
        }
        let looked_at = seen.len();
        if self.state.take_freed() || retry_waiting || all {
            let waiting: Vec<String> = self.state.waiting().cloned().collect();
            for key in waiting {
                if !seen.contains(key.as_str()) {
                    writes.extend(self.state.decide(&self.caches, &key, Timestamp::now()));
                }
            }
        }
        drop(seen);
        drop(keys);
        if all || tokio::time::Instant::now() >= self.pool_status_due() {
            writes.extend(self.pool_writes());
            self.pool_status_written = Some(tokio::time::Instant::now());
            self.pool_status_pending = false;
        } else {
            self.pool_status_pending = true;
        }
        self.execute(writes).await;
        self.count();
        self.metrics
            .pass_duration
            .observe(started.elapsed().as_secs_f64());
        self.events.send(self.state.take_events(), &self.metrics);
        if looked_at > CHUNK {
            // A large pass (start-up, a pool change) allocates and frees a lot; give the
            // freed pages back to the system instead of keeping them as heap.
            herald_telemetry::release_free_heap();
        }
    }

    /// The pass's decisions as metrics.
    fn count(&mut self) {
        let tally = self.state.take_tally();
        self.metrics
            .allocations
            .inc_by(tally.allocated.len() as u64);
        let now = tokio::time::Instant::now();
        for key in &tally.allocated {
            if !self.failed_writes.contains(key)
                && let Some(arrived) = self.arrived.remove(key)
            {
                self.metrics
                    .allocation_duration
                    .observe((now - arrived).as_secs_f64());
            }
        }
        self.failed_writes.clear();
        // Only Services still waiting keep their arrival (bounded by the waiting ones), and
        // the map gives back what a burst grew it to (100,000 Services: 6 MB).
        let waiting: BTreeSet<&String> = self.state.waiting().collect();
        self.arrived.retain(|key, _| waiting.contains(key));
        if self.arrived.capacity() > 4 * self.arrived.len() + 1024 {
            self.arrived.shrink_to_fit();
        }
        for reason in tally.failures {
            self.metrics
                .allocation_failures
                .get_or_create(&ReasonLabels { reason })
                .inc();
        }
        self.metrics
            .services_waiting
            .set(self.state.waiting_count() as i64);
    }

    /// When the next retention ends, on the monotonic clock.
    fn next_expiry(&self) -> tokio::time::Instant {
        let now = Timestamp::now();
        let wait = self
            .state
            .next_expiry()
            .and_then(|until| Duration::try_from(now.duration_until(until)).ok())
            .unwrap_or(Duration::ZERO);
        tokio::time::Instant::now() + wait
    }

    fn pool_status_due(&self) -> tokio::time::Instant {
        self.pool_status_written
            .map(|t| t + POOL_STATUS_EVERY)
            .unwrap_or_else(tokio::time::Instant::now)
    }

    /// The pool statuses and finalizers to write (less those just written that the watch
    /// does not show yet); refreshes the pool gauges.
    fn pool_writes(&mut self) -> Vec<Write> {
        let (reports, finalizers) = self.state.pools(&self.caches, Timestamp::now());
        self.pool_gauges(&reports);
        let live: BTreeSet<&str> = reports.iter().map(|r| r.name.as_str()).collect();
        let statuses = reports
            .iter()
            .filter(|r| r.differs)
            .map(|r| Write::PoolStatus {
                name: r.name.clone(),
                status: r.status.clone(),
            });
        let writes: Vec<Write> = finalizers.into_iter().chain(statuses).collect();
        self.pool_writes_in_flight
            .not_in_flight(writes, &live, tokio::time::Instant::now())
    }

    /// Sets each pool's gauges and drops those of pools that went away.
    fn pool_gauges(&mut self, reports: &[state::PoolReport]) {
        let live: BTreeSet<String> = reports.iter().map(|r| r.name.clone()).collect();
        for gone in self.gauged_pools.difference(&live) {
            for family in [IpFamily::V4, IpFamily::V6] {
                let labels = PoolLabels {
                    pool: gone.clone(),
                    family: family.label(),
                };
                self.metrics.pool_assigned.remove(&labels);
                self.metrics.pool_available.remove(&labels);
            }
        }
        self.gauged_pools = live;
        for report in reports {
            let status = &report.status;
            for (family, usage) in [(IpFamily::V4, &status.ipv4), (IpFamily::V6, &status.ipv6)] {
                if let Some(u) = usage {
                    let labels = PoolLabels {
                        pool: report.name.clone(),
                        family: family.label(),
                    };
                    self.metrics
                        .pool_assigned
                        .get_or_create(&labels)
                        .set(u.assigned);
                    let available = u.available.parse::<f64>().unwrap_or(f64::INFINITY);
                    self.metrics
                        .pool_available
                        .get_or_create(&labels)
                        .set(available);
                }
            }
        }
    }

    /// Performs the writes concurrently and records what failed so it is tried again.
    async fn execute(&mut self, writes: Vec<Write>) {
        if writes.is_empty() {
            return;
        }
        let client = &self.client;
        let results: Vec<(Write, Result<()>)> = stream::iter(writes)
            .map(|w| async move {
                let result = perform(client, &w).await;
                (w, result)
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        let now = tokio::time::Instant::now();
        for (write, result) in results {
            self.metrics
                .api_writes
                .get_or_create(&WriteLabels::of(&result))
                .inc();
            match (write, result) {
                (write @ Write::PoolStatus { .. }, Ok(())) => {
                    self.pool_writes_in_flight.made(write, now);
                }
                (write @ Write::PoolFinalizer { .. }, Ok(())) => {
                    if let Write::PoolFinalizer { name, protect } = &write {
                        if *protect {
                            tracing::info!(pool = %name, "protected the pool with Herald's finalizer");
                        } else {
                            tracing::info!(pool = %name, "pool deleted and no Service holds its addresses: let it go");
                        }
                    }
                    self.pool_writes_in_flight.made(write, now);
                }
                (_, Ok(())) => {}
                (Write::Status { key, .. }, Err(e)) => {
                    tracing::warn!(service = %key, "writing status: {e:#}");
                    self.failed_writes.insert(key.clone());
                    self.state.write_failed(key);
                }
                (Write::PoolStatus { name, .. }, Err(e)) => {
                    tracing::warn!(pool = %name, "writing pool status: {e:#}");
                }
                (Write::PoolFinalizer { name, .. }, Err(e)) => {
                    tracing::warn!(pool = %name, "updating the pool's finalizer: {e:#}");
                    self.pool_status_pending = true;
                }
            }
        }
    }
}

/// The body of a pool status apply.
#[derive(Debug, serde::Serialize)]
struct PoolStatusApply<'a> {
    #[serde(rename = "apiVersion")]
    api_version: std::borrow::Cow<'static, str>,
    kind: std::borrow::Cow<'static, str>,
    status: &'a IPPoolStatus,
}

async fn perform(client: &Client, write: &Write) -> Result<()> {
    let apply = PatchParams::apply(CONTROLLER_MANAGER).force();
    match write {
        Write::Status { key, apply: status } => {
            let service = ObjectKey::parse(key);
            Api::<ServiceObject>::namespaced(client.clone(), service.namespace)
                .patch_status(service.name, &apply, &Patch::Apply(status))
                .await
                .context("patching Service status")?;
        }
        Write::PoolStatus { name, status } => {
            // Status only: a whole IPPool would make this field manager claim its spec.
            let body = PoolStatusApply {
                api_version: IPPool::api_version(&()),
                kind: IPPool::kind(&()),
                status,
            };
            Api::<IPPool>::all(client.clone())
                .patch_status(name, &apply, &Patch::Apply(&body))
                .await
                .context("patching IPPool status")?;
        }
        Write::PoolFinalizer { name, protect } => {
            // Server-side apply of this one list entry: other finalizers are left alone, and
            // applying none removes ours.
            let finalizers = if *protect {
                vec![POOL_FINALIZER.to_owned()]
            } else {
                Vec::new()
            };
            let meta = ObjectMeta {
                name: Some(name.clone()),
                finalizers: Some(finalizers),
                ..Default::default()
            }
            .into_request_partial::<IPPool>();
            Api::<IPPool>::all(client.clone())
                .patch_metadata(
                    name,
                    &PatchParams::apply(CONTROLLER_MANAGER),
                    &Patch::Apply(&meta),
                )
                .await
                .context("updating the IPPool's finalizers")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use herald_api::fingerprint;
    use herald_runtime::testing::FakeApi;

    use super::*;
    use crate::events;

    fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
        serde_yaml_ng::from_str(s).expect("yaml")
    }

    const STATUS: &str = "PATCH /api/v1/namespaces/shop/services/web/status";

    /// A controller serving classless Services from pool 192.0.2.0/24, with shop/web
    /// cached, writing to `api`; and the receiving end of its Event queue.
    fn controller(
        api: &FakeApi,
        queue: usize,
    ) -> (
        Controller,
        mpsc::Receiver<events::Queued>,
        mpsc::UnboundedSender<events::Failure>,
    ) {
        let service = |name: &str| -> LbService {
            yaml(&format!(
                "metadata: {{name: {name}, namespace: shop, uid: u-{name}}}\nspec: {{type: LoadBalancer, ports: [{{port: 80}}]}}"
            ))
        };
        let (pools, mut pool_writer) = reflector::store();
        pool_writer.apply_watcher_event(&watcher::Event::Apply(yaml::<IPPool>(
            "metadata: {name: lan}\nspec: {addresses: [192.0.2.0/24]}",
        )));
        let (events_tx, events_rx) = mpsc::channel(queue);
        let (failures_tx, event_failures) = mpsc::unbounded_channel();
        let controller = Controller::new(
            api.client(),
            ClassConfig {
                class: "herald.dev/lb".into(),
                serve_unset: true,
            },
            Metrics::register(&mut Default::default()),
            ["web", "api", "db"]
                .into_iter()
                .map(|n| (format!("shop/{n}"), service(n)))
                .collect(),
            pools,
            reflector::store().0,
            EventQueue::over(events_tx, event_failures),
        );
        (controller, events_rx, failures_tx)
    }

    #[tokio::test]
    async fn an_event_that_could_not_be_published_is_said_again_on_the_next_pass() {
        let api = FakeApi::default();
        let (mut c, mut queued, failures) = controller(&api, events::MAX_QUEUED);
        let web = vec!["shop/web".to_owned()];

        c.pass(web.clone(), false).await;
        assert!(api.take().contains(&STATUS.to_owned()));
        let first = queued.try_recv().expect("an Event queued");
        assert_eq!(
            (first.0.as_str(), first.1.reason.as_str()),
            ("shop/web", "IPAllocated")
        );

        // Said once: looking at the Service again queues nothing.
        c.pass(web.clone(), false).await;
        assert!(queued.try_recv().is_err());

        // The publisher could not publish it: the next pass, whatever woke it, says it again.
        let (key, note) = &first;
        failures
            .send((key.clone(), fingerprint(note)))
            .expect("send");
        c.pass(Vec::new(), false).await;
        let again = queued.try_recv().expect("the Event queued again");
        assert_eq!(again, first);

        // A failure report for something no longer current (a newer note was said since)
        // is not said again.
        failures.send((key.clone(), 42)).expect("send");
        c.pass(Vec::new(), false).await;
        assert!(queued.try_recv().is_err());
    }

    /// A burst bigger than the Event queue: every status is written, the Events the queue
    /// cannot take are dropped and counted, not held.
    #[tokio::test]
    async fn events_beyond_the_queue_are_dropped_and_counted_statuses_all_written() {
        let api = FakeApi::default();
        let (mut c, mut queued, _failures) = controller(&api, 2);
        c.pass(Vec::new(), true).await;
        let writes = api.take();
        for name in ["web", "api", "db"] {
            let status = format!("PATCH /api/v1/namespaces/shop/services/{name}/status");
            assert!(writes.contains(&status), "{name}: {writes:?}");
        }
        assert!(queued.try_recv().is_ok() && queued.try_recv().is_ok());
        assert!(
            queued.try_recv().is_err(),
            "more queued than the queue holds"
        );
        assert_eq!(c.metrics.events_dropped.get(), 1);
    }
}
