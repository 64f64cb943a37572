//! The init process's states and its transitions: one method per
//! transition, each matching every state.

use std::{path::Path, sync::Arc};

use containerd_shim::protos::api::Status;

use super::{Exit, Lifecycle};
use crate::error::{Error, Result};

/// The container's init process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitState {
    /// `runc create` ran: the process waits in runc init for `runc start`.
    Created {
        pid: u32,
    },
    /// To be restored from the CRIU images in `image` when started; there is
    /// no process, and so no pid, until then.
    CreatedFromCheckpoint {
        image: Arc<Path>,
    },
    Running {
        pid: u32,
    },
    Paused {
        pid: u32,
    },
    Stopped {
        pid: u32,
        exit: Exit,
    },
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

/// How a created init is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    Start { pid: u32 },
    Restore { image: Arc<Path> },
}

impl InitState {
    fn refuse(&self, verb: &'static str) -> Error {
        Error::WrongState { verb, state: self.name() }
    }

    /// What starting it takes: `runc start` of the process `runc create`
    /// made, or `runc restore` of the checkpoint.
    pub fn launch(&self) -> Result<Launch> {
        match self {
            InitState::Created { pid } => Ok(Launch::Start { pid: *pid }),
            InitState::CreatedFromCheckpoint { image } => Ok(Launch::Restore { image: image.clone() }),
            InitState::Running { .. } | InitState::Paused { .. } | InitState::Stopped { .. } => {
                Err(self.refuse("start"))
            }
        }
    }

    /// `runc start` ran, or `runc restore` did: the process is `pid`.
    pub fn start(&self, pid: u32) -> Result<InitState> {
        self.launch().map(|_| InitState::Running { pid })
    }

    pub fn pause(&self) -> Result<InitState> {
        match *self {
            InitState::Running { pid } => Ok(InitState::Paused { pid }),
            InitState::Created { .. }
            | InitState::CreatedFromCheckpoint { .. }
            | InitState::Paused { .. }
            | InitState::Stopped { .. } => Err(self.refuse("pause")),
        }
    }

    pub fn resume(&self) -> Result<InitState> {
        match *self {
            InitState::Paused { pid } => Ok(InitState::Running { pid }),
            InitState::Created { .. }
            | InitState::CreatedFromCheckpoint { .. }
            | InitState::Running { .. }
            | InitState::Stopped { .. } => Err(self.refuse("resume")),
        }
    }

    /// The process exited with `status`.
    pub fn exited(&self, status: i32) -> Result<InitState> {
        match *self {
            InitState::Created { pid } | InitState::Running { pid } | InitState::Paused { pid } => {
                Ok(InitState::Stopped { pid, exit: Exit::now(status) })
            }
            InitState::CreatedFromCheckpoint { .. } | InitState::Stopped { .. } => Err(self.refuse("exit")),
        }
    }

    /// Whether CRIU can dump it now: it has a process, running or paused.
    pub fn checkpointable(&self) -> Result<()> {
        match self {
            InitState::Running { .. } | InitState::Paused { .. } => Ok(()),
            InitState::Created { .. } | InitState::CreatedFromCheckpoint { .. } | InitState::Stopped { .. } => {
                Err(self.refuse("checkpoint"))
            }
        }
    }

    /// Whether runc knows a live container to `verb` (exec in, update).
    pub fn live(&self, verb: &'static str) -> Result<()> {
        match self {
            InitState::Created { .. } | InitState::Running { .. } | InitState::Paused { .. } => Ok(()),
            InitState::CreatedFromCheckpoint { .. } | InitState::Stopped { .. } => Err(self.refuse(verb)),
        }
    }

    /// The pid of a process that runs or waits to, if there is one.
    pub fn live_pid(&self) -> Option<u32> {
        match *self {
            InitState::Created { pid } | InitState::Running { pid } | InitState::Paused { pid } => Some(pid),
            InitState::CreatedFromCheckpoint { .. } | InitState::Stopped { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_verb_moves_only_from_its_states() {
        let running = InitState::Running { pid: 7 };
        assert_eq!(running.pause().unwrap(), InitState::Paused { pid: 7 });
        assert_eq!(running.pause().unwrap().resume().unwrap(), running);
        assert_eq!(InitState::Created { pid: 7 }.start(7).unwrap(), running);
        let restore = InitState::CreatedFromCheckpoint { image: Path::new("/cp").into() };
        assert_eq!(restore.start(9).unwrap(), InitState::Running { pid: 9 });
        assert_eq!(running.resume().unwrap_err().to_string(), "cannot resume a running process");
        assert_eq!(restore.pause().unwrap_err().to_string(), "cannot pause a created process");
        assert!(restore.exited(0).is_err());
        let stopped = running.exited(137).unwrap();
        assert_eq!(stopped.exit().unwrap().status, 137);
        assert_eq!(stopped.checkpointable().unwrap_err().to_string(), "cannot checkpoint a stopped process");
        assert_eq!(stopped.live("exec in").unwrap_err().to_string(), "cannot exec in a stopped process");
    }
}
