//! `BGPPeer` and `BGPAdvertisement`: which routers each node speaks BGP with, and which pools'
//! IPs it announces to them. Field names follow MetalLB's (`myASN`, `peerASN`,
//! `peerAddress`, ...) so its configuration converts field for field.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::selector::Scope;

/// A BGP router the selected nodes connect to. Cluster-scoped. Every selected node opens
/// its own session (active connect unless `passive`: nothing listens on port 179, so Herald
/// runs beside another BGP daemon on the node) and announces the routes its `BGPAdvertisement`s give
/// it. Originate-only: what the router sends is checked and dropped, never installed.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "herald.dev",
    version = "v1alpha1",
    kind = "BGPPeer",
    plural = "bgppeers",
    shortname = "bgpp",
    category = "herald",
    doc = "A BGP router that the selected nodes announce Service IPs to.",
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.peerAddress"}"#,
    printcolumn = r#"{"name":"Peer ASN","type":"integer","jsonPath":".spec.peerASN"}"#,
    printcolumn = r#"{"name":"My ASN","type":"integer","jsonPath":".spec.myASN"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.peerASN) != has(self.dynamicASN)").message("set exactly one of peerASN (the router's AS number) and dynamicASN (internal or external)"))]
#[x_kube(validation = Rule::new("!has(self.holdTime) || !has(self.keepaliveTime) || duration(self.keepaliveTime) < duration(self.holdTime)").message("keepaliveTime must be shorter than holdTime"))]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerSpec {
    /// This cluster's AS number (4-octet numbers are fine).
    #[serde(rename = "myASN")]
    #[x_kube(validation = Rule::new("self > 0").message("myASN must be 1 or more"))]
    pub my_asn: u32,

    /// The router's AS number. Equal to `myASN`: iBGP; else eBGP.
    #[serde(default, rename = "peerASN", skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("peerASN must be 1 or more"))]
    pub peer_asn: Option<u32>,

    /// Instead of `peerASN`: accept whatever AS the router says, as long as it is this
    /// cluster's (`internal`) or another (`external`).
    #[serde(
        default,
        rename = "dynamicASN",
        skip_serializing_if = "Option::is_none"
    )]
    pub dynamic_asn: Option<DynamicAsn>,

    /// The router's address, IPv4 or IPv6.
    #[x_kube(validation = Rule::new("isIP(self)").message("peerAddress must be an IP address"))]
    #[schemars(length(max = 64))]
    pub peer_address: String,

    /// The router's TCP port. Default 179.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("peerPort must be a TCP port (1-65535)"))]
    pub peer_port: Option<u16>,

    /// Connect from this address (it must be on the node). Default: the kernel's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isIP(self)").message("sourceAddress must be an IP address"))]
    #[schemars(length(max = 64))]
    pub source_address: Option<String>,

    /// BGP identifier, an IPv4 address. Default: the node's IPv4 address facing the router
    /// (else its first IPv4 InternalIP).
    #[serde(default, rename = "routerID", skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isIP(self) && ip(self).family() == 4").message("routerID must be an IPv4 address"))]
    #[schemars(length(max = 64))]
    pub router_id: Option<String>,

    /// Nodes that speak with this router. Empty: every node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,

    /// Hold time proposed in the OPEN ("90s", "3s"; 0s for none). Default 90s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) == duration('0s') || (duration(self) >= duration('3s') && duration(self) <= duration('65535s'))").message("holdTime must be 0s or between 3s and 65535s (RFC 4271)"))]
    #[schemars(length(max = 64))]
    pub hold_time: Option<String>,

    /// KEEPALIVE interval. Default: a third of the hold time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("keepaliveTime must be 1s or more"))]
    #[schemars(length(max = 64))]
    pub keepalive_time: Option<String>,

    /// How long to wait between attempts to connect to the router ("5s", "30s"; MetalLB's
    /// and FRR's `connectTime`, the ConnectRetry timer). Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('65535s')").message("connectTime must be between 1s and 65535s"))]
    #[schemars(length(max = 64))]
    pub connect_time: Option<String>,

    /// The address families the session carries: `[IPv4]`, `[IPv6]` or both. Default
    /// both (MP-BGP, RFC 4760): one session, whatever `peerAddress`'s family, carries IPv4
    /// and IPv6 routes, each with the node's address of that family as next hop. A router
    /// with one session per family takes `[IPv4]` on its IPv4 peer and `[IPv6]` on its IPv6
    /// one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(f, self.exists_one(g, g == f))").message("addressFamilies lists a family twice"))]
    #[schemars(length(max = 2))]
    pub address_families: Vec<crate::service::IpFamily>,

    /// Wait for the router to connect instead of connecting to it: each node listens on
    /// port 179 of its address facing the router (or `sourceAddress`) and takes only the
    /// router's connections there. For routers configured with a neighbor per node that
    /// open the sessions themselves. Binding port 179 needs the chart's
    /// `speaker.bgpPassive=true`; another daemon listening on port 179 of every address of
    /// the node (Calico's BIRD) makes it impossible, and the node's BGPSession says so.
    #[serde(default)]
    pub passive: bool,

    /// Offer graceful restart (RFC 4724): when a speaker restarts (a rolling upgrade), the
    /// router keeps its routes for 120 s until the new speaker has sent them again. Without
    /// it, a restarting speaker's routes are withdrawn and traffic moves to other nodes.
    #[serde(default)]
    pub enable_graceful_restart: bool,

    /// The router is more than one hop away (eBGP): the session's packets leave with TTL
    /// 255 instead of 1, and the routes carry the node's InternalIPs as next hops unless the
    /// node has an address on the router's subnet. BFD here is single hop only: a multihop
    /// peer with `bfd` is refused.
    #[serde(default)]
    pub ebgp_multi_hop: bool,

    /// The TCP-MD5 password the router expects (RFC 2385), from a Secret in Herald's
    /// namespace; the speakers may read only the Secrets the chart's
    /// `speaker.bgpPasswordSecrets` names. The password is never logged, shown in an Event,
    /// a status or a metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<PasswordSecret>,

    /// Run BFD (RFC 5880, single hop) beside the session: when the path to the router fails,
    /// both sides know within the detection time (3 x 300 ms by default) instead of the hold
    /// time, and the router moves traffic to the other nodes. The router must run BFD with
    /// this node too (FRR: `neighbor ... bfd`; BIRD: `bfd on`). MetalLB's `BFDProfile`
    /// fields, set on the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BfdSettings>,
}

/// BFD timers, in milliseconds (MetalLB's `BFDProfile` names and ranges).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BfdSettings {
    /// The fastest this node takes packets, in ms. Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 60000))]
    pub receive_interval: Option<u32>,
    /// The fastest this node would send, in ms. Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 60000))]
    pub transmit_interval: Option<u32>,
    /// Packets missed before the path counts as down. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 255))]
    pub detect_multiplier: Option<u8>,
    /// Wait for the router to start the session.
    #[serde(default)]
    pub passive_mode: bool,
}

impl BfdSettings {
    /// The receive interval, transmit interval and multiplier with their defaults.
    pub fn timers(&self) -> (Duration, Duration, u8) {
        let ms = |v: Option<u32>| Duration::from_millis(u64::from(v.unwrap_or(300)));
        (
            ms(self.receive_interval),
            ms(self.transmit_interval),
            self.detect_multiplier.unwrap_or(3),
        )
    }
}

/// A key of a Secret in Herald's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordSecret {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the password. Default `password` (MetalLB's, of a
    /// `kubernetes.io/basic-auth` Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

impl PasswordSecret {
    /// The key holding the password.
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or("password")
    }
}

/// `dynamicASN`: which kind of AS the router may have.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DynamicAsn {
    /// The router is in this cluster's AS (iBGP).
    Internal,
    /// The router is in any other AS (eBGP).
    External,
}

/// Announce some pools' IPs over BGP, from some nodes, to some peers.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "herald.dev",
    version = "v1alpha1",
    kind = "BGPAdvertisement",
    plural = "bgpadvertisements",
    shortname = "bgpadv",
    category = "herald",
    doc = "Announces the IPs of some pools to BGP routers.",
    printcolumn = r#"{"name":"Pools","type":"string","jsonPath":".spec.ipPools"}"#,
    printcolumn = r#"{"name":"Peers","type":"string","jsonPath":".spec.peers"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BGPAdvertisementSpec {
    /// The pools announced and the nodes announcing them.
    #[serde(flatten)]
    pub scope: Scope,

    /// `BGPPeer`s told, by name. Empty: every peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,

    /// LOCAL_PREF of the routes (iBGP sessions only: RFC 4271 forbids it on eBGP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_pref: Option<u32>,

    /// Communities attached to the routes: standard ones as `65000:100` or a well-known
    /// name (`no-export`, `no-advertise`, `no-export-subconfed`, `no-peer`,
    /// `graceful-shutdown`, `blackhole`), large ones as `large:65000:1:2`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::community_list")]
    pub communities: Vec<String>,

    /// Announce the IPv4 prefix of this length holding each Service IP instead of its /32
    /// (one route for many Services, from the nodes that announce any of them). 0-32,
    /// default 32. The prefix may cover addresses beyond the pool: the router sends them to
    /// the nodes too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 32))]
    pub aggregation_length: Option<u8>,

    /// The same for IPv6: 0-128, default 128.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 128))]
    pub aggregation_length_v6: Option<u8>,
}

impl BGPAdvertisementSpec {
    /// The length of the prefix announced for `ip`.
    pub fn prefix_length(&self, ip: IpAddr) -> u8 {
        match ip {
            IpAddr::V4(_) => self.aggregation_length.unwrap_or(32).min(32),
            IpAddr::V6(_) => self.aggregation_length_v6.unwrap_or(128).min(128),
        }
    }
}

/// A community as a route carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Community {
    Standard(u32),
    Large([u32; 3]),
}

/// A community this Herald cannot attach, with the text it was given (bounded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("community {0} is neither ASN:VALUE, large:ASN:VALUE:VALUE nor a well-known name")]
pub struct BadCommunity(pub String);

impl Community {
    /// Parses one entry of `BGPAdvertisement.spec.communities` (the API server's CEL rule
    /// checks the shape; the ranges are checked here).
    pub fn parse(text: &str) -> Result<Self, BadCommunity> {
        let bad = || BadCommunity(crate::events::quote(text));
        let well_known = match text {
            "no-export" => Some(0xFFFF_FF01),
            "no-advertise" => Some(0xFFFF_FF02),
            "no-export-subconfed" => Some(0xFFFF_FF03),
            "no-peer" => Some(0xFFFF_FF04),
            "graceful-shutdown" => Some(0xFFFF_0000),
            "blackhole" => Some(0xFFFF_029A),
            _ => None,
        };
        if let Some(value) = well_known {
            return Ok(Community::Standard(value));
        }
        if let Some(large) = text.strip_prefix("large:") {
            let parts: Vec<u32> = large
                .split(':')
                .map(|p| p.parse::<u32>())
                .collect::<Result<_, _>>()
                .map_err(|_| bad())?;
            let [a, b, c] = parts[..] else {
                return Err(bad());
            };
            return Ok(Community::Large([a, b, c]));
        }
        let (asn, value) = text.split_once(':').ok_or_else(bad)?;
        let asn: u16 = asn.parse().map_err(|_| bad())?;
        let value: u16 = value.parse().map_err(|_| bad())?;
        Ok(Community::Standard(u32::from(asn) << 16 | u32::from(value)))
    }
}

/// A duration as the API carries it (`90s`, `1m30s`, `500ms`): Go's `time.Duration`
/// syntax, as MetalLB's fields, without fractions. `None` when it is not one.
pub fn parse_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "h" => Duration::from_secs(3600),
            "m" => Duration::from_secs(60),
            "s" => Duration::from_secs(1),
            "ms" => Duration::from_millis(1),
            _ => return None,
        };
        total = total.checked_add(unit.checked_mul(u32::try_from(number).ok()?)?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

impl BGPPeerSpec {
    /// The router's address, when `peerAddress` is one (the CEL rule makes it so).
    pub fn address(&self) -> Option<IpAddr> {
        self.peer_address.parse().ok()
    }

    /// `routerID`, when set and an IPv4 address.
    pub fn router_id(&self) -> Option<Ipv4Addr> {
        self.router_id.as_deref()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn communities_parse_with_their_ranges_and_well_known_names() {
        assert_eq!(
            Community::parse("65000:100"),
            Ok(Community::Standard(65000 << 16 | 100))
        );
        assert_eq!(
            Community::parse("no-export"),
            Ok(Community::Standard(0xFFFF_FF01))
        );
        assert_eq!(
            Community::parse("large:4200000001:1:2"),
            Ok(Community::Large([4_200_000_001, 1, 2]))
        );
        for bad in [
            "65536:1",
            "1:65536",
            "large:1:2",
            "large:1:2:3:4",
            "x",
            "1:",
            "",
        ] {
            assert!(Community::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn durations_follow_gos_syntax() {
        let d = |s| parse_duration(s);
        assert_eq!(d("90s"), Some(Duration::from_secs(90)));
        assert_eq!(d("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(d("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(d("0s"), Some(Duration::ZERO));
        assert_eq!(d("0"), Some(Duration::ZERO));
        for bad in ["", "s", "10", "1.5s", "10x", "-1s", "99999999999999h"] {
            assert_eq!(d(bad), None, "{bad}");
        }
    }
}
