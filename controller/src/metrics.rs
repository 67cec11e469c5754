//! The controller's metrics, one typed handle each: label sets are types, so a series
//! cannot be written with a misspelt or missing label.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum WriteResult {
    Ok,
    Error,
}

impl EncodeLabelValue for WriteResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(match self {
            WriteResult::Ok => "ok",
            WriteResult::Error => "error",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub result: WriteResult,
}

impl WriteLabels {
    pub fn of<T, E>(result: &Result<T, E>) -> Self {
        Self {
            result: if result.is_ok() {
                WriteResult::Ok
            } else {
                WriteResult::Error
            },
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
    pub family: &'static str,
}

/// A float gauge: an IPv6 /64 holds 2^64 addresses.
pub type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone)]
pub struct Metrics {
    pub allocations: Counter,
    pub allocation_failures: Family<ReasonLabels, Counter>,
    pub api_writes: Family<WriteLabels, Counter>,
    pub services_waiting: Gauge,
    pub pool_assigned: Family<PoolLabels, Gauge>,
    pub pool_available: Family<PoolLabels, FloatGauge>,
    pub leader: Gauge,
    pub allocation_duration: Histogram,
    pub pass_duration: Histogram,
    pub events_dropped: Counter,
}

impl Metrics {
    /// The controller's metrics, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            allocations: Counter::default(),
            allocation_failures: Family::default(),
            api_writes: Family::default(),
            services_waiting: Gauge::default(),
            pool_assigned: Family::default(),
            pool_available: Family::default(),
            leader: Gauge::default(),
            // 1 ms to ~33 s.
            allocation_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            // 100 µs to ~3.3 s.
            pass_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            events_dropped: Counter::default(),
        };
        registry.register(
            "herald_controller_allocations",
            "Services given new external IPs (first allocation or a move)",
            m.allocations.clone(),
        );
        registry.register(
            "herald_controller_allocation_failures",
            "Services entering a failed state, by reason (counted on change, not per retry)",
            m.allocation_failures.clone(),
        );
        registry.register(
            "herald_controller_api_writes",
            "Status patches and Events written to the API server, by result (ok or error)",
            m.api_writes.clone(),
        );
        registry.register(
            "herald_controller_services_waiting",
            "LoadBalancer Services that want an IP and have none",
            m.services_waiting.clone(),
        );
        registry.register(
            "herald_pool_addresses_assigned",
            "Addresses in use per IPPool and family",
            m.pool_assigned.clone(),
        );
        registry.register(
            "herald_pool_addresses_available",
            "Free addresses per IPPool and family (a float: an IPv6 /64 holds 2^64)",
            m.pool_available.clone(),
        );
        registry.register(
            "herald_controller_leader",
            "1 while this replica holds the leader Lease",
            m.leader.clone(),
        );
        registry.register_with_unit(
            "herald_controller_allocation_duration",
            "From the watch event of a Service that wants an IP to its IP written in its status (the leader's part of create-to-IP)",
            Unit::Seconds,
            m.allocation_duration.clone(),
        );
        registry.register_with_unit(
            "herald_controller_pass_duration",
            "One allocation pass: decisions and the writes that follow",
            Unit::Seconds,
            m.pass_duration.clone(),
        );
        registry.register(
            "herald_controller_events_dropped",
            "Events not published because the queue was full (a burst of thousands of Services): their statuses say the same",
            m.events_dropped.clone(),
        );
        m
    }
}
