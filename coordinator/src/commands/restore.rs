//! `migratectl restore`: new containers (one per `--as`) from one
//! checkpoint, through containerd.
//!
//! For each new id: a snapshot prepared on the image's layers, a container
//! whose spec is the checkpoint's, a task without stdio (output goes to a
//! log file) created from the checkpoint, and a start. The checkpoint goes
//! to the shim as the task's checkpoint (containerd's `RestoreFromPath`),
//! not as the restore-from annotation: the shim must then restore it or
//! fail, where the annotation would let it start cold and this command
//! report a restore that did not happen.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use containerd_client::services::v1::{Container, CreateTaskRequest, container::Runtime};
use containerd_client::tonic::Code;
use migrate_version_store::{ChunkCipher, ContainerRef, StoreLocation, VersionStore};
use prost_types::Any;
use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::Global;
use crate::commands::checkpoint::{RootArg, blocking};
use crate::commands::versions;
use crate::containerd::{self, Containerd};
use crate::image;
use crate::output::{self, human_ms, round_ms};

/// Where the restored containers' output goes: `<dir>/<id>.log`.
pub const LOG_DIR: &str = "/run/containerd-migrate/logs";
const RUNTIME: &str = "io.containerd.migrate.v1";
/// Label on restored containers naming the checkpoint they came from.
const CHECKPOINT_LABEL: &str = "io.containerd.migrate.checkpoint";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    root: RootArg,
    /// The checkpoint to restore from (one of this host's, in --root)
    #[arg(long, value_name = "ID", required_unless_present = "store", conflicts_with = "store")]
    checkpoint: Option<String>,
    /// Restore a version from this version store (a checkpoint ticker's:
    /// file:///PATH or oci://HOST:PORT/REPOSITORY) instead
    #[arg(long, value_name = "URL", value_parser = versions::parse_location, requires = "container")]
    store: Option<StoreLocation>,
    /// The container (in --namespace) whose version to restore
    #[arg(long, value_name = "ID", requires = "store")]
    container: Option<String>,
    /// Which version: latest (the newest that restores, falling back to
    /// older ones when one fails verification or restore) or a number
    #[arg(long, value_name = "latest|N", default_value = "latest")]
    version: versions::Choice,
    /// The key file the versions were encrypted with
    #[arg(long, value_name = "FILE", requires = "store")]
    key_file: Option<PathBuf>,
    /// The image the container ran, if the checkpoint does not name it
    /// [default: the checkpointed container's image, if containerd still has
    /// the container]
    #[arg(long, value_name = "REF")]
    image: Option<String>,
    /// Id of a new container; repeat for several clones [default: the
    /// checkpointed container's id]
    #[arg(long = "as", value_name = "NEW_ID")]
    new_ids: Vec<String>,
    /// Return once the containers run instead of waiting for them to exit
    #[arg(short, long)]
    detach: bool,
    /// Snapshotter for the new containers' root file systems
    #[arg(long, default_value = "overlayfs")]
    snapshotter: String,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

/// One restored container.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Restored {
    id: String,
    pid: u32,
    log: PathBuf,
    ms: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    /// The checkpoint id, or `<store URL> <namespace>/<container> version <V>`.
    checkpoint: String,
    dir: PathBuf,
    /// The version restored, when restoring from a version store.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    /// Newer versions that were tried and why each was skipped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    skipped: Vec<Skipped>,
    /// Loading and checking (or rebuilding) the checkpoint used: its files
    /// and their sizes. The shim verifies every digest before it restores
    /// a clone, so hashing here as well only read everything twice.
    check_ms: f64,
    containers: Vec<Restored>,
    total_ms: f64,
}

#[derive(Debug, Serialize)]
struct Skipped {
    version: u64,
    reason: String,
}

/// What every clone is made from.
struct Source {
    checkpoint_id: String,
    dir: PathBuf,
    old_id: String,
    image: String,
    chain_id: migrate_oci::ChainId,
    spec: Value,
}

/// How restoring the clones went: all, some, or none of them.
struct Attempt {
    restored: Vec<Restored>,
    errors: Vec<String>,
}

pub async fn run(g: &Global, a: Args) -> Result<ExitCode> {
    let started = Instant::now();
    let new_ids = a.new_ids.clone();
    if let Some(dup) = new_ids.iter().enumerate().find_map(|(i, id)| new_ids[..i].contains(id).then_some(id)) {
        bail!("--as {dup} is given twice");
    }
    let cd = Containerd::connect(&g.address, &g.namespace).await?;
    let (mut report, attempt) = match (&a.checkpoint, &a.store) {
        (Some(id), _) => from_checkpoint(&cd, &a, id).await?,
        (None, Some(location)) => from_store(&cd, &a, location).await?,
        (None, None) => bail!("say what to restore: --checkpoint ID, or --store URL --container ID"),
    };
    report.containers = attempt.restored;
    report.total_ms = round_ms(started.elapsed());
    if a.json {
        output::print_json(&report)?;
    } else {
        print_report(&report);
    }
    if !attempt.errors.is_empty() {
        bail!("restoring {} containers failed:\n  {}", attempt.errors.len(), attempt.errors.join("\n  "));
    }
    if a.detach {
        return Ok(ExitCode::SUCCESS);
    }
    wait_all(&cd, &report.containers).await
}

async fn from_checkpoint(cd: &Containerd, a: &Args, id: &str) -> Result<(Report, Attempt)> {
    let (checkpoint, check_time) = load_and_check(&a.root.root, id).await?;
    let source = source(cd, &checkpoint, id.to_string(), a.image.as_deref()).await?;
    let attempt = restore_all(cd, &source, &a.new_ids, &a.snapshotter).await;
    let report = Report {
        checkpoint: id.to_string(),
        dir: source.dir.clone(),
        version: None,
        skipped: Vec::new(),
        check_ms: round_ms(check_time),
        containers: Vec::new(),
        total_ms: 0.0,
    };
    Ok((report, attempt))
}

/// Newest version first: rebuild it (every chunk checked against its
/// digest), restore the clones; on a
/// failure that an older version may not have (a missing or damaged chunk,
/// a restore that fails), try the next older one.
async fn from_store(cd: &Containerd, a: &Args, location: &StoreLocation) -> Result<(Report, Attempt)> {
    let container = a.container.as_deref().context("--store needs --container ID")?;
    let target = ContainerRef::new(cd.namespace(), container)?;
    let cipher = match &a.key_file {
        Some(path) => Some(Arc::new(ChunkCipher::from_key_file(path)?)),
        None => None,
    };
    let (store, candidates) = {
        let (location, target, choice) = (location.clone(), target.clone(), a.version);
        blocking(move || {
            let store: Arc<dyn VersionStore> = Arc::from(versions::open(&location)?);
            let candidates = versions::candidates(store.as_ref(), &target, choice)?;
            Ok((store, candidates))
        })
        .await?
    };
    let mut skipped = Vec::new();
    for version in candidates {
        let started = Instant::now();
        let rebuilt = {
            let (store, target, cipher) = (store.clone(), target.clone(), cipher.clone());
            blocking(move || Ok(versions::rebuild(store.as_ref(), &target, version, cipher.as_deref()))).await?
        };
        let rebuilt = match rebuilt {
            Ok(rebuilt) => rebuilt,
            Err(e) if versions::is_key_problem(&e) => return Err(e.into()),
            Err(e) => {
                eprintln!("migratectl: skipping version {version}: {e}");
                skipped.push(Skipped { version, reason: e.to_string() });
                continue;
            }
        };
        let check_time = started.elapsed();
        let label = format!("{location} {}/{} version {version}", target.namespace, target.id);
        let source = source(cd, &rebuilt.checkpoint, label.clone(), a.image.as_deref()).await?;
        let attempt = restore_all(cd, &source, &a.new_ids, &a.snapshotter).await;
        // Some clones run from this version: falling back would mix versions.
        if attempt.errors.is_empty() || !attempt.restored.is_empty() {
            let report = Report {
                checkpoint: label,
                dir: source.dir.clone(),
                version: Some(version),
                skipped,
                check_ms: round_ms(check_time),
                containers: Vec::new(),
                total_ms: 0.0,
            };
            return Ok((report, attempt));
        }
        let reason = attempt.errors.join("; ");
        eprintln!("migratectl: skipping version {version}: {reason}");
        skipped.push(Skipped { version, reason });
    }
    let reasons: Vec<String> = skipped.iter().map(|s| format!("version {}: {}", s.version, s.reason)).collect();
    bail!("no version of {target} in {location} could be restored:\n  {}", reasons.join("\n  "))
}

/// Everything a clone needs from the checkpoint, and the image's layers.
async fn source(
    cd: &Containerd,
    checkpoint: &migrate_oci::Checkpoint,
    label: String,
    image: Option<&str>,
) -> Result<Arc<Source>> {
    let m = checkpoint.manifest();
    let image = match (m.container.image.clone(), image) {
        (_, Some(image)) => image.to_string(),
        (Some(image), None) => image,
        (None, None) => match cd.container(&m.container.id).await {
            Ok(c) if !c.image.is_empty() => c.image,
            _ => bail!(
                "{label} does not name the image its root file system came from, and containerd has no \
                 container {} to ask: pass --image REF",
                m.container.id
            ),
        },
    };
    let spec_path = checkpoint.dir().join(migrate_oci::CONFIG_FILE);
    let spec: Value =
        serde_json::from_slice(&std::fs::read(&spec_path).with_context(|| format!("{label} has no spec"))?)
            .with_context(|| format!("{} is not JSON", spec_path.display()))?;
    let chain_id = image::rootfs_chain_id(cd, &image)
        .await
        .with_context(|| format!("find the layers of image {image}, which {label} was taken from"))?;
    // The shim would refuse it too, but only after a snapshot and a
    // container were made for each clone.
    if let Some(taken) = m.rootfs.as_ref().and_then(|r| r.chain_id)
        && taken != chain_id
    {
        bail!(
            "{label} was taken from a container of {} with layers {taken}, but image {image} here has layers              {chain_id} (the name now points at other content?): pull or import the image it was taken from, or              pass --image REF of one with those layers",
            m.container.image.as_deref().unwrap_or("an unnamed image")
        );
    }
    Ok(Arc::new(Source {
        checkpoint_id: label,
        dir: std::fs::canonicalize(checkpoint.dir())
            .with_context(|| format!("resolve {}", checkpoint.dir().display()))?,
        old_id: m.container.id.clone(),
        image,
        chain_id,
        spec,
    }))
}

/// Restores one clone per new id (the checkpointed id if none), at once.
async fn restore_all(cd: &Containerd, source: &Arc<Source>, new_ids: &[String], snapshotter: &str) -> Attempt {
    let new_ids = if new_ids.is_empty() { vec![source.old_id.clone()] } else { new_ids.to_vec() };
    let mut clones = JoinSet::new();
    for (i, id) in new_ids.iter().enumerate() {
        let (cd, source, id, snapshotter) = (cd.clone(), source.clone(), id.clone(), snapshotter.to_string());
        clones.spawn(async move { (i, restore_one(&cd, &source, &id, &snapshotter).await) });
    }
    let mut results: Vec<(usize, Result<Restored>)> = clones.join_all().await;
    results.sort_by_key(|(i, _)| *i);
    let mut attempt = Attempt { restored: Vec::new(), errors: Vec::new() };
    for (i, r) in results {
        match r {
            Ok(r) => attempt.restored.push(r),
            Err(e) => attempt.errors.push(format!("{}: {e:#}", new_ids[i])),
        }
    }
    attempt
}

async fn load_and_check(store: &Path, id: &str) -> Result<(migrate_oci::Checkpoint, Duration)> {
    let (store, id) = (store.to_path_buf(), id.to_string());
    blocking(move || {
        let started = Instant::now();
        if !store.exists() {
            bail!("there is no checkpoint store at {}", store.display());
        }
        let store = migrate_oci::CheckpointStore::open(&store)
            .with_context(|| format!("open the checkpoint store {}", store.display()))?;
        let checkpoint = store.get(&id)?;
        checkpoint.check_files()?;
        Ok((checkpoint, started.elapsed()))
    })
    .await
}

fn print_report(r: &Report) {
    for s in &r.skipped {
        println!("skipped version {}: {}", s.version, s.reason);
    }
    println!("checkpoint {} ({}) checked in {}", r.checkpoint, r.dir.display(), human_ms(Some(r.check_ms)));
    for c in &r.containers {
        println!("restored {} pid {} in {} (output in {})", c.id, c.pid, human_ms(Some(c.ms)), c.log.display());
    }
    println!("total {}", human_ms(Some(r.total_ms)));
}

/// Creates, and on any failure removes again, container `id`.
async fn restore_one(cd: &Containerd, source: &Source, id: &str, snapshotter: &str) -> Result<Restored> {
    let started = Instant::now();
    let spec = clone_spec(&source.spec, &source.old_id, id, cd.namespace())?;
    let spec = serde_json::to_vec(&spec).context("encode the spec")?;

    // The lease keeps containerd's garbage collector off the snapshot until
    // the container that refers to it exists.
    let (leased, lease) = cd.with_lease("restore").await?;
    let undo = Undo { cd: cd.clone(), id: id.to_string(), snapshotter: snapshotter.to_string() };
    let mounts = match leased.prepare_snapshot(snapshotter, id, &source.chain_id.to_string()).await {
        Ok(m) => m,
        Err(e) => {
            release(lease).await;
            if containerd::is_code(&e, Code::AlreadyExists) {
                bail!("a snapshot named {id} already exists ({snapshotter}); choose another --as or remove it");
            }
            if containerd::is_code(&e, Code::NotFound) {
                return Err(e.context(format!(
                    "image {} is not unpacked for snapshotter {snapshotter} (ctr image unpack --snapshotter \
                     {snapshotter} {})",
                    source.image, source.image
                )));
            }
            return Err(e);
        }
    };
    let container = Container {
        id: id.to_string(),
        labels: HashMap::from([(CHECKPOINT_LABEL.to_string(), source.checkpoint_id.clone())]),
        image: source.image.clone(),
        runtime: Some(Runtime { name: RUNTIME.to_string(), options: None }),
        spec: Some(Any { type_url: containerd::SPEC_TYPE_URL.to_string(), value: spec }),
        snapshotter: snapshotter.to_string(),
        snapshot_key: id.to_string(),
        ..Default::default()
    };
    let created = leased.create_container(container).await;
    release(lease).await;
    if let Err(e) = created {
        undo.snapshot().await;
        return Err(e);
    }

    let log = Path::new(LOG_DIR).join(format!("{id}.log"));
    let uri = containerd::file_log_uri(&log);
    let task = CreateTaskRequest {
        container_id: id.to_string(),
        rootfs: mounts,
        stdin: String::new(),
        stdout: uri.clone(),
        stderr: uri,
        terminal: false,
        checkpoint: Some(containerd::restore_from_path(&source.dir)),
        ..Default::default()
    };
    if let Err(e) = cd.create_task(task).await {
        undo.container().await;
        return Err(e);
    }
    // With RestoreFromPath containerd starts the task itself as part of the
    // create (as CRI expects), so there is nothing left to start: the
    // restored process's pid is in the task's state.
    let pid = cd.task(id).await.map(|t| t.map(|t| t.pid).unwrap_or_default());
    match pid {
        Ok(pid) => Ok(Restored { id: id.to_string(), pid, log, ms: round_ms(started.elapsed()) }),
        Err(e) => {
            undo.task().await;
            Err(e)
        }
    }
}

async fn release(lease: containerd::Lease) {
    if let Err(e) = lease.release().await {
        log::warn!("{e:#} (it expires by itself within an hour)");
    }
}

/// Removes what a failed restore of one container created, newest first;
/// failures here are reported but do not hide the original error.
struct Undo {
    cd: Containerd,
    id: String,
    snapshotter: String,
}

impl Undo {
    async fn task(&self) {
        if let Err(e) = self.cd.delete_task(&self.id).await {
            log::warn!("cleaning up: {e:#}");
        }
        self.container().await;
    }

    async fn container(&self) {
        if let Err(e) = self.cd.delete_container(&self.id).await {
            log::warn!("cleaning up: {e:#}");
        }
        self.snapshot().await;
    }

    async fn snapshot(&self) {
        if let Err(e) = self.cd.remove_snapshot(&self.snapshotter, &self.id).await {
            log::warn!("cleaning up: {e:#}");
        }
    }
}

/// The spec for clone `new_id`: the checkpoint's, with a cgroup of its own
/// when the original's was named after the original container (as `ctr`
/// and containerd's Go client name it: `/<namespace>/<id>`), since two
/// clones must not share one, and without a restore-from annotation the
/// original may have had (the task's checkpoint says what to restore).
pub fn clone_spec(spec: &Value, old_id: &str, new_id: &str, namespace: &str) -> Result<Value> {
    let mut spec = spec.clone();
    let obj = spec.as_object_mut().context("the checkpoint's config.json is not a JSON object")?;
    if let Some(Value::Object(annotations)) = obj.get_mut("annotations") {
        annotations.remove(migrate_oci::RESTORE_FROM_ANNOTATION);
    }
    if let Some(Value::String(path)) = obj.get_mut("linux").and_then(|l| l.get_mut("cgroupsPath")) {
        *path = clone_cgroups_path(path, old_id, new_id, namespace);
    }
    Ok(spec)
}

/// `/<ns>/<old>` → `/<ns>/<new>`; systemd's `slice:prefix:<old>` → `slice:prefix:<new>`;
/// a path that does not end in the old id gets `/<ns>/<new>`.
fn clone_cgroups_path(path: &str, old_id: &str, new_id: &str, namespace: &str) -> String {
    if old_id == new_id {
        return path.to_string();
    }
    let cut = path.rfind(['/', ':']).map_or(0, |i| i + 1);
    if &path[cut..] == old_id {
        format!("{}{new_id}", &path[..cut])
    } else if path.contains(':') && !path.starts_with('/') {
        // systemd form whose name is not the id: keep the slice, new name.
        format!("{}{new_id}", &path[..cut])
    } else {
        format!("/{namespace}/{new_id}")
    }
}

/// Without --detach: waits until every restored container's task exits
/// (forwarding SIGINT and SIGTERM to them), deletes the tasks as `ctr run`
/// does, and exits with the highest exit status.
async fn wait_all(cd: &Containerd, restored: &[Restored]) -> Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut waits = JoinSet::new();
    for r in restored {
        let (cd, id) = (cd.clone(), r.id.clone());
        waits.spawn(async move {
            let status = cd.wait_task(&id).await.map(|w| w.exit_status);
            if let Err(e) = cd.delete_task(&id).await {
                log::warn!("{e:#}");
            }
            (id, status)
        });
    }
    let mut int = signal(SignalKind::interrupt()).context("install a SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("install a SIGTERM handler")?;
    let mut worst = 0u32;
    loop {
        let sig = tokio::select! {
            done = waits.join_next() => match done {
                None => break,
                Some(Ok((id, Ok(status)))) => {
                    println!("{id} exited with status {status}");
                    worst = worst.max(status);
                    continue;
                }
                Some(Ok((id, Err(e)))) => {
                    eprintln!("migratectl: {id}: {e:#}");
                    worst = worst.max(1);
                    continue;
                }
                Some(Err(e)) => bail!("a wait task failed: {e}"),
            },
            _ = int.recv() => libc_signal::SIGINT,
            _ = term.recv() => libc_signal::SIGTERM,
        };
        for r in restored {
            if let Err(e) = cd.kill_task(&r.id, sig).await {
                log::warn!("{e:#}");
            }
        }
    }
    Ok(ExitCode::from(worst.min(255) as u8))
}

mod libc_signal {
    pub const SIGINT: u32 = 2;
    pub const SIGTERM: u32 = 15;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn clone_spec_drops_restore_from_and_keeps_the_rest() {
        let spec = json!({
            "ociVersion": "1.1.0",
            "process": {"args": ["memtick"]},
            "annotations": {"keep": "me", "io.containerd.migrate.restore-from": "file:///old"},
            "linux": {"cgroupsPath": "/default/c1", "namespaces": [{"type": "pid"}]}
        });
        let out = clone_spec(&spec, "c1", "c2", "default").unwrap();
        assert!(out["annotations"].get("io.containerd.migrate.restore-from").is_none());
        assert_eq!(out["annotations"]["keep"], "me");
        assert_eq!(out["linux"]["cgroupsPath"], "/default/c2");
        assert_eq!(out["process"], spec["process"]);
        assert_eq!(out["linux"]["namespaces"], spec["linux"]["namespaces"]);
    }

    #[test]
    fn clone_spec_without_annotations_or_cgroups_path() {
        let spec = json!({"ociVersion": "1.1.0"});
        let out = clone_spec(&spec, "c1", "c2", "default").unwrap();
        assert_eq!(out, spec);
        assert!(clone_spec(&json!([1]), "a", "b", "n").is_err());
    }

    #[test]
    fn cgroups_paths_follow_the_new_id() {
        assert_eq!(clone_cgroups_path("/default/c1", "c1", "c2", "default"), "/default/c2");
        assert_eq!(clone_cgroups_path("/default/c1", "c1", "c1", "default"), "/default/c1");
        assert_eq!(clone_cgroups_path("system.slice:cri:c1", "c1", "c2", "k8s"), "system.slice:cri:c2");
        assert_eq!(clone_cgroups_path("system.slice:cri:other", "c1", "c2", "k8s"), "system.slice:cri:c2");
        assert_eq!(clone_cgroups_path("/custom/path", "c1", "c2", "ns"), "/ns/c2");
    }
}
