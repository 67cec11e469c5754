//! `herald-speaker`: will announce allocated IPs with ARP and NDP (issue #4). Until then it
//! refuses to run rather than pretend to announce anything.

fn main() -> anyhow::Result<()> {
    anyhow::bail!(
        "herald-speaker does not announce anything yet: ARP/NDP announcing is not implemented (issue #4)"
    )
}
