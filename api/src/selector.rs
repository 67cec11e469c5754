//! Kubernetes label selectors, evaluated the way the API server does, and the scope every
//! advertisement selects with them. Pure.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which pools an advertisement announces, and from which nodes: the same for
/// `L2Advertisement` and `BGPAdvertisement`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scope {
    /// Pools announced, by name. With neither `ipPools` nor `ipPoolSelectors`, every pool is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_pools: Vec<String>,

    /// Pools announced, by label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_pool_selectors: Vec<LabelSelector>,

    /// Nodes that announce. Empty: every node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,
}

impl Scope {
    /// Whether the advertisement announces `pool`.
    pub fn selects_pool(&self, pool: &crate::IPPool) -> bool {
        selects_pool(&self.ip_pools, &self.ip_pool_selectors, pool)
    }

    /// Whether a node with `labels` announces.
    pub fn selects_node(&self, labels: &BTreeMap<String, String>) -> bool {
        any_or_none(&self.node_selectors, labels)
    }
}

/// Kubernetes label-selector semantics; an unknown operator matches nothing.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// Whether one of `selectors` matches `labels`; an empty list matches everything (how every
/// `nodeSelectors` of Herald's advertisements and peers reads).
pub fn any_or_none(selectors: &[LabelSelector], labels: &BTreeMap<String, String>) -> bool {
    selectors.is_empty() || selectors.iter().any(|s| matches(s, labels))
}

/// Whether `ipPools` and `ipPoolSelectors` select `pool`: by name, by label, or (both
/// empty) every pool.
fn selects_pool(names: &[String], selectors: &[LabelSelector], pool: &crate::IPPool) -> bool {
    static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
    let name = pool.metadata.name.as_deref().unwrap_or_default();
    let labels = pool.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
    (names.is_empty() && selectors.is_empty())
        || names.iter().any(|p| p == name)
        || selectors.iter().any(|s| matches(s, labels))
}
