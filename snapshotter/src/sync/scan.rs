//! Walks an upper dir and compares it with what was sent: the delta to send.

use std::collections::BTreeMap;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::index::{Stamp, SyncIndex};

/// How far the kernel's coarse clock (which stamps ctime) may lag the
/// wall clock read at the start of a scan: a jiffy at HZ=100, with margin.
const RACY_WINDOW: Duration = Duration::from_millis(50);

/// What changed in an upper dir since an index: paths to remove and
/// entries to send, parents before children. Its metadata is what `lstat`
/// gave before anything was read, so a change after that is the next
/// scan's.
#[derive(Debug, Default)]
pub struct Delta {
    /// Gone since the last sync, each at its highest gone ancestor (the
    /// receiver removes directories whole).
    pub(super) removed: Vec<PathBuf>,
    pub(super) changed: Vec<(PathBuf, Metadata)>,
}

impl Delta {
    /// Nothing to send: the receiver already has this upper dir.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.changed.is_empty()
    }

    /// Paths to remove, relative to the upper dir.
    pub fn removed(&self) -> impl Iterator<Item = &Path> {
        self.removed.iter().map(PathBuf::as_path)
    }

    /// Paths to send ("" is the upper dir itself), parents first.
    pub fn changed(&self) -> impl Iterator<Item = &Path> {
        self.changed.iter().map(|(p, _)| p.as_path())
    }

    /// The size of the regular files to send, holes included: an upper
    /// bound of the file data for progress reports.
    pub fn file_bytes(&self) -> u64 {
        self.changed.iter().filter(|(_, m)| m.is_file()).map(|(_, m)| m.size()).sum()
    }
}

/// Changes of `upper` since `previous` (everything when None), and the index
/// to pass to the next scan once this delta was applied on the other side
/// (after a failed transfer, scan again from `previous`).
pub fn scan(upper: &Path, previous: Option<&SyncIndex>) -> io::Result<(Delta, SyncIndex)> {
    let root = fs::metadata(upper).map_err(|e| context(e, "cannot stat the upper dir", upper))?;
    if !root.is_dir() {
        return Err(io::Error::new(io::ErrorKind::NotADirectory, format!("{} is not a directory", upper.display())));
    }
    let racy_from = SystemTime::now().checked_sub(RACY_WINDOW).unwrap_or(UNIX_EPOCH);
    let racy_from = racy_from.duration_since(UNIX_EPOCH).unwrap_or_default();
    let racy_from = (racy_from.as_secs() as i64, racy_from.subsec_nanos() as i64);
    let empty = SyncIndex::default();
    let mut walk = Walk {
        upper,
        previous: previous.unwrap_or(&empty),
        racy_from,
        index: SyncIndex::default(),
        delta: Delta::default(),
    };
    walk.entry(PathBuf::new(), root)?;
    let Walk { mut delta, index, previous, .. } = walk;
    let mut removed: Vec<&PathBuf> = previous.entries.keys().filter(|p| !index.entries.contains_key(*p)).collect();
    // Sorted, a directory comes before everything under it.
    removed.sort();
    let mut top: Vec<PathBuf> = Vec::new();
    for p in removed {
        if !top.last().is_some_and(|t| p.starts_with(t)) {
            top.push(p.clone());
        }
    }
    delta.removed = top;
    Ok((delta, index))
}

struct Walk<'a> {
    upper: &'a Path,
    previous: &'a SyncIndex,
    racy_from: (i64, i64),
    index: SyncIndex,
    delta: Delta,
}

impl Walk<'_> {
    fn entry(&mut self, rel: PathBuf, m: Metadata) -> io::Result<()> {
        let mut stamp = Stamp::of(&m);
        stamp.racy = stamp.ctime >= self.racy_from;
        if self.previous.entries.get(&rel).is_none_or(|sent| stamp.changed_since(sent)) {
            self.delta.changed.push((rel.clone(), m.clone()));
        }
        self.index.entries.insert(rel.clone(), stamp);
        if !m.is_dir() {
            return Ok(());
        }
        let dir = self.upper.join(&rel);
        let mut children = BTreeMap::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            // Removed since its parent was read: the next scan sends its removal.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(context(e, "cannot read directory", &dir)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| context(e, "cannot read directory", &dir))?;
            match entry.metadata() {
                Ok(m) => {
                    children.insert(entry.file_name(), m);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(context(e, "cannot stat", &entry.path())),
            }
        }
        for (name, m) in children {
            self.entry(rel.join(name), m)?;
        }
        Ok(())
    }
}

pub(super) fn context(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}
