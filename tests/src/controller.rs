//! Running `herald-controller` against a test control plane.

use std::process::Command;

use crate::{ControlPlane, Process};

/// A controller process with its metrics port.
pub struct Controller {
    pub process: Process,
    pub metrics_port: u16,
}

/// Starts the controller on `cp` with `extra` flags (the Lease namespace is `default`; the
/// metrics endpoint is on a free loopback port).
pub fn spawn(cp: &ControlPlane, name: &str, extra: &[&str]) -> Controller {
    let metrics_port = crate::control_plane::free_port().expect("free port");
    let mut cmd = Command::new(crate::bins::herald_binary("herald-controller").expect("binary"));
    cmd.arg("run")
        .arg("--metrics-address")
        .arg(format!("127.0.0.1:{metrics_port}"))
        .arg("--identity")
        .arg(name)
        .args(extra)
        .env("KUBECONFIG", cp.kubeconfig())
        .env("RUST_LOG", "info,kube=warn");
    let process =
        Process::spawn(name, cmd, &cp.dir().join(format!("{name}.log"))).expect("start controller");
    Controller {
        process,
        metrics_port,
    }
}

/// GETs `path` from a loopback HTTP endpoint; returns (status code, body).
pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    Ok((code, body.unwrap_or_default()))
}

/// What `herald-controller SUBCOMMAND` makes of `input` (stdin): stdout and stderr.
pub fn convert(subcommand: &str, input: &str) -> (String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(
        crate::bins::herald_binary("herald-controller").expect("controller binary"),
    )
    .arg(subcommand)
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("herald-controller");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("writing stdin");
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "{subcommand}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
