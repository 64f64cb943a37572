//! Checkpoint and restore through containerd: what was running must carry
//! on where it was, not merely be running again.
//!
//! The containerd-level flows (`ctr container checkpoint` + `restore`,
//! `ctr task checkpoint --image-path`) run against both runtimes, runc.v2
//! being the reference. The flows only io.containerd.migrate.v1 has
//! (ready-point checkpoints, restore-from, clones, CRIU's words in errors)
//! run against it alone.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use containerd_migrate_tests::{
    Container, MIGRATE_V1, Scenario, criu_images, footprint, host, memtick, poll, scenarios,
};

scenarios!(shared "checkpoint":
    container_checkpoint_restore_continues_counter,
    task_checkpoint_to_image_path_leaves_running,
);

const TIMEOUT: Duration = Duration::from_secs(60);
const READY: &str = "io.containerd.migrate.checkpoint-when-ready";
const STORE: &str = "io.containerd.migrate.checkpoint-when-ready.store";
const RESTORE_FROM: &str = "io.containerd.migrate.restore-from";

/// CRIU is what these scenarios are about; without it they cannot run.
fn criu_available(test: &str) -> bool {
    if host::which("criu").is_some() {
        return true;
    }
    let reason = format!("{test} needs `criu` on PATH (hack/setup.sh builds and installs it)");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{reason}");
    }
    eprintln!("skipping: {reason}");
    false
}

static EXEC: AtomicUsize = AtomicUsize::new(0);

/// Runs `argv` in the running task `id` and returns its stdout.
fn exec(s: &Scenario, id: &str, argv: &[&str]) -> String {
    let exec_id = format!("x{}", EXEC.fetch_add(1, Ordering::Relaxed));
    let mut args = vec!["tasks", "exec", "--exec-id", &exec_id, id];
    args.extend_from_slice(argv);
    s.ctr.ok(&args).stdout_str()
}

/// Waits until task `id`'s counter reaches `at_least`; returns it.
#[track_caller]
fn wait_tick(s: &Scenario, id: &str, at_least: u64) -> u64 {
    poll::until(
        TIMEOUT,
        &format!("{id}'s counter to reach {at_least}"),
        || {
            let pid = s.ctr.task(id).map(|t| t.pid).ok_or("no such task")?;
            memtick::tick(pid).and_then(|t| {
                if t >= at_least {
                    Ok(t)
                } else {
                    Err(format!("tick {t}"))
                }
            })
        },
    )
}

/// One line through `nc` to the echo server inside task `id`.
fn ask(s: &Scenario, id: &str, line: &str) -> String {
    exec(
        s,
        id,
        &["sh", "-c", &format!("echo {line} | nc 127.0.0.1 7000")],
    )
    .trim()
    .to_string()
}

/// Kills and deletes the task and removes the container, so that only the
/// checkpoint is left.
fn remove(s: &Scenario, c: &Container) {
    s.ctr.ok(&["tasks", "kill", "--signal", "SIGKILL", &c.id]);
    c.wait_status("STOPPED");
    s.ctr.ok(&["tasks", "delete", &c.id]);
    s.ctr.ok(&["containers", "delete", &c.id]);
}

fn checkpoint_ref(c: &Container) -> String {
    format!("localhost/migrate-tests/checkpoint/{}:1", c.id)
}

/// Checkpoint with `ctr container checkpoint --task --rw`, remove the
/// container, restore it with `ctr container restore --live --rw`: the
/// counter continues from the checkpoint and the writable layer is back.
fn container_checkpoint_restore_continues_counter(s: &Scenario) {
    if !criu_available("container_checkpoint_restore_continues_counter") {
        return;
    }
    let c = s.container();
    s.run_detached(
        &c,
        &[],
        &[
            "memtick",
            "--mib",
            "16",
            "--interval-ms",
            "50",
            "--out",
            "/tmp/tick",
        ],
    );
    exec(s, &c.id, &["sh", "-c", "echo kept > /root/marker"]);
    let before = wait_tick(s, &c.id, 10);

    let image = checkpoint_ref(&c);
    s.ctr
        .ok(&["containers", "checkpoint", "--task", "--rw", &c.id, &image]);
    assert_eq!(
        c.wait_status("RUNNING").status,
        "RUNNING",
        "the checkpoint must leave the container running"
    );
    remove(s, &c);

    s.ctr
        .ok(&["containers", "restore", "--live", "--rw", &c.id, &image]);
    let restored = wait_tick(s, &c.id, 1);
    assert!(
        restored >= before,
        "restored counter {restored} went back before the checkpoint ({before}): a cold start?"
    );
    // memtick verifies its memory pattern each tick and exits 3 on damage.
    let later = wait_tick(s, &c.id, restored + 10);
    assert!(later > restored);
    assert_eq!(exec(s, &c.id, &["cat", "/root/marker"]).trim(), "kept");
    s.ctr.run(&["images", "rm", &image]);
}

/// A TCP server's listening socket and in-memory count survive: after the
/// restore it answers on its port with the next number. (runc.v2 fails
/// this: runc has CRIU recreate the container's network namespace with
/// loopback down, CRIU issue 590, so its restored server is unreachable.)
fn restored_server_answers_with_its_count(s: &Scenario) {
    let c = s.container();
    s.run_detached(&c, &[], &["echo-server", "--port", "7000"]);
    poll::until(TIMEOUT, "the echo server to listen", || {
        let out = s.ctr.run(&[
            "tasks",
            "exec",
            "--exec-id",
            &format!("p{}", EXEC.fetch_add(1, Ordering::Relaxed)),
            &c.id,
            "sh",
            "-c",
            "echo a | nc 127.0.0.1 7000",
        ]);
        if out.success() && !out.stdout_str().trim().is_empty() {
            Ok(out.stdout_str())
        } else {
            Err(out.stderr_str())
        }
    });
    assert_eq!(ask(s, &c.id, "b"), "2 b");

    let image = checkpoint_ref(&c);
    s.ctr
        .ok(&["containers", "checkpoint", "--task", &c.id, &image]);
    remove(s, &c);
    s.ctr
        .ok(&["containers", "restore", "--live", &c.id, &image]);
    c.wait_status("RUNNING");
    assert_eq!(
        ask(s, &c.id, "c"),
        "3 c",
        "the restored server must continue its count"
    );
    s.ctr.run(&["images", "rm", &image]);
}

/// `ctr task checkpoint --image-path` writes CRIU's images to the directory
/// and the container keeps running (and counting).
fn task_checkpoint_to_image_path_leaves_running(s: &Scenario) {
    if !criu_available("task_checkpoint_to_image_path_leaves_running") {
        return;
    }
    let c = s.container();
    s.run_detached(
        &c,
        &[],
        &[
            "memtick",
            "--mib",
            "8",
            "--interval-ms",
            "50",
            "--out",
            "/tmp/tick",
        ],
    );
    let before = wait_tick(s, &c.id, 5);
    let dir = tempdir(&c.id);
    s.ctr.ok(&[
        "tasks",
        "checkpoint",
        "--image-path",
        dir.to_str().unwrap(),
        &c.id,
    ]);
    assert!(
        dir.join("inventory.img").is_file(),
        "no inventory.img in {}",
        dir.display()
    );
    assert!(
        std::fs::read_dir(&dir).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("pages-")),
        "no memory pages in {}",
        dir.display()
    );
    assert_only_regular_images(&dir);
    if s.runtime == MIGRATE_V1 {
        // This runtime locks the network with nftables where CRIU can
        // (hack/setup.sh builds it so), not with CRIU's default, iptables.
        assert_eq!(
            criu_images::network_lock_method(&dir.join("inventory.img")),
            Ok(Some(criu_images::NETWORK_LOCK_NFTABLES))
        );
    }
    assert_eq!(c.wait_status("RUNNING").status, "RUNNING");
    wait_tick(s, &c.id, before + 5);
    let _ = std::fs::remove_dir_all(dir);
}

/// CRIU's directory as runc leaves it: this runtime takes the memory
/// images through FIFOs under their names, and none of those (nor a file
/// of its own) may be left behind, whether the dump worked or failed.
#[track_caller]
fn assert_only_regular_images(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let kind = e.file_type().unwrap();
        assert!(
            kind.is_file() || kind.is_dir(),
            "{name} in {} is a {kind:?}, not a file",
            dir.display()
        );
        assert!(
            !name.ends_with(".tap"),
            "{name} was left in {}",
            dir.display()
        );
    }
}

/// Waits for the shim to commit container `id`'s ready point into `store`.
fn wait_ready_point(store: &Path, id: &str) -> PathBuf {
    let checkpoint = store.join(format!("{id}-ready"));
    poll::until(TIMEOUT, "the ready-point checkpoint", || {
        if checkpoint.join("manifest.json").is_file() {
            Ok(())
        } else {
            Err(format!("nothing in {}", store.display()))
        }
    });
    checkpoint
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("migrate-test-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Declares tests that run a scenario for io.containerd.migrate.v1 only,
/// on the shared instance.
macro_rules! migrate_only {
    ($($name:ident),+ $(,)?) => {
        mod migrate_v1_only {
            $(
                #[test]
                fn $name() {
                    containerd_migrate_tests::fixture::run_shared("checkpoint", super::MIGRATE_V1, stringify!($name), |s| {
                        if super::criu_available(stringify!($name)) {
                            super::$name(s)
                        }
                    });
                }
            )+
        }
    };
}

migrate_only!(
    restored_server_answers_with_its_count,
    failed_checkpoint_leaves_container_running,
    ready_point_checkpoint_and_clones,
    ready_point_waits_for_http_readiness,
    ready_point_waits_for_exec,
    ready_point_warms_up,
    ready_point_on_notify,
    ready_point_with_connections_held,
    ready_probe_gives_up,
    invalid_annotation_fails_creation,
);

/// A dump CRIU refuses (an open, deleted file larger than its ghost limit)
/// fails with CRIU's own words and leaves the container running, unfrozen.
fn failed_checkpoint_leaves_container_running(s: &Scenario) {
    let c = s.container();
    let script = "dd if=/dev/zero of=/tmp/big bs=1M count=2 2>/dev/null; exec 3</tmp/big; rm /tmp/big; \
                  exec memtick --mib 4 --interval-ms 50 --out /tmp/tick";
    s.run_detached(&c, &[], &["sh", "-c", script]);
    let before = wait_tick(s, &c.id, 3);
    let dir = tempdir(&c.id);
    let out = s.ctr.run(&[
        "tasks",
        "checkpoint",
        "--image-path",
        dir.to_str().unwrap(),
        &c.id,
    ]);
    assert!(!out.success(), "the dump should fail: {out}");
    let err = out.stderr_str();
    assert!(
        err.contains("Can't dump ghost file"),
        "the error should quote CRIU's cause: {err}"
    );
    assert!(
        err.contains("dump.log"),
        "the error should name CRIU's log: {err}"
    );
    assert_only_regular_images(&dir);
    assert_eq!(c.wait_status("RUNNING").status, "RUNNING");
    wait_tick(s, &c.id, before + 5);
    let _ = std::fs::remove_dir_all(dir);
}

/// The ready-point flow of seed 003: a checkpoint taken the moment the app
/// listens, then clones restored from it, each continuing from the
/// checkpointed state on its own.
fn ready_point_checkpoint_and_clones(s: &Scenario) {
    let store = tempdir("ready-store");
    let origin = s.container();
    // The "initialisation": a counter runs and a file is written before
    // the server listens; both must be in every clone.
    let app = "memtick --mib 8 --interval-ms 50 --out /tmp/tick & \
               while [ ! -s /tmp/tick ]; do :; done; echo warm > /tmp/warm; exec echo-server --port 7000";
    let ready = format!("{READY}=tcp:7000");
    let store_annotation = format!("{STORE}=file://{}", store.display());
    s.run_detached(
        &origin,
        &["--annotation", &ready, "--annotation", &store_annotation],
        &["sh", "-c", app],
    );
    let checkpoint = wait_ready_point(&store, &origin.id);
    assert!(checkpoint.join("rootfs-diff.tar").is_file());
    // The shim reaps every child it has; the CRIU version it asks for the
    // manifest must still be there.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(checkpoint.join("manifest.json")).unwrap()).unwrap();
    assert!(
        manifest["host"]["criuVersion"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "no CRIU version in the manifest's host: {}",
        manifest["host"]
    );
    // Restored only as new containers, it was dumped without a network
    // lock; CRIU's restores follow the method the dump recorded.
    assert_eq!(
        criu_images::network_lock_method(&checkpoint.join("criu/inventory.img")),
        Ok(Some(criu_images::NETWORK_LOCK_SKIP))
    );

    let from = format!("{RESTORE_FROM}=file://{}", checkpoint.display());
    // A clone that started cold would run this instead, and say so.
    let cold = ["sh", "-c", "echo cold > /tmp/cold; exec sleep 100000"];
    let clones: Vec<Container> = (0..3).map(|_| s.container()).collect();
    for clone in &clones {
        s.run_detached(clone, &["--annotation", &from], &cold);
    }
    // The memory images were hashed once on this host, by their writer or
    // at the latest by the first clone's restore, and are not hashed again
    // while they stay the files that were hashed: no memory gate for CRIU.
    for clone in &clones[1..] {
        let gate = footprint::bundle_dir(s.ctr.address(), &clone.id)
            .join("criu-restore-work/verify-memory.sh");
        assert!(
            !gate.exists(),
            "clone {} hashed the memory images again",
            clone.id
        );
    }
    for clone in &clones {
        assert_eq!(exec(s, &clone.id, &["cat", "/tmp/warm"]).trim(), "warm");
        let out = s.ctr.run(&[
            "tasks",
            "exec",
            "--exec-id",
            &format!("c{}", EXEC.fetch_add(1, Ordering::Relaxed)),
            &clone.id,
            "cat",
            "/tmp/cold",
        ]);
        assert!(!out.success(), "clone {} started cold", clone.id);
        let t = wait_tick(s, &clone.id, 1);
        wait_tick(s, &clone.id, t + 5);
    }
    // Each clone has a count of its own.
    assert_eq!(ask(s, &clones[0].id, "x"), "1 x");
    assert_eq!(ask(s, &clones[0].id, "y"), "2 y");
    assert_eq!(ask(s, &clones[1].id, "z"), "1 z");
    // No clone replaced the checkpoint it came from.
    let entries: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");

    damaged_checkpoint_starts_cold(s, &checkpoint);
    let _ = std::fs::remove_dir_all(store);
}

/// The late-ready test server's port and how long it takes, in its own
/// running time, to become ready after it listens.
const LATE_PORT: &str = "7001";
const LATE_READY_MS: &str = "3000";

/// One HTTP GET of /healthz through `nc` to the late-ready server inside
/// task `id`: its status code and its body (`<n> ready|not-ready`).
fn get_healthz(s: &Scenario, id: &str) -> (String, String) {
    let request = format!(
        "printf 'GET /healthz HTTP/1.1\\r\\nHost: t\\r\\nConnection: close\\r\\n\\r\\n' | nc 127.0.0.1 {LATE_PORT}"
    );
    let answer = exec(s, id, &["sh", "-c", &request]);
    let status = answer.split(' ').nth(1).unwrap_or_default().to_string();
    let body = answer
        .rsplit("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    (status, body)
}

/// Starts the late-ready server with `probe` and waits for its ready point,
/// which is returned.
fn late_ready_point(s: &Scenario, store: &Path, probe: &str) -> PathBuf {
    late_ready_point_with(s, store, &[format!("{READY}={probe}")], LATE_READY_MS, &[])
}

/// Starts the late-ready server, ready `ready_after_ms` after it listens,
/// with `server_args` and the ready point's `annotations`, and waits for
/// its ready point, which is returned.
fn late_ready_point_with(
    s: &Scenario,
    store: &Path,
    annotations: &[String],
    ready_after_ms: &str,
    server_args: &[&str],
) -> PathBuf {
    let origin = s.container();
    let mut opts = vec![
        "--annotation".to_string(),
        format!("{STORE}=file://{}", store.display()),
    ];
    for a in annotations {
        opts.extend(["--annotation".to_string(), a.clone()]);
    }
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    let mut command = vec![
        "late-ready-server",
        "--port",
        LATE_PORT,
        "--ready-after-ms",
        ready_after_ms,
    ];
    command.extend(server_args);
    s.run_detached(&origin, &opts, &command);
    wait_ready_point(store, &origin.id)
}

/// What the ready point's manifest says made it be taken.
fn ready_record(checkpoint: &Path) -> serde_json::Value {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(checkpoint.join("manifest.json")).unwrap()).unwrap();
    manifest["ready"].clone()
}

/// The request count `<n>` of a late-ready server's `200` answer `<n> ready`.
fn ready_count(answer: (String, String)) -> u64 {
    let (status, body) = answer;
    assert_eq!(status, "200", "{body}");
    let (n, state) = body.split_once(' ').expect("<n> ready");
    assert_eq!(state, "ready");
    n.parse().unwrap()
}

fn clone_of(s: &Scenario, checkpoint: &Path) -> Container {
    let from = format!("{RESTORE_FROM}=file://{}", checkpoint.display());
    let clone = s.container();
    s.run_detached(
        &clone,
        &["--annotation", &from],
        &["sh", "-c", "exec sleep 100000"],
    );
    clone
}

/// Issue 13: a server that binds its port seconds before it is ready. A
/// `tcp:` ready point is taken at the bind, so its clone still has the
/// initialisation ahead; an `http:` one only once the server answers 2xx,
/// so its clones answer ready at once. Each clone counts its requests on
/// from the checkpoint's count, which includes the probe's own requests
/// (every attempt is a request the server served); the probe's connection
/// is closed before the dump, or CRIU would have refused to dump it.
fn ready_point_waits_for_http_readiness(s: &Scenario) {
    let store = tempdir("late-ready-store");
    let tcp = late_ready_point(s, &store, &format!("tcp:{LATE_PORT}"));
    let clone = clone_of(s, &tcp);
    assert_eq!(
        get_healthz(s, &clone.id),
        ("503".into(), "1 not-ready".into())
    );

    let http = late_ready_point(s, &store, &format!("http:{LATE_PORT}/healthz"));
    let clones = [clone_of(s, &http), clone_of(s, &http)];
    let n = ready_count(get_healthz(s, &clones[0].id));
    // The probe made at least one request (its successful one) before the dump.
    assert!(n >= 2, "{n}");
    assert_eq!(
        get_healthz(s, &clones[0].id),
        ("200".into(), format!("{} ready", n + 1))
    );
    assert_eq!(
        get_healthz(s, &clones[1].id),
        ("200".into(), format!("{n} ready"))
    );
    let _ = std::fs::remove_dir_all(store);
}

/// How long the late-ready server initialises in the scenarios of the
/// exec: and notify probes and of the warm-up.
const SHORT_READY_MS: &str = "1500";

/// An `exec:` probe runs its command in the container until it exits 0.
/// Here the command asks the server itself (its answer's status), so the
/// ready point is taken once it answers 200, not at the bind; the manifest
/// says what fired, when and after how many attempts.
fn ready_point_waits_for_exec(s: &Scenario) {
    let store = tempdir("exec-ready-store");
    let probe = format!(
        r#"{READY}=exec:["sh","-c","printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 {LATE_PORT} | grep -q '^HTTP/1.1 200'"]"#
    );
    let checkpoint = late_ready_point_with(s, &store, &[probe], SHORT_READY_MS, &[]);
    let record = ready_record(&checkpoint);
    assert!(
        record["condition"]
            .as_str()
            .unwrap()
            .starts_with(r#"exec:["sh","-c","printf"#),
        "{record}"
    );
    assert!(record["afterMs"].as_f64().unwrap() >= 1500.0, "{record}");
    assert!(record["attempts"].as_u64().unwrap() >= 2, "{record}");
    assert!(
        record["lastFailure"]
            .as_str()
            .unwrap()
            .starts_with("sh exited with status 1"),
        "{record}"
    );
    let clone = clone_of(s, &checkpoint);
    // Every failed attempt and the successful one were requests it served.
    let n = ready_count(get_healthz(s, &clone.id));
    assert!(n >= 3, "{n}");
    let _ = std::fs::remove_dir_all(store);
}

/// With `warm-up=N`, the http: probe makes N more requests of its path once
/// the server is ready, before the dump: a clone's first answer counts
/// them all (the server counts every request it served).
fn ready_point_warms_up(s: &Scenario) {
    let store = tempdir("warm-up-store");
    let annotations = [
        format!("{READY}=http:{LATE_PORT}/healthz"),
        format!("{READY}.warm-up=5"),
    ];
    let checkpoint = late_ready_point_with(s, &store, &annotations, SHORT_READY_MS, &[]);
    let record = ready_record(&checkpoint);
    assert_eq!(record["warmUp"]["requests"], 5, "{record}");
    assert_eq!(
        record["lastFailure"], "GET /healthz answered 503",
        "{record}"
    );
    let attempts = record["attempts"].as_u64().unwrap();
    let clone = clone_of(s, &checkpoint);
    let served_before = ready_count(get_healthz(s, &clone.id)) - 1;
    // The successful attempt and the five warm-up requests at least; at
    // most every attempt (one may have come before the bind) and those five.
    assert!(
        (6..=attempts + 5).contains(&served_before),
        "{served_before} requests before the dump, {attempts} attempts"
    );
    let _ = std::fs::remove_dir_all(store);
}

/// `notify`: the app says it is ready (READY=1 to $NOTIFY_SOCKET, systemd's
/// protocol) and no probe asks it anything: a clone's first request is the
/// first its server ever served. The socket's file is gone from the clone.
fn ready_point_on_notify(s: &Scenario) {
    let store = tempdir("notify-store");
    let checkpoint = late_ready_point_with(
        s,
        &store,
        &[format!("{READY}=notify")],
        SHORT_READY_MS,
        &["--notify"],
    );
    let record = ready_record(&checkpoint);
    assert_eq!(record["condition"], "notify", "{record}");
    assert_eq!(record["attempts"], 0, "{record}");
    assert!(record["afterMs"].as_f64().unwrap() >= 1500.0, "{record}");
    let clone = clone_of(s, &checkpoint);
    assert_eq!(get_healthz(s, &clone.id), ("200".into(), "1 ready".into()));
    assert_eq!(
        exec(
            s,
            &clone.id,
            &[
                "sh",
                "-c",
                "test -e /containerd-migrate-notify.sock && echo there || echo gone"
            ]
        )
        .trim(),
        "gone"
    );
    let _ = std::fs::remove_dir_all(store);
}

/// A server that keeps connections open after answering them, as Java's
/// NIO does until its selector's next round: the watch waits at most the
/// probe's timeout for the probe's connections to close, says so, and the
/// ready point is dumped with them open. They are dumped as closed (CRIU's
/// tcp-close), so its clones restore and answer.
fn ready_point_with_connections_held(s: &Scenario) {
    let store = tempdir("held-store");
    let annotations = [
        format!("{READY}=http:{LATE_PORT}/healthz"),
        format!("{READY}.timeout=300ms"),
    ];
    let checkpoint = late_ready_point_with(
        s,
        &store,
        &annotations,
        SHORT_READY_MS,
        // Longer than the 300 ms the watch waits, short enough for the
        // test's own requests, whose answers end when it closes.
        &["--hold-ms", "2000"],
    );
    // Logged before the dump; the shim's log reaches containerd's a little later.
    let warning = format!(
        "still holds a connection of probe http:{LATE_PORT}/healthz 300ms after the probe closed its end"
    );
    poll::until(TIMEOUT, "the warning that a connection stayed open", || {
        let log = std::fs::read_to_string(s.instance.containerd_log()).unwrap_or_default();
        if log.contains(&warning) {
            Ok(())
        } else {
            Err("not in containerd's log: the connection was closed before the dump, so this tests nothing".into())
        }
    });
    let clone = clone_of(s, &checkpoint);
    assert!(ready_count(get_healthz(s, &clone.id)) >= 2);
    let _ = std::fs::remove_dir_all(store);
}

/// A probe that never succeeds gives up after its give-up time: no ready
/// point, and the container runs on.
fn ready_probe_gives_up(s: &Scenario) {
    let store = tempdir("give-up-store");
    let c = s.container();
    let ready = format!("{READY}=http:7002/never");
    let give_up = format!("{READY}.give-up=300ms");
    let store_annotation = format!("{STORE}=file://{}", store.display());
    s.run_detached(
        &c,
        &[
            "--annotation",
            &ready,
            "--annotation",
            &give_up,
            "--annotation",
            &store_annotation,
        ],
        &[
            "late-ready-server",
            "--port",
            LATE_PORT,
            "--ready-after-ms",
            "0",
        ],
    );
    // The shim says why, naming the probe and its last failure.
    let warning = format!("{}: probe http:7002/never did not succeed within", c.id);
    poll::until(TIMEOUT, "the probe's give-up warning", || {
        let log = std::fs::read_to_string(s.instance.containerd_log()).unwrap_or_default();
        match log.lines().find(|l| l.contains(&warning)) {
            Some(line) if line.contains("connect to 127.0.0.1:7002") => Ok(()),
            Some(line) => Err(format!("no last failure in: {line}")),
            None => Err(format!("no {warning:?} in containerd's log")),
        }
    });
    assert_eq!(
        std::fs::read_dir(&store).unwrap().count(),
        0,
        "a ready point was taken"
    );
    assert_eq!(c.wait_status("RUNNING").status, "RUNNING");
    assert_eq!(get_healthz(s, &c.id), ("200".into(), "1 ready".into()));
    let _ = std::fs::remove_dir_all(store);
}

/// A checkpoint whose memory was altered is not restored: CRIU stops at
/// its post-restore stage, before the restored processes run (the shim
/// hashes the memory images while CRIU restores), and the container starts
/// cold instead, running its own command. The checkpoint is altered in
/// place: its memory images were hashed before, and that hash must not
/// stand for the altered files.
fn damaged_checkpoint_starts_cold(s: &Scenario, damaged: &Path) {
    let pages = std::fs::read_dir(damaged.join("criu"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("pages-")
        })
        .expect("a pages image");
    let mut bytes = std::fs::read(&pages).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&pages, bytes).unwrap();

    let c = s.container();
    let from = format!("{RESTORE_FROM}=file://{}", damaged.display());
    s.run_detached(
        &c,
        &["--annotation", &from],
        &["sh", "-c", "echo cold > /tmp/cold; exec sleep 100000"],
    );
    poll::until(TIMEOUT, "the cold start's marker", || {
        let out = s.ctr.run(&[
            "tasks",
            "exec",
            "--exec-id",
            &format!("d{}", EXEC.fetch_add(1, Ordering::Relaxed)),
            &c.id,
            "cat",
            "/tmp/cold",
        ]);
        if out.success() {
            Ok(())
        } else {
            Err(out.stderr_str())
        }
    });
    let log = footprint::bundle_dir(s.ctr.address(), &c.id).join("criu-restore-work/restore.log");
    let log = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    assert!(
        log.contains("Aborting restore due to post-restore script"),
        "CRIU was not stopped before the damaged processes ran:\n{}",
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
}

/// An annotation with a value this runtime cannot use fails the creation
/// and says which annotation and what form it takes.
fn invalid_annotation_fails_creation(s: &Scenario) {
    let c = s.container();
    let bad = format!("{READY}=tcp:http");
    let out = s.run(&c, &["--annotation", &bad], &["true"]);
    assert!(!out.success(), "creation should fail: {out}");
    let err = out.stderr_str();
    assert!(
        err.contains(READY) && err.contains("tcp:PORT, http:PORT/PATH"),
        "{err}"
    );

    let c = s.container();
    let probe = format!("{READY}=http:7001/healthz");
    let bad = format!("{READY}.period=0s");
    let out = s.run(
        &c,
        &["--annotation", &probe, "--annotation", &bad],
        &["true"],
    );
    assert!(!out.success(), "creation should fail: {out}");
    let err = out.stderr_str();
    assert!(
        err.contains(&format!("{READY}.period")) && err.contains("a duration above zero"),
        "{err}"
    );

    // Nor can a probe take a setting it has no use for.
    let c = s.container();
    let probe = format!("{READY}=tcp:7001");
    let warm_up = format!("{READY}.warm-up=3");
    let out = s.run(
        &c,
        &["--annotation", &probe, "--annotation", &warm_up],
        &["true"],
    );
    assert!(!out.success(), "creation should fail: {out}");
    assert!(
        out.stderr_str().contains(&format!(
            "{READY}.warm-up is set but the probe tcp:7001 has no request"
        )),
        "{out}"
    );

    // A setting without a probe would do nothing.
    let c = s.container();
    let orphan = format!("{READY}.give-up=1m");
    let out = s.run(&c, &["--annotation", &orphan], &["true"]);
    assert!(!out.success(), "creation should fail: {out}");
    let err = out.stderr_str();
    assert!(
        err.contains(&format!("{READY}.give-up is set but {READY} is not")),
        "{err}"
    );
}
