//! A committed checkpoint: read its manifest, reach its parts, and prove that
//! its files are still the ones the commit hashed.

use std::{
    cmp::Reverse,
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::Deserialize;

use crate::{
    error::{Error, FileProblem, ProblemKind, Result},
    hashing::{self, Sha256},
    layout,
    manifest::{CheckpointManifest, FileEntry, MANIFEST_MEDIA_TYPE, MANIFEST_SCHEMA_VERSION},
    parallel, tree,
};

#[derive(Debug, Clone)]
pub struct Checkpoint {
    dir: PathBuf,
    manifest: CheckpointManifest,
}

impl Checkpoint {
    /// Reads the checkpoint in `dir`: any directory with a manifest.json, in
    /// a store or not. Parses; does not hash (see [`Checkpoint::verify`]).
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let path = dir.join(layout::MANIFEST_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir.is_dir() => {
                return Err(Error::Incomplete { dir: dir.to_owned() });
            }
            Err(source) => return Err(Error::Io { op: "read", path, source }),
        };
        // The version first: a manifest of a later format is reported as
        // such, not as a parse error about whatever fields it added.
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Head {
            schema_version: u32,
            media_type: String,
        }
        let bad = |source| Error::BadManifest { path: path.clone(), source };
        let head: Head = serde_json::from_slice(&bytes).map_err(bad)?;
        if head.schema_version != MANIFEST_SCHEMA_VERSION || head.media_type != MANIFEST_MEDIA_TYPE {
            return Err(Error::UnsupportedManifest {
                path,
                schema_version: head.schema_version,
                media_type: head.media_type,
            });
        }
        let manifest = serde_json::from_slice(&bytes).map_err(bad)?;
        Ok(Checkpoint { dir: dir.to_owned(), manifest })
    }

    pub(crate) fn new(dir: PathBuf, manifest: CheckpointManifest) -> Checkpoint {
        Checkpoint { dir, manifest }
    }

    pub fn manifest(&self) -> &CheckpointManifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CRIU image set, to hand to `runc restore --image-path`.
    pub fn criu_dir(&self) -> PathBuf {
        self.dir.join(layout::CRIU_DIR)
    }

    /// The container's OCI runtime spec, if the checkpoint has one.
    pub fn spec(&self) -> Result<Option<oci_spec::runtime::Spec>> {
        if !self.lists(layout::CONFIG_FILE) {
            return Ok(None);
        }
        let path = self.dir.join(layout::CONFIG_FILE);
        let bytes = std::fs::read(&path).map_err(Error::io("read", &path))?;
        serde_json::from_slice(&bytes).map(Some).map_err(|source| Error::BadSpec { path, source })
    }

    /// The writable layer's changes as an OCI layer tar, if the checkpoint
    /// has them; see [`crate::apply_layer`].
    pub fn rootfs_diff(&self) -> Option<PathBuf> {
        self.lists(layout::ROOTFS_DIFF_FILE).then(|| self.dir.join(layout::ROOTFS_DIFF_FILE))
    }

    /// The sum of the sizes of its files, manifest aside.
    pub fn size_bytes(&self) -> u64 {
        self.manifest.files.iter().map(|f| f.size).sum()
    }

    /// Checks that every listed file is present with its size and sha256,
    /// that nothing else is there, and that the parent link leads to the
    /// parent. Reports every problem found, not just the first.
    pub fn verify(&self) -> Result<()> {
        self.check(Hashing::All).map(drop)
    }

    /// [`Checkpoint::verify`] but for the digests of the memory images
    /// (`criu/pages-*.img`, nearly all of a checkpoint's bytes), which are
    /// left to the returned [`DeferredDigests`]: a restore hashes them while
    /// CRIU restores everything else, and lets the restored processes run
    /// only once they match. Their presence and sizes are checked now.
    pub fn verify_deferring_memory(&self) -> Result<DeferredDigests> {
        let files = self.check(Hashing::AllButMemory)?;
        Ok(DeferredDigests { id: self.manifest.id.clone(), dir: self.dir.clone(), files })
    }

    /// The [`FilesStamp`] of its memory images, as its commit left them: for
    /// the writer of a checkpoint, which hashed them as it wrote them.
    /// Waits out what is left of [`CLOCK_GRAIN`] after the last write.
    pub fn memory_stamp(&self) -> Result<Option<FilesStamp>> {
        let memory: Vec<&FileEntry> = self.manifest.files.iter().filter(|f| layout::is_memory_image(&f.path)).collect();
        FilesStamp::of(&self.dir, &memory, true)
    }

    /// [`Checkpoint::verify`] without the hashing: for a checkpoint whose
    /// contents were checked as they were written (rebuilt from chunks
    /// that were each checked against their digest), the files that must
    /// be there, with their sizes and no others, for a stat each.
    pub fn check_files(&self) -> Result<()> {
        self.check(Hashing::None).map(drop)
    }

    /// Checks as `hashing` says; returns the entries it left unhashed.
    fn check(&self, hashing: Hashing) -> Result<Vec<FileEntry>> {
        let mut present = BTreeMap::new();
        let mut problems = Vec::new();
        for e in tree::walk(&self.dir)? {
            if e.meta.is_dir() || e.rel == layout::MANIFEST_FILE {
                continue;
            }
            if e.rel == layout::PARENT_LINK && e.meta.is_symlink() && self.manifest.parent.is_some() {
                continue; // checked below
            }
            if e.meta.is_file() {
                present.insert(e.rel, e.meta.len());
            } else {
                problems.push(FileProblem { path: e.rel, kind: ProblemKind::Unexpected });
            }
        }
        // Sizes first: a stat answers what would otherwise take a full read.
        let mut to_hash: Vec<&FileEntry> = Vec::new();
        let mut deferred = Vec::new();
        for f in &self.manifest.files {
            match present.remove(&f.path) {
                None => problems.push(FileProblem { path: f.path.clone(), kind: ProblemKind::Missing }),
                Some(found) if found != f.size => problems.push(FileProblem {
                    path: f.path.clone(),
                    kind: ProblemKind::SizeMismatch { expected: f.size, found },
                }),
                Some(_) => match hashing {
                    Hashing::All => to_hash.push(f),
                    Hashing::AllButMemory if !layout::is_memory_image(&f.path) => to_hash.push(f),
                    Hashing::AllButMemory | Hashing::None => deferred.push(f.clone()),
                },
            }
        }
        problems.extend(present.into_keys().map(|path| FileProblem { path, kind: ProblemKind::Unexpected }));
        if let Some(parent) = &self.manifest.parent {
            problems.extend(self.parent_link_problem(parent));
        }
        problems.extend(digest_problems(&self.dir, to_hash)?);
        damaged(&self.manifest.id, &self.dir, problems)?;
        Ok(deferred)
    }

    fn parent_link_problem(&self, parent: &str) -> Option<FileProblem> {
        let link = self.dir.join(layout::PARENT_LINK);
        let expected = layout::parent_link_target(parent);
        let path = layout::PARENT_LINK.to_owned();
        match std::fs::read_link(&link).ok() {
            Some(found) if found == expected => (!link.is_dir())
                .then(|| FileProblem { path, kind: ProblemKind::ParentMissing { parent: parent.to_owned() } }),
            found => Some(FileProblem { path, kind: ProblemKind::BadParentLink { expected, found } }),
        }
    }

    fn lists(&self, rel: &str) -> bool {
        self.manifest.files.iter().any(|f| f.path == rel)
    }
}

/// How much of a checkpoint [`Checkpoint::check`] hashes.
#[derive(Clone, Copy)]
enum Hashing {
    None,
    All,
    AllButMemory,
}

/// Digests of a checkpoint's files still to be checked; see
/// [`Checkpoint::verify_deferring_memory`].
#[derive(Debug)]
pub struct DeferredDigests {
    id: String,
    dir: PathBuf,
    files: Vec<FileEntry>,
}

impl DeferredDigests {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Hashes the files; an `Err` is [`Error::Damaged`] naming each that
    /// changed since the commit.
    pub fn verify(&self) -> Result<()> {
        let problems = digest_problems(&self.dir, self.files.iter().collect())?;
        damaged(&self.id, &self.dir, problems)
    }

    /// The files' [`FilesStamp`] as they are now; `None`, without waiting,
    /// for files changed within [`CLOCK_GRAIN`].
    pub fn stamp(&self) -> Result<Option<FilesStamp>> {
        FilesStamp::of(&self.dir, &self.files.iter().collect::<Vec<_>>(), false)
    }
}

/// Which files these are on this host and whether they were written since:
/// a digest of each file's path, size and expected sha256 (the manifest's)
/// with its device, inode, and modification and change times. Two equal
/// stamps taken on one boot mean the same files, untouched in between: a
/// write, truncation, chmod or rename moves the change time, which no
/// system call can set back. What only hashing sees is a change below the
/// file system (a bit flipped on the disk), so a stamp stands for a past
/// hash on the same host and boot only, never for a checkpoint that came
/// from elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilesStamp(Sha256);

/// Longer than a tick of the coarse clock the kernel stamps files with (4 ms
/// at HZ=250, 10 ms at HZ=100): a change within one tick of the last keeps
/// its change time, so a stamp is taken only of files last changed longer
/// ago than this (as git treats a file as racily clean).
const CLOCK_GRAIN: Duration = Duration::from_millis(50);

impl FilesStamp {
    /// `None` if a file changed so recently (or, with the clock set back,
    /// so far in the future) that a change after the stamp could go unseen.
    /// With `wait`, waits out the grain once for files just written.
    fn of(dir: &Path, files: &[&FileEntry], wait: bool) -> Result<Option<FilesStamp>> {
        let mut files = files.to_vec();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        for attempt in 0..2 {
            let mut text = String::new();
            let mut newest = SystemTime::UNIX_EPOCH;
            for f in &files {
                let path = dir.join(&f.path);
                let m = std::fs::symlink_metadata(&path).map_err(Error::io("stat", &path))?;
                let changed = SystemTime::UNIX_EPOCH
                    + Duration::new(u64::try_from(m.ctime()).unwrap_or(0), u32::try_from(m.ctime_nsec()).unwrap_or(0));
                newest = newest.max(changed);
                text.push_str(&format!(
                    "{:?} {} {} {} {} {} {}.{} {}.{}\n",
                    f.path,
                    f.size,
                    f.sha256,
                    m.len(),
                    m.dev(),
                    m.ino(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec()
                ));
            }
            match SystemTime::now().duration_since(newest) {
                Ok(age) if age >= CLOCK_GRAIN => {
                    return Ok(Some(FilesStamp(hashing::hash_bytes(text.as_bytes()).sha256)));
                }
                Ok(age) if wait && attempt == 0 => std::thread::sleep(CLOCK_GRAIN - age),
                _ => break,
            }
        }
        Ok(None)
    }
}

impl std::fmt::Display for FilesStamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Hashes `files` of the checkpoint in `dir` (whose sizes were found
/// right) and reports those whose digest is not the manifest's.
fn digest_problems(dir: &Path, mut files: Vec<&FileEntry>) -> Result<Vec<FileProblem>> {
    // Biggest first, so that both threads finish at about the same time.
    files.sort_by_key(|f| Reverse(f.size));
    let hashed = parallel::map(&files, |f| hashing::hash_file(&dir.join(&f.path), false))?;
    let mut problems = Vec::new();
    for (f, h) in files.iter().zip(hashed) {
        let kind = if h.size != f.size {
            ProblemKind::SizeMismatch { expected: f.size, found: h.size }
        } else if h.sha256 != f.sha256 {
            ProblemKind::Sha256Mismatch { expected: f.sha256, found: h.sha256 }
        } else {
            continue;
        };
        problems.push(FileProblem { path: f.path.clone(), kind });
    }
    Ok(problems)
}

fn damaged(id: &str, dir: &Path, mut problems: Vec<FileProblem>) -> Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    problems.sort_by(|a, b| a.path.cmp(&b.path));
    Err(Error::Damaged { id: id.to_owned(), dir: dir.to_owned(), problems })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CheckpointStore, testing::committed};

    fn setup() -> (tempfile::TempDir, CheckpointStore, Checkpoint) {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        let cp = committed(&store, "web-1");
        (dir, store, cp)
    }

    fn problems(cp: &Checkpoint) -> Vec<FileProblem> {
        match cp.verify() {
            Err(Error::Damaged { problems, id, .. }) => {
                assert_eq!(id, "web-1");
                problems
            }
            other => panic!("expected Damaged, got {other:?}"),
        }
    }

    #[test]
    fn a_tampered_file_is_named_with_both_digests() {
        let (_dir, _store, cp) = setup();
        let pages = cp.criu_dir().join("pages-1.img");
        let mut bytes = std::fs::read(&pages).unwrap();
        bytes[4000] ^= 1;
        std::fs::write(&pages, &bytes).unwrap();
        let expected = cp.manifest().files.iter().find(|f| f.path == "criu/pages-1.img").unwrap().sha256;
        let found = hashing::hash_bytes(&bytes).sha256;
        assert_eq!(
            problems(&cp),
            [FileProblem { path: "criu/pages-1.img".into(), kind: ProblemKind::Sha256Mismatch { expected, found } }]
        );
        // A tampering that keeps the size is seen only by hashing.
        cp.check_files().unwrap();
        let msg = cp.verify().unwrap_err().to_string();
        assert_eq!(
            msg,
            format!(
                "checkpoint web-1 in {}: criu/pages-1.img is damaged (sha256 mismatch: expected {expected}, \
                 found {found}); it cannot be restored — use an older checkpoint",
                cp.dir().display()
            )
        );
    }

    #[test]
    fn memory_digests_can_wait_but_nothing_else_does() {
        let (_dir, _store, cp) = setup();
        let deferred = cp.verify_deferring_memory().unwrap();
        assert!(!deferred.is_empty());
        deferred.verify().unwrap();

        let pages = cp.criu_dir().join("pages-1.img");
        let mut bytes = std::fs::read(&pages).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&pages, &bytes).unwrap();
        let deferred = cp.verify_deferring_memory().expect("memory is not hashed yet");
        let err = deferred.verify().unwrap_err();
        assert!(
            matches!(&err, Error::Damaged { problems, .. }
                if problems.len() == 1 && problems[0].path == "criu/pages-1.img"),
            "{err}"
        );

        // Any other file, and a memory image's size, are checked at once.
        let inventory = cp.criu_dir().join("inventory.img");
        let mut bytes = std::fs::read(&inventory).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&inventory, &bytes).unwrap();
        let err = cp.verify_deferring_memory().unwrap_err();
        assert!(err.to_string().contains("criu/inventory.img is damaged"), "{err}");
        std::fs::write(&pages, b"short").unwrap();
        let err = cp.verify_deferring_memory().unwrap_err();
        assert!(err.to_string().contains("criu/pages-1.img"), "{err}");
    }

    #[test]
    fn a_stamp_holds_until_a_memory_image_is_written() {
        let (_dir, _store, cp) = setup();
        let deferred = cp.verify_deferring_memory().unwrap();
        // Just committed: a change now could keep the change time.
        assert_eq!(deferred.stamp().unwrap(), None, "too fresh to stamp");
        // The writer's stamp waits until a change would show.
        let stamp = cp.memory_stamp().unwrap().expect("settled after the grain");
        assert_eq!(deferred.stamp().unwrap(), Some(stamp), "the writer's stamp is the restorer's");
        let reopened = Checkpoint::open(cp.dir()).unwrap().verify_deferring_memory().unwrap();
        assert_eq!(reopened.stamp().unwrap(), Some(stamp));

        // Rewritten with the very same bytes, it is not the file hashed.
        let pages = cp.criu_dir().join("pages-1.img");
        let bytes = std::fs::read(&pages).unwrap();
        std::fs::write(&pages, &bytes).unwrap();
        let rewritten = cp.memory_stamp().unwrap().expect("settled");
        assert_ne!(rewritten, stamp);
        assert_eq!(deferred.stamp().unwrap(), Some(rewritten));
        // Nor is a copy put in its place.
        std::fs::copy(&pages, pages.with_extension("new")).unwrap();
        std::fs::rename(pages.with_extension("new"), &pages).unwrap();
        let copy = cp.memory_stamp().unwrap().expect("settled");
        assert!(copy != stamp && copy != rewritten);
        // Other files are not in it: they are hashed before every restore.
        std::fs::write(cp.criu_dir().join("inventory.img"), b"x").unwrap();
        assert_eq!(cp.memory_stamp().unwrap(), Some(copy));
    }

    #[test]
    fn missing_truncated_and_extra_files_are_all_reported() {
        let (_dir, _store, cp) = setup();
        std::fs::remove_file(cp.criu_dir().join("inventory.img")).unwrap();
        std::fs::write(cp.criu_dir().join("pages-2.img"), [9; 100]).unwrap();
        std::fs::write(cp.criu_dir().join("core-1.img"), b"late").unwrap();
        std::os::unix::fs::symlink("x", cp.dir().join("link")).unwrap();
        let kinds: Vec<_> = problems(&cp).into_iter().map(|p| (p.path, p.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("criu/core-1.img".into(), ProblemKind::Unexpected),
                ("criu/inventory.img".into(), ProblemKind::Missing),
                ("criu/pages-2.img".into(), ProblemKind::SizeMismatch { expected: 4096, found: 100 }),
                ("link".into(), ProblemKind::Unexpected),
            ]
        );
        let msg = cp.verify().unwrap_err().to_string();
        assert!(msg.contains("unexpected file criu/core-1.img, criu/inventory.img is missing, "), "{msg}");
        assert_eq!(cp.check_files().unwrap_err().to_string(), msg, "a stat each finds all of these");
    }

    #[test]
    fn a_lost_parent_is_reported() {
        let (_dir, store, _) = setup();
        let child = store.staging("child").unwrap();
        crate::testing::write_images(&child.criu_dir());
        let child = child.commit(crate::testing::commit_info(Some("web-1"))).unwrap();
        // Deleted behind the store's back (remove() would refuse).
        std::fs::remove_dir_all(store.root().join("web-1")).unwrap();
        let err = child.verify().unwrap_err();
        assert!(
            matches!(&err, Error::Damaged { problems, .. }
                if problems[0].kind == ProblemKind::ParentMissing { parent: "web-1".into() }),
            "{err}"
        );
        std::fs::remove_file(child.criu_dir().join("parent")).unwrap();
        assert!(
            child
                .verify()
                .unwrap_err()
                .to_string()
                .contains("criu/parent is missing (it must link to ../../web-1/criu)")
        );
    }

    #[test]
    fn manifests_of_other_versions_and_garbage_are_refused() {
        let (_dir, _store, cp) = setup();
        let path = cp.dir().join(layout::MANIFEST_FILE);
        let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        json["schemaVersion"] = 2.into();
        std::fs::write(&path, json.to_string()).unwrap();
        let err = Checkpoint::open(cp.dir()).unwrap_err();
        assert!(matches!(err, Error::UnsupportedManifest { schema_version: 2, .. }), "{err}");
        std::fs::write(&path, b"[]").unwrap();
        assert!(matches!(Checkpoint::open(cp.dir()), Err(Error::BadManifest { .. })));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(Checkpoint::open(cp.dir()), Err(Error::Incomplete { .. })));
        assert!(matches!(Checkpoint::open(&cp.dir().join("nope")), Err(Error::Io { .. })));
    }
}
