//! Container metrics from its cgroups, in the messages containerd's `ctr
//! task metrics`, CRI and cAdvisor read: `io.containerd.cgroups.v1.Metrics`
//! or `io.containerd.cgroups.v2.Metrics`, filled as runc.v2 fills them.

use std::{collections::HashMap, fs, path::Path};

use containerd_shim::protos::{
    cgroups::metrics::{
        BlkIOEntry, BlkIOStat, CPUStat, CPUUsage, MemoryEntry, MemoryOomControl, MemoryStat, Metrics, PidsStat,
        Throttle,
    },
    cgroups_v2::metrics::{
        CPUStat as CpuV2, MemoryEvents, MemoryStat as MemoryV2, Metrics as MetricsV2, PidsStat as PidsV2,
    },
    protobuf::{MessageDyn, MessageField},
};

use crate::cgroups::Cgroups;

/// cpuacct.stat counts in USER_HZ, which is 100 on Linux; containerd
/// reports nanoseconds.
const NANOS_PER_USER_HZ: u64 = 10_000_000;

/// The metrics message for the cgroups of `pid`, boxed for packing into an Any.
pub fn collect(pid: u32) -> Option<Box<dyn MessageDyn>> {
    let cgroups = Cgroups::of(pid)?;
    Some(match &cgroups {
        Cgroups::V1(_) => Box::new(v1(&cgroups)),
        Cgroups::V2(dir) => Box::new(v2(dir)),
    })
}

fn v1(cgroups: &Cgroups) -> Metrics {
    let dir = |controller| cgroups.dir(controller);
    let mut m = Metrics::new();
    if let Some(d) = dir("pids") {
        m.pids = MessageField::some(PidsStat {
            current: num(d, "pids.current"),
            limit: num(d, "pids.max"),
            ..Default::default()
        });
    }
    if let Some(d) = dir("cpuacct") {
        let stat = keyed(d, "cpuacct.stat");
        let usage = CPUUsage {
            total: num(d, "cpuacct.usage"),
            user: stat.get("user").copied().unwrap_or(0) * NANOS_PER_USER_HZ,
            kernel: stat.get("system").copied().unwrap_or(0) * NANOS_PER_USER_HZ,
            per_cpu: read(d, "cpuacct.usage_percpu").split_whitespace().filter_map(|n| n.parse().ok()).collect(),
            ..Default::default()
        };
        let throttle = dir("cpu").map(|c| keyed(c, "cpu.stat")).unwrap_or_default();
        m.cpu = MessageField::some(CPUStat {
            usage: MessageField::some(usage),
            throttling: MessageField::some(Throttle {
                periods: get(&throttle, "nr_periods"),
                throttled_periods: get(&throttle, "nr_throttled"),
                throttled_time: get(&throttle, "throttled_time"),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Some(d) = dir("memory") {
        m.memory = MessageField::some(memory_v1(d));
        let oom = keyed(d, "memory.oom_control");
        m.memory_oom_control = MessageField::some(MemoryOomControl {
            oom_kill_disable: get(&oom, "oom_kill_disable"),
            under_oom: get(&oom, "under_oom"),
            oom_kill: get(&oom, "oom_kill"),
            ..Default::default()
        });
    }
    if let Some(d) = dir("blkio") {
        m.blkio = MessageField::some(BlkIOStat {
            io_service_bytes_recursive: blkio(d, "blkio.throttle.io_service_bytes_recursive"),
            io_serviced_recursive: blkio(d, "blkio.throttle.io_serviced_recursive"),
            ..Default::default()
        });
    }
    m
}

fn memory_v1(d: &Path) -> MemoryStat {
    let s = keyed(d, "memory.stat");
    let entry = |prefix: &str| {
        MessageField::some(MemoryEntry {
            usage: num(d, &format!("{prefix}.usage_in_bytes")),
            max: num(d, &format!("{prefix}.max_usage_in_bytes")),
            failcnt: num(d, &format!("{prefix}.failcnt")),
            limit: num(d, &format!("{prefix}.limit_in_bytes")),
            ..Default::default()
        })
    };
    MemoryStat {
        cache: get(&s, "cache"),
        rss: get(&s, "rss"),
        rss_huge: get(&s, "rss_huge"),
        mapped_file: get(&s, "mapped_file"),
        dirty: get(&s, "dirty"),
        writeback: get(&s, "writeback"),
        pg_pg_in: get(&s, "pgpgin"),
        pg_pg_out: get(&s, "pgpgout"),
        pg_fault: get(&s, "pgfault"),
        pg_maj_fault: get(&s, "pgmajfault"),
        inactive_anon: get(&s, "inactive_anon"),
        active_anon: get(&s, "active_anon"),
        inactive_file: get(&s, "inactive_file"),
        active_file: get(&s, "active_file"),
        unevictable: get(&s, "unevictable"),
        hierarchical_memory_limit: get(&s, "hierarchical_memory_limit"),
        hierarchical_swap_limit: get(&s, "hierarchical_memsw_limit"),
        total_cache: get(&s, "total_cache"),
        total_rss: get(&s, "total_rss"),
        total_rss_huge: get(&s, "total_rss_huge"),
        total_mapped_file: get(&s, "total_mapped_file"),
        total_dirty: get(&s, "total_dirty"),
        total_writeback: get(&s, "total_writeback"),
        total_pg_pg_in: get(&s, "total_pgpgin"),
        total_pg_pg_out: get(&s, "total_pgpgout"),
        total_pg_fault: get(&s, "total_pgfault"),
        total_pg_maj_fault: get(&s, "total_pgmajfault"),
        total_inactive_anon: get(&s, "total_inactive_anon"),
        total_active_anon: get(&s, "total_active_anon"),
        total_inactive_file: get(&s, "total_inactive_file"),
        total_active_file: get(&s, "total_active_file"),
        total_unevictable: get(&s, "total_unevictable"),
        usage: entry("memory"),
        swap: entry("memory.memsw"),
        kernel: entry("memory.kmem"),
        kernel_tcp: entry("memory.kmem.tcp"),
        ..Default::default()
    }
}

fn v2(d: &Path) -> MetricsV2 {
    let cpu = keyed(d, "cpu.stat");
    let mem = keyed(d, "memory.stat");
    let events = keyed(d, "memory.events");
    MetricsV2 {
        pids: MessageField::some(PidsV2 {
            current: num(d, "pids.current"),
            limit: num(d, "pids.max"),
            ..Default::default()
        }),
        cpu: MessageField::some(CpuV2 {
            usage_usec: get(&cpu, "usage_usec"),
            user_usec: get(&cpu, "user_usec"),
            system_usec: get(&cpu, "system_usec"),
            nr_periods: get(&cpu, "nr_periods"),
            nr_throttled: get(&cpu, "nr_throttled"),
            throttled_usec: get(&cpu, "throttled_usec"),
            ..Default::default()
        }),
        memory: MessageField::some(MemoryV2 {
            anon: get(&mem, "anon"),
            file: get(&mem, "file"),
            kernel_stack: get(&mem, "kernel_stack"),
            slab: get(&mem, "slab"),
            sock: get(&mem, "sock"),
            shmem: get(&mem, "shmem"),
            file_mapped: get(&mem, "file_mapped"),
            file_dirty: get(&mem, "file_dirty"),
            file_writeback: get(&mem, "file_writeback"),
            anon_thp: get(&mem, "anon_thp"),
            inactive_anon: get(&mem, "inactive_anon"),
            active_anon: get(&mem, "active_anon"),
            inactive_file: get(&mem, "inactive_file"),
            active_file: get(&mem, "active_file"),
            unevictable: get(&mem, "unevictable"),
            slab_reclaimable: get(&mem, "slab_reclaimable"),
            slab_unreclaimable: get(&mem, "slab_unreclaimable"),
            pgfault: get(&mem, "pgfault"),
            pgmajfault: get(&mem, "pgmajfault"),
            usage: num(d, "memory.current"),
            usage_limit: num(d, "memory.max"),
            swap_usage: num(d, "memory.swap.current"),
            swap_limit: num(d, "memory.swap.max"),
            max_usage: num(d, "memory.peak"),
            ..Default::default()
        }),
        memory_events: MessageField::some(MemoryEvents {
            low: get(&events, "low"),
            high: get(&events, "high"),
            max: get(&events, "max"),
            oom: get(&events, "oom"),
            oom_kill: get(&events, "oom_kill"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn read(dir: &Path, file: &str) -> String {
    fs::read_to_string(dir.join(file)).unwrap_or_default()
}

/// A single number; "max" (no limit) is reported as u64::MAX, as runc does;
/// a missing file (a controller option the kernel lacks) as 0.
fn num(dir: &Path, file: &str) -> u64 {
    parse_num(read(dir, file).trim())
}

fn parse_num(s: &str) -> u64 {
    if s == "max" { u64::MAX } else { s.parse().unwrap_or(0) }
}

/// A "key value" per line file such as memory.stat.
fn keyed(dir: &Path, file: &str) -> HashMap<String, u64> {
    parse_keyed(&read(dir, file))
}

fn parse_keyed(text: &str) -> HashMap<String, u64> {
    text.lines().filter_map(|l| l.split_once(' ')).map(|(k, v)| (k.to_string(), parse_num(v.trim()))).collect()
}

fn get(map: &HashMap<String, u64>, key: &str) -> u64 {
    map.get(key).copied().unwrap_or(0)
}

/// blkio files: "MAJ:MIN Op value" lines, and a "Total value" line.
fn blkio(dir: &Path, file: &str) -> Vec<BlkIOEntry> {
    parse_blkio(&read(dir, file))
}

fn parse_blkio(text: &str) -> Vec<BlkIOEntry> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (dev, op, value) = (f.next()?, f.next()?, f.next()?);
            let (major, minor) = dev.split_once(':')?;
            Some(BlkIOEntry {
                op: op.to_string(),
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                value: value.parse().ok()?,
                ..Default::default()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cgroup_files() {
        let k = parse_keyed("cache 4096\nrss 8192\nhierarchical_memory_limit 9223372036854771712\n");
        assert_eq!(get(&k, "rss"), 8192);
        assert_eq!(get(&k, "missing"), 0);
        assert_eq!(parse_num("max"), u64::MAX);
        let b = parse_blkio("8:0 Read 4096\n8:0 Write 0\nTotal 4096\n");
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].major, b[0].minor, b[0].op.as_str(), b[0].value), (8, 0, "Read", 4096));
    }

    #[test]
    fn reads_a_v1_memory_directory() {
        let dir = tempfile::tempdir().unwrap();
        for (file, text) in [
            ("memory.stat", "total_rss 100\npgfault 7\nhierarchical_memory_limit 33554432\n"),
            ("memory.usage_in_bytes", "200\n"),
            ("memory.max_usage_in_bytes", "300\n"),
            ("memory.limit_in_bytes", "33554432\n"),
            ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
        ] {
            fs::write(dir.path().join(file), text).unwrap();
        }
        let cgroups = Cgroups::V1(HashMap::from([("memory".to_string(), dir.path().to_path_buf())]));
        let m = v1(&cgroups);
        let mem = m.memory.as_ref().unwrap();
        assert_eq!((mem.total_rss, mem.pg_fault, mem.hierarchical_memory_limit), (100, 7, 33554432));
        assert_eq!((mem.usage.usage, mem.usage.max, mem.usage.limit), (200, 300, 33554432));
        assert_eq!(m.memory_oom_control.oom_kill, 2);
        assert!(m.cpu.is_none() && m.pids.is_none());
    }
}
