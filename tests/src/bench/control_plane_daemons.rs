//! The control plane `bench control-plane` measures, as real processes on
//! 127.0.0.1: the cluster's CA and certificates (made with the product's
//! own code, `migrate_cluster::certs`), `migrate-coordinator` alone on redb
//! or as replicas on a three-member etcd, and what /proc says about their
//! CPU and memory.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use migrate_cluster::proto::coordinator_client::CoordinatorClient;
use migrate_cluster::proto::{ListCoordinatorsRequest, ListCoordinatorsResponse, ListHostsRequest};
use migrate_cluster::tls::Tls;
use tonic::transport::Channel;

/// The certificate names besides the hosts'.
pub const COORDINATOR_CERT: &str = "coordinator";
pub const BENCH_CERT: &str = "bench";

/// The CA, the coordinators' certificate (valid for 127.0.0.1), the
/// benchmark's own client certificate and one per simulated host, each
/// named as its host, in `dir`.
pub fn make_certificates(dir: &Path, hosts: &[String]) -> Result<()> {
    use migrate_cluster::certs;
    certs::init_ca(dir)?;
    let loopback = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
    certs::issue(dir, COORDINATOR_CERT, &loopback)?;
    certs::issue(dir, BENCH_CERT, &[])?;
    // Two threads: this machine's cores; each certificate is a key
    // generated and signed, and two files synced.
    let halves = hosts.split_at(hosts.len() / 2);
    std::thread::scope(|s| -> Result<()> {
        let a = s.spawn(|| issue_all(dir, halves.0));
        let b = s.spawn(|| issue_all(dir, halves.1));
        a.join()
            .map_err(|_| anyhow::anyhow!("issuing certificates panicked"))??;
        b.join()
            .map_err(|_| anyhow::anyhow!("issuing certificates panicked"))??;
        Ok(())
    })
}

fn issue_all(dir: &Path, names: &[String]) -> Result<()> {
    for name in names {
        migrate_cluster::certs::issue(dir, name, &[])?;
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 (bound, then let go for the daemon).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A daemon of the benchmark, its stderr in a log file. It dies with the
/// benchmark (PR_SET_PDEATHSIG), also when the run is interrupted.
pub struct Daemon {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
    pid: i32,
}

impl Daemon {
    /// Spawns `cmd` with stderr (and stdout) to `log`. Call from the
    /// thread that lives as long as the run (the death signal follows the
    /// thread that forked).
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Daemon> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let pid = child.id() as i32;
        Ok(Daemon {
            name: name.to_string(),
            log: log.to_path_buf(),
            child: Some(child),
            pid,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether it still runs (an exit is reaped here).
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL, at once; reaped.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let _ = c.wait();
    }

    /// The last `n` lines of its log, for an error message.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-member etcd on 127.0.0.1 (Debian's etcd 3.4), plain HTTP.
pub struct Etcd {
    pub members: Vec<Daemon>,
    pub endpoints: Vec<String>,
}

impl Etcd {
    pub async fn start(data: &Path, logs: &Path) -> Result<Etcd> {
        let names = ["e1", "e2", "e3"];
        let mut ports = Vec::new();
        for _ in 0..names.len() {
            ports.push((free_port()?, free_port()?));
        }
        let initial: Vec<String> = names
            .iter()
            .zip(&ports)
            .map(|(n, (_, peer))| format!("{n}=http://127.0.0.1:{peer}"))
            .collect();
        let mut members = Vec::new();
        let mut endpoints = Vec::new();
        for (name, (client, peer)) in names.iter().zip(&ports) {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let mut cmd = Command::new("etcd");
            cmd.arg("--name")
                .arg(name)
                .arg("--data-dir")
                .arg(data.join(name))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "bench-control-plane"])
                .args(["--logger", "zap", "--log-outputs", "stderr"]);
            members.push(Daemon::spawn(
                &format!("etcd {name}"),
                cmd,
                &logs.join(format!("etcd-{name}.log")),
            )?);
            endpoints.push(client_url);
        }
        let mut etcd = Etcd { members, endpoints };
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, url) in etcd.endpoints.clone().iter().enumerate() {
            while !healthy(url) {
                if !etcd.members[i].alive() {
                    bail!(
                        "{} exited; its log ({}):\n{}",
                        etcd.members[i].name,
                        etcd.members[i].log.display(),
                        etcd.members[i].log_tail(20)
                    );
                }
                if Instant::now() > deadline {
                    bail!(
                        "etcd at {url} is not healthy after 30 s; see {}",
                        etcd.members[i].log.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(etcd)
    }

    pub fn stop(&mut self) {
        for m in &mut self.members {
            m.stop(Duration::from_secs(5));
        }
    }
}

/// etcd's `/health` says the member has a leader and commits.
fn healthy(url: &str) -> bool {
    let Some(addr) = url.strip_prefix("http://") else {
        return false;
    };
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

/// How a coordinator keeps its state.
pub enum StateArg<'a> {
    Redb(&'a Path),
    Etcd(&'a [String]),
}

impl StateArg<'_> {
    fn store(&self) -> &'static str {
        match self {
            StateArg::Redb(_) => "redb",
            StateArg::Etcd(_) => "etcd",
        }
    }
}

/// One `migrate-coordinator` process (a replica, or the only one).
pub struct Coordinator {
    pub name: String,
    pub url: String,
    pub daemon: Daemon,
}

impl Coordinator {
    pub fn spawn(
        binary: &Path,
        name: &str,
        tls_dir: &Path,
        state: StateArg,
        logs: &Path,
    ) -> Result<Coordinator> {
        let port = free_port()?;
        let url = format!("https://127.0.0.1:{port}");
        let mut cmd = Command::new(binary);
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--tls-dir")
            .arg(tls_dir)
            .args(["--tls-name", COORDINATOR_CERT])
            .args(["--name", name, "--advertise", &url]);
        match &state {
            StateArg::Redb(path) => {
                cmd.args(["--store", "redb"]).arg("--state").arg(path);
            }
            StateArg::Etcd(endpoints) => {
                cmd.args(["--store", "etcd", "--etcd-endpoints", &endpoints.join(",")]);
            }
        }
        let daemon = Daemon::spawn(
            &format!("coordinator {name}"),
            cmd,
            &logs.join(format!("coordinator-{}-{name}.log", state.store())),
        )?;
        Ok(Coordinator {
            name: name.to_string(),
            url,
            daemon,
        })
    }

    /// Waits until it answers ListCoordinators.
    pub async fn wait_ready(
        &mut self,
        tls: &Tls,
        timeout: Duration,
    ) -> Result<ListCoordinatorsResponse> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(answer) = list_coordinators(tls, &self.url).await {
                return Ok(answer);
            }
            if !self.daemon.alive() {
                bail!(
                    "{} exited; its log ({}):\n{}",
                    self.daemon.name,
                    self.daemon.log.display(),
                    self.daemon.log_tail(20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} does not answer after {timeout:?}; see {}",
                    self.daemon.name,
                    self.daemon.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A client of the coordinator at `url` with the benchmark's certificate;
/// each call at most a second.
pub async fn client(tls: &Tls, url: &str) -> Result<CoordinatorClient<Channel>> {
    let channel = tls
        .connect(url, "127.0.0.1", Duration::from_secs(1))
        .await?;
    Ok(CoordinatorClient::new(channel))
}

pub async fn list_coordinators(tls: &Tls, url: &str) -> Result<ListCoordinatorsResponse> {
    let mut c = client(tls, url).await?;
    Ok(c.list_coordinators(ListCoordinatorsRequest {})
        .await?
        .into_inner())
}

/// The hosts the coordinator at `url` has ready and down, the down ones'
/// names and reasons.
pub async fn host_states(tls: &Tls, url: &str) -> Result<(usize, Vec<(String, String)>)> {
    let mut c = client(tls, url).await?;
    let listed = c.list_hosts(ListHostsRequest {}).await?.into_inner();
    let mut ready = 0;
    let mut down = Vec::new();
    for h in listed.hosts {
        if h.state == migrate_cluster::proto::HostState::Ready as i32 {
            ready += 1;
        } else {
            let name = h.info.map(|i| i.name).unwrap_or_default();
            down.push((name, h.down_reason));
        }
    }
    Ok((ready, down))
}

/// CPU time (user + system) of a process, in seconds.
pub fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) as f64 / hz)
}

/// VmRSS and VmHWM (its peak) of a process, KiB.
pub fn rss_kib(pid: i32) -> (Option<u64>, Option<u64>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |f: &str| super::machine::meminfo_kib(&status, f);
    (field("VmRSS"), field("VmHWM"))
}

/// Raises RLIMIT_NOFILE's soft limit to the hard one (a thousand hosts'
/// listeners and connections, and the coordinator's, which inherits it).
/// Returns (before, after).
pub fn raise_nofile() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    }
    (before, lim.rlim_cur)
}
