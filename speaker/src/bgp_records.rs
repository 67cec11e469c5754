//! This node's `BGPSession` objects: one per `BGPPeer` that selects it, written as its
//! session changes (state, prefixes announced, graceful restart, the last error) so
//! `kubectl get bgpsessions` shows them; deleted when the peer no longer selects the node.
//! Written by a task of its own from the latest states, so a slow API server never holds up
//! a session. Owned by the Node: they go away with it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herald_api::ObjectKey;
use herald_api::bgp_session::{self, BGPSession, BGPSessionSpec, NODE_LABEL};
use herald_runtime::watch::Cache;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::node::NodeView;

/// After a failed write, nothing is written for this long.
const BACK_OFF: Duration = Duration::from_secs(5);
/// Changes within this long are written together.
const GATHER: Duration = Duration::from_millis(100);

/// What every session of this node looks like now, by peer: written by the sessions, read
/// by the writer.
#[derive(Clone, Default)]
pub struct Board {
    states: Arc<Mutex<BTreeMap<String, BGPSessionSpec>>>,
    changed: Arc<Notify>,
}

impl Board {
    /// Sets the peer's record; `since` is kept while the state is the same.
    pub fn set(&self, mut record: BGPSessionSpec) {
        let mut states = self.states.lock();
        if let Some(old) = states.get(&record.peer) {
            if old.state == record.state {
                record.since.clone_from(&old.since);
            }
            if *old == record {
                return;
            }
        }
        states.insert(record.peer.clone(), record);
        self.changed.notify_one();
    }

    /// Wakes the writer even if nothing changed: after the first decision, so it deletes
    /// what an earlier run left for peers that no longer select this node.
    pub fn decided(&self) {
        self.changed.notify_one();
    }

    /// Forgets every peer `keep` says no to.
    pub fn forget_others(&self, keep: impl Fn(&str) -> bool) {
        let mut states = self.states.lock();
        let before = states.len();
        states.retain(|peer, _| keep(peer));
        if states.len() != before {
            self.changed.notify_one();
        }
    }

    fn snapshot(&self) -> BTreeMap<String, BGPSessionSpec> {
        self.states.lock().clone()
    }
}

/// Keeps this node's `BGPSession`s equal to the board, forever.
pub async fn write(client: Client, node: String, nodes: Cache<NodeView>, board: Board) {
    let api: Api<BGPSession> = Api::all(client);
    let params = PatchParams::apply("herald-speaker").force();
    let mut written: BTreeMap<String, BGPSessionSpec> = BTreeMap::new();
    let mut swept = false;
    loop {
        board.changed.notified().await;
        tokio::time::sleep(GATHER).await;
        let now = board.snapshot();
        let owner = nodes
            .get(&ObjectKey::cluster(&node).to_string())
            .map(|n| OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: node.clone(),
                uid: n.uid.to_string(),
                ..OwnerReference::default()
            });
        let mut failed = false;
        // Objects of this node left by an earlier run for peers that no longer select it.
        if !swept {
            let selector = format!("{NODE_LABEL}={node}");
            match api.list(&ListParams::default().labels(&selector)).await {
                Ok(list) => {
                    for old in list.items {
                        let peer = old.spec.peer.clone();
                        if !now.contains_key(&peer) {
                            written.insert(peer, old.spec);
                        }
                    }
                    swept = true;
                }
                Err(e) => {
                    tracing::warn!("listing this node's BGPSessions: {}", brief(&e));
                    failed = true;
                }
            }
        }
        for (peer, spec) in &now {
            if written.get(peer) == Some(spec) {
                continue;
            }
            let mut object = BGPSession::new(&bgp_session::name(&node, peer), spec.clone());
            object.metadata.labels = Some([(NODE_LABEL.to_owned(), node.clone())].into());
            object.metadata.owner_references = owner.clone().map(|o| vec![o]);
            match api
                .patch(
                    &object.metadata.name.clone().unwrap_or_default(),
                    &params,
                    &Patch::Apply(&object),
                )
                .await
            {
                Ok(_) => {
                    written.insert(peer.clone(), spec.clone());
                }
                Err(e) => {
                    tracing::warn!(%peer, "writing the BGPSession: {}", brief(&e));
                    failed = true;
                    break;
                }
            }
        }
        let gone: Vec<String> = written
            .keys()
            .filter(|p| !now.contains_key(*p))
            .cloned()
            .collect();
        for peer in gone {
            match api
                .delete(&bgp_session::name(&node, &peer), &DeleteParams::default())
                .await
            {
                Ok(_) => {
                    written.remove(&peer);
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    written.remove(&peer);
                }
                Err(e) => {
                    tracing::warn!(%peer, "deleting the BGPSession: {}", brief(&e));
                    failed = true;
                }
            }
        }
        if failed {
            tokio::time::sleep(BACK_OFF).await;
            // Try again even if nothing changes meanwhile.
            board.changed.notify_one();
        }
    }
}

/// An API error for the log, bounded (the API server's status can be long).
fn brief(error: &kube::Error) -> String {
    herald_api::events::bounded(&error.to_string(), 300)
}
