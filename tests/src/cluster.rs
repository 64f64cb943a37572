//! The local cluster of hack/cluster.sh: hosts h1..hN as namespaces on this
//! machine, each with its own containerd, linked by a bridge. [`Cluster::up`]
//! brings one up under a name of its own; dropping it takes it down.
//!
//! The paths here are the layout the script's header promises; the tests
//! check that it holds.

use std::cell::Cell;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::ctr::{self, Ctr};
use crate::fixture::{self, MIGRATE_V1};
use crate::host;
use crate::poll;
use crate::process::{self, Output};

/// What the machine shares with each host: RUN_BASE/CLUSTER/HOST holds its
/// containerd socket and host.env.
pub const RUN_BASE: &str = "/run/containerd-migrate-cluster";
/// The hosts' disks: DISK_BASE/CLUSTER/HOST/<a path inside the host>.
pub const DISK_BASE: &str = "/var/lib/containerd-migrate-cluster";
/// Each host's cgroup, in every hierarchy: CGROUP_TOP/CLUSTER/HOST.
pub const CGROUP_TOP: &str = "containerd-migrate-cluster";

/// Deadline for `up` (a containerd per host), `fail` and `down`; the
/// environment's CLUSTER_SCRIPT_TIMEOUT (seconds) where that is too short,
/// as under the emulated CPU of hack/softdirty-vm.sh.
fn script_timeout() -> Duration {
    timeout_from_env("CLUSTER_SCRIPT_TIMEOUT", 120)
}

/// Deadline for one command run on a host (a migration is one); the
/// environment's CLUSTER_EXEC_TIMEOUT (seconds) where that is too short.
pub fn exec_timeout() -> Duration {
    timeout_from_env("CLUSTER_EXEC_TIMEOUT", 60)
}

/// Deadline for a container to show as running on a host.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(30);

#[track_caller]
fn timeout_from_env(var: &str, default_secs: u64) -> Duration {
    match std::env::var(var) {
        Ok(v) => Duration::from_secs(
            v.parse()
                .unwrap_or_else(|_| panic!("{var}={v:?} is not a number of seconds")),
        ),
        Err(_) => Duration::from_secs(default_secs),
    }
}

/// The binaries hack/cluster.sh starts on the machine and its hosts,
/// found beside the shim (SHIM_DIR).
pub const CLUSTER_BINARIES: [&str; 4] = [
    "migratectl",
    "migrate-agent",
    "migrate-coordinator",
    "containerd-snapshotter-migrate",
];

/// What this machine lacks to bring up a cluster, if anything.
pub fn missing_prerequisites() -> Vec<String> {
    let mut missing = fixture::missing_prerequisites(MIGRATE_V1);
    for tool in ["ip", "nsenter", "unshare", "iptables", "busybox", "jq"] {
        if host::which(tool).is_none() {
            missing.push(format!("`{tool}` on PATH"));
        }
    }
    // What hack/cluster.sh runs beside the shim.
    for binary in CLUSTER_BINARIES {
        let path = fixture::shim_dir().join(binary);
        if !host::is_executable(&path) {
            missing.push(format!(
                "{} (cargo build --release --workspace)",
                path.display()
            ));
        }
    }
    if !fixture::repo_root().join("hack/cluster.sh").is_file() {
        missing.push("hack/cluster.sh in the repository".to_string());
    }
    if unified_cgroup_mount().is_none() {
        missing.push(
            "a cgroup2 hierarchy (cgroup v2, or the unified one of a hybrid setup)".to_string(),
        );
    }
    missing
}

/// Whether `test` may go on; skips or fails it (with `CI=true`) otherwise.
#[track_caller]
pub fn prerequisites_met(test: &str) -> bool {
    let missing = missing_prerequisites();
    if missing.is_empty() {
        return true;
    }
    fixture::unavailable(&format!("{test} needs {}", missing.join(", ")));
    false
}

/// The machine's cgroup file systems: (mount point, whether cgroup2).
pub fn cgroup_mounts() -> Vec<(PathBuf, bool)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            match right.split(' ').next()? {
                "cgroup" => Some((PathBuf::from(mount_point), false)),
                "cgroup2" => Some((PathBuf::from(mount_point), true)),
                _ => None,
            }
        })
        .collect()
}

/// The cgroup2 hierarchy, whose cgroup.kill ends a host.
pub fn unified_cgroup_mount() -> Option<PathBuf> {
    cgroup_mounts()
        .into_iter()
        .find(|(_, v2)| *v2)
        .map(|(mp, _)| mp)
}

/// `pid`'s cgroup in the cgroup2 hierarchy, as /proc/PID/cgroup gives it.
pub fn unified_cgroup_of(pid: u32) -> Result<String, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("/proc/{pid}/cgroup: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
        .ok_or_else(|| format!("no cgroup2 line in /proc/{pid}/cgroup:\n{text}"))
}

/// Processes whose mount namespace is the one with inode `ns`.
pub fn processes_in_mount_namespace(ns: u64) -> Vec<u32> {
    host::all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/mnt")).is_ok_and(|m| m.ino() == ns)
                && host::pid_alive(*pid)
        })
        .collect()
}

/// `bash hack/cluster.sh ARGS` for cluster `name`, with this checkout's shim.
fn script(name: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(fixture::repo_root().join("hack/cluster.sh"))
        .args(args)
        .env("CLUSTER_NAME", name)
        .env("SHIM_DIR", fixture::shim_dir());
    cmd
}

/// A cluster brought up by hack/cluster.sh, taken down when dropped.
pub struct Cluster {
    name: String,
    hosts: Vec<Host>,
    summary: String,
    down: Cell<bool>,
}

impl Cluster {
    /// Brings up cluster `name` with hosts h1..h`n`, after clearing what a
    /// killed earlier run left under that name.
    pub fn up(name: &str, n: usize) -> Result<Cluster, String> {
        Cluster::up_with(name, n, &[])
    }

    /// As [`Cluster::up`], with more flags of `hack/cluster.sh up` (`--etcd`).
    pub fn up_with(name: &str, n: usize, flags: &[&str]) -> Result<Cluster, String> {
        let _ = process::run_quietly(script(name, &["down"]), script_timeout());
        let count = n.to_string();
        let mut args = vec!["up", count.as_str()];
        args.extend_from_slice(flags);
        let out = process::run(script(name, &args), None, script_timeout());
        let mut cluster = Cluster {
            name: name.to_string(),
            hosts: Vec::new(),
            summary: out.stdout_str(),
            down: Cell::new(false),
        };
        if !out.success() {
            return Err(format!("bringing up cluster {name} failed\n{out}"));
        }
        for i in 1..=n {
            cluster.hosts.push(Host::read(name, &format!("h{i}"))?);
        }
        Ok(cluster)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What `up` printed: host, state, IP, containerd socket.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    #[track_caller]
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("cluster {} has no host {name}", self.name))
    }

    /// `hack/cluster.sh fail HOST`.
    #[track_caller]
    pub fn fail(&self, host: &str) -> Output {
        process::run(script(&self.name, &["fail", host]), None, script_timeout())
    }

    /// `hack/cluster.sh partition HOST`: cut off, every process running.
    #[track_caller]
    pub fn partition(&self, host: &str) {
        process::run(
            script(&self.name, &["partition", host]),
            None,
            script_timeout(),
        )
        .expect_success();
    }

    /// `hack/cluster.sh heal HOST`.
    #[track_caller]
    pub fn heal(&self, host: &str) {
        process::run(script(&self.name, &["heal", host]), None, script_timeout()).expect_success();
    }

    /// `hack/cluster.sh store`: the URL of the cluster's version store.
    #[track_caller]
    pub fn store(&self) -> String {
        let out =
            process::run(script(&self.name, &["store"]), None, script_timeout()).expect_success();
        out.stdout_str().trim().to_string()
    }

    /// `hack/cluster.sh store pause` or `store resume`.
    #[track_caller]
    pub fn store_do(&self, what: &str) {
        process::run(script(&self.name, &["store", what]), None, script_timeout()).expect_success();
    }

    /// Where the cluster's version store keeps its data on the machine.
    pub fn store_dir(&self) -> PathBuf {
        Path::new(DISK_BASE).join(&self.name).join("registry")
    }

    /// `hack/cluster.sh down`; the drop then leaves it at that.
    #[track_caller]
    pub fn down(&self) -> Output {
        self.down.set(true);
        process::run(script(&self.name, &["down"]), None, script_timeout())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.down.get() {
            return;
        }
        if std::env::var_os("CONTAINERD_MIGRATE_KEEP_INSTANCE").is_some() {
            eprintln!(
                "keeping cluster {} (CLUSTER_NAME={0} hack/cluster.sh down)",
                self.name
            );
            return;
        }
        match process::run_quietly(script(&self.name, &["down"]), script_timeout()) {
            Some(out) if out.success() => {}
            Some(out) => eprintln!("taking cluster {} down failed\n{out}", self.name),
            None => eprintln!("taking cluster {} down failed", self.name),
        }
    }
}

/// One host of a cluster, as its host.env describes it.
pub struct Host {
    pub name: String,
    pub ip: String,
    cluster: String,
    ctr: Ctr,
}

impl Host {
    fn read(cluster: &str, name: &str) -> Result<Host, String> {
        let path = Path::new(RUN_BASE)
            .join(cluster)
            .join(name)
            .join("host.env");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
                .ok_or_else(|| format!("{} has no {key}:\n{text}", path.display()))
        };
        Ok(Host {
            name: name.to_string(),
            ip: value("CLUSTER_HOST_IP")?,
            cluster: cluster.to_string(),
            ctr: Ctr::new(value("CONTAINERD_ADDRESS")?),
        })
    }

    /// `ctr` on the machine, through the host's socket. Enough for anything
    /// without attached I/O, whose FIFOs would be in the machine's /run,
    /// where the host's shims cannot open them: use [`Host::run`] for that.
    pub fn ctr(&self) -> &Ctr {
        &self.ctr
    }

    /// `hack/cluster.sh exec HOST -- ARGV`, not yet started.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut args = vec!["exec", self.name.as_str(), "--"];
        args.extend_from_slice(argv);
        script(&self.cluster, &args)
    }

    /// Runs ARGV on the host and returns whatever it did.
    #[track_caller]
    pub fn run(&self, argv: &[&str]) -> Output {
        process::run(self.command(argv), None, exec_timeout())
    }

    /// `migratectl migrate --json --mode MODE --to TO ID` run on this host,
    /// which must succeed; returns its report (its steps, on stderr, are
    /// printed).
    #[track_caller]
    pub fn migrate(&self, id: &str, to: &str, mode: &str) -> serde_json::Value {
        let out = self
            .run(&[
                "migratectl",
                "migrate",
                "--json",
                "--mode",
                mode,
                "--to",
                to,
                id,
            ])
            .expect_success();
        eprintln!("{}", out.stderr_str());
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"))
    }

    /// The test image (hack/images.sh), imported into this host's
    /// containerd only.
    #[track_caller]
    pub fn import_test_image(&self) {
        let mut import = Command::new("bash");
        import
            .arg(fixture::repo_root().join("hack/images.sh"))
            .args(["import", self.ctr.address()]);
        process::run(import, None, script_timeout()).expect_success();
    }

    /// The pid of `id`'s task on this host once it runs.
    #[track_caller]
    pub fn running_pid(&self, id: &str) -> u32 {
        poll::until(
            RUNNING_TIMEOUT,
            &format!("{id} to run on {}", self.name),
            || match self.ctr.task(id) {
                Some(row) if row.status == "RUNNING" => Ok(row.pid),
                other => Err(format!("{other:?}")),
            },
        )
    }

    /// The directory the machine shares with the host.
    pub fn shared_dir(&self) -> PathBuf {
        Path::new(RUN_BASE).join(&self.cluster).join(&self.name)
    }

    /// The host's disk, as the machine sees it.
    pub fn disk(&self) -> PathBuf {
        Path::new(DISK_BASE).join(&self.cluster).join(&self.name)
    }

    /// Where the file the host sees at `path` is on the machine (for the
    /// host's private directories: /run, /tmp, /var/tmp,
    /// /var/lib/containerd-migrate).
    pub fn on_disk(&self, path: &str) -> PathBuf {
        self.disk().join(path.trim_start_matches('/'))
    }

    /// The host's cgroup in the hierarchy mounted at `mount`.
    pub fn cgroup(&self, mount: &Path) -> PathBuf {
        mount.join(CGROUP_TOP).join(&self.cluster).join(&self.name)
    }

    /// Every process of the host: its cgroup subtree in the cgroup2
    /// hierarchy.
    pub fn pids(&self) -> Vec<u32> {
        let Some(unified) = unified_cgroup_mount() else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = cgroup_subtree_pids(&self.cgroup(&unified))
            .into_iter()
            .map(|(pid, _)| pid)
            .collect();
        pids.sort_unstable();
        pids
    }

    /// The inode of the host's mount namespace (its namespace file).
    pub fn mount_namespace(&self) -> Result<u64, String> {
        let file = Path::new(RUN_BASE)
            .join(&self.cluster)
            .join("ns")
            .join(format!("{}.mnt", self.name));
        std::fs::metadata(&file)
            .map(|m| m.ino())
            .map_err(|e| format!("{}: {e}", file.display()))
    }
}

/// Polls every host's tasks in a thread: at no sample may two hosts run
/// (not paused) a task of the same container. [`OneCopy::stop`] fails the
/// test if they did.
pub struct OneCopy {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<u64, String>>>,
}

impl OneCopy {
    pub fn watch(hosts: &[&Host], ids: &[&str]) -> OneCopy {
        let hosts: Vec<(String, Ctr)> = hosts
            .iter()
            .map(|h| (h.name.clone(), h.ctr().clone()))
            .collect();
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = 0u64;
            while !stopping.load(Ordering::SeqCst) {
                let running: Vec<(String, String)> = hosts
                    .iter()
                    .flat_map(|(name, ctr)| {
                        let tasks = ctr
                            .run_within(&["tasks", "ls"], Duration::from_secs(5))
                            .ok()
                            .filter(|o| o.success())
                            .and_then(|o| ctr::parse_task_list(&o.stdout_str()).ok())
                            .unwrap_or_default();
                        tasks
                            .into_iter()
                            .filter(|t| t.status == "RUNNING")
                            .map(|t| (name.clone(), t.id))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                for id in &ids {
                    let on: Vec<&String> = running
                        .iter()
                        .filter(|(_, t)| t == id)
                        .map(|(h, _)| h)
                        .collect();
                    if on.len() > 1 {
                        return Err(format!("{id} ran on {on:?} at once"));
                    }
                }
                samples += 1;
            }
            Ok(samples)
        });
        OneCopy {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching; fails if two copies ever ran at once.
    #[track_caller]
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let samples = self
            .thread
            .take()
            .expect("stopped once")
            .join()
            .expect("the watcher thread panicked")
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{samples} samples of the hosts' tasks, never two copies running");
    }
}

/// As [`OneCopy`], from the hosts' cgroups and /proc instead of `ctr`: at
/// no sample may two hosts have a process named `comm` that runs, that is
/// neither stopped by a tracer (CRIU seizes what it dumps) nor in a frozen
/// cgroup (containerd's pause, CRIU's freeze; v2's or v1's freezer). It reads files only, where
/// `OneCopy` starts two `ctr` per sample: under the emulated CPU of
/// hack/softdirty-vm.sh those took one of its two vCPUs and doubled a
/// migration's time.
pub struct OneProcess {
    comm: String,
    stop: Arc<AtomicBool>,
    /// The samples, and those that found it running on a host.
    thread: Option<JoinHandle<Result<(u64, u64), String>>>,
}

/// Pause between samples, so that the watcher leaves the CPU to what it
/// watches; CRIU's freeze and restore each take far longer.
const ONE_PROCESS_PAUSE: Duration = Duration::from_millis(10);

impl OneProcess {
    pub fn watch(hosts: &[&Host], comm: &str) -> OneProcess {
        let unified = unified_cgroup_mount();
        let hosts: Vec<(String, Vec<PathBuf>)> = hosts
            .iter()
            .map(|h| {
                (
                    h.name.clone(),
                    unified.iter().map(|mp| h.cgroup(mp)).collect(),
                )
            })
            .collect();
        let comm = comm.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let name = comm.clone();
        let thread = std::thread::spawn(move || {
            let (mut samples, mut seen) = (0u64, 0u64);
            while !stopping.load(Ordering::SeqCst) {
                let on: Vec<String> = hosts
                    .iter()
                    .filter_map(|(name, roots)| {
                        roots
                            .iter()
                            .flat_map(|root| cgroup_subtree_pids(root))
                            .find_map(|pid| runs_as(pid, &comm))
                            .map(|how| format!("{name}: {how}"))
                    })
                    .collect();
                if on.len() > 1 {
                    let at = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis());
                    return Err(format!("{comm} ran on {on:?} at once (at {at} Unix ms)"));
                }
                samples += 1;
                seen += on.len() as u64;
                std::thread::sleep(ONE_PROCESS_PAUSE);
            }
            Ok((samples, seen))
        });
        OneProcess {
            comm: name,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching; fails if two copies ever ran at once, or if none
    /// was ever seen (the watcher would be looking in the wrong place).
    #[track_caller]
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let (samples, seen) = self
            .thread
            .take()
            .expect("stopped once")
            .join()
            .expect("the watcher thread panicked")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            seen > 0,
            "no sample of {samples} found {} running on any host",
            self.comm
        );
        eprintln!(
            "{samples} samples of the hosts' processes, {} running on one host in {seen}, never on two",
            self.comm
        );
    }
}

/// The processes of cgroup `root` and its descendants, with the cgroup each
/// is in.
fn cgroup_subtree_pids(root: &Path) -> Vec<(u32, PathBuf)> {
    let mut pids = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            }
        }
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        pids.extend(
            procs
                .lines()
                .filter_map(|l| l.trim().parse::<u32>().ok())
                .map(|pid| (pid, dir.clone())),
        );
    }
    pids
}

/// PF_EXITING in /proc/PID/stat's flags: the process is in exit(2).
const PF_EXITING: u64 = 0x4;
/// SIGKILL's bit in /proc/PID/status's pending-signal masks.
const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);

/// Where process `pid` (in cgroup `cgroup`) runs as `comm`, described for a
/// failure message; `None` if it is not named so or cannot run user code:
/// gone, stopped or traced, in a frozen cgroup, or dying (a frozen process
/// killed, as a source's after its migration, thaws only to exit).
/// Whether cgroup v1's freezer holds `pid` (runc freezes there on a
/// hybrid machine such as this one, and the unified hierarchy shows none of
/// it).
fn frozen_by_v1(pid: u32) -> bool {
    let Ok(cgroups) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    cgroups
        .lines()
        .filter_map(|l| l.split_once(":freezer:").map(|(_, path)| path))
        .any(|path| {
            std::fs::read_to_string(format!("/sys/fs/cgroup/freezer{path}/freezer.state"))
                .is_ok_and(|s| s.trim() == "FROZEN")
        })
}

fn runs_as((pid, cgroup): (u32, PathBuf), comm: &str) -> Option<String> {
    let named =
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm);
    if !named {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    let state = fields.first()?.chars().next()?;
    let flags: u64 = fields.get(6)?.parse().ok()?;
    if matches!(state, 'Z' | 'X' | 't' | 'T') || flags & PF_EXITING != 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let killed = status.lines().any(|l| {
        let mask = l
            .strip_prefix("SigPnd:")
            .or_else(|| l.strip_prefix("ShdPnd:"));
        mask.and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|m| m & SIGKILL_BIT != 0)
    });
    if killed {
        return None;
    }
    let events = std::fs::read_to_string(cgroup.join("cgroup.events")).unwrap_or_default();
    if events.lines().any(|l| l == "frozen 1") || frozen_by_v1(pid) {
        return None;
    }
    Some(format!(
        "pid {pid} state {state} in {} ({})",
        cgroup.display(),
        events.split_whitespace().collect::<Vec<_>>().join(" ")
    ))
}

/// Where the cluster's daemons and containers write their logs, as the
/// machine sees them (they outlive a failed host; `down` removes them).
impl Cluster {
    /// The coordinator's log (RUN_BASE/CLUSTER/coordinator.log).
    pub fn coordinator_log(&self) -> PathBuf {
        Path::new(RUN_BASE).join(&self.name).join("coordinator.log")
    }
}

impl Host {
    /// The host agent's log, in the directory shared with the machine.
    pub fn agent_log(&self) -> PathBuf {
        self.shared_dir().join("agent.log")
    }

    /// The output of cluster container `id` on this host: the agent has its
    /// task write it to `logs/ID.log` under its state directory (migrate-agent
    /// --state-dir, by default /var/lib/containerd-migrate/agent).
    pub fn container_log(&self, id: &str) -> PathBuf {
        self.on_disk(&format!("/var/lib/containerd-migrate/agent/logs/{id}.log"))
    }

    /// The log of the host's containerd (and of its shims: the ticker's
    /// `ticker-version` lines are there), hack/containerd.sh's instance
    /// cluster-CLUSTER-HOST.
    pub fn containerd_log(&self) -> PathBuf {
        self.on_disk(&format!(
            "/run/containerd-migrate/cluster-{}-{}/containerd.log",
            self.cluster, self.name
        ))
    }
}

impl Host {
    /// The valid versions of container `id` in version store `store`,
    /// oldest first, as `migratectl checkpoint ls --store` run here lists
    /// them.
    pub fn versions(&self, store: &str, id: &str) -> Result<Vec<u64>, String> {
        let argv = [
            "migratectl",
            "checkpoint",
            "ls",
            "--store",
            store,
            "--container",
            id,
            "--json",
        ];
        let out = self.run(&argv);
        if !out.success() {
            return Err(format!("{out}"));
        }
        let listed: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}\n{out}"))?;
        Ok(listed
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|v| v["valid"] == true)
                    .filter_map(|v| v["version"].as_u64())
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// The machine's side of the cluster's network.
impl Cluster {
    /// The machine's end of `host`'s link (hack/cluster.sh's cm-CLUSTER-HOST).
    pub fn link_of(&self, host: &str) -> String {
        format!("cm-{}-{host}", self.name)
    }
}

/// With `hack/cluster.sh up N --etcd`, a coordinator replica runs on every
/// host, each with its own log.
impl Host {
    /// This host's coordinator replica's log (RUN_BASE/CLUSTER/HOST/coordinator.log;
    /// `up --etcd` only: without it, the one coordinator's is
    /// [`Cluster::coordinator_log`]).
    pub fn coordinator_log(&self) -> PathBuf {
        self.shared_dir().join("coordinator.log")
    }
}
