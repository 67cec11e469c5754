//! What the speaker says to users, in words: the Events (and their log lines) about where an
//! IP is announced, why nobody may announce it, a speaker standing down, and another host
//! answering for an IP. Pure: each returns a `Note`; `notes` and `run` publish them. A new
//! message goes here, with a test of what it must tell the reader.

use std::net::IpAddr;

use herald_api::events::Note;

use crate::conflicts::Conflict;
use crate::election::NoOwner;
use crate::isolation::Verdict;

/// `node` announces `ip` on `interfaces`; with none, a Warning: the node won the IP but has
/// nowhere to answer for it, and the user must know why nobody answers.
pub fn announced(ip: IpAddr, node: &str, interfaces: &[String]) -> Note {
    if interfaces.is_empty() {
        return Note::warning(
            "NoInterface",
            format!(
                "{ip} is not answered for: node {node} owns it but has no interface to answer \
                 on (none that is up matches the L2Advertisement's interfaces, or, when it \
                 names none, faces the IP's subnet or holds the default route)"
            ),
        );
    }
    Note::normal(
        "IPAnnounced",
        format!(
            "{ip} is announced by node {node} on {}",
            interfaces.join(", ")
        ),
    )
}

/// Nobody may announce `ip`, and why (`None`: a reason that gets no Event).
pub fn not_announced(ip: IpAddr, why: &NoOwner) -> Option<Note> {
    why.reason()
        .map(|reason| Note::warning(reason, format!("{ip} is not announced: {why}")))
}

/// This speaker stands down (a Warning for its Node), or serves again (`None`: a log line
/// says it, no Event).
pub fn isolation(verdict: &Verdict) -> Option<Note> {
    if !verdict.isolated {
        return None;
    }
    let unheard: Vec<String> = verdict
        .unheard
        .iter()
        .map(|(node, proof)| format!("{node} ({})", proof.describe()))
        .collect();
    let message = format!(
        "this speaker hears {} of the {} running speakers it knows of, so it answers for no IP \
         and reports not ready until it hears them; not heard: {}. Check the gossip key \
         (the Secret every speaker reads) and that UDP to the gossip port is allowed between nodes.",
        verdict.group - 1,
        verdict.group - 1 + verdict.unheard.len(),
        crate::logs::bounded_list(&unheard),
    );
    Some(Note::warning("SpeakerIsolated", message))
}

/// This node cannot speak with a BGP peer that selects it (a Warning on its Node).
pub fn bgp_peer_refused(peer: &str, why: &str) -> Note {
    Note::warning(
        "BGPPeerRefused",
        format!("not speaking BGP with BGPPeer {peer}: {why}"),
    )
}

/// Another host answers for an IP that node `me` announces (a Warning on each Service
/// holding the IP), with the usual causes and their fix.
pub fn foreign_answer(conflict: &Conflict, me: &str) -> Note {
    let (protocol, fix) = match conflict.ip {
        IpAddr::V4(_) => (
            "ARP",
            "set `strictARP: true` under `ipvs` in kube-proxy's configuration, or `arp_ignore=1` \
             and `arp_announce=2` on that host, or remove the address from it",
        ),
        IpAddr::V6(_) => ("NDP", "remove the address from that host's interfaces"),
    };
    let message = format!(
        "{ip} is announced by node {me}, but another host also answers {protocol} for it from MAC {mac}: \
         clients will flip between the two and connections break. Usually kube-proxy in IPVS mode \
         binding every Service IP on every node, or the address configured on a host: {fix}.",
        ip = conflict.ip,
        mac = conflict.mac,
    );
    Note::warning("ForeignAnswer", message)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use herald_api::events::Kind;

    use super::*;
    use crate::isolation::Proof;
    use crate::packet::MacAddr;

    #[test]
    fn an_announcement_names_the_node_and_its_interfaces_or_warns_that_it_has_none() {
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let note = announced(ip, "n1", &["eth0".into(), "br0".into()]);
        assert_eq!(
            (note.kind, note.reason.as_str(), note.message.as_str()),
            (
                Kind::Normal,
                "IPAnnounced",
                "192.0.2.10 is announced by node n1 on eth0, br0"
            )
        );
        let nowhere = announced(ip, "n1", &[]);
        assert_eq!(
            (nowhere.kind, nowhere.reason.as_str()),
            (Kind::Warning, "NoInterface")
        );
        assert!(
            nowhere.message.starts_with(
                "192.0.2.10 is not answered for: node n1 owns it but has no interface"
            ),
            "{}",
            nowhere.message
        );
    }

    #[test]
    fn an_ip_nobody_announces_is_a_warning_with_the_reason() {
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let note = not_announced(ip, &NoOwner::NotAdvertised("lan".into())).expect("a note");
        assert_eq!(note.kind, Kind::Warning);
        assert!(
            note.message.starts_with("192.0.2.10 is not announced: ")
                && note.message.contains("IPPool lan"),
            "{}",
            note.message
        );
    }

    #[test]
    fn a_speaker_standing_down_says_whom_it_does_not_hear_and_what_to_check() {
        let verdict = Verdict {
            isolated: true,
            unheard: BTreeMap::from([
                ("n2".to_owned(), Proof::WrongKey),
                ("n3".to_owned(), Proof::Announces),
            ]),
            group: 1,
            pending: false,
        };
        let note = isolation(&verdict).expect("a warning");
        assert_eq!(
            (note.kind, note.reason.as_str()),
            (Kind::Warning, "SpeakerIsolated")
        );
        for part in [
            "hears 0 of the 2 running speakers",
            "n2 (its heartbeats fail authentication",
            "n3 (it announces IPs",
            "gossip key",
            "UDP to the gossip port",
        ] {
            assert!(note.message.contains(part), "{part}: {}", note.message);
        }
        let serving = Verdict {
            isolated: false,
            ..verdict
        };
        assert_eq!(isolation(&serving), None);
    }

    #[test]
    fn a_foreign_answer_names_the_mac_and_the_fix_for_its_family() {
        let mac = MacAddr::new(2, 0, 0, 0, 0, 9);
        let v4 = Conflict {
            ip: "192.0.2.10".parse().unwrap(),
            mac,
        };
        let note = foreign_answer(&v4, "n1");
        assert_eq!(
            (note.kind, note.reason.as_str()),
            (Kind::Warning, "ForeignAnswer")
        );
        assert!(
            note.message
                .contains("answers ARP for it from MAC 02:00:00:00:00:09")
        );
        assert!(note.message.contains("strictARP"));
        let v6 = Conflict {
            ip: "2001:db8::10".parse().unwrap(),
            mac,
        };
        let note = foreign_answer(&v6, "n1");
        assert!(note.message.contains("answers NDP") && !note.message.contains("strictARP"));
    }
}
