//! late-ready-server: an HTTP server that listens at once and becomes
//! ready later, as servlet containers do (issue 13).
//!
//!   late-ready-server --port P --ready-after-ms N [--notify] [--hold-ms H]
//!
//! Listens on 0.0.0.0:P at once and prints `listening port=P`. Its
//! "initialisation" then runs for N ms of its own running time: sleeps of
//! 10 ms counted one by one, so that a checkpoint taken meanwhile carries
//! the rest of it into every restored copy, as a real deployment would
//! (a clock read would say "ready" in a copy restored later). Every request,
//! whatever its path, is answered and its connection closed: `503` with
//! body `<n> not-ready` before, `200` with body `<n> ready` after, where n
//! counts the requests served by this process (the first gets 1).
//! With `--notify`, it also says so the moment it is ready, as systemd's
//! notify protocol has it: `READY=1` in a datagram to $NOTIFY_SOCKET.
//! With `--hold-ms H`, it keeps each answered connection open H ms more
//! before closing its end, as servers that close lazily do (Java's NIO
//! closes at its selector's next round).
//! SIGTERM ends it with exit status 0.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use migrate_testapps::{exit_zero_on_termination, flag_value, reject_unknown};

static READY: AtomicBool = AtomicBool::new(false);
static REQUESTS_SERVED: AtomicU64 = AtomicU64::new(0);

const USAGE: &str = "usage: late-ready-server --port P --ready-after-ms N [--notify] [--hold-ms H]";
const STEP: Duration = Duration::from_millis(10);

/// Reads one request's head and answers it; the connection is closed
/// `hold` later.
fn serve(stream: TcpStream, hold: Duration) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    writer.write_all(answer().as_bytes())?;
    if !hold.is_zero() {
        std::thread::spawn(move || {
            std::thread::sleep(hold);
            drop(writer);
            drop(reader);
        });
    }
    Ok(())
}

fn answer() -> String {
    let n = REQUESTS_SERVED.fetch_add(1, Ordering::SeqCst) + 1;
    let (status, body) = if READY.load(Ordering::SeqCst) {
        ("200 OK", "ready")
    } else {
        ("503 Service Unavailable", "not-ready")
    };
    let body = format!("{n} {body}\n");
    format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn initialise(ready_after: Duration, notify: bool) {
    for _ in 0..ready_after.as_millis().div_ceil(STEP.as_millis()) {
        std::thread::sleep(STEP);
    }
    READY.store(true, Ordering::SeqCst);
    if notify && let Err(e) = notify_ready() {
        eprintln!("late-ready-server: READY=1 to $NOTIFY_SOCKET: {e}");
    }
}

/// sd_notify(0, "READY=1"), without libsystemd.
fn notify_ready() -> std::io::Result<()> {
    let path = std::env::var_os("NOTIFY_SOCKET")
        .ok_or_else(|| std::io::Error::other("NOTIFY_SOCKET is not set"))?;
    std::os::unix::net::UnixDatagram::unbound()?
        .send_to(b"READY=1\nSTATUS=serving\n", path)
        .map(drop)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The one flag without a value; the others come in pairs.
    let notify = args.iter().any(|a| a == "--notify");
    let args: Vec<String> = args.into_iter().filter(|a| a != "--notify").collect();
    let parsed = reject_unknown(&args, &["--port", "--ready-after-ms", "--hold-ms"])
        .and_then(|()| flag_value::<u16>(&args, "--port"))
        .and_then(|p| p.ok_or_else(|| "--port is required".to_string()))
        .and_then(|port| {
            flag_value::<u64>(&args, "--ready-after-ms")
                .and_then(|n| n.ok_or_else(|| "--ready-after-ms is required".to_string()))
                .map(|ms| (port, Duration::from_millis(ms)))
        });
    let hold = match flag_value::<u64>(&args, "--hold-ms") {
        Ok(ms) => Duration::from_millis(ms.unwrap_or(0)),
        Err(e) => {
            eprintln!("late-ready-server: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (port, ready_after) = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("late-ready-server: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    exit_zero_on_termination();

    // A literal address: no name lookup, which a static glibc cannot do.
    let listener = match TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("late-ready-server: listen on port {port}: {e}");
            return ExitCode::from(1);
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    println!("listening port={port}");
    std::thread::spawn(move || initialise(ready_after, notify));
    for stream in listener.incoming() {
        match stream {
            // One request at a time is all a test asks of it.
            Ok(stream) => {
                let _ = serve(stream, hold);
            }
            Err(e) => eprintln!("late-ready-server: accept: {e}"),
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn not_ready_then_ready_counting_every_request() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let _ = serve(stream.unwrap(), Duration::ZERO);
            }
        });
        let get = || {
            let mut conn = TcpStream::connect(addr).unwrap();
            conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            conn.read_to_string(&mut answer).unwrap();
            answer
        };
        let first = get();
        assert!(first.starts_with("HTTP/1.1 503 "), "{first}");
        assert!(first.ends_with("\r\n\r\n1 not-ready\n"), "{first}");
        initialise(Duration::from_millis(20), false);
        let second = get();
        assert!(second.starts_with("HTTP/1.1 200 OK\r\n"), "{second}");
        assert!(second.ends_with("\r\n\r\n2 ready\n"), "{second}");
    }
}
