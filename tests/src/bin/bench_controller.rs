//! `herald-bench-controller`: how fast the controller allocates, against the limit set by the
//! API server itself. Run through `bench/controller` (release builds). For each size N:
//!
//! 1. Limit: N Services of another loadBalancerClass are created, then a minimal client
//!    server-side-applies `status.loadBalancer` to each, 32 requests in flight (the
//!    controller's write concurrency); and 200 sequential PATCHes give the round-trip time.
//! 2. Throughput: N Herald Services are created while the controller is stopped; the
//!    controller starts; time until every one has an IP (as seen by a watch).
//! 3. Latency: with those N present, 200 more are created one at a time; create-to-status
//!    latency of each (create returned -> IP seen by a watch).
//! 4. Memory: the controller's peak RSS (VmHWM) at the end.
//! 5. Restart: the controller is killed (-9), one more Service is created, the controller
//!    starts again; time from its start until that Service's IP is seen (it lists the N
//!    Services and rebuilds its state from their statuses first).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use herald_lab::{ControlPlane, Options, Process};
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

const CONCURRENCY: usize = 32;
/// Creation is setup, not measured: as many in flight as helps the API server.
const CREATE_CONCURRENCY: usize = 64;
const LATENCY_SAMPLES: usize = 200;
/// Restarts measured (the median is reported, with the fastest and slowest).
const RESTARTS: usize = 3;

/// A LoadBalancer Service; `cluster_ip`: the `index`th address of the service range instead
/// of one the API server picks.
fn service(name: &str, class: Option<&str>, cluster_ip: Option<usize>) -> Result<Service> {
    let class = class
        .map(|c| format!(", loadBalancerClass: {c}"))
        .unwrap_or_default();
    let cluster_ip = cluster_ip
        .map(|i| format!(", clusterIP: {}", setup_cluster_ip(i)))
        .unwrap_or_default();
    // No node ports: 10,000 Services would exhaust the default node port range.
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{type: LoadBalancer, allocateLoadBalancerNodePorts: false, ports: [{{port: 80}}]{class}{cluster_ip}}}"
    );
    Ok(serde_yaml_ng::from_str(&yaml)?)
}

async fn create_many(client: &Client, names: &[String], class: Option<&str>) -> Result<()> {
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let started = Instant::now();
    let mut created = std::pin::pin!(
        stream::iter(names.iter().enumerate())
            .map(|(i, n)| {
                let api = api.clone();
                async move {
                    api.create(&PostParams::default(), &service(n, class, Some(i))?)
                        .await
                        .with_context(|| format!("creating {n}"))
                }
            })
            .buffer_unordered(CREATE_CONCURRENCY)
    );
    let (mut done, mut window) = (0usize, Instant::now());
    while let Some(result) = created.next().await {
        result?;
        done += 1;
        // Creating 100,000 Services takes a while: say how it goes (stderr, not the table).
        if done % 10_000 == 0 {
            eprintln!(
                "created {done}/{} ({:.0}/s over the last 10,000, {:.0} s in all)",
                names.len(),
                10_000.0 / window.elapsed().as_secs_f64(),
                started.elapsed().as_secs_f64()
            );
            window = Instant::now();
        }
    }
    Ok(())
}

/// The ClusterIP of the `i`th Service created in bulk: from 10.97.0.0 up, inside the /12
/// service range and clear of `kubernetes` (10.96.0.1) and of the range's lower band, which
/// the API server keeps for static choices. The API server allocates a dynamic ClusterIP
/// under one lock per IP family, an IPAddress write at a time, and slower as Services
/// accumulate (99/s for the first 10,000 here, under 40/s past 10,000): with the address
/// given, creation runs in parallel. Herald never reads ClusterIPs.
fn setup_cluster_ip(i: usize) -> std::net::Ipv4Addr {
    let base = u32::from(std::net::Ipv4Addr::new(10, 97, 0, 0));
    std::net::Ipv4Addr::from(base + u32::try_from(i).unwrap_or(u32::MAX - base))
}

fn status_patch(i: usize) -> serde_json::Value {
    let ip = format!("198.18.{}.{}", (i / 250) % 250, i % 250 + 1);
    serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}})
}

/// Records when each Service is first seen with an ingress IP.
fn watch_allocations(client: &Client) -> Arc<Mutex<HashMap<String, Instant>>> {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let sink = seen.clone();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).applied_objects());
        while let Some(Ok(svc)) = events.next().await {
            let has_ip = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .is_some_and(|i| !i.is_empty());
            if has_ip {
                let mut seen = sink.lock();
                seen.entry(svc.metadata.name.unwrap_or_default())
                    .or_insert_with(Instant::now);
            }
        }
    });
    seen
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn wait_seen(
    seen: &Mutex<HashMap<String, Instant>>,
    names: &[String],
    limit: Duration,
) -> Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        {
            let seen = seen.lock();
            if names.iter().all(|n| seen.contains_key(n)) {
                return Ok(names
                    .iter()
                    .map(|n| seen[n])
                    .max()
                    .unwrap_or_else(Instant::now));
            }
            if Instant::now() > deadline {
                let done = names.iter().filter(|n| seen.contains_key(*n)).count();
                bail!("only {done} of {} allocated in {limit:?}", names.len());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A control plane with the benchmark's IPPool (198.18.0.0/15), an admin client and the
/// `default` Services API.
async fn bench_cluster() -> Result<(ControlPlane, kube::Client, Api<Service>)> {
    // 100,000 LoadBalancer Services need 100,000 ClusterIPs: a /12 (the largest IPv4
    // service range Kubernetes allows) instead of the usual /16.
    let cp = ControlPlane::start_with(Options {
        service_cidrs: "10.96.0.0/12".to_owned(),
        apiserver_args: std::env::var("HERALD_BENCH_APISERVER_ARGS")
            .map(|a| a.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        ..Options::default()
    })
    .await?;
    let client = cp.client();
    let pool: serde_json::Value = serde_yaml_ng::from_str(
        "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {name: bench}\nspec: {addresses: [198.18.0.0/15]}",
    )?;
    Api::<herald_api::IPPool>::all(client.clone())
        .patch("bench", &PatchParams::apply("bench"), &Patch::Apply(&pool))
        .await?;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    Ok((cp, client, api))
}

/// 1. The limit: a minimal client writing the same status, on its own API server.
async fn limit(n: usize) -> Result<(f64, Vec<Duration>)> {
    let (_cp, client, api) = bench_cluster().await?;
    let foreign: Vec<String> = (0..n).map(|i| format!("limit-{i}")).collect();
    create_many(&client, &foreign, Some("bench.example/none")).await?;
    let started = Instant::now();
    stream::iter(foreign.iter().enumerate())
        .map(|(i, name)| {
            let api = api.clone();
            async move {
                api.patch_status(
                    name,
                    &PatchParams::apply("bench").force(),
                    &Patch::Apply(status_patch(i)),
                )
                .await
                .with_context(|| format!("patching {name}"))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let limit_rate = n as f64 / started.elapsed().as_secs_f64();
    let mut rtts = Vec::new();
    for (i, name) in foreign.iter().take(LATENCY_SAMPLES).enumerate() {
        let t = Instant::now();
        api.patch_status(
            name,
            &PatchParams::apply("bench2").force(),
            &Patch::Apply(status_patch(i + 1)),
        )
        .await?;
        rtts.push(t.elapsed());
    }
    rtts.sort();
    Ok((limit_rate, rtts))
}

fn controller_command(controller_bin: &PathBuf, cp: &ControlPlane) -> Command {
    let mut cmd = Command::new(controller_bin);
    cmd.args([
        "run",
        "--leader-elect=false",
        "--metrics-address",
        "127.0.0.1:0",
    ])
    .env("KUBECONFIG", cp.kubeconfig())
    .env("RUST_LOG", "warn");
    cmd
}

async fn run_size(n: usize, controller_bin: &PathBuf) -> Result<String> {
    // HERALD_BENCH_SKIP_LIMIT=1: Herald's side only (quick memory checks); ratios print as 0.
    let (limit_rate, rtts) = if std::env::var_os("HERALD_BENCH_SKIP_LIMIT").is_some() {
        (f64::INFINITY, vec![Duration::from_millis(1)])
    } else {
        limit(n).await?
    };
    // A fresh API server for Herald, so that it holds exactly N Services.
    let (cp, client, api) = bench_cluster().await?;

    // 2. Throughput: N Services waiting, then the controller starts.
    let seen = watch_allocations(&client);
    let names: Vec<String> = (0..n).map(|i| format!("svc-{i}")).collect();
    create_many(&client, &names, None).await?;
    let started = Instant::now();
    let controller = Process::spawn(
        "herald-controller",
        controller_command(controller_bin, &cp),
        &cp.dir().join("controller.log"),
    )?;
    let done = wait_seen(&seen, &names, Duration::from_secs(600)).await?;
    let herald_rate = n as f64 / (done - started).as_secs_f64();

    // 3. Latency: one at a time with N present.
    let mut latencies = Vec::new();
    for i in 0..LATENCY_SAMPLES {
        let name = format!("lat-{i}");
        api.create(&PostParams::default(), &service(&name, None, None)?)
            .await?;
        let created = Instant::now();
        let at = wait_seen(&seen, std::slice::from_ref(&name), Duration::from_secs(30)).await?;
        latencies.push(at.saturating_duration_since(created));
    }
    latencies.sort();
    let rss = herald_lab::process::memory_mib(controller.pid(), "VmHWM:")?;
    let rss_now = herald_lab::process::memory_mib(controller.pid(), "VmRSS:")?;

    // 5. Restart to first IP: killed, a Service created, started again; the median of
    // RESTARTS (one run is at the mercy of what else the two cores do at that second).
    let mut controller = controller;
    let mut restarts = Vec::new();
    for i in 0..RESTARTS {
        controller.kill();
        let probe = format!("restart-probe-{i}");
        api.create(&PostParams::default(), &service(&probe, None, None)?)
            .await?;
        let restarted = Instant::now();
        controller = Process::spawn(
            "herald-controller-restarted",
            controller_command(controller_bin, &cp),
            &cp.dir().join(format!("controller-restarted-{i}.log")),
        )?;
        let at = wait_seen(
            &seen,
            std::slice::from_ref(&probe),
            Duration::from_secs(120),
        )
        .await?;
        restarts.push(at.saturating_duration_since(restarted));
    }
    restarts.sort();
    let restart = percentile(&restarts, 0.5);

    let p50 = percentile(&latencies, 0.5);
    Ok(format!(
        "| {n} | {:.0}/s | {:.0}/s ({:.0}%) | {} | {} | {} | {} ({:.1}x) | {rss:.1} MiB (now {rss_now:.1}) | {:.2} s ({:.2}-{:.2}) |",
        limit_rate,
        herald_rate,
        100.0 * herald_rate / limit_rate,
        ms(percentile(&rtts, 0.5)),
        ms(percentile(&rtts, 0.99)),
        ms(p50),
        ms(percentile(&latencies, 0.99)),
        p50.as_secs_f64() / percentile(&rtts, 0.5).as_secs_f64(),
        restart.as_secs_f64(),
        restarts.first().unwrap_or(&restart).as_secs_f64(),
        restarts.last().unwrap_or(&restart).as_secs_f64(),
    ))
}

#[tokio::main]
async fn main() -> Result<()> {
    herald_lab::init_tracing();
    let controller_bin = PathBuf::from(
        std::env::var("HERALD_CONTROLLER_BIN")
            .context("HERALD_CONTROLLER_BIN (bench/controller sets it)")?,
    );
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("sizes are Service counts"))
        .collect::<Result<_>>()?;
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000]
    } else {
        sizes
    };
    println!(
        "| Services | minimal client PATCH rate | Herald allocation rate (% of limit) | PATCH RTT p50 | PATCH RTT p99 | create-to-IP p50 | create-to-IP p99 (p50 / RTT p50) | controller peak RSS | restart to first IP, median of 3 (fastest-slowest) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in sizes {
        println!("{}", run_size(n, &controller_bin).await?);
    }
    Ok(())
}
