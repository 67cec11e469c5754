//! Which speakers are alive. Every speaker sends a small authenticated heartbeat over UDP to
//! the nodes of its segment (those competing for the same IPs, `plan::segment`) every
//! `interval` and to every other node once per 10-second round (`gossip::FAR_ROUND`); a
//! segment member not heard from for `timeout` is dead, a node heard only in rounds after
//! three missed rounds (`gossip::far_timeout`), and a speaker that stops cleanly says
//! "leaving" so its IPs move at once. (`--segmented-liveness=false`: every node every
//! interval.) This is direct heartbeating rather than SWIM: detection time is one timeout
//! and independent of gossip rounds, at the price of one datagram per segment member per
//! interval. Message coding and the member table are pure; sockets live in `gossip`.
//!
//! Replays: a heartbeat carries the sender's incarnation (random, drawn at start) and a
//! counter. A receiver keeps the highest counter of the current incarnation and the recent
//! incarnations it has seen, and refuses anything not newer: no clock is involved, so a
//! speaker whose clock is behind (no RTC, a VM restored, a stepped clock) is heard like
//! any other.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use herald_api::gossip::{ACCEPTED_KEY_FIELD, KEY_FIELD};
use ipnetwork::IpNetwork;
use ring::hmac;

const MAGIC: &[u8; 4] = b"HRLD";
const VERSION: u8 = 2;
const TAG_LEN: usize = 32;
/// Far above any real message; bounds what a receiver reads.
pub const MAX_MESSAGE: usize = 2048;
/// Past incarnations remembered per node (restarts in a row whose heartbeats stay refused).
const RETIRED_INCARNATIONS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Running and a candidate for IPs.
    Alive,
    /// Stopping: its IPs move at once.
    Leaving,
    /// Running but not taking IPs: settling after a start, or isolated (it cannot hear its
    /// peers). The others keep its IPs until it says `Alive`, so a rejoin makes before it
    /// breaks.
    Standby,
}

/// One heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub kind: Kind,
    pub node: String,
    /// Drawn at random when the sender starts: a new incarnation is a restart.
    pub incarnation: u64,
    /// Strictly increasing within an incarnation, so a replayed heartbeat changes nothing.
    pub seq: u64,
    /// Subnets the sender can announce on: others prefer on-subnet owners.
    pub subnets: Vec<IpNetwork>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a Herald heartbeat")]
    NotOurs,
    #[error("unsupported heartbeat version {0}")]
    Version(u8),
    #[error("heartbeat fails authentication (wrong or missing memberlist key)")]
    BadTag,
    #[error("malformed heartbeat")]
    Malformed,
}

/// Shortest key accepted: an HMAC-SHA256 key much shorter than this is guessable.
pub const MIN_KEY_LEN: usize = 16;

/// The keys that authenticate heartbeats: one signs (and is accepted); during a rotation a
/// second is accepted too, so speakers that switched and speakers that did not yet still hear
/// each other.
pub struct Keys {
    sign: hmac::Key,
    also_accepted: Option<hmac::Key>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the gossip key is missing (field `{0}`)")]
    Missing(&'static str),
    #[error("the gossip key in field `{field}` has {len} bytes; at least {MIN_KEY_LEN} are needed")]
    TooShort { field: &'static str, len: usize },
}

impl Keys {
    /// `sign` signs and is accepted; `also_accepted` (during a rotation) is accepted too.
    pub fn new(sign: &[u8], also_accepted: Option<&[u8]>) -> Result<Self, KeyError> {
        let check = |field: &'static str, key: &[u8]| {
            if key.len() < MIN_KEY_LEN {
                return Err(KeyError::TooShort {
                    field,
                    len: key.len(),
                });
            }
            Ok(hmac::Key::new(hmac::HMAC_SHA256, key))
        };
        Ok(Self {
            sign: check(KEY_FIELD, sign)?,
            also_accepted: also_accepted
                .filter(|k| !k.is_empty())
                .map(|k| check(ACCEPTED_KEY_FIELD, k))
                .transpose()?,
        })
    }

    /// The keys held in a gossip Secret's data: `key` signs, `acceptedKey` (optional) is
    /// accepted as well.
    pub fn from_secret<'a>(
        mut field: impl FnMut(&str) -> Option<&'a [u8]>,
    ) -> Result<Self, KeyError> {
        let sign = field(KEY_FIELD).ok_or(KeyError::Missing(KEY_FIELD))?;
        Self::new(sign, field(ACCEPTED_KEY_FIELD))
    }

    fn verify(&self, body: &[u8], tag: &[u8]) -> bool {
        std::iter::once(&self.sign)
            .chain(&self.also_accepted)
            .any(|key| hmac::verify(key, body, tag).is_ok())
    }
}

impl Heartbeat {
    pub fn encode(&self, keys: &Keys) -> Vec<u8> {
        let mut out = Vec::with_capacity(72 + self.node.len() + self.subnets.len() * 18);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(match self.kind {
            Kind::Alive => 1,
            Kind::Leaving => 2,
            Kind::Standby => 3,
        });
        out.extend_from_slice(&self.incarnation.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        let name = &self.node.as_bytes()[..self.node.len().min(255)];
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        let subnets = &self.subnets[..self.subnets.len().min(64)];
        out.push(subnets.len() as u8);
        for net in subnets {
            match net.ip() {
                IpAddr::V4(a) => {
                    out.push(4);
                    out.extend_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    out.push(6);
                    out.extend_from_slice(&a.octets());
                }
            }
            out.push(net.prefix());
        }
        let tag = hmac::sign(&keys.sign, &out);
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Checks the tag before reading anything else: an unauthenticated sender learns nothing
    /// and changes nothing.
    pub fn decode(bytes: &[u8], keys: &Keys) -> Result<Self, DecodeError> {
        if bytes.len() < MAGIC.len() + 2 + TAG_LEN || &bytes[..4] != MAGIC {
            return Err(DecodeError::NotOurs);
        }
        if bytes[4] != VERSION {
            return Err(DecodeError::Version(bytes[4]));
        }
        let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        if !keys.verify(body, tag) {
            return Err(DecodeError::BadTag);
        }
        let mut r = Reader(&body[5..]);
        let kind = match r.u8()? {
            1 => Kind::Alive,
            2 => Kind::Leaving,
            3 => Kind::Standby,
            _ => return Err(DecodeError::Malformed),
        };
        let incarnation = r.u64()?;
        let seq = r.u64()?;
        let name_len = usize::from(r.u8()?);
        let node = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| DecodeError::Malformed)?
            .to_owned();
        let count = usize::from(r.u8()?);
        let mut subnets = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            let ip: IpAddr = match r.u8()? {
                4 => <[u8; 4]>::try_from(r.take(4)?)
                    .map_err(|_| DecodeError::Malformed)?
                    .into(),
                6 => <[u8; 16]>::try_from(r.take(16)?)
                    .map_err(|_| DecodeError::Malformed)?
                    .into(),
                _ => return Err(DecodeError::Malformed),
            };
            let net = IpNetwork::new(ip, r.u8()?).map_err(|_| DecodeError::Malformed)?;
            subnets.push(net);
        }
        if !r.0.is_empty() || node.is_empty() {
            return Err(DecodeError::Malformed);
        }
        Ok(Heartbeat {
            kind,
            node,
            incarnation,
            seq,
            subnets,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let bytes = self
            .take(8)?
            .try_into()
            .map_err(|_| DecodeError::Malformed)?;
        Ok(u64::from_be_bytes(bytes))
    }
}

#[derive(Debug, Clone)]
struct Member {
    /// First heard in this incarnation (or since it was last counted dead).
    since: Instant,
    last_seen: Instant,
    /// Running but not taking IPs (`Kind::Standby`).
    standby: bool,
    /// Heard at the segment's pace (its last two heartbeats within a timeout).
    fast: bool,
    /// This incarnation replaced one that was a live candidate, with no silence long enough
    /// to count it dead between them (killed and restarted at once): the IPs it owned were
    /// answered until the moment it died, and a stand-in answers them while it settles.
    replaced: bool,
}

/// What a receiver knows of one sender's incarnations, to refuse replays.
#[derive(Debug, Default)]
struct Incarnations {
    current: u64,
    /// Highest counter seen of the current incarnation.
    high: u64,
    /// Incarnations seen before the current one, newest last.
    retired: VecDeque<u64>,
    /// The current incarnation said it leaves: a heartbeat of it sent after (its heartbeat
    /// thread still ticking while it stops) must not bring it back; only a restart does.
    left: bool,
    /// The subnets its last heartbeat said (empty once it left): a member's, and kept while
    /// it is silent or on standby, so that it stays in the segments it was in
    /// (`Members::remembered`).
    subnets: Vec<IpNetwork>,
}

impl Incarnations {
    /// Whether `(incarnation, seq)` is newer than anything seen; records it if so.
    fn accept(&mut self, incarnation: u64, seq: u64) -> bool {
        if incarnation == self.current {
            if seq <= self.high {
                return false;
            }
        } else if self.retired.contains(&incarnation) {
            return false;
        } else {
            if self.retired.len() == RETIRED_INCARNATIONS {
                self.retired.pop_front();
            }
            self.retired.push_back(self.current);
            self.current = incarnation;
        }
        self.high = seq;
        true
    }
}

/// The live members as heard. `now` is passed in so the logic is testable without waiting.
#[derive(Debug)]
pub struct Members {
    timeout: Duration,
    /// For members that heartbeat this node only now and then (not in its segment).
    far_timeout: Duration,
    members: BTreeMap<String, Member>,
    /// Per node, kept after death so replays stay refused.
    seen: BTreeMap<String, Incarnations>,
    /// Addresses whose datagrams failed authentication, and when last: a speaker with another
    /// key is running there.
    rejected: BTreeMap<IpAddr, Instant>,
}

impl Members {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            far_timeout: timeout,
            members: BTreeMap::new(),
            seen: BTreeMap::new(),
            rejected: BTreeMap::new(),
        }
    }

    /// Members whose heartbeats come further apart than the timeout (they send to this node
    /// only in their rounds to every node: it is not in their segment) count as dead after
    /// `far_timeout` of silence instead.
    pub fn with_far_timeout(mut self, far_timeout: Duration) -> Self {
        self.far_timeout = far_timeout.max(self.timeout);
        self
    }

    /// Whether `(node, incarnation)` has not been heard before: a speaker that (re)started,
    /// to be answered at once so it learns this one's subnets without waiting for a round.
    pub fn is_new(&self, node: &str, incarnation: u64) -> bool {
        self.seen.get(node).is_none_or(|s| s.current != incarnation)
    }

    /// Applies a heartbeat; returns whether the candidates (or a member's subnets) changed.
    pub fn receive(&mut self, hb: Heartbeat, now: Instant) -> bool {
        // A name never heard of costs an entry: bounded by what authenticated senders say.
        let seen = self.seen.entry(hb.node.clone()).or_default();
        let restarted = seen.current != hb.incarnation;
        if !seen.accept(hb.incarnation, hb.seq) || (seen.left && !restarted) {
            return false;
        }
        seen.left = hb.kind == Kind::Leaving;
        let subnets_changed = seen.subnets != hb.subnets;
        if subnets_changed {
            seen.subnets = hb.subnets;
        }
        match hb.kind {
            Kind::Leaving => self.members.remove(&hb.node).is_some(),
            Kind::Alive | Kind::Standby => {
                let standby = hb.kind == Kind::Standby;
                let known = self.members.get(&hb.node);
                // A restart changes who answers too: the restarted speaker settles before it
                // answers, and a stand-in answers for it meanwhile (`plan`).
                let changed =
                    subnets_changed || restarted || known.is_none_or(|m| m.standby != standby);
                // A new incarnation joins anew.
                let since = match known {
                    Some(m) if !restarted => m.since,
                    _ => now,
                };
                // Heartbeats within a timeout of each other: the sender counts this node in
                // its segment, and its silence means death after one timeout.
                let fast = known.is_some_and(|m| {
                    !restarted && now.saturating_duration_since(m.last_seen) <= self.timeout
                });
                let replaced = match known {
                    Some(m) if restarted => !m.standby,
                    Some(m) => m.replaced,
                    None => false,
                };
                self.members.insert(
                    hb.node,
                    Member {
                        since,
                        last_seen: now,
                        standby,
                        fast,
                        replaced,
                    },
                );
                changed
            }
        }
    }

    /// A datagram from `from` failed authentication. Returns whether the last one from there
    /// was longer than a timeout ago (or never): then it is answered, so that a speaker with
    /// another key, which hears this node only now and then, learns at once that it runs.
    pub fn rejected(&mut self, from: IpAddr, now: Instant) -> bool {
        // Bounded: addresses are forgotten a far timeout after their last datagram (expire),
        // long enough to span the rounds in which such a speaker is heard.
        let last = self.rejected.insert(from, now);
        last.is_none_or(|last| now.saturating_duration_since(last) > self.timeout)
    }

    /// Addresses that sent datagrams failing authentication within the last far timeout.
    pub fn rejecting(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.rejected.keys().copied()
    }

    /// Drops members not heard from within the timeout; returns their names.
    /// Forgets the members silent for longer than the timeout; returns each with the time
    /// it was last heard.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, Instant)> {
        let (timeout, far_timeout) = (self.timeout, self.far_timeout);
        let dead: Vec<(String, Instant)> = self
            .members
            .iter()
            .filter(|(_, m)| {
                let limit = if m.fast { timeout } else { far_timeout };
                now.saturating_duration_since(m.last_seen) > limit
            })
            .map(|(n, m)| (n.clone(), m.last_seen))
            .collect();
        for (n, _) in &dead {
            self.members.remove(n);
        }
        let far_stale = |last: &Instant| now.saturating_duration_since(*last) > far_timeout;
        self.rejected.retain(|_, last| !far_stale(last));
        dead
    }

    /// This node itself was not running for a while (`lapse`): silence it could not hear
    /// is no proof of death, and its peers, which counted it dead meanwhile, send to it only
    /// once they hear it again. Every member gets a timeout from `now` to be heard.
    pub fn excuse(&mut self, now: Instant) {
        for member in self.members.values_mut() {
            member.last_seen = member.last_seen.max(now);
        }
    }

    /// Whether `node` is heard (a candidate or on standby).
    #[cfg(test)]
    pub fn hears(&self, node: &str) -> bool {
        self.members.contains_key(node)
    }

    /// A member's subnets (none for a node that is not one).
    pub fn subnets(&self, node: &str) -> &[IpNetwork] {
        self.members
            .get(node)
            .and(self.seen.get(node))
            .map(|s| s.subnets.as_slice())
            .unwrap_or(&[])
    }

    /// The members that take IPs (not on standby).
    pub fn candidates(&self) -> impl Iterator<Item = &str> {
        self.members
            .iter()
            .filter(|(_, m)| !m.standby)
            .map(|(n, _)| n.as_str())
    }

    /// Candidates heard for less than `settle`: a speaker that started (or came back) so
    /// recently does not answer yet.
    pub fn joining(&self, settle: Duration, now: Instant) -> impl Iterator<Item = &str> {
        self.members
            .iter()
            .filter(move |(_, m)| !m.standby && now.saturating_duration_since(m.since) < settle)
            .map(|(n, _)| n.as_str())
    }

    /// Joining members that replaced a live incarnation of themselves (`Member::replaced`).
    pub fn restarting(&self, settle: Duration, now: Instant) -> impl Iterator<Item = &str> {
        self.members
            .iter()
            .filter(move |(_, m)| {
                m.replaced && !m.standby && now.saturating_duration_since(m.since) < settle
            })
            .map(|(n, _)| n.as_str())
    }

    /// Every member heard, on standby or not.
    pub fn heard(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    /// Speakers heard before that are not candidates now (on standby, or silent) and did not
    /// say they leave, with the subnets they last said. Segments keep them: a speaker cut off
    /// for a while is heartbeated (and heartbeats) at the segment's pace as before, so when
    /// it hears again it hears every peer within an interval, not in the next round.
    pub fn remembered(&self) -> impl Iterator<Item = (&str, &[IpNetwork])> {
        self.seen
            .iter()
            .filter(|(node, s)| {
                !s.left
                    && !s.subnets.is_empty()
                    && self.members.get(*node).is_none_or(|m| m.standby)
            })
            .map(|(node, s)| (node.as_str(), s.subnets.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hb(node: &str, seq: u64, kind: Kind) -> Heartbeat {
        Heartbeat {
            kind,
            node: node.into(),
            incarnation: 1,
            seq,
            subnets: vec![
                "192.0.2.0/24".parse().unwrap(),
                "2001:db8::/64".parse().unwrap(),
            ],
        }
    }

    fn key(secret: &[u8]) -> Keys {
        Keys::new(secret, None).unwrap()
    }

    const OLD: &[u8] = b"the old key 0123456789";
    const NEW: &[u8] = b"the new key 0123456789";

    #[test]
    fn peers_are_not_counted_dead_for_silence_this_node_could_not_hear() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut members = Members::new(Duration::from_millis(500));
        members.receive(hb("a", 1, Kind::Alive), at(0));
        members.receive(hb("a", 2, Kind::Alive), at(100));
        // This node was stopped for two seconds: "a" sent nothing it could hear.
        members.excuse(at(2100));
        assert!(members.expire(at(2100)).is_empty());
        assert!(members.hears("a"));
        // A timeout later, still unheard: dead after all.
        assert!(members.expire(at(2500)).is_empty());
        assert_eq!(members.expire(at(2700)), vec![("a".to_owned(), at(2100))]);
    }

    #[test]
    fn round_trip_and_authentication() {
        let key = key(b"the right key 0123456789");
        let msg = hb("node-a", 7, Kind::Alive);
        let bytes = msg.encode(&key);
        assert_eq!(Heartbeat::decode(&bytes, &key), Ok(msg));
        assert_eq!(
            Heartbeat::decode(&bytes, &self::key(b"the wrong key 0123456789")),
            Err(DecodeError::BadTag)
        );
        let mut flipped = bytes.clone();
        flipped[12] ^= 1;
        assert_eq!(Heartbeat::decode(&flipped, &key), Err(DecodeError::BadTag));
        assert_eq!(
            Heartbeat::decode(b"GET / HTTP/1.1", &key),
            Err(DecodeError::NotOurs)
        );
        for len in 0..bytes.len() {
            assert!(Heartbeat::decode(&bytes[..len], &key).is_err());
        }
    }

    /// A rotation in three steps (accept the new key; sign with it, accept the old; drop the
    /// old): at every point, whatever step each speaker has reached, all hear each other.
    #[test]
    fn every_step_of_a_key_rotation_hears_its_neighbouring_steps() {
        let steps = [
            Keys::new(OLD, None).unwrap(),
            Keys::new(OLD, Some(NEW)).unwrap(),
            Keys::new(NEW, Some(OLD)).unwrap(),
            Keys::new(NEW, None).unwrap(),
        ];
        let msg = hb("node-a", 1, Kind::Alive);
        for (i, sender) in steps.iter().enumerate() {
            for (j, receiver) in steps.iter().enumerate() {
                if i.abs_diff(j) <= 1 {
                    // A speaker one step behind or ahead of another: both hear each other.
                    assert!(
                        Heartbeat::decode(&msg.encode(sender), receiver).is_ok(),
                        "{i} -> {j}"
                    );
                }
            }
        }
        // Skipping a step is what breaks: the old key alone does not hear the new one.
        assert!(Heartbeat::decode(&msg.encode(&steps[0]), &steps[3]).is_err());
    }

    #[test]
    fn keys_from_a_secret_are_checked() {
        let data = |fields: &'static [(&'static str, &'static [u8])]| {
            move |name: &str| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
        };
        assert!(Keys::from_secret(data(&[("key", OLD)])).is_ok());
        assert!(Keys::from_secret(data(&[("key", OLD), ("acceptedKey", NEW)])).is_ok());
        // An empty acceptedKey is how a rotation's last step is often written.
        assert!(Keys::from_secret(data(&[("key", OLD), ("acceptedKey", b"")])).is_ok());
        assert_eq!(
            Keys::from_secret(data(&[("acceptedKey", NEW)])).err(),
            Some(KeyError::Missing("key"))
        );
        assert_eq!(
            Keys::from_secret(data(&[("key", b"short")])).err(),
            Some(KeyError::TooShort {
                field: "key",
                len: 5
            })
        );
        assert_eq!(
            Keys::from_secret(data(&[("key", OLD), ("acceptedKey", b"short")])).err(),
            Some(KeyError::TooShort {
                field: "acceptedKey",
                len: 5
            })
        );
    }

    #[test]
    fn members_live_die_leave_and_ignore_replays() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut m = Members::new(ms(500));
        assert!(m.receive(hb("a", 10, Kind::Alive), t0));
        assert!(
            !m.receive(hb("a", 11, Kind::Alive), t0 + ms(100)),
            "no change"
        );
        assert!(m.receive(hb("b", 1, Kind::Alive), t0 + ms(100)));
        assert_eq!(m.seen.get("a").map(|s| s.high), Some(11));
        // a falls silent: dead after the timeout, not before.
        assert!(m.expire(t0 + ms(550)).is_empty());
        m.receive(hb("b", 2, Kind::Alive), t0 + ms(550));
        assert_eq!(m.expire(t0 + ms(650)), vec![("a".to_owned(), t0 + ms(100))]);
        assert!(!m.hears("a") && m.hears("b"));
        // A replayed old heartbeat does not revive it; a new one (restart) does.
        assert!(!m.receive(hb("a", 11, Kind::Alive), t0 + ms(700)));
        assert!(!m.hears("a"));
        assert!(m.receive(hb("a", 12, Kind::Alive), t0 + ms(700)));
        // Leaving removes at once.
        assert!(m.receive(hb("b", 3, Kind::Leaving), t0 + ms(710)));
        assert!(!m.hears("b"));
        assert_eq!(m.heard().count(), 1);
        assert_eq!(m.subnets("a").len(), 2);
    }

    /// A speaker that said it leaves stays gone even if a heartbeat of it arrives after
    /// (its heartbeat thread ticks while it stops); its next start is heard.
    #[test]
    fn a_heartbeat_after_leaving_does_not_bring_a_speaker_back() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut m = Members::new(ms(500));
        m.receive(hb("a", 1, Kind::Alive), t0);
        assert!(m.receive(hb("a", 2, Kind::Leaving), t0 + ms(10)));
        assert!(!m.receive(hb("a", 3, Kind::Alive), t0 + ms(20)));
        assert!(!m.hears("a"));
        let mut restarted = hb("a", 1, Kind::Alive);
        restarted.incarnation = 2;
        assert!(m.receive(restarted, t0 + ms(900)));
        assert!(m.hears("a"));
    }

    /// A speaker killed and restarted within a failure timeout is never silent long enough
    /// to count as dead: its new incarnation must still change the view (it joins anew and
    /// settles, and a stand-in answers for it meanwhile).
    #[test]
    fn a_restart_within_a_failure_timeout_changes_the_view_and_joins_anew() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut m = Members::new(ms(500));
        assert!(m.receive(hb("a", 1, Kind::Alive), t0));
        assert!(
            !m.receive(hb("a", 2, Kind::Alive), t0 + ms(100)),
            "nothing new"
        );
        assert_eq!(m.joining(ms(600), t0 + ms(700)).count(), 0, "settled");
        let mut restarted = hb("a", 1, Kind::Alive);
        restarted.incarnation = 2;
        assert!(m.receive(restarted, t0 + ms(800)), "a restart is a change");
        assert_eq!(m.joining(ms(600), t0 + ms(900)).collect::<Vec<_>>(), ["a"]);
        assert_eq!(
            m.restarting(ms(600), t0 + ms(900)).collect::<Vec<_>>(),
            ["a"]
        );
        // A speaker heard for the first time joins without having replaced anyone.
        assert!(m.receive(hb("b", 1, Kind::Alive), t0 + ms(900)));
        assert_eq!(m.joining(ms(600), t0 + ms(1000)).count(), 2);
        assert_eq!(
            m.restarting(ms(600), t0 + ms(1000)).collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(m.restarting(ms(600), t0 + ms(1400)).count(), 0, "settled");
    }

    #[test]
    fn a_restart_is_heard_whatever_its_clock_and_old_incarnations_stay_refused() {
        let t0 = Instant::now();
        let mut m = Members::new(Duration::from_millis(500));
        let beat = |incarnation, seq| Heartbeat {
            incarnation,
            ..hb("a", seq, Kind::Alive)
        };
        let leave = |incarnation, seq| Heartbeat {
            incarnation,
            ..hb("a", seq, Kind::Leaving)
        };
        assert!(m.receive(beat(900, 5_000), t0));
        assert!(m.receive(leave(900, 5_001), t0));
        // Restarted: a new incarnation counts from 1 (no clock), and is heard at once.
        assert!(m.receive(beat(17, 1), t0), "a restart is heard");
        assert!(m.hears("a"));
        // Gone again; replays of the old incarnation, and of this one's past, change nothing.
        assert!(m.receive(leave(17, 2), t0));
        assert!(!m.receive(beat(900, 5_002), t0), "a retired incarnation");
        assert!(!m.receive(beat(17, 1), t0), "a replayed counter");
        assert!(!m.hears("a"));
        // A heartbeat sent after its leave does not bring it back; its next start does.
        assert!(!m.receive(beat(17, 3), t0));
        assert!(m.receive(beat(18, 1), t0));
    }

    #[test]
    fn standby_members_are_heard_but_take_no_ips() {
        let t0 = Instant::now();
        let mut m = Members::new(Duration::from_millis(500));
        assert!(m.receive(hb("a", 1, Kind::Standby), t0));
        assert!(m.receive(hb("b", 1, Kind::Alive), t0));
        assert_eq!(m.candidates().collect::<Vec<_>>(), ["b"]);
        assert_eq!(m.heard().collect::<Vec<_>>(), ["a", "b"]);
        // Standby to alive is a change (the others hand its IPs back then, not before).
        assert!(m.receive(hb("a", 2, Kind::Alive), t0));
        assert_eq!(m.candidates().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn a_member_is_joining_for_its_settle_time_after_each_start() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut m = Members::new(ms(500));
        m.receive(hb("a", 1, Kind::Alive), t0);
        assert_eq!(m.joining(ms(600), t0 + ms(500)).collect::<Vec<_>>(), ["a"]);
        m.receive(hb("a", 2, Kind::Alive), t0 + ms(500));
        assert_eq!(m.joining(ms(600), t0 + ms(600)).count(), 0);
        // Restarted (a new incarnation): joining again.
        let restart = Heartbeat {
            incarnation: 2,
            ..hb("a", 1, Kind::Alive)
        };
        m.receive(restart, t0 + ms(700));
        assert_eq!(m.joining(ms(600), t0 + ms(800)).collect::<Vec<_>>(), ["a"]);
    }

    /// A member heard at the segment's pace dies after one timeout of silence; one heard only
    /// in rounds to every node (outside the segment) after the far timeout.
    #[test]
    fn segment_members_die_after_a_timeout_far_ones_after_the_far_timeout() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut m = Members::new(ms(500)).with_far_timeout(ms(30_000));
        for (i, at) in [0, 100, 200].into_iter().enumerate() {
            m.receive(hb("near", i as u64 + 1, Kind::Alive), t0 + ms(at));
        }
        for (i, at) in [0, 10_000, 20_000].into_iter().enumerate() {
            m.receive(hb("far", i as u64 + 1, Kind::Alive), t0 + ms(at));
        }
        assert!(m.is_new("other", 1) && !m.is_new("far", 1) && m.is_new("far", 2));
        // 20.6 s: near has been silent since 0.2 s, far heard at 20 s.
        let dead: Vec<String> = m.expire(t0 + ms(20_600)).into_iter().map(|d| d.0).collect();
        assert_eq!(dead, ["near"]);
        assert!(
            m.expire(t0 + ms(49_000)).is_empty(),
            "far died before its far timeout"
        );
        let dead: Vec<String> = m.expire(t0 + ms(50_100)).into_iter().map(|d| d.0).collect();
        assert_eq!(dead, ["far"]);
    }

    /// Speakers that went silent or stand by are remembered with their last subnets (they
    /// stay in segments); live candidates are not (they are members), nor speakers that
    /// said they leave.
    #[test]
    fn silent_and_standby_speakers_are_remembered_until_they_leave() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut m = Members::new(ms(500));
        m.receive(hb("silent", 1, Kind::Alive), t0);
        m.receive(hb("standby", 1, Kind::Standby), t0);
        m.receive(hb("live", 1, Kind::Alive), t0 + ms(600));
        m.receive(hb("leaves", 1, Kind::Alive), t0);
        m.receive(
            Heartbeat {
                subnets: Vec::new(),
                ..hb("leaves", 2, Kind::Leaving)
            },
            t0 + ms(100),
        );
        m.receive(hb("standby", 2, Kind::Standby), t0 + ms(600));
        assert_eq!(
            m.expire(t0 + ms(700))
                .into_iter()
                .map(|d| d.0)
                .collect::<Vec<_>>(),
            ["silent"]
        );
        let remembered: Vec<(&str, usize)> = m.remembered().map(|(n, s)| (n, s.len())).collect();
        assert_eq!(remembered, [("silent", 2), ("standby", 2)]);
        // Heard again as a candidate: a member, no longer only remembered.
        m.receive(hb("silent", 2, Kind::Alive), t0 + ms(800));
        assert_eq!(
            m.remembered().map(|(n, _)| n).collect::<Vec<_>>(),
            ["standby"]
        );
    }

    #[test]
    fn rejected_senders_are_remembered_for_a_far_timeout_and_answered_once_a_timeout() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut m = Members::new(ms(500)).with_far_timeout(ms(2_000));
        let from: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(m.rejected(from, t0), "the first is answered");
        assert!(!m.rejected(from, t0 + ms(100)), "not a flood of answers");
        assert!(
            m.rejected(from, t0 + ms(700)),
            "answered again a timeout later"
        );
        m.expire(t0 + ms(2_600));
        assert_eq!(m.rejecting().collect::<Vec<_>>(), [from]);
        m.expire(t0 + ms(2_800));
        assert_eq!(m.rejecting().count(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5_000))]
        /// Datagrams from the network never panic the decoder, authenticated or not.
        #[test]
        fn random_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let key = key(OLD);
            let _ = Heartbeat::decode(&bytes, &key);
            // Also with a valid tag over random content: the parser behind the tag is safe.
            let mut signed = b"HRLD\x02".to_vec();
            signed.extend_from_slice(&bytes);
            let tag = hmac::sign(&key.sign, &signed);
            signed.extend_from_slice(tag.as_ref());
            let _ = Heartbeat::decode(&signed, &key);
        }
    }
}
