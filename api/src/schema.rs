//! Hand-written parts of the CRD schemas: the CEL rules that make the API server itself refuse
//! a bad address entry or community, with a message that names it. They mirror `address.rs`
//! and `bgp.rs`.

use schemars::{Schema, SchemaGenerator, json_schema};

/// Longest address entry accepted: an IPv6 range of two full-length addresses with spaces.
const MAX_ENTRY_LEN: u32 = 100;
/// Bounds the API server's CEL cost estimate; far more entries than any real pool has.
const MAX_ENTRIES: u32 = 1024;

/// CEL: `entry` (a string expression) is `first-last` with two IPs.
fn is_range(entry: &str) -> String {
    format!(
        "(!isCIDR({entry}) && {entry}.split('-').size() == 2 && isIP({entry}.split('-')[0].trim()) && isIP({entry}.split('-')[1].trim()))"
    )
}

/// CEL: the numeric value of the IPv4 address `ip` (a string expression of a valid IPv4).
///
/// CEL has no ordering on IPs. IPv4 is cheap to compute; for IPv6 every formulation tried
/// (hextet expansion, prefix walks with `cidr().containsIP`) exceeds the API server's CEL cost
/// budget, so a reversed IPv6 range is caught by the controller and reported as the pool's
/// `Invalid` condition instead (docs/configuration.md says so).
fn ipv4_value(ip: &str) -> String {
    let octet = |i: usize| format!("int({ip}.split('.')[{i}])");
    format!(
        "({} * 16777216 + {} * 65536 + {} * 256 + {})",
        octet(0),
        octet(1),
        octet(2),
        octet(3)
    )
}

/// Schema of `IPPool.spec.addresses`.
pub fn address_list(_: &mut SchemaGenerator) -> Schema {
    let range = is_range("self");
    let first = "self.split('-')[0].trim()";
    let last = "self.split('-')[1].trim()";
    let rules = serde_json::json!([
        {
            "rule": format!("isCIDR(self) || {range}"),
            "messageExpression": "'\"' + self + '\" is neither a CIDR (192.0.2.0/24, 2001:db8::/64) nor a range of two addresses (192.0.2.10-192.0.2.20)'",
        },
        {
            "rule": "!isCIDR(self) || cidr(self) == cidr(self).masked()",
            "messageExpression": "'\"' + self + '\" has host bits set: write the network address (192.0.2.0/24, not 192.0.2.1/24)'",
        },
        {
            "rule": format!("!{range} || ip({first}).family() == ip({last}).family()"),
            "messageExpression": "'\"' + self + '\" mixes IPv4 and IPv6: a range must stay within one family'",
        },
        {
            "rule": format!(
                "!{range} || ip({first}).family() != 4 || ip({last}).family() != 4 || {} <= {}",
                ipv4_value(first),
                ipv4_value(last)
            ),
            "messageExpression": "'\"' + self + '\" starts after it ends'",
        },
    ]);
    json_schema!({
        "type": "array",
        "description": "Addresses Herald may hand out: CIDRs (192.0.2.0/24, 2001:db8::/64) and inclusive ranges of one family (192.0.2.10-192.0.2.20).",
        "minItems": 1,
        "maxItems": MAX_ENTRIES,
        "items": {
            "type": "string",
            "maxLength": MAX_ENTRY_LEN,
            "x-kubernetes-validations": rules,
        },
    })
}

/// Schema of `IPPool.spec.reservations[].addresses`: one or two IP addresses.
pub fn reserved_addresses(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": 2,
        "items": {
            "type": "string",
            // The longest IPv6 text form.
            "maxLength": 45,
            "x-kubernetes-validations": [{
                "rule": "isIP(self)",
                "messageExpression": "'\"' + self + '\" is not an IP address (192.0.2.10, 2001:db8::10)'",
            }],
        },
    })
}

/// Most communities one advertisement may attach: far more than any real route carries, and
/// a bound the API server's CEL cost estimate needs.
const MAX_COMMUNITIES: u32 = 64;

/// Schema of `BGPAdvertisement.spec.communities`: each a standard community, a large one
/// or a well-known name (`bgp.rs`'s `Community::parse` checks the ranges of the numbers).
pub fn community_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "Communities attached to the routes: standard ones as 65000:100 or a well-known name (no-export, no-advertise, no-export-subconfed, no-peer, graceful-shutdown, blackhole), large ones as large:65000:1:2.",
        "maxItems": MAX_COMMUNITIES,
        "items": {
            "type": "string",
            "maxLength": 40,
            "x-kubernetes-validations": [{
                "rule": "self.matches('^(no-export|no-advertise|no-export-subconfed|no-peer|graceful-shutdown|blackhole|[0-9]{1,5}:[0-9]{1,5}|large:[0-9]{1,10}:[0-9]{1,10}:[0-9]{1,10})$')",
                "messageExpression": "'\"' + self + '\" is not a community: write ASN:VALUE (each 0-65535), large:ASN:VALUE:VALUE (each 0-4294967295) or a well-known name (no-export, no-advertise, no-export-subconfed, no-peer, graceful-shutdown, blackhole)'",
            }],
        },
    })
}
