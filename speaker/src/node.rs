//! A Node as the speaker keeps it: what eligibility, peers and isolation read, and nothing
//! else. Every speaker caches every Node (5,000 in the benchmark), and a kubelet rewrites
//! its Node's status now and then: kept this small, the cache stays small, and a status
//! write that changes none of this triggers no decision pass.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: Box<str>,
    pub uid: Box<str>,
    pub labels: BTreeMap<String, String>,
    /// Its `Ready` condition is True.
    pub ready: bool,
    /// Its `NetworkUnavailable` condition is True.
    pub network_unavailable: bool,
    /// Cordoned (`spec.unschedulable`): about to be drained.
    pub unschedulable: bool,
    /// Where heartbeats go: its first InternalIP.
    pub internal_ip: Option<IpAddr>,
    /// Every address it has (heartbeats may come from any).
    pub addresses: Box<[IpAddr]>,
}

impl NodeView {
    pub fn of(node: Node) -> Option<Self> {
        let status = node.status.unwrap_or_default();
        let unschedulable = node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        let condition = |kind: &str| {
            status
                .conditions
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == kind && c.status == "True")
        };
        let listed = status.addresses.as_deref().unwrap_or_default();
        Some(Self {
            name: node.metadata.name?.into(),
            uid: node.metadata.uid.unwrap_or_default().into(),
            labels: node.metadata.labels.unwrap_or_default(),
            ready: condition("Ready"),
            network_unavailable: condition("NetworkUnavailable"),
            unschedulable,
            internal_ip: listed
                .iter()
                .find(|a| a.type_ == "InternalIP")
                .and_then(|a| a.address.parse().ok()),
            addresses: listed
                .iter()
                .filter_map(|a| a.address.parse().ok())
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_decides_and_drops_the_rest() {
        let node: Node = serde_yaml_ng::from_str(
            "metadata: {name: n1, uid: u1, labels: {zone: a}}
status:
  addresses: [{type: Hostname, address: n1}, {type: ExternalIP, address: 198.51.100.1}, {type: InternalIP, address: 192.0.2.11}]
  conditions:
    - {type: Ready, status: 'True', lastHeartbeatTime: '2026-01-01T00:00:00Z'}
    - {type: NetworkUnavailable, status: 'False'}
  images: [{names: [big]}]",
        )
        .unwrap();
        let view = NodeView::of(node.clone()).unwrap();
        assert_eq!(&*view.name, "n1");
        assert!(view.ready && !view.network_unavailable);
        assert_eq!(view.internal_ip, Some("192.0.2.11".parse().unwrap()));
        assert_eq!(view.addresses.len(), 2);
        // A heartbeat time or an image list changing is no change at all.
        let mut later = node;
        if let Some(s) = later.status.as_mut() {
            s.images = None;
            for c in s.conditions.iter_mut().flatten() {
                c.last_heartbeat_time = None;
            }
        }
        assert_eq!(NodeView::of(later), Some(view));
        assert_eq!(NodeView::of(Node::default()), None);
    }
}
