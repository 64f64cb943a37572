//! Moving a container to another host by stop-and-copy (seed 001 steps
//! 1-9): check that two hosts are ready, pick the target, prepare it,
//! sync the writable layer while the container runs, dump it (frozen, its
//! network locked) with its images streamed to the target as CRIU writes
//! them, restore it
//! there, and only then remove it from the source. The record moves to the
//! target in the one write that ends the migration.
//!
//! Until the target runs the container, every failure is undone: the
//! target cleaned up, the source thawed with its network back, the record
//! as it was; the error names the step and the cause. Exactly one copy
//! runs at any moment: the source is frozen before the target restores,
//! and removed (never thawed) once the target runs.

use std::time::Instant;

use tokio::sync::mpsc;
use tonic::Status;

use super::containers::store_status;
use super::service::CoordinatorService;
use crate::containers::{ContainerRecord, Phase};
use crate::membership::{HostRecord, Liveness};
use crate::proto::{
    ContainerState, DescribeRequest, DumpRequest, MigrateEvent, MigrateRequest, MigrationMode, MigrationRef,
    MigrationResult, PrepareTargetRequest, StepEvent, StepTime, SyncLayerRequest, migrate_event,
};
use crate::records::{self, Change};
use crate::scheduler::{self, Rules};

type Events = mpsc::Sender<Result<MigrateEvent, Status>>;

/// The steps' names, as events and `--json` report them.
pub const PREPARE: &str = "prepare";
pub const SYNC: &str = "sync";
pub const DUMP: &str = "dump";
pub const RESTORE: &str = "restore";
pub const FINISH: &str = "finish";

/// A migration's chosen hosts.
struct Plan {
    record: ContainerRecord,
    source: HostRecord,
    target: HostRecord,
    id: String,
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

    /// Checks the request against the cluster, picks the target and marks
    /// the record as migrating.
    async fn plan(&self, req: &MigrateRequest) -> Result<Plan, Status> {
        match MigrationMode::try_from(req.mode) {
            Ok(MigrationMode::Unspecified | MigrationMode::StopAndCopy) => {}
            Err(_) => return Err(Status::invalid_argument(format!("unknown migration mode {}", req.mode))),
        }
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
            Some(_) => Change::Refuse(Status::failed_precondition(format!("{} is still being created", req.id))),
            None => Change::Refuse(Status::not_found(format!("the cluster has no container {}", req.id))),
        })
        .await
        .map_err(store_status)?;
        let record = marked?.expect("written");
        log::info!("migration {id}: {} from {} to {target_name}", record.id, source.facts.name);
        Ok(Plan { record, source, target: target.clone(), id })
    }

    /// The steps; an error says at which one.
    async fn run(&self, plan: &Plan, events: &Events) -> Result<MigrationResult, (&'static str, Status)> {
        let started = Instant::now();
        let m = MigrationRef { migration_id: plan.id.clone(), container_id: plan.record.id.clone() };
        let (source_name, target_name) = (plan.source.facts.name.clone(), plan.target.facts.name.clone());
        let mut steps = Vec::new();
        let mut source = self.agent(&plan.source).await.map_err(|e| (PREPARE, e))?;
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
                source: Some(described),
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
        steps.push(step.end(events, detail).await);

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

        let step = Step::begin(DUMP, events).await;
        let frozen = Instant::now();
        let dumped = source
            .dump(DumpRequest {
                migration: Some(m.clone()),
                target_agent: plan.target.facts.address.clone(),
                target_name: target_name.clone(),
            })
            .await
            .map_err(|e| (DUMP, e))?
            .into_inner();
        steps.push(
            step.end(
                events,
                format!(
                    "{} of images ({} of memory), {} of layer changes",
                    bytes(dumped.images_bytes),
                    bytes(dumped.memory_bytes),
                    bytes(dumped.layer_bytes)
                ),
            )
            .await,
        );

        let step = Step::begin(RESTORE, events).await;
        let restored = target.restore_target(m.clone()).await.map_err(|e| (RESTORE, e))?.into_inner();
        let downtime = frozen.elapsed();
        steps.push(step.end(events, format!("pid {} on {target_name}", restored.pid)).await);

        // The target runs it: from here on the migration has happened.
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
            mode: "stop-and-copy".to_string(),
            source: source_name,
            target: target_name,
            total_ms: ms(started.elapsed()),
            downtime_ms: ms(downtime),
            memory_bytes: dumped.memory_bytes,
            filesystem_bytes: synced.bytes + dumped.layer_bytes,
            steps,
            ip: plan.record.network.ip.clone(),
        })
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
