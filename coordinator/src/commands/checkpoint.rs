//! `migratectl checkpoint create|ls|inspect|rm`.
//!
//! `create` asks the container's shim for a checkpoint committed into the
//! store (the shim's capture pipeline: a short freeze and no copy of the
//! memory images, which go through FIFOs straight into the store while the
//! container stays paused) and reports it from its manifest.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use containerd_client::types::v1::Status;
use migrate_oci::{Checkpoint, CheckpointStore};
use migrate_version_store::{ContainerRef, StoreLocation};
use serde::Serialize;

use crate::Global;
use crate::commands::{export, import, versions};
use crate::containerd::Containerd;
use crate::ids;
use crate::output::{self, Table, human_bytes, human_ms, round_ms};
use crate::shim::{Shim, StoreCheckpoint};

pub const DEFAULT_ROOT: &str = migrate_oci::DEFAULT_STORE_ROOT;
/// The runtime whose shim takes checkpoints into a store.
const MIGRATE_RUNTIME: &str = "io.containerd.migrate.v1";

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Checkpoint a running container; it keeps running unless --exit
    Create(CreateArgs),
    /// List the checkpoints in the store
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show a checkpoint's manifest; --verify checks every file's sha256
    Inspect(InspectArgs),
    /// Remove checkpoints
    #[command(alias = "remove", alias = "delete")]
    Rm(RmArgs),
    /// Write a checkpoint into containerd as a checkpoint image, for ctr
    /// container restore
    Export(export::ExportArgs),
    /// Commit a containerd checkpoint image (ctr container checkpoint --task)
    /// into the store
    Import(import::ImportArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct RootArg {
    /// The directory of this host's checkpoints
    #[arg(long, value_name = "DIR", env = "MIGRATE_CHECKPOINT_ROOT", default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    root: RootArg,
    /// Checkpoint id [default: <container>-<UTC time>]
    #[arg(long)]
    id: Option<String>,
    /// Stop the container after the dump instead of leaving it running
    #[arg(long)]
    exit: bool,
    /// Dump established TCP connections (they are then restored too)
    #[arg(long)]
    tcp_established: bool,
    /// Dump file locks
    #[arg(long)]
    file_locks: bool,
    /// Where CRIU dumps what is not memory before it is copied to the store;
    /// should be tmpfs or ramfs [default: /run/containerd-migrate/staging,
    /// or /dev/shm/containerd-migrate-staging if /run is not in RAM]
    #[arg(long, value_name = "DIR")]
    staging: Option<PathBuf>,
    /// Dump straight into the store: nothing is copied afterwards, but the
    /// container stays frozen while CRIU writes to the store's file system,
    /// which is slower than RAM on some machines
    #[arg(long, conflicts_with = "staging")]
    direct: bool,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    /// The container to checkpoint
    container: String,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    root: RootArg,
    /// List the versions in this version store (a checkpoint ticker's:
    /// file:///PATH or oci://HOST:PORT/REPOSITORY) instead of this host's
    /// checkpoints
    #[arg(long, value_name = "URL", value_parser = versions::parse_location)]
    store: Option<StoreLocation>,
    /// Only checkpoints (or versions, in --namespace) of this container
    #[arg(long, value_name = "ID")]
    container: Option<String>,
    /// Check every file's sha256, not only its presence and size (with
    /// --store: that every chunk is in the store)
    #[arg(long)]
    verify: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    #[command(flatten)]
    root: RootArg,
    /// Check every file's sha256; fails naming each damaged file
    #[arg(long)]
    verify: bool,
    #[arg(long)]
    json: bool,
    id: String,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    #[command(flatten)]
    root: RootArg,
    #[arg(required = true)]
    ids: Vec<String>,
}

pub async fn run(g: &Global, cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Create(a) => create(g, a).await,
        Command::Ls(a) => {
            let namespace = g.namespace.clone();
            blocking(move || ls(a, &namespace)).await
        }
        Command::Inspect(a) => blocking(move || inspect(a)).await,
        Command::Rm(a) => blocking(move || rm(a)).await,
        Command::Export(a) => export::export(g, a).await,
        Command::Import(a) => import::import(g, a).await,
    }
}

/// Resolves on the first SIGINT or SIGTERM; names it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        // Without handlers the default action (exit) stays; never resolve.
        _ => std::future::pending().await,
    }
}

/// Runs file-system work (hashing gigabytes) off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.context("a worker thread panicked")?
}

// ---------------------------------------------------------------- create

/// What `checkpoint create` reports.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Created {
    id: String,
    container: String,
    dir: PathBuf,
    size_bytes: u64,
    memory_bytes: u64,
    leave_running: bool,
    frozen_ms: Option<f64>,
    dump_ms: f64,
    persist_ms: f64,
    total_ms: f64,
}

async fn create(g: &Global, a: CreateArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let id = match a.id {
        Some(id) => id,
        None => ids::default_checkpoint_id(&a.container, time::OffsetDateTime::now_utc()),
    };
    ids::validate_checkpoint_id(&id)?;

    let cd = Containerd::connect(&g.address, &g.namespace).await?;
    let container = cd.container(&a.container).await?;
    let runtime = container.runtime.as_ref().map(|r| r.name.as_str()).unwrap_or_default();
    if runtime != MIGRATE_RUNTIME {
        bail!(
            "container {} runs under {runtime:?}: checkpoint create needs the runtime {MIGRATE_RUNTIME}, whose shim \
             takes the checkpoint",
            a.container
        );
    }
    let pid = match cd.task(&a.container).await? {
        Some(p) if p.status == Status::Running as i32 || p.status == Status::Paused as i32 => p.pid,
        Some(p) => bail!(
            "container {} is {}: only a running (or paused) container can be checkpointed",
            a.container,
            status_name(p.status)
        ),
        None => bail!("container {} has no task: only a running container can be checkpointed", a.container),
    };
    let shim =
        Shim::of_task(pid, cd.namespace()).with_context(|| format!("find the shim of container {}", a.container))?;
    let request = StoreCheckpoint {
        store: absolute(&a.root.root)?,
        id: id.clone(),
        exit: a.exit,
        tcp_established: a.tcp_established,
        file_locks: a.file_locks,
        staging: a.staging.as_deref().map(absolute).transpose()?,
        direct: a.direct,
    };

    // The shim dumps, diffs and commits; an interrupt cannot stop it
    // halfway (the container must not stay frozen), so once it has begun
    // migratectl waits for it and removes what it stored.
    let name = a.container.clone();
    let call = blocking(move || shim.checkpoint_into_store(&name, &request));
    tokio::pin!(call);
    let signal = tokio::select! {
        done = &mut call => {
            if let Err(e) = done {
                return Err(e.context(after_failed_dump(&cd, &a.container).await));
            }
            None
        }
        sig = interrupted() => Some(sig),
    };
    let store_root = a.root.root.clone();
    if let Some(sig) = signal {
        eprintln!("migratectl: {sig}: waiting for the shim to finish the dump, then removing its checkpoint");
        let _ = call.await;
        let id = id.clone();
        blocking(move || {
            if let Some(store) = existing_store(&store_root)?
                && store.get(&id).is_ok()
            {
                store.remove(&id)?;
            }
            Ok(())
        })
        .await?;
        bail!("interrupted by {sig}; nothing was stored");
    }

    let checkpoint = blocking(move || {
        let store = CheckpointStore::open(&store_root)
            .with_context(|| format!("open the checkpoint store {}", store_root.display()))?;
        Ok(store.get(&id)?)
    })
    .await?;
    let m = checkpoint.manifest();
    let created = Created {
        id: m.id.clone(),
        container: a.container.clone(),
        dir: checkpoint.dir().to_path_buf(),
        size_bytes: checkpoint.size_bytes(),
        memory_bytes: m.memory_bytes,
        leave_running: m.leave_running,
        frozen_ms: m.timings.frozen_ms,
        dump_ms: m.timings.dump_ms.unwrap_or_default(),
        persist_ms: m.timings.persist_ms.unwrap_or_default(),
        total_ms: round_ms(started.elapsed()),
    };
    if a.json {
        output::print_json(&created)?;
    } else {
        println!(
            "{}  size {}  frozen {}  total {} (dump {}, persist {})",
            created.id,
            human_bytes(created.size_bytes),
            human_ms(created.frozen_ms),
            human_ms(Some(created.total_ms)),
            human_ms(Some(created.dump_ms)),
            human_ms(Some(created.persist_ms)),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `path` made absolute: the shim runs elsewhere.
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("the path {} cannot be made absolute", path.display()))
}

/// What to add to a failed dump's error: the state the container is in now
/// (the shim leaves it running; say so, or say that it is not).
async fn after_failed_dump(cd: &Containerd, id: &str) -> String {
    match cd.task(id).await {
        Ok(Some(p)) => format!(
            "checkpoint of container {id} failed; the container is {} and nothing was stored",
            status_name(p.status)
        ),
        Ok(None) => format!("checkpoint of container {id} failed, and the container has no task any more"),
        Err(e) => format!("checkpoint of container {id} failed (its state is unknown: {e})"),
    }
}

fn status_name(status: i32) -> &'static str {
    match Status::try_from(status) {
        Ok(Status::Running) => "running",
        Ok(Status::Created) => "created",
        Ok(Status::Stopped) => "stopped",
        Ok(Status::Paused) => "paused",
        Ok(Status::Pausing) => "pausing",
        Ok(Status::Unknown) | Err(_) => "in an unknown state",
    }
}

// ---------------------------------------------------------------- ls / inspect

/// The result of checking a checkpoint's files.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Validity {
    valid: bool,
    /// `size` (present with the listed size) or `sha256` (full verification).
    checked: &'static str,
    problem: Option<String>,
}

fn check(cp: &Checkpoint, full: bool) -> Validity {
    let result = if full { cp.verify() } else { cp.check_files() }.map_err(|e| e.to_string());
    Validity { valid: result.is_ok(), checked: if full { "sha256" } else { "size" }, problem: result.err() }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Listed {
    id: String,
    container: String,
    namespace: String,
    image: Option<String>,
    created: String,
    size_bytes: u64,
    memory_bytes: u64,
    frozen_ms: Option<f64>,
    parent: Option<String>,
    dir: PathBuf,
    #[serde(flatten)]
    validity: Validity,
}

fn listed(cp: &Checkpoint, validity: Validity) -> Listed {
    let m = cp.manifest();
    Listed {
        id: m.id.clone(),
        container: m.container.id.clone(),
        namespace: m.container.namespace.clone(),
        image: m.container.image.clone(),
        created: rfc3339(m.created),
        size_bytes: cp.size_bytes(),
        memory_bytes: m.memory_bytes,
        frozen_ms: m.timings.frozen_ms,
        parent: m.parent.clone(),
        dir: cp.dir().to_path_buf(),
        validity,
    }
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Opens the store without creating it: listing a store that does not
/// exist shows nothing rather than making one.
pub(crate) fn existing_store(dir: &Path) -> Result<Option<CheckpointStore>> {
    if !dir.exists() {
        return Ok(None);
    }
    let store = CheckpointStore::open(dir).with_context(|| format!("open the checkpoint store {}", dir.display()))?;
    Ok(Some(store))
}

fn ls(a: LsArgs, namespace: &str) -> Result<ExitCode> {
    if let Some(location) = &a.store {
        let container = match a.container.as_deref() {
            Some(id) => Some(ContainerRef::new(namespace, id)?),
            None => None,
        };
        return versions::ls(location, container, a.verify, a.json);
    }
    let checkpoints = match existing_store(&a.root.root)? {
        Some(store) => store.list()?,
        None => Vec::new(),
    };
    let rows: Vec<Listed> = checkpoints
        .iter()
        .filter(|cp| a.container.as_ref().is_none_or(|c| &cp.manifest().container.id == c))
        .map(|cp| listed(cp, check(cp, a.verify)))
        .collect();
    if a.json {
        output::print_json(&rows)?;
    } else {
        print!("{}", ls_table(&rows).render());
        for r in rows.iter().filter(|r| !r.validity.valid) {
            eprintln!("{}: {}", r.id, r.validity.problem.as_deref().unwrap_or("invalid"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn ls_table(rows: &[Listed]) -> Table {
    let mut t = Table::new(&["ID", "CONTAINER", "CREATED", "SIZE", "MEMORY", "FROZEN", "PARENT", "VALID"]);
    for r in rows {
        t.row(vec![
            r.id.clone(),
            r.container.clone(),
            output::human_time(&r.created),
            human_bytes(r.size_bytes),
            human_bytes(r.memory_bytes),
            human_ms(r.frozen_ms),
            r.parent.clone().unwrap_or_else(|| "-".into()),
            if r.validity.valid { "yes" } else { "NO" }.into(),
        ]);
    }
    t
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Inspected<'a> {
    dir: &'a Path,
    size_bytes: u64,
    #[serde(flatten)]
    validity: Validity,
    manifest: &'a migrate_oci::CheckpointManifest,
}

fn inspect(a: InspectArgs) -> Result<ExitCode> {
    let store = existing_store(&a.root.root)?
        .with_context(|| format!("there is no checkpoint store at {}", a.root.root.display()))?;
    let cp = store.get(&a.id)?;
    let validity = check(&cp, a.verify);
    if a.json {
        output::print_json(&Inspected {
            dir: cp.dir(),
            size_bytes: cp.size_bytes(),
            validity: validity.clone(),
            manifest: cp.manifest(),
        })?;
    } else {
        print!("{}", describe(&cp, &validity));
    }
    match validity.problem {
        None => Ok(ExitCode::SUCCESS),
        Some(problem) if a.verify => bail!("verification failed: {problem}"),
        Some(problem) => bail!("checkpoint {} is damaged: {problem} (run with --verify for details)", a.id),
    }
}

/// The manifest for people.
fn describe(cp: &Checkpoint, validity: &Validity) -> String {
    let m = cp.manifest();
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{:<14}{v}\n", format!("{k}:")));
    line("ID", m.id.clone());
    line("Directory", cp.dir().display().to_string());
    line("Container", format!("{} (namespace {})", m.container.id, m.container.namespace));
    line("Image", m.container.image.clone().unwrap_or_else(|| "-".into()));
    line("Runtime", m.container.runtime.clone());
    line("Created", format!("{} UTC", output::human_time(&rfc3339(m.created))));
    line(
        "Host",
        format!(
            "{}, kernel {}, CRIU {}, {}",
            m.host.hostname,
            m.host.kernel,
            m.host.criu_version.as_deref().unwrap_or("unknown"),
            m.host.arch
        ),
    );
    line("Left running", if m.leave_running { "yes" } else { "no (stopped after the dump)" }.into());
    line("Parent", m.parent.clone().unwrap_or_else(|| "-".into()));
    line("Memory", human_bytes(m.memory_bytes));
    line("Size", format!("{} in {} files", human_bytes(cp.size_bytes()), m.files.len()));
    line(
        "Timings",
        format!(
            "frozen {}, dump {}, persist {}",
            human_ms(m.timings.frozen_ms),
            human_ms(m.timings.dump_ms),
            human_ms(m.timings.persist_ms)
        ),
    );
    line(
        "Rootfs",
        match (&m.rootfs, cp.rootfs_diff()) {
            (Some(r), Some(_)) => format!("diff on {}", layers(r)),
            (Some(r), None) => format!("{}, no diff", layers(r)),
            (None, Some(_)) => "diff".into(),
            (None, None) => "not saved".into(),
        },
    );
    if let Some(ready) = &m.ready {
        line("Ready point", ready_point(ready));
    }
    let verdict = match (&validity.problem, validity.checked) {
        (None, "sha256") => "yes (every file's size and sha256 match)".to_string(),
        (None, _) => "yes (every file present with its size; --verify checks sha256)".to_string(),
        (Some(p), _) => format!("NO: {p}"),
    };
    line("Valid", verdict);
    out.push_str("Files:\n");
    let mut t = Table::new(&["  PATH", "SIZE", "SHA256"]);
    for f in &m.files {
        t.row(vec![format!("  {}", f.path), f.size.to_string(), f.sha256.to_string()]);
    }
    out.push_str(&t.render());
    out
}

/// What made a ready point be taken, on one line: "http:8080/healthz
/// after 2.15 s, 43 attempts (last failure: GET /healthz answered 503),
/// warm-up 20 requests in 310 ms".
fn ready_point(r: &migrate_oci::ReadyInfo) -> String {
    let mut s = format!("{} after {}", r.condition, human_ms(Some(r.after_ms)));
    match r.attempts {
        0 => s.push_str(", signalled by the app"),
        1 => s.push_str(", 1 attempt"),
        n => s.push_str(&format!(", {n} attempts")),
    }
    if let Some(failure) = &r.last_failure {
        s.push_str(&format!(" (last failure: {failure})"));
    }
    if let Some(w) = &r.warm_up {
        s.push_str(&format!(", warm-up {} requests in {}", w.requests, human_ms(Some(w.ms))));
    }
    s
}

/// "2 image layers (chain ID sha256:…)": by content where it is known.
fn layers(r: &migrate_oci::RootfsInfo) -> String {
    let count = match r.lower_dirs.len() {
        0 => "image layers".to_string(),
        1 => "1 image layer".to_string(),
        n => format!("{n} image layers"),
    };
    match &r.chain_id {
        Some(chain) => format!("{count} (chain ID {chain})"),
        None => count,
    }
}

// ---------------------------------------------------------------- rm

fn rm(a: RmArgs) -> Result<ExitCode> {
    let store = existing_store(&a.root.root)?
        .with_context(|| format!("there is no checkpoint store at {}", a.root.root.display()))?;
    let mut failed = false;
    for id in &a.ids {
        match store.remove(id) {
            Ok(()) => println!("{id}"),
            Err(e) => {
                eprintln!("migratectl: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
