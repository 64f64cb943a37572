//! Helpers shared by the unit tests, this crate's and (with the `testing`
//! feature) those of crates built on it.

use std::path::Path;

use crate::{Checkpoint, CheckpointStore, CommitInfo, ContainerInfo, Timings};

/// A small CRIU-like image set: the names runc's dumps have, made-up bytes.
pub const IMAGES: &[(&str, &[u8])] = &[
    ("inventory.img", b"inventory"),
    ("pages-1.img", &[7; 8192]),
    ("pages-2.img", &[9; 4096]),
    ("pagemap-1.img", b"pagemap"),
    ("descriptors.json", b"[\"/dev/null\"]"),
];

pub fn write_images(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in IMAGES {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

pub fn commit_info(parent: Option<&str>) -> CommitInfo {
    CommitInfo {
        container: ContainerInfo {
            id: "web".into(),
            namespace: "default".into(),
            image: Some("localhost/x:latest".into()),
            runtime: "io.containerd.migrate.v1".into(),
        },
        parent: parent.map(Into::into),
        leave_running: true,
        rootfs: None,
        timings: Timings { frozen_ms: Some(12.5), dump_ms: Some(40.0), persist_ms: None },
        host: crate::HostInfo::this_machine(Some("4.2.1".into())),
        ready: None,
    }
}

/// Commits checkpoint `id` holding [`IMAGES`] and a config.json.
pub fn committed(store: &CheckpointStore, id: &str) -> Checkpoint {
    let src = tempfile::tempdir_in(store.root()).unwrap();
    write_images(src.path());
    let mut staging = store.staging(id).unwrap();
    staging.import_criu_dir(src.path()).unwrap();
    staging.add_file(crate::CONFIG_FILE, br#"{"ociVersion": "1.2.0"}"#).unwrap();
    staging.commit(commit_info(None)).unwrap()
}

/// Whether the test may do what only root can (mknod, trusted.* xattrs,
/// chown). Elsewhere it is skipped with a message, except in CI, which must
/// run everything.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test} needs root, and CI=true requires every test to run");
    eprintln!("skipping {test}: it needs root");
    false
}
