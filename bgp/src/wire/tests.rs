use proptest::prelude::*;

use super::*;

fn net(s: &str) -> IpNetwork {
    s.parse().expect("prefix")
}

fn v4net(s: &str) -> Ipv4Network {
    s.parse().expect("prefix")
}

fn wire(message: &Message) -> Vec<u8> {
    encode(message)
}

fn open() -> Open {
    Open {
        asn: 4_200_000_001,
        hold_time: 9,
        router_id: Ipv4Addr::new(192, 0, 2, 1),
        capabilities: vec![
            Capability::Multiprotocol(Family::Ipv4Unicast),
            Capability::Multiprotocol(Family::Ipv6Unicast),
            Capability::RouteRefresh,
            Capability::FourOctetAs(4_200_000_001),
            Capability::GracefulRestart {
                restarting: true,
                restart_time: 120,
                families: vec![(Family::Ipv4Unicast, true), (Family::Ipv6Unicast, false)],
            },
        ],
    }
}

fn announcement() -> Update {
    Update {
        attributes: vec![
            Attribute::Origin(Origin::Igp),
            Attribute::AsPath(vec![4_200_000_001]),
            Attribute::NextHop(Ipv4Addr::new(192, 0, 2, 1)),
            Attribute::LocalPref(200),
            Attribute::Communities(vec![(64500 << 16) | 100]),
            Attribute::LargeCommunities(vec![[4_200_000_001, 1, 2]]),
            Attribute::MpReach {
                family: Family::Ipv6Unicast,
                next_hops: vec!["2001:db8::1".parse().unwrap()],
                announced: vec![net("2001:db8:1::10/128")],
            },
        ],
        announced: vec![v4net("198.51.100.10/32"), v4net("198.51.100.0/24")],
        ..Update::default()
    }
}

#[test]
fn what_herald_sends_reads_back_the_same() {
    for message in [
        Message::Open(open()),
        Message::Update(announcement()),
        Message::Update(Update {
            withdrawn: vec![v4net("198.51.100.10/32")],
            attributes: vec![Attribute::MpUnreach {
                family: Family::Ipv6Unicast,
                withdrawn: vec![net("2001:db8:1::10/128")],
            }],
            ..Update::default()
        }),
        Message::Update(Update::end_of_rib(Family::Ipv4Unicast)),
        Message::Update(Update::end_of_rib(Family::Ipv6Unicast)),
        Message::Notification(Notification::new(error::CEASE, 2, b"draining")),
        Message::Keepalive,
        Message::RouteRefresh(Family::Ipv6Unicast),
    ] {
        let bytes = wire(&message);
        assert_eq!(message_length(&bytes), Ok(Some(bytes.len())));
        assert_eq!(decode(&bytes, true), Ok(message));
    }
}

#[test]
fn a_keepalive_is_the_nineteen_byte_header() {
    let bytes = wire(&Message::Keepalive);
    assert_eq!(bytes.len(), HEADER_LEN);
    assert_eq!(&bytes[16..], &[0, 19, 4]);
}

#[test]
fn end_of_rib_is_recognised_per_family() {
    for family in Family::ALL {
        assert_eq!(Update::end_of_rib(family).is_end_of_rib(), Some(family));
    }
    assert_eq!(announcement().is_end_of_rib(), None);
}

#[test]
fn an_as_number_over_16_bits_goes_as_as_trans_with_the_capability() {
    let bytes = wire(&Message::Open(open()));
    assert_eq!(u16::from_be_bytes([bytes[20], bytes[21]]), AS_TRANS);
    let Ok(Message::Open(read)) = decode(&bytes, true) else {
        panic!("an OPEN");
    };
    assert_eq!(read.asn, 4_200_000_001);
}

fn header_error(bytes: &[u8]) -> Notification {
    message_length(bytes)
        .and_then(|_| decode(bytes, true))
        .expect_err("refused")
}

#[test]
fn a_broken_header_is_answered_as_rfc_4271_says() {
    let mut bytes = wire(&Message::Keepalive);
    bytes[3] = 0;
    assert_eq!(
        (header_error(&bytes).code, header_error(&bytes).subcode),
        (error::HEADER, error::HEADER_NOT_SYNCHRONIZED)
    );

    let mut short = wire(&Message::Keepalive);
    short[17] = 18;
    let e = header_error(&short);
    assert_eq!(
        (e.code, e.subcode, e.data),
        (error::HEADER, error::HEADER_BAD_LENGTH, vec![0, 18])
    );

    let mut long = wire(&Message::Keepalive);
    long[16..18].copy_from_slice(&4097u16.to_be_bytes());
    assert_eq!(header_error(&long).subcode, error::HEADER_BAD_LENGTH);

    let mut kind = wire(&Message::Keepalive);
    kind[18] = 9;
    let e = header_error(&kind);
    assert_eq!(
        (e.code, e.subcode, e.data),
        (error::HEADER, error::HEADER_BAD_TYPE, vec![9])
    );

    // A KEEPALIVE with a body is a bad length, not a keepalive.
    let mut padded = wire(&Message::Keepalive);
    padded.push(0);
    padded[17] = 20;
    assert_eq!(header_error(&padded).subcode, error::HEADER_BAD_LENGTH);
}

#[test]
fn an_open_herald_cannot_accept_names_the_reason() {
    let mut version = wire(&Message::Open(open()));
    version[19] = 3;
    let e = header_error(&version);
    assert_eq!(
        (e.code, e.subcode, e.data),
        (error::OPEN, error::OPEN_UNSUPPORTED_VERSION, vec![0, 4])
    );

    for hold in [1u16, 2] {
        let mut bytes = wire(&Message::Open(open()));
        bytes[22..24].copy_from_slice(&hold.to_be_bytes());
        assert_eq!(
            header_error(&bytes).subcode,
            error::OPEN_UNACCEPTABLE_HOLD_TIME
        );
    }

    let mut id = wire(&Message::Open(open()));
    id[24..28].copy_from_slice(&[0, 0, 0, 0]);
    assert_eq!(header_error(&id).subcode, error::OPEN_BAD_IDENTIFIER);

    // A parameter of another type than capabilities.
    let mut param = wire(&Message::Open(open()));
    param[29] = 1;
    assert_eq!(
        header_error(&param).subcode,
        error::OPEN_UNSUPPORTED_PARAMETER
    );
}

fn update_bytes(withdrawn: &[u8], attributes: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(withdrawn.len() as u16).to_be_bytes());
    body.extend_from_slice(withdrawn);
    body.extend_from_slice(&(attributes.len() as u16).to_be_bytes());
    body.extend_from_slice(attributes);
    body.extend_from_slice(nlri);
    let mut out = MARKER.to_vec();
    out.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_be_bytes());
    out.push(2);
    out.extend_from_slice(&body);
    out
}

const ORIGIN_IGP: [u8; 4] = [0x40, 1, 1, 0];
const EMPTY_PATH: [u8; 3] = [0x40, 2, 0];
const NEXT_HOP: [u8; 7] = [0x40, 3, 4, 192, 0, 2, 1];

#[test]
fn an_update_whose_prefixes_cannot_be_found_resets_the_session() {
    // The withdrawn-routes length runs past the message.
    let mut bytes = update_bytes(&[], &[], &[]);
    bytes[19..21].copy_from_slice(&100u16.to_be_bytes());
    let e = header_error(&bytes);
    assert_eq!(
        (e.code, e.subcode),
        (error::UPDATE, error::UPDATE_MALFORMED_ATTRIBUTE_LIST)
    );

    // An attribute's length runs past the attribute section.
    let e = header_error(&update_bytes(&[], &[0x40, 1, 9, 0], &[]));
    assert_eq!(e.subcode, error::UPDATE_MALFORMED_ATTRIBUTE_LIST);

    // A prefix longer than its family.
    let e = header_error(&update_bytes(&[], &[], &[33, 1, 2, 3, 4, 5]));
    assert_eq!(e.subcode, error::UPDATE_INVALID_NETWORK_FIELD);

    // Two MP_REACH_NLRI.
    let mp = [0x80, 14, 9, 0, 1, 1, 4, 192, 0, 2, 1, 0];
    let attributes = [&mp[..], &mp[..]].concat();
    assert_eq!(
        header_error(&update_bytes(&[], &attributes, &[])).subcode,
        error::UPDATE_MALFORMED_ATTRIBUTE_LIST
    );
}

#[test]
fn an_update_with_a_wrong_attribute_is_treated_as_withdraw_and_the_session_stays() {
    let nlri = [32, 198, 51, 100, 10];
    let decoded = |attributes: &[u8]| match decode(&update_bytes(&[], attributes, &nlri), true) {
        Ok(Message::Update(u)) => u,
        other => panic!("an UPDATE: {other:?}"),
    };
    let good = [&ORIGIN_IGP[..], &EMPTY_PATH, &NEXT_HOP].concat();
    assert!(!decoded(&good).treat_as_withdraw);
    assert_eq!(decoded(&good).announced, [v4net("198.51.100.10/32")]);
    // ORIGIN 7.
    let bad_origin = [&[0x40, 1, 1, 7][..], &EMPTY_PATH, &NEXT_HOP].concat();
    assert!(decoded(&bad_origin).treat_as_withdraw);
    // NEXT_HOP missing.
    let no_next_hop = [&ORIGIN_IGP[..], &EMPTY_PATH].concat();
    assert!(decoded(&no_next_hop).treat_as_withdraw);
    // An AS_PATH segment that runs past the attribute.
    let bad_path = [&ORIGIN_IGP[..], &[0x40, 2, 4, 2, 5, 0, 1], &NEXT_HOP].concat();
    assert!(decoded(&bad_path).treat_as_withdraw);
    // A repeated ORIGIN: the first counts.
    let twice = [&ORIGIN_IGP[..], &[0x40, 1, 1, 2], &EMPTY_PATH, &NEXT_HOP].concat();
    let u = decoded(&twice);
    assert!(!u.treat_as_withdraw && u.attributes[0] == Attribute::Origin(Origin::Igp));
    // An unknown optional attribute is passed over.
    let unknown = [&good[..], &[0xc0, 99, 2, 1, 2]].concat();
    assert!(!decoded(&unknown).treat_as_withdraw);
}

#[test]
fn trailing_bits_of_a_prefix_are_ignored() {
    let u = match decode(&update_bytes(&[], &[], &[24, 198, 51, 100]), true) {
        Ok(Message::Update(u)) => u,
        other => panic!("{other:?}"),
    };
    assert_eq!(u.announced, [v4net("198.51.100.0/24")]);
    let u = match decode(&update_bytes(&[], &[], &[23, 198, 51, 101]), true) {
        Ok(Message::Update(u)) => u,
        other => panic!("{other:?}"),
    };
    assert_eq!(u.announced, [v4net("198.51.100.0/23")]);
}

fn family() -> impl Strategy<Value = Family> {
    prop_oneof![Just(Family::Ipv4Unicast), Just(Family::Ipv6Unicast)]
}

fn prefix(family: Family) -> BoxedStrategy<IpNetwork> {
    match family {
        Family::Ipv4Unicast => (any::<[u8; 4]>(), 0u8..=32)
            .prop_map(|(a, len)| {
                let n = Ipv4Network::new(Ipv4Addr::from(a), len).expect("len");
                IpNetwork::V4(Ipv4Network::new(n.network(), len).expect("len"))
            })
            .boxed(),
        Family::Ipv6Unicast => (any::<[u8; 16]>(), 0u8..=128)
            .prop_map(|(a, len)| {
                let n = Ipv6Network::new(Ipv6Addr::from(a), len).expect("len");
                IpNetwork::V6(Ipv6Network::new(n.network(), len).expect("len"))
            })
            .boxed(),
    }
}

fn v4prefixes() -> impl Strategy<Value = Vec<Ipv4Network>> {
    prop::collection::vec(prefix(Family::Ipv4Unicast), 0..20).prop_map(v4)
}

fn update() -> impl Strategy<Value = Update> {
    (
        v4prefixes(),
        v4prefixes(),
        any::<u32>(),
        prop::collection::vec(any::<u32>(), 0..5),
        prop::collection::vec(any::<[u32; 3]>(), 0..3),
        family().prop_flat_map(|f| (Just(f), prop::collection::vec(prefix(f), 0..10))),
        prop::collection::vec(any::<u32>(), 0..300),
    )
        .prop_map(
            |(withdrawn, announced, pref, communities, large, (f, mp), path)| {
                let mut attributes = vec![
                    Attribute::Origin(Origin::Incomplete),
                    Attribute::AsPath(path),
                    Attribute::NextHop(Ipv4Addr::new(192, 0, 2, 7)),
                    Attribute::LocalPref(pref),
                ];
                if !communities.is_empty() {
                    attributes.push(Attribute::Communities(communities));
                }
                if !large.is_empty() {
                    attributes.push(Attribute::LargeCommunities(large));
                }
                let next_hops = match f {
                    Family::Ipv4Unicast => vec!["192.0.2.7".parse().unwrap()],
                    Family::Ipv6Unicast => vec!["2001:db8::7".parse().unwrap()],
                };
                attributes.push(Attribute::MpReach {
                    family: f,
                    next_hops,
                    announced: mp,
                });
                Update {
                    withdrawn,
                    attributes,
                    announced,
                    treat_as_withdraw: false,
                }
            },
        )
}

proptest! {
    #[test]
    fn any_update_herald_can_send_reads_back_the_same(update in update()) {
        let message = Message::Update(update);
        let bytes = wire(&message);
        prop_assume!(bytes.len() <= MAX_MESSAGE);
        prop_assert_eq!(decode(&bytes, true), Ok(message));
    }

    /// Whatever a peer sends, decoding ends in a message or a NOTIFICATION, never a panic.
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = message_length(&bytes);
        let _ = decode(&bytes, true);
        let _ = decode(&bytes, false);
    }

    /// The same for valid messages with bytes changed, cut or added: every path of the
    /// decoder is reached with nearly right input.
    #[test]
    fn mutated_messages_never_panic(
        update in update(),
        which in 0usize..4,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let message = match which {
            0 => Message::Open(open()),
            1 => Message::Update(update),
            2 => Message::Notification(Notification::new(6, 2, b"bye")),
            _ => Message::RouteRefresh(Family::Ipv4Unicast),
        };
        let mut bytes = wire(&message);
        for (at, value) in edits {
            // Keep the marker and the type so the body's decoder is what gets exercised.
            let i = at.index(bytes.len());
            if i >= 16 && i != 18 {
                bytes[i] = value;
            }
        }
        let _ = decode(&bytes, true);
        let _ = decode(&bytes, false);
        bytes.truncate(cut.index(bytes.len() + 1).max(HEADER_LEN));
        let length = bytes.len() as u16;
        bytes[16..18].copy_from_slice(&length.to_be_bytes());
        let _ = decode(&bytes, true);
    }
}
