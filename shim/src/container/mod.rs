//! One container: its process table (the init and its execs), the lock
//! that orders lifecycle verbs with exits, the exit ordering containerd
//! expects, and the verbs containerd applies, turned into runc commands and
//! state transitions (`process/`). What the spec's annotations ask is
//! `plan.rs`; starting from a checkpoint is `restore.rs`; what runc calls
//! need is `runc_context.rs`; dumps are the capture pipeline's
//! (`capture/`).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use containerd_shim::{
    asynchronous::io::Stdio,
    protos::{
        api::CreateTaskRequest,
        events::task::TaskExit,
        protobuf::{Message, well_known_types::any::Any},
        shim::oci::Options,
    },
    util::{convert_to_timestamp, read_pid_from_file, read_spec, write_options},
};
use log::{debug, info, warn};
use nix::sys::signal::Signal;
use tokio::task::JoinHandle;

mod plan;
mod restore;
mod runc_context;

use self::{
    plan::Plan,
    restore::{ColdStart, PendingMemory, check_source},
    runc_context::RuncContext,
};
use crate::{
    error::{Error, Result},
    events::Events,
    exits::{Exits, ProcessKey},
    image_origin, oom,
    process::{ExecState, Exit, InitState, Launch, Lifecycle, Process},
    ready,
    restore_source::{Prepared, RestoreSource},
    rootfs::{MountedRootfs, Overlay},
    runc::{self, ExecOptions, Runc},
    same_image::Image,
    stdio::{IoOwner, PendingIo},
    ticker::{self, Ticker, TickerPlan},
};

const OPTIONS_TYPE: &str = "containerd.runc.v1.Options";

/// A container: its process table (the init and its execs), the lock that
/// orders lifecycle verbs with exits, and the exit ordering containerd
/// expects.
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    /// What every runc call for its processes needs.
    ctx: RuncContext,
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
    /// Unmounted when taken (at delete) or when the container goes.
    rootfs: Mutex<Option<MountedRootfs>>,
    pub overlay: Option<Overlay>,
    /// What containerd says of the image of the root file system, which
    /// every checkpoint records.
    origin: image_origin::Lookup,
    /// What a restore from a checkpoint still has to check.
    pending_memory: Mutex<Option<PendingMemory>>,
    /// The ready-point checkpoint still to take, if the spec asks for one.
    ready: Mutex<Option<ready::Armed>>,
    /// The checkpoint ticker the spec asks for, and the running one.
    ticker_plan: Option<TickerPlan>,
    ticker: Mutex<Option<Ticker>>,
    /// Whether it stops when the host agent's lease ends (`fence`).
    pub fenced: bool,
    /// Bumped by every pre-dump or parent dump asked through the
    /// Checkpoint RPC (a pre-copy migration's): each clears the soft-dirty
    /// bits a criu-parent ticker's next increment relies on.
    tracking_resets: std::sync::atomic::AtomicU64,
}

pub struct Exec {
    pub process: Process<ExecState>,
    /// The OCI process spec (JSON) given to `runc exec`.
    spec: Vec<u8>,
}

impl Container {
    /// Creates the container of `req`; `containerd` is containerd's gRPC
    /// socket, which knows its image.
    pub async fn create(
        req: &CreateTaskRequest,
        namespace: &str,
        containerd: &str,
        exits: &Arc<Exits>,
    ) -> Result<Container> {
        if req.id.is_empty() {
            return Err(Error::InvalidArgument("a task needs an id".into()));
        }
        let origin = image_origin::Lookup::new(containerd, namespace, &req.id);
        let bundle = PathBuf::from(&req.bundle);
        let spec =
            read_spec(&bundle).await.map_err(Error::shim(format!("read the OCI spec in {}", bundle.display())))?;
        let annotations = spec.annotations().clone().unwrap_or_default();
        let plan = Plan::from_annotations(&annotations)?;
        let overlay = Overlay::of(&req.rootfs);
        // A checkpoint named by the request must be usable; one named by the
        // annotation is a wish, so the task starts cold when it is not.
        let requested = (!req.checkpoint.is_empty()).then(|| PathBuf::from(&req.checkpoint));
        if requested.is_some() || plan.restore_from.is_some() {
            // Answered while the checkpoint is verified: the restore
            // compares its image with the checkpoint's.
            origin.start();
        }
        let checking = Instant::now();
        let (source, wish) = match (&requested, &plan.restore_from) {
            (Some(path), _) => (Some(check_source(path, overlay.as_ref(), &origin, false).await?), false),
            (None, Some(path)) => match check_source(path, overlay.as_ref(), &origin, true).await {
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

        // Unmounted again by the guard on every way out of here but success.
        let rootfs = if req.rootfs.is_empty() {
            None
        } else {
            Some(MountedRootfs::mount(&req.rootfs, &bundle.join("rootfs")).await?)
        };
        let ctx = RuncContext {
            id: req.id.clone(),
            namespace: namespace.to_string(),
            bundle: bundle.clone(),
            runc: Runc::new(&options.binary_name, &options.root, namespace, options.systemd_cgroup, &bundle),
            owner: IoOwner { uid: options.io_uid, gid: options.io_gid },
            exits: exits.clone(),
        };
        let stdio = Stdio::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let changes_rootfs = source.as_ref().is_some_and(RestoreSource::changes_rootfs);
        let prepared = match source {
            Some(source) => {
                let rootfs = rootfs.as_ref().map(|r| r.path().to_owned());
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
        let restore_from = prepared.transpose()?;
        if let Some(p) = &restore_from {
            info!(
                "{}: {} checked{} and its rootfs changes applied in {:?}",
                req.id,
                p.criu.display(),
                if p.memory.is_some() { " but for its memory images' digests" } else { "" },
                checking.elapsed()
            );
        }
        let ready = match plan.ready {
            Some(plan) => {
                let root = match &rootfs {
                    Some(mounted) => mounted.path().to_owned(),
                    None => bundle.join(spec.root().as_ref().map_or(Path::new("rootfs"), |r| r.path().as_path())),
                };
                Some(ready::arm(plan, &bundle, &root, restore_from.is_some()).await?)
            }
            None => None,
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
            None => {
                let (state, io) = ctx.create_init(&options, &stdio).await?;
                (state, Some(io))
            }
        };

        Ok(Container {
            id: req.id.clone(),
            bundle,
            ctx,
            no_pivot: options.no_pivot_root,
            init: Process::new(state, stdio, io),
            execs: Mutex::default(),
            lifecycle: tokio::sync::Mutex::new(()),
            held_init_exit: Mutex::new(None),
            oom_watch: Mutex::new(None),
            rootfs: Mutex::new(rootfs),
            overlay,
            origin,
            pending_memory: Mutex::new(pending_memory),
            ready: Mutex::new(ready),
            ticker_plan: plan.ticker,
            ticker: Mutex::new(None),
            fenced: plan.fenced,
            tracking_resets: Default::default(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.ctx.namespace
    }

    /// Starts asking containerd for the image of the root file system,
    /// for an [`Container::image`] to come.
    pub fn ask_image(&self) {
        self.origin.start();
    }

    /// The image of the root file system, once containerd has said.
    pub async fn image(&self) -> Image {
        Image::of(self.origin.answer().await, self.overlay.as_ref())
    }

    pub(crate) fn runc(&self) -> &Runc {
        &self.ctx.runc
    }

    /// How often a dump the ticker did not take cleared the memory
    /// tracking's soft-dirty bits.
    pub fn tracking_resets(&self) -> u64 {
        self.tracking_resets.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Notes a dump that clears the soft-dirty bits behind the ticker's back.
    pub fn reset_tracking(&self) {
        self.tracking_resets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Starts the checkpoint ticker if the spec asks for one; it runs until
    /// the init exits or the container is deleted.
    pub fn start_ticker(self: &Arc<Self>) {
        if let Some(plan) = &self.ticker_plan {
            *self.ticker.lock().unwrap() = Some(ticker::spawn(self.clone(), plan.clone()));
        }
    }

    /// The ready-point checkpoint to take, handed out once.
    pub fn take_ready_plan(&self) -> Option<ready::Armed> {
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
                self.ctx.runc.start(&self.id).await?;
                (pid, None)
            }
            Launch::Restore { image } => self.restore(&image).await?,
        };
        self.init.transition(|s| s.start(pid))?;
        Ok((pid, early))
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

        let (pending, runc_stdio) = PendingIo::prepare(&exec.process.stdio, self.ctx.owner, &self.ctx.logger_env())?;
        let starting = self.ctx.exits.begin_start();
        let opts =
            ExecOptions { process: spec_file.path(), pid_file: &pid_file, console_socket: pending.console_socket() };
        if let Err(e) = self.ctx.runc.exec(&self.id, &opts, runc_stdio).await {
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
        let early = self.ctx.exits.register(pid, key, &starting);
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
                    self.ctx.runc.kill(&self.id, signal, all).await.map_err(gone)
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
                self.ctx.runc.delete(&self.id, true).await.or_else(ignore_gone)?;
                // runc killed the waiting init; its exit reaches nobody now.
                self.ctx.exits.forget(pid);
                (pid, Exit::now(128 + Signal::SIGKILL as i32))
            }
            // Never restored, so runc knows nothing of it.
            InitState::CreatedFromCheckpoint { .. } => (0, Exit::now(0)),
            InitState::Stopped { pid, exit } => {
                self.ctx.runc.delete(&self.id, false).await.or_else(ignore_gone)?;
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
        drop(self.rootfs.lock().unwrap().take());
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
        self.ctx.runc.pause(&self.id).await?;
        self.init.transition(InitState::pause).map(drop)
    }

    pub async fn resume(&self) -> Result<()> {
        self.init.state().resume()?;
        self.ctx.runc.resume(&self.id).await?;
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
        Ok(self.ctx.runc.update(&self.id, &resources.value).await?)
    }

    /// Every pid in the container, with the exec id of those that are execs.
    pub async fn pids(&self) -> Result<Vec<(u32, Option<String>)>> {
        let pids = self.ctx.runc.ps(&self.id).await?;
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
}
