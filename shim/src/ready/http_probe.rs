//! One HTTP readiness check, as kubelet's httpGet: a GET of a path on
//! 127.0.0.1, ready at a 2xx or 3xx status. Made from the watch's thread,
//! inside the container's network namespace (see `watch`).
//!
//! The request says `Connection: close` and the answer is read to its end
//! (as far as [`MAX_ANSWER`]), so the app serves all of it, which is what a
//! warm-up is for, and closes its end of the connection; the probe's end is
//! closed before the check returns. The watch then waits for the app's end
//! to go too, so that no clone inherits a connection of the probe's.

use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

/// A status line longer than this is no HTTP server's.
const MAX_STATUS_LINE: u64 = 1024;
/// Read of an answer, its status line and headers included; the rest, if
/// any, is left unread (the connection is then reset rather than closed).
const MAX_ANSWER: u64 = 1 << 20;

/// GETs `path` on 127.0.0.1:`port` within `timeout` (for the connect and
/// for each read and write). Ok(()) at 2xx or 3xx; otherwise what went
/// wrong, for the warning when the probe gives up.
pub fn get(port: u16, path: &str, timeout: Duration) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let failed = |what: &str, e: std::io::Error| match e.kind() {
        // A socket timeout reads as EAGAIN ("Resource temporarily unavailable").
        ErrorKind::WouldBlock | ErrorKind::TimedOut => format!("{what}: no progress within the timeout of {timeout:?}"),
        _ => format!("{what}: {e}"),
    };
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| failed(&format!("connect to {addr}"), e))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: containerd-migrate-ready-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(|e| failed("send the request", e))?;
    let mut reader = BufReader::new((&stream).take(MAX_ANSWER));
    let mut line = String::new();
    (&mut reader).take(MAX_STATUS_LINE).read_line(&mut line).map_err(|e| failed("read the status line", e))?;
    let status = status(&line);
    if status.is_some() {
        // The status decides, as for kubelet; an app that keeps the
        // connection open after its answer, despite `Connection: close`,
        // ends this read at the timeout.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    }
    match status {
        Some(200..=399) => Ok(()),
        Some(code) => Err(format!("GET {path} answered {code}")),
        None => Err(format!("GET {path} answered no HTTP status line: {:?}", line.trim_end())),
    }
}

/// The status code of an HTTP/1.x status line ("HTTP/1.1 200 OK").
fn status(line: &str) -> Option<u16> {
    let rest = line.strip_prefix("HTTP/1.")?;
    let mut parts = rest.splitn(3, ' ');
    let _minor = parts.next()?;
    let code = parts.next()?.trim_end();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{net::TcpListener, thread};

    /// A server that answers one connection with `answer` and returns the
    /// request it read.
    fn serve_once(answer: &'static str) -> (u16, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                request.extend_from_slice(&buf[..n]);
            }
            conn.write_all(answer.as_bytes()).unwrap();
            String::from_utf8(request).unwrap()
        });
        (port, handle)
    }

    #[test]
    fn ready_at_2xx_and_3xx() {
        for answer in ["HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.0 302 Found\r\nLocation: /\r\n\r\n", "HTTP/1.1 204\r\n\r\n"] {
            let (port, server) = serve_once(answer);
            assert_eq!(get(port, "/healthz", Duration::from_secs(1)), Ok(()), "{answer:?}");
            let request = server.join().unwrap();
            assert!(request.starts_with("GET /healthz HTTP/1.1\r\n"), "{request}");
            assert!(request.contains("\r\nConnection: close\r\n"), "{request}");
        }
    }

    #[test]
    fn not_ready_otherwise() {
        let (port, server) = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert_eq!(get(port, "/", Duration::from_secs(1)), Err("GET / answered 503".to_owned()));
        server.join().unwrap();
        let (port, server) = serve_once("SSH-2.0-OpenSSH\r\n");
        let err = get(port, "/", Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("no HTTP status line"), "{err}");
        server.join().unwrap();
        // Nothing listens: refused.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = get(port, "/", Duration::from_secs(1)).unwrap_err();
        assert!(err.starts_with(&format!("connect to 127.0.0.1:{port}")), "{err}");
    }

    #[test]
    fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let err = get(port, "/", Duration::from_millis(100)).unwrap_err();
        assert_eq!(err, "read the status line: no progress within the timeout of 100ms");
    }

    #[test]
    fn status_lines() {
        assert_eq!(status("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status("HTTP/1.0 404 Not Found\r\n"), Some(404));
        assert_eq!(status("HTTP/1.1 301\r\n"), Some(301));
        for bad in ["", "HTTP/2 200\r\n", "HTTP/1.1 20 OK\r\n", "HTTP/1.1 2000 OK\r\n", "http/1.1 200 OK\r\n"] {
            assert_eq!(status(bad), None, "{bad:?}");
        }
    }
}
