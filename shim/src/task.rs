//! The containerd Task API: each RPC finds its container, delegates to it,
//! and publishes the event containerd expects.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use containerd_shim::{
    ExitSignal, Task, TtrpcContext, TtrpcResult,
    asynchronous::io::Stdio,
    monitor::{Subject, Topic, monitor_subscribe},
    protos::{
        api::{
            CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
            CreateTaskResponse, DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
            PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest, StartResponse,
            StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
        },
        events::task::{
            TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskPaused,
            TaskResumed, TaskStart,
        },
        protobuf::MessageField,
        shim::oci::ProcessDetails,
        types::task::ProcessInfo,
    },
    util::{asyncify, convert_to_any},
};
use log::{debug, info, warn};

use crate::{
    capture, checkpoint,
    container::{Container, protobuf_time},
    error::{Error, Result},
    events::Events,
    exits::Exits,
    fence,
    process::{InitState, Lifecycle},
    ready, runc, stats,
};

pub struct TaskService {
    shared: Arc<Shared>,
}

struct Shared {
    containers: Mutex<HashMap<String, Arc<Container>>>,
    exits: Arc<Exits>,
    events: Events,
    namespace: String,
    /// containerd's gRPC socket.
    containerd: String,
    exit: Arc<ExitSignal>,
}

impl TaskService {
    /// Creates the service and starts routing reaped exits to it.
    pub async fn new(namespace: &str, containerd: &str, events: Events, exit: Arc<ExitSignal>) -> Self {
        let shared = Arc::new(Shared {
            containers: Mutex::default(),
            exits: Arc::new(Exits::default()),
            events,
            namespace: namespace.to_string(),
            containerd: containerd.to_string(),
            exit,
        });
        shared.clone().route_exits().await;
        Self { shared }
    }
}

impl Shared {
    fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.containers.lock().unwrap().get(id).cloned().ok_or_else(|| Error::NotFound(format!("container {id}")))
    }

    /// Subscribes to every reaped exit before any process can start, then
    /// hands each to the container that owns the pid.
    async fn route_exits(self: Arc<Self>) {
        let mut subscription = match monitor_subscribe(Topic::All).await {
            Ok(s) => s,
            Err(e) => {
                // Without it no exit would ever be reported: the shim is useless.
                panic!("cannot subscribe to process exits: {e}");
            }
        };
        tokio::spawn(async move {
            while let Some(event) = subscription.rx.recv().await {
                let Subject::Pid(pid) = event.subject else { continue };
                let Some(key) = self.exits.route(pid as u32, event.exit_code) else { continue };
                let shared = self.clone();
                tokio::spawn(async move {
                    let Ok(container) = shared.container(&key.container) else { return };
                    let _lifecycle = container.lifecycle.lock().await;
                    for exit in container.process_exited(key.exec.as_deref(), event.exit_code) {
                        shared.events.publish(exit).await;
                    }
                });
            }
        });
    }

    async fn publish_exits(&self, exits: Vec<TaskExit>) {
        for exit in exits {
            self.events.publish(exit).await;
        }
    }
}

fn exec_id(id: &str) -> Option<&str> {
    (!id.is_empty()).then_some(id)
}

#[async_trait]
impl Task for TaskService {
    async fn create(&self, _ctx: &TtrpcContext, req: CreateTaskRequest) -> TtrpcResult<CreateTaskResponse> {
        info!("create {} (bundle {})", req.id, req.bundle);
        let s = &self.shared;
        if s.containers.lock().unwrap().contains_key(&req.id) {
            return Err(Error::AlreadyExists(format!("container {}", req.id)).into());
        }
        let container = Arc::new(Container::create(&req, &s.namespace, &s.containerd, &s.exits).await?);
        let pid = container.init.state().pid();
        container.watch_oom(s.events.clone());
        s.containers.lock().unwrap().insert(req.id.clone(), container);
        s.events
            .publish(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            })
            .await;
        Ok(CreateTaskResponse { pid, ..Default::default() })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let s = &self.shared;
        let container = s.container(&req.id)?;
        let _lifecycle = container.lifecycle.lock().await;
        let pid = match exec_id(&req.exec_id) {
            None => {
                let restored = matches!(container.init.state(), InitState::CreatedFromCheckpoint { .. });
                let (pid, early_exit) = container.start_init().await?;
                // What a dump asks of CRIU is asked now, in the background:
                // containerd's client pauses the container before it calls
                // Checkpoint, and nothing is to be waited for in that window.
                tokio::spawn(runc::nftables_lock());
                if restored {
                    // Created without a process, so there was no cgroup to watch yet.
                    container.watch_oom(s.events.clone());
                }
                s.events.publish(TaskStart { container_id: req.id.clone(), pid, ..Default::default() }).await;
                if let Some(status) = early_exit {
                    s.publish_exits(container.process_exited(None, status)).await;
                }
                container.start_ticker();
                if container.fenced {
                    fence::watch(&container, s.events.clone());
                }
                if let Some(armed) = container.take_ready_plan() {
                    if restored {
                        // A clone of a ready-point checkpoint inherits its
                        // annotation; it is ready already and must not
                        // replace the checkpoint it came from.
                        info!("{}: restored, so no ready-point checkpoint is taken", req.id);
                    } else {
                        tokio::spawn(ready::checkpoint_when_ready(container.clone(), armed, s.events.clone()));
                    }
                }
                pid
            }
            Some(exec) => {
                let (pid, early_exit) = container.start_exec(exec).await?;
                s.events
                    .publish(TaskExecStarted {
                        container_id: req.id.clone(),
                        exec_id: exec.to_string(),
                        pid,
                        ..Default::default()
                    })
                    .await;
                if let Some(status) = early_exit {
                    s.publish_exits(container.process_exited(Some(exec), status)).await;
                }
                pid
            }
        };
        Ok(StartResponse { pid, ..Default::default() })
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let s = &self.shared;
        let container = s.container(&req.id)?;
        let _lifecycle = container.lifecycle.lock().await;
        let (pid, exit) = match exec_id(&req.exec_id) {
            Some(exec) => container.delete_exec(exec).await?,
            None => {
                let (pid, exit) = container.delete_init().await?;
                s.containers.lock().unwrap().remove(&req.id);
                s.events
                    .publish(TaskDelete {
                        container_id: req.id.clone(),
                        pid,
                        exit_status: exit.status,
                        exited_at: protobuf_time(Some(exit.at)),
                        id: req.id.clone(),
                        ..Default::default()
                    })
                    .await;
                (pid, exit)
            }
        };
        Ok(DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: protobuf_time(Some(exit.at)),
            ..Default::default()
        })
    }

    async fn checkpoint(&self, _ctx: &TtrpcContext, req: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        let s = &self.shared;
        let container = s.container(&req.id)?;
        let (request, memory) =
            checkpoint::decode(req.options.as_ref(), &req.path, &container.bundle, container.init.stdio.terminal)?;
        info!("checkpoint {} into {memory:?} ({:?})", req.id, request.after);
        if !matches!(request.increment, crate::capture::Increment::Full) {
            // Before the dump: a failed one may have cleared the bits too.
            container.reset_tracking();
        }
        // The capture holds the lifecycle lock while it dumps, not while it
        // commits into a store.
        let captured = capture::capture(&container, &request, &memory).await?;
        s.events
            .publish(TaskCheckpointed {
                container_id: req.id.clone(),
                checkpoint: captured.display().to_string(),
                ..Default::default()
            })
            .await;
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let s = &self.shared;
        let container = s.container(&req.id)?;
        let stdio = Stdio::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        container.add_exec(&req.exec_id, stdio, req.spec.as_ref())?;
        s.events
            .publish(TaskExecAdded { container_id: req.id.clone(), exec_id: req.exec_id.clone(), ..Default::default() })
            .await;
        Ok(Empty::new())
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let container = self.shared.container(&req.id)?;
        let bundle = container.bundle.display().to_string();
        Ok(match exec_id(&req.exec_id) {
            None => state_response(&req.id, bundle, "", container.init.state(), &container.init.stdio),
            Some(exec) => {
                let exec_process = container.exec(exec)?;
                state_response(exec, bundle, exec, exec_process.process.state(), &exec_process.process.stdio)
            }
        })
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let container = self.shared.container(&req.id)?;
        let mut processes = Vec::new();
        for (pid, exec) in container.pids().await? {
            let mut info = ProcessInfo { pid, ..Default::default() };
            if let Some(exec_id) = exec {
                let details = ProcessDetails { exec_id, ..Default::default() };
                info.info = MessageField::some(
                    convert_to_any(Box::new(details)).map_err(Error::shim("encode process details"))?,
                );
            }
            processes.push(info);
        }
        Ok(PidsResponse { processes, ..Default::default() })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        let s = &self.shared;
        let container = s.container(&req.id)?;
        let _lifecycle = container.lifecycle.lock().await;
        container.pause().await?;
        s.events.publish(TaskPaused { container_id: req.id.clone(), ..Default::default() }).await;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        let s = &self.shared;
        let container = s.container(&req.id)?;
        let _lifecycle = container.lifecycle.lock().await;
        container.resume().await?;
        s.events.publish(TaskResumed { container_id: req.id.clone(), ..Default::default() }).await;
        Ok(Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        debug!("kill {} {} signal {} all={}", req.id, req.exec_id, req.signal, req.all);
        let container = self.shared.container(&req.id)?;
        container.kill(exec_id(&req.exec_id), req.signal, req.all).await?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let container = self.shared.container(&req.id)?;
        let resized = match exec_id(&req.exec_id) {
            None => container.init.with_io(|io| io.resize(req.width, req.height)),
            Some(exec) => container.exec(exec)?.process.with_io(|io| io.resize(req.width, req.height)),
        };
        resized.unwrap_or_else(|| Err(Error::InvalidArgument("the process has no terminal to resize".into())))?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let container = self.shared.container(&req.id)?;
        if req.stdin {
            match exec_id(&req.exec_id) {
                None => container.init.with_io(|io| io.close_stdin()),
                Some(exec) => container.exec(exec)?.process.with_io(|io| io.close_stdin()),
            };
        }
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let container = self.shared.container(&req.id)?;
        container.update(req.resources.as_ref()).await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let container = self.shared.container(&req.id)?;
        let exit = match exec_id(&req.exec_id) {
            None => container.init.wait().await,
            Some(exec) => {
                let exec = container.exec(exec)?;
                exec.process.wait().await
            }
        };
        Ok(WaitResponse { exit_status: exit.status, exited_at: protobuf_time(Some(exit.at)), ..Default::default() })
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let container = self.shared.container(&req.id)?;
        let pid = container.init.state().pid();
        let metrics = asyncify(move || Ok(stats::collect(pid)))
            .await
            .map_err(Error::shim(format!("collect the cgroup metrics of {}", req.id)))?
            .ok_or_else(|| Error::NotFound(format!("cgroups of container {}", req.id)))?;
        let stats = convert_to_any(metrics).map_err(Error::shim("encode the metrics"))?;
        Ok(StatsResponse { stats: MessageField::some(stats), ..Default::default() })
    }

    async fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let container = self.shared.container(&req.id)?;
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: container.init.state().pid(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        // One shim may serve several containers (a pod); it stays while any is left.
        let remaining = self.shared.containers.lock().unwrap().len();
        if remaining == 0 {
            self.shared.exit.signal();
        } else {
            warn!("shutdown requested with {remaining} container(s) left; staying up");
        }
        Ok(Empty::new())
    }
}

fn state_response(id: &str, bundle: String, exec_id: &str, state: impl Lifecycle, stdio: &Stdio) -> StateResponse {
    let exit = state.exit();
    StateResponse {
        id: id.to_string(),
        bundle,
        pid: state.pid(),
        status: state.status().into(),
        stdin: stdio.stdin.clone(),
        stdout: stdio.stdout.clone(),
        stderr: stdio.stderr.clone(),
        terminal: stdio.terminal,
        exit_status: exit.map(|e| e.status).unwrap_or_default(),
        exited_at: exit.map(|e| protobuf_time(Some(e.at))).unwrap_or_default(),
        exec_id: exec_id.to_string(),
        ..Default::default()
    }
}
