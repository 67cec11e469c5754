//! Observability shared by Herald's binaries: a `prometheus-client` registry with the
//! process and build metrics ([`registry`]), and a tiny HTTP endpoint ([`serve`]) for
//! `/metrics`, `/healthz` and `/readyz`. The endpoint is hand-written on purpose: three fixed
//! GET paths do not justify an HTTP server stack in two small binaries.

mod http;
mod metrics;
mod process;

pub use http::{Health, ServeError, serve};
pub use metrics::{encode, registry};
pub use process::{init_logging, shutdown_signal};

/// Gives glibc's free heap pages back to the system. musl (the image's static build) has no
/// `malloc_trim` and returns large frees by itself, so there it does nothing.
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of glibc's allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}
