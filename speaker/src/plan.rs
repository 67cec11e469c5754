//! From what the cluster and the network look like to who announces every IP, and what this
//! node answers for on which interface. Every speaker computes the same owners from the same
//! view. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use herald_api::selector::matches;
use herald_api::{AddressEntry, IPPool, L2Advertisement, LbService};
use ipnetwork::IpNetwork;

use crate::announcer::Plan;
use crate::election::{self, Candidate, NoOwner, NodeFacts};
use crate::interfaces::Snapshot;

/// Everything the decision depends on.
pub struct View<'a> {
    pub me: &'a str,
    pub services: &'a [&'a LbService],
    pub nodes: &'a BTreeMap<String, NodeFacts>,
    /// Subnets each live speaker can announce on (from its heartbeats; this node's from
    /// its own interfaces).
    pub subnets: &'a dyn Fn(&str) -> Vec<IpNetwork>,
    pub pools: &'a [&'a IPPool],
    pub advertisements: &'a [&'a L2Advertisement],
    /// Nodes with a serving endpoint, per Service key (`namespace/name`).
    pub endpoints: &'a BTreeMap<String, BTreeSet<String>>,
    pub interfaces: &'a Snapshot,
}

/// The outcome for one IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpDecision {
    /// Services holding the IP (several when shared), by key.
    pub services: Vec<String>,
    pub owner: Result<String, NoOwner>,
    /// Interfaces this node announces on, when it is the owner.
    pub interfaces: Vec<String>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub ips: BTreeMap<IpAddr, IpDecision>,
    pub plan: Plan,
}

pub fn decide(view: &View) -> Decision {
    let mut by_ip: BTreeMap<IpAddr, Vec<&LbService>> = BTreeMap::new();
    for svc in view.services {
        if !svc.spec.load_balancer || !svc.allocated_by_herald() {
            continue;
        }
        for &ip in &svc.status.ingress {
            by_ip.entry(ip).or_default().push(svc);
        }
    }
    // Parsed once per pass, not once per IP.
    let pools: Vec<(&IPPool, Vec<herald_api::IpRange>)> = view
        .pools
        .iter()
        .map(|p| {
            let ranges = p
                .spec
                .addresses
                .iter()
                .filter_map(|a| AddressEntry::parse(a).ok())
                .map(|e| e.range)
                .collect();
            (*p, ranges)
        })
        .collect();
    let mut decision = Decision::default();
    for (ip, services) in by_ip {
        let keys = services.iter().map(|s| s.key()).collect();
        let (owner, forced) = match owner(view, &pools, ip, &services) {
            Ok((owner, forced)) => (Ok(owner), forced),
            Err(e) => (Err(e), Vec::new()),
        };
        let mut interfaces = Vec::new();
        if owner.as_deref() == Ok(view.me) {
            for iface in view.interfaces.announce_on(ip, &forced) {
                decision.plan.entry(iface.index).or_default().insert(ip);
                interfaces.push(iface.name.clone());
            }
        }
        decision.ips.insert(
            ip,
            IpDecision {
                services: keys,
                owner,
                interfaces,
            },
        );
    }
    decision
}

/// The owner of `ip` and the interfaces forced by the advertisements that select its pool.
fn owner(
    view: &View,
    pools: &[(&IPPool, Vec<herald_api::IpRange>)],
    ip: IpAddr,
    services: &[&LbService],
) -> Result<(String, Vec<String>), NoOwner> {
    let pool = pools
        .iter()
        .find(|(_, ranges)| ranges.iter().any(|r| r.contains(ip)))
        .map(|(p, _)| *p)
        .ok_or(NoOwner::NoPool(ip))?;
    let pool_name = pool.metadata.name.clone().unwrap_or_default();
    let pool_labels = pool.metadata.labels.clone().unwrap_or_default();
    let ads: Vec<&L2Advertisement> = view
        .advertisements
        .iter()
        .copied()
        .filter(|ad| {
            let s = &ad.spec;
            (s.ip_pools.is_empty() && s.ip_pool_selectors.is_empty())
                || s.ip_pools.contains(&pool_name)
                || s.ip_pool_selectors
                    .iter()
                    .any(|sel| matches(sel, &pool_labels))
        })
        .collect();
    if ads.is_empty() {
        return Err(NoOwner::NotAdvertised(pool_name));
    }
    let allowed = |n: &NodeFacts| {
        ads.iter().any(|ad| {
            ad.spec.node_selectors.is_empty()
                || ad.spec.node_selectors.iter().any(|s| matches(s, &n.labels))
        })
    };
    // Sharers of one IP: every one of them must be served from the owner. For ETP Local
    // they select the same pods (the controller enforces it), so one endpoint set stands
    // for all; intersecting keeps this safe even if it did not.
    let mut local: Option<BTreeSet<String>> = None;
    for svc in services {
        if svc.spec.local_traffic {
            let eps = view.endpoints.get(&svc.key()).cloned().unwrap_or_default();
            local = Some(match local {
                None => eps,
                Some(prev) => prev.intersection(&eps).cloned().collect(),
            });
        }
    }
    let eligible = election::eligible(view.nodes, &allowed, local.as_ref())?;
    let forced: Vec<String> = ads
        .iter()
        .flat_map(|ad| ad.spec.interfaces.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let candidates: Vec<Candidate> = eligible
        .iter()
        .map(|node| Candidate {
            node,
            on_subnet: if *node == view.me {
                view.interfaces.on_subnet(ip, &forced)
            } else {
                (view.subnets)(node).iter().any(|n| n.contains(ip))
            },
        })
        .collect();
    let owner = election::owner(ip, &candidates).ok_or(NoOwner::NoLiveNode)?;
    Ok((owner.to_owned(), forced))
}

#[cfg(test)]
mod tests;
