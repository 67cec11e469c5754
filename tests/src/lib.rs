//! Herald's lab: what its end-to-end tests, benchmarks and demos run on. A real etcd and
//! kube-apiserver on loopback (`control_plane`); the process cluster, Herald's binaries on a
//! LAN of network namespaces (`process_cluster`, `netns`); the real cluster of kubelet,
//! containerd and kube-proxy nodes installed with helm (`real_cluster`); what a client on
//! the LAN sees (`client_view`) and the faults injected (`faults`); a real router (FRR) in a
//! namespace (`router`); the Go-built and Herald binaries they start (`bins`, `process`).

pub mod bins;
pub mod client_view;
pub mod control_plane;
pub mod controller;
pub mod docs;
pub mod faults;
pub mod netns;
pub mod objects;
mod pki;
pub mod process;
pub mod process_cluster;
pub mod prometheus;
pub mod real_cluster;
pub mod router;
pub mod side_by_side;

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
