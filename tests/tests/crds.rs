//! Herald's CRDs on a real kube-apiserver: they install, a valid pool is accepted as written,
//! and the API server itself refuses bad address entries with a message that names them.

use herald_api::{IPPool, IPPoolSpec, L2Advertisement, L2AdvertisementSpec};
use herald_lab::ControlPlane;
use herald_lab::controller::convert;
use kube::api::{Api, ObjectMeta, PostParams};

fn pool(name: &str, addresses: &[&str]) -> IPPool {
    IPPool {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: IPPoolSpec {
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            auto_assign: true,
            avoid_buggy_ips: false,
            disabled: false,
            service_allocation: None,
            reservations: Vec::new(),
            retain_for: None,
        },
        status: None,
    }
}

#[tokio::test]
async fn crds_install_and_accept_valid_objects() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let pools: Api<IPPool> = Api::all(cp.client());

    let addresses = [
        "192.0.2.0/24",
        "198.51.100.10-198.51.100.20",
        "198.51.100.30 - 198.51.100.30",
        "203.0.113.9-203.0.113.10",
        "2001:db8::/64",
        "2001:db8:1::a-2001:db8:1::1:0",
        "2001:db8:2::ff-2001:db8:2::100",
        "2001:db8:3::/128",
    ];
    // autoAssign left out: the server applies the schema default.
    let raw = serde_json::json!({
        "apiVersion": "herald.dev/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": "lan"},
        "spec": {"addresses": addresses},
    });
    let created = pools
        .create(
            &PostParams::default(),
            &serde_json::from_value(raw).expect("pool json"),
        )
        .await
        .expect("valid pool accepted");
    assert_eq!(created.spec.addresses, addresses);
    assert!(created.spec.auto_assign, "autoAssign defaults to true");
    assert!(!created.spec.avoid_buggy_ips);

    let l2: Api<L2Advertisement> = Api::all(cp.client());
    let adv = L2Advertisement {
        metadata: ObjectMeta {
            name: Some("lan".into()),
            ..Default::default()
        },
        spec: L2AdvertisementSpec {
            scope: herald_api::selector::Scope {
                ip_pools: vec!["lan".into()],
                ..Default::default()
            },
            interfaces: vec!["eth0".into()],
            preferred_node_selectors: Vec::new(),
        },
    };
    let created = l2
        .create(&PostParams::default(), &adv)
        .await
        .expect("L2Advertisement accepted");
    assert_eq!(created.spec, adv.spec);
}

#[tokio::test]
async fn bad_address_entries_are_refused_by_the_api_server() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let pools: Api<IPPool> = Api::all(cp.client());

    let cases = [
        ("192.0.2.0/33", "is neither a CIDR"),
        ("192.0.2.300/24", "is neither a CIDR"),
        ("10.0.0.1", "is neither a CIDR"),
        ("garbage", "is neither a CIDR"),
        ("192.0.2.1/24", "has host bits set"),
        ("2001:db8::1/64", "has host bits set"),
        ("192.0.2.20-192.0.2.10", "starts after it ends"),
        ("192.0.2.100-192.0.2.99", "starts after it ends"),
        ("192.0.3.0-192.0.2.255", "starts after it ends"),
        ("2001:db8::1-192.0.2.1", "mixes IPv4 and IPv6"),
        ("192.0.2.1-2001:db8::1", "mixes IPv4 and IPv6"),
    ];
    for (i, (bad, reason)) in cases.iter().enumerate() {
        let err = pools
            .create(
                &PostParams::default(),
                &pool(&format!("bad-{i}"), &["198.51.100.0/24", bad]),
            )
            .await
            .expect_err(&format!("{bad} must be refused"));
        let kube::Error::Api(status) = err else {
            panic!("{bad}: not an API error: {err}")
        };
        assert_eq!(status.code, 422, "{bad}: {}", status.message);
        assert!(
            status.message.contains(&format!("\"{bad}\" {reason}")),
            "{bad}: message does not say why: {}",
            status.message
        );
        assert!(
            status.message.contains("spec.addresses[1]"),
            "{bad}: message does not point at the entry: {}",
            status.message
        );
    }

    // CEL cannot order IPv6 addresses within the API server's cost budget: a reversed IPv6
    // range is stored and the controller reports it in the pool's status instead.
    let empty = pools
        .create(&PostParams::default(), &pool("empty", &[]))
        .await;
    assert!(empty.is_err(), "a pool without addresses is refused");

    let left: Vec<_> = pools.list(&Default::default()).await.expect("list").items;
    assert!(left.is_empty(), "no refused pool was stored: {left:?}");
}

/// Creates `yaml` (a Herald object) and returns the API server's refusal message, or
/// `None` when it was accepted.
async fn refusal(cp: &ControlPlane, kind: &str, yaml: &str) -> Option<String> {
    use kube::api::DynamicObject;
    use kube::discovery::ApiResource;
    let plural = format!("{}s", kind.to_lowercase());
    let resource = ApiResource {
        group: "herald.dev".into(),
        version: "v1alpha1".into(),
        api_version: "herald.dev/v1alpha1".into(),
        kind: kind.into(),
        plural,
    };
    let api: Api<DynamicObject> = Api::all_with(cp.client(), &resource);
    let object: DynamicObject = serde_yaml_ng::from_str(&format!(
        "apiVersion: herald.dev/v1alpha1\nkind: {kind}\n{yaml}"
    ))
    .expect("yaml");
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => None,
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{yaml}: {}", status.message);
            Some(status.message)
        }
        Err(e) => panic!("{yaml}: not an API error: {e}"),
    }
}

#[tokio::test]
async fn bgp_peers_and_advertisements_are_checked_by_the_api_server() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let accepted = [
        (
            "BGPPeer",
            "metadata: {name: tor}\nspec: {myASN: 4200000001, peerASN: 64500, peerAddress: 192.0.2.1, holdTime: 9s, keepaliveTime: 3s, routerID: 10.0.0.1, enableGracefulRestart: true, passwordSecret: {name: tor-password}}",
        ),
        (
            "BGPPeer",
            "metadata: {name: tor6}\nspec: {myASN: 64512, dynamicASN: external, peerAddress: '2001:db8::1', peerPort: 1179, holdTime: 0s}",
        ),
        (
            "BGPPeer",
            "metadata: {name: tor-bfd}\nspec: {myASN: 64512, peerASN: 64500, peerAddress: 192.0.2.1, bfd: {receiveInterval: 100, transmitInterval: 50, detectMultiplier: 3, passiveMode: true}}",
        ),
        (
            "BGPPeer",
            "metadata: {name: far}\nspec: {myASN: 64512, peerASN: 64500, peerAddress: 10.9.9.1, ebgpMultiHop: true}",
        ),
        (
            "BGPAdvertisement",
            "metadata: {name: aggregated}\nspec: {ipPools: [lan], aggregationLength: 24, aggregationLengthV6: 64}",
        ),
        ("BGPAdvertisement", "metadata: {name: all}\nspec: {}"),
        (
            "BGPAdvertisement",
            "metadata: {name: tagged}\nspec: {ipPools: [lan], peers: [tor], localPref: 150, communities: ['64500:100', no-export, 'large:4200000001:1:2']}",
        ),
    ];
    for (kind, yaml) in accepted {
        assert_eq!(refusal(&cp, kind, yaml).await, None, "{yaml}");
    }
    let refused = [
        (
            "BGPPeer",
            "spec: {myASN: 64512, peerASN: 64500, dynamicASN: external, peerAddress: 192.0.2.1}",
            "set exactly one of peerASN",
        ),
        (
            "BGPPeer",
            "spec: {myASN: 64512, peerAddress: 192.0.2.1}",
            "set exactly one of peerASN",
        ),
        (
            "BGPPeer",
            "spec: {myASN: 64512, peerASN: 64500, peerAddress: router.example}",
            "peerAddress must be an IP address",
        ),
        (
            "BGPPeer",
            "spec: {myASN: 64512, peerASN: 64500, peerAddress: 192.0.2.1, holdTime: 2s}",
            "holdTime must be 0s or between 3s",
        ),
        (
            "BGPPeer",
            "spec: {myASN: 64512, peerASN: 64500, peerAddress: 192.0.2.1, holdTime: 9s, keepaliveTime: 9s}",
            "keepaliveTime must be shorter than holdTime",
        ),
        (
            "BGPPeer",
            "spec: {myASN: 64512, peerASN: 64500, peerAddress: 192.0.2.1, connectTime: 500ms}",
            "connectTime must be between 1s and 65535s",
        ),
        (
            "BGPPeer",
            "spec: {myASN: 64512, peerASN: 64500, peerAddress: 192.0.2.1, routerID: '2001:db8::1'}",
            "routerID must be an IPv4 address",
        ),
        (
            "BGPPeer",
            "spec: {myASN: 64512, peerASN: 64500, peerAddress: 192.0.2.1, bfd: {receiveInterval: 5}}",
            "receiveInterval in body should be greater than or equal to 10",
        ),
        (
            "BGPPeer",
            "spec: {myASN: 64512, peerASN: 64500, peerAddress: 192.0.2.1, bfd: {detectMultiplier: 1}}",
            "detectMultiplier in body should be greater than or equal to 2",
        ),
        (
            "BGPAdvertisement",
            "spec: {aggregationLength: 33}",
            "aggregationLength in body should be less than or equal to 32",
        ),
        (
            "BGPAdvertisement",
            "spec: {communities: ['64500:100', no-exports]}",
            "\"no-exports\" is not a community",
        ),
    ];
    for (i, (kind, yaml, reason)) in refused.iter().enumerate() {
        let yaml = format!("metadata: {{name: bad-{i}}}\n{yaml}");
        let message = refusal(&cp, kind, &yaml)
            .await
            .unwrap_or_else(|| panic!("{yaml} must be refused"));
        assert!(
            message.contains(reason),
            "{yaml}: message does not say why: {message}"
        );
    }
}

#[tokio::test]
async fn pool_reservations_and_retention_are_checked_by_the_api_server() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let good = "metadata: {name: kept}\nspec: {addresses: [192.0.2.0/24, '2001:db8::/64'], retainFor: 24h, reservations: [{service: shop/web, addresses: [192.0.2.10, '2001:db8::10']}]}";
    assert_eq!(refusal(&cp, "IPPool", good).await, None);
    let refused = [
        (
            "retainFor: forever",
            "retainFor must be between 1s and 8760h",
        ),
        ("retainFor: 9000h", "retainFor must be between 1s and 8760h"),
        (
            "reservations: [{service: web, addresses: [192.0.2.10]}]",
            "service must be namespace/name",
        ),
        (
            "reservations: [{service: Shop/Web, addresses: [192.0.2.10]}]",
            "service must be namespace/name",
        ),
        (
            "reservations: [{service: shop/web, addresses: [192.0.2.300]}]",
            "\"192.0.2.300\" is not an IP address",
        ),
        (
            "reservations: [{service: shop/web, addresses: []}]",
            "should have at least 1 items",
        ),
    ];
    for (i, (field, reason)) in refused.iter().enumerate() {
        let yaml =
            format!("metadata: {{name: bad-{i}}}\nspec: {{addresses: [192.0.2.0/24], {field}}}");
        let message = refusal(&cp, "IPPool", &yaml)
            .await
            .unwrap_or_else(|| panic!("{yaml} must be refused"));
        assert!(
            message.contains(reason),
            "{yaml}: message does not say why: {message}"
        );
    }
}

/// The converters' output, from configurations shaped as MetalLB's, kube-vip's and
/// Cilium's documentation show them, is accepted by the API server as it is.
#[tokio::test]
async fn converted_configurations_are_accepted_by_the_api_server() {
    herald_lab::init_tracing();
    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    let inputs = [
        (
            "convert-metallb",
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: production, namespace: metallb-system}\nspec: {addresses: [192.168.10.0/24, 192.168.9.1 - 192.168.9.5]}\n---\napiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {name: tor, namespace: metallb-system}\nspec: {myASN: 64500, peerASN: 64501, peerAddress: 10.0.0.1, holdTime: 9s, bfdProfile: fast}\n---\napiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {name: external, namespace: metallb-system}\nspec: {ipAddressPools: [production], communities: [vpn-only, '65535:65282'], localPref: 50}\n---\napiVersion: metallb.io/v1beta1\nkind: Community\nmetadata: {name: communities, namespace: metallb-system}\nspec: {communities: [{name: vpn-only, value: '1234:1'}]}",
            3,
        ),
        (
            "convert-kube-vip",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kubevip, namespace: kube-system}\ndata: {cidr-default: 192.168.0.200/29, range-development: 192.168.0.210-192.168.0.219, range-global: 192.168.1.220-192.168.1.230}",
            4,
        ),
        (
            "convert-cilium",
            "apiVersion: cilium.io/v2alpha1\nkind: CiliumLoadBalancerIPPool\nmetadata: {name: blue-pool}\nspec:\n  blocks: [{cidr: 20.0.10.0/24}, {cidr: '2004::0/112'}, {start: 20.0.20.100, stop: 20.0.20.200}]\n  serviceSelector: {matchLabels: {io.kubernetes.service.namespace: tenant-a}}\n---\napiVersion: cilium.io/v2alpha1\nkind: CiliumL2AnnouncementPolicy\nmetadata: {name: policy1}\nspec: {nodeSelector: {matchExpressions: [{key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}]}, interfaces: ['^eth0$'], loadBalancerIPs: true}",
            2,
        ),
    ];
    for (subcommand, input, objects) in inputs {
        let (yaml, warnings) = convert(subcommand, input);
        let docs: Vec<&str> = yaml
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .collect();
        assert_eq!(docs.len(), objects, "{subcommand}: {yaml}\n{warnings}");
        // Every document as it is, through the API server's schema and CEL rules.
        herald_lab::objects::apply(&client, &docs.join("\n---\n")).await;
    }
}
