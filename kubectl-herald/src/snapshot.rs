//! What the plugin reads from the API server, read once: every report is computed from this
//! snapshot, so the reports are pure and tested without a cluster.

use anyhow::{Context, Result};
use herald_api::{BGPAdvertisement, BGPSession, IPPool, L2Advertisement, L2Announcement};
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

/// Labels of the speaker pods of the chart (`app.kubernetes.io/component=speaker`).
pub const SPEAKER_SELECTOR: &str = "app.kubernetes.io/component=speaker";

#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Every Service (or the one explained).
    pub services: Vec<Service>,
    /// The namespaces of `services`, for the pools' `namespaceSelectors`.
    pub namespaces: Vec<Namespace>,
    pub pools: Vec<IPPool>,
    pub l2_advertisements: Vec<L2Advertisement>,
    pub bgp_advertisements: Vec<BGPAdvertisement>,
    pub announcements: Vec<L2Announcement>,
    pub sessions: Vec<BGPSession>,
    pub nodes: Vec<Node>,
    pub speakers: Vec<Pod>,
    /// The EndpointSlices of the Service explained.
    pub slices: Vec<EndpointSlice>,
    /// The Events about the Service explained, oldest first.
    pub events: Vec<Event>,
}

/// What to read: everything about one Service, or the cluster-wide picture.
pub enum Scope<'a> {
    Service { namespace: &'a str, name: &'a str },
    Cluster,
}

impl Snapshot {
    pub async fn read(client: &Client, scope: &Scope<'_>, speakers: &str) -> Result<Self> {
        let all = ListParams::default();
        let mut snapshot = Snapshot {
            pools: list(Api::all(client.clone()), &all).await?,
            l2_advertisements: list(Api::all(client.clone()), &all).await?,
            bgp_advertisements: list(Api::all(client.clone()), &all).await?,
            sessions: list(Api::all(client.clone()), &all).await?,
            nodes: list(Api::all(client.clone()), &all).await?,
            speakers: list(
                Api::all(client.clone()),
                &ListParams::default().labels(speakers),
            )
            .await?,
            ..Snapshot::default()
        };
        match scope {
            Scope::Service { namespace, name } => {
                let services: Api<Service> = Api::namespaced(client.clone(), namespace);
                let service = services
                    .get_opt(name)
                    .await
                    .with_context(|| format!("reading Service {namespace}/{name}"))?
                    .with_context(|| format!("Service {namespace}/{name} not found"))?;
                snapshot.services = vec![service];
                snapshot.namespaces = Api::<Namespace>::all(client.clone())
                    .get_opt(namespace)
                    .await?
                    .into_iter()
                    .collect();
                snapshot.announcements =
                    list(Api::namespaced(client.clone(), namespace), &all).await?;
                snapshot.slices = list(
                    Api::namespaced(client.clone(), namespace),
                    &ListParams::default().labels(&format!("kubernetes.io/service-name={name}")),
                )
                .await?;
                let mut events: Vec<Event> = list(
                    Api::namespaced(client.clone(), namespace),
                    &ListParams::default().fields(&format!(
                        "involvedObject.kind=Service,involvedObject.name={name}"
                    )),
                )
                .await?;
                events.sort_by_key(|e| e.last_timestamp.clone().map(|t| t.0));
                snapshot.events = events;
            }
            Scope::Cluster => {
                snapshot.services = list(Api::all(client.clone()), &all).await?;
                snapshot.namespaces = list(Api::all(client.clone()), &all).await?;
                snapshot.announcements = list(Api::all(client.clone()), &all).await?;
            }
        }
        Ok(snapshot)
    }
}

/// Every object of a kind; none when its CRD is not installed (Herald's BGP CRDs on an
/// older install), so the other reports still work.
async fn list<K>(api: Api<K>, params: &ListParams) -> Result<Vec<K>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    match api.list(params).await {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("listing {}", K::plural(&Default::default()))),
    }
}
