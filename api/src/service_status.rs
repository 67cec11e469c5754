//! Reading what Herald's controller wrote on a Service, for both binaries. Pure.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

/// IPs in the Service's `status.loadBalancer.ingress`.
pub fn status_ips(svc: &Service) -> Vec<IpAddr> {
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    ingress
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

/// Whether Herald wrote this Service's status (its condition is there).
pub fn status_is_ours(svc: &Service) -> bool {
    let conditions = svc.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions
        .into_iter()
        .flatten()
        .any(|c| c.type_ == crate::keys::IP_ALLOCATED_CONDITION)
}

/// Whether Herald's condition says the Service's IPs are allocated (the speaker announces
/// only those).
pub fn allocated_by_herald(svc: &Service) -> bool {
    let conditions = svc.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions
        .into_iter()
        .flatten()
        .any(|c| c.type_ == crate::keys::IP_ALLOCATED_CONDITION && c.status == "True")
}
