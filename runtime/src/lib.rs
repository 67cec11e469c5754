//! How Herald's binaries talk to the API server: watches and the caches they fill
//! (`watch`), Services listed in protobuf (`service_watch`, `proto`), Events sent
//! (`Publisher`), owner references to what the chart installed (`owner`), and a fake API
//! server for unit tests of code that writes (`testing`, behind the `testing` feature). The
//! types these carry are `herald-api`'s.

#![forbid(unsafe_code)]

pub mod events;
pub mod owner;
pub mod proto;
pub mod service_watch;
#[cfg(feature = "testing")]
pub mod testing;
pub mod watch;

pub use events::Publisher;
