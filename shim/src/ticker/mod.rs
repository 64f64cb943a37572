//! Checkpoint tickers (seed 001, Algorithm 1): for the whole life of a
//! container whose spec asks for it, a leave-running checkpoint every
//! interval, stored as the next version of the container in a version
//! store, followed by retention of the newest groups.
//!
//! Versions are incremental at the storage layer (only chunks the store
//! lacks are uploaded: see `migrate_version_store`), which needs nothing
//! from the kernel; where CRIU can track memory, each is also a dump of only
//! what changed since the previous one (`criu_parent`). Ticks start an
//! interval apart and never overlap: a tick that overruns (a slow store)
//! delays the next one rather than letting missed ticks pile up
//! (`MissedTickBehavior::Delay`).
//! A failed tick is logged and the next one tries again; the container is
//! never stopped or left frozen by one (the dump is CRIU's leave-running
//! dump, which thaws the container whatever happens to the upload after).

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use log::{debug, info, warn};
use migrate_version_store::{
    self as versions, ChunkCipher, ContainerRef, Retention, RetentionReport, StoreLocation, VersionError,
    VersionReport, VersionStore,
};
use tokio::{
    sync::oneshot,
    time::{MissedTickBehavior, interval_at},
};

mod criu_parent;

use crate::{
    annotations,
    capture::{self, Increment},
    container::Container,
    error::{Error, Result},
    process::{InitState, Lifecycle},
};

/// Chunks used this recently survive retention's GC, since another
/// container's ticker may be uploading a version that reuses them. Uploads
/// take about as long as this tick took, so a few times that, but at least
/// this, is safe; the store's default (an hour) would let a busy container
/// pile up an hour of dropped versions' chunks.
const CHUNK_GRACE_FLOOR: Duration = Duration::from_secs(120);

/// What the spec's ticker annotations ask for.
#[derive(Clone)]
pub struct TickerPlan {
    pub interval: Duration,
    pub group_size: u64,
    pub keep_groups: u64,
    pub store: StoreLocation,
    pub cipher: Option<Arc<ChunkCipher>>,
}

impl fmt::Debug for TickerPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TickerPlan")
            .field("interval", &self.interval)
            .field("group_size", &self.group_size)
            .field("keep_groups", &self.keep_groups)
            .field("store", &self.store.to_string())
            .field("encrypted", &self.cipher.is_some())
            .finish()
    }
}

impl TickerPlan {
    /// None unless the interval annotation is set. The other ticker
    /// annotations without an interval are refused: they would silently do
    /// nothing. The key file is read now, so that a missing key fails the
    /// creation instead of every tick.
    pub fn from_annotations(a: &HashMap<String, String>) -> Result<Option<TickerPlan>> {
        let Some(interval) = a.get(annotations::CHECKPOINT_INTERVAL) else {
            let orphans = [
                annotations::VERSION_GROUP,
                annotations::KEEP_GROUPS,
                annotations::CHECKPOINT_STORE,
                annotations::KEY_FILE,
            ];
            if let Some(name) = orphans.into_iter().find(|name| a.contains_key(*name)) {
                return Err(Error::InvalidArgument(format!(
                    "{name} is set but {} is not: set the interval (e.g. 30s) to turn the checkpoint ticker on, \
                     or remove {name}",
                    annotations::CHECKPOINT_INTERVAL
                )));
            }
            return Ok(None);
        };
        let interval = annotations::interval(interval)?;
        let count = |name: &'static str, default: u64| {
            a.get(name).map(|v| annotations::count(name, v)).transpose().map(|v| v.unwrap_or(default))
        };
        let group_size = count(annotations::VERSION_GROUP, versions::DEFAULT_GROUP_SIZE)?;
        let keep_groups = count(annotations::KEEP_GROUPS, versions::DEFAULT_KEEP_GROUPS)?;
        let store = annotations::version_store(
            a.get(annotations::CHECKPOINT_STORE).map_or(annotations::DEFAULT_VERSION_STORE, String::as_str),
        )?;
        let cipher = match a.get(annotations::KEY_FILE) {
            None => None,
            Some(value) => {
                let path = annotations::key_file(value)?;
                let cipher = ChunkCipher::from_key_file(&path)
                    .map_err(|e| Error::InvalidArgument(format!("{}: {e}", annotations::KEY_FILE)))?;
                Some(Arc::new(cipher))
            }
        };
        Ok(Some(TickerPlan { interval, group_size, keep_groups, store, cipher }))
    }
}

/// A running ticker; dropping it stops the ticker after the tick under way.
pub struct Ticker {
    _stop: oneshot::Sender<()>,
    ram: PathBuf,
}

/// The ticker's RAM goes with it, there and then: after a delete the shim
/// may exit before the ticker's task runs again, and dumps left in /dev/shm
/// would hold memory until reboot. A dump cannot be under way (it holds the
/// lifecycle lock, as a delete does); an upload under way fails, and its
/// version never appears.
impl Drop for Ticker {
    fn drop(&mut self) {
        discard(&self.ram);
    }
}

pub fn spawn(container: Arc<Container>, plan: TickerPlan) -> Ticker {
    let (stop, stopped) = oneshot::channel();
    let ram = capture::ram_root().join(format!("ticker-{}-{}", container.namespace(), container.id));
    tokio::spawn(run(container, plan, ram.clone(), stopped));
    Ticker { _stop: stop, ram }
}

/// Removes a ticker's RAM directory and all dumps in it.
fn discard(ram: &Path) {
    if let Err(e) = std::fs::remove_dir_all(ram)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!("cannot remove the checkpoint ticker's dumps in {}: {e}", ram.display());
    }
}

async fn run(container: Arc<Container>, plan: TickerPlan, ram: PathBuf, mut stopped: oneshot::Receiver<()>) {
    let target = match ContainerRef::new(container.namespace(), &container.id) {
        Ok(target) => target,
        Err(e) => {
            warn!("{}: no checkpoint ticker: {e}", container.id);
            return;
        }
    };
    info!("{}: checkpoint ticker every {:?} into {} ({plan:?})", container.id, plan.interval, plan.store);
    let mut tick = Tick::new(container, plan, target, ram);
    tick.chain = criu_parent::Chain::if_supported(&tick.container.id, &tick.ram).await;
    let mut ticks = interval_at(tokio::time::Instant::now() + tick.plan.interval, tick.plan.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = ticks.tick() => {}
        }
        match tick.container.init.state() {
            InitState::Running { .. } => {}
            InitState::Stopped { .. } => break,
            s => {
                debug!("{}: no checkpoint this tick, the container is {}", tick.container.id, s.name());
                continue;
            }
        }
        // Not raced against `stopped`: a dump is never abandoned halfway.
        match tick.once().await {
            Ok(report) => {
                info!("{}: {report}", tick.container.id);
                // For programs (the benchmarks): key=value pairs, never prose.
                info!("ticker-version container={} {}", tick.container.id, report.fields());
            }
            Err(e) => {
                warn!(
                    "{}: checkpoint tick failed, the container runs on; next try in {:?}: {e}",
                    tick.container.id, tick.plan.interval
                );
                warn!("ticker-failed container={}", tick.container.id);
            }
        }
    }
    discard(&tick.ram);
    debug!("{}: checkpoint ticker stopped", tick.container.id);
}

/// Checkpoints `container`, leaving it running, as checkpoint `id` of the
/// ticker's RAM store `ram`; returns its directory.
async fn dump(container: &Container, ram: &Path, id: &str, increment: Increment) -> Result<PathBuf> {
    let (request, target) = capture::own(container, ram, id, increment);
    capture::into_store(container, &request, &target).await.map(|checkpoint| checkpoint.dir().to_path_buf())
}

/// The ticker's state between ticks.
struct Tick {
    container: Arc<Container>,
    plan: TickerPlan,
    target: ContainerRef,
    /// Opened at the first tick, reopened after a store error.
    store: Option<Arc<dyn VersionStore>>,
    /// The version the next tick stores; listed from the store when None,
    /// so that numbering continues across shim restarts.
    next_version: Option<u64>,
    /// Where dumps are committed before upload: RAM, this container's own.
    ram: PathBuf,
    /// In criu-parent mode, the dumps the next one builds on.
    chain: Option<criu_parent::Chain>,
}

impl Tick {
    fn new(container: Arc<Container>, plan: TickerPlan, target: ContainerRef, ram: PathBuf) -> Tick {
        let tick = Tick { container, plan, target, store: None, next_version: None, ram, chain: None };
        // Left over if a shim died mid-tick.
        discard(&tick.ram);
        tick
    }

    async fn once(&mut self) -> Result<TickReport, TickError> {
        let started = Instant::now();
        let (store, version) = match self.position().await {
            Ok(position) => position,
            Err(e) => {
                self.store = None;
                return Err(e);
            }
        };
        let dir = match &mut self.chain {
            Some(chain) => chain.dump(&self.container, version, version % self.plan.group_size == 0).await,
            None => dump(&self.container, &self.ram, &format!("v{version}"), Increment::Full).await,
        };
        let dir = dir.map_err(TickError::Checkpoint)?;
        // In criu-parent mode the next dump builds on this one.
        let keep = self.chain.is_some();
        let frozen_ms = migrate_oci::Checkpoint::open(&dir).ok().and_then(|c| c.manifest().timings.frozen_ms);
        let dumped = started.elapsed();

        let (target, plan) = (self.target.clone(), self.plan.clone());
        let upload = tokio::task::spawn_blocking(move || {
            let stored = versions::store_version(
                store.as_ref(),
                &dir,
                &target,
                version,
                plan.group_size,
                plan.cipher.as_deref(),
            );
            // The store has it now (or never will): the RAM copy goes either
            // way, unless the next dump builds on it.
            if !keep {
                let _ = std::fs::remove_dir_all(&dir);
            }
            let stored = stored.map_err(Box::new)?;
            let retention = Retention {
                keep_groups: plan.keep_groups,
                group_size: plan.group_size,
                chunk_grace: CHUNK_GRACE_FLOOR.max(4 * started.elapsed()),
            };
            let retained = versions::apply_retention(store.as_ref(), &target, &retention);
            // Boxed: a VersionError is big, and this is the rare path.
            Ok::<_, Box<VersionError>>((stored, retained))
        })
        .await
        .map_err(|e| TickError::Panicked(e.to_string()))?;
        let (stored, retained) = match upload {
            Ok(done) => done,
            Err(e) => {
                // Listed again next time: another writer may have taken the number.
                self.next_version = None;
                self.store = None;
                return Err(TickError::Store(e));
            }
        };
        self.next_version = Some(version + 1);
        Ok(TickReport { stored, frozen_ms, dumped, total: started.elapsed(), retained })
    }

    /// The store, and the version to store next.
    async fn position(&mut self) -> Result<(Arc<dyn VersionStore>, u64), TickError> {
        if let (Some(store), Some(next)) = (&self.store, self.next_version) {
            return Ok((store.clone(), next));
        }
        let location = self.plan.store.clone();
        let store = self.store.clone();
        let target = self.target.clone();
        let (store, next) = tokio::task::spawn_blocking(move || {
            let store: Arc<dyn VersionStore> = match store {
                Some(store) => store,
                None => Arc::from(location.open().map_err(Box::new)?),
            };
            let next = store.list_versions(&target).map_err(Box::new)?.last().map_or(0, |v| v + 1);
            Ok::<_, Box<VersionError>>((store, next))
        })
        .await
        .map_err(|e| TickError::Panicked(e.to_string()))?
        .map_err(TickError::Store)?;
        self.store = Some(store.clone());
        self.next_version = Some(next);
        Ok((store, next))
    }
}

#[derive(Debug, thiserror::Error)]
enum TickError {
    #[error("{0}")]
    Checkpoint(Error),
    #[error("{0}")]
    Store(Box<VersionError>),
    #[error("the upload thread panicked: {0}")]
    Panicked(String),
}

struct TickReport {
    stored: VersionReport,
    frozen_ms: Option<f64>,
    dumped: Duration,
    total: Duration,
    retained: versions::Result<RetentionReport>,
}

impl TickReport {
    /// The report as `key=value` pairs (after `container=`), `-` for what is
    /// unknown.
    fn fields(&self) -> String {
        let s = &self.stored;
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        format!(
            "version={} group={} frozen_ms={} dump_ms={} total_ms={} bytes_new={} bytes_total={} chunks_new={} \
             chunks_total={} retained={}",
            s.version,
            s.group,
            self.frozen_ms.map_or("-".to_string(), |f| format!("{f:.1}")),
            ms(self.dumped),
            ms(self.total),
            s.bytes_new,
            s.bytes_total,
            s.chunks_new,
            s.chunks_total,
            self.retained.as_ref().map_or("-".to_string(), |r| r.kept_groups.len().to_string()),
        )
    }
}

impl fmt::Display for TickReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stored;
        const MIB: f64 = (1 << 20) as f64;
        write!(
            f,
            "version {} (group {}) stored: {:.1} MiB new of {:.1} MiB, {} of {} chunks; frozen {}, dump {:?}, total {:?}",
            s.version,
            s.group,
            s.bytes_new as f64 / MIB,
            s.bytes_total as f64 / MIB,
            s.chunks_new,
            s.chunks_total,
            self.frozen_ms.map_or("?".to_string(), |ms| format!("{ms:.0} ms")),
            self.dumped,
            self.total,
        )?;
        match &self.retained {
            Ok(r) if r.deleted_versions.is_empty() => Ok(()),
            Ok(r) => write!(
                f,
                "; retention dropped versions {:?}, {} chunks ({:.1} MiB)",
                r.deleted_versions,
                r.gc.chunks_removed,
                r.gc.bytes_removed as f64 / MIB
            ),
            Err(e) => write!(f, "; retention failed, retried next tick: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmarks read this line: every key once, in order, values
    /// without spaces.
    #[test]
    fn the_structured_line_is_key_value_pairs() {
        let stored = VersionReport {
            version: 7,
            group: 1,
            base: 5,
            bytes_total: 64 << 20,
            bytes_new: 1 << 20,
            chunks_total: 40,
            chunks_new: 2,
        };
        let mut report = TickReport {
            stored,
            frozen_ms: None,
            dumped: Duration::from_millis(250),
            total: Duration::from_millis(900),
            retained: Ok(RetentionReport { kept_groups: vec![0, 1], ..Default::default() }),
        };
        assert_eq!(
            report.fields(),
            "version=7 group=1 frozen_ms=- dump_ms=250.0 total_ms=900.0 bytes_new=1048576 bytes_total=67108864 \
             chunks_new=2 chunks_total=40 retained=2"
        );
        report.frozen_ms = Some(31.25);
        report.retained = Err(VersionError::Io {
            op: "list",
            path: "/var/lib/versions".into(),
            source: std::io::Error::other("gone"),
        });
        assert!(report.fields().contains(" frozen_ms=31.2 "), "{}", report.fields());
        assert!(report.fields().ends_with(" retained=-"), "{}", report.fields());
    }
}
