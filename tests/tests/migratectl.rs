//! `migratectl` end to end: a private containerd, the
//! io.containerd.migrate.v1 shim, CRIU, and the migratectl binary built from
//! `coordinator/`.
//!
//! `checkpoint create` must leave the container running with its counter
//! going on, and store a checkpoint that `ls` shows as valid with its size;
//! a tampered file must make `inspect --verify` and `restore` fail naming the file; `rm`
//! must remove it; `restore` must start clones that carry on counting from
//! the checkpoint rather than from zero, even when a file the container
//! had open at the dump was renamed as it thawed, and wherever the image's
//! layers are unpacked (the checkpoint names them by content). `checkpoint
//! export` and `import` must convert to and from containerd's checkpoint image so that
//! `ctr container restore` and `ctr container checkpoint` work with ours.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use containerd_migrate_tests::ctr::{Ctr, NAMESPACE};
use containerd_migrate_tests::fixture::{self, IMAGE, RUNC_V2};
use containerd_migrate_tests::memtick::{TICK_TIMEOUT, tick, tick_in, wait_tick_above};
use containerd_migrate_tests::migratectl;
use containerd_migrate_tests::poll;
use containerd_migrate_tests::process::{self, Output};
use containerd_migrate_tests::{MIGRATE_V1, Scenario};
use serde_json::Value;

/// This binary's containerd instance.
const INSTANCE: &str = "migratectl";
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
const MIB: u64 = 1024 * 1024;

/// Tests named `migrate_v1::SCENARIO`, as the conformance suite names them:
/// migratectl works with this runtime only.
mod migrate_v1 {
    #[test]
    fn checkpoint_create_ls_inspect_rm() {
        super::run(
            "checkpoint_create_ls_inspect_rm",
            super::checkpoint_create_ls_inspect_rm,
        );
    }

    #[test]
    fn restore_clones_carry_on_counting() {
        super::run(
            "restore_clones_carry_on_counting",
            super::restore_clones_carry_on_counting,
        );
    }

    #[test]
    fn a_restored_clone_is_checkpointed_and_restored_again() {
        super::run(
            "a_restored_clone_is_checkpointed_and_restored_again",
            super::a_restored_clone_is_checkpointed_and_restored_again,
        );
    }

    #[test]
    fn a_file_renamed_as_the_checkpoint_thaws_is_restored() {
        super::run(
            "a_file_renamed_as_the_checkpoint_thaws_is_restored",
            super::a_file_renamed_as_the_checkpoint_thaws_is_restored,
        );
    }

    #[test]
    fn a_checkpoint_restores_where_its_image_is_unpacked_again() {
        super::run(
            "a_checkpoint_restores_where_its_image_is_unpacked_again",
            super::a_checkpoint_restores_where_its_image_is_unpacked_again,
        );
    }

    #[test]
    fn export_then_ctr_restore_carries_on_counting() {
        super::run(
            "export_then_ctr_restore_carries_on_counting",
            super::export_then_ctr_restore_carries_on_counting,
        );
    }

    #[test]
    fn ctr_checkpoint_of_runc_v2_imports_and_restores() {
        super::run(
            "ctr_checkpoint_of_runc_v2_imports_and_restores",
            super::ctr_checkpoint_of_runc_v2_imports_and_restores,
        );
    }
}

/// Runs scenario `f` on this binary's shared instance, or skips it (fails
/// with CI=true) when migratectl or CRIU is missing.
fn run(test: &str, f: fn(&Scenario)) {
    if migratectl::prerequisites_met(test) {
        fixture::run_shared(INSTANCE, MIGRATE_V1, test, f);
    }
}

/// migratectl pointed at the scenario's containerd, with a store of its own
/// that is removed when dropped.
struct Migratectl {
    bin: PathBuf,
    address: String,
    store: PathBuf,
}

static NEXT_STORE: AtomicUsize = AtomicUsize::new(0);

impl Migratectl {
    fn new(s: &Scenario) -> Migratectl {
        let n = NEXT_STORE.fetch_add(1, Ordering::Relaxed);
        let store =
            std::env::temp_dir().join(format!("migratectl-e2e-{}-{n}/store", std::process::id()));
        let _ = std::fs::remove_dir_all(&store);
        Migratectl {
            bin: migratectl::binary().expect("checked before the scenario"),
            address: s.ctr.address().to_string(),
            store,
        }
    }

    /// `migratectl --address A --namespace default VERB... --root S ARGS...`.
    fn command(&self, verb: &[&str], args: &[&str]) -> Command {
        self.command_in(NAMESPACE, verb, args)
    }

    /// `migratectl --address A --namespace NAMESPACE VERB... --root S ARGS...`.
    fn command_in(&self, namespace: &str, verb: &[&str], args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--address", &self.address, "--namespace", namespace]);
        cmd.args(verb).arg("--root").arg(&self.store).args(args);
        cmd
    }

    #[track_caller]
    fn run(&self, verb: &[&str], args: &[&str]) -> Output {
        process::run(self.command(verb, args), None, CALL_TIMEOUT)
    }

    #[track_caller]
    fn json(&self, verb: &[&str], args: &[&str]) -> Value {
        let out = self.run(verb, args).expect_success();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON: {e}\n{out}"))
    }

    /// `checkpoint ls --json [--verify]`, as a list.
    #[track_caller]
    fn list(&self, verify: bool) -> Vec<Value> {
        let args: &[&str] = if verify {
            &["--json", "--verify"]
        } else {
            &["--json"]
        };
        match self.json(&["checkpoint", "ls"], args) {
            Value::Array(rows) => rows,
            other => panic!("checkpoint ls --json printed {other}"),
        }
    }
}

impl Drop for Migratectl {
    fn drop(&mut self) {
        if let Some(dir) = self.store.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

const MEMTICK: [&str; 7] = [
    "memtick",
    "--mib",
    "32",
    "--interval-ms",
    "50",
    "--out",
    "/tmp/tick",
];

/// Where a second memtick in the container counts.
const SIDE: &str = "/tmp/side";

/// The entry of checkpoint `id` in `rows`, if listed.
fn find<'a>(rows: &'a [Value], id: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["id"] == id)
}

/// Nothing of a checkpoint's work in progress is left anywhere.
#[track_caller]
fn assert_no_leftovers(m: &Migratectl, id: &str) {
    for dir in [
        "/run/containerd-migrate/staging",
        "/dev/shm/containerd-migrate-staging",
    ] {
        let dump = Path::new(dir).join(id);
        assert!(
            !dump.exists(),
            "the dump directory {} is left behind",
            dump.display()
        );
    }
    let hidden: Vec<String> = std::fs::read_dir(&m.store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        hidden.is_empty(),
        "work in progress left in the store: {hidden:?}"
    );
}

/// create leaves the container running, its counter going on; ls shows the
/// checkpoint as valid with its size; inspect --verify passes, then fails
/// naming a tampered file, and restore refuses it; rm removes the
/// checkpoint; create --direct makes a valid checkpoint too.
fn checkpoint_create_ls_inspect_rm(s: &Scenario) {
    let m = Migratectl::new(s);
    let c = s.container();
    let pid = s.run_detached(&c, &[], &MEMTICK);
    let before = wait_tick_above(pid, 5, "memtick to count");

    let id = format!("{}-ck", c.id);
    let created = m.json(&["checkpoint", "create"], &["--id", &id, "--json", &c.id]);
    assert_eq!(created["id"], id.as_str(), "{created}");
    assert_eq!(created["leaveRunning"], true, "{created}");
    let size = created["sizeBytes"].as_u64().unwrap();
    assert!(
        created["memoryBytes"].as_u64().unwrap() >= 32 * MIB,
        "{created}"
    );
    assert!(
        size >= created["memoryBytes"].as_u64().unwrap(),
        "{created}"
    );
    assert!(created["dumpMs"].as_f64().unwrap() > 0.0, "{created}");

    // Still the same running task, and it goes on counting.
    let row = c.wait_status("RUNNING");
    assert_eq!(row.pid, pid, "the task was replaced");
    let after = tick(pid).unwrap();
    assert!(
        after >= before,
        "the counter went back from {before} to {after}"
    );
    wait_tick_above(pid, after + 5, "the counter to go on after the checkpoint");
    assert_no_leftovers(&m, &id);

    let rows = m.list(false);
    let row = find(&rows, &id).unwrap_or_else(|| panic!("{id} is not listed: {rows:?}"));
    assert_eq!(row["valid"], true, "{row}");
    assert_eq!(row["container"], c.id.as_str(), "{row}");
    assert_eq!(row["sizeBytes"].as_u64(), Some(size), "{row}");
    let table = m
        .run(&["checkpoint", "ls"], &[])
        .expect_success()
        .stdout_str();
    let line = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not in\n{table}"));
    assert!(
        line.contains("MiB") && line.trim_end().ends_with("yes"),
        "{table}"
    );

    let inspected = m.json(&["checkpoint", "inspect"], &["--verify", "--json", &id]);
    assert_eq!(inspected["valid"], true, "{inspected}");
    assert_eq!(inspected["checked"], "sha256", "{inspected}");
    assert_eq!(inspected["manifest"]["container"]["id"], c.id.as_str());
    let pages = inspected["manifest"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["path"].as_str())
        .find(|p| p.starts_with("criu/pages-"))
        .unwrap_or_else(|| panic!("no memory image listed: {inspected}"))
        .to_string();

    // Same size, one byte different: only the sha256 tells.
    let file = m.store.join(&id).join(&pages);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[4096] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let out = m
        .run(&["checkpoint", "inspect"], &["--verify", &id])
        .expect_failure();
    assert!(
        out.stderr_str().contains(&pages) && out.stderr_str().contains("sha256 mismatch"),
        "the error does not name {pages}\n{out}"
    );
    let row = find(&m.list(true), &id).cloned().unwrap();
    assert_eq!(row["valid"], false, "{row}");
    assert!(row["problem"].as_str().unwrap().contains(&pages), "{row}");
    // A restore refuses it too: migratectl only checks sizes, the shim
    // hashes every file before it restores, and the clone is removed again.
    let clone = s.container();
    let out = m
        .run(
            &["restore"],
            &["--checkpoint", &id, "--as", &clone.id, "--detach"],
        )
        .expect_failure();
    assert!(
        out.stderr_str().contains(&pages) && out.stderr_str().contains("sha256 mismatch"),
        "the restore's error does not name {pages}\n{out}"
    );
    assert!(
        !s.ctr.containers().contains(&clone.id),
        "the refused clone {} is left behind",
        clone.id
    );

    let out = m.run(&["checkpoint", "rm"], &[&id]).expect_success();
    assert_eq!(out.stdout_str().trim(), id);
    assert!(find(&m.list(false), &id).is_none(), "{id} is still listed");
    assert!(!m.store.join(&id).exists());
    let out = m.run(&["checkpoint", "inspect"], &[&id]).expect_failure();
    assert!(
        out.stderr_str().contains(&format!("no checkpoint {id}")),
        "{out}"
    );
    assert_no_leftovers(&m, &id);

    // --direct: CRIU dumps into the store itself; same checkpoint, same
    // running container.
    let direct = format!("{}-direct", c.id);
    let created = m.json(
        &["checkpoint", "create"],
        &["--direct", "--id", &direct, "--json", &c.id],
    );
    assert!(
        created["memoryBytes"].as_u64().unwrap() >= 32 * MIB,
        "{created}"
    );
    assert!(created["frozenMs"].as_f64().unwrap() > 0.0, "{created}");
    let inspected = m.json(&["checkpoint", "inspect"], &["--verify", "--json", &direct]);
    assert_eq!(inspected["valid"], true, "{inspected}");
    assert_eq!(c.wait_status("RUNNING").pid, pid, "the task was replaced");
    assert_no_leftovers(&m, &direct);
}

/// Two clones restored from one checkpoint run side by side, each in a
/// cgroup of its own, and count on from where the checkpoint was taken.
/// The container has two processes, each with memory of its own to dump
/// and check (memtick exits on a page it does not find as it left it).
fn restore_clones_carry_on_counting(s: &Scenario) {
    let m = Migratectl::new(s);
    let c = s.container();
    let script = format!(
        "memtick --mib 8 --interval-ms 20 --out {SIDE} & exec {}",
        MEMTICK.join(" ")
    );
    let pid = s.run_detached(&c, &[], &["sh", "-c", &script]);
    let before = wait_tick_above(pid, 10, "memtick to count");
    let side_before = poll::until(TICK_TIMEOUT, "the second memtick to count", || {
        tick_in(pid, SIDE)
    });
    let id = format!("{}-ck", c.id);
    m.json(&["checkpoint", "create"], &["--id", &id, "--json", &c.id]);

    let (k1, k2) = (s.container(), s.container());
    let report = m.json(
        &["restore"],
        &[
            "--checkpoint",
            &id,
            "--as",
            &k1.id,
            "--as",
            &k2.id,
            "--detach",
            "--json",
        ],
    );
    assert_eq!(report["checkpoint"], id.as_str(), "{report}");
    let restored = report["containers"].as_array().unwrap();
    assert_eq!(restored.len(), 2, "{report}");
    for (clone, entry) in [&k1, &k2].into_iter().zip(restored) {
        assert_eq!(entry["id"], clone.id.as_str(), "{report}");
        let pid = clone.wait_status("RUNNING").pid;
        assert_eq!(entry["pid"].as_u64(), Some(u64::from(pid)), "{report}");
        // A cold start would count from 1.
        let first = wait_tick_above(pid, 0, &format!("{} to count", clone.id));
        assert!(
            first >= before,
            "{} counts from {first}, not from the checkpoint's {before}",
            clone.id
        );
        wait_tick_above(pid, first + 3, &format!("{} to go on counting", clone.id));
        poll::until(
            TICK_TIMEOUT,
            &format!("the second memtick of {} to go on counting", clone.id),
            || match tick_in(pid, SIDE) {
                Ok(n) if n > side_before => Ok(n),
                Ok(n) => Err(format!("tick={n}, at most the checkpoint's {side_before}")),
                Err(e) => Err(e),
            },
        );
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            cgroup.contains(&format!("/{}", clone.id)),
            "{} shares a cgroup:\n{cgroup}",
            clone.id
        );
    }
    // The original was left alone.
    assert_eq!(c.wait_status("RUNNING").pid, pid);
    for entry in restored {
        let _ = std::fs::remove_file(entry["log"].as_str().unwrap());
    }
}

/// A container moved once must be movable again: a clone that `restore
/// --detach` started (no stdin, output to a log file) is checkpointed in
/// turn, and its own clone counts on from it. Its stdin was once the
/// shim's /dev/null, a file of the host's /dev that CRIU could not dump.
fn a_restored_clone_is_checkpointed_and_restored_again(s: &Scenario) {
    let m = Migratectl::new(s);
    let c = s.container();
    let pid = s.run_detached(&c, &[], &MEMTICK);
    wait_tick_above(pid, 10, "memtick to count");
    let first = format!("{}-ck", c.id);
    m.json(
        &["checkpoint", "create"],
        &["--id", &first, "--json", &c.id],
    );

    let clone = s.container();
    let report = m.json(
        &["restore"],
        &[
            "--checkpoint",
            &first,
            "--as",
            &clone.id,
            "--detach",
            "--json",
        ],
    );
    let clone_pid = clone.wait_status("RUNNING").pid;
    let counted = wait_tick_above(clone_pid, 0, "the clone to count");
    let again = format!("{}-ck", clone.id);
    m.json(
        &["checkpoint", "create"],
        &["--id", &again, "--json", &clone.id],
    );
    // The clone was left running.
    let at_checkpoint = wait_tick_above(
        clone_pid,
        counted,
        "the checkpointed clone to go on counting",
    );

    let second = s.container();
    let report2 = m.json(
        &["restore"],
        &[
            "--checkpoint",
            &again,
            "--as",
            &second.id,
            "--detach",
            "--json",
        ],
    );
    let second_pid = second.wait_status("RUNNING").pid;
    let resumed = wait_tick_above(second_pid, 0, "the clone's clone to count");
    assert!(
        resumed >= counted,
        "the clone's clone counts from {resumed}, not from its checkpoint's {counted} (or later, {at_checkpoint})"
    );
    wait_tick_above(
        second_pid,
        resumed + 3,
        "the clone's clone to go on counting",
    );
    for r in [&report, &report2] {
        for entry in r["containers"].as_array().unwrap() {
            let _ = std::fs::remove_file(entry["log"].as_str().unwrap());
        }
    }
}

/// memtick --hold renames the file it holds open the moment the checkpoint
/// thaws it. The checkpoint's rootfs diff must be of the instant of the
/// dump, or the restore fails: CRIU reopens the files a process had open
/// by their paths ("Can't open file tmp/held.0 on restore").
fn a_file_renamed_as_the_checkpoint_thaws_is_restored(s: &Scenario) {
    let m = Migratectl::new(s);
    let c = s.container();
    // memtick renames the file it holds the moment it thaws, which takes
    // it less time than a diff of 64 MiB; /big sorts before /tmp in the diff.
    let argv = [
        "sh",
        "-c",
        "dd if=/dev/zero of=/big bs=1M count=64 2>/dev/null && \
         exec memtick --mib 32 --interval-ms 10 --out /tmp/tick --hold /tmp/held",
    ];
    let pid = s.run_detached(&c, &[], &argv);
    let before = wait_tick_above(pid, 5, "memtick to count");
    let id = format!("{}-ck", c.id);
    m.json(&["checkpoint", "create"], &["--id", &id, "--json", &c.id]);
    let renamed = format!("/proc/{pid}/root/tmp/held");
    poll::until_true(
        TICK_TIMEOUT,
        "memtick to rename the file it held at the dump",
        || Path::new(&renamed).exists(),
        || format!("{renamed} is not there"),
    );

    restore_and_count_on(s, &m, &id, before);
}

/// Restores checkpoint `id` with `migratectl restore --detach` as a new
/// container and waits until it counts on from at least the checkpoint's
/// `before`; returns the clone (its output log removed) and its pid.
#[track_caller]
fn restore_and_count_on(
    s: &Scenario,
    m: &Migratectl,
    id: &str,
    before: u64,
) -> (fixture::Container, u32) {
    let clone = s.container();
    let report = m.json(
        &["restore"],
        &["--checkpoint", id, "--as", &clone.id, "--detach", "--json"],
    );
    let pid = clone.wait_status("RUNNING").pid;
    let first = wait_tick_above(pid, 0, "the restored container to count");
    assert!(
        first >= before,
        "the restored container counts from {first}, not from the checkpoint's {before}"
    );
    wait_tick_above(pid, first + 3, "the restored container to go on counting");
    let _ = std::fs::remove_file(report["containers"][0]["log"].as_str().unwrap());
    (clone, pid)
}

/// A checkpoint names its image by content, not by this host's snapshot
/// directories: in another namespace, where containerd unpacks the same
/// image again into snapshot directories of its own (as another host
/// would), it restores, and counts on. Its manifest names the image and
/// the chain ID of its layers, the parent of the container's snapshot.
fn a_checkpoint_restores_where_its_image_is_unpacked_again(s: &Scenario) {
    let m = Migratectl::new(s);
    let c = s.container();
    let pid = s.run_detached(&c, &[], &MEMTICK);
    let before = wait_tick_above(pid, 5, "memtick to count");
    let id = format!("{}-ck", c.id);
    m.json(&["checkpoint", "create"], &["--id", &id, "--json", &c.id]);
    let inspected = m.json(&["checkpoint", "inspect"], &["--json", &id]);
    let manifest = &inspected["manifest"];
    assert_eq!(manifest["container"]["image"], IMAGE, "{manifest}");
    let snapshot: Value =
        serde_json::from_slice(&s.ctr.ok(&["snapshots", "info", &c.id]).stdout).unwrap();
    let chain = snapshot["Parent"].as_str().unwrap();
    assert_eq!(manifest["rootfs"]["chainId"], chain, "{manifest}");
    let taken_at = manifest["rootfs"]["lowerDirs"].clone();

    let elsewhere = Elsewhere::new(s, &format!("elsewhere-{}", std::process::id()));
    // Scenario ids are too long for one more suffix (76 characters at most).
    let clone = format!("moved-{}", std::process::id());
    let out = process::run(
        m.command_in(
            &elsewhere.namespace,
            &["restore"],
            &["--checkpoint", &id, "--as", &clone, "--detach", "--json"],
        ),
        None,
        CALL_TIMEOUT,
    )
    .expect_success();
    let _clone = elsewhere.container(&clone);
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON: {e}\n{out}"));
    let restored = report["containers"][0]["pid"].as_u64().unwrap() as u32;
    let _ = std::fs::remove_file(report["containers"][0]["log"].as_str().unwrap());
    let lowers = root_lowerdirs(restored);
    assert_ne!(
        Value::from(lowers.clone()),
        taken_at,
        "the image is at the same snapshot directories in both namespaces: the test proves nothing"
    );
    let first = wait_tick_above(restored, 0, "the restored container to count");
    assert!(
        first >= before,
        "the restored container counts from {first}, not from the checkpoint's {before}"
    );
    wait_tick_above(
        restored,
        first + 3,
        "the restored container to go on counting",
    );
}

/// The overlay lower directories of the root file system of process `pid`.
#[track_caller]
fn root_lowerdirs(pid: u32) -> Vec<String> {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    mountinfo
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some("/"))
        .find_map(|l| {
            let options = l.rsplit(' ').next()?;
            let lower = options
                .split(',')
                .find_map(|o| o.strip_prefix("lowerdir="))?;
            Some(lower.split(':').map(String::from).collect())
        })
        .unwrap_or_else(|| panic!("no overlay root in /proc/{pid}/mountinfo:\n{mountinfo}"))
}

/// Another namespace of the scenario's containerd with the test image
/// imported (and so unpacked) into it: snapshot directories of its own
/// hold the same layers, as on another host.
struct Elsewhere {
    address: String,
    namespace: String,
}

impl Elsewhere {
    #[track_caller]
    fn new(s: &Scenario, namespace: &str) -> Elsewhere {
        let mut import = Command::new("bash");
        import.arg(fixture::repo_root().join("hack/images.sh"));
        import.args(["import", s.ctr.address(), "--namespace", namespace]);
        process::run(import, None, CALL_TIMEOUT).expect_success();
        Elsewhere {
            address: s.ctr.address().to_string(),
            namespace: namespace.to_string(),
        }
    }

    /// Container `id` of this namespace, removed with its task and
    /// snapshot when dropped (the instance's destruction takes the image
    /// and the namespace).
    fn container(&self, id: &str) -> ElsewhereContainer<'_> {
        ElsewhereContainer {
            at: self,
            id: id.to_string(),
        }
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.args(["--address", &self.address, "--namespace", &self.namespace]);
        cmd.args(args);
        cmd
    }
}

struct ElsewhereContainer<'a> {
    at: &'a Elsewhere,
    id: String,
}

impl Drop for ElsewhereContainer<'_> {
    fn drop(&mut self) {
        let id = self.id.as_str();
        for args in [
            &["tasks", "kill", "--all", "--signal", "SIGKILL", id][..],
            &["tasks", "delete", "--force", id],
            &["containers", "rm", id],
        ] {
            let _ = process::run_quietly(self.at.ctr(args), Duration::from_secs(30));
        }
    }
}

/// An image in the scenario's containerd, removed when dropped.
struct ImageRef {
    ctr: Ctr,
    name: String,
}

impl ImageRef {
    fn new(s: &Scenario, c: &fixture::Container) -> ImageRef {
        ImageRef {
            ctr: s.ctr.clone(),
            name: format!("localhost/containerd-migrate/checkpoints/{}:1", c.id),
        }
    }
}

impl Drop for ImageRef {
    fn drop(&mut self) {
        let _ = process::run_quietly(
            self.ctr.command(&["images", "rm", &self.name]),
            Duration::from_secs(30),
        );
    }
}

/// Kills and deletes the task of `c`, as a migration away from it would.
#[track_caller]
fn stop_and_delete_task(s: &Scenario, c: &fixture::Container) {
    s.ctr.ok(&["tasks", "kill", "--signal", "SIGKILL", &c.id]);
    c.wait_status("STOPPED");
    s.ctr.ok(&["tasks", "delete", &c.id]);
}

/// A migratectl checkpoint, exported, is restored by `ctr container restore
/// --live --rw` (with the runtime the checkpoint image names) and counts on
/// from the checkpoint; a file the container wrote comes back with it.
fn export_then_ctr_restore_carries_on_counting(s: &Scenario) {
    let m = Migratectl::new(s);
    let c = s.container();
    let pid = s.run_detached(&c, &[], &MEMTICK);
    s.ctr.ok(&[
        "tasks",
        "exec",
        "--exec-id",
        "mark",
        &c.id,
        "touch",
        "/mark",
    ]);
    let before = wait_tick_above(pid, 10, "memtick to count");
    let id = format!("{}-ck", c.id);
    m.json(&["checkpoint", "create"], &["--id", &id, "--json", &c.id]);

    let image = ImageRef::new(s, &c);
    let exported = m.json(&["checkpoint", "export"], &["--json", &id, &image.name]);
    assert_eq!(exported["image"], image.name.as_str(), "{exported}");
    assert_eq!(exported["runtime"], MIGRATE_V1, "{exported}");
    assert!(
        exported["sizeBytes"].as_u64().unwrap() >= 32 * MIB,
        "{exported}"
    );
    let listed = s.ctr.ok(&["images", "ls"]).stdout_str();
    let row = listed
        .lines()
        .find(|l| l.starts_with(&image.name))
        .unwrap_or_else(|| panic!("{} is not listed:\n{listed}", image.name));
    assert!(
        row.contains("application/vnd.oci.image.index.v1+json")
            && row.contains("containerd.io/checkpoint=true"),
        "{row}"
    );
    // Exporting again under the same name is refused, not merged.
    let out = m
        .run(&["checkpoint", "export"], &[&id, &image.name])
        .expect_failure();
    assert!(out.stderr_str().contains("already exists"), "{out}");

    stop_and_delete_task(s, &c);
    let k = s.container();
    s.ctr.ok(&[
        "containers",
        "restore",
        "--live",
        "--rw",
        &k.id,
        &image.name,
    ]);
    let info = s.ctr.ok(&["containers", "info", &k.id]).stdout_str();
    assert!(
        info.contains(MIGRATE_V1),
        "not restored with {MIGRATE_V1}:\n{info}"
    );
    let restored = k.wait_status("RUNNING").pid;
    // A cold start would count from 1.
    let first = wait_tick_above(restored, 0, "the restored container to count");
    assert!(
        first >= before,
        "the restored container counts from {first}, not from the checkpoint's {before}"
    );
    wait_tick_above(
        restored,
        first + 3,
        "the restored container to go on counting",
    );
    assert!(
        Path::new(&format!("/proc/{restored}/root/mark")).exists(),
        "the rw layer was not restored"
    );
}

/// `ctr container checkpoint --task --rw` of a runc.v2 container, imported,
/// is a verified checkpoint that `migratectl restore` restores with
/// io.containerd.migrate.v1, counting on from the checkpoint.
fn ctr_checkpoint_of_runc_v2_imports_and_restores(s: &Scenario) {
    let m = Migratectl::new(s);
    let c = s.container();
    let mut run = vec!["run", "-d", "--runtime", RUNC_V2, IMAGE, &c.id];
    run.extend_from_slice(&MEMTICK);
    s.ctr.ok(&run);
    let pid = c.wait_status("RUNNING").pid;
    s.ctr.ok(&[
        "tasks",
        "exec",
        "--exec-id",
        "mark",
        &c.id,
        "touch",
        "/mark",
    ]);
    let before = wait_tick_above(pid, 10, "memtick to count");
    let image = ImageRef::new(s, &c);
    s.ctr.ok(&[
        "containers",
        "checkpoint",
        "--task",
        "--rw",
        &c.id,
        &image.name,
    ]);

    let id = format!("{}-imported", c.id);
    let imported = m.json(
        &["checkpoint", "import"],
        &["--id", &id, "--json", &image.name],
    );
    assert_eq!(imported["id"], id.as_str(), "{imported}");
    assert_eq!(imported["container"], c.id.as_str(), "{imported}");
    assert_eq!(imported["runtime"], RUNC_V2, "{imported}");
    assert!(
        imported["memoryBytes"].as_u64().unwrap() >= 32 * MIB,
        "{imported}"
    );
    let inspected = m.json(&["checkpoint", "inspect"], &["--verify", "--json", &id]);
    assert_eq!(inspected["valid"], true, "{inspected}");
    assert_eq!(
        inspected["manifest"]["container"]["image"], IMAGE,
        "{inspected}"
    );
    assert_eq!(inspected["manifest"]["leaveRunning"], true, "{inspected}");
    let files: Vec<&str> = inspected["manifest"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    for part in ["config.json", "rootfs-diff.tar", "criu/inventory.img"] {
        assert!(files.contains(&part), "{part} missing: {files:?}");
    }
    assert_no_leftovers(&m, &id);

    stop_and_delete_task(s, &c);
    let (_k, restored) = restore_and_count_on(s, &m, &id, before);
    assert!(
        Path::new(&format!("/proc/{restored}/root/mark")).exists(),
        "the rw layer was not restored"
    );
}
