//! How migratectl reaches the cluster's coordinator: its URL, and a client
//! certificate of the cluster's CA (the coordinator takes no other).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use migrate_cluster::proto::coordinator_client::CoordinatorClient;
use migrate_cluster::tls::{self, Tls};
use tonic::transport::Channel;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// The coordinator, https://HOST:PORT
    #[arg(long, env = "MIGRATE_COORDINATOR")]
    coordinator: String,
    /// Directory with the cluster's ca.pem and migratectl's certificate and key
    #[arg(long, env = "MIGRATE_TLS_DIR")]
    tls_dir: PathBuf,
    /// Name of migratectl's certificate in --tls-dir (NAME.pem, NAME-key.pem)
    #[arg(long, env = "MIGRATE_TLS_NAME", default_value = "migratectl")]
    tls_name: String,
}

impl ClusterArgs {
    pub fn url(&self) -> &str {
        &self.coordinator
    }

    pub async fn coordinator(&self) -> Result<CoordinatorClient<Channel>> {
        let server_name = tls::url_host(&self.coordinator)
            .with_context(|| format!("--coordinator {} is not an https://HOST:PORT URL", self.coordinator))?;
        let tls = Tls::load(&self.tls_dir, &self.tls_name)?;
        let channel = tls.connect_without_deadline(&self.coordinator, server_name, CONNECT_TIMEOUT).await?;
        Ok(CoordinatorClient::new(channel))
    }
}
