//! `herald-bench-faults`: what a client on the LAN sees while the speakers go through the
//! faults that fool heartbeats (wrong key, blocked or partitioned gossip, a clock behind,
//! restarts, CPU starvation), one fresh 3-node LAN per scenario with 3 VIPs. From the fault on, for
//! a fixed window, ARP requests go to every VIP in rounds (50 ms of listening each); reported
//! per scenario: requests, requests answered twice or more, requests unanswered, and the
//! duplicate-answer seconds they stand for (duplicated requests x the round period).
//! `HERALD_SPEAKER_BIN` runs another speaker build (the one before a change, say). Run
//! through `bench/faults`; figures in docs/benchmarks.md.

use std::net::IpAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Result;
use herald_lab::Process;
use herald_lab::client_view::{settled, speakers, vips};
use herald_lab::faults::{ClockBehind, block_inbound_gossip, partition_gossip};
use herald_lab::netns::{Lan, resolve};
use herald_lab::process_cluster::{KEY, setup, speaker};

#[derive(Default)]
struct Tally {
    requests: usize,
    duplicated: usize,
    unanswered: usize,
    period: Duration,
}

/// Asks for every VIP in rounds for `window`.
fn watch(lan: &Lan, vips: &[IpAddr], window: Duration) -> Tally {
    let mut tally = Tally::default();
    let start = Instant::now();
    let mut rounds = 0u32;
    while start.elapsed() < window {
        for ip in vips {
            let answers = resolve(&lan.client, *ip, Duration::from_millis(50)).unwrap_or_default();
            tally.requests += 1;
            match answers.len() {
                0 => tally.unanswered += 1,
                1 => {}
                _ => tally.duplicated += 1,
            }
        }
        rounds += 1;
    }
    tally.period = start.elapsed() / rounds.max(1);
    tally
}

/// Two busy loops per core for the window: other work saturating the machine.
fn saturate() -> Vec<Child> {
    (0..4)
        .filter_map(|_| {
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .ok()
        })
        .collect()
}

async fn scenario(name: &str, window: Duration) -> Result<()> {
    let (cp, lan, _controller) = setup(3).await;
    let client = cp.client();
    let wrong_key = name == "wrong key";
    let nodes: &[&str] = if wrong_key {
        &["n1", "n2"]
    } else {
        &["n1", "n2", "n3"]
    };
    let mut all = speakers(&cp, &lan, nodes);
    let vips = vips(&client, &lan, 3).await;
    settled(&lan, &vips, Duration::from_secs(30));
    let mut hogs = Vec::new();
    let mut _extra: Option<Process> = None;
    let mut _behind: Option<ClockBehind> = None;
    match name {
        "wrong key" => {
            _extra = Some(speaker(
                &cp,
                &lan,
                "n3",
                "another-key-0123456789",
                "speaker-n3-wrong",
            ))
        }
        "blocked inbound gossip" => block_inbound_gossip(&lan, "n1", true),
        "gossip partition" => partition_gossip(&lan, "n1"),
        "clock 1 h back" => {
            all[1].kill();
            _behind = Some(ClockBehind::start(&cp, &lan, "n2"));
        }
        "rolling restart (SIGTERM)" => {
            all[0].signal(libc::SIGTERM);
            // The restart follows the clean exit at once, as a DaemonSet rollout does.
            std::thread::sleep(Duration::from_millis(100));
            all[0].kill();
            all[0] = speaker(&cp, &lan, "n1", KEY, "speaker-n1-again");
        }
        "rolling restart (kill -9)" => {
            all[0].kill();
            all[0] = speaker(&cp, &lan, "n1", KEY, "speaker-n1-again");
        }
        "CPU saturation" => hogs = saturate(),
        other => anyhow::bail!("unknown scenario {other}"),
    }
    let t = watch(&lan, &vips, window);
    for mut hog in hogs {
        let _ = hog.kill();
        let _ = hog.wait();
    }
    println!(
        "| {name} | {:.0} s | {} | {} | {:.2} | {} |",
        window.as_secs_f64(),
        t.requests,
        t.duplicated,
        t.duplicated as f64 * t.period.as_secs_f64(),
        t.unanswered
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    herald_lab::init_tracing();
    println!("| fault | window | requests | answered twice | duplicate-answer s | unanswered |");
    println!("|---|---|---|---|---|---|");
    for (name, secs) in [
        ("wrong key", 10),
        ("blocked inbound gossip", 10),
        ("gossip partition", 10),
        ("clock 1 h back", 10),
        ("rolling restart (SIGTERM)", 5),
        ("rolling restart (kill -9)", 5),
        ("CPU saturation", 20),
    ] {
        scenario(name, Duration::from_secs(secs)).await?;
    }
    Ok(())
}
