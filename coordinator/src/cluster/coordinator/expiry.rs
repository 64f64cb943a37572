//! Marks hosts down whose grace has run out. A sweep over every host a few
//! times per period, rather than a timer per host: the state to decide on is
//! in the store anyway (a restarted coordinator has no timers to recover),
//! and a sweep of a few hundred records costs microseconds.

use std::sync::Arc;

use crate::hosts::{self, Change, HostsError};
use crate::membership::{self, HeartbeatPolicy, UnixMs};
use crate::store::Store;

/// Sweeps four times per heartbeat period, so a host turns down at most a
/// quarter period after its grace ends.
pub async fn run(store: Arc<dyn Store>, policy: HeartbeatPolicy, watching_since: UnixMs) {
    let mut tick = tokio::time::interval(policy.period / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sweep(&*store, &policy, watching_since).await {
            log::warn!("checking the hosts' heartbeats failed: {e}");
        }
    }
}

async fn sweep(store: &dyn Store, policy: &HeartbeatPolicy, watching_since: UnixMs) -> Result<(), HostsError> {
    for host in hosts::list(store).await? {
        if membership::expire(&host, policy, watching_since, membership::now()).is_none() {
            continue;
        }
        // Decided again on the record as it is now: a beat may have come in.
        let name = &host.facts.name;
        let updated = hosts::update(store, name, |current| {
            match current.and_then(|c| membership::expire(c, policy, watching_since, membership::now())) {
                Some(down) => Change::<_, std::convert::Infallible>::Write(down),
                None => Change::Keep,
            }
        })
        .await?;
        if let Ok(Some(record)) = updated
            && record.liveness != host.liveness
            && matches!(record.liveness, membership::Liveness::Down { .. })
        {
            log::warn!("host {name} is down: {}", record.down_reason.as_deref().unwrap_or("no heartbeat"));
        }
    }
    Ok(())
}
