//! Annotation, label and class names Herald reads or writes. MetalLB's, kube-vip's and
//! Cilium's keys are accepted so a migration does not have to touch every Service; several
//! set on one Service must agree, or the Service is refused saying which disagree.

/// Pick the pool to allocate from.
pub const POOL: &str = "herald.dev/pool";
/// Ask for specific IPs: one per family, comma-separated.
pub const IPS: &str = "herald.dev/ips";
/// Services with the same key may share one IP when their ports do not clash.
pub const SHARING_KEY: &str = "herald.dev/sharing-key";

/// MetalLB's current keys, accepted as aliases.
pub const METALLB_POOL: &str = "metallb.io/address-pool";
pub const METALLB_IPS: &str = "metallb.io/loadBalancerIPs";
pub const METALLB_SHARING_KEY: &str = "metallb.io/allow-shared-ip";
/// MetalLB's older keys, still found on many clusters.
pub const METALLB_LEGACY_POOL: &str = "metallb.universe.tf/address-pool";
pub const METALLB_LEGACY_IPS: &str = "metallb.universe.tf/loadBalancerIPs";
pub const METALLB_LEGACY_SHARING_KEY: &str = "metallb.universe.tf/allow-shared-ip";

/// Services sharing an IP across namespaces: each names the other's namespace (or `*`),
/// comma-separated. Without it, only Services of one namespace share an IP.
pub const SHARING_CROSS_NAMESPACE: &str = "herald.dev/sharing-cross-namespace";

/// kube-vip's and Cilium's keys, accepted as aliases too (migrating from them).
pub const KUBE_VIP_IPS: &str = "kube-vip.io/loadbalancerIPs";
pub const CILIUM_IPS: &str = "lbipam.cilium.io/ips";
pub const CILIUM_SHARING_KEY: &str = "lbipam.cilium.io/sharing-key";
pub const CILIUM_SHARING_CROSS_NAMESPACE: &str = "lbipam.cilium.io/sharing-cross-namespace";

/// Annotation keys in the order they are consulted for each setting.
pub const POOL_KEYS: [&str; 3] = [POOL, METALLB_POOL, METALLB_LEGACY_POOL];
pub const IPS_KEYS: [&str; 5] = [
    IPS,
    METALLB_IPS,
    METALLB_LEGACY_IPS,
    KUBE_VIP_IPS,
    CILIUM_IPS,
];
pub const SHARING_KEYS: [&str; 4] = [
    SHARING_KEY,
    METALLB_SHARING_KEY,
    METALLB_LEGACY_SHARING_KEY,
    CILIUM_SHARING_KEY,
];
pub const SHARING_CROSS_NAMESPACE_KEYS: [&str; 2] =
    [SHARING_CROSS_NAMESPACE, CILIUM_SHARING_CROSS_NAMESPACE];

/// Node label (well known in Kubernetes) that takes a node out of every load balancer.
pub const EXCLUDE_FROM_LB_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// `spec.loadBalancerClass` Herald serves by default.
pub const DEFAULT_LOAD_BALANCER_CLASS: &str = "herald.dev/l2";

/// Condition type Herald's controller owns in a Service's `status.conditions`; its presence
/// marks the status as Herald's.
pub const IP_ALLOCATED_CONDITION: &str = "herald.dev/IPAllocated";

/// Field manager name for the controller's server-side apply writes.
pub const CONTROLLER_MANAGER: &str = "herald-controller";
