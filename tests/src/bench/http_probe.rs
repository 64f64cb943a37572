//! Waiting for a container's HTTP service without adding a process to the
//! container: a thread of ours joins the container's network namespace
//! (setns on /proc/PID/ns/net affects only the calling thread), connects to
//! 127.0.0.1:PORT every 2 ms and sends one HTTP/1.0 GET.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Polls `GET /` on 127.0.0.1:`port` in the network namespace of `pid`
/// until it answers 200; returns the body. Gives up after `timeout`.
pub fn get_in_netns(pid: u32, port: u16, timeout: Duration) -> Result<String, String> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| format!("/proc/{pid}/ns/net: {e}"))?;
    std::thread::spawn(move || {
        // The thread ends after this request, so its namespace dies with it.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "setns into the network namespace of {pid}: {}",
                std::io::Error::last_os_error()
            ));
        }
        get(port, timeout)
    })
    .join()
    .map_err(|_| "the probe thread panicked".to_string())?
}

fn get(port: u16, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut conn = loop {
        match TcpStream::connect(addr) {
            Ok(c) => break c,
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("no answer on port {port}: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    conn.set_read_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)),
    ))
    .map_err(|e| e.to_string())?;
    conn.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .map_err(|e| format!("reading the answer: {e}"))?;
    body_of_ok(&String::from_utf8_lossy(&raw))
}

/// The body of an HTTP/1.x 200 answer (everything after the first empty
/// line, CRs removed).
pub fn body_of_ok(raw: &str) -> Result<String, String> {
    let text = raw.replace('\r', "");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("");
    if !(status.starts_with("HTTP/1.") && status.split_whitespace().nth(1) == Some("200")) {
        return Err(format!("answered {status:?}"));
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        assert_eq!(
            body_of_ok("HTTP/1.1 200 OK\r\nA: b\r\n\r\nx=1\nrequests=1\n").unwrap(),
            "x=1\nrequests=1\n"
        );
        assert!(body_of_ok("HTTP/1.1 500 Oops\r\n\r\n").is_err());
        assert!(body_of_ok("").is_err());
    }
}
