//! The speaker's metric names, described once so `/metrics` always lists them.

use herald_telemetry::{Kind, Registry};

pub const IPS_ANNOUNCED: &str = "herald_speaker_ips_announced";
pub const ANNOUNCEMENTS: &str = "herald_speaker_announcements_sent_total";
pub const ANSWERS: &str = "herald_speaker_requests_answered_total";
pub const MEMBERS: &str = "herald_speaker_members";
pub const OWNERSHIP_CHANGES: &str = "herald_speaker_ownership_changes_total";
pub const ISOLATED: &str = "herald_speaker_isolated";
pub const FOREIGN_ANSWERS: &str = "herald_speaker_foreign_answers";
pub const UNANNOUNCED: &str = "herald_speaker_ips_unannounced";

pub fn describe(r: &Registry) {
    r.describe(
        UNANNOUNCED,
        Kind::Gauge,
        "Assigned IPs no node may announce, by reason (reported by one speaker; the others say 0).",
    );
    r.describe(
        FOREIGN_ANSWERS,
        Kind::Gauge,
        "1 per IP this node announces that another host (label mac) also answers ARP or NDP for: kube-proxy in IPVS mode without strictARP, or the address on a host's interface.",
    );
    r.describe(
        ISOLATED,
        Kind::Gauge,
        "1 while this speaker stands down because it cannot hear peers that run (wrong gossip key, gossip port blocked); it answers for no IP then.",
    );
    r.describe(
        IPS_ANNOUNCED,
        Kind::Gauge,
        "IPs this node answers for (per interface).",
    );
    r.describe(
        ANNOUNCEMENTS,
        Kind::Counter,
        "Gratuitous ARP and unsolicited Neighbor Advertisements sent, by protocol.",
    );
    r.describe(
        ANSWERS,
        Kind::Counter,
        "ARP requests and Neighbor Solicitations answered, by protocol.",
    );
    r.describe(
        MEMBERS,
        Kind::Gauge,
        "Live speakers this one hears, itself included.",
    );
    r.describe(
        OWNERSHIP_CHANGES,
        Kind::Counter,
        "IPs this node started or stopped announcing.",
    );
}
