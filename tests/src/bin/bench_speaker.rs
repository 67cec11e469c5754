//! `herald-bench-speaker`: the speaker's failover and answer times on a namespace LAN, and its
//! footprint with many announced IPs. Run through `bench/speaker` (release builds).
//!
//! 1. Failover, 20 rounds each: kill -9 (then SIGTERM) the speaker owning a Service IP; time
//!    until a real TCP connection from the client lands on another node (the client's kernel
//!    learns the new MAC from the gratuitous ARP). The stopped speaker is restarted and the
//!    IP allowed to settle before the next round.
//! 2. ARP answer time: 1,000 requests from the client to the owner, request to reply.
//! 3. Footprint: N Services (status written directly, as the controller would), one speaker
//!    per node; peak RSS of a speaker and its CPU over 60 idle seconds.

use std::net::{IpAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use herald_lab::netns::{Lan, in_ns, resolve, tcp_hello};
use herald_lab::process_cluster::{KEY, PORT, setup, speaker, speakers, web_service};
use herald_lab::{ControlPlane, Process};
use kube::api::{Api, Patch, PatchParams};

fn owner_now(lan: &Lan, ip: IpAddr) -> Option<String> {
    match resolve(&lan.client, ip, Duration::from_millis(100))
        .ok()?
        .as_slice()
    {
        [mac] => lan.node_of_mac(*mac),
        _ => None,
    }
}

/// Waits until the same single node has answered for 1.5 s.
fn stable_owner(lan: &Lan, ip: IpAddr) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut since: Option<(String, Instant)> = None;
    while Instant::now() < deadline {
        let now = owner_now(lan, ip);
        match (&since, now) {
            (Some((o, t)), Some(n)) if *o == n => {
                if t.elapsed() > Duration::from_millis(1500) {
                    return Ok(n);
                }
            }
            (_, Some(n)) => since = Some((n, Instant::now())),
            (_, None) => since = None,
        }
    }
    bail!("no stable owner for {ip}")
}

/// Time until a TCP connection from the client reaches a node other than `old`.
fn time_to_other_node(lan: &Lan, ip: IpAddr, old: &str, from: Instant) -> Result<Duration> {
    let deadline = from + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(node) = tcp_hello_quick(lan, ip)
            && node != old
        {
            return Ok(from.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("the client never reached another node")
}

fn tcp_hello_quick(lan: &Lan, ip: IpAddr) -> Result<String> {
    in_ns(&lan.client.ns, move || -> Result<String> {
        use std::io::Read;
        let mut s = TcpStream::connect_timeout(&(ip, PORT).into(), Duration::from_millis(50))?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "median {:.0} ms, max {:.0} ms (n={})",
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1]),
        samples.len()
    )
}

async fn failover(
    cp: &ControlPlane,
    lan: &Lan,
    speakers: &mut [Process],
    ip: IpAddr,
    signal: i32,
    rounds: usize,
) -> Result<Vec<Duration>> {
    let mut samples = Vec::new();
    for round in 0..rounds {
        let old = stable_owner(lan, ip)?;
        // The client must be talking to the owner before it fails.
        let before = tcp_hello(&lan.client, ip, PORT)?;
        if before != old {
            bail!("round {round}: the client reached {before}, the owner is {old}");
        }
        let i: usize = old.trim_start_matches('n').parse::<usize>()? - 1;
        let t0 = Instant::now();
        if signal == libc::SIGKILL {
            speakers[i].kill();
        } else {
            speakers[i].signal(signal);
        }
        samples.push(time_to_other_node(lan, ip, &old, t0)?);
        // Bring it back for the next round.
        speakers[i] = speaker(
            cp,
            lan,
            &old,
            KEY,
            &format!("speaker-{old}-{signal}-{round}"),
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    Ok(samples)
}

/// How long the footprint's CPU at rest is measured.
const IDLE: Duration = Duration::from_secs(60);

async fn footprint(cp: &ControlPlane, lan: &Lan, speakers: &[Process], n: usize) -> Result<String> {
    let client = cp.client();
    // Addresses in 198.18.0.0/15 (benchmarking range), never sent to: only announced. No
    // node has an interface in that range, so its advertisement names the interface (as a
    // user announcing an off-subnet range would).
    let pool: serde_json::Value = serde_yaml_ng::from_str(
        "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {name: many}\nspec: {addresses: [198.18.0.0/15], autoAssign: false}",
    )?;
    Api::<herald_api::IPPool>::all(client.clone())
        .patch("many", &PatchParams::apply("bench"), &Patch::Apply(&pool))
        .await?;
    let ad: serde_json::Value = serde_yaml_ng::from_str(
        "apiVersion: herald.dev/v1alpha1\nkind: L2Advertisement\nmetadata: {name: many}\nspec: {ipPools: [many], interfaces: [eth0]}",
    )?;
    Api::<herald_api::L2Advertisement>::all(client.clone())
        .patch("many", &PatchParams::apply("bench"), &Patch::Apply(&ad))
        .await?;
    let services: Vec<(String, String)> = (0..n)
        .map(|i| {
            (
                format!("many-{i}"),
                format!("198.18.{}.{}", i / 250, i % 250 + 1),
            )
        })
        .collect();
    herald_lab::process_cluster::allocated_services(&client, &services).await?;
    // Let every speaker see them all and settle, then measure a minute at rest: work done
    // once a minute (the reporter's list of the records, say) is in it once, not by chance.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let pid = speakers[0].pid();
    let cpu0 = herald_lab::process::cpu_seconds(pid)?;
    tokio::time::sleep(IDLE).await;
    let cpu = (herald_lab::process::cpu_seconds(pid)? - cpu0) / IDLE.as_secs_f64() * 100.0;
    let metrics = herald_lab::netns::http_get_in(&lan.nodes[0].ns, 9473, "/metrics")?;
    let announced = metrics
        .lines()
        .find_map(|l| l.strip_prefix("herald_speaker_ips_announced "))
        .unwrap_or("?")
        .to_owned();
    Ok(format!(
        "{n} Services with an IP; speaker on n1 answers for {announced}: peak RSS {:.1} MiB, RSS now {:.1} MiB, idle CPU {cpu:.1}% of one core",
        herald_lab::process::memory_mib(pid, "VmHWM:")?,
        herald_lab::process::memory_mib(pid, "VmRSS:")?,
    ))
}

#[tokio::main]
async fn main() -> Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20);
    let many: usize = std::env::args()
        .nth(2)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let (cp, lan, mut controller) = setup(3).await;
    let client = cp.client();
    let mut speakers: Vec<Process> = speakers(&cp, &lan);
    let ip = web_service(&client, &lan).await;

    // ROUNDS 0 skips the failover rounds (footprint only).
    if rounds > 0 {
        let kill = failover(&cp, &lan, &mut speakers, ip, libc::SIGKILL, rounds).await?;
        println!(
            "failover after kill -9 (client TCP reaches another node): {}",
            summary(kill)
        );
        let term = failover(&cp, &lan, &mut speakers, ip, libc::SIGTERM, rounds).await?;
        println!(
            "handover after SIGTERM (client TCP reaches another node): {}",
            summary(term)
        );
    }
    let mut arp = herald_lab::netns::arp_times(&lan.client, ip, 1000)?;
    arp.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "ARP request to reply, from the client: p50 {:.0} µs, p99 {:.0} µs (n={})",
        us(arp[arp.len() / 2]),
        us(arp[arp.len() * 99 / 100]),
        arp.len()
    );
    // The footprint Services carry statuses written by the bench; the controller would
    // clear them (another class), so it stops here.
    controller.kill();
    println!("{}", footprint(&cp, &lan, &speakers, many).await?);
    Ok(())
}
