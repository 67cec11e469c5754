//! What the speaker writes about the IPs it speaks for: an Event on the Service when the node
//! announcing an IP changes (or why nobody may announce it), and one L2Announcement object
//! per Service IP so `kubectl get l2announcements` shows where each IP lives. Written from
//! the latest decision by a task of its own, so thousands of writes after a node died never
//! delay the next decision.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_api::ObjectKey;
use herald_api::announcement::{self, L2Announcement, L2AnnouncementSpec};
use herald_api::events::Reporter;
use herald_runtime::Publisher;
use herald_runtime::watch::Cache;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::announcements::{self, Seen, Step, Written, fingerprint};
use crate::plan::{Decision, IpDecision};
use crate::prose;
use crate::service::ServiceIps;

/// Objects are compared with what the API shows on every new decision and every change of
/// an object (so a wrong one is corrected at once), and every this long when a Service
/// changed (one created again under the same name, with the same IP, is a new owner) or
/// something is left to do: a write the watch never showed, a back-off or a failed Event
/// ends within it. A look that found everything as decided is not made again until
/// one of those inputs changes: 3,377 records checked every 5 s for nothing cost a fifth of
/// the idle speaker's CPU at 10,000 IPs (docs/benchmarks.md).
const LOOK_EVERY: Duration = Duration::from_secs(5);
/// How often at most the reporter lists every L2Announcement for records nobody deletes
/// (their owner stopped before their IP went): after a Service changed (only an IP leaving
/// its Service leaves a record stale), and again while some were stale in the last list;
/// one is deleted when stale in two lists in a row, so a record just written for an IP the
/// reporter has not seen yet is left alone.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// And at least this often, for a record written after the list that followed its
/// Service's change. Listing 10,000 records every minute for nothing cost the reporter about
/// 0.35% of a core (docs/benchmarks.md).
const SWEEP_AT_REST: Duration = Duration::from_secs(600);
/// After a failed write, no object is written for this long (the API server is down or
/// refusing: 10,000 IPs must not mean 10,000 failing requests a second).
const BACK_OFF: Duration = Duration::from_secs(5);

/// Nodes that announced an IP over this speaker's claim: proof that they run although this
/// speaker does not hear them (`isolation`). Shared with the run loop, which forgets a node
/// once it is heard again or stops being Ready.
#[derive(Clone, Default)]
pub struct Claims(Arc<Mutex<BTreeSet<String>>>);

impl Claims {
    fn add(&self, node: &str) {
        self.0.lock().insert(node.to_owned());
    }

    /// Runs `f` on the claims (the pass reads them and forgets those that no longer count).
    pub fn with<R>(&self, f: impl FnOnce(&mut BTreeSet<String>) -> R) -> R {
        f(&mut self.0.lock())
    }
}

/// Events about announcing and the L2Announcement objects, for the IPs this speaker speaks
/// for (`Decision`): the owner says it announces; the reporter says why nobody may, and
/// deletes objects of IPs no Service holds any more. Events are said on change only, and
/// again after a failed write; objects are kept equal to the decision.
pub struct Notes {
    client: Client,
    events: Publisher,
    /// The owner reference of every record (`None`: its Service).
    owner: Option<OwnerReference>,
    /// What was said in Events per IP this speaker speaks for: per Service (fingerprint of
    /// key and uid), the outcome it was last told about (a fingerprint too). Forgotten when
    /// another speaker takes the IP over (or its Services go), so it is said again if the
    /// IP comes back.
    said: HashMap<IpAddr, Vec<(u64, u64)>>,
    /// This speaker's last write of each object (`namespace/name`) of the IPs it speaks for.
    written: HashMap<String, Written>,
    claims: Claims,
    /// The run loop: told when a claim is recorded.
    wake: Arc<Notify>,
    /// No object is written before this (a write failed).
    back_off_until: Option<Instant>,
    /// Records stale in the reporter's last sweep.
    stale_since: HashMap<String, Instant>,
    /// When the reporter last listed the records, and the Services' generation then.
    swept: Option<(Instant, u64)>,
    /// Failed writes are logged at most once per interval, with a count.
    failures_logged: crate::logs::RateLimit,
    /// What the last look was made from, when it left nothing to do.
    settled: Option<Inputs>,
}

/// What a look reads: the decision and the generations of the two caches.
#[derive(PartialEq)]
struct Inputs {
    decision: Arc<Decision>,
    services: u64,
    objects: u64,
}

/// Whether the reporter lists every record now, given when it last did and the Services'
/// generation then (`swept`), the generation now, and whether the last list found some
/// stale.
fn sweep_due(swept: Option<(Instant, u64)>, services: u64, stale: bool, now: Instant) -> bool {
    let Some((at, then)) = swept else {
        return true;
    };
    let since = now.saturating_duration_since(at);
    since >= SWEEP_AT_REST || (since >= SWEEP_EVERY && (then != services || stale))
}

/// Who publishes the speaker's Events: the speaker of `node`, announcing.
pub fn reporter(node: &str) -> Reporter {
    Reporter {
        controller: "herald-speaker".into(),
        instance: node.into(),
        action: "Announce".into(),
    }
}

impl Notes {
    /// Every record written gets `owner` (Herald's speaker ClusterRole) as its owner
    /// reference instead of its Service.
    pub fn owned_by(mut self, owner: Option<OwnerReference>) -> Self {
        self.owner = owner;
        self
    }

    pub fn new(client: Client, node: &str, claims: Claims, wake: Arc<Notify>) -> Self {
        Self {
            owner: None,
            events: Publisher::new(client.clone(), reporter(node)),
            client,
            said: HashMap::new(),
            written: HashMap::new(),
            claims,
            wake,
            back_off_until: None,
            stale_since: HashMap::new(),
            swept: None,
            failures_logged: crate::logs::RateLimit::new(Duration::from_secs(10)),
            settled: None,
        }
    }

    /// Publishes from the latest decision (intermediate ones may be skipped when writes lag:
    /// only the latest state matters) whenever it or an object changes, and every
    /// `LOOK_EVERY`. Failed writes are made again at the next look.
    pub async fn run(
        mut self,
        services: Cache<ServiceIps>,
        objects: Cache<Seen>,
        objects_changed: Arc<Notify>,
        mut decisions: watch::Receiver<Arc<Decision>>,
    ) {
        let mut look = tokio::time::interval(LOOK_EVERY);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = decisions.changed() => if changed.is_err() { return },
                _ = objects_changed.notified() => {}
                _ = look.tick() => {}
            }
            let now = decisions.borrow_and_update().clone();
            self.look(&services, &objects, now).await;
        }
    }

    /// Publishes from `now` unless the last look was made from the same inputs and left
    /// nothing to do; the reporter's sweep runs on its own clock either way.
    async fn look(
        &mut self,
        services: &Cache<ServiceIps>,
        objects: &Cache<Seen>,
        now: Arc<Decision>,
    ) {
        // Read before the look: a change made while it runs moves them, and is looked at.
        let inputs = Inputs {
            decision: now,
            services: services.generation(),
            objects: objects.generation(),
        };
        let reporter = inputs.decision.reporter;
        // Taken, not borrowed: an older decision is not kept alive while the look runs.
        match self.settled.take() {
            Some(settled) if settled == inputs => self.settled = Some(settled),
            _ => {
                let settled = self.publish_all(services, objects, &inputs.decision).await;
                self.settled = settled.then_some(inputs);
            }
        }
        if reporter {
            self.sweep(services).await;
        } else {
            self.stale_since.clear();
        }
    }

    /// Makes the Events and objects of every IP in `now` say what it does; true when they
    /// all did already, or were written and nothing failed or waits.
    async fn publish_all(
        &mut self,
        services: &Cache<ServiceIps>,
        objects: &Cache<Seen>,
        now: &Decision,
    ) -> bool {
        self.said.retain(|ip, _| now.ips.contains_key(ip));
        self.said.shrink_to(now.ips.len());
        // The records of IPs this speaker no longer speaks for: if no Service holds the IP
        // any more, this speaker wrote the last word on it and deletes it; otherwise the
        // IP's new owner rewrites it.
        let mut gone = Vec::new();
        self.written.retain(|key, w| {
            let keep = now.ips.contains_key(&w.ip);
            if !keep {
                let held = services
                    .get(&w.service)
                    .is_some_and(|s| s.ips.contains(&w.ip));
                if !held {
                    gone.push(key.clone());
                }
            }
            keep
        });
        self.delete(gone).await;
        let mut settled = true;
        for (ip, d) in &now.ips {
            // What is logged about one IP carries it and its Services.
            let span = tracing::debug_span!("ip", %ip, services = ?d.services);
            settled &= self
                .publish(services, objects, *ip, d)
                .instrument(span)
                .await;
        }
        settled
    }

    /// The reporter's sweep for records nobody deletes (their owner stopped before its IP
    /// went): when `sweep_due`, a paged list of all L2Announcements; one stale in two
    /// sweeps in a row is deleted.
    async fn sweep(&mut self, services: &Cache<ServiceIps>) {
        let now = Instant::now();
        let generation = services.generation();
        if !sweep_due(self.swept, generation, !self.stale_since.is_empty(), now) {
            return;
        }
        // A failed list is made again after SWEEP_EVERY, as after a change.
        let before = self.swept.map_or(generation.wrapping_add(1), |(_, g)| g);
        self.swept = Some((now, before));
        let api = Api::<L2Announcement>::all(self.client.clone());
        let mut stale = Vec::new();
        // Pages of 100: a page of 500 records, its text and its objects at once, raised the
        // speaker's peak by 0.8 MiB at 10,000 records (docs/benchmarks.md); the list is rare.
        let mut params = ListParams::default().limit(100);
        loop {
            let page = match api.list(&params).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!("listing L2Announcements for stale ones: {e}");
                    return;
                }
            };
            for object in &page.items {
                let key = ObjectKey::of(&object.metadata);
                let service = ObjectKey::new(key.namespace, &object.spec.service);
                let service = services.get(&service.to_string());
                if announcements::stale(&object.spec, service.as_deref()) {
                    stale.push(key.to_string());
                }
            }
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => break,
            }
        }
        self.swept = Some((now, generation));
        let seen_before = std::mem::take(&mut self.stale_since);
        let (due, first): (Vec<String>, Vec<String>) = stale
            .into_iter()
            .partition(|key| seen_before.contains_key(key));
        self.stale_since = first.into_iter().map(|key| (key, now)).collect();
        self.delete(due).await;
    }

    /// Deletes the records `keys` (`namespace/name`).
    async fn delete(&mut self, keys: Vec<String>) {
        let mut deleted = Vec::new();
        for key in keys {
            let ObjectKey { namespace, name } = ObjectKey::parse(&key);
            match Api::<L2Announcement>::namespaced(self.client.clone(), namespace)
                .delete(name, &DeleteParams::default())
                .await
            {
                Ok(_) => deleted.push(key),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    tracing::warn!(announcement = %key, "deleting a stale L2Announcement: {e}");
                    // The sweep finds the rest.
                    break;
                }
            }
        }
        if !deleted.is_empty() {
            tracing::info!(
                count = deleted.len(),
                announcements = %crate::logs::bounded_list(&deleted),
                "deleted L2Announcements of IPs their Services no longer hold"
            );
        }
    }

    /// Makes the Events and objects of one IP say `d`: true when they did already, or were
    /// written and nothing failed or waits.
    async fn publish(
        &mut self,
        services: &Cache<ServiceIps>,
        objects: &Cache<Seen>,
        ip: IpAddr,
        d: &IpDecision,
    ) -> bool {
        // The IP's Services as cached now (one deleted since the decision is left out; it
        // leaves the next decision too). Their uids count: a Service deleted and created again
        // under the same name between two decisions is a new object to write about.
        let current: Vec<(&String, Arc<ServiceIps>)> = d
            .services
            .iter()
            .filter_map(|key| Some((key, services.get(key)?)))
            .collect();
        let mut settled = true;
        for (key, svc) in &current {
            settled &= self.keep_true(objects, key, svc, ip, d).await;
        }
        let me = self.events.reporter().instance.as_str();
        let said = self.said.entry(ip).or_default();
        // The node announcing changes with the outcome; the interfaces alone do not make an
        // Event ("announced by node X" is said when X changes, and only then), but having
        // some or none does (none is a Warning, and some again must say it is over).
        let told = fingerprint(&d.outcome.as_ref().map(|names| names.is_empty()));
        let keys: Vec<u64> = current
            .iter()
            .map(|(key, svc)| fingerprint(&(key, &svc.uid)))
            .collect();
        said.retain(|(k, _)| keys.contains(k));
        let untold: Vec<(&String, &ServiceIps, u64)> = current
            .iter()
            .zip(keys)
            .filter(|(_, k)| !said.contains(&(*k, told)))
            .map(|((key, svc), k)| (*key, &**svc, k))
            .collect();
        if untold.is_empty() {
            return settled;
        }
        let note = match &d.outcome {
            Ok(interfaces) => Some(prose::announced(ip, me, interfaces)),
            Err(e) => prose::not_announced(ip, e),
        };
        for (key, svc, k) in untold {
            if let Some(note) = &note
                && let Err(e) = self.events.about_service(svc.regarding(key), note).await
            {
                if let Some(suppressed) = self.failures_logged.allow(Instant::now()) {
                    tracing::warn!(service = %key, earlier_failures_not_logged = suppressed, "publishing event: {e}");
                }
                // Said again at the next look.
                settled = false;
                continue;
            }
            said.retain(|(s, _)| *s != k);
            said.push((k, told));
        }
        settled
    }
}

impl Notes {
    /// Makes the L2Announcement of one Service IP show the decision (see `announcements`):
    /// true when it did already (nothing to write, read or wait for).
    async fn keep_true(
        &mut self,
        objects: &Cache<Seen>,
        key: &str,
        svc: &ServiceIps,
        ip: IpAddr,
        d: &IpDecision,
    ) -> bool {
        let me = self.events.reporter().instance.clone();
        let me = me.as_str();
        let about = svc.regarding(key);
        let desired = L2AnnouncementSpec {
            service: about.name.to_owned(),
            ip: ip.to_string(),
            node: if d.outcome.is_ok() {
                me.to_owned()
            } else {
                String::new()
            },
            interfaces: d.outcome.clone().unwrap_or_default(),
            reason: d.outcome.as_ref().err().map(ToString::to_string),
        };
        let name = announcement::name(about.name, ip);
        let object_key = ObjectKey::new(about.namespace, &name).to_string();
        let mut seen = objects.get(&object_key);
        let cached = seen.is_some();
        let now = Instant::now();
        let owner = fingerprint(&svc.uid);
        // The cache keeps only records naming this node or nobody: one this speaker wrote
        // that left it names another node now (or is gone). Which one is worth a read.
        if seen.is_none()
            && let Some(w) = self.written.get(&object_key)
            && w.after.is_some()
            && w.owner == owner
        {
            // A list by name, not a get: the verbs the speaker has (list, watch) suffice.
            let by_name = ListParams::default().fields(&format!("metadata.name={name}"));
            match Api::<L2Announcement>::namespaced(self.client.clone(), about.namespace)
                .list(&by_name)
                .await
            {
                Ok(list) => {
                    seen = list.items.into_iter().next().map(|o| {
                        Arc::new(Seen::new(&o.spec, o.metadata.resource_version.as_deref()))
                    })
                }
                Err(e) => tracing::debug!(%ip, "reading an L2Announcement: {e}"),
            }
        }
        if self
            .written
            .get(&object_key)
            .is_some_and(|w| w.owner != owner)
        {
            // The Service was created again under the same name: a new object.
            self.written.remove(&object_key);
        }
        match announcements::step(
            me,
            &desired,
            seen.as_deref(),
            self.written.get(&object_key),
            now,
        ) {
            // Read past the cache: the watch has yet to show this object as it is.
            Step::Nothing => cached,
            Step::Wait => false,
            _ if self.back_off_until.is_some_and(|t| now < t) => false,
            step @ (Step::Contested { .. } | Step::Write) => {
                if let Step::Contested { node } = step {
                    tracing::debug!(%ip, %node, "another node claims an IP this speaker announces");
                    self.claims.add(&node);
                    self.wake.notify_one();
                }
                let object = L2Announcement {
                    metadata: kube::api::ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(about.namespace.to_owned()),
                        owner_references: Some(vec![self.owner.clone().unwrap_or_else(|| {
                            OwnerReference {
                                api_version: "v1".into(),
                                kind: "Service".into(),
                                name: about.name.to_owned(),
                                uid: about.uid.to_owned(),
                                ..Default::default()
                            }
                        })]),
                        ..Default::default()
                    },
                    spec: desired.clone(),
                };
                match Api::<L2Announcement>::namespaced(self.client.clone(), about.namespace)
                    .patch(
                        &name,
                        &PatchParams::apply("herald-speaker").force(),
                        &Patch::Apply(&object),
                    )
                    .await
                {
                    Ok(written) => {
                        self.written.insert(
                            object_key,
                            Written {
                                ip,
                                service: key.into(),
                                owner,
                                spec: announcements::spec_fingerprint(&desired),
                                before: seen.and_then(|s| s.version),
                                after: written
                                    .metadata
                                    .resource_version
                                    .as_deref()
                                    .map(announcements::version),
                                at: now,
                            },
                        );
                    }
                    Err(e) => {
                        self.back_off_until = Some(now + BACK_OFF);
                        if let Some(suppressed) = self.failures_logged.allow(now) {
                            tracing::warn!(service = %key, %ip, earlier_failures_not_logged = suppressed, "writing L2Announcement (writes pause for {BACK_OFF:?}): {e}");
                        }
                    }
                }
                // Written or not, looked at again: until the watch shows it as decided.
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use herald_runtime::testing::FakeApi;

    use super::*;
    use crate::election::NoOwner;

    const PATCH: &str =
        "PATCH /apis/herald.dev/v1alpha1/namespaces/shop/l2announcements/web-192-0-2-10";
    const EVENT: &str = "POST /apis/events.k8s.io/v1/namespaces/shop/events";

    fn decision(outcome: Result<Vec<String>, NoOwner>) -> Decision {
        let ip: IpAddr = "192.0.2.10".parse().expect("ip");
        Decision {
            ips: [(
                ip,
                IpDecision {
                    services: vec!["shop/web".into()],
                    outcome,
                },
            )]
            .into(),
            plan: Default::default(),
            reporter: false,
        }
    }

    fn no_objects() -> Cache<Seen> {
        std::iter::empty().collect()
    }

    fn notes(api: &FakeApi) -> Notes {
        Notes::new(
            api.client(),
            "n1",
            Claims::default(),
            Arc::new(Notify::new()),
        )
    }

    /// The Service shop/web holding 192.0.2.10.
    fn web(uid: &str) -> Cache<ServiceIps> {
        [(
            "shop/web".to_owned(),
            ServiceIps {
                uid: uid.into(),
                labels: None,
                local_traffic: false,
                ips: ["192.0.2.10".parse().expect("ip")].into(),
            },
        )]
        .into_iter()
        .collect()
    }

    #[tokio::test]
    async fn says_each_change_once_and_retries_what_failed() {
        let api = FakeApi::default();
        let mut notes = notes(&api);
        let services = web("u1");
        let eth0 = decision(Ok(vec!["eth0".into()]));

        // Gaining the IP: the L2Announcement and an Event; the Event POST fails.
        api.fail_events(1);
        notes.publish_all(&services, &no_objects(), &eth0).await;
        assert_eq!(api.take(), [PATCH, EVENT]);
        // Next decision, same outcome: the Event is tried again, the announcement is not.
        notes.publish_all(&services, &no_objects(), &eth0).await;
        assert_eq!(api.take(), [EVENT]);
        // Nothing changed and nothing failed: nothing is written.
        notes.publish_all(&services, &no_objects(), &eth0).await;
        assert!(api.take().is_empty());

        // Another interface: the L2Announcement says so; no Event (the node did not change).
        notes
            .publish_all(
                &services,
                &no_objects(),
                &decision(Ok(vec!["eth0".into(), "eth1".into()])),
            )
            .await;
        assert_eq!(api.take(), [PATCH]);

        // No interface left to answer on (a Warning), then one again (said again).
        notes
            .publish_all(&services, &no_objects(), &decision(Ok(vec![])))
            .await;
        assert_eq!(api.take(), [PATCH, EVENT]);
        notes.publish_all(&services, &no_objects(), &eth0).await;
        assert_eq!(api.take(), [PATCH, EVENT]);

        // Another node took the IP over (it leaves this node's decision), then it came back:
        // written again, with an Event, as the announcing node changed twice.
        notes
            .publish_all(&services, &no_objects(), &Decision::default())
            .await;
        assert!(api.take().is_empty());
        notes.publish_all(&services, &no_objects(), &eth0).await;
        assert_eq!(api.take(), [PATCH, EVENT]);

        // The Service was deleted and created again under the same name between two
        // decisions: a new object, whose L2Announcement and Event are written anew.
        notes.publish_all(&web("u2"), &no_objects(), &eth0).await;
        assert_eq!(api.take(), [PATCH, EVENT]);
    }

    #[tokio::test]
    async fn the_reporter_warns_once_and_not_about_missing_local_endpoints() {
        let api = FakeApi::default();
        let mut notes = notes(&api);
        let services = web("u1");
        let unadvertised = decision(Err(NoOwner::NotAdvertised("lan".into())));
        notes
            .publish_all(&services, &no_objects(), &unadvertised)
            .await;
        assert_eq!(api.take(), [PATCH, EVENT]);
        notes
            .publish_all(&services, &no_objects(), &unadvertised)
            .await;
        assert!(api.take().is_empty());
        // No ready endpoint is normal (scaled to zero): the object says so, no Warning.
        notes
            .publish_all(
                &services,
                &no_objects(),
                &decision(Err(NoOwner::NoLocalEndpoint)),
            )
            .await;
        assert_eq!(api.take(), [PATCH]);
        // Announced again: the node changed (from nobody), so an Event.
        notes
            .publish_all(&services, &no_objects(), &decision(Ok(vec!["eth0".into()])))
            .await;
        assert_eq!(api.take(), [PATCH, EVENT]);
    }

    /// The record of shop/web's 192.0.2.10 as the watch shows it: naming n1, on `interfaces`.
    fn shown(interfaces: &[&str], version: &str) -> Option<Seen> {
        let spec = L2AnnouncementSpec {
            service: "web".into(),
            ip: "192.0.2.10".into(),
            node: "n1".into(),
            interfaces: interfaces.iter().map(|i| i.to_string()).collect(),
            reason: None,
        };
        Some(Seen::new(&spec, Some(version)))
    }

    #[tokio::test]
    async fn a_look_with_nothing_new_is_skipped_only_once_nothing_is_left_to_do() {
        const RECORD: &str = "shop/web-192-0-2-10";
        let api = FakeApi::default();
        let mut notes = notes(&api);
        let services = web("u1");
        let eth0 = Arc::new(decision(Ok(vec!["eth0".into()])));
        // The record is right already (a restarted speaker); the Event fails.
        let objects = no_objects();
        objects.put(RECORD, shown(&["eth0"], "1"));
        api.fail_events(1);
        notes.look(&services, &objects, eth0.clone()).await;
        assert_eq!(api.take(), [EVENT]);
        // The same inputs: the failed Event is said again; then nothing is left to do.
        notes.look(&services, &objects, eth0.clone()).await;
        assert_eq!(api.take(), [EVENT]);
        notes.look(&services, &objects, eth0.clone()).await;
        assert!(api.take().is_empty());
        // Someone edits the record; the decision is the same: the record is written back.
        objects.put(RECORD, shown(&["eth9"], "2"));
        notes.look(&services, &objects, eth0.clone()).await;
        assert_eq!(api.take(), [PATCH]);
        // Someone deletes it later on: written again.
        objects.put(RECORD, shown(&["eth0"], "3"));
        notes.look(&services, &objects, eth0.clone()).await;
        assert!(api.take().is_empty());
        objects.put(RECORD, None);
        notes.look(&services, &objects, eth0).await;
        assert_eq!(api.take(), [PATCH]);
    }

    #[test]
    fn the_reporter_lists_records_after_a_service_changed_and_rarely_at_rest() {
        let t0 = Instant::now();
        assert!(sweep_due(None, 7, false, t0), "the first look");
        let swept = Some((t0, 7));
        let later = t0 + SWEEP_EVERY;
        assert!(
            !sweep_due(swept, 8, true, t0 + Duration::from_secs(1)),
            "spaced"
        );
        assert!(sweep_due(swept, 8, false, later), "a Service changed");
        assert!(sweep_due(swept, 7, true, later), "stale ones to confirm");
        assert!(!sweep_due(swept, 7, false, later), "nothing new");
        assert!(
            sweep_due(swept, 7, false, t0 + SWEEP_AT_REST),
            "at rest, rarely"
        );
    }
}
