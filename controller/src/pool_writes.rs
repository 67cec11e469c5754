//! Pool writes just made (a status, the finalizer), remembered until the watch shows them:
//! the next pass would otherwise see the old object and make the same write again. Pure: the
//! clock is an argument.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use herald_api::IPPoolStatus;
use tokio::time::Instant;

use crate::state::Write;

/// How long a pool write just made is not made again while the watch has not shown it yet.
const IN_FLIGHT: Duration = Duration::from_secs(5);

/// What was written to one part of a pool.
#[derive(Debug, PartialEq)]
enum Written {
    Status(IPPoolStatus),
    Finalizer(bool),
}

/// Which part of a pool a write is about: one write of each is remembered per pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Status,
    Finalizer,
}

/// The pool writes made lately, per pool and part.
#[derive(Debug, Default)]
pub struct InFlight(BTreeMap<(String, Part), (Written, Instant)>);

impl InFlight {
    /// Remembers a pool write that succeeded at `at` (other writes are not remembered).
    pub fn made(&mut self, write: Write, at: Instant) {
        let (name, written) = match write {
            Write::PoolStatus { name, status } => (name, Written::Status(status)),
            Write::PoolFinalizer { name, protect } => (name, Written::Finalizer(protect)),
            Write::Status { .. } => return,
        };
        let part = match written {
            Written::Status(_) => Part::Status,
            Written::Finalizer(_) => Part::Finalizer,
        };
        self.0.insert((name, part), (written, at));
    }

    /// `writes` without those made within `IN_FLIGHT` of `now` with the same content;
    /// forgets the pools not in `live` (deleted).
    pub fn not_in_flight(
        &mut self,
        writes: Vec<Write>,
        live: &BTreeSet<&str>,
        now: Instant,
    ) -> Vec<Write> {
        self.0.retain(|(name, _), _| live.contains(name.as_str()));
        let in_flight = |name: &str, part: Part, same: &dyn Fn(&Written) -> bool| {
            self.0
                .get(&(name.to_owned(), part))
                .is_some_and(|(sent, at)| same(sent) && now < *at + IN_FLIGHT)
        };
        writes
            .into_iter()
            .filter(|write| match write {
                Write::PoolStatus { name, status } => !in_flight(
                    name,
                    Part::Status,
                    &|sent| matches!(sent, Written::Status(s) if s == status),
                ),
                Write::PoolFinalizer { name, protect } => {
                    !in_flight(name, Part::Finalizer, &|sent| {
                        *sent == Written::Finalizer(*protect)
                    })
                }
                Write::Status { .. } => true,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(assigned: i64) -> IPPoolStatus {
        IPPoolStatus {
            assigned,
            ..IPPoolStatus::default()
        }
    }

    fn pool_status(name: &str, assigned: i64) -> Write {
        Write::PoolStatus {
            name: name.into(),
            status: status(assigned),
        }
    }

    fn finalizer(name: &str, protect: bool) -> Write {
        Write::PoolFinalizer {
            name: name.into(),
            protect,
        }
    }

    #[test]
    fn a_pool_write_is_not_made_again_while_the_watch_may_not_show_it_yet() {
        let mut made = InFlight::default();
        let t0 = Instant::now();
        let live = BTreeSet::from(["lan"]);
        made.made(pool_status("lan", 1), t0);
        made.made(finalizer("lan", true), t0);
        let soon = t0 + Duration::from_secs(1);
        // The same writes within the window: not made again.
        let again = vec![pool_status("lan", 1), finalizer("lan", true)];
        assert!(made.not_in_flight(again, &live, soon).is_empty());
        // Another status or finalizer: made at once.
        let changed = made.not_in_flight(
            vec![pool_status("lan", 2), finalizer("lan", false)],
            &live,
            soon,
        );
        assert_eq!(changed.len(), 2);
        // Past the window the watch should have shown it: a write still due is made again.
        let late = t0 + IN_FLIGHT;
        assert_eq!(
            made.not_in_flight(vec![pool_status("lan", 1)], &live, late)
                .len(),
            1
        );
    }

    #[test]
    fn a_deleted_pool_is_forgotten_and_a_new_one_of_its_name_written() {
        let mut made = InFlight::default();
        let t0 = Instant::now();
        made.made(pool_status("lan", 1), t0);
        assert!(
            made.not_in_flight(Vec::new(), &BTreeSet::new(), t0)
                .is_empty()
        );
        let live = BTreeSet::from(["lan"]);
        let written = made.not_in_flight(vec![pool_status("lan", 1)], &live, t0);
        assert_eq!(
            written.len(),
            1,
            "a pool created again under the name is written"
        );
    }
}
