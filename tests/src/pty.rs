//! Running `ctr ... -t` on a real terminal.
//!
//! `ctr run -t` and `ctr t exec -t` put their own stdin into raw mode and
//! refuse to start without a terminal, so the child gets a fresh pty as its
//! controlling terminal and stdin/stdout/stderr. Everything it (and through
//! it, the container's terminal) prints is read from the master side, and
//! what a test types is written there.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::pty::{Winsize, openpty};
use nix::sys::termios;

use crate::poll;
use crate::process::{Output, cmdline, quote_bytes, reap};

/// Terminal size given to the child, so a container can be checked for it.
pub const ROWS: u16 = 31;
pub const COLS: u16 = 97;

/// A child running on a pty of its own.
pub struct PtyChild {
    cmdline: String,
    pid: i32,
    input: File,
    output: Arc<Mutex<Vec<u8>>>,
    reader: Receiver<()>,
    exit: Receiver<std::io::Result<ExitStatus>>,
}

impl PtyChild {
    /// Starts `cmd` with a new pty as controlling terminal, stdin, stdout
    /// and stderr.
    pub fn spawn(mut cmd: Command) -> PtyChild {
        let line = cmdline(&cmd);
        let size = Winsize {
            ws_row: ROWS,
            ws_col: COLS,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(Some(&size), None).expect("openpty");
        let slave: OwnedFd = pty.slave;
        // Raw and without LF-to-CRLF output mapping: `ctr -t` makes its
        // terminal raw but turns output processing (OPOST) back on, keeping
        // the terminal's ONLCR, which would add a second CR to the CRLF the
        // container's own terminal already sent.
        let mut attrs = termios::tcgetattr(&slave).expect("tcgetattr on the pty");
        termios::cfmakeraw(&mut attrs);
        attrs.output_flags.remove(termios::OutputFlags::ONLCR);
        termios::tcsetattr(&slave, termios::SetArg::TCSANOW, &attrs).expect("tcsetattr on the pty");
        let dup = |fd: &OwnedFd| -> Stdio { Stdio::from(fd.try_clone().expect("dup pty slave")) };
        cmd.stdin(dup(&slave))
            .stdout(dup(&slave))
            .stderr(dup(&slave));
        unsafe {
            cmd.pre_exec(|| {
                // A new session whose controlling terminal is the pty.
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{line}` on a pty: {e}"));
        let pid = child.id() as i32;
        // Only the child may hold the slave now: the master reads EIO once
        // the last slave descriptor is closed, which is how the reader knows
        // to stop.
        drop(cmd);
        drop(slave);

        let master = File::from(pty.master);
        let input = master.try_clone().expect("dup pty master");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (done_tx, done_rx) = mpsc::channel();
        let sink = output.clone();
        let mut master = master;
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match master.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break, // EIO: every slave descriptor is closed
                }
            }
            let _ = done_tx.send(());
        });
        PtyChild {
            cmdline: line,
            pid,
            input,
            output,
            reader: done_rx,
            exit: reap(child),
        }
    }

    /// Everything read from the terminal so far.
    pub fn output_so_far(&self) -> Vec<u8> {
        self.output.lock().unwrap().clone()
    }

    /// Waits until the terminal output contains `needle`.
    #[track_caller]
    pub fn wait_for_output(&self, needle: &[u8], timeout: Duration) {
        poll::until(
            timeout,
            &format!(
                "{} on the terminal of `{}`",
                quote_bytes(needle),
                self.cmdline
            ),
            || {
                let seen = self.output_so_far();
                if seen.windows(needle.len()).any(|w| w == needle) {
                    Ok(())
                } else {
                    Err(format!("terminal output so far: {}", quote_bytes(&seen)))
                }
            },
        )
    }

    /// Types `bytes` on the terminal.
    #[track_caller]
    pub fn type_input(&mut self, bytes: &[u8]) {
        self.input
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("typing on the terminal of `{}`: {e}", self.cmdline));
    }

    /// Waits for the child to exit and the terminal to close; on timeout
    /// kills it and panics with what it printed.
    #[track_caller]
    pub fn wait(self, timeout: Duration) -> Output {
        let status = match self.exit.recv_timeout(timeout) {
            Ok(status) => status.expect("waiting for a child"),
            Err(_) => {
                unsafe {
                    libc::kill(self.pid, libc::SIGKILL);
                }
                let _ = self.exit.recv_timeout(Duration::from_secs(10));
                panic!(
                    "`{}` on a pty did not finish within {timeout:?}; killed it\nterminal output: {}",
                    self.cmdline,
                    quote_bytes(&self.output_so_far())
                );
            }
        };
        if self.reader.recv_timeout(Duration::from_secs(10)).is_err() {
            panic!(
                "`{}` exited ({status}) but its pty stayed open",
                self.cmdline
            );
        }
        Output {
            cmdline: self.cmdline.clone(),
            status,
            stdout: self.output_so_far(),
            stderr: Vec::new(),
        }
    }
}

impl Drop for PtyChild {
    fn drop(&mut self) {
        // Not waited for (a scenario panicked): do not leave `ctr` behind.
        if let Err(mpsc::TryRecvError::Empty) = self.exit.try_recv() {
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
            }
        }
    }
}

/// Runs `cmd` on a new pty until it exits; the returned `stdout` is all
/// bytes read from the terminal, `stderr` is empty (both went to the pty).
#[track_caller]
pub fn run(cmd: Command, timeout: Duration) -> Output {
    PtyChild::spawn(cmd).wait(timeout)
}
