//! Leave-running checkpoints the shim takes on its own (a ready point, a
//! ticker's version): dumped into RAM, so the container is frozen only for
//! as long as CRIU needs to copy its memory, then committed as a checkpoint
//! of this project's format while the container runs on.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use migrate_oci::{Checkpoint, CheckpointStore, CommitInfo, ContainerInfo, RootfsInfo, Timings, criu_stats};

use crate::{
    container::Container,
    error::{Error, Result},
    hashed,
    runc::{self, CheckpointOptions, CriuConfig, CriuOptions, NetworkLock, Pages},
};

/// Where dumps are staged: RAM-backed. /run is a tmpfs on most hosts but
/// not on all (not on this project's test machines); /dev/shm is one
/// everywhere.
pub fn staging_root() -> PathBuf {
    // (staging directory, the file system it lives on)
    const CANDIDATES: [(&str, &str); 2] =
        [("/run/containerd-migrate/staging", "/run"), ("/dev/shm/containerd-migrate-staging", "/dev/shm")];
    let in_ram =
        |fs: &str| nix::sys::statfs::statfs(fs).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    let (dir, _) = CANDIDATES.into_iter().find(|(_, fs)| in_ram(fs)).unwrap_or(CANDIDATES[1]);
    PathBuf::from(dir)
}

/// How a dump builds on earlier ones, with CRIU's memory tracking
/// (soft-dirty bits; see `runc::memory_tracking`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Increment {
    /// All of it, whatever came before.
    Full,
    /// Memory only, for later dumps to build on (`--pre-dump`): not a
    /// checkpoint that restores by itself.
    PreDump,
    /// Only the memory changed since checkpoint `0` of the same store, a
    /// pre-dump or a dump (`--parent-path`).
    OnParent(String),
}

/// Checkpoints `container`, leaving it running, as checkpoint `id` of the
/// store at `store` (replacing one of that id), and returns its directory.
/// The dump goes to RAM first; hashing and writing to the store happen
/// after the container is thawed.
pub async fn checkpoint_running(container: &Container, store: &Path, id: &str) -> Result<PathBuf> {
    checkpoint_into(container, store, id, &Increment::Full, CriuConfig::default()).await.map(dir_of)
}

/// [`checkpoint_running`] for new containers to start from: a ready point,
/// taken the moment the app listens, before it has served anyone, and
/// restored as containers with network identities of their own. Nothing
/// connected to the source could carry on with a restored copy (and CRIU
/// refuses to dump established connections unless told to keep them), so
/// the network lock protects nothing here. Skipping it shortens the freeze
/// and every restore, which take the dump's method: unlocking the restored
/// network costs about 20 ms here, on the path of each start.
pub async fn checkpoint_for_new_containers(container: &Container, store: &Path, id: &str) -> Result<PathBuf> {
    let config =
        CriuConfig { network_lock: runc::network_lock_skip().await.then_some(NetworkLock::Skip), ..Default::default() };
    let checkpoint = checkpoint_into(container, store, id, &Increment::Full, config).await?;
    let dir = checkpoint.dir().to_path_buf();
    // Its clones will be restored from it on this host, many times over:
    // its memory images need no hashing before them, this shim hashed
    // them as it wrote them.
    let _ = tokio::task::spawn_blocking(move || hashed::written(&checkpoint)).await;
    Ok(dir)
}

/// [`checkpoint_running`], as a pre-dump or a dump on a parent.
pub async fn checkpoint_increment(
    container: &Container,
    store: &Path,
    id: &str,
    increment: &Increment,
) -> Result<PathBuf> {
    checkpoint_into(container, store, id, increment, CriuConfig::default()).await.map(dir_of)
}

fn dir_of(checkpoint: Checkpoint) -> PathBuf {
    checkpoint.dir().to_path_buf()
}

async fn checkpoint_into(
    container: &Container,
    store: &Path,
    id: &str,
    increment: &Increment,
    config: CriuConfig,
) -> Result<Checkpoint> {
    let dump = staging_root().join(format!("{}-{}-{id}", container.namespace(), container.id));
    let opts = CheckpointOptions {
        image_path: dump.clone(),
        work_path: container.bundle.join("criu-work"),
        parent_path: match increment {
            Increment::OnParent(parent) => Some(parent_path(&dump, store, parent)?),
            Increment::Full | Increment::PreDump => None,
        },
        leave_running: true,
        pre_dump: *increment == Increment::PreDump,
        pages: Pages::Local,
        criu: CriuOptions { shell_job: container.init.stdio.terminal, ..Default::default() },
        config,
    };
    // A pre-dump is only memory for later dumps to build on, never
    // restored by itself: it needs no rootfs diff, and no pause for one.
    // (upperdir, where its diff goes in RAM)
    let rootfs =
        container.overlay.as_ref().and_then(|o| o.upper.clone()).filter(|_| *increment != Increment::PreDump).map(
            |upper| {
                let mut diff = dump.clone().into_os_string();
                diff.push(".rootfs-diff.tar");
                (upper, PathBuf::from(diff))
            },
        );
    let diff = rootfs.as_ref().map(|(_, diff)| diff.clone());
    let clear = || {
        let _ = std::fs::remove_dir_all(&dump);
        if let Some(diff) = &diff {
            let _ = std::fs::remove_file(diff);
        }
    };
    // What a shim killed in the middle of this same checkpoint left: CRIU
    // would write beside stale images, and the diff is created new.
    clear();
    let started = Instant::now();
    let dumped = {
        let _lifecycle = container.lifecycle.lock().await;
        match &rootfs {
            Some((upper, diff)) => container.checkpoint_with_rootfs(&opts, upper, diff).await.map(Some),
            None => container.checkpoint(&opts).await.map(|()| None),
        }
    };
    let paused = match dumped {
        Ok(paused) => paused,
        Err(e) => {
            clear();
            return Err(e);
        }
    };
    let persist = Persist {
        store: store.to_owned(),
        id: id.to_string(),
        increment: increment.clone(),
        dump: dump.clone(),
        spec: container.bundle.join("config.json"),
        diff: diff.clone(),
        paused_ms: paused.map(|d| d.as_secs_f64() * 1000.0),
        lowers: container.overlay.as_ref().map(|o| o.lowers.clone()),
        container: ContainerInfo {
            id: container.id.clone(),
            namespace: container.namespace().to_string(),
            image: None,
            runtime: crate::RUNTIME_ID.to_string(),
        },
        dump_ms: started.elapsed().as_secs_f64() * 1000.0,
    };
    let persisted = tokio::task::spawn_blocking(move || persist.run()).await;
    clear();
    match persisted {
        Ok(result) => result,
        Err(e) => Err(Error::io(format!("commit checkpoint {id}"))(std::io::Error::other(e))),
    }
}

/// Where CRIU finds the images of checkpoint `parent` of `store` from the
/// images directory `dump`: relative when both are in one directory (as the
/// ticker's are), since CRIU keeps the path as the images' `parent` link.
fn parent_path(dump: &Path, store: &Path, parent: &str) -> Result<PathBuf> {
    let images = CheckpointStore::open(store)?.get(parent)?.criu_dir();
    Ok(match (dump.parent(), store.parent()) {
        (Some(dir), Some(same)) if dir == same => {
            Path::new("..").join(images.strip_prefix(dir).expect("the store is in dir"))
        }
        _ => images,
    })
}

/// Turning a dump in RAM into a committed checkpoint.
struct Persist {
    store: PathBuf,
    id: String,
    increment: Increment,
    dump: PathBuf,
    spec: PathBuf,
    /// The rootfs diff taken with the dump, in RAM.
    diff: Option<PathBuf>,
    /// How long the container was paused for the dump and the diff: its
    /// frozen time, of which CRIU's own statistics see only the dump.
    paused_ms: Option<f64>,
    lowers: Option<Vec<PathBuf>>,
    container: ContainerInfo,
    dump_ms: f64,
}

impl Persist {
    fn run(self) -> Result<Checkpoint> {
        let started = Instant::now();
        let store = CheckpointStore::open(&self.store)?;
        if store.get(&self.id).is_ok() {
            store.remove(&self.id)?;
        }
        let mut staging = store.staging(&self.id)?;
        staging.import_criu_dir(&self.dump)?;
        if self.increment != Increment::PreDump {
            let spec = std::fs::read(&self.spec).map_err(Error::io(format!("read {}", self.spec.display())))?;
            staging.add_file("config.json", &spec)?;
            if let Some(diff) = &self.diff {
                let file = std::fs::File::open(diff).map_err(Error::io(format!("open {}", diff.display())))?;
                staging.add_file_from(migrate_oci::ROOTFS_DIFF_FILE, file)?;
            }
        }
        let frozen_ms = self.paused_ms.or_else(|| {
            criu_stats::read_dump_stats(&staging.criu_dir()).ok().flatten().map(|s| s.frozen_time_us as f64 / 1000.0)
        });
        let checkpoint = staging.commit(CommitInfo {
            container: self.container,
            parent: match self.increment {
                Increment::OnParent(parent) => Some(parent),
                Increment::Full | Increment::PreDump => None,
            },
            leave_running: true,
            rootfs: self.lowers.map(|lower_dirs| RootfsInfo { lower_dirs }),
            timings: Timings {
                frozen_ms,
                dump_ms: Some(self.dump_ms),
                persist_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
            },
        })?;
        Ok(checkpoint)
    }
}
