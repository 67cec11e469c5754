//! Faults injected into the process cluster's speakers, shared by the speaker's end-to-end
//! tests and its fault benchmark: gossip blocked inbound or partitioned (nftables in the
//! node's namespace), and a speaker whose wall clock runs an hour behind (libfaketime).

use crate::netns::Lan;
use crate::process_cluster::KEY;
use crate::{ControlPlane, Process};

/// Drops UDP to the gossip port arriving at `node` (its heartbeats still go out).
pub fn block_inbound_gossip(lan: &Lan, node: &str, block: bool) {
    if block {
        nft(lan, node, &gossip_rules(&["input"]));
    } else {
        nft(lan, node, "delete table inet herald_test\n");
    }
}

/// Drops the gossip to and from `node` (ARP still flows): a partition of the gossip port only.
pub fn partition_gossip(lan: &Lan, node: &str) {
    nft(lan, node, &gossip_rules(&["input", "output"]));
}

/// An nftables table dropping UDP to the gossip port on the hooks `hooks`.
fn gossip_rules(hooks: &[&str]) -> String {
    let mut script = String::from("add table inet herald_test\n");
    for hook in hooks {
        script.push_str(&format!(
            "add chain inet herald_test {hook} {{ type filter hook {hook} priority 0; }}\nadd rule inet herald_test {hook} udp dport {} drop\n",
            crate::process_cluster::GOSSIP_PORT
        ));
    }
    script
}

/// Runs an nft script in `node`'s namespace.
fn nft(lan: &Lan, node: &str, script: &str) {
    nft_in(&lan.node(node).ns, script).expect("nft (scripts/setup installs nftables)");
}

/// Runs an nft script in the network namespace `ns`.
pub fn nft_in(ns: &str, script: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("nft")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(script.as_bytes())?;
    anyhow::ensure!(child.wait()?.success(), "nft failed in {ns}");
    Ok(())
}

/// A speaker whose wall clock runs an hour behind (libfaketime; its monotonic clock is the
/// real one), as after a VM restore or on a board without an RTC.
pub struct ClockBehind(Process);

impl ClockBehind {
    pub fn start(cp: &ControlPlane, lan: &Lan, node: &str) -> Self {
        let mut cmd = crate::process_cluster::speaker_command(cp, &lan.node(node).ns, node, KEY);
        cmd.env(
            "LD_PRELOAD",
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        )
        .env("FAKETIME", "-3600")
        .env("DONT_FAKE_MONOTONIC", "1");
        let log = format!("speaker-{node}-behind");
        let process = Process::spawn(&log, cmd, &cp.dir().join(format!("{log}.log")))
            .expect("speaker (scripts/setup installs faketime)");
        Self(process)
    }
}

impl Drop for ClockBehind {
    /// Stops the speaker and removes the shared memory libfaketime leaves behind when its
    /// process is killed.
    fn drop(&mut self) {
        let pid = self.0.pid();
        self.0.kill();
        for path in [
            format!("/dev/shm/faketime_shm_{pid}"),
            format!("/dev/shm/sem.faketime_sem_{pid}"),
        ] {
            let _ = std::fs::remove_file(path);
        }
    }
}
