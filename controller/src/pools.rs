//! From `IPPool` objects to the allocator's `Pool`s, and which pools may serve a Service. Pure.

use std::net::IpAddr;

use herald_api::events::quote;
use herald_api::service::IpFamily;
use herald_api::{AddressEntry, IPPool, Reservation};

use crate::allocator::{Pool, ServiceKey};

/// A pool as configured, with the entries the controller could not use.
#[derive(Debug, Clone)]
pub struct ParsedPool {
    pub pool: Pool,
    pub invalid: Vec<String>,
    /// Other pools sharing addresses with this one.
    pub overlaps: Vec<String>,
}

pub fn parse(pools: &[IPPool]) -> Vec<ParsedPool> {
    let mut parsed: Vec<ParsedPool> = pools
        .iter()
        .map(|p| {
            let mut invalid = Vec::new();
            let mut ranges = Vec::new();
            for entry in &p.spec.addresses {
                match AddressEntry::parse(entry) {
                    Ok(e) => ranges.push(e.range),
                    Err(e) => invalid.push(e.to_string()),
                }
            }
            let mut pool = Pool {
                name: p.metadata.name.clone().unwrap_or_default().into(),
                ranges,
                auto_assign: p.spec.auto_assign,
                avoid_buggy_ips: p.spec.avoid_buggy_ips,
                terminating: p.metadata.deletion_timestamp.is_some(),
                disabled: p.spec.disabled,
                reservations: Vec::new(),
                retain_for: p.spec.retention(),
            };
            pool.reservations = reservations(&pool, &p.spec.reservations, &mut invalid);
            ParsedPool {
                pool,
                invalid,
                overlaps: Vec::new(),
            }
        })
        .collect();
    parsed.sort_by(|a, b| a.pool.name.cmp(&b.pool.name));
    for i in 0..parsed.len() {
        for j in 0..parsed.len() {
            let overlap = i != j
                && parsed[i]
                    .pool
                    .ranges
                    .iter()
                    .any(|a| parsed[j].pool.ranges.iter().any(|b| a.overlaps(b)));
            if overlap {
                let other = parsed[j].pool.name.to_string();
                parsed[i].overlaps.push(other);
            }
        }
    }
    parsed
}

/// The usable reservations of `pool`; what cannot be used is described in `invalid`.
fn reservations(
    pool: &Pool,
    spec: &[Reservation],
    invalid: &mut Vec<String>,
) -> Vec<(IpAddr, ServiceKey)> {
    let mut usable: Vec<(IpAddr, ServiceKey)> = Vec::new();
    for r in spec {
        // Bounded: the names come from the pool's author, but statuses stay small.
        let service = quote(&r.service);
        let mut families = Vec::new();
        for text in &r.addresses {
            let Ok(ip) = text.parse::<IpAddr>() else {
                invalid.push(format!(
                    "reservation {} for {service} is not an IP address",
                    quote(text)
                ));
                continue;
            };
            if !pool.contains(ip) {
                invalid.push(format!(
                    "reservation {ip} for {service} is outside the pool's addresses"
                ));
            } else if let Some((_, other)) = usable.iter().find(|(kept, _)| *kept == ip) {
                invalid.push(format!(
                    "reservation {ip} for {service} is already reserved for {}",
                    quote(other)
                ));
            } else if families.contains(&IpFamily::of(ip)) {
                invalid.push(format!(
                    "reservation {ip} for {service}: a Service is reserved at most one address of each family"
                ));
            } else {
                families.push(IpFamily::of(ip));
                usable.push((ip, r.service.as_str().into()));
            }
        }
    }
    usable
}

pub use herald_api::pool::eligible;

#[cfg(test)]
mod tests {
    use super::*;

    fn pools(yaml: &str) -> Vec<IPPool> {
        serde_yaml_ng::Deserializer::from_str(yaml)
            .map(|d| serde_json::from_value(serde::Deserialize::deserialize(d).unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn eligibility_and_order() {
        let p = pools(
            r#"
apiVersion: herald.dev/v1alpha1
kind: IPPool
metadata: {name: zz-default}
spec: {addresses: [192.0.2.0/24]}
---
apiVersion: herald.dev/v1alpha1
kind: IPPool
metadata: {name: team}
spec:
  addresses: [198.51.100.0/24]
  serviceAllocation: {priority: 10, namespaces: [team-a], serviceSelectors: [{matchLabels: {tier: web}}]}
---
apiVersion: herald.dev/v1alpha1
kind: IPPool
metadata: {name: prod}
spec:
  addresses: [203.0.113.0/24]
  serviceAllocation: {priority: 5, namespaceSelectors: [{matchExpressions: [{key: env, operator: In, values: [prod]}]}]}
"#,
        );
        let labels = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            eligible(&p, "team-a", &labels(&[]), &labels(&[("tier", "web")])),
            ["team", "zz-default"]
        );
        assert_eq!(
            eligible(&p, "team-a", &labels(&[]), &labels(&[])),
            ["zz-default"]
        );
        assert_eq!(
            eligible(&p, "x", &labels(&[("env", "prod")]), &labels(&[])),
            ["prod", "zz-default"]
        );
    }

    #[test]
    fn reservations_that_cannot_be_kept_are_named() {
        let p = pools(
            r#"
apiVersion: herald.dev/v1alpha1
kind: IPPool
metadata: {name: lan}
spec:
  addresses: [192.0.2.0/28, "2001:db8::/120"]
  reservations:
  - {service: shop/web, addresses: [192.0.2.1, "2001:db8::1"]}
  - {service: shop/api, addresses: [192.0.2.1]}
  - {service: shop/db, addresses: [198.51.100.1, 192.0.2.2, 192.0.2.3]}
"#,
        );
        let parsed = parse(&p);
        let kept: Vec<(String, &str)> = parsed[0]
            .pool
            .reservations
            .iter()
            .map(|(ip, s)| (ip.to_string(), &**s))
            .collect();
        assert_eq!(
            kept,
            [
                ("192.0.2.1".into(), "shop/web"),
                ("2001:db8::1".into(), "shop/web"),
                ("192.0.2.2".into(), "shop/db")
            ]
        );
        assert_eq!(
            parsed[0].invalid,
            [
                "reservation 192.0.2.1 for \"shop/api\" is already reserved for \"shop/web\"",
                "reservation 198.51.100.1 for \"shop/db\" is outside the pool's addresses",
                "reservation 192.0.2.3 for \"shop/db\": a Service is reserved at most one address of each family",
            ]
        );
    }

    #[test]
    fn invalid_entries_and_overlaps_are_reported() {
        let p = pools(
            r#"
apiVersion: herald.dev/v1alpha1
kind: IPPool
metadata: {name: a}
spec: {addresses: [192.0.2.0/24, "2001:db8::9-2001:db8::1"]}
---
apiVersion: herald.dev/v1alpha1
kind: IPPool
metadata: {name: b}
spec: {addresses: [192.0.2.128/25]}
"#,
        );
        let parsed = parse(&p);
        assert_eq!(
            parsed[0].invalid,
            ["\"2001:db8::9-2001:db8::1\" starts after it ends"]
        );
        assert_eq!(parsed[0].pool.ranges.len(), 1);
        assert_eq!(parsed[0].overlaps, ["b"]);
        assert_eq!(parsed[1].overlaps, ["a"]);
    }
}
