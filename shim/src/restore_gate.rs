//! Checking a checkpoint's memory images while CRIU restores from them.
//!
//! Hashing the memory images (nearly all of a checkpoint's bytes) before
//! calling runc would put that time in front of every restore: 55 ms for the
//! 90 MiB of a JVM service, seconds for gigabytes. Instead a thread hashes
//! them while CRIU rebuilds the process tree, and CRIU is made to wait for
//! the verdict at "post-restore", the last stage before the restored
//! processes run: an action script reads it from a FIFO, and its non-zero
//! exit makes CRIU abort the restore and kill what it restored. So a
//! damaged checkpoint still never runs; it only fails later than before.
//! The caller also checks the verdict after runc returns, and refuses the
//! restore on a mismatch even if CRIU somehow did not wait.

use std::{
    fs::File,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    thread::JoinHandle,
};

use migrate_oci::DeferredDigests;
use nix::{sys::stat::Mode, unistd::mkfifo};

use crate::error::{Error, Result};

const SCRIPT: &str = "verify-memory.sh";
const FIFO: &str = "memory-verdict";
const OK: &str = "ok";

pub struct MemoryGate {
    script: PathBuf,
    /// The FIFO, open for reading and writing: CRIU's script can open it at
    /// any time without blocking, and the verdict written into it stays
    /// there until read, however late the script comes.
    _fifo: File,
    hashing: JoinHandle<Result<()>>,
}

impl MemoryGate {
    /// Starts hashing `digests` and writes the action script for CRIU into
    /// `work` (the restore's work directory).
    pub fn start(work: &Path, digests: DeferredDigests) -> Result<MemoryGate> {
        let fifo_path = work.join(FIFO);
        let quoted = shell_quote(&fifo_path)?;
        mkfifo(&fifo_path, Mode::S_IRUSR | Mode::S_IWUSR)
            .map_err(|e| Error::io(format!("create the FIFO {}", fifo_path.display()))(e.into()))?;
        let fifo = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&fifo_path)
            .map_err(Error::io(format!("open the FIFO {}", fifo_path.display())))?;
        let script = work.join(SCRIPT);
        let text = format!(
            "#!/bin/sh\n\
             # containerd-shim-migrate-v1: CRIU runs this at every stage of the restore.\n\
             # At post-restore, before the restored processes run, it waits for the\n\
             # shim's check of the memory images; a non-zero exit aborts the restore.\n\
             [ \"$CRTOOLS_SCRIPT_ACTION\" = post-restore ] || exit 0\n\
             read -r verdict < {quoted}\n\
             [ \"$verdict\" = {OK} ]\n"
        );
        std::fs::write(&script, text).map_err(Error::io(format!("write {}", script.display())))?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700))
            .map_err(Error::io(format!("make {} executable", script.display())))?;

        let mut writer = fifo.try_clone().map_err(Error::io("duplicate the verdict FIFO"))?;
        let hashing = std::thread::Builder::new()
            .name("verify-memory".into())
            .spawn(move || {
                let result = catch_unwind(AssertUnwindSafe(|| crate::hashed::verify(&digests).map_err(Error::from)))
                    .unwrap_or_else(|_| Err(Error::InvalidArgument("checking the memory images panicked".into())));
                // A line of a few bytes into a pipe nobody else writes to.
                let _ = writeln!(writer, "{}", if result.is_ok() { OK } else { "damaged" });
                result
            })
            .map_err(Error::io("start the thread that checks the memory images"))?;
        Ok(MemoryGate { script, _fifo: fifo, hashing })
    }

    /// The script to give CRIU as its action script.
    pub fn script(&self) -> &Path {
        &self.script
    }

    /// Whether the memory images match their digests; waits for the hashing.
    pub async fn verdict(self) -> Result<()> {
        let hashing = self.hashing;
        tokio::task::spawn_blocking(move || hashing.join())
            .await
            .map_err(|e| Error::io("wait for the check of the memory images")(std::io::Error::other(e)))?
            .unwrap_or_else(|_| Err(Error::InvalidArgument("checking the memory images panicked".into())))
    }
}

/// `path` in single quotes for sh; refused if it holds a quote itself.
fn shell_quote(path: &Path) -> Result<String> {
    match path.to_str() {
        Some(p) if !p.contains('\'') => Ok(format!("'{p}'")),
        _ => Err(Error::InvalidArgument(format!(
            "{} cannot be quoted for CRIU's action script; use a bundle path without quotes",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::testing::committed;

    fn run_script(gate: &MemoryGate, action: &str) -> bool {
        Command::new(gate.script()).env("CRTOOLS_SCRIPT_ACTION", action).status().unwrap().success()
    }

    #[tokio::test]
    async fn criu_waits_for_matching_memory_only_at_post_restore() {
        let (_dir, cp) = committed("gate-ok");
        let work = tempfile::tempdir().unwrap();
        let gate = MemoryGate::start(work.path(), cp.verify_deferring_memory().unwrap()).unwrap();
        assert!(run_script(&gate, "pre-restore"));
        assert!(run_script(&gate, "post-restore"));
        gate.verdict().await.unwrap();
    }

    #[tokio::test]
    async fn damaged_memory_fails_the_script_and_the_verdict() {
        let (_dir, cp) = committed("gate-bad");
        let pages = cp.criu_dir().join("pages-1.img");
        let mut bytes = std::fs::read(&pages).unwrap();
        bytes[1] ^= 1;
        std::fs::write(&pages, bytes).unwrap();
        let work = tempfile::tempdir().unwrap();
        let gate = MemoryGate::start(work.path(), cp.verify_deferring_memory().unwrap()).unwrap();
        // Other stages pass: only post-restore can abort a restore.
        assert!(run_script(&gate, "setup-namespaces"));
        assert!(!run_script(&gate, "post-restore"));
        let err = gate.verdict().await.unwrap_err();
        assert!(err.to_string().contains("criu/pages-1.img is damaged"), "{err}");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote(Path::new("/run/b c/x")).unwrap(), "'/run/b c/x'");
        assert!(shell_quote(Path::new("/run/it's")).is_err());
    }
}
