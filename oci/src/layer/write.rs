//! An overlayfs upperdir, written as an OCI layer tar.
//!
//! overlayfs records a deleted file as a character device 0/0 and a
//! directory that hides the layers below with the xattr
//! `trusted.overlay.opaque=y`; the OCI layer format spells these `.wh.NAME`
//! and `DIR/.wh..wh..opq`. Only `trusted.*` is read: containerd mounts
//! rootful overlays, and a `user.overlay.*` attribute there is one the
//! container's own processes may have set.

use std::{
    collections::HashMap,
    ffi::OsString,
    fs::{File, Metadata},
    io::{self, Read, Write},
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
};

use tar::{EntryType, Header};

use super::{OPAQUE_WHITEOUT, WHITEOUT_PREFIX};
use crate::{
    error::{Error, Result},
    xattr,
};

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Set on a directory renamed across layers (`redirect_dir=on`): its
/// contents live in the lower layers under another name.
const REDIRECT_XATTR: &str = "trusted.overlay.redirect";
/// Set on a file copied up without its data (`metacopy=on`): its bytes
/// live in the lower layers.
const METACOPY_XATTR: &str = "trusted.overlay.metacopy";

/// Writes the tree below `upperdir` to `out` as a layer tar, entries in name
/// order so that equal trees give equal tars.
pub(crate) fn write_layer(upperdir: &Path, out: &mut impl Write) -> Result<()> {
    let mut layer = LayerWriter { builder: tar::Builder::new(out), hardlinks: HashMap::new() };
    layer.dir_contents(upperdir, Path::new(""))?;
    // into_inner writes the two zero blocks that end an archive.
    layer.builder.into_inner().map_err(Error::io("write layer of", upperdir))?;
    Ok(())
}

/// Writes the tree below `upperdir` as a layer tar into the new file
/// `dest`, readable by root only (a container's files may be secrets), for
/// [`crate::Staging::add_file_from`] to take later: how a rootfs diff is
/// taken while the container is paused, into RAM, and hashed and made
/// durable once it runs again.
pub fn write_rootfs_diff(upperdir: &Path, dest: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file =
        File::options().write(true).create_new(true).mode(0o600).open(dest).map_err(Error::io("create", dest))?;
    let mut out = io::BufWriter::with_capacity(1 << 20, file);
    write_layer(upperdir, &mut out)?;
    out.flush().map_err(Error::io("write", dest))
}

struct LayerWriter<W: Write> {
    builder: tar::Builder<W>,
    /// (device, inode) of files with several links -> the path archived first.
    hardlinks: HashMap<(u64, u64), PathBuf>,
}

impl<W: Write> LayerWriter<W> {
    fn dir_contents(&mut self, dir: &Path, rel: &Path) -> Result<()> {
        let mut names: Vec<OsString> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(Error::io("read directory", dir))? {
            names.push(entry.map_err(Error::io("read directory", dir))?.file_name());
        }
        names.sort();
        for name in names {
            self.entry(&dir.join(&name), &rel.join(&name))?;
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path, rel: &Path) -> Result<()> {
        let meta = path.symlink_metadata().map_err(Error::io("stat", path))?;
        let t = meta.file_type();
        let append = |e| Error::Io { op: "archive", path: path.to_owned(), source: e };
        if t.is_char_device() && meta.rdev() == 0 {
            let name = rel.file_name().expect("a walked entry has a name");
            let mut whiteout_name = OsString::from(WHITEOUT_PREFIX);
            whiteout_name.push(name);
            let mut h = header(&meta, EntryType::Regular);
            return self.builder.append_data(&mut h, rel.with_file_name(whiteout_name), io::empty()).map_err(append);
        }
        if t.is_dir() {
            if xattr_of(path, REDIRECT_XATTR)?.is_some() {
                return Err(Error::UnsupportedOverlay { path: path.to_owned(), feature: "redirect_dir" });
            }
            let mut h = header(&meta, EntryType::Directory);
            self.builder.append_data(&mut h, rel, io::empty()).map_err(append)?;
            if xattr_of(path, OPAQUE_XATTR)?.as_deref() == Some(b"y") {
                let mut h = header(&meta, EntryType::Regular);
                self.builder.append_data(&mut h, rel.join(OPAQUE_WHITEOUT), io::empty()).map_err(append)?;
            }
            return self.dir_contents(path, rel);
        }
        if t.is_file() {
            if xattr_of(path, METACOPY_XATTR)?.is_some() {
                return Err(Error::UnsupportedOverlay { path: path.to_owned(), feature: "metacopy" });
            }
            if meta.nlink() > 1 {
                if let Some(first) = self.hardlinks.get(&(meta.dev(), meta.ino())) {
                    let mut h = header(&meta, EntryType::Link);
                    return self.builder.append_link(&mut h, rel, first).map_err(append);
                }
                self.hardlinks.insert((meta.dev(), meta.ino()), rel.to_owned());
            }
            let mut h = header(&meta, EntryType::Regular);
            h.set_size(meta.len());
            let file = File::open(path).map_err(Error::io("open", path))?;
            let data = Exactly { file, left: meta.len() };
            return self.builder.append_data(&mut h, rel, data).map_err(append);
        }
        if t.is_symlink() {
            let target = std::fs::read_link(path).map_err(Error::io("read link", path))?;
            let mut h = header(&meta, EntryType::Symlink);
            return self.builder.append_link(&mut h, rel, target).map_err(append);
        }
        let kind = if t.is_char_device() {
            EntryType::Char
        } else if t.is_block_device() {
            EntryType::Block
        } else if t.is_fifo() {
            EntryType::Fifo
        } else {
            // A socket: tar cannot hold one, and its listener re-creates it
            // (CRIU does so for the sockets it restores).
            log::debug!("not archiving socket {}", path.display());
            return Ok(());
        };
        let mut h = header(&meta, kind);
        let rdev = meta.rdev();
        let major =
            u32::try_from(nix::sys::stat::major(rdev)).map_err(|_| append(io::ErrorKind::InvalidData.into()))?;
        let minor =
            u32::try_from(nix::sys::stat::minor(rdev)).map_err(|_| append(io::ErrorKind::InvalidData.into()))?;
        h.set_device_major(major).map_err(append)?;
        h.set_device_minor(minor).map_err(append)?;
        self.builder.append_data(&mut h, rel, io::empty()).map_err(append)
    }
}

fn header(meta: &Metadata, kind: EntryType) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(meta.uid().into());
    h.set_gid(meta.gid().into());
    // Before 1970 happens only in broken images; 0 is as good as any.
    h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    h.set_size(0);
    h
}

fn xattr_of(path: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    xattr::get(path, name).map_err(Error::io("read xattrs of", path))
}

/// The bytes of a file whose size a tar header has already announced. A
/// file that shrinks meanwhile (the container may be running) is an error:
/// a short entry would shift every later one and break the archive. A file
/// that grows is cut at the announced size.
struct Exactly {
    file: File,
    left: u64,
}

impl Read for Exactly {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while it was archived"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
