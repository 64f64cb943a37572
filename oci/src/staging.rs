//! A checkpoint being assembled. It lives in a hidden directory inside the
//! store, so that its commit is one rename(2) on one file system: before the
//! rename there is no checkpoint, after it there is a complete one.

use std::{
    cmp::Reverse,
    collections::BTreeMap,
    fs::{DirBuilder, File},
    io::{BufWriter, Read, Write},
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use time::OffsetDateTime;

use crate::{
    checkpoint::Checkpoint,
    direct_copy, durable,
    error::{Error, Result},
    hashing::{self, Hashed, HashingWriter},
    layer,
    layout::{self, is_memory_image, validate_id},
    manifest::{
        CheckpointManifest, ContainerInfo, FileEntry, HostInfo, MANIFEST_MEDIA_TYPE, MANIFEST_SCHEMA_VERSION,
        ReadyInfo, RootfsInfo, Timings,
    },
    parallel, tree,
};

pub(crate) const STAGING_PREFIX: &str = ".staging-";

/// What the taker of a checkpoint knows; the commit adds the rest (host,
/// time, memory size, file list).
#[derive(Debug, Clone)]
pub struct CommitInfo {
    pub container: ContainerInfo,
    /// The id of the checkpoint in the same store whose images this dump
    /// builds on (CRIU's `--prev-images-dir`).
    pub parent: Option<String>,
    pub leave_running: bool,
    pub rootfs: Option<RootfsInfo>,
    pub timings: Timings,
    /// The machine that made the images.
    pub host: HostInfo,
    /// For a ready point, what made it be taken.
    pub ready: Option<ReadyInfo>,
}

/// A checkpoint under construction. Dropping it without [`Staging::commit`]
/// removes everything written so far.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    id: String,
    root: PathBuf,
    /// Files already hashed and made durable, by path in the checkpoint.
    hashed: BTreeMap<String, Hashed>,
    committed: bool,
}

impl Staging {
    pub(crate) fn create(root: &Path, id: &str) -> Result<Staging> {
        validate_id(id)?;
        if root.join(id).symlink_metadata().is_ok() {
            return Err(Error::AlreadyExists { id: id.to_owned(), store: root.to_owned() });
        }
        let dir = root.join(format!("{STAGING_PREFIX}{id}-{}", durable::unique_suffix()));
        private_dir().create(&dir).map_err(Error::io("create directory", &dir))?;
        let staging =
            Staging { dir, id: id.to_owned(), root: root.to_owned(), hashed: BTreeMap::new(), committed: false };
        let criu = staging.criu_dir();
        private_dir().create(&criu).map_err(Error::io("create directory", &criu))?;
        Ok(staging)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where the CRIU images go: import them with
    /// [`Staging::import_criu_dir`], or let runc dump straight into it.
    pub fn criu_dir(&self) -> PathBuf {
        self.dir.join(layout::CRIU_DIR)
    }

    /// Brings every regular file below `src` into `criu/`, hashing each in
    /// the same read that copies it, two files at a time.
    ///
    /// Files on the store's file system are renamed, not copied, so they
    /// leave `src`. Symlinks are not imported: CRIU's only one is `parent`,
    /// which the commit makes from [`CommitInfo::parent`].
    pub fn import_criu_dir(&mut self, src: &Path) -> Result<()> {
        let criu = self.criu_dir();
        let mut files = Vec::new();
        for e in tree::walk(src)? {
            let dst = criu.join(&e.rel);
            if e.meta.is_dir() {
                private_dir().recursive(true).create(&dst).map_err(Error::io("create directory", &dst))?;
            } else if e.meta.is_file() {
                files.push((format!("{}/{}", layout::CRIU_DIR, e.rel), e.path, dst, e.meta.len()));
            } else {
                log::debug!("not importing {}: a {} is not a CRIU image", e.path.display(), tree::kind_name(&e.meta));
            }
        }
        // Biggest first, so that both threads finish at about the same time.
        files.sort_by_key(|f| Reverse(f.3));
        let hashed = parallel::map(&files, |(_, src, dst, size)| import_file(src, dst, *size))?;
        for ((rel, ..), h) in files.into_iter().zip(hashed) {
            self.hashed.insert(rel, h);
        }
        Ok(())
    }

    /// Writes `bytes` as the file `rel` of the checkpoint, e.g. [`crate::CONFIG_FILE`].
    pub fn add_file(&mut self, rel: &str, bytes: &[u8]) -> Result<()> {
        layout::check_rel(rel).map_err(|reason| Error::InvalidPath { path: rel.to_owned(), reason })?;
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            private_dir().recursive(true).create(parent).map_err(Error::io("create directory", parent))?;
        }
        let mut file = File::create(&path).map_err(Error::io("create", &path))?;
        file.write_all(bytes).map_err(Error::io("write", &path))?;
        file.sync_data().map_err(Error::io("fsync", &path))?;
        self.hashed.insert(rel.to_owned(), hashing::hash_bytes(bytes));
        Ok(())
    }

    /// Writes what `reader` yields as the file `rel` of the checkpoint,
    /// hashing it on the way, like [`Staging::add_file`] for what is too big
    /// to hold in memory (a rootfs diff from elsewhere).
    pub fn add_file_from(&mut self, rel: &str, mut reader: impl Read) -> Result<()> {
        layout::check_rel(rel).map_err(|reason| Error::InvalidPath { path: rel.to_owned(), reason })?;
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            self.create_dir(parent)?;
        }
        let hashed = hashing::write_hashing(&mut reader, u64::MAX, Path::new(rel), &path)?;
        self.hashed.insert(rel.to_owned(), hashed);
        Ok(())
    }

    /// Creates `dir` (inside the staging directory) and its parents, private.
    pub(crate) fn create_dir(&self, dir: &Path) -> Result<()> {
        private_dir().recursive(true).create(dir).map_err(Error::io("create directory", dir))
    }

    /// Records a file written (and made durable) by this crate.
    pub(crate) fn insert_hashed(&mut self, rel: String, hashed: Hashed) {
        self.hashed.insert(rel, hashed);
    }

    /// A file `rel` of this checkpoint for another thread to write (CRIU's
    /// memory images, taken from FIFOs as CRIU writes them): it is written
    /// with [`PendingFile::write_from`] and recorded with
    /// [`Staging::add_written`].
    pub fn pending_file(&self, rel: &str) -> Result<PendingFile> {
        layout::check_rel(rel).map_err(|reason| Error::InvalidPath { path: rel.to_owned(), reason })?;
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            self.create_dir(parent)?;
        }
        Ok(PendingFile { rel: rel.to_owned(), path })
    }

    /// Records a file written with [`PendingFile::write_from`], with the
    /// digest taken as it was written.
    pub fn add_written(&mut self, written: WrittenFile) {
        self.hashed.insert(written.rel, written.hashed);
    }

    /// Writes the changes in overlay `upperdir` as `rootfs-diff.tar`, an OCI
    /// layer (overlay whiteouts become `.wh.` entries), hashing as it writes.
    pub fn add_rootfs_diff(&mut self, upperdir: &Path) -> Result<()> {
        let path = self.dir.join(layout::ROOTFS_DIFF_FILE);
        let file = File::create(&path).map_err(Error::io("create", &path))?;
        let mut out = BufWriter::with_capacity(1 << 20, HashingWriter::new(file));
        layer::write_layer(upperdir, &mut out)?;
        let hashing = out.into_inner().map_err(|e| Error::io("write", &path)(e.into_error()))?;
        let (file, hashed) = hashing.finish();
        file.sync_data().map_err(Error::io("fsync", &path))?;
        self.hashed.insert(layout::ROOTFS_DIFF_FILE.to_owned(), hashed);
        Ok(())
    }

    /// Hashes what is not hashed yet, writes manifest.json last, makes it all
    /// durable and renames the staging directory to `<store>/<id>`.
    pub fn commit(mut self, info: CommitInfo) -> Result<Checkpoint> {
        match &info.parent {
            Some(parent) => self.link_parent(parent)?,
            None => {
                let link = self.dir.join(layout::PARENT_LINK);
                if let Ok(target) = std::fs::read_link(&link) {
                    return Err(Error::UnexpectedParentLink { path: link, target });
                }
            }
        }

        let mut dirs = vec![self.dir.clone()];
        let mut files = Vec::new();
        let mut unhashed = Vec::new();
        for e in tree::walk(&self.dir)? {
            if e.meta.is_dir() {
                dirs.push(e.path);
                continue;
            }
            if e.rel == layout::PARENT_LINK && e.meta.is_symlink() {
                continue; // made by link_parent above
            }
            layout::check_rel(&e.rel).map_err(|reason| Error::InvalidPath { path: e.rel.clone(), reason })?;
            if !e.meta.is_file() {
                return Err(Error::UnsupportedFile { path: e.path, kind: tree::kind_name(&e.meta) });
            }
            match self.hashed.get(&e.rel) {
                Some(h) if h.size == e.meta.len() => {
                    files.push(FileEntry { path: e.rel, size: h.size, sha256: h.sha256 });
                }
                // Written by someone else (runc dumping into criu/), or
                // rewritten since: hash what is there now.
                _ => unhashed.push(e),
            }
        }
        let criu_prefix = format!("{}/", layout::CRIU_DIR);
        if !files.iter().map(|f| &f.path).chain(unhashed.iter().map(|e| &e.rel)).any(|p| p.starts_with(&criu_prefix)) {
            return Err(Error::NoImages { dir: self.dir.clone() });
        }
        unhashed.sort_by_key(|e| Reverse(e.meta.len()));
        let hashed = parallel::map(&unhashed, |e| hashing::hash_file(&e.path, true))?;
        files.extend(unhashed.into_iter().zip(hashed).map(|(e, h)| FileEntry {
            path: e.rel,
            size: h.size,
            sha256: h.sha256,
        }));
        files.sort_by(|a, b| a.path.cmp(&b.path));

        let manifest = CheckpointManifest {
            schema_version: MANIFEST_SCHEMA_VERSION,
            media_type: MANIFEST_MEDIA_TYPE.to_owned(),
            id: self.id.clone(),
            container: info.container,
            created: now_millis(),
            host: info.host,
            memory_bytes: files.iter().filter(|f| is_memory_image(&f.path)).map(|f| f.size).sum(),
            parent: info.parent,
            leave_running: info.leave_running,
            rootfs: info.rootfs,
            timings: info.timings,
            ready: info.ready,
            files,
        };
        self.write_manifest(&manifest)?;
        for dir in &dirs {
            durable::sync_dir(dir)?;
        }

        let target = self.root.join(&self.id);
        durable::rename_noreplace(&self.dir, &target).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                Error::AlreadyExists { id: self.id.clone(), store: self.root.clone() }
            } else {
                Error::Rename { from: self.dir.clone(), to: target.clone(), source }
            }
        })?;
        self.committed = true;
        durable::sync_dir(&self.root)?;
        Ok(Checkpoint::new(target, manifest))
    }

    /// Points `criu/parent` at the parent's images, relative to the store,
    /// replacing the link CRIU made with the path it was given at dump time.
    fn link_parent(&self, parent: &str) -> Result<()> {
        validate_id(parent)?;
        if !self.root.join(parent).join(layout::MANIFEST_FILE).is_file() {
            return Err(Error::NotFound { id: parent.to_owned(), store: self.root.clone() });
        }
        let link = self.dir.join(layout::PARENT_LINK);
        match link.symlink_metadata() {
            Ok(m) if m.is_symlink() => std::fs::remove_file(&link).map_err(Error::io("remove", &link))?,
            Ok(m) => return Err(Error::UnsupportedFile { path: link, kind: tree::kind_name(&m) }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Io { op: "stat", path: link, source }),
        }
        std::os::unix::fs::symlink(layout::parent_link_target(parent), &link).map_err(Error::io("symlink", &link))
    }

    fn write_manifest(&self, manifest: &CheckpointManifest) -> Result<()> {
        let path = self.dir.join(layout::MANIFEST_FILE);
        let mut json = serde_json::to_vec_pretty(manifest).expect("a manifest always serialises");
        json.push(b'\n');
        let mut file = File::options().write(true).create_new(true).open(&path).map_err(Error::io("create", &path))?;
        file.write_all(&json).map_err(Error::io("write", &path))?;
        file.sync_all().map_err(Error::io("fsync", &path))
    }
}

/// A file of a staging checkpoint to be written, maybe on another thread.
#[derive(Debug)]
pub struct PendingFile {
    rel: String,
    path: PathBuf,
}

/// A file written into a staging checkpoint, with its digest.
#[derive(Debug)]
pub struct WrittenFile {
    rel: String,
    hashed: Hashed,
}

impl PendingFile {
    /// Writes all that `from` (read from `src`, for errors) yields, around
    /// the page cache where the store's file system allows, hashing it, and
    /// makes it durable.
    pub fn write_from(self, from: &mut impl Read, src: &Path) -> Result<WrittenFile> {
        let hashed = match direct_copy::write_hashing_direct(from, src, &self.path)? {
            Some(hashed) => hashed,
            None => hashing::write_hashing(from, u64::MAX, src, &self.path)?,
        };
        Ok(WrittenFile { rel: self.rel, hashed })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("could not remove abandoned checkpoint staging {}: {e}", self.dir.display());
        }
    }
}

/// Moves `src` to the new file `dst` if they share a file system, else
/// copies it; hashes it in the same read. A big file (a memory image) goes
/// around the page cache where the store's file system allows, else is
/// hashed and copied side by side (two reads of RAM cost less than one
/// read's hashing and copying one after the other).
fn import_file(src: &Path, dst: &Path, size: u64) -> Result<Hashed> {
    match durable::rename_noreplace(src, dst) {
        Ok(()) => hashing::hash_file(dst, true),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) && size >= hashing::SPLIT_COPY_MIN => {
            match direct_copy::copy_hashing_direct(src, dst)? {
                Some(hashed) => Ok(hashed),
                None => hashing::copy_hashing_split(src, dst),
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => hashing::copy_hashing(src, dst),
        Err(source) => Err(Error::Rename { from: src.to_owned(), to: dst.to_owned(), source }),
    }
}

/// Checkpoints hold process memory: only root reads them.
fn private_dir() -> DirBuilder {
    let mut b = DirBuilder::new();
    b.mode(0o700);
    b
}

/// Now, to the millisecond, as the manifest records it: finer is noise, and
/// equal precision keeps `created` sortable as a string too.
fn now_millis() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_millisecond(now.millisecond()).expect("a millisecond of the current time is valid")
}
