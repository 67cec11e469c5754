//! The BGP sessions this node keeps: one task per peer (`herald_bgp::peer::run`), started,
//! told new routes, restarted with new settings and stopped as each pass's `bgp_plan`
//! decision says. Route changes reach the session at once (no debounce): the task sends the
//! UPDATEs as soon as it sees them. Thin: the decisions are `bgp_plan`'s.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use herald_bgp::bfd_link::Health;
use herald_bgp::peer::{self, Desired, Peer, Status, Stop};
use herald_bgp::rib::RibOut;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use herald_runtime::Publisher;

use herald_api::BGPSessionSpec;
use k8s_openapi::jiff::Timestamp;

use crate::bgp_plan::BgpDecision;
use crate::bgp_records::Board;
use crate::metrics::{BgpPeerLabels, BgpPrefixLabels, Metrics};
use crate::prose;

/// How long a stopping session may take to say Cease before the process goes on.
const STOP_GRACE: Duration = Duration::from_secs(1);

struct Running {
    peer: Peer,
    routes: watch::Sender<Desired>,
    stop: watch::Sender<Stop>,
    task: JoinHandle<()>,
}

pub struct Sessions {
    running: BTreeMap<String, Running>,
    metrics: Metrics,
    /// What `bgp_records` writes as this node's BGPSessions.
    board: Board,
    /// The board was told of a first decision.
    decided: bool,
    events: Publisher,
    node: String,
    /// What was said about peers refused and communities left out, so each is said once.
    said_refused: BTreeMap<String, String>,
    said_bad_communities: Vec<String>,
}

impl Sessions {
    pub fn new(metrics: Metrics, events: Publisher, node: &str, board: Board) -> Self {
        Self {
            running: BTreeMap::new(),
            metrics,
            board,
            decided: false,
            events,
            node: node.to_owned(),
            said_refused: BTreeMap::new(),
            said_bad_communities: Vec::new(),
        }
    }

    /// Makes the running sessions what `decision` says: new peers connect, peers gone or
    /// changed are closed with Cease (a changed one then connects anew), and every session
    /// is given its routes.
    /// `node_uid`: this node's Node, the subject of the Warnings about refused peers.
    /// `changed_at`: when the watches first saw the change this decision follows, timed to
    /// the UPDATEs it brings (`None`: nothing to time).
    pub fn apply(&mut self, decision: BgpDecision, node_uid: &str, changed_at: Option<Instant>) {
        let BgpDecision {
            sessions,
            refused,
            waiting,
            bad_communities,
        } = decision;
        // Records: a refused peer says why; one no longer selecting this node goes (a
        // waiting one keeps what it had).
        for (peer, why) in &refused {
            self.board.set(BGPSessionSpec {
                node: self.node.clone(),
                peer: peer.clone(),
                state: "Refused".into(),
                since: Timestamp::now().to_string(),
                last_error: Some(why.clone()),
                ..BGPSessionSpec::default()
            });
        }
        self.board.forget_others(|peer| {
            sessions.contains_key(peer) || refused.contains_key(peer) || waiting.contains(peer)
        });
        if !std::mem::replace(&mut self.decided, true) {
            self.board.decided();
        }
        self.say(refused, bad_communities, node_uid);
        let gone: Vec<String> = self
            .running
            .iter()
            .filter(|(name, r)| sessions.get(*name).is_none_or(|plan| plan.peer != r.peer))
            .map(|(name, _)| name.clone())
            .collect();
        // A replaced session's task, for its successor to wait on.
        let mut closing = BTreeMap::new();
        for name in gone {
            if let Some(r) = self.running.remove(&name) {
                if sessions.contains_key(&name) {
                    tracing::info!(peer = %name, "the BGPPeer's settings changed: opening its session anew");
                } else {
                    tracing::info!(peer = %name, "closing the BGP session (the peer no longer selects this node)");
                }
                let _ = r.stop.send(Stop::Cease);
                self.forget_metrics(&name);
                closing.insert(name, r.task);
            }
        }
        for (name, plan) in sessions {
            match self.running.get(&name) {
                Some(r) => {
                    r.routes.send_if_modified(|old| {
                        let differs = old.routes != plan.routes;
                        if differs {
                            *old = Desired {
                                routes: plan.routes,
                                changed_at,
                            };
                        }
                        differs
                    });
                }
                None => {
                    let closing = closing.remove(&name);
                    let running = self.start(&name, plan.peer, plan.routes, closing);
                    self.running.insert(name, running);
                }
            }
        }
    }

    /// Starts a session; `after`: the session it replaces, still closing.
    fn start(
        &self,
        name: &str,
        peer: Peer,
        routes: RibOut,
        after: Option<JoinHandle<()>>,
    ) -> Running {
        tracing::info!(peer = %name, address = %peer.address, "opening a BGP session");
        let (routes_tx, routes_rx) = watch::channel(Desired::from(routes));
        let (status_tx, status_rx) = watch::channel(Status::Connecting);
        let (stop_tx, stop_rx) = watch::channel(Stop::Run);
        let update_delay = self
            .metrics
            .bgp_update_delay
            .get_or_create(&BgpPeerLabels {
                peer: name.to_owned(),
            })
            .clone();
        let run = peer::run(
            peer.clone(),
            routes_rx,
            status_tx,
            stop_rx.clone(),
            move |took| update_delay.observe(took.as_secs_f64()),
        );
        let task = tokio::spawn(async move {
            // The router sees the old connection end (its Cease) before the new one opens:
            // one still holding the old session could take the new one for a collision.
            if let Some(before) = after {
                let _ = tokio::time::timeout(STOP_GRACE, before).await;
            }
            run.await;
        });
        tokio::spawn(report(
            Reporting {
                node: self.node.clone(),
                peer: name.to_owned(),
                graceful_restart: peer.session.graceful_restart.is_some(),
                bfd: peer.bfd.is_some(),
            },
            status_rx,
            stop_rx,
            self.metrics.clone(),
            self.board.clone(),
        ));
        Running {
            peer,
            routes: routes_tx,
            stop: stop_tx,
            task,
        }
    }

    fn forget_metrics(&self, name: &str) {
        let peer = name.to_owned();
        self.metrics
            .bgp_session_up
            .remove(&BgpPeerLabels { peer: peer.clone() });
        self.metrics
            .bfd_up
            .remove(&BgpPeerLabels { peer: peer.clone() });
        self.metrics
            .bgp_update_delay
            .remove(&BgpPeerLabels { peer: peer.clone() });
        for family in ["ipv4", "ipv6"] {
            self.metrics.bgp_prefixes.remove(&BgpPrefixLabels {
                peer: peer.clone(),
                family,
            });
        }
    }

    /// Says which peers this node cannot speak with (a log line and a Warning Event on its
    /// Node) and which communities are left out (a log line), each when it changes.
    fn say(
        &mut self,
        refused: BTreeMap<String, String>,
        bad_communities: Vec<String>,
        node_uid: &str,
    ) {
        for (peer, why) in &refused {
            if self.said_refused.get(peer) != Some(why) {
                let note = prose::bgp_peer_refused(peer, why);
                tracing::warn!("{}", note.message);
                let (events, node, uid) =
                    (self.events.clone(), self.node.clone(), node_uid.to_owned());
                tokio::spawn(async move {
                    if let Err(e) = events.about_node(&node, &uid, &note).await {
                        tracing::warn!("publishing the BGPPeerRefused event: {e}");
                    }
                });
            }
        }
        self.said_refused = refused;
        for bad in &bad_communities {
            if !self.said_bad_communities.contains(bad) {
                tracing::warn!("BGPAdvertisement {bad}: left out of the routes");
            }
        }
        self.said_bad_communities = bad_communities;
    }

    /// Ends every session as `how` says and waits (a second at most) for each to finish.
    pub async fn stop_all(self, how: Stop) {
        for r in self.running.values() {
            let _ = r.stop.send(how);
        }
        for (name, r) in self.running {
            if tokio::time::timeout(STOP_GRACE, r.task).await.is_err() {
                tracing::warn!(peer = %name, "the BGP session did not close within {STOP_GRACE:?}");
            }
        }
    }
}

/// Whose session a `report` follows.
struct Reporting {
    node: String,
    peer: String,
    /// This side offered graceful restart.
    graceful_restart: bool,
    /// The peer runs BFD.
    bfd: bool,
}

/// Follows one session's status into the metrics, the log and its BGPSession record until
/// the session is stopped (a session being closed or replaced reports nothing more).
async fn report(
    who: Reporting,
    mut status: watch::Receiver<Status>,
    stop: watch::Receiver<Stop>,
    metrics: Metrics,
    board: Board,
) {
    let Reporting {
        node,
        peer,
        graceful_restart,
        bfd,
    } = who;
    let mut was_up = false;
    let mut last_error = None;
    loop {
        let now = status.borrow_and_update().clone();
        if *stop.borrow() != Stop::Run {
            return;
        }
        let mut record = BGPSessionSpec {
            node: node.clone(),
            peer: peer.clone(),
            since: Timestamp::now().to_string(),
            ..BGPSessionSpec::default()
        };
        let (up, (v4, v6)) = match &now {
            Status::Established {
                advertised,
                negotiated,
                bfd,
            } => {
                record.state = "Established".into();
                record.graceful_restart =
                    graceful_restart && negotiated.peer_keeps_routes.is_some();
                record.bfd = bfd.as_ref().map(ToString::to_string);
                if let Some(health) = bfd {
                    metrics
                        .bfd_up
                        .get_or_create(&BgpPeerLabels { peer: peer.clone() })
                        .set(i64::from(*health == Health::Up));
                }
                (true, *advertised)
            }
            Status::Connecting => {
                record.state = "Connecting".into();
                (false, (0, 0))
            }
            Status::Down(why) => {
                record.state = "Down".into();
                if bfd {
                    metrics
                        .bfd_up
                        .get_or_create(&BgpPeerLabels { peer: peer.clone() })
                        .set(0);
                }
                last_error = Some(why.to_string());
                (false, (0, 0))
            }
        };
        record.advertised_ipv4 = u32::try_from(v4).unwrap_or(u32::MAX);
        record.advertised_ipv6 = u32::try_from(v6).unwrap_or(u32::MAX);
        record.last_error.clone_from(&last_error);
        board.set(record);
        if up && !was_up {
            tracing::info!(%peer, "BGP session Established");
        }
        was_up = up;
        metrics
            .bgp_session_up
            .get_or_create(&BgpPeerLabels { peer: peer.clone() })
            .set(i64::from(up));
        for (family, count) in [("ipv4", v4), ("ipv6", v6)] {
            metrics
                .bgp_prefixes
                .get_or_create(&BgpPrefixLabels {
                    peer: peer.clone(),
                    family,
                })
                .set(count as i64);
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}
