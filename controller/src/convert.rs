//! `herald-controller convert-metallb`: MetalLB's `IPAddressPool` and `L2Advertisement`
//! manifests to Herald's `IPPool` and `L2Advertisement`. The field names are MetalLB's where
//! Herald has the same concept, so the mapping is direct; what Herald has no equivalent for
//! (BGP, communities, BFD) is skipped with a warning, never silently. Pure.

use serde_json::{Map, Value, json};

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("document {index}: {source}")]
    Yaml {
        index: usize,
        source: serde_yaml_ng::Error,
    },
    #[error("document {index} ({kind} {name}): {why}")]
    Invalid {
        index: usize,
        kind: String,
        name: String,
        why: String,
    },
}

/// The converted manifests (YAML, `---`-separated) and one warning per skipped document or
/// dropped field.
pub fn convert(input: &str) -> Result<(String, Vec<String>), ConvertError> {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (index, doc) in serde_yaml_ng::Deserializer::from_str(input).enumerate() {
        let value: Value = serde::Deserialize::deserialize(doc)
            .map_err(|source| ConvertError::Yaml { index, source })?;
        if value.is_null() {
            continue;
        }
        let items = match value["kind"].as_str() {
            // `kubectl get -o yaml` of several objects.
            Some("List") => value["items"].as_array().cloned().unwrap_or_default(),
            _ => vec![value],
        };
        for item in items {
            let kind = item["kind"].as_str().unwrap_or_default().to_owned();
            let name = item["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let group = item["apiVersion"].as_str().unwrap_or_default();
            if !group.starts_with("metallb.io/") {
                warnings.push(format!(
                    "skipped {kind} {name}: not a MetalLB object ({group})"
                ));
                continue;
            }
            let invalid = |why: &str| ConvertError::Invalid {
                index,
                kind: kind.clone(),
                name: name.clone(),
                why: why.to_owned(),
            };
            if name.is_empty() {
                return Err(invalid("no metadata.name"));
            }
            let spec = &item["spec"];
            let converted = match kind.as_str() {
                "IPAddressPool" => {
                    let addresses: Vec<Value> = spec["addresses"]
                        .as_array()
                        .ok_or_else(|| invalid("spec.addresses is missing"))?
                        .iter()
                        .map(|a| {
                            // MetalLB allows spaces around a range's dash.
                            let s = a.as_str().unwrap_or_default();
                            Value::String(s.split('-').map(str::trim).collect::<Vec<_>>().join("-"))
                        })
                        .collect();
                    let mut new = Map::new();
                    new.insert("addresses".into(), Value::Array(addresses));
                    copy(
                        spec,
                        &mut new,
                        &["autoAssign", "avoidBuggyIPs", "serviceAllocation"],
                    );
                    object("IPPool", &item, new)
                }
                "L2Advertisement" => {
                    let mut new = Map::new();
                    rename(spec, &mut new, "ipAddressPools", "ipPools");
                    rename(spec, &mut new, "ipAddressPoolSelectors", "ipPoolSelectors");
                    copy(spec, &mut new, &["nodeSelectors", "interfaces"]);
                    object("L2Advertisement", &item, new)
                }
                other => {
                    warnings.push(format!(
                        "skipped {other} {name}: Herald announces with ARP/NDP only (no BGP, communities or BFD)"
                    ));
                    continue;
                }
            };
            if let Some(ns) = item["metadata"]["namespace"].as_str() {
                warnings.push(format!(
                    "{kind} {name}: Herald's objects are cluster-scoped; namespace {ns} dropped"
                ));
            }
            let yaml = serde_yaml_ng::to_string(&converted)
                .map_err(|source| ConvertError::Yaml { index, source })?;
            out.push(yaml);
        }
    }
    Ok((out.join("---\n"), warnings))
}

fn copy(from: &Value, to: &mut Map<String, Value>, keys: &[&str]) {
    for key in keys {
        if let Some(v) = from.get(*key).filter(|v| !v.is_null()) {
            to.insert((*key).to_owned(), v.clone());
        }
    }
}

fn rename(from: &Value, to: &mut Map<String, Value>, old: &str, new: &str) {
    if let Some(v) = from.get(old).filter(|v| !v.is_null()) {
        to.insert(new.to_owned(), v.clone());
    }
}

fn object(kind: &str, source: &Value, spec: Map<String, Value>) -> Value {
    let mut metadata = json!({"name": source["metadata"]["name"]});
    for key in ["labels", "annotations"] {
        if let Some(v) = source["metadata"].get(key).filter(|v| v.is_object()) {
            metadata[key] = v.clone();
        }
    }
    json!({
        "apiVersion": format!("{}/{}", herald_api::GROUP, herald_api::VERSION),
        "kind": kind,
        "metadata": metadata,
        "spec": spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_api::{IPPool, L2Advertisement};

    /// As in MetalLB's documentation and typical installs.
    const METALLB: &str = r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: production
  namespace: metallb-system
  labels: {zone: east}
spec:
  addresses:
  - 192.168.10.0/24
  - 192.168.9.1 - 192.168.9.5
  - fc00:f853:0ccd:e799::/124
  autoAssign: false
  avoidBuggyIPs: true
  serviceAllocation:
    priority: 50
    namespaces: [shop]
    namespaceSelectors:
    - matchLabels: {team: web}
    serviceSelectors:
    - matchExpressions: [{key: tier, operator: In, values: [edge]}]
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata:
  name: l2
  namespace: metallb-system
spec:
  ipAddressPools: [production]
  ipAddressPoolSelectors:
  - matchLabels: {zone: east}
  nodeSelectors:
  - matchLabels: {kubernetes.io/hostname: kind-worker}
  interfaces: [eth0, eth1]
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: router, namespace: metallb-system}
spec: {myASN: 64500, peerASN: 64501, peerAddress: 10.0.0.1}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: bgp, namespace: metallb-system}
"#;

    #[test]
    fn metallb_pools_and_advertisements_become_herald_objects() {
        let (yaml, warnings) = convert(METALLB).expect("converts");
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&yaml)
            .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
            .collect();
        assert_eq!(docs.len(), 2);
        // They parse as Herald's own types, with every field carried over.
        let pool: IPPool = serde_json::from_value(docs[0].clone()).expect("IPPool");
        assert_eq!(
            pool.spec.addresses,
            [
                "192.168.10.0/24",
                "192.168.9.1-192.168.9.5",
                "fc00:f853:0ccd:e799::/124"
            ]
        );
        assert!(!pool.spec.auto_assign && pool.spec.avoid_buggy_ips);
        let alloc = pool.spec.service_allocation.expect("serviceAllocation");
        assert_eq!(alloc.priority, Some(50));
        assert_eq!(alloc.namespaces, ["shop"]);
        assert_eq!(alloc.namespace_selectors.len(), 1);
        assert_eq!(alloc.service_selectors.len(), 1);
        assert_eq!(pool.metadata.namespace, None);
        assert_eq!(pool.metadata.labels.unwrap_or_default()["zone"], "east");
        let ad: L2Advertisement = serde_json::from_value(docs[1].clone()).expect("L2Advertisement");
        assert_eq!(ad.spec.ip_pools, ["production"]);
        assert_eq!(ad.spec.ip_pool_selectors.len(), 1);
        assert_eq!(ad.spec.node_selectors.len(), 1);
        assert_eq!(ad.spec.interfaces, ["eth0", "eth1"]);
        // Every entry of the converted pool is one Herald accepts.
        for entry in &pool.spec.addresses {
            herald_api::AddressEntry::parse(entry).expect(entry);
        }
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("skipped BGPPeer router")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("skipped BGPAdvertisement bgp"))
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("namespace metallb-system dropped"))
        );
    }

    #[test]
    fn lists_and_errors() {
        let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: metallb.io/v1beta1\n  kind: IPAddressPool\n  metadata: {name: a}\n  spec: {addresses: [10.0.0.0/30]}\n";
        let (yaml, _) = convert(list).expect("list");
        assert!(yaml.contains("kind: IPPool") && yaml.contains("10.0.0.0/30"));
        let broken =
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: a}\nspec: {}\n";
        let err = convert(broken).expect_err("no addresses");
        assert_eq!(
            err.to_string(),
            "document 0 (IPAddressPool a): spec.addresses is missing"
        );
        assert!(convert("{unclosed").is_err());
    }
}
