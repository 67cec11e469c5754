//! The speaker's I/O: watch what decides ownership (Services, Nodes, EndpointSlices,
//! IPPools, L2Advertisements), follow interfaces and gossip, and after every change
//! recompute the owners (`plan::decide`) and hand this node's share to the `Announcer`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{Stream, StreamExt};
use herald_api::keys::EXCLUDE_FROM_LB_LABEL;
use herald_api::watch::{Cache, cached, projected};
use herald_api::{IPPool, L2Advertisement, ServiceObject};
use herald_telemetry::{Health, Registry};
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio::sync::{Notify, watch};

use crate::announcer::Announcer;
use crate::election::NodeFacts;
use crate::endpoints::ServingNodes;
use crate::gossip::Gossip;
use crate::interfaces::{self, Snapshot};
use crate::membership::Key;
use crate::metrics;
use crate::notes::Notes;
use crate::plan::{self, Decision, View};
use crate::service::ServiceIps;

pub struct Config {
    pub node: String,
    pub gossip_port: u16,
    pub gossip_key: Vec<u8>,
    pub heartbeat: Duration,
    pub failure_timeout: Duration,
    pub refresh: Duration,
    pub metrics_address: SocketAddr,
}

const MIN_COALESCE: Duration = Duration::from_millis(10);
const MAX_COALESCE: Duration = Duration::from_millis(250);

struct Stores {
    services: Cache<ServiceIps>,
    nodes: Store<Node>,
    slices: Cache<ServingNodes>,
    pools: Store<IPPool>,
    ads: Store<L2Advertisement>,
}

pub async fn run(client: Client, config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let registry = Arc::new(Registry::new());
    metrics::describe(&registry);
    let health = Arc::new(Health::new());
    let bound =
        herald_telemetry::serve(config.metrics_address, registry.clone(), health.clone()).await?;
    tracing::info!(%bound, node = %config.node, "serving /metrics, /healthz and /readyz");

    let changed = Arc::new(Notify::new());
    let stores = watch_all(&client, changed.clone());

    let (iface_tx, mut iface_rx) = watch::channel(Snapshot::default());
    tokio::spawn(async move {
        if let Err(e) = interfaces::follow(iface_tx, Duration::from_secs(5)).await {
            tracing::error!("following interfaces stopped: {e:#}");
        }
    });

    let (peers_tx, peers_rx) = watch::channel(Vec::<IpAddr>::new());
    let (subnets_tx, subnets_rx) = watch::channel(Vec::<IpNetwork>::new());
    // Heartbeats get a thread of their own: a long decision pass (10,000 Services) must never
    // delay them, or the other speakers would count this one dead.
    let (gossip_tx, gossip_rx) = tokio::sync::oneshot::channel();
    let (port, key, node) = (
        config.gossip_port,
        Key::new(&config.gossip_key),
        config.node.clone(),
    );
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
                match Gossip::bind(port, key, node, timeout).await {
                    Ok(gossip) => {
                        let _ = gossip_tx.send(Ok(gossip.clone()));
                        gossip.run(heartbeat, peers_rx, subnets_rx, notify).await;
                    }
                    Err(e) => {
                        let _ = gossip_tx.send(Err(e));
                    }
                }
            });
        })
        .context("starting the gossip thread")?;
    let gossip = gossip_rx.await.context("the gossip thread ended")??;

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

    let mut announcer = Announcer::new(config.refresh, registry.clone());
    // Events and L2Announcements are written by a task of their own, from the latest
    // decision: a burst of thousands of writes (a node died) never delays the next pass.
    let (decision_tx, decision_rx) = watch::channel(Arc::new(Decision::default()));
    tokio::spawn(
        Notes::new(client.clone(), &config.node).run(stores.services.clone(), decision_rx),
    );
    // IPs this node announced after the last pass (the ownership-change metric); not the
    // whole last decision, which at 10,000 IPs is megabytes.
    let mut owned: BTreeSet<IpAddr> = BTreeSet::new();
    // Passes over many Services cost milliseconds: bursts of watch events are coalesced for
    // twice the last pass's time (at least 10 ms), so a speaker spends at most a third of a
    // core deciding while thousands of Services change.
    let mut coalesce;
    // Until the first heartbeats had time to arrive, this speaker would think it is alone
    // and claim every IP: it listens for one failure timeout before it decides anything.
    let settled_at = tokio::time::Instant::now() + config.failure_timeout + config.heartbeat;
    let mut shutdown = std::pin::pin!(shutdown);
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
        let peers = peer_addresses(&stores.nodes, &config.node);
        peers_tx.send_if_modified(|old| {
            let differs = *old != peers;
            *old = peers.clone();
            differs
        });
        let settling = tokio::time::Instant::now() < settled_at;
        let started = tokio::time::Instant::now();
        let decision = if settling {
            Decision::default()
        } else {
            decide(&stores, &gossip, &config.node, &snapshot, own_subnets)
        };
        announcer.apply(&decision.plan, &snapshot.interfaces);
        coalesce = (started.elapsed() * 2).clamp(MIN_COALESCE, MAX_COALESCE);
        let now_owned: BTreeSet<IpAddr> = decision.announced().collect();
        let changes = now_owned.symmetric_difference(&owned).count();
        if changes > 0 {
            registry.add(metrics::OWNERSHIP_CHANGES, &[], changes as f64);
        }
        owned = now_owned;
        decision_tx.send_replace(Arc::new(decision));
        let live = gossip.members.lock().map(|m| m.len()).unwrap_or(0) + 1;
        registry.set(metrics::MEMBERS, &[], live as f64);
        health.set_ready(!settling);

        tokio::select! {
            _ = changed.notified() => {
                // Let a burst of watch events settle into one pass.
                tokio::time::sleep(coalesce).await;
            }
            _ = iface_rx.changed() => {}
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(settled_at), if settling => {}
            _ = &mut shutdown => break,
        }
    }
    // Leave first so the others take over at once, then stop answering.
    tracing::info!("leaving: telling the other speakers, then stopping announcements");
    let peers = peer_addresses(&stores.nodes, &config.node);
    gossip.leave(&peers).await;
    drop(announcer);
    Ok(())
}

fn watch_all(client: &Client, changed: Arc<Notify>) -> Stores {
    let (nodes, w2) = reflector::store();
    let (pools, w4) = reflector::store();
    let (ads, w5) = reflector::store();
    let (services, service_changes) =
        projected(client.clone(), |o: ServiceObject| ServiceIps::of(o.service));
    spawn_watch(service_changes, changed.clone(), "Services");
    spawn_watch(
        cached(client.clone(), w2, |n: &mut Node| {
            n.metadata.managed_fields = None;
            // Images and volumes change often and say nothing about eligibility.
            if let Some(s) = n.status.as_mut() {
                s.images = None;
                s.volumes_attached = None;
                s.volumes_in_use = None;
            }
        }),
        changed.clone(),
        "Nodes",
    );
    let (slices, slice_changes) = projected(client.clone(), ServingNodes::of);
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
fn peer_addresses(nodes: &Store<Node>, me: &str) -> Vec<IpAddr> {
    let mut peers: Vec<IpAddr> = nodes
        .state()
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(me))
        .filter_map(|n| {
            n.status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .find(|a| a.type_ == "InternalIP")?
                .address
                .parse()
                .ok()
        })
        .collect();
    peers.sort();
    peers
}

fn decide(
    stores: &Stores,
    gossip: &Gossip,
    me: &str,
    snapshot: &Snapshot,
    own_subnets: Vec<IpNetwork>,
) -> Decision {
    // What the heartbeats say, copied out: the gossip thread needs this lock for every
    // heartbeat, and a pass over 10,000 Services must not hold it. The live speakers are
    // the keys, this one too: each with the subnets it can announce on.
    let node_subnets: BTreeMap<String, Vec<IpNetwork>> = {
        let members = gossip.members.lock().unwrap_or_else(|p| p.into_inner());
        members
            .names()
            .map(|n| (n.to_owned(), members.subnets(n).to_vec()))
            .chain([(me.to_owned(), own_subnets)])
            .collect()
    };
    let nodes: BTreeMap<String, NodeFacts> = stores
        .nodes
        .state()
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let labels = n.metadata.labels.clone().unwrap_or_default();
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let facts = NodeFacts {
                ready,
                excluded: labels.contains_key(EXCLUDE_FROM_LB_LABEL),
                live: node_subnets.contains_key(&name),
                labels,
            };
            Some((name, facts))
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
    plan::decide(&View {
        me,
        // The alphabetically first live speaker reports IPs nobody may announce: one
        // Warning per Service, not one per node.
        reports_unannounced: node_subnets.keys().next().map(String::as_str) == Some(me),
        services: &services,
        nodes: &nodes,
        node_subnets: &node_subnets,
        pools: &pools,
        advertisements: &ads,
        endpoints: &endpoints,
        interfaces: snapshot,
    })
}
