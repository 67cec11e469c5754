//! What the controller writes: the Service status patch (server-side apply, so only the
//! fields Herald owns change) and the pool status. Pure.

use herald_api::{FamilyUsage, IPPoolStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use crate::allocator::{Allocator, Assigned, Family};
use crate::pools::ParsedPool;

pub use herald_api::keys::IP_ALLOCATED_CONDITION as CONDITION;

/// Status of a Service Herald serves: the IPs (or none) and Herald's condition.
pub fn service_patch(
    assigned: &[Assigned],
    failure: Option<(&str, &str)>,
    generation: Option<i64>,
) -> Value {
    let ingress: Vec<Value> = assigned
        .iter()
        .map(|a| json!({"ip": a.ip.to_string(), "ipMode": "VIP"}))
        .collect();
    let (status, reason, message) = match failure {
        None => ("True", "Allocated".to_owned(), describe(assigned)),
        Some((reason, message)) => ("False", reason.to_owned(), message.to_owned()),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "status": {
            "loadBalancer": {"ingress": ingress},
            "conditions": [{
                "type": CONDITION,
                "status": status,
                "reason": reason,
                "message": message,
                "observedGeneration": generation.unwrap_or(0),
                "lastTransitionTime": Time(Timestamp::now()),
            }],
        },
    })
}

/// An apply that owns nothing: removes every status field Herald set.
pub fn service_clear() -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "status": {}})
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

pub fn pool_status(
    parsed: &ParsedPool,
    allocator: &Allocator,
    generation: Option<i64>,
) -> IPPoolStatus {
    let usage = |family| {
        let capacity = Allocator::capacity(&parsed.pool, family);
        let assigned = allocator.assigned_in(&parsed.pool, family);
        (capacity > 0).then(|| (assigned, capacity.saturating_sub(assigned)))
    };
    let (v4, v6) = (usage(Family::V4), usage(Family::V6));
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
    let condition = |type_: &str, status: bool, reason: &str, message: String| Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
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
    conditions.push(condition(
        "Ready",
        !parsed.pool.ranges.is_empty(),
        if parsed.pool.ranges.is_empty() {
            "NoUsableAddresses"
        } else {
            "Ready"
        },
        String::new(),
    ));
    IPPoolStatus {
        assigned: total(|(a, _)| a) as i64,
        available: total(|(_, f)| f).to_string(),
        ipv4: family_usage(v4),
        ipv6: family_usage(v6),
        conditions,
        observed_generation: generation,
    }
}
