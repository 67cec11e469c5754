//! Where the gossip keys come from: a fixed key (`--gossip-key`), or a Secret in the API
//! (`--gossip-secret`), which the controller creates and users may rotate. The Secret is
//! watched: a rotation reaches every speaker in one watch event, with no restart, and a
//! speaker started before the Secret exists waits for it instead of crashing.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use herald_api::gossip::SecretRef;

use crate::membership::Keys;

/// Where the speaker gets its gossip keys.
pub enum KeySource {
    /// One key given on the command line or in the environment.
    Fixed(Arc<Keys>),
    /// The Secret named `NAME` (in the speaker's namespace) or `NAMESPACE/NAME`.
    Secret(String),
}

/// The keys the Secret holds, kept current: `None` until it first holds valid keys. A Secret
/// that becomes invalid or is deleted leaves the keys in use (and says so): a speaker never
/// stops hearing its peers because of a bad edit.
pub fn follow(client: Client, secret: SecretRef) -> watch::Receiver<Option<Arc<Keys>>> {
    let (tx, rx) = watch::channel(None);
    let api = Api::<Secret>::namespaced(client, &secret.namespace);
    // Only this Secret: the speaker's Role grants it by name.
    let config = watcher::Config::default().fields(&format!("metadata.name={}", secret.name));
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => match keys_of(&s) {
                    Ok(keys) => {
                        tracing::info!(%secret, "gossip keys loaded");
                        let _ = tx.send(Some(Arc::new(keys)));
                    }
                    Err(e) => tracing::warn!(
                        %secret,
                        "the gossip Secret holds no usable key, keeping the keys in use: {e}"
                    ),
                },
                Ok(watcher::Event::Delete(_)) => tracing::warn!(
                    %secret,
                    "the gossip Secret was deleted; keeping the keys in use (the controller makes a new one, and every speaker then moves to it)"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(%secret, "watching the gossip Secret: {e}"),
            }
        }
    });
    rx
}

fn keys_of(secret: &Secret) -> Result<Keys, crate::membership::KeyError> {
    let data = secret.data.as_ref();
    Keys::from_secret(|field| data.and_then(|d| d.get(field)).map(|v| v.0.as_slice()))
}

/// Waits for the Secret's first valid keys, saying every 30 s what it waits for.
pub async fn first_keys(
    keys: &mut watch::Receiver<Option<Arc<Keys>>>,
    secret: &SecretRef,
) -> Result<Arc<Keys>> {
    loop {
        if let Some(k) = keys.borrow_and_update().clone() {
            return Ok(k);
        }
        tracing::info!(
            %secret,
            "waiting for the gossip Secret (herald-controller creates it; check that the controller runs)"
        );
        let _ = tokio::time::timeout(Duration::from_secs(30), keys.changed()).await;
        if keys.has_changed().is_err() {
            return Err(anyhow::anyhow!("the gossip Secret watch ended"))
                .context("waiting for the gossip keys");
        }
    }
}
