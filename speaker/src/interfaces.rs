//! The node's interfaces and addresses (from rtnetlink, followed live) and which of them an
//! IP is announced on. Choosing is pure; `snapshot` and `watch_changes` do the netlink I/O.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use ipnetwork::IpNetwork;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType};
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
    /// veth, bridge, tunnel, loopback or a CNI device: never chosen unless named explicitly.
    pub is_virtual: bool,
    pub networks: Vec<IpNetwork>,
}

/// The node's interfaces and the interfaces of its default routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub interfaces: Vec<Interface>,
    pub default_v4: Option<u32>,
    pub default_v6: Option<u32>,
}

/// Name prefixes of devices CNI plugins and container runtimes create.
const CNI_PREFIXES: [&str; 9] = [
    "cni", "flannel", "cali", "cilium", "docker", "kube-", "vxlan", "weave", "lxc",
];

impl Snapshot {
    /// Where `ip` is announced: the named interfaces when `forced` is non-empty, else the
    /// physical interfaces with a subnet containing `ip`, else the default route's interface
    /// (if physical). Only interfaces that are up.
    pub fn announce_on(&self, ip: IpAddr, forced: &[String]) -> Vec<&Interface> {
        let up = self.interfaces.iter().filter(|i| i.up && i.mac.is_some());
        if !forced.is_empty() {
            return up.filter(|i| forced.contains(&i.name)).collect();
        }
        let on_subnet: Vec<&Interface> = up
            .clone()
            .filter(|i| !i.is_virtual && i.networks.iter().any(|n| n.contains(ip)))
            .collect();
        if !on_subnet.is_empty() {
            return on_subnet;
        }
        let default = if ip.is_ipv4() {
            self.default_v4
        } else {
            self.default_v6
        };
        up.filter(|i| !i.is_virtual && Some(i.index) == default)
            .collect()
    }

    /// Whether any interface (forced ones, or physical ones) has a subnet containing `ip`.
    pub fn on_subnet(&self, ip: IpAddr, forced: &[String]) -> bool {
        self.interfaces.iter().any(|i| {
            i.up && (if forced.is_empty() {
                !i.is_virtual
            } else {
                forced.contains(&i.name)
            }) && i.networks.iter().any(|n| n.contains(ip))
        })
    }

    /// The subnets of interfaces that are up (sent to other speakers).
    pub fn subnets(&self) -> Vec<IpNetwork> {
        let mut nets: Vec<IpNetwork> = self
            .interfaces
            .iter()
            .filter(|i| i.up && !matches!(i.name.as_str(), "lo"))
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

/// Reads every link, address and default route.
pub async fn snapshot(handle: &Handle) -> Result<Snapshot> {
    let mut interfaces = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await.context("listing links")? {
        let mut iface = Interface {
            index: link.header.index,
            name: String::new(),
            mac: None,
            up: link.header.flags.contains(LinkFlags::Up)
                && link.header.flags.contains(LinkFlags::LowerUp),
            is_virtual: link.header.link_layer_type == LinkLayerType::Loopback,
            networks: Vec::new(),
        };
        for attr in link.attributes {
            match attr {
                LinkAttribute::IfName(n) => iface.name = n,
                LinkAttribute::Address(a) if a.len() == 6 => {
                    iface.mac = <[u8; 6]>::try_from(a.as_slice()).ok();
                }
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            iface.is_virtual |= !matches!(
                                kind,
                                InfoKind::Bond | InfoKind::Vlan | InfoKind::MacVlan
                            );
                        }
                    }
                }
                _ => {}
            }
        }
        iface.is_virtual |= CNI_PREFIXES.iter().any(|p| iface.name.starts_with(p));
        interfaces.push(iface);
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
pub async fn follow(tx: watch::Sender<Snapshot>, refresh: Duration) -> Result<()> {
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
        match snapshot(&handle).await {
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
    use super::*;

    fn iface(index: u32, name: &str, up: bool, is_virtual: bool, nets: &[&str]) -> Interface {
        Interface {
            index,
            name: name.into(),
            mac: Some([2, 0, 0, 0, 0, index as u8]),
            up,
            is_virtual,
            networks: nets.iter().map(|n| n.parse().unwrap()).collect(),
        }
    }

    fn snap() -> Snapshot {
        Snapshot {
            interfaces: vec![
                iface(1, "lo", true, true, &["127.0.0.1/8", "::1/128"]),
                iface(2, "eth0", true, false, &["192.0.2.5/24", "2001:db8::5/64"]),
                iface(3, "eth1", true, false, &["198.51.100.5/24"]),
                iface(4, "cni0", true, true, &["203.0.113.1/24"]),
                iface(5, "eth2", false, false, &["203.0.113.9/24"]),
            ],
            default_v4: Some(3),
            default_v6: None,
        }
    }

    fn names(v: Vec<&Interface>) -> Vec<&str> {
        v.into_iter().map(|i| i.name.as_str()).collect()
    }

    #[test]
    fn on_subnet_interfaces_then_the_default_route_never_virtual_or_down() {
        let s = snap();
        let ip = |x: &str| x.parse::<IpAddr>().unwrap();
        assert_eq!(names(s.announce_on(ip("192.0.2.10"), &[])), ["eth0"]);
        assert_eq!(names(s.announce_on(ip("2001:db8::10"), &[])), ["eth0"]);
        // No interface in the subnet: the default route's interface.
        assert_eq!(names(s.announce_on(ip("10.1.2.3"), &[])), ["eth1"]);
        // No IPv6 default route: nowhere.
        assert!(s.announce_on(ip("2001:db8:1::1"), &[]).is_empty());
        // Virtual (cni0) and down (eth2) interfaces are not chosen by default.
        assert_eq!(names(s.announce_on(ip("203.0.113.50"), &[])), ["eth1"]);
        // An L2Advertisement's list wins, virtual or not, but down ones stay out.
        let forced = vec!["cni0".to_owned(), "eth2".to_owned()];
        assert_eq!(names(s.announce_on(ip("192.0.2.10"), &forced)), ["cni0"]);
        assert!(s.on_subnet(ip("192.0.2.10"), &[]));
        assert!(!s.on_subnet(ip("203.0.113.50"), &[]));
        assert!(s.on_subnet(ip("203.0.113.50"), &forced));
        let subnets: Vec<String> = s.subnets().iter().map(ToString::to_string).collect();
        assert_eq!(
            subnets,
            [
                "192.0.2.0/24",
                "198.51.100.0/24",
                "203.0.113.0/24",
                "2001:db8::/64"
            ]
        );
    }
}
