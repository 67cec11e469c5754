//! What a Service asks of Herald, read from its spec and annotations. Pure.

use std::net::IpAddr;

use herald_api::events::quote;
use herald_api::keys;
use herald_api::service::{FamilyPolicy, IpFamily, LbService};

use crate::allocator::{Families, Sharing};

/// Which Services this controller serves.
#[derive(Debug, Clone)]
pub struct ClassConfig {
    /// `spec.loadBalancerClass` served.
    pub class: String,
    /// Whether Services without a class are served.
    pub serve_unset: bool,
}

/// What the controller should do with a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Not a LoadBalancer, or another load balancer's: release anything held, clear our status.
    NotOurs,
    Wants(Wants),
    /// The Service asks for something malformed or contradictory; `reason` (an Event
    /// reason) and the message say what.
    Invalid {
        reason: &'static str,
        message: String,
    },
}

fn invalid(message: String) -> Intent {
    Intent::Invalid {
        reason: "InvalidRequest",
        message,
    }
}

/// The one value the Service gives under `keys`; when Herald's and MetalLB's spellings of
/// the annotation disagree, a message naming each.
fn one_annotation<'s>(svc: &'s LbService, keys: &[&str]) -> Result<Option<&'s str>, String> {
    svc.annotation(keys).map_err(|set| {
        let named: Vec<String> = set
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        format!("the annotations disagree: {}", named.join(", "))
    })
}

fn conflicting(message: String) -> Intent {
    Intent::Invalid {
        reason: "ConflictingRequest",
        message,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wants {
    pub families: Families,
    pub requested_ips: Vec<IpAddr>,
    pub pool: Option<String>,
    pub sharing: Sharing,
}

pub fn intent(svc: &LbService, config: &ClassConfig) -> Intent {
    let spec = &svc.spec;
    if !spec.load_balancer || svc.metadata.deleting {
        return Intent::NotOurs;
    }
    match spec.load_balancer_class.as_deref() {
        Some(class) if class != config.class => return Intent::NotOurs,
        None if !config.serve_unset => return Intent::NotOurs,
        _ => {}
    }

    let (ips_annotation, pool, sharing_key, cross_namespace) = match (
        one_annotation(svc, &keys::IPS_KEYS),
        one_annotation(svc, &keys::POOL_KEYS),
        one_annotation(svc, &keys::SHARING_KEYS),
        one_annotation(svc, &keys::SHARING_CROSS_NAMESPACE_KEYS),
    ) {
        (Ok(ips), Ok(pool), Ok(sharing), Ok(cross)) => (ips, pool, sharing, cross),
        (Err(e), _, _, _) | (_, Err(e), _, _) | (_, _, Err(e), _) | (_, _, _, Err(e)) => {
            return conflicting(e);
        }
    };
    let load_balancer_ip = spec
        .load_balancer_ip
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let requested: Vec<&str> = match (ips_annotation, load_balancer_ip) {
        (Some(list), _) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect(),
        (None, Some(ip)) => vec![ip],
        (None, None) => Vec::new(),
    };
    let mut requested_ips = Vec::new();
    for text in &requested {
        match text.parse::<IpAddr>() {
            Ok(ip) => requested_ips.push(ip),
            Err(_) => {
                return invalid(format!("requested IP {} is not an IP address", quote(text)));
            }
        }
    }
    // Both ways of asking for an IP, naming different ones: refused rather than one
    // silently winning (MetalLB refuses these too).
    if let (Some(list), Some(field)) = (ips_annotation, load_balancer_ip) {
        let same = field
            .parse::<IpAddr>()
            .is_ok_and(|ip| requested_ips.contains(&ip));
        if !same {
            return conflicting(format!(
                "spec.loadBalancerIP {} and the IPs annotation {} ask for different addresses: keep one",
                quote(field),
                quote(list)
            ));
        }
    }

    let mut order: Vec<IpFamily> = spec.ip_families.as_slice().to_vec();
    if order.is_empty() {
        order = requested_ips.iter().map(|ip| IpFamily::of(*ip)).collect();
    }
    if order.is_empty() {
        order.push(IpFamily::V4);
    }
    let families = match spec.ip_family_policy {
        FamilyPolicy::RequireDualStack => {
            let other = if order[0] == IpFamily::V4 {
                IpFamily::V6
            } else {
                IpFamily::V4
            };
            if order.len() < 2 {
                order.push(other);
            }
            Families {
                order,
                all_required: true,
            }
        }
        FamilyPolicy::PreferDualStack => Families {
            order,
            all_required: false,
        },
        FamilyPolicy::SingleStack => Families::single(order[0]),
    };

    let sharing = Sharing::new(
        sharing_key.map(str::to_owned),
        spec.ports.iter().copied(),
        spec.local_traffic
            .then(|| spec.selector.as_deref().cloned().unwrap_or_default()),
        svc.metadata.namespace.as_deref().unwrap_or_default(),
        cross_namespace,
    );

    Intent::Wants(Wants {
        families,
        requested_ips,
        pool: pool.map(str::to_owned),
        sharing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(yaml: &str) -> LbService {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn config() -> ClassConfig {
        ClassConfig {
            class: "herald.dev/l2".into(),
            serve_unset: true,
        }
    }

    #[test]
    fn only_load_balancers_of_our_class() {
        let base = "metadata: {name: a, namespace: n}\nspec: {type: LoadBalancer}";
        assert!(matches!(intent(&svc(base), &config()), Intent::Wants(_)));
        let cluster_ip = svc("metadata: {name: a, namespace: n}\nspec: {type: ClusterIP}");
        assert_eq!(intent(&cluster_ip, &config()), Intent::NotOurs);
        let other = svc(
            "metadata: {name: a, namespace: n}\nspec: {type: LoadBalancer, loadBalancerClass: other.io/lb}",
        );
        assert_eq!(intent(&other, &config()), Intent::NotOurs);
        let no_unset = ClassConfig {
            serve_unset: false,
            ..config()
        };
        assert_eq!(intent(&svc(base), &no_unset), Intent::NotOurs);
        let ours = svc(
            "metadata: {name: a, namespace: n}\nspec: {type: LoadBalancer, loadBalancerClass: herald.dev/l2}",
        );
        assert!(matches!(intent(&ours, &no_unset), Intent::Wants(_)));
    }

    #[test]
    fn requested_ips_pool_and_sharing_from_ours_or_metallb_keys() {
        let s = svc(r#"
metadata:
  name: a
  namespace: n
  annotations:
    metallb.io/loadBalancerIPs: "192.0.2.5, 2001:db8::5"
    metallb.universe.tf/address-pool: legacy
    metallb.io/allow-shared-ip: k
spec: {type: LoadBalancer, loadBalancerIP: 192.0.2.5, ipFamilyPolicy: RequireDualStack, ipFamilies: [IPv4, IPv6],
       externalTrafficPolicy: Local, selector: {app: web}, ports: [{port: 80}, {port: 53, protocol: UDP}]}
"#);
        let Intent::Wants(w) = intent(&s, &config()) else {
            panic!()
        };
        assert_eq!(
            w.requested_ips,
            [
                "192.0.2.5".parse::<IpAddr>().unwrap(),
                "2001:db8::5".parse().unwrap()
            ]
        );
        assert_eq!(w.pool.as_deref(), Some("legacy"));
        assert_eq!(w.sharing.key.as_deref(), Some("k"));
        assert_eq!(w.sharing.ports.len(), 2);
        assert_eq!(
            w.sharing
                .local_selector
                .unwrap()
                .get("app")
                .map(String::as_str),
            Some("web")
        );
        assert_eq!(
            w.families,
            Families {
                order: vec![IpFamily::V4, IpFamily::V6],
                all_required: true
            }
        );
    }

    #[test]
    fn malformed_requested_ip_is_invalid() {
        let s = svc(
            "metadata: {name: a, namespace: n, annotations: {herald.dev/ips: 192.0.2.300}}\nspec: {type: LoadBalancer}",
        );
        assert_eq!(
            intent(&s, &config()),
            invalid("requested IP \"192.0.2.300\" is not an IP address".into())
        );
        let s = svc(
            "metadata: {name: a, namespace: n}\nspec: {type: LoadBalancer, loadBalancerIP: nope}",
        );
        assert!(matches!(intent(&s, &config()), Intent::Invalid { .. }));
    }

    #[test]
    fn user_text_quoted_in_messages_is_bounded() {
        let huge = "9".repeat(200_000);
        let s = svc(&format!(
            "metadata: {{name: a, namespace: n, annotations: {{herald.dev/ips: '{huge}'}}}}\nspec: {{type: LoadBalancer}}"
        ));
        let Intent::Invalid { message, .. } = intent(&s, &config()) else {
            panic!("refused")
        };
        assert!(message.len() < 200, "{} bytes", message.len());
        assert!(message.starts_with("requested IP \"999"), "{message}");
    }

    #[test]
    fn contradictory_requests_are_refused_naming_both() {
        let s = svc(
            "metadata: {name: a, namespace: n, annotations: {herald.dev/ips: 192.0.2.5}}\nspec: {type: LoadBalancer, loadBalancerIP: 192.0.2.6}",
        );
        assert_eq!(
            intent(&s, &config()),
            conflicting(
                "spec.loadBalancerIP \"192.0.2.6\" and the IPs annotation \"192.0.2.5\" ask for different addresses: keep one".into()
            )
        );
        // The same address both ways is one request.
        let s = svc(
            "metadata: {name: a, namespace: n, annotations: {herald.dev/ips: '192.0.2.5, 2001:db8::5'}}\nspec: {type: LoadBalancer, loadBalancerIP: 192.0.2.5}",
        );
        assert!(matches!(intent(&s, &config()), Intent::Wants(_)));
        // Herald's and MetalLB's spelling of one annotation, disagreeing.
        let s = svc(
            "metadata: {name: a, namespace: n, annotations: {herald.dev/pool: a, metallb.io/address-pool: b}}\nspec: {type: LoadBalancer}",
        );
        assert_eq!(
            intent(&s, &config()),
            conflicting(
                "the annotations disagree: herald.dev/pool=\"a\", metallb.io/address-pool=\"b\""
                    .into()
            )
        );
        let s = svc(
            "metadata: {name: a, namespace: n, annotations: {herald.dev/pool: a, metallb.io/address-pool: a}}\nspec: {type: LoadBalancer}",
        );
        assert!(matches!(intent(&s, &config()), Intent::Wants(_)));
    }
}
