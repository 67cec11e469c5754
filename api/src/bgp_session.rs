//! `BGPSession`: one node's session with one `BGPPeer`, as that node's speaker sees it.
//! Written by the speaker (one object per node and peer, owned by the Node so it goes away
//! with it), so `kubectl get bgpsessions` shows every session's state, what it announces
//! and why it is down. Never the password.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "herald.dev",
    version = "v1alpha1",
    kind = "BGPSession",
    plural = "bgpsessions",
    shortname = "bgps",
    category = "herald",
    doc = "One node's BGP session with one BGPPeer. Written by Herald's speakers.",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Peer","type":"string","jsonPath":".spec.peer"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".spec.state"}"#,
    printcolumn = r#"{"name":"Since","type":"date","jsonPath":".spec.since"}"#,
    printcolumn = r#"{"name":"IPv4","type":"integer","jsonPath":".spec.advertisedIPv4"}"#,
    printcolumn = r#"{"name":"IPv6","type":"integer","jsonPath":".spec.advertisedIPv6"}"#,
    printcolumn = r#"{"name":"BFD","type":"string","jsonPath":".spec.bfd"}"#,
    printcolumn = r#"{"name":"Error","type":"string","jsonPath":".spec.lastError"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BGPSessionSpec {
    /// The node whose speaker keeps the session.
    pub node: String,
    /// The `BGPPeer`.
    pub peer: String,
    /// `Connecting`, `Established`, `Down` (see `lastError`) or `Refused` (this node cannot
    /// speak with the peer: see `lastError`).
    pub state: String,
    /// When it entered that state (RFC 3339).
    pub since: String,
    /// Prefixes announced to the router, per family.
    #[serde(rename = "advertisedIPv4")]
    pub advertised_ipv4: u32,
    #[serde(rename = "advertisedIPv6")]
    pub advertised_ipv6: u32,
    /// Both sides offered graceful restart: the router keeps this node's routes while its
    /// speaker restarts.
    pub graceful_restart: bool,
    /// The BFD session beside it, when the peer asks for BFD: `Waiting` (not Up yet: the
    /// router may not run BFD with this node), `Up`, `Down (why)` or `Unavailable (why)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<String>,
    /// Why the session is down or refused, or went down last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Label carrying the node's name, to find one node's objects.
pub const NODE_LABEL: &str = "herald.dev/node";

/// The object name of `node`'s session with `peer`: `node-1.tor`. Both are object names
/// (at most 253 characters each); a longer pair keeps the start of each and a hash of both,
/// within the 253 a name may have.
pub fn name(node: &str, peer: &str) -> String {
    let full = format!("{node}.{peer}");
    if full.len() <= 253 {
        return full;
    }
    // FNV-1a: stable across builds, unlike `fingerprint` (an upgraded speaker finds its
    // objects under the same names).
    let hash = format!("{node}/{peer}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let cut = |s: &str| {
        s.chars()
            .take(110)
            .collect::<String>()
            .trim_end_matches(['.', '-'])
            .to_owned()
    };
    format!("{}.{}.{hash:016x}", cut(node), cut(peer))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_valid_object_names() {
        assert_eq!(super::name("node-1", "tor"), "node-1.tor");
        let long = "a".repeat(200);
        let n = super::name(&long, &long);
        assert!(n.len() <= 253, "{}", n.len());
        assert_ne!(n, super::name(&long, "b"));
    }
}
