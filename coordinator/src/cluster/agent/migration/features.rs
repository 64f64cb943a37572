//! What this host allows a migration, and how much memory a container
//! holds. Post-copy needs pipes large enough for CRIU's lazy page server on
//! the source and userfaultfd on the target; pre-copy needs soft-dirty
//! memory tracking on the source. Each is a reason when missing, so that
//! an explicit mode is refused with it and `--mode auto` can say why it
//! chose another.

use std::path::Path;

use tokio::sync::OnceCell;

/// The pipe size CRIU's lazy page server needs: with less it fails later
/// with "splice: Bad file descriptor" (PLATFORM.md), not at the start.
const LAZY_PIPE_BYTES: u64 = 4 << 20;
const PIPE_MAX_SIZE: &str = "/proc/sys/fs/pipe-max-size";

/// Why this host cannot serve a post-copy's pages; None if it can.
pub fn post_copy_source() -> Option<String> {
    match std::fs::read_to_string(PIPE_MAX_SIZE).ok().and_then(|s| s.trim().parse::<u64>().ok()) {
        Some(size) if size >= LAZY_PIPE_BYTES => None,
        Some(size) => Some(format!(
            "fs.pipe-max-size is {size}: CRIU's lazy page server needs {LAZY_PIPE_BYTES} \
             (sysctl -w fs.pipe-max-size={LAZY_PIPE_BYTES}; hack/setup.sh sets it)"
        )),
        None => Some(format!("cannot read {PIPE_MAX_SIZE}")),
    }
}

/// Why this host cannot restore by post-copy; None if it can.
pub async fn post_copy_target() -> Option<String> {
    static CHECKED: OnceCell<Option<String>> = OnceCell::const_new();
    CHECKED.get_or_init(|| criu_feature("uffd-noncoop", "userfaultfd (post-copy)")).await.clone()
}

/// Why this host cannot track dirty memory; None if it can.
pub async fn dirty_tracking() -> Option<String> {
    static CHECKED: OnceCell<Option<String>> = OnceCell::const_new();
    CHECKED
        .get_or_init(|| criu_feature("mem_dirty_track", "soft-dirty memory tracking (kernel CONFIG_MEM_SOFT_DIRTY)"))
        .await
        .clone()
}

/// `criu check --feature FEATURE`: None if supported, else why not.
async fn criu_feature(feature: &str, what: &str) -> Option<String> {
    let out = tokio::process::Command::new("criu").args(["check", "--feature", feature]).output().await;
    match out {
        Ok(out) if out.status.success() => None,
        Ok(out) => {
            let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
            let said = text.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("");
            Some(format!("this host's kernel lacks {what}: criu check --feature {feature}: {said}"))
        }
        Err(e) => Some(format!("cannot run criu check --feature {feature}: {e}")),
    }
}

/// The memory the processes of the container whose init is `pid` hold:
/// its memory cgroup's anonymous and shared memory (what CRIU dumps; page
/// cache of files is not dumped). None if the cgroup cannot be read.
pub fn memory_bytes(pid: u32) -> Option<u64> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            let stat = std::fs::read_to_string(Path::new("/sys/fs/cgroup/memory").join(path).join("memory.stat"));
            return stat.ok().map(|s| sum(&s, &["total_rss", "total_shmem"]));
        }
        if controllers.is_empty() && Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let stat = std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(path).join("memory.stat"));
            return stat.ok().map(|s| sum(&s, &["anon", "shmem"]));
        }
    }
    None
}

fn sum(stat: &str, keys: &[&str]) -> u64 {
    stat.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| keys.contains(k))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_anonymous_and_shared() {
        let v1 = "cache 100\nrss 5\ntotal_cache 4096\ntotal_rss 1048576\ntotal_shmem 4096\n";
        assert_eq!(sum(v1, &["total_rss", "total_shmem"]), 1048576 + 4096);
        let v2 = "anon 2097152\nfile 8192\nshmem 0\n";
        assert_eq!(sum(v2, &["anon", "shmem"]), 2097152);
    }
}
