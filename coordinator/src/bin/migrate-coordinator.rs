//! `migrate-coordinator`: keeps the cluster's state and its hosts'
//! membership. See coordinator/README.md, "Cluster".

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use migrate_cluster::coordinator::{self, Config};
use migrate_cluster::ipam::Pool;
use migrate_cluster::membership::HeartbeatPolicy;

#[derive(Debug, Parser)]
#[command(name = "migrate-coordinator", version, about = "The containerd-migrate cluster's coordinator")]
struct Args {
    /// Address to serve the Coordinator API on (mutual TLS)
    #[arg(long, env = "MIGRATE_COORDINATOR_LISTEN", default_value = "0.0.0.0:7400")]
    listen: SocketAddr,
    /// Directory with the cluster's ca.pem and this coordinator's certificate and key
    #[arg(long, env = "MIGRATE_TLS_DIR")]
    tls_dir: PathBuf,
    /// Name of the coordinator's certificate in --tls-dir (NAME.pem, NAME-key.pem)
    #[arg(long, env = "MIGRATE_TLS_NAME", default_value = "coordinator")]
    tls_name: String,
    /// The cluster's state: one file, created if missing
    #[arg(long, env = "MIGRATE_STATE", default_value = "/var/lib/containerd-migrate/cluster/state.redb")]
    state: PathBuf,
    /// The cluster network containers get addresses of, such as 10.88.3.0/24
    #[arg(long, env = "MIGRATE_CONTAINER_SUBNET", requires = "container_range")]
    container_subnet: Option<String>,
    /// Host numbers of --container-subnet for containers, FIRST-LAST such as 100-249 (the rest is the hosts')
    #[arg(long, env = "MIGRATE_CONTAINER_RANGE", requires = "container_subnet")]
    container_range: Option<String>,
    /// How often agents beat, in milliseconds
    #[arg(long, env = "MIGRATE_HEARTBEAT_PERIOD_MS", default_value_t = 1000)]
    heartbeat_period_ms: u64,
    /// How long a host may go without a beat before it is declared down (and its containers with a restore
    /// policy are brought back elsewhere), in milliseconds; at least two periods
    #[arg(long, env = "MIGRATE_HEARTBEAT_TIMEOUT_MS", default_value_t = 3000)]
    heartbeat_timeout_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    migrate_cluster::daemon::init();
    let args = Args::parse();
    let container_network = match (&args.container_subnet, &args.container_range) {
        (Some(subnet), Some(range)) => Some(
            Pool::new(subnet, range).unwrap_or_else(|e| Args::command().error(ErrorKind::ValueValidation, e).exit()),
        ),
        _ => None,
    };
    let policy = HeartbeatPolicy::new(
        Duration::from_millis(args.heartbeat_period_ms),
        Duration::from_millis(args.heartbeat_timeout_ms),
    )
    .unwrap_or_else(|e| Args::command().error(ErrorKind::ValueValidation, e).exit());
    let config = Config {
        listen: args.listen,
        tls_dir: args.tls_dir,
        tls_name: args.tls_name,
        state: args.state,
        policy,
        container_network,
    };
    match coordinator::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
