//! What this speaker tells one peer (its Adj-RIB-Out): the routes it should have, and the
//! UPDATE messages that take the peer from what it was told to that. Pure.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};

use crate::wire::{self, Attribute, Family, MAX_MESSAGE, Message, Origin, Update};

/// How one prefix is announced, besides its prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    /// Sent to internal peers only (RFC 4271 §5.1.5).
    pub local_pref: Option<u32>,
    pub communities: Vec<u32>,
    pub large_communities: Vec<[u32; 3]>,
}

/// The routes for one peer, by prefix.
pub type Routes = BTreeMap<IpNetwork, Route>;

/// Who this speaker is to the peer, for the attributes every route carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Speaker {
    pub local_asn: u32,
    /// The peer is in another AS: this speaker's AS goes into AS_PATH, LOCAL_PREF does not
    /// go out.
    pub external: bool,
    /// Next hops: this node's addresses on the peering network, per family.
    pub next_hop_v4: Option<Ipv4Addr>,
    pub next_hop_v6: Option<IpAddr>,
}

/// Everything one peer should hold from this speaker: the routes, and who the speaker is to
/// it (its next hops can change under a running session: an address added or replaced).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RibOut {
    pub speaker: Speaker,
    pub routes: Routes,
}

impl RibOut {
    /// The prefixes the peer holds once told this: those of a family with a next hop.
    pub fn announced(&self) -> impl Iterator<Item = &IpNetwork> {
        self.routes
            .keys()
            .filter(|net| next_hop(&self.speaker, Family::of(net)).is_some())
    }

    /// How `net` reaches the peer: its route with the speaker's attributes for its family,
    /// `None` when it is not announced.
    fn sent(&self, net: &IpNetwork) -> Option<(&Route, IpAddr, bool, u32)> {
        let hop = next_hop(&self.speaker, Family::of(net))?;
        let route = self.routes.get(net)?;
        Some((route, hop, self.speaker.external, self.speaker.local_asn))
    }
}

/// The UPDATEs that change what the peer was told (`told`) into `desired`, in the families
/// in `families`; each fits in one message. Withdrawals go first, then announcements grouped
/// by identical attributes. A prefix of a family without a next hop is not announced; a new
/// next hop announces its family's prefixes again.
pub fn updates(families: &[Family], told: &RibOut, desired: &RibOut) -> Vec<Update> {
    let in_families = |net: &IpNetwork| families.contains(&Family::of(net));
    let withdrawn: Vec<IpNetwork> = told
        .announced()
        .filter(|net| in_families(net) && desired.sent(net).is_none())
        .copied()
        .collect();
    // Announced anew when missing or changed in any attribute.
    let mut by_route: BTreeMap<&Route, Vec<IpNetwork>> = BTreeMap::new();
    for (net, route) in &desired.routes {
        if !in_families(net) || desired.sent(net).is_none() || told.sent(net) == desired.sent(net) {
            continue;
        }
        by_route.entry(route).or_default().push(*net);
    }
    let speaker = &desired.speaker;
    let mut out = Vec::new();
    for family in Family::ALL {
        let nets: Vec<IpNetwork> = withdrawn
            .iter()
            .filter(|n| Family::of(n) == family)
            .copied()
            .collect();
        for chunk in chunks(&nets, Update::default(), |u, nets| {
            set_withdrawn(u, family, nets);
        }) {
            out.push(chunk);
        }
    }
    for (route, nets) in by_route {
        for family in Family::ALL {
            let Some(hop) = next_hop(speaker, family) else {
                continue;
            };
            let nets: Vec<IpNetwork> = nets
                .iter()
                .filter(|n| Family::of(n) == family)
                .copied()
                .collect();
            let base = Update {
                attributes: attributes(speaker, route, family, hop),
                ..Update::default()
            };
            out.extend(chunks(&nets, base, |u, nets| {
                set_announced(u, family, hop, nets)
            }));
        }
    }
    out
}

fn next_hop(speaker: &Speaker, family: Family) -> Option<IpAddr> {
    match family {
        Family::Ipv4Unicast => speaker.next_hop_v4.map(IpAddr::V4),
        Family::Ipv6Unicast => speaker.next_hop_v6,
    }
}

/// The path attributes of `route` (the multiprotocol one is added with the prefixes).
fn attributes(speaker: &Speaker, route: &Route, family: Family, hop: IpAddr) -> Vec<Attribute> {
    let mut attributes = vec![
        Attribute::Origin(Origin::Igp),
        Attribute::AsPath(if speaker.external {
            vec![speaker.local_asn]
        } else {
            Vec::new()
        }),
    ];
    if let (Family::Ipv4Unicast, IpAddr::V4(hop)) = (family, hop) {
        attributes.push(Attribute::NextHop(hop));
    }
    if let Some(pref) = route.local_pref.filter(|_| !speaker.external) {
        attributes.push(Attribute::LocalPref(pref));
    }
    if !route.communities.is_empty() {
        attributes.push(Attribute::Communities(route.communities.clone()));
    }
    if !route.large_communities.is_empty() {
        attributes.push(Attribute::LargeCommunities(route.large_communities.clone()));
    }
    attributes
}

fn v4(nets: &[IpNetwork]) -> Vec<Ipv4Network> {
    nets.iter()
        .filter_map(|n| match n {
            IpNetwork::V4(n) => Some(*n),
            IpNetwork::V6(_) => None,
        })
        .collect()
}

fn set_withdrawn(update: &mut Update, family: Family, nets: &[IpNetwork]) {
    match family {
        Family::Ipv4Unicast => update.withdrawn = v4(nets),
        Family::Ipv6Unicast => {
            update.attributes = vec![Attribute::MpUnreach {
                family,
                withdrawn: nets.to_vec(),
            }]
        }
    }
}

fn set_announced(update: &mut Update, family: Family, hop: IpAddr, nets: &[IpNetwork]) {
    match family {
        Family::Ipv4Unicast => update.announced = v4(nets),
        Family::Ipv6Unicast => {
            update
                .attributes
                .retain(|a| !matches!(a, Attribute::MpReach { .. }));
            update.attributes.push(Attribute::MpReach {
                family,
                next_hops: vec![hop],
                announced: nets.to_vec(),
            });
        }
    }
}

/// `nets` cut into UPDATEs built from `base` by `fill`, each within the largest message.
fn chunks(
    nets: &[IpNetwork],
    base: Update,
    fill: impl Fn(&mut Update, &[IpNetwork]),
) -> Vec<Update> {
    let mut out = Vec::new();
    let mut rest = nets;
    while !rest.is_empty() {
        // The room left once the attributes are in, at the largest prefix size (a /128 is
        // 17 octets), then filled as far as it goes.
        let mut probe = base.clone();
        fill(&mut probe, &[]);
        let used = wire::encode(&Message::Update(probe)).len();
        let room = MAX_MESSAGE.saturating_sub(used + 4).max(17);
        let mut take = (room / 17).clamp(1, rest.len());
        loop {
            let mut update = base.clone();
            fill(&mut update, &rest[..take]);
            let len = wire::encode(&Message::Update(update.clone())).len();
            if len <= MAX_MESSAGE || take == 1 {
                // Grow while more would still fit: short prefixes take less room.
                if take < rest.len() && len + 17 <= MAX_MESSAGE {
                    take = (take + (MAX_MESSAGE - len) / 17).min(rest.len());
                    continue;
                }
                out.push(update);
                rest = &rest[take..];
                break;
            }
            take -= 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().expect("prefix")
    }

    fn speaker(external: bool) -> Speaker {
        Speaker {
            local_asn: 4_200_000_001,
            external,
            next_hop_v4: Some(Ipv4Addr::new(192, 0, 2, 11)),
            next_hop_v6: Some("2001:db8::11".parse().unwrap()),
        }
    }

    fn rib(speaker: &Speaker, routes: &Routes) -> RibOut {
        RibOut {
            speaker: speaker.clone(),
            routes: routes.clone(),
        }
    }

    fn route(pref: u32) -> Route {
        Route {
            local_pref: Some(pref),
            communities: vec![(64500 << 16) | 100],
            large_communities: vec![[4_200_000_001, 1, 2]],
        }
    }

    /// The prefixes a peer holds after these UPDATEs, starting from `held`, each with the
    /// attributes it was last sent with (none for those it held before).
    fn apply(held: &Routes, updates: &[Update]) -> BTreeMap<IpNetwork, Vec<Attribute>> {
        let mut attrs: BTreeMap<IpNetwork, Vec<Attribute>> =
            held.keys().map(|n| (*n, Vec::new())).collect();
        for update in updates {
            for n in &update.withdrawn {
                attrs.remove(&IpNetwork::V4(*n));
            }
            for a in &update.attributes {
                if let Attribute::MpUnreach { withdrawn, .. } = a {
                    for n in withdrawn {
                        attrs.remove(n);
                    }
                }
            }
            let plain: Vec<Attribute> = update
                .attributes
                .iter()
                .filter(|a| !matches!(a, Attribute::MpReach { .. } | Attribute::MpUnreach { .. }))
                .cloned()
                .collect();
            for n in &update.announced {
                attrs.insert(IpNetwork::V4(*n), plain.clone());
            }
            for a in &update.attributes {
                if let Attribute::MpReach { announced, .. } = a {
                    for n in announced {
                        attrs.insert(*n, plain.clone());
                    }
                }
            }
        }
        attrs
    }

    #[test]
    fn a_table_goes_out_with_next_hops_and_the_attributes_the_peer_may_see() {
        let desired = Routes::from([
            (net("198.51.100.10/32"), route(200)),
            (net("2001:db8:100::10/128"), route(200)),
        ]);
        let updates = updates_for(&speaker(true), &desired);
        assert_eq!(updates.len(), 2, "one per family: {updates:?}");
        let v4 = &updates[0];
        assert_eq!(v4.announced, ["198.51.100.10/32".parse().unwrap()]);
        assert!(
            v4.attributes
                .contains(&Attribute::AsPath(vec![4_200_000_001]))
        );
        assert!(
            v4.attributes
                .contains(&Attribute::NextHop(Ipv4Addr::new(192, 0, 2, 11)))
        );
        assert!(
            !v4.attributes
                .iter()
                .any(|a| matches!(a, Attribute::LocalPref(_))),
            "no LOCAL_PREF to an external peer"
        );
        assert!(
            v4.attributes
                .contains(&Attribute::Communities(vec![(64500 << 16) | 100]))
        );
        assert!(
            v4.attributes
                .contains(&Attribute::LargeCommunities(vec![[4_200_000_001, 1, 2]]))
        );
        assert!(updates[1].attributes.contains(&Attribute::MpReach {
            family: Family::Ipv6Unicast,
            next_hops: vec!["2001:db8::11".parse().unwrap()],
            announced: vec![net("2001:db8:100::10/128")],
        }));

        // Inside the AS: LOCAL_PREF goes, the AS does not go into AS_PATH.
        let internal = updates_for(&speaker(false), &desired);
        assert!(internal[0].attributes.contains(&Attribute::LocalPref(200)));
        assert!(
            internal[0]
                .attributes
                .contains(&Attribute::AsPath(Vec::new()))
        );
    }

    fn updates_for(speaker: &Speaker, desired: &Routes) -> Vec<Update> {
        updates(&Family::ALL, &RibOut::default(), &rib(speaker, desired))
    }

    #[test]
    fn only_changes_go_out_withdrawals_first() {
        let told = Routes::from([
            (net("198.51.100.10/32"), route(100)),
            (net("198.51.100.11/32"), route(100)),
            (net("2001:db8:100::10/128"), route(100)),
        ]);
        let mut desired = told.clone();
        desired.remove(&net("198.51.100.11/32"));
        desired.remove(&net("2001:db8:100::10/128"));
        desired.insert(net("198.51.100.10/32"), route(300));
        let s = speaker(false);
        let out = updates(&Family::ALL, &rib(&s, &told), &rib(&s, &desired));
        assert_eq!(out[0].withdrawn, ["198.51.100.11/32".parse().unwrap()]);
        assert_eq!(
            out[1].attributes,
            [Attribute::MpUnreach {
                family: Family::Ipv6Unicast,
                withdrawn: vec![net("2001:db8:100::10/128")]
            }]
        );
        assert_eq!(out[2].announced, ["198.51.100.10/32".parse().unwrap()]);
        assert!(out[2].attributes.contains(&Attribute::LocalPref(300)));
        assert_eq!(out.len(), 3);
        assert!(updates(&Family::ALL, &rib(&s, &desired), &rib(&s, &desired)).is_empty());
    }

    #[test]
    fn a_family_the_session_did_not_agree_on_or_without_a_next_hop_is_not_sent() {
        let desired = Routes::from([
            (net("198.51.100.10/32"), route(100)),
            (net("2001:db8:100::10/128"), route(100)),
        ]);
        let v4_only = updates(
            &[Family::Ipv4Unicast],
            &RibOut::default(),
            &rib(&speaker(true), &desired),
        );
        assert_eq!(v4_only.len(), 1);
        assert_eq!(v4_only[0].announced.len(), 1);
        let no_v6_hop = Speaker {
            next_hop_v6: None,
            ..speaker(true)
        };
        let out = updates_for(&no_v6_hop, &desired);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_new_next_hop_announces_its_family_again_and_a_lost_one_withdraws_it() {
        let desired = Routes::from([
            (net("198.51.100.10/32"), route(100)),
            (net("2001:db8:100::10/128"), route(100)),
        ]);
        let no_v6_hop = Speaker {
            next_hop_v6: None,
            ..speaker(true)
        };
        let before = rib(&no_v6_hop, &desired);
        let after = rib(&speaker(true), &desired);
        // The address appears: the IPv6 prefix goes out, the IPv4 one is not sent again.
        let out = updates(&Family::ALL, &before, &after);
        assert_eq!(
            apply(&Routes::new(), &out).into_keys().collect::<Vec<_>>(),
            [net("2001:db8:100::10/128")]
        );
        // It goes away: the IPv6 prefix is withdrawn.
        let out = updates(&Family::ALL, &after, &before);
        assert_eq!(
            out[0].attributes,
            [Attribute::MpUnreach {
                family: Family::Ipv6Unicast,
                withdrawn: vec![net("2001:db8:100::10/128")]
            }]
        );
        assert_eq!(out.len(), 1);
        // Replaced: the IPv4 prefix goes out with the new next hop.
        let moved = Speaker {
            next_hop_v4: Some(Ipv4Addr::new(192, 0, 2, 99)),
            ..speaker(true)
        };
        let out = updates(&Family::ALL, &after, &rib(&moved, &desired));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].announced, ["198.51.100.10/32".parse().unwrap()]);
        assert!(
            out[0]
                .attributes
                .contains(&Attribute::NextHop(Ipv4Addr::new(192, 0, 2, 99)))
        );
    }

    fn prefix() -> impl Strategy<Value = IpNetwork> {
        prop_oneof![
            (any::<u8>(), any::<u8>()).prop_map(|(a, b)| net(&format!("198.{a}.{b}.7/32"))),
            any::<u16>().prop_map(|a| net(&format!("2001:db8:{a:x}::7/128"))),
            any::<u8>().prop_map(|a| net(&format!("203.0.{a}.0/24"))),
        ]
    }

    fn table() -> impl Strategy<Value = Routes> {
        prop::collection::btree_map(prefix(), (0u32..3).prop_map(route), 0..600)
    }

    /// A speaker whose next hops may be missing or moved.
    fn some_speaker() -> impl Strategy<Value = Speaker> {
        (prop::option::of(10u8..12), prop::option::of(10u16..12)).prop_map(|(v4, v6)| Speaker {
            next_hop_v4: v4.map(|a| Ipv4Addr::new(192, 0, 2, a)),
            next_hop_v6: v6.map(|a| IpAddr::V6(format!("2001:db8::{a:x}").parse().unwrap())),
            ..speaker(true)
        })
    }

    proptest! {
        /// Whatever the peer was told and whatever it should have, the UPDATEs bring it
        /// there exactly, each fits in a message, and nothing unchanged is sent again.
        #[test]
        fn the_updates_take_the_peer_from_what_it_was_told_to_the_desired_table(
            told in (some_speaker(), table()).prop_map(|(s, r)| rib(&s, &r)),
            desired in (some_speaker(), table()).prop_map(|(s, r)| rib(&s, &r)),
        ) {
            let out = updates(&Family::ALL, &told, &desired);
            for update in &out {
                let len = wire::encode(&Message::Update(update.clone())).len();
                prop_assert!(len <= MAX_MESSAGE, "{len}");
            }
            let held_before: Routes = told
                .announced()
                .map(|n| (*n, told.routes[n].clone()))
                .collect();
            let held = apply(&held_before, &out);
            prop_assert_eq!(
                held.keys().collect::<Vec<_>>(),
                desired.announced().collect::<Vec<_>>()
            );
            let changed = desired.announced().filter(|n| told.sent(n) != desired.sent(n)).count();
            let gone = told.announced().filter(|n| desired.sent(n).is_none()).count();
            let sent: usize = out
                .iter()
                .map(|u| {
                    u.announced.len()
                        + u.withdrawn.len()
                        + u.attributes
                            .iter()
                            .map(|a| match a {
                                Attribute::MpReach { announced, .. } => announced.len(),
                                Attribute::MpUnreach { withdrawn, .. } => withdrawn.len(),
                                _ => 0,
                            })
                            .sum::<usize>()
                })
                .sum();
            prop_assert_eq!(sent, changed + gone);
        }
    }
}
