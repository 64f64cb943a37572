//! Seed 001's Algorithm 2: when a host is declared down, every container
//! of it with a restore policy comes back on a healthy host, restored from
//! the newest version its ticker stored (falling back to older ones, then a
//! cold start: the agent's side, `agent::recovery`) or restarted cold.
//!
//! A reconciliation, as swarmkit's orchestrators do it, rather than a
//! reaction to the event: a few times per heartbeat period the loop looks
//! for containers whose host is down and that nobody is bringing back, so
//! a coordinator that restarts (or a new leader) picks up where the last
//! one stopped, from the records alone. Each round places its containers
//! in one pass, counting each placement, so that the containers of one
//! lost host spread over the others instead of all landing on the
//! emptiest; then they are restored in parallel.
//!
//! Before an agent is asked, the record says `Recovering { to }`: if this
//! coordinator dies then, the next one asks `to` whether it runs the
//! container before it tries anywhere else.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;

use super::containers::store_status;
use super::service::CoordinatorService;
use crate::containers::{ContainerRecord, Phase, Recovery, RestorePolicy};
use crate::membership::{self, HeartbeatPolicy, HostRecord, Liveness, UnixMs};
use crate::proto::{AgentListContainersRequest, ContainerState, RecoverRequest, RecoverResponse};
use crate::records::{self, Change};
use crate::scheduler::{self, Rules};
use crate::{hosts, random};

/// How long an agent may take to bring a container back: rebuilding a
/// version of a large container and copying its image are the slow parts.
const RECOVER_TIMEOUT: Duration = Duration::from_secs(300);
/// After a failed attempt, the container waits this long before the next.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// The containers being brought back by this coordinator, and those to
/// leave alone for a while after a failed attempt.
#[derive(Default)]
pub struct Recoveries {
    busy: Mutex<HashMap<String, Busy>>,
}

enum Busy {
    Running,
    RetryAt(Instant),
}

impl Recoveries {
    /// Claims `id` for an attempt; false if one runs or it waits to retry.
    fn claim(&self, id: &str) -> bool {
        let mut busy = self.busy.lock().expect("not poisoned");
        match busy.get(id) {
            Some(Busy::Running) => false,
            Some(Busy::RetryAt(at)) if Instant::now() < *at => false,
            _ => {
                busy.insert(id.to_string(), Busy::Running);
                true
            }
        }
    }

    fn done(&self, id: &str, ok: bool) {
        let mut busy = self.busy.lock().expect("not poisoned");
        if ok {
            busy.remove(id);
        } else {
            busy.insert(id.to_string(), Busy::RetryAt(Instant::now() + RETRY_AFTER));
        }
    }
}

/// Runs while the coordinator leads, which it began to at `since`.
pub async fn run(service: CoordinatorService, policy: HeartbeatPolicy, since: UnixMs) {
    settle_migrations(&service, since).await;
    let recoveries = Arc::new(Recoveries::default());
    let mut tick = tokio::time::interval(policy.period / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = reconcile(&service, &recoveries).await {
            log::warn!("looking for containers to bring back failed: {}", e.message());
        }
    }
}

/// Settles the migrations a previous leader left half-done: those begun
/// before this leadership (a migration's id starts with the Unix ms of its
/// start), which no coordinator drives any more.
async fn settle_migrations(service: &CoordinatorService, since: UnixMs) {
    let containers: Vec<ContainerRecord> = match records::list(&*service.store).await {
        Ok(c) => c,
        Err(e) => {
            log::warn!("looking for migrations left half-done failed: {e}");
            return;
        }
    };
    for c in containers {
        let Phase::Migrating { migration, .. } = &c.phase else { continue };
        let begun: Option<UnixMs> = migration.split('-').next().and_then(|ms| ms.parse().ok());
        if begun.is_some_and(|ms| ms >= since) {
            continue;
        }
        match service.settle(&c).await {
            Ok(said) => log::warn!("a migration was left half-done by the previous leader: {said}"),
            Err(e) => log::error!("settling migration {migration} of {}: {}", c.id, e.message()),
        }
    }
}

/// What one round starts for a container.
struct Attempt {
    record: ContainerRecord,
    /// The host lost, and when it was declared down.
    lost: String,
    down_since: UnixMs,
    /// The lost host's last heartbeat.
    last_heartbeat: UnixMs,
    /// A host that may run it already: a recovery a coordinator left.
    resumed_on: Option<String>,
}

async fn reconcile(service: &CoordinatorService, recoveries: &Arc<Recoveries>) -> Result<(), Status> {
    let hosts = hosts::list(&*service.store).await.map_err(|e| Status::internal(e.to_string()))?;
    let down: BTreeMap<&str, UnixMs> = hosts
        .iter()
        .filter_map(|h| match h.liveness {
            Liveness::Down { since } => Some((h.facts.name.as_str(), since)),
            Liveness::Ready { .. } => None,
        })
        .collect();
    let last_heartbeat = |host: &str| hosts.iter().find(|h| h.facts.name == host).map_or(0, |h| h.last_heartbeat);
    let containers: Vec<ContainerRecord> = records::list(&*service.store).await.map_err(store_status)?;
    let mut attempts = Vec::new();
    for c in containers {
        let (down_since, resumed_on) = match &c.phase {
            Phase::Placed if c.restore_policy() != RestorePolicy::None => match down.get(c.host.as_str()) {
                Some(&since) => (since, None),
                None => continue,
            },
            // Finished whatever became of the lost host since.
            Phase::Recovering { to, down_since } => (*down_since, Some(to.clone())),
            // A migration in flight ends by itself (its source lost, it
            // fails and leaves the record placed there); one being created
            // is the creator's to finish or undo.
            Phase::Placed | Phase::Creating | Phase::Migrating { .. } => continue,
        };
        if !recoveries.claim(&c.id) {
            continue;
        }
        attempts.push(Attempt {
            lost: c.host.clone(),
            down_since,
            last_heartbeat: last_heartbeat(&c.host),
            resumed_on,
            record: c,
        });
    }
    if attempts.is_empty() {
        return Ok(());
    }
    let (_, mut candidates) = match service.candidates().await {
        Ok(c) => c,
        Err(e) => {
            for a in &attempts {
                recoveries.done(&a.record.id, false);
            }
            return Err(e);
        }
    };
    for attempt in attempts {
        let id = attempt.record.id.clone();
        // Where it goes: where a previous attempt was, if that host is
        // ready (it may run it); else the scheduler's choice, counted at
        // once so that the next container of this round sees it.
        let to = match attempt.resumed_on.as_deref().filter(|to| candidates.iter().any(|c| c.name == *to && c.ready)) {
            Some(to) => Ok(to.to_string()),
            None => place(&attempt.record, &candidates),
        };
        let to = match to {
            Ok(to) => to,
            Err(why) => {
                log::warn!("{id} of lost host {} cannot come back yet: {why}", attempt.lost);
                recoveries.done(&id, false);
                continue;
            }
        };
        if let Some(c) = candidates.iter_mut().find(|c| c.name == to) {
            c.containers += 1;
            c.container_ids.insert(id.clone());
        }
        let (service, recoveries) = (service.clone(), recoveries.clone());
        let hosts = hosts.clone();
        tokio::spawn(async move {
            let ok = match recover(&service, &hosts, &attempt, &to).await {
                Ok(()) => true,
                Err(e) => {
                    log::warn!("bringing {id} back on {to} failed (it is tried again): {}", e.message());
                    false
                }
            };
            recoveries.done(&id, ok);
        });
    }
    Ok(())
}

fn place(record: &ContainerRecord, candidates: &[scheduler::Candidate]) -> Result<String, String> {
    let placement = record.spec().placement.unwrap_or_default();
    let rules = Rules::parse(&placement).map_err(|e| e.to_string())?;
    let request =
        scheduler::Request { container: &record.id, image: &record.image, rules: &rules, exclude: Some(&record.host) };
    scheduler::schedule(&request, candidates, random::unit()).map(|c| c.name.clone()).map_err(|e| e.to_string())
}

async fn recover(service: &CoordinatorService, hosts: &[HostRecord], a: &Attempt, to: &str) -> Result<(), Status> {
    let id = &a.record.id;
    let target = hosts.iter().find(|h| h.facts.name == to).ok_or_else(|| Status::not_found(format!("no host {to}")))?;
    let mut agent = service.agent(target).await?;
    if a.resumed_on.as_deref() == Some(to) {
        let here = agent.list_containers(AgentListContainersRequest {}).await?.into_inner().containers;
        if here.iter().any(|c| c.id == *id && c.state == ContainerState::Running as i32) {
            log::debug!("{id} runs on {to} already (a recovery left half-recorded, or one just finished)");
            let note = "the coordinator changed during its recovery: which version it came from is not known";
            let response = RecoverResponse { cold_reason: note.into(), ..Default::default() };
            return finish(service, a, to, &response).await;
        }
    }
    // Recorded before the agent is asked: whatever happens to this
    // coordinator, the next one knows where a copy may be.
    let marked = records::update(&*service.store, id, |current: Option<&ContainerRecord>| match current {
        Some(c) if c.host == a.lost && matches!(c.phase, Phase::Placed | Phase::Recovering { .. }) => {
            Change::Write(ContainerRecord {
                phase: Phase::Recovering { to: to.to_string(), down_since: a.down_since },
                ..c.clone()
            })
        }
        _ => Change::Refuse(Status::aborted(format!("{id} changed meanwhile; it is looked at again"))),
    })
    .await
    .map_err(store_status)?;
    marked?;

    let policy = a.record.restore_policy();
    let image_source = hosts
        .iter()
        .find(|h| matches!(h.liveness, Liveness::Ready { .. }) && h.facts.name != to && has_image(h, &a.record.image));
    let request = RecoverRequest {
        container: Some(a.record.to_proto(ContainerState::Created)),
        cold: policy == RestorePolicy::Restart,
        max_versions: a.record.max_versions(),
        image_source_name: image_source.map(|h| h.facts.name.clone()).unwrap_or_default(),
        image_source_agent: image_source.map(|h| h.facts.address.clone()).unwrap_or_default(),
    };
    log::info!("bringing {id} of lost host {} back on {to} (restore policy {})", a.lost, policy.name());
    let answer = tokio::time::timeout(RECOVER_TIMEOUT, agent.recover(request))
        .await
        .map_err(|_| Status::deadline_exceeded(format!("{to} did not bring {id} back within {RECOVER_TIMEOUT:?}")))?;
    match answer {
        Ok(response) => finish(service, a, to, &response.into_inner()).await,
        Err(status) => {
            // Back to its lost host's record, for another attempt.
            let reverted = records::update(&*service.store, id, |current: Option<&ContainerRecord>| match current {
                Some(c) if matches!(&c.phase, Phase::Recovering { to: t, .. } if t == to) => {
                    Change::<_, std::convert::Infallible>::Write(ContainerRecord { phase: Phase::Placed, ..c.clone() })
                }
                _ => Change::Keep,
            })
            .await;
            if let Err(e) = reverted {
                log::error!("could not record that {id} was not brought back: {e}");
            }
            Err(status)
        }
    }
}

/// The container runs on `to`: the record says so, with how it came back.
async fn finish(service: &CoordinatorService, a: &Attempt, to: &str, r: &RecoverResponse) -> Result<(), Status> {
    let recovery = Recovery {
        from_host: a.lost.clone(),
        version: r.version,
        version_created_unix_ms: r.version_created_unix_ms,
        skipped: r.skipped.iter().map(|s| (s.version, s.reason.clone())).collect(),
        cold_reason: r.cold_reason.clone(),
        down_unix_ms: a.down_since,
        running_unix_ms: if r.running_unix_ms > 0 { r.running_unix_ms } else { membership::now() },
        last_heartbeat_unix_ms: a.last_heartbeat,
    };
    let id = &a.record.id;
    let written = records::update(&*service.store, id, |current: Option<&ContainerRecord>| match current {
        Some(c) if matches!(&c.phase, Phase::Recovering { to: t, .. } if t == to) => Change::Write(ContainerRecord {
            host: to.to_string(),
            phase: Phase::Placed,
            recovery: Some(recovery.clone()),
            ..c.clone()
        }),
        // Recorded already: a round that listed the record before this
        // attempt finished asked the host again and found it running.
        _ => Change::Refuse(()),
    })
    .await
    .map_err(store_status)?;
    if written.is_err() {
        log::debug!("{id} runs on {to}, as recorded already");
        return Ok(());
    }
    match recovery.version {
        Some(v) => log::info!(
            "{id} of lost host {} runs on {to}, restored from version {v} (taken {} ms before the host's last \
             heartbeat){}",
            a.lost,
            a.last_heartbeat.saturating_sub(recovery.version_created_unix_ms),
            skipped_note(&recovery)
        ),
        None => log::info!(
            "{id} of lost host {} runs on {to}, started cold: {}{}",
            a.lost,
            recovery.cold_reason,
            skipped_note(&recovery)
        ),
    }
    Ok(())
}

fn skipped_note(r: &Recovery) -> String {
    r.skipped.iter().map(|(v, why)| format!("; version {v} skipped: {why}")).collect()
}

fn has_image(host: &HostRecord, image: &str) -> bool {
    let image = scheduler::normalize_image(image);
    host.images.iter().any(|i| scheduler::normalize_image(i) == image)
}
