//! `migratectl`: checkpoints containers through containerd and the
//! `io.containerd.migrate.v1` shim into this project's checkpoint format,
//! and restores new containers from such checkpoints.
//!
//! Flags follow `ctr`: a global `--address` and `--namespace`, and `--json`
//! on every command that lists or inspects. The verbs live in
//! [`commands`]; [`containerd`] holds the connection to containerd.
//!
//! `hosts` and `cluster` are the cluster's commands: a client of the
//! coordinator ([`cluster_client`]), and its certificates. The cluster's
//! code is the `migrate_cluster` library (`src/cluster/`).

use migrate_cluster::host::{containerd, ids, image, pipe, shim};

mod checkpoint_image;
mod cluster_client;
mod commands;
mod output;
mod runc_options;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands::{checkpoint, cluster, containers, coordinators, hosts, migrate, restore};

/// Where containerd listens unless told otherwise (as for `ctr`).
pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";

#[derive(Debug, Parser)]
#[command(
    name = "migratectl",
    version,
    about = "Checkpoint containers through containerd and restore clones from the checkpoints"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// What every command may need to reach containerd.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// containerd's gRPC socket
    #[arg(long, global = true, env = "CONTAINERD_ADDRESS", default_value = DEFAULT_ADDRESS)]
    pub address: String,
    /// containerd namespace to work in
    #[arg(short = 'n', long, global = true, env = "CONTAINERD_NAMESPACE", default_value = "default")]
    pub namespace: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, inspect and remove checkpoints
    #[command(subcommand, alias = "checkpoints")]
    Checkpoint(checkpoint::Command),
    /// Restore one or more new containers from a checkpoint
    Restore(restore::Args),
    /// Print the versions of migratectl and of the containerd it talks to
    Version,
    /// The cluster's hosts: name, address, state (ready|down), containers, last heartbeat
    Hosts(hosts::Args),
    /// The coordinator's replicas: which one leads, since when
    Coordinator(coordinators::Args),
    /// Run a container through the cluster: placed by the scheduler, with an IP of the cluster network
    Run(containers::RunArgs),
    /// Every container of the cluster: id, host, IP, state, image
    Ps(containers::PsArgs),
    /// Move a running container to another host (its memory, writable layer, IP and TCP connections)
    Migrate(migrate::Args),
    /// Make the cluster's CA and certificates
    #[command(subcommand)]
    Cluster(cluster::Command),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Like ctr and every C tool: `migratectl checkpoint ls | head` ends
    // quietly when head exits, instead of panicking on the closed pipe
    // (Rust ignores SIGPIPE by default). Not for the cluster's commands:
    // they talk TCP, and a coordinator that closes the connection (refusing
    // the certificate) would kill migratectl without a word; they treat a
    // closed stdout as the end instead (output::write_stdout).
    if !matches!(
        cli.command,
        Command::Hosts(_) | Command::Coordinator(_) | Command::Run(_) | Command::Ps(_) | Command::Migrate(_)
    ) {
        // SAFETY: no other thread exists yet (a current-thread runtime), and
        // SIG_DFL installs no handler.
        let _ = unsafe {
            nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl)
        };
    }
    output::init_logging();
    let result = match cli.command {
        Command::Checkpoint(cmd) => checkpoint::run(&cli.global, cmd).await,
        Command::Restore(args) => restore::run(&cli.global, args).await,
        Command::Version => commands::version(&cli.global).await,
        Command::Hosts(args) => hosts::run(args).await,
        Command::Coordinator(args) => coordinators::run(args).await,
        Command::Run(args) => containers::run(args).await,
        Command::Ps(args) => containers::ps(args).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Cluster(cmd) => cluster::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("migratectl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
