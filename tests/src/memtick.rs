//! Reading the counter that the test program memtick keeps in /tmp/tick,
//! from the host through /proc, so no exec is needed and a restored
//! container can be checked the moment it runs.

use std::path::Path;
use std::time::Duration;

use crate::poll;

/// How long a counter may take to move on.
pub const TICK_TIMEOUT: Duration = Duration::from_secs(30);

/// One line memtick writes to its `--out` file and to stdout:
/// `tick=N gap_ms=G max_gap_ms=M unix_ms=T wall_gap_ms=W max_wall_gap_ms=X`
/// (the wall-clock fields only from memtick builds that have them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickLine {
    pub tick: u64,
    /// Milliseconds since the tick before (a freeze shows up here).
    pub gap_ms: u64,
    /// The largest gap since memtick started.
    pub max_gap_ms: u64,
    /// Wall clock time of the tick, ms since the epoch.
    pub unix_ms: u64,
    /// The largest gap since memtick started on the wall clock, which,
    /// unlike the monotonic one, counts the time between a checkpoint and
    /// its restore (CRIU restores CLOCK_MONOTONIC in a time namespace that
    /// hides it).
    pub max_wall_gap_ms: Option<u64>,
}

impl TickLine {
    /// Parses a line that holds memtick's four fields (other words around
    /// them, such as a log prefix, are ignored); `None` if one is missing.
    pub fn parse(line: &str) -> Option<TickLine> {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
        };
        Some(TickLine {
            tick: field("tick")?,
            gap_ms: field("gap_ms")?,
            max_gap_ms: field("max_gap_ms")?,
            unix_ms: field("unix_ms")?,
            max_wall_gap_ms: field("max_wall_gap_ms"),
        })
    }

    /// The line memtick last wrote to `file` (read from the host, e.g.
    /// through a container's rootfs or /proc/PID/root).
    pub fn read(file: &Path) -> Result<TickLine, String> {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        TickLine::parse(&text).ok_or_else(|| format!("{} holds {text:?}", file.display()))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_line() {
        assert_eq!(
            TickLine::parse("tick=12 gap_ms=10 max_gap_ms=340 unix_ms=1700000000123\n"),
            Some(TickLine {
                tick: 12,
                gap_ms: 10,
                max_gap_ms: 340,
                unix_ms: 1_700_000_000_123,
                max_wall_gap_ms: None,
            })
        );
        let line = "tick=3 gap_ms=10 max_gap_ms=12 unix_ms=5 wall_gap_ms=900 max_wall_gap_ms=900";
        assert_eq!(TickLine::parse(line).unwrap().max_wall_gap_ms, Some(900));
        assert_eq!(TickLine::parse(line).unwrap().max_gap_ms, 12);
        assert_eq!(TickLine::parse("tick=12 gap_ms=10"), None);
        assert_eq!(TickLine::parse("memtick: CORRUPT page 3"), None);
    }
}
