//! The controller's metric names, described once so `/metrics` always lists them.

use herald_telemetry::{Kind, Registry};

pub const ALLOCATIONS: &str = "herald_controller_allocations_total";
pub const ALLOCATION_FAILURES: &str = "herald_controller_allocation_failures_total";
pub const API_WRITES: &str = "herald_controller_api_writes_total";
pub const SERVICES_WAITING: &str = "herald_controller_services_waiting";
pub const POOL_ASSIGNED: &str = "herald_pool_addresses_assigned";
pub const POOL_AVAILABLE: &str = "herald_pool_addresses_available";
pub const LEADER: &str = "herald_controller_leader";

/// Per-pool gauges, dropped when the pool goes away.
pub const POOL_GAUGES: [&str; 2] = [POOL_ASSIGNED, POOL_AVAILABLE];

pub fn describe(r: &Registry) {
    r.describe(
        ALLOCATIONS,
        Kind::Counter,
        "Services given new external IPs (first allocation or a move).",
    );
    r.describe(
        ALLOCATION_FAILURES,
        Kind::Counter,
        "Services entering a failed state, by reason (counted on change, not per retry).",
    );
    r.describe(
        API_WRITES,
        Kind::Counter,
        "Status patches and Events written to the API server, by result.",
    );
    r.describe(
        SERVICES_WAITING,
        Kind::Gauge,
        "LoadBalancer Services that want an IP and have none.",
    );
    r.describe(
        POOL_ASSIGNED,
        Kind::Gauge,
        "Addresses in use per IPPool and family.",
    );
    r.describe(
        POOL_AVAILABLE,
        Kind::Gauge,
        "Free addresses per IPPool and family (a float: an IPv6 /64 holds 2^64).",
    );
    r.describe(
        LEADER,
        Kind::Gauge,
        "1 while this replica holds the leader Lease.",
    );
}
