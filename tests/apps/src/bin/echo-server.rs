//! echo-server: a TCP server whose state must survive a checkpoint/restore.
//!
//!   echo-server --port P
//!
//! Listens on 0.0.0.0:P, prints `listening port=P`, and answers every line
//! received on any connection with `<n> <line>\n`, where n counts the lines
//! served by this process since it started (the first line gets 1). A restored
//! server that continues the count, and keeps its open connections, kept its
//! state. SIGTERM ends it with exit status 0.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use migrate_testapps::{exit_zero_on_termination, flag_value, reject_unknown};

static LINES_SERVED: AtomicU64 = AtomicU64::new(0);

const USAGE: &str = "usage: echo-server --port P";

/// Answers each line of one connection until the peer closes it.
fn serve(stream: TcpStream) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        let n = LINES_SERVED.fetch_add(1, Ordering::SeqCst) + 1;
        let mut answer = format!("{n} ").into_bytes();
        answer.extend_from_slice(&line);
        answer.push(b'\n');
        writer.write_all(&answer)?;
    }
}

fn accept_forever(listener: TcpListener) -> ! {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                std::thread::spawn(move || {
                    // A peer that resets its connection is no reason to stop.
                    let _ = serve(stream);
                });
            }
            Err(e) => eprintln!("echo-server: accept: {e}"),
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port: u16 = match reject_unknown(&args, &["--port"])
        .and_then(|()| flag_value(&args, "--port"))
        .and_then(|p| p.ok_or_else(|| "--port is required".to_string()))
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("echo-server: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    exit_zero_on_termination();

    // A literal address: no name lookup, which a static glibc cannot do.
    let listener = match TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("echo-server: listen on port {port}: {e}");
            return ExitCode::from(1);
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening port={port}");
    let _ = out.flush();
    drop(out);
    accept_forever(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_numbered_across_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || accept_forever(listener));

        let ask = |conn: &mut BufReader<TcpStream>, line: &str| {
            conn.get_mut().write_all(line.as_bytes()).unwrap();
            let mut answer = String::new();
            conn.read_line(&mut answer).unwrap();
            answer
        };
        let mut a = BufReader::new(TcpStream::connect(addr).unwrap());
        let mut b = BufReader::new(TcpStream::connect(addr).unwrap());
        assert_eq!(ask(&mut a, "hello\n"), "1 hello\n");
        assert_eq!(ask(&mut b, "world\r\n"), "2 world\n");
        assert_eq!(ask(&mut a, "\n"), "3 \n");
    }
}
