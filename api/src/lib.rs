//! Herald's API, types only: the custom resources (`IPPool`, `L2Advertisement`,
//! `L2Announcement`, `BGPPeer`, `BGPAdvertisement`, `BGPSession`) and the rendering of their CRD manifests, the compact Service both
//! binaries cache, the annotation and label keys Herald honours (its own and MetalLB's), the
//! address entry syntax of a pool, object keys, and what an Event says. No I/O: how the
//! binaries talk to the API server is `herald-runtime`.

#![forbid(unsafe_code)]

pub mod address;
pub mod announcement;
pub mod bgp;
pub mod bgp_session;
pub mod crds;
pub mod events;
pub mod gossip;
pub mod key;
pub mod keys;
pub mod l2;
pub mod pool;
mod schema;
pub mod selector;
pub mod service;

pub use address::{AddressEntry, AddressError, IpRange};
pub use announcement::{L2Announcement, L2AnnouncementSpec};
pub use bgp::{BGPAdvertisement, BGPAdvertisementSpec, BGPPeer, BGPPeerSpec};
pub use bgp_session::{BGPSession, BGPSessionSpec};
pub use key::ObjectKey;
pub use l2::{L2Advertisement, L2AdvertisementSpec};
pub use pool::{
    FamilyUsage, IPPool, IPPoolSpec, IPPoolStatus, Reservation, Retained, ServiceAllocation,
};
pub use service::{LbService, ServiceObject};

/// A 64-bit fingerprint of anything hashable, for equality checks within one process (what
/// was written or said, kept without a copy of it). Not stable across builds: never send it.
pub fn fingerprint(value: &(impl std::hash::Hash + ?Sized)) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// API group of every Herald resource.
pub const GROUP: &str = "herald.dev";
/// API version of every Herald resource.
pub const VERSION: &str = "v1alpha1";
