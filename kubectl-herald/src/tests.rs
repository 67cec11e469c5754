//! The reports from a cluster described in YAML: what `kubectl herald` says is decided
//! here, without an API server.

use crate::snapshot::Snapshot;
use crate::{explain, nodes, pools};

fn many<T: serde::de::DeserializeOwned>(yaml: &str) -> Vec<T> {
    yaml.split("\n---\n")
        .map(|doc| serde_yaml_ng::from_str(doc).expect("yaml"))
        .collect()
}

fn node(name: &str, ready: bool, extra: &str) -> String {
    let status = if ready { "True" } else { "Unknown" };
    format!(
        "metadata: {{name: {name}{extra}}}\nstatus: {{conditions: [{{type: Ready, status: '{status}'}}]}}"
    )
}

fn speaker(node: &str, ready: bool) -> String {
    let status = if ready { "True" } else { "False" };
    format!(
        "metadata: {{name: herald-speaker-{node}, namespace: herald-system}}\nspec: {{nodeName: {node}, containers: []}}\nstatus: {{conditions: [{{type: Ready, status: '{status}'}}]}}"
    )
}

/// Four nodes: n1 fine, n2 cordoned and announcing, n3 not Ready, n4 excluded with no
/// speaker. `web` (ETP Local, a ready pod on n2 only) holds 192.0.2.10 from lan; `api`
/// waits for an address of lan.
fn cluster() -> Snapshot {
    let mut nodes = [
        node("n1", true, ""),
        node("n2", true, ""),
        node("n3", false, ""),
        node(
            "n4",
            true,
            ", labels: {node.kubernetes.io/exclude-from-external-load-balancers: ''}",
        ),
    ];
    nodes[1].push_str("\nspec: {unschedulable: true}");
    Snapshot {
        services: many(
            "metadata: {name: web, namespace: default}
spec: {type: LoadBalancer, externalTrafficPolicy: Local, ports: [{port: 80}]}
status:
  loadBalancer: {ingress: [{ip: 192.0.2.10}]}
  conditions: [{type: herald.dev/IPAllocated, status: 'True', reason: Allocated, message: 192.0.2.10 from IPPool lan, lastTransitionTime: '2026-01-01T00:00:00Z'}]
---
metadata: {name: api, namespace: default}
spec: {type: LoadBalancer, ports: [{port: 80}]}
status:
  conditions: [{type: herald.dev/IPAllocated, status: 'False', reason: PoolExhausted, message: 'no free IPv4 address in IPPool(s) lan', lastTransitionTime: '2026-01-01T00:00:00Z'}]
---
metadata: {name: db, namespace: default}
spec: {type: LoadBalancer, loadBalancerClass: example.com/other, ports: [{port: 80}]}",
        ),
        pools: many(
            "metadata: {name: lan}
spec: {addresses: [192.0.2.10-192.0.2.10]}
status:
  assigned: 1
  available: '0'
  ipv4: {assigned: 1, available: '0'}
  conditions: [{type: Ready, status: 'True', reason: Ready, message: '', lastTransitionTime: '2026-01-01T00:00:00Z'}]
---
metadata: {name: lan-v2}
spec: {addresses: [198.51.100.0/24], disabled: true}
status:
  conditions:
  - {type: Ready, status: 'False', reason: Disabled, message: '', lastTransitionTime: '2026-01-01T00:00:00Z'}
  - {type: Disabled, status: 'True', reason: Drained, message: 'disabled; 0 Service(s) still hold its addresses and keep them until they release them; it gives no new ones', lastTransitionTime: '2026-01-01T00:00:00Z'}",
        ),
        l2_advertisements: many("metadata: {name: all}\nspec: {}"),
        announcements: many(
            "metadata: {name: web-192-0-2-10, namespace: default}\nspec: {service: web, ip: 192.0.2.10, node: n2, interfaces: [eth0]}",
        ),
        nodes: many(&nodes.join("\n---\n")),
        speakers: many(&[speaker("n1", true), speaker("n2", true), speaker("n3", false)].join("\n---\n")),
        slices: many(
            "metadata: {name: web-abc, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- {addresses: [10.0.2.5], nodeName: n2, conditions: {ready: true}}
- {addresses: [10.0.1.5], nodeName: n1, conditions: {ready: false}}",
        ),
        events: many(
            "metadata: {name: e1, namespace: default}
involvedObject: {kind: Service, name: web}
type: Warning
reason: NoLiveSpeaker
message: 192.0.2.10 is not answered for
reportingComponent: herald-speaker
---
metadata: {name: e2, namespace: default}
involvedObject: {kind: Service, name: web}
type: Warning
reason: FailedToCreateEndpoint
message: not Herald's
reportingComponent: endpoint-slice-controller",
        ),
        ..Snapshot::default()
    }
}

#[test]
fn explain_says_which_node_answers_and_why_the_others_may_not() {
    let e = explain::explain(&cluster(), "default", "web").expect("web");
    assert_eq!(e.addresses.len(), 1);
    let a = &e.addresses[0];
    assert_eq!(
        (a.ip.as_str(), a.pool.as_deref(), a.answered_by.as_deref()),
        ("192.0.2.10", Some("lan"), Some("n2"))
    );
    assert_eq!(a.interfaces, ["eth0"]);
    assert!(
        a.why
            .starts_with("IPPool lan: the first of the pools this Service may use (lan, lan-v2"),
        "{}",
        a.why
    );
    let verdict = |n: &str| e.nodes.iter().find(|v| v.node == n).expect("node");
    assert_eq!(
        verdict("n1").why_not,
        ["no ready endpoint of the Service on it (externalTrafficPolicy: Local)"]
    );
    let n2 = verdict("n2");
    assert!(n2.may_announce);
    assert_eq!(n2.answers_for, ["192.0.2.10"]);
    assert!(n2.notes[0].starts_with("cordoned"), "{:?}", n2.notes);
    assert!(verdict("n3").why_not.contains(&"not Ready".to_owned()));
    assert!(
        verdict("n3")
            .why_not
            .iter()
            .any(|w| w.contains("is not Ready")),
        "its speaker"
    );
    assert_eq!(
        verdict("n4").why_not[..2],
        [
            "labelled node.kubernetes.io/exclude-from-external-load-balancers".to_owned(),
            "no Herald speaker runs on it".to_owned()
        ]
    );
    assert_eq!(
        e.warnings,
        ["NoLiveSpeaker: 192.0.2.10 is not answered for"]
    );
    let text = explain::text(&e);
    assert!(
        text.contains("answered (ARP/NDP) by node n2 on eth0"),
        "{text}"
    );
    assert!(text.contains("n1: may not: no ready endpoint"), "{text}");
}

#[test]
fn explain_says_what_to_do_when_there_is_no_address_or_herald_does_not_serve_it() {
    let e = explain::explain(&cluster(), "default", "api").expect("api");
    assert!(e.addresses.is_empty());
    assert_eq!(
        e.condition.as_ref().map(|c| c.reason.as_str()),
        Some("PoolExhausted")
    );
    assert!(
        e.fix
            .as_deref()
            .is_some_and(|f| f.contains("kubectl herald pools"))
    );
    let db = explain::explain(&cluster(), "default", "db").expect("db");
    assert!(
        db.not_served
            .as_deref()
            .is_some_and(|w| w.contains("example.com/other is another controller's")),
        "{db:?}"
    );
    assert!(explain::explain(&cluster(), "default", "nope").is_none());
}

#[test]
fn an_address_asked_for_or_reserved_says_so() {
    let mut c = cluster();
    c.pools[0].spec.reservations =
        serde_yaml_ng::from_str("[{service: default/web, addresses: [192.0.2.10]}]").expect("yaml");
    let e = explain::explain(&c, "default", "web").expect("web");
    assert_eq!(
        e.addresses[0].why,
        "reserved for this Service in IPPool lan (spec.reservations)"
    );
    c.pools[0].spec.reservations.clear();
    c.services[0].metadata.annotations =
        Some([("herald.dev/ips".to_owned(), "192.0.2.10".to_owned())].into());
    let e = explain::explain(&c, "default", "web").expect("web");
    assert_eq!(e.addresses[0].why, "asked for by IP; it is in IPPool lan");
    assert_eq!(e.asks, ["IPs \"192.0.2.10\" (herald.dev/ips)"]);
}

#[test]
fn explain_shows_how_much_each_node_is_preferred() {
    let mut c = cluster();
    c.l2_advertisements = many(
        "metadata: {name: all}\nspec: {preferredNodeSelectors: [{weight: 30, preference: {matchLabels: {kubernetes.io/hostname: n2}}}]}",
    );
    c.nodes[1].metadata.labels =
        Some([("kubernetes.io/hostname".to_owned(), "n2".to_owned())].into());
    let e = explain::explain(&c, "default", "web").expect("web");
    let scores: Vec<(&str, u32)> = e
        .nodes
        .iter()
        .map(|n| (n.node.as_str(), n.preference))
        .collect();
    assert_eq!(scores, [("n1", 0), ("n2", 30), ("n3", 0), ("n4", 0)]);
    assert!(explain::text(&e).contains("n2 (preferred, score 30): answers for"));
}

#[test]
fn pools_show_usage_drains_and_who_waits_for_which_pool() {
    let r = pools::pools(&cluster());
    let lan = &r.pools[0];
    assert_eq!(
        (lan.name.as_str(), lan.state.as_str(), lan.assigned),
        ("lan", "Ready", 1)
    );
    assert_eq!(
        lan.waiting,
        ["default/api: no free IPv4 address in IPPool(s) lan (PoolExhausted)"]
    );
    let v2 = &r.pools[1];
    assert_eq!(v2.state, "Disabled");
    assert!(v2.waiting.is_empty(), "lan-v2 is not lan");
    assert!(
        v2.problems[0].starts_with("Disabled: disabled; 0 Service(s)"),
        "{:?}",
        v2.problems
    );
    assert!(r.waiting_elsewhere.is_empty());
    let text = pools::text(&r);
    assert!(text.contains("lan: waiting: default/api"), "{text}");
}

#[test]
fn nodes_show_speakers_ips_and_interfaces() {
    let r = nodes::nodes(&cluster());
    let n2 = &r[1];
    assert_eq!(n2.answers_for, ["default/web 192.0.2.10"]);
    assert_eq!(n2.interfaces, ["eth0"]);
    assert_eq!(n2.speaker.as_deref(), Some("herald-speaker-n2"));
    assert!(n2.may_announce);
    assert!(!r[2].may_announce && !r[2].speaker_ready);
    let text = nodes::text(&r);
    assert!(
        text.contains("n2: Ready, speaker herald-speaker-n2, may announce"),
        "{text}"
    );
    assert!(
        text.contains("answers for default/web 192.0.2.10 on eth0"),
        "{text}"
    );
}
