//! The daemon as containerd sees it: the binary started on a socket, and
//! containerd-client's own Snapshots client (generated apart from our
//! server) driving prepare, mounts, commit, view, list, update, usage and
//! remove, then the same state after a restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::*;
use tonic::Code;
use tonic::transport::Channel;

struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(root: &Path, socket: &Path) -> (Daemon, SnapshotsClient<Channel>) {
    let _ = std::fs::remove_file(socket);
    let child = Command::new(env!("CARGO_BIN_EXE_containerd-snapshotter-migrate"))
        .args(["--root".as_ref(), root.as_os_str(), "--socket".as_ref(), socket.as_os_str()])
        .spawn()
        .expect("start containerd-snapshotter-migrate");
    let daemon = Daemon { child };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if socket.exists()
            && let Ok(channel) = containerd_client::connect(socket).await
        {
            return (daemon, SnapshotsClient::new(channel));
        }
        assert!(Instant::now() < deadline, "the snapshotter did not listen on {} in 20 s", socket.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn option<'a>(m: &'a containerd_client::types::Mount, prefix: &str) -> Option<&'a str> {
    m.options.iter().find_map(|o| o.strip_prefix(prefix))
}

async fn names(c: &mut SnapshotsClient<Channel>) -> Vec<(String, String, i32)> {
    let mut stream = c.list(ListSnapshotsRequest::default()).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.message().await.unwrap() {
        out.extend(batch.info.into_iter().map(|i| (i.name, i.parent, i.kind)));
    }
    out.sort();
    out
}

#[tokio::test]
async fn containerds_client_drives_the_snapshotter() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let socket: PathBuf = tmp.path().join("s.sock");
    let (daemon, mut c) = start(&root, &socket).await;

    let prepare = |key: &str, parent: &str| PrepareSnapshotRequest {
        snapshotter: "migrate".into(),
        key: key.into(),
        parent: parent.into(),
        labels: [("containerd.io/snapshot.ref".to_string(), key.to_string())].into(),
    };
    let m = c.prepare(prepare("extract-1", "")).await.unwrap().into_inner().mounts;
    assert_eq!((m[0].r#type.as_str(), m[0].options.as_slice()), ("bind", &["rw".to_string(), "rbind".into()][..]));
    std::fs::write(Path::new(&m[0].source).join("layer-file"), b"from the layer").unwrap();
    let commit = |name: &str, key: &str| CommitSnapshotRequest {
        snapshotter: "migrate".into(),
        name: name.into(),
        key: key.into(),
        labels: Default::default(),
    };
    c.commit(commit("sha256:layer1", "extract-1")).await.unwrap();
    let usage = c.usage(UsageRequest { snapshotter: "migrate".into(), key: "sha256:layer1".into() }).await.unwrap();
    assert!(usage.into_inner().inodes >= 1);

    let err = c.prepare(prepare("c1", "sha256:nope")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let m = c.prepare(prepare("c1", "sha256:layer1")).await.unwrap().into_inner().mounts;
    assert_eq!(m[0].r#type, "overlay");
    let upper = option(&m[0], "upperdir=").expect("an upperdir for the layer sync").to_string();
    assert!(Path::new(&upper).is_dir());
    let err = c.prepare(prepare("c1", "sha256:layer1")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    let again = c.mounts(MountsRequest { snapshotter: "migrate".into(), key: "c1".into() }).await.unwrap();
    assert_eq!(again.into_inner().mounts, m);

    let v = c
        .view(ViewSnapshotRequest {
            snapshotter: "migrate".into(),
            key: "v1".into(),
            parent: "sha256:layer1".into(),
            labels: Default::default(),
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!((v[0].r#type.as_str(), v[0].options[0].as_str()), ("bind", "ro"));

    let stat = c.stat(StatSnapshotRequest { snapshotter: "migrate".into(), key: "c1".into() }).await.unwrap();
    let mut info = stat.into_inner().info.unwrap();
    assert_eq!((info.parent.as_str(), info.kind), ("sha256:layer1", Kind::Active as i32));
    info.labels.insert("extra".into(), "1".into());
    let updated = c
        .update(UpdateSnapshotRequest {
            snapshotter: "migrate".into(),
            info: Some(info),
            update_mask: Some(prost_types::FieldMask { paths: vec!["labels.extra".into()] }),
        })
        .await
        .unwrap();
    assert_eq!(updated.into_inner().info.unwrap().labels.get("extra").map(String::as_str), Some("1"));

    let err = c.remove(RemoveSnapshotRequest { snapshotter: "migrate".into(), key: "sha256:layer1".into() }).await;
    assert_eq!(err.unwrap_err().code(), Code::FailedPrecondition, "a parent cannot go before its children");
    let listed = vec![
        ("c1".to_string(), "sha256:layer1".to_string(), Kind::Active as i32),
        ("sha256:layer1".into(), String::new(), Kind::Committed as i32),
        ("v1".into(), "sha256:layer1".into(), Kind::View as i32),
    ];
    assert_eq!(names(&mut c).await, listed);

    // The metadata survives a restart.
    drop(c);
    drop(daemon);
    let (_daemon, mut c) = start(&root, &socket).await;
    assert_eq!(names(&mut c).await, listed);
    for key in ["c1", "v1", "sha256:layer1"] {
        c.remove(RemoveSnapshotRequest { snapshotter: "migrate".into(), key: key.into() }).await.unwrap();
    }
    assert!(names(&mut c).await.is_empty());
    assert!(!Path::new(&upper).exists());
    c.cleanup(CleanupRequest { snapshotter: "migrate".into() }).await.unwrap();
}
