//! Running host commands with a deadline and keeping everything they print.
//!
//! A hung `ctr` must fail its scenario with what it had printed so far, not
//! hang the whole suite, so every child here is waited for with a timeout and
//! killed when the timeout runs out.

use std::fmt;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What a finished command did: its command line, how it ended and its output.
#[derive(Clone)]
pub struct Output {
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    /// The exit code, or `None` when the command itself died of a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Panics with the whole record unless the command exited with `code`.
    #[track_caller]
    pub fn expect_code(self, code: i32) -> Self {
        if self.code() != Some(code) {
            panic!("expected exit code {code}\n{self}");
        }
        self
    }

    #[track_caller]
    pub fn expect_success(self) -> Self {
        self.expect_code(0)
    }

    /// Panics unless the command exited with a non-zero code (a command
    /// killed by a signal does not count as a refusal).
    #[track_caller]
    pub fn expect_failure(self) -> Self {
        match self.code() {
            Some(code) if code != 0 => self,
            _ => panic!("expected the command to fail\n{self}"),
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "command: {}", self.cmdline)?;
        writeln!(f, "status:  {}", self.status)?;
        writeln!(f, "stdout:  {}", quote_bytes(&self.stdout))?;
        write!(f, "stderr:  {}", quote_bytes(&self.stderr))
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Shows bytes as an escaped string, shortened in the middle when long.
pub fn quote_bytes(bytes: &[u8]) -> String {
    const KEEP: usize = 2048;
    if bytes.len() <= 2 * KEEP {
        return format!("{:?}", String::from_utf8_lossy(bytes));
    }
    format!(
        "{:?} ... ({} bytes left out) ... {:?}",
        String::from_utf8_lossy(&bytes[..KEEP]),
        bytes.len() - 2 * KEEP,
        String::from_utf8_lossy(&bytes[bytes.len() - KEEP..]),
    )
}

/// Renders a command line for error messages, quoting arguments with spaces.
pub fn cmdline(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
            parts.push(format!("'{}'", arg.replace('\'', r"'\''")));
        } else {
            parts.push(arg.into_owned());
        }
    }
    parts.join(" ")
}

/// A child whose stdout and stderr are collected by threads while it runs,
/// so a test can look at what it has printed so far (`ctr events`) and
/// wait for it with a deadline. Dropping it kills the child.
pub struct Background {
    cmdline: String,
    pid: i32,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    exit: Receiver<std::io::Result<ExitStatus>>,
    status: Option<ExitStatus>,
    stdin: Option<ChildStdin>,
}

/// What a [`Background`] child gets as its standard input.
pub enum Stdin {
    /// /dev/null.
    Null,
    /// These bytes, then end of file.
    Data(Vec<u8>),
    /// A pipe the test writes to and closes (see [`Background::take_stdin`]).
    Pipe,
}

impl Background {
    /// Starts `cmd` with stdout and stderr captured and `stdin` written to
    /// its standard input (then closed); no `stdin` means /dev/null.
    pub fn spawn(cmd: Command, stdin: Option<Vec<u8>>) -> Background {
        match stdin {
            Some(data) => Self::spawn_with(cmd, Stdin::Data(data)),
            None => Self::spawn_with(cmd, Stdin::Null),
        }
    }

    /// Starts `cmd` with stdout and stderr captured and its stdin as given.
    pub fn spawn_with(mut cmd: Command, stdin: Stdin) -> Background {
        let line = cmdline(&cmd);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if matches!(stdin, Stdin::Null) {
            Stdio::null()
        } else {
            Stdio::piped()
        });
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{line}`: {e}"));
        let mut readers = Vec::new();
        let mut stdin_pipe = None;
        match stdin {
            Stdin::Null => {}
            Stdin::Data(data) => {
                let mut pipe = child.stdin.take().expect("piped stdin");
                // A writer thread: the child may not read all of it before
                // printing, and a blocked write here must not block the test.
                readers.push(std::thread::spawn(move || {
                    let _ = pipe.write_all(&data);
                }));
            }
            Stdin::Pipe => stdin_pipe = child.stdin.take(),
        }
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        readers.push(collect(
            child.stdout.take().expect("piped stdout"),
            stdout.clone(),
        ));
        readers.push(collect(
            child.stderr.take().expect("piped stderr"),
            stderr.clone(),
        ));
        let pid = child.id() as i32;
        Background {
            cmdline: line,
            pid,
            stdout,
            stderr,
            readers,
            exit: reap(child),
            status: None,
            stdin: stdin_pipe,
        }
    }

    /// The write end of the child's stdin (spawned with [`Stdin::Pipe`]);
    /// dropping it closes the child's stdin.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Everything the child has printed on stdout so far.
    pub fn stdout_so_far(&self) -> Vec<u8> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr_so_far(&self) -> Vec<u8> {
        self.stderr.lock().unwrap().clone()
    }

    /// The exit status if the child has already ended.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Ok(result) = self.exit.try_recv()
        {
            self.status = Some(result.expect("waiting for a child"));
        }
        self.status
    }

    /// Waits for the child to end; on timeout kills it and panics with what
    /// it printed.
    #[track_caller]
    pub fn wait(mut self, timeout: Duration) -> Output {
        match self.wait_inner(timeout) {
            Some(out) => out,
            None => {
                self.kill();
                let out = self.wait_inner(Duration::from_secs(10));
                panic!(
                    "`{}` did not finish within {timeout:?}; killed it\n{}",
                    self.cmdline,
                    out.map(|o| o.to_string()).unwrap_or_default()
                )
            }
        }
    }

    /// Kills the child (SIGKILL) and returns what it had done.
    pub fn kill_and_collect(mut self) -> Output {
        self.kill();
        self.wait_inner(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("`{}` survived SIGKILL", self.cmdline))
    }

    fn wait_inner(&mut self, timeout: Duration) -> Option<Output> {
        if self.status.is_none() {
            match self.exit.recv_timeout(timeout) {
                Ok(result) => self.status = Some(result.expect("waiting for a child")),
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("reaper thread of `{}` died", self.cmdline)
                }
            }
        }
        // The pipes close when the child and everything that inherited them
        // are gone; a grandchild holding them open (never expected from ctr)
        // would block here, so the readers get their own bounded wait.
        let readers = std::mem::take(&mut self.readers);
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for r in readers {
                let _ = r.join();
            }
            let _ = done_tx.send(());
        });
        let _ = done_rx.recv_timeout(Duration::from_secs(10));
        Some(Output {
            cmdline: self.cmdline.clone(),
            status: self.status.expect("status set above"),
            stdout: self.stdout_so_far(),
            stderr: self.stderr_so_far(),
        })
    }

    fn kill(&mut self) {
        if self.try_status().is_none() {
            // The reaper thread has not collected the child yet, so the pid
            // still names it (at worst a zombie).
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.kill();
            let _ = self.exit.recv_timeout(Duration::from_secs(10));
        }
    }
}

fn collect(mut pipe: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => into.lock().unwrap().extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    })
}

/// Waits for `child` on a thread of its own; the result arrives on the
/// returned channel.
pub(crate) fn reap(mut child: Child) -> Receiver<std::io::Result<ExitStatus>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    rx
}

/// Runs `cmd` to completion with a deadline, feeding it `stdin`.
#[track_caller]
pub fn run(cmd: Command, stdin: Option<Vec<u8>>, timeout: Duration) -> Output {
    Background::spawn(cmd, stdin).wait(timeout)
}

/// Like [`run`], but a command that outlives `timeout` is killed and
/// reported as an error instead of a panic (for the benchmark program,
/// which records a failed sample and goes on).
pub fn run_within(cmd: Command, timeout: Duration) -> Result<Output, String> {
    let mut child = Background::spawn(cmd, None);
    match child.wait_inner(timeout) {
        Some(out) => Ok(out),
        None => {
            child.kill();
            let out = child.wait_inner(Duration::from_secs(10));
            Err(format!(
                "`{}` did not finish within {timeout:?}; killed it\n{}",
                child.cmdline,
                out.map(|o| o.to_string()).unwrap_or_default()
            ))
        }
    }
}

/// Like [`run`] but never panics: for clean-up code that runs in `Drop`.
pub fn run_quietly(cmd: Command, timeout: Duration) -> Option<Output> {
    let line = cmdline(&cmd);
    let mut cmd = cmd;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let Ok(child) = cmd.spawn() else {
        eprintln!("cleanup: cannot start `{line}`");
        return None;
    };
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(out)) => Some(Output {
            cmdline: line,
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        }),
        Ok(Err(_)) => None,
        Err(_) => {
            eprintln!("cleanup: `{line}` did not finish within {timeout:?}; killing it");
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            None
        }
    }
}
