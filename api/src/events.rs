//! Kubernetes Events (events.k8s.io/v1) about Services and Nodes. Herald publishes an Event
//! only when what it has to say changes, so there is no series bookkeeping here and nothing
//! is cached per Event (kube-runtime's `Recorder` keeps every Event for minutes and scans
//! that cache on each publish, which does not scale to 10,000 Services). Pure: building
//! an Event; `herald_runtime::Publisher` is the one place either binary sends one.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Normal,
    Warning,
}

/// What Herald says about a Service; two equal notes are one Event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Note {
    pub kind: Kind,
    pub reason: String,
    pub message: String,
}

impl Note {
    pub fn normal(reason: &str, message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Normal,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn warning(reason: &str, message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Warning,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Who reports an Event: the component (`herald-controller`, `herald-speaker`), its
/// instance (pod or node name) and the action Events are about.
#[derive(Debug, Clone)]
pub struct Reporter {
    pub controller: String,
    pub instance: String,
    pub action: String,
}

/// The Service an Event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regarding<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
}

/// The Event object for `note` about the Service `regarding`.
pub fn build(regarding: Regarding, note: &Note, reporter: &Reporter) -> Event {
    let now = Timestamp::now();
    let Regarding {
        namespace,
        name,
        uid,
    } = regarding;
    Event {
        action: Some(reporter.action.clone()),
        reason: Some(note.reason.clone()),
        note: Some(bounded(&note.message, MESSAGE_LIMIT)),
        type_: Some(
            match note.kind {
                Kind::Normal => "Normal",
                Kind::Warning => "Warning",
            }
            .into(),
        ),
        event_time: Some(MicroTime(now)),
        regarding: Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            uid: Some(uid.to_owned()),
            resource_version: None,
            field_path: None,
        }),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(reporter.instance.clone()),
        metadata: ObjectMeta {
            // Unique per Service and instant; the API server rejects duplicates anyway.
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The Event object for `note` about a Node (`name`, `uid`). Like the kubelet's, it lives in
/// the `default` namespace.
pub fn build_for_node(name: &str, uid: &str, note: &Note, reporter: &Reporter) -> Event {
    let about = Regarding {
        namespace: "default",
        name,
        uid,
    };
    let mut event = build(about, note, reporter);
    if let Some(regarding) = event.regarding.as_mut() {
        regarding.kind = Some("Node".into());
        regarding.namespace = None;
    }
    event
}

/// The longest message Herald writes anywhere (Event notes, status conditions): the API
/// server refuses an Event note over 1 kB, and user text copied into a message must not grow
/// the object it is written on.
pub const MESSAGE_LIMIT: usize = 1024;

/// How much of a user's value (an annotation, a field, a name it asks for) a message quotes.
pub const QUOTE_LIMIT: usize = 64;

/// A user's value quoted for a message, cut to `QUOTE_LIMIT` bytes: every message that
/// repeats user text goes through here, so none grows with what a user wrote.
pub fn quote(text: &str) -> String {
    format!("{:?}", bounded(text, QUOTE_LIMIT))
}

/// `s` cut to at most `max` bytes (on a character boundary, with `...` when cut).
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_the_service_and_keeps_notes_under_the_api_limit() {
        let svc = Regarding {
            namespace: "shop",
            name: "web",
            uid: "u1",
        };
        let long = "é".repeat(700);
        let reporter = Reporter {
            controller: "herald-controller".into(),
            instance: "pod-1".into(),
            action: "Allocate".into(),
        };
        let e = build(svc, &Note::warning("PoolExhausted", long), &reporter);
        assert_eq!(e.reporting_instance.as_deref(), Some("pod-1"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("shop"));
        let regarding = e.regarding.expect("regarding");
        assert_eq!(regarding.name.as_deref(), Some("web"));
        assert_eq!(regarding.uid.as_deref(), Some("u1"));
        let note = e.note.expect("note");
        assert!(
            note.len() <= 1024 && note.ends_with("..."),
            "{}",
            note.len()
        );
    }
}
