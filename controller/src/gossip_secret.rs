//! The speakers' gossip Secret, made here at run time rather than rendered by the chart: a
//! chart that generates the key makes a new one on every `helm template` (Argo CD, Flux),
//! and speakers started at different times would then reject each other. The controller
//! creates the Secret when it is missing and never changes one it finds (a user-managed
//! Secret, or a key rotation in progress), so any number of renders and applies leave the
//! key alone.

use std::time::Duration;

use anyhow::{Context, Result};
use herald_api::gossip::{KEY_FIELD, SecretRef};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};

/// Bytes of randomness in a new key (written as hex).
const KEY_BYTES: usize = 32;

/// Keeps the Secret in existence: checks now and every minute, so one deleted by hand comes
/// back (and the speakers, which watch it, move to its new key together). `owner`: the
/// ClusterRole that owns it, so uninstalling Herald removes it.
pub async fn keep(client: Client, secret: SecretRef, owner: Option<String>) {
    let mut wait = Duration::from_secs(1);
    loop {
        match ensure(&client, &secret, owner.as_deref()).await {
            Ok(()) => wait = Duration::from_secs(60),
            Err(e) => {
                tracing::warn!(%secret, "making the speakers' gossip Secret: {e:#}");
                wait = (wait * 2).clamp(Duration::from_secs(2), Duration::from_secs(60));
            }
        }
        tokio::time::sleep(wait).await;
    }
}

async fn ensure(client: &Client, secret: &SecretRef, owner: Option<&str>) -> Result<()> {
    let api = Api::<Secret>::namespaced(client.clone(), &secret.namespace);
    if api.get_opt(&secret.name).await?.is_some() {
        return Ok(());
    }
    let owner = match owner {
        Some(name) => Some(herald_runtime::owner::cluster_role(client, name).await?),
        None => None,
    };
    let new = Secret {
        metadata: ObjectMeta {
            name: Some(secret.name.clone()),
            namespace: Some(secret.namespace.clone()),
            owner_references: owner.map(|o| vec![o]),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "herald-controller".to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some([(KEY_FIELD.to_owned(), ByteString(new_key()?))].into()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &new).await {
        Ok(_) => {
            tracing::info!(%secret, "created the speakers' gossip Secret");
            Ok(())
        }
        // Another replica made it first: that one stays.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e).context("creating it"),
    }
}

/// A new random key, hex-encoded (printable, so it can be copied into another Secret).
fn new_key() -> Result<Vec<u8>> {
    let mut bytes = [0u8; KEY_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness for a gossip key"))?;
    Ok(bytes
        .iter()
        .flat_map(|b| {
            let hex = b"0123456789abcdef";
            [hex[usize::from(b >> 4)], hex[usize::from(b & 15)]]
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn new_keys_are_long_printable_and_differ() {
        let (a, b) = (super::new_key().unwrap(), super::new_key().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.iter().all(u8::is_ascii_hexdigit));
        assert_ne!(a, b);
    }
}
