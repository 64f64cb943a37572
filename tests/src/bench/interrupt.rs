//! Clean-up when the run is interrupted (Ctrl-C, SIGTERM, SIGHUP), as the
//! bash scripts' traps did: the session's containerd instance is destroyed
//! (every task and container in it) and its work dir removed, or the
//! benchmark's local cluster taken down.
//!
//! The signals are blocked in every thread and taken by one thread with
//! sigwait(2), so the clean-up runs as ordinary code, not in a signal
//! handler. Children do not inherit the mask: std's `Command` resets it.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use containerd_migrate_tests::process;

use super::session::hack;

/// What to undo.
enum Undo {
    /// A session: its containerd instance's name and its work dir.
    Session(String, PathBuf),
    /// A local cluster (hack/cluster.sh) by name.
    Cluster(String),
}

static ACTIVE: Mutex<Option<Undo>> = Mutex::new(None);

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Blocks the signals and starts the thread that waits for them. Call first
/// thing in main, before any other thread exists (they inherit the mask).
pub fn install() {
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        let mut signal: libc::c_int = 0;
        if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
            return;
        }
        eprintln!("bench: interrupted (signal {signal}); cleaning up");
        match ACTIVE.lock().map(|mut a| a.take()).unwrap_or(None) {
            Some(Undo::Session(instance, work)) => {
                let _ = process::run_quietly(
                    hack("containerd.sh", &["destroy", &instance]),
                    Duration::from_secs(180),
                );
                let _ = std::fs::remove_dir_all(work);
            }
            Some(Undo::Cluster(name)) => {
                let mut down = hack("cluster.sh", &["down"]);
                down.env("CLUSTER_NAME", &name);
                let _ = process::run_quietly(down, Duration::from_secs(180));
            }
            None => {}
        }
        std::process::exit(128 + signal);
    });
}

/// Remembers what to clean up should the run be interrupted.
pub fn guard(instance: &str, work: PathBuf) {
    if let Ok(mut a) = ACTIVE.lock() {
        *a = Some(Undo::Session(instance.to_string(), work));
    }
}

/// Remembers to take cluster `name` down should the run be interrupted.
pub fn guard_cluster(name: &str) {
    if let Ok(mut a) = ACTIVE.lock() {
        *a = Some(Undo::Cluster(name.to_string()));
    }
}

/// The session or cluster cleaned up after itself: nothing left to do on a signal.
pub fn release() {
    if let Ok(mut a) = ACTIVE.lock() {
        *a = None;
    }
}
