//! Reading the counter that the test program memtick keeps in /tmp/tick,
//! from the host through /proc, so no exec is needed and a restored
//! container can be checked the moment it runs.

use std::time::Duration;

use crate::poll;

/// How long a counter may take to move on.
pub const TICK_TIMEOUT: Duration = Duration::from_secs(30);

/// The tick count memtick last wrote to /tmp/tick in the container of `pid`.
pub fn tick(pid: u32) -> Result<u64, String> {
    tick_in(pid, "/tmp/tick")
}

/// The tick count a memtick run with `--out FILE` last wrote, in the
/// container of `pid`.
pub fn tick_in(pid: u32, file: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/root{file}");
    let line = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("tick="))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("{path} holds {line:?}"))
}

/// Waits until the counter of `pid` is above `above`; returns it.
#[track_caller]
pub fn wait_tick_above(pid: u32, above: u64, what: &str) -> u64 {
    poll::until(TICK_TIMEOUT, what, || match tick(pid) {
        Ok(n) if n > above => Ok(n),
        Ok(n) => Err(format!("tick={n}")),
        Err(e) => Err(e),
    })
}
