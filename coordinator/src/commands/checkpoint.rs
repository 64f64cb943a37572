//! `migratectl checkpoint create|ls|inspect|rm`.
//!
//! `create` is built for a short freeze and no copy: CRIU dumps through
//! containerd and the shim into a directory in RAM, except for the memory
//! images, which go through FIFOs straight into the store while the
//! container stays paused; once it runs again the small images are hashed
//! and written to the store too (`--direct`: CRIU dumps straight into the
//! store, and the images are hashed and made durable in place).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use containerd_client::types::v1::Status;
use migrate_oci::{Checkpoint, CheckpointStore, CommitInfo, ContainerInfo, RootfsInfo, Timings};
use migrate_version_store::{ContainerRef, StoreLocation};
use serde::Serialize;

use crate::Global;
use crate::commands::{export, import, versions};
use crate::containerd::{self, Containerd};
use crate::ids;
use crate::output::{self, Table, human_bytes, human_ms, round_ms};
use crate::rootfs::Rootfs;
use crate::runc_options::CheckpointOptions;
use crate::staging::DumpDir;

pub const DEFAULT_ROOT: &str = migrate_oci::DEFAULT_STORE_ROOT;
/// CRIU's statistics file, written to its work directory.
const STATS_FILE: &str = "stats-dump";

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
    /// Where CRIU dumps before the images are copied to the store; should be
    /// tmpfs [default: /run/containerd-migrate/staging, or
    /// /dev/shm/containerd-migrate-staging if /run is not tmpfs]
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
        // Interrupted, the dump and staging directories are dropped (and so
        // removed) instead of being left in RAM; a dump under way fails when
        // its directory goes, and the shim leaves the container running.
        Command::Create(a) => tokio::select! {
            r = create(g, a) => r,
            sig = interrupted() => bail!("interrupted by {sig}; nothing was stored"),
        },
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
    let was_paused = match cd.task(&a.container).await? {
        Some(p) if p.status == Status::Running as i32 => false,
        Some(p) if p.status == Status::Paused as i32 => true,
        Some(p) => bail!(
            "container {} is {}: only a running (or paused) container can be checkpointed",
            a.container,
            status_name(p.status)
        ),
        None => bail!("container {} has no task: only a running container can be checkpointed", a.container),
    };
    let spec = containerd::container_spec(&container)?.to_vec();
    let rootfs = container_rootfs(&cd, &container).await?;
    let runtime = container.runtime.as_ref().map(|r| r.name.clone()).unwrap_or_default();

    // Everything that can fail without touching the container fails here,
    // before the freeze: a taken id, an unwritable store or staging dir.
    let store_root = a.root.root.clone();
    let (store, staging) = blocking({
        let id = id.clone();
        move || {
            let store = CheckpointStore::open(&store_root)
                .with_context(|| format!("open the checkpoint store {}", store_root.display()))?;
            let staging = store.staging(&id)?;
            Ok((store, staging))
        }
    })
    .await?;
    // CRIU's log and statistics go to the dump directory in either case.
    let dump = DumpDir::create(a.staging.as_deref(), store.root(), &id)?;
    let images = if a.direct {
        Images::InPlace
    } else if a.staging.is_none() && !dump.in_ram() {
        log::warn!(
            "neither {} nor /dev/shm is on tmpfs: CRIU dumps straight into the store, and the container stays \
             frozen while it writes there",
            crate::staging::DEFAULT_STAGING_ROOT
        );
        Images::InPlace
    } else {
        Images::Copied
    };
    let options = CheckpointOptions {
        exit: a.exit,
        open_tcp: a.tcp_established,
        file_locks: a.file_locks,
        image_path: utf8(&match images {
            Images::Copied => dump.images(),
            Images::InPlace => staging.criu_dir(),
        })?,
        // Our own work path, not the shim's default in its bundle: CRIU
        // writes its statistics (the frozen time) there.
        work_path: utf8(&dump.work())?,
        ..Default::default()
    };

    // The rootfs diff must be of the instant of the dump: a file the
    // container renames or deletes after it (a temporary file being
    // written) and had open at the dump cannot be restored. Left running,
    // the container is paused across both, as containerd's own client does
    // (CRIU leaves a frozen container frozen); dumped with --exit, it is
    // gone before the diff is taken.
    let diff = match &rootfs {
        Rootfs::Overlay { upper, .. } => Some((upper.clone(), dump.work().join(migrate_oci::ROOTFS_DIFF_FILE))),
        Rootfs::Unsupported { .. } => None,
    };
    let pause = !a.exit && !was_paused && diff.is_some();
    // The memory images go from CRIU straight into the store while the
    // container stays frozen (or dead) after the dump: no copy of them is
    // ever made in RAM. Other images still go to the dump directory.
    let tap = if images == Images::Copied && (pause || was_paused || a.exit) {
        let processes = cd.task_process_count(&a.container).await?;
        let count = u32::try_from(processes).unwrap_or(u32::MAX).saturating_add(TAP_SPARE);
        Some(staging.tap_pages(&dump.images(), count).context("prepare to take the memory images")?)
    } else {
        None
    };
    if pause {
        cd.pause_task(&a.container).await?;
    }
    let dump_started = Instant::now();
    let dumped = cd.checkpoint_task(&a.container, options.to_any()).await;
    let dump_time = dump_started.elapsed();
    let diffed = match (&dumped, diff.clone()) {
        (Ok(()), Some((upper, path))) => {
            blocking(move || {
                migrate_oci::write_rootfs_diff(&upper, &path)
                    .with_context(|| format!("write the rootfs diff of {}", upper.display()))?;
                Ok(Some(path))
            })
            .await
        }
        _ => Ok(None),
    };
    // Before the container runs again, which would change the pages that
    // CRIU handed over but the tap has not read yet.
    let (staging, tapped) = match tap {
        Some(tap) => {
            blocking(move || {
                let mut staging = staging;
                let tapped = tap.finish(&mut staging);
                Ok((staging, tapped))
            })
            .await?
        }
        None => (staging, Ok(())),
    };
    let paused_for = dump_started.elapsed();
    if pause && let Err(e) = cd.resume_task(&a.container).await {
        return Err(e.context(format!(
            "container {} stays paused after its checkpoint: resume it with `ctr task resume {}`",
            a.container, a.container
        )));
    }
    if let Err(e) = dumped {
        let mut context = after_failed_dump(&cd, &a.container).await;
        if let Some(log) = dump.keep_log() {
            context.push_str(&format!("; CRIU's log is {}", log.display()));
        }
        return Err(e.context(context));
    }
    tapped.with_context(|| format!("container {} was dumped, but its memory could not be stored", a.container))?;
    let diff_file = diffed.with_context(|| format!("container {} was dumped, but not its rootfs", a.container))?;
    let frozen = pause.then_some(paused_for);

    let persist_started = Instant::now();
    let info_container = ContainerInfo {
        id: a.container.clone(),
        namespace: cd.namespace().to_string(),
        image: Some(container.image.clone()).filter(|i| !i.is_empty()),
        runtime,
    };
    let leave_running = !a.exit;
    let checkpoint = blocking(move || {
        let dumped = Dumped { dir: dump, images, diff: diff_file, frozen, time: dump_time };
        persist(staging, dumped, spec, rootfs, info_container, leave_running, persist_started)
    })
    .await
    .with_context(|| format!("container {} was dumped, but writing checkpoint {id} failed", a.container))?;
    let persist_time = persist_started.elapsed();

    let m = checkpoint.manifest();
    let created = Created {
        id: m.id.clone(),
        container: a.container.clone(),
        dir: checkpoint.dir().to_path_buf(),
        size_bytes: checkpoint.size_bytes(),
        memory_bytes: m.memory_bytes,
        leave_running: m.leave_running,
        frozen_ms: m.timings.frozen_ms,
        dump_ms: round_ms(dump_time),
        persist_ms: round_ms(persist_time),
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

/// FIFOs made for memory images beyond one per process: CRIU numbers the
/// images of shared memory segments in the same sequence. Any further
/// image is an ordinary file in the dump directory, copied like the rest.
const TAP_SPARE: u32 = 2;

/// Where CRIU writes the images.
///
/// Measured at 1 GiB on ext4 (2 shared cores, medians of 5): dumping into
/// tmpfs froze the container for 1.0 s and the copy into the store took
/// 1.7 s; dumping into the store froze it for 2.7 s (1.4 to 3.6 s across
/// runs: CRIU's writes into ext4's page cache were the slower part) for a
/// persist of 1.3 s. So RAM is the default for the small images, and the
/// memory images are tapped into the store (see `TAP_SPARE`), which froze
/// it for 0.84 to 1.0 s with nothing left to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Images {
    /// Straight into the staging checkpoint, on the store's file system
    /// (`--direct`, or no tmpfs): the commit only hashes them and makes
    /// them durable where they are.
    InPlace,
    /// Into the dump directory in RAM, to be copied into the store once the
    /// container runs again.
    Copied,
}

/// What the dump left.
struct Dumped {
    dir: DumpDir,
    images: Images,
    /// The rootfs diff taken with the dump, in the dump directory.
    diff: Option<PathBuf>,
    /// How long the container was paused for the dump and the diff, if it
    /// was: its frozen time, of which CRIU's statistics see only the dump.
    frozen: Option<std::time::Duration>,
    time: std::time::Duration,
}

/// Brings the dump into the staging checkpoint if it is not there yet, adds
/// the spec and the rootfs diff, and commits. The dump directory is removed
/// whatever happens.
fn persist(
    mut staging: migrate_oci::Staging,
    dumped: Dumped,
    spec: Vec<u8>,
    rootfs: Rootfs,
    container: ContainerInfo,
    leave_running: bool,
    persist_started: Instant,
) -> Result<Checkpoint> {
    let Dumped { dir: dump, images, diff, frozen, time: dump_time } = dumped;
    let images_dir = match images {
        Images::InPlace => staging.criu_dir(),
        Images::Copied => dump.images(),
    };
    // The shim moves stats-dump from the work path to the images; an older
    // one left it in the work path.
    let stats = dump.work().join(STATS_FILE);
    if stats.exists() {
        std::fs::copy(&stats, images_dir.join(STATS_FILE))
            .with_context(|| format!("copy {} into the images", stats.display()))?;
    }
    let frozen_ms = match (frozen, migrate_oci::criu_stats::read_dump_stats(&images_dir)) {
        (Some(paused), _) => Some(round_ms(paused)),
        (None, Ok(stats)) => stats.map(|s| s.frozen_time_us as f64 / 1000.0),
        (None, Err(e)) => {
            log::warn!("CRIU's dump statistics are unreadable, the frozen time is not recorded: {e}");
            None
        }
    };
    if images == Images::Copied {
        let phase = Instant::now();
        staging
            .import_criu_dir(&images_dir)
            .with_context(|| format!("import the CRIU images from {}", images_dir.display()))?;
        log::debug!("imported the CRIU images in {:?}", phase.elapsed());
    }
    if let Some(diff) = &diff {
        let file = std::fs::File::open(diff).with_context(|| format!("open {}", diff.display()))?;
        staging.add_file_from(migrate_oci::ROOTFS_DIFF_FILE, file).context("add the rootfs diff")?;
    }
    drop(dump);
    staging.add_file(migrate_oci::CONFIG_FILE, &spec).context("add the container's spec")?;
    let rootfs_info = match rootfs {
        Rootfs::Overlay { lower, .. } => Some(RootfsInfo { lower_dirs: lower }),
        Rootfs::Unsupported { .. } => None,
    };
    // The commit's own hashing of leftovers and its fsyncs are not in
    // persistMs: the manifest is written inside the commit.
    let timings = Timings {
        frozen_ms,
        dump_ms: Some(round_ms(dump_time)),
        persist_ms: Some(round_ms(persist_started.elapsed())),
    };
    let info = CommitInfo { container, parent: None, leave_running, rootfs: rootfs_info, timings };
    let phase = Instant::now();
    let checkpoint = staging.commit(info)?;
    log::debug!("committed in {:?}", phase.elapsed());
    Ok(checkpoint)
}

fn utf8(path: &Path) -> Result<String> {
    path.to_str().map(str::to_string).with_context(|| format!("the path {} is not UTF-8", path.display()))
}

/// The container's writable layer and image layers, from its snapshot's
/// mounts; only overlayfs (and plain directories) can be diffed.
async fn container_rootfs(cd: &Containerd, container: &containerd_client::services::v1::Container) -> Result<Rootfs> {
    if container.snapshotter.is_empty() || container.snapshot_key.is_empty() {
        log::warn!("container {} has no snapshot: the checkpoint will hold no rootfs diff", container.id);
        return Ok(Rootfs::Unsupported { reason: "no snapshot".into() });
    }
    let mounts = cd
        .snapshot_mounts(&container.snapshotter, &container.snapshot_key)
        .await
        .with_context(|| format!("find the root file system of container {}", container.id))?;
    let rootfs = Rootfs::from_mounts(&mounts);
    if let Rootfs::Unsupported { reason } = &rootfs {
        log::warn!(
            "container {} uses snapshotter {} ({reason}); only overlayfs changes can be saved, so the \
             checkpoint will hold no rootfs diff and a restore starts from the image's files",
            container.id,
            container.snapshotter
        );
    }
    Ok(rootfs)
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
            (Some(r), Some(_)) => format!("diff on {}", layers(r.lower_dirs.len())),
            (Some(r), None) => format!("{}, no diff", layers(r.lower_dirs.len())),
            (None, Some(_)) => "diff".into(),
            (None, None) => "not saved".into(),
        },
    );
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

fn layers(n: usize) -> String {
    if n == 1 { "1 image layer".into() } else { format!("{n} image layers") }
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
