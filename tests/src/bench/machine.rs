//! The description of the machine and the build that every result file
//! carries: kernel, CPUs, memory, the container stack's versions, the
//! commit and which of the benchmarked paths have uncommitted changes.

use std::path::Path;
use std::process::Command;

use containerd_migrate_tests::fixture::repo_root;
use serde_json::{Value, json};

/// The paths whose code goes into the benchmarked binaries.
pub const CODE_PATHS: &[&str] = &["shim", "oci", "coordinator", "Cargo.toml", "Cargo.lock"];

/// The machine and build, as the scripts' `bench_machine_json` wrote it.
pub fn describe(git_paths: &[&str]) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let root = repo_root().display().to_string();
    let mut status = command(&["git", "-C", &root, "status", "--porcelain", "--"]);
    status.args(git_paths);
    let dirty: Vec<String> = first_line_of(status, usize::MAX)
        .map(|s| {
            s.lines()
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    json!({
        "kernel": output(&["uname", "-r"]),
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "mem_total_kib": meminfo_kib(&meminfo, "MemTotal"),
        "containerd": output(&["containerd", "--version"]),
        "runc": output(&["runc", "--version"]),
        "criu": output(&["criu", "--version"]),
        "git_commit": output(&["git", "-C", &root, "rev-parse", "HEAD"]),
        "git_dirty": dirty,
    })
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg shows them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The 1 minute load average.
pub fn loadavg_1m() -> Option<f64> {
    loadavg().split_whitespace().next()?.parse().ok()
}

/// A field of /proc/meminfo in KiB.
pub fn meminfo_kib(meminfo: &str, field: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// MemAvailable in KiB.
pub fn mem_available_kib() -> Option<u64> {
    meminfo_kib(
        &std::fs::read_to_string("/proc/meminfo").ok()?,
        "MemAvailable",
    )
}

/// The file system type of `path` (tmpfs, ext2/ext3, xfs, ...), as
/// `stat -f -c %T` names it.
pub fn fs_type(path: &Path) -> String {
    output(&["stat", "-f", "-c", "%T", &path.display().to_string()])
}

/// The first line `argv` prints, or "unknown".
pub fn output(argv: &[&str]) -> String {
    first_line_of(command(argv), 1).unwrap_or_else(|| "unknown".into())
}

fn command(argv: &[&str]) -> Command {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

fn first_line_of(mut cmd: Command, lines: usize) -> Option<String> {
    let out = cmd.output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().take(lines).collect::<Vec<_>>().join("\n"))
}

/// The current time in UTC, RFC 3339 to the second (the scripts' `date -u +%FT%TZ`).
pub fn now_utc() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields() {
        let text = "MemTotal:       24552812 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(meminfo_kib(text, "MemTotal"), Some(24_552_812));
        assert_eq!(meminfo_kib(text, "MemAvailable"), Some(20_000_000));
        assert_eq!(meminfo_kib(text, "Mem"), None);
    }
}
