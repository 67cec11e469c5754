//! One BGP session's state machine (RFC 4271 §8), for a speaker that only connects out and
//! only originates: `step(state, event) -> actions`, with no I/O and no clock. The caller
//! owns the TCP connection and the timers, feeds in what happened (`Event`) and carries out
//! what comes back (`Action`). States: `Idle` (waiting to connect), `Connect` (TCP
//! connecting), `OpenSent`, `OpenConfirm`, `Established`; `Active` is not needed by a speaker
//! that never listens.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::wire::{Capability, Family, Message, Notification, Open, error};

/// What this side asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub local_asn: u32,
    /// `None`: accept whatever AS the peer says (MetalLB's `dynamicASN`).
    pub peer_asn: Option<u32>,
    pub router_id: Ipv4Addr,
    /// Proposed hold time (0: none, else at least 3 s).
    pub hold_time: Duration,
    /// Keepalives at most this far apart (a third of the negotiated hold time if that is
    /// shorter).
    pub keepalive: Duration,
    /// Families offered.
    pub families: Vec<Family>,
    /// Offer graceful restart with this restart time (`None`: not offered).
    pub graceful_restart: Option<Duration>,
    /// This speaker restarted and the peer may still hold its routes (the R bit).
    pub restarting: bool,
    /// Between connection attempts (the ConnectRetry timer; MetalLB's `connectTime`).
    pub connect_retry: Duration,
}

/// What both sides agreed on when the session came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub peer_asn: u32,
    pub peer_router_id: Ipv4Addr,
    pub hold_time: Duration,
    pub keepalive: Duration,
    /// Families both offered.
    pub families: Vec<Family>,
    /// The peer keeps this speaker's routes this long across a restart (it offered
    /// graceful restart).
    pub peer_keeps_routes: Option<Duration>,
    pub route_refresh: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Idle,
    Connect,
    OpenSent,
    OpenConfirm(Negotiated),
    Established(Negotiated),
}

/// The timers the caller runs for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Before the next connection attempt.
    ConnectRetry,
    /// The peer is dead if nothing arrives before it fires.
    Hold,
    /// Time to send a KEEPALIVE.
    Keepalive,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Begin (or begin again after `Stop`).
    Start,
    /// Close the session: the NOTIFICATION says why (a Cease).
    Stop(Notification),
    TcpConnected,
    /// The connection failed or closed.
    TcpClosed,
    Received(Message),
    /// What arrived is not a message Herald accepts: answer with this and close.
    Malformed(Notification),
    Expired(Timer),
    /// BFD saw the path to the peer fail: the session ends (Cease, BFD down) and is tried
    /// again.
    PathDown,
}

/// Why a session went down, for statuses, Events and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Down {
    /// This side sent a NOTIFICATION.
    Sent(Notification),
    /// The peer sent one.
    Received(Notification),
    /// The connection closed or could not be made.
    Connection,
    /// Passive: the address the peer should connect to could not be listened on.
    CannotListen(String),
}

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let said = |n: &Notification| {
            let what = match n.code {
                error::HEADER => "message header error",
                error::OPEN => "OPEN message error",
                error::UPDATE => "UPDATE message error",
                error::HOLD_TIMER_EXPIRED => "hold timer expired",
                error::FSM => "finite state machine error",
                error::CEASE => "Cease",
                _ => "unknown error",
            };
            format!("{what} (code {}, subcode {})", n.code, n.subcode)
        };
        match self {
            Down::Sent(n) => write!(f, "this node sent a NOTIFICATION: {}", said(n)),
            Down::Received(n) => write!(f, "the router sent a NOTIFICATION: {}", said(n)),
            Down::Connection => f.write_str("the TCP connection closed or could not be made"),
            Down::CannotListen(why) => write!(f, "{why} (passive: the router connects there)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the peer.
    Connect,
    /// Close the TCP connection.
    Disconnect,
    Send(Message),
    Arm(Timer, Duration),
    Disarm(Timer),
    /// The session is Established: send every route, then End-of-RIB per family.
    Up(Negotiated),
    /// The session left Established (or never got there).
    Down(Down),
    /// The peer asked for this family's routes again (route refresh).
    Resend(Family),
    /// The peer sent an UPDATE: checked, counted, dropped (nothing is installed).
    Ignored,
}

/// The hold time proposed while waiting for the peer's OPEN (RFC 4271: 4 minutes).
const LARGE_HOLD: Duration = Duration::from_secs(240);
/// Between connection attempts by default. Short: a router restarting comes back within
/// seconds, and a refused connection costs nothing.
pub const CONNECT_RETRY: Duration = Duration::from_secs(5);

/// This side's OPEN.
pub fn open(config: &Config) -> Open {
    let mut capabilities: Vec<Capability> = config
        .families
        .iter()
        .map(|f| Capability::Multiprotocol(*f))
        .collect();
    capabilities.push(Capability::RouteRefresh);
    capabilities.push(Capability::FourOctetAs(config.local_asn));
    if let Some(restart) = config.graceful_restart {
        capabilities.push(Capability::GracefulRestart {
            restarting: config.restarting,
            restart_time: u16::try_from(restart.as_secs()).unwrap_or(4095).min(4095),
            // Herald's routes are its own addresses: forwarding goes on while it restarts.
            families: config.families.iter().map(|f| (*f, true)).collect(),
        });
    }
    Open {
        asn: config.local_asn,
        hold_time: u16::try_from(config.hold_time.as_secs()).unwrap_or(u16::MAX),
        router_id: config.router_id,
        capabilities,
    }
}

/// What the peer's OPEN and this side's config agree on, or the NOTIFICATION refusing it.
pub fn negotiate(config: &Config, peer: &Open) -> Result<Negotiated, Notification> {
    if config.peer_asn.is_some_and(|asn| asn != peer.asn) {
        return Err(Notification::new(error::OPEN, error::OPEN_BAD_PEER_AS, &[]));
    }
    if peer.router_id == config.router_id && peer.asn == config.local_asn {
        return Err(Notification::new(
            error::OPEN,
            error::OPEN_BAD_IDENTIFIER,
            &[],
        ));
    }
    // Herald sends 4-octet AS paths only: a peer without the capability is refused, naming
    // the capability it lacks (RFC 5492).
    if !peer
        .capabilities
        .iter()
        .any(|c| matches!(c, Capability::FourOctetAs(_)))
    {
        let mut data = vec![65, 4];
        data.extend_from_slice(&config.local_asn.to_be_bytes());
        return Err(Notification::new(
            error::OPEN,
            error::OPEN_UNSUPPORTED_CAPABILITY,
            &data,
        ));
    }
    let offered: Vec<Family> = peer
        .capabilities
        .iter()
        .filter_map(|c| match c {
            Capability::Multiprotocol(f) => Some(*f),
            _ => None,
        })
        .collect();
    // A peer that offers no multiprotocol capability speaks IPv4 unicast (RFC 4760 §8).
    let offered = if offered.is_empty() {
        vec![Family::Ipv4Unicast]
    } else {
        offered
    };
    let families: Vec<Family> = config
        .families
        .iter()
        .copied()
        .filter(|f| offered.contains(f))
        .collect();
    let hold_time = config
        .hold_time
        .min(Duration::from_secs(u64::from(peer.hold_time)));
    let keepalive = if hold_time.is_zero() {
        Duration::ZERO
    } else {
        config
            .keepalive
            .min(hold_time / 3)
            .max(Duration::from_secs(1))
    };
    Ok(Negotiated {
        peer_asn: peer.asn,
        peer_router_id: peer.router_id,
        hold_time,
        keepalive,
        families,
        peer_keeps_routes: peer.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart { restart_time, .. } => {
                Some(Duration::from_secs(u64::from(*restart_time)))
            }
            _ => None,
        }),
        route_refresh: peer.capabilities.contains(&Capability::RouteRefresh),
    })
}

/// The session's next state and what to do, given what happened.
pub fn step(config: &Config, state: State, event: Event) -> (State, Vec<Action>) {
    match (state, event) {
        (State::Idle, Event::Start) => (State::Connect, vec![Action::Connect]),
        (State::Idle, Event::Expired(Timer::ConnectRetry)) => {
            (State::Connect, vec![Action::Connect])
        }
        (State::Idle, _) => (State::Idle, Vec::new()),

        (State::Connect, Event::TcpConnected) => (
            State::OpenSent,
            vec![
                Action::Send(Message::Open(open(config))),
                Action::Arm(Timer::Hold, LARGE_HOLD),
            ],
        ),
        (State::Connect, Event::TcpClosed) => (
            State::Idle,
            vec![
                Action::Down(Down::Connection),
                Action::Arm(Timer::ConnectRetry, config.connect_retry),
            ],
        ),
        (State::Connect, Event::Stop(_)) => (State::Idle, vec![Action::Disconnect]),
        (State::Connect, _) => (State::Connect, Vec::new()),
        (state, Event::PathDown) if !matches!(state, State::Established(_)) => (state, Vec::new()),
        (_, Event::PathDown) => close(
            config,
            Notification::new(error::CEASE, error::CEASE_BFD_DOWN, &[]),
            true,
        ),

        (_, Event::Stop(why)) => close(config, why, false),
        (_, Event::Malformed(why)) => close(config, why, true),
        (_, Event::TcpClosed) => (State::Idle, drop_session(config, Down::Connection)),
        (_, Event::Received(Message::Notification(n))) => {
            (State::Idle, drop_session(config, Down::Received(n)))
        }
        (_, Event::Expired(Timer::Hold)) => close(
            config,
            Notification::new(error::HOLD_TIMER_EXPIRED, 0, &[]),
            true,
        ),

        (State::OpenSent, Event::Received(Message::Open(peer))) => match negotiate(config, &peer) {
            Ok(agreed) => {
                let mut actions = vec![Action::Send(Message::Keepalive)];
                actions.extend(timers(&agreed));
                (State::OpenConfirm(agreed), actions)
            }
            Err(why) => close(config, why, true),
        },
        (State::OpenConfirm(agreed), Event::Received(Message::Keepalive)) => {
            let mut actions = timers(&agreed);
            actions.push(Action::Up(agreed.clone()));
            (State::Established(agreed), actions)
        }
        (State::OpenConfirm(agreed), Event::Expired(Timer::Keepalive)) => {
            let actions = keepalive(&agreed);
            (State::OpenConfirm(agreed), actions)
        }
        (State::Established(agreed), Event::Expired(Timer::Keepalive)) => {
            let actions = keepalive(&agreed);
            (State::Established(agreed), actions)
        }
        (State::Established(agreed), Event::Received(message)) => {
            let mut actions = Vec::new();
            if !agreed.hold_time.is_zero() {
                actions.push(Action::Arm(Timer::Hold, agreed.hold_time));
            }
            match message {
                Message::Keepalive => {}
                Message::Update(_) => actions.push(Action::Ignored),
                Message::RouteRefresh(family) => {
                    if agreed.families.contains(&family) {
                        actions.push(Action::Resend(family));
                    }
                }
                // A second OPEN (or anything else out of place).
                _ => {
                    return close(config, Notification::new(error::FSM, 3, &[]), true);
                }
            }
            (State::Established(agreed), actions)
        }
        // Anything else arriving before Established is out of order (RFC 6608 subcodes:
        // 1 in OpenSent, 2 in OpenConfirm).
        (State::OpenSent, Event::Received(_)) => {
            close(config, Notification::new(error::FSM, 1, &[]), true)
        }
        (State::OpenConfirm(_), Event::Received(_)) => {
            close(config, Notification::new(error::FSM, 2, &[]), true)
        }
        (state, _) => (state, Vec::new()),
    }
}

/// A KEEPALIVE now, and the next one a keepalive interval later.
fn keepalive(agreed: &Negotiated) -> Vec<Action> {
    vec![
        Action::Send(Message::Keepalive),
        Action::Arm(Timer::Keepalive, agreed.keepalive),
    ]
}

/// Arms the hold and keepalive timers as negotiated (none with a hold time of 0).
fn timers(agreed: &Negotiated) -> Vec<Action> {
    if agreed.hold_time.is_zero() {
        return vec![
            Action::Disarm(Timer::Hold),
            Action::Disarm(Timer::Keepalive),
        ];
    }
    vec![
        Action::Arm(Timer::Hold, agreed.hold_time),
        Action::Arm(Timer::Keepalive, agreed.keepalive),
    ]
}

/// Sends `why` and closes; back to Idle, to connect again after a while when `retry`.
fn close(config: &Config, why: Notification, retry: bool) -> (State, Vec<Action>) {
    let mut actions = drop_session(config, Down::Sent(why.clone()));
    actions.insert(0, Action::Send(Message::Notification(why)));
    if !retry {
        actions.retain(|a| !matches!(a, Action::Arm(Timer::ConnectRetry, _)));
    }
    (State::Idle, actions)
}

/// The session is gone: timers off, connection closed, connect again after a while.
fn drop_session(config: &Config, why: Down) -> Vec<Action> {
    vec![
        Action::Disarm(Timer::Hold),
        Action::Disarm(Timer::Keepalive),
        Action::Disconnect,
        Action::Down(why),
        Action::Arm(Timer::ConnectRetry, config.connect_retry),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            local_asn: 4_200_000_001,
            peer_asn: None,
            router_id: Ipv4Addr::new(192, 0, 2, 11),
            hold_time: Duration::from_secs(9),
            keepalive: Duration::from_secs(3),
            families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            graceful_restart: Some(Duration::from_secs(120)),
            restarting: false,
            // Not the default: every retry must be the configured one.
            connect_retry: Duration::from_secs(7),
        }
    }

    fn peer_open(hold: u16, capabilities: Vec<Capability>) -> Open {
        Open {
            asn: 64500,
            hold_time: hold,
            router_id: Ipv4Addr::new(192, 0, 2, 1),
            capabilities,
        }
    }

    fn modern(families: &[Family]) -> Vec<Capability> {
        let mut caps: Vec<Capability> = families
            .iter()
            .map(|f| Capability::Multiprotocol(*f))
            .collect();
        caps.push(Capability::FourOctetAs(64500));
        caps.push(Capability::RouteRefresh);
        caps
    }

    /// Steps through `events` from Idle; the last state and every action.
    fn run(config: &Config, events: Vec<Event>) -> (State, Vec<Action>) {
        let mut state = State::Idle;
        let mut all = Vec::new();
        for event in events {
            let (next, actions) = step(config, state, event);
            state = next;
            all.extend(actions);
        }
        (state, all)
    }

    fn up_to_open_confirm(open: Open) -> Vec<Event> {
        vec![
            Event::Start,
            Event::TcpConnected,
            Event::Received(Message::Open(open)),
        ]
    }

    #[test]
    fn a_session_comes_up_after_open_and_keepalive_on_the_lower_hold_time_and_shared_families() {
        let config = config();
        let (state, actions) = run(&config, vec![Event::Start, Event::TcpConnected]);
        assert_eq!(state, State::OpenSent);
        assert!(actions.contains(&Action::Connect));
        assert!(actions.contains(&Action::Send(Message::Open(open(&config)))));

        let mut events = up_to_open_confirm(peer_open(6, modern(&[Family::Ipv4Unicast])));
        events.push(Event::Received(Message::Keepalive));
        let (state, actions) = run(&config, events);
        let State::Established(agreed) = state else {
            panic!("not established: {state:?}");
        };
        assert_eq!(agreed.hold_time, Duration::from_secs(6));
        assert_eq!(agreed.keepalive, Duration::from_secs(2));
        assert_eq!(agreed.families, [Family::Ipv4Unicast]);
        assert_eq!(agreed.peer_asn, 64500);
        assert!(agreed.route_refresh);
        assert!(actions.contains(&Action::Up(agreed.clone())));
        assert!(actions.contains(&Action::Arm(Timer::Hold, Duration::from_secs(6))));
    }

    #[test]
    fn this_sides_open_offers_families_4_octet_as_route_refresh_and_graceful_restart() {
        let open = open(&config());
        assert_eq!(open.asn, 4_200_000_001);
        assert!(
            open.capabilities
                .contains(&Capability::FourOctetAs(4_200_000_001))
        );
        assert!(open.capabilities.contains(&Capability::RouteRefresh));
        assert!(
            open.capabilities
                .contains(&Capability::Multiprotocol(Family::Ipv6Unicast))
        );
        assert!(open.capabilities.contains(&Capability::GracefulRestart {
            restarting: false,
            restart_time: 120,
            families: vec![(Family::Ipv4Unicast, true), (Family::Ipv6Unicast, true)],
        }));
    }

    #[test]
    fn a_peer_that_offers_no_multiprotocol_capability_speaks_ipv4() {
        let peer = peer_open(9, vec![Capability::FourOctetAs(64500)]);
        let agreed = negotiate(&config(), &peer).expect("accepted");
        assert_eq!(agreed.families, [Family::Ipv4Unicast]);
        assert!(!agreed.route_refresh);
    }

    fn refusal(actions: &[Action]) -> Notification {
        actions
            .iter()
            .find_map(|a| match a {
                Action::Send(Message::Notification(n)) => Some(n.clone()),
                _ => None,
            })
            .expect("a NOTIFICATION sent")
    }

    #[test]
    fn an_open_this_side_cannot_accept_is_refused_with_its_reason_and_retried_later() {
        let config = Config {
            peer_asn: Some(64999),
            ..config()
        };
        let (state, actions) = run(
            &config,
            up_to_open_confirm(peer_open(9, modern(&[Family::Ipv4Unicast]))),
        );
        assert_eq!(state, State::Idle);
        let n = refusal(&actions);
        assert_eq!((n.code, n.subcode), (error::OPEN, error::OPEN_BAD_PEER_AS));
        assert!(actions.contains(&Action::Disconnect));
        assert!(actions.contains(&Action::Arm(Timer::ConnectRetry, config.connect_retry)));

        // Without 4-octet AS numbers: the capability Herald needs is named.
        let (_, actions) = run(
            &super::tests::config(),
            up_to_open_confirm(peer_open(9, vec![Capability::RouteRefresh])),
        );
        let n = refusal(&actions);
        assert_eq!(
            (n.code, n.subcode),
            (error::OPEN, error::OPEN_UNSUPPORTED_CAPABILITY)
        );
        assert_eq!(n.data[..2], [65, 4]);

        // The same router ID in the same AS.
        let mut same = peer_open(9, modern(&[Family::Ipv4Unicast]));
        same.asn = 4_200_000_001;
        same.router_id = super::tests::config().router_id;
        let (_, actions) = run(&super::tests::config(), up_to_open_confirm(same));
        assert_eq!(refusal(&actions).subcode, error::OPEN_BAD_IDENTIFIER);
    }

    fn established() -> (Config, State) {
        let config = config();
        let mut events = up_to_open_confirm(peer_open(9, modern(&Family::ALL)));
        events.push(Event::Received(Message::Keepalive));
        let (state, _) = run(&config, events);
        assert!(matches!(state, State::Established(_)));
        (config, state)
    }

    #[test]
    fn a_path_bfd_finds_down_ends_the_session_with_cease_and_it_is_tried_again() {
        let (config, state) = established();
        let (state, actions) = step(&config, state, Event::PathDown);
        assert_eq!(state, State::Idle);
        let n = refusal(&actions);
        assert_eq!((n.code, n.subcode), (error::CEASE, error::CEASE_BFD_DOWN));
        assert!(actions.contains(&Action::Arm(Timer::ConnectRetry, config.connect_retry)));
        // Not yet up: nothing to end.
        let (state, actions) = step(&config, State::Connect, Event::PathDown);
        assert_eq!((state, actions), (State::Connect, Vec::new()));
    }

    #[test]
    fn a_silent_peer_gets_hold_timer_expired_and_the_session_is_tried_again() {
        let (config, state) = established();
        let (state, actions) = step(&config, state, Event::Expired(Timer::Hold));
        assert_eq!(state, State::Idle);
        let n = refusal(&actions);
        assert_eq!(n.code, error::HOLD_TIMER_EXPIRED);
        assert!(actions.contains(&Action::Down(Down::Sent(n))));
        assert!(actions.contains(&Action::Arm(Timer::ConnectRetry, config.connect_retry)));
        let (state, actions) = step(&config, state, Event::Expired(Timer::ConnectRetry));
        assert_eq!((state, actions), (State::Connect, vec![Action::Connect]));
    }

    #[test]
    fn what_arrives_in_established_keeps_the_session_and_updates_are_dropped() {
        let (config, state) = established();
        let (state, actions) = step(
            &config,
            state,
            Event::Received(Message::Update(crate::wire::Update::default())),
        );
        assert!(matches!(state, State::Established(_)));
        assert_eq!(
            actions,
            [
                Action::Arm(Timer::Hold, Duration::from_secs(9)),
                Action::Ignored
            ]
        );
        let (state, actions) = step(&config, state, Event::Expired(Timer::Keepalive));
        assert!(matches!(state, State::Established(_)));
        assert_eq!(
            actions,
            [
                Action::Send(Message::Keepalive),
                Action::Arm(Timer::Keepalive, Duration::from_secs(3))
            ]
        );
        let (_, actions) = step(
            &config,
            state,
            Event::Received(Message::RouteRefresh(Family::Ipv6Unicast)),
        );
        assert!(actions.contains(&Action::Resend(Family::Ipv6Unicast)));
    }

    #[test]
    fn a_notification_from_the_peer_takes_the_session_down_with_its_reason() {
        let (config, state) = established();
        let cease = Notification::new(error::CEASE, 2, &[]);
        let (state, actions) = step(
            &config,
            state,
            Event::Received(Message::Notification(cease.clone())),
        );
        assert_eq!(state, State::Idle);
        assert!(actions.contains(&Action::Down(Down::Received(cease))));
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Send(_))),
            "no answer to a NOTIFICATION"
        );
    }

    #[test]
    fn a_message_out_of_order_is_a_state_machine_error() {
        let config = config();
        let (_, actions) = run(
            &config,
            vec![
                Event::Start,
                Event::TcpConnected,
                Event::Received(Message::Keepalive),
            ],
        );
        let n = refusal(&actions);
        assert_eq!((n.code, n.subcode), (error::FSM, 1));
        let (config, state) = established();
        let (_, actions) = step(
            &config,
            state,
            Event::Received(Message::Open(peer_open(9, modern(&Family::ALL)))),
        );
        assert_eq!(
            (refusal(&actions).code, refusal(&actions).subcode),
            (error::FSM, 3)
        );
    }

    #[test]
    fn a_stop_sends_the_cease_and_does_not_connect_again() {
        let (config, state) = established();
        let cease = Notification::new(error::CEASE, error::CEASE_ADMINISTRATIVE_SHUTDOWN, &[]);
        let (state, actions) = step(&config, state, Event::Stop(cease.clone()));
        assert_eq!(state, State::Idle);
        assert_eq!(actions[0], Action::Send(Message::Notification(cease)));
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::Arm(Timer::ConnectRetry, _)))
        );
        // Nothing but Start begins again.
        let (state, _) = step(&config, state, Event::TcpClosed);
        assert_eq!(state, State::Idle);
    }

    #[test]
    fn a_hold_time_of_zero_means_no_keepalives() {
        let config = Config {
            hold_time: Duration::ZERO,
            ..config()
        };
        let mut events = up_to_open_confirm(peer_open(9, modern(&Family::ALL)));
        events.push(Event::Received(Message::Keepalive));
        let (state, actions) = run(&config, events);
        let State::Established(agreed) = state else {
            panic!("{state:?}");
        };
        assert_eq!(
            (agreed.hold_time, agreed.keepalive),
            (Duration::ZERO, Duration::ZERO)
        );
        assert!(actions.contains(&Action::Disarm(Timer::Keepalive)));
    }
}
