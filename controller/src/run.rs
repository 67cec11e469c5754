//! The controller's I/O: watch Services, IPPools and Namespaces, rebuild the allocator from
//! what the API already says before the first allocation, then reconcile in passes. A pass
//! decides every write first (`decide`, no I/O) and then performs the writes concurrently,
//! so one slow round trip does not hold up the next Service. Decisions are made in
//! `allocator`, `service`, `pools`, `status` and `events`; this module only reads and writes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{StreamExt, stream};
use herald_api::keys::CONTROLLER_MANAGER;
use herald_api::watch::{Cache, Change, cached, projected};
use herald_api::{IPPool, IPPoolStatus};
use herald_api::{LbService, ServiceObject};
use herald_telemetry::{Health, Registry};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PartialObjectMetaExt, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;

use crate::allocator::{Allocator, Family, Request};
use crate::pools::{self, ParsedPool};
use crate::service::{self, ClassConfig, Intent};
use crate::status::ServiceOutcome;
use crate::{metrics, status};
use herald_api::events::{self, Note, Reporter};

/// Writes in flight at once. The API server handles these in parallel; more than this only
/// queues inside it.
const WRITE_CONCURRENCY: usize = 32;
/// Marks pools Herald protects: a pool Services hold addresses of is deleted only once they
/// have released them.
pub const POOL_FINALIZER: &str = "herald.dev/pool-protection";
/// How long a pool status just written is not written again while the watch has not shown
/// it yet.
const POOL_STATUS_IN_FLIGHT: Duration = Duration::from_secs(5);
/// How often failed writes are retried when nothing else happens.
const RETRY_EVERY: Duration = Duration::from_secs(10);
/// The most often pool statuses are written.
const POOL_STATUS_EVERY: Duration = Duration::from_secs(1);
/// Writes decided before they are performed; bounds a pass's memory at 10,000 Services.
const CHUNK: usize = 256;

enum Trigger {
    Service(String),
    /// Pools or namespaces changed, or a watch re-listed: look at every Service again.
    All,
    /// A pool's status or finalizers changed (perhaps by hand): check what it shows.
    PoolMeta,
}

/// One API write a pass decided on.
enum Write {
    Status {
        key: String,
        namespace: String,
        name: String,
        apply: Box<Service>,
    },
    PoolStatus {
        name: String,
        status: IPPoolStatus,
    },
    /// Adds (`protect`) or removes Herald's finalizer on a pool.
    PoolFinalizer {
        name: String,
        protect: bool,
    },
}

/// Events of one pass for the publisher: (Service key, what to say).
type EventBatch = Vec<(String, Note)>;
/// An Event the publisher could not publish: (Service key, fingerprint of the note).
type EventFailure = (String, u64);

pub struct Controller {
    client: Client,
    config: ClassConfig,
    registry: Arc<Registry>,
    services: Cache<LbService>,
    pools: Store<IPPool>,
    namespaces: Store<Namespace>,
    parsed_pools: Vec<ParsedPool>,
    allocator: Allocator,
    /// The Event last published per Service, so Events go out on change only.
    /// (A fingerprint of it: only change matters, and 10,000 messages would cost memory.)
    last_note: BTreeMap<String, u64>,
    /// Services that want an IP and have none: looked at again when an IP frees up or pools
    /// change.
    waiting: BTreeSet<String>,
    /// Services whose last status write failed: looked at again on the next pass.
    failed: BTreeSet<String>,
    /// Events decided in the current pass (Service key, what to say), handed to the
    /// publisher after the pass's statuses. Built when published (from the cached Service),
    /// so a queued Event costs little.
    events: Vec<(String, Note)>,
    /// Events go to a task of their own, so that a pass never waits for them (they only
    /// inform) and the next Service's status is not queued behind them.
    events_tx: mpsc::UnboundedSender<EventBatch>,
    /// Events that could not be published, by Service and fingerprint.
    event_failures: mpsc::UnboundedReceiver<EventFailure>,
    /// Set by `decide` when a Service gave IPs back during this pass.
    freed: bool,
    /// Pool statuses written, and when: not written again while the watch catches up.
    last_pool_status: BTreeMap<String, (IPPoolStatus, tokio::time::Instant)>,
    /// Pool statuses are written at most once per `POOL_STATUS_EVERY`: a burst of
    /// allocations becomes one write per pool, not one per Service.
    pool_status_written: Option<tokio::time::Instant>,
    pool_status_pending: bool,
}

pub async fn run(
    client: Client,
    config: ClassConfig,
    registry: Arc<Registry>,
    instance: String,
    health: Arc<Health>,
) -> Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (pool_store, pool_writer) = reflector::store();
    let (namespaces, ns_writer) = reflector::store();

    let (services, svc_stream) = projected(client.clone(), |o: ServiceObject| Some(o.service));
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
            format!(
                "{:?} {}",
                p.metadata.generation,
                p.metadata.deletion_timestamp.is_some()
            )
        },
        |p: &IPPool| format!("{:?} {:?}", p.status, p.metadata.finalizers),
    ));
    let ns_stream = cached(client.clone(), ns_writer, |n: &mut Namespace| {
        n.metadata.managed_fields = None;
    })
    .map(trigger_on_change(
        "Namespaces",
        |n: &Namespace| format!("{:?}", n.metadata.labels),
        |_| String::new(),
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

    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (failures_tx, event_failures) = mpsc::unbounded_channel();
    tokio::spawn(publish_events(
        client.clone(),
        services.clone(),
        Reporter {
            controller: CONTROLLER_MANAGER.into(),
            instance,
            action: "Allocate".into(),
        },
        registry.clone(),
        events_rx,
        failures_tx,
    ));
    let mut controller = Controller::new(
        client,
        config,
        registry,
        services,
        pool_store,
        namespaces,
        (events_tx, event_failures),
    );
    tracing::info!(
        services = controller.services.len(),
        "state rebuilt from the API; allocating"
    );
    controller.pass(Vec::new(), true).await;
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
                controller.freed = true;
                None
            }
            _ = tokio::time::sleep_until(controller.pool_status_due()), if controller.pool_status_pending => None,
        };
        // Drain what is queued so a burst of events is handled in one pass.
        let mut keys = Vec::new();
        let mut all = false;
        for t in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            match t {
                Trigger::Service(k) => keys.push(k),
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
fn trigger_on_change<K: Resource>(
    what: &'static str,
    full: fn(&K) -> String,
    meta: fn(&K) -> String,
) -> impl FnMut(Result<watcher::Event<K>, watcher::Error>) -> Option<Trigger> {
    let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
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
    /// A controller over these caches, its allocator rebuilt from the Services' statuses.
    /// Events go out through `events` (batches out, failures back).
    fn new(
        client: Client,
        config: ClassConfig,
        registry: Arc<Registry>,
        services: Cache<LbService>,
        pools: Store<IPPool>,
        namespaces: Store<Namespace>,
        events: (
            mpsc::UnboundedSender<EventBatch>,
            mpsc::UnboundedReceiver<EventFailure>,
        ),
    ) -> Self {
        let mut controller = Controller {
            client,
            config,
            registry,
            services,
            pools,
            namespaces,
            parsed_pools: Vec::new(),
            allocator: Allocator::new(),
            last_note: BTreeMap::new(),
            waiting: BTreeSet::new(),
            failed: BTreeSet::new(),
            events: Vec::new(),
            events_tx: events.0,
            event_failures: events.1,
            freed: false,
            last_pool_status: BTreeMap::new(),
            pool_status_written: None,
            pool_status_pending: false,
        };
        controller.rebuild();
        controller
    }

    fn sorted_services(&self) -> Vec<Arc<LbService>> {
        let mut all = self.services.state();
        all.sort_by_key(|s| s.key());
        all
    }

    /// Every IP already in a Service's status counts as taken before anything is allocated:
    /// Herald's own assignments are restored, other load balancers' IPs are reserved.
    fn rebuild(&mut self) {
        self.sync_pools();
        for svc in self.sorted_services() {
            let key = svc.key();
            let ips = svc.status.ingress.clone();
            if ips.is_empty() {
                continue;
            }
            match (svc.status_is_ours(), service::intent(&svc, &self.config)) {
                (true, Intent::Wants(w)) => {
                    if let Err(e) = self.allocator.restore(&key, &ips, &w.sharing) {
                        tracing::warn!(service = %key, "not restoring its IPs: {e}");
                    }
                }
                (true, _) => {}
                (false, Intent::Wants(w)) => self.adopt(&key, &ips, &w.sharing),
                (false, _) => ips
                    .iter()
                    .for_each(|ip| self.allocator.reserve_foreign(&key, *ip)),
            }
        }
    }

    /// A Service Herald serves whose status another load balancer wrote (a migration): it
    /// keeps its IPs when they are in Herald's pools and free, so nothing moves.
    fn adopt(&mut self, key: &str, ips: &[IpAddr], sharing: &crate::allocator::Sharing) {
        self.freed |= self.allocator.release_foreign(key);
        let in_pools = ips.iter().all(|ip| self.allocator.pool_of(*ip).is_some());
        match in_pools.then(|| self.allocator.restore(key, ips, sharing)) {
            Some(Ok(())) => tracing::info!(service = %key, ?ips, "adopted the IPs in its status"),
            _ => ips
                .iter()
                .for_each(|ip| self.allocator.reserve_foreign(key, *ip)),
        }
    }

    fn sync_pools(&mut self) {
        let objects: Vec<IPPool> = self.pools.state().iter().map(|p| (**p).clone()).collect();
        self.parsed_pools = pools::parse(&objects);
        self.allocator
            .set_pools(self.parsed_pools.iter().map(|p| p.pool.clone()));
    }

    /// Looks at `keys` (or every Service), then at Services waiting for an IP if one freed
    /// up, and performs the writes that follow.
    async fn pass(&mut self, keys: Vec<String>, all: bool) {
        let mut keys = keys;
        if all {
            self.sync_pools();
            keys = self.sorted_services().iter().map(|s| s.key()).collect();
            // Services deleted while a watch was re-listing are known only to the allocator.
            keys.extend(self.allocator.services().cloned());
            keys.extend(self.last_note.keys().cloned());
        }
        while let Ok((key, fp)) = self.event_failures.try_recv() {
            // Said again on this pass, unless something newer was said meanwhile.
            if self.last_note.get(&key) == Some(&fp) {
                self.last_note.remove(&key);
                self.failed.insert(key);
            }
        }
        keys.extend(std::mem::take(&mut self.failed));
        // Set by the retry tick; otherwise by this pass's decisions.
        let retry_waiting = std::mem::take(&mut self.freed);
        let mut seen = BTreeSet::new();
        // Statuses go out in chunks while the pass goes on (memory stays bounded, the first
        // Services get their IPs at once); Events, which only inform, after every status.
        let mut statuses = Vec::new();
        for key in keys {
            if seen.insert(key.clone()) {
                statuses.extend(self.decide(&key));
                if statuses.len() >= CHUNK {
                    self.execute(std::mem::take(&mut statuses)).await;
                }
            }
        }
        if self.freed || retry_waiting || all {
            let waiting: Vec<String> = self.waiting.iter().cloned().collect();
            for key in waiting {
                if seen.insert(key.clone()) {
                    statuses.extend(self.decide(&key));
                }
            }
        }
        if all || tokio::time::Instant::now() >= self.pool_status_due() {
            statuses.extend(self.pool_status_writes());
            self.pool_status_written = Some(tokio::time::Instant::now());
            self.pool_status_pending = false;
        } else {
            self.pool_status_pending = true;
        }
        self.registry
            .set(metrics::SERVICES_WAITING, &[], self.waiting.len() as f64);
        self.execute(statuses).await;
        let events = std::mem::take(&mut self.events);
        if !events.is_empty() && self.events_tx.send(events).is_err() {
            tracing::error!("the Event publisher stopped; Events are not published");
        }
        if seen.len() > CHUNK {
            // A large pass (start-up, a pool change) allocates and frees a lot; give the
            // freed pages back to the system instead of keeping them as heap.
            release_free_heap();
        }
    }

    fn pool_status_due(&self) -> tokio::time::Instant {
        self.pool_status_written
            .map(|t| t + POOL_STATUS_EVERY)
            .unwrap_or_else(tokio::time::Instant::now)
    }

    /// What the Service `key` needs written now. Updates the allocator; performs no I/O.
    fn decide(&mut self, key: &str) -> Vec<Write> {
        let Some(svc) = self.services.get(key) else {
            // Deleted: its IPs go back to the pool.
            self.freed |= self.allocator.release_foreign(key);
            let freed = self.allocator.release(key);
            if !freed.is_empty() {
                self.freed = true;
                tracing::info!(service = %key, ?freed, "Service deleted; IPs released");
            }
            self.last_note.remove(key);
            self.waiting.remove(key);
            return Vec::new();
        };
        match service::intent(&svc, &self.config) {
            Intent::NotOurs => {
                self.freed |= !self.allocator.release(key).is_empty();
                self.waiting.remove(key);
                self.last_note.remove(key);
                if svc.status_is_ours() {
                    vec![status_write(&svc, status::service_clear(&svc))]
                } else {
                    self.track_foreign(&svc);
                    Vec::new()
                }
            }
            Intent::Invalid { reason, message } => {
                self.freed |= !self.allocator.release(key).is_empty();
                self.failure(&svc, reason, &message)
            }
            Intent::Wants(wants) => {
                let before: Vec<IpAddr> =
                    self.allocator.assigned(key).iter().map(|a| a.ip).collect();
                let request = Request {
                    service: key.to_owned(),
                    families: wants.families,
                    requested_ips: wants.requested_ips,
                    pool: wants.pool,
                    eligible_pools: self.eligible_pools(&svc),
                    sharing: wants.sharing,
                };
                let eligible = &request.eligible_pools;
                match self.allocator.allocate(&request) {
                    Ok(assigned) => {
                        self.waiting.remove(key);
                        let mut writes = Vec::new();
                        let outcome = ServiceOutcome::allocated(&assigned);
                        if outcome.differs_from(&svc) {
                            writes.push(status_write(&svc, outcome.apply(&svc, Timestamp::now())));
                        }
                        let now: Vec<IpAddr> = assigned.iter().map(|a| a.ip).collect();
                        if before != now {
                            self.registry.inc(metrics::ALLOCATIONS, &[]);
                            self.freed |= before.iter().any(|ip| !now.contains(ip));
                            if let Some(note) = self.moved_note(&before, &now, &assigned, eligible)
                            {
                                self.note(&svc, note);
                            }
                        }
                        let message = format!("assigned {}", status::describe(&assigned));
                        self.note(&svc, Note::normal("IPAllocated", message));
                        writes
                    }
                    Err(e) => {
                        self.freed |= !before.is_empty();
                        self.failure(&svc, e.reason(), &e.to_string())
                    }
                }
            }
        }
    }

    /// A Service whose IP left every pool (a pool edit), or whose pool no longer admits it
    /// (its serviceAllocation or the namespace's labels changed), is moved; say so loudly,
    /// since clients of the old IP lose it.
    fn moved_note(
        &self,
        before: &[IpAddr],
        now: &[IpAddr],
        assigned: &[crate::allocator::Assigned],
        eligible: &[String],
    ) -> Option<Note> {
        let left = || before.iter().filter(|ip| !now.contains(ip));
        let gone: Vec<String> = left()
            .filter(|ip| self.allocator.pool_of(**ip).is_none())
            .map(ToString::to_string)
            .collect();
        let refused: Vec<String> = left()
            .filter_map(|ip| {
                let pool = self.allocator.pool_of(*ip)?;
                (!eligible.contains(&pool.name)).then(|| format!("{ip} (IPPool {})", pool.name))
            })
            .collect();
        let why = match (gone.is_empty(), refused.is_empty()) {
            (false, _) => format!(
                "{} is no longer in any IPPool (a pool was edited or deleted)",
                gone.join(", ")
            ),
            (true, false) => format!(
                "{} is in a pool whose serviceAllocation no longer admits this Service",
                refused.join(", ")
            ),
            (true, true) => return None,
        };
        Some(Note::warning(
            "IPMoved",
            format!("{why}; the Service now has {}", status::describe(assigned)),
        ))
    }

    /// IPs another load balancer wrote stay reserved while they are in a status.
    fn track_foreign(&mut self, svc: &LbService) {
        let key = svc.key();
        let mut ips = svc.status.ingress.clone();
        ips.sort();
        if self.allocator.foreign_of(&key) == ips {
            return;
        }
        self.freed |= self.allocator.release_foreign(&key);
        for ip in &ips {
            self.allocator.reserve_foreign(&key, *ip);
        }
    }

    fn failure(&mut self, svc: &LbService, reason: &str, message: &str) -> Vec<Write> {
        let key = svc.key();
        self.waiting.insert(key.clone());
        let mut writes = Vec::new();
        let outcome = ServiceOutcome::failed(reason, message);
        if outcome.differs_from(svc) {
            writes.push(status_write(svc, outcome.apply(svc, Timestamp::now())));
        }
        let note = Note::warning(reason, message);
        if self.last_note.get(&key) != Some(&fingerprint(&note)) {
            self.registry
                .inc(metrics::ALLOCATION_FAILURES, &[("reason", reason)]);
        }
        self.note(svc, note);
        writes
    }

    /// Queues an Event for `note`, unless it is what was last said about this Service.
    fn note(&mut self, svc: &LbService, note: Note) {
        let key = svc.key();
        if self.last_note.get(&key) == Some(&fingerprint(&note)) {
            return;
        }
        self.last_note.insert(key.clone(), fingerprint(&note));
        self.events.push((key, note));
    }

    fn eligible_pools(&self, svc: &LbService) -> Vec<String> {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let ns_labels = self
            .namespaces
            .get(&ObjectRef::new(&ns))
            .map(|n| n.labels().clone())
            .unwrap_or_default();
        pools::eligible(&self.pools.state(), &ns, &ns_labels, svc.labels())
    }

    /// Pool statuses that differ from what the pools show (also when edited by hand), and the
    /// finalizers to add or remove; also refreshes the pool gauges.
    fn pool_status_writes(&mut self) -> Vec<Write> {
        let mut writes = Vec::new();
        let live: BTreeSet<&str> = self
            .parsed_pools
            .iter()
            .map(|p| p.pool.name.as_str())
            .collect();
        let gone: Vec<String> = self
            .last_pool_status
            .keys()
            .filter(|name| !live.contains(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.last_pool_status.remove(&name);
            for family in metrics::POOL_GAUGES {
                self.registry.remove_matching(family, "pool", &name);
            }
        }
        let now = tokio::time::Instant::now();
        for parsed in &self.parsed_pools {
            let name = &parsed.pool.name;
            let object = self.pools.get(&ObjectRef::new(name));
            let generation = object.as_ref().and_then(|o| o.metadata.generation);
            let shown = object.as_ref().and_then(|o| o.status.as_ref());
            let status =
                status::pool_status(parsed, &self.allocator, generation, shown, Timestamp::now());
            for (family, usage) in [(Family::V4, &status.ipv4), (Family::V6, &status.ipv6)] {
                if let Some(u) = usage {
                    let labels = [("pool", name.as_str()), ("family", family.label())];
                    self.registry
                        .set(metrics::POOL_ASSIGNED, &labels, u.assigned as f64);
                    let available = u.available.parse::<f64>().unwrap_or(f64::INFINITY);
                    self.registry
                        .set(metrics::POOL_AVAILABLE, &labels, available);
                }
            }
            if let Some(write) = finalizer_write(object.as_deref(), &self.allocator) {
                writes.push(write);
            }
            if shown.is_some_and(|shown| status::same_pool_status(shown, &status)) {
                continue;
            }
            let in_flight = self.last_pool_status.get(name).is_some_and(|(sent, at)| {
                status::same_pool_status(sent, &status) && now < *at + POOL_STATUS_IN_FLIGHT
            });
            if !in_flight {
                writes.push(Write::PoolStatus {
                    name: name.clone(),
                    status,
                });
            }
        }
        writes
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
        for (write, result) in results {
            let outcome = if result.is_ok() { "ok" } else { "error" };
            self.registry
                .inc(metrics::API_WRITES, &[("result", outcome)]);
            match (write, result) {
                (Write::PoolStatus { name, status }, Ok(())) => {
                    self.last_pool_status
                        .insert(name, (status, tokio::time::Instant::now()));
                }
                (Write::PoolFinalizer { name, protect }, Ok(())) => {
                    if protect {
                        tracing::info!(pool = %name, "protected the pool with Herald's finalizer");
                    } else {
                        tracing::info!(pool = %name, "pool deleted and no Service holds its addresses: let it go");
                    }
                }
                (_, Ok(())) => {}
                (Write::Status { key, .. }, Err(e)) => {
                    tracing::warn!(service = %key, "writing status: {e:#}");
                    self.failed.insert(key);
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

/// Publishes the Events of each pass, `WRITE_CONCURRENCY` at a time, built from the cached
/// Service when sent; reports failures back so the next pass says them again.
async fn publish_events(
    client: Client,
    services: Cache<LbService>,
    reporter: Reporter,
    registry: Arc<Registry>,
    mut batches: mpsc::UnboundedReceiver<EventBatch>,
    failures: mpsc::UnboundedSender<EventFailure>,
) {
    while let Some(batch) = batches.recv().await {
        let (client, services, reporter) = (&client, &services, &reporter);
        let results: Vec<(String, Note, Result<()>)> = stream::iter(batch)
            .map(|(key, note)| async move {
                let result = publish_event(client, services, reporter, &key, &note).await;
                (key, note, result)
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        for (key, note, result) in results {
            let outcome = if result.is_ok() { "ok" } else { "error" };
            registry.inc(metrics::API_WRITES, &[("result", outcome)]);
            if let Err(e) = result {
                tracing::warn!(service = %key, "publishing event: {e:#}");
                let _ = failures.send((key, fingerprint(&note)));
            }
        }
    }
}

/// Publishes `note` about the Service `key`, built from the cached Service.
async fn publish_event(
    client: &Client,
    services: &Cache<LbService>,
    reporter: &Reporter,
    key: &str,
    note: &Note,
) -> Result<()> {
    // A Service deleted meanwhile needs no Event.
    let Some(svc) = services.get(key) else {
        return Ok(());
    };
    let about = svc.regarding();
    Api::<Event>::namespaced(client.clone(), about.namespace)
        .create(
            &PostParams::default(),
            &events::build(about, note, reporter),
        )
        .await
        .context("creating Event")?;
    Ok(())
}

/// A stable 64-bit fingerprint of a note (FNV-1a); equal notes, equal fingerprints.
fn fingerprint(note: &Note) -> u64 {
    let kind = match note.kind {
        events::Kind::Normal => "N",
        events::Kind::Warning => "W",
    };
    [kind, "\0", &note.reason, "\0", &note.message]
        .iter()
        .flat_map(|s| s.bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// Gives glibc's free heap pages back to the system. musl (the image's static build) has no
/// `malloc_trim` and returns large frees by itself, so there it does nothing.
fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of glibc's allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn status_write(svc: &LbService, apply: Service) -> Write {
    Write::Status {
        key: svc.key(),
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        apply: Box::new(apply),
    }
}

/// Herald's finalizer on a pool: on every pool, off a deleted one nobody holds addresses of.
fn finalizer_write(pool: Option<&IPPool>, allocator: &Allocator) -> Option<Write> {
    let pool = pool?;
    let name = pool.metadata.name.clone()?;
    let has = pool
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == POOL_FINALIZER);
    let deleting = pool.metadata.deletion_timestamp.is_some();
    let protect = !deleting || allocator.services_in(&name) > 0;
    (protect != has).then_some(Write::PoolFinalizer { name, protect })
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
        Write::Status {
            namespace,
            name,
            apply: status,
            ..
        } => {
            Api::<ServiceObject>::namespaced(client.clone(), namespace)
                .patch_status(name, &apply, &Patch::Apply(status))
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
    use herald_api::testing::FakeApi;

    use super::*;

    fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
        serde_yaml_ng::from_str(s).expect("yaml")
    }

    const STATUS: &str = "PATCH /api/v1/namespaces/shop/services/web/status";

    /// A controller serving classless Services from pool 192.0.2.0/24, with shop/web
    /// cached, writing to `api`; and the receiving end of its Event queue.
    fn controller(
        api: &FakeApi,
    ) -> (
        Controller,
        mpsc::UnboundedReceiver<EventBatch>,
        mpsc::UnboundedSender<EventFailure>,
    ) {
        let web: LbService = yaml(
            "metadata: {name: web, namespace: shop, uid: u1}\nspec: {type: LoadBalancer, ports: [{port: 80}]}",
        );
        let (pools, mut pool_writer) = reflector::store();
        pool_writer.apply_watcher_event(&watcher::Event::Apply(yaml::<IPPool>(
            "metadata: {name: lan}\nspec: {addresses: [192.0.2.0/24]}",
        )));
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (failures_tx, event_failures) = mpsc::unbounded_channel();
        let controller = Controller::new(
            api.client(),
            ClassConfig {
                class: "herald.dev/lb".into(),
                serve_unset: true,
            },
            Arc::new(Registry::new()),
            [("shop/web".to_owned(), web)].into_iter().collect(),
            pools,
            reflector::store().0,
            (events_tx, event_failures),
        );
        (controller, events_rx, failures_tx)
    }

    fn reasons(batch: &[(String, Note)]) -> Vec<(&str, &str)> {
        batch
            .iter()
            .map(|(key, note)| (key.as_str(), note.reason.as_str()))
            .collect()
    }

    #[tokio::test]
    async fn an_event_that_could_not_be_published_is_said_again_on_the_next_pass() {
        let api = FakeApi::default();
        let (mut c, mut queued, failures) = controller(&api);
        let web = vec!["shop/web".to_owned()];

        c.pass(web.clone(), false).await;
        assert!(api.take().contains(&STATUS.to_owned()));
        let first = queued.try_recv().expect("an Event queued");
        assert_eq!(reasons(&first), [("shop/web", "IPAllocated")]);

        // Said once: looking at the Service again queues nothing.
        c.pass(web.clone(), false).await;
        assert!(queued.try_recv().is_err());

        // The publisher could not publish it: the next pass, whatever woke it, says it again.
        let (key, note) = &first[0];
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

    #[tokio::test]
    async fn the_publisher_reports_events_it_could_not_publish() {
        let api = FakeApi::default();
        let web: LbService = yaml("metadata: {name: web, namespace: shop, uid: u1}");
        let services: Cache<LbService> = [("shop/web".to_owned(), web)].into_iter().collect();
        let (batches_tx, batches) = mpsc::unbounded_channel();
        let (failures_tx, mut failures) = mpsc::unbounded_channel();
        let reporter = Reporter {
            controller: CONTROLLER_MANAGER.into(),
            instance: "pod-1".into(),
            action: "Allocate".into(),
        };
        let publisher = tokio::spawn(publish_events(
            api.client(),
            services,
            reporter,
            Arc::new(Registry::new()),
            batches,
            failures_tx,
        ));
        let allocated = Note::normal("IPAllocated", "assigned 192.0.2.1");
        let gone = Note::normal("IPAllocated", "about a Service deleted meanwhile");
        api.fail_events(1);
        batches_tx
            .send(vec![
                ("shop/web".to_owned(), allocated.clone()),
                ("shop/gone".to_owned(), gone),
            ])
            .expect("send");
        drop(batches_tx);
        publisher.await.expect("publisher");
        assert_eq!(
            failures.try_recv().expect("a failure"),
            ("shop/web".to_owned(), fingerprint(&allocated))
        );
        // The deleted Service's Event is dropped, not published and not a failure.
        assert!(failures.try_recv().is_err());
        assert_eq!(
            api.take(),
            ["POST /apis/events.k8s.io/v1/namespaces/shop/events"]
        );
    }
}
