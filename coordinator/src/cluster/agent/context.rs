//! What the agent's services share: this host's containerd, how its
//! containers are made (snapshotter, bridge), its TLS identity (to reach
//! other agents), and the migrations in progress here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

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
    /// The same identity as files, for CRIU's page server and lazy pages.
    pub tls_files: TlsFiles,
    /// The address other hosts reach this one at (a post-copy's page
    /// server listens there).
    pub host: IpAddr,
    /// Where migrations keep their images and state on this host.
    pub work: PathBuf,
    /// Where the cluster's containers write their output.
    pub logs: PathBuf,
    pub migrations: Mutex<HashMap<String, Migration>>,
    pub failpoints: super::failpoints::Failpoints,
    /// Lost hosts' containers being brought back here.
    pub recoveries: super::recovery::Recoveries,
}

/// The PEM files of this host's TLS identity, as CRIU takes them.
#[derive(Debug, Clone, Serialize)]
pub struct TlsFiles {
    pub cacert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn of(dir: &Path, name: &str) -> TlsFiles {
        let own = crate::certs::IdentityFiles::of(dir, name);
        TlsFiles { cacert: crate::certs::IdentityFiles::ca(dir).cert, cert: own.cert, key: own.key }
    }
}

impl Context {
    /// The bridge containers join here, or why there is none.
    pub fn bridge(&self) -> anyhow::Result<String> {
        self.bridge.clone().ok_or_else(|| {
            anyhow::anyhow!("{} runs no containers of the cluster: its agent has no --bridge", self.name)
        })
    }
}
