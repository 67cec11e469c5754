//! A real cluster behind a router: FRR on the cluster's LAN, peering with every node as
//! `Peering` says, a client on a network of its own behind it (203.0.113.0/24) that reaches
//! Service IPs only through the routes the router learned, and the nodes routing back to
//! that client through the router, as their gateway would. Whatever announces the routes
//! (Herald, MetalLB) is installed and configured by the caller.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;

use super::Cluster;
use crate::netns;
use crate::objects::{ips, wait_for};
use crate::router::{BEHIND, Behind, Frr, Peering, on_lan};

pub struct Routed {
    pub cluster: Cluster,
    pub router: Frr,
    /// The router's host on the LAN (its address is the `BGPPeer`'s `peerAddress`).
    pub router_host: netns::Host,
    pub far: Behind,
}

impl Routed {
    /// The lab's router (`router::on_lan`) and the client behind it, around `cluster`.
    pub fn around(mut cluster: Cluster, peering: Peering) -> Result<Self> {
        let (router, router_host) = on_lan(cluster.lan_mut(), Frr::start, peering)?;
        Self::with_router(cluster, router, router_host)
    }

    /// A router at 192.0.2.1 running FRR with `config` as written (docs/configuration.md's
    /// example, say), and the client behind it, around `cluster`.
    pub fn around_configured(mut cluster: Cluster, config: &str) -> Result<Self> {
        let router_host = cluster.lan_mut().add_host("router", 1)?;
        let router = Frr::start_configured(&router_host.ns, config)?;
        Self::with_router(cluster, router, router_host)
    }

    fn with_router(cluster: Cluster, router: Frr, router_host: netns::Host) -> Result<Self> {
        let far = Behind::create(&router_host.ns).context("a client behind the router")?;
        for node in &cluster.nodes {
            netns::ip(&[
                "-n",
                &node.host.ns,
                "route",
                "add",
                BEHIND,
                "via",
                &router_host.v4.to_string(),
            ])
            .context("route to the client's network")?;
        }
        Ok(Self {
            cluster,
            router,
            router_host,
            far,
        })
    }

    /// The IP of the Service `name` in `default`.
    pub async fn vip_of(&self, name: &str) -> IpAddr {
        let svcs: Api<Service> = Api::namespaced(self.cluster.client(), "default");
        wait_for(&svcs, name, "its IP", |s| ips(s).first().cloned())
            .await
            .parse()
            .expect("an IP")
    }

    /// Waits (at most `within`) until the client behind the router is served through
    /// `vip`. The routes can reach the router before every node's kube-proxy has programmed
    /// that IP: ten requests in a row, each hashed by the router to some node, all answered
    /// by the app.
    pub async fn until_served(&self, vip: IpAddr, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let mut in_a_row = 0;
        while in_a_row < 10 {
            let get = netns::http_get(
                &self.far.ns,
                SocketAddr::new(vip, 80),
                "/",
                Duration::from_secs(2),
            );
            match get {
                Ok(body) if body.contains("pod=web-") => in_a_row += 1,
                Ok(body) => bail!("GET {vip} from behind the router: not the app: {body}"),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("GET {vip} from behind the router")));
                }
                Err(_) => {
                    in_a_row = 0;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        Ok(())
    }

    /// The LAN addresses of `nodes`, as the router sees them as next hops.
    pub fn next_hops(&self, nodes: &[String]) -> BTreeSet<String> {
        nodes
            .iter()
            .map(|n| self.cluster.node(n).host.v4.to_string())
            .collect()
    }

    /// Every node's LAN address.
    pub fn every_node(&self) -> BTreeSet<String> {
        self.cluster
            .nodes
            .iter()
            .map(|n| n.host.v4.to_string())
            .collect()
    }
}
