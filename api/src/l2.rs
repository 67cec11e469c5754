//! `L2Advertisement`: which pools are announced with ARP/NDP, from which nodes, on which interfaces.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::selector::Scope;

/// Announce the IPs of some pools on the local network. A pool no advertisement selects is not
/// announced at all, and its Services get a Warning Event saying so. It has no status: where
/// each IP is announced is in its `L2Announcement`, and what the speakers decide about an
/// advertisement is in the Events on the Services it concerns.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "herald.dev",
    version = "v1alpha1",
    kind = "L2Advertisement",
    plural = "l2advertisements",
    shortname = "l2adv",
    category = "herald",
    doc = "Announces the IPs of some pools on the local network with ARP and NDP.",
    printcolumn = r#"{"name":"Pools","type":"string","jsonPath":".spec.ipPools"}"#,
    printcolumn = r#"{"name":"Interfaces","type":"string","jsonPath":".spec.interfaces"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct L2AdvertisementSpec {
    /// The pools announced and the nodes announcing them.
    #[serde(flatten)]
    pub scope: Scope,

    /// Interfaces to announce on. Empty: the interfaces whose subnets contain the IP, else the
    /// interface of the default route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,

    /// Nodes to announce from while they may (MetalLB's field and shape, as Kubernetes'
    /// preferred scheduling terms): a node scores the sum of the weights of the preferences
    /// its labels match, and the election picks among the eligible nodes with the highest
    /// score; when none of them may announce, among the next. Empty: every eligible node
    /// is as good as another.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub preferred_node_selectors: Vec<PreferredNodeSelector>,
}

/// A weighted preference for some nodes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreferredNodeSelector {
    /// 1 to 100: how much a node matching `preference` is preferred.
    #[schemars(range(min = 1, max = 100))]
    pub weight: u32,
    /// The nodes preferred, by their labels.
    pub preference: LabelSelector,
}

impl L2AdvertisementSpec {
    /// How much this advertisement prefers a node with `labels`: the sum of the weights of
    /// the preferences they match (0 when none does, or there are none).
    pub fn preference(&self, labels: &std::collections::BTreeMap<String, String>) -> u32 {
        self.preferred_node_selectors
            .iter()
            .filter(|p| crate::selector::matches(&p.preference, labels))
            .map(|p| p.weight.min(100))
            .sum()
    }
}
