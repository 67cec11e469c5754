//! Sending Events: the one place either binary creates one (what an Event says, and the
//! object, are `herald_api::events`).

use herald_api::events::{Note, Regarding, Reporter, build, build_for_node};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, PostParams};

/// Sends Events for one reporter: one request per Event (Herald says things on change only).
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    reporter: Reporter,
}

impl Publisher {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self { client, reporter }
    }

    pub fn reporter(&self) -> &Reporter {
        &self.reporter
    }

    /// Publishes `note` about the Service `regarding`, in its namespace.
    pub async fn about_service(&self, regarding: Regarding<'_>, note: &Note) -> kube::Result<()> {
        let event = build(regarding, note, &self.reporter);
        self.create(regarding.namespace, &event).await
    }

    /// Publishes `note` about the Node `name` (`uid`), in `default` as the kubelet does.
    pub async fn about_node(&self, name: &str, uid: &str, note: &Note) -> kube::Result<()> {
        let event = build_for_node(name, uid, note, &self.reporter);
        self.create("default", &event).await
    }

    async fn create(&self, namespace: &str, event: &Event) -> kube::Result<()> {
        Api::<Event>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), event)
            .await
            .map(|_| ())
    }
}
