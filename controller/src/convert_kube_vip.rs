//! `herald-controller convert-kube-vip`: kube-vip's IP range ConfigMap (`kubevip` in
//! `kube-system`, read by kube-vip-cloud-provider) to Herald's `IPPool`s and an
//! `L2Advertisement`. Keys `cidr-global` / `range-global` make the pool `kube-vip-global`;
//! `cidr-NAMESPACE` / `range-NAMESPACE` make `kube-vip-NAMESPACE`, reserved for that
//! namespace and tried first, as kube-vip prefers a namespace's range. Anything else is
//! named in a warning. Pure.

use std::collections::BTreeMap;

use serde_json::{Map, json};

use crate::convert::{ConvertError, Converted, object, objects, render};

/// The converted manifests (YAML, `---`-separated) and one warning per key not converted.
pub fn convert(input: &str) -> Result<Converted, ConvertError> {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (_, item) in objects(input)? {
        let kind = item["kind"].as_str().unwrap_or_default();
        let name = item["metadata"]["name"].as_str().unwrap_or_default();
        if kind != "ConfigMap" {
            warnings.push(format!(
                "skipped {kind} {name}: not kube-vip's range ConfigMap"
            ));
            continue;
        }
        // Scope ("global" or a namespace) -> its address entries.
        let mut scopes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (key, value) in item["data"].as_object().into_iter().flatten() {
            let text = value.as_str().unwrap_or_default();
            let Some((kind, scope)) = key
                .strip_prefix("cidr-")
                .map(|s| ("cidr", s))
                .or_else(|| key.strip_prefix("range-").map(|s| ("range", s)))
            else {
                warnings.push(format!(
                        "ConfigMap {name}: data.{key} not converted: Herald has no such setting (sharing is per Service: herald.dev/sharing-key)"
                    ));
                continue;
            };
            let entries = scopes.entry(scope.to_owned()).or_default();
            for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                // kube-vip allows spaces around a range's dash, as MetalLB does.
                let entry: String = entry
                    .split('-')
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join("-");
                match herald_api::AddressEntry::parse(&entry) {
                    Ok(_) => entries.push(entry),
                    // kube-vip takes a CIDR with host bits as its network; so does the
                    // pool, written as the network Herald requires.
                    Err(herald_api::AddressError::HostBits { suggestion, .. }) => {
                        warnings.push(format!(
                                "ConfigMap {name}: data.{key}: {} written as {suggestion} (its network)",
                                herald_api::events::quote(&entry)
                            ));
                        entries.push(suggestion);
                    }
                    Err(e) => warnings.push(format!(
                        "ConfigMap {name}: data.{key}: {} left out: {e} ({kind})",
                        herald_api::events::quote(&entry)
                    )),
                }
            }
        }
        let mut pools = Vec::new();
        for (scope, addresses) in scopes {
            if addresses.is_empty() {
                continue;
            }
            let pool = format!("kube-vip-{scope}");
            let mut spec = Map::new();
            spec.insert("addresses".into(), json!(addresses));
            if scope != "global" {
                spec.insert(
                    "serviceAllocation".into(),
                    json!({"priority": 10, "namespaces": [scope]}),
                );
            }
            out.push(object("IPPool", &json!({"metadata": {"name": pool}}), spec));
            pools.push(pool);
        }
        if !pools.is_empty() {
            let mut spec = Map::new();
            spec.insert("ipPools".into(), json!(pools));
            out.push(object(
                "L2Advertisement",
                &json!({"metadata": {"name": "kube-vip"}}),
                spec,
            ));
            warnings.push(
                    "L2Advertisement kube-vip: announces the converted pools with ARP/NDP, as kube-vip's ARP mode does (its mode is in its DaemonSet, not this ConfigMap); for BGP, write a BGPPeer and a BGPAdvertisement instead".to_owned(),
                );
        }
    }
    Ok((render(&out)?, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_api::{IPPool, L2Advertisement};

    /// As kube-vip's documentation shows it (kube-vip-cloud-provider).
    const KUBE_VIP: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: kubevip
  namespace: kube-system
data:
  cidr-default: 192.168.0.200/29
  range-development: 192.168.0.210-192.168.0.219
  cidr-finance: 192.168.0.220/29,192.168.0.230/29
  range-global: 192.168.1.220 - 192.168.1.230, 2001:db8::10-2001:db8::20
  allow-share-global: "true"
  cidr-broken: 192.168.2.300/24
"#;

    #[test]
    fn kube_vip_ranges_become_pools_per_namespace_and_a_global_one() {
        let (yaml, warnings) = convert(KUBE_VIP).expect("converts");
        let docs = crate::convert::documents(&yaml);
        let pools: BTreeMap<String, IPPool> = docs
            .iter()
            .filter(|d| d["kind"] == "IPPool")
            .map(|d| {
                let p: IPPool = serde_json::from_value(d.clone()).expect("IPPool");
                (p.metadata.name.clone().unwrap_or_default(), p)
            })
            .collect();
        assert_eq!(
            pools.keys().collect::<Vec<_>>(),
            [
                "kube-vip-default",
                "kube-vip-development",
                "kube-vip-finance",
                "kube-vip-global"
            ]
        );
        let finance = &pools["kube-vip-finance"].spec;
        assert_eq!(finance.addresses, ["192.168.0.216/29", "192.168.0.224/29"]);
        let alloc = finance.service_allocation.as_ref().expect("reserved");
        assert_eq!(
            (alloc.namespaces.as_slice(), alloc.priority),
            (&["finance".to_owned()][..], Some(10))
        );
        let global = &pools["kube-vip-global"].spec;
        assert_eq!(
            global.addresses,
            ["192.168.1.220-192.168.1.230", "2001:db8::10-2001:db8::20"]
        );
        assert!(global.service_allocation.is_none());
        let ad: L2Advertisement = serde_json::from_value(
            docs.iter()
                .find(|d| d["kind"] == "L2Advertisement")
                .expect("an L2Advertisement")
                .clone(),
        )
        .expect("L2Advertisement");
        assert_eq!(ad.spec.scope.ip_pools.len(), 4);
        for expected in [
            "ConfigMap kubevip: data.allow-share-global not converted",
            "ConfigMap kubevip: data.cidr-broken: \"192.168.2.300/24\" left out",
            "ConfigMap kubevip: data.cidr-finance: \"192.168.0.220/29\" written as 192.168.0.216/29",
            "L2Advertisement kube-vip: announces the converted pools",
        ] {
            assert!(
                warnings.iter().any(|w| w.starts_with(expected)),
                "no {expected:?} in {warnings:#?}"
            );
        }
    }
}
