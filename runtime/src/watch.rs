//! The ways both binaries watch the cluster, with kube-runtime's default backoff: a
//! reflector-backed watch of every object of a kind, trimmed before it is cached (memory), or
//! a `Cache` that keeps only a compact projection of each object (Services).

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{RwLock, RwLockReadGuard};

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
    /// Counts the changes made to `objects` (see `generation`).
    changes: Arc<AtomicU64>,
    ready: tokio::sync::watch::Receiver<bool>,
}

impl<T> Clone for Cache<T> {
    fn clone(&self) -> Self {
        Self {
            objects: self.objects.clone(),
            changes: self.changes.clone(),
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

    /// Every object with its `namespace/name`, read in place (no copy of the keys). The watch
    /// cannot update the cache while the guard lives: keep it for one synchronous pass only.
    pub fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Arc<T>>> {
        self.objects.read()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A number that differs whenever an object was added, changed or removed since it was
    /// last read (a relist counts as a change): a reader that acted on every object can tell
    /// that nothing is new without looking at them all again.
    pub fn generation(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Waits for the first complete list; an error when the watch ended before it.
    pub async fn wait_until_ready(&self) -> Result<(), tokio::sync::watch::error::RecvError> {
        self.ready.clone().wait_for(|r| *r).await.map(|_| ())
    }
}

/// A watch's change, made by a unit test of a reader: `object` replaces the one at `key`
/// (`None`: deleted), and the generation moves.
#[cfg(feature = "testing")]
impl<T> Cache<T> {
    pub fn put(&self, key: &str, object: Option<T>) {
        let mut objects = self.objects.write();
        match object {
            Some(object) => objects.insert(key.to_owned(), Arc::new(object)),
            None => objects.remove(key),
        };
        self.changes.fetch_add(1, Ordering::Release);
    }
}

/// A ready cache of fixed contents that no watch fills (tests, fixtures).
impl<T> FromIterator<(String, T)> for Cache<T> {
    fn from_iter<I: IntoIterator<Item = (String, T)>>(objects: I) -> Self {
        let objects = objects.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        let (_, ready) = tokio::sync::watch::channel(true);
        Self {
            objects: Arc::new(RwLock::new(objects)),
            changes: Arc::default(),
            ready,
        }
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
/// An object projected to `None` is not kept (as if it did not exist): a binary that reads only
/// some objects of a kind pays nothing for the others. Drive the stream: the cache is filled
/// as it is polled. `config`: how to list (a larger page means fewer list calls for a start
/// over 100,000 objects, and a larger page held while it is parsed).
pub fn projected<K, T>(
    client: Client,
    config: watcher::Config,
    project: impl Fn(K) -> Option<T> + Send + 'static,
) -> (
    Cache<T>,
    impl Stream<Item = Result<Change, watcher::Error>> + Send,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    T: PartialEq + Send + Sync + 'static,
{
    projected_from(watcher(Api::<K>::all(client), config), project)
}

/// `projected`, fed by another watch of the same events (`service_watch::events`: Services
/// listed in protobuf). Retried with kube-runtime's default backoff.
pub fn projected_from<K, T>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    project: impl Fn(K) -> Option<T> + Send + 'static,
) -> (
    Cache<T>,
    impl Stream<Item = Result<Change, watcher::Error>> + Send,
)
where
    K: Resource + Send,
    T: PartialEq + Send + Sync + 'static,
{
    let (cache, mut filler) = Filler::new(project);
    let stream = events
        .default_backoff()
        .map_ok(move |event| filler.apply(event))
        .filter_map(|r| futures::future::ready(r.transpose()));
    (cache, stream)
}

/// Applies watch events to a `Cache`. Separate from the watch so it is testable without one.
struct Filler<T, F> {
    objects: Arc<RwLock<HashMap<String, Arc<T>>>>,
    changes: Arc<AtomicU64>,
    ready: tokio::sync::watch::Sender<bool>,
    /// A relist in progress: filled, then swapped in whole when complete (as a reflector
    /// does), so readers never see a half-listed cache.
    relisting: Option<HashMap<String, Arc<T>>>,
    project: F,
}

impl<T, F> Filler<T, F> {
    fn new<K>(project: F) -> (Cache<T>, Self)
    where
        F: Fn(K) -> Option<T>,
    {
        let objects = Arc::new(RwLock::new(HashMap::new()));
        let changes = Arc::new(AtomicU64::new(0));
        let (ready, ready_rx) = tokio::sync::watch::channel(false);
        let cache = Cache {
            objects: objects.clone(),
            changes: changes.clone(),
            ready: ready_rx,
        };
        let filler = Self {
            objects,
            changes,
            ready,
            relisting: None,
            project,
        };
        (cache, filler)
    }

    fn apply<K>(&mut self, event: watcher::Event<K>) -> Option<Change>
    where
        K: Resource,
        T: PartialEq,
        F: Fn(K) -> Option<T>,
    {
        let change = self.change(event);
        if change.is_some() {
            // After the write: a reader that sees the new number sees the new objects.
            self.changes.fetch_add(1, Ordering::Release);
        }
        change
    }

    fn change<K>(&mut self, event: watcher::Event<K>) -> Option<Change>
    where
        K: Resource,
        T: PartialEq,
        F: Fn(K) -> Option<T>,
    {
        let key = |o: &K| herald_api::ObjectKey::of(o.meta()).to_string();
        let write = || self.objects.write();
        match event {
            watcher::Event::Init => {
                self.relisting = Some(HashMap::new());
                None
            }
            watcher::Event::InitApply(o) => {
                let k = key(&o);
                if let Some(t) = (self.project)(o) {
                    let map = self.relisting.get_or_insert_with(HashMap::new);
                    map.insert(k, Arc::new(t));
                }
                None
            }
            watcher::Event::InitDone => {
                let mut map = self.relisting.take().unwrap_or_default();
                map.shrink_to_fit();
                *write() = map;
                self.ready.send_replace(true);
                Some(Change::Relisted)
            }
            watcher::Event::Apply(o) => {
                let k = key(&o);
                let cached = match (self.project)(o) {
                    // A write that changes nothing the projection keeps (a kubelet's status
                    // heartbeat, another controller's field) is no change.
                    Some(t) => {
                        let t = Arc::new(t);
                        write()
                            .insert(k.clone(), t.clone())
                            .is_none_or(|old| old != t)
                    }
                    // Not kept: a change only if it was kept before.
                    None => write().remove(&k).is_some(),
                };
                cached.then_some(Change::Object(k))
            }
            watcher::Event::Delete(o) => {
                let k = key(&o);
                write().remove(&k).is_some().then_some(Change::Object(k))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use watcher::Event;

    /// A ConfigMap `ns/name` whose `v` is what gets cached (absent: not kept).
    fn cm(name: &str, v: Option<&str>) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.namespace = Some("ns".into());
        c.metadata.name = Some(name.into());
        c.data = v.map(|v| [("v".to_owned(), v.to_owned())].into());
        c
    }

    fn filler() -> (
        Cache<String>,
        Filler<String, impl Fn(ConfigMap) -> Option<String>>,
    ) {
        Filler::new(|c: ConfigMap| c.data?.remove("v"))
    }

    fn contents(cache: &Cache<String>) -> Vec<(String, String)> {
        let mut all: Vec<_> = cache
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), (**v).clone()))
            .collect();
        all.sort();
        all
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_relist_is_swapped_in_whole_and_drops_what_is_gone() {
        let (cache, mut f) = filler();
        assert_eq!(f.apply(Event::Init), None);
        assert_eq!(f.apply(Event::InitApply(cm("a", Some("1")))), None);
        assert_eq!(f.apply(Event::InitApply(cm("b", Some("2")))), None);
        // Not ready, and nothing visible, until the list is complete.
        assert!(!*cache.ready.borrow());
        assert!(cache.is_empty());
        assert_eq!(
            f.apply(Event::<ConfigMap>::InitDone),
            Some(Change::Relisted)
        );
        assert!(*cache.ready.borrow());
        assert_eq!(contents(&cache), pairs(&[("ns/a", "1"), ("ns/b", "2")]));

        assert_eq!(
            f.apply(Event::Apply(cm("c", Some("3")))),
            Some(Change::Object("ns/c".into()))
        );
        // A write that leaves the projection as it was is no change (no pass for it).
        assert_eq!(f.apply(Event::Apply(cm("c", Some("3")))), None);
        // The watch broke and relisted: b and c were deleted meanwhile, a changed. Until the
        // relist completes, readers keep the old complete view.
        f.apply(Event::Init);
        f.apply(Event::InitApply(cm("a", Some("9"))));
        assert_eq!(
            contents(&cache),
            pairs(&[("ns/a", "1"), ("ns/b", "2"), ("ns/c", "3")])
        );
        assert_eq!(
            f.apply(Event::<ConfigMap>::InitDone),
            Some(Change::Relisted)
        );
        assert_eq!(contents(&cache), pairs(&[("ns/a", "9")]));
        assert_eq!(cache.get("ns/a").as_deref(), Some(&"9".to_owned()));
    }

    #[test]
    fn objects_projected_to_none_are_not_kept_and_not_reported() {
        let (cache, mut f) = filler();
        f.apply(Event::Init);
        f.apply(Event::InitApply(cm("kept", Some("1"))));
        f.apply(Event::InitApply(cm("skipped", None)));
        f.apply(Event::<ConfigMap>::InitDone);
        assert_eq!(contents(&cache), pairs(&[("ns/kept", "1")]));
        // Changes of an object never kept are no change.
        assert_eq!(f.apply(Event::Apply(cm("skipped", None))), None);
        assert_eq!(f.apply(Event::Delete(cm("skipped", None))), None);
        // A kept object that stops being of interest leaves the cache, and that is a change.
        assert_eq!(
            f.apply(Event::Apply(cm("kept", None))),
            Some(Change::Object("ns/kept".into()))
        );
        assert!(cache.is_empty());
        // One that becomes of interest enters it.
        assert_eq!(
            f.apply(Event::Apply(cm("skipped", Some("2")))),
            Some(Change::Object("ns/skipped".into()))
        );
        assert_eq!(
            f.apply(Event::Delete(cm("skipped", Some("2")))),
            Some(Change::Object("ns/skipped".into()))
        );
        assert!(cache.is_empty());
    }

    #[test]
    fn the_generation_moves_with_every_change_and_only_then() {
        let (cache, mut f) = filler();
        let mut last = cache.generation();
        let mut moved = |cache: &Cache<String>| {
            let now = cache.generation();
            std::mem::replace(&mut last, now) != now
        };
        f.apply(Event::Init);
        f.apply(Event::InitApply(cm("a", Some("1"))));
        assert!(!moved(&cache), "a relist in progress is not visible");
        f.apply(Event::<ConfigMap>::InitDone);
        assert!(moved(&cache));
        f.apply(Event::Apply(cm("a", Some("1"))));
        f.apply(Event::Apply(cm("other", None)));
        assert!(!moved(&cache), "writes that change nothing kept");
        f.apply(Event::Apply(cm("a", Some("2"))));
        assert!(moved(&cache));
        f.apply(Event::Delete(cm("a", Some("2"))));
        assert!(moved(&cache));
        f.apply(Event::Init);
        f.apply(Event::<ConfigMap>::InitDone);
        assert!(moved(&cache), "a relist may have changed anything");
    }
}
