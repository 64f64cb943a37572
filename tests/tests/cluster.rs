//! The local cluster (hack/cluster.sh, issue 14): two hosts on one machine
//! that share nothing but the network.
//!
//! A counter with the same container id runs on each host under
//! io.containerd.migrate.v1; each host's containerd, runc state and cgroup
//! hold only its own. The hosts reach each other and the machine reaches
//! them over the bridge, while neither sees the other's files. `fail h2`
//! kills every process of h2 and cuts it off, leaving its disk as it was
//! and h1 counting; `down` leaves nothing behind: no process, mount,
//! namespace, link, firewall rule, cgroup or directory.
//!
//! One test, as the steps build on each other; its cluster has a name of
//! its own, so the demo's cluster can run beside it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use containerd_migrate_tests::cluster::{self, CGROUP_TOP, Cluster, DISK_BASE, Host, RUN_BASE};
use containerd_migrate_tests::ctr::TaskRow;
use containerd_migrate_tests::fixture::{self, IMAGE, MIGRATE_V1};
use containerd_migrate_tests::memtick::{tick, wait_tick_above};
use containerd_migrate_tests::process::{self, Output};
use containerd_migrate_tests::{host, poll};

/// This test's cluster.
const CLUSTER: &str = "test";
/// The container id both hosts use.
const ID: &str = "counter";
/// How long the processes of a failed or removed host may take to go.
const GONE_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn two_hosts_share_only_the_network() {
    if !cluster::prerequisites_met("two_hosts_share_only_the_network") {
        return;
    }
    let started = Instant::now();
    let cluster = Cluster::up(CLUSTER, 2).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("up in {:?}:\n{}", started.elapsed(), cluster.summary());
    let (h1, h2) = (cluster.host("h1"), cluster.host("h2"));

    let pid1 = run_counter(h1);
    let pid2 = run_counter(h2);
    containers_are_independent(h1, pid1, h2, pid2);
    hosts_reach_each_other(h1, h2);
    files_are_private(h1, h2);
    // `up` returned once the coordinator had each host ready.
    assert_eq!(
        host_states(h1),
        [("h1".into(), "ready".into()), ("h2".into(), "ready".into())]
    );
    fail_kills_only_its_host(&cluster, h1, pid1, h2, pid2);
    failed_host_turns_down(h1);
    down_removes_everything(&cluster, h1);
    eprintln!("the whole test took {:?}", started.elapsed());
}

/// Imports the test image into `h` and runs memtick there as [`ID`]; returns
/// its pid once it ticks.
#[track_caller]
fn run_counter(h: &Host) -> u32 {
    let mut import = Command::new("bash");
    import
        .arg(fixture::repo_root().join("hack/images.sh"))
        .args(["import", h.ctr().address()]);
    process::run(import, None, Duration::from_secs(120)).expect_success();
    h.run(&[
        "ctr",
        "run",
        "-d",
        "--runtime",
        MIGRATE_V1,
        IMAGE,
        ID,
        "memtick",
        "--mib",
        "8",
        "--interval-ms",
        "20",
        "--out",
        "/tmp/tick",
    ])
    .expect_success();
    let pid = poll::until(
        Duration::from_secs(30),
        &format!("{ID} to run on {}", h.name),
        || match h.ctr().task(ID) {
            Some(row) if row.status == "RUNNING" => Ok(row.pid),
            other => Err(format!("{other:?}")),
        },
    );
    wait_tick_above(pid, 0, &format!("the counter on {} to tick", h.name));
    pid
}

/// Each host's containerd knows only its own container, runc's state for it
/// is on that host's disk, and its cgroup is under that host's.
#[track_caller]
fn containers_are_independent(h1: &Host, pid1: u32, h2: &Host, pid2: u32) {
    assert_ne!(pid1, pid2, "two containers, two processes");
    for (h, pid) in [(h1, pid1), (h2, pid2)] {
        let only_own = vec![TaskRow {
            id: ID.into(),
            pid,
            status: "RUNNING".into(),
        }];
        assert_eq!(h.ctr().tasks(), only_own, "the tasks of {}", h.name);

        let state = h.on_disk("/run/containerd/runc/default/counter/state.json");
        let text =
            std::fs::read_to_string(&state).unwrap_or_else(|e| panic!("{}: {e}", state.display()));
        assert!(
            text.contains(&format!("\"init_process_pid\":{pid},")),
            "runc's state on {}'s disk is not its container's (pid {pid}): {text}",
            h.name
        );

        let want = format!("/{CGROUP_TOP}/{CLUSTER}/{}/default/{ID}", h.name);
        assert_eq!(
            cluster::unified_cgroup_of(pid),
            Ok(want),
            "cgroup of {ID} on {}",
            h.name
        );
    }
    let before = (tick(pid1).unwrap(), tick(pid2).unwrap());
    wait_tick_above(pid1, before.0, "the counter on h1 to tick on");
    wait_tick_above(pid2, before.1, "the counter on h2 to tick on");
}

/// `busybox ping` once, on the machine.
fn ping_from_machine(ip: &str) -> Output {
    let mut ping = Command::new("busybox");
    ping.args(["ping", "-c", "1", "-W", "2", ip]);
    process::run(ping, None, Duration::from_secs(10))
}

#[track_caller]
fn hosts_reach_each_other(h1: &Host, h2: &Host) {
    for h in [h1, h2] {
        ping_from_machine(&h.ip).expect_success();
    }
    h1.run(&["busybox", "ping", "-c", "1", "-W", "2", &h2.ip])
        .expect_success();
    h2.run(&["busybox", "ping", "-c", "1", "-W", "2", &h1.ip])
        .expect_success();
}

/// A host sees none of the other's directories, writes only to its own, and
/// cannot write the machine's files: data can only cross over the network.
#[track_caller]
fn files_are_private(h1: &Host, h2: &Host) {
    let shared = h1
        .run(&["ls", &format!("{RUN_BASE}/{CLUSTER}")])
        .expect_success();
    assert_eq!(
        shared.stdout_str(),
        "h1\n",
        "h1 sees only its own shared directory\n{shared}"
    );
    for other in [h2.shared_dir(), h2.disk()] {
        let out = h1.run(&["test", "-e", other.to_str().unwrap()]);
        assert_eq!(
            out.code(),
            Some(1),
            "h1 must not see {}\n{out}",
            other.display()
        );
    }
    let roots = h1
        .run(&["ls", "/var/lib/containerd-migrate"])
        .expect_success();
    // Its own containerd's root, and its snapshotter's: no other host's.
    assert_eq!(
        roots.stdout_str(),
        format!("cluster-{CLUSTER}-h1\nsnapshotter\n"),
        "h1's containerd and snapshotter roots\n{roots}"
    );

    h1.run(&["sh", "-c", "echo from-h1 >/tmp/written-on-h1"])
        .expect_success();
    let on_disk = h1.on_disk("/tmp/written-on-h1");
    assert_eq!(
        std::fs::read_to_string(&on_disk).ok().as_deref(),
        Some("from-h1\n"),
        "{}",
        on_disk.display()
    );
    assert!(
        !Path::new("/tmp/written-on-h1").exists(),
        "h1's /tmp is the machine's"
    );
    let out = h2.run(&["test", "-e", "/tmp/written-on-h1"]);
    assert_eq!(out.code(), Some(1), "h2 sees h1's /tmp\n{out}");

    let out = h1
        .run(&["touch", "/var/lib/written-on-h1"])
        .expect_failure();
    assert!(out.stderr_str().contains("Read-only file system"), "{out}");
}

/// `fail h2`: every process of h2 (containerd, shim, container) is gone at
/// once, h2 is cut off and refuses commands, its disk stays as it was, and
/// h1's counter goes on.
#[track_caller]
fn fail_kills_only_its_host(cluster: &Cluster, h1: &Host, pid1: u32, h2: &Host, pid2: u32) {
    let processes = h2.pids();
    let containerd = std::fs::read_to_string(h2.on_disk(&format!(
        "/run/containerd-migrate/cluster-{CLUSTER}-h2/containerd.pid"
    )))
    .expect("h2's containerd.pid");
    let containerd: u32 = containerd.trim().parse().expect("a pid in containerd.pid");
    let shims: Vec<u32> = processes
        .iter()
        .copied()
        .filter(|p| {
            host::cmdline(*p)
                .and_then(|a| a.first().cloned())
                .is_some_and(|a| a.ends_with(fixture::MIGRATE_SHIM_BINARY))
        })
        .collect();
    assert!(
        processes.contains(&pid2) && processes.contains(&containerd) && !shims.is_empty(),
        "h2's cgroup should hold its container {pid2}, containerd {containerd} and a shim: {processes:?}"
    );
    let tick1 = tick(pid1).unwrap();

    let started = Instant::now();
    cluster.fail("h2").expect_success();
    wait_gone(&processes, "every process of h2 to be gone");
    eprintln!(
        "fail h2: {} processes gone after {:?}",
        processes.len(),
        started.elapsed()
    );

    wait_tick_above(pid1, tick1, "h1's counter to go on after h2 failed");
    assert_eq!(
        h1.ctr().task(ID).map(|r| (r.pid, r.status)),
        Some((pid1, "RUNNING".into()))
    );

    for kept in [
        h2.on_disk(&format!("/var/lib/containerd-migrate/cluster-{CLUSTER}-h2/io.containerd.metadata.v1.bolt/meta.db")),
        h2.on_disk("/run/containerd/runc/default/counter/state.json"),
        h2.shared_dir().join("host.env"),
    ] {
        assert!(kept.exists(), "fail must leave {} as it was", kept.display());
    }
    ping_from_machine(&h2.ip).expect_failure();
    let out = h2.run(&["true"]).expect_failure();
    assert!(out.stderr_str().contains("h2 has failed"), "{out}");
}

/// The coordinator's view, asked from host `h` with the certificate
/// `hack/cluster.sh` gave it: (name, state) of every host, by name.
#[track_caller]
fn host_states(h: &Host) -> Vec<(String, String)> {
    let out = h.run(&["migratectl", "hosts", "--json"]).expect_success();
    let hosts: serde_json::Value = serde_json::from_str(&out.stdout_str())
        .unwrap_or_else(|e| panic!("migratectl hosts --json: {e}\n{out}"));
    let mut states: Vec<(String, String)> = hosts
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {hosts}"))
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap_or_default().into(),
                h["state"].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    states.sort();
    states
}

/// A failed host's agent beats no more: the coordinator has it down within
/// its grace (3 s), and the other host ready.
#[track_caller]
fn failed_host_turns_down(h1: &Host) {
    let started = Instant::now();
    poll::until(
        Duration::from_secs(15),
        "the coordinator to have h2 down",
        || {
            let states = host_states(h1);
            if states == [("h1".into(), "ready".into()), ("h2".into(), "down".into())] {
                Ok(())
            } else {
                Err(format!("{states:?}"))
            }
        },
    );
    eprintln!(
        "h2 down at the coordinator {:?} after its failure was done",
        started.elapsed()
    );
}

/// `down` ends every process and removes every trace of the cluster; a
/// second `down` finds nothing to do.
#[track_caller]
fn down_removes_everything(cluster: &Cluster, h1: &Host) {
    let processes = h1.pids();
    assert!(!processes.is_empty(), "h1 should still run");
    let namespace = h1.mount_namespace().unwrap_or_else(|e| panic!("{e}"));

    let started = Instant::now();
    cluster.down().expect_success();
    eprintln!("down in {:?}", started.elapsed());

    wait_gone(&processes, "every process of h1 to be gone");
    assert_eq!(
        cluster::processes_in_mount_namespace(namespace),
        Vec::<u32>::new()
    );
    for dir in [
        format!("{RUN_BASE}/{CLUSTER}"),
        format!("{DISK_BASE}/{CLUSTER}"),
    ] {
        assert_eq!(
            host::mounts_under(Path::new(&dir)),
            Vec::<String>::new(),
            "mounts left under {dir}"
        );
        assert!(!Path::new(&dir).exists(), "{dir} is left");
    }
    for (mount, _) in cluster::cgroup_mounts() {
        let dir = mount.join(CGROUP_TOP).join(CLUSTER);
        assert!(!dir.exists(), "cgroup {} is left", dir.display());
    }
    // The bridge is cm-CLUSTER, the namespaces and links cm-CLUSTER-HOST.
    let ours =
        |word: &str| word == format!("cm-{CLUSTER}") || word.starts_with(&format!("cm-{CLUSTER}-"));
    for (what, args) in [
        ("network namespaces", &["ip", "netns", "list"][..]),
        ("links", &["ip", "-o", "link", "show"][..]),
        ("firewall rules", &["iptables", "-S", "FORWARD"][..]),
    ] {
        let mut cmd = Command::new(args[0]);
        cmd.args(&args[1..]);
        let out = process::run(cmd, None, Duration::from_secs(10)).expect_success();
        let text = out.stdout_str();
        let left: Vec<&str> = text
            .split(|c: char| c.is_whitespace() || c == ':' || c == '@')
            .filter(|w| ours(w))
            .collect();
        assert!(
            left.is_empty(),
            "{what} of cluster {CLUSTER} are left: {left:?}\n{out}"
        );
    }
    cluster.down().expect_success();
}

/// Waits until none of `processes` is alive.
fn wait_gone(processes: &[u32], what: &str) {
    poll::until(GONE_TIMEOUT, what, || {
        let alive: Vec<u32> = processes
            .iter()
            .copied()
            .filter(|p| host::pid_alive(*p))
            .collect();
        if alive.is_empty() {
            Ok(())
        } else {
            Err(format!("alive: {alive:?}"))
        }
    });
}
