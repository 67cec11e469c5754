//! BFD, Bidirectional Forwarding Detection (RFC 5880), single hop (RFC 5881), asynchronous
//! mode: the control packet codec and one session as a state machine. Pure: time comes in
//! as `now`, packets in and out as values; `bfd_link` moves them over UDP.
//!
//! What it gives BGP: a router and this node each learn within the detection time (the
//! peer's multiplier times the agreed interval, 3 x 300 ms by default) that the path
//! between them is gone, instead of after the BGP hold time (90 s by default).

use std::time::{Duration, Instant};

use thiserror::Error;

/// The port control packets are sent to (RFC 5881 §4).
pub const PORT: u16 = 3784;
/// The TTL every control packet is sent with, and the only one accepted (RFC 5881 §5): a
/// packet from further than one hop away cannot have it.
pub const TTL: u8 = 255;
/// The mandatory section; Herald sends nothing more.
pub const PACKET_LEN: usize = 24;
const VERSION: u8 = 1;
/// While a session is not Up, packets go at most once a second (RFC 5880 §6.8.3).
const SLOW: Duration = Duration::from_secs(1);

/// A session's state, as carried in its packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    AdminDown,
    Down,
    Init,
    Up,
}

impl State {
    fn code(self) -> u8 {
        match self {
            State::AdminDown => 0,
            State::Down => 1,
            State::Init => 2,
            State::Up => 3,
        }
    }

    fn of(code: u8) -> Self {
        match code & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }
}

/// Why the session last went down (the diagnostic code, RFC 5880 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Diag {
    None,
    DetectionTimeExpired,
    NeighborSignaledDown,
    AdministrativelyDown,
    /// A code Herald does not send, kept as received.
    Other(u8),
}

impl Diag {
    fn code(self) -> u8 {
        match self {
            Diag::None => 0,
            Diag::DetectionTimeExpired => 1,
            Diag::NeighborSignaledDown => 3,
            Diag::AdministrativelyDown => 7,
            Diag::Other(c) => c & 0x1f,
        }
    }

    fn of(code: u8) -> Self {
        match code & 0x1f {
            0 => Diag::None,
            1 => Diag::DetectionTimeExpired,
            3 => Diag::NeighborSignaledDown,
            7 => Diag::AdministrativelyDown,
            c => Diag::Other(c),
        }
    }
}

impl std::fmt::Display for Diag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Diag::None => f.write_str("no diagnostic"),
            Diag::DetectionTimeExpired => f.write_str("control detection time expired"),
            Diag::NeighborSignaledDown => f.write_str("neighbor signaled session down"),
            Diag::AdministrativelyDown => f.write_str("administratively down"),
            Diag::Other(c) => write!(f, "diagnostic {c}"),
        }
    }
}

/// A control packet (the mandatory section; intervals in microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub diag: Diag,
    pub state: State,
    pub poll: bool,
    pub final_: bool,
    /// The sender asks this side to stop its periodic packets once both are Up (RFC 5880
    /// §6.6); Herald never asks it.
    pub demand: bool,
    pub detect_mult: u8,
    pub my_discriminator: u32,
    pub your_discriminator: u32,
    pub desired_min_tx_us: u32,
    pub required_min_rx_us: u32,
}

/// Why a received packet is dropped (RFC 5880 §6.8.6).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Discard {
    #[error("shorter than a BFD control packet ({0} bytes)")]
    Short(usize),
    #[error("BFD version {0}, not 1")]
    Version(u8),
    #[error("length field {field} does not fit the {received} bytes received")]
    Length { field: usize, received: usize },
    #[error("authenticated, and this session uses no authentication")]
    Authenticated,
    #[error("detect multiplier 0")]
    NoMultiplier,
    #[error("multipoint bit set")]
    Multipoint,
    #[error("my discriminator 0")]
    NoDiscriminator,
    #[error("your discriminator 0 in state {0:?}")]
    Unaddressed(State),
}

pub fn encode(p: &Packet) -> [u8; PACKET_LEN] {
    let mut out = [0u8; PACKET_LEN];
    out[0] = (VERSION << 5) | p.diag.code();
    out[1] = (p.state.code() << 6)
        | (u8::from(p.poll) << 5)
        | (u8::from(p.final_) << 4)
        | (u8::from(p.demand) << 1);
    out[2] = p.detect_mult;
    out[3] = PACKET_LEN as u8;
    out[4..8].copy_from_slice(&p.my_discriminator.to_be_bytes());
    out[8..12].copy_from_slice(&p.your_discriminator.to_be_bytes());
    out[12..16].copy_from_slice(&p.desired_min_tx_us.to_be_bytes());
    out[16..20].copy_from_slice(&p.required_min_rx_us.to_be_bytes());
    // Required Min Echo RX Interval 0: no echo function.
    out
}

/// Reads a control packet, with the checks RFC 5880 §6.8.6 makes before any session looks
/// at it. Never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Packet, Discard> {
    let word = |at: usize| -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&bytes[at..at + 4]);
        u32::from_be_bytes(b)
    };
    if bytes.len() < PACKET_LEN {
        return Err(Discard::Short(bytes.len()));
    }
    let version = bytes[0] >> 5;
    if version != VERSION {
        return Err(Discard::Version(version));
    }
    let flags = bytes[1];
    let auth = flags & 0x04 != 0;
    let field = usize::from(bytes[3]);
    let least = if auth { PACKET_LEN + 2 } else { PACKET_LEN };
    if field < least || field > bytes.len() {
        return Err(Discard::Length {
            field,
            received: bytes.len(),
        });
    }
    if auth {
        return Err(Discard::Authenticated);
    }
    let packet = Packet {
        diag: Diag::of(bytes[0]),
        state: State::of(flags >> 6),
        poll: flags & 0x20 != 0,
        final_: flags & 0x10 != 0,
        demand: flags & 0x02 != 0,
        detect_mult: bytes[2],
        my_discriminator: word(4),
        your_discriminator: word(8),
        desired_min_tx_us: word(12),
        required_min_rx_us: word(16),
    };
    if packet.detect_mult == 0 {
        return Err(Discard::NoMultiplier);
    }
    if flags & 0x01 != 0 {
        return Err(Discard::Multipoint);
    }
    if packet.my_discriminator == 0 {
        return Err(Discard::NoDiscriminator);
    }
    if packet.your_discriminator == 0 && !matches!(packet.state, State::Down | State::AdminDown) {
        return Err(Discard::Unaddressed(packet.state));
    }
    Ok(packet)
}

/// How fast this side wants to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// How often this side would like to send once Up.
    pub transmit_interval: Duration,
    /// How often it can take packets.
    pub receive_interval: Duration,
    pub detect_mult: u8,
    /// Wait for the peer to speak first (a router in active mode starts the session).
    pub passive: bool,
}

impl Default for Config {
    /// FRR's and MetalLB's defaults: 300 ms, 300 ms, 3.
    fn default() -> Self {
        Self {
            transmit_interval: Duration::from_millis(300),
            receive_interval: Duration::from_millis(300),
            detect_mult: 3,
            passive: false,
        }
    }
}

/// A change the session went through, for its owner (BGP) to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Up,
    /// Down from Init or Up, and why.
    Down(Diag),
}

/// What one step asks of the I/O shell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Send this at once (a Final answering a Poll, or a state change to tell).
    pub send: Option<Packet>,
    pub change: Option<Change>,
}

/// One BFD session (RFC 5880 §6.8.1's variables).
#[derive(Debug, Clone)]
pub struct Session {
    config: Config,
    local_discriminator: u32,
    state: State,
    diag: Diag,
    remote_discriminator: u32,
    remote_state: State,
    remote_demand: bool,
    /// The peer's Required Min RX Interval (0: send nothing).
    remote_min_rx: Duration,
    remote_desired_min_tx: Duration,
    remote_detect_mult: u8,
    /// The Desired Min TX Interval being advertised, and whether a Poll Sequence carrying
    /// it is waiting for the peer's Final.
    desired_min_tx: Duration,
    polling: bool,
    /// When the last valid packet arrived (detection runs from it).
    last_received: Option<Instant>,
}

impl Session {
    /// A new session; `discriminator`: this side's, unique on the node and not 0.
    pub fn new(config: Config, discriminator: u32) -> Self {
        Self {
            config,
            local_discriminator: discriminator.max(1),
            state: State::Down,
            diag: Diag::None,
            remote_discriminator: 0,
            remote_state: State::Down,
            remote_demand: false,
            // RFC 5880 §6.8.1: 1 microsecond until the peer says.
            remote_min_rx: Duration::from_micros(1),
            remote_desired_min_tx: Duration::ZERO,
            remote_detect_mult: 0,
            desired_min_tx: config.transmit_interval.max(SLOW),
            polling: false,
            last_received: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn diag(&self) -> Diag {
        self.diag
    }

    /// Takes a decoded packet from the peer.
    pub fn receive(&mut self, p: &Packet, now: Instant) -> Output {
        let mut out = Output::default();
        if p.your_discriminator != 0 && p.your_discriminator != self.local_discriminator {
            return out;
        }
        self.remote_discriminator = p.my_discriminator;
        self.remote_state = p.state;
        self.remote_demand = p.demand;
        self.remote_min_rx = Duration::from_micros(u64::from(p.required_min_rx_us));
        self.remote_desired_min_tx = Duration::from_micros(u64::from(p.desired_min_tx_us));
        self.remote_detect_mult = p.detect_mult;
        self.last_received = Some(now);
        if p.final_ && self.polling {
            self.polling = false;
        }
        if self.state == State::AdminDown {
            return out;
        }
        let before = self.state;
        match (self.state, p.state) {
            (State::Down, State::AdminDown) => {}
            (_, State::AdminDown) => self.down(Diag::NeighborSignaledDown),
            (State::Down, State::Down) => self.state = State::Init,
            (State::Down | State::Init, State::Init | State::Up) => self.up(),
            (State::Up, State::Down) => self.down(Diag::NeighborSignaledDown),
            _ => {}
        }
        if self.state != before {
            out.change = match self.state {
                State::Up => Some(Change::Up),
                State::Down if matches!(before, State::Init | State::Up) => {
                    Some(Change::Down(self.diag))
                }
                _ => None,
            };
        }
        if p.poll {
            let mut answer = self.packet();
            answer.poll = false;
            answer.final_ = true;
            out.send = Some(answer);
        } else if self.state != before {
            out.send = Some(self.packet());
        }
        out
    }

    /// When the peer is declared gone if nothing arrives (Init and Up only).
    pub fn detection_deadline(&self) -> Option<Instant> {
        if !matches!(self.state, State::Init | State::Up) {
            return None;
        }
        let interval = self.config.receive_interval.max(self.remote_desired_min_tx);
        let time = interval * u32::from(self.remote_detect_mult.max(1));
        Some(self.last_received? + time)
    }

    /// Called at or after `detection_deadline`: the session goes down if nothing came.
    pub fn expire(&mut self, now: Instant) -> Output {
        match self.detection_deadline() {
            Some(deadline) if now >= deadline => {
                self.down(Diag::DetectionTimeExpired);
                // RFC 5880 §6.8.1: the peer is forgotten after a detection time of silence.
                self.remote_discriminator = 0;
                self.remote_min_rx = Duration::from_micros(1);
                Output {
                    send: Some(self.packet()),
                    change: Some(Change::Down(Diag::DetectionTimeExpired)),
                }
            }
            _ => Output::default(),
        }
    }

    /// How long until the next periodic packet, before jitter; `None`: send nothing (the
    /// peer asked for none or runs demand mode, or a passive side has not heard it yet).
    pub fn transmit_interval(&self) -> Option<Duration> {
        let demand =
            self.remote_demand && self.state == State::Up && self.remote_state == State::Up;
        if self.remote_min_rx.is_zero()
            || demand
            || (self.config.passive && self.remote_discriminator == 0)
        {
            return None;
        }
        Some(self.desired_min_tx.max(self.remote_min_rx))
    }

    /// The periodic packet and when the next one is due: `jitter` in [0, 1] takes 0-25% off
    /// the interval (10-25% with a multiplier of 1, RFC 5880 §6.8.7), so that sessions
    /// started together do not send together.
    pub fn transmit(&self, jitter: f64) -> Option<(Packet, Duration)> {
        let interval = self.transmit_interval()?;
        let least_off = if self.config.detect_mult == 1 {
            0.10
        } else {
            0.0
        };
        let off = least_off + (0.25 - least_off) * jitter.clamp(0.0, 1.0);
        Some((self.packet(), interval.mul_f64(1.0 - off)))
    }

    /// The packet describing this side now.
    pub fn packet(&self) -> Packet {
        Packet {
            diag: self.diag,
            state: self.state,
            poll: self.polling,
            final_: false,
            demand: false,
            detect_mult: self.config.detect_mult,
            my_discriminator: self.local_discriminator,
            your_discriminator: self.remote_discriminator,
            desired_min_tx_us: micros(self.desired_min_tx),
            required_min_rx_us: micros(self.config.receive_interval),
        }
    }

    fn up(&mut self) {
        self.state = State::Up;
        // Up: the configured rate, announced with a Poll Sequence (RFC 5880 §6.8.3); a
        // faster rate may start at once.
        let desired = self.config.transmit_interval;
        if desired != self.desired_min_tx {
            self.desired_min_tx = desired;
            self.polling = true;
        }
    }

    fn down(&mut self, why: Diag) {
        self.state = State::Down;
        self.diag = why;
        self.desired_min_tx = self.config.transmit_interval.max(SLOW);
        self.polling = false;
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
