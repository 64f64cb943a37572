//! CRIU's replies about this host, remembered for the boot.
//!
//! How the shim checkpoints and restores depends on what CRIU says of this
//! host: its version, and `criu check --feature ...`. containerd starts a
//! shim per container, and each question costs a CRIU run (10–15 ms here,
//! most of it loading CRIU's libraries). On a restored start that run sat
//! between containerd's Start and `runc restore`, and the next one beside
//! the restored application's first steps. The replies cannot change while
//! the host runs the same kernel and the same CRIU, so every shim shares
//! one book of them: a book of another boot, or of another `criu` binary
//! (path, inode, size, change time), is not read, so a new kernel or a CRIU
//! upgrade is asked again. Two shims writing at once may drop one reply;
//! it is asked again later, nothing worse.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use log::warn;
use serde::{Deserialize, Serialize};

use super::{
    Error,
    command::{Stdio3, run},
    kerndat::write_renamed,
};

const BOOK: &str = "/run/containerd-migrate/criu-replies.json";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// What CRIU printed and how it exited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// CRIU's reply to `criu ARGS`, from this boot's book when it is there.
pub async fn ask(args: &[&str]) -> Result<Reply, Error> {
    let question = args.join(" ");
    let book = Path::new(BOOK);
    let asker = Asker::here();
    if let Some(reply) = asker.as_ref().and_then(|a| a.recall(book, &question)) {
        return Ok(reply);
    }
    let out =
        run(Path::new("criu"), args.iter().map(OsString::from).collect(), Stdio3::Captured, None, &[], None).await?;
    let reply = Reply {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    if let Some(asker) = asker
        && let Err(e) = asker.remember(book, &question, &reply)
    {
        warn!("cannot keep CRIU's reply to `criu {question}` in {BOOK}: {e}; the next shim asks again");
    }
    Ok(reply)
}

/// The `criu` runc runs: the first on PATH, as runc looks it up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Binary {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    ctime_ns: i128,
}

impl Binary {
    fn on_path(path_var: &OsString) -> Option<Binary> {
        std::env::split_paths(path_var).find_map(|dir| {
            let path = dir.join("criu");
            let meta = std::fs::metadata(&path).ok().filter(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)?;
            Some(Binary {
                path,
                dev: meta.dev(),
                ino: meta.ino(),
                size: meta.size(),
                ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            })
        })
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Book {
    boot: String,
    criu: Option<Binary>,
    replies: BTreeMap<String, Reply>,
}

/// Who asks: this boot, this CRIU. Without either known nothing is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Asker {
    boot: String,
    criu: Binary,
}

impl Asker {
    fn here() -> Option<Asker> {
        let boot = std::fs::read_to_string(BOOT_ID).ok()?.trim().to_string();
        let criu = Binary::on_path(&std::env::var_os("PATH")?)?;
        Some(Asker { boot, criu })
    }

    /// The book at `path` if it was written on this boot for this CRIU.
    fn book(&self, path: &Path) -> Option<Book> {
        let book: Book = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        (book.boot == self.boot && book.criu.as_ref() == Some(&self.criu)).then_some(book)
    }

    fn recall(&self, path: &Path, question: &str) -> Option<Reply> {
        self.book(path)?.replies.remove(question)
    }

    fn remember(&self, path: &Path, question: &str, reply: &Reply) -> std::io::Result<()> {
        let mut book = self.book(path).unwrap_or_else(|| Book {
            boot: self.boot.clone(),
            criu: Some(self.criu.clone()),
            ..Default::default()
        });
        book.replies.insert(question.to_string(), reply.clone());
        write_renamed(path, &serde_json::to_vec_pretty(&book).map_err(std::io::Error::other)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn criu_in(dir: &Path) -> OsString {
        let bin = dir.join("criu");
        std::fs::write(&bin, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir.as_os_str().to_owned()
    }

    #[test]
    fn the_first_executable_criu_on_path_is_the_one() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("criu"), b"not executable").unwrap();
        criu_in(b.path());
        let path = std::env::join_paths([a.path(), b.path()]).unwrap();
        assert_eq!(Binary::on_path(&path).unwrap().path, b.path().join("criu"));
        assert_eq!(Binary::on_path(&a.path().as_os_str().to_owned()), None);
    }

    #[test]
    fn replies_hold_for_the_same_boot_and_binary_only() {
        let dir = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        let book = dir.path().join("replies.json");
        let criu = Binary::on_path(&criu_in(bin.path())).unwrap();
        let asker = Asker { boot: "boot-1".into(), criu: criu.clone() };
        let version = Reply { status: 0, stdout: "Version: 4.2.1\n".into(), stderr: String::new() };
        let check = Reply { status: 1, stdout: String::new(), stderr: "Dirty tracking is OFF\n".into() };

        assert_eq!(asker.recall(&book, "--version"), None, "nothing kept yet");
        asker.remember(&book, "--version", &version).unwrap();
        asker.remember(&book, "check --feature mem_dirty_track", &check).unwrap();
        assert_eq!(asker.recall(&book, "--version"), Some(version.clone()));
        assert_eq!(asker.recall(&book, "check --feature mem_dirty_track"), Some(check));

        let rebooted = Asker { boot: "boot-2".into(), criu: criu.clone() };
        assert_eq!(rebooted.recall(&book, "--version"), None, "a reply of another boot");
        // A CRIU upgrade replaces the binary: another inode, size or change time.
        std::fs::remove_file(&criu.path).unwrap();
        std::fs::write(&criu.path, b"#!/bin/sh\n# a newer CRIU\n").unwrap();
        std::fs::set_permissions(&criu.path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let upgraded =
            Asker { boot: "boot-1".into(), criu: Binary::on_path(&bin.path().as_os_str().to_owned()).unwrap() };
        assert_ne!(upgraded.criu, criu);
        assert_eq!(upgraded.recall(&book, "--version"), None, "a reply of another CRIU");
        // Its first reply starts a new book rather than mixing two CRIUs'.
        upgraded.remember(&book, "--version", &version).unwrap();
        assert_eq!(asker.recall(&book, "check --feature mem_dirty_track"), None);
    }

    #[test]
    fn a_damaged_book_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        let book = dir.path().join("replies.json");
        std::fs::write(&book, b"{ half a book").unwrap();
        let asker = Asker { boot: "b".into(), criu: Binary::on_path(&criu_in(bin.path())).unwrap() };
        assert_eq!(asker.recall(&book, "--version"), None);
        let reply = Reply { status: 0, stdout: "Version: 3.19\n".into(), stderr: String::new() };
        asker.remember(&book, "--version", &reply).unwrap();
        assert_eq!(asker.recall(&book, "--version"), Some(reply));
    }
}
