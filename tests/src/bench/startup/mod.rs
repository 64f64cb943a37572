//! Start-up benchmark: services that take seconds to start, started cold
//! against started from ready-point checkpoints, under
//! io.containerd.migrate.v1, in one run and one private containerd.
//!
//! Two apps (`--app`): SlowStart, this project's own JVM service, which
//! listens only once it is ready (`slowstart`), and Debian's Tomcat 10 with
//! its examples, a real server that binds its port long before it serves
//! (`tomcat`). Each writes its own results: `<out>` for SlowStart,
//! `<out stem>-tomcat.json` for Tomcat, plots beside them.

mod launch;
mod slowstart;
mod tomcat;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use super::Common;
use super::session::{Needs, Session};
use slowstart::Poll;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum App {
    /// SlowStart (hack/bench/startup/SlowStart.java)
    Slowstart,
    /// Debian's Tomcat 10 with its examples (hack/bench/tomcat-image.sh)
    Tomcat,
    /// Both, SlowStart first
    All,
}

#[derive(Args, Debug)]
pub struct Options {
    /// Which app to start.
    #[arg(long, value_enum, default_value_t = App::All)]
    pub app: App,
    /// Cold and restored starts each (interleaved); for Tomcat, per ready point.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// Clones restored from one checkpoint (SlowStart: sequentially and in
    /// parallel; Tomcat: from its warm-up and its http: ready point).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub clones: u64,
    /// How to wait for SlowStart's first HTTP answer (Tomcat's image has no
    /// wget: it is always polled from a thread in its network namespace).
    #[arg(long, value_enum, default_value_t = Poll::Nsenter)]
    pub poll: Poll,
    /// Tomcat: the warm-up ready point's requests of the probe's path once
    /// ready, before the dump (`...checkpoint-when-ready.warm-up`).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub warm_up: u64,
    /// Seconds a start may take to answer, or a ready point to be taken.
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
    if matches!(opts.app, App::Slowstart | App::All) {
        slowstart::run(&session, &opts)?;
    }
    if matches!(opts.app, App::Tomcat | App::All) {
        tomcat::run(&session, &opts, &tomcat_out(&session.out))?;
    }
    Ok(())
}

/// Where Tomcat's results go: beside `out`, with "-tomcat" after its stem.
fn tomcat_out(out: &std::path::Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map_or("startup".into(), |s| s.to_string_lossy());
    out.with_file_name(format!("{stem}-tomcat.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tomcat_results_go_beside_the_others() {
        assert_eq!(
            tomcat_out(std::path::Path::new("/r/target/bench/startup.json")),
            PathBuf::from("/r/target/bench/startup-tomcat.json")
        );
    }
}
