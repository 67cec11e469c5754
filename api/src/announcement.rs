//! `L2Announcement`: which node answers for one IP of a Service, on which interfaces. Written
//! by the speaker that owns the IP (one object per Service and IP, owned by the Service so it
//! goes away with it), so `kubectl get l2announcements` shows where each IP lives.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "herald.dev",
    version = "v1alpha1",
    kind = "L2Announcement",
    plural = "l2announcements",
    shortname = "l2ann",
    category = "herald",
    namespaced,
    doc = "Where one IP of a LoadBalancer Service is announced. Written by Herald's speakers.",
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service"}"#,
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".spec.ip"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Interfaces","type":"string","jsonPath":".spec.interfaces"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct L2AnnouncementSpec {
    /// The Service's name (same namespace).
    pub service: String,
    pub ip: String,
    /// The node answering ARP / NDP for the IP; empty when nobody may (see `reason`).
    #[serde(default)]
    pub node: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    /// Why nobody announces the IP, when nobody does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The object name for a Service's IP: `web-192-0-2-10`, `web-2001-db8--10`.
pub fn name(service: &str, ip: std::net::IpAddr) -> String {
    let ip = ip.to_string().replace(['.', ':'], "-");
    let name = format!("{service}-{ip}");
    name.trim_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_valid_object_names() {
        let n = super::name("web", "2001:db8::10".parse().unwrap());
        assert_eq!(n, "web-2001-db8--10");
        assert_eq!(
            super::name("web", "192.0.2.10".parse().unwrap()),
            "web-192-0-2-10"
        );
        assert_eq!(super::name("web", "::1".parse().unwrap()), "web---1");
    }
}
