//! How migratectl reaches the cluster's coordinator: its URL, and a client
//! certificate of the cluster's CA (the coordinator takes no other).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use migrate_cluster::proto::ListCoordinatorsRequest;
use migrate_cluster::proto::coordinator_client::CoordinatorClient;
use migrate_cluster::tls::{self, Tls};
use tonic::transport::Channel;

/// How long connecting to a coordinator may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// With several replicas, how long one may take to say which leads before
/// the next is asked (a replica whose host is gone never answers).
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// The coordinator, https://HOST:PORT; its replicas comma-separated (the leader is found among them)
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

    fn urls(&self) -> Vec<&str> {
        self.coordinator.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
    }

    async fn connect(&self, tls: &Tls, url: &str) -> Result<CoordinatorClient<Channel>> {
        let server_name =
            tls::url_host(url).with_context(|| format!("--coordinator {url} is not an https://HOST:PORT URL"))?;
        let channel = tls.connect_watched(url, server_name, CONNECT_TIMEOUT).await?;
        Ok(CoordinatorClient::new(channel))
    }

    /// A client of the coordinator: the one named, or of several replicas
    /// the leader (any replica answers lists, only the leader changes the
    /// cluster), else the first that answers.
    pub async fn coordinator(&self) -> Result<CoordinatorClient<Channel>> {
        let tls = Tls::load(&self.tls_dir, &self.tls_name)?;
        let urls = self.urls();
        if let [url] = urls.as_slice() {
            return self.connect(&tls, url).await;
        }
        let mut errors = Vec::new();
        for url in &urls {
            let mut client = match self.connect(&tls, url).await {
                Ok(c) => c,
                Err(e) => {
                    errors.push(format!("{url}: {e:#}"));
                    continue;
                }
            };
            // A replica whose host is gone takes no call and refuses none.
            let asked = tokio::time::timeout(ASK_TIMEOUT, client.list_coordinators(ListCoordinatorsRequest {}));
            let leader = match asked.await {
                Ok(Ok(r)) => r.into_inner().replicas.into_iter().find(|r| r.leader),
                Ok(Err(s)) => {
                    errors.push(format!("{url}: {}", tls::status_chain(&s)));
                    continue;
                }
                Err(_) => {
                    errors.push(format!("{url}: no answer within {ASK_TIMEOUT:?}"));
                    continue;
                }
            };
            match leader {
                Some(l) if l.url != *url => match self.connect(&tls, &l.url).await {
                    Ok(c) => return Ok(c),
                    Err(e) => errors.push(format!("the leader {} at {}: {e:#}", l.name, l.url)),
                },
                // The leader itself, or no leader at the moment: this one
                // answers lists, and says so for the rest.
                _ => return Ok(client),
            }
        }
        anyhow::bail!("no replica of the coordinator answers: {}", errors.join("; "))
    }
}
