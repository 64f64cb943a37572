//! Moving a container to another host (seed 001 steps 1-9): check that two
//! hosts are ready, pick the target, prepare it, sync the writable layer
//! while the container runs, dump it (frozen, its network locked) with its
//! images streamed to the target as CRIU writes them, restore it there,
//! and only then remove it from the source. The record moves to the
//! target in the one write that ends the migration.
//!
//! By stop-and-copy the memory is in the images: the container is frozen
//! while it crosses. By post-copy it is not: the container runs on the
//! target at once and its memory follows from the source's page server
//! (step `pages`), while the source keeps its frozen processes, every
//! page whole, until the target has them all. [`choose`] picks the mode
//! for `auto`.
//!
//! Until the target has the whole container, every failure is undone: the
//! target cleaned up (its runtime kills a post-copy's container the moment
//! its pages stop coming), the source thawed with its network back, the
//! record as it was; the error names the step and the cause. Exactly one
//! copy runs at any moment: the source is frozen before the target
//! restores, and removed (never thawed) once the target has it all. What
//! decides a post-copy is the source's page server: it ends with every
//! page sent (the migration happened) or without (the source runs it on).

use std::time::Instant;

use tokio::sync::mpsc;
use tonic::Status;

use super::containers::store_status;
use super::service::CoordinatorService;
use crate::containers::{ContainerRecord, Phase};
use crate::membership::{HostRecord, Liveness};
use crate::proto::{
    ContainerState, DescribeRequest, DescribeResponse, DumpRequest, Iteration, MigrateEvent, MigrateRequest,
    MigrationMode, MigrationRef, MigrationResult, PreDumpRequest, PrepareTargetRequest, PrepareTargetResponse,
    Progress, RestoreTargetRequest, StepEvent, StepTime, SyncLayerRequest, migrate_event,
};
use crate::records::{self, Change};
use crate::scheduler::{self, Rules};

type Events = mpsc::Sender<Result<MigrateEvent, Status>>;

/// The steps' names, as events and `--json` report them.
pub const PREPARE: &str = "prepare";
pub const SYNC: &str = "sync";
pub const DUMP: &str = "dump";
pub const RESTORE: &str = "restore";
pub const PAGES: &str = "pages";
pub const PRE_COPY: &str = "pre-copy";
pub const FINISH: &str = "finish";

/// What freezing, dumping what is not memory and restoring cost, measured
/// here at every size (issue 14's benchmark): a stop-and-copy's downtime
/// is this plus its memory's time on the link, a post-copy's about this.
const FIXED_DOWNTIME_MS: f64 = 250.0;
/// What a post-copy adds to it: the lazy-pages daemon's start and the
/// restore's first faults, served across the link.
const POST_COPY_EXTRA_MS: f64 = 50.0;
/// What a pre-copy's final dump adds to the fixed part: the target's page
/// server for it, and the pagemaps compared with the last round's.
const PRE_COPY_EXTRA_MS: f64 = 20.0;
/// What one pre-copy round costs besides its bytes on the link: CRIU's
/// pre-dump freezing the container to collect its dirty pages, and the
/// target's page server starting (auto's prediction of the rounds).
const ROUND_OVERHEAD_MS: f64 = 150.0;
/// Pre-copy's rule for when to stop iterating (see [`converged`]).
const MAX_ROUNDS: usize = 8;
const SHRINK: f64 = 0.8;
const FINAL_DUMP_BUDGET_MS: f64 = 50.0;
/// How long the target may be silent while it pulls a post-copy's memory.
const PAGES_SILENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// A migration's chosen hosts.
struct Plan {
    record: ContainerRecord,
    source: HostRecord,
    target: HostRecord,
    id: String,
    mode: MigrationMode,
}

/// A mode and why, with the link's bandwidth if it was measured.
#[derive(Debug, Clone, PartialEq)]
struct Choice {
    mode: MigrationMode,
    reason: String,
    link_bits: Option<f64>,
}

impl CoordinatorService {
    /// Runs migration `req`, reporting on `events`; the stream's last item
    /// is the result or the error.
    pub(super) async fn migrate(&self, req: MigrateRequest, events: Events) {
        let plan = match self.plan(&req).await {
            Ok(plan) => plan,
            Err(status) => {
                let _ = events.send(Err(status)).await;
                return;
            }
        };
        let outcome = self.run(&plan, &events).await;
        let last = match outcome {
            Ok(result) => Ok(MigrateEvent { event: Some(migrate_event::Event::Done(result)) }),
            Err((step, cause)) => {
                let undone = self.undo(&plan).await;
                Err(Status::new(
                    cause.code(),
                    format!(
                        "moving {} from {} to {} failed at step {step}: {}; {undone}",
                        plan.record.id,
                        plan.source.facts.name,
                        plan.target.facts.name,
                        cause.message()
                    ),
                ))
            }
        };
        let _ = events.send(last).await;
    }

    /// Resolves once host `name` is declared down (its record, polled).
    async fn until_down(&self, name: &str) -> Status {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            let hosts = crate::hosts::list(&*self.store).await.unwrap_or_default();
            if let Some(h) = hosts.iter().find(|h| h.facts.name == name)
                && matches!(h.liveness, Liveness::Down { .. })
            {
                return Status::unavailable(format!(
                    "{name} was declared down ({})",
                    h.down_reason.as_deref().unwrap_or("no heartbeat")
                ));
            }
        }
    }

    /// Settles a migration that no coordinator drives any more (its leader
    /// was lost mid-way; `record` still says migrating): if the target runs
    /// the container, the migration happened: the record says so and the
    /// source's copy goes. Otherwise it is undone as a failed one is: the
    /// target's copy goes and the source's goes on. A host that is down
    /// is skipped: its copy goes when it registers again (a stale copy),
    /// and a container left on a down host is brought back by its policy.
    pub(super) async fn settle(&self, record: &ContainerRecord) -> Result<String, Status> {
        let Phase::Migrating { migration, to } = &record.phase else {
            return Ok(format!("{} is not migrating", record.id));
        };
        let hosts = crate::hosts::list(&*self.store).await.map_err(|e| Status::internal(e.to_string()))?;
        let host = |name: &str| {
            hosts
                .iter()
                .find(|h| h.facts.name == name)
                .cloned()
                .ok_or_else(|| Status::not_found(format!("no host {name}")))
        };
        let plan = Plan {
            record: record.clone(),
            source: host(&record.host)?,
            target: host(to)?,
            id: migration.clone(),
            mode: MigrationMode::StopAndCopy,
        };
        let m = MigrationRef { migration_id: plan.id.clone(), container_id: record.id.clone() };
        let ready = |h: &HostRecord| matches!(h.liveness, Liveness::Ready { .. });
        let on_target = if ready(&plan.target) {
            let mut target = self.agent(&plan.target).await?;
            let listed =
                target.list_containers(crate::proto::AgentListContainersRequest {}).await?.into_inner().containers;
            listed.iter().any(|c| c.id == record.id && c.state == ContainerState::Running as i32)
        } else {
            false
        };
        if !on_target {
            let undone = self.undo(&plan).await;
            return Ok(format!("migration {} of {} to {to} was undone: {undone}", plan.id, record.id));
        }
        self.commit(&plan).await;
        let mut said = format!("migration {} of {} was done: it runs on {to}", plan.id, record.id);
        if ready(&plan.source) {
            let mut source = self.agent(&plan.source).await?;
            if let Err(e) = source.finish_source(m).await {
                said.push_str(&format!("; its copy on {} was not removed: {}", record.host, e.message()));
            }
        }
        Ok(said)
    }

    /// Checks the request against the cluster, picks the target and marks
    /// the record as migrating.
    async fn plan(&self, req: &MigrateRequest) -> Result<Plan, Status> {
        let mode = match MigrationMode::try_from(req.mode) {
            Ok(MigrationMode::Unspecified | MigrationMode::Auto) => MigrationMode::Auto,
            Ok(mode) => mode,
            Err(_) => return Err(Status::invalid_argument(format!("unknown migration mode {}", req.mode))),
        };
        let record: ContainerRecord = records::get(&*self.store, &req.id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("the cluster has no container {}", req.id)))?;
        let (hosts, candidates) = self.candidates().await?;
        let ready = hosts.iter().filter(|h| matches!(h.liveness, Liveness::Ready { .. })).count();
        if ready < 2 {
            return Err(Status::failed_precondition(format!(
                "a migration needs two ready hosts; the cluster has {ready}"
            )));
        }
        let source = hosts
            .iter()
            .find(|h| h.facts.name == record.host)
            .filter(|h| matches!(h.liveness, Liveness::Ready { .. }))
            .ok_or_else(|| Status::failed_precondition(format!("{}'s host {} is down", record.id, record.host)))?
            .clone();
        let target_name = if req.to.is_empty() {
            let rules = Rules::parse(&record.spec().placement.unwrap_or_default())
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
            let request = scheduler::Request {
                container: &record.id,
                image: &record.image,
                rules: &rules,
                exclude: Some(&record.host),
            };
            scheduler::schedule(&request, &candidates, crate::random::unit())
                .map_err(|e| Status::failed_precondition(e.to_string()))?
                .name
                .clone()
        } else if req.to == record.host {
            return Err(Status::invalid_argument(format!("{} runs on {} already", record.id, req.to)));
        } else {
            req.to.clone()
        };
        let target = hosts
            .iter()
            .find(|h| h.facts.name == target_name)
            .ok_or_else(|| Status::not_found(format!("no host {target_name} in the cluster")))?;
        if !matches!(target.liveness, Liveness::Ready { .. }) {
            return Err(Status::failed_precondition(format!("host {target_name} is down")));
        }
        let id = format!("{}-{:08x}", crate::membership::now(), (crate::random::unit() * f64::from(u32::MAX)) as u32);
        let marked = records::update(&*self.store, &record.id, |current: Option<&ContainerRecord>| match current {
            Some(c) if c.phase == Phase::Placed => Change::Write(ContainerRecord {
                phase: Phase::Migrating { migration: id.clone(), to: target_name.clone() },
                ..c.clone()
            }),
            Some(ContainerRecord { phase: Phase::Migrating { to, .. }, .. }) => {
                Change::Refuse(Status::failed_precondition(format!("{} is being moved to {to} already", req.id)))
            }
            Some(ContainerRecord { phase: Phase::Recovering { to, .. }, host, .. }) => {
                Change::Refuse(Status::failed_precondition(format!(
                    "{} is being restored on {to} after {host} was lost; migrate it once it runs there",
                    req.id
                )))
            }
            Some(_) => Change::Refuse(Status::failed_precondition(format!("{} is still being created", req.id))),
            None => Change::Refuse(Status::not_found(format!("the cluster has no container {}", req.id))),
        })
        .await
        .map_err(store_status)?;
        let record = marked?.expect("written");
        log::info!("migration {id}: {} from {} to {target_name}", record.id, source.facts.name);
        Ok(Plan { record, source, target: target.clone(), id, mode })
    }

    /// The steps; an error says at which one.
    async fn run(&self, plan: &Plan, events: &Events) -> Result<MigrationResult, (&'static str, Status)> {
        let started = Instant::now();
        let m = MigrationRef { migration_id: plan.id.clone(), container_id: plan.record.id.clone() };
        let (source_name, target_name) = (plan.source.facts.name.clone(), plan.target.facts.name.clone());
        let mut steps = Vec::new();
        // The source is given up on once it stops answering (its host lost:
        // nothing runs there); the target is waited for, since a copy may run
        // there that the source must not run beside.
        let mut source = self.watched_agent(&plan.source).await.map_err(|e| (PREPARE, e))?;
        let mut target = self.agent(&plan.target).await.map_err(|e| (PREPARE, e))?;

        let step = Step::begin(PREPARE, events).await;
        let described = source
            .describe(DescribeRequest { container_id: m.container_id.clone() })
            .await
            .map_err(|e| (PREPARE, e))?
            .into_inner();
        let prepared = target
            .prepare_target(PrepareTargetRequest {
                migration: Some(m.clone()),
                container: Some(plan.record.to_proto(ContainerState::Running)),
                source: Some(described.clone()),
                source_agent: plan.source.facts.address.clone(),
                source_name: source_name.clone(),
            })
            .await
            .map_err(|e| (PREPARE, e))?
            .into_inner();
        let detail = match prepared.image_from.as_str() {
            "source" => format!("image from {source_name}, {}", bytes(prepared.image_bytes)),
            other => format!("image {other}"),
        };
        let probe = SyncLayerRequest {
            migration: Some(m.clone()),
            target_agent: plan.target.facts.address.clone(),
            target_name: target_name.clone(),
        };
        let choice = self.choose(plan, &described, &prepared, &mut source, probe).await.map_err(|e| (PREPARE, e))?;
        log::info!("migration {}: {}", plan.id, choice.reason);
        let detail = format!("{detail}; {}", choice.reason);
        steps.push(step.end(events, detail).await);
        let lazy = choice.mode == MigrationMode::PostCopy;

        let step = Step::begin(SYNC, events).await;
        let synced = source
            .sync_layer(SyncLayerRequest {
                migration: Some(m.clone()),
                target_agent: plan.target.facts.address.clone(),
                target_name: target_name.clone(),
            })
            .await
            .map_err(|e| (SYNC, e))?
            .into_inner();
        steps.push(step.end(events, format!("{} files, {}", synced.files, bytes(synced.bytes))).await);

        let mut iterations = Vec::new();
        if choice.mode == MigrationMode::PreCopy {
            let step = Step::begin(PRE_COPY, events).await;
            let why = loop {
                let round = iterations.len() as u32 + 1;
                let request = PreDumpRequest {
                    migration: Some(m.clone()),
                    target_agent: plan.target.facts.address.clone(),
                    target_name: target_name.clone(),
                    round,
                };
                let done = source.pre_dump(request).await.map_err(|e| (PRE_COPY, e))?.into_inner();
                log::info!("migration {}: round {round}: {} in {:.0} ms", plan.id, bytes(done.bytes), done.ms);
                let event = Progress {
                    step: PRE_COPY.to_string(),
                    bytes: iterations.iter().map(|i: &Iteration| i.bytes).sum::<u64>() + done.bytes,
                };
                let _ = events.send(Ok(MigrateEvent { event: Some(migrate_event::Event::Progress(event)) })).await;
                iterations.push(done);
                if let Some(why) = converged(&iterations, choice.link_bits) {
                    break why;
                }
            };
            let sizes: Vec<String> = iterations.iter().map(|i| bytes(i.bytes)).collect();
            steps.push(step.end(events, format!("{} rounds ({}): {why}", iterations.len(), sizes.join(", "))).await);
        }
        let before_freeze: u64 = iterations.iter().map(|i| i.bytes).sum();

        let step = Step::begin(DUMP, events).await;
        let frozen = Instant::now();
        let dumped = source
            .dump(DumpRequest {
                migration: Some(m.clone()),
                target_agent: plan.target.facts.address.clone(),
                target_name: target_name.clone(),
                mode: choice.mode.into(),
            })
            .await
            .map_err(|e| (DUMP, e))?
            .into_inner();
        steps.push(
            step.end(
                events,
                if lazy {
                    format!(
                        "{} of images (memory left behind, {} of it to come), {} of layer changes",
                        bytes(dumped.images_bytes),
                        bytes(described.memory_bytes),
                        bytes(dumped.layer_bytes)
                    )
                } else {
                    format!(
                        "{} of images ({} of memory{}), {} of layer changes",
                        bytes(dumped.images_bytes),
                        bytes(dumped.memory_bytes),
                        if iterations.is_empty() { "" } else { " changed since the last round" },
                        bytes(dumped.layer_bytes)
                    )
                },
            )
            .await,
        );

        let step = Step::begin(RESTORE, events).await;
        let restore = RestoreTargetRequest { migration: Some(m.clone()), page_server: dumped.page_server.clone() };
        // A target lost mid-restore answers nothing, ever: its host being
        // declared down ends the wait (a copy it restored behind a partition
        // is frozen by its agent when the lease ends, and removed when it
        // registers again).
        let restored = tokio::select! {
            restored = target.restore_target(restore) => restored.map_err(|e| (RESTORE, e))?.into_inner(),
            down = self.until_down(&target_name) => return Err((RESTORE, down)),
        };
        let downtime = frozen.elapsed();
        steps.push(step.end(events, format!("pid {} on {target_name}", restored.pid)).await);

        let mut after = Pulled::default();
        if lazy {
            let step = Step::begin(PAGES, events).await;
            after = self.pull(plan, &m, &mut target, &mut source, events).await.map_err(|e| (PAGES, e))?;
            let detail =
                format!("{} in {:.0} ms, {} faults served on demand", bytes(after.bytes), after.ms, after.faults);
            steps.push(step.end(events, detail).await);
        }

        // The target has all of it: from here on the migration has happened.
        self.commit(plan).await;
        let step = Step::begin(FINISH, events).await;
        let detail = match source.finish_source(m.clone()).await {
            Ok(_) => format!("removed from {source_name}"),
            Err(e) => {
                log::error!(
                    "migration {}: removing {} from {source_name} failed: {}",
                    plan.id,
                    m.container_id,
                    e.message()
                );
                format!("NOT removed from {source_name} (frozen, network down): {}", e.message())
            }
        };
        steps.push(step.end(events, detail).await);
        Ok(MigrationResult {
            mode: mode_name(choice.mode).to_string(),
            mode_reason: choice.reason,
            source: source_name,
            target: target_name,
            total_ms: ms(started.elapsed()),
            downtime_ms: ms(downtime),
            memory_bytes: if lazy { after.bytes } else { before_freeze + dumped.memory_bytes },
            filesystem_bytes: synced.bytes + dumped.layer_bytes,
            steps,
            ip: plan.record.network.ip.clone(),
            iterations,
            bytes_before_freeze: synced.bytes + prepared.image_bytes + before_freeze,
            // A pre-copy's last memory goes to a page server, not in the images.
            bytes_during_freeze: dumped.images_bytes
                + dumped.layer_bytes
                + if choice.mode == MigrationMode::PreCopy { dumped.memory_bytes } else { 0 },
            bytes_after_freeze: after.bytes,
            pages_faulted: after.faults,
            all_pages_ms: after.ms,
        })
    }

    /// The mode of `plan`: the one asked for if both hosts allow it, else
    /// for `auto` the one with the smallest predicted downtime.
    async fn choose(
        &self,
        plan: &Plan,
        described: &DescribeResponse,
        prepared: &PrepareTargetResponse,
        source: &mut crate::proto::agent_client::AgentClient<tonic::transport::Channel>,
        probe: SyncLayerRequest,
    ) -> Result<Choice, Status> {
        let (source_name, target_name) = (&plan.source.facts.name, &plan.target.facts.name);
        let post_copy_unavailable =
            [(source_name, &described.post_copy_unavailable), (target_name, &prepared.post_copy_unavailable)]
                .into_iter()
                .find(|(_, why)| !why.is_empty())
                .map(|(host, why)| format!("{host}: {why}"));
        let asked = |mode, reason: &str| Choice { mode, reason: reason.to_string(), link_bits: None };
        match plan.mode {
            MigrationMode::StopAndCopy => Ok(asked(MigrationMode::StopAndCopy, "stop-and-copy, as asked")),
            MigrationMode::PostCopy => match post_copy_unavailable {
                None => Ok(asked(MigrationMode::PostCopy, "post-copy, as asked")),
                Some(why) => Err(Status::failed_precondition(format!("post-copy is not possible: {why}"))),
            },
            MigrationMode::PreCopy => match described.dirty_tracking_unavailable.as_str() {
                "" => Ok(asked(MigrationMode::PreCopy, "pre-copy, as asked")),
                why => Err(Status::failed_precondition(format!(
                    "pre-copy needs soft-dirty memory tracking on the source; {source_name}: {why}"
                ))),
            },
            MigrationMode::Auto | MigrationMode::Unspecified => {
                let pre_copy_unavailable = match described.dirty_tracking_unavailable.as_str() {
                    "" => None,
                    why => Some(format!("{source_name}: {why}")),
                };
                let link_bits = match (&post_copy_unavailable, &pre_copy_unavailable) {
                    // Nothing to choose from: no need to measure.
                    (Some(_), Some(_)) => None,
                    _ => {
                        let probed = source.probe_link(probe).await?.into_inner();
                        Some(probed.bytes as f64 * 8.0 / (probed.ms.max(0.1) / 1000.0))
                    }
                };
                Ok(choose(&Facts {
                    memory: described.memory_bytes,
                    // Zero where it was not measured (a ticker's container).
                    dirty_rate: (described.dirty_bytes_per_second > 0.0 || described.memory_bytes == 0)
                        .then_some(described.dirty_bytes_per_second),
                    link_bits,
                    post_copy_unavailable: post_copy_unavailable.as_deref(),
                    pre_copy_unavailable: pre_copy_unavailable.as_deref(),
                }))
            }
        }
    }

    /// Waits while the target pulls the memory, reporting progress. When
    /// the transfer fails, the source's page server decides: if the target
    /// had every page after all, the migration happened; if not, the error
    /// leads to the undo (the source's frozen processes run on).
    async fn pull(
        &self,
        plan: &Plan,
        m: &MigrationRef,
        target: &mut crate::proto::agent_client::AgentClient<tonic::transport::Channel>,
        source: &mut crate::proto::agent_client::AgentClient<tonic::transport::Channel>,
        events: &Events,
    ) -> Result<Pulled, Status> {
        let pulled = async {
            let mut stream = target.await_pages(m.clone()).await?.into_inner();
            loop {
                // The target reports every 250 ms: silence is a target or
                // a link gone, which no connection error may ever tell.
                let next = tokio::time::timeout(PAGES_SILENCE, stream.message()).await.map_err(|_| {
                    Status::unavailable(format!(
                        "{} said nothing about the transfer for {PAGES_SILENCE:?}",
                        plan.target.facts.name
                    ))
                })??;
                let Some(progress) = next else { break };
                if !progress.done {
                    let event = Progress { step: PAGES.to_string(), bytes: progress.bytes };
                    let _ = events.send(Ok(MigrateEvent { event: Some(migrate_event::Event::Progress(event)) })).await;
                    continue;
                }
                if progress.complete {
                    return Ok(Pulled { bytes: progress.bytes, ms: progress.ms, faults: progress.faults });
                }
                return Err(Status::aborted(format!(
                    "{} stopped pulling the memory after {}: {}",
                    plan.target.facts.name,
                    bytes(progress.bytes),
                    progress.error
                )));
            }
            Err(Status::unavailable(format!("{} ended the transfer without a word", plan.target.facts.name)))
        }
        .await;
        let Err(failed) = pulled else { return pulled };
        match source.stop_pages(m.clone()).await {
            Ok(stopped) if stopped.get_ref().complete => {
                log::warn!(
                    "migration {}: the target had every page after all ({}); the migration happened",
                    plan.id,
                    failed.message()
                );
                Ok(Pulled::default())
            }
            Ok(_) => Err(failed),
            Err(e) => Err(Status::new(
                failed.code(),
                format!(
                    "{}; and stopping the page server on {} failed: {}",
                    failed.message(),
                    plan.source.facts.name,
                    e.message()
                ),
            )),
        }
    }

    /// The record on the target, the migration over.
    async fn commit(&self, plan: &Plan) {
        let target = plan.target.facts.name.clone();
        let written = records::update(&*self.store, &plan.record.id, |current: Option<&ContainerRecord>| {
            Change::<_, std::convert::Infallible>::Write(ContainerRecord {
                host: target.clone(),
                phase: Phase::Placed,
                ..current.cloned().unwrap_or_else(|| plan.record.clone())
            })
        })
        .await;
        if let Err(e) = written {
            log::error!(
                "migration {}: {} runs on {target} but its record could not say so: {e}",
                plan.id,
                plan.record.id
            );
        }
    }

    /// Undoes a failed migration: target cleaned up first (so that no copy
    /// is left there), then the source thawed, then the record back.
    /// Returns what became of the container, for the error message.
    async fn undo(&self, plan: &Plan) -> String {
        let m = MigrationRef { migration_id: plan.id.clone(), container_id: plan.record.id.clone() };
        let mut problems = Vec::new();
        // A post-copy's page server first: had the target every page by
        // the time it ended, the source has nothing left to run.
        if let Ok(mut source) = self.agent(&plan.source).await
            && let Ok(stopped) = source.stop_pages(m.clone()).await
            && stopped.into_inner().complete
        {
            self.commit(plan).await;
            return format!(
                "but the target had every page by then: {} runs on {} (its copy on {} was not removed)",
                plan.record.id, plan.target.facts.name, plan.source.facts.name
            );
        }
        match self.agent(&plan.target).await {
            Ok(mut target) => {
                if let Err(e) = target.abort_target(m.clone()).await {
                    problems.push(format!("cleaning up {} failed: {}", plan.target.facts.name, e.message()));
                }
            }
            Err(e) => problems.push(format!("{} was not cleaned up: {}", plan.target.facts.name, e.message())),
        }
        let resumed = match self.agent(&plan.source).await {
            Ok(mut source) => source.resume_source(m.clone()).await.map(drop),
            Err(e) => Err(e),
        };
        let back = records::update(&*self.store, &plan.record.id, |current: Option<&ContainerRecord>| match current {
            Some(c) => {
                Change::<_, std::convert::Infallible>::Write(ContainerRecord { phase: Phase::Placed, ..c.clone() })
            }
            None => Change::Keep,
        })
        .await;
        if let Err(e) = back {
            problems.push(format!("its record still says migrating: {e}"));
        }
        let mut said = match resumed {
            Ok(()) => format!("{} runs on {} again", plan.record.id, plan.source.facts.name),
            Err(e) => format!(
                "{} could NOT be resumed on {}: {} (see `migratectl ps`)",
                plan.record.id,
                plan.source.facts.name,
                e.message()
            ),
        };
        for p in problems {
            said.push_str("; ");
            said.push_str(&p);
        }
        said
    }
}

/// What a post-copy pulled after the freeze.
#[derive(Debug, Default)]
struct Pulled {
    bytes: u64,
    ms: f64,
    faults: u64,
}

/// What `auto` knows of a container and the hosts.
struct Facts<'a> {
    /// The container's memory, in bytes.
    memory: u64,
    /// Bytes it dirties per second; None if not measured.
    dirty_rate: Option<f64>,
    /// The link's bits per second; None if not measured (nothing to choose).
    link_bits: Option<f64>,
    post_copy_unavailable: Option<&'a str>,
    pre_copy_unavailable: Option<&'a str>,
}

/// `auto`'s choice: the mode with the smallest predicted downtime.
/// Stop-and-copy freezes the container while its memory crosses;
/// post-copy about as long as a stop-and-copy of nothing, but leans on the
/// source until the last page arrives; pre-copy as long as the memory
/// dirtied during its last round takes to cross ([`predict_pre_copy`]).
fn choose(facts: &Facts) -> Choice {
    let mib = facts.memory as f64 / (1024.0 * 1024.0);
    let Some(bits) = facts.link_bits else {
        let why: Vec<String> = [("post-copy", facts.post_copy_unavailable), ("pre-copy", facts.pre_copy_unavailable)]
            .into_iter()
            .filter_map(|(mode, why)| why.map(|why| format!("{mode}: {why}")))
            .collect();
        let reason = if why.is_empty() {
            "auto: stop-and-copy, the link was not measured".to_string()
        } else {
            format!("auto: stop-and-copy, the only mode these hosts allow ({mib:.0} MiB); {}", why.join("; "))
        };
        return Choice { mode: MigrationMode::StopAndCopy, reason, link_bits: None };
    };
    let stop_and_copy = FIXED_DOWNTIME_MS + facts.memory as f64 * 8.0 / bits * 1000.0;
    let mut predicted = vec![(MigrationMode::StopAndCopy, stop_and_copy, String::new())];
    let mut not_offered = Vec::new();
    match facts.post_copy_unavailable {
        None => predicted.push((MigrationMode::PostCopy, FIXED_DOWNTIME_MS + POST_COPY_EXTRA_MS, String::new())),
        Some(why) => not_offered.push(format!("post-copy: {why}")),
    }
    match (facts.pre_copy_unavailable, facts.dirty_rate) {
        (None, Some(rate)) => {
            let (ms, rounds) = predict_pre_copy(facts.memory, rate, bits);
            let rounds = if rounds == 1 { "1 round".to_string() } else { format!("{rounds} rounds") };
            let how = format!(" in {rounds}, {:.1} MiB/s dirtied", rate / (1024.0 * 1024.0));
            predicted.push((MigrationMode::PreCopy, ms, how));
        }
        (None, None) => not_offered.push("pre-copy: the dirty rate was not measured".to_string()),
        (Some(why), _) => not_offered.push(format!("pre-copy: {why}")),
    }
    // The first of equals wins: stop-and-copy needs the least of the hosts.
    let best = predicted.iter().fold(&predicted[0], |best, p| if p.1 < best.1 { p } else { best });
    let listed: Vec<String> =
        predicted.iter().map(|(mode, ms, how)| format!("{} {ms:.0} ms{how}", mode_name(*mode))).collect();
    let mut reason = format!(
        "auto: {} (predicted downtime {}; {mib:.0} MiB over {:.0} Mbit/s)",
        mode_name(best.0),
        listed.join(", "),
        bits / 1e6
    );
    for n in not_offered {
        reason.push_str("; ");
        reason.push_str(&n);
    }
    Choice { mode: best.0, reason, link_bits: Some(bits) }
}

/// Pre-copy's predicted downtime and rounds for `memory` bytes dirtied at
/// `rate` bytes per second over a link of `bits` per second: the rounds as
/// [`converged`] would end them, each dirtying what its own time allows,
/// and the final dump carrying what the last one left.
fn predict_pre_copy(memory: u64, rate: f64, bits: f64) -> (f64, usize) {
    let mut rounds: Vec<Iteration> = Vec::new();
    let mut pending = memory as f64;
    loop {
        let ms = ROUND_OVERHEAD_MS + pending * 8.0 / bits * 1000.0;
        rounds.push(Iteration { round: rounds.len() as u32 + 1, bytes: pending as u64, ms });
        pending = (rate * ms / 1000.0).min(memory as f64);
        if converged(&rounds, Some(bits)).is_some() {
            let downtime = FIXED_DOWNTIME_MS + PRE_COPY_EXTRA_MS + pending * 8.0 / bits * 1000.0;
            return (downtime, rounds.len());
        }
    }
}

/// Pre-copy's rule for when the rounds end, as P.Haul's and LXD's, and
/// why: the last round was small enough that the final dump carries
/// about that much, which crosses the link within
/// [`FINAL_DUMP_BUDGET_MS`] (the link's bandwidth measured, else as the
/// first round, all the memory, crossed it); or it stopped shrinking,
/// being more than [`SHRINK`] of the one before, so more rounds only
/// cost time (the container dirties as fast as the link carries); or
/// [`MAX_ROUNDS`] rounds were made, as P.Haul's limit, for a dirty set
/// that shrinks too slowly to matter. None: one more round.
fn converged(rounds: &[Iteration], link_bits: Option<f64>) -> Option<String> {
    let last = rounds.last()?;
    let first = &rounds[0];
    let bits = link_bits.or_else(|| (first.ms > 0.0).then(|| first.bytes as f64 * 8.0 / (first.ms / 1000.0)));
    if let Some(bits) = bits.filter(|b| *b > 0.0) {
        let ms = last.bytes as f64 * 8.0 / bits * 1000.0;
        if ms <= FINAL_DUMP_BUDGET_MS {
            return Some(format!(
                "small enough: {} crosses in {ms:.0} ms at {:.0} Mbit/s",
                bytes(last.bytes),
                bits / 1e6
            ));
        }
    }
    if let [.., before, last] = rounds
        && last.bytes as f64 > SHRINK * before.bytes as f64
    {
        return Some(format!(
            "stopped shrinking: {} after {} (more than {:.0}% of it)",
            bytes(last.bytes),
            bytes(before.bytes),
            SHRINK * 100.0
        ));
    }
    (rounds.len() >= MAX_ROUNDS).then(|| format!("{MAX_ROUNDS} rounds, the most there are"))
}

/// A mode as `migratectl` names it.
pub fn mode_name(mode: MigrationMode) -> &'static str {
    match mode {
        MigrationMode::StopAndCopy => "stop-and-copy",
        MigrationMode::PostCopy => "post-copy",
        MigrationMode::PreCopy => "pre-copy",
        MigrationMode::Auto | MigrationMode::Unspecified => "auto",
    }
}

/// A step being timed, announced when it begins and ends.
struct Step {
    name: &'static str,
    started: Instant,
}

impl Step {
    async fn begin(name: &'static str, events: &Events) -> Step {
        let event = StepEvent { step: name.to_string(), finished: false, ms: 0.0, detail: String::new() };
        let _ = events.send(Ok(MigrateEvent { event: Some(migrate_event::Event::Step(event)) })).await;
        Step { name, started: Instant::now() }
    }

    async fn end(self, events: &Events, detail: String) -> StepTime {
        let took = ms(self.started.elapsed());
        let event = StepEvent { step: self.name.to_string(), finished: true, ms: took, detail };
        let _ = events.send(Ok(MigrateEvent { event: Some(migrate_event::Event::Step(event)) })).await;
        StepTime { step: self.name.to_string(), ms: took }
    }
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if n >= 1024 * 1024 { format!("{:.1} MiB", n as f64 / MIB) } else { format!("{:.1} KiB", n as f64 / 1024.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GBIT: f64 = 1e9;

    const MIB: u64 = 1 << 20;

    fn facts(memory: u64, dirty_rate: Option<f64>) -> Facts<'static> {
        Facts { memory, dirty_rate, link_bits: Some(GBIT), post_copy_unavailable: None, pre_copy_unavailable: None }
    }

    #[test]
    fn auto_picks_the_smallest_predicted_downtime() {
        let no_pre_copy = |memory| Facts { pre_copy_unavailable: Some("h1: no soft-dirty"), ..facts(memory, None) };
        let big = choose(&no_pre_copy(256 * MIB));
        assert_eq!(big.mode, MigrationMode::PostCopy, "{}", big.reason);
        assert!(big.reason.contains("256 MiB over 1000 Mbit/s"), "{}", big.reason);
        assert!(big.reason.contains("pre-copy: h1: no soft-dirty"), "{}", big.reason);
        // A few MiB cross faster than the lazy pages' set-up.
        let tiny = choose(&no_pre_copy(2 * MIB));
        assert_eq!(tiny.mode, MigrationMode::StopAndCopy, "{}", tiny.reason);
        // A container that dirties little converges: pre-copy, once
        // post-copy's extra set-up costs more than the last round.
        let quiet = choose(&facts(1024 * MIB, Some(MIB as f64)));
        assert_eq!(quiet.mode, MigrationMode::PreCopy, "{}", quiet.reason);
        assert!(quiet.reason.contains("rounds"), "{}", quiet.reason);
        // One that dirties faster than the link carries does not.
        let busy = choose(&facts(1024 * MIB, Some(200.0 * MIB as f64)));
        assert_eq!(busy.mode, MigrationMode::PostCopy, "{}", busy.reason);
    }

    #[test]
    fn auto_says_why_other_modes_were_not_possible() {
        let c = choose(&Facts {
            link_bits: None,
            post_copy_unavailable: Some("h2: this host's kernel lacks userfaultfd"),
            pre_copy_unavailable: Some("h1: no soft-dirty"),
            ..facts(1 << 30, None)
        });
        assert_eq!(c.mode, MigrationMode::StopAndCopy);
        assert!(c.reason.contains("userfaultfd") && c.reason.contains("soft-dirty"), "{}", c.reason);
    }

    fn rounds(sizes: &[u64]) -> Vec<Iteration> {
        sizes.iter().zip(1..).map(|(&bytes, round)| Iteration { round, bytes, ms: 1000.0 }).collect()
    }

    #[test]
    fn rounds_end_small_stalled_or_at_the_most() {
        // 64 MiB in the first second: 50 ms carry 3.4 MiB.
        assert_eq!(converged(&rounds(&[64 * MIB]), None), None);
        let small = converged(&rounds(&[64 * MIB, 2 * MIB]), None).unwrap();
        assert!(small.starts_with("small enough"), "{small}");
        assert_eq!(converged(&rounds(&[64 * MIB, 30 * MIB]), None), None);
        let stalled = converged(&rounds(&[64 * MIB, 30 * MIB, 28 * MIB]), None).unwrap();
        assert!(stalled.starts_with("stopped shrinking"), "{stalled}");
        // Each a quarter smaller than the one before, over a slow link.
        let shrinking: Vec<u64> = (0..8).map(|i| (64.0 * MIB as f64 * 0.75f64.powi(i)) as u64).collect();
        assert_eq!(converged(&rounds(&shrinking[..7]), Some(1e6)), None);
        let most = converged(&rounds(&shrinking), Some(1e6)).unwrap();
        assert!(most.contains("8 rounds"), "{most}");
    }

    #[test]
    fn pre_copy_predictions_follow_the_dirty_rate() {
        let (idle, rounds) = predict_pre_copy(1024 * MIB, 0.0, GBIT);
        assert_eq!(rounds, 2, "nothing dirtied: the second round finds nothing");
        assert!((idle - FIXED_DOWNTIME_MS - PRE_COPY_EXTRA_MS).abs() < 1.0, "{idle}");
        let (busy, _) = predict_pre_copy(1024 * MIB, 500.0 * MIB as f64, GBIT);
        assert!(busy > 5000.0, "dirtying faster than the link: about all of it at the end, {busy}");
    }
}
