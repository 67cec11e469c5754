//! The password Secrets of the `BGPPeer`s, followed one by one: each referenced Secret is
//! watched by name (the speaker's Role grants the names the chart lists, nothing more), so a
//! rotated password reaches the session in one watch event. What each holds is handed to
//! the pass (`bgp_plan` turns it into a session's password, or a reason it cannot).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// What a password Secret looks like to the speaker.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretState {
    /// Not read yet (its watch just started).
    Waiting,
    /// It does not exist.
    Missing,
    /// The speaker may not read it, or the API server refused otherwise: why.
    Unreadable(String),
    /// Its keys and values. Never shown (`Debug` names the keys only).
    Data(BTreeMap<String, Vec<u8>>),
}

impl fmt::Debug for SecretState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretState::Waiting => f.write_str("Waiting"),
            SecretState::Missing => f.write_str("Missing"),
            SecretState::Unreadable(why) => write!(f, "Unreadable({why})"),
            SecretState::Data(data) => write!(f, "Data(keys: {:?})", data.keys()),
        }
    }
}

/// The Secrets followed, by name, in the speaker's namespace.
pub struct SecretFollower {
    client: Client,
    namespace: String,
    states: Arc<Mutex<BTreeMap<String, SecretState>>>,
    watches: BTreeMap<String, JoinHandle<()>>,
    /// Notified when a Secret's state changes (a pass follows).
    changed: Arc<Notify>,
}

impl SecretFollower {
    pub fn new(client: Client, changed: Arc<Notify>) -> Self {
        Self {
            namespace: client.default_namespace().to_owned(),
            client,
            states: Arc::default(),
            watches: BTreeMap::new(),
            changed,
        }
    }

    /// Follows exactly `names`: starts watching new ones, stops the others.
    pub fn follow(&mut self, names: BTreeSet<&str>) {
        self.watches.retain(|name, task| {
            let keep = names.contains(name.as_str());
            if !keep {
                task.abort();
            }
            keep
        });
        self.states
            .lock()
            .retain(|name, _| names.contains(name.as_str()));
        for name in names {
            if !self.watches.contains_key(name) {
                self.states
                    .lock()
                    .insert(name.to_owned(), SecretState::Waiting);
                let task = tokio::spawn(watch_one(
                    Api::namespaced(self.client.clone(), &self.namespace),
                    name.to_owned(),
                    self.states.clone(),
                    self.changed.clone(),
                ));
                self.watches.insert(name.to_owned(), task);
            }
        }
    }

    /// What every followed Secret holds now.
    pub fn states(&self) -> BTreeMap<String, SecretState> {
        self.states.lock().clone()
    }
}

impl Drop for SecretFollower {
    fn drop(&mut self) {
        for task in self.watches.values() {
            task.abort();
        }
    }
}

async fn watch_one(
    api: Api<Secret>,
    name: String,
    states: Arc<Mutex<BTreeMap<String, SecretState>>>,
    changed: Arc<Notify>,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let mut seen = false;
    while let Some(event) = events.next().await {
        let state = match event {
            Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                seen = true;
                SecretState::Data(
                    s.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect(),
                )
            }
            Ok(watcher::Event::Delete(_)) => {
                seen = false;
                SecretState::Missing
            }
            Ok(watcher::Event::Init) => {
                seen = false;
                continue;
            }
            Ok(watcher::Event::InitDone) if !seen => SecretState::Missing,
            Ok(watcher::Event::InitDone) => continue,
            Err(e) => SecretState::Unreadable(unreadable(&e)),
        };
        let mut states = states.lock();
        if states.get(&name) != Some(&state) {
            states.insert(name.clone(), state);
            changed.notify_one();
        }
    }
}

/// Why a Secret cannot be read, in words (a 403 says what to change in the chart).
fn unreadable(error: &watcher::Error) -> String {
    let status = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => Some(s),
        _ => None,
    };
    match status {
        Some(s) if s.code == 403 => {
            "the speaker may not read it: add its name to the chart's speaker.bgpPasswordSecrets"
                .to_owned()
        }
        _ => herald_api::events::bounded(&error.to_string(), 256),
    }
}
