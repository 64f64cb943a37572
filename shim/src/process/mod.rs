//! The lifecycle of the processes a container runs.
//!
//! Each state carries only what a process in that state has: a created exec
//! has no pid yet, only a stopped process has an exit status. Each state
//! type has one method per transition (`init.rs`, `exec.rs`) that matches
//! every state, so a new state makes the compiler point at each transition
//! that must consider it; a verb in the wrong state is refused with an
//! error naming both (FailedPrecondition).

use std::{sync::Mutex, time::SystemTime};

use containerd_shim::{asynchronous::io::Stdio, protos::api::Status};
use tokio::sync::watch;

use crate::{error::Result, stdio::ProcessIo};

mod exec;
mod init;

pub use exec::ExecState;
pub use init::{InitState, Launch};

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

/// What every process state tells containerd.
pub trait Lifecycle: Clone {
    fn pid(&self) -> u32;
    fn status(&self) -> Status;
    fn exit(&self) -> Option<Exit>;
    /// The state's name in errors: "cannot start a running process".
    fn name(&self) -> &'static str;
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

    /// Moves to the state `transition` (one of the state type's transition
    /// methods) gives from the current one, or returns its refusal.
    pub fn transition(&self, transition: impl FnOnce(&S) -> Result<S>) -> Result<S> {
        let mut state = self.state.lock().unwrap();
        let next = transition(&state)?;
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
        p.transition(|s| s.start(5)).unwrap();
        p.transition(|s| s.exited(3)).unwrap();
        assert_eq!(waiter.await.unwrap(), 3);
        assert_eq!(p.wait().await.status, 3);
    }

    #[test]
    fn refused_transitions_name_the_state() {
        let p = Process::new(InitState::Running { pid: 1 }, Stdio::default(), None);
        let err = p.transition(|s| s.start(1)).unwrap_err();
        assert_eq!(err.to_string(), "cannot start a running process");
        assert_eq!(p.state(), InitState::Running { pid: 1 });
    }
}
