//! Requests to a container's HTTP service without adding a process to the
//! container: a thread of ours joins the container's network namespace
//! (setns on /proc/PID/ns/net affects only the calling thread) and sends
//! HTTP/1.0 GETs to 127.0.0.1:PORT, reading each answer to its end.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Time between attempts while the service does not answer 2xx yet.
const RETRY: Duration = Duration::from_millis(2);

/// A 2xx answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// The value of the first `Set-Cookie` header's first `NAME=VALUE`.
    pub cookie: Option<String>,
    /// From just before the request was written to the end of the answer.
    pub request_ms: f64,
}

/// Polls `GET path` on 127.0.0.1:`port` in the network namespace of `pid`
/// every 2 ms until it answers 2xx. A connection the service accepts
/// before it serves (a server that binds before it is ready) waits for
/// its answer. Gives up after `timeout` with the last reason.
pub fn poll_ok(pid: u32, port: u16, path: &str, timeout: Duration) -> Result<Answer, String> {
    let path = path.to_string();
    in_netns(pid, move || {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match get(port, &path, deadline) {
                Ok(answer) if (200..300).contains(&answer.status) => return Ok(answer),
                Ok(answer) => format!("GET {path} answered {}", answer.status),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!("no 2xx answer on port {port}: {last}"));
            }
            std::thread::sleep(RETRY);
        }
    })
}

/// One `GET path`, which must answer 2xx within `timeout`.
pub fn get_ok(pid: u32, port: u16, path: &str, timeout: Duration) -> Result<Answer, String> {
    let path = path.to_string();
    in_netns(pid, move || {
        let answer = get(port, &path, Instant::now() + timeout)?;
        if (200..300).contains(&answer.status) {
            Ok(answer)
        } else {
            Err(format!("GET {path} answered {}", answer.status))
        }
    })
}

/// Runs `f` on a new thread inside the network namespace of `pid`.
fn in_netns<T: Send + 'static>(
    pid: u32,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| format!("/proc/{pid}/ns/net: {e}"))?;
    std::thread::spawn(move || {
        // The thread ends after `f`, so its namespace dies with it.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "setns into the network namespace of {pid}: {}",
                std::io::Error::last_os_error()
            ));
        }
        f()
    })
    .join()
    .map_err(|_| "the probe thread panicked".to_string())?
}

/// One GET on a new connection, whatever its status, by `deadline`.
fn get(port: u16, path: &str, deadline: Instant) -> Result<Answer, String> {
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut conn =
        TcpStream::connect_timeout(&addr, left()).map_err(|e| format!("connect to {addr}: {e}"))?;
    conn.set_read_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    let sent = Instant::now();
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .map_err(|e| format!("reading the answer: {e}"))?;
    parse(&String::from_utf8_lossy(&raw), super::ms_since(sent))
}

/// An HTTP/1.x answer that took `request_ms`: its status, body (everything
/// after the first empty line, CRs removed) and first cookie.
fn parse(raw: &str, request_ms: f64) -> Result<Answer, String> {
    let text = raw.replace('\r', "");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("answered no HTTP status line: {status_line:?}"))?;
    let cookie = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("set-cookie"))
        .and_then(|(_, value)| value.split(';').next())
        .map(|pair| pair.trim().to_string());
    Ok(Answer {
        status,
        body: body.to_string(),
        cookie,
        request_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let a = parse("HTTP/1.1 200 OK\r\nA: b\r\n\r\nx=1\nrequests=1\n", 1.5).unwrap();
        assert_eq!((a.status, a.body.as_str()), (200, "x=1\nrequests=1\n"));
        assert_eq!((a.cookie, a.request_ms), (None, 1.5));
        let a = parse("HTTP/1.1 500 Oops\r\n\r\n", 0.0).unwrap();
        assert_eq!(a.status, 500);
        assert!(parse("", 0.0).is_err());
        let a = parse(
            "HTTP/1.1 200 \r\nset-cookie: JSESSIONID=AB12; Path=/examples; HttpOnly\r\n\r\n<html>",
            0.0,
        )
        .unwrap();
        assert_eq!(a.cookie.as_deref(), Some("JSESSIONID=AB12"));
        assert_eq!(a.body, "<html>");
    }
}
