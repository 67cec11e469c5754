//! A fake API server for unit tests of code that writes to the cluster: a kube `Client`
//! over a `tower::service_fn` that records each request, answers a write by echoing the
//! object, and fails Event creations on demand. End-to-end behaviour is proven on the real
//! API server (tests/); this is for what that cannot provoke, such as a failed Event POST.
//! Compiled only with the `testing` feature (dev-dependencies).

use std::convert::Infallible;
use std::sync::Arc;

use parking_lot::Mutex;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;

const FAILURE: &[u8] = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"etcd is down","reason":"InternalError","code":500}"#;

#[derive(Clone, Default)]
pub struct FakeApi {
    requests: Arc<Mutex<Vec<String>>>,
    fail_events: Arc<Mutex<usize>>,
}

impl FakeApi {
    /// A client whose requests this fake answers.
    pub fn client(&self) -> Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let api = api.clone();
            async move {
                let line = format!("{} {}", req.method(), req.uri().path());
                let event = line.ends_with("/events");
                let fail = event && api.take_event_failure();
                api.requests.lock().push(line);
                let (status, body) = if fail {
                    (StatusCode::INTERNAL_SERVER_ERROR, FAILURE.to_vec())
                } else {
                    let body = req.into_body().collect_bytes().await.unwrap_or_default();
                    let status = if event {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    (status, body.to_vec())
                };
                let mut response = Response::new(Body::from(body));
                *response.status_mut() = status;
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Ok::<_, Infallible>(response)
            }
        });
        Client::new(service, "default")
    }

    /// The next `n` Event creations fail with a 500.
    pub fn fail_events(&self, n: usize) {
        *self.fail_events.lock() = n;
    }

    /// `METHOD path` of each request since the last call.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.requests.lock())
    }

    fn take_event_failure(&self) -> bool {
        let mut left = self.fail_events.lock();
        let fail = *left > 0;
        *left = left.saturating_sub(1);
        fail
    }
}
