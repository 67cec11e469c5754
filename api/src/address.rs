//! The syntax of an `IPPool` address entry: a CIDR (`192.0.2.0/24`, `2001:db8::/64`) or an
//! inclusive range of one family (`192.0.2.10-192.0.2.20`). The API server enforces the same
//! rules with CEL (see `schema.rs`); this parser is what the controller trusts, so a pool that
//! got past an older CRD is still caught and reported in its status.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnetwork::IpNetwork;

/// Why an address entry is not usable. Every message names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error(
        "{entry:?} is neither a CIDR (192.0.2.0/24, 2001:db8::/64) nor a range of two addresses (192.0.2.10-192.0.2.20)"
    )]
    Malformed { entry: String },
    #[error("{entry:?} has host bits set: did you mean {suggestion}?")]
    HostBits { entry: String, suggestion: String },
    #[error("{entry:?} mixes IPv4 and IPv6: a range must stay within one family")]
    MixedFamilies { entry: String },
    #[error("{entry:?} starts after it ends")]
    Reversed { entry: String },
}

/// An inclusive range of addresses of one family, `start <= end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpRange {
    start: IpAddr,
    end: IpAddr,
}

impl IpRange {
    /// A range from `start` to `end` inclusive, or `None` when they differ in family or are reversed.
    pub fn new(start: IpAddr, end: IpAddr) -> Option<Self> {
        (start.is_ipv4() == end.is_ipv4() && start <= end).then_some(Self { start, end })
    }

    pub fn start(&self) -> IpAddr {
        self.start
    }

    pub fn end(&self) -> IpAddr {
        self.end
    }

    pub fn is_ipv4(&self) -> bool {
        self.start.is_ipv4()
    }

    /// Number of addresses, saturating at `u128::MAX` (only `::/0` saturates).
    pub fn len(&self) -> u128 {
        (to_u128(self.end) - to_u128(self.start)).saturating_add(1)
    }

    /// Never true: a range holds at least its start. Present because `len` is.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4() && self.start <= ip && ip <= self.end
    }

    pub fn overlaps(&self, other: &IpRange) -> bool {
        self.is_ipv4() == other.is_ipv4() && self.start <= other.end && other.start <= self.end
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// Numeric value of an address, IPv4 in the low 32 bits.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// One entry of `IPPool.spec.addresses`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressEntry {
    pub text: String,
    pub range: IpRange,
}

impl AddressEntry {
    pub fn parse(entry: &str) -> Result<Self, AddressError> {
        let range = parse_range(entry)?;
        Ok(Self {
            text: entry.to_owned(),
            range,
        })
    }
}

impl FromStr for AddressEntry {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn parse_range(entry: &str) -> Result<IpRange, AddressError> {
    let malformed = || AddressError::Malformed {
        entry: entry.to_owned(),
    };
    if entry.contains('/') {
        let net = IpNetwork::from_str(entry).map_err(|_| malformed())?;
        if net.ip() != net.network() {
            return Err(AddressError::HostBits {
                entry: entry.to_owned(),
                suggestion: format!("{}/{}", net.network(), net.prefix()),
            });
        }
        let end = match net {
            IpNetwork::V4(v4) => IpAddr::V4(v4.broadcast()),
            IpNetwork::V6(v6) => {
                let host_mask = u128::MAX.checked_shr(u32::from(v6.prefix())).unwrap_or(0);
                IpAddr::V6((u128::from(v6.network()) | host_mask).into())
            }
        };
        return IpRange::new(net.network(), end).ok_or_else(malformed);
    }
    let (first, last) = entry.split_once('-').ok_or_else(malformed)?;
    let first = IpAddr::from_str(first.trim()).map_err(|_| malformed())?;
    let last = IpAddr::from_str(last.trim()).map_err(|_| malformed())?;
    if first.is_ipv4() != last.is_ipv4() {
        return Err(AddressError::MixedFamilies {
            entry: entry.to_owned(),
        });
    }
    IpRange::new(first, last).ok_or_else(|| AddressError::Reversed {
        entry: entry.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(entry: &str) -> IpRange {
        AddressEntry::parse(entry)
            .map(|e| e.range)
            .unwrap_or_else(|e| panic!("{entry}: {e}"))
    }

    #[test]
    fn cidrs_cover_network_to_broadcast() {
        let r = range("192.0.2.0/24");
        assert_eq!(r.to_string(), "192.0.2.0-192.0.2.255");
        assert_eq!(r.len(), 256);
        assert_eq!(range("2001:db8::/64").len(), 1 << 64);
        assert_eq!(
            range("2001:db8::/120").to_string(),
            "2001:db8::-2001:db8::ff"
        );
        assert_eq!(range("2001:db8::1/128").len(), 1);
        assert_eq!(range("192.0.2.7/32").to_string(), "192.0.2.7-192.0.2.7");
        assert_eq!(range("::/0").len(), u128::MAX);
        assert_eq!(range("0.0.0.0/0").len(), 1 << 32);
    }

    #[test]
    fn ranges_are_inclusive_and_may_have_spaces() {
        assert_eq!(range("192.0.2.10-192.0.2.20").len(), 11);
        assert_eq!(range("192.0.2.10 - 192.0.2.10").len(), 1);
        assert_eq!(range("2001:db8::a-2001:db8::1:0").len(), 0x1_0000 - 0xa + 1);
    }

    #[test]
    fn bad_entries_are_named_in_the_error() {
        let cases = [
            ("192.0.2.0/33", "neither a CIDR"),
            ("192.0.2.256/24", "neither a CIDR"),
            ("not-an-ip", "neither a CIDR"),
            ("192.0.2.1", "neither a CIDR"),
            ("", "neither a CIDR"),
            ("192.0.2.1/24", "did you mean 192.0.2.0/24?"),
            ("2001:db8::1/64", "did you mean 2001:db8::/64?"),
            ("192.0.2.20-192.0.2.10", "starts after it ends"),
            ("2001:db8::2-2001:db8::1", "starts after it ends"),
            ("192.0.2.1-2001:db8::1", "mixes IPv4 and IPv6"),
        ];
        for (entry, want) in cases {
            let err = AddressEntry::parse(entry).expect_err(entry).to_string();
            assert!(err.contains(want), "{entry}: {err}");
            assert!(
                err.contains(&format!("{entry:?}")),
                "{entry}: error does not name it: {err}"
            );
        }
    }

    #[test]
    fn contains_and_overlaps_respect_family() {
        let v4 = range("192.0.2.0/30");
        assert!(v4.contains("192.0.2.3".parse().unwrap()));
        assert!(!v4.contains("192.0.2.4".parse().unwrap()));
        assert!(!v4.contains("::c000:203".parse().unwrap()));
        assert!(v4.overlaps(&range("192.0.2.3-192.0.2.9")));
        assert!(!v4.overlaps(&range("192.0.2.4-192.0.2.9")));
        assert!(!v4.overlaps(&range("::/0")));
    }
}
