//! The lifecycle of the processes a container runs.
//!
//! Each state carries only what a process in that state has: a created exec
//! has no pid yet, only a stopped process has an exit status. Every verb
//! matches every state, so a new state makes the compiler point at each
//! transition that must consider it.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use containerd_shim::{asynchronous::io::Stdio, protos::api::Status};
use tokio::sync::watch;

use crate::{
    error::{Error, Result},
    stdio::ProcessIo,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

impl Exit {
    pub fn now(status: i32) -> Self {
        // Negative codes never come from a reaped process; clamp rather than wrap.
        Self { status: status.max(0) as u32, at: SystemTime::now() }
    }
}

/// The container's init process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitState {
    /// `runc create` ran: the process waits in runc init for `runc start`.
    Created { pid: u32 },
    /// To be restored from the CRIU images in `image` when started; there is
    /// no process, and so no pid, until then.
    CreatedFromCheckpoint { image: Arc<Path> },
    Running { pid: u32 },
    Paused { pid: u32 },
    Stopped { pid: u32, exit: Exit },
}

/// A process added with Exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecState {
    /// Known to the shim, not started, so without a pid.
    Added,
    Running { pid: u32 },
    Stopped { pid: u32, exit: Exit },
}

/// What every process state tells containerd.
pub trait Lifecycle: Clone {
    fn pid(&self) -> u32;
    fn status(&self) -> Status;
    fn exit(&self) -> Option<Exit>;
    /// The state's name in errors: "cannot start a running process".
    fn name(&self) -> &'static str;
}

impl Lifecycle for InitState {
    fn pid(&self) -> u32 {
        match *self {
            InitState::Created { pid }
            | InitState::Running { pid }
            | InitState::Paused { pid }
            | InitState::Stopped { pid, .. } => pid,
            InitState::CreatedFromCheckpoint { .. } => 0,
        }
    }

    fn status(&self) -> Status {
        match self {
            InitState::Created { .. } | InitState::CreatedFromCheckpoint { .. } => Status::CREATED,
            InitState::Running { .. } => Status::RUNNING,
            InitState::Paused { .. } => Status::PAUSED,
            InitState::Stopped { .. } => Status::STOPPED,
        }
    }

    fn exit(&self) -> Option<Exit> {
        match *self {
            InitState::Stopped { exit, .. } => Some(exit),
            InitState::Created { .. }
            | InitState::CreatedFromCheckpoint { .. }
            | InitState::Running { .. }
            | InitState::Paused { .. } => None,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            InitState::Created { .. } | InitState::CreatedFromCheckpoint { .. } => "created",
            InitState::Running { .. } => "running",
            InitState::Paused { .. } => "paused",
            InitState::Stopped { .. } => "stopped",
        }
    }
}

impl Lifecycle for ExecState {
    fn pid(&self) -> u32 {
        match *self {
            ExecState::Added => 0,
            ExecState::Running { pid } | ExecState::Stopped { pid, .. } => pid,
        }
    }

    fn status(&self) -> Status {
        match self {
            ExecState::Added => Status::CREATED,
            ExecState::Running { .. } => Status::RUNNING,
            ExecState::Stopped { .. } => Status::STOPPED,
        }
    }

    fn exit(&self) -> Option<Exit> {
        match *self {
            ExecState::Stopped { exit, .. } => Some(exit),
            ExecState::Added | ExecState::Running { .. } => None,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            ExecState::Added => "created",
            ExecState::Running { .. } => "running",
            ExecState::Stopped { .. } => "stopped",
        }
    }
}

/// A process with its stdio and a way to wait for its exit.
pub struct Process<S> {
    pub stdio: Stdio,
    state: Mutex<S>,
    io: Mutex<Option<ProcessIo>>,
    exited: watch::Sender<Option<Exit>>,
}

impl<S: Lifecycle> Process<S> {
    pub fn new(state: S, stdio: Stdio, io: Option<ProcessIo>) -> Self {
        Self { stdio, state: Mutex::new(state), io: Mutex::new(io), exited: watch::channel(None).0 }
    }

    pub fn state(&self) -> S {
        self.state.lock().unwrap().clone()
    }

    /// Moves to `next` if `transition` allows it from the current state.
    pub fn transition(&self, verb: &'static str, transition: impl FnOnce(S) -> Option<S>) -> Result<S> {
        let mut state = self.state.lock().unwrap();
        let next = transition(state.clone()).ok_or(Error::WrongState { verb, state: state.name() })?;
        *state = next.clone();
        if let Some(exit) = next.exit() {
            self.exited.send_replace(Some(exit));
        }
        Ok(next)
    }

    pub fn set_io(&self, io: ProcessIo) {
        *self.io.lock().unwrap() = Some(io);
    }

    pub fn with_io<T>(&self, f: impl FnOnce(&ProcessIo) -> T) -> Option<T> {
        self.io.lock().unwrap().as_ref().map(f)
    }

    pub fn take_io(&self) -> Option<ProcessIo> {
        self.io.lock().unwrap().take()
    }

    /// Resolves once the process has exited.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exited.subscribe();
        loop {
            if let Some(exit) = *rx.borrow_and_update() {
                return exit;
            }
            // The sender lives as long as `self`, which the caller holds.
            if rx.changed().await.is_err() {
                return Exit::now(-1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_returns_the_exit_once_stopped() {
        let p = std::sync::Arc::new(Process::new(ExecState::Added, Stdio::default(), None));
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.wait().await.status }
        });
        p.transition("start", |s| match s {
            ExecState::Added => Some(ExecState::Running { pid: 5 }),
            _ => None,
        })
        .unwrap();
        p.transition("exit", |s| match s {
            ExecState::Running { pid } => Some(ExecState::Stopped { pid, exit: Exit::now(3) }),
            _ => None,
        })
        .unwrap();
        assert_eq!(waiter.await.unwrap(), 3);
        assert_eq!(p.wait().await.status, 3);
    }

    #[test]
    fn refused_transitions_name_the_state() {
        let p = Process::new(InitState::Running { pid: 1 }, Stdio::default(), None);
        let err = p
            .transition("start", |s| match s {
                InitState::Created { pid } => Some(InitState::Running { pid }),
                _ => None,
            })
            .unwrap_err();
        assert_eq!(err.to_string(), "cannot start a running process");
        assert_eq!(p.state(), InitState::Running { pid: 1 });
    }
}
