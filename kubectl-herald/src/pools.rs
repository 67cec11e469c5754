//! `kubectl herald pools`: usage per pool and family, Services waiting, overlaps, drains,
//! reservations and retentions. Pure: computed from a [`Snapshot`].

use std::fmt::Write as _;

use herald_api::service::allocated_condition;
use herald_api::{FamilyUsage, IPPool};
use serde::Serialize;

use crate::snapshot::Snapshot;

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolReport {
    pub name: String,
    pub addresses: Vec<String>,
    pub auto_assign: bool,
    /// `Ready`, `Disabled` (drained), `Terminating` (deleted, held) or `NoUsableAddresses`.
    pub state: String,
    pub assigned: i64,
    pub available: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<FamilyUsage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<FamilyUsage>,
    pub reservations: usize,
    pub retained: usize,
    /// Services without an address whose reason names this pool.
    pub waiting: Vec<String>,
    /// What its conditions report (invalid entries, overlaps, reserved addresses taken,
    /// holders of a drained or deleted pool).
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolsReport {
    pub pools: Vec<PoolReport>,
    /// Services without an address whose reason names no pool (`NoEligiblePool`, ...).
    pub waiting_elsewhere: Vec<String>,
}

pub fn pools(snapshot: &Snapshot) -> PoolsReport {
    let failed: Vec<(String, String)> = snapshot
        .services
        .iter()
        .filter_map(|s| {
            let c = allocated_condition(s).filter(|c| c.status == "False")?;
            let key = format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or_default(),
                s.metadata.name.as_deref().unwrap_or_default()
            );
            Some((key, format!("{} ({})", c.message, c.reason)))
        })
        .collect();
    let mut pools: Vec<PoolReport> = snapshot.pools.iter().map(|p| report(p, &failed)).collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    let waiting_elsewhere = failed
        .iter()
        .filter(|(_, why)| !snapshot.pools.iter().any(|p| names(why, pool_name(p))))
        .map(|(key, why)| format!("{key}: {why}"))
        .collect();
    PoolsReport {
        pools,
        waiting_elsewhere,
    }
}

fn pool_name(pool: &IPPool) -> &str {
    pool.metadata.name.as_deref().unwrap_or_default()
}

/// Whether `text` names the pool `name` as a word (`lan` is not named by `lan-v2`).
fn names(text: &str, name: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        .any(|word| word.trim_end_matches('.') == name)
}

fn report(pool: &IPPool, failed: &[(String, String)]) -> PoolReport {
    let status = pool.status.clone().unwrap_or_default();
    let condition = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_);
    let state = condition("Ready")
        .map(|c| c.reason.clone())
        .unwrap_or_else(|| "Unknown (no status: is the controller running?)".to_owned());
    let problems = [
        "Invalid",
        "Overlapping",
        "ReservationsTaken",
        "Disabled",
        "Terminating",
    ]
    .iter()
    .filter_map(|t| condition(t))
    .filter(|c| c.status == "True" && !c.message.is_empty())
    .map(|c| format!("{}: {}", c.type_, c.message))
    .collect();
    let name = pool_name(pool);
    PoolReport {
        name: name.to_owned(),
        addresses: pool.spec.addresses.clone(),
        auto_assign: pool.spec.auto_assign,
        state,
        assigned: status.assigned,
        available: status.available.clone(),
        ipv4: status.ipv4.clone(),
        ipv6: status.ipv6.clone(),
        reservations: pool
            .spec
            .reservations
            .iter()
            .map(|r| r.addresses.len())
            .sum(),
        retained: status.retained.len(),
        waiting: failed
            .iter()
            .filter(|(_, why)| names(why, name))
            .map(|(key, why)| format!("{key}: {why}"))
            .collect(),
        problems,
    }
}

/// The report as a person reads it: a table, then what needs attention.
pub fn text(r: &PoolsReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<18} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}  ADDRESSES",
        "POOL", "STATE", "V4 USED", "V4 FREE", "V6 USED", "V6 FREE", "RESERVED", "RETAINED"
    );
    let usage = |u: &Option<FamilyUsage>| match u {
        Some(u) => (u.assigned.to_string(), u.available.clone()),
        None => ("-".to_owned(), "-".to_owned()),
    };
    for p in &r.pools {
        let (v4u, v4f) = usage(&p.ipv4);
        let (v6u, v6f) = usage(&p.ipv6);
        let _ = writeln!(
            out,
            "{:<20} {:<18} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}  {}",
            p.name,
            p.state,
            v4u,
            v4f,
            v6u,
            v6f,
            p.reservations,
            p.retained,
            p.addresses.join(", ")
        );
    }
    for p in &r.pools {
        for problem in &p.problems {
            let _ = writeln!(out, "{}: {problem}", p.name);
        }
        for w in &p.waiting {
            let _ = writeln!(out, "{}: waiting: {w}", p.name);
        }
    }
    for w in &r.waiting_elsewhere {
        let _ = writeln!(out, "waiting: {w}");
    }
    out
}
