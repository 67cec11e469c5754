//! The `Allocator`: which Service holds which IP. Pure: no I/O, no clock, no hash-map order,
//! so the same pools and the same sequence of requests always give the same IPs.
//!
//! Memory grows with the IPs in use, never with the size of a pool: free addresses are found
//! with a per-range cursor (every address below it has been handed out at least once) plus the
//! set of addresses below the cursor that were freed since.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use herald_api::IpRange;
use herald_api::address::to_u128;
use herald_api::events::quote;
use herald_api::service::IpFamily;
use k8s_openapi::jiff::Timestamp;

/// `namespace/name` of a Service: one allocation per Service, shared by every map that
/// names it (at 100,000 Services each copy of the names is ~3 MB).
pub type ServiceKey = Arc<str>;

/// A pool as the allocator sees it: valid ranges only (the caller reports invalid entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Shared with every `Assigned` from this pool.
    pub name: Arc<str>,
    pub ranges: Vec<IpRange>,
    pub auto_assign: bool,
    pub avoid_buggy_ips: bool,
    /// Deleted, kept by its finalizer while Services hold its addresses: they keep them,
    /// nobody gets a new one from it.
    pub terminating: bool,
    /// Drained (`spec.disabled`): the same as terminating, the pool staying.
    pub disabled: bool,
    /// Addresses only one Service may get (`spec.reservations`), inside `ranges`.
    pub reservations: Vec<(IpAddr, ServiceKey)>,
    /// How long an address a Service gave up stays kept for it (`spec.retainFor`).
    pub retain_for: Option<std::time::Duration>,
}

impl Pool {
    /// It gives no new addresses (deleted or disabled); who holds one keeps it.
    pub fn closed(&self) -> bool {
        self.terminating || self.disabled
    }

    /// Why it gives no new addresses, as the error to report.
    fn closed_error(&self) -> AllocError {
        if self.terminating {
            AllocError::PoolTerminating(self.name.to_string())
        } else {
            AllocError::PoolDisabled(self.name.to_string())
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip)) && !(self.avoid_buggy_ips && is_buggy(ip))
    }
}

/// A port a Service exposes, for deciding whether two Services can share an IP.
pub use herald_api::service::LbPort as Port;

/// What a Service brings to a shared IP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sharing {
    /// `herald.dev/sharing-key` (or MetalLB's); `None`: the Service shares with nobody.
    pub key: Option<String>,
    /// Sorted, no duplicates (`Sharing::new` sorts). A `Vec`, not a `BTreeSet`: a set's node
    /// costs hundreds of bytes even for one port, times every IP in use.
    pub ports: Vec<Port>,
    /// For `externalTrafficPolicy: Local`: the pod selector, which sharers must have in common
    /// (the IP is announced from one node, so it must be a node with endpoints of all of them).
    pub local_selector: Option<BTreeMap<String, String>>,
    /// The Service's namespace: a sharer in another needs consent both ways.
    pub namespace: String,
    /// Other namespaces whose Services may share with this one (`*`: any), from
    /// `herald.dev/sharing-cross-namespace`.
    pub cross_namespace: Vec<String>,
}

/// Why two Services cannot share an IP.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Conflict {
    /// Never (keys, ports, pods).
    Refused(String),
    /// They are in different namespaces and not both agree: a join is refused, a pair
    /// sharing from before is tolerated (and told what to add).
    NoConsent(String),
}

/// Whether sharing across namespaces without consent is refused (a join) or tolerated (a
/// Service keeping what it holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consent {
    Required,
    Tolerated,
}

impl Sharing {
    pub fn new(
        key: Option<String>,
        ports: impl IntoIterator<Item = Port>,
        local_selector: Option<BTreeMap<String, String>>,
        namespace: &str,
        cross_namespace: Option<&str>,
    ) -> Self {
        // Without a key the IP is shared with nobody, whatever the ports and pods: keep
        // neither (no allocation per Service that does not share).
        if key.is_none() {
            return Self::default();
        }
        let mut ports: Vec<Port> = ports.into_iter().collect();
        ports.sort();
        ports.dedup();
        Self {
            key,
            ports,
            local_selector,
            namespace: namespace.to_owned(),
            cross_namespace: cross_namespace
                .into_iter()
                .flat_map(|list| list.split(','))
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }

    /// Whether this Service agrees to share with one in `namespace`.
    fn allows(&self, namespace: &str) -> bool {
        self.namespace == namespace
            || self
                .cross_namespace
                .iter()
                .any(|n| n == "*" || n == namespace)
    }

    /// Why `self` cannot share an IP with `other`, or `None` when it can.
    fn conflict(&self, other: &Sharing, other_name: &str) -> Option<Conflict> {
        match (&self.key, &other.key) {
            (Some(a), Some(b)) if a == b => {}
            (_, None) => {
                return Some(Conflict::Refused(format!(
                    "it is used by {other_name}, which does not allow sharing"
                )));
            }
            (_, Some(_)) => {
                return Some(Conflict::Refused(format!(
                    "it is used by {other_name} with a different sharing key"
                )));
            }
        }
        if let Some(port) = self.ports.iter().find(|p| other.ports.contains(p)) {
            return Some(Conflict::Refused(format!(
                "port {}/{} clashes with {other_name}",
                port.port, port.protocol
            )));
        }
        if (self.local_selector.is_some() || other.local_selector.is_some())
            && self.local_selector != other.local_selector
        {
            return Some(Conflict::Refused(format!(
                "{other_name} selects other pods, and Services sharing an IP with externalTrafficPolicy Local must select the same pods"
            )));
        }
        if !(self.allows(&other.namespace) && other.allows(&self.namespace)) {
            return Some(Conflict::NoConsent(format!(
                "it is used by {other_name}, in namespace {}: sharing an IP across namespaces needs each Service to name the other's namespace (or *) in {}",
                other.namespace,
                herald_api::keys::SHARING_CROSS_NAMESPACE
            )));
        }
        None
    }
}

/// Which families a Service needs, in its preferred order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Families {
    pub order: Vec<IpFamily>,
    /// RequireDualStack: all of `order` or nothing. Otherwise the first is required and the
    /// second (PreferDualStack) is best effort.
    pub all_required: bool,
}

impl Families {
    pub fn single(family: IpFamily) -> Self {
        Self {
            order: vec![family],
            all_required: true,
        }
    }

    /// How many families the Service must get.
    fn required(&self) -> usize {
        if self.all_required {
            self.order.len()
        } else {
            1
        }
    }
}

impl std::fmt::Display for Families {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.order.iter().map(ToString::to_string).collect();
        write!(f, "[{}]", names.join(", "))
    }
}

/// What one Service asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub service: ServiceKey,
    pub families: Families,
    /// Specific IPs (at most one per family).
    pub requested_ips: Vec<IpAddr>,
    /// A pool asked for by name.
    pub pool: Option<String>,
    /// Pools whose `serviceAllocation` admits this Service, in the order to try them
    /// (priority, name). The only pools the Service's addresses may come from, whatever it
    /// asks for: by IP, by pool or automatically.
    pub eligible_pools: Vec<String>,
    pub sharing: Sharing,
}

/// One IP given to a Service and the pool it came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Assigned {
    pub ip: IpAddr,
    /// `None` when the IP was found in the Service's status but is in no pool any more.
    pub pool: Option<Arc<str>>,
}

/// Why a Service got no IP. Variants double as metric labels (`reason()`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("requested IP {ip} is not in any IPPool")]
    NotInPool { ip: IpAddr },
    #[error(
        "requested IP {ip} is in IPPool {pool}, but the Service asks for IPPool {}",
        quote(requested)
    )]
    WrongPool {
        ip: IpAddr,
        pool: String,
        requested: String,
    },
    #[error("requested IP {ip} cannot be used: {why}")]
    InUse { ip: IpAddr, why: String },
    #[error("requested IP {ip} cannot be used: {why}")]
    Kept { ip: IpAddr, why: String },
    #[error(
        "requested IPs {0} are of the same family: ask for at most one IPv4 and one IPv6 address"
    )]
    SameFamilyTwice(String),
    #[error("IPPool {} does not exist", quote(.0))]
    NoSuchPool(String),
    #[error(
        "IPPool {} does not serve this Service: its serviceAllocation admits other namespaces or Services",
        quote(.0)
    )]
    PoolNotAllowed(String),
    #[error(
        "requested IP {ip} is in IPPool {pool}, whose serviceAllocation admits other namespaces or Services"
    )]
    IpNotAllowed { ip: IpAddr, pool: String },
    #[error("requested IP {ip} is {family}, but the Service's ipFamilies are {families}")]
    WrongFamily {
        ip: IpAddr,
        family: IpFamily,
        families: String,
    },
    #[error(
        "the Service requires {families} (RequireDualStack) but requests only {ips}: ask for one address of each family"
    )]
    MissingFamily { families: String, ips: String },
    #[error("IPPool {} is being deleted: it gives no new addresses", quote(.0))]
    PoolTerminating(String),
    #[error(
        "IPPool {} is disabled (spec.disabled, drained): it gives no new addresses",
        quote(.0)
    )]
    PoolDisabled(String),
    #[error("no IPPool with {family} addresses may serve this Service{detail}")]
    NoPool { family: IpFamily, detail: String },
    #[error("no free {family} address in IPPool(s) {pools}")]
    Exhausted { family: IpFamily, pools: String },
    #[error("the Service requires {0} and dual-stack allocation failed: {1}")]
    DualStack(String, Box<AllocError>),
}

impl AllocError {
    pub fn reason(&self) -> &'static str {
        match self {
            AllocError::NotInPool { .. } => "NotInPool",
            AllocError::WrongPool { .. } => "WrongPool",
            AllocError::InUse { .. } => "IPInUse",
            AllocError::Kept { .. } => "IPReserved",
            AllocError::SameFamilyTwice(_) => "InvalidRequest",
            AllocError::NoSuchPool(_) => "NoSuchPool",
            AllocError::PoolNotAllowed(_) => "PoolNotAllowed",
            AllocError::IpNotAllowed { .. } => "IPNotAllowed",
            AllocError::WrongFamily { .. } => "FamilyMismatch",
            AllocError::MissingFamily { .. } => "InvalidRequest",
            AllocError::PoolTerminating(_) => "PoolTerminating",
            AllocError::PoolDisabled(_) => "PoolDisabled",
            AllocError::NoPool { .. } => "NoEligiblePool",
            AllocError::Exhausted { .. } => "PoolExhausted",
            AllocError::DualStack(_, inner) => inner.reason(),
        }
    }
}

/// Per-range search state: every address below `next` was handed out at some point;
/// `freed` holds the ones among them that are free again.
#[derive(Debug, Clone, Default)]
struct Cursor {
    next: u128,
    freed: BTreeSet<u128>,
}

#[derive(Debug, Default)]
pub struct Allocator {
    pools: BTreeMap<String, Pool>,
    /// Aligned with each pool's `ranges`.
    cursors: BTreeMap<String, Vec<Cursor>>,
    /// Every IP in use, with the Services holding it (several only when shared).
    used: BTreeMap<IpAddr, Holders>,
    /// IPs used by load balancers other than Herald: never handed out.
    /// ... by the Service whose status holds them, so they free up when it changes or goes.
    foreign: BTreeMap<IpAddr, BTreeSet<ServiceKey>>,
    by_service: BTreeMap<ServiceKey, Vec<Assigned>>,
    /// Addresses the pools reserve for one Service each: nobody else gets them while free.
    reserved: BTreeMap<IpAddr, ServiceKey>,
    /// Addresses kept for the Service that gave them up, until when: nobody else gets them
    /// while free. The clock stays outside: `expire` is told the time.
    retained: BTreeMap<IpAddr, (ServiceKey, Timestamp)>,
}

/// Why a free address is kept for a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// A pool's `spec.reservations`.
    Reserved,
    /// It gave the address up less than the pool's `retainFor` ago.
    Retained(Timestamp),
}

impl Allocator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the pool set. Assignments are kept, also of IPs no pool holds any more:
    /// an IP in use is never silently taken from a Service. Retentions end where no pool
    /// keeps given-up addresses any more (`retainFor` removed, the pool gone); returns
    /// whether any did.
    pub fn set_pools(&mut self, pools: impl IntoIterator<Item = Pool>) -> bool {
        let pools: BTreeMap<String, Pool> =
            pools.into_iter().map(|p| (p.name.to_string(), p)).collect();
        if pools == self.pools {
            return false;
        }
        self.cursors = pools
            .iter()
            .map(|(name, pool)| {
                let cursors = pool.ranges.iter().map(|r| Cursor {
                    next: to_u128(r.start()),
                    freed: BTreeSet::new(),
                });
                (name.clone(), cursors.collect())
            })
            .collect();
        self.pools = pools;
        // The first pool (by name) reserving an address decides for whom; the pools' own
        // condition reports the clash.
        self.reserved.clear();
        for pool in self.pools.values() {
            for (ip, service) in &pool.reservations {
                self.reserved.entry(*ip).or_insert_with(|| service.clone());
            }
        }
        let assigned: Vec<(ServiceKey, Vec<Assigned>)> =
            std::mem::take(&mut self.by_service).into_iter().collect();
        for (service, ips) in assigned {
            let ips = ips.into_iter().map(|a| Assigned {
                ip: a.ip,
                pool: self.pool_of(a.ip).map(|p| p.name.clone()),
            });
            self.by_service.insert(service, ips.collect());
        }
        let before = self.retained.len();
        let retained = std::mem::take(&mut self.retained);
        self.retained = retained
            .into_iter()
            .filter(|(ip, _)| self.pool_of(*ip).is_some_and(|p| p.retain_for.is_some()))
            .collect();
        self.retained.len() != before
    }

    #[cfg(test)]
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name)
    }

    /// The first pool (by name) holding `ip`, a live one before one being deleted.
    pub fn pool_of(&self, ip: IpAddr) -> Option<&Pool> {
        live_first(self.pools.values().filter(|p| p.contains(ip)))
    }

    /// How many Services hold addresses counted against `pool`.
    pub fn services_in(&self, pool: &str) -> usize {
        self.by_service
            .values()
            .filter(|ips| ips.iter().any(|a| a.pool.as_deref() == Some(pool)))
            .count()
    }

    /// Every Service holding IPs.
    pub fn services(&self) -> impl Iterator<Item = &ServiceKey> {
        self.by_service.keys()
    }

    pub fn assigned(&self, service: &str) -> &[Assigned] {
        self.by_service
            .get(service)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Marks an IP taken by something that is not Herald's (another load balancer's status).
    pub fn reserve_foreign(&mut self, service: &str, ip: IpAddr) {
        self.foreign.entry(ip).or_default().insert(service.into());
        self.take_from_cursor(ip);
    }

    /// The IPs reserved for another load balancer's `service`, in order.
    pub fn foreign_of(&self, service: &str) -> Vec<IpAddr> {
        self.foreign
            .iter()
            .filter(|(_, holders)| holders.contains(service))
            .map(|(ip, _)| *ip)
            .collect()
    }

    /// Drops the reservations of `service` (its status changed, it went away, or Herald
    /// adopts its IPs); IPs nobody else holds become free. Returns whether any did.
    pub fn release_foreign(&mut self, service: &str) -> bool {
        let held: Vec<IpAddr> = self
            .foreign
            .iter()
            .filter(|(_, holders)| holders.contains(service))
            .map(|(ip, _)| *ip)
            .collect();
        let mut freed = false;
        for ip in held {
            let now_free = self.foreign.get_mut(&ip).is_some_and(|holders| {
                holders.remove(service);
                holders.is_empty()
            });
            if now_free {
                self.foreign.remove(&ip);
                if !self.used.contains_key(&ip) {
                    self.return_to_cursor(ip);
                    freed = true;
                }
            }
        }
        freed
    }

    /// Records what the API already says a Service holds (state rebuilt after a restart).
    /// Nothing is checked but double use: the first holder recorded keeps an unshareable IP.
    pub fn restore(
        &mut self,
        service: &str,
        ips: &[IpAddr],
        sharing: &Sharing,
    ) -> Result<(), AllocError> {
        // Consent is not asked of Services sharing from before it was required.
        for &ip in ips {
            if let Some(why) = self.why_unusable_with(ip, service, sharing, Consent::Tolerated) {
                return Err(AllocError::InUse { ip, why });
            }
        }
        self.release(service);
        for &ip in ips {
            self.take(service, ip, sharing);
        }
        Ok(())
    }

    /// Gives the Service its IPs: the ones it holds when they still fit the request (plus a
    /// family PreferDualStack could not get before, if it can now), else new ones. On error
    /// the Service holds nothing.
    pub fn allocate(&mut self, req: &Request) -> Result<Vec<Assigned>, AllocError> {
        if let Some(mut kept) = self.current_fits(req) {
            // Refresh what the Service brings to its IPs (ports may have changed).
            for a in &kept {
                if let Some(holders) = self.used.get_mut(&a.ip) {
                    holders.insert(req.service.clone(), &req.sharing);
                }
            }
            let added = self.missing_preferred(req, &kept);
            for a in &added {
                self.take(&req.service, a.ip, &req.sharing);
            }
            kept.extend(added);
            kept.sort_by_key(|a| {
                let family = IpFamily::of(a.ip);
                req.families.order.iter().position(|f| *f == family)
            });
            self.by_service.insert(req.service.clone(), kept.clone());
            return Ok(kept);
        }
        let held: Vec<IpAddr> = self.release(&req.service);
        let picked = self.pick(req, &held)?;
        for a in &picked {
            self.take(&req.service, a.ip, &req.sharing);
        }
        // It came back and has its addresses: what was kept for it and not taken (it asked
        // for other ones) is free for others.
        if !self.retained.is_empty() {
            self.retained.retain(|_, (k, _)| **k != *req.service);
        }
        self.by_service.insert(req.service.clone(), picked.clone());
        Ok(picked)
    }

    /// Frees every IP the Service holds; returns them.
    pub fn release(&mut self, service: &str) -> Vec<IpAddr> {
        let Some(assigned) = self.by_service.remove(service) else {
            return Vec::new();
        };
        let mut freed = Vec::new();
        for a in assigned {
            let now_free = match self.used.get_mut(&a.ip) {
                Some(holders) => {
                    holders.remove(service);
                    holders.is_empty()
                }
                None => false,
            };
            if now_free {
                self.used.remove(&a.ip);
                if !self.foreign.contains_key(&a.ip) {
                    self.return_to_cursor(a.ip);
                }
                freed.push(a.ip);
            }
        }
        freed
    }

    /// IPs of `family` in use inside `pool`.
    pub fn assigned_in(&self, pool: &Pool, family: IpFamily) -> u128 {
        let mut seen = BTreeSet::new();
        for r in pool
            .ranges
            .iter()
            .filter(|r| IpFamily::of(r.start()) == family)
        {
            let in_range = self.used.range(r.start()..=r.end()).map(|(ip, _)| *ip);
            let foreign = self.foreign.range(r.start()..=r.end()).map(|(ip, _)| *ip);
            seen.extend(in_range.chain(foreign).filter(|ip| pool.contains(*ip)));
        }
        seen.len() as u128
    }

    /// Addresses of `family` the pool can hand out at all (ranges merged, buggy ones skipped).
    pub fn capacity(pool: &Pool, family: IpFamily) -> u128 {
        let mut ranges: Vec<(u128, u128)> = pool
            .ranges
            .iter()
            .filter(|r| IpFamily::of(r.start()) == family)
            .map(|r| (to_u128(r.start()), to_u128(r.end())))
            .collect();
        ranges.sort();
        let mut total: u128 = 0;
        let mut covered_to: Option<u128> = None;
        for (start, end) in ranges {
            let start = match covered_to {
                Some(c) if c >= end => continue,
                Some(c) if c >= start => c + 1,
                _ => start,
            };
            let mut n = (end - start).saturating_add(1);
            if pool.avoid_buggy_ips && family == IpFamily::V4 {
                n -= buggy_between(start, end);
            }
            total = total.saturating_add(n);
            covered_to = Some(end);
        }
        total
    }

    /// The pools the request may take addresses from, in order: its eligible pools (only the
    /// one it names, if it names one). Every path to an address goes through here.
    fn allowed_pools<'a>(&'a self, req: &'a Request) -> impl Iterator<Item = &'a Pool> + 'a {
        req.eligible_pools
            .iter()
            .filter(|name| req.pool.as_ref().is_none_or(|want| want == *name))
            .filter_map(|name| self.pools.get(name))
    }

    /// The allowed pool `ip` belongs to, a live one before one being deleted.
    fn allowed_pool_of<'a>(&'a self, req: &'a Request, ip: IpAddr) -> Option<&'a Pool> {
        live_first(self.allowed_pools(req).filter(|p| p.contains(ip)))
    }

    /// The Service's current IPs, with the pools they count against, when they still fit
    /// its request: each from a pool it may use, of a family it asks for, and usable next to
    /// the other holders.
    fn current_fits(&self, req: &Request) -> Option<Vec<Assigned>> {
        let current = self.assigned(&req.service);
        if current.is_empty() {
            return None;
        }
        let mut kept = Vec::with_capacity(current.len());
        for a in current {
            // An IP that left its pools, or whose pool no longer admits the Service, moves.
            let pool = self.allowed_pool_of(req, a.ip)?;
            // What it holds it keeps, also shared across namespaces without consent (from
            // before consent was asked for: it is told what to add instead).
            if self
                .why_unusable_with(a.ip, &req.service, &req.sharing, Consent::Tolerated)
                .is_some()
            {
                return None;
            }
            kept.push(Assigned {
                ip: a.ip,
                pool: Some(pool.name.clone()),
            });
        }
        let fits = if req.requested_ips.is_empty() {
            let families: Vec<IpFamily> = kept.iter().map(|a| IpFamily::of(a.ip)).collect();
            families.len() >= req.families.required()
                && families.iter().all(|f| req.families.order.contains(f))
                && families.first() == req.families.order.first()
        } else {
            check_requested(req).ok()?;
            let mut have: Vec<IpAddr> = kept.iter().map(|a| a.ip).collect();
            let mut want = req.requested_ips.clone();
            have.sort();
            want.sort();
            have == want
        };
        fits.then_some(kept)
    }

    /// For PreferDualStack: addresses of the families the Service asks for but does not hold,
    /// where one is free now (a pool gained that family since).
    fn missing_preferred(&self, req: &Request, kept: &[Assigned]) -> Vec<Assigned> {
        if !req.requested_ips.is_empty() {
            return Vec::new();
        }
        let pools = self.auto_pools(req);
        req.families
            .order
            .iter()
            .filter(|f| !kept.iter().any(|a| IpFamily::of(a.ip) == **f))
            .filter_map(|f| {
                self.pick_family(req, &pools, *f)
                    .ok()
                    .filter(|a| !kept.iter().any(|k| k.ip == a.ip))
            })
            .collect()
    }

    /// The pools an automatic pick may use: the named pool, or the eligible autoAssign ones;
    /// never one being deleted.
    fn auto_pools<'a>(&'a self, req: &'a Request) -> Vec<&'a Pool> {
        self.allowed_pools(req)
            .filter(|p| (req.pool.is_some() || p.auto_assign) && !p.closed())
            .collect()
    }

    /// New addresses for the request (`held`: what the Service held until now).
    fn pick(&self, req: &Request, held: &[IpAddr]) -> Result<Vec<Assigned>, AllocError> {
        if let Some(name) = &req.pool {
            let pool = self
                .pools
                .get(name)
                .ok_or_else(|| AllocError::NoSuchPool(name.clone()))?;
            if !req.eligible_pools.contains(name) {
                return Err(AllocError::PoolNotAllowed(name.clone()));
            }
            if pool.closed() && req.requested_ips.is_empty() {
                return Err(pool.closed_error());
            }
        }
        if !req.requested_ips.is_empty() {
            return self.pick_requested(req, held);
        }
        let pools = self.auto_pools(req);
        let mut picked = Vec::new();
        for (i, &family) in req.families.order.iter().enumerate() {
            let required = i == 0 || req.families.all_required;
            match self.pick_family(req, &pools, family) {
                Ok(a) => picked.push(a),
                // PreferDualStack: the second family is best effort.
                Err(_) if !required => {}
                Err(e) if req.families.order.len() > 1 && req.families.all_required => {
                    return Err(AllocError::DualStack(
                        "RequireDualStack".into(),
                        Box::new(e),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(picked)
    }

    fn pick_family(
        &self,
        req: &Request,
        pools: &[&Pool],
        family: IpFamily,
    ) -> Result<Assigned, AllocError> {
        // Its own address first: reserved for it, or one it gave up and comes back for.
        if let Some(kept) = self.kept_for_request(req, family) {
            return Ok(kept);
        }
        let with_family: Vec<&Pool> = pools
            .iter()
            .copied()
            .filter(|p| p.ranges.iter().any(|r| IpFamily::of(r.start()) == family))
            .collect();
        if with_family.is_empty() {
            let detail = match &req.pool {
                Some(p) => format!(" (IPPool {p} has none)"),
                None if self.pools.is_empty() => " (there are no IPPools)".to_owned(),
                None => " (check the pools' autoAssign and serviceAllocation)".to_owned(),
            };
            return Err(AllocError::NoPool { family, detail });
        }
        // Join a compatible IP of the same sharing key first, so sharers end up together.
        if req.sharing.key.is_some() {
            for pool in &with_family {
                let shared = self.used.iter().find(|(ip, holders)| {
                    IpFamily::of(**ip) == family
                        && pool.contains(**ip)
                        && !holders.is_empty()
                        && holders.iter().any(|(_, s)| s.key == req.sharing.key)
                        && self
                            .why_unusable(**ip, &req.service, &req.sharing)
                            .is_none()
                });
                if let Some((ip, _)) = shared {
                    return Ok(Assigned {
                        ip: *ip,
                        pool: Some(pool.name.clone()),
                    });
                }
            }
        }
        for pool in &with_family {
            if let Some(ip) = self.first_free(pool, family) {
                return Ok(Assigned {
                    ip,
                    pool: Some(pool.name.clone()),
                });
            }
        }
        Err(AllocError::Exhausted {
            family,
            pools: with_family
                .iter()
                .map(|p| &*p.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    fn pick_requested(&self, req: &Request, held: &[IpAddr]) -> Result<Vec<Assigned>, AllocError> {
        check_requested(req)?;
        let mut picked = Vec::new();
        for &ip in &req.requested_ips {
            let Some(pool) = self.allowed_pool_of(req, ip) else {
                return Err(self.why_not_allowed(req, ip));
            };
            // Whoever holds an address of a pool being deleted or disabled keeps it; nobody
            // else gets it.
            if pool.closed() && !held.contains(&ip) {
                return Err(pool.closed_error());
            }
            if let Some(why) = self.why_unusable(ip, &req.service, &req.sharing) {
                return Err(AllocError::InUse { ip, why });
            }
            if let Some(why) = self.kept_against(ip, &req.service) {
                return Err(AllocError::Kept { ip, why });
            }
            picked.push(Assigned {
                ip,
                pool: Some(pool.name.clone()),
            });
        }
        Ok(picked)
    }

    /// Why the requested `ip` is in none of the pools the request may use.
    fn why_not_allowed(&self, req: &Request, ip: IpAddr) -> AllocError {
        let holder = self.pool_of(ip);
        match (&req.pool, holder) {
            (Some(requested), Some(pool)) if *pool.name != **requested => AllocError::WrongPool {
                ip,
                pool: pool.name.to_string(),
                requested: requested.clone(),
            },
            (_, Some(pool)) => AllocError::IpNotAllowed {
                ip,
                pool: pool.name.to_string(),
            },
            (_, None) => AllocError::NotInPool { ip },
        }
    }

    /// Why `service` may not hold `ip` next to its current holders, or `None`.
    fn why_unusable(&self, ip: IpAddr, service: &str, sharing: &Sharing) -> Option<String> {
        self.why_unusable_with(ip, service, sharing, Consent::Required)
    }

    fn why_unusable_with(
        &self,
        ip: IpAddr,
        service: &str,
        sharing: &Sharing,
        consent: Consent,
    ) -> Option<String> {
        if self.foreign.contains_key(&ip) {
            return Some("it is in the status of a Service another load balancer serves".into());
        }
        let holders = self.used.get(&ip)?;
        holders
            .iter()
            .filter(|(k, _)| &***k != service)
            .find_map(|(k, s)| match sharing.conflict(s, k)? {
                Conflict::Refused(why) => Some(why),
                Conflict::NoConsent(why) => (consent == Consent::Required).then_some(why),
            })
    }

    /// The Services `service` shares an IP with across namespaces without both agreeing:
    /// tolerated for a pair that shared before consent was asked for; each is told what to
    /// add. As `(IP, the other Service)`.
    pub fn unconsented_sharers(&self, service: &str) -> Vec<(IpAddr, String)> {
        let mut found = Vec::new();
        for a in self.assigned(service) {
            let Some(holders) = self.used.get(&a.ip) else {
                continue;
            };
            let Some(mine) = holders
                .iter()
                .find(|(k, _)| &***k == service)
                .map(|(_, s)| s)
            else {
                continue;
            };
            for (other, theirs) in holders.iter().filter(|(k, _)| &***k != service) {
                if matches!(mine.conflict(theirs, other), Some(Conflict::NoConsent(_))) {
                    found.push((a.ip, other.to_string()));
                }
            }
        }
        found
    }

    /// Nobody holds it and it is kept for nobody: anyone may get it.
    fn is_free(&self, ip: IpAddr) -> bool {
        self.is_unheld(ip) && self.kept_for(ip).is_none()
    }

    /// Nobody holds it (it may be kept for a Service).
    fn is_unheld(&self, ip: IpAddr) -> bool {
        !self.used.contains_key(&ip) && !self.foreign.contains_key(&ip)
    }

    /// The Service a free `ip` is kept for, and why: a reservation before a retention.
    pub fn kept_for(&self, ip: IpAddr) -> Option<(&ServiceKey, Kept)> {
        if let Some(service) = self.reserved.get(&ip) {
            return Some((service, Kept::Reserved));
        }
        self.retained
            .get(&ip)
            .map(|(service, until)| (service, Kept::Retained(*until)))
    }

    /// Keeps `ip`, which `service` gave up, for it until `until`; not when someone holds it
    /// or `limit` addresses of its pool are kept already. Returns whether it is kept.
    pub fn retain(&mut self, ip: IpAddr, service: &str, until: Timestamp, limit: usize) -> bool {
        let Some(pool) = self.pool_of(ip) else {
            return false;
        };
        if !self.is_unheld(ip) || self.retained_in(pool).count() >= limit {
            return false;
        }
        self.retained.insert(ip, (service.into(), until));
        true
    }

    /// Ends the retentions due by `now`; returns whether any ended (addresses freed).
    pub fn expire(&mut self, now: Timestamp) -> bool {
        let before = self.retained.len();
        self.retained.retain(|_, (_, until)| *until > now);
        self.retained.len() != before
    }

    /// When the next retention ends.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.retained.values().map(|(_, until)| *until).min()
    }

    /// The retentions in `pool`'s ranges, by address: `(address, Service, until)`.
    pub fn retained_in<'a>(
        &'a self,
        pool: &'a Pool,
    ) -> impl Iterator<Item = (IpAddr, &'a ServiceKey, Timestamp)> + 'a {
        pool.ranges
            .iter()
            .flat_map(|r| self.retained.range(r.start()..=r.end()))
            .filter(|(ip, _)| pool.contains(**ip))
            .map(|(ip, (service, until))| (*ip, service, *until))
    }

    /// Addresses of `family` in `pool` kept for a Service and free: not available to others.
    pub fn kept_in(&self, pool: &Pool, family: IpFamily) -> u128 {
        let reserved = pool
            .reservations
            .iter()
            .map(|(ip, _)| *ip)
            .filter(|ip| self.reserved.contains_key(ip));
        let retained = self.retained_in(pool).map(|(ip, _, _)| ip);
        let kept: BTreeSet<IpAddr> = reserved
            .chain(retained)
            .filter(|ip| IpFamily::of(*ip) == family && pool.contains(*ip) && self.is_unheld(*ip))
            .collect();
        kept.len() as u128
    }

    /// The reserved addresses of `pool` that another Service holds (it had them before the
    /// reservation): `(address, reserved for, held by)`.
    pub fn reservations_taken(&self, pool: &Pool) -> Vec<(IpAddr, ServiceKey, ServiceKey)> {
        pool.reservations
            .iter()
            .filter_map(|(ip, owner)| {
                let holders = self.used.get(ip)?;
                if holders.iter().any(|(k, _)| k == owner) {
                    return None;
                }
                let (other, _) = holders.iter().next()?;
                Some((*ip, owner.clone(), other.clone()))
            })
            .collect()
    }

    /// Why `service` may not have the free `ip` kept for another Service, or `None`.
    fn kept_against(&self, ip: IpAddr, service: &str) -> Option<String> {
        if !self.is_unheld(ip) {
            return None;
        }
        let (owner, kept) = self
            .kept_for(ip)
            .filter(|(owner, _)| &***owner != service)?;
        let pool = self
            .pool_of(ip)
            .map(|p| p.name.to_string())
            .unwrap_or_default();
        Some(match kept {
            Kept::Reserved => format!("IPPool {pool} reserves it for Service {owner}"),
            Kept::Retained(until) => format!(
                "it is kept for Service {owner}, which gave it up, until {until} (IPPool {pool} retainFor)"
            ),
        })
    }

    /// A free address of `family` kept for the requesting Service in a pool it may use: its
    /// reservation first, then one it gave up.
    fn kept_for_request(&self, req: &Request, family: IpFamily) -> Option<Assigned> {
        let pools: Vec<&Pool> = self.allowed_pools(req).filter(|p| !p.closed()).collect();
        let reserved = self.reserved.iter();
        let retained = self.retained.iter().map(|(ip, (k, _))| (ip, k));
        reserved
            .chain(retained)
            .filter(|(ip, owner)| {
                ***owner == *req.service && IpFamily::of(**ip) == family && self.is_unheld(**ip)
            })
            .find_map(|(ip, _)| {
                let pool = live_first(pools.iter().copied().filter(|p| p.contains(*ip)))?;
                Some(Assigned {
                    ip: *ip,
                    pool: Some(pool.name.clone()),
                })
            })
    }

    /// Lowest free address of `family` in `pool`. Below a cursor only `freed` needs looking
    /// at; above it the scan walks only over taken addresses, so it is bounded by the IPs in
    /// use, never by the size of the pool.
    fn first_free(&self, pool: &Pool, family: IpFamily) -> Option<IpAddr> {
        let cursors = self.cursors.get(&*pool.name)?;
        for (range, cursor) in pool.ranges.iter().zip(cursors) {
            if IpFamily::of(range.start()) != family {
                continue;
            }
            let ip_of = |v| from_u128(v, family);
            if let Some(v) = cursor
                .freed
                .iter()
                .find(|v| self.is_free(ip_of(**v)) && pool.contains(ip_of(**v)))
            {
                return Some(ip_of(*v));
            }
            let (mut v, end) = (
                cursor.next.max(to_u128(range.start())),
                to_u128(range.end()),
            );
            while v <= end {
                let ip = ip_of(v);
                if self.is_free(ip) && pool.contains(ip) {
                    return Some(ip);
                }
                let Some(n) = v.checked_add(1) else { break };
                v = n;
            }
        }
        None
    }

    fn take(&mut self, service: &str, ip: IpAddr, sharing: &Sharing) {
        let pool = self.pool_of(ip).map(|p| p.name.clone());
        // The Service's key as `by_service` holds it, shared with `used`.
        let key = match self.by_service.get_key_value(service) {
            Some((key, _)) => key.clone(),
            None => ServiceKey::from(service),
        };
        let entry = self.by_service.entry(key.clone()).or_default();
        if !entry.iter().any(|a| a.ip == ip) {
            entry.push(Assigned { ip, pool });
        }
        self.used.entry(ip).or_default().insert(key, sharing);
        // Given to the Service it was kept for (or to one that held it before).
        self.retained.remove(&ip);
        self.take_from_cursor(ip);
    }

    /// Keeps every cursor's invariant (below it, every address is taken, skipped or in
    /// `freed`) after `ip` is taken.
    fn take_from_cursor(&mut self, ip: IpAddr) {
        let value = to_u128(ip);
        let family = IpFamily::of(ip);
        for (name, cursors) in self.cursors.iter_mut() {
            let Some(pool) = self.pools.get(name) else {
                continue;
            };
            for (range, cursor) in pool.ranges.iter().zip(cursors.iter_mut()) {
                if !range.contains(ip) {
                    continue;
                }
                cursor.freed.remove(&value);
                // Advance past the run of taken or skipped addresses so later scans stay short.
                let end = to_u128(range.end());
                while cursor.next <= end {
                    let next = from_u128(cursor.next, family);
                    let taken = self.used.contains_key(&next) || self.foreign.contains_key(&next);
                    let skipped = pool.avoid_buggy_ips && is_buggy(next);
                    if !(taken || skipped) {
                        break;
                    }
                    let Some(n) = cursor.next.checked_add(1) else {
                        break;
                    };
                    cursor.next = n;
                }
            }
        }
    }

    fn return_to_cursor(&mut self, ip: IpAddr) {
        let value = to_u128(ip);
        for (name, cursors) in self.cursors.iter_mut() {
            let Some(pool) = self.pools.get(name) else {
                continue;
            };
            for (range, cursor) in pool.ranges.iter().zip(cursors.iter_mut()) {
                if range.contains(ip) && value < cursor.next {
                    cursor.freed.insert(value);
                }
            }
        }
    }
}

/// The first of `pools` giving addresses, else the first: an address in a pool being
/// deleted or disabled and in an open one counts against the open one.
fn live_first<'a>(mut pools: impl Iterator<Item = &'a Pool>) -> Option<&'a Pool> {
    let first = pools.next()?;
    if !first.closed() {
        return Some(first);
    }
    Some(pools.find(|p| !p.closed()).unwrap_or(first))
}

/// Whether the requested IPs make sense for the Service's families: at most one per family,
/// none of a family it does not ask for, one of each when it requires dual-stack.
fn check_requested(req: &Request) -> Result<(), AllocError> {
    let list = || {
        let ips: Vec<String> = req.requested_ips.iter().map(IpAddr::to_string).collect();
        ips.join(", ")
    };
    let mut families = BTreeSet::new();
    if !req
        .requested_ips
        .iter()
        .all(|ip| families.insert(IpFamily::of(*ip)))
    {
        return Err(AllocError::SameFamilyTwice(list()));
    }
    if let Some(&ip) = req
        .requested_ips
        .iter()
        .find(|ip| !req.families.order.contains(&IpFamily::of(**ip)))
    {
        return Err(AllocError::WrongFamily {
            ip,
            family: IpFamily::of(ip),
            families: req.families.to_string(),
        });
    }
    if req.requested_ips.len() < req.families.required() {
        return Err(AllocError::MissingFamily {
            families: req.families.to_string(),
            ips: list(),
        });
    }
    Ok(())
}

/// The Services holding one IP with what each brings to it, sorted by Service. Almost always
/// one entry: a `Vec` costs a fraction of a map's node per IP in use.
#[derive(Debug, Default)]
struct Holders(Vec<(ServiceKey, Sharing)>);

impl Holders {
    fn insert(&mut self, service: ServiceKey, sharing: &Sharing) {
        match self.0.binary_search_by(|(k, _)| (**k).cmp(&*service)) {
            Ok(i) => self.0[i].1 = sharing.clone(),
            Err(i) => {
                // Exactly one more: `Vec` would otherwise round up to four holders per IP.
                self.0.reserve_exact(1);
                self.0.insert(i, (service, sharing.clone()));
            }
        }
    }

    fn remove(&mut self, service: &str) {
        self.0.retain(|(k, _)| &**k != service);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = (&ServiceKey, &Sharing)> {
        self.0.iter().map(|(k, s)| (k, s))
    }
}

/// Addresses ending in .0 or .255, which `avoidBuggyIPs` skips.
pub fn is_buggy(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if matches!(v4.octets()[3], 0 | 255))
}

/// How many of `start..=end` (IPv4 values) end in .0 or .255.
fn buggy_between(start: u128, end: u128) -> u128 {
    let count = |residue: u128| {
        let first = start + (residue + 256 - start % 256) % 256;
        if first > end {
            0
        } else {
            (end - first) / 256 + 1
        }
    };
    count(0) + count(255)
}

fn from_u128(value: u128, family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4((value as u32).into()),
        IpFamily::V6 => IpAddr::V6(value.into()),
    }
}

#[cfg(test)]
mod tests;
