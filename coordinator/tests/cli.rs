//! migratectl as a user runs it, on checkpoints made with migrate_oci
//! directly: no containerd, no root. (The flows through containerd are in
//! tests/tests/migratectl.rs.)

use std::path::Path;
use std::process::{Command, Output};

use migrate_oci::{CheckpointStore, CommitInfo, ContainerInfo, Timings};
use serde_json::Value;

fn migratectl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_migratectl"))
        // Nothing listens here: commands that need containerd must say so.
        .args(["--address", "/nonexistent/containerd.sock"])
        .args(args)
        .env_remove("CONTAINERD_ADDRESS")
        .env_remove("MIGRATE_CHECKPOINT_ROOT")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A committed checkpoint `id` of container `web` with a 1 MiB memory image.
fn make_checkpoint(store: &Path, id: &str) {
    let store = CheckpointStore::open(store).unwrap();
    let dump = tempfile::tempdir().unwrap();
    std::fs::write(dump.path().join("pages-1.img"), vec![7u8; 1 << 20]).unwrap();
    std::fs::write(dump.path().join("inventory.img"), b"inventory").unwrap();
    let mut staging = store.staging(id).unwrap();
    staging.import_criu_dir(dump.path()).unwrap();
    staging.add_file("config.json", br#"{"ociVersion":"1.1.0"}"#).unwrap();
    staging
        .commit(CommitInfo {
            container: ContainerInfo {
                id: "web".into(),
                namespace: "default".into(),
                image: Some("localhost/web:1".into()),
                runtime: "io.containerd.migrate.v1".into(),
            },
            parent: None,
            leave_running: true,
            rootfs: None,
            timings: Timings { frozen_ms: Some(12.5), dump_ms: Some(20.0), persist_ms: Some(5.0) },
            host: migrate_oci::HostInfo::this_machine(None),
            ready: None,
        })
        .unwrap();
}

#[test]
fn help_names_the_verbs() {
    let out = migratectl(&["--help"]);
    assert!(out.status.success());
    for verb in ["checkpoint", "restore", "version"] {
        assert!(stdout(&out).contains(verb), "{}", stdout(&out));
    }
    let out = migratectl(&["checkpoint", "--help"]);
    for verb in ["create", "ls", "inspect", "rm", "export", "import"] {
        assert!(stdout(&out).contains(verb), "{}", stdout(&out));
    }
}

#[test]
fn listing_a_missing_store_shows_nothing_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = migratectl(&["checkpoint", "ls", "--root", store.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).split_whitespace().collect::<Vec<_>>()[0], "ID");
    assert_eq!(stdout(&out).lines().count(), 1);
    let out = migratectl(&["checkpoint", "ls", "--json", "--root", store.to_str().unwrap()]);
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), Value::Array(vec![]));
    assert!(!store.exists());
}

#[test]
fn create_checks_the_id_before_anything_else() {
    let out = migratectl(&["checkpoint", "create", "--id", "../escape", "web"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("\"../escape\" must start with a letter or digit"), "{}", stderr(&out));
}

#[test]
fn create_dumps_either_into_a_staging_dir_or_straight_into_the_store() {
    let out = migratectl(&["checkpoint", "create", "--direct", "--staging", "/dev/shm/x", "web"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot be used with"), "{}", stderr(&out));
}

/// export reads and checks the checkpoint before it talks to containerd.
#[test]
fn export_refuses_a_damaged_checkpoint_before_containerd() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().to_str().unwrap();
    let export = |id: &str| migratectl(&["checkpoint", "export", "--root", store, id, "example.com/ck/web:1"]);
    make_checkpoint(dir.path(), "web-1");
    let out = export("nope");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no checkpoint nope"), "{}", stderr(&out));

    let config = dir.path().join("web-1/config.json");
    let sound = std::fs::read(&config).unwrap();
    std::fs::write(&config, br#"{"ociVersion":"1.1.9"}"#).unwrap();
    let out = export("web-1");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("config.json is damaged (sha256 mismatch"), "{}", stderr(&out));

    std::fs::write(&config, sound).unwrap();
    let out = export("web-1");
    assert!(stderr(&out).contains("cannot connect to containerd"), "{}", stderr(&out));
    let out = migratectl(&["checkpoint", "import", "--root", store, "example.com/ck/web:1"]);
    assert!(stderr(&out).contains("cannot connect to containerd"), "{}", stderr(&out));
}

#[test]
fn commands_that_need_containerd_say_where_they_looked() {
    let dir = tempfile::tempdir().unwrap();
    let out = migratectl(&["checkpoint", "create", "--root", dir.path().to_str().unwrap(), "web"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot connect to containerd at /nonexistent/containerd.sock"), "{}", stderr(&out));
    // Nothing was started in the store.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn ls_inspect_verify_rm() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().to_str().unwrap();
    make_checkpoint(dir.path(), "web-1");

    let out = migratectl(&["checkpoint", "ls", "--root", store]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["ID", "CONTAINER", "CREATED", "SIZE", "MEMORY", "FROZEN", "PARENT", "VALID"]);
    let row = table.lines().nth(1).unwrap();
    assert!(row.starts_with("web-1   web   "), "{table}");
    assert!(row.contains("1.00 MiB") && row.contains("12 ms") && row.ends_with("yes"), "{table}");

    let out = migratectl(&["checkpoint", "inspect", "--verify", "--root", store, "web-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Image:        localhost/web:1"), "{}", stdout(&out));
    assert!(stdout(&out).contains("criu/pages-1.img"), "{}", stdout(&out));

    let pages = dir.path().join("web-1/criu/pages-1.img");
    std::fs::write(&pages, vec![8u8; 1 << 20]).unwrap();
    // A stat cannot see a same-size change; sha256 can.
    let out = migratectl(&["checkpoint", "inspect", "--json", "--root", store, "web-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = migratectl(&["checkpoint", "inspect", "--verify", "--json", "--root", store, "web-1"]);
    assert!(!out.status.success());
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["valid"], false);
    assert!(stderr(&out).contains("criu/pages-1.img") && stderr(&out).contains("sha256 mismatch"), "{}", stderr(&out));

    std::fs::write(&pages, b"short").unwrap();
    let out = migratectl(&["checkpoint", "ls", "--json", "--root", store]);
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["valid"], false);
    assert!(
        rows[0]["problem"]
            .as_str()
            .unwrap()
            .contains("criu/pages-1.img is damaged (size mismatch: expected 1048576 bytes, found 5)"),
        "{rows}"
    );

    let out = migratectl(&["checkpoint", "rm", "--root", store, "web-1", "nope"]);
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "web-1\n");
    assert!(stderr(&out).contains("no checkpoint nope"), "{}", stderr(&out));
    assert!(!dir.path().join("web-1").exists());
}
