//! What the speaker writes about the IPs it speaks for: an Event on the Service when the node
//! announcing an IP changes (or why nobody may announce it), and one L2Announcement object
//! per Service IP so `kubectl get l2announcements` shows where each IP lives. Written from
//! the latest decision by a task of its own, so thousands of writes after a node died never
//! delay the next decision.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use herald_api::announcement::{self, L2Announcement, L2AnnouncementSpec};
use herald_api::events::{self, Note, Reporter};
use herald_api::watch::Cache;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::watch;

use crate::plan::{Decision, IpDecision};
use crate::service::ServiceIps;

/// Events about announcing and the L2Announcement objects, for the IPs this speaker speaks
/// for (`Decision`): the owner says it announces; the reporter says why nobody may. Written on
/// change only, and again after a failed write.
pub struct Notes {
    client: Client,
    reporter: Reporter,
    /// What was written per IP this speaker speaks for. Forgotten when another speaker takes
    /// the IP over (or its Services go), so it is said again if the IP comes back.
    said: HashMap<IpAddr, Said>,
}

/// What this speaker wrote about one IP, as fingerprints (10,000 IPs: no copies of objects).
#[derive(Debug, Default)]
struct Said {
    /// The IP's decision its L2Announcements were last written from, once all writes succeeded.
    announcements: Option<u64>,
    /// Per Service (fingerprint of key and uid): the outcome it was last told about in an
    /// Event.
    events: Vec<(u64, u64)>,
}

fn fingerprint(value: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

impl Notes {
    pub fn new(client: Client, node: &str) -> Self {
        Self {
            client,
            reporter: Reporter {
                controller: "herald-speaker".into(),
                instance: node.into(),
                action: "Announce".into(),
            },
            said: HashMap::new(),
        }
    }

    /// Publishes what changed between the decisions it sees (intermediate ones may be
    /// skipped when writes lag: only the latest state matters). Failed writes are retried
    /// with the next decision (at the latest the 10 s safety-net pass).
    pub async fn run(
        mut self,
        services: Cache<ServiceIps>,
        mut decisions: watch::Receiver<Arc<Decision>>,
    ) {
        while decisions.changed().await.is_ok() {
            let now = decisions.borrow_and_update().clone();
            self.publish_all(&services, &now).await;
        }
    }

    async fn publish_all(&mut self, services: &Cache<ServiceIps>, now: &Decision) {
        self.said.retain(|ip, _| now.ips.contains_key(ip));
        self.said.shrink_to(now.ips.len());
        for (ip, d) in &now.ips {
            self.publish(services, *ip, d).await;
        }
    }

    async fn publish(&mut self, services: &Cache<ServiceIps>, ip: IpAddr, d: &IpDecision) {
        let me = self.reporter.instance.as_str();
        // The IP's Services as cached now (one deleted since the decision is left out; it
        // leaves the next decision too). Their uids count: a Service deleted and created again
        // under the same name between two decisions is a new object to write about.
        let current: Vec<(&String, Arc<ServiceIps>)> = d
            .services
            .iter()
            .filter_map(|key| Some((key, services.get(key)?)))
            .collect();
        let uids: Vec<&str> = current.iter().map(|(_, s)| &*s.uid).collect();
        let written = fingerprint(&(d, &uids));
        let said = self.said.entry(ip).or_default();
        if said.announcements != Some(written) {
            let mut all = true;
            for (key, svc) in &current {
                all &= write_announcement(&self.client, key, svc, ip, d, me).await;
            }
            said.announcements = all.then_some(written);
        }
        // The node announcing changes with the outcome; the interfaces alone do not make an
        // Event ("announced by node X" is said when X changes, and only then).
        let told = fingerprint(&d.outcome.as_ref().map(|_| ()));
        let keys: Vec<u64> = current
            .iter()
            .map(|(key, svc)| fingerprint(&(key, &svc.uid)))
            .collect();
        said.events.retain(|(k, _)| keys.contains(k));
        let untold: Vec<(&String, &ServiceIps, u64)> = current
            .iter()
            .zip(keys)
            .filter(|(_, k)| !said.events.contains(&(*k, told)))
            .map(|((key, svc), k)| (*key, &**svc, k))
            .collect();
        if untold.is_empty() {
            return;
        }
        let note = match &d.outcome {
            Ok(interfaces) => Some(Note::normal(
                "IPAnnounced",
                format!(
                    "{ip} is announced by node {me} on {}",
                    if interfaces.is_empty() {
                        "no interface (none is up)".to_owned()
                    } else {
                        interfaces.join(", ")
                    }
                ),
            )),
            Err(e) => e
                .reason()
                .map(|reason| Note::warning(reason, format!("{ip} is not announced: {e}"))),
        };
        for (key, svc, k) in untold {
            if let Some(note) = &note {
                let about = svc.regarding(key);
                let event = events::build(about, note, &self.reporter);
                if let Err(e) = Api::<Event>::namespaced(self.client.clone(), about.namespace)
                    .create(&PostParams::default(), &event)
                    .await
                {
                    tracing::warn!(service = %key, "publishing event: {e}");
                    continue;
                }
            }
            said.events.retain(|(s, _)| *s != k);
            said.events.push((k, told));
        }
    }
}

/// Writes the L2Announcement of one Service IP (owned by the Service, so deleting the
/// Service deletes it). False when the write failed.
async fn write_announcement(
    client: &Client,
    key: &str,
    svc: &ServiceIps,
    ip: IpAddr,
    d: &IpDecision,
    me: &str,
) -> bool {
    let about = svc.regarding(key);
    let spec = L2AnnouncementSpec {
        service: about.name.to_owned(),
        ip: ip.to_string(),
        node: if d.outcome.is_ok() {
            me.to_owned()
        } else {
            String::new()
        },
        interfaces: d.outcome.clone().unwrap_or_default(),
        reason: d.outcome.as_ref().err().map(ToString::to_string),
    };
    let name = announcement::name(about.name, ip);
    let object = serde_json::json!({
        "apiVersion": "herald.dev/v1alpha1",
        "kind": "L2Announcement",
        "metadata": {"name": name, "namespace": about.namespace, "ownerReferences": [{
            "apiVersion": "v1", "kind": "Service", "name": about.name, "uid": about.uid,
        }]},
        "spec": spec,
    });
    match Api::<L2Announcement>::namespaced(client.clone(), about.namespace)
        .patch(
            &name,
            &PatchParams::apply("herald-speaker").force(),
            &Patch::Apply(&object),
        )
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(service = %key, %ip, "writing L2Announcement: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use herald_api::testing::FakeApi;

    use super::*;
    use crate::election::NoOwner;

    const PATCH: &str =
        "PATCH /apis/herald.dev/v1alpha1/namespaces/shop/l2announcements/web-192-0-2-10";
    const EVENT: &str = "POST /apis/events.k8s.io/v1/namespaces/shop/events";

    fn decision(outcome: Result<Vec<String>, NoOwner>) -> Decision {
        let ip: IpAddr = "192.0.2.10".parse().expect("ip");
        Decision {
            ips: [(
                ip,
                IpDecision {
                    services: vec!["shop/web".into()],
                    outcome,
                },
            )]
            .into(),
            plan: Default::default(),
        }
    }

    /// The Service shop/web holding 192.0.2.10.
    fn web(uid: &str) -> Cache<ServiceIps> {
        [(
            "shop/web".to_owned(),
            ServiceIps {
                uid: uid.into(),
                local_traffic: false,
                ips: ["192.0.2.10".parse().expect("ip")].into(),
            },
        )]
        .into_iter()
        .collect()
    }

    #[tokio::test]
    async fn says_each_change_once_and_retries_what_failed() {
        let api = FakeApi::default();
        let mut notes = Notes::new(api.client(), "n1");
        let services = web("u1");
        let eth0 = decision(Ok(vec!["eth0".into()]));

        // Gaining the IP: the L2Announcement and an Event; the Event POST fails.
        api.fail_events(1);
        notes.publish_all(&services, &eth0).await;
        assert_eq!(api.take(), [PATCH, EVENT]);
        // Next decision, same outcome: the Event is tried again, the announcement is not.
        notes.publish_all(&services, &eth0).await;
        assert_eq!(api.take(), [EVENT]);
        // Nothing changed and nothing failed: nothing is written.
        notes.publish_all(&services, &eth0).await;
        assert!(api.take().is_empty());

        // Another interface: the L2Announcement says so; no Event (the node did not change).
        notes
            .publish_all(&services, &decision(Ok(vec!["eth0".into(), "eth1".into()])))
            .await;
        assert_eq!(api.take(), [PATCH]);

        // Another node took the IP over (it leaves this node's decision), then it came back:
        // written again, with an Event, as the announcing node changed twice.
        notes.publish_all(&services, &Decision::default()).await;
        assert!(api.take().is_empty());
        notes.publish_all(&services, &eth0).await;
        assert_eq!(api.take(), [PATCH, EVENT]);

        // The Service was deleted and created again under the same name between two
        // decisions: a new object, whose L2Announcement and Event are written anew.
        notes.publish_all(&web("u2"), &eth0).await;
        assert_eq!(api.take(), [PATCH, EVENT]);
    }

    #[tokio::test]
    async fn the_reporter_warns_once_and_not_about_missing_local_endpoints() {
        let api = FakeApi::default();
        let mut notes = Notes::new(api.client(), "n1");
        let services = web("u1");
        let unadvertised = decision(Err(NoOwner::NotAdvertised("lan".into())));
        notes.publish_all(&services, &unadvertised).await;
        assert_eq!(api.take(), [PATCH, EVENT]);
        notes.publish_all(&services, &unadvertised).await;
        assert!(api.take().is_empty());
        // No ready endpoint is normal (scaled to zero): the object says so, no Warning.
        notes
            .publish_all(&services, &decision(Err(NoOwner::NoLocalEndpoint)))
            .await;
        assert_eq!(api.take(), [PATCH]);
        // Announced again: the node changed (from nobody), so an Event.
        notes
            .publish_all(&services, &decision(Ok(vec!["eth0".into()])))
            .await;
        assert_eq!(api.take(), [PATCH, EVENT]);
    }
}
