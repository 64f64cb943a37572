//! Running `ctr ... -t` on a real terminal.
//!
//! `ctr run -t` and `ctr t exec -t` put their own stdin into raw mode and
//! refuse to start without a terminal, so the child gets a fresh pty as its
//! controlling terminal and stdin/stdout/stderr; everything it (and through
//! it, the container's terminal) prints is read from the master side.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::pty::{Winsize, openpty};
use nix::sys::termios;

use crate::process::{Output, cmdline, reap};

/// Terminal size given to the child, so a container can be checked for it.
pub const ROWS: u16 = 31;
pub const COLS: u16 = 97;

/// Runs `cmd` on a new pty until it exits; the returned `stdout` is all
/// bytes read from the terminal, `stderr` is empty (both went to the pty).
#[track_caller]
pub fn run(mut cmd: Command, timeout: Duration) -> Output {
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
    // terminal raw but turns output processing (OPOST) back on, keeping the
    // terminal's ONLCR, which would add a second CR to the CRLF the
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
    // Only the child may hold the slave now: the master reads EIO once the
    // last slave descriptor is closed, which is how the reader knows to stop.
    drop(cmd);
    drop(slave);

    let mut master = File::from(pty.master);
    let (out_tx, out_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match master.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break, // EIO: every slave descriptor is closed
            }
        }
        let _ = out_tx.send(all);
    });
    let exit = reap(child);
    let status = match exit.recv_timeout(timeout) {
        Ok(status) => status.expect("waiting for a child"),
        Err(_) => {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            let _ = exit.recv_timeout(Duration::from_secs(10));
            let seen = out_rx
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_default();
            panic!(
                "`{line}` on a pty did not finish within {timeout:?}; killed it\nterminal output: {}",
                crate::process::quote_bytes(&seen)
            );
        }
    };
    let stdout = out_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("`{line}` exited ({status}) but its pty stayed open"));
    Output {
        cmdline: line,
        status,
        stdout,
        stderr: Vec::new(),
    }
}
