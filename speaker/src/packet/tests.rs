use super::*;
use proptest::prelude::*;

const CLIENT_MAC: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x10);
const OUR_MAC: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x01);

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    arp_frame(
        ArpOperations::Request,
        CLIENT_MAC,
        Ipv4Addr::new(192, 0, 2, 100),
        MacAddr::zero(),
        target,
        MacAddr::broadcast(),
    )
}

/// A Neighbor Solicitation as a host sends it (to the target's solicited-node group, with
/// a valid checksum); `sll` adds the Source Link-Layer option.
fn neighbor_solicit(source: Ipv6Addr, target: Ipv6Addr, sll: Option<MacAddr>) -> Vec<u8> {
    let mut icmp = vec![ICMPV6_NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    if let Some(mac) = sll {
        icmp.extend_from_slice(&[1, 1]);
        icmp.extend_from_slice(&mac_bytes(mac));
    }
    let checksum = Icmpv6Packet::new(&icmp)
        .map(|p| pnet_packet::icmpv6::checksum(&p, &source, &solicited_node_group(target)))
        .expect("icmp");
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    let mut frame = Vec::new();
    frame.extend_from_slice(&mac_bytes(multicast_mac(solicited_node_group(target))));
    frame.extend_from_slice(&mac_bytes(CLIENT_MAC));
    frame.extend_from_slice(&[0x86, 0xdd]);
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[58, 255]);
    frame.extend_from_slice(&source.octets());
    frame.extend_from_slice(&solicited_node_group(target).octets());
    frame.extend_from_slice(&icmp);
    frame
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("ipv6")
}

#[test]
fn arp_request_is_read_and_answered_to_the_asker() {
    let target = Ipv4Addr::new(192, 0, 2, 10);
    let q = parse(&arp_request(target)).expect("an ARP query");
    assert_eq!(
        q,
        Query::Arp {
            sender_mac: CLIENT_MAC,
            sender_ip: Ipv4Addr::new(192, 0, 2, 100),
            target
        }
    );
    let reply = arp_reply(OUR_MAC, target, CLIENT_MAC, Ipv4Addr::new(192, 0, 2, 100));
    let eth = EthernetPacket::new(&reply).expect("eth");
    assert_eq!(eth.get_destination(), CLIENT_MAC);
    assert_eq!(eth.get_source(), OUR_MAC);
    let arp = ArpPacket::new(eth.payload()).expect("arp");
    assert_eq!(arp.get_operation(), ArpOperations::Reply);
    assert_eq!(
        (arp.get_sender_hw_addr(), arp.get_sender_proto_addr()),
        (OUR_MAC, target)
    );
    assert_eq!(arp.get_target_proto_addr(), Ipv4Addr::new(192, 0, 2, 100));
    // Replies (ours or anyone's) are not questions.
    assert_eq!(parse(&reply), None);
}

#[test]
fn gratuitous_arp_is_a_broadcast_request_for_our_own_address() {
    let ip = Ipv4Addr::new(192, 0, 2, 10);
    let frame = gratuitous_arp(OUR_MAC, ip);
    let eth = EthernetPacket::new(&frame).expect("eth");
    assert_eq!(eth.get_destination(), MacAddr::broadcast());
    let arp = ArpPacket::new(eth.payload()).expect("arp");
    assert_eq!(arp.get_sender_proto_addr(), ip);
    assert_eq!(arp.get_target_proto_addr(), ip);
    assert_eq!(arp.get_sender_hw_addr(), OUR_MAC);
}

#[test]
fn neighbor_solicitations_multicast_unicast_and_dad() {
    let target = v6("2001:db8::10");
    let host = v6("2001:db8::100");
    // Address resolution: the answer goes to the Source Link-Layer option's MAC.
    let other = MacAddr(0x02, 0, 0, 0, 0, 0x99);
    let q = parse(&neighbor_solicit(host, target, Some(other))).expect("NS");
    assert_eq!(
        q,
        Query::NeighborSolicit {
            reply_mac: other,
            source_ip: host,
            target
        }
    );
    // Unicast reachability probe without the option: answer to the frame's source.
    let q = parse(&neighbor_solicit(host, target, None)).expect("NS");
    assert!(matches!(q, Query::NeighborSolicit { reply_mac, .. } if reply_mac == CLIENT_MAC));
    // DAD comes from ::.
    let q = parse(&neighbor_solicit(Ipv6Addr::UNSPECIFIED, target, None)).expect("DAD");
    assert!(matches!(q, Query::NeighborSolicit { source_ip, .. } if source_ip.is_unspecified()));
}

#[test]
fn neighbor_advert_is_valid_with_override_and_solicited_flags() {
    let target = v6("2001:db8::10");
    let host = v6("2001:db8::100");
    let frame = neighbor_advert(OUR_MAC, target, Some((CLIENT_MAC, host)));
    assert_eq!(frame.len(), 14 + 40 + 32);
    let eth = EthernetPacket::new(&frame).expect("eth");
    assert_eq!(eth.get_destination(), CLIENT_MAC);
    let icmp = &frame[54..];
    assert_eq!(icmp[0], 136);
    assert_eq!(
        icmp[4],
        NeighborAdvertFlags::Override | NeighborAdvertFlags::Solicited
    );
    assert_eq!(&icmp[8..24], &target.octets());
    assert_eq!(&icmp[24..32], &[2, 1, 0x02, 0, 0, 0, 0, 0x01]);
    assert_eq!(frame[14 + 7], 255, "hop limit");
    let packet = Icmpv6Packet::new(icmp).expect("icmp");
    let expected = pnet_packet::icmpv6::checksum(&packet, &target, &host);
    assert_eq!(u16::from_be_bytes([icmp[2], icmp[3]]), expected);
    assert_ne!(expected, 0);

    // Unsolicited: all nodes, Override only.
    let frame = neighbor_advert(OUR_MAC, target, None);
    assert_eq!(&frame[..6], &[0x33, 0x33, 0, 0, 0, 1]);
    assert_eq!(frame[54 + 4], NeighborAdvertFlags::Override);
    // An answer to DAD also goes to all nodes and is not "solicited".
    let frame = neighbor_advert(OUR_MAC, target, Some((CLIENT_MAC, Ipv6Addr::UNSPECIFIED)));
    assert_eq!(&frame[..6], &[0x33, 0x33, 0, 0, 0, 1]);
    assert_eq!(frame[54 + 4], NeighborAdvertFlags::Override);
}

#[test]
fn malformed_frames_are_ignored() {
    let target = v6("2001:db8::10");
    let good = neighbor_solicit(v6("2001:db8::100"), target, Some(CLIENT_MAC));
    // Every truncation of valid frames: short ones are never questions.
    for frame in [good.clone(), arp_request(Ipv4Addr::new(192, 0, 2, 1))] {
        for len in 0..frame.len() - 8 {
            assert_eq!(parse(&frame[..len]), None, "{len} bytes");
        }
    }
    // Hop limit below 255: forwarded by a router, dropped.
    let mut forwarded = good.clone();
    forwarded[14 + 7] = 254;
    assert_eq!(parse(&forwarded), None);
    // A zero-length option must not loop or be trusted.
    let opt = 14 + 40 + 24;
    let mut zero = good.clone();
    zero[opt + 1] = 0;
    assert_eq!(parse(&zero), None);
    // An option running past the end.
    let mut long = good.clone();
    long[opt + 1] = 200;
    assert_eq!(parse(&long), None);
    // A payload length larger than the frame: truncated, dropped.
    let mut lying = good.clone();
    lying[14 + 4] = 0xff;
    lying[14 + 5] = 0xff;
    assert_eq!(parse(&lying), None);
    // Ethernet padding after the packet is not part of it.
    let mut padded = good.clone();
    padded.extend_from_slice(&[0; 10]);
    assert!(parse(&padded).is_some());
    // Multicast targets are not solicitations anyone answers.
    assert_eq!(
        parse(&neighbor_solicit(v6("2001:db8::100"), v6("ff02::1"), None)),
        None
    );
    // An ARP with the wrong address lengths.
    let mut arp = arp_request(Ipv4Addr::new(192, 0, 2, 1));
    arp[14 + 5] = 16;
    assert_eq!(parse(&arp), None);
}

/// RFC 4861 7.1.1: what a node must silently discard.
#[test]
fn neighbor_solicitations_failing_rfc_4861_validation_are_dropped() {
    let target = v6("2001:db8::10");
    let good = neighbor_solicit(v6("2001:db8::100"), target, Some(CLIENT_MAC));
    assert!(parse(&good).is_some());
    // A bad ICMPv6 checksum, however small the damage: in the checksum, the target, an option.
    for at in [14 + 40 + 2, 14 + 40 + 8, 14 + 40 + 24 + 2] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        assert_eq!(parse(&bad), None, "byte {at} changed");
    }
    // A non-zero ICMP code.
    let mut code = good.clone();
    code[14 + 40 + 1] = 1;
    assert_eq!(parse(&code), None);
    // From the unspecified address (DAD) with a source link-layer address option.
    let dad_with_sll = neighbor_solicit(Ipv6Addr::UNSPECIFIED, target, Some(CLIENT_MAC));
    assert_eq!(parse(&dad_with_sll), None);
    // From the unspecified address to something other than the solicited-node group.
    let mut dad_unicast = neighbor_solicit(Ipv6Addr::UNSPECIFIED, target, None);
    dad_unicast[14 + 24..14 + 40].copy_from_slice(&target.octets());
    assert_eq!(parse(&dad_unicast), None);
    // An option area that is not a whole number of options.
    let mut ragged = good.clone();
    ragged.push(1);
    ragged[14 + 5] += 1;
    assert_eq!(parse(&ragged), None);
}

#[test]
fn solicited_node_group_and_its_mac() {
    let group = solicited_node_group(v6("2001:db8::1:2:abcd:ef01"));
    assert_eq!(group, v6("ff02::1:ffcd:ef01"));
    assert_eq!(
        multicast_mac(group),
        MacAddr(0x33, 0x33, 0xff, 0xcd, 0xef, 0x01)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    /// Random bytes never panic the parser.
    #[test]
    fn random_frames_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse(&frame);
    }

    /// Valid frames with random bytes changed, random bytes appended and a random
    /// truncation never panic the parser.
    #[test]
    fn mutated_frames_never_panic(
        v6_frame in any::<bool>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
        extra in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut frame = if v6_frame {
            neighbor_solicit(v6("2001:db8::100"), v6("2001:db8::10"), Some(CLIENT_MAC))
        } else {
            arp_request(Ipv4Addr::new(192, 0, 2, 1))
        };
        frame.extend_from_slice(&extra);
        for (at, byte) in edits {
            let i = at % frame.len();
            frame[i] = byte;
        }
        frame.truncate(cut % (frame.len() + 1));
        if let Some(Query::NeighborSolicit { source_ip, .. }) = parse(&frame) {
            // Whatever is accepted passes RFC 4861 7.1.1.
            let ip6 = &frame[14..54];
            let dest = Ipv6Addr::from(<[u8; 16]>::try_from(&ip6[24..40]).expect("16 bytes"));
            let len = usize::from(u16::from_be_bytes([ip6[4], ip6[5]]));
            let icmp = &frame[54..54 + len];
            prop_assert_eq!(ip6[7], 255);
            prop_assert!(icmpv6_checksum_ok(source_ip, dest, icmp));
            prop_assert_eq!(icmp[1], 0);
        }
    }
}

#[test]
fn claims_come_from_arp_senders_and_advertised_targets() {
    let vip = Ipv4Addr::new(192, 0, 2, 100);
    // Another host's reply to a probe, and its gratuitous ARP: both say where the VIP is.
    let reply = arp_reply(CLIENT_MAC, vip, OUR_MAC, Ipv4Addr::UNSPECIFIED);
    assert_eq!(
        claim(&reply),
        Some(Claim {
            ip: vip.into(),
            mac: CLIENT_MAC
        })
    );
    assert_eq!(
        claim(&gratuitous_arp(CLIENT_MAC, vip)),
        Some(Claim {
            ip: vip.into(),
            mac: CLIENT_MAC
        })
    );
    // A probe claims nothing; parse() still sees it as a question to answer.
    let probe = arp_probe(CLIENT_MAC, vip);
    assert_eq!(claim(&probe), None);
    assert!(matches!(parse(&probe), Some(Query::Arp { target, .. }) if target == vip));
    // An unsolicited NA (what a takeover sends) names its target and MAC.
    let v6: Ipv6Addr = "2001:db8::100".parse().expect("ip");
    assert_eq!(
        claim(&neighbor_advert(CLIENT_MAC, v6, None)),
        Some(Claim {
            ip: v6.into(),
            mac: CLIENT_MAC
        })
    );
    // A DAD probe is a valid solicitation from :: for the target.
    assert!(matches!(
        parse(&dad_probe(CLIENT_MAC, v6)),
        Some(Query::NeighborSolicit { target, source_ip, .. }) if target == v6 && source_ip.is_unspecified()
    ));
}

#[test]
fn advertisements_failing_rfc4861_checks_claim_nothing() {
    let v6: Ipv6Addr = "2001:db8::100".parse().expect("ip");
    let good = neighbor_advert(CLIENT_MAC, v6, None);
    // Hop limit not 255 (forwarded by a router).
    let mut routed = good.clone();
    routed[ETH_HEADER + 7] = 64;
    assert_eq!(claim(&routed), None);
    // Bad checksum.
    let mut corrupt = good.clone();
    corrupt[ETH_HEADER + IPV6_HEADER + 2] ^= 0xff;
    assert_eq!(claim(&corrupt), None);
    // Solicited flag on a multicast advertisement: the checksum is fixed up so only the
    // flag rule can drop it.
    let mut solicited = good.clone();
    let icmp_start = ETH_HEADER + IPV6_HEADER;
    solicited[icmp_start + 4] |= 0x40;
    solicited[icmp_start + 2..icmp_start + 4].copy_from_slice(&[0, 0]);
    let sum = Icmpv6Packet::new(&solicited[icmp_start..])
        .map(|p| pnet_packet::icmpv6::checksum(&p, &v6, &"ff02::1".parse().expect("ip")))
        .expect("icmp");
    solicited[icmp_start + 2..icmp_start + 4].copy_from_slice(&sum.to_be_bytes());
    assert_eq!(claim(&solicited), None);
    // Truncated.
    assert_eq!(claim(&good[..good.len() - 4]), None);
}

proptest! {
    #[test]
    fn claim_never_panics(frame in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = claim(&frame);
        let _ = eth_source(&frame);
    }
}
