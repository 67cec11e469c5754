//! Leader election on a `coordination.k8s.io` Lease: only the replica holding the Lease
//! allocates and writes. A replica that loses the Lease stops at once (the process exits and
//! is restarted as a standby) rather than risk two writers.

use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(clap::Args, Debug, Clone)]
pub struct LeaderArgs {
    /// Hold a Lease so that only one replica allocates. Turn off only with one replica.
    #[arg(long, env = "HERALD_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the Lease.
    #[arg(long, env = "HERALD_LEASE_NAME", default_value = "herald-controller")]
    pub lease_name: String,
    /// Namespace of the Lease (the chart sets the release namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Seconds a leader's Lease lasts without renewal: the longest a crashed leader's
    /// replacement waits.
    #[arg(long, env = "HERALD_LEASE_DURATION", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub lease_duration: u64,
    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

impl LeaderArgs {
    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        })
    }
}

/// A held Lease. Dropping it releases the Lease; a standby sees the release on its watch of
/// the Lease and takes it at once, without waiting for it to expire.
pub struct Election {
    changes: Option<watch::Receiver<bool>>,
    task: Option<
        JoinHandle<Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>>,
    >,
}

impl Election {
    /// Prepares the election: the Lease can be read (nothing to prepare when election is
    /// off). `lead` then waits for the Lease.
    pub async fn start(client: &Client, args: &LeaderArgs, identity: &str) -> Result<Self> {
        if !args.leader_elect {
            return Ok(Self {
                changes: None,
                task: None,
            });
        }
        let manager = build(client, args, identity).await?;
        let (changes, task) = follow(manager, client.clone(), args.clone(), identity.to_owned());
        tracing::info!(lease = %args.lease_name, %identity, "waiting to lead");
        Ok(Self {
            changes: Some(changes),
            task: Some(task),
        })
    }

    /// Whether this replica competes for a Lease (another may lead).
    pub fn elected(&self) -> bool {
        self.changes.is_some()
    }

    /// Waits until this replica leads (at once when election is off).
    pub async fn lead(&mut self) -> Result<()> {
        let Some(changes) = self.changes.as_mut() else {
            return Ok(());
        };
        while !*changes.borrow_and_update() {
            changes
                .changed()
                .await
                .context("the Lease watcher stopped")?;
        }
        tracing::info!("leading");
        Ok(())
    }

    /// Resolves with an error when the Lease is lost; never when election is off.
    pub async fn lost(&self) -> Result<()> {
        let Some(changes) = &self.changes else {
            return std::future::pending().await;
        };
        let mut changes = changes.clone();
        loop {
            if changes.changed().await.is_err() || !*changes.borrow_and_update() {
                anyhow::bail!("lost the leader Lease; stopping so that only one replica writes");
            }
        }
    }

    /// Gives the Lease up (called on a clean shutdown).
    pub async fn release(mut self) {
        // Closing the channel makes the watcher release the Lease and end.
        self.changes = None;
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(_)) => tracing::info!("Lease released"),
                Ok(Err(e)) => tracing::warn!("releasing the Lease: {e}"),
                Err(e) => tracing::warn!("releasing the Lease: {e}"),
            }
        }
    }
}

/// The Lease's manager for this replica, its state read from the API.
async fn build(client: &Client, args: &LeaderArgs, identity: &str) -> Result<LeaseManager> {
    LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(identity)
        .with_duration(args.lease_duration)
        // Renew when a third of the duration is left.
        .with_grace((args.lease_duration / 3).max(1))
        .build()
        .await
        .with_context(|| {
            format!(
                "preparing Lease {}/{}",
                args.lease_namespace, args.lease_name
            )
        })
}

/// Whether this replica leads, sent on every change; the task releases the Lease and ends
/// once every receiver is gone. The manager alone sleeps until a Lease held by another
/// replica expires (15 s by default), even when that replica released it on a clean stop:
/// a rolling upgrade then left no leader for that long. So the Lease is also watched, and a
/// release seen while not leading makes a fresh manager (its state read again) try at once.
fn follow(
    mut manager: LeaseManager,
    client: Client,
    args: LeaderArgs,
    identity: String,
) -> (
    watch::Receiver<bool>,
    JoinHandle<Result<LeaseManager, kube_lease_manager::LeaseManagerError>>,
) {
    let (sender, changes) = watch::channel(false);
    let task = tokio::spawn(async move {
        let api = Api::<Lease>::namespaced(client.clone(), &args.lease_namespace);
        let config =
            watcher::Config::default().fields(&format!("metadata.name={}", args.lease_name));
        let mut lease_events = std::pin::pin!(watcher(api, config).default_backoff());
        loop {
            // `changed()` is not cancel-safe: dropped between its renewal's PATCH and its
            // re-read of the Lease, it leaves the manager an expiry in the past, and the next
            // call renews at once. Every renewal is a Lease event, so dropping it for each
            // event renewed the Lease 20 times a second at rest. It is dropped only for a
            // fresh manager or the end.
            let woke = {
                let mut changed = std::pin::pin!(manager.changed());
                loop {
                    let woke = tokio::select! {
                        biased;
                        _ = sender.closed() => Woke::Closed,
                        result = &mut changed => Woke::Changed(result),
                        Some(event) = lease_events.next() => Woke::Lease(
                            matches!(&event, Ok(watcher::Event::Apply(l)) if released(l)),
                        ),
                    };
                    match woke {
                        Woke::Lease(true) if !*sender.borrow() => break woke,
                        Woke::Lease(_) => continue,
                        other => break other,
                    }
                }
            };
            match woke {
                Woke::Closed => return manager.release().await.map(|_| manager),
                Woke::Changed(Ok(leading)) => {
                    if sender.send(leading).is_err() {
                        return manager.release().await.map(|_| manager);
                    }
                }
                Woke::Changed(Err(e)) => {
                    tracing::warn!("the leader Lease: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Woke::Lease(true) if !*sender.borrow() => {
                    tracing::info!(%identity, "the Lease was released: taking it");
                    match build(&client, &args, &identity).await {
                        Ok(fresh) => manager = fresh,
                        Err(e) => tracing::warn!("{e:#}"),
                    }
                }
                Woke::Lease(_) => {}
            }
        }
    });
    (changes, task)
}

/// What woke the Lease task.
enum Woke {
    Closed,
    Changed(Result<bool, kube_lease_manager::LeaseManagerError>),
    /// The Lease changed; `true`: nobody holds it.
    Lease(bool),
}

/// Nobody holds the Lease (its holder released it).
fn released(lease: &Lease) -> bool {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .is_none_or(str::is_empty)
}
