//! `herald-speaker`: makes allocated IPs reachable on the LAN with ARP and NDP.

mod election;
mod interfaces;
mod membership;
mod packet;

fn main() -> anyhow::Result<()> {
    anyhow::bail!("herald-speaker: announcing is not implemented yet (issue #4)")
}
