//! One container: its init process, its execs, and the verbs containerd
//! applies to them, turned into runc commands and state transitions.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use containerd_shim::{
    asynchronous::io::Stdio,
    mount::umount_recursive,
    protos::{
        api::CreateTaskRequest,
        events::task::TaskExit,
        protobuf::{Message, well_known_types::any::Any},
        shim::oci::Options,
        types::mount::Mount,
    },
    util::{convert_to_timestamp, mount_rootfs, read_pid_from_file, read_spec, write_options},
};
use log::{debug, error, info, warn};
use migrate_oci::DeferredDigests;
use nix::sys::signal::Signal;
use tokio::task::JoinHandle;

use crate::{
    annotations,
    capture::fresh_dir,
    checkpoint::RestoreCriuOptions,
    error::{Error, Result},
    events::Events,
    exits::{Exits, ProcessKey},
    netns, oom,
    process::{ExecState, Exit, InitState, Launch, Lifecycle, Process},
    ready::ReadyPlan,
    restore_gate::MemoryGate,
    restore_source::{Prepared, RestoreSource},
    rootfs::Overlay,
    runc::{self, CreateOptions, CriuConfig, ExecOptions, RestoreOptions, Runc},
    stdio::{IoOwner, LoggerEnv, PendingIo},
    ticker::{self, Ticker, TickerPlan},
};

const OPTIONS_TYPE: &str = "containerd.runc.v1.Options";

pub struct Container {
    pub id: String,
    namespace: String,
    pub bundle: PathBuf,
    runc: Runc,
    exits: Arc<Exits>,
    owner: IoOwner,
    no_pivot: bool,
    pub init: Process<InitState>,
    execs: Mutex<HashMap<String, Arc<Exec>>>,
    /// Serialises the verbs that change the lifecycle with the handling of
    /// exits, so that containerd hears of a start before of the exit it caused.
    pub lifecycle: tokio::sync::Mutex<()>,
    /// The init's exit, held back until every exec has exited: containerd
    /// expects the container's exit event last.
    held_init_exit: Mutex<Option<i32>>,
    oom_watch: Mutex<Option<JoinHandle<()>>>,
    rootfs: Option<PathBuf>,
    pub overlay: Option<Overlay>,
    /// What a restore from a checkpoint still has to check.
    pending_memory: Mutex<Option<PendingMemory>>,
    /// The ready-point checkpoint still to take, if the spec asks for one.
    ready: Mutex<Option<ReadyPlan>>,
    /// The checkpoint ticker the spec asks for, and the running one.
    ticker_plan: Option<TickerPlan>,
    ticker: Mutex<Option<Ticker>>,
}

/// The digests of the memory images a restore checks while CRIU works
/// ([`MemoryGate`]), and, when the checkpoint was only the annotation's
/// wish, how to start cold instead should they not match.
struct PendingMemory {
    digests: DeferredDigests,
    cold: Option<ColdStart>,
}

/// What `runc create` needs after a restore that never ran: the runtime
/// options and, if the checkpoint's changes went into the root file system
/// (an overlay's writable layer that was empty before), its mounts, to put
/// it back as it was.
struct ColdStart {
    options: Options,
    undo_rootfs: Option<Vec<Mount>>,
}

/// What the spec's annotations ask of this runtime. Invalid values fail the
/// creation with an error naming the annotation and the accepted form.
struct Plan {
    restore_from: Option<PathBuf>,
    ready: Option<ReadyPlan>,
    ticker: Option<TickerPlan>,
}

impl Plan {
    fn from_annotations(annotations: &HashMap<String, String>) -> Result<Plan> {
        let restore_from =
            annotations.get(annotations::RESTORE_FROM).map(|v| annotations::restore_from(v)).transpose()?;
        let store = annotations
            .get(annotations::READY_STORE)
            .map(|v| annotations::ready_store(v))
            .transpose()?
            .unwrap_or_else(|| PathBuf::from(migrate_oci::DEFAULT_STORE_ROOT));
        let ready = match annotations.get(annotations::CHECKPOINT_WHEN_READY).map(|v| annotations::ready_probe(v)) {
            None => None,
            Some(Ok(annotations::ReadyProbe::Tcp(port))) => Some(ReadyPlan { port, store }),
            Some(Err(e)) => return Err(e.into()),
        };
        let ticker = TickerPlan::from_annotations(annotations)?;
        Ok(Plan { restore_from, ready, ticker })
    }
}

pub struct Exec {
    pub process: Process<ExecState>,
    /// The OCI process spec (JSON) given to `runc exec`.
    spec: Vec<u8>,
}

impl Container {
    pub async fn create(req: &CreateTaskRequest, namespace: &str, exits: &Arc<Exits>) -> Result<Container> {
        if req.id.is_empty() {
            return Err(Error::InvalidArgument("a task needs an id".into()));
        }
        let bundle = PathBuf::from(&req.bundle);
        let annotations = read_spec(&bundle)
            .await
            .map_err(Error::shim(format!("read the OCI spec in {}", bundle.display())))?
            .annotations()
            .clone()
            .unwrap_or_default();
        let plan = Plan::from_annotations(&annotations)?;
        let overlay = Overlay::of(&req.rootfs);
        // A checkpoint named by the request must be usable; one named by the
        // annotation is a wish, so the task starts cold when it is not.
        let requested = (!req.checkpoint.is_empty()).then(|| PathBuf::from(&req.checkpoint));
        let checking = Instant::now();
        let (source, wish) = match (&requested, &plan.restore_from) {
            (Some(path), _) => (Some(check_source(path, overlay.as_ref(), false).await?), false),
            (None, Some(path)) => match check_source(path, overlay.as_ref(), true).await {
                Ok(source) => (Some(source), true),
                Err(why) => {
                    warn!("{}: starting cold instead of from {}: {why}", req.id, path.display());
                    (None, false)
                }
            },
            (None, None) => (None, false),
        };
        let options = runtime_options(req.options.as_ref())?;
        write_options(&bundle, &options).await.map_err(Error::shim("write the runtime options to the bundle"))?;

        let rootfs = if req.rootfs.is_empty() { None } else { Some(bundle.join("rootfs")) };
        if let Some(target) = &rootfs {
            for m in &req.rootfs {
                if let Err(e) = mount_rootfs(m, target).await {
                    unmount(target);
                    return Err(Error::shim(format!("mount the rootfs ({} {})", m.type_, m.source))(e));
                }
            }
        }

        let runc = Runc::new(&options.binary_name, &options.root, namespace, options.systemd_cgroup, &bundle);
        let owner = IoOwner { uid: options.io_uid, gid: options.io_gid };
        let stdio = Stdio::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let changes_rootfs = source.as_ref().is_some_and(RestoreSource::changes_rootfs);
        let prepared = match source {
            Some(source) => {
                let rootfs = rootfs.clone();
                let prepared = tokio::task::spawn_blocking(move || source.prepare(rootfs.as_deref())).await;
                Some(
                    prepared
                        .map_err(|e| {
                            Error::io("apply the checkpoint's root file system changes")(std::io::Error::other(e))
                        })
                        .and_then(|r| r),
                )
            }
            None => None,
        };
        let restore_from = match prepared.transpose() {
            Ok(prepared) => {
                if let Some(p) = &prepared {
                    info!(
                        "{}: {} checked{} and its rootfs changes applied in {:?}",
                        req.id,
                        p.criu.display(),
                        if p.memory.is_some() { " but for its memory images' digests" } else { "" },
                        checking.elapsed()
                    );
                }
                prepared
            }
            Err(e) => {
                if let Some(target) = &rootfs {
                    unmount(target);
                }
                return Err(e);
            }
        };
        let mut pending_memory = None;
        let (state, io) = match restore_from {
            // Nothing runs until start restores it: that is when runc needs
            // the stdio, so it is prepared then.
            Some(Prepared { criu, memory }) => {
                if memory.is_some() {
                    // Whether CRIU can wait for the digests is asked now, so
                    // that the answer is in before containerd calls Start.
                    tokio::spawn(runc::config_scripts_under_runc());
                }
                pending_memory = memory.map(|digests| PendingMemory {
                    digests,
                    cold: wish.then(|| ColdStart {
                        options: options.clone(),
                        undo_rootfs: changes_rootfs.then(|| req.rootfs.clone()),
                    }),
                });
                (InitState::CreatedFromCheckpoint { image: criu.into() }, None)
            }
            None => match Self::run_create(&req.id, namespace, &bundle, &runc, &options, &stdio, owner, exits).await {
                Ok((state, io)) => (state, Some(io)),
                Err(e) => {
                    if let Some(target) = &rootfs {
                        unmount(target);
                    }
                    return Err(e);
                }
            },
        };

        Ok(Container {
            id: req.id.clone(),
            namespace: namespace.to_string(),
            bundle,
            runc,
            exits: exits.clone(),
            owner,
            no_pivot: options.no_pivot_root,
            init: Process::new(state, stdio, io),
            execs: Mutex::default(),
            lifecycle: tokio::sync::Mutex::new(()),
            held_init_exit: Mutex::new(None),
            oom_watch: Mutex::new(None),
            rootfs,
            overlay,
            pending_memory: Mutex::new(pending_memory),
            ready: Mutex::new(plan.ready),
            ticker_plan: plan.ticker,
            ticker: Mutex::new(None),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub(crate) fn runc(&self) -> &Runc {
        &self.runc
    }

    fn logger_env(&self) -> LoggerEnv<'_> {
        LoggerEnv { container_id: &self.id, namespace: &self.namespace }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_create(
        id: &str,
        namespace: &str,
        bundle: &Path,
        runc: &Runc,
        options: &Options,
        stdio: &Stdio,
        owner: IoOwner,
        exits: &Arc<Exits>,
    ) -> Result<(InitState, crate::stdio::ProcessIo)> {
        let logger = LoggerEnv { container_id: id, namespace };
        let (pending, runc_stdio) = PendingIo::prepare(stdio, owner, &logger)?;
        let pid_file = bundle.join("init.pid");
        let starting = exits.begin_start();
        let opts = CreateOptions {
            bundle,
            pid_file: &pid_file,
            console_socket: pending.console_socket(),
            no_pivot: options.no_pivot_root,
            no_new_keyring: options.no_new_keyring,
        };
        if let Err(e) = runc.create(id, &opts, runc_stdio).await {
            pending.abort().await;
            return Err(e.into());
        }
        let finished = async {
            let io = pending.finish().await?;
            let pid = read_pid_from_file(&pid_file)
                .await
                .map_err(Error::shim(format!("read the pid file {}", pid_file.display())))?;
            Ok::<_, Error>((io, pid as u32))
        };
        let (io, pid) = match finished.await {
            Ok(done) => done,
            Err(e) => {
                // runc created a container the shim cannot serve: remove it.
                if let Err(d) = runc.delete(id, true).await {
                    warn!("failed to delete half-created container {id}: {d}");
                }
                return Err(e);
            }
        };
        let key = ProcessKey { container: id.to_string(), exec: None };
        let state = match exits.register(pid, key, &starting) {
            None => InitState::Created { pid },
            Some(status) => InitState::Stopped { pid, exit: Exit::now(status) },
        };
        Ok((state, io))
    }

    /// Starts the checkpoint ticker if the spec asks for one; it runs until
    /// the init exits or the container is deleted.
    pub fn start_ticker(self: &Arc<Self>) {
        if let Some(plan) = &self.ticker_plan {
            *self.ticker.lock().unwrap() = Some(ticker::spawn(self.clone(), plan.clone()));
        }
    }

    /// The ready-point checkpoint to take, handed out once.
    pub fn take_ready_plan(&self) -> Option<ReadyPlan> {
        self.ready.lock().unwrap().take()
    }

    pub fn watch_oom(&self, events: Events) {
        let Some(pid) = self.init.state().live_pid() else { return };
        if let Some(handle) = oom::watch(pid, &self.id, events) {
            *self.oom_watch.lock().unwrap() = Some(handle);
        }
    }

    /// Starts the init, or restores it if it was created from a checkpoint;
    /// returns its pid and, if it already exited, its status.
    pub async fn start_init(&self) -> Result<(u32, Option<i32>)> {
        let (pid, early) = match self.init.state().launch()? {
            Launch::Start { pid } => {
                self.runc.start(&self.id).await?;
                (pid, None)
            }
            Launch::Restore { image } => self.restore(&image).await?,
        };
        self.init.transition(|s| s.start(pid))?;
        Ok((pid, early))
    }

    /// Restores the init from `image`; when the checkpoint was the
    /// annotation's wish and its memory images turn out damaged, starts it
    /// cold instead.
    async fn restore(&self, image: &Path) -> Result<(u32, Option<i32>)> {
        let pending = self.pending_memory.lock().unwrap().take();
        let (digests, cold) = match pending {
            Some(PendingMemory { digests, cold }) => (Some(digests), cold),
            None => (None, None),
        };
        let mut restored = self.restore_checked(image, digests).await;
        if let Err(e) = &restored
            && is_vdso_misplaced(e)
        {
            // Nothing ran, and the memory's digests, if any were pending,
            // matched (a mismatch is reported instead of CRIU's error).
            warn!("{}: retrying the restore once: {e}", self.id);
            match self.runc.delete(&self.id, true).await {
                Ok(()) | Err(runc::Error::NotFound { .. }) => {}
                Err(e) => warn!("{}: {e}", self.id),
            }
            restored = self.restore_checked(image, None).await;
        }
        match (restored, cold) {
            (Err(Error::Checkpoint(damaged @ migrate_oci::Error::Damaged { .. })), Some(cold)) => {
                warn!("{}: starting cold instead of from {}: {damaged}", self.id, image.display());
                self.start_cold(cold).await
            }
            (result, _) => result,
        }
    }

    /// Restores the init from `image`, checking `digests` of its memory
    /// images while CRIU works; the restored processes run only if they match.
    async fn restore_checked(&self, image: &Path, digests: Option<DeferredDigests>) -> Result<(u32, Option<i32>)> {
        let criu = RestoreCriuOptions::read(image)?.to_criu();
        let work = self.bundle.join("criu-restore-work");
        fresh_dir(&work)?;
        let mut gate = digests.map(|d| MemoryGate::start(&work, d)).transpose()?;
        if gate.is_some() && !runc::config_scripts_under_runc().await {
            // This CRIU cannot be made to wait: the digests come first.
            if let Some(gate) = gate.take() {
                gate.verdict().await?;
            }
        }
        let pid_file = self.bundle.join("init.pid");
        let (pending, runc_stdio) = PendingIo::prepare(&self.init.stdio, self.owner, &self.logger_env())?;
        let starting = self.exits.begin_start();
        let opts = RestoreOptions {
            bundle: &self.bundle,
            image_path: image,
            work_path: &work,
            pid_file: &pid_file,
            console_socket: pending.console_socket(),
            no_pivot: self.no_pivot,
            lazy_pages: false,
            criu,
            config: CriuConfig { action_script: gate.as_ref().map(|g| g.script().to_owned()), ..Default::default() },
        };
        let restoring = Instant::now();
        let restored = self.runc.restore(&self.id, &opts, runc_stdio).await;
        let verdict = match gate {
            Some(gate) => gate.verdict().await,
            None => Ok(()),
        };
        if let Err(damaged) = verdict {
            // CRIU's action script stopped the restore before anything ran;
            // had it not, what runs now is killed.
            if restored.is_ok() {
                error!("{}: restored from damaged memory images; killing it", self.id);
                if let Err(e) = self.runc.delete(&self.id, true).await {
                    warn!("{}: {e}", self.id);
                }
            }
            pending.abort().await;
            return Err(damaged);
        }
        if let Err(e) = restored {
            pending.abort().await;
            return Err(e.into());
        }
        info!("{}: runc restored it in {:?}", self.id, restoring.elapsed());
        self.init.set_io(pending.finish().await?);
        let pid = read_pid_from_file(&pid_file)
            .await
            .map_err(Error::shim(format!("read the pid file {}", pid_file.display())))? as u32;
        if let Err(e) = netns::loopback_up(pid) {
            warn!("{}: restored, but loopback stays down: {e}", self.id);
        }
        let key = ProcessKey { container: self.id.clone(), exec: None };
        Ok((pid, self.exits.register(pid, key, &starting)))
    }

    /// Starts the init cold after a restore that never ran: the root file
    /// system goes back to the image's if the checkpoint changed it (the
    /// writable layer was empty before), then `runc create` and `start`.
    async fn start_cold(&self, cold: ColdStart) -> Result<(u32, Option<i32>)> {
        // runc removes a container whose restore failed; this is in case not.
        match self.runc.delete(&self.id, true).await {
            Ok(()) | Err(runc::Error::NotFound { .. }) => {}
            Err(e) => warn!("{}: {e}", self.id),
        }
        if let (Some(target), Some(mounts)) = (&self.rootfs, &cold.undo_rootfs) {
            unmount(target);
            if let Some(upper) = self.overlay.as_ref().and_then(|o| o.upper.as_deref()) {
                empty_dir(upper).map_err(Error::io(format!("empty the writable layer {}", upper.display())))?;
            }
            for m in mounts {
                mount_rootfs(m, target)
                    .await
                    .map_err(Error::shim(format!("mount the rootfs again ({} {})", m.type_, m.source)))?;
            }
        }
        let (state, io) = Self::run_create(
            &self.id,
            &self.namespace,
            &self.bundle,
            &self.runc,
            &cold.options,
            &self.init.stdio,
            self.owner,
            &self.exits,
        )
        .await?;
        self.init.set_io(io);
        match state {
            InitState::Created { pid } => {
                self.runc.start(&self.id).await?;
                Ok((pid, None))
            }
            InitState::Stopped { pid, exit } => Ok((pid, Some(exit.status as i32))),
            s @ (InitState::CreatedFromCheckpoint { .. } | InitState::Running { .. } | InitState::Paused { .. }) => {
                Err(Error::WrongState { verb: "start", state: s.name() })
            }
        }
    }

    pub fn exec(&self, exec_id: &str) -> Result<Arc<Exec>> {
        self.execs
            .lock()
            .unwrap()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id} in container {}", self.id)))
    }

    pub fn add_exec(&self, exec_id: &str, stdio: Stdio, spec: Option<&Any>) -> Result<()> {
        let Some(spec) = spec else {
            return Err(Error::InvalidArgument(format!("exec {exec_id} has no process spec")));
        };
        if let Err(e) = serde_json::from_slice::<oci_spec::runtime::Process>(&spec.value) {
            return Err(Error::InvalidArgument(format!("exec {exec_id}: the process spec is not valid: {e}")));
        }
        self.init.state().live("exec in")?;
        let mut execs = self.execs.lock().unwrap();
        if execs.contains_key(exec_id) {
            return Err(Error::AlreadyExists(format!("exec {exec_id} in container {}", self.id)));
        }
        let exec = Exec { process: Process::new(ExecState::Added, stdio, None), spec: spec.value.clone() };
        execs.insert(exec_id.to_string(), Arc::new(exec));
        Ok(())
    }

    /// Starts an exec; returns its pid and, if it already exited, its status,
    /// which the caller reports after the start.
    pub async fn start_exec(&self, exec_id: &str) -> Result<(u32, Option<i32>)> {
        let exec = self.exec(exec_id)?;
        exec.process.state().startable()?;
        let spec_file = tempfile::Builder::new()
            .prefix(".exec-")
            .suffix(".json")
            .tempfile_in(&self.bundle)
            .map_err(Error::io(format!("create the process spec file in {}", self.bundle.display())))?;
        std::fs::write(spec_file.path(), &exec.spec)
            .map_err(Error::io(format!("write {}", spec_file.path().display())))?;
        let pid_file = self.bundle.join(format!("{exec_id}.pid"));

        let (pending, runc_stdio) = PendingIo::prepare(&exec.process.stdio, self.owner, &self.logger_env())?;
        let starting = self.exits.begin_start();
        let opts =
            ExecOptions { process: spec_file.path(), pid_file: &pid_file, console_socket: pending.console_socket() };
        if let Err(e) = self.runc.exec(&self.id, &opts, runc_stdio).await {
            pending.abort().await;
            return Err(e.into());
        }
        let io = pending.finish().await?;
        let pid = read_pid_from_file(&pid_file)
            .await
            .map_err(Error::shim(format!("read the pid file {}", pid_file.display())))? as u32;
        let _ = std::fs::remove_file(&pid_file);
        exec.process.set_io(io);
        let key = ProcessKey { container: self.id.clone(), exec: Some(exec_id.to_string()) };
        let early = self.exits.register(pid, key, &starting);
        exec.process.transition(|s| s.start(pid))?;
        Ok((pid, early))
    }

    /// Records an exit and returns the exit events to publish, in order.
    pub fn process_exited(&self, exec_id: Option<&str>, status: i32) -> Vec<TaskExit> {
        let mut events = Vec::new();
        match exec_id {
            Some(exec_id) => {
                let Ok(exec) = self.exec(exec_id) else { return events };
                let exited = exec.process.transition(|s| s.exited(status));
                if let Ok(state) = exited {
                    events.push(exit_event(&self.id, exec_id, state));
                }
                if self.running_exec_pids().is_empty()
                    && let Some(status) = self.held_init_exit.lock().unwrap().take()
                {
                    events.extend(self.init_exited(status));
                }
            }
            None => {
                let running = self.running_exec_pids();
                if running.is_empty() {
                    events.extend(self.init_exited(status));
                } else {
                    // Without a pid namespace of its own, the container's execs
                    // outlive its init; the container is over, so end them.
                    debug!("init of {} exited, killing {} exec(s) first", self.id, running.len());
                    *self.held_init_exit.lock().unwrap() = Some(status);
                    for pid in running {
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
                    }
                }
            }
        }
        events
    }

    fn init_exited(&self, status: i32) -> Option<TaskExit> {
        let state = self.init.transition(|s| s.exited(status)).ok()?;
        Some(exit_event(&self.id, &self.id, state))
    }

    fn running_exec_pids(&self) -> Vec<u32> {
        let execs = self.execs.lock().unwrap();
        execs.values().filter_map(|e| e.process.state().running_pid()).collect()
    }

    pub async fn kill(&self, exec_id: Option<&str>, signal: u32, all: bool) -> Result<()> {
        let Some(exec_id) = exec_id else {
            return match self.init.state() {
                InitState::Created { .. } | InitState::Running { .. } | InitState::Paused { .. } => {
                    self.runc.kill(&self.id, signal, all).await.map_err(gone)
                }
                InitState::CreatedFromCheckpoint { .. } => Err(Error::WrongState { verb: "kill", state: "created" }),
                InitState::Stopped { .. } => Err(Error::NotFound("process already finished".into())),
            };
        };
        let exec = self.exec(exec_id)?;
        match exec.process.state() {
            ExecState::Added => Err(Error::WrongState { verb: "kill", state: "created" }),
            ExecState::Running { pid } => {
                let signal = Signal::try_from(signal as i32)
                    .map_err(|_| Error::InvalidArgument(format!("signal {signal} is not a valid signal")))?;
                match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal) {
                    Ok(()) => Ok(()),
                    Err(nix::errno::Errno::ESRCH) => Err(Error::NotFound("process already finished".into())),
                    Err(e) => Err(Error::io(format!("send {signal} to exec {exec_id}"))(e.into())),
                }
            }
            ExecState::Stopped { .. } => Err(Error::NotFound("process already finished".into())),
        }
    }

    /// Deletes the init process, and with it the container; returns its pid
    /// and exit.
    pub async fn delete_init(&self) -> Result<(u32, Exit)> {
        self.ticker.lock().unwrap().take();
        let (pid, exit) = match self.init.state() {
            s @ (InitState::Running { .. } | InitState::Paused { .. }) => {
                return Err(Error::WrongState { verb: "delete", state: s.name() });
            }
            InitState::Created { pid } => {
                self.runc.delete(&self.id, true).await.or_else(ignore_gone)?;
                // runc killed the waiting init; its exit reaches nobody now.
                self.exits.forget(pid);
                (pid, Exit::now(128 + Signal::SIGKILL as i32))
            }
            // Never restored, so runc knows nothing of it.
            InitState::CreatedFromCheckpoint { .. } => (0, Exit::now(0)),
            InitState::Stopped { pid, exit } => {
                self.runc.delete(&self.id, false).await.or_else(ignore_gone)?;
                (pid, exit)
            }
        };
        if let Some(watch) = self.oom_watch.lock().unwrap().take() {
            watch.abort();
        }
        let ios: Vec<_> = {
            let execs = std::mem::take(&mut *self.execs.lock().unwrap());
            execs.values().filter_map(|e| e.process.take_io()).collect()
        };
        for io in ios {
            io.shutdown().await;
        }
        if let Some(io) = self.init.take_io() {
            io.shutdown().await;
        }
        if let Some(rootfs) = &self.rootfs {
            unmount(rootfs);
        }
        Ok((pid, exit))
    }

    pub async fn delete_exec(&self, exec_id: &str) -> Result<(u32, Exit)> {
        let exec = self.exec(exec_id)?;
        let (pid, exit) = match exec.process.state() {
            // Never started: nothing ran, so nothing exited; report as runc.v2 does.
            ExecState::Added => (0, Exit::now(0)),
            s @ ExecState::Running { .. } => return Err(Error::WrongState { verb: "delete", state: s.name() }),
            ExecState::Stopped { pid, exit } => (pid, exit),
        };
        self.execs.lock().unwrap().remove(exec_id);
        if let Some(io) = exec.process.take_io() {
            io.shutdown().await;
        }
        Ok((pid, exit))
    }

    pub async fn pause(&self) -> Result<()> {
        self.init.state().pause()?;
        self.runc.pause(&self.id).await?;
        self.init.transition(InitState::pause).map(drop)
    }

    pub async fn resume(&self) -> Result<()> {
        self.init.state().resume()?;
        self.runc.resume(&self.id).await?;
        self.init.transition(InitState::resume).map(drop)
    }

    pub async fn update(&self, resources: Option<&Any>) -> Result<()> {
        let Some(resources) = resources else {
            return Err(Error::InvalidArgument("update without resources".into()));
        };
        if let Err(e) = serde_json::from_slice::<oci_spec::runtime::LinuxResources>(&resources.value) {
            return Err(Error::InvalidArgument(format!("the resources are not valid: {e}")));
        }
        self.init.state().live("update")?;
        Ok(self.runc.update(&self.id, &resources.value).await?)
    }

    /// Every pid in the container, with the exec id of those that are execs.
    pub async fn pids(&self) -> Result<Vec<(u32, Option<String>)>> {
        let pids = self.runc.ps(&self.id).await?;
        let execs: HashMap<u32, String> = self
            .execs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(id, e)| e.process.state().running_pid().map(|pid| (pid, id.clone())))
            .collect();
        Ok(pids.into_iter().map(|pid| (pid, execs.get(&pid).cloned())).collect())
    }
}

fn exit_event(container: &str, id: &str, state: impl Lifecycle) -> TaskExit {
    let exit = state.exit();
    TaskExit {
        container_id: container.to_string(),
        id: id.to_string(),
        pid: state.pid(),
        exit_status: exit.map(|e| e.status).unwrap_or_default(),
        exited_at: protobuf_time(exit.map(|e| e.at)),
        ..Default::default()
    }
}

pub fn protobuf_time(
    at: Option<std::time::SystemTime>,
) -> containerd_shim::protos::protobuf::MessageField<
    containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp,
> {
    let at = at.map(time::OffsetDateTime::from);
    containerd_shim::protos::protobuf::MessageField::some(convert_to_timestamp(at))
}

fn runtime_options(any: Option<&Any>) -> Result<Options> {
    let Some(any) = any.filter(|a| !a.type_url.is_empty() || !a.value.is_empty()) else {
        return Ok(Options::default());
    };
    if !any.type_url.ends_with(OPTIONS_TYPE) {
        return Err(Error::InvalidArgument(format!(
            "runtime options of type {} are not understood; io.containerd.migrate.v1 takes {OPTIONS_TYPE}",
            any.type_url
        )));
    }
    Options::parse_from_bytes(&any.value)
        .map_err(|e| Error::InvalidArgument(format!("the runtime options ({OPTIONS_TYPE}) do not decode: {e}")))
}

/// runc reporting the container gone during a kill means the process
/// finished first: containerd expects NOT_FOUND with these words.
fn gone(e: runc::Error) -> Error {
    match e {
        runc::Error::NotFound { .. } => Error::NotFound("process already finished".into()),
        other => other.into(),
    }
}

fn ignore_gone(e: runc::Error) -> Result<()> {
    match e {
        runc::Error::NotFound { .. } => Ok(()),
        other => Err(other.into()),
    }
}

/// CRIU 4.2 asks the kernel for a fresh vDSO at an address its restorer
/// still occupies, now and then: the kernel maps it elsewhere, CRIU parses
/// the wrong memory and fails with "vdso: Invalid ELF magic" before any
/// restored process runs (checkpoint-restore/criu#3012, unfixed upstream).
/// Another attempt gets another address layout.
fn is_vdso_misplaced(e: &Error) -> bool {
    matches!(e, Error::Runc(runc::Error::Criu { line, .. }) if line.contains("vdso: Invalid ELF magic"))
}

/// Checks the checkpoint at `path` off the reactor (hashing a large one
/// takes a while, and other containers of this shim must not wait for it):
/// all but its memory images' digests, which the restore checks while CRIU
/// works. A `wish` (the annotation's
/// checkpoint) falls back to a cold start when those do not match, which
/// needs the root file system as it was: so its memory is checked now too
/// if the checkpoint's changes would go where they cannot be taken back
/// out (anything but an overlay's empty writable layer).
async fn check_source(path: &Path, overlay: Option<&Overlay>, wish: bool) -> Result<RestoreSource> {
    let (path, overlay) = (path.to_path_buf(), overlay.cloned());
    tokio::task::spawn_blocking(move || {
        let mut source = RestoreSource::check(&path, overlay.as_ref())?;
        let undoable = overlay.as_ref().and_then(|o| o.upper.as_deref()).is_some_and(is_empty_dir);
        if wish && source.changes_rootfs() && !undoable {
            source.verify_memory_now()?;
        }
        Ok(source)
    })
    .await
    .map_err(|e| Error::io("verify the checkpoint")(std::io::Error::other(e)))?
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// Removes everything in `dir`, keeping `dir`.
fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.symlink_metadata()?.is_dir() { std::fs::remove_dir_all(&path)? } else { std::fs::remove_file(&path)? }
    }
    Ok(())
}

fn unmount(target: &Path) {
    if let Err(e) = umount_recursive(target.to_str(), libc::MNT_DETACH) {
        warn!("failed to unmount {}: {e}", target.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_options_decode_or_explain() {
        assert_eq!(runtime_options(None).unwrap(), Options::default());
        let opts = Options { binary_name: "/usr/sbin/runc".into(), ..Default::default() };
        let any = Any {
            type_url: format!("type.googleapis.com/{OPTIONS_TYPE}"),
            value: opts.write_to_bytes().unwrap(),
            ..Default::default()
        };
        assert_eq!(runtime_options(Some(&any)).unwrap().binary_name, "/usr/sbin/runc");
        let wrong = Any { type_url: "io.containerd.runhcs.v1.Options".into(), ..Default::default() };
        let err = runtime_options(Some(&wrong)).unwrap_err().to_string();
        assert!(err.contains("io.containerd.runhcs.v1.Options"), "{err}");
    }

    #[test]
    fn only_the_misplaced_vdso_is_retried() {
        let criu = |line: &str| {
            Error::Runc(runc::Error::Criu { command: "restore", line: line.into(), log: "/b/restore.log".into() })
        };
        assert!(is_vdso_misplaced(&criu(
            "(00.038968) pie: 6: Error (criu/pie/util-vdso.c:107): vdso: Invalid ELF magic"
        )));
        assert!(!is_vdso_misplaced(&criu("(00.060379) Error (criu/sk-inet.c:200): inet: Connected TCP socket")));
        assert!(!is_vdso_misplaced(&Error::InvalidArgument("vdso: Invalid ELF magic".into())));
    }
}
