//! Kubernetes label selectors, evaluated the way the API server does, and the scope every
//! advertisement selects with them. Pure.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which pools an advertisement announces, for which Services, and from which nodes: the
/// same for `L2Advertisement` and `BGPAdvertisement`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scope {
    /// Pools announced, by name. With neither `ipPools` nor `ipPoolSelectors`, every pool is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_pools: Vec<String>,

    /// Pools announced, by label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_pool_selectors: Vec<LabelSelector>,

    /// Services announced, by their labels. Empty: every Service of the pools. An IP shared
    /// by several Services is announced when one of them matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,

    /// Nodes that announce. Empty: every node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,
}

impl Scope {
    /// Whether the advertisement announces `pool`.
    pub fn selects_pool(&self, pool: &crate::IPPool) -> bool {
        selects_pool(&self.ip_pools, &self.ip_pool_selectors, pool)
    }

    /// Whether the advertisement announces a Service with `labels` (`None`: it has none).
    pub fn selects_service(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
        any_or_none(&self.service_selectors, labels.unwrap_or(&NO_LABELS))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(yaml: &str) -> Scope {
        serde_yaml_ng::from_str(yaml).expect("yaml")
    }

    #[test]
    fn service_selectors_select_services_by_label_and_empty_selects_all() {
        let web: BTreeMap<String, String> = [("tier".to_owned(), "web".to_owned())].into();
        let every = scope("{}");
        assert!(every.selects_service(None) && every.selects_service(Some(&web)));
        let webs = scope("serviceSelectors: [{matchLabels: {tier: web}}, {matchLabels: {app: x}}]");
        assert!(webs.selects_service(Some(&web)));
        assert!(!webs.selects_service(None));
        let db: BTreeMap<String, String> = [("tier".to_owned(), "db".to_owned())].into();
        assert!(!webs.selects_service(Some(&db)));
        let not_db = scope(
            "serviceSelectors: [{matchExpressions: [{key: tier, operator: NotIn, values: [db]}]}]",
        );
        assert!(not_db.selects_service(None) && !not_db.selects_service(Some(&db)));
    }
}
