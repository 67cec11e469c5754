//! Events about Services, published apart from the passes: a bounded queue (as client-go's
//! broadcaster) that drops and counts what it cannot hold, and a task that publishes a few
//! at a time and reports failures back, so that the next pass says them again. A pass never
//! waits for an Event (they only inform), and no Service's status queues behind one.

use std::time::Duration;

use anyhow::{Context, Result};
use futures::{StreamExt, stream};
use herald_api::LbService;
use herald_api::events::Note;
use herald_api::fingerprint;
use herald_runtime::Publisher;
use herald_runtime::watch::Cache;
use tokio::sync::mpsc;

use crate::metrics::{Metrics, WriteLabels};

/// An Event for the publisher: (Service key, what to say).
pub type Queued = (String, Note);
/// An Event the publisher could not publish: (Service key, fingerprint of the note).
pub type Failure = (String, u64);

/// Events waiting to be published, at most (client-go's broadcaster queues 1,000 too): a
/// burst of 100,000 allocations (a first install, a restore) says the first 1,000 and drops
/// the rest, counted, instead of holding 100,000 in memory and writing 100,000 Events while
/// statuses wait. Statuses and conditions always say what an Event would.
pub const MAX_QUEUED: usize = 1_000;
/// Events published at a time: fewer than status writes, which the Services wait for.
const CONCURRENCY: usize = 8;
/// Dropping Events is logged at most this often.
const DROPS_LOGGED_EVERY: Duration = Duration::from_secs(60);

/// The passes' end of the queue.
pub struct EventQueue {
    queue: mpsc::Sender<Queued>,
    failures: mpsc::UnboundedReceiver<Failure>,
    /// When dropping Events was last logged.
    drops_logged: Option<tokio::time::Instant>,
}

impl EventQueue {
    /// The queue, and the publisher that empties it (to be spawned): each Event is built
    /// from the cached Service when it is sent.
    pub fn new(
        events: Publisher,
        services: Cache<LbService>,
        metrics: Metrics,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (queue, queued) = mpsc::channel(MAX_QUEUED);
        let (failed, failures) = mpsc::unbounded_channel();
        (
            Self::over(queue, failures),
            publish(events, services, metrics, queued, failed),
        )
    }

    /// The passes' end of a queue whose other end is the caller's (tests read it).
    pub fn over(queue: mpsc::Sender<Queued>, failures: mpsc::UnboundedReceiver<Failure>) -> Self {
        Self {
            queue,
            failures,
            drops_logged: None,
        }
    }

    /// Queues a pass's Events; drops (and counts) those the full queue cannot take.
    pub fn send(&mut self, events: Vec<Queued>, metrics: &Metrics) {
        let mut dropped = 0u64;
        for event in events {
            match self.queue.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => dropped += 1,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::error!("the Event publisher stopped; Events are not published");
                    return;
                }
            }
        }
        if dropped == 0 {
            return;
        }
        metrics.events_dropped.inc_by(dropped);
        let now = tokio::time::Instant::now();
        if self
            .drops_logged
            .is_none_or(|t| now - t >= DROPS_LOGGED_EVERY)
        {
            self.drops_logged = Some(now);
            tracing::warn!(
                dropped,
                queued = MAX_QUEUED,
                "the Event queue is full; Events dropped (statuses say the same; counted in herald_controller_events_dropped_total)"
            );
        }
    }

    /// The Events that could not be published since the last call.
    pub fn failures(&mut self) -> impl Iterator<Item = Failure> + '_ {
        std::iter::from_fn(|| self.failures.try_recv().ok())
    }
}

/// Publishes the queued Events, `CONCURRENCY` at a time, built from the cached Service when
/// sent; reports failures back.
async fn publish(
    events: Publisher,
    services: Cache<LbService>,
    metrics: Metrics,
    queued: mpsc::Receiver<Queued>,
    failed: mpsc::UnboundedSender<Failure>,
) {
    let (events, services) = (&events, &services);
    stream::unfold(queued, |mut queued| async move {
        queued.recv().await.map(|event| (event, queued))
    })
    .map(|(key, note)| async move {
        let result = publish_one(events, services, &key, &note).await;
        (key, note, result)
    })
    .buffer_unordered(CONCURRENCY)
    .for_each(|(key, note, result)| {
        metrics
            .api_writes
            .get_or_create(&WriteLabels::of(&result))
            .inc();
        if let Err(e) = result {
            tracing::warn!(service = %key, "publishing event: {e:#}");
            let _ = failed.send((key, fingerprint(&note)));
        }
        futures::future::ready(())
    })
    .await;
}

/// Publishes `note` about the Service `key`, built from the cached Service.
async fn publish_one(
    events: &Publisher,
    services: &Cache<LbService>,
    key: &str,
    note: &Note,
) -> Result<()> {
    // A Service deleted meanwhile needs no Event.
    let Some(svc) = services.get(key) else {
        return Ok(());
    };
    events
        .about_service(svc.regarding(), note)
        .await
        .context("creating Event")
}

#[cfg(test)]
mod tests {
    use herald_api::events::Reporter;
    use herald_runtime::testing::FakeApi;

    use super::*;

    #[tokio::test]
    async fn the_publisher_reports_events_it_could_not_publish() {
        let api = FakeApi::default();
        let web: LbService =
            serde_yaml_ng::from_str("metadata: {name: web, namespace: shop, uid: u1}")
                .expect("yaml");
        let services: Cache<LbService> = [("shop/web".to_owned(), web)].into_iter().collect();
        let (queue_tx, queue) = mpsc::channel(MAX_QUEUED);
        let (failures_tx, mut failures) = mpsc::unbounded_channel();
        let reporter = Reporter {
            controller: "herald-controller".into(),
            instance: "pod-1".into(),
            action: "Allocate".into(),
        };
        let publisher = tokio::spawn(publish(
            Publisher::new(api.client(), reporter),
            services,
            Metrics::register(&mut Default::default()),
            queue,
            failures_tx,
        ));
        let allocated = Note::normal("IPAllocated", "assigned 192.0.2.1");
        let gone = Note::normal("IPAllocated", "about a Service deleted meanwhile");
        api.fail_events(1);
        for event in [
            ("shop/web".to_owned(), allocated.clone()),
            ("shop/gone".to_owned(), gone),
        ] {
            queue_tx.try_send(event).expect("send");
        }
        drop(queue_tx);
        publisher.await.expect("publisher");
        assert_eq!(
            failures.try_recv().expect("a failure"),
            ("shop/web".to_owned(), fingerprint(&allocated))
        );
        // The deleted Service's Event is dropped, not published and not a failure.
        assert!(failures.try_recv().is_err());
        assert_eq!(
            api.take(),
            ["POST /apis/events.k8s.io/v1/namespaces/shop/events"]
        );
    }
}
