//! Support code for Herald's end-to-end tests: a real etcd and kube-apiserver on loopback
//! (`control_plane`), and the paths of the binaries they need (`bins`).

pub mod bins;
pub mod client_view;
pub mod cluster;
pub mod control_plane;
pub mod controller;
pub mod l2;
pub mod netns;
pub mod objects;
mod pki;
pub mod process;
pub mod prometheus;

pub use control_plane::{ControlPlane, Options};
pub use process::Process;

/// Installs a `tracing` subscriber for a test binary once; `RUST_LOG` picks the level.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn,kube_client=off".into()),
        )
        .with_test_writer()
        .try_init();
}
