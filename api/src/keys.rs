//! Annotation, label and class names Herald reads or writes. MetalLB's keys are accepted so a
//! migration does not have to touch every Service; when both are set, Herald's key wins.

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

/// Annotation keys in the order they are consulted for each setting.
pub const POOL_KEYS: [&str; 3] = [POOL, METALLB_POOL, METALLB_LEGACY_POOL];
pub const IPS_KEYS: [&str; 3] = [IPS, METALLB_IPS, METALLB_LEGACY_IPS];
pub const SHARING_KEYS: [&str; 3] = [SHARING_KEY, METALLB_SHARING_KEY, METALLB_LEGACY_SHARING_KEY];

/// Node label (well known in Kubernetes) that takes a node out of every load balancer.
pub const EXCLUDE_FROM_LB_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// `spec.loadBalancerClass` Herald serves by default.
pub const DEFAULT_LOAD_BALANCER_CLASS: &str = "herald.dev/l2";

/// Condition type Herald's controller owns in a Service's `status.conditions`; its presence
/// marks the status as Herald's.
pub const IP_ALLOCATED_CONDITION: &str = "herald.dev/IPAllocated";

/// Field manager name for the controller's server-side apply writes.
pub const CONTROLLER_MANAGER: &str = "herald-controller";
