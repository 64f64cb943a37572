//! The private containerd a test binary talks to, the prerequisite check,
//! and per-scenario container ids with clean-up guards.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::ctr::Ctr;
use crate::host;
use crate::process::{self, Background, Output, Stdin};
use crate::pty::PtyChild;

/// The reference runtime.
pub const RUNC_V2: &str = "io.containerd.runc.v2";
/// The runtime under test.
pub const MIGRATE_V1: &str = "io.containerd.migrate.v1";
/// Binary containerd looks up on its PATH for [`MIGRATE_V1`].
pub const MIGRATE_SHIM_BINARY: &str = "containerd-shim-migrate-v1";
/// The test image hack/images.sh imports: busybox plus memtick and echo-server.
pub const IMAGE: &str = "localhost/containerd-migrate/testbox:latest";

/// Where hack/containerd.sh keeps the instances' sockets, state and logs.
const RUN_BASE: &str = "/run/containerd-migrate";

/// Deadline for starting or stopping a containerd instance (includes the
/// image import on first start).
const INSTANCE_TIMEOUT: Duration = Duration::from_secs(180);

/// The repository root (the workspace that holds tests/ and hack/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where hack/containerd.sh takes the shim from: `$SHIM_DIR`, else
/// `<repo>/target/release`.
pub fn shim_dir() -> PathBuf {
    std::env::var_os("SHIM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release"))
}

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// What this machine lacks to run scenarios for `runtime`, if anything.
pub fn missing_prerequisites(runtime: &str) -> Vec<String> {
    let mut missing = Vec::new();
    if !host::is_root() {
        missing.push("root (the scenarios start containerd and containers)".to_string());
    }
    for tool in ["containerd", "ctr", "runc", "containerd-shim-runc-v2"] {
        if host::which(tool).is_none() {
            missing.push(format!("`{tool}` on PATH"));
        }
    }
    for script in ["hack/containerd.sh", "hack/images.sh"] {
        if !repo_root().join(script).is_file() {
            missing.push(format!("{script} in the repository"));
        }
    }
    let image = repo_root().join("target/images/testbox.tar");
    if !image.is_file() {
        missing.push(format!(
            "the test image {} (hack/images.sh build)",
            image.display()
        ));
    }
    if runtime == MIGRATE_V1 {
        let shim = shim_dir().join(MIGRATE_SHIM_BINARY);
        if !host::is_executable(&shim) {
            missing.push(format!(
                "the shim {} (cargo build --release -p {MIGRATE_SHIM_BINARY})",
                shim.display()
            ));
        }
    }
    missing
}

/// The one place that decides between skipping and failing: with `CI=true`
/// a missing prerequisite fails the test, elsewhere it prints a
/// "skipping: ..." line to stderr and the test returns early.
/// Returns true when the test may go on.
#[track_caller]
pub fn prerequisites_met(runtime: &str, test: &str) -> bool {
    let missing = missing_prerequisites(runtime);
    if missing.is_empty() {
        return true;
    }
    let reason = format!("{test} [{runtime}] needs {}", missing.join(", "));
    unavailable(&reason);
    false
}

/// Fails the test with `reason` under `CI=true`, else prints why it is
/// skipped; for suites with prerequisites of their own (the cluster).
#[track_caller]
pub fn unavailable(reason: &str) {
    if in_ci() {
        panic!(
            "{reason}; run hack/setup.sh (as root) to install and build everything the suite needs"
        );
    }
    // Straight to stderr, past the test harness's capture of `eprintln!`,
    // so the skip shows even though the test passes.
    let line = format!("skipping: {reason}; run hack/setup.sh (as root) to set this machine up\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

fn hack(script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("hack").join(script)).args(args);
    cmd.env("SHIM_DIR", shim_dir());
    cmd
}

/// A private containerd started with hack/containerd.sh, the test image
/// imported into it.
#[derive(Debug)]
pub struct Instance {
    name: String,
    ctr: Ctr,
}

impl Instance {
    /// Starts instance `name` (replacing what a killed earlier run may have
    /// left under that name) and imports the test image.
    pub fn start(name: &str) -> Result<Instance, String> {
        Instance::start_with_env(name, &[])
    }

    /// Like [`Instance::start`], with extra environment for containerd (and
    /// so for the shims it starts), e.g. `SHIM_DIR` or `XDG_RUNTIME_DIR`.
    pub fn start_with_env(name: &str, env: &[(&str, &Path)]) -> Result<Instance, String> {
        // A previous run that was killed never got to destroy its instance.
        let _ = process::run_quietly(hack("containerd.sh", &["destroy", name]), INSTANCE_TIMEOUT);
        let mut start = hack("containerd.sh", &["start", name]);
        for (key, value) in env {
            start.env(key, value);
        }
        let address = containerd_address(name, start)?;
        let import = process::run(
            hack("images.sh", &["import", &address]),
            None,
            INSTANCE_TIMEOUT,
        );
        if !import.success() {
            return Err(format!("importing the test image failed\n{import}"));
        }
        Ok(Instance {
            name: name.to_string(),
            ctr: Ctr::new(address),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ctr(&self) -> &Ctr {
        &self.ctr
    }

    /// The bundles of the instance's tasks in the default namespace
    /// (hack/containerd.sh's layout): `<dir>/<id>/rootfs`, `<id>/init.pid`.
    pub fn task_state_dir(&self) -> PathBuf {
        Path::new(RUN_BASE)
            .join(&self.name)
            .join("state/io.containerd.runtime.v2.task")
            .join(crate::ctr::NAMESPACE)
    }

    /// containerd's log, where the shims' log lines end up too.
    pub fn containerd_log(&self) -> PathBuf {
        Path::new(RUN_BASE).join(&self.name).join("containerd.log")
    }

    /// Stops containerd only; shims and containers keep running.
    #[track_caller]
    pub fn stop(&self) {
        process::run(
            hack("containerd.sh", &["stop", &self.name]),
            None,
            INSTANCE_TIMEOUT,
        )
        .expect_success();
    }

    /// Starts a stopped instance again; it must come back on the same socket.
    #[track_caller]
    pub fn start_again(&self) {
        let address = start_containerd(&self.name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            address,
            self.ctr.address(),
            "containerd came back on another socket"
        );
    }

    /// Kills every task, deletes the containers, stops containerd and
    /// removes the instance's directories.
    pub fn destroy(&self) {
        if std::env::var_os("CONTAINERD_MIGRATE_KEEP_INSTANCE").is_some() {
            eprintln!(
                "keeping containerd instance {} at {}",
                self.name,
                self.ctr.address()
            );
            return;
        }
        match process::run_quietly(
            hack("containerd.sh", &["destroy", &self.name]),
            INSTANCE_TIMEOUT,
        ) {
            Some(out) if out.success() => {}
            Some(out) => eprintln!("destroying containerd instance {} failed\n{out}", self.name),
            None => eprintln!("destroying containerd instance {} failed", self.name),
        }
    }
}

fn start_containerd(name: &str) -> Result<String, String> {
    containerd_address(name, hack("containerd.sh", &["start", name]))
}

/// Runs `hack/containerd.sh start NAME` as given and returns the socket path
/// it prints.
fn containerd_address(name: &str, start: Command) -> Result<String, String> {
    let out = process::run(start, None, INSTANCE_TIMEOUT);
    if !out.success() {
        return Err(format!("starting containerd instance {name} failed\n{out}"));
    }
    match out
        .stdout_str()
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
    {
        Some(address) if address.starts_with('/') => Ok(address.to_string()),
        _ => Err(format!(
            "hack/containerd.sh start {name} printed no socket path\n{out}"
        )),
    }
}

static SHARED: OnceLock<Result<Instance, String>> = OnceLock::new();

extern "C" fn destroy_shared_instance() {
    if let Some(Ok(instance)) = SHARED.get() {
        instance.destroy();
    }
}

/// The instance shared by all scenarios of this test binary, started on
/// first use and destroyed when the binary exits.
pub fn shared_instance(name: &str) -> Result<&'static Instance, String> {
    SHARED
        .get_or_init(|| {
            let instance = Instance::start(name)?;
            // The test harness ends with exit(3), which runs this.
            unsafe {
                libc::atexit(destroy_shared_instance);
            }
            Ok(instance)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Runs scenario `f` against `runtime` on this binary's shared instance
/// (`instance` names it), or skips it when the machine lacks something.
pub fn run_shared(instance: &str, runtime: &'static str, test: &str, f: fn(&Scenario)) {
    if !prerequisites_met(runtime, test) {
        return;
    }
    let instance = shared_instance(instance).unwrap_or_else(|e| panic!("{e}"));
    f(&Scenario::new(instance, runtime, test));
}

/// Runs scenario `f` against `runtime` on an instance of its own, for
/// scenarios that stop or restart containerd.
pub fn run_isolated(runtime: &'static str, test: &str, f: fn(&Scenario)) {
    if !prerequisites_met(runtime, test) {
        return;
    }
    let name = format!("{}-{}", test.replace('_', "-"), short_runtime(runtime));
    let instance = Instance::start(&name).unwrap_or_else(|e| panic!("{e}"));
    struct Destroy<'a>(&'a Instance);
    impl Drop for Destroy<'_> {
        fn drop(&mut self) {
            self.0.destroy();
        }
    }
    let guard = Destroy(&instance);
    f(&Scenario::new(guard.0, runtime, test));
}

fn short_runtime(runtime: &str) -> &'static str {
    match runtime {
        RUNC_V2 => "runc",
        MIGRATE_V1 => "migrate",
        _ => "other",
    }
}

/// One scenario run against one runtime: hands out container ids and
/// builds `ctr` command lines for that runtime.
pub struct Scenario<'a> {
    pub runtime: &'static str,
    pub instance: &'a Instance,
    pub ctr: Ctr,
    test: String,
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

impl<'a> Scenario<'a> {
    fn new(instance: &'a Instance, runtime: &'static str, test: &str) -> Scenario<'a> {
        Scenario {
            runtime,
            instance,
            ctr: instance.ctr().clone(),
            test: test.to_string(),
        }
    }

    /// A container id unique in this run (scenario, runtime, process, a
    /// counter), with a guard that removes the container when dropped.
    pub fn container(&self) -> Container {
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let id = format!(
            "{}-{}-{}-{n}",
            self.test.replace('_', "-"),
            short_runtime(self.runtime),
            std::process::id()
        );
        Container {
            id,
            ctr: self.ctr.clone(),
        }
    }

    /// `run --runtime RUNTIME OPTS... IMAGE ID ARGV...`.
    pub fn run_args(&self, c: &Container, opts: &[&str], argv: &[&str]) -> Vec<String> {
        let mut args = vec![
            "run".to_string(),
            "--runtime".to_string(),
            self.runtime.to_string(),
        ];
        args.extend(opts.iter().map(|s| s.to_string()));
        args.push(IMAGE.to_string());
        args.push(c.id.clone());
        args.extend(argv.iter().map(|s| s.to_string()));
        args
    }

    /// `ctr run` in the foreground; returns what it did.
    #[track_caller]
    pub fn run(&self, c: &Container, opts: &[&str], argv: &[&str]) -> Output {
        self.ctr.run(&strs(&self.run_args(c, opts, argv)))
    }

    /// `ctr run` attached, in the background, with the given stdin.
    pub fn spawn_run_with(
        &self,
        c: &Container,
        opts: &[&str],
        argv: &[&str],
        stdin: Stdin,
    ) -> Background {
        self.ctr
            .spawn_with(&strs(&self.run_args(c, opts, argv)), stdin)
    }

    /// `ctr run` in the foreground on a pty (pass `-t` in `opts`).
    #[track_caller]
    pub fn run_on_pty(&self, c: &Container, opts: &[&str], argv: &[&str]) -> Output {
        self.ctr.run_on_pty(&strs(&self.run_args(c, opts, argv)))
    }

    /// `ctr run` on a pty (pass `-t` in `opts`), to type on and read from.
    pub fn spawn_run_on_pty(&self, c: &Container, opts: &[&str], argv: &[&str]) -> PtyChild {
        self.ctr.spawn_on_pty(&strs(&self.run_args(c, opts, argv)))
    }

    /// `ctr run` attached, in the background: its exit is the task's exit.
    pub fn spawn_run(&self, c: &Container, opts: &[&str], argv: &[&str]) -> Background {
        self.ctr.spawn(&strs(&self.run_args(c, opts, argv)))
    }

    /// `ctr run -d`, then waits until the task is RUNNING; returns its pid.
    #[track_caller]
    pub fn run_detached(&self, c: &Container, opts: &[&str], argv: &[&str]) -> u32 {
        let mut all = vec!["-d"];
        all.extend_from_slice(opts);
        self.ctr.ok(&strs(&self.run_args(c, &all, argv)));
        c.wait_status("RUNNING").pid
    }
}

/// Borrows a `Vec<String>` as `&str`s for [`Ctr`].
pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A container id that is cleaned up (task killed and deleted, container
/// removed) when dropped, also when the scenario panics.
pub struct Container {
    pub id: String,
    ctr: Ctr,
}

impl Container {
    /// Polls `ctr tasks ls` until the task shows `status`.
    #[track_caller]
    pub fn wait_status(&self, status: &str) -> crate::ctr::TaskRow {
        crate::poll::until(
            Duration::from_secs(30),
            &format!("task {} to be {status}", self.id),
            || match self.ctr.task(&self.id) {
                Some(row) if row.status == status => Ok(row),
                Some(row) => Err(format!("{row:?}")),
                None => Err("no such task".into()),
            },
        )
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let quiet =
            |args: &[&str]| process::run_quietly(self.ctr.command(args), Duration::from_secs(30));
        let task_exists = || {
            quiet(&["tasks", "ls"])
                .map(|o| crate::ctr::parse_task_list(&o.stdout_str()).unwrap_or_default())
                .map(|rows| rows.iter().any(|r| r.id == self.id))
        };
        if task_exists() != Some(false) {
            quiet(&["tasks", "kill", "--all", "--signal", "SIGKILL", &self.id]);
            quiet(&["tasks", "delete", "--force", &self.id]);
        }
        if self
            .ctr_containers()
            .is_none_or(|ids| ids.contains(&self.id))
        {
            quiet(&["containers", "rm", &self.id]);
        }
    }
}

impl Container {
    fn ctr_containers(&self) -> Option<Vec<String>> {
        process::run_quietly(
            self.ctr.command(&["containers", "ls", "-q"]),
            Duration::from_secs(30),
        )
        .map(|o| {
            o.stdout_str()
                .lines()
                .map(|l| l.trim().to_string())
                .collect()
        })
    }
}
