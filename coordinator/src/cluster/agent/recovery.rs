//! Bringing back on this host a container whose host was lost (the inner
//! loop of seed 001's Algorithm 2): the newest version its ticker stored
//! that rebuilds, verifies and restores, falling back version by version
//! (at most a version group's worth), then a cold start. The report says
//! which version ran and why each newer one was skipped.
//!
//! The spec is the record's, as at the container's creation; a version
//! only gives the processes' state and the writable layer.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use migrate_version_store::{ChunkCipher, ContainerRef, StoreLocation, VersionStore};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};
use tonic::transport::Channel;

use super::containers::{self, blocking};
use super::context::Context;
use super::images;
use crate::containers::STORE_ANNOTATION;
use crate::host::versions::{self, Choice};
use crate::membership;
use crate::proto::agent_client::AgentClient;
use crate::proto::{self, RecoverRequest, RecoverResponse, SkippedVersion};

/// The ticker's key file annotation: versions encrypted with it need it.
const KEY_FILE_ANNOTATION: &str = "io.containerd.migrate.checkpoint.key-file";

/// The recoveries of this host, one at a time per container. A new leader
/// asks again when the recovery its predecessor began here is not running
/// yet; that second request must neither remove what the first is making
/// nor make a second copy, so it waits for the first and, if that one
/// brought the container back, answers with the first's report.
#[derive(Default)]
pub struct Recoveries {
    per_container: std::sync::Mutex<HashMap<String, Arc<AsyncMutex<Option<RecoverResponse>>>>>,
}

/// The turn of one request to bring a container back here.
pub struct Turn {
    id: String,
    last: OwnedMutexGuard<Option<RecoverResponse>>,
}

impl Recoveries {
    /// Waits until no other request brings container `id` back here.
    pub async fn turn(&self, id: &str) -> Turn {
        let lock = self.per_container.lock().expect("not poisoned").entry(id.to_string()).or_default().clone();
        Turn { id: id.to_string(), last: lock.lock_owned().await }
    }
}

impl Turn {
    /// The report of the request before, if the copy it made still runs.
    pub async fn already_back(&self, ctx: &Context) -> Result<Option<RecoverResponse>> {
        let Some(last) = self.last.as_ref() else { return Ok(None) };
        let task = ctx.cd.task(&self.id).await?;
        let running = containerd_client::types::v1::Status::Running as i32;
        Ok(task.filter(|t| t.pid == last.pid && t.status == running).map(|_| last.clone()))
    }

    pub fn finished(&mut self, response: &RecoverResponse) {
        *self.last = Some(response.clone());
    }
}

/// `image_from`: a client of the agent named in the request as having
/// the image, if one is.
pub async fn recover(
    ctx: &Context,
    req: &RecoverRequest,
    image_from: Option<AgentClient<Channel>>,
) -> Result<RecoverResponse> {
    let c = req.container.as_ref().context("the request has no container")?;
    let spec = c.spec.as_ref().context("the request has no container spec")?;
    // The image first: every way below needs it, and a copy from another
    // host is best made once.
    images::ensure(&ctx.cd, &spec.image, &ctx.snapshotter, image_from).await?;
    // A copy that an attempt before left here, not running (the
    // coordinator asks only when it does not see it run here).
    if ctx.cd.container(&spec.id).await.is_ok() {
        log::warn!("recovery of {}: removing what an earlier attempt left here", spec.id);
        containers::remove(ctx, &spec.id).await?;
    }
    let cold_reason = if req.cold {
        "its restore policy is restart".to_string()
    } else {
        match restore_newest(ctx, c, &spec.annotations, req.max_versions.max(1)).await {
            Ok(Restored::Ran(response)) => return Ok(response),
            Ok(Restored::None { skipped, why }) => {
                let pid = containers::recreate(ctx, c, None, None).await?;
                return Ok(RecoverResponse {
                    pid,
                    skipped,
                    cold_reason: why,
                    running_unix_ms: membership::now(),
                    ..Default::default()
                });
            }
            Err(e) => format!("{e:#}"),
        }
    };
    log::warn!("recovery of {}: starting it cold here: {cold_reason}", spec.id);
    let pid = containers::recreate(ctx, c, None, None).await?;
    Ok(RecoverResponse { pid, cold_reason, running_unix_ms: membership::now(), ..Default::default() })
}

enum Restored {
    Ran(RecoverResponse),
    /// No version restored; the skipped ones and why none was left.
    None {
        skipped: Vec<SkippedVersion>,
        why: String,
    },
}

/// Tries the newest `max` versions, newest first. An error is one that no
/// version could get past (the store unreachable, the key missing).
async fn restore_newest(
    ctx: &Context,
    c: &proto::Container,
    annotations: &HashMap<String, String>,
    max: u32,
) -> Result<Restored> {
    let spec = c.spec.as_ref().context("the request has no container spec")?;
    let location: StoreLocation = annotations
        .get(STORE_ANNOTATION)
        .with_context(|| format!("the container has no {STORE_ANNOTATION}: it has no versions"))?
        .parse()
        .with_context(|| format!("its {STORE_ANNOTATION}"))?;
    let cipher = match annotations.get(KEY_FILE_ANNOTATION) {
        Some(path) => Some(Arc::new(
            ChunkCipher::from_key_file(std::path::Path::new(path))
                .with_context(|| format!("the key of its versions ({KEY_FILE_ANNOTATION}) on {}", ctx.name))?,
        )),
        None => None,
    };
    let target = ContainerRef::new(ctx.cd.namespace(), &spec.id)?;
    let (store, candidates) = {
        let (location, target) = (location.clone(), target.clone());
        blocking(move || {
            let store: Arc<dyn VersionStore> = Arc::from(versions::open(&location)?);
            // None stored is an error here: a cold start, with its reason.
            let candidates = versions::candidates(store.as_ref(), &target, Choice::Latest)?;
            anyhow::Ok((store, candidates))
        })
        .await?
    };
    let total = candidates.len();
    let mut skipped = Vec::new();
    for version in candidates.into_iter().take(max as usize) {
        let rebuilt = {
            let (store, target, cipher) = (store.clone(), target.clone(), cipher.clone());
            blocking(move || {
                let created = migrate_version_store::read_manifest(store.as_ref(), &target, version)
                    .map(|m| unix_ms(m.created))
                    .unwrap_or(0);
                anyhow::Ok(versions::rebuild(store.as_ref(), &target, version, cipher.as_deref()).map(|r| (r, created)))
            })
            .await?
        };
        let (rebuilt, created) = match rebuilt {
            Ok(r) => r,
            Err(e) if versions::is_key_problem(&e) => return Err(anyhow::Error::new(*e)),
            Err(e) => {
                log::warn!("recovery of {}: skipping version {version}: {e}", spec.id);
                skipped.push(SkippedVersion { version, reason: e.to_string() });
                continue;
            }
        };
        match containers::recreate(ctx, c, Some(rebuilt.checkpoint.dir()), None).await {
            Ok(pid) => {
                log::info!("recovery of {}: restored version {version} here, pid {pid}", spec.id);
                return Ok(Restored::Ran(RecoverResponse {
                    pid,
                    version: Some(version),
                    version_created_unix_ms: created,
                    skipped,
                    cold_reason: String::new(),
                    running_unix_ms: membership::now(),
                }));
            }
            Err(e) => {
                log::warn!("recovery of {}: version {version} did not restore: {e:#}", spec.id);
                skipped.push(SkippedVersion { version, reason: format!("{e:#}") });
            }
        }
    }
    let why = if skipped.len() < total {
        format!(
            "none of its newest {} versions in {location} restored (the version group's size; {total} are stored)",
            skipped.len()
        )
    } else {
        format!("none of its {total} versions in {location} restored")
    };
    Ok(Restored::None { skipped, why })
}

fn unix_ms(t: time::OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}
