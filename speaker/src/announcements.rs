//! Keeping the L2Announcement objects true: what to do with one object, given what this
//! speaker decided, what the API shows and what this speaker last wrote. Pure; `notes` does
//! the writes.
//!
//! The object is compared with what the API shows (a watch), not with what was last
//! written, so an object another speaker wrote while it briefly held the IP is corrected
//! at the next look (at most a second later). When the API shows another node's claim
//! written *after* this speaker's own, both believe they announce the IP: that node runs
//! (proof for `isolation`, if this speaker does not hear it). The claim is recorded and
//! this speaker's written again at once, which tells the other node the same about this
//! one: the side that is cut off learns it within a few API round trips.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use herald_api::{L2Announcement, L2AnnouncementSpec};

use crate::service::ServiceIps;

/// How long a write not yet shown by the watch is waited for before it is made again.
const WATCH_LAG: Duration = Duration::from_secs(5);

/// An L2Announcement as the speaker keeps it: only those naming this node or nobody (a
/// third of 10,000 on three nodes), and only what the decisions read. One this speaker
/// wrote that names another node now has left the cache; `notes` reads it then.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// The node it names; empty: nobody announces the IP.
    pub node: Box<str>,
    /// `spec_fingerprint` of the whole spec, to compare with what was decided.
    pub spec: u64,
    /// A fingerprint of its resourceVersion (compared for equality only).
    pub version: Option<u64>,
}

impl Seen {
    /// `None` for a record naming another node.
    pub fn mine(object: L2Announcement, me: &str) -> Option<Self> {
        let spec = &object.spec;
        (spec.node.is_empty() || spec.node == me)
            .then(|| Self::new(spec, object.metadata.resource_version.as_deref()))
    }

    pub fn new(spec: &L2AnnouncementSpec, resource_version: Option<&str>) -> Self {
        Self {
            node: spec.node.as_str().into(),
            spec: spec_fingerprint(spec),
            version: resource_version.map(version),
        }
    }
}

/// A resourceVersion as a fingerprint: only ever compared for equality, and 8 bytes per
/// record instead of a string.
pub fn version(resource_version: &str) -> u64 {
    fingerprint(resource_version)
}

/// A fingerprint of a spec (within one process: a speaker compares only its own).
pub fn spec_fingerprint(spec: &L2AnnouncementSpec) -> u64 {
    fingerprint(&(
        &spec.service,
        &spec.ip,
        &spec.node,
        &spec.interfaces,
        &spec.reason,
    ))
}

pub use herald_api::fingerprint;

/// This speaker's last successful write of one object.
#[derive(Debug, Clone)]
pub struct Written {
    pub ip: IpAddr,
    /// The Service's key (`namespace/name`).
    pub service: Box<str>,
    /// A fingerprint of the uid of the Service it was written for (a Service created again
    /// under the same name is another owner).
    pub owner: u64,
    /// `spec_fingerprint` of the spec written.
    pub spec: u64,
    /// The version the API showed when it was written, and the one the write made.
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub at: Instant,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The object shows what was decided.
    Nothing,
    /// Written already; the watch has not shown it yet.
    Wait,
    /// Another node wrote its claim over this speaker's: it runs. Recorded; written again
    /// at the next look.
    Contested {
        node: String,
    },
    Write,
}

/// What to do with one object whose content should be `desired`.
pub fn step(
    me: &str,
    desired: &L2AnnouncementSpec,
    seen: Option<&Seen>,
    written: Option<&Written>,
    now: Instant,
) -> Step {
    let wanted = spec_fingerprint(desired);
    if seen.is_some_and(|s| s.spec == wanted) {
        return Step::Nothing;
    }
    let version = seen.and_then(|s| s.version.as_ref());
    let Some(written) = written else {
        return Step::Write;
    };
    if version == written.before.as_ref()
        && written.spec == wanted
        && now.saturating_duration_since(written.at) < WATCH_LAG
    {
        return Step::Wait;
    }
    if let Some(seen) = seen
        && desired.node == me
        && !seen.node.is_empty()
        && &*seen.node != me
        && version != written.before.as_ref()
        && version != written.after.as_ref()
    {
        return Step::Contested {
            node: seen.node.to_string(),
        };
    }
    Step::Write
}

/// Whether a record speaks of an IP that is no longer its Service's (the IP changed, the
/// Service stopped being a LoadBalancer, or it went away): such records are deleted.
pub fn stale(spec: &L2AnnouncementSpec, service: Option<&ServiceIps>) -> bool {
    match (service, spec.ip.parse::<IpAddr>().ok()) {
        (Some(svc), Some(ip)) => !svc.ips.contains(&ip),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(node: &str) -> L2AnnouncementSpec {
        L2AnnouncementSpec {
            service: "web".into(),
            ip: "192.0.2.10".into(),
            node: node.into(),
            interfaces: if node.is_empty() {
                vec![]
            } else {
                vec!["eth0".into()]
            },
            reason: None,
        }
    }

    fn seen(node: &str, version: &str) -> Seen {
        Seen::new(&spec(node), Some(version))
    }

    fn written(node: &str, before: Option<&str>, after: &str, at: Instant) -> Written {
        Written {
            ip: "192.0.2.10".parse().unwrap(),
            service: "default/web".into(),
            owner: 1,
            spec: spec_fingerprint(&spec(node)),
            before: before.map(version),
            after: Some(version(after)),
            at,
        }
    }

    #[test]
    fn an_object_naming_the_node_that_briefly_held_the_ip_is_corrected() {
        let t0 = Instant::now();
        // n2 took the IP while n1 paused; n1 is back and announces it: the object names n2.
        let shown = seen("n2", "7");
        assert_eq!(step("n1", &spec("n1"), Some(&shown), None, t0), Step::Write);
        // Written; the watch still shows version 7 for a while: wait, do not write again.
        let mine = written("n1", Some("7"), "8", t0);
        assert_eq!(
            step("n1", &spec("n1"), Some(&shown), Some(&mine), t0),
            Step::Wait
        );
        // The watch shows it: nothing to do.
        assert_eq!(
            step("n1", &spec("n1"), Some(&seen("n1", "8")), Some(&mine), t0),
            Step::Nothing
        );
        // A write the watch never shows is made again after a while.
        assert_eq!(
            step("n1", &spec("n1"), Some(&shown), Some(&mine), t0 + WATCH_LAG),
            Step::Write
        );
    }

    #[test]
    fn a_claim_written_over_ours_is_proof() {
        let t0 = Instant::now();
        let mine = written("n1", Some("7"), "8", t0);
        let theirs = seen("n2", "9");
        assert_eq!(
            step("n1", &spec("n1"), Some(&theirs), Some(&mine), t0),
            Step::Contested { node: "n2".into() }
        );
        // What the API showed before this speaker's write is no claim over it.
        assert_eq!(
            step(
                "n1",
                &spec("n1"),
                Some(&seen("n2", "7")),
                Some(&mine),
                t0 + WATCH_LAG
            ),
            Step::Write
        );
        // Nor is the reporter writing "nobody".
        let nobody = seen("", "10");
        assert_eq!(
            step("n1", &spec("n1"), Some(&nobody), Some(&mine), t0),
            Step::Write
        );
    }

    #[test]
    fn objects_of_ips_their_service_no_longer_holds_are_stale() {
        let svc = ServiceIps {
            uid: "u1".into(),
            labels: None,
            local_traffic: false,
            ips: ["192.0.2.10".parse().unwrap()].into(),
        };
        assert!(!stale(&spec("n1"), Some(&svc)));
        let other = ServiceIps {
            ips: ["192.0.2.11".parse().unwrap()].into(),
            ..svc
        };
        assert!(stale(&spec("n1"), Some(&other)));
        assert!(stale(&spec("n1"), None));
    }
}
