//! A distribution registry (Debian's `docker-registry`) of a test's own on
//! loopback, for `oci://` version stores; killed when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::host;

/// Debian's name for the CNCF distribution registry.
pub const BINARY: &str = "docker-registry";

pub struct Registry {
    child: Child,
    dir: PathBuf,
    /// The address it listens on.
    ip: String,
    pub port: u16,
}

impl Registry {
    /// Starts one, or returns None (saying why) when the binary is missing;
    /// with CI=true that fails the test instead.
    pub fn start(test: &str) -> Option<Registry> {
        Registry::start_on(test, "127.0.0.1")
    }

    /// As [`Registry::start`], listening on `ip` (the local cluster's
    /// bridge address, so that its hosts reach it).
    pub fn start_on(test: &str, ip: &str) -> Option<Registry> {
        let Some(binary) = host::which(BINARY) else {
            let reason = format!("{test} needs {BINARY} (Debian's distribution registry)");
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{reason}; run hack/setup.sh (as root)");
            }
            eprintln!("skipping: {reason}");
            return None;
        };
        let dir = std::env::temp_dir().join(format!("registry-e2e-{}", std::process::id()));
        Some(Registry::start_in_on(&binary, &dir, ip).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Starts `binary` serving on a free loopback port with its storage
    /// under `dir/<port>/data` (removed with the registry when dropped).
    pub fn start_in(binary: &Path, dir: &Path) -> Result<Registry, String> {
        Registry::start_in_on(binary, dir, "127.0.0.1")
    }

    fn start_in_on(binary: &Path, dir: &Path, ip: &str) -> Result<Registry, String> {
        let port = TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        let dir = dir.join(port.to_string());
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let config = format!(
            "version: 0.1\nlog:\n  accesslog:\n    disabled: true\n  level: warn\nstorage:\n  filesystem:\n    \
             rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {ip}:{port}\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("config.yml"), config).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("registry.log")).map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        let registry = Registry {
            child,
            dir,
            ip: ip.to_string(),
            port,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match registry.answers() {
                Ok(()) => return Ok(registry),
                Err(e) if std::time::Instant::now() >= deadline => {
                    return Err(format!("the registry did not answer /v2/ within 30 s: {e}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Where the registry keeps its blobs and manifests.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `oci://IP:PORT/REPOSITORY`.
    pub fn url(&self, repository: &str) -> String {
        format!("oci://{}:{}/{repository}", self.ip, self.port)
    }

    /// Whether `GET /v2/` answers 200.
    fn answers(&self) -> Result<(), String> {
        let mut conn =
            TcpStream::connect((self.ip.as_str(), self.port)).map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)
            .map_err(|e| e.to_string())?;
        match answer.lines().next() {
            Some(status) if status.contains(" 200 ") => Ok(()),
            other => Err(format!("answered {other:?}")),
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        // The per-process parent of `start`, once no registry is left in it.
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}
