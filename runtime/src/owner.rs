//! Owner references that tie what Herald writes at run time to what its chart installed, so
//! that uninstalling Herald (`helm uninstall`, `kubectl delete -f`) removes it too: the
//! garbage collector deletes anything whose owner is gone.

use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Api, Client};

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("reading ClusterRole {name}, the owner of what Herald writes: {source}")]
    Read {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("ClusterRole {0} has no uid")]
    NoUid(String),
}

/// An owner reference to the ClusterRole `name` (one of the chart's).
pub async fn cluster_role(client: &Client, name: &str) -> Result<OwnerReference, OwnerError> {
    let role = Api::<ClusterRole>::all(client.clone())
        .get(name)
        .await
        .map_err(|source| OwnerError::Read {
            name: name.to_owned(),
            source,
        })?;
    Ok(OwnerReference {
        api_version: "rbac.authorization.k8s.io/v1".into(),
        kind: "ClusterRole".into(),
        name: name.to_owned(),
        uid: role
            .metadata
            .uid
            .ok_or_else(|| OwnerError::NoUid(name.to_owned()))?,
        ..Default::default()
    })
}
