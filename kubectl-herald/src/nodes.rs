//! `kubectl herald nodes`: each node's speaker, whether it may announce and why not, the IPs
//! it answers for and on which interfaces, its BGP sessions. Pure: computed from a
//! [`Snapshot`].

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;

use crate::facts;
use crate::snapshot::Snapshot;

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    pub name: String,
    pub ready: bool,
    /// The speaker pod on the node and whether it is Ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speaker: Option<String>,
    pub speaker_ready: bool,
    pub may_announce: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub why_not: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// `namespace/service ip` for every IP it answers ARP / NDP for.
    pub answers_for: Vec<String>,
    pub interfaces: Vec<String>,
    pub sessions: Vec<Session>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub peer: String,
    pub state: String,
    #[serde(rename = "advertisedIPv4")]
    pub advertised_ipv4: u32,
    #[serde(rename = "advertisedIPv6")]
    pub advertised_ipv6: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bfd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

pub fn nodes(snapshot: &Snapshot) -> Vec<NodeReport> {
    let mut reports: Vec<NodeReport> = snapshot
        .nodes
        .iter()
        .map(|node| {
            let name = facts::name(node);
            let speaker = facts::speaker(snapshot, name);
            let why_not = facts::blockers(snapshot, node);
            let owned: Vec<_> = snapshot
                .announcements
                .iter()
                .filter(|a| a.spec.node == name)
                .collect();
            let mut answers_for: Vec<String> = owned
                .iter()
                .map(|a| {
                    format!(
                        "{}/{} {}",
                        a.metadata.namespace.as_deref().unwrap_or_default(),
                        a.spec.service,
                        a.spec.ip
                    )
                })
                .collect();
            answers_for.sort();
            let interfaces: BTreeSet<String> = owned
                .iter()
                .flat_map(|a| a.spec.interfaces.iter().cloned())
                .collect();
            let mut sessions: Vec<Session> = snapshot
                .sessions
                .iter()
                .filter(|s| s.spec.node == name)
                .map(|s| Session {
                    peer: s.spec.peer.clone(),
                    state: s.spec.state.clone(),
                    advertised_ipv4: s.spec.advertised_ipv4,
                    advertised_ipv6: s.spec.advertised_ipv6,
                    bfd: s.spec.bfd.clone(),
                    last_error: s.spec.last_error.clone(),
                })
                .collect();
            sessions.sort_by(|a, b| a.peer.cmp(&b.peer));
            NodeReport {
                name: name.to_owned(),
                ready: facts::ready(node),
                speaker: speaker.and_then(|p| p.metadata.name.clone()),
                speaker_ready: speaker.is_some_and(facts::pod_ready),
                may_announce: why_not.is_empty(),
                why_not,
                notes: facts::notes(node),
                answers_for,
                interfaces: interfaces.into_iter().collect(),
                sessions,
            }
        })
        .collect();
    reports.sort_by(|a, b| a.name.cmp(&b.name));
    reports
}

/// The report as a person reads it.
pub fn text(nodes: &[NodeReport]) -> String {
    let mut out = String::new();
    for n in nodes {
        let speaker = match (&n.speaker, n.speaker_ready) {
            (Some(pod), true) => format!("speaker {pod}"),
            (Some(pod), false) => format!("speaker {pod} (not Ready)"),
            (None, _) => "no speaker".to_owned(),
        };
        let _ = writeln!(
            out,
            "{}: {}, {speaker}, {}",
            n.name,
            if n.ready { "Ready" } else { "not Ready" },
            if n.may_announce {
                "may announce".to_owned()
            } else {
                format!("may not announce: {}", n.why_not.join("; "))
            }
        );
        for note in &n.notes {
            let _ = writeln!(out, "  note: {note}");
        }
        if !n.answers_for.is_empty() {
            let _ = writeln!(
                out,
                "  answers for {} on {}",
                n.answers_for.join(", "),
                n.interfaces.join(", ")
            );
        }
        for s in &n.sessions {
            let _ = write!(
                out,
                "  BGP peer {}: {} ({} IPv4, {} IPv6 prefixes",
                s.peer, s.state, s.advertised_ipv4, s.advertised_ipv6
            );
            if let Some(bfd) = &s.bfd {
                let _ = write!(out, "; BFD {bfd}");
            }
            let _ = writeln!(out, ")");
            if let Some(e) = &s.last_error {
                let _ = writeln!(out, "    last error: {e}");
            }
        }
    }
    out
}
