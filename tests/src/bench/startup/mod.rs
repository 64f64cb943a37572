//! Start-up benchmark: a service that takes seconds to start, started cold
//! against started from a ready-point checkpoint, under
//! io.containerd.migrate.v1, in one run and one private containerd.
//!
//! The app is SlowStart, this project's own JVM service (`slowstart`);
//! `launch` holds what starting its containers takes, apart from it.

mod launch;
mod slowstart;

use anyhow::{Context, Result};
use clap::Args;

use super::Common;
use super::session::{Needs, Session};
use slowstart::Poll;

#[derive(Args, Debug)]
pub struct Options {
    /// Cold and restored starts each (interleaved).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// Clones restored from the one checkpoint, sequentially and in parallel.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub clones: u64,
    /// How to wait for the first HTTP answer.
    #[arg(long, value_enum, default_value_t = Poll::Nsenter)]
    pub poll: Poll,
    /// Seconds a start may take to answer, or the ready point to be taken.
    #[arg(long, default_value_t = 120)]
    pub start_timeout: u64,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(opts: Options) -> Result<()> {
    let session = Session::start(
        &opts.common,
        Needs {
            name: "startup",
            migratectl: false,
            private_runtime_dir: false,
        },
    )?;
    std::fs::create_dir_all(session.work.join("logs")).context("creating the logs dir")?;
    slowstart::run(&session, &opts)
}
