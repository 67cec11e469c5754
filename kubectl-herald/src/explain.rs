//! `kubectl herald explain svc/NAME`: which IP from which pool and why, or why none and what
//! to do; which node answers for each IP and why, which nodes may not and why; for BGP, the
//! sessions that carry its routes. Pure: computed from a [`Snapshot`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use herald_api::keys::{DEFAULT_LOAD_BALANCER_CLASS, IPS_KEYS, POOL_KEYS, SHARING_KEYS};
use herald_api::selector::Scope;
use herald_api::service::allocated_condition;
use herald_api::{BGPAdvertisement, IPPool, L2Advertisement, pool::eligible};
use k8s_openapi::api::core::v1::Service;
use serde::Serialize;

use crate::facts;
use crate::snapshot::Snapshot;

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// `namespace/name`.
    pub service: String,
    /// Why Herald does not serve it, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_served: Option<String>,
    /// What the Service asks for (annotations, `spec.loadBalancerIP`).
    pub asks: Vec<String>,
    /// Herald's condition on the Service: reason and message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<ConditionSeen>,
    /// What to do about a failed allocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    pub external_traffic_policy: String,
    pub addresses: Vec<Address>,
    pub nodes: Vec<NodeVerdict>,
    /// Herald's latest Warnings about the Service (`reason: message`), newest last.
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConditionSeen {
    pub allocated: bool,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    pub ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Why this pool (and this address).
    pub why: String,
    /// The node answering ARP / NDP for it, from its `L2Announcement`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    /// Why no node answers for it by L2, when none does and L2 announces its pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_answered: Option<String>,
    /// BGP sessions of nodes that may announce it, with the peer's state.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bgp: Vec<Route>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub node: String,
    pub peer: String,
    pub state: String,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeVerdict {
    pub node: String,
    pub may_announce: bool,
    /// How much the L2Advertisements prefer it (`preferredNodeSelectors`): the highest
    /// score among the nodes that may announce wins.
    #[serde(skip_serializing_if = "is_zero")]
    pub preference: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub why_not: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The Service's IPs this node answers for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub answers_for: Vec<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How many of Herald's Warnings are shown.
const WARNINGS_SHOWN: usize = 5;

pub fn explain(snapshot: &Snapshot, namespace: &str, name: &str) -> Option<Explanation> {
    let svc = snapshot.services.iter().find(|s| {
        s.metadata.namespace.as_deref() == Some(namespace)
            && s.metadata.name.as_deref() == Some(name)
    })?;
    let spec = svc.spec.clone().unwrap_or_default();
    let labels = svc.metadata.labels.clone().unwrap_or_default();
    let annotations = svc.metadata.annotations.clone().unwrap_or_default();
    let key = format!("{namespace}/{name}");
    let asks = asks(svc, &annotations);
    let condition = condition(svc);
    let fix = condition
        .as_ref()
        .filter(|c| !c.allocated)
        .and_then(|c| fix(&c.reason));
    let ns_labels = snapshot
        .namespaces
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(namespace))
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    let eligible = eligible(&snapshot.pools, namespace, &ns_labels, &labels);
    let local = spec.external_traffic_policy.as_deref() == Some("Local");

    let ips: Vec<IpAddr> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect();
    let pools_of: Vec<Option<&IPPool>> = ips
        .iter()
        .map(|ip| pool_of(snapshot, condition.as_ref(), *ip))
        .collect();
    let announcing: BTreeMap<String, (String, Vec<String>, Option<String>)> = snapshot
        .announcements
        .iter()
        .filter(|a| a.metadata.namespace.as_deref() == Some(namespace) && a.spec.service == name)
        .map(|a| {
            (
                a.spec.ip.clone(),
                (
                    a.spec.node.clone(),
                    a.spec.interfaces.clone(),
                    a.spec.reason.clone(),
                ),
            )
        })
        .collect();

    // Which nodes may announce, and why not.
    let ready_endpoints: Vec<&str> = snapshot
        .slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .filter_map(|e| e.node_name.as_deref())
        .collect();
    // The advertisements announcing each IP's pool for this Service, worked out once.
    let ads_of: Vec<Option<PoolAds>> = pools_of
        .iter()
        .map(|pool| pool.map(|p| PoolAds::of(snapshot, p, &labels)))
        .collect();
    let mut nodes: Vec<NodeVerdict> = snapshot
        .nodes
        .iter()
        .map(|node| {
            let node_name = facts::name(node);
            let node_labels = node.metadata.labels.clone().unwrap_or_default();
            let mut why_not = facts::blockers(snapshot, node);
            let mut preference = 0;
            for ads in ads_of.iter().flatten() {
                let preferred = ads
                    .l2
                    .iter()
                    .filter(|a| a.spec.scope.selects_node(&node_labels))
                    .map(|a| a.spec.preference(&node_labels));
                preference = preference.max(preferred.max().unwrap_or(0));
                let advertised = !(ads.l2.is_empty() && ads.bgp.is_empty());
                let selects_node = ads.scopes().any(|s| s.selects_node(&node_labels));
                if advertised && !selects_node {
                    why_not.push(format!(
                        "no advertisement of IPPool {} selects it (their nodeSelectors)",
                        ads.pool
                    ));
                }
            }
            if local && !ready_endpoints.contains(&node_name) {
                why_not.push(
                    "no ready endpoint of the Service on it (externalTrafficPolicy: Local)"
                        .to_owned(),
                );
            }
            let answers_for = announcing
                .iter()
                .filter(|(_, (n, _, _))| n == node_name)
                .map(|(ip, _)| ip.clone())
                .collect();
            NodeVerdict {
                node: node_name.to_owned(),
                may_announce: why_not.is_empty(),
                preference,
                why_not,
                notes: facts::notes(node),
                answers_for,
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    let may: Vec<&str> = nodes
        .iter()
        .filter(|n| n.may_announce)
        .map(|n| n.node.as_str())
        .collect();

    let addresses = ips
        .iter()
        .zip(pools_of.iter().zip(&ads_of))
        .map(|(ip, (pool, ads))| {
            let seen = announcing.get(&ip.to_string());
            let l2_announced = ads.as_ref().is_some_and(|a| !a.l2.is_empty());
            let bgp_announced = ads.as_ref().is_some_and(|a| !a.bgp.is_empty());
            let answered_by = seen.map(|s| s.0.clone()).filter(|n| !n.is_empty());
            let not_answered = match (l2_announced, &answered_by) {
                (true, None) => Some(
                    seen.and_then(|s| s.2.clone())
                        .unwrap_or_else(|| "no speaker has announced it yet".to_owned()),
                ),
                _ => None,
            };
            let bgp = if bgp_announced {
                snapshot
                    .sessions
                    .iter()
                    .filter(|s| may.contains(&s.spec.node.as_str()))
                    .map(|s| Route {
                        node: s.spec.node.clone(),
                        peer: s.spec.peer.clone(),
                        state: s.spec.state.clone(),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            Address {
                ip: ip.to_string(),
                pool: pool.and_then(|p| p.metadata.name.clone()),
                why: why_pool(*ip, *pool, &key, &annotations, &spec, &eligible),
                answered_by,
                interfaces: seen.map(|s| s.1.clone()).unwrap_or_default(),
                not_answered,
                bgp,
            }
        })
        .collect();

    let mut warnings: Vec<String> = snapshot
        .events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter(|e| {
            e.reporting_component
                .as_deref()
                .is_some_and(|c| c.starts_with("herald-"))
        })
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.as_deref().unwrap_or_default(),
                e.message.as_deref().unwrap_or_default()
            )
        })
        .collect();
    let skip = warnings.len().saturating_sub(WARNINGS_SHOWN);
    warnings.drain(..skip);

    Some(Explanation {
        service: key,
        not_served: not_served(svc),
        asks,
        condition,
        fix,
        external_traffic_policy: spec
            .external_traffic_policy
            .unwrap_or_else(|| "Cluster".to_owned()),
        addresses,
        nodes,
        warnings,
    })
}

/// The advertisements of one pool that select a Service (by `serviceSelectors`).
struct PoolAds<'s> {
    pool: &'s str,
    l2: Vec<&'s L2Advertisement>,
    bgp: Vec<&'s BGPAdvertisement>,
}

impl<'s> PoolAds<'s> {
    fn of(snapshot: &'s Snapshot, pool: &'s IPPool, labels: &BTreeMap<String, String>) -> Self {
        let selects = |s: &Scope| s.selects_pool(pool) && s.selects_service(Some(labels));
        Self {
            pool: pool.metadata.name.as_deref().unwrap_or_default(),
            l2: snapshot
                .l2_advertisements
                .iter()
                .filter(|a| selects(&a.spec.scope))
                .collect(),
            bgp: snapshot
                .bgp_advertisements
                .iter()
                .filter(|a| selects(&a.spec.scope))
                .collect(),
        }
    }

    /// Every selecting advertisement's scope, L2 and BGP.
    fn scopes(&self) -> impl Iterator<Item = &Scope> {
        let l2 = self.l2.iter().map(|a| &a.spec.scope);
        l2.chain(self.bgp.iter().map(|a| &a.spec.scope))
    }
}

fn not_served(svc: &Service) -> Option<String> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return Some(format!(
            "it is of type {}, not LoadBalancer",
            spec.type_.as_deref().unwrap_or("ClusterIP")
        ));
    }
    match spec.load_balancer_class.as_deref() {
        Some(class) if class != DEFAULT_LOAD_BALANCER_CLASS => Some(format!(
            "its loadBalancerClass {class} is another controller's (Herald serves {DEFAULT_LOAD_BALANCER_CLASS} and Services without a class)"
        )),
        _ => None,
    }
}

fn asks(svc: &Service, annotations: &BTreeMap<String, String>) -> Vec<String> {
    let mut asks = Vec::new();
    for (keys, what) in [
        (&IPS_KEYS[..], "IPs"),
        (&POOL_KEYS[..], "IPPool"),
        (&SHARING_KEYS[..], "sharing key"),
    ] {
        for key in keys {
            if let Some(value) = annotations.get(*key) {
                asks.push(format!(
                    "{what} {} ({key})",
                    herald_api::events::quote(value)
                ));
            }
        }
    }
    if let Some(ip) = svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_ip.as_deref())
    {
        asks.push(format!(
            "IP {} (spec.loadBalancerIP)",
            herald_api::events::quote(ip)
        ));
    }
    asks
}

fn condition(svc: &Service) -> Option<ConditionSeen> {
    let c = allocated_condition(svc)?;
    Some(ConditionSeen {
        allocated: c.status == "True",
        reason: c.reason.clone(),
        message: c.message.clone(),
    })
}

/// The pool an IP counts against: as the controller wrote it (`192.0.2.10 from IPPool lan`),
/// else the first pool holding it.
fn pool_of<'s>(
    snapshot: &'s Snapshot,
    condition: Option<&ConditionSeen>,
    ip: IpAddr,
) -> Option<&'s IPPool> {
    let written = condition.and_then(|c| {
        let rest = c
            .message
            .split(", ")
            .find_map(|part| part.strip_prefix(&format!("{ip} from IPPool ")))?;
        snapshot
            .pools
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(rest))
    });
    written.or_else(|| {
        snapshot
            .pools
            .iter()
            .find(|p| p.ranges().any(|r| r.contains(ip)))
    })
}

fn why_pool(
    ip: IpAddr,
    pool: Option<&IPPool>,
    key: &str,
    annotations: &BTreeMap<String, String>,
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    eligible: &[String],
) -> String {
    let Some(pool) = pool else {
        return "in no IPPool (another load balancer's, or a pool was removed)".to_owned();
    };
    let name = pool.metadata.name.as_deref().unwrap_or_default();
    let reserved = pool
        .spec
        .reservations
        .iter()
        .any(|r| r.service == key && r.addresses.iter().any(|a| a.parse() == Ok(ip)));
    if reserved {
        return format!("reserved for this Service in IPPool {name} (spec.reservations)");
    }
    let requested = IPS_KEYS
        .iter()
        .filter_map(|k| annotations.get(*k))
        .flat_map(|v| v.split(','))
        .chain(spec.load_balancer_ip.as_deref())
        .any(|v| v.trim().parse() == Ok(ip));
    if requested {
        return format!("asked for by IP; it is in IPPool {name}");
    }
    if POOL_KEYS
        .iter()
        .any(|k| annotations.get(*k).map(String::as_str) == Some(name))
    {
        return format!("asked for IPPool {name} by name; its lowest free address");
    }
    match eligible.iter().position(|p| p == name) {
        Some(_) => format!(
            "IPPool {name}: the first of the pools this Service may use ({}, in priority order) with a free address of its family",
            eligible.join(", ")
        ),
        None => format!(
            "IPPool {name}, which no longer admits this Service (its serviceAllocation or the namespace's labels changed); the controller moves it"
        ),
    }
}

/// What to do about a failed allocation, by the condition's reason.
fn fix(reason: &str) -> Option<String> {
    let text = match reason {
        "PoolExhausted" => {
            "add addresses to the pool (or a pool), or free some: `kubectl herald pools` shows usage; the Service gets an address as soon as one frees up"
        }
        "NoEligiblePool" => {
            "create an IPPool with addresses of the Service's family, or check the pools' autoAssign and serviceAllocation"
        }
        "NoSuchPool" => "fix the pool annotation, or create that IPPool",
        "NotInPool" | "WrongPool" => {
            "ask for an address inside the pool (or add the address to a pool)"
        }
        "IPInUse" => {
            "ask for another address, or give both Services the same sharing key (herald.dev/sharing-key) with different ports"
        }
        "IPReserved" => {
            "ask for another address: this one is kept for the Service named in the message"
        }
        "IPNotAllowed" | "PoolNotAllowed" => {
            "the pool's serviceAllocation must admit this namespace and Service (or ask for another pool)"
        }
        "PoolDisabled" | "PoolTerminating" => {
            "ask for another pool: this one gives no new addresses"
        }
        "FamilyMismatch" | "InvalidRequest" | "ConflictingRequest" => {
            "fix the Service's request as the message says"
        }
        _ => return None,
    };
    Some(text.to_owned())
}

/// The explanation as a person reads it.
pub fn text(e: &Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Service {}", e.service);
    if let Some(why) = &e.not_served {
        let _ = writeln!(out, "  Herald does not serve it: {why}");
        return out;
    }
    for ask in &e.asks {
        let _ = writeln!(out, "  asks for {ask}");
    }
    match &e.condition {
        Some(c) if c.allocated => {}
        Some(c) => {
            let _ = writeln!(out, "  no address: {} ({})", c.message, c.reason);
            if let Some(fix) = &e.fix {
                let _ = writeln!(out, "  fix: {fix}");
            }
        }
        None => {
            let _ = writeln!(
                out,
                "  no address yet, and no condition from Herald's controller: is it running?"
            );
        }
    }
    for a in &e.addresses {
        let _ = writeln!(out, "  {}: {}", a.ip, a.why);
        match (&a.answered_by, &a.not_answered) {
            (Some(node), _) => {
                let _ = writeln!(
                    out,
                    "    answered (ARP/NDP) by node {node} on {}",
                    if a.interfaces.is_empty() {
                        "no interface".to_owned()
                    } else {
                        a.interfaces.join(", ")
                    }
                );
            }
            (None, Some(why)) => {
                let _ = writeln!(out, "    answered by no node: {why}");
            }
            (None, None) => {}
        }
        for r in &a.bgp {
            let _ = writeln!(
                out,
                "    BGP: node {} to peer {} ({})",
                r.node, r.peer, r.state
            );
        }
    }
    // Who may announce matters once there is something to announce.
    let nodes = if e.addresses.is_empty() {
        &[][..]
    } else {
        let _ = writeln!(
            out,
            "  externalTrafficPolicy {}; nodes:",
            e.external_traffic_policy
        );
        &e.nodes[..]
    };
    for n in nodes {
        let state = if !n.answers_for.is_empty() {
            format!("answers for {}", n.answers_for.join(", "))
        } else if n.may_announce {
            "may announce (standing by)".to_owned()
        } else {
            format!("may not: {}", n.why_not.join("; "))
        };
        let preferred = if n.preference > 0 {
            format!(" (preferred, score {})", n.preference)
        } else {
            String::new()
        };
        let _ = writeln!(out, "    {}{preferred}: {state}", n.node);
        for note in &n.notes {
            let _ = writeln!(out, "      note: {note}");
        }
    }
    if !e.warnings.is_empty() {
        let _ = writeln!(out, "  Herald's latest Warnings:");
        for w in &e.warnings {
            let _ = writeln!(out, "    {w}");
        }
    }
    out
}
