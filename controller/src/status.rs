//! What the controller writes: the Service status (server-side apply, so only the fields
//! Herald owns change) and the pool status, built from k8s-openapi types and compared with
//! what the objects say now, not with what was last written. Pure: the clock is an input.

use std::net::IpAddr;

use herald_api::events::{MESSAGE_LIMIT, bounded};
use herald_api::{FamilyUsage, IPPoolStatus, LbService, Retained};
use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use crate::allocator::{Allocator, Assigned};
use crate::pools::ParsedPool;
use herald_api::service::IpFamily;

pub use herald_api::keys::IP_ALLOCATED_CONDITION as CONDITION;

/// What a Service Herald serves should show: its IPs and Herald's condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceOutcome {
    pub ingress: Vec<IpAddr>,
    pub allocated: bool,
    pub reason: String,
    /// Bounded by `MESSAGE_LIMIT`: user text quoted in it cannot grow the Service.
    pub message: String,
}

impl ServiceOutcome {
    pub fn allocated(assigned: &[Assigned]) -> Self {
        Self {
            ingress: assigned.iter().map(|a| a.ip).collect(),
            allocated: true,
            reason: "Allocated".into(),
            message: bounded(&describe(assigned), MESSAGE_LIMIT),
        }
    }

    pub fn failed(reason: &str, message: &str) -> Self {
        Self {
            ingress: Vec::new(),
            allocated: false,
            reason: reason.into(),
            message: bounded(message, MESSAGE_LIMIT),
        }
    }

    /// Whether the Service shows something else now (times and generations aside).
    pub fn differs_from(&self, svc: &LbService) -> bool {
        let same_condition =
            svc.status.condition.as_ref().is_some_and(|c| {
                c.allocated == self.allocated && c.says(&self.reason, &self.message)
            });
        *svc.status.ingress != *self.ingress || !same_condition
    }

    /// The status apply for `svc`. `lastTransitionTime` moves to `now` only when the
    /// condition's status changes.
    pub fn apply(&self, svc: &LbService, now: Timestamp) -> Service {
        let since = svc
            .status
            .condition
            .as_ref()
            .filter(|c| c.allocated == self.allocated)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        let ingress = self
            .ingress
            .iter()
            .map(|ip| LoadBalancerIngress {
                ip: Some(ip.to_string()),
                ip_mode: Some("VIP".into()),
                ..Default::default()
            })
            .collect();
        Service {
            metadata: meta_of(svc),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(ingress),
                }),
                conditions: Some(vec![Condition {
                    type_: CONDITION.into(),
                    status: true_false(self.allocated),
                    reason: self.reason.clone(),
                    message: self.message.clone(),
                    observed_generation: Some(svc.metadata.generation.unwrap_or(0)),
                    last_transition_time: since,
                }]),
            }),
            ..Default::default()
        }
    }
}

/// An apply that owns nothing: removes every status field Herald set.
pub fn service_clear(svc: &LbService) -> Service {
    Service {
        metadata: meta_of(svc),
        status: Some(ServiceStatus::default()),
        ..Default::default()
    }
}

fn meta_of(svc: &LbService) -> ObjectMeta {
    ObjectMeta {
        name: svc.metadata.name.as_deref().map(str::to_owned),
        namespace: svc.metadata.namespace.as_deref().map(str::to_owned),
        ..Default::default()
    }
}

fn true_false(value: bool) -> String {
    if value { "True" } else { "False" }.into()
}

/// `192.0.2.1 from IPPool lan, 2001:db8::1 from IPPool lan6`
pub fn describe(assigned: &[Assigned]) -> String {
    let parts: Vec<String> = assigned
        .iter()
        .map(|a| match &a.pool {
            Some(pool) => format!("{} from IPPool {pool}", a.ip),
            None => format!("{} (in no IPPool)", a.ip),
        })
        .collect();
    parts.join(", ")
}

/// A pool's status as it should be. `previous` is what the object shows now: a condition
/// whose status did not change keeps its `lastTransitionTime`.
pub fn pool_status(
    parsed: &ParsedPool,
    allocator: &Allocator,
    generation: Option<i64>,
    previous: Option<&IPPoolStatus>,
    now: Timestamp,
) -> IPPoolStatus {
    let usage = |family| {
        let capacity = Allocator::capacity(&parsed.pool, family);
        let assigned = allocator.assigned_in(&parsed.pool, family);
        // Kept for one Service (reserved or retained): not available to the others.
        let kept = allocator.kept_in(&parsed.pool, family);
        (capacity > 0).then(|| (assigned, capacity.saturating_sub(assigned + kept)))
    };
    let (v4, v6) = (usage(IpFamily::V4), usage(IpFamily::V6));
    let total = |pick: fn((u128, u128)) -> u128| {
        [v4, v6]
            .into_iter()
            .flatten()
            .map(pick)
            .fold(0u128, u128::saturating_add)
    };
    let family_usage = |u: Option<(u128, u128)>| {
        u.map(|(assigned, available)| FamilyUsage {
            assigned: assigned as i64,
            available: available.to_string(),
        })
    };
    let condition = |type_: &str, status: bool, reason: &str, message: String| {
        let status = true_false(status);
        let since = previous
            .into_iter()
            .flat_map(|p| &p.conditions)
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: bounded(&message, MESSAGE_LIMIT),
            observed_generation: generation,
            last_transition_time: since,
        }
    };
    let mut conditions = vec![
        condition(
            "Invalid",
            !parsed.invalid.is_empty(),
            if parsed.invalid.is_empty() {
                "AllEntriesValid"
            } else {
                "InvalidEntries"
            },
            parsed.invalid.join("; "),
        ),
        condition(
            "Overlapping",
            !parsed.overlaps.is_empty(),
            if parsed.overlaps.is_empty() {
                "NoOverlap"
            } else {
                "SharesAddresses"
            },
            if parsed.overlaps.is_empty() {
                String::new()
            } else {
                format!(
                    "shares addresses with IPPool(s) {}; an address is never given twice",
                    parsed.overlaps.join(", ")
                )
            },
        ),
    ];
    let ready = !parsed.pool.ranges.is_empty() && !parsed.pool.closed();
    conditions.push(condition(
        "Ready",
        ready,
        match (
            parsed.pool.ranges.is_empty(),
            parsed.pool.terminating,
            parsed.pool.disabled,
        ) {
            (_, true, _) => "Terminating",
            (_, false, true) => "Disabled",
            (true, false, false) => "NoUsableAddresses",
            (false, false, false) => "Ready",
        },
        String::new(),
    ));
    // Draining: how many Services still hold its addresses, so an operator knows when the
    // range is free to give back.
    let holders = allocator.services_in(&parsed.pool.name);
    conditions.push(condition(
        "Disabled",
        parsed.pool.disabled,
        match (parsed.pool.disabled, holders) {
            (false, _) => "Enabled",
            (true, 0) => "Drained",
            (true, _) => "InUse",
        },
        if parsed.pool.disabled {
            format!(
                "disabled; {holders} Service(s) still hold its addresses and keep them until they release them; it gives no new ones"
            )
        } else {
            String::new()
        },
    ));
    let taken = allocator.reservations_taken(&parsed.pool);
    conditions.push(condition(
        "ReservationsTaken",
        !taken.is_empty(),
        if taken.is_empty() {
            "NoneTaken"
        } else {
            "HeldByOthers"
        },
        taken
            .iter()
            .map(|(ip, owner, holder)| {
                format!("{ip} is reserved for {owner} but held by {holder}, which keeps it until it gives it up")
            })
            .collect::<Vec<_>>()
            .join("; "),
    ));
    if parsed.pool.terminating {
        conditions.push(condition(
            "Terminating",
            true,
            if holders == 0 { "Released" } else { "InUse" },
            format!(
                "deleted; {holders} Service(s) still hold its addresses and keep them until they release them; it gives no new ones"
            ),
        ));
    }
    IPPoolStatus {
        assigned: total(|(a, _)| a) as i64,
        available: total(|(_, f)| f).to_string(),
        ipv4: family_usage(v4),
        ipv6: family_usage(v6),
        conditions,
        observed_generation: generation,
        retained: allocator
            .retained_in(&parsed.pool)
            .map(|(ip, service, until)| Retained {
                address: ip.to_string(),
                service: service.to_string(),
                until: until.to_string(),
            })
            .collect(),
    }
}

/// Whether two pool statuses say the same, transition times aside.
pub fn same_pool_status(a: &IPPoolStatus, b: &IPPoolStatus) -> bool {
    let timeless = |s: &IPPoolStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        s
    };
    timeless(a) == timeless(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_api::AddressEntry;

    use crate::allocator::Pool;

    fn svc(yaml: &str) -> LbService {
        serde_yaml_ng::from_str(yaml).expect("yaml")
    }

    fn time(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn last_transition_time_moves_only_when_the_condition_status_changes() {
        let web = svc(
            "metadata: {name: web, namespace: shop, generation: 3}
status:
  loadBalancer: {ingress: [{ip: 192.0.2.1}]}
  conditions: [{type: herald.dev/IPAllocated, status: 'True', reason: Allocated, message: old, lastTransitionTime: '2026-01-01T00:00:00Z'}]",
        );
        let now = time("2026-06-01T00:00:00Z");
        let assigned = [Assigned {
            ip: "192.0.2.2".parse().expect("ip"),
            pool: Some("lan".into()),
        }];
        let moved = ServiceOutcome::allocated(&assigned);
        assert!(moved.differs_from(&web));
        let written = moved.apply(&web, now);
        let status = written.status.expect("status");
        let condition = &status.conditions.expect("conditions")[0];
        assert_eq!(
            condition.last_transition_time,
            Time(time("2026-01-01T00:00:00Z"))
        );
        assert_eq!(condition.observed_generation, Some(3));
        assert_eq!(condition.message, "192.0.2.2 from IPPool lan");
        let ingress = &status.load_balancer.expect("lb").ingress.expect("ingress")[0];
        assert_eq!(ingress.ip.as_deref(), Some("192.0.2.2"));
        assert_eq!(ingress.ip_mode.as_deref(), Some("VIP"));
        // A failure flips the status: the time is now.
        let failed = ServiceOutcome::failed("PoolExhausted", "no free IPv4 address");
        let condition = &failed
            .apply(&web, now)
            .status
            .expect("status")
            .conditions
            .expect("c")[0];
        assert_eq!(condition.last_transition_time, Time(now));
        assert_eq!(condition.status, "False");
    }

    #[test]
    fn messages_are_bounded() {
        let failed = ServiceOutcome::failed("InvalidRequest", &"x".repeat(300_000));
        assert!(failed.message.len() <= MESSAGE_LIMIT);
    }

    #[test]
    fn pool_conditions_keep_their_times_and_a_hand_edit_is_seen() {
        let pool = Pool {
            name: "lan".into(),
            ranges: vec![AddressEntry::parse("192.0.2.0/30").expect("entry").range],
            auto_assign: true,
            avoid_buggy_ips: false,
            terminating: false,
            disabled: false,
            reservations: Vec::new(),
            retain_for: None,
        };
        let parsed = ParsedPool {
            pool,
            invalid: Vec::new(),
            overlaps: Vec::new(),
        };
        let mut allocator = Allocator::new();
        allocator.set_pools([parsed.pool.clone()]);
        let first = pool_status(
            &parsed,
            &allocator,
            Some(1),
            None,
            time("2026-01-01T00:00:00Z"),
        );
        assert_eq!(first.available, "4");
        let again = pool_status(
            &parsed,
            &allocator,
            Some(1),
            Some(&first),
            time("2026-06-01T00:00:00Z"),
        );
        assert_eq!(again, first, "nothing changed, not even a time");
        let mut edited = first.clone();
        edited.available = "1000".into();
        assert!(!same_pool_status(&edited, &again));
        // Being deleted: no longer Ready, and says why it still exists.
        let mut terminating = parsed.clone();
        terminating.pool.terminating = true;
        let status = pool_status(
            &terminating,
            &allocator,
            Some(1),
            Some(&first),
            time("2026-06-01T00:00:00Z"),
        );
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Terminating")
        );
        assert_eq!(
            ready.last_transition_time,
            Time(time("2026-06-01T00:00:00Z"))
        );
        let t = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Terminating")
            .expect("Terminating");
        assert_eq!(t.reason, "Released");
    }
}
