//! The Helm chart, rendered by a real `helm` and applied to the real API server; and its RBAC
//! proven exact: the controller and the speaker run as the chart's ServiceAccounts (RBAC
//! enforced), do their job, and the API server's audit log shows every granted rule used
//! and nothing refused.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use herald_tests::bins::{go_binary, repo_root};
use herald_tests::objects::{apply, ips, wait_for};
use herald_tests::{ControlPlane, Options, Process};
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
        "Service",
    ] {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
    // A given gossip Secret is used, not generated.
    assert!(!all.iter().any(|o| o["kind"] == "Secret"));
    let ds = all
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .expect("DaemonSet");
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["securityContext"]["capabilities"]["add"],
        serde_json::json!(["NET_RAW"])
    );
    assert_eq!(ds["spec"]["template"]["spec"]["hostNetwork"], true);
    let defaults = render(None);
    let secret = defaults
        .iter()
        .find(|o| o["kind"] == "Secret")
        .expect("generated Secret");
    // Uninstalling removes it with the rest: nothing of Herald's is left behind.
    assert!(
        secret["metadata"]["annotations"]["helm.sh/resource-policy"].is_null(),
        "{secret}"
    );
    let deploy = defaults
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("Deployment");
    let sc = &deploy["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
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
    herald_tests::init_tracing();
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
    apply(&client, "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: servicemonitors.monitoring.coreos.com}\nspec:\n  group: monitoring.coreos.com\n  names: {kind: ServiceMonitor, plural: servicemonitors}\n  scope: Namespaced\n  versions: [{name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}]").await;
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
    let mut cmd =
        Command::new(herald_tests::bins::herald_binary("herald-controller").expect("bin"));
    cmd.args(["run", "--lease-namespace", NS, "--identity", "rbac-test"])
        .arg("--metrics-address")
        .arg(format!(
            "127.0.0.1:{}",
            herald_tests::control_plane::free_port().expect("port")
        ))
        .env(
            "KUBECONFIG",
            cp.kubeconfig_as(&controller_sa).expect("kubeconfig"),
        )
        .env("RUST_LOG", "info,kube=warn");
    let _controller =
        Process::spawn("controller", cmd, &cp.dir().join("controller.log")).expect("controller");
    let mut cmd = Command::new(herald_tests::bins::herald_binary("herald-speaker").expect("bin"));
    let port = || {
        herald_tests::control_plane::free_port()
            .expect("port")
            .to_string()
    };
    cmd.args(["run", "--node-name", "rbac-node", "--gossip-port", &port()])
        .args(["--records-owner", "herald-speaker"])
        .arg("--metrics-address")
        .arg(format!("127.0.0.1:{}", port()))
        .env("HERALD_GOSSIP_KEY", "rbac-test-key-0123456789")
        .env(
            "KUBECONFIG",
            cp.kubeconfig_as(&speaker_sa).expect("kubeconfig"),
        )
        .env("RUST_LOG", "info,kube=warn");
    let _speaker = Process::spawn("speaker", cmd, &cp.dir().join("speaker.log")).expect("speaker");

    herald_tests::l2::ready_node(&client, "rbac-node", "192.0.2.250", "").await;
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
    // Let the pool status and the Events land.
    tokio::time::sleep(Duration::from_secs(3)).await;

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
