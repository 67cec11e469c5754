//! TCP-MD5 signatures (RFC 2385) on a session's socket: the password a router expects, set
//! with `setsockopt(TCP_MD5SIG)` before connecting. The one place this crate calls into
//! the kernel directly.
#![allow(unsafe_code)]

use std::fmt;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

/// Longest key Linux accepts (`TCP_MD5SIG_MAXKEYLEN`).
pub const MAX_PASSWORD: usize = 80;

/// A session's password. Never shown: its `Debug` says only that there is one.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Vec<u8>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("the password is empty")]
    Empty,
    #[error("the password is {0} bytes; TCP-MD5 takes at most {MAX_PASSWORD}")]
    TooLong(usize),
}

impl Password {
    pub fn new(bytes: &[u8]) -> Result<Self, PasswordError> {
        match bytes.len() {
            0 => Err(PasswordError::Empty),
            n if n > MAX_PASSWORD => Err(PasswordError::TooLong(n)),
            _ => Ok(Self(bytes.to_vec())),
        }
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(redacted)")
    }
}

/// `struct tcp_md5sig` of Linux's `include/uapi/linux/tcp.h`.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefix_len: u8,
    key_len: u16,
    ifindex: libc::c_int,
    key: [u8; MAX_PASSWORD],
}

/// Signs every segment the socket exchanges with `peer` with `password`.
pub fn set(socket: &impl AsRawFd, peer: IpAddr, password: &Password) -> std::io::Result<()> {
    // SAFETY: all-zero bytes are a valid `sockaddr_storage` (plain integers and arrays).
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    match peer {
        IpAddr::V4(v4) => {
            // SAFETY: `sockaddr_storage` is large enough and aligned for `sockaddr_in`.
            let sin = unsafe { &mut *(&raw mut sig.addr).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
        }
        IpAddr::V6(v6) => {
            // SAFETY: `sockaddr_storage` is large enough and aligned for `sockaddr_in6`.
            let sin6 = unsafe { &mut *(&raw mut sig.addr).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = v6.octets();
        }
    }
    let key = &password.0;
    sig.key[..key.len()].copy_from_slice(key);
    sig.key_len = key.len() as u16;
    // SAFETY: a valid fd, and a pointer to a fully initialised struct of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            (&raw const sig).cast(),
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_bounded_and_never_shown() {
        assert_eq!(Password::new(b""), Err(PasswordError::Empty));
        assert_eq!(Password::new(&[b'x'; 81]), Err(PasswordError::TooLong(81)));
        let p = Password::new(b"s3cret").expect("fits");
        assert_eq!(format!("{p:?}"), "Password(redacted)");
        assert!(!format!("{:?}", Some(p)).contains("s3cret"));
    }

    #[test]
    fn the_kernel_takes_the_signature_on_a_socket_of_either_family() {
        let p = Password::new(b"s3cret").expect("fits");
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").expect("socket");
        set(&v4, "127.0.0.2".parse().expect("ip"), &p).expect("v4");
        if let Ok(v6) = std::net::TcpListener::bind("[::1]:0") {
            set(&v6, "::2".parse().expect("ip"), &p).expect("v6");
        }
    }
}
