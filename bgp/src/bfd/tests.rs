use proptest::prelude::*;

use super::*;

fn fast() -> Config {
    Config {
        transmit_interval: Duration::from_millis(100),
        receive_interval: Duration::from_millis(100),
        detect_mult: 3,
        passive: false,
    }
}

/// Two sessions handing each other their packets until neither has news: what a router and
/// this node do on a working link.
fn handshake(a: &mut Session, b: &mut Session, now: Instant) -> (Vec<Change>, Vec<Change>) {
    let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
    let mut to_b = vec![a.packet()];
    let mut to_a = vec![b.packet()];
    for _ in 0..10 {
        let mut next_b = Vec::new();
        let mut next_a = Vec::new();
        for p in to_b.drain(..) {
            let out = b.receive(&decode(&encode(&p)).expect("valid"), now);
            seen_b.extend(out.change);
            next_a.extend(out.send);
        }
        for p in to_a.drain(..) {
            let out = a.receive(&decode(&encode(&p)).expect("valid"), now);
            seen_a.extend(out.change);
            next_b.extend(out.send);
        }
        if next_a.is_empty() && next_b.is_empty() {
            break;
        }
        to_a = next_a;
        to_b = next_b;
    }
    (seen_a, seen_b)
}

#[test]
fn two_sides_come_up_with_the_three_way_handshake_then_agree_the_fast_rate() {
    let now = Instant::now();
    let (mut a, mut b) = (Session::new(fast(), 1), Session::new(Config::default(), 2));
    // Down: one packet a second at most, whatever the configuration says.
    assert_eq!(a.transmit_interval(), Some(Duration::from_secs(1)));
    let (seen_a, seen_b) = handshake(&mut a, &mut b, now);
    assert_eq!((a.state(), b.state()), (State::Up, State::Up));
    assert_eq!((seen_a, seen_b), (vec![Change::Up], vec![Change::Up]));
    // Up: the faster side sends at the slower side's receive rate; the Poll Sequence that
    // announced the new rate was answered with a Final.
    assert_eq!(a.transmit_interval(), Some(Duration::from_millis(300)));
    assert_eq!(b.transmit_interval(), Some(Duration::from_millis(300)));
    assert!(!a.packet().poll && !b.packet().poll);
    assert_eq!(a.packet().desired_min_tx_us, 100_000);
    // Detection: the peer's multiplier times the slower of our receive rate and its send
    // rate.
    assert_eq!(
        a.detection_deadline(),
        Some(now + Duration::from_millis(900))
    );
}

#[test]
fn a_poll_is_answered_with_a_final_at_once() {
    let now = Instant::now();
    let (mut a, mut b) = (Session::new(fast(), 1), Session::new(fast(), 2));
    handshake(&mut a, &mut b, now);
    let mut poll = b.packet();
    poll.poll = true;
    let out = a.receive(&poll, now);
    let answer = out.send.expect("an answer");
    assert!(answer.final_ && !answer.poll);
    assert_eq!(answer.your_discriminator, 2);
    assert_eq!(out.change, None);
}

#[test]
fn silence_for_the_detection_time_takes_the_session_down_and_forgets_the_peer() {
    let now = Instant::now();
    let (mut a, mut b) = (Session::new(fast(), 1), Session::new(fast(), 2));
    handshake(&mut a, &mut b, now);
    let deadline = a.detection_deadline().expect("a deadline while Up");
    assert_eq!(deadline, now + Duration::from_millis(300));
    assert_eq!(
        a.expire(deadline - Duration::from_millis(1)),
        Output::default()
    );
    let out = a.expire(deadline);
    assert_eq!(out.change, Some(Change::Down(Diag::DetectionTimeExpired)));
    assert_eq!(a.state(), State::Down);
    let told = out.send.expect("the peer is told");
    assert_eq!(
        (told.state, told.diag, told.your_discriminator),
        (State::Down, Diag::DetectionTimeExpired, 0)
    );
    // Back to the slow rate, and no detection while Down.
    assert_eq!(a.transmit_interval(), Some(Duration::from_secs(1)));
    assert_eq!(a.detection_deadline(), None);
    // The peer comes back: up again.
    let mut b = Session::new(fast(), 3);
    let (seen_a, _) = handshake(&mut a, &mut b, deadline);
    assert_eq!(seen_a, [Change::Up]);
}

#[test]
fn a_peer_saying_down_or_admin_down_takes_the_session_down() {
    let now = Instant::now();
    for (their, why) in [
        (State::Down, Diag::NeighborSignaledDown),
        (State::AdminDown, Diag::NeighborSignaledDown),
    ] {
        let (mut a, mut b) = (Session::new(fast(), 1), Session::new(fast(), 2));
        handshake(&mut a, &mut b, now);
        let mut p = b.packet();
        p.state = their;
        let out = a.receive(&p, now);
        assert_eq!(out.change, Some(Change::Down(why)), "{their:?}");
        assert_eq!(a.diag(), why);
    }
}

#[test]
fn a_packet_for_another_session_is_ignored() {
    let now = Instant::now();
    let (mut a, mut b) = (Session::new(fast(), 1), Session::new(fast(), 2));
    handshake(&mut a, &mut b, now);
    let mut p = b.packet();
    p.state = State::Down;
    p.your_discriminator = 99;
    assert_eq!(a.receive(&p, now), Output::default());
    assert_eq!(a.state(), State::Up);
}

#[test]
fn sending_stops_when_the_peer_asks_and_a_passive_side_waits_to_be_spoken_to() {
    let now = Instant::now();
    let mut a = Session::new(fast(), 1);
    let mut p = Session::new(fast(), 2).packet();
    p.required_min_rx_us = 0;
    a.receive(&p, now);
    assert_eq!(a.transmit_interval(), None, "the peer wants no packets");
    assert_eq!(a.transmit(0.5), None);

    let passive = Session::new(
        Config {
            passive: true,
            ..fast()
        },
        1,
    );
    assert_eq!(passive.transmit_interval(), None);
    let mut passive = passive;
    passive.receive(&Session::new(fast(), 2).packet(), now);
    assert!(passive.transmit_interval().is_some());
}

#[test]
fn periodic_packets_are_jittered_within_the_rfcs_bounds() {
    let now = Instant::now();
    for mult in [1u8, 3] {
        let config = Config {
            detect_mult: mult,
            ..fast()
        };
        let (mut a, mut b) = (Session::new(config, 1), Session::new(config, 2));
        handshake(&mut a, &mut b, now);
        let (least, most) = if mult == 1 { (0.75, 0.90) } else { (0.75, 1.0) };
        for jitter in [0.0, 0.3, 0.99, 1.0] {
            let (_, next) = a.transmit(jitter).expect("sending");
            let share = next.as_secs_f64() / 0.1;
            assert!(
                (least - 1e-9..=most + 1e-9).contains(&share),
                "mult {mult}, jitter {jitter}: {share}"
            );
        }
    }
}

#[test]
fn the_rfcs_drop_rules() {
    let good = Session::new(fast(), 7).packet();
    let bytes = encode(&good);
    assert_eq!(decode(&bytes), Ok(good));
    let with = |f: &dyn Fn(&mut [u8; PACKET_LEN])| {
        let mut b = bytes;
        f(&mut b);
        decode(&b)
    };
    assert_eq!(decode(&bytes[..23]), Err(Discard::Short(23)));
    assert_eq!(with(&|b| b[0] = (2 << 5) | 1), Err(Discard::Version(2)));
    assert!(matches!(with(&|b| b[3] = 23), Err(Discard::Length { .. })));
    assert!(matches!(with(&|b| b[3] = 30), Err(Discard::Length { .. })));
    assert!(matches!(
        with(&|b| b[1] |= 0x04),
        Err(Discard::Length { .. })
    ));
    let mut long = bytes.to_vec();
    long.extend([1, 2, 0, 0, 0, 0]);
    long[1] |= 0x04;
    long[3] = 30;
    assert_eq!(decode(&long), Err(Discard::Authenticated));
    assert_eq!(with(&|b| b[2] = 0), Err(Discard::NoMultiplier));
    assert_eq!(with(&|b| b[1] |= 0x01), Err(Discard::Multipoint));
    assert_eq!(with(&|b| b[4..8].fill(0)), Err(Discard::NoDiscriminator));
    assert_eq!(
        with(&|b| b[1] = 3 << 6),
        Err(Discard::Unaddressed(State::Up)),
        "Up without your discriminator"
    );
    // Bytes past the length field (padding) are not the packet's.
    let mut padded = bytes.to_vec();
    padded.extend([0xff; 8]);
    assert_eq!(decode(&padded), Ok(good));
}

fn packet() -> impl Strategy<Value = Packet> {
    (
        (0u8..32, 0u8..4, any::<bool>(), any::<bool>(), any::<bool>()),
        (1u8..=255, 1u32.., any::<u32>(), any::<u32>(), any::<u32>()),
    )
        .prop_map(
            |((diag, state, poll, final_, demand), (mult, my, your, tx, rx))| {
                let state = State::of(state);
                Packet {
                    diag: Diag::of(diag),
                    state,
                    poll,
                    final_,
                    demand,
                    detect_mult: mult,
                    my_discriminator: my,
                    your_discriminator: if matches!(state, State::Down | State::AdminDown) {
                        your
                    } else {
                        your.max(1)
                    },
                    desired_min_tx_us: tx,
                    required_min_rx_us: rx,
                }
            },
        )
}

proptest! {
    #[test]
    fn every_packet_reads_back_as_written(p in packet()) {
        prop_assert_eq!(decode(&encode(&p)), Ok(p));
    }

    /// Whatever arrives from the LAN: an error or a packet, never a panic; and a session fed
    /// any valid packets at any times keeps its invariants.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn a_session_survives_any_sequence_of_packets_and_silences(
        steps in prop::collection::vec((packet(), 0u64..2_000, any::<bool>()), 0..40)
    ) {
        let mut s = Session::new(fast(), 1);
        let mut now = Instant::now();
        for (mut p, after_ms, addressed) in steps {
            if addressed { p.your_discriminator = 1; }
            now += Duration::from_millis(after_ms);
            let _ = s.expire(now);
            let out = s.receive(&p, now);
            if let Some(sent) = out.send {
                prop_assert_eq!(sent.my_discriminator, 1);
                prop_assert!(decode(&encode(&sent)).is_ok() || sent.your_discriminator == 0);
            }
            if s.state() != State::Up {
                prop_assert!(s.transmit_interval().is_none_or(|i| i >= Duration::from_secs(1)));
            }
        }
    }
}
