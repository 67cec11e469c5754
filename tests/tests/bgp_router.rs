//! Herald's BGP speaker (`herald-bgp`) against a real router: FRR 8.4 in a namespace of its
//! own on the LAN, accepting any host of it, a node namespace connecting out from its LAN
//! address. What the router learns is read from FRR itself (`vtysh ... json`) and from its
//! kernel's routing table, where zebra installs what bgpd chose.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use herald_bgp::peer::{self, Desired, Peer, Status, Stop};
use herald_bgp::rib::{RibOut, Route, Routes, Speaker};
use herald_bgp::session;
use herald_bgp::wire::Family;
use herald_lab::netns::{Lan, spawn_in_ns};
use herald_lab::router::{Frr, Router, RouterConfig};
use ipnetwork::IpNetwork;
use tokio::sync::watch;

const ROUTER_ASN: u32 = 64500;
/// A 4-octet AS number: the OPEN carries AS_TRANS, the capability the real one.
const NODE_ASN: u32 = 4_200_000_001;

fn net(s: &str) -> IpNetwork {
    s.parse().expect("prefix")
}

/// A node speaking to the router, until the returned stop sender says so.
struct Node {
    routes: watch::Sender<Desired>,
    status: watch::Receiver<Status>,
    /// What the session said each timed change took to be written.
    delivered: std::sync::mpsc::Receiver<Duration>,
    stop: watch::Sender<Stop>,
    thread: std::thread::JoinHandle<anyhow::Result<anyhow::Result<()>>>,
}

impl Node {
    fn start(ns: &str, node: Ipv4Addr, node_v6: IpAddr, router: Ipv4Addr, routes: Routes) -> Self {
        let speaker = Speaker {
            local_asn: NODE_ASN,
            external: true,
            next_hop_v4: Some(node),
            next_hop_v6: Some(node_v6),
        };
        let (routes_tx, routes_rx) = watch::channel(Desired::from(RibOut { speaker, routes }));
        let (delivered_tx, delivered) = std::sync::mpsc::channel();
        let (status_tx, status) = watch::channel(Status::Connecting);
        let (stop, stop_rx) = watch::channel(Stop::Run);
        let peer = Peer {
            address: SocketAddr::new(IpAddr::V4(router), 179),
            source: Some(SocketAddr::new(IpAddr::V4(node), 0)),
            listen: None,
            session: session::Config {
                local_asn: NODE_ASN,
                peer_asn: Some(ROUTER_ASN),
                router_id: node,
                hold_time: Duration::from_secs(9),
                keepalive: Duration::from_secs(3),
                families: Family::ALL.to_vec(),
                graceful_restart: Some(Duration::from_secs(120)),
                restarting: false,
                connect_retry: session::CONNECT_RETRY,
            },
            connect_timeout: Duration::from_secs(2),
            password: None,
            bfd: None,
            ttl: Some(1),
        };
        let thread = spawn_in_ns(ns, move || -> anyhow::Result<()> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(peer::run(
                    peer,
                    routes_rx,
                    status_tx,
                    stop_rx,
                    move |took| {
                        let _ = delivered_tx.send(took);
                    },
                ));
            Ok(())
        })
        .expect("a thread in the node namespace");
        Self {
            routes: routes_tx,
            status,
            delivered,
            stop,
            thread,
        }
    }

    fn wait_established(&self, within: Duration) -> Duration {
        let started = Instant::now();
        while started.elapsed() < within {
            if matches!(*self.status.borrow(), Status::Established { .. }) {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "not Established within {within:?}: {:?}",
            *self.status.borrow()
        );
    }

    fn stop(self) {
        let _ = self.stop.send(Stop::Cease);
        self.thread
            .join()
            .expect("the node's thread")
            .expect("in the node's namespace")
            .expect("its runtime");
    }
}

/// The router's IPv4 session with `node` in `show bgp summary json` (a dynamic neighbor of
/// the listen range may be listed under its address with a `*` in front).
fn peer_entry(summary: &serde_json::Value, node: Ipv4Addr) -> Option<serde_json::Value> {
    let peers = summary["ipv4Unicast"]["peers"].as_object()?;
    peers
        .iter()
        .find(|(key, _)| key.trim_start_matches('*') == node.to_string())
        .map(|(_, peer)| peer.clone())
}

/// The router's best path to `prefix`, if it has one.
fn path(router: &Frr, family: &str, prefix: &str) -> Option<serde_json::Value> {
    let json = router
        .vtysh(&format!("show bgp {family} unicast {prefix} json"))
        .ok()?;
    json["paths"].as_array()?.first().cloned()
}

#[test]
fn frr_learns_both_families_with_their_attributes_installs_them_and_drops_a_withdrawn_one() {
    herald_lab::init_tracing();
    let mut lan = Lan::create(1).expect("LAN");
    let router_host = lan.add_host("router", 1).expect("router host");
    let node = lan.nodes[0].clone();
    let router = Frr::start(
        &router_host.ns,
        &RouterConfig {
            asn: ROUTER_ASN,
            router_id: router_host.v4,
            listen: &["192.0.2.0/24"],
            password: None,
            bfd: false,
        },
    )
    .expect("FRR");

    let route = Route {
        local_pref: None,
        communities: vec![(64500 << 16) | 100],
        large_communities: vec![[NODE_ASN, 1, 2]],
    };
    let routes = Routes::from([
        (net("198.51.100.10/32"), route.clone()),
        (net("198.51.100.11/32"), route.clone()),
        (net("2001:db8:100::10/128"), route.clone()),
    ]);
    let speaker = Node::start(
        &node.ns,
        node.v4,
        IpAddr::V6(node.v6),
        router_host.v4,
        routes.clone(),
    );
    let took = speaker.wait_established(Duration::from_secs(10));
    eprintln!("session Established {took:?} after start");

    // The router's view of the session.
    let summary = router.vtysh("show bgp summary json").expect("summary");
    let peer = peer_entry(&summary, node.v4).expect("the node among the router's peers");
    assert_eq!(peer["state"], "Established", "{summary}");
    assert_eq!(peer["remoteAs"], NODE_ASN);

    // The IPv4 route with every attribute, and in the router's kernel through the node.
    let v4 = router
        .wait_for("IPv4 path", Duration::from_secs(5), || {
            path(&router, "ipv4", "198.51.100.10/32")
        })
        .expect("the router learns the IPv4 route");
    assert_eq!(v4["aspath"]["string"], NODE_ASN.to_string(), "{v4}");
    assert_eq!(v4["nexthops"][0]["ip"], node.v4.to_string(), "{v4}");
    assert_eq!(v4["community"]["string"], "64500:100", "{v4}");
    assert_eq!(
        v4["largeCommunity"]["string"],
        format!("{NODE_ASN}:1:2"),
        "{v4}"
    );
    assert_eq!(v4["origin"], "IGP", "{v4}");
    let kernel = router
        .wait_for("kernel route", Duration::from_secs(5), || {
            let r = router.kernel_route("198.51.100.10");
            r.contains(&format!("via {}", node.v4)).then_some(r)
        })
        .expect("zebra installs it");
    assert!(kernel.contains("proto bgp"), "{kernel}");

    // The IPv6 route over the same session (MP-BGP), next hop the node's global address.
    let v6 = router
        .wait_for("IPv6 path", Duration::from_secs(5), || {
            path(&router, "ipv6", "2001:db8:100::10/128")
        })
        .expect("the router learns the IPv6 route");
    let hops = v6["nexthops"].to_string();
    assert!(hops.contains(&node.v6.to_string()), "{v6}");

    // The first table is not a change anyone timed.
    assert!(
        speaker.delivered.try_recv().is_err(),
        "the first table timed"
    );

    // A withdrawal reaches the router's table and kernel at once (no debounce), and the
    // session says how long it took to write.
    let mut fewer = routes.clone();
    fewer.remove(&net("198.51.100.11/32"));
    let sent = Instant::now();
    speaker.routes.send_modify(|out| {
        out.routes.routes = fewer;
        out.changed_at = Some(sent);
    });
    router
        .wait_for("the withdrawal", Duration::from_secs(2), || {
            path(&router, "ipv4", "198.51.100.11/32")
                .is_none()
                .then_some(())
        })
        .expect("withdrawn");
    let seen = sent.elapsed();
    eprintln!("withdrawal seen by the router after {seen:?}");
    let written = speaker
        .delivered
        .recv_timeout(Duration::from_secs(1))
        .expect("the session times the change it sent");
    assert!(
        written <= seen,
        "written {written:?} after the router saw it"
    );
    assert!(
        speaker.delivered.try_recv().is_err(),
        "one change timed once"
    );
    assert!(
        path(&router, "ipv4", "198.51.100.10/32").is_some(),
        "the other route stays"
    );

    // Shut down: a Cease the router names, and the routes gone from its kernel.
    speaker.stop();
    let down = router
        .wait_for("the session to close", Duration::from_secs(5), || {
            let s = router.vtysh("show bgp summary json").ok()?;
            // A dynamic neighbor is removed once its session closes.
            let state = peer_entry(&s, node.v4).map(|p| p["state"].clone());
            (state.as_ref().is_none_or(|s| s != "Established")).then_some(state)
        })
        .expect("closed");
    eprintln!("router's peer state after the Cease: {down:?}");
    router
        .wait_for("routes withdrawn", Duration::from_secs(5), || {
            router
                .kernel_route("198.51.100.10")
                .is_empty()
                .then_some(())
        })
        .expect("no route left in the router's kernel");
}
