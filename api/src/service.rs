//! `LbService`: a Service as both binaries cache it. Only the fields Herald reads, in compact
//! form, deserialized straight from the API server's JSON (everything else is skipped by the
//! parser, so a full Service is never built). With 10,000 Services this is what keeps the
//! caches small: k8s-openapi's `Service` is 840 bytes before any field is set, and most of
//! what the API server sends (managed fields, cluster IPs, node ports...) Herald never reads.
//!
//! `ServiceObject` is the `kube::Resource` that is watched (an `LbService` plus the metadata a
//! watch needs); only its `LbService` is cached (`watch::projected`). Neither is ever written
//! (writes are server-side apply patches).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use serde::Deserialize;

use crate::keys;

/// A Service, reduced to what Herald reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "wire::Service")]
pub struct LbService {
    pub metadata: LbMeta,
    pub spec: LbSpec,
    pub status: LbStatus,
}

/// The metadata Herald reads (field names as in `ObjectMeta`). Strings are boxed and maps
/// behind a pointer: every Service is cached, so each word saved is 800 KB at 100,000 (this
/// struct and `LbSpec` were 296 bytes with `String`s, `Vec`s and inline maps; now 152).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbMeta {
    pub name: Option<Box<str>>,
    pub namespace: Option<Box<str>>,
    pub uid: Option<Box<str>>,
    pub generation: Option<i64>,
    /// `deletionTimestamp` is set.
    pub deleting: bool,
    pub labels: Option<Box<BTreeMap<String, String>>>,
    /// Herald's and MetalLB's annotations only.
    pub annotations: Option<Box<BTreeMap<String, String>>>,
}

/// What a Service watch delivers: the `LbService` plus the metadata the watch itself needs
/// (resourceVersion to resume). Dropped once projected into a `watch::Cache`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "wire::Service")]
pub struct ServiceObject {
    pub metadata: ObjectMeta,
    pub service: LbService,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbSpec {
    /// `type: LoadBalancer`.
    pub load_balancer: bool,
    pub load_balancer_class: Option<Box<str>>,
    pub load_balancer_ip: Option<Box<str>>,
    pub ip_family_policy: FamilyPolicy,
    /// `ipFamilies`, in order (at most two).
    pub ip_families: IpFamilies,
    /// `externalTrafficPolicy: Local`.
    pub local_traffic: bool,
    /// The pod selector; kept only with `externalTrafficPolicy: Local` (Services sharing an
    /// IP must then select the same pods).
    pub selector: Option<Box<BTreeMap<String, String>>>,
    pub ports: Box<[LbPort]>,
}

/// A Service's `ipFamilies`: at most two, in order, held inline (a `Vec` would be a heap
/// allocation of two bytes per Service).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpFamilies {
    families: [IpFamily; 2],
    len: u8,
}

impl IpFamilies {
    pub fn as_slice(&self) -> &[IpFamily] {
        &self.families[..usize::from(self.len)]
    }
}

/// The first two families; any more are ignored (the API server allows two).
impl FromIterator<IpFamily> for IpFamilies {
    fn from_iter<I: IntoIterator<Item = IpFamily>>(families: I) -> Self {
        let mut out = Self::default();
        for (slot, family) in out.families.iter_mut().zip(families) {
            *slot = family;
            out.len += 1;
        }
        out
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FamilyPolicy {
    #[default]
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

/// An IP family: of a Service (`spec.ipFamilies`), of an address, of a pool's range, of the
/// routes a BGP session carries. Written `IPv4` and `IPv6`, as Kubernetes writes them.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum IpFamily {
    #[default]
    #[serde(rename = "IPv4")]
    V4,
    #[serde(rename = "IPv6")]
    V6,
}

impl IpFamily {
    pub fn of(ip: std::net::IpAddr) -> Self {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }

    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            IpFamily::V4 => "ipv4",
            IpFamily::V6 => "ipv6",
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LbPort {
    pub port: i32,
    pub protocol: Protocol,
}

/// A Service port's protocol (the API server accepts only these three).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbStatus {
    /// The IPs of `status.loadBalancer.ingress`, in order; entries without a valid IP (a
    /// hostname) are left out.
    pub ingress: Box<[IpAddr]>,
    /// Herald's condition (`herald.dev/IPAllocated`), when the status has it.
    pub condition: Option<LbCondition>,
}

/// Herald's condition as last written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbCondition {
    /// `status: "True"`.
    pub allocated: bool,
    /// When `status` last changed (kept on writes that do not change it).
    pub last_transition_time: Option<Time>,
    /// A digest of `reason` and `message`: Herald only compares them with what it would
    /// write (the strings cost ~100 bytes per Service, 10 MB at 100,000).
    pub says: u64,
}

impl LbCondition {
    /// The digest of a condition's reason and message (`says`).
    pub fn digest(reason: &str, message: &str) -> u64 {
        crate::fingerprint(&(reason, message))
    }

    /// Whether the condition's reason and message are these.
    pub fn says(&self, reason: &str, message: &str) -> bool {
        self.says == Self::digest(reason, message)
    }
}

/// Herald's condition (`herald.dev/IPAllocated`) on a full Service object, as clients that
/// read Services with k8s-openapi's type see it.
pub fn allocated_condition(
    svc: &k8s_openapi::api::core::v1::Service,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    svc.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == keys::IP_ALLOCATED_CONDITION)
}

impl LbService {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        crate::ObjectKey::new(
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default(),
        )
        .to_string()
    }

    /// The Service as an Event's subject.
    pub fn regarding(&self) -> crate::events::Regarding<'_> {
        crate::events::Regarding {
            namespace: self.metadata.namespace.as_deref().unwrap_or_default(),
            name: self.metadata.name.as_deref().unwrap_or_default(),
            uid: self.metadata.uid.as_deref().unwrap_or_default(),
        }
    }

    /// The Service's labels (empty when it has none).
    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.metadata.labels.as_deref().unwrap_or(&EMPTY)
    }

    /// Whether Herald wrote this Service's status (its condition is there).
    pub fn status_is_ours(&self) -> bool {
        self.status.condition.is_some()
    }

    /// Whether Herald's condition says the Service's IPs are allocated (the speaker announces
    /// only those).
    pub fn allocated_by_herald(&self) -> bool {
        self.status.condition.as_ref().is_some_and(|c| c.allocated)
    }

    /// The value the Service gives under `keys` (Herald's and MetalLB's spellings of one
    /// annotation), trimmed; blank values count as unset. `Err` lists every `(key, value)`
    /// set when they disagree, so that none silently wins.
    pub fn annotation<'k>(&self, keys: &[&'k str]) -> Result<Option<&str>, Vec<(&'k str, &str)>> {
        let Some(annotations) = self.metadata.annotations.as_ref() else {
            return Ok(None);
        };
        let set: Vec<(&str, &str)> = keys
            .iter()
            .filter_map(|k| Some((*k, annotations.get(*k)?.trim())))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        match set.as_slice() {
            [] => Ok(None),
            [(_, first), rest @ ..] if rest.iter().all(|(_, v)| v == first) => Ok(Some(first)),
            _ => Err(set),
        }
    }
}

impl Resource for ServiceObject {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Service".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "services".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The JSON shape, with only the fields read; serde skips the rest without allocating. The
/// protobuf list (`herald_runtime::proto`) is converted into the same shape.
pub mod wire {
    use super::*;

    #[derive(Deserialize)]
    pub struct Service {
        #[serde(default)]
        pub metadata: Meta,
        #[serde(default)]
        pub spec: Spec,
        #[serde(default)]
        pub status: Status,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    pub struct Meta {
        pub name: Option<String>,
        pub namespace: Option<String>,
        pub uid: Option<String>,
        pub resource_version: Option<String>,
        pub generation: Option<i64>,
        pub deletion_timestamp: Option<Time>,
        pub labels: Option<BTreeMap<String, String>>,
        pub annotations: Option<BTreeMap<String, String>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    pub struct Spec {
        #[serde(rename = "type")]
        pub type_: Option<String>,
        pub load_balancer_class: Option<String>,
        #[serde(rename = "loadBalancerIP")]
        pub load_balancer_ip: Option<String>,
        pub ip_family_policy: Option<String>,
        pub ip_families: Option<Vec<String>>,
        pub external_traffic_policy: Option<String>,
        pub selector: Option<BTreeMap<String, String>>,
        pub ports: Option<Vec<Port>>,
    }

    #[derive(Deserialize)]
    pub struct Port {
        pub port: i32,
        pub protocol: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    pub struct Status {
        pub load_balancer: Option<LoadBalancer>,
        pub conditions: Option<Vec<Condition>>,
    }

    #[derive(Deserialize)]
    pub struct LoadBalancer {
        pub ingress: Option<Vec<Ingress>>,
    }

    #[derive(Deserialize)]
    pub struct Ingress {
        pub ip: Option<String>,
    }

    #[derive(Deserialize)]
    pub struct Condition {
        #[serde(rename = "type")]
        pub type_: String,
        pub status: String,
        #[serde(default)]
        pub reason: String,
        #[serde(default)]
        pub message: String,
        #[serde(default, rename = "lastTransitionTime")]
        pub last_transition_time: Option<Time>,
    }

    impl From<Service> for LbService {
        fn from(w: Service) -> Self {
            ServiceObject::from(w).service
        }
    }

    impl From<Service> for ServiceObject {
        fn from(w: Service) -> Self {
            let mut annotations = w.metadata.annotations;
            if let Some(a) = annotations.as_mut() {
                a.retain(|k, _| {
                    let k = k.as_str();
                    keys::POOL_KEYS.contains(&k)
                        || keys::IPS_KEYS.contains(&k)
                        || keys::SHARING_KEYS.contains(&k)
                        || keys::SHARING_CROSS_NAMESPACE_KEYS.contains(&k)
                });
            }
            let spec = w.spec;
            let local_traffic = spec.external_traffic_policy.as_deref() == Some("Local");
            let condition = w
                .status
                .conditions
                .into_iter()
                .flatten()
                .find(|c| c.type_ == keys::IP_ALLOCATED_CONDITION)
                .map(|c| LbCondition {
                    allocated: c.status == "True",
                    last_transition_time: c.last_transition_time,
                    says: LbCondition::digest(&c.reason, &c.message),
                });
            let ingress = w
                .status
                .load_balancer
                .and_then(|lb| lb.ingress)
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip?.parse().ok())
                .collect();
            let metadata = ObjectMeta {
                name: w.metadata.name.clone(),
                namespace: w.metadata.namespace.clone(),
                resource_version: w.metadata.resource_version,
                ..ObjectMeta::default()
            };
            let service = LbService {
                metadata: LbMeta {
                    name: w.metadata.name.map(Into::into),
                    namespace: w.metadata.namespace.map(Into::into),
                    uid: w.metadata.uid.map(Into::into),
                    generation: w.metadata.generation,
                    deleting: w.metadata.deletion_timestamp.is_some(),
                    labels: w.metadata.labels.filter(|l| !l.is_empty()).map(Box::new),
                    annotations: annotations.filter(|a| !a.is_empty()).map(Box::new),
                },
                spec: LbSpec {
                    load_balancer: spec.type_.as_deref() == Some("LoadBalancer"),
                    load_balancer_class: spec.load_balancer_class.map(Into::into),
                    load_balancer_ip: spec.load_balancer_ip.map(Into::into),
                    ip_family_policy: match spec.ip_family_policy.as_deref() {
                        Some("PreferDualStack") => FamilyPolicy::PreferDualStack,
                        Some("RequireDualStack") => FamilyPolicy::RequireDualStack,
                        _ => FamilyPolicy::SingleStack,
                    },
                    ip_families: spec
                        .ip_families
                        .into_iter()
                        .flatten()
                        .take(2)
                        .map(|f| match f.as_str() {
                            "IPv6" => IpFamily::V6,
                            _ => IpFamily::V4,
                        })
                        .collect(),
                    local_traffic,
                    // `{}` and no selector are the same (and the same in JSON and protobuf).
                    selector: spec
                        .selector
                        .filter(|s| local_traffic && !s.is_empty())
                        .map(Box::new),
                    ports: spec
                        .ports
                        .into_iter()
                        .flatten()
                        .map(|p| LbPort {
                            port: p.port,
                            protocol: match p.protocol.as_deref() {
                                Some("UDP") => Protocol::Udp,
                                Some("SCTP") => Protocol::Sctp,
                                _ => Protocol::Tcp,
                            },
                        })
                        .collect(),
                },
                status: LbStatus { ingress, condition },
            };
            ServiceObject { metadata, service }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  uid: 4a1c
  resourceVersion: "42"
  generation: 3
  labels: {app: web}
  annotations:
    herald.dev/pool: lan
    metallb.io/allow-shared-ip: k
    kubectl.kubernetes.io/last-applied-configuration: "{...}"
  managedFields: [{manager: kubectl, operation: Update, fieldsType: FieldsV1, fieldsV1: {f:spec: {}}}]
spec:
  type: LoadBalancer
  loadBalancerClass: herald.dev/l2
  loadBalancerIP: 192.0.2.7
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv6, IPv4]
  externalTrafficPolicy: Local
  selector: {app: web}
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}, {port: 53, protocol: UDP}]
status:
  loadBalancer:
    ingress: [{ip: 192.0.2.7, ipMode: VIP}, {hostname: lb.example}, {ip: "2001:db8::7"}]
  conditions:
  - {type: other.io/Thing, status: "True", reason: X, message: x, lastTransitionTime: "2026-01-01T00:00:00Z"}
  - {type: herald.dev/IPAllocated, status: "True", reason: Allocated, message: "192.0.2.7 from IPPool lan", lastTransitionTime: "2026-01-01T00:00:00Z"}
"#;

    #[test]
    fn keeps_what_herald_reads_from_a_full_service() {
        let svc: LbService = serde_yaml_ng::from_str(FULL).unwrap();
        assert_eq!(svc.key(), "shop/web");
        assert_eq!(svc.metadata.uid.as_deref(), Some("4a1c"));
        assert_eq!(svc.metadata.generation, Some(3));
        assert!(!svc.metadata.deleting);
        assert_eq!(svc.labels()["app"], "web");
        let watched: ServiceObject = serde_yaml_ng::from_str(FULL).unwrap();
        assert_eq!(watched.metadata.resource_version.as_deref(), Some("42"));
        assert!(watched.metadata.managed_fields.is_none() && watched.metadata.labels.is_none());
        assert_eq!(watched.service, svc);
        let annotations = svc.metadata.annotations.clone().unwrap();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            ["herald.dev/pool", "metallb.io/allow-shared-ip"]
        );
        assert_eq!(svc.annotation(&keys::POOL_KEYS), Ok(Some("lan")));
        assert_eq!(svc.annotation(&keys::SHARING_KEYS), Ok(Some("k")));
        let spec = &svc.spec;
        assert!(spec.load_balancer && spec.local_traffic);
        assert_eq!(spec.load_balancer_class.as_deref(), Some("herald.dev/l2"));
        assert_eq!(spec.load_balancer_ip.as_deref(), Some("192.0.2.7"));
        assert_eq!(spec.ip_family_policy, FamilyPolicy::RequireDualStack);
        assert_eq!(spec.ip_families.as_slice(), [IpFamily::V6, IpFamily::V4]);
        assert_eq!(spec.selector.as_ref().unwrap()["app"], "web");
        assert_eq!(
            *spec.ports,
            [
                LbPort {
                    port: 80,
                    protocol: Protocol::Tcp
                },
                LbPort {
                    port: 53,
                    protocol: Protocol::Udp
                }
            ]
        );
        let ips: Vec<String> = svc.status.ingress.iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["192.0.2.7", "2001:db8::7"]);
        assert!(svc.status_is_ours() && svc.allocated_by_herald());
        let c = svc.status.condition.as_ref().unwrap();
        assert!(c.says("Allocated", "192.0.2.7 from IPPool lan"));
        assert!(!c.says("Allocated", "192.0.2.8 from IPPool lan"));
    }

    #[test]
    fn minimal_and_foreign_services() {
        let svc: LbService = serde_yaml_ng::from_str(
            "metadata: {name: a, namespace: n}\nspec: {type: ClusterIP, selector: {app: a}}",
        )
        .unwrap();
        assert!(!svc.spec.load_balancer);
        assert_eq!(svc.spec.selector, None, "selector kept only for Local");
        assert!(!svc.status_is_ours() && !svc.allocated_by_herald());
        assert_eq!(svc.spec.ip_family_policy, FamilyPolicy::SingleStack);

        let failed: LbService = serde_yaml_ng::from_str(
            "metadata: {name: a}\nstatus: {conditions: [{type: herald.dev/IPAllocated, status: \"False\", reason: PoolExhausted, message: m}]}",
        )
        .unwrap();
        assert!(failed.status_is_ours() && !failed.allocated_by_herald());
        assert!(failed.status.ingress.is_empty());
    }

    #[test]
    fn is_a_service_resource() {
        assert_eq!(ServiceObject::kind(&()), "Service");
        assert_eq!(ServiceObject::api_version(&()), "v1");
        assert_eq!(
            ServiceObject::url_path(&(), Some("n")),
            "/api/v1/namespaces/n/services"
        );
    }
}
