//! What every runc call for a container's processes needs, owned by the
//! container: its id and namespace, its bundle, the runc to call, who owns
//! its stdio, and where exits are routed.

use std::{path::PathBuf, sync::Arc};

use containerd_shim::{asynchronous::io::Stdio, protos::shim::oci::Options, util::read_pid_from_file};
use log::warn;

use crate::{
    error::{Error, Result},
    exits::{Exits, ProcessKey},
    process::{Exit, InitState},
    runc::{CreateOptions, Runc},
    stdio::{IoOwner, LoggerEnv, PendingIo, ProcessIo},
};

pub(super) struct RuncContext {
    pub id: String,
    pub namespace: String,
    pub bundle: PathBuf,
    pub runc: Runc,
    pub owner: IoOwner,
    pub exits: Arc<Exits>,
}

impl RuncContext {
    pub fn logger_env(&self) -> LoggerEnv<'_> {
        LoggerEnv { container_id: &self.id, namespace: &self.namespace }
    }

    /// `runc create` of the init with the runtime `options`: the process
    /// waits in runc init for `runc start`, or has exited already.
    pub async fn create_init(&self, options: &Options, stdio: &Stdio) -> Result<(InitState, ProcessIo)> {
        let (pending, runc_stdio) = PendingIo::prepare(stdio, self.owner, &self.logger_env())?;
        let pid_file = self.bundle.join("init.pid");
        let starting = self.exits.begin_start();
        let opts = CreateOptions {
            bundle: &self.bundle,
            pid_file: &pid_file,
            console_socket: pending.console_socket(),
            no_pivot: options.no_pivot_root,
            no_new_keyring: options.no_new_keyring,
        };
        if let Err(e) = self.runc.create(&self.id, &opts, runc_stdio).await {
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
                if let Err(d) = self.runc.delete(&self.id, true).await {
                    warn!("failed to delete half-created container {}: {d}", self.id);
                }
                return Err(e);
            }
        };
        let key = ProcessKey { container: self.id.clone(), exec: None };
        let state = match self.exits.register(pid, key, &starting) {
            None => InitState::Created { pid },
            Some(status) => InitState::Stopped { pid, exit: Exit::now(status) },
        };
        Ok((state, io))
    }
}
