//! What the agent's services share: this host's containerd, how its
//! containers are made (snapshotter, bridge), its TLS identity (also for
//! CRIU's page server connections), and the migrations in progress here.

use std::collections::HashMap;
use std::path::PathBuf;

use tokio::sync::Mutex;

use super::migration::Migration;
use crate::host::containerd::Containerd;
use crate::certs::IdentityFiles;
use crate::tls::Tls;

pub struct Context {
    pub name: String,
    /// The IP other hosts reach this one at (a page server listens there).
    pub ip: String,
    pub cd: Containerd,
    pub snapshotter: String,
    /// None: this host runs no container of the cluster.
    pub bridge: Option<String>,
    pub tls: Tls,
    /// The same identity as files, for CRIU.
    pub tls_files: CriuTlsFiles,
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

/// The cluster's CA and this host's certificate and key, as CRIU's `--tls-*`
/// options take them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CriuTlsFiles {
    pub cacert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CriuTlsFiles {
    pub fn new(dir: &std::path::Path, name: &str) -> CriuTlsFiles {
        let own = IdentityFiles::of(dir, name);
        CriuTlsFiles { cacert: IdentityFiles::ca(dir).cert, cert: own.cert, key: own.key }
    }
}
