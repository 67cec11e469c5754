//! The speaker's metrics, one typed handle each: label sets are types, so a series cannot be
//! written with a misspelt or missing label.

use std::fmt::Write as _;
use std::net::IpAddr;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// ARP (IPv4) or NDP (IPv6): which protocol a frame speaks, from the address it is about.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Protocol {
    Arp,
    Ndp,
}

impl Protocol {
    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() {
            Protocol::Arp
        } else {
            Protocol::Ndp
        }
    }
}

impl EncodeLabelValue for Protocol {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(match self {
            Protocol::Arp => "arp",
            Protocol::Ndp => "ndp",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: Protocol,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForeignLabels {
    pub ip: String,
    pub mac: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// How the node whose IPs were taken over went.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Departure {
    /// Its heartbeats stopped for a failure timeout.
    Died,
    /// It said it was leaving (SIGTERM).
    Left,
}

impl EncodeLabelValue for Departure {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(match self {
            Departure::Died => "died",
            Departure::Left => "left",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TakeoverLabels {
    pub peer: Departure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BgpPeerLabels {
    /// The `BGPPeer`'s name.
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BgpPrefixLabels {
    pub peer: String,
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    pub ips_announced: Gauge,
    pub announcements: Family<ProtocolLabels, Counter>,
    pub answers: Family<ProtocolLabels, Counter>,
    pub members: Gauge,
    pub ownership_changes: Counter,
    pub isolated: Gauge,
    pub foreign_answers: Family<ForeignLabels, Gauge>,
    pub unannounced: Family<ReasonLabels, Gauge>,
    pub pass_duration: Histogram,
    pub takeover: Family<TakeoverLabels, Histogram>,
    pub bgp_session_up: Family<BgpPeerLabels, Gauge>,
    pub bgp_prefixes: Family<BgpPrefixLabels, Gauge>,
    pub bfd_up: Family<BgpPeerLabels, Gauge>,
    pub bgp_update_delay: Family<BgpPeerLabels, Histogram>,
}

impl Metrics {
    /// The speaker's metrics, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            ips_announced: Gauge::default(),
            announcements: Family::default(),
            answers: Family::default(),
            members: Gauge::default(),
            ownership_changes: Counter::default(),
            isolated: Gauge::default(),
            foreign_answers: Family::default(),
            unannounced: Family::default(),
            // 100 µs to ~3.3 s.
            pass_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            // 50 ms to ~6.4 s: a failure timeout (500 ms by default) plus a pass.
            takeover: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.05, 1.5, 13))
            }),
            bgp_session_up: Family::default(),
            bgp_prefixes: Family::default(),
            bfd_up: Family::default(),
            // 1 ms to ~8 s: a watch event, the coalescing and a pass, then the socket.
            bgp_update_delay: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
        };
        // Series that exist from the start (at 0), so dashboards and rate() see them before
        // the first ARP request or takeover.
        for protocol in [Protocol::Arp, Protocol::Ndp] {
            let labels = ProtocolLabels { protocol };
            m.announcements.get_or_create(&labels).inc_by(0);
            m.answers.get_or_create(&labels).inc_by(0);
        }
        for peer in [Departure::Died, Departure::Left] {
            drop(m.takeover.get_or_create(&TakeoverLabels { peer }));
        }
        registry.register(
            "herald_speaker_ips_announced",
            "IPs this node answers ARP or NDP for (on every interface it announces on)",
            m.ips_announced.clone(),
        );
        registry.register(
            "herald_speaker_announcements_sent",
            "Gratuitous ARP and unsolicited Neighbor Advertisements sent, by protocol",
            m.announcements.clone(),
        );
        registry.register(
            "herald_speaker_requests_answered",
            "ARP requests and Neighbor Solicitations answered, by protocol",
            m.answers.clone(),
        );
        registry.register(
            "herald_speaker_members",
            "Live speakers this one hears, itself included",
            m.members.clone(),
        );
        registry.register(
            "herald_speaker_ownership_changes",
            "IPs this node started or stopped announcing",
            m.ownership_changes.clone(),
        );
        registry.register(
            "herald_speaker_isolated",
            "1 while this speaker stands down because it cannot hear peers that run (wrong gossip key, gossip port blocked); it answers for no IP then",
            m.isolated.clone(),
        );
        registry.register(
            "herald_speaker_foreign_answers",
            "1 per IP this node announces that another host (label mac) also answers ARP or NDP for: kube-proxy in IPVS mode without strictARP, or the address on a host's interface",
            m.foreign_answers.clone(),
        );
        registry.register(
            "herald_speaker_ips_unannounced",
            "Assigned IPs no node may announce, by reason (one speaker reports them; the others say 0)",
            m.unannounced.clone(),
        );
        registry.register_with_unit(
            "herald_speaker_pass_duration",
            "One decision pass: who announces every IP, and this node's share applied",
            Unit::Seconds,
            m.pass_duration.clone(),
        );
        registry.register_with_unit(
            "herald_speaker_takeover",
            "From the last heartbeat of a peer that died (or its leave message) to this node announcing IPs it took over from it, by how the peer went",
            Unit::Seconds,
            m.takeover.clone(),
        );
        registry.register(
            "herald_speaker_bgp_session_up",
            "1 while this node's BGP session with the peer is Established, 0 while it is not",
            m.bgp_session_up.clone(),
        );
        registry.register(
            "herald_speaker_bgp_prefixes_advertised",
            "Prefixes this node has announced to the peer, by address family",
            m.bgp_prefixes.clone(),
        );
        registry.register(
            "herald_speaker_bfd_up",
            "1 while the BFD session beside this node's BGP session with the peer is Up, 0 while it is not (peers with BFD only)",
            m.bfd_up.clone(),
        );
        registry.register_with_unit(
            "herald_speaker_bgp_update_delay",
            "From a change this speaker's watches saw (a Service, its endpoints, a Node, a pool, an advertisement) to the last UPDATE it brought written to the peer (changes delayed on purpose, such as --local-settle-ms, are not timed)",
            Unit::Seconds,
            m.bgp_update_delay.clone(),
        );
        m
    }
}
