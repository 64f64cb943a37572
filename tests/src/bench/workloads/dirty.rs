//! Workload 5, memory-intensive: memtick rewriting a rotating window of its
//! pages every tick, so that a set share of its memory is dirtied every
//! second (memtick's `--dirty-percent` is per tick; at one tick per
//! [`super::INTERVAL_MS`] the per-second share follows), beside echo-server
//! for a pinging client.

use super::{Spec, TESTBOX, echo_client, memtick, shell};

pub fn spec(mib: u64, percent_per_sec: f64) -> Spec {
    let ticks_per_sec = 1000.0 / super::INTERVAL_MS as f64;
    let per_tick = percent_per_sec / ticks_per_sec;
    let script = format!(
        "/usr/local/bin/echo-server --port {} >/dev/null & exec {}",
        super::ECHO_PORT,
        memtick(mib, Some(per_tick))
    );
    Spec {
        image: TESTBOX,
        argv: shell(script),
        fill: None,
        client: Some(echo_client()),
        described: format!(
            "memtick --mib {mib} rewriting {percent_per_sec}% of its memory per second ({per_tick}% a tick); echo-server pinged"
        ),
    }
}
