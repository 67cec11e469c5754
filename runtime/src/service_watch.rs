//! Every Service, listed in protobuf then watched: the event stream `watch::projected_from`
//! caches. Same events and error kinds as kube-runtime's `watcher` (which lists in JSON
//! only), so the cache, the backoff and the callers do not know the difference.
//!
//! Measured on one API server with 100,000 Services (docs/benchmarks.md): the JSON list in
//! pages of 2,000 took 4.1 s and 3 API-server CPU-seconds; the protobuf list from the watch
//! cache 0.6 s and 0.5. An API server or proxy that will not answer in protobuf (406, or a
//! JSON body) gets kube-runtime's JSON watcher instead, for the rest of the process.
//!
//! The watch itself stays JSON: after the list, changes come one at a time.

use std::pin::Pin;
use std::time::Duration;

use futures::{AsyncBufRead, Stream, StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use kube::api::{ListParams, VersionMatch, WatchEvent, WatchParams};
use kube::core::{Request, Status};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use crate::proto::{self, ListItem, ListReader};
use herald_api::events::bounded;
use herald_api::service::ServiceObject;

type Events = Pin<Box<dyn Stream<Item = Result<Event<ServiceObject>, watcher::Error>> + Send>>;
type Body = Pin<Box<dyn AsyncBufRead + Send>>;
type Changes = Pin<Box<dyn Stream<Item = kube::Result<WatchEvent<ServiceObject>>> + Send>>;

/// How long a watch asks the API server to stay open, and how long without a byte (the API
/// server sends a bookmark about every minute) before the connection is taken for dead.
const WATCH_SECONDS: u32 = 290;
const IDLE: Duration = Duration::from_secs(WATCH_SECONDS as u64 + 10);

/// Every Service: listed (protobuf), then watched from where the list ended, relisted when
/// the watch falls too far behind (410 Gone). `config` is used only by the JSON fallback.
/// Errors are yielded, not retried: put a backoff on the stream (`default_backoff`).
pub fn events(client: Client, config: watcher::Config) -> Events {
    let api = Api::<ServiceObject>::all(client.clone());
    futures::stream::unfold(
        (State::Empty(None), client, api, config),
        |(state, client, api, config)| async move {
            let (event, next) = step(&client, &api, &config, state).await;
            Some((event, (next, client, api, config)))
        },
    )
    .filter_map(futures::future::ready)
    .boxed()
}

enum State {
    /// Nothing listed yet, or a relist is due: of a state no older than this resourceVersion
    /// once one was seen (another API server's cache may lag behind the one that served it,
    /// and a list from the past would show taken IPs as free).
    Empty(Option<String>),
    Listing(ListReader<Body>, Option<String>),
    /// Listed (or watched) up to this resourceVersion; a watch is due.
    Listed(String),
    Watching(String, Changes),
    /// Not served in protobuf: kube-runtime's JSON watcher from here on.
    Json(Events),
}

/// Switches to kube-runtime's JSON watcher, saying why once.
fn json(api: &Api<ServiceObject>, config: &watcher::Config, why: &str) -> State {
    tracing::info!("Services are not listed in protobuf here ({why}): listing in JSON");
    State::Json(watcher::watcher(api.clone(), config.clone()).boxed())
}

async fn step(
    client: &Client,
    api: &Api<ServiceObject>,
    config: &watcher::Config,
    state: State,
) -> (Option<Result<Event<ServiceObject>, watcher::Error>>, State) {
    match state {
        State::Empty(seen) => match list(client, api, seen.as_deref()).await {
            Ok(Listed::Reader(reader)) => (Some(Ok(Event::Init)), State::Listing(reader, seen)),
            Ok(Listed::Refused(why)) => (None, json(api, config, &why)),
            Err(e) => (
                Some(Err(watcher::Error::InitialListFailed(e))),
                State::Empty(seen),
            ),
        },
        State::Listing(mut reader, seen) => match reader.next().await {
            Ok(ListItem::Object(o)) => {
                (Some(Ok(Event::InitApply(*o))), State::Listing(reader, seen))
            }
            Ok(ListItem::End { resource_version }) => {
                (Some(Ok(Event::InitDone)), State::Listed(resource_version))
            }
            // Something between here and the API server pages lists: the JSON watcher
            // follows pages (and starts over with `Init`, dropping this partial list).
            Err(proto::ProtoError::Paginated) => {
                (None, json(api, config, "it answered a list in pages"))
            }
            Err(e) => (
                Some(Err(watcher::Error::InitialListFailed(
                    kube::Error::Service(Box::new(e)),
                ))),
                State::Empty(seen),
            ),
        },
        State::Listed(rv) => {
            let params = WatchParams::default().timeout(WATCH_SECONDS);
            match api.watch(&params, &rv).await {
                Ok(changes) => (None, State::Watching(rv, changes.boxed())),
                Err(kube::Error::Api(s)) if s.code == 410 => (
                    Some(Err(watcher::Error::WatchStartFailed(kube::Error::Api(s)))),
                    State::Empty(Some(rv)),
                ),
                Err(e) => (
                    Some(Err(watcher::Error::WatchStartFailed(e))),
                    State::Listed(rv),
                ),
            }
        }
        State::Watching(rv, mut changes) => {
            match tokio::time::timeout(IDLE, changes.next()).await {
                Ok(Some(Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)))) => {
                    let rv = o.metadata.resource_version.clone().unwrap_or(rv);
                    (Some(Ok(Event::Apply(o))), State::Watching(rv, changes))
                }
                Ok(Some(Ok(WatchEvent::Deleted(o)))) => {
                    let rv = o.metadata.resource_version.clone().unwrap_or(rv);
                    (Some(Ok(Event::Delete(o))), State::Watching(rv, changes))
                }
                Ok(Some(Ok(WatchEvent::Bookmark(b)))) => {
                    (None, State::Watching(b.metadata.resource_version, changes))
                }
                // Too far behind: what happened meanwhile is only known from a new list.
                Ok(Some(Ok(WatchEvent::Error(e)))) if e.code == 410 => (
                    Some(Err(watcher::Error::WatchError(e.boxed()))),
                    State::Empty(Some(rv)),
                ),
                Ok(Some(Ok(WatchEvent::Error(e)))) => (
                    Some(Err(watcher::Error::WatchError(e.boxed()))),
                    State::Watching(rv, changes),
                ),
                Ok(Some(Err(e))) => (
                    Some(Err(watcher::Error::WatchFailed(e))),
                    State::Watching(rv, changes),
                ),
                // Ended (the server's timeout) or silent for too long: watch again from here.
                Ok(None) | Err(_) => (None, State::Listed(rv)),
            }
        }
        State::Json(mut events) => match events.next().await {
            Some(event) => (Some(event), State::Json(events)),
            None => (None, State::Empty(None)),
        },
    }
}

enum Listed {
    Reader(ListReader<Body>),
    /// The server answers lists, but not in protobuf (why).
    Refused(String),
}

/// Asks for every Service in protobuf, from the watch cache (as informers list: it spares
/// etcd and answers in one response): any state at first (`resourceVersion=0`), then none
/// older than what was seen.
async fn list(
    client: &Client,
    api: &Api<ServiceObject>,
    seen: Option<&str>,
) -> Result<Listed, kube::Error> {
    let params = ListParams {
        resource_version: Some(seen.unwrap_or("0").to_owned()),
        version_match: Some(VersionMatch::NotOlderThan),
        ..ListParams::default()
    };
    let mut request = Request::new(api.resource_url())
        .list(&params)
        .map_err(kube::Error::BuildRequest)?;
    request.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static(proto::MEDIA_TYPE),
    );
    let response = client.send(request.map(kube::client::Body::from)).await?;
    let status = response.status();
    if status == http::StatusCode::NOT_ACCEPTABLE {
        return Ok(Listed::Refused("406 Not Acceptable".into()));
    }
    if !status.is_success() {
        let body = response.into_body().collect_bytes().await?;
        return Err(kube::Error::Api(error_status(status, &body).boxed()));
    }
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with(proto::MEDIA_TYPE) {
        return Ok(Listed::Refused(format!(
            "answered as {}",
            bounded(content_type, 80)
        )));
    }
    let body: Body = Box::pin(
        response
            .into_body()
            .into_data_stream()
            .map_err(std::io::Error::other)
            .into_async_read(),
    );
    match ListReader::open(body).await {
        Ok(reader) => Ok(Listed::Reader(reader)),
        Err(proto::ProtoError::NoMagic) => Ok(Listed::Refused("not protobuf".into())),
        Err(e) => Err(kube::Error::Service(Box::new(e))),
    }
}

/// An error response as a `Status`: JSON or protobuf, else its code and (bounded) text.
fn error_status(status: http::StatusCode, body: &[u8]) -> Status {
    if let Ok(s) = serde_json::from_slice::<Status>(body) {
        return s;
    }
    let (code, message) = proto::decode_status(body).unwrap_or_else(|| {
        (
            status.as_u16(),
            bounded(&String::from_utf8_lossy(body), 200),
        )
    });
    Status::failure(&message, status.canonical_reason().unwrap_or_default()).with_code(code)
}
