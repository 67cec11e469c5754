//! `herald-controller convert-metallb`: MetalLB's `IPAddressPool`, `L2Advertisement`,
//! `BGPPeer`, `BGPAdvertisement`, `BFDProfile` and `Community` manifests to Herald's
//! `IPPool`, `L2Advertisement`, `BGPPeer` (with its BFD timers) and `BGPAdvertisement`. The
//! field names are MetalLB's where Herald has the same concept, so the mapping is direct; a
//! field or object Herald has no equivalent for (multihop, passwords in clear, VRFs...) is
//! named in a warning, never dropped silently.
//! Pure.

use std::collections::BTreeMap;
use std::net::IpAddr;

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

/// Converted manifests (YAML, `---`-separated) and one warning per thing not converted.
pub type Converted = (String, Vec<String>);

/// MetalLB's fields Herald does not have, per kind, with what a user should know.
const NOT_CONVERTED: &[(&str, &str, &str)] = &[
    (
        "BGPPeer",
        "password",
        "Herald reads passwords from Secrets only: put it in a Secret in Herald's namespace, name it in spec.passwordSecret and in the chart's speaker.bgpPasswordSecrets",
    ),
    ("BGPPeer", "vrf", "VRFs are not supported"),
    ("BGPPeer", "interface", "unnumbered BGP is not supported"),
];

/// The converted manifests (YAML, `---`-separated) and one warning per skipped document or
/// field not converted.
pub fn convert(input: &str) -> Result<Converted, ConvertError> {
    let items = objects(input)?;
    // MetalLB's `Community` objects name communities that advertisements use by name:
    // resolved here, wherever they are in the input.
    let aliases: BTreeMap<String, Value> = items
        .iter()
        .filter(|(_, i)| i["kind"] == "Community" && is_metallb(i))
        .flat_map(|(_, i)| {
            i["spec"]["communities"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|c| Some((c["name"].as_str()?.to_owned(), c["value"].clone())))
        .collect();
    // MetalLB's `BFDProfile`s: their timers go onto each BGPPeer naming one (`spec.bfd`).
    let bfd_profiles: BTreeMap<String, Value> = items
        .iter()
        .filter(|(_, i)| i["kind"] == "BFDProfile" && is_metallb(i))
        .filter_map(|(_, i)| {
            Some((
                i["metadata"]["name"].as_str()?.to_owned(),
                i["spec"].clone(),
            ))
        })
        .collect();
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (index, item) in items {
        let kind = item["kind"].as_str().unwrap_or_default().to_owned();
        let name = item["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if !is_metallb(&item) {
            let group = item["apiVersion"].as_str().unwrap_or_default();
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
        let mut new = Map::new();
        let herald_kind = match kind.as_str() {
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
                new.insert("addresses".into(), Value::Array(addresses));
                copy(
                    spec,
                    &mut new,
                    &["autoAssign", "avoidBuggyIPs", "serviceAllocation"],
                );
                "IPPool"
            }
            "L2Advertisement" => {
                rename(spec, &mut new, "ipAddressPools", "ipPools");
                rename(spec, &mut new, "ipAddressPoolSelectors", "ipPoolSelectors");
                // preferredNodeSelectors: MetalLB's newer field, in the same shape.
                copy(
                    spec,
                    &mut new,
                    &["nodeSelectors", "interfaces", "preferredNodeSelectors"],
                );
                "L2Advertisement"
            }
            "BGPPeer" => {
                if spec.get("peerAddress").is_none_or(Value::is_null) {
                    warnings.push(format!(
                        "skipped BGPPeer {name}: it has no peerAddress (unnumbered BGP over an interface is not supported)"
                    ));
                    continue;
                }
                copy(
                    spec,
                    &mut new,
                    &[
                        "myASN",
                        "peerASN",
                        "dynamicASN",
                        "peerAddress",
                        "peerPort",
                        "sourceAddress",
                        "routerID",
                        "nodeSelectors",
                        "holdTime",
                        "keepaliveTime",
                        "connectTime",
                        "enableGracefulRestart",
                        "ebgpMultiHop",
                    ],
                );
                let multihop = spec["ebgpMultiHop"].as_bool() == Some(true);
                if let Some(profile) = spec["bfdProfile"].as_str().filter(|_| multihop) {
                    warnings.push(format!(
                        "BGPPeer {name}: its BFDProfile {profile} is left off: Herald runs BFD single hop only, and the peer is multihop"
                    ));
                } else if let Some(profile) = spec["bfdProfile"].as_str() {
                    match bfd_profiles.get(profile) {
                        Some(timers) => {
                            let mut bfd = Map::new();
                            copy(
                                timers,
                                &mut bfd,
                                &[
                                    "receiveInterval",
                                    "transmitInterval",
                                    "detectMultiplier",
                                    "passiveMode",
                                ],
                            );
                            new.insert("bfd".into(), Value::Object(bfd));
                        }
                        None => warnings.push(format!(
                            "BGPPeer {name}: its BFDProfile {profile} is not in the input: BFD is left off"
                        )),
                    }
                }
                if let Some(secret) = spec["passwordSecret"]["name"].as_str() {
                    new.insert("passwordSecret".into(), json!({"name": secret}));
                    warnings.push(format!(
                        "BGPPeer {name}: its password Secret {secret} must be in Herald's namespace (key `password`, as MetalLB's) and named in the chart's speaker.bgpPasswordSecrets"
                    ));
                }
                // MetalLB carries only the peer address's family unless
                // dualStackAddressFamily says both (and the deprecated disableMP does not
                // say otherwise); Herald carries both unless told.
                if spec["dualStackAddressFamily"].as_bool() != Some(true)
                    || spec["disableMP"].as_bool() == Some(true)
                {
                    let family = match spec["peerAddress"].as_str().map(str::parse::<IpAddr>) {
                        Some(Ok(IpAddr::V6(_))) => "IPv6",
                        _ => "IPv4",
                    };
                    new.insert("addressFamilies".into(), json!([family]));
                }
                "BGPPeer"
            }
            "BGPAdvertisement" => {
                rename(spec, &mut new, "ipAddressPools", "ipPools");
                rename(spec, &mut new, "ipAddressPoolSelectors", "ipPoolSelectors");
                copy(
                    spec,
                    &mut new,
                    &[
                        "nodeSelectors",
                        "peers",
                        "localPref",
                        "aggregationLength",
                        "aggregationLengthV6",
                    ],
                );
                if let Some(list) = spec["communities"].as_array() {
                    let resolved: Vec<Value> = list
                        .iter()
                        .map(|c| c.as_str().and_then(|n| aliases.get(n)).unwrap_or(c).clone())
                        .collect();
                    new.insert("communities".into(), Value::Array(resolved));
                }
                "BGPAdvertisement"
            }
            "Community" => {
                warnings.push(format!(
                    "Community {name}: its names are replaced by their values in the BGPAdvertisements that use them"
                ));
                continue;
            }
            "BFDProfile" => {
                warnings.push(format!(
                    "BFDProfile {name}: its timers are set on the BGPPeers that name it (spec.bfd)"
                ));
                for key in ["echoMode", "echoInterval", "minimumTtl"] {
                    if spec.get(key).is_some_and(|v| !v.is_null()) {
                        warnings.push(format!(
                            "BFDProfile {name}: spec.{key} not converted: Herald runs BFD single hop (TTL 255) without the echo function"
                        ));
                    }
                }
                continue;
            }
            other => {
                warnings.push(format!("skipped {other} {name}: Herald has no equivalent"));
                continue;
            }
        };
        for key in spec.as_object().into_iter().flat_map(Map::keys) {
            let renamed = key.replace("ipAddressPool", "ipPool");
            if new.contains_key(key)
                || new.contains_key(&renamed)
                || (kind == "BGPAdvertisement" && key == "communities")
                || (kind == "BGPPeer"
                    && ["bfdProfile", "dualStackAddressFamily", "disableMP"]
                        .contains(&key.as_str()))
            {
                continue;
            }
            let why = NOT_CONVERTED
                .iter()
                .find(|(k, field, _)| *k == kind && field == key)
                .map_or("Herald has no such field", |(_, _, why)| why);
            warnings.push(format!("{kind} {name}: spec.{key} not converted: {why}"));
        }
        if let Some(ns) = item["metadata"]["namespace"].as_str() {
            warnings.push(format!(
                "{kind} {name}: Herald's objects are cluster-scoped; namespace {ns} dropped"
            ));
        }
        let converted = object(herald_kind, &item, new);
        let yaml = serde_yaml_ng::to_string(&converted)
            .map_err(|source| ConvertError::Yaml { index, source })?;
        out.push(yaml);
    }
    Ok((out.join("---\n"), warnings))
}

/// Every object of the YAML documents in `input`, with the index of its document: the items
/// of a `List` (`kubectl get -o yaml` of several objects) one by one.
pub(crate) fn objects(input: &str) -> Result<Vec<(usize, Value)>, ConvertError> {
    let mut items = Vec::new();
    for (index, doc) in serde_yaml_ng::Deserializer::from_str(input).enumerate() {
        let value: Value = serde::Deserialize::deserialize(doc)
            .map_err(|source| ConvertError::Yaml { index, source })?;
        if value.is_null() {
            continue;
        }
        match value["kind"].as_str() {
            Some("List") => items.extend(
                value["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| (index, i.clone())),
            ),
            _ => items.push((index, value)),
        }
    }
    Ok(items)
}

/// Converted objects as YAML documents, `---`-separated.
pub(crate) fn render(objects: &[Value]) -> Result<String, ConvertError> {
    let yaml: Result<Vec<String>, _> = objects.iter().map(serde_yaml_ng::to_string).collect();
    let yaml = yaml.map_err(|source| ConvertError::Yaml { index: 0, source })?;
    Ok(yaml.join("---\n"))
}

/// The documents of converted YAML, for tests.
#[cfg(test)]
pub(crate) fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .collect()
}

fn is_metallb(item: &Value) -> bool {
    item["apiVersion"]
        .as_str()
        .is_some_and(|g| g.starts_with("metallb.io/"))
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

/// A Herald object of `kind` named after `source`'s name, with its labels and annotations.
pub(crate) fn object(kind: &str, source: &Value, spec: Map<String, Value>) -> Value {
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
    use herald_api::service::IpFamily;
    use herald_api::{BGPAdvertisement, BGPPeer, IPPool, L2Advertisement};

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
  preferredNodeSelectors:
  - weight: 50
    preference: {matchLabels: {node-role.example/edge: "true"}}
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
        let docs = documents(&yaml);
        assert_eq!(docs.len(), 4);
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
        assert_eq!(ad.spec.scope.ip_pools, ["production"]);
        assert_eq!(ad.spec.scope.ip_pool_selectors.len(), 1);
        assert_eq!(ad.spec.scope.node_selectors.len(), 1);
        assert_eq!(ad.spec.interfaces, ["eth0", "eth1"]);
        assert_eq!(ad.spec.preferred_node_selectors.len(), 1);
        assert_eq!(ad.spec.preferred_node_selectors[0].weight, 50);
        // Every entry of the converted pool is one Herald accepts.
        for entry in &pool.spec.addresses {
            herald_api::AddressEntry::parse(entry).expect(entry);
        }
        let peer: BGPPeer = serde_json::from_value(docs[2].clone()).expect("BGPPeer");
        assert_eq!((peer.spec.my_asn, peer.spec.peer_asn), (64500, Some(64501)));
        let _: BGPAdvertisement =
            serde_json::from_value(docs[3].clone()).expect("BGPAdvertisement");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("namespace metallb-system dropped"))
        );
    }

    /// MetalLB's BGP configuration as its documentation shows it: a peer with BFD, a password
    /// and multihop, named communities, aggregation.
    const METALLB_BGP: &str = r#"
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: tor, namespace: metallb-system}
spec:
  myASN: 64500
  peerASN: 64501
  peerAddress: 10.0.0.1
  sourceAddress: 10.0.0.5
  holdTime: 9s
  keepaliveTime: 3s
  connectTime: 10s
  routerID: 10.10.10.10
  nodeSelectors:
  - matchLabels: {rack: r1}
  password: secret
  passwordSecret: {name: tor-password, namespace: metallb-system}
  bfdProfile: fast
  ebgpMultiHop: true
  enableGracefulRestart: true
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: unnumbered, namespace: metallb-system}
spec: {myASN: 64500, peerASN: 64501, interface: eth1}
---
apiVersion: metallb.io/v1beta1
kind: BFDProfile
metadata: {name: fast, namespace: metallb-system}
spec: {receiveInterval: 100, transmitInterval: 100, detectMultiplier: 3, echoMode: true}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: external, namespace: metallb-system}
spec:
  ipAddressPools: [production]
  aggregationLength: 32
  aggregationLengthV6: 64
  localPref: 50
  communities: [vpn-only, "65535:65282", "large:64500:1:2"]
  peers: [tor]
---
apiVersion: metallb.io/v1beta1
kind: Community
metadata: {name: communities, namespace: metallb-system}
spec:
  communities:
  - name: vpn-only
    value: "1234:1"
"#;

    #[test]
    fn metallb_bgp_becomes_herald_bgp_and_every_field_left_out_is_named() {
        let (yaml, warnings) = convert(METALLB_BGP).expect("converts");
        let docs = documents(&yaml);
        assert_eq!(docs.len(), 2, "{yaml}");
        let peer: BGPPeer = serde_json::from_value(docs[0].clone()).expect("BGPPeer");
        let s = &peer.spec;
        assert_eq!((s.my_asn, s.peer_asn), (64500, Some(64501)));
        assert_eq!(s.peer_address, "10.0.0.1");
        assert_eq!(s.source_address.as_deref(), Some("10.0.0.5"));
        assert_eq!(s.router_id.as_deref(), Some("10.10.10.10"));
        assert_eq!(
            (s.hold_time.as_deref(), s.keepalive_time.as_deref()),
            (Some("9s"), Some("3s"))
        );
        assert_eq!(s.connect_time.as_deref(), Some("10s"));
        // MetalLB's default: only the peer address's family on the session.
        assert_eq!(s.address_families, [IpFamily::V4]);
        assert_eq!(s.node_selectors.len(), 1);
        assert!(s.enable_graceful_restart);
        assert!(s.ebgp_multi_hop);
        // Multihop: single-hop BFD cannot run with it, so the profile is left off (said).
        assert_eq!(s.bfd, None);
        let secret = s.password_secret.as_ref().expect("passwordSecret");
        assert_eq!(
            (secret.name.as_str(), secret.key()),
            ("tor-password", "password")
        );
        let ad: BGPAdvertisement =
            serde_json::from_value(docs[1].clone()).expect("BGPAdvertisement");
        assert_eq!(ad.spec.scope.ip_pools, ["production"]);
        assert_eq!(ad.spec.local_pref, Some(50));
        assert_eq!(
            (ad.spec.aggregation_length, ad.spec.aggregation_length_v6),
            (Some(32), Some(64))
        );
        assert_eq!(ad.spec.peers, ["tor"]);
        // The named community is resolved; every one parses.
        assert_eq!(
            ad.spec.communities,
            ["1234:1", "65535:65282", "large:64500:1:2"]
        );
        for c in &ad.spec.communities {
            herald_api::bgp::Community::parse(c).expect(c);
        }
        for expected in [
            "BGPPeer tor: spec.password not converted: Herald reads passwords from Secrets only",
            "BGPPeer tor: its password Secret tor-password must be in Herald's namespace",
            "skipped BGPPeer unnumbered: it has no peerAddress",
            "BFDProfile fast: its timers are set on the BGPPeers that name it",
            "BFDProfile fast: spec.echoMode not converted",
            "BGPPeer tor: its BFDProfile fast is left off: Herald runs BFD single hop only",
            "Community communities: its names are replaced",
        ] {
            assert!(
                warnings.iter().any(|w| w.starts_with(expected)),
                "no warning {expected:?} in {warnings:#?}"
            );
        }
        // dualStackAddressFamily: both families, Herald's default; an IPv6 peer without it
        // carries IPv6 only.
        let dual =
            METALLB_BGP.replace("  ebgpMultiHop: true\n", "  dualStackAddressFamily: true\n");
        let (yaml, warnings) = convert(&dual).expect("converts");
        let peer: BGPPeer = serde_json::from_value(documents(&yaml)[0].clone()).expect("BGPPeer");
        assert!(peer.spec.address_families.is_empty(), "{yaml}");
        assert!(
            !warnings
                .iter()
                .any(|w| w.contains("dualStackAddressFamily")),
            "{warnings:?}"
        );
        let v6 = METALLB_BGP.replace("peerAddress: 10.0.0.1", "peerAddress: '2001:db8::1'");
        let (yaml, _) = convert(&v6).expect("converts");
        let peer: BGPPeer = serde_json::from_value(documents(&yaml)[0].clone()).expect("BGPPeer");
        assert_eq!(peer.spec.address_families, [IpFamily::V6]);
        // A single-hop peer gets its profile's timers.
        let single_hop = METALLB_BGP.replace("  ebgpMultiHop: true\n", "");
        let (yaml, warnings) = convert(&single_hop).expect("converts");
        let peer: BGPPeer = serde_json::from_value(documents(&yaml)[0].clone()).expect("BGPPeer");
        let bfd = peer.spec.bfd.as_ref().expect("the BFDProfile's timers");
        assert_eq!(
            (
                bfd.receive_interval,
                bfd.transmit_interval,
                bfd.detect_multiplier
            ),
            (Some(100), Some(100), Some(3))
        );
        assert!(
            !warnings.iter().any(|w| w.contains("bfdProfile")),
            "the profile was found: {warnings:#?}"
        );
        assert!(
            !warnings
                .iter()
                .any(|w| w.contains("spec.aggregationLength")),
            "{warnings:#?}"
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
