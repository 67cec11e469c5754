//! Whether this speaker ran too late for its peers to hear it. A speaker not scheduled for
//! longer than the failure timeout (a stopped VM, a node starved of CPU, a frozen cgroup)
//! sends no heartbeat meanwhile, so its peers count it dead and take its IPs over; when it
//! runs again it still believes it owns them and would answer beside the peer that took them
//! over. So a heartbeat sent more than a timeout after the previous one marks a lapse, and
//! for a settle time after it this speaker counts itself as joining, as its peers count it:
//! they hold its IPs until it settles, then hand them back (`plan`). Nor does it count its
//! peers dead for the silence it could not hear (`Members::excuse`): they stopped sending to
//! it when they counted it dead, and start again once they hear it. Pure.

use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Lapse {
    /// When the last heartbeat went out.
    last_sent: Option<Instant>,
    /// When the last lapse ended (the first heartbeat after it).
    lapsed_at: Option<Instant>,
}

impl Lapse {
    /// A heartbeat goes out at `now`. Returns how long none went out when that was longer
    /// than `timeout`: the peers have counted this speaker dead meanwhile.
    pub fn sent(&mut self, now: Instant, timeout: Duration) -> Option<Duration> {
        let gap = self
            .last_sent
            .replace(now)
            .map(|last| now.saturating_duration_since(last))
            .filter(|gap| *gap > timeout);
        if gap.is_some() {
            self.lapsed_at = Some(now);
        }
        gap
    }

    /// Whether this speaker counts as joining at `now`: its last lapse ended less than
    /// `settle` ago.
    pub fn rejoining(&self, now: Instant, settle: Duration) -> bool {
        self.lapsed_at
            .is_some_and(|at| now.saturating_duration_since(at) < settle)
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
}
