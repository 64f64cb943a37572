//! What the host shows about a container: processes, mounts and cgroups,
//! read from /proc and /sys the way an operator would look.

use std::fs;
use std::path::{Path, PathBuf};

/// True while `/proc/PID` exists and the process is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may
        // itself contain ") ".
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The NUL-separated arguments of a process, or `None` once it is gone.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Every live process on the host.
pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Shim processes serving container `id`: a `containerd-shim-*` binary
/// started with `-id ID` (both the Go runc shim and the containerd-shim
/// crate take containerd's arguments in this form).
pub fn shim_pids(id: &str) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            let Some(args) = cmdline(*pid) else {
                return false;
            };
            let is_shim = args
                .first()
                .and_then(|a| {
                    Path::new(a)
                        .file_name()?
                        .to_str()
                        .map(|n| n.starts_with("containerd-shim"))
                })
                .unwrap_or(false);
            is_shim && args.windows(2).any(|w| w[0] == "-id" && w[1] == id) && pid_alive(*pid)
        })
        .collect()
}

/// The working directory of a process: a shim runs in its bundle.
pub fn cwd(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// Mount points in the host mount namespace at or under `path`.
pub fn mounts_under(path: &Path) -> Vec<String> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let prefix = path.to_string_lossy().trim_end_matches('/').to_string();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|mp| *mp == prefix || mp.starts_with(&format!("{prefix}/")))
        .collect()
}

fn unescape_mount_path(raw: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = chars.clone().take(3).collect();
            if let Ok(v) = u8::from_str_radix(&digits, 8) {
                out.push(v as char);
                chars.nth(2);
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// The directory of `pid`'s cgroup v1 `controller` hierarchy (cgroup v2:
/// the unified directory when `controller` is not mounted separately).
pub fn cgroup_dir(pid: u32, controller: &str) -> Result<PathBuf, String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("cannot read /proc/{pid}/cgroup: {e}"))?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        if controllers.split(',').any(|c| c == controller) {
            return Ok(Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(path.trim_start_matches('/')));
        }
    }
    for line in text.lines() {
        if let Some(path) = line.strip_prefix("0::") {
            return Ok(Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')));
        }
    }
    Err(format!("no {controller} cgroup for pid {pid} in:\n{text}"))
}

/// Reads a cgroup file and trims it.
pub fn read_trimmed(path: &Path) -> Result<String, String> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// True when effective uid is 0.
pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Finds `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
