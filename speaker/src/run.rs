//! The speaker's I/O: watch what decides ownership (Services, Nodes, EndpointSlices,
//! IPPools, L2Advertisements), follow interfaces and gossip, and after every change
//! recompute the owners (`plan::decide`) and hand this node's share to the `Announcer`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{Stream, StreamExt};
use herald_api::service_watch;
use herald_api::watch::{Cache, cached, projected, projected_from};
use herald_api::{IPPool, L2Advertisement, ServiceObject};
use herald_telemetry::Health;
use ipnetwork::IpNetwork;
use kube::Client;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio::sync::{Notify, watch};

use crate::announcements::Seen;
use crate::announcer::Announcer;
use crate::conflicts::Conflict;
use crate::election::NodeFacts;
use crate::endpoints::ServingNodes;
use crate::gossip::{Gossip, Peers};
use crate::gossip_secret::{self, KeySource};
use crate::interfaces::{self, Snapshot};
use crate::isolation::{Isolation, Proof, Verdict};
use crate::metrics::{Metrics, ReasonLabels, TakeoverLabels};
use crate::node::NodeView;
use crate::notes::{Claims, Notes};
use crate::plan::{self, Decision, View};
use crate::service::ServiceIps;
use herald_api::gossip::SecretRef;

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
}

const MIN_COALESCE: Duration = Duration::from_millis(10);
const MAX_COALESCE: Duration = Duration::from_millis(250);
/// How long after a peer's departure a gain of IPs counts as taking over from it.
const DEPARTURE_RELEVANCE: Duration = Duration::from_secs(5);

struct Stores {
    services: Cache<ServiceIps>,
    /// L2Announcements, for `notes` (which is told of their changes through the Notify).
    announcements: (Cache<Seen>, Arc<Notify>),
    nodes: Cache<NodeView>,
    slices: Cache<ServingNodes>,
    pools: Store<IPPool>,
    ads: Store<L2Advertisement>,
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
    let stores = watch_all(&client, changed.clone(), &config.node);

    let (iface_tx, mut iface_rx) = watch::channel(Snapshot::default());
    tokio::spawn(async move {
        if let Err(e) = interfaces::follow(iface_tx, Duration::from_secs(5)).await {
            tracing::error!("following interfaces stopped: {e:#}");
        }
    });

    let (peers_tx, peers_rx) = watch::channel(Peers::default());
    let (subnets_tx, subnets_rx) = watch::channel(Vec::<IpNetwork>::new());
    // On standby (heard by the others, taking no IP) while isolated.
    let (standby_tx, standby_rx) = watch::channel(false);
    // Heartbeats get a thread of their own: a long decision pass (10,000 Services) must never
    // delay them, or the other speakers would count this one dead.
    let (gossip_tx, gossip_rx) = tokio::sync::oneshot::channel();
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
    let (port, node) = (config.gossip_port, config.node.clone());
    let (timeout, heartbeat, notify) = (config.failure_timeout, config.heartbeat, changed.clone());
    std::thread::Builder::new()
        .name("gossip".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = gossip_tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                match Gossip::bind(port, keys, node, timeout).await {
                    Ok(gossip) => {
                        let _ = gossip_tx.send(Ok(gossip.clone()));
                        gossip
                            .run(heartbeat, peers_rx, subnets_rx, standby_rx, notify)
                            .await;
                    }
                    Err(e) => {
                        let _ = gossip_tx.send(Err(e));
                    }
                }
            });
        })
        .context("starting the gossip thread")?;
    let gossip = gossip_rx.await.context("the gossip thread ended")??;
    if let Some(mut updates) = key_updates {
        // A key rotation: the next heartbeat is signed, and the next received checked, with
        // the Secret's new keys.
        let gossip = gossip.clone();
        tokio::spawn(async move {
            while updates.changed().await.is_ok() {
                if let Some(keys) = updates.borrow_and_update().clone() {
                    gossip.set_keys(keys);
                }
            }
        });
    }

    stores
        .services
        .wait_until_ready()
        .await
        .context("Service watch")?;
    stores
        .nodes
        .wait_until_ready()
        .await
        .context("Node watch")?;
    stores
        .slices
        .wait_until_ready()
        .await
        .context("EndpointSlice watch")?;
    stores
        .pools
        .wait_until_ready()
        .await
        .context("IPPool watch")?;
    stores
        .ads
        .wait_until_ready()
        .await
        .context("L2Advertisement watch")?;
    stores
        .announcements
        .0
        .wait_until_ready()
        .await
        .context("L2Announcement watch")?;

    let mut announcer = Announcer::new(config.refresh, metrics.clone());
    tokio::spawn(say_conflicts(
        client.clone(),
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
        Some(name) => Some(herald_api::owner::cluster_role(&client, name).await?),
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
    // A node with proof of life must stay unheard this long to count (a rejoining speaker
    // may announce a few heartbeats before its first one arrives).
    let mut isolation = Isolation::new(config.heartbeat * 3);
    let mut was_isolated = false;
    // IPs this node announced after the last pass (the ownership-change metric); not the
    // whole last decision, which at 10,000 IPs is megabytes.
    let mut owned: BTreeSet<IpAddr> = BTreeSet::new();
    let mut departures: Vec<(crate::metrics::Departure, Instant)> = Vec::new();
    // Passes over many Services cost milliseconds: bursts of watch events are coalesced for
    // twice the last pass's time (at least 10 ms), so a speaker spends at most a third of a
    // core deciding while thousands of Services change.
    let mut coalesce;
    // Until the first heartbeats had time to arrive, this speaker would think it is alone
    // and claim every IP: it listens for one failure timeout before it decides anything.
    let settle = config.failure_timeout + config.heartbeat;
    let settled_at = tokio::time::Instant::now() + settle;
    // A periodic pass covers anything a notification missed (and a first pass at once);
    // every change is notified, so this is a safety net, not the mechanism.
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        let snapshot = iface_rx.borrow_and_update().clone();
        // What this node tells its peers is also what it judges itself by (plan::View).
        let own_subnets = snapshot.subnets();
        subnets_tx.send_if_modified(|old| {
            let differs = *old != own_subnets;
            old.clone_from(&own_subnets);
            differs
        });
        let settling = tokio::time::Instant::now() < settled_at;
        // Peers gone, taken before the members are read: the first pass that takes IPs over
        // after a departure counts the takeover, from the last heartbeat (or leave) to now.
        departures.extend(gossip.take_departures());
        let gossiped = Gossiped::read(&gossip, &config.node, own_subnets, settle);
        let verdict = judge(
            &mut isolation,
            &stores.nodes,
            &gossiped,
            &claims,
            &config.node,
        );
        if verdict.isolated != was_isolated {
            was_isolated = verdict.isolated;
            metrics.isolated.set(i64::from(verdict.isolated));
            tokio::spawn(say_isolation(
                client.clone(),
                stores.nodes.clone(),
                config.node.clone(),
                verdict.clone(),
            ));
        }
        let isolated = verdict.isolated;
        standby_tx.send_if_modified(|old| std::mem::replace(old, isolated) != isolated);
        let standing_by = settling || isolated;
        let started = tokio::time::Instant::now();
        let (decision, segment) = decide(
            &stores,
            &gossiped,
            &config.node,
            &snapshot,
            &owned,
            Pass {
                standing_by,
                segmented: config.segmented_liveness,
            },
        );
        let joining = !standing_by && !gossiped.joining.is_empty();
        let peers = peers_of(&stores.nodes, &config.node, segment.as_ref());
        peers_tx.send_if_modified(|old| {
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
        announcer.apply(&decision.plan, &snapshot.interfaces);
        coalesce = (started.elapsed() * 2).clamp(MIN_COALESCE, MAX_COALESCE);
        let now_owned: BTreeSet<IpAddr> = decision.announced().collect();
        let changes = now_owned.symmetric_difference(&owned).count();
        metrics.ownership_changes.inc_by(changes as u64);
        if now_owned.difference(&owned).next().is_some() {
            for (how, last_heard) in departures.drain(..) {
                metrics
                    .takeover
                    .get_or_create(&TakeoverLabels { peer: how })
                    .observe(last_heard.elapsed().as_secs_f64());
            }
        }
        // A departure that gave this node nothing yet may still (a held-over IP): kept a
        // few seconds, then it was not this node's to take.
        departures.retain(|(_, at)| at.elapsed() < DEPARTURE_RELEVANCE);
        owned = now_owned;
        for reason in crate::election::NoOwner::LABELS {
            let count = decision
                .ips
                .values()
                .filter(|d| d.outcome.as_ref().is_err_and(|e| e.label() == reason))
                .count();
            metrics
                .unannounced
                .get_or_create(&ReasonLabels { reason })
                .set(count as i64);
        }
        decision_tx.send_replace(Arc::new(decision));
        metrics.members.set((gossiped.heard.len() + 1) as i64);
        metrics
            .pass_duration
            .observe(started.elapsed().as_secs_f64());
        health.set_ready(!standing_by);

        tokio::select! {
            _ = changed.notified() => {
                // Let a burst of watch events settle into one pass.
                tokio::time::sleep(coalesce).await;
            }
            _ = iface_rx.changed() => {}
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(settled_at), if settling => {}
            // Proof of an unheard peer counts once its grace is over; a joining peer gets
            // its IPs once it has settled.
            _ = tokio::time::sleep(config.heartbeat), if verdict.pending || joining => {}
            _ = &mut shutdown => break,
        }
    }
    // Leave first so the others take over at once, then stop answering.
    tracing::info!("leaving: telling the other speakers, then stopping announcements");
    let peers = peers_of(&stores.nodes, &config.node, None);
    gossip.leave(&peers.all).await;
    drop(announcer);
    Ok(())
}

fn watch_all(client: &Client, changed: Arc<Notify>, me: &str) -> Stores {
    let (pools, w4) = reflector::store();
    let (ads, w5) = reflector::store();
    let (services, service_changes) = projected_from(
        service_watch::events(client.clone(), watcher::Config::default()),
        |o: ServiceObject| ServiceIps::of(o.service),
    );
    spawn_watch(service_changes, changed.clone(), "Services");
    let (nodes, node_changes) = projected(client.clone(), watcher::Config::default(), NodeView::of);
    spawn_watch(node_changes, changed.clone(), "Nodes");
    let me = me.to_owned();
    let (announcements, announcement_changes) =
        projected(client.clone(), watcher::Config::default(), move |a| {
            Seen::mine(a, &me)
        });
    let announcements_changed = Arc::new(Notify::new());
    spawn_watch(
        announcement_changes,
        announcements_changed.clone(),
        "L2Announcements",
    );
    let (slices, slice_changes) =
        projected(client.clone(), watcher::Config::default(), ServingNodes::of);
    spawn_watch(slice_changes, changed.clone(), "EndpointSlices");
    spawn_watch(
        cached(client.clone(), w4, |_: &mut IPPool| {}),
        changed.clone(),
        "IPPools",
    );
    spawn_watch(
        cached(client.clone(), w5, |_: &mut L2Advertisement| {}),
        changed,
        "L2Advertisements",
    );
    Stores {
        services,
        announcements: (announcements, announcements_changed),
        nodes,
        slices,
        pools,
        ads,
    }
}

fn spawn_watch<E: Send + 'static>(
    stream: impl Stream<Item = Result<E, watcher::Error>> + Send + 'static,
    changed: Arc<Notify>,
    what: &'static str,
) {
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(e) = stream.next().await {
            match e {
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!("watching {what}: {e}"),
            }
        }
    });
}

/// The other nodes' first InternalIP: where heartbeats go.
/// Where heartbeats go: every other node's InternalIP, and among them the segment's
/// (`None`: every node is heartbeated every interval).
fn peers_of(nodes: &Cache<NodeView>, me: &str, segment: Option<&BTreeSet<String>>) -> Peers {
    let mut peers = Peers::default();
    for n in nodes.read().values() {
        if &*n.name == me {
            continue;
        }
        if let Some(ip) = n.internal_ip {
            peers.all.push(ip);
            if segment.is_none_or(|s| s.contains(&*n.name)) {
                peers.segment.push(ip);
            }
        }
    }
    peers.all.sort_unstable();
    peers.segment.sort_unstable();
    peers
}

/// Whether this speaker is cut off from peers that run (see `isolation`): proof of life
/// from the datagrams that fail authentication and from announcements over its claims,
/// about nodes the API shows Ready.
fn judge(
    isolation: &mut Isolation,
    nodes: &Cache<NodeView>,
    gossiped: &Gossiped,
    claims: &Claims,
    me: &str,
) -> Verdict {
    let nodes = nodes.read();
    let ready: BTreeMap<&str, &NodeView> = nodes
        .values()
        .filter(|n| n.ready)
        .map(|n| (&*n.name, &**n))
        .collect();
    let (heard, rejecting) = (&gossiped.heard, &gossiped.rejecting);
    let mut proof = BTreeMap::new();
    for (name, node) in &ready {
        if node.addresses.iter().any(|a| rejecting.contains(a)) {
            proof.insert((*name).to_owned(), Proof::WrongKey);
        }
    }
    // A claim stands until its node is heard again or stops being Ready.
    for node in claims.retain(|node| ready.contains_key(node) && !heard.contains(node)) {
        proof.entry(node).or_insert(Proof::Announces);
    }
    isolation.judge(me, heard, proof, Instant::now())
}

/// Says loudly that this speaker stands down (or serves again): a log line and, when it
/// stands down, a Warning Event on its Node.
async fn say_isolation(client: Client, nodes: Cache<NodeView>, me: String, verdict: Verdict) {
    if !verdict.isolated {
        tracing::info!("hears enough of its peers again: answering for its IPs");
        return;
    }
    let unheard: Vec<String> = verdict
        .unheard
        .iter()
        .map(|(node, proof)| format!("{node} ({})", proof.describe()))
        .collect();
    let message = format!(
        "this speaker hears {} of the {} running speakers it knows of, so it answers for no IP \
         and reports not ready until it hears them; not heard: {}. Check the gossip key \
         (the Secret every speaker reads) and that UDP to the gossip port is allowed between nodes.",
        verdict.group - 1,
        verdict.group - 1 + verdict.unheard.len(),
        crate::logs::bounded_list(&unheard),
    );
    tracing::warn!("{message}");
    let uid = nodes
        .get(&format!("/{me}"))
        .map(|n| n.uid.to_string())
        .unwrap_or_default();
    let reporter = crate::notes::reporter(&me);
    let note = herald_api::events::Note::warning("SpeakerIsolated", message);
    let event = herald_api::events::build_for_node(&me, &uid, &note, &reporter);
    if let Err(e) = kube::Api::<k8s_openapi::api::events::v1::Event>::namespaced(client, "default")
        .create(&Default::default(), &event)
        .await
    {
        tracing::warn!("publishing the SpeakerIsolated event: {e}");
    }
}

/// Says each new conflict (another host answering for an IP this node announces) as a
/// Warning Event on the Services holding the IP, and in the log. A conflict that clears and
/// comes back is said again.
async fn say_conflicts(
    client: Client,
    mut found: watch::Receiver<crate::announcer::Conflicts>,
    services: Cache<ServiceIps>,
    me: String,
) {
    let reporter = crate::notes::reporter(&me);
    let mut said: BTreeSet<Conflict> = BTreeSet::new();
    while found.changed().await.is_ok() {
        let now: BTreeSet<Conflict> = found
            .borrow_and_update()
            .values()
            .flatten()
            .copied()
            .collect();
        for conflict in now.difference(&said) {
            let message = conflict_message(conflict, &me);
            tracing::warn!("{message}");
            let holders: Vec<(String, Arc<ServiceIps>)> = services
                .read()
                .iter()
                .filter(|(_, svc)| svc.ips.contains(&conflict.ip))
                .map(|(key, svc)| (key.clone(), svc.clone()))
                .collect();
            let note = herald_api::events::Note::warning("ForeignAnswer", message);
            for (key, svc) in &holders {
                let about = svc.regarding(key);
                let event = herald_api::events::build(about, &note, &reporter);
                if let Err(e) = kube::Api::<k8s_openapi::api::events::v1::Event>::namespaced(
                    client.clone(),
                    about.namespace,
                )
                .create(&Default::default(), &event)
                .await
                {
                    tracing::warn!(service = %key, "publishing the ForeignAnswer event: {e}");
                }
            }
        }
        said = now;
    }
}

fn conflict_message(conflict: &Conflict, me: &str) -> String {
    let (protocol, fix) = match conflict.ip {
        IpAddr::V4(_) => (
            "ARP",
            "set `strictARP: true` under `ipvs` in kube-proxy's configuration, or `arp_ignore=1` \
             and `arp_announce=2` on that host, or remove the address from it",
        ),
        IpAddr::V6(_) => ("NDP", "remove the address from that host's interfaces"),
    };
    format!(
        "{ip} is announced by node {me}, but another host also answers {protocol} for it from MAC {mac}: \
         clients will flip between the two and connections break. Usually kube-proxy in IPVS mode \
         binding every Service IP on every node, or the address configured on a host: {fix}.",
        ip = conflict.ip,
        mac = conflict.mac,
    )
}

/// What the heartbeats say, copied out once per pass: the gossip thread needs the lock for
/// every heartbeat, and a pass over 10,000 Services must not hold it.
struct Gossiped {
    /// The candidates, this speaker too, each with the subnets it can announce on.
    node_subnets: BTreeMap<String, Vec<IpNetwork>>,
    /// Speakers heard before that are not candidates now, with their last subnets.
    remembered: BTreeMap<String, Vec<IpNetwork>>,
    /// Candidates heard for less than a settle time.
    joining: BTreeSet<String>,
    /// Every speaker heard (on standby too), this one not included.
    heard: BTreeSet<String>,
    /// Addresses whose datagrams failed authentication lately.
    rejecting: Vec<IpAddr>,
}

impl Gossiped {
    fn read(gossip: &Gossip, me: &str, own_subnets: Vec<IpNetwork>, settle: Duration) -> Self {
        let members = gossip.members.lock().unwrap_or_else(|p| p.into_inner());
        Self {
            node_subnets: members
                .candidates()
                .map(|n| (n.to_owned(), members.subnets(n).to_vec()))
                .chain([(me.to_owned(), own_subnets)])
                .collect(),
            remembered: members
                .remembered()
                .map(|(n, subnets)| (n.to_owned(), subnets.to_vec()))
                .collect(),
            joining: members
                .joining(settle, Instant::now())
                .map(str::to_owned)
                .collect(),
            heard: members.heard().map(str::to_owned).collect(),
            rejecting: members.rejecting().collect(),
        }
    }
}

fn decide(
    stores: &Stores,
    gossiped: &Gossiped,
    me: &str,
    snapshot: &Snapshot,
    announcing: &BTreeSet<IpAddr>,
    pass: Pass,
) -> (Decision, Option<BTreeSet<String>>) {
    let node_subnets = &gossiped.node_subnets;
    let nodes: BTreeMap<String, NodeFacts> = stores
        .nodes
        .read()
        .values()
        .map(|n| {
            let facts = NodeFacts::of(n, node_subnets.contains_key(&*n.name));
            (n.name.to_string(), facts)
        })
        .collect();
    // The watches run on this thread: holding the read guard for the pass blocks nobody.
    let services = stores.services.read();
    // Endpoints matter only for Services with externalTrafficPolicy Local.
    let slices = stores.slices.read();
    let mut endpoints: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for slice in slices.values() {
        if services
            .get(&slice.service)
            .is_some_and(|s| s.local_traffic)
        {
            endpoints
                .entry(&slice.service)
                .or_default()
                .extend(slice.nodes.iter().map(String::as_str));
        }
    }
    let pools = stores.pools.state();
    let pools: Vec<&IPPool> = pools.iter().map(|p| &**p).collect();
    let ads = stores.ads.state();
    let ads: Vec<&L2Advertisement> = ads.iter().map(|a| &**a).collect();
    let view = View {
        me,
        // The alphabetically first live speaker reports IPs nobody may announce: one
        // Warning per Service, not one per node.
        reports_unannounced: node_subnets.keys().next().map(String::as_str) == Some(me),
        services: &services,
        nodes: &nodes,
        node_subnets,
        remembered_subnets: &gossiped.remembered,
        pools: &pools,
        advertisements: &ads,
        endpoints: &endpoints,
        interfaces: snapshot,
        joining: &gossiped.joining,
        announcing,
    };
    // A speaker standing by decides nothing, but keeps its segment hearing it.
    let decision = if pass.standing_by {
        Decision::default()
    } else {
        plan::decide(&view)
    };
    // Without segmented liveness every node is heartbeated: no segment to work out.
    let segment = pass.segmented.then(|| plan::segment(&view));
    (decision, segment)
}

/// What a pass is asked for besides the view.
struct Pass {
    /// Settling or isolated: decide nothing.
    standing_by: bool,
    /// Work out the segment (`--segmented-liveness`).
    segmented: bool,
}
