//! Observability shared by Herald's binaries: a Prometheus text-format registry
//! ([`Registry`]) and a tiny HTTP endpoint ([`serve`]) for `/metrics`, `/healthz` and
//! `/readyz`. Hand-written on purpose: three fixed GET paths do not justify an HTTP server
//! stack in two small binaries.

mod http;
mod process;
mod registry;

pub use http::{Health, ServeError, serve};
pub use process::{init_logging, shutdown_signal};
pub use registry::{Kind, Registry};
