//! A Service as the speaker keeps it: only LoadBalancer Services whose IPs Herald allocated,
//! and only what decides who announces them. Every speaker caches every such Service (10,000
//! of them in the benchmark), so this is kept to the uid, the labels (advertisements select
//! Services by them), the traffic policy and the IPs.

use std::collections::BTreeMap;

use std::net::IpAddr;

use herald_api::events::Regarding;
use herald_api::{LbService, ObjectKey};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceIps {
    /// For the owner references of L2Announcements and the subject of Events.
    pub uid: Box<str>,
    /// What advertisements' `serviceSelectors` match (`None`: no labels). Boxed as the
    /// API's `LbMeta` has them: one word per cached Service, not three.
    #[allow(
        clippy::box_collection,
        reason = "one word per cached Service, not three"
    )]
    pub labels: Option<Box<BTreeMap<String, String>>>,
    /// `externalTrafficPolicy: Local`: only nodes with a ready endpoint may announce.
    pub local_traffic: bool,
    pub ips: Box<[IpAddr]>,
}

impl ServiceIps {
    /// `None` for a Service the speaker has nothing to announce for: not a LoadBalancer, no
    /// IP, or IPs Herald did not allocate (another implementation's, or a failed allocation
    /// whose condition is False).
    pub fn of(svc: LbService) -> Option<Self> {
        if !svc.spec.load_balancer || !svc.allocated_by_herald() || svc.status.ingress.is_empty() {
            return None;
        }
        Some(Self {
            uid: svc.metadata.uid.unwrap_or_default(),
            labels: svc.metadata.labels.filter(|l| !l.is_empty()),
            local_traffic: svc.spec.local_traffic,
            ips: svc.status.ingress,
        })
    }

    /// The Service `namespace/name` (its cache key) as an Event's subject.
    pub fn regarding<'a>(&'a self, key: &'a str) -> Regarding<'a> {
        let ObjectKey { namespace, name } = ObjectKey::parse(key);
        Regarding {
            namespace,
            name,
            uid: &self.uid,
        }
    }
}

/// An allocated LoadBalancer Service `namespace/name` holding `ips`, keyed as the cache keys
/// it: the decision tests' Service.
#[cfg(test)]
pub fn allocated(
    namespace: &str,
    name: &str,
    ips: &[&str],
    local: bool,
) -> (String, std::sync::Arc<ServiceIps>) {
    let ingress: Vec<String> = ips.iter().map(|ip| format!("{{ip: '{ip}'}}")).collect();
    let svc: LbService = serde_yaml_ng::from_str(&format!(
        "metadata: {{name: {name}, namespace: {namespace}}}
spec: {{type: LoadBalancer, externalTrafficPolicy: {}}}
status:
  loadBalancer: {{ingress: [{}]}}
  conditions: [{{type: herald.dev/IPAllocated, status: 'True', reason: Allocated, message: '', lastTransitionTime: '2026-01-01T00:00:00Z'}}]",
        if local { "Local" } else { "Cluster" },
        ingress.join(", "),
    ))
    .expect("yaml");
    let kept = ServiceIps::of(svc).expect("an allocated LoadBalancer");
    (format!("{namespace}/{name}"), std::sync::Arc::new(kept))
}

/// `service` (as `allocated` gives it) with `labels`.
#[cfg(test)]
pub fn labelled(
    (key, service): (String, std::sync::Arc<ServiceIps>),
    labels: &[(&str, &str)],
) -> (String, std::sync::Arc<ServiceIps>) {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let service = ServiceIps {
        labels: Some(Box::new(labels)),
        ..(*service).clone()
    };
    (key, std::sync::Arc::new(service))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> LbService {
        serde_yaml_ng::from_str(yaml).expect("yaml")
    }

    const ALLOCATED: &str = "conditions: [{type: herald.dev/IPAllocated, status: 'True', reason: Allocated, message: '', lastTransitionTime: '2026-01-01T00:00:00Z'}]";

    #[test]
    fn keeps_herald_allocated_load_balancers_only() {
        let web = service(&format!(
            "metadata: {{name: web, namespace: shop, uid: u1}}
spec: {{type: LoadBalancer, externalTrafficPolicy: Local}}
status: {{loadBalancer: {{ingress: [{{ip: 192.0.2.10}}, {{ip: '2001:db8::10'}}]}}, {ALLOCATED}}}"
        ));
        let kept = ServiceIps::of(web.clone()).expect("kept");
        assert_eq!(&*kept.uid, "u1");
        assert!(kept.local_traffic);
        assert_eq!(
            &*kept.ips,
            [
                "192.0.2.10".parse::<IpAddr>().unwrap(),
                "2001:db8::10".parse().unwrap()
            ]
        );
        let about = kept.regarding("shop/web");
        assert_eq!(
            (about.namespace, about.name, about.uid),
            ("shop", "web", "u1")
        );

        let mut not_lb = web.clone();
        not_lb.spec.load_balancer = false;
        let mut foreign = web.clone();
        foreign.status.condition = None;
        let mut failed = web.clone();
        if let Some(c) = failed.status.condition.as_mut() {
            c.allocated = false;
        }
        let mut no_ip = web;
        no_ip.status.ingress = Box::default();
        for svc in [not_lb, foreign, failed, no_ip] {
            assert_eq!(ServiceIps::of(svc), None);
        }
    }
}
