//! The real-cluster tests' app: an HTTP server that answers every request with the name of its
//! pod and the client address it saw, so a test knows which pod served it and whether the
//! client's own address survived the way in (`externalTrafficPolicy: Local`).
//!
//! Built on its own with `rustc` for musl (scripts/images): no dependencies, a static binary
//! in an image with nothing else.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

unsafe extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
}

/// PID 1 in a container has no default SIGTERM action: leave at once when the pod is deleted.
extern "C" fn leave(_: i32) {
    std::process::exit(0);
}

fn answer(mut conn: TcpStream, pod: &str) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    // Up to the end of the headers (bounded: anything longer is answered as it is).
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let client = conn.peer_addr()?;
    let body = format!("pod={pod} client={}\n", client.ip().to_canonical());
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())
}

fn main() -> std::io::Result<()> {
    // SAFETY: installs a handler that only calls exit.
    unsafe {
        signal(15, leave);
    }
    let pod = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = TcpListener::bind(format!("[::]:{port}"))?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let pod = pod.clone();
        std::thread::spawn(move || {
            let _ = answer(conn, &pod);
        });
    }
    Ok(())
}
