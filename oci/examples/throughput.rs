//! How fast a memory image becomes a committed checkpoint, and how fast it
//! is verified: the persist step of a checkpoint is downtime when the
//! container is stopped, so these numbers matter.
//!
//!     cargo run --release -p containerd-migrate-oci --example throughput -- [MiB] [RUNS] [SRC_PARENT] [STORE_PARENT]
//!
//! MiB defaults to 256, RUNS to 3 (the best and the median are shown: on a
//! shared machine single runs vary by a factor of two), SRC_PARENT (where
//! CRIU's dump sits) to /dev/shm, the store's parent to /var/tmp. The same
//! run imports from inside the store's file system too, where files are
//! renamed instead of copied.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use migrate_oci::{CheckpointStore, CommitInfo, ContainerInfo, Timings};

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map_or(256, |a| a.parse().expect("MiB is a number"));
    let runs: usize = args.next().map_or(3, |a| a.parse().expect("RUNS is a number")).max(1);
    let src_parent = args.next().unwrap_or_else(|| "/dev/shm".into());
    let store_parent = args.next().unwrap_or_else(|| "/var/tmp".into());

    let store_dir = tempfile::tempdir_in(&store_parent).expect("a temp dir for the store");
    let store = CheckpointStore::open(store_dir.path()).expect("open the store");
    let cases = [
        (format!("{src_parent} -> {store_parent} (copy)"), PathBuf::from(&src_parent)),
        (format!("{store_parent} -> {store_parent} (rename)"), store.root().to_owned()),
    ];
    for (label, src_parent) in cases {
        let mut commits = Vec::new();
        let mut verifies = Vec::new();
        for _ in 0..runs {
            let src = tempfile::tempdir_in(&src_parent).expect("a temp dir for the dump");
            make_dump(src.path(), mib);
            let started = Instant::now();
            let mut staging = store.staging("bench").expect("staging");
            staging.import_criu_dir(src.path()).expect("import");
            let checkpoint = staging.commit(info()).expect("commit");
            commits.push(started.elapsed());
            let started = Instant::now();
            checkpoint.verify().expect("verify");
            verifies.push(started.elapsed());
            store.remove("bench").expect("remove");
        }
        println!("{label}, {mib} MiB: import+commit {}; verify {}", stats(mib, commits), stats(mib, verifies));
    }
}

/// "best X ms (Y MiB/s), median ..."
fn stats(mib: usize, mut times: Vec<Duration>) -> String {
    times.sort();
    let show = |d: Duration| format!("{:.0} ms ({:.0} MiB/s)", d.as_secs_f64() * 1000.0, mib as f64 / d.as_secs_f64());
    format!("best {}, median {}", show(times[0]), show(times[times.len() / 2]))
}

/// One big pages image, as CRIU writes for a process with that much memory,
/// and the few dozen small images that come with it.
fn make_dump(dir: &Path, mib: usize) {
    let mut pages = fs::File::create(dir.join("pages-1.img")).expect("create pages-1.img");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..mib {
        // Not zeros: the bytes are hashed and written, never compressed,
        // but nothing should be able to shortcut a page of zeros.
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        pages.write_all(&chunk).expect("write pages-1.img");
    }
    for i in 0..40 {
        fs::write(dir.join(format!("core-{i}.img")), vec![i as u8; 2000]).expect("write a small image");
    }
}

fn info() -> CommitInfo {
    CommitInfo {
        container: ContainerInfo {
            id: "bench".into(),
            namespace: "default".into(),
            image: None,
            runtime: "io.containerd.migrate.v1".into(),
        },
        parent: None,
        leave_running: true,
        rootfs: None,
        timings: Timings::default(),
        host: migrate_oci::HostInfo::this_machine(None),
        ready: None,
    }
}
