//! CRIU's own incremental checkpoints through containerd and
//! io.containerd.migrate.v1: pre-dumps and dumps against parent images.
//!
//! They need the kernel's soft-dirty memory tracking, which the machines
//! this project is developed and tested on lack, so every test here is
//! `#[ignore]`d and run inside the QEMU VM of `hack/softdirty-vm.sh`
//! (Debian's 6.1 cloud kernel, which has it), where the script passes
//! `--ignored`; `hack/test.sh` runs the script after `cargo test`. Under
//! software emulation a containerd operation takes seconds, so each test
//! does few of them.
//!
//! containerd's runc checkpoint options cannot name a parent or ask for a
//! pre-dump, so the tests send the shim's Checkpoint RPC themselves, with
//! this runtime's own options (`io.containerd.migrate.v1.CheckpointOptions`,
//! JSON), as containerd would forward them. The checkpoint ticker, which
//! uses CRIU's memory tracking wherever it works, is driven by its
//! annotations and restored with `migratectl`.
//!
//! Moving a container between hosts with memory copied while it runs
//! (pre-copy) needs two hosts with soft-dirty tracking: the local cluster
//! of hack/cluster.sh (hosts as network namespaces) comes up inside the VM
//! too, and a container moves from h1 to h2 and back through `migratectl`
//! there, by stop-and-copy and by pre-copy.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_migrate_tests::cluster::{self, Cluster, OneProcess};
use containerd_migrate_tests::{
    Container, IMAGE, MIGRATE_V1, Scenario, fixture, footprint, memtick, migratectl, poll, process,
    shim,
};
use containerd_shim_protos::TaskClient;
use containerd_shim_protos::shim::shim::CheckpointTaskRequest;
use protobuf::well_known_types::any::Any;

const VM_ONLY: &str =
    "needs soft-dirty memory tracking: runs inside the VM of hack/softdirty-vm.sh";
const INSTANCE: &str = "softdirty";
const MIGRATE_OPTIONS_TYPE: &str = "io.containerd.migrate.v1.CheckpointOptions";
const RESTORE_FROM: &str = "io.containerd.migrate.restore-from";
/// Everything takes several times longer under TCG than on hardware.
const TIMEOUT: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

/// Runs `f` on this binary's containerd instance, after making sure the
/// kernel has what these tests are about.
fn run(test: &str, f: fn(&Scenario)) {
    require_memory_tracking(test);
    if migratectl::prerequisites_met(test) {
        fixture::run_shared(INSTANCE, MIGRATE_V1, test, f);
    }
}

/// Fails `test` unless CRIU's memory tracking works on this kernel: these
/// tests only run where it is meant to (see the module's doc), so its
/// absence is never a reason to skip.
fn require_memory_tracking(test: &str) {
    let out = std::process::Command::new("criu")
        .args(["check", "--feature", "mem_dirty_track"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "{test}: CRIU's memory tracking does not work on this kernel ({}); {VM_ONLY}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("{test}: cannot run `criu check`: {e}; {VM_ONLY}"),
    }
}

#[test]
#[ignore = "needs soft-dirty memory tracking: runs inside the VM of hack/softdirty-vm.sh"]
fn pre_dump_then_incremental_dump_restores() {
    run(
        "pre_dump_then_incremental_dump_restores",
        pre_dump_then_incremental_dump,
    );
}

#[test]
#[ignore = "needs soft-dirty memory tracking: runs inside the VM of hack/softdirty-vm.sh"]
fn ticker_versions_are_dumps_on_parents_and_restore() {
    run(
        "ticker_versions_are_dumps_on_parents_and_restore",
        ticker_versions_are_dumps_on_parents,
    );
}

#[test]
#[ignore = "needs soft-dirty memory tracking: runs inside the VM of hack/softdirty-vm.sh"]
fn cluster_migration_in_vm_continues_state() {
    let test = "cluster_migration_in_vm_continues_state";
    require_memory_tracking(test);
    if cluster::prerequisites_met(test) && migratectl::prerequisites_met(test) {
        cluster_migration();
    }
}

/// The VM's cluster: a name of its own, as the host's tests have theirs.
/// (CLUSTER_NAME: at most 8 characters.)
const CLUSTER: &str = "sdvm";
const COUNTER: &str = "counter";
/// memtick's working set in the cluster test: under TCG a 16 MiB dump
/// alone takes seconds.
const CLUSTER_WORKING_SET_MIB: &str = "16";

/// Two hosts of hack/cluster.sh inside the VM; memtick started on h1
/// through the cluster (`migratectl run`) moves to h2 by stop-and-copy and
/// back to h1 by pre-copy (rounds of pre-dumps while it runs, then a dump
/// of what changed since the last): each time its counter goes on from
/// where it was and every page passes memtick's check (pages of every
/// round, restored from the chain of parents); no moment has it running
/// on both hosts, and the host it left keeps nothing of it running.
fn cluster_migration() {
    let started = Instant::now();
    let cluster = Cluster::up(CLUSTER, 2).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "cluster up in {:.1?}:\n{}",
        started.elapsed(),
        cluster.summary()
    );
    let (h1, h2) = (cluster.host("h1"), cluster.host("h2"));
    h1.import_test_image();

    let out = h1
        .run(&[
            "migratectl",
            "run",
            "--json",
            "--host",
            "h1",
            IMAGE,
            COUNTER,
            "memtick",
            "--mib",
            CLUSTER_WORKING_SET_MIB,
            "--interval-ms",
            INTERVAL_MS,
            "--out",
            "/tmp/tick",
        ])
        .expect_success();
    let run: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(run["host"], "h1", "{run}");
    let pid = h1.running_pid(COUNTER);
    memtick::wait_tick_above(pid, 2, "memtick to tick on h1");
    eprintln!("memtick runs on h1 after {:.1?}", started.elapsed());

    // From /proc, not ctr: under TCG two ctr a sample doubled the
    // migration's time.
    let watch = OneProcess::watch(&[h1, h2], "memtick");
    let report = move_counter(&cluster, pid, ("h1", "h2"), "stop-and-copy");
    assert_eq!(
        report["ip"], run["ip"],
        "the container keeps its IP: {report}"
    );

    let pid = h2.running_pid(COUNTER);
    let report = move_counter(&cluster, pid, ("h2", "h1"), "pre-copy");
    assert_eq!(report["mode"], "pre-copy", "{report}");
    let rounds = report["iterations"]
        .as_array()
        .unwrap_or_else(|| panic!("no rounds: {report}"));
    let first = rounds[0]["bytes"].as_u64().unwrap_or(0);
    assert!(
        first >= CLUSTER_WORKING_SET_MIB.parse::<u64>().unwrap() * MIB,
        "the first round copies all the memory: {report}"
    );
    let frozen = report["bytesDuringFreeze"].as_u64().unwrap_or(u64::MAX);
    assert!(
        frozen < first / 2,
        "the freeze moves what changed since the last round, not the memory again: {report}"
    );
    let steps = report["steps"].as_array().expect("steps");
    assert!(steps.iter().any(|s| s["step"] == "pre-copy"), "{report}");
    watch.stop();

    cluster.down().expect_success();
    eprintln!("the whole test took {:.1?}", started.elapsed());
}

/// Moves the counter whose memtick is `pid` from host `from` to `to` by
/// `mode`; checks that it counts on there from where it was, passes its
/// check of every page, and is gone from `from`. Returns `--json`'s report.
fn move_counter(
    cluster: &Cluster,
    pid: u32,
    (from, to): (&str, &str),
    mode: &str,
) -> serde_json::Value {
    let (source, target) = (cluster.host(from), cluster.host(to));
    let before = memtick::tick(pid).unwrap_or_else(|e| panic!("{e}"));
    let moving = Instant::now();
    // The mode named: the test is about each one, not auto's choice.
    let report = source.migrate(COUNTER, to, mode);
    eprintln!(
        "{mode} {from} -> {to} in {:.1?}: downtime {} ms, {} bytes of memory, rounds {}; steps {}",
        moving.elapsed(),
        report["downtimeMs"],
        report["memoryBytes"],
        report["iterations"],
        report["steps"]
    );
    assert_eq!(report["source"], from, "{report}");
    assert_eq!(report["target"], to, "{report}");

    let moved = target.running_pid(COUNTER);
    // Its first tick on the target: a cold start would count from 1 again.
    let first = poll::until(
        memtick::TICK_TIMEOUT,
        "the moved counter to tick on its new host",
        || {
            memtick::tick(moved).and_then(|t| {
                if t > 0 {
                    Ok(t)
                } else {
                    Err(format!("tick={t}"))
                }
            })
        },
    );
    assert!(
        first >= before,
        "the counter on {to} ({first}) does not go on from {from}'s ({before}): a cold start?"
    );
    // memtick checks 1% of its pages per tick and exits on a wrong one.
    memtick::wait_tick_above(
        moved,
        first + 100,
        "the moved memtick to check all its memory",
    );
    assert_eq!(
        target.running_pid(COUNTER),
        moved,
        "the moved memtick must still run"
    );
    assert!(
        source.ctr().task(COUNTER).is_none(),
        "nothing of {COUNTER} is left on {from}"
    );
    report
}

/// memtick's working set, big against what it dirties per tick.
const WORKING_SET_MIB: u64 = 64;
/// Versions the ticker test waits for: two groups of two, so that two odd
/// versions may be dumps on their parents.
const VERSIONS: u64 = 4;
/// memtick's tick: a full sweep of its memory check is 100 ticks.
const INTERVAL_MS: &str = "20";
/// The Checkpoint RPC dumps only processes: a container restored from its
/// bare images gets a fresh writable layer, where a file memtick had open
/// at the dump (`/tmp/tick.tmp`, mid-write) would be missing and CRIU
/// would refuse the restore. On a tmpfs, CRIU dumps the files with the
/// mount, so /tmp travels with the images whatever the dump's instant.
const TMPFS_TMP: [&str; 2] = [
    "--mount",
    "type=tmpfs,src=tmpfs,dst=/tmp,options=nosuid:nodev",
];

/// A pre-dump copies memtick's memory while it runs on; a dump against it
/// (`parent_path`) then holds only what changed, a small part of it; and a
/// container restored from that dump, pages from both, continues memtick's
/// counter and passes its check of every page.
fn pre_dump_then_incremental_dump(s: &Scenario) {
    let c = s.container();
    let mib = WORKING_SET_MIB.to_string();
    let argv = [
        "memtick",
        "--mib",
        &mib,
        "--interval-ms",
        INTERVAL_MS,
        "--out",
        "/tmp/tick",
    ];
    let pid = s.run_detached(&c, &TMPFS_TMP, &argv);
    memtick::wait_tick_above(pid, 2, "memtick to tick");

    let dir = tempdir(&c.id);
    let (pre, dump) = (dir.join("pre"), dir.join("dump"));
    checkpoint(
        s,
        &c,
        &serde_json::json!({ "pre_dump": true, "image_path": pre }),
    );
    let after_pre = memtick::tick(pid).unwrap_or_else(|e| panic!("{e}"));
    memtick::wait_tick_above(pid, after_pre, "memtick to run on after the pre-dump");

    let before_dump = memtick::tick(pid).unwrap_or_else(|e| panic!("{e}"));
    checkpoint(
        s,
        &c,
        &serde_json::json!({ "parent_path": "../pre", "image_path": dump }),
    );
    assert_eq!(
        std::fs::read_link(dump.join("parent")).ok().as_deref(),
        Some(Path::new("../pre")),
        "CRIU links a dump to its parent images"
    );
    let (pre_pages, dump_pages) = (pages_bytes(&pre), pages_bytes(&dump));
    eprintln!(
        "pre-dump pages {:.1} MiB, incremental dump pages {:.1} KiB",
        pre_pages as f64 / MIB as f64,
        dump_pages as f64 / 1024.0
    );
    assert!(
        pre_pages >= WORKING_SET_MIB * MIB,
        "the pre-dump holds {pre_pages} bytes of pages, less than memtick's {WORKING_SET_MIB} MiB"
    );
    assert!(
        dump_pages * 16 < pre_pages,
        "the incremental dump's pages ({dump_pages} bytes) are not much smaller than the pre-dump's \
         ({pre_pages} bytes): CRIU did not track memory"
    );
    remove(s, &c);

    // A bare CRIU image directory is a restore source too; CRIU follows
    // its `parent` link for the pages the dump left out.
    let restored = s.container();
    let from = format!("{RESTORE_FROM}=file://{}", dump.display());
    let cold = ["sh", "-c", "echo cold > /tmp/cold; exec sleep 100000"];
    let mut opts = vec!["--annotation", from.as_str()];
    opts.extend_from_slice(&TMPFS_TMP);
    let pid = s.run_detached(&restored, &opts, &cold);
    let first = wait_restored_tick(pid, &dump);
    assert!(
        first > before_dump,
        "the restored counter ({first}) does not continue from the dump's ({before_dump}): a cold start?"
    );
    // memtick checks 1% of its pages per tick and exits 3 on a wrong one:
    // 100 ticks later every page, the pre-dump's too, has been checked.
    memtick::wait_tick_above(
        pid,
        first + 100,
        "the restored memtick to check all its memory",
    );
    assert_eq!(
        restored.wait_status("RUNNING").pid,
        pid,
        "the restored memtick must still run"
    );
    remove(s, &restored);
    let _ = std::fs::remove_dir_all(dir);
}

/// The first tick of a memtick restored from `dump` into the task `pid`;
/// fails at once if the task started cold instead.
#[track_caller]
fn wait_restored_tick(pid: u32, dump: &Path) -> u64 {
    let cold = PathBuf::from(format!("/proc/{pid}/root/tmp/cold"));
    poll::until(
        memtick::TICK_TIMEOUT,
        "the restored memtick to tick",
        || {
            if cold.exists() {
                panic!(
                    "the container started cold instead of from {}: the shim could not use it (its log says why)",
                    dump.display()
                );
            }
            memtick::tick(pid).and_then(|t| {
                if t > 0 {
                    Ok(t)
                } else {
                    Err(format!("tick={t}"))
                }
            })
        },
    )
}

/// Sends the shim of `c` a Checkpoint with this runtime's options `options`
/// and waits for it, as containerd's Tasks.Checkpoint would.
#[track_caller]
fn checkpoint(s: &Scenario, c: &Container, options: &serde_json::Value) {
    let bundle = footprint::bundle_dir(s.ctr.address(), &c.id);
    let address = shim::socket_address(&bundle).unwrap_or_else(|e| panic!("{e}"));
    let client = ttrpc::Client::connect(&address)
        .unwrap_or_else(|e| panic!("cannot connect to the shim at {address}: {e}"));
    let tasks = TaskClient::new(client);
    let mut ctx = ttrpc::context::with_duration(TIMEOUT);
    ctx.add(
        "containerd-namespace-ttrpc".into(),
        containerd_migrate_tests::ctr::NAMESPACE.into(),
    );
    let req = CheckpointTaskRequest {
        id: c.id.clone(),
        path: options["image_path"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        options: protobuf::MessageField::some(Any {
            type_url: MIGRATE_OPTIONS_TYPE.to_string(),
            value: serde_json::to_vec(options).expect("JSON"),
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Err(e) = tasks.checkpoint(ctx, &req) {
        panic!(
            "Checkpoint({}, {options}) to the shim at {address} failed: {e}",
            c.id
        );
    }
}

/// The bytes of CRIU memory images (`pages-*.img`) in `dir`.
fn pages_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry"))
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().expect("metadata").len())
        .sum()
}

/// Kills and deletes the task and removes the container.
fn remove(s: &Scenario, c: &Container) {
    s.ctr.ok(&["tasks", "kill", "--signal", "SIGKILL", &c.id]);
    c.wait_status("STOPPED");
    s.ctr.ok(&["tasks", "delete", &c.id]);
    s.ctr.ok(&["containers", "delete", &c.id]);
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("migrate-softdirty-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The checkpoint ticker where CRIU tracks memory: each group of versions
/// starts with a pre-dump and each version is a dump on the one before, so
/// after the first a version's own memory images are a small part of the
/// pre-dump's; each version records its chain of parents (mode
/// criu-parent), and `migratectl restore` rebuilds one from the store with
/// its chain and restores it: the counter carries on from that version and
/// every page passes memtick's check.
fn ticker_versions_are_dumps_on_parents(s: &Scenario) {
    let store = tempdir(&format!("ticker-{}", std::process::id()));
    let url = format!("file://{}/versions", store.display());
    let c = s.container();
    let mib = WORKING_SET_MIB.to_string();
    let argv = [
        "memtick",
        "--mib",
        &mib,
        "--interval-ms",
        INTERVAL_MS,
        "--out",
        "/tmp/tick",
    ];
    let annotations = [
        "io.containerd.migrate.checkpoint.interval=2s".to_string(),
        // Two per group: versions 0 and 1 build on one pre-dump, 2 on the next.
        "io.containerd.migrate.checkpoint.version-group=2".to_string(),
        format!("io.containerd.migrate.checkpoint.store={url}"),
    ];
    let opts: Vec<&str> = annotations
        .iter()
        .flat_map(|a| ["--annotation", a.as_str()])
        .collect();
    let pid = s.run_detached(&c, &opts, &argv);

    let versions = store
        .join("versions/containers")
        .join(containerd_migrate_tests::ctr::NAMESPACE)
        .join(&c.id);
    let manifest = |v: u64| -> Result<serde_json::Value, String> {
        let path = versions.join(format!("versions/{v}.json"));
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    };
    poll::until(TIMEOUT, "version 0", || manifest(0));
    // Version 1's dump comes an interval after version 0 is stored.
    let before_v1 = memtick::tick(pid).unwrap_or_else(|e| panic!("{e}"));
    let v: Vec<serde_json::Value> = (0..VERSIONS)
        .map(|n| poll::until(TIMEOUT, &format!("version {n}"), || manifest(n)))
        .collect();
    remove(s, &c); // stops the ticker

    let parents = |m: &serde_json::Value| -> Vec<String> {
        m["parents"].as_array().map_or(vec![], |p| {
            p.iter()
                .map(|p| p["id"].as_str().unwrap().to_string())
                .collect()
        })
    };
    for m in &v {
        assert_eq!(m["mode"], "criu-parent", "version {}: {m}", m["version"]);
    }
    // Even versions start a group with a pre-dump. An odd one is a dump on
    // the version before, unless that dump failed: then the ticker starts
    // the chain over with a pre-dump (under emulation a dump now and then
    // fails), which the shim logs. At least one must be a dump on a parent.
    let mut on_parent = None;
    for (n, m) in v.iter().enumerate() {
        let chain = parents(m);
        if n % 2 == 0 {
            assert_eq!(
                chain,
                [format!("v{n}-pre")],
                "a new group starts with a pre-dump"
            );
        } else if chain == [format!("v{}", n - 1), format!("v{}-pre", n - 1)] {
            on_parent.get_or_insert(n);
        } else {
            assert_eq!(
                chain,
                [format!("v{n}-pre")],
                "version {n}: neither on its parent nor started over"
            );
            let log = std::fs::read_to_string(
                PathBuf::from("/run/containerd-migrate")
                    .join(INSTANCE)
                    .join("containerd.log"),
            )
            .unwrap_or_default();
            let why: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("checkpoint tick failed"))
                .collect();
            eprintln!(
                "version {n} started its chain over; the shim said:\n{}",
                why.join("\n")
            );
        }
    }
    let k = on_parent.expect("no odd version is a dump on the version before");
    let pages = |files: &serde_json::Value| -> u64 {
        files
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["path"].as_str().unwrap().starts_with("criu/pages-"))
            .map(|f| f["size"].as_u64().unwrap())
            .sum()
    };
    let (own, pre) = (pages(&v[k]["files"]), pages(&v[k]["parents"][1]["files"]));
    eprintln!(
        "version {k}: own pages {:.1} KiB, its pre-dump's {:.1} MiB; {} bytes new of {}",
        own as f64 / 1024.0,
        pre as f64 / MIB as f64,
        v[k]["bytesNew"],
        v[k]["bytesTotal"]
    );
    assert!(
        pre >= WORKING_SET_MIB * MIB,
        "the pre-dump holds {pre} bytes of pages"
    );
    assert!(
        own * 16 < pre,
        "version {k}'s own pages ({own} bytes) are not much smaller than the pre-dump's ({pre})"
    );
    assert!(
        v[k]["bytesNew"].as_u64().unwrap() * 4 < v[0]["bytesNew"].as_u64().unwrap(),
        "version {k} uploaded {} bytes, version 0 {}",
        v[k]["bytesNew"],
        v[0]["bytesNew"]
    );

    let restored = s.container();
    let mut cmd =
        std::process::Command::new(migratectl::binary().expect("checked before the scenario"));
    cmd.args([
        "--address",
        s.ctr.address(),
        "--namespace",
        containerd_migrate_tests::ctr::NAMESPACE,
    ]);
    cmd.args([
        "restore",
        "--store",
        &url,
        "--container",
        &c.id,
        "--version",
        &k.to_string(),
        "--image",
        IMAGE,
    ]);
    cmd.args(["--as", &restored.id, "--detach", "--json"]);
    let out = process::run(cmd, None, TIMEOUT).expect_success();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(report["version"], k, "{report}");
    let pid = restored.wait_status("RUNNING").pid;
    let first = poll::until(memtick::TICK_TIMEOUT, "the restored counter", || {
        memtick::tick(pid)
    });
    assert!(
        first >= before_v1,
        "the restored counter ({first}) is behind version {k}'s (at least {before_v1})"
    );
    memtick::wait_tick_above(
        pid,
        first + 100,
        "the restored memtick to check all its memory",
    );
    assert_eq!(
        restored.wait_status("RUNNING").pid,
        pid,
        "the restored memtick must still run"
    );
    remove(s, &restored);
    if let Some(log) = report["containers"][0]["log"].as_str() {
        let _ = std::fs::remove_file(log);
    }
    let _ = std::fs::remove_dir_all(store);
}
