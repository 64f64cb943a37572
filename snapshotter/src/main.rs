//! `containerd-snapshotter-migrate`: serves the migrate snapshotter to
//! containerd on a unix socket. See snapshotter/README.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use migrate_snapshotter::{overlay::Snapshotter, service};

#[derive(Debug, Parser)]
#[command(
    name = "containerd-snapshotter-migrate",
    version,
    about = "containerd-migrate's overlay snapshotter (a containerd proxy plugin)"
)]
struct Args {
    /// Directory of the snapshots and their metadata
    #[arg(long, env = "MIGRATE_SNAPSHOTTER_ROOT", default_value = "/var/lib/containerd-migrate-snapshotter")]
    root: PathBuf,
    /// Unix socket to serve containerd's Snapshots API on (the proxy plugin's address)
    #[arg(
        long,
        env = "MIGRATE_SNAPSHOTTER_SOCKET",
        default_value = "/run/containerd-migrate-snapshotter/snapshotter.sock"
    )]
    socket: PathBuf,
}

fn main() -> ExitCode {
    migrate_snapshotter::log::init();
    let args = Args::parse();
    let run = async {
        let snapshotter = Arc::new(Snapshotter::open(&args.root)?);
        service::serve(snapshotter, &args.socket, migrate_snapshotter::log::shutdown_signal()).await
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("containerd-snapshotter-migrate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
