//! A checkpoint's CRIU images as one tar, the form containerd keeps them in
//! its content store (media type
//! `application/vnd.containerd.container.criu.checkpoint.criu.tar`):
//! containerd tars the images directory with its `archive.Diff` against
//! nothing, which is a plain tar of the files, names relative to the
//! directory, directories ending in `/`. Both directions are here: writing a
//! committed checkpoint's images out (checked against the manifest as they
//! are read), and bringing such a tar into a [`Staging`] checkpoint.

use std::{
    io::{self, Read, Write},
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

use tar::{EntryType, Header};

use crate::{
    checkpoint::Checkpoint,
    error::{Error, FileProblem, ProblemKind, Result},
    hashing::{self, HashingReader},
    layout,
    staging::Staging,
    tree,
};

impl Checkpoint {
    /// Writes the CRIU images (`criu/`) to `out` as a tar whose names are
    /// relative to `criu/`, in name order, each directory before its
    /// contents. Every file is hashed as it is read and must match the
    /// manifest: a damaged checkpoint fails here, after having written part
    /// of the tar, so the caller must discard what it wrote on an error.
    ///
    /// A checkpoint with a parent cannot be written so: its images are
    /// incomplete without the parent's, which a single tar cannot reach
    /// (the `parent` link is refused as a symlink).
    pub fn write_criu_tar(&self, out: impl Write) -> Result<()> {
        let criu = self.criu_dir();
        let mut builder = tar::Builder::new(out);
        let archive = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { op: "archive", path, source }
        };
        for e in tree::walk(&criu)? {
            let mut header = Header::new_ustar();
            header.set_mode(e.meta.mode() & 0o7777);
            header.set_uid(u64::from(e.meta.uid()));
            header.set_gid(u64::from(e.meta.gid()));
            header.set_mtime(u64::try_from(e.meta.mtime()).unwrap_or(0));
            if e.meta.is_dir() {
                header.set_entry_type(EntryType::Directory);
                header.set_size(0);
                builder.append_data(&mut header, format!("{}/", e.rel), io::empty()).map_err(archive(&e.path))?;
                continue;
            }
            if !e.meta.is_file() {
                return Err(Error::UnsupportedFile { path: e.path, kind: tree::kind_name(&e.meta) });
            }
            let rel = format!("{}/{}", layout::CRIU_DIR, e.rel);
            let damaged = |kind| Error::Damaged {
                id: self.manifest().id.clone(),
                dir: self.dir().to_owned(),
                problems: vec![FileProblem { path: rel.clone(), kind }],
            };
            let Some(listed) = self.manifest().files.iter().find(|f| f.path == rel) else {
                return Err(damaged(ProblemKind::Unexpected));
            };
            if e.meta.len() != listed.size {
                return Err(damaged(ProblemKind::SizeMismatch { expected: listed.size, found: e.meta.len() }));
            }
            let file = std::fs::File::open(&e.path).map_err(Error::io("open", &e.path))?;
            // The tar's size field comes from the manifest; a reader that
            // yields more or less would make tar fail, which is caught below
            // as a size mismatch.
            let mut reader = HashingReader::new(file.take(listed.size));
            header.set_entry_type(EntryType::Regular);
            header.set_size(listed.size);
            builder.append_data(&mut header, &e.rel, &mut reader).map_err(archive(&e.path))?;
            let hashed = reader.finish();
            if hashed.size != listed.size {
                return Err(damaged(ProblemKind::SizeMismatch { expected: listed.size, found: hashed.size }));
            }
            if hashed.sha256 != listed.sha256 {
                return Err(damaged(ProblemKind::Sha256Mismatch { expected: listed.sha256, found: hashed.sha256 }));
            }
        }
        // Writes the two zero blocks that end an archive.
        builder.into_inner().map_err(archive(&criu))?.flush().map_err(archive(&criu))?;
        Ok(())
    }
}

impl Staging {
    /// Unpacks a tar of CRIU images (as [`Checkpoint::write_criu_tar`] or
    /// containerd writes it) into `criu/`, hashing each file as it is
    /// written and making it durable.
    ///
    /// The tar may come from anywhere: only regular files and directories
    /// are accepted, and only names that stay inside `criu/`.
    pub fn import_criu_tar(&mut self, tar: impl Read) -> Result<()> {
        let criu = self.criu_dir();
        let unreadable = |source| Error::Io { op: "read the CRIU image tar into", path: criu.clone(), source };
        let mut archive = tar::Archive::new(tar);
        for entry in archive.entries().map_err(unreadable)? {
            let mut entry = entry.map_err(unreadable)?;
            let raw = entry.path().map_err(unreadable)?.into_owned();
            let Some(rel) = relative_name(&raw)? else { continue };
            let dst = criu.join(&rel);
            match entry.header().entry_type() {
                EntryType::Directory => self.create_dir(&dst)?,
                EntryType::Regular | EntryType::Continuous => {
                    if let Some(parent) = dst.parent() {
                        self.create_dir(parent)?;
                    }
                    let size = entry.header().size().map_err(unreadable)?;
                    let src = PathBuf::from(format!("<tar>/{rel}"));
                    let hashed = hashing::write_hashing(&mut entry, size, &src, &dst)?;
                    self.insert_hashed(format!("{}/{rel}", layout::CRIU_DIR), hashed);
                }
                other => return Err(Error::UnsupportedFile { path: dst, kind: entry_kind(other) }),
            }
        }
        Ok(())
    }
}

/// The name of a tar entry relative to `criu/`, checked: `None` for the
/// directory itself (`./`).
fn relative_name(raw: &Path) -> Result<Option<String>> {
    let invalid = |reason| Error::InvalidPath { path: raw.to_string_lossy().into_owned(), reason };
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(name) => parts.push(name.to_str().ok_or_else(|| invalid("its name is not UTF-8"))?),
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(invalid("it leaves the image directory (absolute, or with '..')"));
            }
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    let rel = parts.join("/");
    layout::check_rel(&format!("{}/{rel}", layout::CRIU_DIR)).map_err(invalid)?;
    Ok(Some(rel))
}

fn entry_kind(t: EntryType) -> &'static str {
    match t {
        EntryType::Symlink => "symlink",
        EntryType::Link => "hard link",
        EntryType::Char | EntryType::Block => "device node",
        EntryType::Fifo => "fifo",
        _ => "tar entry of an unsupported type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        CheckpointStore,
        testing::{IMAGES, commit_info, committed},
    };

    fn store() -> (tempfile::TempDir, CheckpointStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().join("checkpoints")).unwrap();
        (dir, store)
    }

    /// (name, type, bytes) of every entry.
    fn entries(tar: &[u8]) -> Vec<(String, EntryType, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut bytes = Vec::new();
                e.read_to_end(&mut bytes).unwrap();
                (e.path().unwrap().to_str().unwrap().to_owned(), e.header().entry_type(), bytes)
            })
            .collect()
    }

    #[test]
    fn images_tar_is_a_plain_tar_of_the_files_in_name_order() {
        let (_dir, store) = store();
        let cp = committed(&store, "web-1");
        std::fs::create_dir(cp.criu_dir().join("sub")).unwrap();
        let mut tar = Vec::new();
        // An unlisted directory holds no file, so the images still verify.
        cp.write_criu_tar(&mut tar).unwrap();
        let got = entries(&tar);
        let mut want: Vec<(String, EntryType, Vec<u8>)> =
            IMAGES.iter().map(|(n, b)| (n.to_string(), EntryType::Regular, b.to_vec())).collect();
        want.push(("sub/".into(), EntryType::Directory, Vec::new()));
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, want);
        // Ends with the two zero blocks, as every tar must.
        assert!(tar.len() % 512 == 0 && tar[tar.len() - 1024..].iter().all(|b| *b == 0));
    }

    #[test]
    fn a_damaged_image_is_not_written_out() {
        let (_dir, store) = store();
        let cp = committed(&store, "web-1");
        std::fs::write(cp.criu_dir().join("pages-2.img"), [8; 4096]).unwrap();
        let err = cp.write_criu_tar(io::sink()).unwrap_err();
        assert!(err.to_string().contains("criu/pages-2.img is damaged (sha256 mismatch"), "{err}");
        std::fs::write(cp.criu_dir().join("stray.img"), b"x").unwrap();
        std::fs::write(cp.criu_dir().join("pages-2.img"), [9; 4096]).unwrap();
        let err = cp.write_criu_tar(io::sink()).unwrap_err();
        assert!(err.to_string().contains("unexpected file criu/stray.img"), "{err}");
    }

    #[test]
    fn a_tar_round_trips_into_a_new_checkpoint() {
        let (_dir, store) = store();
        let cp = committed(&store, "web-1");
        let mut tar = Vec::new();
        cp.write_criu_tar(&mut tar).unwrap();
        let mut staging = store.staging("web-2").unwrap();
        staging.import_criu_tar(&tar[..]).unwrap();
        let copy = staging.commit(commit_info(None)).unwrap();
        copy.verify().unwrap();
        let criu = |c: &Checkpoint| -> Vec<_> {
            c.manifest().files.iter().filter(|f| f.path.starts_with("criu/")).cloned().collect()
        };
        assert_eq!(criu(&copy), criu(&cp));
    }

    /// A tar as Go's archive/tar writes containerd's: "./"-less names,
    /// directories with a trailing slash, files in subdirectories.
    #[test]
    fn imports_nested_names_and_refuses_what_could_escape() {
        let (_dir, store) = store();
        let tar = |name: &str, t: EntryType| {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = Header::new_gnu();
            h.set_entry_type(t);
            h.set_size(if t == EntryType::Regular { 3 } else { 0 });
            h.set_mode(0o644);
            let data: &[u8] = if t == EntryType::Regular { b"abc" } else { b"" };
            if t == EntryType::Symlink {
                h.set_link_name("/etc").unwrap();
            }
            // set_path refuses '..', so write the raw name.
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, data).unwrap();
            b.into_inner().unwrap()
        };
        let mut staging = store.staging("nested").unwrap();
        staging.import_criu_tar(&tar("./", EntryType::Directory)[..]).unwrap();
        staging.import_criu_tar(&tar("a/b/pages-1.img", EntryType::Regular)[..]).unwrap();
        assert_eq!(std::fs::read(staging.criu_dir().join("a/b/pages-1.img")).unwrap(), b"abc");
        for (name, t, what) in [
            ("../x", EntryType::Regular, "leaves the image directory"),
            ("/etc/x", EntryType::Regular, "leaves the image directory"),
            ("link", EntryType::Symlink, "symlink"),
            ("null", EntryType::Char, "device node"),
        ] {
            let err = staging.import_criu_tar(&tar(name, t)[..]).unwrap_err();
            assert!(err.to_string().contains(what), "{name}: {err}");
        }
        let made = staging.commit(commit_info(None)).unwrap();
        assert_eq!(made.manifest().files.len(), 1);
        made.verify().unwrap();
    }

    #[test]
    fn add_file_from_streams_and_hashes() {
        let (_dir, store) = store();
        let mut staging = store.staging("streamed").unwrap();
        crate::testing::write_images(&staging.criu_dir());
        staging.add_file_from(layout::ROOTFS_DIFF_FILE, &[5u8; 10000][..]).unwrap();
        let made = staging.commit(commit_info(None)).unwrap();
        made.verify().unwrap();
        assert_eq!(made.rootfs_diff(), Some(made.dir().join(layout::ROOTFS_DIFF_FILE)));
        assert!(store.staging("x").unwrap().add_file_from("../x", io::empty()).is_err());
    }
}
