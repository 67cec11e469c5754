//! `L2Advertisement`: which pools are announced with ARP/NDP, from which nodes, on which interfaces.

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
}
