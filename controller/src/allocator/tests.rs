use std::collections::BTreeSet;
use std::net::IpAddr;

use herald_api::AddressEntry;
use proptest::prelude::*;

use super::*;

fn pool(name: &str, entries: &[&str]) -> Pool {
    Pool {
        name: name.into(),
        ranges: entries
            .iter()
            .map(|e| AddressEntry::parse(e).expect("entry").range)
            .collect(),
        auto_assign: true,
        avoid_buggy_ips: false,
        terminating: false,
        disabled: false,
        reservations: Vec::new(),
        retain_for: None,
    }
}

fn request(service: &str, pools: &[&str]) -> Request {
    Request {
        service: service.into(),
        families: Families::single(IpFamily::V4),
        requested_ips: vec![],
        pool: None,
        eligible_pools: pools.iter().map(|p| p.to_string()).collect(),
        sharing: Sharing::default(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn ips(a: &[Assigned]) -> Vec<String> {
    a.iter().map(|a| a.ip.to_string()).collect()
}

#[test]
fn lowest_free_address_first_and_reused_after_release() {
    let mut a = Allocator::new();
    a.set_pools([pool("lan", &["192.0.2.10-192.0.2.12"])]);
    assert_eq!(
        ips(&a.allocate(&request("ns/a", &["lan"])).unwrap()),
        ["192.0.2.10"]
    );
    assert_eq!(
        ips(&a.allocate(&request("ns/b", &["lan"])).unwrap()),
        ["192.0.2.11"]
    );
    assert_eq!(
        ips(&a.allocate(&request("ns/c", &["lan"])).unwrap()),
        ["192.0.2.12"]
    );
    let err = a.allocate(&request("ns/d", &["lan"])).unwrap_err();
    assert_eq!(err.reason(), "PoolExhausted");
    assert_eq!(a.release("ns/b"), vec![ip("192.0.2.11")]);
    assert_eq!(
        ips(&a.allocate(&request("ns/d", &["lan"])).unwrap()),
        ["192.0.2.11"]
    );
    // Asking again changes nothing.
    assert_eq!(
        ips(&a.allocate(&request("ns/a", &["lan"])).unwrap()),
        ["192.0.2.10"]
    );
}

#[test]
fn avoid_buggy_ips_skips_dot_zero_and_dot_255() {
    let mut a = Allocator::new();
    let mut p = pool("lan", &["192.0.2.254-192.0.3.1"]);
    p.avoid_buggy_ips = true;
    a.set_pools([p.clone()]);
    let got: Vec<_> = (0..3)
        .filter_map(|i| a.allocate(&request(&format!("ns/s{i}"), &["lan"])).ok())
        .collect();
    assert_eq!(
        got.iter().flat_map(|g| ips(g)).collect::<Vec<_>>(),
        ["192.0.2.254", "192.0.3.1"]
    );
    assert_eq!(Allocator::capacity(&p, IpFamily::V4), 2);
}

#[test]
fn requested_ips_are_checked() {
    let mut a = Allocator::new();
    a.set_pools([
        pool("lan", &["192.0.2.0/24"]),
        pool("dmz", &["198.51.100.0/24"]),
    ]);
    let mut r = request("ns/a", &["lan"]);
    r.requested_ips = vec![ip("192.0.2.50")];
    assert_eq!(ips(&a.allocate(&r).unwrap()), ["192.0.2.50"]);

    let mut b = request("ns/b", &["lan"]);
    b.requested_ips = vec![ip("192.0.2.50")];
    let err = a.allocate(&b).unwrap_err();
    assert!(
        err.to_string()
            .contains("used by ns/a, which does not allow sharing"),
        "{err}"
    );

    b.requested_ips = vec![ip("203.0.113.1")];
    assert_eq!(
        a.allocate(&b).unwrap_err().to_string(),
        "requested IP 203.0.113.1 is not in any IPPool"
    );

    b.requested_ips = vec![ip("198.51.100.1")];
    b.pool = Some("lan".into());
    assert!(
        a.allocate(&b)
            .unwrap_err()
            .to_string()
            .contains("is in IPPool dmz, but the Service asks for IPPool \"lan\"")
    );
    // A failed request leaves nothing behind, and the holder is unaffected.
    assert!(a.assigned("ns/b").is_empty());
    assert_eq!(ips(a.assigned("ns/a")), ["192.0.2.50"]);
}

#[test]
fn pools_in_the_given_order_and_auto_assign_false_only_on_request() {
    let mut a = Allocator::new();
    let mut manual = pool("manual", &["192.0.2.0/30"]);
    manual.auto_assign = false;
    a.set_pools([manual, pool("second", &["198.51.100.0/30"])]);
    let got = a.allocate(&request("ns/a", &["manual", "second"])).unwrap();
    assert_eq!(got[0].pool.as_deref(), Some("second"));
    let mut r = request("ns/b", &["manual", "second"]);
    r.pool = Some("manual".into());
    assert_eq!(ips(&a.allocate(&r).unwrap()), ["192.0.2.0"]);
    r.pool = Some("missing".into());
    assert_eq!(a.allocate(&r).unwrap_err().reason(), "NoSuchPool");
}

#[test]
fn dual_stack_policies() {
    let mut a = Allocator::new();
    a.set_pools([
        pool("v4", &["192.0.2.1/32"]),
        pool("v6", &["2001:db8::/120"]),
    ]);
    let mut r = request("ns/dual", &["v4", "v6"]);
    r.families = Families {
        order: vec![IpFamily::V6, IpFamily::V4],
        all_required: true,
    };
    assert_eq!(ips(&a.allocate(&r).unwrap()), ["2001:db8::", "192.0.2.1"]);
    // IPv4 is exhausted now: RequireDualStack gets nothing, PreferDualStack gets IPv6 only.
    let mut r2 = request("ns/req", &["v4", "v6"]);
    r2.families = Families {
        order: vec![IpFamily::V6, IpFamily::V4],
        all_required: true,
    };
    let err = a.allocate(&r2).unwrap_err();
    assert!(err.to_string().contains("RequireDualStack"), "{err}");
    assert!(a.assigned("ns/req").is_empty());
    r2.families.all_required = false;
    assert_eq!(ips(&a.allocate(&r2).unwrap()), ["2001:db8::1"]);
    let mut v6only = request("ns/six", &["v4"]);
    v6only.families = Families::single(IpFamily::V6);
    assert_eq!(a.allocate(&v6only).unwrap_err().reason(), "NoEligiblePool");
}

/// A Service in `namespace/name` sharing under key `k` on TCP `port`, naming `cross`
/// namespaces in herald.dev/sharing-cross-namespace.
fn sharer(namespace: &str, name: &str, port: i32, cross: Option<&str>) -> Request {
    let mut r = request(&format!("{namespace}/{name}"), &["lan"]);
    r.sharing = Sharing::new(
        Some("k".into()),
        [Port {
            protocol: herald_api::service::Protocol::Tcp,
            port,
        }],
        None,
        namespace,
        cross,
    );
    r
}

#[test]
fn sharing_across_namespaces_needs_both_sides_to_agree() {
    let mut a = Allocator::new();
    a.set_pools([pool("lan", &["192.0.2.0/24"])]);
    assert_eq!(
        ips(&a.allocate(&sharer("shop", "web", 80, None)).unwrap()),
        ["192.0.2.0"]
    );
    // Same namespace: joins by key, as before.
    assert_eq!(
        ips(&a.allocate(&sharer("shop", "dns", 53, None)).unwrap()),
        ["192.0.2.0"]
    );
    // Another namespace knowing the key: its own IP; asking for the shared one, refused.
    let mut intruder = sharer("tenant-b", "steal", 443, Some("shop"));
    assert_eq!(ips(&a.allocate(&intruder).unwrap()), ["192.0.2.1"]);
    intruder.requested_ips = vec![ip("192.0.2.0")];
    let err = a.allocate(&intruder).unwrap_err();
    assert_eq!(err.reason(), "IPInUse");
    assert!(
        err.to_string().contains(
            "sharing an IP across namespaces needs each Service to name the other's namespace"
        ),
        "{err}"
    );
    // Both sides agree (one by name, the other by *): it joins.
    a.set_pools([pool("lan", &["192.0.2.0/24"])]);
    let mut web = sharer("shop", "web", 80, Some("tenant-b"));
    a.allocate(&web).unwrap();
    let mut dns = sharer("shop", "dns", 53, Some("*"));
    a.allocate(&dns).unwrap();
    assert_eq!(ips(&a.allocate(&intruder).unwrap()), ["192.0.2.0"]);
    assert!(a.unconsented_sharers("tenant-b/steal").is_empty());
    // One side withdraws its consent: the pair keeps the IP (nothing is renumbered) and is
    // told; a newcomer cannot join any more.
    web = sharer("shop", "web", 80, None);
    assert_eq!(ips(&a.allocate(&web).unwrap()), ["192.0.2.0"]);
    assert_eq!(
        a.unconsented_sharers("shop/web"),
        [(ip("192.0.2.0"), "tenant-b/steal".to_owned())]
    );
    dns = sharer("shop", "dns", 53, None);
    a.allocate(&dns).unwrap();
    let mut late = sharer("tenant-b", "late", 8443, Some("*"));
    late.requested_ips = vec![ip("192.0.2.0")];
    assert_eq!(a.allocate(&late).unwrap_err().reason(), "IPInUse");
}

#[test]
fn sharers_across_namespaces_from_before_consent_keep_their_ip_after_a_restart() {
    let mut a = Allocator::new();
    a.set_pools([pool("lan", &["192.0.2.0/24"])]);
    let web = sharer("shop", "web", 80, None);
    let other = sharer("tenant-b", "api", 443, None);
    a.restore("shop/web", &[ip("192.0.2.7")], &web.sharing)
        .unwrap();
    a.restore("tenant-b/api", &[ip("192.0.2.7")], &other.sharing)
        .unwrap();
    assert_eq!(ips(&a.allocate(&other).unwrap()), ["192.0.2.7"]);
    assert_eq!(ips(&a.allocate(&web).unwrap()), ["192.0.2.7"]);
    assert_eq!(a.unconsented_sharers("tenant-b/api").len(), 1);
}

#[test]
fn sharing_needs_the_same_key_and_distinct_ports() {
    let port = |p: i32| Port {
        protocol: herald_api::service::Protocol::Tcp,
        port: p,
    };
    let mut a = Allocator::new();
    a.set_pools([pool("lan", &["192.0.2.0/24"])]);
    let mut web = request("ns/web", &["lan"]);
    web.sharing = Sharing {
        key: Some("k".into()),
        ports: [port(80)].into(),
        local_selector: None,
        namespace: "ns".into(),
        cross_namespace: vec![],
    };
    let mut dns = request("ns/dns", &["lan"]);
    dns.sharing = Sharing {
        key: Some("k".into()),
        ports: [port(53)].into(),
        local_selector: None,
        namespace: "ns".into(),
        cross_namespace: vec![],
    };
    let mut clash = request("ns/clash", &["lan"]);
    clash.sharing = Sharing {
        key: Some("k".into()),
        ports: [port(80)].into(),
        local_selector: None,
        namespace: "ns".into(),
        cross_namespace: vec![],
    };
    assert_eq!(ips(&a.allocate(&web).unwrap()), ["192.0.2.0"]);
    assert_eq!(
        ips(&a.allocate(&dns).unwrap()),
        ["192.0.2.0"],
        "same key, other port: shared"
    );
    assert_eq!(
        ips(&a.allocate(&clash).unwrap()),
        ["192.0.2.1"],
        "port clash: an IP of its own"
    );
    clash.requested_ips = vec![ip("192.0.2.0")];
    let err = a.allocate(&clash).unwrap_err();
    assert!(
        err.to_string().contains("port 80/TCP clashes with ns/web"),
        "{err}"
    );
    // The shared IP is free only when both sharers are gone.
    assert!(a.release("ns/web").is_empty());
    assert_eq!(a.release("ns/dns"), vec![ip("192.0.2.0")]);
}

#[test]
fn foreign_and_restored_ips_are_never_handed_out() {
    let mut a = Allocator::new();
    a.set_pools([pool("lan", &["192.0.2.0/30"])]);
    a.reserve_foreign("other/lb", ip("192.0.2.0"));
    a.restore("ns/old", &[ip("192.0.2.2")], &Sharing::default())
        .unwrap();
    assert!(
        a.restore("ns/dup", &[ip("192.0.2.2")], &Sharing::default())
            .is_err()
    );
    let got: Vec<_> = (0..4)
        .filter_map(|i| a.allocate(&request(&format!("ns/n{i}"), &["lan"])).ok())
        .collect();
    assert_eq!(
        got.iter().flat_map(|g| ips(g)).collect::<Vec<_>>(),
        ["192.0.2.1", "192.0.2.3"]
    );
    // The other load balancer's Service goes away: its IP is Herald's to give again.
    a.release_foreign("other/lb");
    let next = a.allocate(&request("ns/next", &["lan"])).unwrap();
    assert_eq!(ips(&next), ["192.0.2.0"]);
}

#[test]
fn shrinking_a_pool_keeps_the_assignment_but_not_the_pool() {
    let mut a = Allocator::new();
    a.set_pools([pool("lan", &["192.0.2.0/30"])]);
    a.allocate(&request("ns/a", &["lan"])).unwrap();
    a.set_pools([pool("lan", &["192.0.2.2/31"])]);
    assert_eq!(
        a.assigned("ns/a"),
        [Assigned {
            ip: ip("192.0.2.0"),
            pool: None
        }]
    );
    // Asking again moves the Service into the pool it may use.
    assert_eq!(
        ips(&a.allocate(&request("ns/a", &["lan"])).unwrap()),
        ["192.0.2.2"]
    );
}

#[test]
fn huge_ipv6_pools_cost_nothing_until_used() {
    let mut a = Allocator::new();
    a.set_pools([pool("big", &["2001:db8::/64", "2001:db8:1::/48"])]);
    let p = a.pool("big").unwrap().clone();
    assert_eq!(
        Allocator::capacity(&p, IpFamily::V6),
        (1u128 << 64) + (1u128 << 80)
    );
    let mut r = request("ns/a", &["big"]);
    r.families = Families::single(IpFamily::V6);
    assert_eq!(ips(&a.allocate(&r).unwrap()), ["2001:db8::"]);
    assert_eq!(a.assigned_in(&p, IpFamily::V6), 1);
    let all = pool("all", &["::/0"]);
    assert_eq!(Allocator::capacity(&all, IpFamily::V6), u128::MAX);
}

#[derive(Debug, Clone)]
enum Op {
    Alloc(u8, bool, Option<u8>),
    Release(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..40, any::<bool>(), proptest::option::of(any::<u8>())).prop_map(|(s, v6, want)| Op::Alloc(s, v6, want)),
        1 => (0u8..40).prop_map(Op::Release),
    ]
}

proptest! {
    /// Whatever the sequence of requests and releases: every IP handed out is in its pool,
    /// no IP is held by two Services, and a free address is reused before the pool is declared
    /// exhausted.
    #[test]
    fn never_outside_the_pool_never_twice(ops in proptest::collection::vec(op(), 1..200), buggy in any::<bool>()) {
        let mut a = Allocator::new();
        let mut p4 = pool("p", &["192.0.2.250-192.0.3.4", "198.51.100.0/29", "2001:db8::/64", "2001:db8:1::/120"]);
        p4.avoid_buggy_ips = buggy;
        a.set_pools([p4.clone()]);
        for op in ops {
            match op {
                Op::Alloc(s, v6, want) => {
                    let mut r = request(&format!("ns/s{s}"), &["p"]);
                    if v6 { r.families = Families::single(IpFamily::V6); }
                    if let Some(w) = want.filter(|w| w % 4 == 0) {
                        r.requested_ips = vec![if v6 { ip(&format!("2001:db8::{w:x}")) } else { ip(&format!("198.51.100.{}", w % 8)) }];
                    }
                    match a.allocate(&r) {
                        Ok(got) => {
                            prop_assert_eq!(got.len(), 1);
                            prop_assert!(p4.contains(got[0].ip), "{} outside the pool", got[0].ip);
                            prop_assert_eq!(IpFamily::of(got[0].ip), if v6 { IpFamily::V6 } else { IpFamily::V4 });
                        }
                        Err(AllocError::Exhausted { .. }) => {
                            let used = a.assigned_in(&p4, IpFamily::V4);
                            prop_assert_eq!(used, Allocator::capacity(&p4, IpFamily::V4), "exhausted with free addresses left");
                        }
                        Err(AllocError::NotInPool { ip }) => prop_assert!(buggy && is_buggy(ip), "{ip} is in the pool"),
                        Err(e) => prop_assert!(matches!(e, AllocError::InUse { .. }), "{e}"),
                    }
                }
                Op::Release(s) => { a.release(&format!("ns/s{s}")); }
            }
            let mut seen = BTreeSet::new();
            for s in 0..40u8 {
                for got in a.assigned(&format!("ns/s{s}")) {
                    prop_assert!(seen.insert(got.ip), "{} held twice", got.ip);
                }
            }
        }
    }
}

#[test]
fn a_pool_reserved_for_others_is_never_used_by_ip_or_by_name() {
    let mut a = Allocator::new();
    a.set_pools([
        pool("shared", &["192.0.2.0/24"]),
        pool("team-a", &["198.51.100.0/24"]),
    ]);
    // ns/b may use `shared` only (team-a's serviceAllocation admits another namespace).
    let mut r = request("ns/b", &["shared"]);
    r.requested_ips = vec![ip("198.51.100.7")];
    let err = a.allocate(&r).unwrap_err();
    assert_eq!(err.reason(), "IPNotAllowed");
    assert_eq!(
        err.to_string(),
        "requested IP 198.51.100.7 is in IPPool team-a, whose serviceAllocation admits other namespaces or Services"
    );
    r.requested_ips.clear();
    r.pool = Some("team-a".into());
    assert_eq!(a.allocate(&r).unwrap_err().reason(), "PoolNotAllowed");
    // By IP and by name together.
    r.requested_ips = vec![ip("198.51.100.7")];
    assert_eq!(a.allocate(&r).unwrap_err().reason(), "PoolNotAllowed");
    assert!(a.assigned("ns/b").is_empty());
    // The tenant itself gets it either way.
    let mut t = request("team-a/web", &["team-a", "shared"]);
    t.requested_ips = vec![ip("198.51.100.7")];
    assert_eq!(ips(&a.allocate(&t).unwrap()), ["198.51.100.7"]);
}

#[test]
fn a_service_no_longer_admitted_by_its_pool_moves() {
    let mut a = Allocator::new();
    a.set_pools([
        pool("shared", &["192.0.2.0/24"]),
        pool("team-a", &["198.51.100.0/24"]),
    ]);
    let r = request("team-a/web", &["team-a", "shared"]);
    assert_eq!(ips(&a.allocate(&r).unwrap()), ["198.51.100.0"]);
    // Its namespace lost the label the pool selects: the address goes back.
    let r = request("team-a/web", &["shared"]);
    assert_eq!(ips(&a.allocate(&r).unwrap()), ["192.0.2.0"]);
    // An address restored from a status (after a restart) is held to the same rule.
    a.restore("x/y", &[ip("198.51.100.9")], &Sharing::default())
        .unwrap();
    assert_eq!(
        ips(&a.allocate(&request("x/y", &["shared"])).unwrap()),
        ["192.0.2.1"]
    );
}

#[test]
fn requested_ips_must_match_the_service_families() {
    let mut a = Allocator::new();
    a.set_pools([pool("lan", &["192.0.2.0/24", "2001:db8::/64"])]);
    let mut r = request("ns/v6", &["lan"]);
    r.families = Families::single(IpFamily::V6);
    r.requested_ips = vec![ip("192.0.2.5")];
    let err = a.allocate(&r).unwrap_err();
    assert_eq!(err.reason(), "FamilyMismatch");
    assert_eq!(
        err.to_string(),
        "requested IP 192.0.2.5 is IPv4, but the Service's ipFamilies are [IPv6]"
    );
    let mut r = request("ns/v4", &["lan"]);
    r.requested_ips = vec![ip("192.0.2.5"), ip("2001:db8::5")];
    assert_eq!(a.allocate(&r).unwrap_err().reason(), "FamilyMismatch");
    assert!(a.assigned("ns/v4").is_empty());
    // RequireDualStack with one address asked for: refused, not half-served.
    let mut r = request("ns/dual", &["lan"]);
    r.families = Families {
        order: vec![IpFamily::V4, IpFamily::V6],
        all_required: true,
    };
    r.requested_ips = vec![ip("192.0.2.5")];
    assert_eq!(a.allocate(&r).unwrap_err().reason(), "InvalidRequest");
    r.requested_ips.push(ip("2001:db8::5"));
    assert_eq!(ips(&a.allocate(&r).unwrap()), ["192.0.2.5", "2001:db8::5"]);
}

#[test]
fn prefer_dual_stack_gains_its_second_family_when_a_pool_has_it() {
    let mut a = Allocator::new();
    a.set_pools([pool("lan", &["192.0.2.0/24"])]);
    let mut r = request("ns/prefer", &["lan"]);
    r.families = Families {
        order: vec![IpFamily::V4, IpFamily::V6],
        all_required: false,
    };
    assert_eq!(ips(&a.allocate(&r).unwrap()), ["192.0.2.0"]);
    a.set_pools([pool("lan", &["192.0.2.0/24", "2001:db8::/64"])]);
    // The IPv4 address stays; IPv6 is added.
    assert_eq!(ips(&a.allocate(&r).unwrap()), ["192.0.2.0", "2001:db8::"]);
    assert_eq!(ips(a.assigned("ns/prefer")), ["192.0.2.0", "2001:db8::"]);
}

#[test]
fn a_pool_being_deleted_keeps_its_holders_and_gives_nothing_new() {
    let mut a = Allocator::new();
    a.set_pools([pool("old", &["192.0.2.0/30"])]);
    let r = request("ns/a", &["old", "new"]);
    assert_eq!(ips(&a.allocate(&r).unwrap()), ["192.0.2.0"]);
    let mut old = pool("old", &["192.0.2.0/30"]);
    old.terminating = true;
    a.set_pools([old.clone()]);
    assert_eq!(ips(&a.allocate(&r).unwrap()), ["192.0.2.0"]);
    let err = a.allocate(&request("ns/b", &["old"])).unwrap_err();
    assert_eq!(err.reason(), "NoEligiblePool");
    let mut by_ip = request("ns/c", &["old"]);
    by_ip.requested_ips = vec![ip("192.0.2.1")];
    assert_eq!(a.allocate(&by_ip).unwrap_err().reason(), "PoolTerminating");
    // An equivalent pool comes in: the holder keeps its address, now counted against it.
    a.set_pools([old, pool("new", &["192.0.2.0/30"])]);
    let kept = a.allocate(&r).unwrap();
    assert_eq!(
        kept,
        [Assigned {
            ip: ip("192.0.2.0"),
            pool: Some("new".into())
        }]
    );
}

#[test]
fn a_disabled_pool_keeps_its_holders_gives_nothing_new_and_serves_again_when_enabled() {
    let mut a = Allocator::new();
    a.set_pools([
        pool("drained", &["192.0.2.0/30"]),
        pool("next", &["198.51.100.0/30"]),
    ]);
    let holder = request("ns/holder", &["drained"]);
    assert_eq!(ips(&a.allocate(&holder).unwrap()), ["192.0.2.0"]);
    let mut drained = pool("drained", &["192.0.2.0/30"]);
    drained.disabled = true;
    a.set_pools([drained, pool("next", &["198.51.100.0/30"])]);
    // The holder keeps its address, re-allocated as often as it likes.
    assert_eq!(ips(&a.allocate(&holder).unwrap()), ["192.0.2.0"]);
    // Automatic picks go to the other pool.
    let auto = request("ns/auto", &["drained", "next"]);
    assert_eq!(ips(&a.allocate(&auto).unwrap()), ["198.51.100.0"]);
    // By name or by IP: refused, saying why.
    let mut by_name = request("ns/by-name", &["drained", "next"]);
    by_name.pool = Some("drained".into());
    let err = a.allocate(&by_name).unwrap_err();
    assert_eq!(err.reason(), "PoolDisabled");
    assert_eq!(
        err.to_string(),
        "IPPool \"drained\" is disabled (spec.disabled, drained): it gives no new addresses"
    );
    let mut by_ip = request("ns/by-ip", &["drained", "next"]);
    by_ip.requested_ips = vec![ip("192.0.2.1")];
    assert_eq!(a.allocate(&by_ip).unwrap_err().reason(), "PoolDisabled");
    assert_eq!(a.services_in("drained"), 1);
    // Enabled again: it serves as before.
    a.set_pools([
        pool("drained", &["192.0.2.0/30"]),
        pool("next", &["198.51.100.0/30"]),
    ]);
    assert_eq!(ips(&a.allocate(&by_name).unwrap()), ["192.0.2.1"]);
}

/// One request in a random scenario.
#[derive(Debug, Clone)]
struct RandomRequest {
    service: u8,
    /// Which of the four pools the Service's serviceAllocation admits (bit i: pool i).
    eligible: u8,
    families: (bool, bool, u8),
    /// 0: automatic, 1: by pool, 2: by IP.
    how: u8,
    pick: u8,
}

fn random_request() -> impl Strategy<Value = RandomRequest> {
    (
        0u8..12,
        any::<u8>(),
        (any::<bool>(), any::<bool>(), 0u8..3),
        0u8..3,
        any::<u8>(),
    )
        .prop_map(|(service, eligible, families, how, pick)| RandomRequest {
            service,
            eligible,
            families,
            how,
            pick,
        })
}

proptest! {
    /// Whatever a Service asks for (an IP, a pool, or nothing) and whichever pools admit it:
    /// it never holds an address from a pool it may not use, nor of a family it did not ask
    /// for, and no address is held twice.
    #[test]
    fn never_from_a_pool_it_may_not_use_nor_of_a_family_it_did_not_ask_for(
        reqs in proptest::collection::vec(random_request(), 1..80),
        auto in proptest::collection::vec(any::<bool>(), 4),
    ) {
        let pools = [
            pool("p0", &["192.0.2.0/30", "2001:db8::/126"]),
            pool("p1", &["192.0.2.2-192.0.2.5"]),
            pool("p2", &["2001:db8::2-2001:db8::5", "198.51.100.0/31"]),
            pool("p3", &["198.51.100.0/30", "2001:db8:1::/127"]),
        ];
        let pools: Vec<Pool> = pools.into_iter().zip(&auto).map(|(mut p, a)| { p.auto_assign = *a; p }).collect();
        let mut a = Allocator::new();
        a.set_pools(pools.clone());
        let candidates: Vec<IpAddr> = ["192.0.2.1", "192.0.2.3", "192.0.2.5", "198.51.100.1", "198.51.100.3",
            "2001:db8::1", "2001:db8::4", "2001:db8:1::1", "203.0.113.1"].iter().map(|s| ip(s)).collect();
        let mut admitted: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for q in reqs {
            let service = format!("ns/s{}", q.service);
            let eligible: Vec<String> = (0..4).filter(|i| q.eligible & (1 << i) != 0).map(|i| format!("p{i}")).collect();
            let (v4_first, dual, policy) = q.families;
            let mut order = if v4_first { vec![IpFamily::V4, IpFamily::V6] } else { vec![IpFamily::V6, IpFamily::V4] };
            if !dual { order.truncate(1); }
            let mut r = request(&service, &[]);
            r.eligible_pools = eligible.clone();
            r.families = Families { order, all_required: policy != 1 };
            match q.how {
                1 => r.pool = Some(format!("p{}", q.pick % 5)),
                2 => {
                    r.requested_ips = vec![candidates[usize::from(q.pick) % candidates.len()]];
                    if q.pick % 3 == 0 {
                        r.requested_ips.push(candidates[usize::from(q.pick / 3) % candidates.len()]);
                    }
                }
                _ => {}
            }
            let result = a.allocate(&r);
            admitted.insert(service.clone(), eligible.clone());
            if let Ok(got) = &result {
                prop_assert_eq!(got, &a.assigned(&service).to_vec());
            }
            // Every Service's addresses, this one's and the others' after it moved.
            let mut seen = BTreeSet::new();
            for (svc, allowed) in &admitted {
                for held in a.assigned(svc) {
                    prop_assert!(seen.insert(held.ip), "{} held twice", held.ip);
                    let ok = pools.iter().any(|p| allowed.iter().any(|n| **n == *p.name) && p.contains(held.ip));
                    prop_assert!(ok, "{svc} holds {} from no pool it may use ({allowed:?})", held.ip);
                }
            }
            for held in a.assigned(&service) {
                prop_assert!(r.families.order.contains(&IpFamily::of(held.ip)), "{} not of {:?}", held.ip, r.families);
                if let Some(name) = &r.pool {
                    prop_assert_eq!(held.pool.as_deref(), Some(name.as_str()));
                }
            }
        }
    }
}

/// A pool name a Service asks for is user text (an annotation of any size): every message
/// that names it quotes at most 64 bytes of it and still says what is wrong.
#[test]
fn a_requested_pool_name_is_quoted_bounded_in_every_message_that_names_it() {
    let huge = "p".repeat(100 * 1024);
    let quoted = format!("\"{}...\"", "p".repeat(61));
    let mut a = Allocator::new();
    let mut deleted = pool(&huge, &["192.0.2.0/30"]);
    deleted.terminating = true;
    a.set_pools([deleted, pool("dmz", &["198.51.100.0/30"])]);
    let asking = |eligible: &[&str]| {
        let mut r = request("ns/a", eligible);
        r.pool = Some(huge.clone());
        r
    };
    let mut missing = asking(&[]);
    missing.pool = Some(format!("{huge}x"));
    let mut wrong_pool = asking(&[&huge, "dmz"]);
    wrong_pool.requested_ips = vec![ip("198.51.100.1")];
    for (request, reason, ending) in [
        (missing, "NoSuchPool", "does not exist"),
        (
            asking(&["dmz"]),
            "PoolNotAllowed",
            "admits other namespaces or Services",
        ),
        (
            asking(&[&huge]),
            "PoolTerminating",
            "it gives no new addresses",
        ),
        (wrong_pool, "WrongPool", &quoted),
    ] {
        let err = a.allocate(&request).unwrap_err();
        let message = err.to_string();
        assert_eq!(err.reason(), reason, "{message:.200}");
        assert!(message.len() < 200, "{reason}: {} bytes", message.len());
        assert!(message.contains(&quoted), "{reason}: {message}");
        assert!(message.ends_with(ending), "{reason}: {message}");
    }
}

fn reserving(mut pool: Pool, reservations: &[(&str, &str)]) -> Pool {
    pool.reservations = reservations
        .iter()
        .map(|(a, s)| (ip(a), ServiceKey::from(*s)))
        .collect();
    pool
}

fn at(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

#[test]
fn a_reserved_address_goes_only_to_its_service_however_it_asks() {
    let mut a = Allocator::new();
    a.set_pools([reserving(
        pool("lan", &["192.0.2.10-192.0.2.12"]),
        &[("192.0.2.10", "shop/web")],
    )]);
    // Others skip it, automatically and by asking for it.
    assert_eq!(
        ips(&a.allocate(&request("ns/a", &["lan"])).unwrap()),
        ["192.0.2.11"]
    );
    let mut asks = request("ns/b", &["lan"]);
    asks.requested_ips = vec![ip("192.0.2.10")];
    let err = a.allocate(&asks).unwrap_err();
    assert_eq!(err.reason(), "IPReserved");
    assert_eq!(
        err.to_string(),
        "requested IP 192.0.2.10 cannot be used: IPPool lan reserves it for Service shop/web"
    );
    assert_eq!(
        ips(&a.allocate(&request("ns/c", &["lan"])).unwrap()),
        ["192.0.2.12"]
    );
    assert_eq!(
        a.allocate(&request("ns/d", &["lan"])).unwrap_err().reason(),
        "PoolExhausted",
        "the reserved address is not for anyone else"
    );
    // Its Service gets it, deleted and created again as often as it likes.
    for _ in 0..2 {
        assert_eq!(
            ips(&a.allocate(&request("shop/web", &["lan"])).unwrap()),
            ["192.0.2.10"]
        );
        assert_eq!(a.release("shop/web"), [ip("192.0.2.10")]);
    }
    // Only from a pool it may use.
    assert_eq!(
        a.allocate(&request("shop/web", &["other"]))
            .unwrap_err()
            .reason(),
        "NoEligiblePool"
    );
}

#[test]
fn a_service_holding_an_address_reserved_later_keeps_it() {
    let mut a = Allocator::new();
    a.set_pools([pool("lan", &["192.0.2.10-192.0.2.11"])]);
    a.allocate(&request("ns/a", &["lan"])).unwrap();
    let lan = reserving(
        pool("lan", &["192.0.2.10-192.0.2.11"]),
        &[("192.0.2.10", "shop/web")],
    );
    a.set_pools([lan.clone()]);
    assert_eq!(
        ips(&a.allocate(&request("ns/a", &["lan"])).unwrap()),
        ["192.0.2.10"],
        "never taken from the Service holding it"
    );
    assert_eq!(
        a.reservations_taken(&lan),
        [(ip("192.0.2.10"), "shop/web".into(), "ns/a".into())]
    );
    // Once it gives it up, it is the reserved Service's.
    a.release("ns/a");
    assert!(a.reservations_taken(&lan).is_empty());
    assert_eq!(
        ips(&a.allocate(&request("ns/x", &["lan"])).unwrap()),
        ["192.0.2.11"]
    );
    assert_eq!(
        ips(&a.allocate(&request("shop/web", &["lan"])).unwrap()),
        ["192.0.2.10"]
    );
}

#[test]
fn a_retained_address_waits_for_its_service_until_it_expires() {
    let mut a = Allocator::new();
    a.set_pools([pool("lan", &["192.0.2.10-192.0.2.11"])]);
    a.allocate(&request("shop/web", &["lan"])).unwrap();
    let freed = a.release("shop/web");
    let until = at("2026-01-01T01:00:00Z");
    assert!(a.retain(freed[0], "shop/web", until, 10));
    assert_eq!(a.next_expiry(), Some(until));
    // Someone else: the next address; asking for it: refused, saying until when.
    assert_eq!(
        ips(&a.allocate(&request("ns/a", &["lan"])).unwrap()),
        ["192.0.2.11"]
    );
    a.release("ns/a");
    let mut asks = request("ns/b", &["lan"]);
    asks.requested_ips = vec![ip("192.0.2.10")];
    let err = a.allocate(&asks).unwrap_err();
    assert_eq!(err.reason(), "IPReserved");
    assert!(
        err.to_string()
            .contains("kept for Service shop/web, which gave it up, until 2026-01-01T01:00:00Z"),
        "{err}"
    );
    // Created again: its address back, and the retention is over.
    assert_eq!(
        ips(&a.allocate(&request("shop/web", &["lan"])).unwrap()),
        ["192.0.2.10"]
    );
    assert_eq!(a.next_expiry(), None);
    // Given up again and left to expire: anyone's.
    a.release("shop/web");
    assert!(a.retain(ip("192.0.2.10"), "shop/web", until, 10));
    assert!(!a.expire(at("2026-01-01T00:59:59Z")));
    assert!(a.expire(until));
    assert_eq!(
        ips(&a.allocate(&request("ns/c", &["lan"])).unwrap()),
        ["192.0.2.10"]
    );
}

#[test]
fn retention_is_bounded_per_pool_and_never_of_an_address_in_use() {
    let mut a = Allocator::new();
    let lan = pool("lan", &["192.0.2.0/24"]);
    a.set_pools([lan.clone()]);
    let until = at("2026-01-01T01:00:00Z");
    assert!(a.retain(ip("192.0.2.1"), "ns/a", until, 2));
    assert!(a.retain(ip("192.0.2.2"), "ns/b", until, 2));
    assert!(
        !a.retain(ip("192.0.2.3"), "ns/c", until, 2),
        "over the bound"
    );
    assert!(
        !a.retain(ip("198.51.100.1"), "ns/c", until, 2),
        "in no pool"
    );
    a.allocate(&request("ns/x", &["lan"])).unwrap();
    assert!(
        !a.retain(ip("192.0.2.0"), "ns/c", until, 10),
        "held by ns/x"
    );
    assert_eq!(a.retained_in(&lan).count(), 2);
    // Kept addresses are not available to others, and counted so.
    assert_eq!(a.kept_in(&lan, IpFamily::V4), 2);
}

#[test]
fn a_retention_ends_when_its_service_comes_back_with_other_addresses_or_the_pool_stops_retaining() {
    let mut a = Allocator::new();
    let mut lan = pool("lan", &["192.0.2.10-192.0.2.12"]);
    lan.retain_for = Some(std::time::Duration::from_secs(3600));
    a.set_pools([lan.clone()]);
    let until = at("2026-01-01T01:00:00Z");
    assert!(a.retain(ip("192.0.2.10"), "shop/web", until, 10));
    // Back, asking for another address: the kept one is anyone's again.
    let mut asks = request("shop/web", &["lan"]);
    asks.requested_ips = vec![ip("192.0.2.11")];
    assert_eq!(ips(&a.allocate(&asks).unwrap()), ["192.0.2.11"]);
    assert_eq!(a.next_expiry(), None);
    assert_eq!(
        ips(&a.allocate(&request("ns/a", &["lan"])).unwrap()),
        ["192.0.2.10"]
    );
    // retainFor removed from the pool: what it kept is free.
    a.release("ns/a");
    assert!(a.retain(ip("192.0.2.10"), "ns/a", until, 10));
    assert!(!a.set_pools([lan.clone()]), "nothing changed");
    lan.retain_for = None;
    assert!(a.set_pools([lan]));
    assert_eq!(
        ips(&a.allocate(&request("ns/b", &["lan"])).unwrap()),
        ["192.0.2.10"]
    );
}
