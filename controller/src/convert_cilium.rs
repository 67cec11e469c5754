//! `herald-controller convert-cilium`: Cilium's `CiliumLoadBalancerIPPool` and
//! `CiliumL2AnnouncementPolicy` to Herald's `IPPool` and `L2Advertisement`. A pool's
//! `blocks` become its addresses, `disabled` carries over, a `serviceSelector` on the
//! namespace label becomes `serviceAllocation.namespaces` and any other becomes
//! `serviceSelectors`; a policy's `nodeSelector`, `serviceSelector` and plain interface names
//! carry over.
//! Anything else is named in a warning, never dropped silently. Pure.

use serde_json::{Map, Value, json};

use crate::convert::{ConvertError, Converted, object, objects, render};

/// The label Cilium sets on Services for their namespace, usable in selectors.
const NAMESPACE_LABEL: &str = "io.kubernetes.service.namespace";

/// The converted manifests (YAML, `---`-separated) and one warning per field not converted.
pub fn convert(input: &str) -> Result<Converted, ConvertError> {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (_, item) in objects(input)? {
        let kind = item["kind"].as_str().unwrap_or_default().to_owned();
        let name = item["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let group = item["apiVersion"].as_str().unwrap_or_default();
        if !group.starts_with("cilium.io/") {
            warnings.push(format!(
                "skipped {kind} {name}: not a Cilium object ({group})"
            ));
            continue;
        }
        let spec = &item["spec"];
        let mut new = Map::new();
        let mut handled: Vec<&str> = Vec::new();
        let herald_kind = match kind.as_str() {
            "CiliumLoadBalancerIPPool" => {
                let mut addresses = Vec::new();
                // `blocks` (v2), `cidrs` (v2alpha1's older name).
                for field in ["blocks", "cidrs"] {
                    for block in spec[field].as_array().into_iter().flatten() {
                        let entry = match (block["cidr"].as_str(), block["start"].as_str()) {
                            (Some(cidr), _) => cidr.to_owned(),
                            (None, Some(start)) => {
                                let stop = block["stop"].as_str().unwrap_or(start);
                                format!("{start}-{stop}")
                            }
                            _ => continue,
                        };
                        match herald_api::AddressEntry::parse(&entry) {
                            Ok(_) => addresses.push(Value::String(entry)),
                            Err(e) => warnings.push(format!(
                                "{kind} {name}: spec.{field} entry {} left out: {e}",
                                herald_api::events::quote(&entry)
                            )),
                        }
                    }
                    handled.push(field);
                }
                if addresses.is_empty() {
                    warnings.push(format!("skipped {kind} {name}: no usable address"));
                    continue;
                }
                new.insert("addresses".into(), Value::Array(addresses));
                if let Some(disabled) = spec["disabled"].as_bool() {
                    new.insert("disabled".into(), json!(disabled));
                }
                handled.push("disabled");
                if let Some(selector) = spec.get("serviceSelector").filter(|s| !s.is_null()) {
                    new.insert("serviceAllocation".into(), allocation(selector));
                }
                handled.push("serviceSelector");
                "IPPool"
            }
            "CiliumL2AnnouncementPolicy" => {
                if let Some(selector) = spec.get("nodeSelector").filter(|s| !s.is_null()) {
                    new.insert("nodeSelectors".into(), json!([selector]));
                }
                handled.push("nodeSelector");
                let mut interfaces = Vec::new();
                for pattern in spec["interfaces"].as_array().into_iter().flatten() {
                    let pattern = pattern.as_str().unwrap_or_default();
                    // Cilium takes regular expressions; a plain name is the same in both.
                    let plain = pattern.trim_start_matches('^').trim_end_matches('$');
                    if !plain.is_empty()
                        && plain
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                    {
                        interfaces.push(Value::String(plain.to_owned()));
                    } else {
                        warnings.push(format!(
                                "{kind} {name}: spec.interfaces entry {} not converted: Herald takes interface names, not patterns (list the names, or leave interfaces empty to announce on the interfaces of each IP's subnet)",
                                herald_api::events::quote(pattern)
                            ));
                    }
                }
                if !interfaces.is_empty() {
                    new.insert("interfaces".into(), Value::Array(interfaces));
                }
                handled.push("interfaces");
                if let Some(selector) = spec.get("serviceSelector").filter(|s| !s.is_null()) {
                    if names_cilium_labels(selector) {
                        warnings.push(format!(
                            "{kind} {name}: spec.serviceSelector not converted, so the L2Advertisement announces every Service of its pools: the selector names Cilium's io.kubernetes.service.* labels, which Services do not carry (select by the Services' own labels, or give the namespace its own pool with serviceAllocation.namespaces)"
                        ));
                    } else {
                        new.insert("serviceSelectors".into(), json!([selector]));
                    }
                }
                handled.push("serviceSelector");
                if spec["loadBalancerIPs"].as_bool() == Some(false) {
                    warnings.push(format!(
                            "skipped {kind} {name}: it announces no LoadBalancer IP (loadBalancerIPs: false)"
                        ));
                    continue;
                }
                handled.extend(["loadBalancerIPs", "externalIPs"]);
                if spec["externalIPs"].as_bool() == Some(true) {
                    warnings.push(format!(
                            "{kind} {name}: spec.externalIPs not converted: Herald announces LoadBalancer IPs only"
                        ));
                }
                "L2Advertisement"
            }
            other => {
                warnings.push(format!("skipped {other} {name}: Herald has no equivalent"));
                continue;
            }
        };
        for key in spec.as_object().into_iter().flat_map(Map::keys) {
            if !handled.contains(&key.as_str()) {
                let why = match (kind.as_str(), key.as_str()) {
                    (_, "allowFirstLastIPs") => {
                        "Herald hands out every address of a range; avoidBuggyIPs skips those ending in .0 and .255"
                    }
                    _ => "Herald has no such field",
                };
                warnings.push(format!("{kind} {name}: spec.{key} not converted: {why}"));
            }
        }
        out.push(object(herald_kind, &item, new));
    }
    Ok((render(&out)?, warnings))
}

/// Whether a selector names a label Cilium derives from a Service (its namespace or name),
/// not one the Service carries.
fn names_cilium_labels(selector: &Value) -> bool {
    let derived = |key: &str| key.starts_with("io.kubernetes.service.");
    selector["matchLabels"]
        .as_object()
        .is_some_and(|labels| labels.keys().any(|k| derived(k)))
        || selector["matchExpressions"]
            .as_array()
            .is_some_and(|exprs| exprs.iter().any(|e| e["key"].as_str().is_some_and(derived)))
}

/// A pool's `serviceSelector` as Herald's `serviceAllocation`: Cilium's namespace label
/// (`io.kubernetes.service.namespace`) in `matchLabels` or an `In` expression becomes
/// `namespaces`; the rest stays a Service selector.
fn allocation(selector: &Value) -> Value {
    let mut selector = selector.clone();
    let mut namespaces: Vec<Value> = Vec::new();
    if let Some(labels) = selector["matchLabels"].as_object_mut()
        && let Some(ns) = labels.remove(NAMESPACE_LABEL)
    {
        namespaces.push(ns);
    }
    if let Some(exprs) = selector["matchExpressions"].as_array_mut() {
        exprs.retain(|e| {
            let by_namespace = e["key"] == NAMESPACE_LABEL && e["operator"] == "In";
            if by_namespace {
                namespaces.extend(e["values"].as_array().cloned().unwrap_or_default());
            }
            !by_namespace
        });
    }
    let empty = |v: &Value| {
        v.as_object().is_none_or(Map::is_empty) && v.as_array().is_none_or(Vec::is_empty)
    };
    let rest_empty = empty(&selector["matchLabels"]) && empty(&selector["matchExpressions"]);
    let mut allocation = Map::new();
    if !namespaces.is_empty() {
        allocation.insert("namespaces".into(), Value::Array(namespaces));
    }
    if !rest_empty {
        let mut rest = Map::new();
        for key in ["matchLabels", "matchExpressions"] {
            if !empty(&selector[key]) {
                rest.insert(key.into(), selector[key].clone());
            }
        }
        allocation.insert("serviceSelectors".into(), json!([rest]));
    }
    Value::Object(allocation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_api::{IPPool, L2Advertisement};

    /// As Cilium's documentation shows them (LB IPAM and L2 announcements).
    const CILIUM: &str = r#"
apiVersion: cilium.io/v2alpha1
kind: CiliumLoadBalancerIPPool
metadata:
  name: blue-pool
spec:
  blocks:
  - cidr: "20.0.10.0/24"
  - cidr: "2004::0/112"
  - start: "20.0.20.100"
    stop: "20.0.20.200"
  - start: "1.2.3.4"
  serviceSelector:
    matchExpressions:
      - {key: color, operator: In, values: [blue, cyan]}
---
apiVersion: cilium.io/v2alpha1
kind: CiliumLoadBalancerIPPool
metadata:
  name: team-pool
spec:
  blocks:
  - cidr: "10.0.10.0/24"
  allowFirstLastIPs: "No"
  disabled: true
  serviceSelector:
    matchLabels:
      "io.kubernetes.service.namespace": "tenant-a"
---
apiVersion: cilium.io/v2alpha1
kind: CiliumL2AnnouncementPolicy
metadata:
  name: policy1
spec:
  serviceSelector:
    matchLabels:
      color: blue
  nodeSelector:
    matchExpressions:
      - key: node-role.kubernetes.io/control-plane
        operator: DoesNotExist
  interfaces:
  - ^eth[0-9]+
  - ^bond0$
  externalIPs: true
  loadBalancerIPs: true
"#;

    #[test]
    fn a_policy_selecting_by_ciliums_own_service_labels_is_named_not_converted() {
        let (yaml, warnings) = convert(
            "apiVersion: cilium.io/v2alpha1\nkind: CiliumL2AnnouncementPolicy\nmetadata: {name: p}\nspec:\n  serviceSelector: {matchExpressions: [{key: io.kubernetes.service.namespace, operator: In, values: [a]}]}\n",
        )
        .expect("converts");
        let docs = crate::convert::documents(&yaml);
        let ad: L2Advertisement = serde_json::from_value(docs[0].clone()).expect("L2Advertisement");
        assert!(ad.spec.scope.service_selectors.is_empty());
        assert!(
            warnings.iter().any(|w| w
                .starts_with("CiliumL2AnnouncementPolicy p: spec.serviceSelector not converted")),
            "{warnings:#?}"
        );
    }

    #[test]
    fn cilium_pools_and_l2_policies_become_herald_objects_and_the_rest_is_named() {
        let (yaml, warnings) = convert(CILIUM).expect("converts");
        let docs = crate::convert::documents(&yaml);
        assert_eq!(docs.len(), 3, "{yaml}");
        let blue: IPPool = serde_json::from_value(docs[0].clone()).expect("IPPool");
        assert_eq!(
            blue.spec.addresses,
            [
                "20.0.10.0/24",
                "2004::0/112",
                "20.0.20.100-20.0.20.200",
                "1.2.3.4-1.2.3.4"
            ]
        );
        let alloc = blue.spec.service_allocation.expect("selector");
        assert!(alloc.namespaces.is_empty());
        assert_eq!(alloc.service_selectors.len(), 1);
        let team: IPPool = serde_json::from_value(docs[1].clone()).expect("IPPool");
        assert!(team.spec.disabled);
        let alloc = team.spec.service_allocation.expect("namespaces");
        assert_eq!(alloc.namespaces, ["tenant-a"]);
        assert!(alloc.service_selectors.is_empty());
        let ad: L2Advertisement = serde_json::from_value(docs[2].clone()).expect("L2Advertisement");
        assert_eq!(ad.spec.scope.node_selectors.len(), 1);
        assert_eq!(ad.spec.interfaces, ["bond0"]);
        assert_eq!(ad.spec.scope.service_selectors.len(), 1);
        let blue_only: std::collections::BTreeMap<String, String> =
            [("color".to_owned(), "blue".to_owned())].into();
        assert!(ad.spec.scope.selects_service(Some(&blue_only)));
        assert!(!ad.spec.scope.selects_service(None));
        assert!(
            !warnings.iter().any(|w| w.contains("serviceSelector")),
            "{warnings:#?}"
        );
        for entry in &blue.spec.addresses {
            herald_api::AddressEntry::parse(entry).expect(entry);
        }
        for expected in [
            "CiliumLoadBalancerIPPool team-pool: spec.allowFirstLastIPs not converted",
            "CiliumL2AnnouncementPolicy policy1: spec.interfaces entry \"^eth[0-9]+\" not converted",
            "CiliumL2AnnouncementPolicy policy1: spec.externalIPs not converted",
        ] {
            assert!(
                warnings.iter().any(|w| w.starts_with(expected)),
                "no {expected:?} in {warnings:#?}"
            );
        }
    }
}
