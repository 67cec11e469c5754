//! BGP-4 messages on the wire (RFC 4271), with the capabilities and attributes Herald's
//! originate-only speaker uses: multiprotocol IPv4 and IPv6 unicast (RFC 4760), 4-octet AS
//! numbers (RFC 6793), graceful restart (RFC 4724), route refresh (RFC 2918), communities
//! (RFC 1997) and large communities (RFC 8092). Pure.
//!
//! What a peer sends is untrusted: every read is bounds-checked, nothing panics (a property
//! test feeds random and mutated messages), and a message that breaks the rules decodes to
//! the NOTIFICATION the RFCs say to answer with. Errors inside an UPDATE's attributes follow
//! RFC 7606: an attribute that is wrong but leaves the message parseable makes the UPDATE
//! "treat-as-withdraw" (the session stays up); only what makes the NLRI impossible to find
//! resets the session. Herald installs nothing a peer sends, so a received UPDATE is
//! checked, counted and dropped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

/// Every message starts with 16 bytes of ones.
const MARKER: [u8; 16] = [0xff; 16];
/// Marker, length, type.
pub const HEADER_LEN: usize = 19;
/// The largest message (RFC 4271; extended messages, RFC 8654, are not offered).
pub const MAX_MESSAGE: usize = 4096;
/// The AS number a 2-octet field carries when the real one needs 4 octets (RFC 6793).
pub const AS_TRANS: u16 = 23456;

/// An address family Herald announces in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ipv4Unicast,
    Ipv6Unicast,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4Unicast, Family::Ipv6Unicast];

    /// (AFI, SAFI).
    pub fn code(self) -> (u16, u8) {
        match self {
            Family::Ipv4Unicast => (1, 1),
            Family::Ipv6Unicast => (2, 1),
        }
    }

    pub fn of_code(afi: u16, safi: u8) -> Option<Self> {
        match (afi, safi) {
            (1, 1) => Some(Family::Ipv4Unicast),
            (2, 1) => Some(Family::Ipv6Unicast),
            _ => None,
        }
    }

    pub fn of(net: &IpNetwork) -> Self {
        match net {
            IpNetwork::V4(_) => Family::Ipv4Unicast,
            IpNetwork::V6(_) => Family::Ipv6Unicast,
        }
    }
}

/// A capability in an OPEN (RFC 5492).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Code 1: this family may be exchanged. An (AFI, SAFI) Herald does not know is kept
    /// as `Unknown`.
    Multiprotocol(Family),
    /// Code 2.
    RouteRefresh,
    /// Code 64: the sender restarted (`restarting`, the R bit) and will be back within
    /// `restart_time` seconds; per family, whether it kept forwarding (the F bit).
    GracefulRestart {
        restarting: bool,
        restart_time: u16,
        families: Vec<(Family, bool)>,
    },
    /// Code 65: the sender's AS number, in full.
    FourOctetAs(u32),
    Unknown {
        code: u8,
        value: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The sender's AS number (from the 4-octet capability when it is there).
    pub asn: u32,
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

/// ORIGIN values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

/// A path attribute, as Herald sends or checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    Origin(Origin),
    /// AS_SEQUENCE segments only are sent; sets and confederation segments received are
    /// kept as `Unknown`-free sequences of numbers (their kind does not matter to a speaker
    /// that installs nothing).
    AsPath(Vec<u32>),
    NextHop(Ipv4Addr),
    MultiExitDisc(u32),
    LocalPref(u32),
    Communities(Vec<u32>),
    LargeCommunities(Vec<[u32; 3]>),
    MpReach {
        family: Family,
        next_hops: Vec<IpAddr>,
        announced: Vec<IpNetwork>,
    },
    MpUnreach {
        family: Family,
        withdrawn: Vec<IpNetwork>,
    },
    /// An attribute Herald neither sends nor reads, passed over.
    Unknown {
        flags: u8,
        code: u8,
        value: Vec<u8>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// IPv4 prefixes withdrawn in the message body (IPv6 ones travel in `MpUnreach`).
    pub withdrawn: Vec<Ipv4Network>,
    pub attributes: Vec<Attribute>,
    /// IPv4 prefixes announced in the message body (IPv6 ones travel in `MpReach`).
    pub announced: Vec<Ipv4Network>,
    /// An attribute was malformed in a way RFC 7606 answers with "treat-as-withdraw": the
    /// prefixes count as withdrawn, the session stays up.
    pub treat_as_withdraw: bool,
}

impl Update {
    /// An UPDATE with no prefixes and no attributes: End-of-RIB for IPv4 unicast (RFC 4724).
    pub fn is_end_of_rib(&self) -> Option<Family> {
        if !self.withdrawn.is_empty() || !self.announced.is_empty() {
            return None;
        }
        match self.attributes.as_slice() {
            [] => Some(Family::Ipv4Unicast),
            [Attribute::MpUnreach { family, withdrawn }] if withdrawn.is_empty() => Some(*family),
            _ => None,
        }
    }

    /// End-of-RIB for `family`.
    pub fn end_of_rib(family: Family) -> Self {
        let attributes = match family {
            Family::Ipv4Unicast => Vec::new(),
            family => vec![Attribute::MpUnreach {
                family,
                withdrawn: Vec::new(),
            }],
        };
        Self {
            attributes,
            ..Self::default()
        }
    }
}

/// A NOTIFICATION: why the sender closes the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

/// NOTIFICATION error codes (RFC 4271 §4.5) and the subcodes Herald sends.
pub mod error {
    pub const HEADER: u8 = 1;
    pub const OPEN: u8 = 2;
    pub const UPDATE: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;

    pub const HEADER_NOT_SYNCHRONIZED: u8 = 1;
    pub const HEADER_BAD_LENGTH: u8 = 2;
    pub const HEADER_BAD_TYPE: u8 = 3;

    pub const OPEN_UNSUPPORTED_VERSION: u8 = 1;
    pub const OPEN_BAD_PEER_AS: u8 = 2;
    pub const OPEN_BAD_IDENTIFIER: u8 = 3;
    pub const OPEN_UNSUPPORTED_PARAMETER: u8 = 4;
    pub const OPEN_UNACCEPTABLE_HOLD_TIME: u8 = 6;
    pub const OPEN_UNSUPPORTED_CAPABILITY: u8 = 7;

    pub const UPDATE_MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    pub const UPDATE_INVALID_NETWORK_FIELD: u8 = 10;

    /// Cease subcodes (RFC 4486).
    pub const CEASE_ADMINISTRATIVE_SHUTDOWN: u8 = 2;
    pub const CEASE_ADMINISTRATIVE_RESET: u8 = 4;
    /// The BFD session under the BGP session went down (RFC 9384).
    pub const CEASE_BFD_DOWN: u8 = 10;
}

impl Notification {
    pub fn new(code: u8, subcode: u8, data: &[u8]) -> Self {
        Self {
            code,
            subcode,
            data: data.to_vec(),
        }
    }

    /// What the codes mean, for logs and statuses (RFC 4271 §4.5, RFC 4486, RFC 5492).
    pub fn describe(&self) -> String {
        let code = match self.code {
            error::HEADER => "message header error",
            error::OPEN => "OPEN message error",
            error::UPDATE => "UPDATE message error",
            error::HOLD_TIMER_EXPIRED => "hold timer expired",
            error::FSM => "finite state machine error",
            error::CEASE => "cease",
            _ => "unknown error",
        };
        let subcode = match (self.code, self.subcode) {
            (error::OPEN, 1) => " (unsupported version)",
            (error::OPEN, 2) => " (bad peer AS)",
            (error::OPEN, 3) => " (bad BGP identifier)",
            (error::OPEN, 4) => " (unsupported optional parameter)",
            (error::OPEN, 5) => " (authentication failure)",
            (error::OPEN, 6) => " (unacceptable hold time)",
            (error::OPEN, 7) => " (unsupported capability)",
            (error::CEASE, 1) => " (maximum prefixes reached)",
            (error::CEASE, 2) => " (administrative shutdown)",
            (error::CEASE, 3) => " (peer de-configured)",
            (error::CEASE, 4) => " (administrative reset)",
            (error::CEASE, 5) => " (connection rejected)",
            (error::CEASE, 6) => " (other configuration change)",
            (error::CEASE, 7) => " (connection collision resolution)",
            (error::CEASE, 8) => " (out of resources)",
            (error::CEASE, 9) => " (hard reset)",
            (error::CEASE, 10) => " (BFD down)",
            _ => "",
        };
        format!("{code}{subcode} [{}/{}]", self.code, self.subcode)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    RouteRefresh(Family),
}

/// A message Herald cannot accept: the NOTIFICATION to answer with, then close.
pub type DecodeError = Notification;

/// The length of the message at the front of `buf` once its header is there (`None`: fewer
/// than 19 bytes so far); an error when the header is not a BGP header.
pub fn message_length(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    if header[..16] != MARKER {
        return Err(Notification::new(
            error::HEADER,
            error::HEADER_NOT_SYNCHRONIZED,
            &[],
        ));
    }
    let length = usize::from(u16::from_be_bytes([header[16], header[17]]));
    if !(HEADER_LEN..=MAX_MESSAGE).contains(&length) {
        return Err(bad_length(length));
    }
    Ok(Some(length))
}

fn bad_length(length: usize) -> DecodeError {
    let length = u16::try_from(length).unwrap_or(u16::MAX);
    Notification::new(
        error::HEADER,
        error::HEADER_BAD_LENGTH,
        &length.to_be_bytes(),
    )
}

/// Decodes one whole message (header included, as `message_length` framed it).
/// `four_octet_as`: both sides announced 4-octet AS numbers, so AS_PATH carries 4 octets
/// an AS.
pub fn decode(message: &[u8], four_octet_as: bool) -> Result<Message, DecodeError> {
    let length = message_length(message)?.ok_or_else(|| bad_length(message.len()))?;
    if length != message.len() {
        return Err(bad_length(message.len()));
    }
    let kind = message[18];
    let body = &message[HEADER_LEN..];
    let min = match kind {
        1 => 29,
        2 => 23,
        3 => 21,
        4 => 19,
        5 => 23,
        _ => {
            return Err(Notification::new(
                error::HEADER,
                error::HEADER_BAD_TYPE,
                &[kind],
            ));
        }
    };
    // KEEPALIVE and ROUTE-REFRESH have a fixed length.
    if length < min || (matches!(kind, 4 | 5) && length != min) {
        return Err(bad_length(length));
    }
    match kind {
        1 => decode_open(body).map(Message::Open),
        2 => decode_update(body, four_octet_as).map(Message::Update),
        3 => Ok(Message::Notification(Notification {
            code: body[0],
            subcode: body[1],
            data: body[2..].to_vec(),
        })),
        4 => Ok(Message::Keepalive),
        _ => {
            let afi = u16::from_be_bytes([body[0], body[1]]);
            // A family Herald does not speak: nothing to refresh, not an error.
            Ok(Family::of_code(afi, body[3])
                .map(Message::RouteRefresh)
                .unwrap_or(Message::Keepalive))
        }
    }
}

/// Reads big-endian fields from a slice, failing instead of panicking when it runs out.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn open_error(subcode: u8, data: &[u8]) -> DecodeError {
    Notification::new(error::OPEN, subcode, data)
}

fn decode_open(body: &[u8]) -> Result<Open, DecodeError> {
    let mut r = Reader(body);
    let malformed = || Notification::new(error::HEADER, error::HEADER_BAD_LENGTH, &[]);
    let version = r.u8().ok_or_else(malformed)?;
    if version != 4 {
        return Err(open_error(
            error::OPEN_UNSUPPORTED_VERSION,
            &4u16.to_be_bytes(),
        ));
    }
    let my_as = r.u16().ok_or_else(malformed)?;
    let hold_time = r.u16().ok_or_else(malformed)?;
    if hold_time == 1 || hold_time == 2 {
        return Err(open_error(error::OPEN_UNACCEPTABLE_HOLD_TIME, &[]));
    }
    let id = r.u32().ok_or_else(malformed)?;
    if id == 0 {
        return Err(open_error(error::OPEN_BAD_IDENTIFIER, &[]));
    }
    let params_len = usize::from(r.u8().ok_or_else(malformed)?);
    // Extended optional parameters (RFC 9072): a non-extended length of 255 whose first
    // parameter type is 255, then a 2-octet length, and 2-octet lengths per parameter.
    let extended = params_len == 255 && r.0.first() == Some(&255);
    let params = if extended {
        r.u8();
        let len = usize::from(r.u16().ok_or_else(malformed)?);
        r.take(len)
    } else {
        r.take(params_len)
    }
    .ok_or_else(|| open_error(0, &[]))?;
    if !r.is_empty() {
        return Err(open_error(0, &[]));
    }
    let mut capabilities = Vec::new();
    let mut params = Reader(params);
    while !params.is_empty() {
        let kind = params.u8().ok_or_else(|| open_error(0, &[]))?;
        let len = if extended {
            params.u16().map(usize::from)
        } else {
            params.u8().map(usize::from)
        }
        .ok_or_else(|| open_error(0, &[]))?;
        let value = params.take(len).ok_or_else(|| open_error(0, &[]))?;
        if kind != 2 {
            // Only capabilities (type 2) exist today; authentication (type 1) is deprecated.
            return Err(open_error(error::OPEN_UNSUPPORTED_PARAMETER, &[]));
        }
        let mut caps = Reader(value);
        while !caps.is_empty() {
            let code = caps.u8().ok_or_else(|| open_error(0, &[]))?;
            let len = usize::from(caps.u8().ok_or_else(|| open_error(0, &[]))?);
            let value = caps.take(len).ok_or_else(|| open_error(0, &[]))?;
            capabilities.push(decode_capability(code, value));
        }
    }
    let asn = capabilities
        .iter()
        .find_map(|c| match c {
            Capability::FourOctetAs(asn) => Some(*asn),
            _ => None,
        })
        .unwrap_or(u32::from(my_as));
    if asn == 0 {
        return Err(open_error(error::OPEN_BAD_PEER_AS, &[]));
    }
    Ok(Open {
        asn,
        hold_time,
        router_id: Ipv4Addr::from(id),
        capabilities,
    })
}

/// One capability; a malformed known one is kept as `Unknown` (it then offers nothing).
fn decode_capability(code: u8, value: &[u8]) -> Capability {
    let unknown = || Capability::Unknown {
        code,
        value: value.to_vec(),
    };
    let mut r = Reader(value);
    match code {
        1 if value.len() == 4 => {
            let afi = r.u16().unwrap_or_default();
            r.u8();
            let safi = r.u8().unwrap_or_default();
            Family::of_code(afi, safi).map_or_else(unknown, Capability::Multiprotocol)
        }
        2 if value.is_empty() => Capability::RouteRefresh,
        64 if value.len() >= 2 && (value.len() - 2).is_multiple_of(4) => {
            let head = r.u16().unwrap_or_default();
            let mut families = Vec::new();
            while let (Some(afi), Some(safi), Some(flags)) = (r.u16(), r.u8(), r.u8()) {
                if let Some(family) = Family::of_code(afi, safi) {
                    families.push((family, flags & 0x80 != 0));
                }
            }
            Capability::GracefulRestart {
                restarting: head & 0x8000 != 0,
                restart_time: head & 0x0fff,
                families,
            }
        }
        65 if value.len() == 4 => Capability::FourOctetAs(r.u32().unwrap_or_default()),
        _ => unknown(),
    }
}

/// A prefix in NLRI encoding: a length in bits, then as few octets as hold it. Trailing
/// bits past the length are ignored (RFC 4271 §4.3), so the result has no host bits.
fn read_prefix(r: &mut Reader, family: Family) -> Option<IpNetwork> {
    let bits = r.u8()?;
    let max = match family {
        Family::Ipv4Unicast => 32,
        Family::Ipv6Unicast => 128,
    };
    if bits > max {
        return None;
    }
    let bytes = r.take(usize::from(bits).div_ceil(8))?;
    let net = match family {
        Family::Ipv4Unicast => {
            let mut octets = [0u8; 4];
            octets[..bytes.len()].copy_from_slice(bytes);
            let net = Ipv4Network::new(Ipv4Addr::from(octets), bits).ok()?;
            IpNetwork::V4(Ipv4Network::new(net.network(), bits).ok()?)
        }
        Family::Ipv6Unicast => {
            let mut octets = [0u8; 16];
            octets[..bytes.len()].copy_from_slice(bytes);
            let net = Ipv6Network::new(Ipv6Addr::from(octets), bits).ok()?;
            IpNetwork::V6(Ipv6Network::new(net.network(), bits).ok()?)
        }
    };
    Some(net)
}

fn read_prefixes(bytes: &[u8], family: Family) -> Option<Vec<IpNetwork>> {
    let mut r = Reader(bytes);
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(read_prefix(&mut r, family)?);
    }
    Some(out)
}

fn v4(nets: Vec<IpNetwork>) -> Vec<Ipv4Network> {
    nets.into_iter()
        .filter_map(|n| match n {
            IpNetwork::V4(n) => Some(n),
            IpNetwork::V6(_) => None,
        })
        .collect()
}

fn update_error(subcode: u8) -> DecodeError {
    Notification::new(error::UPDATE, subcode, &[])
}

fn decode_update(body: &[u8], four_octet_as: bool) -> Result<Update, DecodeError> {
    let mut r = Reader(body);
    let malformed = || update_error(error::UPDATE_MALFORMED_ATTRIBUTE_LIST);
    let withdrawn_len = usize::from(r.u16().ok_or_else(malformed)?);
    let withdrawn = r.take(withdrawn_len).ok_or_else(malformed)?;
    let attributes_len = usize::from(r.u16().ok_or_else(malformed)?);
    let attributes = r.take(attributes_len).ok_or_else(malformed)?;
    let nlri = r.0;
    let invalid_network = || update_error(error::UPDATE_INVALID_NETWORK_FIELD);
    let mut update = Update {
        withdrawn: v4(read_prefixes(withdrawn, Family::Ipv4Unicast).ok_or_else(invalid_network)?),
        announced: v4(read_prefixes(nlri, Family::Ipv4Unicast).ok_or_else(invalid_network)?),
        ..Update::default()
    };
    let mut seen = [false; 256];
    let mut a = Reader(attributes);
    while !a.is_empty() {
        // An attribute header or length that runs past the attribute section leaves the
        // NLRI unfindable: the session is reset (RFC 7606 §4).
        let flags = a.u8().ok_or_else(malformed)?;
        let code = a.u8().ok_or_else(malformed)?;
        let len = if flags & 0x10 != 0 {
            a.u16().map(usize::from)
        } else {
            a.u8().map(usize::from)
        }
        .ok_or_else(malformed)?;
        let value = a.take(len).ok_or_else(malformed)?;
        if std::mem::replace(&mut seen[usize::from(code)], true) {
            // A repeated MP_REACH / MP_UNREACH leaves which prefixes it meant unknowable;
            // other repeats: all but the first are discarded (RFC 7606 §3 g).
            if code == 14 || code == 15 {
                return Err(malformed());
            }
            continue;
        }
        match decode_attribute(flags, code, value, four_octet_as) {
            Ok(attribute) => update.attributes.push(attribute),
            Err(Severity::TreatAsWithdraw) => update.treat_as_withdraw = true,
            Err(Severity::ResetSession) => return Err(malformed()),
        }
    }
    // Announced prefixes need ORIGIN, AS_PATH and (IPv4 in the body) NEXT_HOP; missing
    // ones make the UPDATE treat-as-withdraw (RFC 7606 §3 d).
    let has = |code: usize| seen[code];
    let mp_announces = update
        .attributes
        .iter()
        .any(|a| matches!(a, Attribute::MpReach { announced, .. } if !announced.is_empty()));
    let complete = has(1) && has(2);
    let body_complete = update.announced.is_empty() || (complete && has(3));
    let mp_incomplete = mp_announces && !complete;
    if !body_complete || mp_incomplete {
        update.treat_as_withdraw = true;
    }
    Ok(update)
}

/// What an attribute error costs the session (RFC 7606).
enum Severity {
    TreatAsWithdraw,
    ResetSession,
}

fn decode_attribute(
    flags: u8,
    code: u8,
    value: &[u8],
    four_octet_as: bool,
) -> Result<Attribute, Severity> {
    let mut r = Reader(value);
    let exact = |n: usize| {
        if value.len() == n {
            Ok(())
        } else {
            Err(Severity::TreatAsWithdraw)
        }
    };
    Ok(match code {
        1 => {
            exact(1)?;
            Attribute::Origin(match value[0] {
                0 => Origin::Igp,
                1 => Origin::Egp,
                2 => Origin::Incomplete,
                _ => return Err(Severity::TreatAsWithdraw),
            })
        }
        2 => {
            let width = if four_octet_as { 4 } else { 2 };
            let mut path = Vec::new();
            while !r.is_empty() {
                let kind = r.u8().ok_or(Severity::TreatAsWithdraw)?;
                let count = usize::from(r.u8().ok_or(Severity::TreatAsWithdraw)?);
                if !(1..=4).contains(&kind) || count == 0 {
                    return Err(Severity::TreatAsWithdraw);
                }
                let numbers = r.take(count * width).ok_or(Severity::TreatAsWithdraw)?;
                path.extend(numbers.chunks_exact(width).map(|n| match n {
                    [a, b] => u32::from(u16::from_be_bytes([*a, *b])),
                    [a, b, c, d] => u32::from_be_bytes([*a, *b, *c, *d]),
                    _ => 0,
                }));
            }
            Attribute::AsPath(path)
        }
        3 => {
            exact(4)?;
            Attribute::NextHop(Ipv4Addr::from(r.u32().unwrap_or_default()))
        }
        4 => {
            exact(4)?;
            Attribute::MultiExitDisc(r.u32().unwrap_or_default())
        }
        5 => {
            exact(4)?;
            Attribute::LocalPref(r.u32().unwrap_or_default())
        }
        8 => {
            if !value.len().is_multiple_of(4) {
                return Err(Severity::TreatAsWithdraw);
            }
            Attribute::Communities(
                value
                    .chunks_exact(4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        }
        32 => {
            if value.is_empty() || !value.len().is_multiple_of(12) {
                return Err(Severity::TreatAsWithdraw);
            }
            Attribute::LargeCommunities(
                value
                    .chunks_exact(12)
                    .map(|c| {
                        let word =
                            |i: usize| u32::from_be_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
                        [word(0), word(4), word(8)]
                    })
                    .collect(),
            )
        }
        // Errors in the multiprotocol attributes leave their prefixes unknown: reset.
        14 => {
            let afi = r.u16().ok_or(Severity::ResetSession)?;
            let safi = r.u8().ok_or(Severity::ResetSession)?;
            let nh_len = usize::from(r.u8().ok_or(Severity::ResetSession)?);
            let nh = r.take(nh_len).ok_or(Severity::ResetSession)?;
            r.u8().ok_or(Severity::ResetSession)?;
            let Some(family) = Family::of_code(afi, safi) else {
                return Ok(Attribute::Unknown {
                    flags,
                    code,
                    value: value.to_vec(),
                });
            };
            let next_hops = match (family, nh.len()) {
                (Family::Ipv4Unicast, 4) => vec![IpAddr::from([nh[0], nh[1], nh[2], nh[3]])],
                (Family::Ipv6Unicast, 16 | 32) => nh
                    .chunks_exact(16)
                    .map(|c| {
                        let mut o = [0u8; 16];
                        o.copy_from_slice(c);
                        IpAddr::from(o)
                    })
                    .collect(),
                _ => return Err(Severity::ResetSession),
            };
            let announced = read_prefixes(r.0, family).ok_or(Severity::ResetSession)?;
            Attribute::MpReach {
                family,
                next_hops,
                announced,
            }
        }
        15 => {
            let afi = r.u16().ok_or(Severity::ResetSession)?;
            let safi = r.u8().ok_or(Severity::ResetSession)?;
            let Some(family) = Family::of_code(afi, safi) else {
                return Ok(Attribute::Unknown {
                    flags,
                    code,
                    value: value.to_vec(),
                });
            };
            let withdrawn = read_prefixes(r.0, family).ok_or(Severity::ResetSession)?;
            Attribute::MpUnreach { family, withdrawn }
        }
        _ => Attribute::Unknown {
            flags,
            code,
            value: value.to_vec(),
        },
    })
}

/// Builds messages. Herald always offers 4-octet AS numbers and requires them of a peer,
/// so AS_PATH is encoded with 4 octets an AS.
pub fn encode(message: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(&[0, 0]);
    match message {
        Message::Open(open) => {
            out.push(1);
            out.push(4);
            let my_as = u16::try_from(open.asn).unwrap_or(AS_TRANS);
            out.extend_from_slice(&my_as.to_be_bytes());
            out.extend_from_slice(&open.hold_time.to_be_bytes());
            out.extend_from_slice(&open.router_id.octets());
            let mut caps = Vec::new();
            for cap in &open.capabilities {
                encode_capability(cap, &mut caps);
            }
            // One optional parameter holding every capability.
            out.push(u8::try_from(caps.len() + 2).unwrap_or(u8::MAX));
            out.push(2);
            out.push(u8::try_from(caps.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(&caps);
        }
        Message::Update(update) => {
            out.push(2);
            let mut withdrawn = Vec::new();
            for net in &update.withdrawn {
                write_prefix(&IpNetwork::V4(*net), &mut withdrawn);
            }
            out.extend_from_slice(&(withdrawn.len() as u16).to_be_bytes());
            out.extend_from_slice(&withdrawn);
            let mut attributes = Vec::new();
            for attribute in &update.attributes {
                encode_attribute(attribute, &mut attributes);
            }
            out.extend_from_slice(&(attributes.len() as u16).to_be_bytes());
            out.extend_from_slice(&attributes);
            for net in &update.announced {
                write_prefix(&IpNetwork::V4(*net), &mut out);
            }
        }
        Message::Notification(n) => {
            out.push(3);
            out.push(n.code);
            out.push(n.subcode);
            out.extend_from_slice(&n.data);
        }
        Message::Keepalive => out.push(4),
        Message::RouteRefresh(family) => {
            out.push(5);
            let (afi, safi) = family.code();
            out.extend_from_slice(&afi.to_be_bytes());
            out.push(0);
            out.push(safi);
        }
    }
    let length = out.len() as u16;
    out[16..18].copy_from_slice(&length.to_be_bytes());
    out
}

fn encode_capability(cap: &Capability, out: &mut Vec<u8>) {
    let mut value = Vec::new();
    let code = match cap {
        Capability::Multiprotocol(family) => {
            let (afi, safi) = family.code();
            value.extend_from_slice(&afi.to_be_bytes());
            value.push(0);
            value.push(safi);
            1
        }
        Capability::RouteRefresh => 2,
        Capability::GracefulRestart {
            restarting,
            restart_time,
            families,
        } => {
            let head = (restart_time & 0x0fff) | if *restarting { 0x8000 } else { 0 };
            value.extend_from_slice(&head.to_be_bytes());
            for (family, forwarding) in families {
                let (afi, safi) = family.code();
                value.extend_from_slice(&afi.to_be_bytes());
                value.push(safi);
                value.push(if *forwarding { 0x80 } else { 0 });
            }
            64
        }
        Capability::FourOctetAs(asn) => {
            value.extend_from_slice(&asn.to_be_bytes());
            65
        }
        Capability::Unknown { code, value: v } => {
            value.extend_from_slice(v);
            *code
        }
    };
    out.push(code);
    out.push(u8::try_from(value.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(&value);
}

fn write_prefix(net: &IpNetwork, out: &mut Vec<u8>) {
    let bits = net.prefix();
    let octets: Vec<u8> = match net.network() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    out.push(bits);
    out.extend_from_slice(&octets[..usize::from(bits).div_ceil(8)]);
}

fn encode_attribute(attribute: &Attribute, out: &mut Vec<u8>) {
    const OPTIONAL: u8 = 0x80;
    const TRANSITIVE: u8 = 0x40;
    let mut value = Vec::new();
    let (flags, code) = match attribute {
        Attribute::Origin(origin) => {
            value.push(*origin as u8);
            (TRANSITIVE, 1)
        }
        Attribute::AsPath(path) => {
            // AS_SEQUENCE segments of at most 255 numbers.
            for chunk in path.chunks(255) {
                value.push(2);
                value.push(chunk.len() as u8);
                for asn in chunk {
                    value.extend_from_slice(&asn.to_be_bytes());
                }
            }
            (TRANSITIVE, 2)
        }
        Attribute::NextHop(nh) => {
            value.extend_from_slice(&nh.octets());
            (TRANSITIVE, 3)
        }
        Attribute::MultiExitDisc(med) => {
            value.extend_from_slice(&med.to_be_bytes());
            (OPTIONAL, 4)
        }
        Attribute::LocalPref(pref) => {
            value.extend_from_slice(&pref.to_be_bytes());
            (TRANSITIVE, 5)
        }
        Attribute::Communities(communities) => {
            for c in communities {
                value.extend_from_slice(&c.to_be_bytes());
            }
            (OPTIONAL | TRANSITIVE, 8)
        }
        Attribute::LargeCommunities(communities) => {
            for c in communities {
                for word in c {
                    value.extend_from_slice(&word.to_be_bytes());
                }
            }
            (OPTIONAL | TRANSITIVE, 32)
        }
        Attribute::MpReach {
            family,
            next_hops,
            announced,
        } => {
            let (afi, safi) = family.code();
            value.extend_from_slice(&afi.to_be_bytes());
            value.push(safi);
            let mut nh = Vec::new();
            for hop in next_hops {
                match hop {
                    IpAddr::V4(a) => nh.extend_from_slice(&a.octets()),
                    IpAddr::V6(a) => nh.extend_from_slice(&a.octets()),
                }
            }
            value.push(nh.len() as u8);
            value.extend_from_slice(&nh);
            value.push(0);
            for net in announced {
                write_prefix(net, &mut value);
            }
            (OPTIONAL, 14)
        }
        Attribute::MpUnreach { family, withdrawn } => {
            let (afi, safi) = family.code();
            value.extend_from_slice(&afi.to_be_bytes());
            value.push(safi);
            for net in withdrawn {
                write_prefix(net, &mut value);
            }
            (OPTIONAL, 15)
        }
        Attribute::Unknown {
            flags,
            code,
            value: v,
        } => {
            value.extend_from_slice(v);
            (*flags & !0x10, *code)
        }
    };
    if value.len() > 255 {
        out.push(flags | 0x10);
        out.push(code);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    } else {
        out.push(flags);
        out.push(code);
        out.push(value.len() as u8);
    }
    out.extend_from_slice(&value);
}

#[cfg(test)]
mod tests;
