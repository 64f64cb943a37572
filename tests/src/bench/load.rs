//! Client load on a migrated container's service, as the `migrate`
//! benchmark applies it: one thread of this program, in the machine's own
//! network namespace (which reaches every container of the local cluster
//! through the cluster's bridge, as another host would), sends requests back
//! to back with a short pause, checks every answer, and records when each
//! ended and how long it took. From those records come the downtime as the
//! clients saw it (the largest gap between answers), failed requests and
//! reset connections.
//!
//! Protocols: HTTP/1.0 GETs of a static file, one connection each (busybox
//! httpd closes every connection after its answer); Redis commands over one
//! kept connection (`INCR` of a counter, whose answer must be the last one
//! plus one, and `GET` of a filled key, whose value must have its size);
//! lines to echo-server over one kept connection (its answer numbers the
//! lines it served, which must go up by one).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::unix_ms;

/// How long one request may take before it counts as failed: longer than
/// any stop-and-copy downtime measured here, so a frozen service shows as a
/// slow answer, not as a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What the client speaks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// `GET path`, a new connection per request.
    Http { path: String },
    /// `INCR` and `GET key:N` (N below `keys`; values `value_bytes` long).
    Redis { keys: u64, value_bytes: usize },
    /// A line to echo-server, over one connection.
    Echo,
}

/// How one request ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Ok,
    /// The server closed or reset a connection the client was using.
    Reset,
    /// Refused, timed out, or a wrong answer.
    Failed,
}

/// One request: when it ended (unix ms), how long it took, how it ended,
/// and why when it did not end well.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub end_ms: u64,
    pub latency_ms: f64,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A running client; [`Load::stop`] ends it and hands back its events.
pub struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    handle: JoinHandle<Vec<Event>>,
}

impl Load {
    /// Starts sending to `to`, pausing `pause` after each answer.
    pub fn start(protocol: Protocol, to: SocketAddr, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let (s, a) = (stop.clone(), answered.clone());
        let handle = std::thread::spawn(move || {
            let mut client = Client::new(protocol, to);
            let mut events = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                let result = client.request();
                let latency_ms = t.elapsed().as_secs_f64() * 1000.0;
                let (outcome, error) = match result {
                    Ok(()) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        (Outcome::Ok, None)
                    }
                    Err(Failure::Reset(e)) => (Outcome::Reset, Some(e)),
                    Err(Failure::Failed(e)) => (Outcome::Failed, Some(e)),
                };
                let failed = outcome != Outcome::Ok;
                events.push(Event {
                    end_ms: unix_ms(),
                    latency_ms: super::stats::round(latency_ms, 3),
                    outcome,
                    error,
                });
                // After a failure, wait a little longer: a refused connect
                // would otherwise spin.
                std::thread::sleep(if failed {
                    pause.max(Duration::from_millis(20))
                } else {
                    pause
                });
            }
            events
        });
        Load {
            stop,
            answered,
            handle,
        }
    }

    /// Waits until the service has answered `n` requests in all, polling
    /// until `timeout`.
    pub fn wait_answered(&self, n: u64, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.answered.load(Ordering::Relaxed) >= n {
                return Ok(());
            }
            if self.handle.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!(
            "the service answered {} of {n} requests within {timeout:?}",
            self.answered.load(Ordering::Relaxed)
        ))
    }

    /// Answers so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Stops after the request under way and returns every event.
    pub fn stop(self) -> Vec<Event> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

enum Failure {
    Reset(String),
    Failed(String),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        match e.kind() {
            ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof => Failure::Reset(e.to_string()),
            _ => Failure::Failed(e.to_string()),
        }
    }
}

/// One protocol's connection and what its answers must be.
struct Client {
    protocol: Protocol,
    to: SocketAddr,
    /// The kept connection of Redis and echo (none for HTTP).
    conn: Option<BufReader<TcpStream>>,
    /// The last counter the server answered (Redis INCR, echo's line
    /// number), and whether a request since may have counted without its
    /// answer arriving (then the next may be one further on).
    last: Option<u64>,
    lost_one: bool,
    n: u64,
}

impl Client {
    fn new(protocol: Protocol, to: SocketAddr) -> Client {
        Client {
            protocol,
            to,
            conn: None,
            last: None,
            lost_one: false,
            n: 0,
        }
    }

    fn connect(&self) -> Result<TcpStream, Failure> {
        let s = TcpStream::connect_timeout(&self.to, REQUEST_TIMEOUT)?;
        s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        s.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    fn request(&mut self) -> Result<(), Failure> {
        self.n += 1;
        let r = match self.protocol.clone() {
            Protocol::Http { path } => self.http(&path),
            Protocol::Redis { keys, value_bytes } => self.kept(|c, conn| {
                if c.n % 2 == 0 && keys > 0 {
                    redis_get(conn, c.n % keys, value_bytes)
                } else {
                    let v = redis_incr(conn)?;
                    c.check_counter(v)
                }
            }),
            Protocol::Echo => self.kept(|c, conn| {
                let v = echo(conn)?;
                c.check_counter(v)
            }),
        };
        if r.is_err() {
            // The request may have counted on the server.
            self.lost_one = true;
        }
        r
    }

    /// Runs `f` on the kept connection, connecting first if there is none;
    /// any failure drops it, so the next request connects again.
    fn kept(
        &mut self,
        f: impl FnOnce(&mut Client, &mut BufReader<TcpStream>) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => BufReader::new(self.connect()?),
        };
        let r = f(self, &mut conn);
        if r.is_ok() {
            self.conn = Some(conn);
        }
        r
    }

    /// A counter answer must be the last one plus one (or plus two after a
    /// request whose answer was lost).
    fn check_counter(&mut self, v: u64) -> Result<(), Failure> {
        let ok = match self.last {
            None => true,
            Some(last) => v == last + 1 || (self.lost_one && v == last + 2),
        };
        let last = self.last.replace(v);
        self.lost_one = false;
        if ok {
            Ok(())
        } else {
            Err(Failure::Failed(format!(
                "counter went from {last:?} to {v}: the service lost or repeated state"
            )))
        }
    }

    fn http(&self, path: &str) -> Result<(), Failure> {
        let mut s = self.connect()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n")?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        check_http(&raw).map_err(Failure::Failed)
    }
}

/// A 200 answer whose body has the length its header announced.
fn check_http(raw: &[u8]) -> Result<(), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {} bytes", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("answer {status:?}"));
    }
    let body = raw.len() - split - 4;
    let announced = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    match announced {
        Some(n) if n != body => Err(format!("body of {body} bytes, {n} announced")),
        _ => Ok(()),
    }
}

/// One line of a Redis answer, without its CRLF.
fn resp_line(conn: &mut BufReader<TcpStream>) -> Result<String, Failure> {
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(Failure::Reset("the server closed the connection".into()));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn resp_command(conn: &mut BufReader<TcpStream>, words: &[&str]) -> Result<(), Failure> {
    let mut req = format!("*{}\r\n", words.len());
    for w in words {
        req.push_str(&format!("${}\r\n{w}\r\n", w.len()));
    }
    conn.get_mut().write_all(req.as_bytes())?;
    Ok(())
}

fn redis_incr(conn: &mut BufReader<TcpStream>) -> Result<u64, Failure> {
    resp_command(conn, &["INCR", "bench:counter"])?;
    let line = resp_line(conn)?;
    line.strip_prefix(':')
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Failure::Failed(format!("INCR answered {line:?}")))
}

/// `GET key:N` of a key `DEBUG POPULATE` made: a bulk string of
/// `value_bytes`.
fn redis_get(conn: &mut BufReader<TcpStream>, n: u64, value_bytes: usize) -> Result<(), Failure> {
    let key = format!("key:{n}");
    resp_command(conn, &["GET", &key])?;
    let line = resp_line(conn)?;
    let len: i64 = line
        .strip_prefix('$')
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Failure::Failed(format!("GET {key} answered {line:?}")))?;
    if len < 0 {
        return Err(Failure::Failed(format!("{key} is gone")));
    }
    let mut body = vec![0u8; len as usize + 2];
    conn.read_exact(&mut body)?;
    if len as usize != value_bytes {
        return Err(Failure::Failed(format!(
            "{key} holds {len} bytes, not {value_bytes}"
        )));
    }
    Ok(())
}

/// A line to echo-server; returns its line number.
fn echo(conn: &mut BufReader<TcpStream>) -> Result<u64, Failure> {
    conn.get_mut().write_all(b"ping\n")?;
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(Failure::Reset("the server closed the connection".into()));
    }
    line.strip_suffix(" ping\n")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Failure::Failed(format!("echo answered {line:?}")))
}

/// What the clients saw of a migration from `from_ms` to `to_ms` (unix ms).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Seen {
    /// Answers, failed requests and reset connections from `from_ms` on.
    pub answers: u64,
    pub failed: u64,
    pub resets: u64,
    /// The largest gap between two answers that spans part of the window
    /// (from the last answer before it to the first after it); `None` when
    /// no answer came after the window.
    pub max_gap_ms: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    /// The first few errors, for the record.
    pub errors: Vec<String>,
}

/// Sums up `events` around a window.
pub fn seen(events: &[Event], from_ms: u64, to_ms: u64) -> Seen {
    let mut s = Seen::default();
    let during: Vec<&Event> = events.iter().filter(|e| e.end_ms >= from_ms).collect();
    for e in &during {
        match e.outcome {
            Outcome::Ok => s.answers += 1,
            Outcome::Reset => s.resets += 1,
            Outcome::Failed => s.failed += 1,
        }
        if let Some(err) = &e.error
            && s.errors.len() < 5
        {
            s.errors.push(err.clone());
        }
    }
    let ok: Vec<u64> = events
        .iter()
        .filter(|e| e.outcome == Outcome::Ok)
        .map(|e| e.end_ms)
        .collect();
    let start = ok.iter().rposition(|&t| t < from_ms).unwrap_or(0);
    if ok.iter().any(|&t| t > to_ms) {
        let end = ok.iter().position(|&t| t > to_ms).unwrap_or(ok.len() - 1);
        s.max_gap_ms = ok[start..=end]
            .windows(2)
            .map(|w| (w[1] - w[0]) as f64)
            .max_by(f64::total_cmp);
    }
    let lat = during
        .iter()
        .filter(|e| e.outcome == Outcome::Ok)
        .map(|e| Some(e.latency_ms));
    let lat: Vec<Option<f64>> = lat.collect();
    s.latency_p50_ms = super::stats::percentile(lat.iter().copied(), 0.5);
    s.latency_p99_ms = super::stats::percentile(lat.iter().copied(), 0.99);
    s.latency_max_ms = lat.iter().flatten().copied().max_by(f64::total_cmp);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(end_ms: u64, outcome: Outcome) -> Event {
        Event {
            end_ms,
            latency_ms: 1.0,
            outcome,
            error: None,
        }
    }

    #[test]
    fn the_gap_spans_the_window() {
        let events = [
            ev(100, Outcome::Ok),
            ev(110, Outcome::Ok),
            ev(900, Outcome::Reset),
            ev(1500, Outcome::Ok),
            ev(1510, Outcome::Ok),
        ];
        let s = seen(&events, 200, 1000);
        assert_eq!(s.max_gap_ms, Some(1390.0));
        assert_eq!((s.answers, s.resets, s.failed), (2, 1, 0));
        // No answer after the window: the gap is not known.
        assert_eq!(seen(&events, 200, 2000).max_gap_ms, None);
    }

    #[test]
    fn http_answers() {
        assert!(check_http(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc").is_ok());
        assert!(check_http(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nabc").is_err());
        assert!(check_http(b"HTTP/1.0 404 Not Found\r\n\r\n").is_err());
        assert!(check_http(b"HTTP/1.0 200").is_err());
    }

    #[test]
    fn counters_go_up_by_one() {
        let mut c = Client::new(Protocol::Echo, "127.0.0.1:1".parse().unwrap());
        assert!(c.check_counter(5).is_ok());
        assert!(c.check_counter(6).is_ok());
        assert!(c.check_counter(8).is_err());
        c.lost_one = true;
        assert!(c.check_counter(10).is_ok());
        assert!(c.check_counter(10).is_err());
    }
}
