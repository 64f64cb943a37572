//! `migrate-agent`: the cluster's daemon on every host, beside containerd
//! and the shim. See coordinator/README.md, "Cluster".

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use migrate_cluster::agent::{self, Config};

#[derive(Debug, Parser)]
#[command(name = "migrate-agent", version, about = "The containerd-migrate cluster's agent on one host")]
struct Args {
    /// The host's name in the cluster (its certificate in --tls-dir is NAME.pem)
    #[arg(long, env = "MIGRATE_AGENT_NAME")]
    name: String,
    /// Address to serve the Agent API on (mutual TLS)
    #[arg(long, env = "MIGRATE_AGENT_LISTEN", default_value = "0.0.0.0:7401")]
    listen: SocketAddr,
    /// HOST:PORT the coordinator and other agents reach this agent at [default: --listen]
    #[arg(long, env = "MIGRATE_AGENT_ADVERTISE")]
    advertise: Option<String>,
    /// The coordinator, https://HOST:PORT (its certificate must name HOST); its replicas comma-separated
    #[arg(long, env = "MIGRATE_COORDINATOR", value_delimiter = ',', required = true)]
    coordinator: Vec<String>,
    /// Directory with the cluster's ca.pem and this host's certificate and key
    #[arg(long, env = "MIGRATE_TLS_DIR")]
    tls_dir: PathBuf,
    /// This host's containerd socket
    #[arg(long, env = "CONTAINERD_ADDRESS", default_value = "/run/containerd/containerd.sock")]
    containerd: PathBuf,
    /// The host's bridge over its NIC: containers' veths join it, so that they are on the cluster network
    #[arg(long, env = "MIGRATE_AGENT_BRIDGE")]
    bridge: Option<String>,
    /// A label for scheduling, KEY=VALUE (repeatable)
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Snapshotter of the cluster's containers (the project's own syncs their layers between hosts)
    #[arg(long, env = "MIGRATE_AGENT_SNAPSHOTTER", default_value = "migrate")]
    snapshotter: String,
    /// Where migrations keep their files, and the containers' logs (logs/ID.log)
    #[arg(long, env = "MIGRATE_AGENT_STATE", default_value = "/var/lib/containerd-migrate/agent")]
    state_dir: PathBuf,
    /// A file whose lines STEP=error|exit inject failures into migrations (for tests)
    #[arg(long, env = "MIGRATE_AGENT_FAILPOINTS", hide = true)]
    failpoints: Option<PathBuf>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    migrate_cluster::daemon::init();
    let args = Args::parse();
    let config = Config {
        name: args.name,
        listen: args.listen,
        advertise: args.advertise,
        coordinator: args.coordinator,
        tls_dir: args.tls_dir,
        containerd: args.containerd,
        labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
        snapshotter: args.snapshotter,
        bridge: args.bridge,
        state_dir: args.state_dir,
        failpoints: args.failpoints,
    };
    match agent::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
