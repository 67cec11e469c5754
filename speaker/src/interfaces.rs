//! The node's interfaces and addresses (from rtnetlink, followed live) and which of them an
//! IP is announced on. Choosing is pure; `snapshot` and `watch_changes` do the netlink I/O.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use ipnetwork::IpNetwork;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::{Handle, RouteMessageBuilder};
use tokio::sync::watch;

/// One network interface as the speaker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    /// Administratively up and with a carrier: frames can flow.
    pub up: bool,
    /// An Ethernet device that can face the LAN: physical, bridge, bond, VLAN, macvlan,
    /// ipvlan or veth (a node's address often sits on a bridge such as `br0` or `br-ex`, and
    /// a kind or namespace node's NIC is a veth). Not loopback, dummy (`kube-ipvs0` holds
    /// every VIP), tunnels or CNI/runtime devices: never chosen unless named explicitly.
    pub faces_lan: bool,
    pub networks: Vec<IpNetwork>,
}

/// The node's interfaces and the interfaces of its default routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub interfaces: Vec<Interface>,
    pub default_v4: Option<u32>,
    pub default_v6: Option<u32>,
}

/// Interfaces never chosen unless named: the devices CNI plugins and container runtimes
/// create (`--ignored-interfaces` replaces the list).
pub const DEFAULT_IGNORED: [&str; 9] = [
    "cni*", "flannel*", "cali*", "cilium*", "docker*", "kube-*", "vxlan*", "weave*", "lxc*",
];

/// Whether the interface `name` matches `pattern`, in which `*` stands for any run of
/// characters (`eth*`, `enp*s0`, `bond0`).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and where in the name it started to match.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            // Let the `*` take one more character and try again.
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

impl Snapshot {
    /// A node with one interface, `eth0` (index 2) up on 192.0.2.1/24, facing the LAN: the
    /// decision tests' node.
    #[cfg(test)]
    pub fn one_lan_interface() -> Self {
        Self::lan_interface(&["192.0.2.1/24"])
    }

    /// A node whose one interface, `eth0` (index 2), is up with `networks`, facing the LAN.
    #[cfg(test)]
    pub fn lan_interface(networks: &[&str]) -> Self {
        Snapshot {
            interfaces: vec![Interface {
                index: 2,
                name: "eth0".into(),
                mac: Some([2, 0, 0, 0, 0, 1]),
                up: true,
                faces_lan: true,
                networks: networks
                    .iter()
                    .map(|n| n.parse().expect("a network"))
                    .collect(),
            }],
            default_v4: None,
            default_v6: None,
        }
    }

    /// Where `ip` is announced: the interfaces `forced` names (or matches, with `*`) when it
    /// is non-empty, else the LAN-facing interfaces with a subnet containing `ip`, else the
    /// default route's interface (if LAN-facing). Only interfaces that are up.
    pub fn announce_on(&self, ip: IpAddr, forced: &[String]) -> Vec<&Interface> {
        let up = self.interfaces.iter().filter(|i| i.up && i.mac.is_some());
        if !forced.is_empty() {
            return up
                .filter(|i| forced.iter().any(|p| name_matches(p, &i.name)))
                .collect();
        }
        let on_subnet: Vec<&Interface> = up
            .clone()
            .filter(|i| i.faces_lan && i.networks.iter().any(|n| n.contains(ip)))
            .collect();
        if !on_subnet.is_empty() {
            return on_subnet;
        }
        let default = if ip.is_ipv4() {
            self.default_v4
        } else {
            self.default_v6
        };
        up.filter(|i| i.faces_lan && Some(i.index) == default)
            .collect()
    }

    /// The subnets of the LAN-facing interfaces that are up: what this node tells its peers,
    /// and the one thing every node, itself included, is judged on-subnet by (the plan's
    /// `node_subnets`). Judging itself by anything else would let nodes disagree on who may
    /// announce.
    pub fn subnets(&self) -> Vec<IpNetwork> {
        let mut nets: Vec<IpNetwork> = self
            .interfaces
            .iter()
            .filter(|i| i.up && i.faces_lan)
            .flat_map(|i| i.networks.iter())
            .filter(|n| match n.ip() {
                IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local(),
                IpAddr::V6(a) => !a.is_loopback() && !a.is_unicast_link_local(),
            })
            .filter_map(|n| IpNetwork::new(n.network(), n.prefix()).ok())
            .collect();
        nets.sort();
        nets.dedup();
        nets
    }
}

/// An interface from its rtnetlink link message (addresses are added later).
pub fn interface_of(link: &LinkMessage, ignored: &[String]) -> Interface {
    let mut iface = Interface {
        index: link.header.index,
        name: String::new(),
        mac: None,
        up: link.header.flags.contains(LinkFlags::Up)
            && link.header.flags.contains(LinkFlags::LowerUp),
        faces_lan: link.header.link_layer_type == LinkLayerType::Ether,
        networks: Vec::new(),
    };
    for attr in &link.attributes {
        match attr {
            LinkAttribute::IfName(n) => iface.name.clone_from(n),
            LinkAttribute::Address(a) if a.len() == 6 => {
                iface.mac = <[u8; 6]>::try_from(a.as_slice()).ok();
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        iface.faces_lan &= lan_kind(kind);
                    }
                }
            }
            _ => {}
        }
    }
    iface.faces_lan &= !ignored.iter().any(|p| name_matches(p, &iface.name));
    iface
}

/// Link kinds that carry a LAN's Ethernet frames (a physical NIC has no kind at all).
fn lan_kind(kind: &InfoKind) -> bool {
    matches!(
        kind,
        InfoKind::Bridge
            | InfoKind::Bond
            | InfoKind::Team
            | InfoKind::Vlan
            | InfoKind::MacVlan
            | InfoKind::MacVtap
            | InfoKind::IpVlan
            | InfoKind::Veth
    )
}

/// Reads every link, address and default route.
pub async fn snapshot(handle: &Handle, ignored: &[String]) -> Result<Snapshot> {
    let mut interfaces = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await.context("listing links")? {
        interfaces.push(interface_of(&link, ignored));
    }
    let mut addresses = handle.address().get().execute();
    while let Some(msg) = addresses.try_next().await.context("listing addresses")? {
        let ip = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let ip = ip.or_else(|| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        });
        if let (Some(ip), Some(iface)) = (
            ip,
            interfaces.iter_mut().find(|i| i.index == msg.header.index),
        ) && let Ok(net) = IpNetwork::new(ip, msg.header.prefix_len)
        {
            iface.networks.push(net);
        }
    }
    let default_v4 = default_route(
        handle,
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
    )
    .await?;
    let default_v6 = default_route(
        handle,
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    )
    .await?;
    Ok(Snapshot {
        interfaces,
        default_v4,
        default_v6,
    })
}

async fn default_route(handle: &Handle, filter: RouteMessage) -> Result<Option<u32>> {
    let mut routes = handle.route().get(filter).execute();
    while let Some(route) = routes.try_next().await.context("listing routes")? {
        if route.header.destination_prefix_length != 0 {
            continue;
        }
        let oif = route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        if oif.is_some() {
            return Ok(oif);
        }
    }
    Ok(None)
}

/// Keeps `tx` updated with the node's interfaces: re-read on every link, address or route
/// notification, and every `refresh` in case a notification was lost.
pub async fn follow(
    tx: watch::Sender<Snapshot>,
    refresh: Duration,
    ignored: Vec<String>,
) -> Result<()> {
    use netlink_sys::{AsyncSocket, SocketAddr};
    let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(conn);
    let (mut events_conn, _, mut events) =
        rtnetlink::new_connection().context("opening rtnetlink")?;
    let groups = rtnetlink::constants::RTMGRP_LINK
        | rtnetlink::constants::RTMGRP_IPV4_IFADDR
        | rtnetlink::constants::RTMGRP_IPV6_IFADDR
        | rtnetlink::constants::RTMGRP_IPV4_ROUTE
        | rtnetlink::constants::RTMGRP_IPV6_ROUTE;
    events_conn
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, groups))
        .context("subscribing to rtnetlink notifications")?;
    tokio::spawn(events_conn);
    let mut tick = tokio::time::interval(refresh);
    loop {
        match snapshot(&handle, &ignored).await {
            Ok(s) => {
                tx.send_if_modified(|old| {
                    let changed = *old != s;
                    *old = s;
                    changed
                });
            }
            Err(e) => tracing::warn!("reading interfaces: {e:#}"),
        }
        tokio::select! {
            e = events.next() => if e.is_none() { anyhow::bail!("rtnetlink notifications ended") },
            _ = tick.tick() => {}
        }
        // Coalesce a burst (a link going down sends several messages).
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, events.next()).await {}
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::link::LinkHeader;

    use super::*;

    fn iface(index: u32, name: &str, up: bool, faces_lan: bool, nets: &[&str]) -> Interface {
        Interface {
            index,
            name: name.into(),
            mac: Some([2, 0, 0, 0, 0, index as u8]),
            up,
            faces_lan,
            networks: nets.iter().map(|n| n.parse().unwrap()).collect(),
        }
    }

    fn snap() -> Snapshot {
        Snapshot {
            interfaces: vec![
                iface(1, "lo", true, false, &["127.0.0.1/8", "::1/128"]),
                iface(2, "eth0", true, true, &["192.0.2.5/24", "2001:db8::5/64"]),
                iface(3, "eth1", true, true, &["198.51.100.5/24"]),
                iface(4, "cni0", true, false, &["203.0.113.1/24"]),
                iface(5, "eth2", false, true, &["203.0.113.9/24"]),
            ],
            default_v4: Some(3),
            default_v6: None,
        }
    }

    fn defaults() -> Vec<String> {
        DEFAULT_IGNORED.map(str::to_owned).to_vec()
    }

    #[test]
    fn interface_patterns_match_names_with_stars() {
        for (pattern, name, matches) in [
            ("eth0", "eth0", true),
            ("eth0", "eth01", false),
            ("eth*", "eth0", true),
            ("eth*", "eth", true),
            ("eth*", "veth0", false),
            ("enp*s0", "enp1s0", true),
            ("enp*s0", "enp10s0", true),
            ("enp*s0", "enp1s0f1", false),
            ("*", "anything", true),
            ("*0", "bond0", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("", "", true),
            ("", "eth0", false),
        ] {
            assert_eq!(name_matches(pattern, name), matches, "{pattern} ~ {name}");
        }
        let s = snap();
        assert_eq!(
            names(s.announce_on(ip("192.0.2.10"), &["eth*".into()])),
            ["eth0", "eth1"]
        );
        // A pattern reaches an interface never chosen by default, as a name does.
        assert_eq!(
            names(s.announce_on(ip("192.0.2.10"), &["cni*".into()])),
            ["cni0"]
        );
    }

    #[test]
    fn the_ignored_interfaces_are_configurable() {
        let calico = link(30, "cali12ab", Some(InfoKind::Veth), LinkLayerType::Ether);
        assert!(!interface_of(&calico, &defaults()).faces_lan);
        assert!(
            interface_of(&calico, &[]).faces_lan,
            "nothing ignored: a veth faces the LAN"
        );
        let storage = link(31, "stor0", None, LinkLayerType::Ether);
        assert!(interface_of(&storage, &defaults()).faces_lan);
        assert!(!interface_of(&storage, &["stor*".into()]).faces_lan);
    }

    fn names(v: Vec<&Interface>) -> Vec<&str> {
        v.into_iter().map(|i| i.name.as_str()).collect()
    }

    fn ip(x: &str) -> IpAddr {
        x.parse().unwrap()
    }

    #[test]
    fn on_subnet_interfaces_then_the_default_route_never_excluded_or_down() {
        let s = snap();
        assert_eq!(names(s.announce_on(ip("192.0.2.10"), &[])), ["eth0"]);
        assert_eq!(names(s.announce_on(ip("2001:db8::10"), &[])), ["eth0"]);
        // No interface in the subnet: the default route's interface.
        assert_eq!(names(s.announce_on(ip("10.1.2.3"), &[])), ["eth1"]);
        // No IPv6 default route: nowhere.
        assert!(s.announce_on(ip("2001:db8:1::1"), &[]).is_empty());
        // CNI devices (cni0) and down interfaces (eth2) are not chosen by default.
        assert_eq!(names(s.announce_on(ip("203.0.113.50"), &[])), ["eth1"]);
        // An L2Advertisement's list wins, whatever the device, but down ones stay out.
        let forced = vec!["cni0".to_owned(), "eth2".to_owned()];
        assert_eq!(names(s.announce_on(ip("192.0.2.10"), &forced)), ["cni0"]);
        // What peers are told is exactly what this node announces on by default.
        let subnets: Vec<String> = s.subnets().iter().map(ToString::to_string).collect();
        assert_eq!(
            subnets,
            ["192.0.2.0/24", "198.51.100.0/24", "2001:db8::/64"]
        );
    }

    /// A link message as rtnetlink reports it.
    fn link(index: u32, name: &str, kind: Option<InfoKind>, layer: LinkLayerType) -> LinkMessage {
        let mut msg = LinkMessage::default();
        msg.header = LinkHeader {
            index,
            flags: LinkFlags::Up | LinkFlags::LowerUp,
            link_layer_type: layer,
            ..Default::default()
        };
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        msg.attributes
            .push(LinkAttribute::Address(vec![2, 0, 0, 0, 0, index as u8]));
        if let Some(kind) = kind {
            msg.attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(kind)]));
        }
        msg
    }

    #[test]
    fn lan_facing_devices_from_rtnetlink_data() {
        let ether = LinkLayerType::Ether;
        let cases = [
            (link(2, "enp1s0", None, ether), true),
            (link(3, "br0", Some(InfoKind::Bridge), ether), true),
            (link(4, "br-ex", Some(InfoKind::Bridge), ether), true),
            (link(5, "bond0", Some(InfoKind::Bond), ether), true),
            (link(6, "bond0.100", Some(InfoKind::Vlan), ether), true),
            (link(7, "eth0.42", Some(InfoKind::Vlan), ether), true),
            (link(8, "macvlan0", Some(InfoKind::MacVlan), ether), true),
            (link(9, "ipvl0", Some(InfoKind::IpVlan), ether), true),
            // A kind node's or a namespace node's NIC.
            (link(10, "eth0", Some(InfoKind::Veth), ether), true),
            (link(11, "lo", None, LinkLayerType::Loopback), false),
            // kube-proxy's IPVS device holds every Service IP: never announce from it.
            (link(12, "kube-ipvs0", Some(InfoKind::Dummy), ether), false),
            (link(13, "dummy0", Some(InfoKind::Dummy), ether), false),
            (
                link(14, "vxlan.calico", Some(InfoKind::Vxlan), ether),
                false,
            ),
            (
                link(15, "genev_sys_6081", Some(InfoKind::Geneve), ether),
                false,
            ),
            (
                link(16, "wg0", Some(InfoKind::Wireguard), LinkLayerType::None),
                false,
            ),
            (link(17, "cni0", Some(InfoKind::Bridge), ether), false),
            (link(18, "docker0", Some(InfoKind::Bridge), ether), false),
            (link(19, "cilium_host", Some(InfoKind::Veth), ether), false),
        ];
        for (msg, faces_lan) in cases {
            let iface = interface_of(&msg, &defaults());
            assert_eq!(iface.faces_lan, faces_lan, "{}", iface.name);
            assert!(iface.up);
            assert_eq!(iface.mac, Some([2, 0, 0, 0, 0, msg.header.index as u8]));
        }
    }

    #[test]
    fn a_node_address_on_a_bridge_is_announced_there_and_told_to_peers() {
        // The node's address on br0, its NIC enslaved to br0 without an address.
        let mut br0 = interface_of(
            &link(3, "br0", Some(InfoKind::Bridge), LinkLayerType::Ether),
            &defaults(),
        );
        br0.networks.push("192.0.2.5/24".parse().unwrap());
        let nic = interface_of(&link(2, "enp1s0", None, LinkLayerType::Ether), &defaults());
        let s = Snapshot {
            interfaces: vec![nic, br0],
            default_v4: Some(3),
            default_v6: None,
        };
        assert_eq!(names(s.announce_on(ip("192.0.2.10"), &[])), ["br0"]);
        assert_eq!(s.subnets(), ["192.0.2.0/24".parse::<IpNetwork>().unwrap()]);
    }
}
