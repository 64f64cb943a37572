//! The last line of the cluster's fencing ("exactly one copy"): a container
//! with a restore policy stops when its host agent's lease has ended, even
//! if the agent is gone.
//!
//! The agent stops such containers itself when the coordinator stops
//! acknowledging its heartbeats, before the coordinator may declare the
//! host down and restore them elsewhere. An agent that was killed or hung
//! stops nothing, and the copy here would run on beside the restored one.
//! So the shim watches the lease the agent writes (`migrate_oci::lease`)
//! and, once it has ended, takes the container's network down and freezes
//! it; a later lease (an agent beating again, which first removed the
//! copies that now run elsewhere) lets it go on. A margin after the lease's
//! end leaves the work to a living agent, and no lease file means no
//! cluster: nothing is watched then.

use std::sync::{Arc, Weak};
use std::time::Duration;

use containerd_shim::protos::events::task::{TaskPaused, TaskResumed};
use log::{error, info, warn};
use migrate_oci::lease;

use crate::{container::Container, events::Events, netns, process::InitState};

/// How often the lease is read: its end is known to within this.
const POLL: Duration = Duration::from_millis(100);
/// How long after the lease's end a living agent has to stop the container
/// itself; the coordinator declares the host down half a heartbeat period
/// (500 ms by default) after the lease's end, and restores a copy after that.
const MARGIN_MS: u64 = 250;

/// Watches the lease for `container` until it is deleted or its init exits.
pub fn watch(container: &Arc<Container>, events: Events) {
    tokio::spawn(run(Arc::downgrade(container), events));
}

async fn run(container: Weak<Container>, events: Events) {
    let path = std::path::Path::new(lease::LEASE_FILE);
    let mut fenced = false;
    let mut unreadable = false;
    let mut ticks = tokio::time::interval(POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(container) = container.upgrade() else { return };
        if matches!(container.init.state(), InitState::Stopped { .. }) {
            return;
        }
        let ended = match lease::read(path) {
            Ok(end) => {
                unreadable = false;
                end.is_some_and(|end| lease::now_ms() >= end.saturating_add(MARGIN_MS))
            }
            Err(e) => {
                // Said once: the file is replaced whole, so this is not a
                // half-written one but something else's.
                if !std::mem::replace(&mut unreadable, true) {
                    error!("{}: the agent's lease in {} cannot be read: {e}", container.id, path.display());
                }
                continue;
            }
        };
        if ended && !fenced {
            fenced = fence(&container, &events).await;
        } else if !ended && fenced {
            unfence(&container, &events).await;
            fenced = false;
        }
    }
}

/// Stops a running container; true if this did (a container paused by
/// someone else, a living agent or a user, is theirs to resume).
async fn fence(container: &Container, events: &Events) -> bool {
    let _lifecycle = container.lifecycle.lock().await;
    let InitState::Running { pid } = container.init.state() else { return false };
    warn!(
        "{}: the host agent's lease ended over {MARGIN_MS} ms ago and the agent did not stop this container: \
         stopping it, as it may be restored on another host",
        container.id
    );
    // The network first: nothing of it reaches the cluster from now on,
    // even if the freeze fails.
    if let Err(e) = netns::links(pid, false) {
        error!("{}: taking its network down: {e}", container.id);
    }
    if let Err(e) = container.pause().await {
        error!("{}: freezing it: {e}", container.id);
        return true;
    }
    events.publish(TaskPaused { container_id: container.id.clone(), ..Default::default() }).await;
    true
}

async fn unfence(container: &Container, events: &Events) {
    let _lifecycle = container.lifecycle.lock().await;
    info!("{}: the host agent holds a lease again: the container goes on", container.id);
    if let InitState::Paused { .. } = container.init.state() {
        match container.resume().await {
            Ok(()) => events.publish(TaskResumed { container_id: container.id.clone(), ..Default::default() }).await,
            Err(e) => error!("{}: resuming it: {e}", container.id),
        }
    }
    if let Some(pid) = container.init.state().live_pid()
        && let Err(e) = netns::links(pid, true)
    {
        error!("{}: bringing its network up: {e}", container.id);
    }
}
