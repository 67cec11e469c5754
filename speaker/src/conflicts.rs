//! Another host answering for an IP this node announces: the classic trap is kube-proxy in
//! IPVS mode without `strictARP`, which binds every Service IP to a dummy interface on every
//! node, so their kernels answer ARP for it too; or the address configured on some host.
//! Clients then flip between MACs and connections break at random, and nothing says why.
//!
//! The speaker probes each IP it announces (an ARP probe or a DAD solicitation, which any
//! holder of the address answers) now and then, and watches every claim on the link. A
//! foreign MAC claiming an owned IP twice, at least `CONFIRM` apart, and not within `SETTLE` of
//! this node gaining the IP (a handover's last announcements from the previous owner), is a
//! conflict; it is cleared when the IP has not been claimed by another MAC for `FORGET`, or
//! when this node no longer announces the IP. Pure: the announcer feeds it.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::packet::{Claim, MacAddr};

/// Claims this soon after gaining an IP are the previous owner's tail, not a conflict.
pub const SETTLE: Duration = Duration::from_secs(3);
/// Two sightings at least this far apart confirm a conflict.
pub const CONFIRM: Duration = Duration::from_secs(1);
/// A conflict not seen again for this long is over.
pub const FORGET: Duration = Duration::from_secs(60);
/// How often each announced IP is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(10);
/// At most this many probes per call of `due` (the announcer calls it every 200 ms: 50 a
/// second per interface, so 10,000 IPs are each probed every 200 s instead).
pub const PROBES_PER_TICK: usize = 10;

/// A confirmed conflict: `mac` (not this node's) answers for `ip`, which this node announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    pub ip: IpAddr,
    pub mac: MacAddr,
}

#[derive(Debug, Clone)]
struct Sighting {
    mac: MacAddr,
    first: Instant,
    last: Instant,
}

#[derive(Debug, Default)]
pub struct ForeignAnswers {
    /// When this node started announcing each IP it announces.
    gained: BTreeMap<IpAddr, Instant>,
    /// When each announced IP is next probed, ordered by that time: a tick takes the first
    /// few due instead of scanning every announced IP (five times a second, 10,000 IPs would
    /// be 50,000 comparisons a second for 50 probes).
    next_probes: BTreeSet<(Instant, IpAddr)>,
    sightings: BTreeMap<IpAddr, Sighting>,
}

impl ForeignAnswers {
    /// The IPs this node announces now. Forgets everything about the others.
    pub fn owned(&mut self, owned: &BTreeSet<IpAddr>, now: Instant) {
        self.gained.retain(|ip, _| owned.contains(ip));
        self.next_probes.retain(|(_, ip)| owned.contains(ip));
        self.sightings.retain(|ip, _| owned.contains(ip));
        for ip in owned {
            if let Entry::Vacant(gained) = self.gained.entry(*ip) {
                gained.insert(now);
                // The first probe once the handover has settled.
                let first = now + SETTLE + Duration::from_millis(500);
                self.next_probes.insert((first, *ip));
            }
        }
    }

    /// A claim seen on the link.
    pub fn saw(&mut self, claim: Claim, mine: MacAddr, now: Instant) {
        if claim.mac == mine {
            return;
        }
        let Some(gained) = self.gained.get(&claim.ip) else {
            return;
        };
        if now.saturating_duration_since(*gained) < SETTLE {
            return;
        }
        match self.sightings.get_mut(&claim.ip) {
            Some(s) if s.mac == claim.mac => s.last = now,
            // Another MAC than before: start over with it.
            _ => {
                self.sightings.insert(
                    claim.ip,
                    Sighting {
                        mac: claim.mac,
                        first: now,
                        last: now,
                    },
                );
            }
        }
    }

    /// The IPs to probe now (at most `PROBES_PER_TICK`, longest due first).
    pub fn due(&mut self, now: Instant) -> Vec<IpAddr> {
        let mut due = Vec::new();
        while due.len() < PROBES_PER_TICK
            && let Some(&(at, ip)) = self.next_probes.first()
            && at <= now
        {
            self.next_probes.pop_first();
            due.push(ip);
        }
        for ip in &due {
            self.next_probes.insert((now + PROBE_EVERY, *ip));
        }
        due
    }

    /// The conflicts now: confirmed and not forgotten.
    pub fn conflicts(&mut self, now: Instant) -> BTreeSet<Conflict> {
        self.sightings
            .retain(|_, s| now.saturating_duration_since(s.last) < FORGET);
        self.sightings
            .iter()
            .filter(|(_, s)| s.last.saturating_duration_since(s.first) >= CONFIRM)
            .map(|(ip, s)| Conflict {
                ip: *ip,
                mac: s.mac,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINE: MacAddr = MacAddr(2, 0, 0, 0, 0, 1);
    const OTHER: MacAddr = MacAddr(2, 0, 0, 0, 0, 9);

    fn vip() -> IpAddr {
        "192.0.2.100".parse().expect("ip")
    }

    fn owning(t0: Instant) -> ForeignAnswers {
        let mut f = ForeignAnswers::default();
        f.owned(&BTreeSet::from([vip()]), t0);
        f
    }

    fn claim(mac: MacAddr) -> Claim {
        Claim { ip: vip(), mac }
    }

    #[test]
    fn a_foreign_mac_seen_twice_a_second_apart_is_a_conflict() {
        let t0 = Instant::now();
        let mut f = owning(t0);
        let t = t0 + SETTLE + Duration::from_secs(1);
        f.saw(claim(OTHER), MINE, t);
        assert!(f.conflicts(t).is_empty(), "one sighting is not enough");
        f.saw(claim(OTHER), MINE, t + CONFIRM);
        assert_eq!(
            f.conflicts(t + CONFIRM),
            BTreeSet::from([Conflict {
                ip: vip(),
                mac: OTHER
            }])
        );
        // Not seen again: over after FORGET.
        assert!(f.conflicts(t + CONFIRM + FORGET).is_empty());
    }

    #[test]
    fn own_frames_a_handovers_tail_and_other_ips_are_no_conflict() {
        let t0 = Instant::now();
        let mut f = owning(t0);
        // The previous owner's announcements right after the takeover.
        f.saw(claim(OTHER), MINE, t0 + Duration::from_millis(10));
        f.saw(claim(OTHER), MINE, t0 + Duration::from_secs(2));
        // This node's own frames, looped back.
        let later = t0 + SETTLE + Duration::from_secs(5);
        f.saw(claim(MINE), MINE, later);
        f.saw(claim(MINE), MINE, later + CONFIRM);
        // An IP this node does not announce.
        let elsewhere = Claim {
            ip: "192.0.2.101".parse().expect("ip"),
            mac: OTHER,
        };
        f.saw(elsewhere, MINE, later);
        f.saw(elsewhere, MINE, later + CONFIRM);
        assert!(f.conflicts(later + CONFIRM).is_empty());
    }

    #[test]
    fn losing_the_ip_clears_its_conflict() {
        let t0 = Instant::now();
        let mut f = owning(t0);
        let t = t0 + SETTLE + Duration::from_secs(1);
        f.saw(claim(OTHER), MINE, t);
        f.saw(claim(OTHER), MINE, t + CONFIRM);
        assert_eq!(f.conflicts(t + CONFIRM).len(), 1);
        f.owned(&BTreeSet::new(), t + CONFIRM);
        assert!(f.conflicts(t + CONFIRM).is_empty());
        assert!(
            f.due(t + FORGET).is_empty(),
            "no probes for IPs not announced"
        );
    }

    #[test]
    fn probes_start_after_the_settle_time_and_are_paced() {
        let t0 = Instant::now();
        let mut f = ForeignAnswers::default();
        let many: BTreeSet<IpAddr> = (0..25u8)
            .map(|i| IpAddr::from([192, 0, 2, 100 + i]))
            .collect();
        f.owned(&many, t0);
        assert!(f.due(t0 + SETTLE).is_empty());
        let t = t0 + SETTLE + Duration::from_secs(1);
        assert_eq!(f.due(t).len(), PROBES_PER_TICK);
        assert_eq!(f.due(t).len(), PROBES_PER_TICK);
        assert_eq!(f.due(t).len(), 5);
        assert!(f.due(t).is_empty());
        assert_eq!(f.due(t + PROBE_EVERY).len(), PROBES_PER_TICK);
    }

    #[test]
    fn every_announced_ip_is_probed_once_a_round_and_others_never() {
        let t0 = Instant::now();
        let mut f = ForeignAnswers::default();
        let ip = |i: u8| IpAddr::from([192, 0, 2, i]);
        let first: BTreeSet<IpAddr> = (1..=25).map(ip).collect();
        f.owned(&first, t0);
        let drain = |f: &mut ForeignAnswers, t: Instant| {
            let mut probed = Vec::new();
            loop {
                let due = f.due(t);
                if due.is_empty() {
                    return probed;
                }
                probed.extend(due);
            }
        };
        let round1 = t0 + SETTLE + Duration::from_secs(1);
        assert_eq!(
            drain(&mut f, round1),
            first.iter().copied().collect::<Vec<_>>()
        );
        // Five IPs lost, two gained, one owned set given again unchanged (no second probe).
        let later: BTreeSet<IpAddr> = (6..=27).map(ip).collect();
        f.owned(&later, round1);
        f.owned(&later, round1);
        let round2 = round1 + PROBE_EVERY;
        let probed = drain(&mut f, round2);
        let mut expected: Vec<IpAddr> = (6..=25).map(ip).collect();
        // The gained ones are due once their handover settled, before the others' round.
        expected.splice(0..0, [ip(26), ip(27)]);
        assert_eq!(probed, expected);
        assert!(drain(&mut f, round2 + PROBE_EVERY - Duration::from_millis(1)).is_empty());
    }
}
