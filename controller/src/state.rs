//! What the API should say, given what the caches show: the controller's decisions, with no
//! I/O, no clock of its own and no metrics. `run` feeds it the caches (through [`World`]),
//! performs the [`Write`]s it returns, publishes its Events and turns its [`Tally`] into
//! metrics. A new rule goes here, with a unit test that needs no API server.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use herald_api::events::{Note, bounded};
use herald_api::fingerprint;
use herald_api::{IPPool, IPPoolStatus, LbService};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;

use crate::allocator::{Allocator, Assigned, Request, Sharing};
use crate::pools::{self, ParsedPool};
use crate::service::{self, ClassConfig, Intent};
use crate::status::{self, ServiceOutcome};

/// Marks pools Herald protects: a pool Services hold addresses of is deleted only once they
/// have released them.
pub const POOL_FINALIZER: &str = "herald.dev/pool-protection";

/// Most addresses one pool keeps for Services that gave them up: `status.retained` lists
/// them all and must stay far below the API server's object size limit (about 100 KiB).
pub const RETAINED_PER_POOL: usize = 1024;

/// What the controller's caches show. The run loop implements it over its watches; tests
/// over plain maps.
pub trait World {
    fn service(&self, key: &str) -> Option<Arc<LbService>>;
    fn services(&self) -> Vec<Arc<LbService>>;
    fn pools(&self) -> Vec<Arc<IPPool>>;
    fn pool(&self, name: &str) -> Option<Arc<IPPool>>;
    /// The labels of a namespace (empty when it is not known).
    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String>;
}

/// One API write decided on.
#[derive(Debug)]
pub enum Write {
    /// The status of the Service `key` (`namespace/name`).
    Status {
        key: String,
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

/// What a pool should show, and whether it shows something else.
#[derive(Debug)]
pub struct PoolReport {
    pub name: String,
    pub status: IPPoolStatus,
    /// The pool object shows another status (or none): it needs writing.
    pub differs: bool,
}

/// What the decisions since the last `take_tally` amount to, for the metrics.
#[derive(Debug, Default, PartialEq)]
pub struct Tally {
    /// Services given new IPs (first allocation or a move), by key.
    pub allocated: Vec<String>,
    /// Services entering a failed state, by reason (on change, not per retry).
    pub failures: Vec<String>,
}

pub struct State {
    config: ClassConfig,
    parsed_pools: Vec<ParsedPool>,
    allocator: Allocator,
    /// The Event last said per Service, so Events go out on change only. (A fingerprint of
    /// it: only change matters, and 10,000 messages would cost memory.)
    last_note: LastNotes,
    /// Services that want an IP and have none: looked at again when an IP frees up or pools
    /// change.
    waiting: BTreeSet<String>,
    /// Services to look at again on the next pass (a write or an Event failed).
    retry: BTreeSet<String>,
    /// Events decided since the last `take_events`: (Service key, what to say).
    events: Vec<(String, Note)>,
    /// A Service gave IPs back since the last `take_freed`.
    freed: bool,
    tally: Tally,
}

impl State {
    /// The state the API already shows: every IP in a Service's status counts as taken
    /// before anything is allocated (Herald's own assignments restored, other load
    /// balancers' IPs reserved).
    pub fn rebuild(config: ClassConfig, world: &impl World) -> Self {
        let mut state = State {
            config,
            parsed_pools: Vec::new(),
            allocator: Allocator::new(),
            last_note: LastNotes::default(),
            waiting: BTreeSet::new(),
            retry: BTreeSet::new(),
            events: Vec::new(),
            freed: false,
            tally: Tally::default(),
        };
        state.sync_pools(world);
        for svc in sorted(world.services()) {
            let key = svc.key();
            let ips = svc.status.ingress.to_vec();
            if ips.is_empty() {
                continue;
            }
            match (svc.status_is_ours(), service::intent(&svc, &state.config)) {
                (true, Intent::Wants(w)) => {
                    if let Err(e) = state.allocator.restore(&key, &ips, &w.sharing) {
                        tracing::warn!(service = %key, "not restoring its IPs: {e}");
                    } else {
                        // Said by the replica that allocated it: a restart or a new leader
                        // does not say it again for every Service (100,000 Events).
                        let note = allocated_note(state.allocator.assigned(&key));
                        state.last_note.insert(&key, fingerprint(&note));
                    }
                }
                (true, _) => {}
                (false, Intent::Wants(w)) => {
                    state.adopt(&key, &ips, &w.sharing);
                }
                (false, _) => ips
                    .iter()
                    .for_each(|ip| state.allocator.reserve_foreign(&key, *ip)),
            }
        }
        // What the pools' statuses keep for Services that gave their addresses up (those
        // due are dropped on the first pass).
        for pool in world.pools() {
            if pool.spec.retention().is_none() {
                continue;
            }
            for kept in pool.status.iter().flat_map(|s| &s.retained) {
                let (Ok(ip), Ok(until)) = (kept.address.parse(), kept.until.parse()) else {
                    tracing::warn!(pool = ?pool.metadata.name, address = %bounded(&kept.address, 64), "ignoring an unreadable status.retained entry");
                    continue;
                };
                state
                    .allocator
                    .retain(ip, &kept.service, until, RETAINED_PER_POOL);
            }
        }
        state
    }

    /// Ends the retentions due by `now`: their addresses are free for anyone.
    pub fn expire(&mut self, now: Timestamp) {
        self.freed |= self.allocator.expire(now);
    }

    /// When the next retention ends (the shell wakes then to `expire`).
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.allocator.next_expiry()
    }

    /// Keeps the addresses `key` gave up for it, where their pool says to (`retainFor`).
    fn retain(&mut self, key: &str, released: &[IpAddr], now: Timestamp) {
        for &ip in released {
            let Some(keep) = self.allocator.pool_of(ip).and_then(|p| p.retain_for) else {
                continue;
            };
            let until = now
                .checked_add(keep)
                .map(|t| t.round(k8s_openapi::jiff::Unit::Second).unwrap_or(t))
                .unwrap_or(Timestamp::MAX);
            if self.allocator.retain(ip, key, until, RETAINED_PER_POOL) {
                tracing::info!(service = %key, %ip, %until, "address kept for the Service");
            }
        }
    }

    /// Takes the pools as the caches show them now.
    pub fn sync_pools(&mut self, world: &impl World) {
        let objects: Vec<IPPool> = world.pools().iter().map(|p| (**p).clone()).collect();
        self.parsed_pools = pools::parse(&objects);
        self.freed |= self
            .allocator
            .set_pools(self.parsed_pools.iter().map(|p| p.pool.clone()));
    }

    /// Every Service worth a look in a full pass: those cached, and those only the state
    /// still knows (deleted while a watch was re-listing).
    pub fn every_service(&self, world: &impl World) -> Vec<String> {
        // Those without an address first: after a restart over 100,000 Services, the few
        // created meanwhile get theirs at once, not after the pass has looked at the others.
        let mut keys: Vec<(bool, String)> = world
            .services()
            .iter()
            .map(|s| (!s.status.ingress.is_empty(), s.key()))
            .collect();
        keys.sort_unstable();
        let mut keys: Vec<String> = keys.into_iter().map(|(_, key)| key).collect();
        // Only those the cache no longer shows: no second copy of 100,000 names.
        keys.extend(
            self.allocator
                .services()
                .map(|key| &**key)
                .chain(self.waiting.iter().map(String::as_str))
                .filter(|key| world.service(key).is_none())
                .map(str::to_owned),
        );
        keys
    }

    /// Forgets what was said of Services not among `keys` (a full pass's `every_service`):
    /// deleted while a watch re-listed, they will not be looked at again.
    pub fn forget_notes_except(&mut self, keys: &[String]) {
        self.last_note.retain(keys);
    }

    /// Services waiting for an IP.
    pub fn waiting(&self) -> impl Iterator<Item = &String> {
        self.waiting.iter()
    }

    pub fn waiting_count(&self) -> usize {
        self.waiting.len()
    }

    /// Services to look at again (their last write or Event failed).
    pub fn take_retry(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.retry)
    }

    /// Whether a Service gave IPs back since the last call.
    pub fn take_freed(&mut self) -> bool {
        std::mem::take(&mut self.freed)
    }

    /// The Events decided since the last call.
    pub fn take_events(&mut self) -> Vec<(String, Note)> {
        std::mem::take(&mut self.events)
    }

    pub fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.tally)
    }

    /// Writing the Service's status failed: look at it again.
    pub fn write_failed(&mut self, key: String) {
        self.retry.insert(key);
    }

    /// Publishing an Event failed: say it again on the next pass, unless something newer
    /// was said meanwhile.
    pub fn event_failed(&mut self, key: String, note: u64) {
        if self.last_note.get(&key) == Some(note) {
            self.last_note.remove(&key);
            self.retry.insert(key);
        }
    }

    /// What the Service `key` needs written now. Updates the allocator; queues Events.
    pub fn decide(&mut self, world: &impl World, key: &str, now: Timestamp) -> Vec<Write> {
        // Everything logged while deciding for one Service carries its key: one Service can
        // be followed through the logs (`RUST_LOG=debug` shows the span on every line).
        let _span = tracing::debug_span!("service", service = key).entered();
        let Some(svc) = world.service(key) else {
            // Deleted: its IPs go back to the pool.
            self.freed |= self.allocator.release_foreign(key);
            let freed = self.allocator.release(key);
            if !freed.is_empty() {
                self.freed = true;
                tracing::info!(service = %key, ?freed, "Service deleted; IPs released");
                self.retain(key, &freed, now);
            }
            self.last_note.remove(key);
            self.waiting.remove(key);
            return Vec::new();
        };
        match service::intent(&svc, &self.config) {
            Intent::NotOurs => {
                let freed = self.allocator.release(key);
                self.freed |= !freed.is_empty();
                self.retain(key, &freed, now);
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
                let freed = self.allocator.release(key);
                self.freed |= !freed.is_empty();
                self.retain(key, &freed, now);
                self.failure(&svc, reason, &message, now)
            }
            Intent::Wants(wants) => {
                // Its status written by another load balancer (a migration under way): its IPs
                // are taken over once Herald's pools hold them, never replaced by new ones.
                if !svc.status_is_ours()
                    && !svc.status.ingress.is_empty()
                    && self.allocator.assigned(key).is_empty()
                    && !self.adopt(key, &svc.status.ingress, &wants.sharing)
                {
                    return self.foreign_wait(&svc);
                }
                let before: Vec<IpAddr> =
                    self.allocator.assigned(key).iter().map(|a| a.ip).collect();
                let request = Request {
                    service: key.into(),
                    families: wants.families,
                    requested_ips: wants.requested_ips,
                    pool: wants.pool,
                    eligible_pools: eligible_pools(world, &svc),
                    sharing: wants.sharing,
                };
                match self.allocator.allocate(&request) {
                    Ok(assigned) => {
                        self.waiting.remove(key);
                        let mut writes = Vec::new();
                        let outcome = ServiceOutcome::allocated(&assigned);
                        if outcome.differs_from(&svc) {
                            writes.push(status_write(&svc, outcome.apply(&svc, now)));
                        }
                        let after: Vec<IpAddr> = assigned.iter().map(|a| a.ip).collect();
                        if before != after {
                            self.tally.allocated.push(svc.key());
                            self.freed |= before.iter().any(|ip| !after.contains(ip));
                            let eligible = &request.eligible_pools;
                            if let Some(note) =
                                self.moved_note(&before, &after, &assigned, eligible)
                            {
                                self.note(&svc, note);
                            }
                        }
                        let unconsented = self.allocator.unconsented_sharers(key);
                        let note = if unconsented.is_empty() {
                            allocated_note(&assigned)
                        } else {
                            consent_note(&assigned, &unconsented)
                        };
                        self.note(&svc, note);
                        writes
                    }
                    Err(e) => {
                        self.freed |= !before.is_empty();
                        self.retain(key, &before, now);
                        self.failure(&svc, e.reason(), &e.to_string(), now)
                    }
                }
            }
        }
    }

    /// What every pool should show (the shell writes those that differ and refreshes the
    /// pool gauges), and Herald's finalizer to add or remove where needed.
    pub fn pools(&self, world: &impl World, now: Timestamp) -> (Vec<PoolReport>, Vec<Write>) {
        let mut reports = Vec::new();
        let mut finalizers = Vec::new();
        for parsed in &self.parsed_pools {
            let name = &parsed.pool.name;
            let object = world.pool(name);
            let generation = object.as_ref().and_then(|o| o.metadata.generation);
            let shown = object.as_ref().and_then(|o| o.status.as_ref());
            let status = status::pool_status(parsed, &self.allocator, generation, shown, now);
            finalizers.extend(finalizer_write(object.as_deref(), &self.allocator));
            reports.push(PoolReport {
                name: name.to_string(),
                differs: !shown.is_some_and(|shown| status::same_pool_status(shown, &status)),
                status,
            });
        }
        (reports, finalizers)
    }

    /// A Service Herald serves whose status another load balancer wrote (a migration): it
    /// keeps its IPs when they are in Herald's pools and free, so nothing moves. Otherwise
    /// they stay reserved for it; false.
    fn adopt(&mut self, key: &str, ips: &[IpAddr], sharing: &Sharing) -> bool {
        self.freed |= self.allocator.release_foreign(key);
        let in_pools = ips.iter().all(|ip| self.allocator.pool_of(*ip).is_some());
        match in_pools.then(|| self.allocator.restore(key, ips, sharing)) {
            Some(Ok(())) => {
                tracing::info!(service = %key, ?ips, "adopted the IPs in its status");
                true
            }
            _ => {
                ips.iter()
                    .for_each(|ip| self.allocator.reserve_foreign(key, *ip));
                false
            }
        }
    }

    /// A Service with another load balancer's IPs that Herald cannot take over yet (no pool
    /// holds them, or another Service does): its status is left as it is (writing it would
    /// fight the other controller, or renumber the Service) and a Warning says what Herald
    /// waits for. It is decided again when pools change.
    fn foreign_wait(&mut self, svc: &LbService) -> Vec<Write> {
        let key = svc.key();
        self.waiting.insert(key.clone());
        // A status may list many addresses: four say enough.
        let mut ips: Vec<String> = svc
            .status
            .ingress
            .iter()
            .take(4)
            .map(ToString::to_string)
            .collect();
        if svc.status.ingress.len() > 4 {
            ips.push(format!("and {} more", svc.status.ingress.len() - 4));
        }
        let message = format!(
            "its IPs {} were not allocated by Herald and no IPPool holds them free: Herald leaves its status as it is and takes them over once an IPPool holds them (apply the converted configuration of the load balancer that allocated them)",
            ips.join(", ")
        );
        self.note(svc, Note::warning("ForeignIPs", &message));
        Vec::new()
    }

    /// A Service whose IP left every pool (a pool edit), or whose pool no longer admits it
    /// (its serviceAllocation or the namespace's labels changed), is moved; say so loudly,
    /// since clients of the old IP lose it.
    fn moved_note(
        &self,
        before: &[IpAddr],
        after: &[IpAddr],
        assigned: &[Assigned],
        eligible: &[String],
    ) -> Option<Note> {
        let left = || before.iter().filter(|ip| !after.contains(ip));
        let gone: Vec<String> = left()
            .filter(|ip| self.allocator.pool_of(**ip).is_none())
            .map(ToString::to_string)
            .collect();
        let refused: Vec<String> = left()
            .filter_map(|ip| {
                let pool = self.allocator.pool_of(*ip)?;
                (!eligible.iter().any(|e| **e == *pool.name))
                    .then(|| format!("{ip} (IPPool {})", pool.name))
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
        let mut ips = svc.status.ingress.to_vec();
        ips.sort();
        if self.allocator.foreign_of(&key) == ips {
            return;
        }
        self.freed |= self.allocator.release_foreign(&key);
        for ip in &ips {
            self.allocator.reserve_foreign(&key, *ip);
        }
    }

    fn failure(
        &mut self,
        svc: &LbService,
        reason: &str,
        message: &str,
        now: Timestamp,
    ) -> Vec<Write> {
        let key = svc.key();
        self.waiting.insert(key.clone());
        let mut writes = Vec::new();
        let outcome = ServiceOutcome::failed(reason, message);
        if outcome.differs_from(svc) {
            writes.push(status_write(svc, outcome.apply(svc, now)));
        }
        let note = Note::warning(reason, message);
        if self.last_note.get(&key) != Some(fingerprint(&note)) {
            self.tally.failures.push(reason.to_owned());
        }
        self.note(svc, note);
        writes
    }

    /// Queues an Event for `note`, unless it is what was last said about this Service.
    fn note(&mut self, svc: &LbService, note: Note) {
        let key = svc.key();
        let fp = fingerprint(&note);
        if self.last_note.get(&key) == Some(fp) {
            return;
        }
        self.last_note.insert(&key, fp);
        self.events.push((key, note));
    }
}

/// What is said of a Service given (or keeping) `assigned`.
fn allocated_note(assigned: &[Assigned]) -> Note {
    Note::normal(
        "IPAllocated",
        format!("assigned {}", status::describe(assigned)),
    )
}

/// A Service sharing an IP across namespaces from before each side had to agree: it keeps
/// the IP, and is told what to add (nothing breaks silently on an upgrade).
fn consent_note(assigned: &[Assigned], others: &[(IpAddr, String)]) -> Note {
    let pairs: Vec<String> = others
        .iter()
        .map(|(ip, other)| format!("{ip} with {other}"))
        .collect();
    Note::warning(
        "SharingNeedsConsent",
        format!(
            "assigned {}; it shares {} across namespaces without both Services agreeing: it keeps the IP, but add {} naming the other's namespace (or *) to each, or a Service of another namespace will not be able to join it again",
            status::describe(assigned),
            herald_api::events::bounded(&pairs.join(", "), 512),
            herald_api::keys::SHARING_CROSS_NAMESPACE
        ),
    )
}

/// The pools a Service may take addresses from: the allocator's boundary.
fn eligible_pools(world: &impl World, svc: &LbService) -> Vec<String> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    let ns_labels = world.namespace_labels(ns);
    pools::eligible(&world.pools(), ns, &ns_labels, svc.labels())
}

fn sorted(mut services: Vec<Arc<LbService>>) -> Vec<Arc<LbService>> {
    services.sort_by_cached_key(|s| s.key());
    services
}

fn status_write(svc: &LbService, apply: Service) -> Write {
    Write::Status {
        key: svc.key(),
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

/// The fingerprint of the note last said per Service, by a 64-bit digest of its key: 16
/// bytes a Service instead of a copy of its name (8 MB at 100,000). Two keys with one
/// digest (odds of 1 in 10^10 at 100,000 Services) would at worst silence a repeated note.
#[derive(Default)]
struct LastNotes(std::collections::HashMap<u64, u64>);

impl LastNotes {
    fn get(&self, key: &str) -> Option<u64> {
        self.0.get(&fingerprint(key)).copied()
    }
    fn insert(&mut self, key: &str, note: u64) {
        self.0.insert(fingerprint(key), note);
    }
    fn remove(&mut self, key: &str) {
        self.0.remove(&fingerprint(key));
    }
    /// Keeps only the Services in `keys` (a full pass: those deleted unseen go).
    fn retain<'k>(&mut self, keys: impl IntoIterator<Item = &'k String>) {
        let live: std::collections::HashSet<u64> =
            keys.into_iter().map(|k| fingerprint(k.as_str())).collect();
        self.0.retain(|k, _| live.contains(k));
        self.0.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
        serde_yaml_ng::from_str(s).expect("yaml")
    }

    /// A world of plain maps.
    #[derive(Default)]
    struct Maps {
        services: BTreeMap<String, Arc<LbService>>,
        pools: BTreeMap<String, Arc<IPPool>>,
        namespaces: BTreeMap<String, BTreeMap<String, String>>,
    }

    impl Maps {
        fn add_service(&mut self, y: &str) {
            let svc: LbService = yaml(y);
            self.services.insert(svc.key(), Arc::new(svc));
        }
        fn add_pool(&mut self, y: &str) {
            let pool: IPPool = yaml(y);
            self.pools.insert(
                pool.metadata.name.clone().unwrap_or_default(),
                Arc::new(pool),
            );
        }
    }

    impl World for Maps {
        fn service(&self, key: &str) -> Option<Arc<LbService>> {
            self.services.get(key).cloned()
        }
        fn services(&self) -> Vec<Arc<LbService>> {
            self.services.values().cloned().collect()
        }
        fn pools(&self) -> Vec<Arc<IPPool>> {
            self.pools.values().cloned().collect()
        }
        fn pool(&self, name: &str) -> Option<Arc<IPPool>> {
            self.pools.get(name).cloned()
        }
        fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
            self.namespaces.get(namespace).cloned().unwrap_or_default()
        }
    }

    fn config() -> ClassConfig {
        ClassConfig {
            class: "herald.dev/lb".into(),
            serve_unset: true,
        }
    }

    fn now() -> Timestamp {
        Timestamp::UNIX_EPOCH
    }

    fn assigned_ips(writes: &[Write]) -> Vec<String> {
        writes
            .iter()
            .filter_map(|w| match w {
                Write::Status { apply, .. } => apply.status.as_ref(),
                _ => None,
            })
            .flat_map(|s| s.load_balancer.iter())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .filter_map(|i| i.ip.clone())
            .collect()
    }

    fn reasons(events: &[(String, Note)]) -> Vec<&str> {
        events.iter().map(|(_, n)| n.reason.as_str()).collect()
    }

    const WEB: &str = "metadata: {name: web, namespace: shop, uid: u1}\nspec: {type: LoadBalancer, ports: [{port: 80}]}";

    /// A migration: a Service whose status another load balancer wrote keeps it untouched
    /// (no status write to fight over, no new IP) while no pool holds its IP, says so, and
    /// is taken over with the same IP once a pool holds it.
    #[test]
    fn another_load_balancers_ip_is_kept_until_a_pool_holds_it_then_adopted() {
        let mut world = Maps::default();
        world.add_pool("metadata: {name: other}\nspec: {addresses: [198.51.100.0/24]}");
        world.add_service(
            "metadata: {name: web, namespace: shop, uid: u1}\nspec: {type: LoadBalancer, ports: [{port: 80}]}\nstatus: {loadBalancer: {ingress: [{ip: 192.0.2.100}]}}",
        );
        let mut state = State::rebuild(config(), &world);
        let writes = state.decide(&world, "shop/web", now());
        assert!(
            writes.is_empty(),
            "the other load balancer's status is left alone: {writes:?}"
        );
        let events = state.take_events();
        assert_eq!(reasons(&events), ["ForeignIPs"]);
        assert!(events[0].1.message.contains("192.0.2.100"), "{events:?}");
        assert_eq!(state.waiting().count(), 1);
        // The converted pool arrives: adopted, the same IP, Herald's condition.
        world.add_pool("metadata: {name: lan}\nspec: {addresses: [192.0.2.100-192.0.2.119]}");
        state.sync_pools(&world);
        let writes = state.decide(&world, "shop/web", now());
        assert_eq!(assigned_ips(&writes), ["192.0.2.100"]);
        assert_eq!(reasons(&state.take_events()), ["IPAllocated"]);
        assert_eq!(state.waiting().count(), 0);
    }

    #[test]
    fn a_namespace_losing_its_pool_moves_the_service_and_says_so() {
        let mut world = Maps::default();
        world.add_pool(
            "metadata: {name: a-reserved}\nspec: {addresses: [192.0.2.10/32], serviceAllocation: {namespaceSelectors: [{matchLabels: {team: shop}}]}}",
        );
        world.add_pool("metadata: {name: b-shared}\nspec: {addresses: [198.51.100.7/32]}");
        world
            .namespaces
            .insert("shop".into(), [("team".into(), "shop".into())].into());
        world.add_service(WEB);
        let mut state = State::rebuild(config(), &world);

        let writes = state.decide(&world, "shop/web", now());
        assert_eq!(assigned_ips(&writes), ["192.0.2.10"]);
        assert_eq!(reasons(&state.take_events()), ["IPAllocated"]);
        assert_eq!(state.take_tally().allocated.len(), 1);

        // The namespace is relabelled: the reserved pool no longer admits the Service.
        world.namespaces.insert("shop".into(), BTreeMap::new());
        let writes = state.decide(&world, "shop/web", now());
        assert_eq!(assigned_ips(&writes), ["198.51.100.7"]);
        let events = state.take_events();
        assert_eq!(reasons(&events), ["IPMoved", "IPAllocated"]);
        assert!(
            events[0]
                .1
                .message
                .contains("192.0.2.10 (IPPool a-reserved)")
        );
        assert!(state.take_freed(), "the old address went back to its pool");
    }

    #[test]
    fn a_failure_is_counted_and_said_once_and_the_service_waits() {
        let mut world = Maps::default();
        world.add_pool("metadata: {name: tiny}\nspec: {addresses: [192.0.2.1/32]}");
        world.add_service(WEB);
        world.add_service("metadata: {name: api, namespace: shop, uid: u2}\nspec: {type: LoadBalancer, ports: [{port: 80}]}");
        let mut state = State::rebuild(config(), &world);
        state.decide(&world, "shop/api", now());
        state.take_tally();
        state.take_events();

        for _ in 0..3 {
            state.decide(&world, "shop/web", now());
        }
        assert_eq!(
            state.take_tally(),
            Tally {
                allocated: Vec::new(),
                failures: vec!["PoolExhausted".into()]
            }
        );
        assert_eq!(reasons(&state.take_events()), ["PoolExhausted"]);
        assert_eq!(state.waiting().collect::<Vec<_>>(), ["shop/web"]);

        // The other Service goes away: its address frees up and the waiting one gets it.
        world.services.remove("shop/api");
        state.decide(&world, "shop/api", now());
        assert!(state.take_freed());
        let writes = state.decide(&world, "shop/web", now());
        assert_eq!(assigned_ips(&writes), ["192.0.2.1"]);
        assert_eq!(state.waiting_count(), 0);
    }

    #[test]
    fn an_event_that_failed_is_said_again_unless_something_newer_was_said() {
        let mut world = Maps::default();
        world.add_pool("metadata: {name: lan}\nspec: {addresses: [192.0.2.0/24]}");
        world.add_service(WEB);
        let mut state = State::rebuild(config(), &world);
        state.decide(&world, "shop/web", now());
        let said = state.take_events();
        let fp = fingerprint(&said[0].1);

        state.event_failed("shop/web".into(), fp ^ 1);
        assert!(
            state.take_retry().is_empty(),
            "an older note failed: nothing to redo"
        );
        state.event_failed("shop/web".into(), fp);
        assert_eq!(
            state.take_retry().into_iter().collect::<Vec<_>>(),
            ["shop/web"]
        );
        state.decide(&world, "shop/web", now());
        assert_eq!(state.take_events(), said);
    }

    #[test]
    fn a_deleted_pool_keeps_its_finalizer_while_a_service_holds_its_addresses() {
        let mut world = Maps::default();
        let pool = "metadata: {name: lan, finalizers: [herald.dev/pool-protection]}\nspec: {addresses: [192.0.2.0/24]}";
        world.add_pool(pool);
        world.add_service(WEB);
        let mut state = State::rebuild(config(), &world);
        state.decide(&world, "shop/web", now());
        let (reports, finalizers) = state.pools(&world, now());
        assert!(finalizers.is_empty(), "already protected: {finalizers:?}");
        assert_eq!(reports.len(), 1);
        assert!(reports[0].differs, "the pool shows no status yet");

        world.add_pool(&pool.replace(
            "name: lan,",
            "name: lan, deletionTimestamp: '2026-01-01T00:00:00Z',",
        ));
        state.sync_pools(&world);
        let (_, finalizers) = state.pools(&world, now());
        assert!(finalizers.is_empty(), "a Service still holds 192.0.2.0");

        world.services.remove("shop/web");
        state.decide(&world, "shop/web", now());
        let (_, finalizers) = state.pools(&world, now());
        assert!(matches!(
            finalizers.as_slice(),
            [Write::PoolFinalizer { name, protect: false }] if name == "lan"
        ));
    }

    /// A restarted controller (or a new leader) rebuilds from the statuses: it says nothing
    /// again about Services whose IPs it restored (100,000 Events on every restart).
    #[test]
    fn a_restart_says_nothing_again_about_services_it_restored() {
        let mut world = Maps::default();
        world.add_pool("metadata: {name: lan}\nspec: {addresses: [192.0.2.0/24]}");
        world.add_service(WEB);
        // The first controller allocates and writes the status.
        let mut first = State::rebuild(config(), &world);
        let written = first.decide(&world, "shop/web", now());
        let Some(Write::Status { apply, .. }) = written.first() else {
            panic!("no status written: {written:?}");
        };
        let mut web: serde_json::Value = yaml(WEB);
        web["status"] = serde_json::to_value(&apply.status).expect("status");
        let web: LbService = serde_json::from_value(web).expect("a Service");
        world.services.insert(web.key(), Arc::new(web));
        // The next one rebuilds from it.
        let mut state = State::rebuild(config(), &world);
        let writes = state.decide(&world, "shop/web", now());
        assert!(assigned_ips(&writes).is_empty(), "rewrote a current status");
        assert!(state.take_events().is_empty(), "said IPAllocated again");
        // A full pass looks first at the Services without an address (created while no
        // controller ran), then at the others.
        world.add_service(&WEB.replace("name: web", "name: zed"));
        assert_eq!(
            state.every_service(&world)[..2],
            ["shop/zed".to_owned(), "shop/web".to_owned()]
        );
        world.services.remove("shop/zed");
        // A Service allocated after the restart is spoken of as ever.
        world.add_service(&WEB.replace("name: web", "name: api"));
        let writes = state.decide(&world, "shop/api", now());
        assert_eq!(assigned_ips(&writes), ["192.0.2.1"]);
        assert_eq!(reasons(&state.take_events()), ["IPAllocated"]);
    }

    /// A Service deleted unseen (while a watch re-listed) and created again under its name
    /// is spoken of anew once a full pass has forgotten what was said of the old one.
    #[test]
    fn a_full_pass_forgets_what_was_said_of_services_deleted_unseen() {
        let mut world = Maps::default();
        world.add_pool("metadata: {name: tiny}\nspec: {addresses: [192.0.2.1/32]}");
        world.add_service(WEB);
        world.add_service(&WEB.replace("name: web", "name: api"));
        let mut state = State::rebuild(config(), &world);
        state.decide(&world, "shop/api", now());
        state.decide(&world, "shop/web", now());
        assert_eq!(
            reasons(&state.take_events()),
            ["IPAllocated", "PoolExhausted"]
        );
        // web (waiting, no address) goes and comes back unseen: still waiting, said once.
        let keys = state.every_service(&world);
        state.forget_notes_except(&keys);
        state.decide(&world, "shop/web", now());
        assert!(state.take_events().is_empty(), "said PoolExhausted twice");
        // api goes unseen: a full pass no longer lists it, and forgets it.
        world.services.remove("shop/api");
        state.allocator.release("shop/api");
        let keys = state.every_service(&world);
        assert!(!keys.contains(&"shop/api".to_owned()));
        state.forget_notes_except(&keys);
        world.add_service(&WEB.replace("name: web", "name: api"));
        state.decide(&world, "shop/api", now());
        assert_eq!(reasons(&state.take_events()), ["IPAllocated"]);
    }

    /// A Service deleted and created again (a Helm reinstall, a GitOps prune) gets its
    /// address back within the pool's retainFor, also from a controller that restarted in
    /// between; nobody else gets it meanwhile; once the time is over it is anyone's.
    #[test]
    fn a_deleted_services_address_is_kept_for_it_across_a_restart_until_retain_for_ends() {
        let mut world = Maps::default();
        let pool = "metadata: {name: lan}\nspec: {addresses: [192.0.2.1-192.0.2.2], retainFor: 1h}";
        world.add_pool(pool);
        world.add_service(WEB);
        let mut state = State::rebuild(config(), &world);
        assert_eq!(
            assigned_ips(&state.decide(&world, "shop/web", now())),
            ["192.0.2.1"]
        );
        world.services.remove("shop/web");
        let deleted: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        state.decide(&world, "shop/web", deleted);
        let (reports, _) = state.pools(&world, deleted);
        let retained = &reports[0].status.retained;
        assert_eq!(retained.len(), 1, "{retained:?}");
        assert_eq!(
            (
                retained[0].address.as_str(),
                retained[0].service.as_str(),
                retained[0].until.as_str()
            ),
            ("192.0.2.1", "shop/web", "2026-01-01T01:00:00Z")
        );
        assert_eq!(
            reports[0].status.available, "1",
            "the kept address is not available"
        );

        // The controller restarts: the pool's status is all it has of the retention.
        let mut written: IPPool = (*world.pools["lan"]).clone();
        written.status = Some(reports[0].status.clone());
        world.pools.insert("lan".into(), Arc::new(written));
        let mut state = State::rebuild(config(), &world);
        let api = WEB.replace("name: web", "name: api");
        world.add_service(&api);
        world.add_service(&WEB.replace("name: web", "name: db"));
        assert_eq!(
            assigned_ips(&state.decide(&world, "shop/api", deleted)),
            ["192.0.2.2"]
        );
        assert_eq!(reasons(&state.take_events()), ["IPAllocated"],);
        state.decide(&world, "shop/db", deleted);
        assert_eq!(reasons(&state.take_events()), ["PoolExhausted"]);
        // web comes back: its address.
        world.add_service(WEB);
        assert_eq!(
            assigned_ips(&state.decide(&world, "shop/web", deleted)),
            ["192.0.2.1"]
        );
        assert!(state.pools(&world, deleted).0[0].status.retained.is_empty());

        // Deleted again and left: at the hour the address is free and db, waiting, gets it.
        world.services.remove("shop/web");
        state.decide(&world, "shop/web", deleted);
        let due = state.next_expiry().expect("a retention");
        state.take_freed();
        state.expire(
            due.checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(1))
                .expect("time"),
        );
        assert!(!state.take_freed(), "not yet");
        state.expire(due);
        assert!(state.take_freed(), "waiting Services are looked at again");
        assert_eq!(
            assigned_ips(&state.decide(&world, "shop/db", due)),
            ["192.0.2.1"]
        );
    }

    #[test]
    fn a_pool_without_the_finalizer_gets_it() {
        let mut world = Maps::default();
        world.add_pool("metadata: {name: lan}\nspec: {addresses: [192.0.2.0/24]}");
        let state = State::rebuild(config(), &world);
        let (_, finalizers) = state.pools(&world, now());
        assert!(matches!(
            finalizers.as_slice(),
            [Write::PoolFinalizer { name, protect: true }] if name == "lan"
        ));
    }
}
