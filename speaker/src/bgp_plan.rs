//! What this node tells each BGP router: the sessions it keeps (the `BGPPeer`s selecting it,
//! with the settings each session runs with) and the routes each is told (the Service IPs
//! of the pools its `BGPAdvertisement`s select). Every eligible node announces; there is no
//! election and gossip plays no part. Pure: `bgp_sessions` runs the sessions.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use herald_api::bgp::{Community, DynamicAsn, parse_duration};
use herald_api::selector::any_or_none;
use herald_api::service::IpFamily;
use herald_api::{BGPAdvertisement, BGPPeer, IPPool, IpRange};
use herald_bgp::bfd;
use herald_bgp::peer::{Peer, Stop};
use herald_bgp::rib::{RibOut, Route, Routes, Speaker};
use herald_bgp::session;
use herald_bgp::tcp_md5::Password;
use herald_bgp::wire::Family;
use ipnetwork::IpNetwork;

use crate::bgp_secrets::SecretState;
use crate::election::{Exclusion, NodeFacts};
use crate::interfaces::Snapshot;
use crate::node::NodeView;
use crate::targets::Targets;

/// RFC 4271's suggested hold time, MetalLB's default.
const DEFAULT_HOLD_TIME: Duration = Duration::from_secs(90);
/// How long the router keeps this node's routes across a restart (graceful restart).
const RESTART_TIME: Duration = Duration::from_secs(120);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// BGP's TCP port (RFC 4271).
const BGP_PORT: u16 = 179;

/// Everything the BGP decision depends on.
pub struct BgpView<'a> {
    pub me: &'a str,
    /// This node's Node (`None` before the cache has it: nothing is announced).
    pub node: Option<&'a NodeView>,
    pub targets: &'a Targets<'a>,
    /// Per Local Service, the nodes that announce it now (`settle`).
    pub local_announcing: &'a BTreeMap<&'a str, BTreeSet<&'a str>>,
    pub pools: &'a [&'a IPPool],
    pub peers: &'a [&'a BGPPeer],
    pub advertisements: &'a [&'a BGPAdvertisement],
    pub interfaces: &'a Snapshot,
    /// The password Secrets the peers name, by name (`bgp_secrets`).
    pub secrets: &'a BTreeMap<String, SecretState>,
    /// Which nodes count as excluded from load balancers.
    pub exclusion: Exclusion,
}

/// One session this node keeps, and what it tells the router. A change of `peer` opens the
/// session anew; a change of `routes` (next hops included) goes out over the running one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPlan {
    pub peer: Peer,
    pub routes: RibOut,
}

/// This node's BGP share.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BgpDecision {
    /// The sessions, by `BGPPeer` name.
    pub sessions: BTreeMap<String, PeerPlan>,
    /// Peers selecting this node that it cannot speak with, and why (said by the shell).
    pub refused: BTreeMap<String, String>,
    /// Peers waiting for their password Secret to be read (no session yet, nothing to say).
    pub waiting: BTreeSet<String>,
    /// Communities of the advertisements that cannot be attached, and why (the CEL rule
    /// checks their shape, not the range of each number).
    pub bad_communities: Vec<String>,
}

/// Decides the sessions and their routes.
pub fn decide(view: &BgpView) -> BgpDecision {
    let mut decision = BgpDecision {
        bad_communities: community_errors(view.advertisements),
        ..BgpDecision::default()
    };
    let Some(node) = view.node else {
        return decision;
    };
    let facts = NodeFacts::of(node, true, view.exclusion);
    let selected = view
        .peers
        .iter()
        .filter(|p| any_or_none(&p.spec.node_selectors, &facts.labels));
    for bgp_peer in selected {
        let name = bgp_peer.metadata.name.clone().unwrap_or_default();
        let password = match password(bgp_peer, view.secrets) {
            Ok(p) => p,
            Err(None) => {
                decision.waiting.insert(name);
                continue;
            }
            Err(Some(why)) => {
                decision.refused.insert(name, why);
                continue;
            }
        };
        match settings(bgp_peer, node, view.interfaces) {
            Ok((peer, speaker)) => {
                let routes = RibOut {
                    speaker,
                    routes: routes(view, &facts, &name),
                };
                let peer = Peer { password, ..peer };
                decision.sessions.insert(name, PeerPlan { peer, routes });
            }
            Err(why) => {
                decision.refused.insert(name, why);
            }
        }
    }
    decision
}

/// How this node's sessions end when its speaker stops, and why. A stop on a node that stays
/// in service (Ready and schedulable: a rolling upgrade, a pod deleted) is a restart: routers
/// that negotiated graceful restart keep its routes until it is back. A stop on a node
/// leaving service (cordoned by `kubectl drain`, not Ready as kubelet's graceful node
/// shutdown makes it, or gone) withdraws them with Cease: nothing comes back to take the
/// stale routes over, and the router would send traffic to the node until they expire.
pub fn stop_of(node: Option<&NodeView>) -> (Stop, &'static str) {
    match node {
        None => (Stop::Cease, "its Node is gone"),
        Some(n) if n.unschedulable => (Stop::Cease, "its Node is cordoned (drained)"),
        Some(n) if !n.ready => (Stop::Cease, "its Node is not Ready (shutting down)"),
        Some(_) => (Stop::Restart, "its Node stays in service (a restart)"),
    }
}

/// The routes for the peer `peer_name`: nothing while this node may not announce (not
/// Ready, network unavailable, excluded from load balancers), the session staying up.
fn routes(view: &BgpView, node: &NodeFacts, peer_name: &str) -> Routes {
    let mut routes = Routes::new();
    if !node.ready || node.excluded {
        return routes;
    }
    // Per pool: its ranges and the advertisements that select it, this node and this peer.
    let pools: Vec<(Vec<IpRange>, Vec<&BGPAdvertisement>)> = view
        .pools
        .iter()
        .map(|pool| {
            let ads = view
                .advertisements
                .iter()
                .copied()
                .filter(|ad| {
                    let s = &ad.spec;
                    s.scope.selects_pool(pool)
                        && s.scope.selects_node(&node.labels)
                        && (s.peers.is_empty() || s.peers.iter().any(|p| p == peer_name))
                })
                .collect();
            (pool.ranges().collect(), ads)
        })
        .filter(|(_, ads): &(_, Vec<_>)| !ads.is_empty())
        .collect();
    if pools.is_empty() {
        return routes;
    }
    for target in view.targets.iter() {
        // Only while something can serve it: a route draws traffic that nothing would
        // take (kube-proxy rejects it).
        if !target.served {
            continue;
        }
        // externalTrafficPolicy Local: only from a node serving every Local holder, once its
        // kube-proxy had time to program the endpoint (`settle`).
        let local_here = target
            .holders
            .iter()
            .filter(|(_, _, svc)| svc.local_traffic)
            .all(|(_, key, _)| {
                view.local_announcing
                    .get(key)
                    .is_some_and(|nodes| nodes.contains(view.me))
            });
        if !local_here {
            continue;
        }
        let Some((_, pool_ads)) = pools
            .iter()
            .find(|(ranges, _)| ranges.iter().any(|r| r.contains(target.ip)))
        else {
            continue;
        };
        // The advertisements selecting one of the IP's Services (`serviceSelectors`).
        let ads: Vec<&BGPAdvertisement> = pool_ads
            .iter()
            .copied()
            .filter(|ad| target.selected_by(&ad.spec.scope))
            .collect();
        // One route per prefix length the advertisements ask for; Services whose IPs fall
        // in one aggregate share its route, with the attributes of all.
        let mut lengths: Vec<u8> = ads
            .iter()
            .map(|ad| ad.spec.prefix_length(target.ip))
            .collect();
        lengths.sort_unstable();
        lengths.dedup();
        for length in lengths {
            let Ok(prefix) = IpNetwork::new(target.ip, length) else {
                continue;
            };
            let Ok(prefix) = IpNetwork::new(prefix.network(), length) else {
                continue;
            };
            let with: Vec<&BGPAdvertisement> = ads
                .iter()
                .copied()
                .filter(|ad| ad.spec.prefix_length(target.ip) == length)
                .collect();
            let route = route_of(&with);
            match routes.get_mut(&prefix) {
                Some(existing) => merge(existing, route),
                None => {
                    routes.insert(prefix, route);
                }
            }
        }
    }
    routes
}

/// One aggregate's route from the routes of the IPs in it: the highest LOCAL_PREF, every
/// community.
fn merge(into: &mut Route, other: Route) {
    into.local_pref = into.local_pref.max(other.local_pref);
    into.communities.extend(other.communities);
    into.communities.sort_unstable();
    into.communities.dedup();
    into.large_communities.extend(other.large_communities);
    into.large_communities.sort_unstable();
    into.large_communities.dedup();
}

/// The attributes the advertisements give a route: the highest LOCAL_PREF among them and
/// every community of each (communities the CEL rule let through but that are out of range
/// are left out; `BgpDecision::bad_communities` names them).
fn route_of(ads: &[&BGPAdvertisement]) -> Route {
    let mut route = Route {
        local_pref: ads.iter().filter_map(|ad| ad.spec.local_pref).max(),
        ..Route::default()
    };
    for text in ads.iter().flat_map(|ad| &ad.spec.communities) {
        match Community::parse(text) {
            Ok(Community::Standard(c)) => route.communities.push(c),
            Ok(Community::Large(c)) => route.large_communities.push(c),
            Err(_) => {}
        }
    }
    route.communities.sort_unstable();
    route.communities.dedup();
    route.large_communities.sort_unstable();
    route.large_communities.dedup();
    route
}

/// The communities of the advertisements that cannot be attached, with why.
fn community_errors(ads: &[&BGPAdvertisement]) -> Vec<String> {
    ads.iter()
        .flat_map(|ad| {
            let name = ad.metadata.name.clone().unwrap_or_default();
            ad.spec
                .communities
                .iter()
                .filter_map(move |c| Community::parse(c).err().map(|e| format!("{name}: {e}")))
        })
        .collect()
}

/// The peer's password from its Secret: `Ok(None)` without one; `Err(None)` while the
/// Secret is being read; `Err(Some(why))` when it cannot be used (the password is never
/// part of the reason).
fn password(
    bgp_peer: &BGPPeer,
    secrets: &BTreeMap<String, SecretState>,
) -> Result<Option<Password>, Option<String>> {
    let Some(reference) = &bgp_peer.spec.password_secret else {
        return Ok(None);
    };
    let secret = quote(&reference.name);
    let data = match secrets.get(&reference.name) {
        None | Some(SecretState::Waiting) => return Err(None),
        Some(SecretState::Missing) => {
            return Err(Some(format!(
                "its password Secret {secret} does not exist in Herald's namespace"
            )));
        }
        Some(SecretState::Unreadable(why)) => {
            return Err(Some(format!(
                "its password Secret {secret} cannot be read: {why}"
            )));
        }
        Some(SecretState::Data(data)) => data,
    };
    let key = reference.key();
    let bytes = data.get(key).ok_or_else(|| {
        Some(format!(
            "its password Secret {secret} has no key {}",
            quote(key)
        ))
    })?;
    Password::new(bytes).map(Some).map_err(|e| {
        Some(format!(
            "its password Secret {secret}, key {}: {e}",
            quote(key)
        ))
    })
}

/// How this node speaks with the router: the session's settings, and who it is in the
/// routes (next hops and router ID from the node's address facing the router).
fn settings(
    bgp_peer: &BGPPeer,
    node: &NodeView,
    interfaces: &Snapshot,
) -> Result<(Peer, Speaker), String> {
    let spec = &bgp_peer.spec;
    let address = spec.address().ok_or_else(|| {
        format!(
            "peerAddress {} is not an IP address",
            quote(&spec.peer_address)
        )
    })?;
    let source = match &spec.source_address {
        Some(text) => Some(
            text.parse::<IpAddr>()
                .map_err(|_| format!("sourceAddress {} is not an IP address", quote(text)))?,
        ),
        None => None,
    };
    let (next_hop_v4, next_hop_v6) = next_hops(address, source, node, interfaces);
    let router_id = spec
        .router_id()
        .or(next_hop_v4)
        .ok_or("no routerID is set and the node has no IPv4 address to use as one")?;
    let hold_time = match &spec.hold_time {
        Some(text) => parse_duration(text)
            .ok_or_else(|| format!("holdTime {} is not a duration", quote(text)))?,
        None => DEFAULT_HOLD_TIME,
    };
    let keepalive = match &spec.keepalive_time {
        Some(text) => parse_duration(text)
            .ok_or_else(|| format!("keepaliveTime {} is not a duration", quote(text)))?,
        None => hold_time / 3,
    };
    let connect_retry = match &spec.connect_time {
        Some(text) => parse_duration(text)
            .ok_or_else(|| format!("connectTime {} is not a duration", quote(text)))?,
        None => session::CONNECT_RETRY,
    };
    let peer_asn = match (spec.peer_asn, spec.dynamic_asn) {
        (Some(asn), _) => Some(asn),
        (None, Some(DynamicAsn::Internal)) => Some(spec.my_asn),
        (None, Some(DynamicAsn::External)) => None,
        (None, None) => return Err("neither peerASN nor dynamicASN is set".into()),
    };
    if spec.ebgp_multi_hop && spec.bfd.is_some() {
        return Err(
            "it asks for bfd and ebgpMultiHop: Herald runs BFD single hop only (RFC 5881); remove one of them".into(),
        );
    }
    // Passive: listen where the router would see this node, on BGP's port.
    let listen = if spec.passive {
        let local = source.or(if address.is_ipv4() {
            next_hop_v4.map(IpAddr::V4)
        } else {
            next_hop_v6
        });
        let local = local.ok_or(
            "it is passive and the node has no address of the router's family to listen on",
        )?;
        Some(SocketAddr::new(local, BGP_PORT))
    } else {
        None
    };
    // The families the session carries; a family it does not carry has no next hop, so
    // none of its routes is counted or sent.
    let carries = |family: IpFamily| {
        spec.address_families.is_empty() || spec.address_families.contains(&family)
    };
    let families: Vec<Family> = Family::ALL
        .into_iter()
        .filter(|f| {
            carries(match f {
                Family::Ipv4Unicast => IpFamily::V4,
                Family::Ipv6Unicast => IpFamily::V6,
            })
        })
        .collect();
    let peer = Peer {
        address: SocketAddr::new(address, spec.peer_port.unwrap_or(BGP_PORT)),
        source: source.map(|ip| SocketAddr::new(ip, 0)),
        listen,
        session: session::Config {
            local_asn: spec.my_asn,
            peer_asn,
            router_id,
            hold_time,
            keepalive,
            families,
            graceful_restart: spec.enable_graceful_restart.then_some(RESTART_TIME),
            restarting: false,
            connect_retry,
        },
        // An attempt gives up before the next one is due.
        connect_timeout: CONNECT_TIMEOUT.min(connect_retry),
        ttl: match (peer_asn != Some(spec.my_asn), spec.ebgp_multi_hop) {
            (false, _) => None,
            (true, false) => Some(1),
            (true, true) => Some(255),
        },
        password: None,
        bfd: spec.bfd.as_ref().map(|b| {
            let (receive_interval, transmit_interval, detect_mult) = b.timers();
            bfd::Config {
                transmit_interval,
                receive_interval,
                detect_mult,
                passive: b.passive_mode,
            }
        }),
    };
    let speaker = Speaker {
        local_asn: spec.my_asn,
        external: peer_asn != Some(spec.my_asn),
        next_hop_v4: next_hop_v4.filter(|_| carries(IpFamily::V4)),
        next_hop_v6: next_hop_v6.filter(|_| carries(IpFamily::V6)),
    };
    Ok((peer, speaker))
}

/// This node's addresses to give as next hops: those of the interface on the router's
/// subnet (or holding `source`), else the node's InternalIPs of each family (a router
/// further away, reached over multihop).
fn next_hops(
    router: IpAddr,
    source: Option<IpAddr>,
    node: &NodeView,
    interfaces: &Snapshot,
) -> (Option<Ipv4Addr>, Option<IpAddr>) {
    let facing = interfaces.interfaces.iter().find(|i| {
        i.up && i
            .networks
            .iter()
            .any(|n| source.map_or_else(|| n.contains(router), |s| n.ip() == s))
    });
    let on_facing = |v4: bool| {
        facing.and_then(|i| {
            i.networks
                .iter()
                .map(IpNetwork::ip)
                .find(|ip| ip.is_ipv4() == v4 && is_global(ip))
        })
    };
    let internal = |v4: bool| node.addresses.iter().copied().find(|ip| ip.is_ipv4() == v4);
    let v4 = on_facing(true)
        .or_else(|| internal(true))
        .and_then(|ip| match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        });
    let v6 = on_facing(false).or_else(|| internal(false));
    (v4, v6)
}

/// Not link-local, loopback or unspecified: an address a router can forward to.
fn is_global(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_loopback() && !v4.is_unspecified(),
        IpAddr::V6(v6) => !v6.is_unicast_link_local() && !v6.is_loopback() && !v6.is_unspecified(),
    }
}

fn quote(text: &str) -> String {
    herald_api::events::quote(text)
}

#[cfg(test)]
mod tests;
