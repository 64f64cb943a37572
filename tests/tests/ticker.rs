//! Checkpoint tickers end to end: a private containerd, the
//! io.containerd.migrate.v1 shim with ticker annotations, CRIU, a version
//! store, and `migratectl` to list and restore versions.
//!
//! Versions must appear every interval and never overlap, retention must
//! keep only the newest groups, and a delete must stop the ticker. A
//! container restored from the newest version must carry on counting from
//! where the version left it, also once the container and its record are
//! gone, since a version names its image; a damaged newest version must be
//! skipped in favour of the one before, saying why; encrypted versions must
//! refuse a missing or wrong key. Bad annotation values must fail the
//! creation, naming the annotation.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use containerd_migrate_tests::ctr::NAMESPACE;
use containerd_migrate_tests::fixture::{self, IMAGE};
use containerd_migrate_tests::memtick::{tick, wait_tick_above};
use containerd_migrate_tests::process::{self, Output};
use containerd_migrate_tests::registry::Registry;
use containerd_migrate_tests::{MIGRATE_V1, Scenario, migratectl, poll};
use serde_json::Value;

const INSTANCE: &str = "ticker";
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Versions of a few MiB take well under a second here; a loaded machine
/// may take several.
const VERSION_TIMEOUT: Duration = Duration::from_secs(60);

mod migrate_v1 {
    #[test]
    fn versions_on_schedule_and_retention_holds() {
        super::run(
            "versions_on_schedule_and_retention_holds",
            super::versions_on_schedule_and_retention_holds,
        );
    }

    #[test]
    fn restore_skips_a_damaged_newest_version() {
        super::run(
            "restore_skips_a_damaged_newest_version",
            super::restore_skips_a_damaged_newest_version,
        );
    }

    #[test]
    fn a_lost_containers_version_restores_without_naming_its_image() {
        super::run(
            "a_lost_containers_version_restores_without_naming_its_image",
            super::a_lost_containers_version_restores_without_naming_its_image,
        );
    }

    #[test]
    fn a_failed_tick_harms_nothing_and_the_next_retries() {
        super::run(
            "a_failed_tick_harms_nothing_and_the_next_retries",
            super::a_failed_tick_harms_nothing_and_the_next_retries,
        );
    }

    #[test]
    fn versions_in_a_registry_restore() {
        super::run(
            "versions_in_a_registry_restore",
            super::versions_in_a_registry_restore,
        );
    }

    #[test]
    fn bad_ticker_annotations_fail_creation() {
        super::run(
            "bad_ticker_annotations_fail_creation",
            super::bad_ticker_annotations_fail_creation,
        );
    }
}

fn run(test: &str, f: fn(&Scenario)) {
    if migratectl::prerequisites_met(test) {
        fixture::run_shared(INSTANCE, MIGRATE_V1, test, f);
    }
}

/// A version store directory of the scenario's own, removed when dropped.
struct Store {
    dir: PathBuf,
}

static NEXT_STORE: AtomicUsize = AtomicUsize::new(0);

impl Store {
    fn new() -> Store {
        let n = NEXT_STORE.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ticker-e2e-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Store { dir }
    }

    fn url(&self) -> String {
        format!("file://{}/versions", self.dir.display())
    }

    fn versions_dir(&self, container: &str) -> PathBuf {
        self.dir
            .join("versions/containers")
            .join(NAMESPACE)
            .join(container)
            .join("versions")
    }

    fn manifest(&self, container: &str, version: u64) -> Value {
        let path = self.versions_dir(container).join(format!("{version}.json"));
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
    }

    fn chunk_path(&self, id: &str) -> PathBuf {
        self.dir.join("versions/chunks").join(&id[..2]).join(id)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `migratectl --address A --namespace N ARGS...`.
#[track_caller]
fn migratectl(s: &Scenario, args: &[&str]) -> Output {
    let mut cmd = Command::new(migratectl::binary().expect("checked before the scenario"));
    cmd.args(["--address", s.ctr.address(), "--namespace", NAMESPACE]);
    cmd.args(args);
    process::run(cmd, None, CALL_TIMEOUT)
}

/// `checkpoint ls --store URL --container ID --json`.
#[track_caller]
fn versions(s: &Scenario, url: &str, container: &str) -> Vec<Value> {
    let out = migratectl(
        s,
        &[
            "checkpoint",
            "ls",
            "--store",
            url,
            "--container",
            container,
            "--json",
        ],
    )
    .expect_success();
    match serde_json::from_slice(&out.stdout) {
        Ok(Value::Array(rows)) => rows,
        other => panic!("checkpoint ls --json printed {other:?}\n{out}"),
    }
}

fn numbers(rows: &[Value]) -> Vec<u64> {
    rows.iter()
        .map(|r| r["version"].as_u64().unwrap())
        .collect()
}

/// Waits until the store lists a version numbered `at_least` or above.
#[track_caller]
fn wait_for_version(s: &Scenario, url: &str, container: &str, at_least: u64) -> Vec<Value> {
    poll::until(
        VERSION_TIMEOUT,
        &format!("version {at_least} of {container}"),
        || {
            let rows = versions(s, url, container);
            match numbers(&rows).last() {
                Some(&v) if v >= at_least => Ok(rows),
                last => Err(format!("newest version {last:?}")),
            }
        },
    )
}

fn memtick() -> [&'static str; 7] {
    [
        "memtick",
        "--mib",
        "16",
        "--interval-ms",
        "20",
        "--out",
        "/tmp/tick",
    ]
}

/// Waits for a first version of `container` (memtick as `pid`), for
/// memtick to count past 50, then for `more` versions dumped after that
/// count; returns the count, the newest version seen at it, and the
/// versions listed at the end.
fn versions_after_counting(
    s: &Scenario,
    url: &str,
    container: &str,
    pid: u32,
    more: u64,
) -> (u64, u64, Vec<Value>) {
    let first = numbers(&wait_for_version(s, url, container, 0))[0];
    let before = wait_tick_above(pid, 50, "memtick to count");
    let newest_seen = numbers(&versions(s, url, container))
        .last()
        .copied()
        .unwrap_or(first);
    let rows = wait_for_version(s, url, container, newest_seen + more);
    (before, newest_seen, rows)
}

/// With interval 1s, groups of 2 and 2 groups kept, versions come an
/// interval apart, each uploads less than its size, retention leaves
/// only the newest two groups, the container counts on throughout, and a
/// delete stops the ticker.
fn versions_on_schedule_and_retention_holds(s: &Scenario) {
    let store = Store::new();
    let url = store.url();
    let c = s.container();
    let annotations = [
        "--annotation",
        "io.containerd.migrate.checkpoint.interval=1s",
        "--annotation",
        "io.containerd.migrate.checkpoint.version-group=2",
        "--annotation",
        "io.containerd.migrate.checkpoint.keep-groups=2",
        "--annotation",
    ];
    let store_annotation = format!("io.containerd.migrate.checkpoint.store={url}");
    let mut opts = annotations.to_vec();
    opts.push(&store_annotation);
    let pid = s.run_detached(&c, &opts, &memtick());
    let before = wait_tick_above(pid, 5, "memtick to count");

    // Retention runs right after each upload: poll until it has.
    let rows = poll::until(VERSION_TIMEOUT, "version 6 with retention applied", || {
        let rows = versions(s, &url, &c.id);
        let listed = numbers(&rows);
        match listed.last() {
            Some(&newest) if newest >= 6 => {
                let oldest_kept = (newest / 2 - 1) * 2;
                let expected: Vec<u64> = (oldest_kept..=newest).collect();
                if listed == expected {
                    Ok(rows)
                } else {
                    Err(format!("listed {listed:?}, expected {expected:?}"))
                }
            }
            _ => Err(format!("listed {listed:?}")),
        }
    });
    let created: Vec<time::OffsetDateTime> = rows
        .iter()
        .map(|r| {
            time::OffsetDateTime::parse(
                r["created"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
        })
        .collect();
    // Ticks start an interval apart; a version's time is taken after its
    // dump, whose length varies a little. Ticks never bunch up.
    let span = *created.last().unwrap() - created[0];
    let expected =
        time::Duration::seconds(rows.len() as i64 - 1) - time::Duration::milliseconds(500);
    assert!(
        span >= expected,
        "{} versions within {span}: faster than one a second",
        rows.len()
    );
    for (pair, rows) in created.windows(2).zip(rows.windows(2)) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= time::Duration::milliseconds(500),
            "versions {} and {} are only {gap} apart",
            rows[0]["version"],
            rows[1]["version"]
        );
    }
    for r in &rows {
        assert_eq!(r["valid"], true, "{r}");
        assert_eq!(r["mode"], "storage-chunks", "{r}");
        assert_eq!(
            r["group"].as_u64().unwrap(),
            r["version"].as_u64().unwrap() / 2,
            "{r}"
        );
        let (total, new) = (
            r["bytesTotal"].as_u64().unwrap(),
            r["bytesNew"].as_u64().unwrap(),
        );
        assert!(total >= 16 << 20, "{r}");
        // memtick rewrites its whole 16 MiB only at start: later versions
        // upload what changed, not everything.
        assert!(
            new < total / 2,
            "version {} uploaded {new} of {total} bytes",
            r["version"]
        );
    }
    // The chunks of dropped versions are kept for a grace period, but no
    // manifest of a dropped version is left.
    let on_disk: BTreeSet<String> = std::fs::read_dir(store.versions_dir(&c.id))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(!on_disk.contains("0.json"), "{on_disk:?}");

    wait_tick_above(pid, before + 10, "memtick to go on counting while ticked");
    assert_eq!(c.wait_status("RUNNING").pid, pid);

    // A deleted container's ticker stops: no version comes after it.
    let id = c.id.clone();
    drop(c);
    // A tick under way when the delete came may still finish its upload.
    let mut last = numbers(&versions(s, &url, &id)).last().copied();
    let settled = poll::until(Duration::from_secs(30), "the ticker to stop", || {
        std::thread::sleep(Duration::from_millis(500));
        let now = numbers(&versions(s, &url, &id)).last().copied();
        if now == last {
            Ok(now)
        } else {
            last = now;
            Err(format!("version {now:?} came after the delete"))
        }
    });
    // Nor does it leave its dumps in RAM.
    for staging in [
        "/run/containerd-migrate/staging",
        "/dev/shm/containerd-migrate-staging",
    ] {
        let ram = PathBuf::from(staging).join(format!("ticker-{NAMESPACE}-{id}"));
        assert!(!ram.exists(), "{} is left behind", ram.display());
    }
    // Three intervals without a new version.
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            numbers(&versions(s, &url, &id)).last().copied(),
            settled,
            "a version was stored after the container was deleted"
        );
    }
}

/// Encrypted versions: restore without the key or with another key fails
/// saying so; with a chunk of the newest version damaged, restore skips it
/// for the one before, and the restored container carries on counting
/// from that version, not from zero.
fn restore_skips_a_damaged_newest_version(s: &Scenario) {
    let store = Store::new();
    let url = store.url();
    let key = store.dir.join("key");
    let other_key = store.dir.join("other-key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    std::fs::write(&other_key, "ab".repeat(32)).unwrap();
    let c = s.container();
    let opts = [
        "--annotation".to_string(),
        "io.containerd.migrate.checkpoint.interval=1s".to_string(),
        "--annotation".to_string(),
        format!("io.containerd.migrate.checkpoint.store={url}"),
        "--annotation".to_string(),
        format!(
            "io.containerd.migrate.checkpoint.key-file={}",
            key.display()
        ),
    ];
    let pid = s.run_detached(&c, &fixture::strs(&opts), &memtick());
    // Both versions restore will consider are dumped after this count.
    let (before, _, _) = versions_after_counting(s, &url, &c.id, pid, 2);
    let id = c.id.clone();
    drop(c); // stops the ticker; the versions stay
    let listed = numbers(&versions(s, &url, &id));
    let newest = *listed.last().unwrap();
    assert!(listed.contains(&(newest - 1)), "{listed:?}");
    let rows = versions(s, &url, &id);
    assert!(rows.iter().all(|r| r["keyId"].is_string()), "{rows:?}");

    let k = s.container();
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "--store",
            &url,
            "--container",
            &id,
            "--image",
            IMAGE,
            "--as",
            &k.id,
            "--detach",
            "--json",
        ];
        args.extend_from_slice(extra);
        migratectl(s, &args)
    };
    let out = restore(&[]).expect_failure();
    assert!(out.stderr_str().contains("pass the key file"), "{out}");
    let other = other_key.display().to_string();
    let out = restore(&["--key-file", &other]).expect_failure();
    assert!(out.stderr_str().contains("key id"), "{out}");
    assert!(s.ctr.task(&k.id).is_none(), "a failed restore left a task");

    // Damage a chunk that the newest version has and the one before lacks.
    let chunks = |v: u64| -> BTreeSet<String> {
        store.manifest(&id, v)["files"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|f| f["chunks"].as_array().unwrap().iter())
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (newer, older) = (chunks(newest), chunks(newest - 1));
    let victim = newer
        .difference(&older)
        .next()
        .expect("the newest version changed some chunk");
    let path = store.chunk_path(victim);
    let mut blob = std::fs::read(&path).unwrap();
    let middle = blob.len() / 2;
    blob[middle] ^= 0xff;
    std::fs::write(&path, blob).unwrap();

    let key_arg = key.display().to_string();
    let out = restore(&["--key-file", &key_arg]).expect_success();
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(report["version"].as_u64(), Some(newest - 1), "{report}");
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{report}");
    assert_eq!(skipped[0]["version"].as_u64(), Some(newest), "{report}");
    let reason = skipped[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(victim.as_str()) && reason.contains("damaged"),
        "{reason}"
    );

    assert_carries_on(&k, &report, before);
}

/// As after its host died: the ticked container is killed and containerd's
/// record of it deleted, so only the version store knows it. `restore
/// --store URL --container ID` without `--image` takes the image from the
/// newest version, which names it, and the counter carries on.
fn a_lost_containers_version_restores_without_naming_its_image(s: &Scenario) {
    let store = Store::new();
    let url = store.url();
    let c = s.container();
    let opts = [
        "--annotation".to_string(),
        "io.containerd.migrate.checkpoint.interval=1s".to_string(),
        "--annotation".to_string(),
        format!("io.containerd.migrate.checkpoint.store={url}"),
    ];
    let pid = s.run_detached(&c, &fixture::strs(&opts), &memtick());
    let (before, newest_seen, _) = versions_after_counting(s, &url, &c.id, pid, 1);
    s.ctr.ok(&["tasks", "kill", "--signal", "SIGKILL", &c.id]);
    let id = c.id.clone();
    drop(c); // the task and the container's record
    let records = s.ctr.ok(&["containers", "ls", "-q"]).stdout_str();
    assert!(!records.lines().any(|l| l.trim() == id), "{records}");

    let k = s.container();
    let out = migratectl(
        s,
        &[
            "restore",
            "--store",
            &url,
            "--container",
            &id,
            "--as",
            &k.id,
            "--detach",
            "--json",
        ],
    )
    .expect_success();
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert!(
        report["version"].as_u64().unwrap() > newest_seen,
        "{report}"
    );
    let record: Value =
        serde_json::from_slice(&s.ctr.ok(&["containers", "info", &k.id]).stdout).unwrap();
    assert_eq!(record["Image"], IMAGE, "{record}");
    assert_carries_on(&k, &report, before);
}

/// While the store cannot be opened (its path is a file) every tick fails:
/// the shim logs why and the container counts on; once the path is free,
/// the next tick stores version 0.
fn a_failed_tick_harms_nothing_and_the_next_retries(s: &Scenario) {
    let store = Store::new();
    let url = store.url();
    let blocker = store.dir.join("versions");
    std::fs::write(&blocker, "not a directory").unwrap();
    let c = s.container();
    let opts = [
        "--annotation".to_string(),
        "io.containerd.migrate.checkpoint.interval=1s".to_string(),
        "--annotation".to_string(),
        format!("io.containerd.migrate.checkpoint.store={url}"),
    ];
    let pid = s.run_detached(&c, &fixture::strs(&opts), &memtick());
    let log = PathBuf::from("/run/containerd-migrate")
        .join(INSTANCE)
        .join("containerd.log");
    let failure = format!("{}: checkpoint tick failed, the container runs on", c.id);
    poll::until(VERSION_TIMEOUT, "a failed tick in the log", || {
        let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
        match text.lines().find(|l| l.contains(&failure)) {
            Some(line) if line.contains(&blocker.display().to_string()) => Ok(()),
            Some(line) => Err(format!(
                "the failure does not name the store's path: {line}"
            )),
            None => Err("no failed tick logged yet".into()),
        }
    });
    let counted = tick(pid).unwrap();
    wait_tick_above(pid, counted + 5, "memtick to count on after a failed tick");
    assert_eq!(c.wait_status("RUNNING").pid, pid);

    std::fs::remove_file(&blocker).unwrap();
    let rows = wait_for_version(s, &url, &c.id, 0);
    assert_eq!(rows[0]["valid"], true, "{rows:?}");
    assert_eq!(c.wait_status("RUNNING").pid, pid);
}

/// An `oci://` store: a real registry on loopback holds the versions, they
/// are incremental, and the newest restores and carries on counting.
fn versions_in_a_registry_restore(s: &Scenario) {
    let Some(registry) = Registry::start("versions_in_a_registry_restore") else {
        return;
    };
    let url = registry.url("checkpoints/e2e");
    let c = s.container();
    let opts = [
        "--annotation".to_string(),
        "io.containerd.migrate.checkpoint.interval=1s".to_string(),
        "--annotation".to_string(),
        format!("io.containerd.migrate.checkpoint.store={url}"),
    ];
    let pid = s.run_detached(&c, &fixture::strs(&opts), &memtick());
    let (before, newest_seen, rows) = versions_after_counting(s, &url, &c.id, pid, 1);
    for r in rows.iter().skip(1) {
        assert_eq!(r["valid"], true, "{r}");
        let (total, new) = (
            r["bytesTotal"].as_u64().unwrap(),
            r["bytesNew"].as_u64().unwrap(),
        );
        assert!(
            new < total / 2,
            "version {} uploaded {new} of {total} bytes",
            r["version"]
        );
    }

    let k = s.container();
    let out = migratectl(
        s,
        &[
            "restore",
            "--store",
            &url,
            "--container",
            &c.id,
            "--as",
            &k.id,
            "--detach",
            "--json",
        ],
    )
    .expect_success();
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert!(
        report["version"].as_u64().unwrap() > newest_seen,
        "{report}"
    );
    assert_carries_on(&k, &report, before);
}

/// The container `k` restored (as `report` says) counts on from at least
/// `before`, the count read before the version was taken; a cold start
/// would count from 1.
#[track_caller]
fn assert_carries_on(k: &fixture::Container, report: &Value, before: u64) {
    let restored = k.wait_status("RUNNING").pid;
    let from = poll::until(Duration::from_secs(30), "the restored counter", || {
        tick(restored)
    });
    assert!(
        from >= before,
        "the restored container counts from {from}, not from the version's ≥ {before}"
    );
    wait_tick_above(
        restored,
        from + 5,
        "the restored container to go on counting",
    );
    if let Some(log) = report["containers"][0]["log"].as_str() {
        let _ = std::fs::remove_file(log);
    }
}

/// Each bad value fails `ctr run` with an error naming the annotation.
fn bad_ticker_annotations_fail_creation(s: &Scenario) {
    let missing_key = format!("/nonexistent/{}/key", std::process::id());
    let cases = [
        (
            "io.containerd.migrate.checkpoint.interval=30".to_string(),
            "io.containerd.migrate.checkpoint.interval",
        ),
        (
            "io.containerd.migrate.checkpoint.interval=30ms".to_string(),
            "at least 1s",
        ),
        (
            "io.containerd.migrate.checkpoint.keep-groups=0".to_string(),
            "io.containerd.migrate.checkpoint.keep-groups",
        ),
        (
            "io.containerd.migrate.checkpoint.store=s3://bucket/x".to_string(),
            "oci://HOST:PORT/REPOSITORY",
        ),
        (
            format!("io.containerd.migrate.checkpoint.key-file={missing_key}"),
            "io.containerd.migrate.checkpoint.key-file",
        ),
    ];
    for (annotation, says) in cases {
        let c = s.container();
        let mut opts = vec!["--annotation", annotation.as_str()];
        // Every case but the interval's needs an interval to be considered.
        if !annotation.contains(".interval=") {
            opts.extend([
                "--annotation",
                "io.containerd.migrate.checkpoint.interval=10s",
            ]);
        }
        let out = s.run(&c, &opts, &["true"]).expect_failure();
        let text = format!("{}{}", out.stdout_str(), out.stderr_str());
        assert!(text.contains(says), "{annotation}: {text}");
    }
    // Ticker settings without an interval would do nothing: refused too.
    let c = s.container();
    let out = s
        .run(
            &c,
            &[
                "--annotation",
                "io.containerd.migrate.checkpoint.keep-groups=2",
            ],
            &["true"],
        )
        .expect_failure();
    assert!(
        out.stderr_str()
            .contains("io.containerd.migrate.checkpoint.interval is not"),
        "{out}"
    );
}
