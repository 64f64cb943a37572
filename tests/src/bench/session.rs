//! One benchmark run's surroundings: the private containerd it talks to,
//! private copies of the shim and migratectl (the tree is shared; a rebuild
//! during the run must not mix two builds), and a work dir. Dropping the
//! session destroys the instance (every task and container in it) and
//! removes the work dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use containerd_migrate_tests::ctr::{self, Ctr};
use containerd_migrate_tests::fixture::{self, Instance, MIGRATE_SHIM_BINARY};
use containerd_migrate_tests::process::{self, Output};
use containerd_migrate_tests::{host, migratectl};

use super::{Common, say};

/// Where `migratectl restore` sends a restored container's output.
pub const RESTORE_LOG_DIR: &str = "/run/containerd-migrate/logs";

/// What a benchmark needs besides containerd and the shim.
pub struct Needs<'a> {
    /// The benchmark's name: `bench-<name>` instance and work dir, `<name>.json`.
    pub name: &'a str,
    pub migratectl: bool,
    /// Give containerd a private XDG_RUNTIME_DIR ([`Session::runtime_dir`]).
    pub private_runtime_dir: bool,
}

/// The binaries the run uses, copied from target/release at the start.
#[derive(Debug)]
pub struct Binaries {
    pub dir: PathBuf,
    pub shim_built_as: PathBuf,
    pub shim_sha256: String,
    pub migratectl: Option<PathBuf>,
    pub migratectl_sha256: Option<String>,
    /// Set when cargo build failed and the binaries already there were used.
    pub build_note: Option<String>,
}

pub struct Session {
    pub name: String,
    pub instance: Instance,
    pub ctr: Ctr,
    pub work: PathBuf,
    pub bins: Binaries,
    pub out: PathBuf,
    keep_work: bool,
}

impl Session {
    /// Builds (unless `--skip-build`), copies the binaries, makes the work
    /// dir and starts a fresh private containerd with the test image.
    pub fn start(common: &Common, needs: Needs) -> Result<Session> {
        if !host::is_root() {
            bail!("run as root");
        }
        for tool in ["ctr", "containerd"] {
            if host::which(tool).is_none() {
                bail!("{tool} not found (hack/setup.sh)");
            }
        }
        let repo = fixture::repo_root();
        let build_note = if common.skip_build {
            None
        } else {
            super::build_workspace()
        };
        std::fs::create_dir_all(&common.work_base)
            .with_context(|| format!("creating {}", common.work_base.display()))?;
        let work = common
            .work_base
            .join(format!("bench-{}.{}", needs.name, std::process::id()));
        std::fs::create_dir_all(work.join("bin"))
            .with_context(|| format!("creating {}", work.display()))?;
        let mut session_work = WorkDir(Some(work.clone()));

        let shim_built_as = repo.join("target/release").join(MIGRATE_SHIM_BINARY);
        let shim = copy_binary(&shim_built_as, &work.join("bin"))?;
        let (migratectl, migratectl_sha256) = if needs.migratectl {
            let built = migratectl::binary().context(
                "migratectl missing (cargo build --release -p containerd-migrate-coordinator)",
            )?;
            let copy = copy_binary(&built, &work.join("bin"))?;
            let sha = sha256(&copy);
            (Some(copy), Some(sha))
        } else {
            (None, None)
        };
        let bins = Binaries {
            dir: work.join("bin"),
            shim_built_as,
            shim_sha256: sha256(&shim),
            migratectl,
            migratectl_sha256,
            build_note,
        };

        if !repo.join("target/images/testbox.tar").is_file() {
            say("building the test image");
            let out = process::run(
                hack("images.sh", &["build"]),
                None,
                Duration::from_secs(600),
            );
            if !out.success() {
                bail!("building the test image failed\n{out}");
            }
        }
        let name = common
            .instance
            .clone()
            .unwrap_or_else(|| format!("bench-{}", needs.name));
        let runtime_dir = work.join("containerd-tmp");
        let mut env: Vec<(&str, &Path)> = vec![("SHIM_DIR", bins.dir.as_path())];
        if needs.private_runtime_dir {
            std::fs::create_dir_all(&runtime_dir)?;
            env.push(("XDG_RUNTIME_DIR", runtime_dir.as_path()));
        }
        super::interrupt::guard(&name, work.clone());
        let instance = Instance::start_with_env(&name, &env).map_err(|e| {
            super::interrupt::release();
            anyhow::Error::msg(e)
        })?;
        let ctr = instance.ctr().clone();
        session_work.0 = None;
        Ok(Session {
            name: needs.name.to_string(),
            instance,
            ctr,
            work,
            bins,
            out: common
                .out
                .clone()
                .unwrap_or_else(|| super::report::default_out(needs.name)),
            keep_work: false,
        })
    }

    /// Leave the work dir in place at the end (its path is printed).
    pub fn keep_work(&mut self) {
        self.keep_work = true;
    }

    /// containerd's XDG_RUNTIME_DIR when [`Needs::private_runtime_dir`] asked for one.
    pub fn runtime_dir(&self) -> PathBuf {
        self.work.join("containerd-tmp")
    }

    /// `ctr ARGS` with a deadline; a timeout is an error.
    pub fn run_ctr(&self, args: &[&str], timeout: Duration) -> Result<Output, String> {
        self.ctr.run_within(args, timeout)
    }

    /// `migratectl --address ADDR ARGS` with a deadline.
    pub fn migratectl(&self, args: &[&str], timeout: Duration) -> Result<Output, String> {
        let bin = self
            .bins
            .migratectl
            .as_ref()
            .ok_or("this benchmark has no migratectl")?;
        let mut cmd = Command::new(bin);
        cmd.arg("--address").arg(self.ctr.address()).args(args);
        process::run_within(cmd, timeout)
    }

    /// The status column of `ctr tasks ls` for `id` (RUNNING, PAUSED, ...).
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self
            .run_ctr(&["tasks", "ls"], Duration::from_secs(10))
            .ok()?;
        ctr::parse_task_list(&out.stdout_str())
            .ok()?
            .into_iter()
            .find(|t| t.id == id)
            .map(|t| t.status)
    }

    /// The task status for messages: "RUNNING", or "gone".
    pub fn status_word(&self, id: &str) -> String {
        self.task_status(id).unwrap_or_else(|| "gone".into())
    }

    /// Kills and deletes containers (tasks first); quiet, bounded, never fails.
    pub fn remove(&self, ids: &[&str]) {
        let quiet = |args: &[&str]| {
            let _ = process::run_quietly(self.ctr.command(args), Duration::from_secs(10));
        };
        for id in ids {
            quiet(&["tasks", "kill", "--signal", "SIGKILL", id]);
        }
        for id in ids {
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline
                && matches!(
                    self.task_status(id).as_deref(),
                    Some("RUNNING" | "PAUSED" | "CREATED")
                )
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            quiet(&["tasks", "delete", "--force", id]);
            quiet(&["containers", "rm", id]);
            let _ = std::fs::remove_file(Path::new(RESTORE_LOG_DIR).join(format!("{id}.log")));
        }
    }

    /// A file in container `id`'s rootfs, seen from the host (no process in
    /// the container, so it can be polled every few ms).
    pub fn rootfs_file(&self, id: &str, path: &str) -> PathBuf {
        self.instance
            .task_state_dir()
            .join(id)
            .join("rootfs")
            .join(path.trim_start_matches('/'))
    }

    /// The host pid of container `id`'s init process, from its bundle.
    pub fn init_pid(&self, id: &str) -> Option<u32> {
        let path = self.instance.task_state_dir().join(id).join("init.pid");
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// A PNG beside the JSON: `<out dir>/<name>-<what>.png`.
    pub fn plot_path(&self, what: &str) -> PathBuf {
        self.out.with_file_name(format!("{}-{what}.png", self.name))
    }

    /// The machine description plus what this session ran and the load
    /// before and after.
    pub fn machine(
        &self,
        git_paths: &[&str],
        load_before: &str,
        load_after: &str,
    ) -> serde_json::Value {
        let mut m = super::machine::describe(git_paths);
        m["loadavg_before"] = load_before.into();
        m["loadavg_after"] = load_after.into();
        m["build_note"] = self.bins.build_note.clone().into();
        m["migrate_shim"] = serde_json::json!({
            "built_as": self.bins.shim_built_as,
            "sha256": self.bins.shim_sha256,
            "run_from": "a private copy, so a rebuild during the run cannot mix builds",
        });
        if let Some(sha) = &self.bins.migratectl_sha256 {
            m["migratectl"] = serde_json::json!({ "sha256": sha });
        }
        m
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.instance.destroy();
        super::interrupt::release();
        if self.keep_work {
            say(format!("kept {}", self.work.display()));
        } else {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}

/// Removes a work dir unless disarmed (`.0 = None`) once the session owns it.
struct WorkDir(Option<PathBuf>);

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn copy_binary(from: &Path, dir: &Path) -> Result<PathBuf> {
    if !host::is_executable(from) {
        bail!(
            "{} missing (cargo build --release --workspace)",
            from.display()
        );
    }
    let to = dir.join(from.file_name().context("a binary has a file name")?);
    std::fs::copy(from, &to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(to)
}

/// sha256sum of a file, or "unknown".
pub fn sha256(path: &Path) -> String {
    super::machine::output(&["sha256sum", &path.display().to_string()])
        .split_whitespace()
        .next()
        .unwrap_or("unknown")
        .to_string()
}

/// `bash <repo>/hack/SCRIPT ARGS`.
pub fn hack(script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(fixture::repo_root().join("hack").join(script))
        .args(args);
    cmd
}

/// Apparent size of everything under `path` (files, directories, links),
/// as `du -sb` counts it.
pub fn du_bytes(path: &Path) -> Option<u64> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let mut total = meta.len();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).ok()?.flatten() {
            total += du_bytes(&entry.path()).unwrap_or(0);
        }
    }
    Some(total)
}
