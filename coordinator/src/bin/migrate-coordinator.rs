//! `migrate-coordinator`: keeps the cluster's state and its hosts'
//! membership. See coordinator/README.md, "Cluster".

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use migrate_cluster::coordinator::{self, Config, StateStore};
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
    /// Where the cluster's state is: redb (one file, --state; one coordinator) or etcd (--etcd-endpoints;
    /// several replicas, one leading)
    #[arg(long, env = "MIGRATE_STORE", default_value = "redb", value_parser = ["redb", "etcd"])]
    store: String,
    /// The cluster's state with --store redb: one file, created if missing
    #[arg(long, env = "MIGRATE_STATE", default_value = "/var/lib/containerd-migrate/cluster/state.redb")]
    state: PathBuf,
    /// etcd's client URLs with --store etcd, comma-separated (http://10.0.0.2:2379,http://10.0.0.3:2379)
    #[arg(long, env = "MIGRATE_ETCD_ENDPOINTS", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// This replica's name among the coordinators (default: the host's name)
    #[arg(long, env = "MIGRATE_COORDINATOR_NAME")]
    name: Option<String>,
    /// The URL agents and migratectl reach this replica at (default: https://LISTEN)
    #[arg(long, env = "MIGRATE_COORDINATOR_ADVERTISE")]
    advertise: Option<String>,
    /// Seconds a replica's lease in etcd lasts: how long the cluster may be without a leader after the leader's
    /// host dies (etcd's minimum is 2)
    #[arg(long, env = "MIGRATE_LEADER_TTL", default_value_t = 2)]
    leader_ttl: i64,
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
    let state = match args.store.as_str() {
        "etcd" if args.etcd_endpoints.is_empty() => Args::command()
            .error(ErrorKind::MissingRequiredArgument, "--store etcd needs --etcd-endpoints URL,...")
            .exit(),
        "etcd" => StateStore::Etcd(args.etcd_endpoints),
        _ => StateStore::Redb(args.state),
    };
    if args.leader_ttl < 1 {
        Args::command().error(ErrorKind::ValueValidation, "--leader-ttl is at least 1 (second)").exit();
    }
    let name = args.name.unwrap_or_else(|| {
        nix::unistd::gethostname().map_or_else(|_| "coordinator".into(), |h| h.to_string_lossy().into_owned())
    });
    let url = args.advertise.unwrap_or_else(|| format!("https://{}", args.listen));
    let config = Config {
        listen: args.listen,
        tls_dir: args.tls_dir,
        tls_name: args.tls_name,
        state,
        name,
        url,
        leader_ttl: args.leader_ttl,
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
