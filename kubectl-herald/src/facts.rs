//! Facts about nodes that decide whether a node's speaker may announce, read from the API
//! objects the speakers read themselves. Pure.

use herald_api::keys::EXCLUDE_FROM_LB_LABEL;
use k8s_openapi::api::core::v1::{Node, Pod};

use crate::snapshot::Snapshot;

/// A node's name.
pub fn name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or_default()
}

/// The status of the node's condition `type_` (`True`, `False`, `Unknown`), if it has it.
fn condition<'n>(node: &'n Node, type_: &str) -> Option<&'n str> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

pub fn ready(node: &Node) -> bool {
    condition(node, "Ready") == Some("True")
}

pub fn cordoned(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

pub fn excluded(node: &Node) -> bool {
    node.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(EXCLUDE_FROM_LB_LABEL))
}

/// The node's speaker pod, if one is scheduled there.
pub fn speaker<'s>(snapshot: &'s Snapshot, node: &str) -> Option<&'s Pod> {
    snapshot
        .speakers
        .iter()
        .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Why no IP may be announced from `node`, whatever the Service: empty when any may.
pub fn blockers(snapshot: &Snapshot, node: &Node) -> Vec<String> {
    let mut why = Vec::new();
    if !ready(node) {
        why.push("not Ready".to_owned());
    }
    if condition(node, "NetworkUnavailable") == Some("True") {
        why.push("NetworkUnavailable".to_owned());
    }
    if excluded(node) {
        why.push(format!("labelled {EXCLUDE_FROM_LB_LABEL}"));
    }
    match speaker(snapshot, name(node)) {
        None => why.push("no Herald speaker runs on it".to_owned()),
        Some(pod) if !pod_ready(pod) => why.push(format!(
            "its speaker {} is not Ready",
            pod.metadata.name.as_deref().unwrap_or_default()
        )),
        Some(_) => {}
    }
    why
}

/// What is worth knowing about a node that does not by itself stop it announcing.
pub fn notes(node: &Node) -> Vec<String> {
    let mut notes = Vec::new();
    if cordoned(node) {
        notes.push(
            "cordoned: its IPs move elsewhere only when the speakers run with --exclude-cordoned"
                .to_owned(),
        );
    }
    notes
}
