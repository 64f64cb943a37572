//! The cluster's daemons as real processes on 127.0.0.1: migrate-coordinator,
//! two migrate-agents on one private containerd (the end-to-end fixture's;
//! root, skipped without it, failed with CI=true), and migratectl.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use containerd_migrate_tests::{RUNC_V2, fixture, poll};
use serde_json::Value;

/// Time for daemons to start and agents to register (TLS set-up and the
/// coordinator's call back included), with room for a busy machine.
const START: Duration = Duration::from_secs(15);
/// The coordinator's grace is 3 s; its sweep runs every 250 ms.
const DOWN: Duration = Duration::from_secs(8);

/// A daemon that is SIGKILLed when dropped, so a failed test leaves none.
struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(bin: &str, name: &str, args: &[&str], dir: &Path) -> Daemon {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(args)
            .env_remove("MIGRATE_COORDINATOR")
            .env_remove("MIGRATE_TLS_DIR")
            .env_remove("MIGRATE_TLS_NAME")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        Daemon { name: name.to_string(), child, log }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        format!("--- {} ---\n{}", self.name, std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    containerd: String,
}

impl Cluster {
    /// Certificates for the coordinator (valid for 127.0.0.1), h1, h2 and migratectl.
    fn new(containerd: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster { dir, port: free_port(), containerd: containerd.to_string() };
        let tls = cluster.tls().to_str().unwrap().to_string();
        expect_ok(migratectl(&["cluster", "init", "--dir", &tls]));
        expect_ok(migratectl(&["cluster", "cert", "--dir", &tls, "--ip", "127.0.0.1", "coordinator"]));
        for name in ["h1", "h2", "migratectl"] {
            expect_ok(migratectl(&["cluster", "cert", "--dir", &tls, name]));
        }
        cluster
    }

    fn tls(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn coordinator(&self) -> Daemon {
        let listen = format!("127.0.0.1:{}", self.port);
        let state = self.dir.path().join("state.redb");
        let tls = self.tls();
        let args = ["--listen", &listen, "--tls-dir", tls.to_str().unwrap(), "--state", state.to_str().unwrap()];
        Daemon::start(env!("CARGO_BIN_EXE_migrate-coordinator"), "coordinator", &args, self.dir.path())
    }

    fn agent(&self, name: &str, port: u16) -> Daemon {
        let listen = format!("127.0.0.1:{port}");
        let (url, tls) = (self.url(), self.tls());
        let args = [
            "--name",
            name,
            "--listen",
            &listen,
            "--coordinator",
            &url,
            "--tls-dir",
            tls.to_str().unwrap(),
            "--containerd",
            &self.containerd,
            "--label",
            "test=cluster",
        ];
        Daemon::start(env!("CARGO_BIN_EXE_migrate-agent"), name, &args, self.dir.path())
    }

    /// `migratectl ARGS` as a client of this cluster, with certificates from `tls`.
    fn migratectl_with(&self, tls: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_migratectl"))
            .args(args)
            .env("MIGRATE_COORDINATOR", self.url())
            .env("MIGRATE_TLS_DIR", tls)
            .env_remove("MIGRATE_TLS_NAME")
            .output()
            .unwrap()
    }

    /// The hosts' states by name, or why `migratectl hosts --json` failed.
    fn states(&self) -> Result<Vec<(String, String)>, String> {
        let out = self.migratectl_with(&self.tls(), &["hosts", "--json"]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let hosts: Vec<Value> = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        Ok(hosts.iter().map(|h| (h["name"].as_str().unwrap().into(), h["state"].as_str().unwrap().into())).collect())
    }

    #[track_caller]
    fn wait_for(&self, want: &[(&str, &str)], timeout: Duration, daemons: &[&Daemon]) {
        let want: Vec<(String, String)> = want.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect();
        let logs = || daemons.iter().map(|d| d.log()).collect::<Vec<_>>().join("\n");
        let seen = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            poll::until(timeout, &format!("hosts {want:?}"), || match self.states() {
                Ok(states) if states == want => Ok(()),
                Ok(states) => Err(format!("{states:?}")),
                Err(e) => Err(e),
            })
        }));
        if let Err(panic) = seen {
            eprintln!("{}", logs());
            std::panic::resume_unwind(panic);
        }
    }
}

impl Cluster {
    /// Checks that the hosts are as wanted at every look for `span`.
    #[track_caller]
    fn stays(&self, want: &[(&str, &str)], span: Duration, daemons: &[&Daemon]) {
        let want: Vec<(String, String)> = want.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect();
        let end = Instant::now() + span;
        while Instant::now() < end {
            let seen = self.states();
            if seen.as_ref() != Ok(&want) {
                eprintln!("{}", daemons.iter().map(|d| d.log()).collect::<Vec<_>>().join("\n"));
                panic!("wanted hosts {want:?} throughout {span:?}, saw {seen:?}");
            }
            // A look every 100 ms samples each 1 s heartbeat period often enough.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn migratectl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_migratectl")).args(args).output().unwrap()
}

#[track_caller]
fn expect_ok(out: Output) -> Output {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The private containerd the agents drive, or None when this machine
/// cannot start one (the fixture has said why).
fn containerd(test: &str) -> Option<String> {
    if !fixture::prerequisites_met(RUNC_V2, test) {
        return None;
    }
    let instance = fixture::shared_instance("control-plane").unwrap_or_else(|e| panic!("{e}"));
    Some(instance.ctr().address().to_string())
}

#[test]
fn hosts_turn_down_when_agents_die_and_outlive_a_coordinator_restart() {
    let Some(containerd) = containerd("hosts_turn_down_when_agents_die_and_outlive_a_coordinator_restart") else {
        return;
    };
    let cluster = Cluster::new(&containerd);
    let mut coordinator = cluster.coordinator();
    let (p1, p2) = (free_port(), free_port());
    let h1 = cluster.agent("h1", p1);
    let mut h2 = cluster.agent("h2", p2);
    cluster.wait_for(&[("h1", "ready"), ("h2", "ready")], START, &[&coordinator, &h1, &h2]);

    // Each host reports the images of its containerd's cluster namespace
    // (both agents drive the one containerd, which has the test image).
    let json = expect_ok(cluster.migratectl_with(&cluster.tls(), &["hosts", "--json"])).stdout;
    let hosts: Vec<Value> = serde_json::from_slice(&json).unwrap();
    for host in &hosts {
        let images = host["images"].as_array().unwrap_or_else(|| panic!("no images in {host}"));
        assert!(images.iter().any(|i| i == containerd_migrate_tests::IMAGE), "{host}");
    }

    let table = String::from_utf8(expect_ok(cluster.migratectl_with(&cluster.tls(), &["hosts"])).stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("STATE") && lines[0].contains("CONTAINERS"), "{table}");
    assert!(lines[1].starts_with("h1") && lines[1].contains(&format!("127.0.0.1:{p1}")) && lines[1].contains("ready"));
    assert!(lines[2].starts_with("h2") && lines[2].contains("ready"), "{table}");

    // A ready host cannot be forgotten: its agent would register it again.
    let out = cluster.migratectl_with(&cluster.tls(), &["hosts", "rm", "h1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("host h1 is ready; stop its agent first"));

    // As if h2 lost power: down after the grace, not before.
    h2.kill();
    let killed = Instant::now();
    cluster.wait_for(&[("h1", "ready"), ("h2", "down")], DOWN, &[&coordinator, &h1]);
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "h2 was down {took:?} after its agent died, before its grace of 3 s ran out"
    );

    let h2 = cluster.agent("h2", p2);
    cluster.wait_for(&[("h1", "ready"), ("h2", "ready")], START, &[&coordinator, &h1, &h2]);

    // The state is in the store: a new coordinator on the same file knows
    // both hosts from its first answer, and the agents beat on.
    coordinator.kill();
    let coordinator = cluster.coordinator();
    let known = poll::until(START, "the restarted coordinator to answer", || cluster.states());
    let names: Vec<&str> = known.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["h1", "h2"], "the restarted coordinator forgot hosts");
    // Past a whole grace after the restart: missed beats would show.
    cluster.wait_for(&[("h1", "ready"), ("h2", "ready")], START, &[&coordinator, &h1, &h2]);
    cluster.stays(&[("h1", "ready"), ("h2", "ready")], Duration::from_secs(4), &[&coordinator, &h1, &h2]);
}

#[test]
fn peers_without_a_certificate_of_the_cluster_ca_are_refused() {
    let Some(containerd) = containerd("peers_without_a_certificate_of_the_cluster_ca_are_refused") else {
        return;
    };
    let cluster = Cluster::new(&containerd);
    let coordinator = cluster.coordinator();
    let h1 = cluster.agent("h1", free_port());
    cluster.wait_for(&[("h1", "ready")], START, &[&coordinator, &h1]);

    // Certificates of another CA, which has the same name as ours.
    let other = cluster.dir.path().join("other");
    let other_str = other.to_str().unwrap();
    expect_ok(migratectl(&["cluster", "init", "--dir", other_str]));
    expect_ok(migratectl(&["cluster", "cert", "--dir", other_str, "migratectl"]));
    expect_ok(migratectl(&["cluster", "cert", "--dir", other_str, "h3"]));

    // A client trusting our CA, with a certificate of the other.
    let mixed = cluster.dir.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    std::fs::copy(cluster.tls().join("ca.pem"), mixed.join("ca.pem")).unwrap();
    for f in ["migratectl.pem", "migratectl-key.pem", "h3.pem", "h3-key.pem"] {
        std::fs::copy(other.join(f), mixed.join(f)).unwrap();
    }
    let out = cluster.migratectl_with(&mixed, &["hosts"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a client of another CA was answered: {}", String::from_utf8_lossy(&out.stdout));
    // Refused at the first call (TLS 1.3: the server checks the client's
    // certificate after the client's handshake) or, with other timing, at
    // connect; either way the error points at the certificate.
    assert!(
        err.contains("refuses a certificate") || err.contains("certificates of the same cluster CA"),
        "unclear refusal: {err}"
    );

    // And wholly of the other cluster: migratectl refuses our coordinator.
    let out = cluster.migratectl_with(&other, &["hosts"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("invalid peer certificate") && err.contains("same cluster CA"), "unclear refusal: {err}");

    // An agent with the other CA's certificate never registers.
    let h3 = Daemon::start(
        env!("CARGO_BIN_EXE_migrate-agent"),
        "h3",
        &[
            "--name",
            "h3",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--coordinator",
            &cluster.url(),
            "--tls-dir",
            mixed.to_str().unwrap(),
            "--containerd",
            &containerd,
        ],
        cluster.dir.path(),
    );
    poll::until(START, "h3's refused registration in its log", || {
        let log = h3.log();
        if log.contains("registering with the coordinator") && log.contains("failed") { Ok(()) } else { Err(log) }
    });
    assert_eq!(cluster.states().unwrap(), [("h1".to_string(), "ready".to_string())]);

    // A certificate of our CA, but issued for h1: it cannot register as h2.
    let impostor = cluster.dir.path().join("impostor");
    std::fs::create_dir(&impostor).unwrap();
    std::fs::copy(cluster.tls().join("ca.pem"), impostor.join("ca.pem")).unwrap();
    std::fs::copy(cluster.tls().join("h1.pem"), impostor.join("h2.pem")).unwrap();
    std::fs::copy(cluster.tls().join("h1-key.pem"), impostor.join("h2-key.pem")).unwrap();
    let h2 = Daemon::start(
        env!("CARGO_BIN_EXE_migrate-agent"),
        "h2",
        &[
            "--name",
            "h2",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--coordinator",
            &cluster.url(),
            "--tls-dir",
            impostor.to_str().unwrap(),
            "--containerd",
            &containerd,
        ],
        cluster.dir.path(),
    );
    // The agent gives up: its certificate will not change while it runs.
    let mut h2 = h2;
    let status = poll::until(START, "the agent h2 to exit", || h2.child.try_wait().unwrap().ok_or_else(|| h2.log()));
    assert!(!status.success());
    poll::until(START, "h2's registration refused for its certificate's name", || {
        let log = h2.log();
        if log.contains(r#"certificate is not issued for "h2""#) { Ok(()) } else { Err(log) }
    });
    assert_eq!(cluster.states().unwrap(), [("h1".to_string(), "ready".to_string())]);

    // A client without any certificate: the TLS handshake itself is refused.
    if let Ok(curl) = Command::new("curl")
        .args(["-sS", "--http2", "--cacert", cluster.tls().join("ca.pem").to_str().unwrap(), &cluster.url()])
        .output()
    {
        // curl reports the server's alert ("certificate required") or, if
        // the connection is gone before it reads it, the reset.
        assert!(
            !curl.status.success(),
            "a client without a certificate was answered: {}",
            String::from_utf8_lossy(&curl.stdout)
        );
    }
}

#[test]
fn cluster_init_and_cert_never_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().to_str().unwrap();
    expect_ok(migratectl(&["cluster", "init", "--dir", tls]));
    let ca = std::fs::read(dir.path().join("ca-key.pem")).unwrap();
    let out = migratectl(&["cluster", "init", "--dir", tls]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already has a CA"));
    assert_eq!(std::fs::read(dir.path().join("ca-key.pem")).unwrap(), ca, "the CA key changed");

    expect_ok(migratectl(&["cluster", "cert", "--dir", tls, "--ip", "10.0.0.1", "h1"]));
    let out = migratectl(&["cluster", "cert", "--dir", tls, "h1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

#[test]
fn a_host_whose_containerd_stops_turns_down_until_it_answers_again() {
    let test = "a_host_whose_containerd_stops_turns_down_until_it_answers_again";
    if !fixture::prerequisites_met(RUNC_V2, test) {
        return;
    }
    // An instance of its own: stopping the shared one would take it from
    // the other tests.
    let instance = fixture::Instance::start("control-plane-stop").unwrap_or_else(|e| panic!("{e}"));
    struct Destroy<'a>(&'a fixture::Instance);
    impl Drop for Destroy<'_> {
        fn drop(&mut self) {
            self.0.destroy();
        }
    }
    let instance = Destroy(&instance);
    let cluster = Cluster::new(instance.0.ctr().address());
    let coordinator = cluster.coordinator();
    let h1 = cluster.agent("h1", free_port());
    cluster.wait_for(&[("h1", "ready")], START, &[&coordinator, &h1]);

    // The agent lives on, but a host without containerd cannot run containers.
    instance.0.stop();
    cluster.wait_for(&[("h1", "down")], DOWN, &[&coordinator, &h1]);
    // A down host can be forgotten; its agent, back, registers it anew.
    expect_ok(cluster.migratectl_with(&cluster.tls(), &["hosts", "rm", "h1"]));
    assert_eq!(cluster.states().unwrap(), []);
    instance.0.start_again();
    cluster.wait_for(&[("h1", "ready")], START, &[&coordinator, &h1]);
    let log = h1.log();
    assert!(log.contains("no heartbeat while containerd does not answer"), "{log}");
    assert!(log.contains("is not registered; the agent must register"), "{log}");
}
