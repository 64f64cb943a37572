//! Fixtures the shim's unit tests share.

/// A committed checkpoint with two memory images and an inventory.
pub fn committed(id: &str) -> (tempfile::TempDir, migrate_oci::Checkpoint) {
    let dir = tempfile::tempdir().unwrap();
    let store = migrate_oci::CheckpointStore::open(dir.path()).unwrap();
    let staging = store.staging(id).unwrap();
    let criu = staging.criu_dir();
    std::fs::create_dir_all(&criu).unwrap();
    for (name, bytes) in
        [("inventory.img", vec![1; 64]), ("pages-1.img", vec![7; 8192]), ("pages-2.img", vec![9; 4096])]
    {
        std::fs::write(criu.join(name), bytes).unwrap();
    }
    let checkpoint = staging.commit(commit_info()).unwrap();
    (dir, checkpoint)
}

/// What a shim knows when it commits a checkpoint of container `web`.
pub fn commit_info() -> migrate_oci::CommitInfo {
    migrate_oci::CommitInfo {
        container: migrate_oci::ContainerInfo {
            id: "web".into(),
            namespace: "default".into(),
            image: None,
            runtime: crate::RUNTIME_ID.into(),
        },
        parent: None,
        leave_running: true,
        rootfs: None,
        timings: migrate_oci::Timings::default(),
        host: migrate_oci::HostInfo::this_machine(None),
        ready: None,
    }
}
