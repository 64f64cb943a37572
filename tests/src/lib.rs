//! Conformance harness for containerd runtime shims.
//!
//! The same scenarios run against `io.containerd.runc.v2` (the reference)
//! and `io.containerd.migrate.v1` through a real containerd 2.x, driven with
//! the `ctr` CLI, and assert the same concrete results for both: exit codes,
//! stdout/stderr bytes, task states, cgroup values, events, and that nothing
//! is left behind after a delete.
//!
//! Layout:
//! - [`fixture`]: the private containerd instance (`hack/containerd.sh`,
//!   `hack/images.sh`), the prerequisite check, container ids and clean-up
//!   guards;
//! - [`ctr`]: the `ctr` wrapper; [`process`]: commands with deadlines;
//!   [`pty`]: `ctr -t` on a real terminal; [`poll`]: waiting with a
//!   deadline; [`host`]: /proc and cgroup views; [`events`]: `ctr events`;
//!   [`footprint`]: what a task leaves on the host; [`shim`]: the shim's
//!   ttrpc socket (for `Update`, which `ctr` 2.x lacks); [`migratectl`]:
//!   the migratectl binary; [`registry`]: a distribution registry on
//!   loopback; [`criu_images`]: facts CRIU recorded in a dump's images;
//!   [`cluster`]: the local cluster of `hack/cluster.sh`.
//!
//! The benchmark program (`src/bin/bench.rs`, its modules in `src/bench/`)
//! runs on these fixtures too: `cargo run --release -p
//! containerd-migrate-tests --bin bench -- checkpoint|startup|ticker|shim`.
//!
//! Scenarios live in `tests/tests/conformance.rs` (one shared instance per
//! test binary, named `conformance`) and `tests/tests/restart.rs` (an
//! instance per test, since it restarts containerd). [`scenarios!`] turns
//! each scenario `fn(&Scenario)` into one test per runtime, named
//! `runc_v2::NAME` and `migrate_v1::NAME`.
//!
//! Running (as root, after `hack/setup.sh`, which installs containerd, runc
//! and CRIU and builds the shim into `target/release`):
//!
//! ```text
//! cargo build --release -p containerd-shim-migrate-v1
//! cargo test -p containerd-migrate-tests                     # both runtimes
//! cargo test -p containerd-migrate-tests -- runc_v2::        # reference only
//! cargo test -p containerd-migrate-tests -- migrate_v1::     # shim under test
//! ```
//!
//! Without root, containerd, runc, the hack/ scripts, the test image or the
//! built shim, each test prints `skipping: ...` to stderr and passes; with
//! `CI=true` it fails instead. `SHIM_DIR` overrides where the shim is taken
//! from; `CONTAINERD_MIGRATE_KEEP_INSTANCE=1` leaves the containerd instance
//! running after the tests for a look around.
//!
//! The scenarios are safe to run in parallel threads (every container id is
//! unique, every wait is a poll with a deadline); with the default two
//! threads on two cores both runtimes take about 35 s (conformance ~20 s,
//! restart ~15 s). Known behaviour of the reference that the scenarios are
//! built around, not papered over: `ctr run`/`ctr t exec` close stdin only
//! if EOF arrives after the task exists (tests write stdin once it runs);
//! runc.v2 may drop terminal output still in flight at exit (tty tests
//! read the output before they let the process exit) and may lose its
//! `/tasks/delete` event under load (checked only when it arrives).

pub mod cluster;
pub mod criu_images;
pub mod ctr;
pub mod events;
pub mod fixture;
pub mod footprint;
pub mod host;
pub mod memtick;
pub mod migratectl;
pub mod poll;
pub mod process;
pub mod pty;
pub mod registry;
pub mod shim;

pub use fixture::{Container, IMAGE, MIGRATE_V1, RUNC_V2, Scenario};

/// Declares one `#[test]` per scenario and runtime.
///
/// `scenarios!(shared "INSTANCE": a, b)` runs scenario fns `a` and `b` (each
/// `fn(&Scenario)`) on the test binary's shared containerd instance named
/// INSTANCE; `scenarios!(isolated: c)` gives each test an instance of its
/// own. Tests are named `runc_v2::a`, `migrate_v1::a`, ...
#[macro_export]
macro_rules! scenarios {
    (shared $instance:literal: $($name:ident),+ $(,)?) => {
        $crate::scenarios!(@each
            (|runtime, test, f| $crate::fixture::run_shared($instance, runtime, test, f))
            $($name),+);
    };
    (isolated: $($name:ident),+ $(,)?) => {
        $crate::scenarios!(@each ($crate::fixture::run_isolated) $($name),+);
    };
    (@each $runner:tt $($name:ident),+) => {
        mod runc_v2 {
            $(
                #[test]
                fn $name() {
                    ($runner)($crate::RUNC_V2, stringify!($name), super::$name);
                }
            )+
        }
        mod migrate_v1 {
            $(
                #[test]
                fn $name() {
                    ($runner)($crate::MIGRATE_V1, stringify!($name), super::$name);
                }
            )+
        }
    };
}
