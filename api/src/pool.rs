//! `IPPool`: addresses Herald may give to LoadBalancer Services, and which Services may get them.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};

use crate::selector::matches;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A pool of external addresses. Cluster-scoped: pools are infrastructure, not tenants' objects.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "herald.dev",
    version = "v1alpha1",
    kind = "IPPool",
    plural = "ippools",
    shortname = "ipp",
    category = "herald",
    doc = "A pool of external addresses Herald gives to LoadBalancer Services.",
    status = "IPPoolStatus",
    printcolumn = r#"{"name":"Addresses","type":"string","jsonPath":".spec.addresses"}"#,
    printcolumn = r#"{"name":"Auto-Assign","type":"boolean","jsonPath":".spec.autoAssign"}"#,
    printcolumn = r#"{"name":"Disabled","type":"boolean","jsonPath":".spec.disabled"}"#,
    printcolumn = r#"{"name":"Assigned","type":"integer","jsonPath":".status.assigned"}"#,
    printcolumn = r#"{"name":"Available","type":"string","jsonPath":".status.available"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolSpec {
    /// CIDRs and inclusive `first-last` ranges, IPv4 and IPv6 (see `address.rs` for the syntax).
    #[schemars(schema_with = "crate::schema::address_list")]
    pub addresses: Vec<String>,

    /// When false, the pool is used only by Services that ask for it by name or by IP.
    #[serde(default = "default_true")]
    pub auto_assign: bool,

    /// Skip addresses ending in .0 and .255, which some old clients and routers mistreat.
    #[serde(default, rename = "avoidBuggyIPs")]
    pub avoid_buggy_ips: bool,

    /// Drain the pool: it gives no new address (automatically, by name or by IP), while the
    /// Services holding its addresses keep them; its `Disabled` condition counts them, so
    /// the range is free to give back once none is left. False again: it serves as before.
    #[serde(default)]
    pub disabled: bool,

    /// Which Services may be given addresses from this pool, and in which order pools are tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_allocation: Option<ServiceAllocation>,

    /// Addresses kept for one Service each, by `namespace/name`: only that Service gets
    /// them (automatically or by asking), whenever it is created, also after being deleted
    /// and created again. A Service holding a reserved address before the reservation keeps
    /// it until it gives it up; the `Reservations` condition names it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub reservations: Vec<Reservation>,

    /// How long an address a Service gave up (deleted, no longer a LoadBalancer, or asking
    /// for something it cannot get) stays kept for a Service of the same `namespace/name`
    /// ("1h", "24h"; Go's duration syntax). The same Service created again in that time
    /// gets its address back; nobody else gets it. Listed in `status.retained`, so a
    /// controller restart or a new leader keeps it. Unset: an address is free at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('8760h')").message("retainFor must be between 1s and 8760h (a year), in Go's duration syntax (\"30m\", \"24h\")"))]
    #[schemars(length(max = 64))]
    pub retain_for: Option<String>,
}

/// Addresses kept for one Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    /// The Service, as `namespace/name`.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("service must be namespace/name, as in shop/web"))]
    #[schemars(length(min = 3, max = 317))]
    pub service: String,
    /// At most one address of each family, inside the pool's addresses.
    #[schemars(schema_with = "crate::schema::reserved_addresses")]
    pub addresses: Vec<String>,
}

impl IPPoolSpec {
    /// How long a given-up address stays kept for its Service, when `retainFor` is set and
    /// parses (the API server refuses what does not).
    pub fn retention(&self) -> Option<std::time::Duration> {
        self.retain_for
            .as_deref()
            .and_then(crate::bgp::parse_duration)
            .filter(|d| !d.is_zero())
    }
}

impl IPPool {
    /// The pool's address ranges; entries that do not parse (the API server refuses them,
    /// the controller reports them) are left out.
    pub fn ranges(&self) -> impl Iterator<Item = crate::IpRange> + '_ {
        self.spec
            .addresses
            .iter()
            .filter_map(|a| crate::AddressEntry::parse(a).ok())
            .map(|e| e.range)
    }
}

fn default_true() -> bool {
    true
}

/// Restricts a pool to some Services and orders it against other pools.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAllocation {
    /// Lower numbers are tried first; pools without a priority come after all that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub priority: Option<i32>,

    /// Only Services in these namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,

    /// Only Services in namespaces matching one of these selectors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_selectors: Vec<LabelSelector>,

    /// Only Services matching one of these selectors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
}

/// Usage of one address family of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FamilyUsage {
    /// Addresses of this family given to Services.
    pub assigned: i64,
    /// Addresses of this family still free, in decimal: an IPv6 pool can exceed 64 bits.
    pub available: String,
}

/// What the controller observed of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolStatus {
    /// Addresses of both families given to Services.
    #[serde(default)]
    pub assigned: i64,
    /// Addresses of both families still free, in decimal.
    #[serde(default)]
    pub available: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<FamilyUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<FamilyUsage>,
    /// `Ready`, `Invalid` (an entry the controller cannot use) and `Overlapping` (shares
    /// addresses with another pool).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Addresses Services gave up, kept for them until `until` (`spec.retainFor`). The
    /// controller's record: a restarted controller or a new leader reads it back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retained: Vec<Retained>,
}

/// An address kept for the Service that gave it up.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retained {
    pub address: String,
    /// `namespace/name`.
    pub service: String,
    /// When it is free for anyone (RFC 3339).
    pub until: String,
}

/// Names of the pools whose `serviceAllocation` admits the Service, in the order to try them:
/// by priority (lower first; none last), then by name.
pub fn eligible<P: Borrow<IPPool>>(
    pools: &[P],
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    service_labels: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut admitted: Vec<(i64, String)> = pools
        .iter()
        .map(Borrow::borrow)
        .filter_map(|p: &IPPool| {
            let name = p.metadata.name.clone()?;
            let Some(alloc) = &p.spec.service_allocation else {
                return Some((i64::MAX, name));
            };
            let ns_ok = (alloc.namespaces.is_empty() && alloc.namespace_selectors.is_empty())
                || alloc.namespaces.iter().any(|n| n == namespace)
                || alloc
                    .namespace_selectors
                    .iter()
                    .any(|s| matches(s, namespace_labels));
            let svc_ok = alloc.service_selectors.is_empty()
                || alloc
                    .service_selectors
                    .iter()
                    .any(|s| matches(s, service_labels));
            (ns_ok && svc_ok).then(|| (alloc.priority.map(i64::from).unwrap_or(i64::MAX), name))
        })
        .collect();
    admitted.sort();
    admitted.into_iter().map(|(_, n)| n).collect()
}
