use super::*;
use futures::TryStreamExt;
use herald_api::LbService;
use proptest::prelude::*;
use prost::encoding::{WireType, encode_key, encode_varint};

/// A Service with every field Herald reads set, in JSON as the API server sends it.
const RICH_JSON: &str = r#"{
  "apiVersion": "v1", "kind": "Service",
  "metadata": {"name": "web", "namespace": "shop", "uid": "0b6f-uid", "resourceVersion": "42",
    "generation": 3, "deletionTimestamp": "2026-01-02T03:04:05Z",
    "labels": {"tier": "front"},
    "annotations": {"herald.dev/pool": "lan", "herald.dev/sharing-key": "k", "unrelated": "x"},
    "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
  "spec": {"type": "LoadBalancer", "loadBalancerClass": "herald.dev/l2",
    "loadBalancerIP": "192.0.2.7", "ipFamilyPolicy": "RequireDualStack",
    "ipFamilies": ["IPv6", "IPv4"], "externalTrafficPolicy": "Local",
    "selector": {"app": "web"}, "clusterIP": "10.96.0.9",
    "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP", "nodePort": 30053}]},
  "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.7", "ipMode": "VIP"}, {"ip": "2001:db8::7"}]},
    "conditions": [{"type": "herald.dev/IPAllocated", "status": "True", "reason": "IPAllocated",
      "message": "assigned 192.0.2.7", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
}"#;

fn time(rfc3339: &str) -> Option<Time> {
    let ts: k8s_openapi::jiff::Timestamp = rfc3339.parse().ok()?;
    Some(Time {
        seconds: Some(ts.as_second()),
        nanos: Some(ts.subsec_nanosecond()),
    })
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `RICH_JSON` as protobuf.
fn rich() -> Service {
    let s = |v: &str| Some(v.to_owned());
    Service {
        metadata: Some(ObjectMeta {
            name: s("web"),
            namespace: s("shop"),
            uid: s("0b6f-uid"),
            resource_version: s("42"),
            generation: Some(3),
            deletion_timestamp: time("2026-01-02T03:04:05Z"),
            labels: map(&[("tier", "front")]),
            annotations: map(&[
                ("herald.dev/pool", "lan"),
                ("herald.dev/sharing-key", "k"),
                ("unrelated", "x"),
            ]),
        }),
        spec: Some(ServiceSpec {
            ports: vec![
                ServicePort {
                    protocol: s("TCP"),
                    port: Some(80),
                },
                ServicePort {
                    protocol: s("UDP"),
                    port: Some(53),
                },
            ],
            selector: map(&[("app", "web")]),
            type_: s("LoadBalancer"),
            load_balancer_ip: s("192.0.2.7"),
            external_traffic_policy: s("Local"),
            ip_family_policy: s("RequireDualStack"),
            ip_families: vec!["IPv6".into(), "IPv4".into()],
            load_balancer_class: s("herald.dev/l2"),
        }),
        status: Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: vec![
                    LoadBalancerIngress { ip: s("192.0.2.7") },
                    LoadBalancerIngress {
                        ip: s("2001:db8::7"),
                    },
                ],
            }),
            conditions: vec![Condition {
                type_: s("herald.dev/IPAllocated"),
                status: s("True"),
                last_transition_time: time("2026-01-01T00:00:00Z"),
                reason: s("IPAllocated"),
                message: s("assigned 192.0.2.7"),
            }],
        }),
    }
}

/// A Service with nothing but its name, as the API server writes it in protobuf (every
/// optional scalar, unset ones as "" or 0), and fields Herald skips (cluster IPs, managed
/// fields, ...), of every wire type.
fn bare(name: &str) -> Vec<u8> {
    let unset = || Some(String::new());
    let mut out = Service {
        metadata: Some(ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: unset(),
            generation: Some(0),
            ..Default::default()
        }),
        spec: Some(ServiceSpec {
            type_: unset(),
            load_balancer_ip: unset(),
            load_balancer_class: unset(),
            ip_family_policy: unset(),
            external_traffic_policy: unset(),
            ..Default::default()
        }),
        status: Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus { ingress: vec![] }),
            conditions: vec![],
        }),
    }
    .encode_to_vec();
    encode_key(4, WireType::LengthDelimited, &mut out);
    encode_varint(3, &mut out);
    out.extend_from_slice(b"xyz");
    encode_key(5, WireType::Varint, &mut out);
    encode_varint(1 << 40, &mut out);
    encode_key(6, WireType::SixtyFourBit, &mut out);
    out.extend_from_slice(&[7; 8]);
    encode_key(7, WireType::ThirtyTwoBit, &mut out);
    out.extend_from_slice(&[7; 4]);
    out
}

fn field(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// A list response as the API server frames it: magic, then a `runtime.Unknown` holding the
/// type, the `ServiceList` and the content type.
fn body(items: &[Vec<u8>], resource_version: Option<&str>) -> Vec<u8> {
    let mut list = Vec::new();
    let meta = ListMeta {
        resource_version: resource_version.map(str::to_owned),
        continue_: Some(String::new()),
    };
    field(1, &meta.encode_to_vec(), &mut list);
    for item in items {
        field(2, item, &mut list);
    }
    let mut out = MAGIC.to_vec();
    field(1, b"\n\x02v1\x12\x0bServiceList", &mut out);
    field(2, &list, &mut out);
    field(4, b"", &mut out);
    out
}

/// Reads a whole body delivered in chunks of the given sizes (cycled).
fn read(body: &[u8], chunks: &[usize]) -> Result<(Vec<LbService>, String), ProtoError> {
    let mut parts = Vec::new();
    let mut rest = body;
    for size in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (part, tail) = rest.split_at((*size).clamp(1, rest.len()));
        parts.push(Ok::<_, io::Error>(part.to_vec()));
        rest = tail;
    }
    let reader = futures::stream::iter(parts).into_async_read();
    futures::executor::block_on(async move {
        let mut list = ListReader::open(reader).await?;
        let mut services = Vec::new();
        loop {
            match list.next().await? {
                ListItem::Object(o) => services.push(o.service),
                ListItem::End { resource_version } => return Ok((services, resource_version)),
            }
        }
    })
}

#[test]
fn a_service_in_protobuf_is_the_same_service_as_in_json() {
    let from_json: LbService = serde_json::from_str(RICH_JSON).unwrap();
    let (services, rv) = read(&body(&[rich().encode_to_vec()], Some("99")), &[usize::MAX]).unwrap();
    assert_eq!(services, [from_json]);
    assert_eq!(rv, "99");
    // The conversion kept what Herald reads (not two empty values compared equal).
    let svc = &services[0];
    assert_eq!(svc.key(), "shop/web");
    assert_eq!(svc.status.ingress.len(), 2);
    assert!(svc.metadata.deleting && svc.allocated_by_herald());
    assert_eq!(
        svc.annotation(&herald_api::keys::POOL_KEYS),
        Ok(Some("lan"))
    );

    // Unset in both encodings: the same too.
    let bare_json: LbService = serde_json::from_str(
        r#"{"metadata": {"name": "a", "namespace": "default"}, "spec": {"selector": {}}}"#,
    )
    .unwrap();
    let (services, _) = read(&body(&[bare("a")], Some("1")), &[usize::MAX]).unwrap();
    assert_eq!(services, [bare_json]);
}

#[test]
fn fields_herald_does_not_read_are_skipped_in_the_list_and_the_envelope() {
    let items: Vec<Vec<u8>> = (0..3).map(|i| bare(&format!("s{i}"))).collect();
    let mut with_extras = body(&items, Some("7"));
    // An unknown varint field after the list, in the envelope.
    encode_key(9, WireType::Varint, &mut with_extras);
    encode_varint(300, &mut with_extras);
    let (services, rv) = read(&with_extras, &[usize::MAX]).unwrap();
    let names: Vec<String> = services.iter().map(LbService::key).collect();
    assert_eq!(names, ["default/s0", "default/s1", "default/s2"]);
    assert_eq!(rv, "7");
}

#[test]
fn an_empty_list_ends_at_once_and_one_without_resource_version_is_an_error() {
    assert_eq!(
        read(&body(&[], Some("5")), &[3]).unwrap(),
        (vec![], "5".to_owned())
    );
    assert!(matches!(
        read(&body(&[bare("a")], None), &[usize::MAX]),
        Err(ProtoError::NoResourceVersion)
    ));
    assert!(matches!(
        read(&body(&[bare("a")], Some("")), &[usize::MAX]),
        Err(ProtoError::NoResourceVersion)
    ));
}

#[test]
fn a_list_with_a_continue_token_is_never_taken_for_the_whole_list() {
    let mut list = Vec::new();
    let meta = ListMeta {
        resource_version: Some("5".into()),
        continue_: Some("next-page".into()),
    };
    field(1, &meta.encode_to_vec(), &mut list);
    field(2, &bare("a"), &mut list);
    let mut out = MAGIC.to_vec();
    field(2, &list, &mut out);
    assert!(matches!(
        read(&out, &[usize::MAX]),
        Err(ProtoError::Paginated)
    ));
}

#[test]
fn a_json_body_is_refused_by_its_first_bytes() {
    assert!(matches!(
        read(br#"{"kind":"ServiceList","items":[]}"#, &[usize::MAX]),
        Err(ProtoError::NoMagic)
    ));
    assert!(matches!(
        read(b"k8", &[usize::MAX]),
        Err(ProtoError::NoMagic)
    ));
}

#[test]
fn a_length_beyond_the_bound_is_refused_before_anything_is_allocated() {
    let mut list = Vec::new();
    encode_key(2, WireType::LengthDelimited, &mut list);
    encode_varint(1 << 40, &mut list);
    let mut out = MAGIC.to_vec();
    encode_key(2, WireType::LengthDelimited, &mut out);
    encode_varint(u64::MAX >> 1, &mut out);
    out.extend_from_slice(&list);
    assert!(matches!(
        read(&out, &[usize::MAX]),
        Err(ProtoError::TooLarge {
            what: "Service",
            ..
        })
    ));
}

#[test]
fn an_error_status_in_protobuf_gives_its_code_and_message() {
    let mut status = Vec::new();
    field(3, b"too old resource version", &mut status);
    encode_key(6, WireType::Varint, &mut status);
    encode_varint(410, &mut status);
    let mut out = MAGIC.to_vec();
    field(2, &status, &mut out);
    assert_eq!(
        decode_status(&out),
        Some((410, "too old resource version".to_owned()))
    );
    assert_eq!(decode_status(b"{\"code\": 410}"), None);
}

proptest! {
    /// However the body is cut into chunks on the way, the same list is read.
    #[test]
    fn any_chunking_reads_the_same_list(chunks in prop::collection::vec(1usize..40, 1..8)) {
        let items = vec![rich().encode_to_vec(), bare("b"), bare("c")];
        let whole = read(&body(&items, Some("12")), &[usize::MAX]).unwrap();
        prop_assert_eq!(read(&body(&items, Some("12")), &chunks).unwrap(), whole);
    }

    /// A list cut short never reads as complete, wherever it is cut.
    #[test]
    fn a_truncated_list_is_an_error(cut in 0usize..1000) {
        let items = vec![rich().encode_to_vec(), bare("b")];
        let full = body(&items, Some("12"));
        // The content type (last 2 bytes) may go: the list itself is whole without it.
        let cut = cut % (full.len() - 2);
        prop_assert!(read(&full[..cut], &[5]).is_err());
    }

    /// Bytes from a broken proxy or a bug: an error or a list, never a panic or a hang.
    #[test]
    fn corrupted_bytes_never_panic(flips in prop::collection::vec((0usize..2000, any::<u8>()), 1..6)) {
        let items = vec![rich().encode_to_vec(), bare("b")];
        let mut bytes = body(&items, Some("12"));
        for (at, b) in flips {
            let at = at % bytes.len();
            bytes[at] = b;
        }
        let _ = read(&bytes, &[7]);
    }

    /// Arbitrary bytes after the magic.
    #[test]
    fn arbitrary_bytes_never_panic(tail in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = MAGIC.to_vec();
        bytes.extend(tail);
        let _ = read(&bytes, &[usize::MAX]);
    }
}
