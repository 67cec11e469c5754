//! Keeping the speaker's logs bounded in size and rate: lists are cut to a few items, and
//! lines that would repeat with every change are limited to one per interval, counting what
//! was left out.

use std::time::{Duration, Instant};

/// Items for a log line: the first few and how many more (a log line stays small when a
/// thousand nodes or IPs change at once).
pub fn bounded_list<T: std::fmt::Display>(items: &[T]) -> String {
    const SHOWN: usize = 5;
    let mut out = items
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        out.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    out
}

/// At most one line per `every`; `allow` says whether to log now and how many were
/// suppressed since the last line.
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed)` when a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_cut_and_lines_are_limited() {
        let ips: Vec<u32> = (0..1000).collect();
        assert_eq!(bounded_list(&ips), "0, 1, 2, 3, 4 and 995 more");
        assert_eq!(bounded_list(&ips[..2]), "0, 1");

        let t0 = Instant::now();
        let mut limit = RateLimit::new(Duration::from_secs(1));
        assert_eq!(limit.allow(t0), Some(0));
        for i in 1..=10 {
            assert_eq!(limit.allow(t0 + Duration::from_millis(i * 50)), None);
        }
        assert_eq!(limit.allow(t0 + Duration::from_secs(1)), Some(10));
    }
}
