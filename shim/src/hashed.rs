//! Memory images this host has already hashed, this boot.
//!
//! A restore checks a checkpoint's memory images against their digests
//! (`restore_gate`): for the 85 MiB of a JVM service, about 55 ms of one of
//! this host's two CPUs beside CRIU, and CRIU waiting for the verdict. The
//! clones of one ready point are restored from the same files again and
//! again; after the first, the hash can only repeat itself. So a match is
//! remembered by the files' [`FilesStamp`] (device, inode, size, change
//! time and expected digest of each), and files with a remembered stamp are
//! not hashed again. The writer of a checkpoint remembers it as written:
//! it hashed the bytes on their way in.
//!
//! What a stamp cannot see is a change below the file system (a bit flipped
//! on the disk after the hash). The book is therefore this boot's only (a
//! directory per boot id, the others removed), kept root's only, and holds
//! only checkpoints hashed on this host.

use std::{
    io::ErrorKind,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use log::{debug, warn};
use migrate_oci::{Checkpoint, DeferredDigests, FilesStamp};

const ROOT: &str = "/run/containerd-migrate/hashed";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// Whether these very files were hashed and matched on this boot.
pub fn already(digests: &DeferredDigests) -> bool {
    match (Book::here(), digests.stamp()) {
        (Some(book), Ok(Some(stamp))) => book.knows(&stamp),
        _ => false,
    }
}

/// Hashes `digests`' files, and remembers a match.
pub fn verify(digests: &DeferredDigests) -> migrate_oci::Result<()> {
    // The stamp first: a change during the hash must not be remembered.
    let stamp = digests.stamp();
    digests.verify()?;
    match stamp {
        Ok(Some(stamp)) => remember(&stamp),
        Ok(None) => debug!("memory images changed too recently to remember their hash"),
        Err(e) => debug!("no stamp of the memory images: {e}"),
    }
    Ok(())
}

/// Remembers the memory images of `checkpoint`, which this shim just wrote
/// and hashed, as hashed.
pub fn written(checkpoint: &Checkpoint) {
    match checkpoint.memory_stamp() {
        Ok(Some(stamp)) => remember(&stamp),
        Ok(None) => debug!("{}: written too recently to remember its hash", checkpoint.manifest().id),
        Err(e) => debug!("{}: no stamp of its memory images: {e}", checkpoint.manifest().id),
    }
}

fn remember(stamp: &FilesStamp) {
    if let Some(book) = Book::here()
        && let Err(e) = book.remember(stamp)
    {
        warn!(
            "cannot remember a hash of memory images in {}: {e}; they are hashed again next time",
            book.dir.display()
        );
    }
}

/// One boot's stamps: an empty file each, named by the stamp.
struct Book {
    root: PathBuf,
    dir: PathBuf,
}

impl Book {
    fn here() -> Option<Book> {
        let boot = std::fs::read_to_string(BOOT_ID).ok()?;
        Some(Book::at(Path::new(ROOT), boot.trim()))
    }

    fn at(root: &Path, boot: &str) -> Book {
        Book { root: root.to_owned(), dir: root.join(boot) }
    }

    fn knows(&self, stamp: &FilesStamp) -> bool {
        self.dir.join(stamp.to_string()).is_file()
    }

    fn remember(&self, stamp: &FilesStamp) -> std::io::Result<()> {
        if !self.dir.is_dir() {
            self.start()?;
        }
        // Empty and created whole: a name is all there is to it.
        match std::fs::File::create_new(self.dir.join(stamp.to_string())) {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    }

    /// Creates this boot's directory, root's only, and drops other boots'.
    fn start(&self) -> std::io::Result<()> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.root)?;
        match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        for entry in std::fs::read_dir(&self.root)?.flatten() {
            if entry.path() != self.dir {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::testing::committed;

    #[test]
    fn a_book_holds_its_boots_stamps_only() {
        let root = tempfile::tempdir().unwrap();
        let (_store, checkpoint) = committed("web-1");
        let stamp = checkpoint.memory_stamp().unwrap().expect("settled");
        let digests = checkpoint.verify_deferring_memory().unwrap();
        assert_eq!(digests.stamp().unwrap(), Some(stamp));

        let book = Book::at(root.path(), "boot-1");
        assert!(!book.knows(&stamp));
        book.remember(&stamp).unwrap();
        book.remember(&stamp).unwrap();
        assert!(book.knows(&stamp));
        let mode = std::fs::metadata(root.path().join("boot-1")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        // The next boot starts afresh and clears the last one's.
        let next = Book::at(root.path(), "boot-2");
        assert!(!next.knows(&stamp));
        next.remember(&stamp).unwrap();
        assert!(!root.path().join("boot-1").exists());
    }
}
