//! Herald's BGP-4 speaker, originate-only: it connects out to routers and tells them which
//! Service IPs this node serves; nothing a router sends is installed. `wire` (messages,
//! untrusted bytes bounded and fuzzed), `session` (the state machine, pure), `rib` (the
//! UPDATEs that bring a peer from what it was told to what it should have, pure), `bfd`
//! (BFD packets and one BFD session, pure) and the thin I/O around them: `peer` (one session
//! over TCP), `bfd_link` (BFD over UDP) and `tcp_md5` (RFC 2385 signatures on its socket,
//! the only unsafe code).

#![deny(unsafe_code)]

pub mod bfd;
pub mod bfd_link;
pub mod peer;
pub mod rib;
pub mod session;
pub mod tcp_md5;
pub mod wire;
