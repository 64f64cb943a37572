//! What the agent's services share: this host's containerd, how its
//! containers are made (snapshotter, bridge), its TLS identity (to reach
//! other agents), and the migrations in progress here.

use std::collections::HashMap;
use std::path::PathBuf;

use tokio::sync::Mutex;

use super::migration::Migration;
use crate::host::containerd::Containerd;
use crate::tls::Tls;

pub struct Context {
    pub name: String,
    pub cd: Containerd,
    pub snapshotter: String,
    /// None: this host runs no container of the cluster.
    pub bridge: Option<String>,
    pub tls: Tls,
    /// Where migrations keep their images and state on this host.
    pub work: PathBuf,
    /// Where the cluster's containers write their output.
    pub logs: PathBuf,
    pub migrations: Mutex<HashMap<String, Migration>>,
    pub failpoints: super::failpoints::Failpoints,
}

impl Context {
    /// The bridge containers join here, or why there is none.
    pub fn bridge(&self) -> anyhow::Result<String> {
        self.bridge.clone().ok_or_else(|| {
            anyhow::anyhow!("{} runs no containers of the cluster: its agent has no --bridge", self.name)
        })
    }
}
