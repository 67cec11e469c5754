//! Whether this speaker is cut off from its peers: the rule that keeps one answer per IP
//! when heartbeats stop arriving for reasons other than the peers' death. Pure.
//!
//! A speaker that hears nobody cannot tell "they all died" from "I cannot hear them" by
//! heartbeats alone, and must take over at once in the first case. So it looks for proof
//! that a peer it does not hear is running: datagrams from the peer's node address that fail
//! authentication (another gossip key), or an L2Announcement the peer wrote, after this
//! speaker claimed the IP, naming itself (it announces what this speaker took over). A node
//! with such proof, Ready in the API and still unheard `grace` after the proof first came,
//! is *alive but unheard*.
//!
//! The speakers this one hears (it included) form its group; the known-alive nodes are the
//! group and the alive-but-unheard ones. A group that is a strict majority of them serves;
//! exactly half serves only if it holds the alphabetically first known-alive node; a
//! smaller group stands down: it answers for no IP, heartbeats as on standby so that its
//! peers (who may hear it) take its IPs over, and reports not ready. At most one group
//! serves, whatever the split. Crashed nodes leave no proof, so a survivor is its own
//! majority and takes over within one timeout, in a two-node cluster too.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Why a node counts as alive although this speaker does not hear it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proof {
    /// Its heartbeats arrive but fail authentication: one of the two has another key.
    WrongKey,
    /// It announces an IP this speaker claimed after this speaker did: its heartbeats do not
    /// arrive (inbound UDP blocked, the gossip port partitioned).
    Announces,
}

impl Proof {
    pub fn describe(self) -> &'static str {
        match self {
            Proof::WrongKey => "its heartbeats fail authentication (another gossip key)",
            Proof::Announces => "it announces IPs but its heartbeats do not arrive",
        }
    }
}

/// The outcome of one judgment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// This speaker's group is not the one that serves: it answers for nothing.
    pub isolated: bool,
    /// Nodes alive but unheard, and why they count as alive.
    pub unheard: BTreeMap<String, Proof>,
    /// The size of this speaker's group (itself included).
    pub group: usize,
    /// Some proof is still within its grace: judge again soon.
    pub pending: bool,
}

/// Remembers when each node's proof was first seen, across passes.
#[derive(Debug)]
pub struct Isolation {
    grace: Duration,
    first_seen: BTreeMap<String, Instant>,
}

impl Isolation {
    /// `grace`: how long a node with proof must stay unheard before it counts (a rejoining
    /// speaker may announce a few heartbeats before its first heartbeat arrives).
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            first_seen: BTreeMap::new(),
        }
    }

    /// `heard`: the speakers this one hears (not itself). `proof`: nodes the API shows Ready
    /// with proof of life; those also heard are ignored.
    pub fn judge(
        &mut self,
        me: &str,
        heard: &BTreeSet<String>,
        proof: BTreeMap<String, Proof>,
        now: Instant,
    ) -> Verdict {
        let proof: BTreeMap<String, Proof> = proof
            .into_iter()
            .filter(|(node, _)| node != me && !heard.contains(node))
            .collect();
        self.first_seen.retain(|node, _| proof.contains_key(node));
        let proven = proof.len();
        let unheard: BTreeMap<String, Proof> = proof
            .into_iter()
            .filter(|(node, _)| {
                let first = *self.first_seen.entry(node.clone()).or_insert(now);
                now.saturating_duration_since(first) >= self.grace
            })
            .collect();
        let group = heard.len() + 1;
        let known = group + unheard.len();
        let isolated = if 2 * group > known {
            false
        } else if 2 * group == known {
            // Two halves: the one holding the first name serves.
            let ours = heard.iter().map(String::as_str).chain([me]).min();
            let theirs = unheard.keys().map(String::as_str).min();
            theirs < ours
        } else {
            true
        };
        Verdict {
            isolated,
            pending: unheard.len() < proven,
            unheard,
            group,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn proof(list: &[(&str, Proof)]) -> BTreeMap<String, Proof> {
        list.iter().map(|(n, p)| (n.to_string(), *p)).collect()
    }

    const GRACE: Duration = Duration::from_millis(300);

    #[test]
    fn a_speaker_with_another_key_stands_down_and_the_majority_serves() {
        let t0 = Instant::now();
        // n1 has the wrong key: it hears nobody, n2 and n3 fail authentication.
        let mut n1 = Isolation::new(GRACE);
        let wrong = proof(&[("n2", Proof::WrongKey), ("n3", Proof::WrongKey)]);
        assert!(
            !n1.judge("n1", &names(&[]), wrong.clone(), t0).isolated,
            "grace"
        );
        let v = n1.judge("n1", &names(&[]), wrong, t0 + GRACE);
        assert!(v.isolated);
        assert_eq!(v.group, 1);
        // n2 hears n3, and n1 fails authentication: n2's group is the majority.
        let mut n2 = Isolation::new(GRACE);
        n2.judge("n2", &names(&["n3"]), proof(&[("n1", Proof::WrongKey)]), t0);
        let v = n2.judge(
            "n2",
            &names(&["n3"]),
            proof(&[("n1", Proof::WrongKey)]),
            t0 + GRACE,
        );
        assert!(!v.isolated);
    }

    #[test]
    fn crashed_peers_leave_no_proof_so_a_survivor_takes_over() {
        let mut n1 = Isolation::new(GRACE);
        let v = n1.judge("n1", &names(&[]), BTreeMap::new(), Instant::now());
        assert!(!v.isolated, "two nodes, one crashed: the other serves");
    }

    #[test]
    fn two_halves_the_one_with_the_first_name_serves() {
        let t0 = Instant::now();
        let later = t0 + GRACE;
        let mut a = Isolation::new(GRACE);
        let mut b = Isolation::new(GRACE);
        a.judge("a", &names(&[]), proof(&[("b", Proof::Announces)]), t0);
        b.judge("b", &names(&[]), proof(&[("a", Proof::Announces)]), t0);
        assert!(
            !a.judge("a", &names(&[]), proof(&[("b", Proof::Announces)]), later)
                .isolated
        );
        assert!(
            b.judge("b", &names(&[]), proof(&[("a", Proof::Announces)]), later)
                .isolated
        );
    }

    #[test]
    fn proof_about_a_node_heard_again_is_dropped_and_its_grace_starts_over() {
        let t0 = Instant::now();
        // Two nodes, n3 and n2: with proof of n2 unheard, n3 is the half without the first
        // name.
        let mut n3 = Isolation::new(GRACE);
        let p = proof(&[("n2", Proof::Announces)]);
        n3.judge("n3", &names(&[]), p.clone(), t0);
        // n2 is heard: the proof no longer counts.
        let v = n3.judge("n3", &names(&["n2"]), p.clone(), t0 + GRACE);
        assert!(v.unheard.is_empty() && !v.isolated);
        // Unheard again: a new grace.
        let v = n3.judge("n3", &names(&[]), p.clone(), t0 + GRACE * 2);
        assert!(v.unheard.is_empty() && !v.isolated);
        let v = n3.judge("n3", &names(&[]), p, t0 + GRACE * 3);
        assert!(v.isolated);
    }

    proptest! {
        /// Split the nodes into groups that hear only themselves, each knowing the others
        /// are alive: at most one group serves, and one does whenever a group is a strict
        /// majority or the nodes split into two halves.
        #[test]
        fn at_most_one_group_serves(groups in proptest::collection::vec(1usize..5, 1..5)) {
            let t0 = Instant::now();
            let mut all = Vec::new();
            let mut next = 0;
            for size in &groups {
                all.push((next..next + size).map(|i| format!("n{i:02}")).collect::<Vec<_>>());
                next += size;
            }
            let total = next;
            let mut serving = Vec::new();
            for (g, members) in all.iter().enumerate() {
                let others: BTreeMap<String, Proof> = all
                    .iter()
                    .enumerate()
                    .filter(|(h, _)| *h != g)
                    .flat_map(|(_, m)| m.iter().map(|n| (n.clone(), Proof::Announces)))
                    .collect();
                let verdicts: Vec<bool> = members
                    .iter()
                    .map(|me| {
                        let heard: BTreeSet<String> =
                            members.iter().filter(|n| *n != me).cloned().collect();
                        let mut iso = Isolation::new(Duration::ZERO);
                        iso.judge(me, &heard, others.clone(), t0).isolated
                    })
                    .collect();
                // A group judges alike.
                prop_assert!(verdicts.iter().all(|v| *v == verdicts[0]));
                if !verdicts[0] {
                    serving.push(members.len());
                }
            }
            prop_assert!(serving.len() <= 1, "{groups:?}: {serving:?} serve");
            let halves = groups.len() == 2 && groups[0] == groups[1];
            if halves || groups.iter().any(|s| 2 * s > total) {
                prop_assert_eq!(serving.len(), 1, "{:?}", groups);
            }
        }
    }
}
