//! The speaker's I/O: watch what decides ownership (Services, Nodes, EndpointSlices, IPPools,
//! L2Advertisements, BGPPeers, BGPAdvertisements), follow interfaces and gossip, and after
//! every change run a `pass` (pure) and carry out its outcome: the `Announcer` answers for
//! this node's L2 share, the BGP `Sessions` tell the routers their routes, the heartbeat
//! thread is steered, metrics are recorded and `notes` writes what users see.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{Stream, StreamExt};
use herald_api::ObjectKey;
use herald_api::gossip::SecretRef;
use herald_api::{BGPAdvertisement, BGPPeer, IPPool, L2Advertisement, ServiceObject};
use herald_bgp::peer::Stop;
use herald_runtime::Publisher;
use herald_runtime::service_watch;
use herald_runtime::watch::{Cache, cached, projected, projected_from};
use herald_telemetry::Health;
use kube::Client;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio::sync::{Notify, watch};

use crate::announcements::Seen;
use crate::announcer::{Announcer, Conflicts};
use crate::bgp_records::{self, Board};
use crate::bgp_secrets::SecretFollower;
use crate::bgp_sessions::Sessions;
use crate::conflicts::Conflict;
use crate::election::Exclusion;
use crate::endpoints::ServingNodes;
use crate::gossip::{self, Gossip, Steering};
use crate::gossip_secret::{self, KeySource};
use crate::interfaces::{self, Snapshot};
use crate::isolation::Verdict;
use crate::metrics::{Metrics, ReasonLabels, TakeoverLabels};
use crate::node::NodeView;
use crate::notes::{self, Claims, Notes};
use crate::pass::{self, Inputs, Outcome, Pass};
use crate::plan::Decision;
use crate::prose;
use crate::service::ServiceIps;

pub struct Config {
    pub node: String,
    pub gossip_port: u16,
    pub gossip_keys: KeySource,
    pub heartbeat: Duration,
    pub failure_timeout: Duration,
    pub refresh: Duration,
    pub metrics_address: SocketAddr,
    /// The ClusterRole owning the L2Announcements (`None`: each is owned by its Service).
    pub records_owner: Option<String>,
    /// Heartbeats at the interval to the segment only (else to every node).
    pub segmented_liveness: bool,
    /// Which nodes count as excluded from load balancers.
    pub exclusion: Exclusion,
    /// Interfaces never chosen unless an L2Advertisement names them (patterns with `*`).
    pub ignored_interfaces: Vec<String>,
    /// How long a node newly serving a Local Service waits before announcing it over BGP.
    pub local_settle: Duration,
}

const MIN_COALESCE: Duration = Duration::from_millis(10);
const MAX_COALESCE: Duration = Duration::from_millis(250);

struct Stores {
    services: Cache<ServiceIps>,
    /// L2Announcements, for `notes` (which is told of their changes through the Notify).
    announcements: (Cache<Seen>, Arc<Notify>),
    nodes: Cache<NodeView>,
    slices: Cache<ServingNodes>,
    pools: Store<IPPool>,
    ads: Store<L2Advertisement>,
    bgp_peers: Store<BGPPeer>,
    bgp_ads: Store<BGPAdvertisement>,
    /// When the watches that feed the pass first saw a change no pass has read yet.
    first_unread: FirstUnread,
}

/// The first instant of a run of watch events not yet read by a pass: where the time a
/// change takes to reach the routers starts (`herald_speaker_bgp_update_delay`).
#[derive(Clone, Default)]
struct FirstUnread(Arc<Mutex<Option<Instant>>>);

impl FirstUnread {
    fn mark(&self) {
        let mut first = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        first.get_or_insert_with(Instant::now);
    }

    fn take(&self) -> Option<Instant> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

pub async fn run(client: Client, config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut registry = herald_telemetry::registry("speaker");
    let metrics = Metrics::register(&mut registry);
    let health = Arc::new(Health::new());
    let bound =
        herald_telemetry::serve(config.metrics_address, Arc::new(registry), health.clone()).await?;
    tracing::info!(%bound, node = %config.node, "serving /metrics, /healthz and /readyz");

    let changed = Arc::new(Notify::new());
    let stores = Stores::watch(&client, changed.clone(), &config.node);

    let (iface_tx, mut iface_rx) = watch::channel(Snapshot::default());
    let ignored = config.ignored_interfaces.clone();
    tokio::spawn(async move {
        if let Err(e) = interfaces::follow(iface_tx, Duration::from_secs(5), ignored).await {
            tracing::error!("following interfaces stopped: {e:#}");
        }
    });

    // Keys first: a speaker installed before the controller made the Secret waits for it.
    let (keys, key_updates) = match config.gossip_keys {
        KeySource::Fixed(keys) => (keys, None),
        KeySource::Secret(text) => {
            let secret = SecretRef::parse(&text, client.default_namespace());
            let mut updates = gossip_secret::follow(client.clone(), secret.clone());
            let keys = tokio::select! {
                k = gossip_secret::first_keys(&mut updates, &secret) => k?,
                _ = &mut shutdown => return Ok(()),
            };
            (keys, Some(updates))
        }
    };
    let (gossip, steering) = gossip::start(
        config.gossip_port,
        keys,
        config.node.clone(),
        config.failure_timeout,
        config.heartbeat,
        changed.clone(),
    )
    .await?;
    if let Some(updates) = key_updates {
        tokio::spawn(follow_key_rotation(gossip.clone(), updates));
    }
    stores.wait_until_ready().await?;

    let mut announcer = Announcer::new(config.refresh, metrics.clone());
    let events = Publisher::new(client.clone(), notes::reporter(&config.node));
    let board = Board::default();
    tokio::spawn(bgp_records::write(
        client.clone(),
        config.node.clone(),
        stores.nodes.clone(),
        board.clone(),
    ));
    let mut sessions = Sessions::new(metrics.clone(), events.clone(), &config.node, board);
    let mut secrets = SecretFollower::new(client.clone(), changed.clone());
    tokio::spawn(say_conflicts(
        events.clone(),
        announcer.conflicts(),
        stores.services.clone(),
        config.node.clone(),
    ));
    // Events and L2Announcements are written by a task of their own, from the latest
    // decision: a burst of thousands of writes (a node died) never delays the next pass.
    let (decision_tx, decision_rx) = watch::channel(Arc::new(Decision::default()));
    // Nodes that announced an IP over this speaker's claim: proof they run (isolation).
    let claims = Claims::default();
    let owner = match &config.records_owner {
        Some(name) => Some(herald_runtime::owner::cluster_role(&client, name).await?),
        None => None,
    };
    tokio::spawn(
        Notes::new(
            client.clone(),
            &config.node,
            claims.clone(),
            changed.clone(),
        )
        .owned_by(owner)
        .run(
            stores.services.clone(),
            stores.announcements.0.clone(),
            stores.announcements.1.clone(),
            decision_rx,
        ),
    );
    let settle = gossip.settle();
    let mut pass = Pass::new(
        &config.node,
        config.segmented_liveness,
        config.heartbeat,
        settle,
        Instant::now(),
    )
    .excluding(config.exclusion)
    .settling_local(config.local_settle);
    // Passes over many Services cost milliseconds: bursts of watch events are coalesced for
    // twice the last pass's time (at least 10 ms), so a speaker spends at most a third of a
    // core deciding while thousands of Services change.
    let mut coalesce;
    // A periodic pass covers anything a notification missed (and a first pass at once);
    // every change is notified, so this is a safety net, not the mechanism.
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        let snapshot = iface_rx.borrow_and_update().clone();
        // What this node tells its peers is also what it judges itself by (plan::View).
        let own_subnets = snapshot.subnets();
        steering.subnets.send_if_modified(|old| {
            let differs = *old != own_subnets;
            old.clone_from(&own_subnets);
            differs
        });
        // Peers gone, taken before the members are read: the first pass that takes IPs over
        // after a departure counts the takeover, from the last heartbeat (or leave) to now.
        let departures = gossip.take_departures();
        let gossiped = gossip.view(&config.node, own_subnets);
        // Taken before the caches are read: a change seen later is timed by the next pass.
        let changed_at = stores.first_unread.take();
        // The pass's time (its metric, and the coalescing after it) counts from here: what
        // the heartbeats say is copied out above, under the gossip thread's lock.
        let started = Instant::now();
        let mut outcome = {
            // The watches run on this thread: holding the read guards for the pass blocks
            // nobody.
            let (services, nodes, slices) = (
                stores.services.read(),
                stores.nodes.read(),
                stores.slices.read(),
            );
            let (pools, ads) = (stores.pools.state(), stores.ads.state());
            let pools: Vec<&IPPool> = pools.iter().map(|p| &**p).collect();
            let ads: Vec<&L2Advertisement> = ads.iter().map(|a| &**a).collect();
            let (bgp_peers, bgp_ads) = (stores.bgp_peers.state(), stores.bgp_ads.state());
            let bgp_peers: Vec<&BGPPeer> = bgp_peers.iter().map(|p| &**p).collect();
            let bgp_ads: Vec<&BGPAdvertisement> = bgp_ads.iter().map(|a| &**a).collect();
            // The password Secrets the peers name, each followed by its own watch.
            secrets.follow(
                bgp_peers
                    .iter()
                    .filter_map(|p| Some(p.spec.password_secret.as_ref()?.name.as_str()))
                    .collect(),
            );
            let bgp_secrets = secrets.states();
            let inputs = Inputs {
                now: started,
                stores: pass::Stores {
                    services: &services,
                    nodes: &nodes,
                    slices: &slices,
                    pools: &pools,
                    advertisements: &ads,
                    bgp_peers: &bgp_peers,
                    bgp_advertisements: &bgp_ads,
                    bgp_secrets: &bgp_secrets,
                },
                gossiped: &gossiped,
                interfaces: &snapshot,
                departures,
            };
            claims.with(|claims| pass.run(inputs, claims))
        };
        if let Some(verdict) = &outcome.isolation_changed {
            say_isolation(&events, &stores.nodes, &config.node, verdict);
        }
        steering
            .standby
            .send_if_modified(|old| std::mem::replace(old, outcome.isolated) != outcome.isolated);
        steer_peers(&steering, outcome.peers.clone());
        announcer.apply(&outcome.l2.plan, &snapshot.interfaces);
        let node_uid = stores
            .nodes
            .get(&ObjectKey::cluster(&config.node).to_string())
            .map(|n| n.uid.to_string())
            .unwrap_or_default();
        sessions.apply(std::mem::take(&mut outcome.bgp), &node_uid, changed_at);
        coalesce = (started.elapsed() * 2).clamp(MIN_COALESCE, MAX_COALESCE);
        record(&metrics, &outcome);
        health.set_ready(!outcome.standing_by);
        metrics
            .pass_duration
            .observe(started.elapsed().as_secs_f64());
        let look_again = outcome.look_again.map(tokio::time::Instant::from_std);
        // Only a decision that differs wakes the writer of Events and records: the same one
        // every safety-net pass would make it look at every IP again for nothing.
        let decision = std::mem::take(&mut outcome.l2);
        decision_tx.send_if_modified(move |last| {
            let differs = **last != decision;
            if differs {
                *last = Arc::new(decision);
            }
            differs
        });
        // Not kept while waiting: a decision kept besides the one sent is a second copy of
        // every IP this node speaks for.
        drop(outcome);

        tokio::select! {
            _ = changed.notified() => {
                // Let a burst of watch events settle into one pass.
                tokio::time::sleep(coalesce).await;
            }
            _ = iface_rx.changed() => {}
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(look_again.unwrap_or_else(tokio::time::Instant::now)),
                if look_again.is_some() => {}
            _ = &mut shutdown => break,
        }
    }
    // Leave first so the others take over at once, then stop answering.
    tracing::info!("leaving: telling the other speakers, then stopping announcements");
    let peers = pass::peers_of(&stores.nodes.read(), &config.node, None);
    gossip.leave(&peers.all).await;
    drop(announcer);
    // A SIGTERM on a node that stays in service is a restart (a rolling upgrade): routers
    // that negotiated graceful restart keep this node's routes until it is back, the others
    // are told Cease. On a node leaving service (drained, shutting down) every router is
    // told Cease: nothing would come back for the routes it kept.
    let node = stores
        .nodes
        .get(&ObjectKey::cluster(&config.node).to_string());
    let (how, why) = crate::bgp_plan::stop_of(node.as_deref());
    tracing::info!(withdraw = how == Stop::Cease, "closing BGP sessions: {why}");
    sessions.stop_all(how).await;
    Ok(())
}

/// The pass's tally as metrics.
fn record(metrics: &Metrics, outcome: &Outcome) {
    let tally = &outcome.tally;
    metrics.isolated.set(i64::from(outcome.isolated));
    metrics.ownership_changes.inc_by(tally.ownership_changes);
    for (how, took) in &tally.takeovers {
        metrics
            .takeover
            .get_or_create(&TakeoverLabels { peer: *how })
            .observe(took.as_secs_f64());
    }
    for (reason, count) in &tally.unannounced {
        metrics
            .unannounced
            .get_or_create(&ReasonLabels { reason })
            .set(*count as i64);
    }
    metrics.members.set(tally.members as i64);
}

/// Tells the heartbeat thread where heartbeats go, when that changed.
fn steer_peers(steering: &Steering, peers: gossip::Peers) {
    steering.peers.send_if_modified(|old| {
        let differs = *old != peers;
        if differs && old.segment != peers.segment {
            tracing::info!(
                nodes = peers.segment.len(),
                segment = %crate::logs::bounded_list(&peers.segment),
                "heartbeating a new segment every interval"
            );
        }
        *old = peers;
        differs
    });
}

/// A key rotation: the next heartbeat is signed, and the next received checked, with the
/// Secret's new keys.
async fn follow_key_rotation(
    gossip: Arc<Gossip>,
    mut updates: watch::Receiver<Option<Arc<crate::membership::Keys>>>,
) {
    while updates.changed().await.is_ok() {
        if let Some(keys) = updates.borrow_and_update().clone() {
            gossip.set_keys(keys);
        }
    }
}

impl Stores {
    fn watch(client: &Client, changed: Arc<Notify>, me: &str) -> Self {
        let first_unread = FirstUnread::default();
        let feed = Some(first_unread.clone());
        let (pools, pool_writer) = reflector::store();
        let (ads, ad_writer) = reflector::store();
        let (services, service_changes) = projected_from(
            service_watch::events(client.clone(), watcher::Config::default()),
            |o: ServiceObject| ServiceIps::of(o.service),
        );
        spawn_watch(service_changes, changed.clone(), feed.clone(), "Services");
        let (nodes, node_changes) =
            projected(client.clone(), watcher::Config::default(), NodeView::of);
        spawn_watch(node_changes, changed.clone(), feed.clone(), "Nodes");
        let me = me.to_owned();
        let (announcements, announcement_changes) =
            projected(client.clone(), watcher::Config::default(), move |a| {
                Seen::mine(a, &me)
            });
        let announcements_changed = Arc::new(Notify::new());
        // Not a change the pass acts on: not timed.
        spawn_watch(
            announcement_changes,
            announcements_changed.clone(),
            None,
            "L2Announcements",
        );
        let (slices, slice_changes) =
            projected(client.clone(), watcher::Config::default(), ServingNodes::of);
        spawn_watch(
            slice_changes,
            changed.clone(),
            feed.clone(),
            "EndpointSlices",
        );
        spawn_watch(
            cached(client.clone(), pool_writer, |_: &mut IPPool| {}),
            changed.clone(),
            feed.clone(),
            "IPPools",
        );
        spawn_watch(
            cached(client.clone(), ad_writer, |_: &mut L2Advertisement| {}),
            changed.clone(),
            feed.clone(),
            "L2Advertisements",
        );
        let (bgp_peers, bgp_peer_writer) = reflector::store();
        spawn_watch(
            cached(client.clone(), bgp_peer_writer, |_: &mut BGPPeer| {}),
            changed.clone(),
            feed.clone(),
            "BGPPeers",
        );
        let (bgp_ads, bgp_ad_writer) = reflector::store();
        spawn_watch(
            cached(client.clone(), bgp_ad_writer, |_: &mut BGPAdvertisement| {}),
            changed,
            feed,
            "BGPAdvertisements",
        );
        Self {
            services,
            announcements: (announcements, announcements_changed),
            nodes,
            slices,
            pools,
            ads,
            bgp_peers,
            bgp_ads,
            first_unread,
        }
    }

    /// Waits for every watch's first complete list: a pass on a partial view would move IPs.
    async fn wait_until_ready(&self) -> Result<()> {
        async fn listed<E: std::error::Error + Send + Sync + 'static>(
            what: &'static str,
            ready: impl Future<Output = Result<(), E>>,
        ) -> Result<()> {
            ready.await.with_context(|| format!("{what} watch"))
        }
        tokio::try_join!(
            listed("Service", self.services.wait_until_ready()),
            listed("Node", self.nodes.wait_until_ready()),
            listed("EndpointSlice", self.slices.wait_until_ready()),
            listed("IPPool", self.pools.wait_until_ready()),
            listed("L2Advertisement", self.ads.wait_until_ready()),
            listed("BGPPeer", self.bgp_peers.wait_until_ready()),
            listed("BGPAdvertisement", self.bgp_ads.wait_until_ready()),
            listed("L2Announcement", self.announcements.0.wait_until_ready()),
        )?;
        Ok(())
    }
}

/// Follows a watch, notifying `changed` of each event (and marking `first_unread`, if given,
/// before it: the cache already holds the change).
fn spawn_watch<E: Send + 'static>(
    stream: impl Stream<Item = Result<E, watcher::Error>> + Send + 'static,
    changed: Arc<Notify>,
    first_unread: Option<FirstUnread>,
    what: &'static str,
) {
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(e) = stream.next().await {
            match e {
                Ok(_) => {
                    if let Some(f) = &first_unread {
                        f.mark();
                    }
                    changed.notify_one();
                }
                Err(e) => tracing::warn!("watching {what}: {e}"),
            }
        }
    });
}

/// Says loudly that this speaker stands down (a log line and a Warning Event on its Node) or
/// serves again (a log line).
fn say_isolation(events: &Publisher, nodes: &Cache<NodeView>, me: &str, verdict: &Verdict) {
    let Some(note) = prose::isolation(verdict) else {
        tracing::info!("hears enough of its peers again: answering for its IPs");
        return;
    };
    tracing::warn!("{}", note.message);
    let uid = nodes
        .get(&ObjectKey::cluster(me).to_string())
        .map(|n| n.uid.to_string())
        .unwrap_or_default();
    let (events, me) = (events.clone(), me.to_owned());
    tokio::spawn(async move {
        if let Err(e) = events.about_node(&me, &uid, &note).await {
            tracing::warn!("publishing the SpeakerIsolated event: {e}");
        }
    });
}

/// Says each new conflict (another host answering for an IP this node announces) as a
/// Warning Event on the Services holding the IP, and in the log. A conflict that clears and
/// comes back is said again.
async fn say_conflicts(
    events: Publisher,
    mut found: watch::Receiver<Conflicts>,
    services: Cache<ServiceIps>,
    me: String,
) {
    let mut said: BTreeSet<Conflict> = BTreeSet::new();
    while found.changed().await.is_ok() {
        let now: BTreeSet<Conflict> = found
            .borrow_and_update()
            .values()
            .flatten()
            .copied()
            .collect();
        for conflict in now.difference(&said) {
            let note = prose::foreign_answer(conflict, &me);
            tracing::warn!("{}", note.message);
            let holders: Vec<(String, Arc<ServiceIps>)> = services
                .read()
                .iter()
                .filter(|(_, svc)| svc.ips.contains(&conflict.ip))
                .map(|(key, svc)| (key.clone(), svc.clone()))
                .collect();
            for (key, svc) in &holders {
                if let Err(e) = events.about_service(svc.regarding(key), &note).await {
                    tracing::warn!(service = %key, "publishing the ForeignAnswer event: {e}");
                }
            }
        }
        said = now;
    }
}
