//! The benchmark program: `bench checkpoint|startup|ticker|shim|migrate|ha|control-plane [options]`.
//! Each prints its tables (goals as ok / MISSED) on stdout, writes
//! target/bench/<name>.json with every sample, and draws PNG plots beside it.
//! Run as root, after hack/setup.sh:
//!
//! ```text
//! cargo run --release -p containerd-migrate-tests --bin bench -- checkpoint --runs 1 --sizes 64
//! ```

#[path = "../bench/mod.rs"]
mod bench;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmarks of io.containerd.migrate.v1 against io.containerd.runc.v2")]
struct Cli {
    #[command(subcommand)]
    benchmark: Benchmark,
}

#[derive(Subcommand)]
enum Benchmark {
    /// Frozen time, checkpoint and restore time per memory size and method.
    Checkpoint(bench::checkpoint::Options),
    /// A slow-starting service started cold against restored from a ready point.
    Startup(bench::startup::Options),
    /// `ctr run --rm` latency and resident memory per shim, migrate.v1 against runc.v2.
    Shim(bench::shim::Options),
    /// Checkpoint ticker versions against full checkpoints, per dirty rate and store.
    Ticker(bench::ticker::Options),
    /// Five workloads moved between two cluster hosts over a shaped link: every
    /// `migratectl migrate --mode` against runc.v2 checkpoint, export, copy, import, restore.
    Migrate(bench::migrate::Options),
    /// A host of a local cluster lost with 1, 10 or 30 containers: recovery time
    /// and state lost, restore policy checkpoint against restart.
    Ha(bench::ha::Options),
    /// Simulated hosts (1,000 by default, 10 containers each) heartbeating through
    /// migrate-coordinator on redb and on etcd: beat latency and lateness, the
    /// daemons' CPU and memory, and the leader's fail-over time.
    ControlPlane(bench::control_plane::Options),
    /// Internal (migrate runs it on a cluster host): send a file over TCP.
    #[command(hide = true)]
    WireSend(bench::wire::SendOptions),
    /// Internal (migrate runs it on a cluster host): receive one file over TCP.
    #[command(hide = true)]
    WireReceive(bench::wire::ReceiveOptions),
}

fn main() -> ExitCode {
    bench::interrupt::install();
    let result = match Cli::parse().benchmark {
        Benchmark::Checkpoint(o) => bench::checkpoint::run(o),
        Benchmark::Startup(o) => bench::startup::run(o),
        Benchmark::Shim(o) => bench::shim::run(o),
        Benchmark::Ticker(o) => bench::ticker::run(o),
        Benchmark::Migrate(o) => bench::migrate::run(o),
        Benchmark::Ha(o) => bench::ha::run(o),
        Benchmark::ControlPlane(o) => bench::control_plane::run(o),
        Benchmark::WireSend(o) => bench::wire::send(o),
        Benchmark::WireReceive(o) => bench::wire::receive(o),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: ERROR: {e:#}");
            ExitCode::FAILURE
        }
    }
}
