//! The one way both binaries watch the cluster: a reflector-backed watch of every object of
//! a kind, trimmed before it is cached (memory), with kube-runtime's default backoff.

use std::fmt::Debug;
use std::hash::Hash;

use futures::Stream;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

/// Watches every `K`, applies `slim` to each object, caches it through `writer`.
pub fn cached<K>(
    client: Client,
    writer: Writer<K>,
    slim: impl FnMut(&mut K) + Send + 'static,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    watcher(Api::<K>::all(client), watcher::Config::default())
        .modify(slim)
        .reflect(writer)
        .default_backoff()
}
