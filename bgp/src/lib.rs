//! Herald's BGP-4 speaker, originate-only: it connects out to routers and tells them which
//! Service IPs this node serves; nothing a router sends is installed. `wire` (messages,
//! untrusted bytes bounded and fuzzed), `session` (the state machine, pure), `rib` (the
//! UPDATEs that bring a peer from what it was told to what it should have, pure) and `peer`
//! (one session over TCP, the thin I/O around them), with `tcp_md5` (RFC 2385 signatures on
//! its socket, the only unsafe code).

#![deny(unsafe_code)]

pub mod peer;
pub mod rib;
pub mod session;
pub mod tcp_md5;
pub mod wire;
