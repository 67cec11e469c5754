//! An AF_PACKET socket on one interface that wakes only for ARP and for ICMPv6 Neighbor
//! Solicitations and Advertisements (a classic BPF filter attached before bind), and sends
//! raw frames.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

const ETH_P_ALL: u16 = 0x0003;

/// ARP (ethertype 0x0806: requests to answer, and every sender's claim, replies included),
/// and ICMPv6 types 135 (NS) and 136 (NA) directly after the IPv6 header.
const FILTER: [libc::sock_filter; 10] = [
    op(0x28, 0, 0, 12),     // 0: ldh [12]          ethertype
    op(0x15, 6, 0, 0x0806), // 1: jeq ARP           -> accept, else 2
    op(0x15, 0, 6, 0x86dd), // 2: jeq IPv6          -> 3, else drop
    op(0x30, 0, 0, 20),     // 3: ldb [20]          next header
    op(0x15, 0, 4, 58),     // 4: jeq ICMPv6        -> 5, else drop
    op(0x30, 0, 0, 54),     // 5: ldb [54]          ICMPv6 type
    op(0x15, 1, 0, 135),    // 6: jeq NS            -> accept, else 7
    op(0x15, 0, 1, 136),    // 7: jeq NA            -> accept, else drop
    op(0x06, 0, 0, 0xffff), // 8: accept
    op(0x06, 0, 0, 0),      // 9: drop
];

const fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

pub struct LinkSocket {
    fd: AsyncFd<OwnedFd>,
    ifindex: i32,
    groups: BTreeSet<[u8; 6]>,
}

impl LinkSocket {
    pub fn open(ifindex: u32) -> io::Result<Self> {
        let ifindex = i32::try_from(ifindex).map_err(|_| io::Error::other("ifindex too large"))?;
        // SAFETY: plain syscalls on a descriptor this function owns; every pointer passed
        // points to a live, correctly sized value.
        unsafe {
            let raw = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0, // no protocol yet: nothing is queued before the filter is attached
            );
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(raw);
            let prog = libc::sock_fprog {
                len: FILTER.len() as u16,
                filter: FILTER.as_ptr() as *mut libc::sock_filter,
            };
            check(libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&prog as *const libc::sock_fprog).cast(),
                size_of::<libc::sock_fprog>() as libc::socklen_t,
            ))?;
            // Our own transmissions are not questions (Linux >= 4.20; best effort before).
            let one: libc::c_int = 1;
            libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_IGNORE_OUTGOING,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = ETH_P_ALL.to_be();
            addr.sll_ifindex = ifindex;
            check(libc::bind(
                raw,
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            ))?;
            Ok(Self {
                // `fd` is owned here and handed over whole; nothing else closes it.
                fd: AsyncFd::register(fd)?,
                ifindex,
                groups: BTreeSet::new(),
            })
        }
    }

    /// Receives one frame into `buf`; waits until one arrives.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let result = guard.try_io(|fd| {
                // SAFETY: `buf` is valid for `buf.len()` bytes.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends a complete Ethernet frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is valid for its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes the interface accept exactly these Ethernet multicast groups for this socket
    /// (solicited-node groups of the IPv6 addresses owned).
    pub fn set_groups(&mut self, wanted: &BTreeSet<[u8; 6]>) -> io::Result<()> {
        let join: Vec<[u8; 6]> = wanted.difference(&self.groups).copied().collect();
        let leave: Vec<[u8; 6]> = self.groups.difference(wanted).copied().collect();
        for mac in join {
            self.membership(libc::PACKET_ADD_MEMBERSHIP, mac)?;
            self.groups.insert(mac);
        }
        for mac in leave {
            self.membership(libc::PACKET_DROP_MEMBERSHIP, mac)?;
            self.groups.remove(&mac);
        }
        Ok(())
    }

    fn membership(&self, option: libc::c_int, mac: [u8; 6]) -> io::Result<()> {
        let mut mreq = libc::packet_mreq {
            mr_ifindex: self.ifindex,
            mr_type: libc::PACKET_MR_MULTICAST as u16,
            mr_alen: 6,
            mr_address: [0; 8],
        };
        mreq.mr_address[..6].copy_from_slice(&mac);
        // SAFETY: `mreq` is a live packet_mreq.
        check(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                option,
                (&mreq as *const libc::packet_mreq).cast(),
                size_of::<libc::packet_mreq>() as libc::socklen_t,
            )
        })
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
