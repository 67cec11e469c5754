//! The one identity of an object in Herald's caches, maps, logs and Events: `namespace/name`,
//! and `/name` for cluster-scoped objects (Nodes, IPPools), as kube-runtime's stores key
//! them. Keys are built and split here only.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Which object: its namespace (empty when cluster-scoped) and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
}

impl<'a> ObjectKey<'a> {
    pub fn new(namespace: &'a str, name: &'a str) -> Self {
        Self { namespace, name }
    }

    /// A cluster-scoped object (a Node).
    pub fn cluster(name: &'a str) -> Self {
        Self::new("", name)
    }

    /// The object `meta` describes.
    pub fn of(meta: &'a ObjectMeta) -> Self {
        Self::new(
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        )
    }

    /// The object a key (`namespace/name` or `/name`) names. Names and namespaces hold no
    /// `/`, so the first one splits; a key without one names a cluster-scoped object.
    pub fn parse(key: &'a str) -> Self {
        match key.split_once('/') {
            Some((namespace, name)) => Self::new(namespace, name),
            None => Self::cluster(key),
        }
    }
}

/// The key: `namespace/name` (`/name` when cluster-scoped).
impl fmt::Display for ObjectKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reads_back_as_the_object_it_names() {
        for key in [ObjectKey::new("shop", "web"), ObjectKey::cluster("n1")] {
            assert_eq!(ObjectKey::parse(&key.to_string()), key);
        }
        assert_eq!(ObjectKey::new("shop", "web").to_string(), "shop/web");
        assert_eq!(ObjectKey::cluster("n1").to_string(), "/n1");
        assert_eq!(ObjectKey::parse("n1"), ObjectKey::cluster("n1"));
        let meta = ObjectMeta {
            namespace: Some("shop".into()),
            name: Some("web".into()),
            ..Default::default()
        };
        assert_eq!(ObjectKey::of(&meta), ObjectKey::new("shop", "web"));
    }
}
