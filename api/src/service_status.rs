//! Reading what Herald's controller wrote on a Service, for both binaries. Pure.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use crate::keys;

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

/// Keeps only what Herald reads from a Service (the controller's intent, status, pool
/// selection and Events; the speaker's type, traffic policy and status), so that 10,000 cached Services cost little memory. `intent` and the status
/// helpers give the same answers on the slim Service as on the full one.
pub fn slim(svc: &mut Service) {
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec, ServiceStatus};
    let meta = &mut svc.metadata;
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.creation_timestamp = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| {
            keys::POOL_KEYS.contains(&k.as_str())
                || keys::IPS_KEYS.contains(&k.as_str())
                || keys::SHARING_KEYS.contains(&k.as_str())
        });
    }
    if let Some(spec) = svc.spec.take() {
        let local = spec.external_traffic_policy.as_deref() == Some("Local");
        svc.spec = Some(ServiceSpec {
            type_: spec.type_,
            load_balancer_class: spec.load_balancer_class,
            load_balancer_ip: spec.load_balancer_ip,
            ip_family_policy: spec.ip_family_policy,
            ip_families: spec.ip_families,
            external_traffic_policy: spec.external_traffic_policy,
            selector: if local { spec.selector } else { None },
            ports: spec.ports.map(|ports| {
                ports
                    .into_iter()
                    .map(|p| ServicePort {
                        port: p.port,
                        protocol: p.protocol,
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        });
    }
    if let Some(status) = svc.status.take() {
        let conditions = status.conditions.map(|cs| {
            cs.into_iter()
                .filter(|c| c.type_ == crate::keys::IP_ALLOCATED_CONDITION)
                .collect::<Vec<_>>()
        });
        svc.status = Some(ServiceStatus {
            load_balancer: status.load_balancer,
            conditions: conditions.filter(|c| !c.is_empty()),
        });
    }
}
