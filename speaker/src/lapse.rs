//! Whether this speaker ran too late for its peers to hear it. A speaker not scheduled for
//! longer than the failure timeout (a stopped VM, a node starved of CPU, a frozen cgroup)
//! sends no heartbeat meanwhile, so its peers count it dead and take its IPs over; when it
//! runs again it still believes it owns them and would answer beside the peer that took them
//! over. So a heartbeat sent more than a timeout after the previous one marks a lapse, and
//! for a while after it this speaker holds back: it counts itself as joining (it answers only
//! IPs nobody else can, `plan`) and heartbeats as on standby, so its peers keep its IPs. Nor
//! does it count its peers dead for the silence it could not hear (`Members::excuse`): they
//! stopped sending to it when they counted it dead, and start again once they hear it.
//!
//! A node starved of CPU lapses again and again: taking its IPs back after each lapse would
//! move them to and fro, answered late or twice at each move. So each lapse within
//! `REMEMBERED` of the previous doubles the hold, from a settle time up to `MAX_HOLD`: the IPs
//! stay with a healthy node until this one has run on time for that long. Pure.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Lapses this close together count as one episode: each doubles the hold.
pub const REMEMBERED: Duration = Duration::from_secs(60);
/// The longest hold after a lapse.
pub const MAX_HOLD: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Lapse {
    /// When the last heartbeat went out.
    last_sent: Option<Instant>,
    /// When the recent lapses ended (the first heartbeat after each), oldest first.
    lapses: VecDeque<Instant>,
}

impl Lapse {
    /// A heartbeat goes out at `now`. Returns how long none went out when that was longer
    /// than `timeout`: the peers have counted this speaker dead meanwhile.
    pub fn sent(&mut self, now: Instant, timeout: Duration) -> Option<Duration> {
        let gap = self
            .last_sent
            .replace(now)
            .map(|last| now.saturating_duration_since(last))
            .filter(|gap| *gap > timeout)?;
        // Only the lapses of this episode matter; a lapse long ago does not lengthen this one.
        if self
            .lapses
            .back()
            .is_some_and(|last| now.saturating_duration_since(*last) > REMEMBERED)
        {
            self.lapses.clear();
        }
        self.lapses.push_back(now);
        // Bounded: past this many, the hold is at its longest anyway.
        while self.lapses.len() > 8 {
            self.lapses.pop_front();
        }
        Some(gap)
    }

    /// How long this speaker holds back after its last lapse: `settle`, doubled for each
    /// earlier lapse of the episode, at most `MAX_HOLD`.
    pub fn hold(&self, settle: Duration) -> Duration {
        let doublings = self.lapses.len().saturating_sub(1).min(16) as u32;
        settle
            .saturating_mul(1 << doublings)
            .min(MAX_HOLD.max(settle))
    }

    /// Whether this speaker holds back at `now`: its last lapse ended less than the hold
    /// ago.
    pub fn rejoining(&self, now: Instant, settle: Duration) -> bool {
        self.lapses
            .back()
            .is_some_and(|at| now.saturating_duration_since(*at) < self.hold(settle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(500);
    const SETTLE: Duration = Duration::from_millis(600);

    #[test]
    fn heartbeats_late_past_the_timeout_make_the_speaker_rejoin_for_a_settle_time() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut lapse = Lapse::default();
        // The first heartbeat of a speaker that just started is no lapse: its peers do not
        // know it yet, and their own joining rule applies.
        assert_eq!(lapse.sent(at(0), TIMEOUT), None);
        assert!(!lapse.rejoining(at(0), SETTLE));
        // On time, and late but within the timeout: its peers still hear it.
        assert_eq!(lapse.sent(at(100), TIMEOUT), None);
        assert_eq!(lapse.sent(at(550), TIMEOUT), None);
        assert!(!lapse.rejoining(at(550), SETTLE));
        // Stalled for 1.2 s: counted dead by its peers.
        assert_eq!(
            lapse.sent(at(1750), TIMEOUT),
            Some(Duration::from_millis(1200))
        );
        assert!(lapse.rejoining(at(1750), SETTLE));
        assert_eq!(lapse.sent(at(1850), TIMEOUT), None);
        assert!(lapse.rejoining(at(2300), SETTLE));
        // Settled: its own IPs again.
        assert!(!lapse.rejoining(at(2350), SETTLE));
        // A clock that does not move forward is no lapse.
        assert_eq!(lapse.sent(at(1000), TIMEOUT), None);
    }

    #[test]
    fn lapse_after_lapse_holds_back_longer_until_the_episode_is_over() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut lapse = Lapse::default();
        lapse.sent(at(0), TIMEOUT);
        // Starved: a lapse every few seconds doubles the hold, up to its longest.
        let mut holds = Vec::new();
        for s in [2, 5, 8, 11, 14, 17, 20, 23, 26, 29] {
            assert!(lapse.sent(at(s), TIMEOUT).is_some());
            holds.push(lapse.hold(SETTLE).as_millis());
        }
        assert_eq!(
            holds,
            [
                600, 1200, 2400, 4800, 9600, 19200, 30000, 30000, 30000, 30000
            ]
        );
        // Running on time again: held back for the longest hold after the last lapse.
        for ms in (29_100..59_000).step_by(100) {
            lapse.sent(start + Duration::from_millis(ms), TIMEOUT);
        }
        assert!(lapse.rejoining(at(58), SETTLE));
        assert!(!lapse.rejoining(at(59), SETTLE));
        // A lapse long after the episode starts a new one: a settle time again.
        lapse.sent(at(200), TIMEOUT);
        assert_eq!(lapse.hold(SETTLE), SETTLE);
    }
}
