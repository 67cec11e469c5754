//! Herald's API: the custom resources both binaries read (`IPPool`, `L2Advertisement`),
//! the annotation and label keys Herald honours (its own and MetalLB's), the address
//! entry syntax of a pool, and the rendering of the CRD manifests.

pub mod address;
pub mod announcement;
pub mod crds;
pub mod events;
pub mod gossip;
pub mod keys;
pub mod l2;
pub mod owner;
pub mod pool;
mod schema;
pub mod selector;
pub mod service;
#[cfg(feature = "testing")]
pub mod testing;
pub mod watch;

pub use address::{AddressEntry, AddressError, IpRange};
pub use announcement::{L2Announcement, L2AnnouncementSpec};
pub use l2::{L2Advertisement, L2AdvertisementSpec};
pub use pool::{FamilyUsage, IPPool, IPPoolSpec, IPPoolStatus, ServiceAllocation};
pub use service::{LbService, ServiceObject};

/// API group of every Herald resource.
pub const GROUP: &str = "herald.dev";
/// API version of every Herald resource.
pub const VERSION: &str = "v1alpha1";
