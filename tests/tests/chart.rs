//! The Helm chart, rendered by a real `helm` and applied to the real API server; and its RBAC
//! proven exact: the controller and the speaker run as the chart's ServiceAccounts (RBAC
//! enforced), do their job, and the API server's audit log shows every granted rule used
//! and nothing refused.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use herald_lab::bins::{go_binary, repo_root};
use herald_lab::objects::{apply, ips, wait_for};
use herald_lab::prometheus;
use herald_lab::{ControlPlane, Options, Process};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;

const NS: &str = "herald-system";

fn helm(args: &[&str]) -> String {
    let out = Command::new(go_binary("helm").expect("helm (scripts/build-bins helm)"))
        .args(args)
        .current_dir(repo_root())
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("herald-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("herald-helm-config"),
        )
        .output()
        .expect("running helm");
    assert!(
        out.status.success(),
        "helm {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn render(values: Option<&str>) -> Vec<serde_json::Value> {
    let mut args = vec!["template", "herald", "charts/herald", "--namespace", NS];
    if let Some(v) = values {
        args.extend(["-f", v]);
    }
    helm(&args)
        .split("\n---")
        .filter_map(|doc| serde_yaml_ng::from_str::<serde_json::Value>(doc).ok())
        .filter(|v| v.is_object())
        .collect()
}

fn find<'a>(objects: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} is not rendered"))
}

#[test]
fn chart_lints_with_default_and_all_options() {
    helm(&["lint", "--strict", "charts/herald"]);
    helm(&[
        "lint",
        "--strict",
        "charts/herald",
        "-f",
        "tests/chart/values-all.yaml",
    ]);
    let all = render(Some("tests/chart/values-all.yaml"));
    let kinds: BTreeSet<&str> = all.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in [
        "Deployment",
        "DaemonSet",
        "ClusterRole",
        "Role",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "PodDisruptionBudget",
        "Service",
    ] {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
    // No Secret is ever rendered (the controller makes it at run time) and CRDs are off.
    assert!(!kinds.contains("Secret") && !kinds.contains("CustomResourceDefinition"));
    // fullnameOverride names everything; nameOverride and commonLabels label everything.
    for o in &all {
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        assert!(
            name == "edge" || name.starts_with("edge-") || name == "lb-controller",
            "{name}"
        );
        let labels = &o["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/name"], "edge-lb", "{name}");
        assert_eq!(labels["team"], "network", "{name}");
    }
    let ds = find(&all, "DaemonSet", "edge-speaker");
    let pod = &ds["spec"]["template"];
    assert_eq!(pod["spec"]["serviceAccountName"], "existing-speaker");
    assert_eq!(pod["metadata"]["labels"]["tier"], "node");
    assert_eq!(pod["metadata"]["labels"]["team"], "network");
    assert_eq!(
        pod["metadata"]["annotations"]["example.org/node-agent"],
        "true"
    );
    assert_eq!(
        pod["spec"]["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["spec"]["containers"][0];
    // Passive BGP sessions listen on port 179.
    assert_eq!(
        container["securityContext"]["capabilities"]["add"],
        serde_json::json!(["NET_RAW", "NET_BIND_SERVICE"])
    );
    assert!(
        container["args"]
            .as_array()
            .expect("args")
            .contains(&serde_json::json!("--gossip-secret=my-gossip-key"))
    );
    assert!(
        container["args"]
            .as_array()
            .expect("args")
            .contains(&serde_json::json!("--segmented-liveness=false"))
    );
    for flag in [
        "--ignore-exclude-lb",
        "--exclude-cordoned",
        "--ignored-interfaces=cni*,storage*",
    ] {
        assert!(
            container["args"]
                .as_array()
                .expect("args")
                .contains(&serde_json::json!(flag)),
            "{flag}"
        );
    }
    assert_eq!(pod["spec"]["hostNetwork"], true);
    // A given gossip Secret: the controller makes none and may not create Secrets.
    let deploy = find(&all, "Deployment", "edge-controller");
    let args = deploy["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(!args.contains("--gossip-secret"), "{args}");
    assert!(
        !find(&all, "Role", "edge-controller")
            .to_string()
            .contains("secrets")
    );
    assert_eq!(
        find(&all, "ServiceAccount", "lb-controller")["metadata"]["annotations"]["example.org/role"],
        "lb"
    );
    assert_eq!(
        find(&all, "PodDisruptionBudget", "edge-controller")["spec"]["minAvailable"],
        2
    );
    let dashboard = find(&all, "ConfigMap", "edge-dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: serde_json::Value = serde_json::from_str(
        dashboard["data"]["herald.json"]
            .as_str()
            .expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    assert!(json["panels"].as_array().is_some_and(|p| p.len() > 5));

    let defaults = render(None);
    assert!(!defaults.iter().any(|o| o["kind"] == "Secret"));
    // The CRDs come with the chart (so `helm upgrade` upgrades them) and stay on uninstall.
    let crds: Vec<_> = defaults
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .collect();
    assert_eq!(
        crds.len(),
        herald_api::crds::render().expect("CRDs").len(),
        "every CRD Herald defines"
    );
    for crd in crds {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
    }
    let deploy = find(&defaults, "Deployment", "herald-controller");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sc = &pod["containers"][0]["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let args = pod["containers"][0]["args"].to_string();
    assert!(args.contains("--gossip-secret=herald-gossip"), "{args}");
    // The speaker gets raw frames and nothing else unless passive BGP asks for port 179.
    let speaker = find(&defaults, "DaemonSet", "herald-speaker");
    assert_eq!(
        speaker["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"],
        serde_json::json!(["NET_RAW"])
    );
    // The default gossip port is not MetalLB's memberlist port (7946).
    let speaker = find(&defaults, "DaemonSet", "herald-speaker");
    let args = speaker["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--gossip-port=9474"), "{args}");
    assert!(args.contains("--segmented-liveness=true"), "{args}");
    // Alerts and dashboard are opt-in.
    assert!(
        !defaults
            .iter()
            .any(|o| o["kind"] == "PrometheusRule" || o["kind"] == "ConfigMap")
    );
}

/// A typo in a value fails the install instead of being silently ignored.
#[test]
fn values_outside_the_schema_are_refused() {
    for (set, complaint) in [
        ("controler.replicas=3", "controler"),
        ("speaker.gosipPort=9000", "gosipPort"),
        ("speaker.gossipPort=70000", "gossipPort"),
        ("logging.format=yaml", "format"),
        (
            "metrics.prometheusRule.poolUsagePercent=150",
            "poolUsagePercent",
        ),
    ] {
        let out = Command::new(go_binary("helm").expect("helm"))
            .args(["template", "herald", "charts/herald", "--set", set])
            .current_dir(repo_root())
            .output()
            .expect("helm");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set} was accepted");
        assert!(err.contains(complaint), "{set}: {err}");
    }
}

async fn apply_objects(client: &kube::Client, objects: &[serde_json::Value]) {
    for o in objects {
        let yaml = serde_yaml_ng::to_string(o).expect("yaml");
        apply(client, &yaml).await;
    }
}

/// (apiGroup, resource[/subresource], verb) granted to `sa` by the rendered (Cluster)Roles.
fn granted(objects: &[serde_json::Value], sa: &str) -> BTreeSet<(String, String, String)> {
    let bound: BTreeSet<String> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
        .filter(|b| {
            b["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["name"] == sa)
        })
        .filter_map(|b| b["roleRef"]["name"].as_str().map(str::to_owned))
        .collect();
    let mut out = BTreeSet::new();
    for role in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
        .filter(|r| {
            r["metadata"]["name"]
                .as_str()
                .is_some_and(|n| bound.contains(n))
        })
    {
        for rule in role["rules"].as_array().into_iter().flatten() {
            for group in rule["apiGroups"].as_array().into_iter().flatten() {
                for resource in rule["resources"].as_array().into_iter().flatten() {
                    for verb in rule["verbs"].as_array().into_iter().flatten() {
                        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
                        out.insert((s(group), s(resource), s(verb)));
                    }
                }
            }
        }
    }
    out
}

/// What `user` did according to the audit log: (allowed requests, refused requests).
fn used(audit: &str, user: &str) -> (BTreeSet<(String, String, String)>, Vec<String>) {
    let mut allowed = BTreeSet::new();
    let mut refused = Vec::new();
    for line in audit.lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if e["impersonatedUser"]["username"] != user {
            continue;
        }
        let r = &e["objectRef"];
        let mut resource = r["resource"].as_str().unwrap_or_default().to_owned();
        if let Some(sub) = r["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        let key = (
            r["apiGroup"].as_str().unwrap_or_default().to_owned(),
            resource,
            e["verb"].as_str().unwrap_or_default().to_owned(),
        );
        if e["responseStatus"]["code"] == 403 {
            refused.push(format!("{key:?}"));
        } else {
            // A server-side apply that creates the object is audited as `patch` (201), but
            // the API server authorizes it as `create` too.
            if key.2 == "patch" && e["responseStatus"]["code"] == 201 {
                allowed.insert((key.0.clone(), key.1.clone(), "create".to_owned()));
            }
            allowed.insert(key);
        }
    }
    (allowed, refused)
}

#[tokio::test]
async fn rendered_chart_is_accepted_and_its_rbac_is_exactly_what_the_binaries_use() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start_with(Options {
        audit: true,
        ..Options::default()
    })
    .await
    .expect("control plane");
    let client = cp.client();
    apply(
        &client,
        &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}"),
    )
    .await;
    // The ServiceMonitor CRD, as the Prometheus Operator would install it (schema aside).
    // The Prometheus Operator's CRDs, as it would install them (schema aside).
    for (kind, plural) in [
        ("ServiceMonitor", "servicemonitors"),
        ("PrometheusRule", "prometheusrules"),
    ] {
        apply(&client, &format!("apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: {plural}.monitoring.coreos.com}}\nspec:\n  group: monitoring.coreos.com\n  names: {{kind: {kind}, plural: {plural}}}\n  scope: Namespaced\n  versions: [{{name: v1, served: true, storage: true, schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}}}]")).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every rendered object is accepted, with all options and with the defaults.
    apply_objects(&client, &render(Some("tests/chart/values-all.yaml"))).await;
    let objects = render(None);
    apply_objects(&client, &objects).await;

    // The chart makes the leader Lease (so uninstalling removes it); one deleted by hand is
    // made again by the controller.
    Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), NS)
        .delete("herald-controller", &Default::default())
        .await
        .expect("deleting the chart's Lease");
    // Run both binaries as the chart's ServiceAccounts and let them do their job.
    let controller_sa = format!("system:serviceaccount:{NS}:herald-controller");
    let speaker_sa = format!("system:serviceaccount:{NS}:herald-speaker");
    let port = || {
        herald_lab::control_plane::free_port()
            .expect("port")
            .to_string()
    };
    let (controller_metrics, speaker_metrics) = (port(), port());
    let mut cmd = Command::new(herald_lab::bins::herald_binary("herald-controller").expect("bin"));
    cmd.args(["run", "--lease-namespace", NS, "--identity", "rbac-test"])
        .args(["--gossip-secret", &format!("{NS}/herald-gossip")])
        .args(["--gossip-secret-owner", "herald-controller"])
        .arg("--metrics-address")
        .arg(format!("127.0.0.1:{controller_metrics}"))
        .env(
            "KUBECONFIG",
            cp.kubeconfig_as(&controller_sa).expect("kubeconfig"),
        )
        .env("RUST_LOG", "info,kube=warn");
    let _controller =
        Process::spawn("controller", cmd, &cp.dir().join("controller.log")).expect("controller");
    let mut cmd = Command::new(herald_lab::bins::herald_binary("herald-speaker").expect("bin"));
    cmd.args(["run", "--node-name", "rbac-node", "--gossip-port", &port()])
        .args(["--records-owner", "herald-speaker"])
        // The chart's way: keys from the Secret the controller makes, which the speaker
        // waits for.
        .args(["--gossip-secret", &format!("{NS}/herald-gossip")])
        .arg("--metrics-address")
        .arg(format!("127.0.0.1:{speaker_metrics}"))
        .env(
            "KUBECONFIG",
            cp.kubeconfig_as(&speaker_sa).expect("kubeconfig"),
        )
        .env("RUST_LOG", "info,kube=warn");
    let _speaker = Process::spawn("speaker", cmd, &cp.dir().join("speaker.log")).expect("speaker");

    herald_lab::process_cluster::ready_node(&client, "rbac-node", "192.0.2.250", "").await;
    // An interface that does not exist: the speaker owns the IP but opens no socket.
    apply(&client, "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {name: lan}\nspec: {addresses: [192.0.2.100-192.0.2.110]}\n---\napiVersion: herald.dev/v1alpha1\nkind: L2Advertisement\nmetadata: {name: lan}\nspec: {interfaces: [herald-none]}").await;
    apply(&client, "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {type: LoadBalancer, ports: [{port: 80}]}").await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let ip = wait_for(&svcs, "web", "an IP", |s| ips(s).first().cloned()).await;
    let announcements: Api<herald_api::L2Announcement> = Api::namespaced(client.clone(), "default");
    let name = herald_api::announcement::name("web", ip.parse().expect("ip"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while announcements.get_opt(&name).await.ok().flatten().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no L2Announcement written"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The Service stops being a LoadBalancer: its IP goes, and so does the record of it.
    svcs.patch(
        "web",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"spec": {"type": "ClusterIP"}})),
    )
    .await
    .expect("type ClusterIP");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while announcements.get_opt(&name).await.ok().flatten().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the L2Announcement of an IP no Service holds was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A BGP peer selecting the node (a router that is not there): the speaker records the
    // session, then deletes the record when the peer goes.
    apply(&client, "apiVersion: herald.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: absent}\nspec: {myASN: 64512, peerASN: 64500, peerAddress: 127.0.0.1, peerPort: 9}").await;
    let sessions: Api<herald_api::BGPSession> = Api::all(client.clone());
    let record = herald_api::bgp_session::name("rbac-node", "absent");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sessions.get_opt(&record).await.ok().flatten().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no BGPSession written"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Api::<herald_api::BGPPeer>::all(client.clone())
        .delete("absent", &Default::default())
        .await
        .expect("deleting the BGPPeer");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sessions.get_opt(&record).await.ok().flatten().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the BGPSession of a peer that is gone was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the pool status and the Events land.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The gossip Secret the controller made belongs to its ClusterRole (uninstalling
    // removes it) and holds a 32-byte random key.
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), NS)
        .get("herald-gossip")
        .await
        .expect("the controller made the gossip Secret");
    let owners = secret.metadata.owner_references.unwrap_or_default();
    assert_eq!(owners.len(), 1);
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].name.as_str()),
        ("ClusterRole", "herald-controller")
    );
    let data = secret.data.unwrap_or_default();
    assert_eq!(data.get("key").map(|k| k.0.len()), Some(64));

    // /metrics as a Prometheus server reads it: its own parser, in both formats it asks for,
    // and promlint on the text format; the histograms show the work just done.
    let mut names = BTreeSet::new();
    for (port, histogram) in [
        (
            &controller_metrics,
            "herald_controller_allocation_duration_seconds_count",
        ),
        (
            &speaker_metrics,
            "herald_speaker_pass_duration_seconds_count",
        ),
    ] {
        let port: u16 = port.parse().expect("port");
        for accept in [
            "text/plain;version=0.0.4",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        ] {
            let (content_type, body) = prometheus::scrape(port, accept).await.expect("scrape");
            let samples = prometheus::parse(&content_type, &body)
                .unwrap_or_else(|e| panic!("{content_type}: {e:#}\n{body}"));
            let value = |name: &str| samples.iter().find(|s| s.name == name).map(|s| s.value);
            assert!(
                value(histogram).is_some_and(|n| n >= 1.0),
                "{histogram}: {body}"
            );
            assert!(
                value("process_resident_memory_bytes").is_some_and(|v| v > 1e6),
                "{body}"
            );
            assert!(value("process_cpu_seconds_total").is_some(), "{body}");
            names.extend(samples.iter().map(|s| s.name.clone()));
            // Families without a series yet (no foreign answer seen) are declared all the same.
            if content_type.starts_with("text/plain") {
                names.extend(body.lines().filter_map(|l| {
                    Some(l.strip_prefix("# TYPE ")?.split(' ').next()?.to_owned())
                }));
            }
        }
    }
    assert!(names.iter().any(|n| n == "herald_build_info"), "{names:?}");
    // HEAD answers with the headers only.
    let (code, body) =
        herald_lab::controller::http_get(speaker_metrics.parse().expect("port"), "/metrics")
            .await
            .expect("GET");
    assert_eq!((code, body.is_empty()), (200, false));

    // The alerts pass Prometheus' rule checks, and every metric the alerts and the dashboard
    // use is one the binaries export.
    let with_extras = render(Some("tests/chart/values-all.yaml"));
    let rule = find(&with_extras, "PrometheusRule", "edge");
    let rules_yaml = serde_yaml_ng::to_string(&rule["spec"]).expect("yaml");
    assert_eq!(
        prometheus::check_rules(&rules_yaml).unwrap_or_else(|e| panic!("{e:#}\n{rules_yaml}")),
        6
    );
    let dashboard = find(&with_extras, "ConfigMap", "edge-dashboard").to_string();
    let mut used_names = BTreeSet::new();
    for text in [&rule.to_string(), &dashboard] {
        for (i, _) in text.match_indices("herald_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            used_names.insert(name);
        }
    }
    assert!(used_names.len() > 8, "{used_names:?}");
    // Series that only exist once something happened: a failure reason, a foreign answer,
    // a BGP session (the peer above is gone by now; tests/tests/speaker_bgp.rs reads these
    // from a speaker's /metrics by name).
    names.extend(
        [
            "herald_controller_allocation_failures_total",
            "herald_speaker_foreign_answers",
            "herald_speaker_bgp_session_up",
            "herald_speaker_bgp_prefixes_advertised",
            "herald_speaker_bgp_update_delay_seconds_bucket",
        ]
        .map(str::to_owned),
    );
    let unknown: Vec<_> = used_names.difference(&names).collect();
    assert!(
        unknown.is_empty(),
        "the alerts or the dashboard use {unknown:?}, which no binary exports ({names:?})"
    );

    let audit = std::fs::read_to_string(cp.audit_log()).expect("audit log");
    for (sa, name) in [
        (&controller_sa, "herald-controller"),
        (&speaker_sa, "herald-speaker"),
    ] {
        let (allowed, refused) = used(&audit, sa);
        assert!(refused.is_empty(), "{name} was refused: {refused:?}");
        let grants = granted(&objects, name);
        let unused: Vec<_> = grants.difference(&allowed).collect();
        assert!(
            unused.is_empty(),
            "{name} is granted but never uses {unused:?} (used: {allowed:?})"
        );
        assert!(!grants.is_empty());
    }
}

/// `helm ARGS` against `cp` as its admin.
fn helm_on(cp: &ControlPlane, args: &[&str]) -> String {
    let out = Command::new(go_binary("helm").expect("helm"))
        .args(args)
        .current_dir(repo_root())
        .env("KUBECONFIG", cp.kubeconfig())
        .env("HELM_CACHE_HOME", cp.dir().join("helm/cache"))
        .env("HELM_CONFIG_HOME", cp.dir().join("helm/config"))
        .env("HELM_DATA_HOME", cp.dir().join("helm/data"))
        .output()
        .expect("running helm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "helm {}: {text}", args.join(" "));
    text
}

/// Copies a directory tree.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Helm never upgrades a chart's `crds/` directory; Herald's CRDs are templates so that
/// `helm upgrade` brings a changed schema, and `helm uninstall` still leaves them (and the
/// users' pools).
#[tokio::test]
async fn helm_upgrade_upgrades_the_crds_and_uninstall_keeps_them() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start_with(Options {
        install_crds: false,
        ..Options::default()
    })
    .await
    .expect("control plane");
    // The previous chart: this one with a field missing from IPPool's schema.
    let old = tempfile::tempdir().expect("tempdir");
    copy_tree(&repo_root().join("charts/herald"), old.path());
    let crd_file = old.path().join("files/crds/ippools.herald.dev.yaml");
    let mut crd: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&crd_file).expect("crd")).expect("yaml");
    let spec = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert!(
        spec.as_object_mut()
            .expect("properties")
            .remove("avoidBuggyIPs")
            .is_some()
    );
    std::fs::write(&crd_file, serde_yaml_ng::to_string(&crd).expect("yaml")).expect("write");

    let has_field = || async {
        let crd = Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(cp.client())
            .get("ippools.herald.dev")
            .await
            .expect("the IPPool CRD");
        serde_json::to_value(&crd).expect("json")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            ["properties"]["spec"]["properties"]["avoidBuggyIPs"]
            .is_object()
    };
    let old_chart = old.path().to_str().expect("path");
    helm_on(
        &cp,
        &[
            "install",
            "herald",
            old_chart,
            "-n",
            NS,
            "--create-namespace",
        ],
    );
    assert!(!has_field().await, "the old chart's CRD was installed");
    helm_on(&cp, &["upgrade", "herald", "charts/herald", "-n", NS]);
    assert!(has_field().await, "helm upgrade left the old IPPool schema");

    apply(&cp.client(), "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {name: kept}\nspec: {addresses: [192.0.2.0/28], avoidBuggyIPs: true}").await;
    helm_on(&cp, &["uninstall", "herald", "-n", NS, "--wait"]);
    let pools: Api<herald_api::IPPool> = Api::all(cp.client());
    let pool = pools
        .get("kept")
        .await
        .expect("the pool outlives helm uninstall");
    assert!(pool.spec.avoid_buggy_ips);
}
