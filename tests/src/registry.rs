//! A distribution registry (Debian's `docker-registry`) of a test's own on
//! loopback, for `oci://` version stores; killed when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{host, poll};

const BINARY: &str = "docker-registry";

pub struct Registry {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

impl Registry {
    /// Starts one, or returns None (saying why) when the binary is missing;
    /// with CI=true that fails the test instead.
    pub fn start(test: &str) -> Option<Registry> {
        let Some(binary) = host::which(BINARY) else {
            let reason = format!("{test} needs {BINARY} (Debian's distribution registry)");
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{reason}; run hack/setup.sh (as root)");
            }
            eprintln!("skipping: {reason}");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("registry-e2e-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new(binary)
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let registry = Registry { child, dir, port };
        poll::until(
            Duration::from_secs(30),
            "the registry to answer /v2/",
            || registry.answers(),
        );
        Some(registry)
    }

    /// `oci://127.0.0.1:PORT/REPOSITORY`.
    pub fn url(&self, repository: &str) -> String {
        format!("oci://127.0.0.1:{}/{repository}", self.port)
    }

    /// Whether `GET /v2/` answers 200.
    fn answers(&self) -> Result<(), String> {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
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
    }
}
