//! What each Service IP asks of whoever announces it, whatever the protocol: the Services
//! holding it (several when shared) and, when one of them has `externalTrafficPolicy: Local`,
//! the only nodes that may announce it (those with a serving endpoint). The protocol seam:
//! the pass works this out once, and each way of announcing (L2 today: an election among
//! these nodes; BGP: every one of them) decides from it. Pure.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use herald_api::selector::Scope;

use crate::endpoints::ServingNodes;
use crate::service::ServiceIps;

/// One Service holding one IP: `(ip, namespace/name, its Service)`.
pub type Holder<'a> = (IpAddr, &'a str, &'a ServiceIps);

/// Every Service IP of the cluster, in address order.
pub struct Targets<'a> {
    /// Every (IP, Service) pair, sorted by IP then Service: one allocation for the pass, not
    /// one per IP (10,000 IPs every pass).
    held: Vec<Holder<'a>>,
    /// Nodes with a serving endpoint, for the Services with `externalTrafficPolicy: Local`
    /// only (the others may be announced from any node).
    serving: BTreeMap<&'a str, BTreeSet<&'a str>>,
    /// For those Services, the nodes with a ready endpoint and those whose endpoints all
    /// terminate but still serve (BGP's `settle` works from both).
    ready: BTreeMap<&'a str, BTreeSet<&'a str>>,
    draining: BTreeMap<&'a str, BTreeSet<&'a str>>,
    /// The Services with some serving endpoint (`None`: take every Service as served).
    served: Option<BTreeSet<&'a str>>,
}

/// Per `Local` Service key, where its endpoints are.
#[derive(Debug, Clone, Copy)]
pub struct LocalEndpoints<'t, 'a> {
    pub ready: &'t BTreeMap<&'a str, BTreeSet<&'a str>>,
    pub draining: &'t BTreeMap<&'a str, BTreeSet<&'a str>>,
}

/// One IP and what it asks for.
#[derive(Debug)]
pub struct Target<'t> {
    pub ip: IpAddr,
    /// The Services holding it, by key, sorted.
    pub holders: &'t [Holder<'t>],
    /// `Some`: only these nodes may announce it (the nodes serving every `Local` holder;
    /// sharers of a `Local` IP select the same pods, which the controller enforces, and the
    /// intersection keeps this safe even if they did not). `None`: any node may.
    pub serving_nodes: Option<BTreeSet<&'t str>>,
    /// Some holder has a serving endpoint somewhere: traffic to the IP can be served.
    pub served: bool,
}

impl<'t> Target<'t> {
    /// The keys (`namespace/name`) of the Services holding the IP.
    pub fn service_keys(&self) -> impl Iterator<Item = &'t str> + '_ {
        self.holders.iter().map(|(_, key, _)| *key)
    }

    /// Whether an advertisement's `scope` selects one of the Services holding the IP (its
    /// pool is checked apart: every holder's IP is in the same pool).
    pub fn selected_by(&self, scope: &Scope) -> bool {
        scope.service_selectors.is_empty()
            || self
                .holders
                .iter()
                .any(|(_, _, svc)| scope.selects_service(svc.labels.as_deref()))
    }
}

impl<'a> Targets<'a> {
    /// From the Services with IPs and the EndpointSlices (by their cache key).
    pub fn new(
        services: &'a HashMap<String, Arc<ServiceIps>>,
        slices: &'a HashMap<String, Arc<ServingNodes>>,
    ) -> Self {
        let mut ready: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        let mut draining: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        let mut served = BTreeSet::new();
        for slice in slices.values() {
            let Some((key, svc)) = services.get_key_value(&slice.service) else {
                continue;
            };
            if slice.any_serving {
                served.insert(key.as_str());
            }
            if svc.local_traffic {
                ready
                    .entry(key.as_str())
                    .or_default()
                    .extend(slice.nodes.iter().map(String::as_str));
                draining
                    .entry(key.as_str())
                    .or_default()
                    .extend(slice.draining.iter().map(String::as_str));
            }
        }
        // The nodes with a ready endpoint; only while there are none, those whose
        // terminating endpoints still serve (where kube-proxy then sends the traffic). A node
        // whose last endpoint starts terminating stops announcing while others are ready.
        let mut serving = ready.clone();
        for (key, nodes) in serving.iter_mut() {
            if nodes.is_empty()
                && let Some(draining) = draining.get(key)
            {
                nodes.clone_from(draining);
            }
        }
        let mut targets = Self::with_serving(services, serving);
        targets.served = Some(served);
        targets.ready = ready;
        targets.draining = draining;
        targets
    }

    /// From the Services with IPs and, per `Local` Service key, the nodes serving it.
    pub fn with_serving(
        services: &'a HashMap<String, Arc<ServiceIps>>,
        serving: BTreeMap<&'a str, BTreeSet<&'a str>>,
    ) -> Self {
        let mut held: Vec<Holder> = services
            .iter()
            .flat_map(|(key, svc)| svc.ips.iter().map(move |ip| (*ip, key.as_str(), &**svc)))
            .collect();
        held.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        Self {
            held,
            serving,
            ready: BTreeMap::new(),
            draining: BTreeMap::new(),
            served: None,
        }
    }

    /// Per `Local` Service key, the nodes with a ready endpoint, and those whose endpoints
    /// all terminate but still serve.
    pub fn local_endpoints(&self) -> LocalEndpoints<'_, 'a> {
        LocalEndpoints {
            ready: &self.ready,
            draining: &self.draining,
        }
    }

    /// Each IP with what it asks for, in address order.
    pub fn iter(&self) -> impl Iterator<Item = Target<'_>> {
        self.held.chunk_by(|a, b| a.0 == b.0).map(|holders| {
            let mut serving_nodes: Option<BTreeSet<&str>> = None;
            for (_, key, svc) in holders {
                if svc.local_traffic {
                    let nodes = self.serving.get(key).cloned().unwrap_or_default();
                    serving_nodes = Some(match serving_nodes {
                        None => nodes,
                        Some(prev) => prev.intersection(&nodes).copied().collect(),
                    });
                }
            }
            let served = self
                .served
                .as_ref()
                .is_none_or(|s| holders.iter().any(|(_, key, _)| s.contains(key)));
            Target {
                ip: holders[0].0,
                holders,
                serving_nodes,
                served,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(
        namespace: &str,
        name: &str,
        ips: &[&str],
        local: bool,
    ) -> (String, Arc<ServiceIps>) {
        crate::service::allocated(namespace, name, ips, local)
    }

    fn slice(service: &str, nodes: &[&str]) -> (String, Arc<ServingNodes>) {
        let slice = ServingNodes {
            draining: Vec::new(),
            service: service.into(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            any_serving: !nodes.is_empty(),
        };
        (format!("{service}-{}", nodes.join("")), Arc::new(slice))
    }

    /// A node whose last endpoint terminates stops being a place to announce from while
    /// another node has a ready one; when none has, the terminating ones still serving are.
    #[test]
    fn ready_endpoints_first_terminating_ones_only_when_none_is_ready() {
        let services = HashMap::from([service("shop", "web", &["192.0.2.10"], true)]);
        let draining_on = |ready: &[&str], draining: &[&str]| {
            let (key, slice) = slice("shop/web", ready);
            let mut slice = (*slice).clone();
            slice.draining = draining.iter().map(|n| n.to_string()).collect();
            slice.any_serving = true;
            HashMap::from([(key, Arc::new(slice))])
        };
        let nodes = |slices: &HashMap<String, Arc<ServingNodes>>| -> Vec<String> {
            let targets = Targets::new(&services, slices);
            let target = targets.iter().next().expect("a target");
            target
                .serving_nodes
                .expect("Local")
                .into_iter()
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(nodes(&draining_on(&["b"], &["a"])), ["b"]);
        assert_eq!(nodes(&draining_on(&[], &["a"])), ["a"]);
    }

    #[test]
    fn sharers_are_one_target_and_local_ones_only_where_all_are_served() {
        let services = HashMap::from([
            service("shop", "web", &["192.0.2.10", "2001:db8::10"], true),
            service("shop", "web-udp", &["192.0.2.10"], true),
            service("shop", "api", &["192.0.2.9"], false),
        ]);
        let slices = HashMap::from([
            slice("shop/web", &["a", "b"]),
            slice("shop/web", &["c"]),
            slice("shop/web-udp", &["b", "c", "d"]),
            // A Cluster Service's endpoints do not restrict its announcers.
            slice("shop/api", &["a"]),
        ]);
        let targets = Targets::new(&services, &slices);
        type Seen<'a> = (String, Vec<&'a str>, Option<Vec<&'a str>>);
        let seen: Vec<Seen> = targets
            .iter()
            .map(|t| {
                (
                    t.ip.to_string(),
                    t.service_keys().collect(),
                    t.serving_nodes.map(|n| n.into_iter().collect()),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("192.0.2.9".into(), vec!["shop/api"], None),
                (
                    "192.0.2.10".into(),
                    vec!["shop/web", "shop/web-udp"],
                    Some(vec!["b", "c"])
                ),
                (
                    "2001:db8::10".into(),
                    vec!["shop/web"],
                    Some(vec!["a", "b", "c"])
                ),
            ]
        );
    }

    #[test]
    fn an_ip_is_served_while_one_of_its_services_has_a_serving_endpoint() {
        let services = HashMap::from([
            service("shop", "web", &["192.0.2.10"], false),
            service("shop", "web-udp", &["192.0.2.10"], false),
            service("shop", "idle", &["192.0.2.11"], false),
        ]);
        let slices = HashMap::from([slice("shop/web-udp", &["a"]), slice("shop/idle", &[])]);
        let served: Vec<(String, bool)> = Targets::new(&services, &slices)
            .iter()
            .map(|t| (t.ip.to_string(), t.served))
            .collect();
        assert_eq!(
            served,
            [("192.0.2.10".into(), true), ("192.0.2.11".into(), false)]
        );
    }

    #[test]
    fn a_local_service_without_endpoints_may_be_announced_by_no_node() {
        let services = HashMap::from([service("shop", "web", &["192.0.2.10"], true)]);
        let slices = HashMap::new();
        let targets = Targets::new(&services, &slices);
        let only: Vec<Option<BTreeSet<&str>>> = targets.iter().map(|t| t.serving_nodes).collect();
        assert_eq!(only, [Some(BTreeSet::new())]);
    }
}
