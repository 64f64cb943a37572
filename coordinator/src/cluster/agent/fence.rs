//! Fencing: exactly one copy of a container runs, even when its host is
//! cut off but alive. Every acknowledged heartbeat grants this agent a
//! lease (see [`crate::membership`]); when it runs out, the coordinator
//! may soon declare the host down and restore its containers elsewhere, so
//! the agent stops here every container that has a restore policy, or that
//! a migration is bringing here (its source runs on once this host is
//! declared down): it
//! freezes its processes and takes its link down. Frozen, not killed: if
//! the lease comes back in the same session (the coordinator was away, the
//! host never declared down) they go on where they were. If the host was
//! declared down, the answer to its next registration names the containers
//! that run elsewhere now, and the agent removes its stale copies of them
//! before it beats again ([`remove_stale`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Result;
use tokio::sync::watch;
use tokio::time::Instant;

use super::containers::{self, CLUSTER_LABEL, RESTORE_POLICY_LABEL, blocking};
use super::context::Context;
use super::network::{self, Link};
use crate::containers::RestorePolicy;

/// Until when this agent may run its containers: None before the first
/// registration (nothing to stop then: the agent has just started).
pub type Lease = Option<Instant>;

/// Runs while the agent runs: stops the fenced containers when the lease
/// runs out and lets them go on when a new one comes.
pub async fn run(ctx: Arc<Context>, mut lease: watch::Receiver<Lease>) {
    let mut fenced: BTreeSet<String> = BTreeSet::new();
    loop {
        let until = *lease.borrow_and_update();
        if let Some(until) = until {
            publish(until);
        }
        match until {
            Some(until) if Instant::now() >= until => {
                if fenced.is_empty() {
                    fenced = fence(&ctx).await;
                }
                if lease.changed().await.is_err() {
                    return;
                }
            }
            Some(until) => {
                if !fenced.is_empty() {
                    unfence(&ctx, std::mem::take(&mut fenced)).await;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {}
                    changed = lease.changed() => if changed.is_err() { return },
                }
            }
            None => {
                if lease.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes the lease's end where the shims of the containers with a policy
/// look: if this process dies, they stop their containers themselves when
/// it passes (`migrate_oci::lease`).
fn publish(until: Instant) {
    let left = u64::try_from(until.saturating_duration_since(Instant::now()).as_millis()).unwrap_or(u64::MAX);
    let path = std::path::Path::new(migrate_oci::lease::LEASE_FILE);
    if let Err(e) = migrate_oci::lease::write(path, migrate_oci::lease::now_ms().saturating_add(left)) {
        log::error!(
            "cannot write the lease to {}: if this agent dies, its containers run on unfenced: {e}",
            path.display()
        );
    }
}

/// The running containers that a restore policy would bring back elsewhere,
/// and those a migration is bringing here: the coordinator resumes the
/// source of a migration whose target is declared down.
async fn with_policy(ctx: &Context) -> Result<Vec<String>> {
    let incoming: BTreeSet<String> =
        ctx.migrations.lock().await.values().filter_map(|m| m.incoming().map(str::to_string)).collect();
    let listed = ctx.cd.containers_list(&format!("labels.\"{CLUSTER_LABEL}\"")).await?;
    let running: BTreeSet<String> = containers::list(ctx)
        .await?
        .into_iter()
        .filter(|c| c.state == crate::proto::ContainerState::Running as i32)
        .map(|c| c.id)
        .collect();
    Ok(listed
        .into_iter()
        .filter(|c| {
            let policy = c.labels.get(RESTORE_POLICY_LABEL).map(String::as_str);
            incoming.contains(&c.id)
                || matches!(policy, Some(p) if p == RestorePolicy::Checkpoint.name() || p == RestorePolicy::Restart.name())
        })
        .map(|c| c.id)
        .filter(|id| running.contains(id))
        .collect())
}

async fn fence(ctx: &Context) -> BTreeSet<String> {
    let ids = match with_policy(ctx).await {
        Ok(ids) => ids,
        Err(e) => {
            log::error!("the lease ran out, but the containers to stop could not be listed: {e:#}");
            return BTreeSet::new();
        }
    };
    if ids.is_empty() {
        return BTreeSet::new();
    }
    log::warn!(
        "the coordinator has not acknowledged a heartbeat within the lease: stopping {} (they may be restored \
         elsewhere soon)",
        ids.join(", ")
    );
    let mut fenced = BTreeSet::new();
    for id in ids {
        // The link first: nothing of it reaches the network from now on,
        // even if the freeze fails.
        let link = id.clone();
        if let Err(e) = blocking(move || network::set_link(&link, Link::Down)).await {
            log::error!("fencing {id}: {e:#}");
        }
        if let Err(e) = ctx.cd.pause_task(&id).await {
            log::error!("fencing {id}: {e:#}");
        }
        fenced.insert(id);
    }
    fenced
}

async fn unfence(ctx: &Context, fenced: BTreeSet<String>) {
    for id in fenced {
        // Gone meanwhile (a stale copy removed): nothing to let go on.
        if !matches!(ctx.cd.task(&id).await, Ok(Some(_))) {
            continue;
        }
        log::info!("the lease is back: {id} goes on");
        if let Err(e) = ctx.cd.resume_task(&id).await {
            log::error!("resuming {id}: {e:#}");
        }
        let link = id.clone();
        if let Err(e) = blocking(move || network::set_link(&link, Link::Up)).await {
            log::error!("resuming {id}: {e:#}");
        }
    }
}

/// The cluster's containers here, as a registration names them.
pub async fn here(ctx: &Context) -> Result<Vec<String>> {
    Ok(containers::list(ctx).await?.into_iter().map(|c| c.id).collect())
}

/// Removes the copies here of containers that the cluster runs on another
/// host now (`stale`, as the coordinator answered a registration).
pub async fn remove_stale(ctx: &Context, stale: &[String]) -> Result<()> {
    for id in stale {
        log::warn!("removing the stale copy of {id}: the cluster runs it on another host now");
        containers::remove(ctx, id).await?;
    }
    Ok(())
}
