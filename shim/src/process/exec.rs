//! The states of a process added with Exec, and its transitions.

use containerd_shim::protos::api::Status;

use super::{Exit, Lifecycle};
use crate::error::{Error, Result};

/// A process added with Exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecState {
    /// Known to the shim, not started, so without a pid.
    Added,
    Running {
        pid: u32,
    },
    Stopped {
        pid: u32,
        exit: Exit,
    },
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

impl ExecState {
    /// Whether `runc exec` may start it.
    pub fn startable(&self) -> Result<()> {
        match self {
            ExecState::Added => Ok(()),
            ExecState::Running { .. } | ExecState::Stopped { .. } => {
                Err(Error::WrongState { verb: "start", state: self.name() })
            }
        }
    }

    /// `runc exec` started it as `pid`.
    pub fn start(&self, pid: u32) -> Result<ExecState> {
        self.startable().map(|()| ExecState::Running { pid })
    }

    /// The process exited with `status`.
    pub fn exited(&self, status: i32) -> Result<ExecState> {
        match *self {
            ExecState::Running { pid } => Ok(ExecState::Stopped { pid, exit: Exit::now(status) }),
            ExecState::Added | ExecState::Stopped { .. } => Err(Error::WrongState { verb: "exit", state: self.name() }),
        }
    }

    /// The pid of a running exec.
    pub fn running_pid(&self) -> Option<u32> {
        match *self {
            ExecState::Running { pid } => Some(pid),
            ExecState::Added | ExecState::Stopped { .. } => None,
        }
    }
}
