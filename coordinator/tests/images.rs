//! An image copied between two hosts' content stores through the agents:
//! two private containerds of the end-to-end fixture (root; skipped without
//! it, failed with CI=true), a migrate-agent serving ExportImage on the
//! first, and the agent library's `ensure` on the second, which has no
//! registry to pull from and so copies it from the first, unpacks it into
//! overlayfs, and then runs a container of it.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use containerd_migrate_tests::ctr::Ctr;
use containerd_migrate_tests::fixture::{self, IMAGE, Instance};
use containerd_migrate_tests::process::Output;
use containerd_migrate_tests::{RUNC_V2, poll};
use migrate_cluster::agent::images::{self, ImageFrom};
use migrate_cluster::host::containerd::Containerd;
use migrate_cluster::host::image::rootfs_chain_id;
use migrate_cluster::proto::agent_client::AgentClient;
use migrate_cluster::tls::Tls;

const SNAPSHOTTER: &str = "overlayfs";
/// The agent starts, loads its certificates and listens within this.
const START: Duration = Duration::from_secs(15);

/// A containerd instance of this test, destroyed when dropped.
struct Host(Instance);

impl Drop for Host {
    fn drop(&mut self) {
        self.0.destroy();
    }
}

/// A migrate-agent, SIGKILLed when dropped; its log is printed then.
struct Agent {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- agent ---\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn migratectl(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_migratectl")).args(args).output().unwrap();
    assert!(out.status.success(), "migratectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// An agent named h1 on `containerd`, listening on `port`. No coordinator
/// runs: the agent keeps trying to register and serves meanwhile.
fn agent(tls: &Path, containerd: &str, port: u16, dir: &Path) -> Agent {
    let log = dir.join("agent.log");
    let child = Command::new(env!("CARGO_BIN_EXE_migrate-agent"))
        .args(["--name", "h1", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--coordinator", &format!("https://127.0.0.1:{}", free_port())])
        .args(["--tls-dir", tls.to_str().unwrap(), "--containerd", containerd])
        .env_remove("MIGRATE_COORDINATOR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Agent { child, log }
}

#[track_caller]
fn stdout(out: Output) -> String {
    out.expect_success().stdout_str()
}

/// `ctr images ls`'s digest of the test image, if it has it.
fn image_digest(ctr: &Ctr) -> Option<String> {
    let list = stdout(ctr.run(&["images", "ls"]));
    list.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).find(|f| f[0] == IMAGE).map(|f| f[2].to_string())
}

/// Makes containerd collect garbage now: deleting a lease synchronously runs it.
fn collect_garbage(ctr: &Ctr) {
    let id = stdout(ctr.run(&["leases", "create"])).trim().to_string();
    stdout(ctr.run(&["leases", "delete", "--sync", &id]));
}

#[test]
fn an_image_is_copied_from_another_agent_and_unpacked_into_overlayfs() {
    let test = "an_image_is_copied_from_another_agent_and_unpacked_into_overlayfs";
    if !fixture::prerequisites_met(RUNC_V2, test) {
        return;
    }
    // Two hosts, each its own containerd with its own content store; the
    // fixture imports the test image into both, so the second forgets it.
    let source = Host(Instance::start("imgc-source").unwrap_or_else(|e| panic!("{e}")));
    let target = Host(Instance::start("imgc-target").unwrap_or_else(|e| panic!("{e}")));
    let (src, dst) = (source.0.ctr(), target.0.ctr());
    let want = image_digest(src).expect("the fixture imported the test image");
    stdout(dst.run(&["images", "rm", "--sync", IMAGE]));
    assert_eq!(image_digest(dst), None);

    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let tls_str = tls.to_str().unwrap();
    migratectl(&["cluster", "init", "--dir", tls_str]);
    migratectl(&["cluster", "cert", "--dir", tls_str, "h1"]);
    migratectl(&["cluster", "cert", "--dir", tls_str, "h2"]);
    let port = free_port();
    let _agent = agent(&tls, src.address(), port, dir.path());

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = async || {
            let tls = Tls::load(&tls, "h2").unwrap();
            let channel = tls.connect(&format!("https://127.0.0.1:{port}"), "h1", Duration::from_secs(2)).await?;
            Ok::<_, Box<dyn std::error::Error>>(AgentClient::new(channel))
        };
        let mut connected = None;
        let deadline = tokio::time::Instant::now() + START;
        while connected.is_none() {
            match client().await {
                Ok(c) => connected = Some(c),
                Err(e) if tokio::time::Instant::now() > deadline => panic!("the agent never listened: {e}"),
                // Polling for the agent to listen, at a short interval.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let client = connected.unwrap();
        let source_cd = Containerd::connect(src.address(), "default").await.unwrap();
        let target_cd = Containerd::connect(dst.address(), "default").await.unwrap();

        let chain = rootfs_chain_id(&source_cd, IMAGE).await.unwrap();
        assert!(!images::is_unpacked(&target_cd, SNAPSHOTTER, &chain).await.unwrap(), "removing left the snapshots");

        // Absent, its registry (localhost) refuses: copied from the agent.
        let from = images::ensure(&target_cd, IMAGE, SNAPSHOTTER, Some(client.clone())).await.unwrap();
        let ImageFrom::Source { bytes } = from else { panic!("the image came from {from:?}, not the source agent") };
        assert!(bytes > 1_000_000, "only {bytes} bytes of a busybox image came");
        assert_eq!(image_digest(dst).as_deref(), Some(want.as_str()), "the target's image is not the source's");

        // Unpacked under the same chain ID as the source's own unpack.
        assert_eq!(rootfs_chain_id(&target_cd, IMAGE).await.unwrap(), chain);
        assert!(images::is_unpacked(&target_cd, SNAPSHOTTER, &chain).await.unwrap());

        // Again: nothing to do, nothing new.
        let snapshots = stdout(dst.run(&["snapshots", "--snapshotter", SNAPSHOTTER, "ls"]));
        assert_eq!(images::ensure(&target_cd, IMAGE, SNAPSHOTTER, None).await.unwrap(), ImageFrom::Present);
        assert_eq!(images::unpack(&target_cd, IMAGE, SNAPSHOTTER).await.unwrap(), chain);
        assert_eq!(stdout(dst.run(&["snapshots", "--snapshotter", SNAPSHOTTER, "ls"])), snapshots);

        // A second copy finds every blob there and writes none.
        let fetched = images::fetch_from_agent(&target_cd, client.clone(), IMAGE).await.unwrap();
        assert_eq!((fetched.blobs, fetched.bytes), (0, bytes));

        // An image the source does not have: its error says so.
        let err = images::fetch_from_agent(&target_cd, client, "localhost/no/such:image").await.unwrap_err();
        assert!(format!("{err:#}").contains("not found"), "{err:#}");
    });

    // The image record's labels keep content and snapshots from the
    // garbage collector once the import's and unpack's leases are gone.
    collect_garbage(dst);
    let out =
        dst.run(&["run", "--rm", "--snapshotter", SNAPSHOTTER, IMAGE, "imgc-copied", "/bin/sh", "-c", "echo copied"]);
    assert_eq!(stdout(out).trim(), "copied");
    poll::until(Duration::from_secs(10), "the test container to be gone", || {
        if dst.containers().iter().any(|c| c == "imgc-copied") { Err("still there".to_string()) } else { Ok(()) }
    });
}
