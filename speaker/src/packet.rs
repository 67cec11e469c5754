//! ARP and NDP frames: parsing what arrives from the LAN (untrusted: every read is bounds
//! checked, nothing here can panic on any input) and building what the speaker sends. Pure.
//!
//! Received ICMPv6 options are walked by hand: pnet_packet's `get_options()` can panic on
//! hostile option lengths.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use pnet_base::MacAddr;
use pnet_packet::Packet;
use pnet_packet::arp::{ArpHardwareTypes, ArpOperations, ArpPacket, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::icmpv6::ndp::{MutableNeighborAdvertPacket, NdpOptionTypes, NeighborAdvertFlags};
use pnet_packet::icmpv6::{Icmpv6Packet, Icmpv6Types};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv6::MutableIpv6Packet;

const ETH_HEADER: usize = 14;
const ARP_LEN: usize = 28;
const IPV6_HEADER: usize = 40;
/// Neighbor Advertisement with one Target Link-Layer Address option.
const NA_LEN: usize = 24 + 8;
const NS_MIN_LEN: usize = 24;
const ICMPV6_NEIGHBOR_SOLICIT: u8 = 135;
const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;

/// A question from the LAN the speaker may have to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// "Who has `target`? Tell `sender_ip`."
    Arp {
        sender_mac: MacAddr,
        sender_ip: Ipv4Addr,
        target: Ipv4Addr,
    },
    /// A Neighbor Solicitation for `target`, multicast (address resolution) or unicast
    /// (reachability check). `source_ip` is `::` for duplicate address detection.
    NeighborSolicit {
        reply_mac: MacAddr,
        source_ip: Ipv6Addr,
        target: Ipv6Addr,
    },
}

impl Query {
    pub fn target(&self) -> std::net::IpAddr {
        match self {
            Query::Arp { target, .. } => (*target).into(),
            Query::NeighborSolicit { target, .. } => (*target).into(),
        }
    }
}

/// Reads an ARP request or a Neighbor Solicitation out of an Ethernet frame. Anything else,
/// or anything malformed, is `None`.
pub fn parse(frame: &[u8]) -> Option<Query> {
    let eth = EthernetPacket::new(frame)?;
    match eth.get_ethertype() {
        EtherTypes::Arp => parse_arp(eth.payload()),
        EtherTypes::Ipv6 => parse_ns(eth.get_source(), eth.payload()),
        _ => None,
    }
}

fn parse_arp(payload: &[u8]) -> Option<Query> {
    let arp = ArpPacket::new(payload)?;
    let well_formed = arp.get_hardware_type() == ArpHardwareTypes::Ethernet
        && arp.get_protocol_type() == EtherTypes::Ipv4
        && arp.get_hw_addr_len() == 6
        && arp.get_proto_addr_len() == 4
        && arp.get_operation() == ArpOperations::Request;
    well_formed.then(|| Query::Arp {
        sender_mac: arp.get_sender_hw_addr(),
        sender_ip: arp.get_sender_proto_addr(),
        target: arp.get_target_proto_addr(),
    })
}

/// A Neighbor Solicitation, validated as RFC 4861 7.1.1 says: whatever fails a check is
/// silently dropped.
fn parse_ns(eth_source: MacAddr, payload: &[u8]) -> Option<Query> {
    let (source_ip, dest_ip, icmp) = ndp_message(payload, ICMPV6_NEIGHBOR_SOLICIT)?;
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(icmp.get(8..24)?).ok()?);
    if target.is_multicast() {
        return None;
    }
    // Source Link-Layer Address: where the answer must go.
    let source_link_layer = link_layer_option(icmp.get(NS_MIN_LEN..)?, 1)?;
    // Duplicate address detection (from ::) goes to the target's solicited-node group and
    // carries no source link-layer address.
    if source_ip.is_unspecified()
        && (dest_ip != solicited_node_group(target) || source_link_layer.is_some())
    {
        return None;
    }
    Some(Query::NeighborSolicit {
        reply_mac: source_link_layer.unwrap_or(eth_source),
        source_ip,
        target,
    })
}

/// The ICMPv6 message of an NDP packet of type `kind` with its source and destination, checked
/// as RFC 4861 7.1 says of every NDP message: IPv6 with ICMPv6 right after the header (no
/// extension headers), hop limit 255 (anything else was forwarded by a router), not shorter
/// than the IP length says (Ethernet padding after it is fine), code 0, a right checksum.
fn ndp_message(payload: &[u8], kind: u8) -> Option<(Ipv6Addr, Ipv6Addr, &[u8])> {
    let header = payload.get(..IPV6_HEADER)?;
    if header[0] >> 4 != 6 || header[6] != 58 || header[7] != 255 {
        return None;
    }
    let declared = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let icmp = payload.get(IPV6_HEADER..IPV6_HEADER + declared)?;
    let source_ip = Ipv6Addr::from(<[u8; 16]>::try_from(header.get(8..24)?).ok()?);
    let dest_ip = Ipv6Addr::from(<[u8; 16]>::try_from(header.get(24..40)?).ok()?);
    if icmp.len() < NS_MIN_LEN || icmp[0] != kind || icmp[1] != 0 {
        return None;
    }
    icmpv6_checksum_ok(source_ip, dest_ip, icmp).then_some((source_ip, dest_ip, icmp))
}

/// The link-layer address in the option of type `kind` (1 source, 2 target) among an NDP
/// message's options: `None` when the options are malformed (a zero length, which would
/// loop forever, or one running past the end), `Some(None)` when there is no such option.
fn link_layer_option(mut options: &[u8], kind: u8) -> Option<Option<MacAddr>> {
    let mut found = None;
    while !options.is_empty() {
        let (this, units) = (options.first()?, usize::from(*options.get(1)?));
        if units == 0 {
            return None;
        }
        let option = options.get(..units * 8)?;
        if *this == kind {
            let m = option.get(2..8)?;
            found = Some(MacAddr::new(m[0], m[1], m[2], m[3], m[4], m[5]));
        }
        options = options.get(units * 8..)?;
    }
    Some(found)
}

/// Someone on the LAN saying `ip` is at `mac`: the sender of an ARP packet (a request,
/// gratuitous or not, or a reply), or the target of a Neighbor Advertisement carrying a
/// Target Link-Layer Address. How another host answering for an IP this node announces shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub ip: IpAddr,
    pub mac: MacAddr,
}

/// Reads a `Claim` out of an Ethernet frame; anything else or malformed is `None`.
pub fn claim(frame: &[u8]) -> Option<Claim> {
    let eth = EthernetPacket::new(frame)?;
    match eth.get_ethertype() {
        EtherTypes::Arp => claim_arp(eth.payload()),
        EtherTypes::Ipv6 => claim_na(eth.payload()),
        _ => None,
    }
}

fn claim_arp(payload: &[u8]) -> Option<Claim> {
    let arp = ArpPacket::new(payload)?;
    let op = arp.get_operation();
    let well_formed = arp.get_hardware_type() == ArpHardwareTypes::Ethernet
        && arp.get_protocol_type() == EtherTypes::Ipv4
        && arp.get_hw_addr_len() == 6
        && arp.get_proto_addr_len() == 4
        && (op == ArpOperations::Request || op == ArpOperations::Reply);
    let ip = arp.get_sender_proto_addr();
    // A probe (RFC 5227, from 0.0.0.0) claims nothing.
    (well_formed && !ip.is_unspecified()).then(|| Claim {
        ip: ip.into(),
        mac: arp.get_sender_hw_addr(),
    })
}

/// A Neighbor Advertisement's target and link-layer address, validated as RFC 4861 7.1.2
/// says (hop limit 255, code 0, checksum, a unicast target, no Solicited flag when sent to a
/// multicast group).
fn claim_na(payload: &[u8]) -> Option<Claim> {
    let (_, dest_ip, icmp) = ndp_message(payload, ICMPV6_NEIGHBOR_ADVERT)?;
    let solicited = icmp[4] & 0x40 != 0;
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(icmp.get(8..24)?).ok()?);
    if target.is_multicast() || (dest_ip.is_multicast() && solicited) {
        return None;
    }
    Some(Claim {
        ip: target.into(),
        mac: link_layer_option(icmp.get(NS_MIN_LEN..)?, 2)??,
    })
}

/// An ARP probe for `ip` (RFC 5227: sender address 0.0.0.0, broadcast). Any host holding the
/// address answers it, so another host answering for an IP this node announces shows up.
pub fn arp_probe(our_mac: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    arp_frame(
        ArpOperations::Request,
        our_mac,
        Ipv4Addr::UNSPECIFIED,
        MacAddr::zero(),
        ip,
        MacAddr::broadcast(),
    )
}

/// A duplicate address detection probe for `ip` (RFC 4862 5.4.2: a Neighbor Solicitation from
/// `::` to the solicited-node group, no options); a host holding the address answers to all
/// nodes.
pub fn dad_probe(our_mac: MacAddr, ip: Ipv6Addr) -> Vec<u8> {
    let group = solicited_node_group(ip);
    let mut icmp = vec![ICMPV6_NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&ip.octets());
    let checksum = Icmpv6Packet::new(&icmp)
        .map(|p| pnet_packet::icmpv6::checksum(&p, &Ipv6Addr::UNSPECIFIED, &group))
        .unwrap_or(0);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    let mut buf = vec![0u8; ETH_HEADER + IPV6_HEADER];
    if let Some(mut eth) = MutableEthernetPacket::new(&mut buf) {
        eth.set_destination(multicast_mac(group));
        eth.set_source(our_mac);
        eth.set_ethertype(EtherTypes::Ipv6);
    }
    if let Some(mut ip6) = MutableIpv6Packet::new(&mut buf[ETH_HEADER..]) {
        ip6.set_version(6);
        ip6.set_payload_length(icmp.len() as u16);
        ip6.set_next_header(IpNextHeaderProtocols::Icmpv6);
        ip6.set_hop_limit(255);
        ip6.set_source(Ipv6Addr::UNSPECIFIED);
        ip6.set_destination(group);
    }
    buf.extend_from_slice(&icmp);
    buf
}

/// The Ethernet source of a frame (to skip the speaker's own frames, which a packet socket
/// also receives).
pub fn eth_source(frame: &[u8]) -> Option<MacAddr> {
    EthernetPacket::new(frame).map(|e| e.get_source())
}

/// Whether an ICMPv6 message's checksum (over the IPv6 pseudo-header and the message, RFC
/// 8200 8.1) is right: the one's-complement sum over everything, checksum included, is
/// all ones.
fn icmpv6_checksum_ok(source: Ipv6Addr, dest: Ipv6Addr, icmp: &[u8]) -> bool {
    let Ok(length) = u32::try_from(icmp.len()) else {
        return false;
    };
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            sum += hi | pair.get(1).copied().map_or(0, u64::from);
        }
    };
    add(&source.octets());
    add(&dest.octets());
    add(&length.to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(icmp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// The answer to an ARP request for `ip`, which this node owns.
pub fn arp_reply(our_mac: MacAddr, ip: Ipv4Addr, to_mac: MacAddr, to_ip: Ipv4Addr) -> Vec<u8> {
    arp_frame(ArpOperations::Reply, our_mac, ip, to_mac, to_ip, to_mac)
}

/// A gratuitous ARP (a request for our own address, broadcast): switches learn the port,
/// neighbours update their caches. Requests are understood by more stacks than replies.
pub fn gratuitous_arp(our_mac: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    arp_frame(
        ArpOperations::Request,
        our_mac,
        ip,
        MacAddr::zero(),
        ip,
        MacAddr::broadcast(),
    )
}

fn arp_frame(
    op: pnet_packet::arp::ArpOperation,
    our_mac: MacAddr,
    our_ip: Ipv4Addr,
    target_mac: MacAddr,
    target_ip: Ipv4Addr,
    eth_dest: MacAddr,
) -> Vec<u8> {
    let mut buf = vec![0u8; ETH_HEADER + ARP_LEN];
    if let Some(mut eth) = MutableEthernetPacket::new(&mut buf) {
        eth.set_destination(eth_dest);
        eth.set_source(our_mac);
        eth.set_ethertype(EtherTypes::Arp);
    }
    if let Some(mut arp) = MutableArpPacket::new(&mut buf[ETH_HEADER..]) {
        arp.set_hardware_type(ArpHardwareTypes::Ethernet);
        arp.set_protocol_type(EtherTypes::Ipv4);
        arp.set_hw_addr_len(6);
        arp.set_proto_addr_len(4);
        arp.set_operation(op);
        arp.set_sender_hw_addr(our_mac);
        arp.set_sender_proto_addr(our_ip);
        arp.set_target_hw_addr(target_mac);
        arp.set_target_proto_addr(target_ip);
    }
    buf
}

/// A Neighbor Advertisement for `target` (ours) with the Override flag. `to` is `Some` for an
/// answer to a solicitation (Solicited flag, unicast), `None` for an unsolicited one to all
/// nodes.
pub fn neighbor_advert(
    our_mac: MacAddr,
    target: Ipv6Addr,
    to: Option<(MacAddr, Ipv6Addr)>,
) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let (dst_mac, dst_ip, flags) = match to {
        // A DAD probe (from ::) is answered to all nodes, not solicited (RFC 4861 7.2.4).
        Some((_, ip)) if ip.is_unspecified() => (
            MacAddr::new(0x33, 0x33, 0, 0, 0, 1),
            all_nodes,
            NeighborAdvertFlags::Override,
        ),
        Some((mac, ip)) => (
            mac,
            ip,
            NeighborAdvertFlags::Override | NeighborAdvertFlags::Solicited,
        ),
        None => (
            MacAddr::new(0x33, 0x33, 0, 0, 0, 1),
            all_nodes,
            NeighborAdvertFlags::Override,
        ),
    };
    let mut buf = vec![0u8; ETH_HEADER + IPV6_HEADER + NA_LEN];
    if let Some(mut eth) = MutableEthernetPacket::new(&mut buf) {
        eth.set_destination(dst_mac);
        eth.set_source(our_mac);
        eth.set_ethertype(EtherTypes::Ipv6);
    }
    if let Some(mut ip6) = MutableIpv6Packet::new(&mut buf[ETH_HEADER..]) {
        ip6.set_version(6);
        ip6.set_payload_length(NA_LEN as u16);
        ip6.set_next_header(IpNextHeaderProtocols::Icmpv6);
        ip6.set_hop_limit(255);
        ip6.set_source(target);
        ip6.set_destination(dst_ip);
    }
    let icmp_start = ETH_HEADER + IPV6_HEADER;
    if let Some(mut na) = MutableNeighborAdvertPacket::new(&mut buf[icmp_start..]) {
        na.set_icmpv6_type(Icmpv6Types::NeighborAdvert);
        na.set_flags(flags);
        na.set_target_addr(target);
    }
    // Target Link-Layer Address option, written by hand (type 2, one 8-byte unit).
    let option = &mut buf[icmp_start + 24..];
    option[0] = NdpOptionTypes::TargetLLAddr.0;
    option[1] = 1;
    option[2..8].copy_from_slice(&mac_bytes(our_mac));
    let checksum = Icmpv6Packet::new(&buf[icmp_start..])
        .map(|p| pnet_packet::icmpv6::checksum(&p, &target, &dst_ip))
        .unwrap_or(0);
    buf[icmp_start + 2..icmp_start + 4].copy_from_slice(&checksum.to_be_bytes());
    buf
}

pub fn mac_bytes(mac: MacAddr) -> [u8; 6] {
    [mac.0, mac.1, mac.2, mac.3, mac.4, mac.5]
}

/// The solicited-node multicast group of `ip` (ff02::1:ffXX:XXXX), which the speaker joins so
/// that address-resolution solicitations for it reach the interface.
pub fn solicited_node_group(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet multicast address of an IPv6 multicast group (33:33 + last 32 bits).
pub fn multicast_mac(group: Ipv6Addr) -> MacAddr {
    let o = group.octets();
    MacAddr::new(0x33, 0x33, o[12], o[13], o[14], o[15])
}

#[cfg(test)]
mod tests;
