//! The ways both binaries watch the cluster, with kube-runtime's default backoff: a
//! reflector-backed watch of every object of a kind, trimmed before it is cached (memory), or
//! a `Cache` that keeps only a compact projection of each object (Services).

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt, TryStreamExt};
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

/// Objects of one kind, each kept only as its projection `T`, by `namespace/name`: for kinds
/// with thousands of objects (Services), where a reflector's copy of every `ObjectMeta` and
/// `ObjectRef` would cost more than what Herald reads of the object.
pub struct Cache<T> {
    objects: Arc<RwLock<HashMap<String, Arc<T>>>>,
    ready: tokio::sync::watch::Receiver<bool>,
}

impl<T> Clone for Cache<T> {
    fn clone(&self) -> Self {
        Self {
            objects: self.objects.clone(),
            ready: self.ready.clone(),
        }
    }
}

impl<T> Cache<T> {
    pub fn get(&self, key: &str) -> Option<Arc<T>> {
        self.read().get(key).cloned()
    }

    /// Every object, in no particular order.
    pub fn state(&self) -> Vec<Arc<T>> {
        self.read().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for the first complete list; an error when the watch ended before it.
    pub async fn wait_until_ready(&self) -> Result<(), tokio::sync::watch::error::RecvError> {
        self.ready.clone().wait_for(|r| *r).await.map(|_| ())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<T>>> {
        // A panic while holding the lock cannot leave the map half-written (single inserts).
        self.objects.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// What changed in a `Cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The object `namespace/name` was added, changed or deleted.
    Object(String),
    /// The watch (re)listed: anything may have changed.
    Relisted,
}

/// Watches every `K`, keeps `project(object)` in the returned cache, and reports each change.
/// Drive the stream: the cache is filled as it is polled.
pub fn projected<K, T>(
    client: Client,
    project: impl Fn(K) -> T + Send + 'static,
) -> (
    Cache<T>,
    impl Stream<Item = Result<Change, watcher::Error>> + Send,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    T: Send + Sync + 'static,
{
    let objects = Arc::new(RwLock::new(HashMap::new()));
    let (ready_tx, ready) = tokio::sync::watch::channel(false);
    let cache = Cache {
        objects: objects.clone(),
        ready,
    };
    let key = |o: &K| {
        format!(
            "{}/{}",
            o.meta().namespace.as_deref().unwrap_or_default(),
            o.meta().name.as_deref().unwrap_or_default()
        )
    };
    // A relist fills a new map, swapped in when complete, as a reflector does.
    let mut relisting: Option<HashMap<String, Arc<T>>> = None;
    let stream = watcher(Api::<K>::all(client), watcher::Config::default())
        .default_backoff()
        .map_ok(move |event| {
            let write = || objects.write().unwrap_or_else(|p| p.into_inner());
            match event {
                watcher::Event::Init => {
                    relisting = Some(HashMap::new());
                    None
                }
                watcher::Event::InitApply(o) => {
                    let k = key(&o);
                    relisting
                        .get_or_insert_with(HashMap::new)
                        .insert(k, Arc::new(project(o)));
                    None
                }
                watcher::Event::InitDone => {
                    *write() = relisting.take().unwrap_or_default();
                    ready_tx.send_replace(true);
                    Some(Change::Relisted)
                }
                watcher::Event::Apply(o) => {
                    let k = key(&o);
                    write().insert(k.clone(), Arc::new(project(o)));
                    Some(Change::Object(k))
                }
                watcher::Event::Delete(o) => {
                    let k = key(&o);
                    write().remove(&k);
                    Some(Change::Object(k))
                }
            }
        })
        .filter_map(|r| futures::future::ready(r.transpose()));
    (cache, stream)
}
