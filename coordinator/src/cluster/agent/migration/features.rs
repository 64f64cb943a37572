//! What this host allows a migration, and how much memory a container
//! holds. Post-copy needs pipes large enough for CRIU's lazy page server on
//! the source and userfaultfd on the target; pre-copy needs soft-dirty
//! memory tracking on the source. Each is a reason when missing, so that
//! an explicit mode is refused with it and `--mode auto` can say why it
//! chose another. Where memory is tracked, [`dirty_rate`] measures how
//! fast a container dirties it, which decides whether pre-copy converges.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
/// cache of files is not dumped), or where the cgroup does not account
/// memory (its controller not enabled), its processes' resident anonymous
/// and shared memory. None if neither can be read.
pub fn memory_bytes(pid: u32) -> Option<u64> {
    let (dir, v2) = memory_cgroup(pid)?;
    match std::fs::read_to_string(dir.join("memory.stat")) {
        Ok(stat) if v2 => Some(sum(&stat, &["anon", "shmem"])),
        Ok(stat) => Some(sum(&stat, &["total_rss", "total_shmem"])),
        Err(_) => {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
            let kib: u64 = procs
                .lines()
                .filter_map(|p| std::fs::read_to_string(format!("/proc/{}/status", p.trim())).ok())
                .map(|status| status_kib(&status, &["RssAnon:", "RssShmem:"]))
                .sum();
            Some(kib * 1024)
        }
    }
}

/// The sum of `/proc/PID/status` fields `keys`, in KiB.
fn status_kib(status: &str, keys: &[&str]) -> u64 {
    status
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .filter(|(k, _)| keys.contains(k))
        .filter_map(|(_, v)| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .sum()
}

/// The memory cgroup of process `pid`, and whether it is cgroup v2's.
fn memory_cgroup(pid: u32) -> Option<(PathBuf, bool)> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            return Some((Path::new("/sys/fs/cgroup/memory").join(path), false));
        }
        if controllers.is_empty() && Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            return Some((Path::new("/sys/fs/cgroup").join(path), true));
        }
    }
    None
}

/// How long [`dirty_rate`] watches.
const DIRTY_WINDOW: Duration = Duration::from_millis(200);
/// Soft-dirty and present bits of a `/proc/PID/pagemap` entry.
const SOFT_DIRTY: u64 = 1 << 55;
const PRESENT: u64 = 1 << 63;
/// The most pagemap entries read per process (1 TiB of address space):
/// reserved but never touched ranges can be huge.
const MAX_ENTRIES: u64 = 1 << 28;

/// The bytes per second the processes of the container whose init is
/// `pid` dirty: their soft-dirty bits cleared, then counted after
/// [`DIRTY_WINDOW`]. Only where the kernel tracks them ([`dirty_tracking`]),
/// and never for a container whose own dumps rely on those bits (a
/// criu-parent ticker): clearing them would hide changes from its next
/// increment. Blocking.
pub fn dirty_rate(pid: u32) -> anyhow::Result<f64> {
    use anyhow::Context as _;
    let (dir, _) = memory_cgroup(pid).context("the container's memory cgroup is not found")?;
    let procs = std::fs::read_to_string(dir.join("cgroup.procs"))
        .with_context(|| format!("read {}", dir.join("cgroup.procs").display()))?;
    let pids: Vec<u32> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
    for p in &pids {
        // 4: clear the soft-dirty bits (Documentation/admin-guide/mm/soft-dirty.rst).
        std::fs::write(format!("/proc/{p}/clear_refs"), "4").with_context(|| format!("clear_refs of {p}"))?;
    }
    let started = Instant::now();
    std::thread::sleep(DIRTY_WINDOW);
    let mut pages = 0u64;
    for p in &pids {
        // A process that exited meanwhile dirties nothing more.
        pages += dirty_pages(*p).unwrap_or(0);
    }
    Ok(pages as f64 * page_size() as f64 / started.elapsed().as_secs_f64())
}

/// The present pages of process `pid` whose soft-dirty bit is set.
fn dirty_pages(pid: u32) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap"))?;
    let page = page_size();
    let mut buf = vec![0u8; 8 * 4096];
    let (mut dirty, mut read) = (0u64, 0u64);
    for line in maps.lines() {
        let Some((range, _)) = line.split_once(' ') else { continue };
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) else { continue };
        let mut at = start / page;
        while at < end / page && read < MAX_ENTRIES {
            let n = ((end / page - at) as usize).min(buf.len() / 8);
            let got = pagemap.read_at(&mut buf[..n * 8], at * 8)?;
            if got == 0 {
                break;
            }
            for entry in buf[..got].chunks_exact(8) {
                let e = u64::from_ne_bytes(entry.try_into().expect("8 bytes"));
                if e & (SOFT_DIRTY | PRESENT) == SOFT_DIRTY | PRESENT {
                    dirty += 1;
                }
            }
            at += (got / 8) as u64;
            read += (got / 8) as u64;
        }
    }
    Ok(dirty)
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system, nothing of ours.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
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
        let status = "VmRSS:\t   70000 kB\nRssAnon:\t   65536 kB\nRssFile:\t    4000 kB\nRssShmem:\t      16 kB\n";
        assert_eq!(status_kib(status, &["RssAnon:", "RssShmem:"]), 65552);
    }
}
