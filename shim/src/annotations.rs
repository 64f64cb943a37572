//! The OCI annotations this runtime understands. Each parser names the
//! annotation and the form it accepts when a value is wrong, since the
//! person who wrote the value reads the error in `ctr` or a pod's events.

use std::{
    path::{Component, Path, PathBuf},
    time::Duration,
};

use migrate_version_store::{self as versions, StoreLocation};

pub type Result<T, E = BadAnnotation> = std::result::Result<T, E>;

/// A value this runtime cannot use, with the form it takes.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?} is not valid: expected {expected}")]
pub struct BadAnnotation {
    pub name: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// Checkpoint once the container is ready: "tcp:PORT" (it listens on
/// PORT), "http:PORT/PATH" (a GET of PATH answers 2xx or 3xx),
/// "exec:COMMAND" (COMMAND run in the container exits 0) or "notify" (the
/// app sends READY=1 to $NOTIFY_SOCKET, systemd's notify protocol).
pub const CHECKPOINT_WHEN_READY: &str = "io.containerd.migrate.checkpoint-when-ready";
/// Start the container by restoring this checkpoint: "file:///abs/path/to/checkpoint-dir".
pub use migrate_oci::RESTORE_FROM_ANNOTATION as RESTORE_FROM;
/// The checkpoint store the ready-point checkpoint goes to:
/// "file:///abs/path"; the default store otherwise.
pub const READY_STORE: &str = "io.containerd.migrate.checkpoint-when-ready.store";
/// The ready probe's settings, named and meant as in a Kubernetes probe:
/// the time between attempts, ...
pub const READY_PERIOD: &str = "io.containerd.migrate.checkpoint-when-ready.period";
/// ... before the first attempt, ...
pub const READY_INITIAL_DELAY: &str = "io.containerd.migrate.checkpoint-when-ready.initial-delay";
/// ... an attempt's limit, ...
pub const READY_TIMEOUT: &str = "io.containerd.migrate.checkpoint-when-ready.timeout";
/// ... the consecutive successes that make the app ready, ...
pub const READY_SUCCESS_THRESHOLD: &str = "io.containerd.migrate.checkpoint-when-ready.success-threshold";
/// ... and how long after the start the probe gives up (no ready point).
pub const READY_GIVE_UP: &str = "io.containerd.migrate.checkpoint-when-ready.give-up";
/// With an http: probe, the requests of the probe's path made once the
/// app is ready and before the dump, so that its clones answer their
/// first request as fast as their second.
pub const READY_WARM_UP: &str = "io.containerd.migrate.checkpoint-when-ready.warm-up";

/// The checkpoint ticker: a leave-running checkpoint every interval ("30s",
/// "2m", "1h30m"), stored as a version.
pub const CHECKPOINT_INTERVAL: &str = "io.containerd.migrate.checkpoint.interval";
/// Versions per group (each group's versions are dropped together).
pub const VERSION_GROUP: &str = "io.containerd.migrate.checkpoint.version-group";
/// Groups kept, counting the one being filled.
pub const KEEP_GROUPS: &str = "io.containerd.migrate.checkpoint.keep-groups";
/// The version store: "file:///abs/path" or "oci://HOST:PORT/REPOSITORY".
pub const CHECKPOINT_STORE: &str = "io.containerd.migrate.checkpoint.store";
/// The key that encrypts versions at rest: an absolute path.
pub const KEY_FILE: &str = "io.containerd.migrate.checkpoint.key-file";

/// The cluster's restore policy (`migratectl run --restore-policy`):
/// with `checkpoint` or `restart` the container is brought back on another
/// host when this one is lost, so the shim stops it when the host agent's
/// lease ends (`fence`); `none`, the default, leaves it alone.
pub const RESTORE_POLICY: &str = "io.containerd.migrate.restore-policy";

/// Whether restore policy `value` has the container fenced.
pub fn fenced_by_policy(value: &str) -> Result<bool> {
    match value {
        "checkpoint" | "restart" => Ok(true),
        "none" => Ok(false),
        _ => Err(bad(RESTORE_POLICY, value, "checkpoint, restart or none")),
    }
}

/// The version store tickers use when the spec names none.
pub const DEFAULT_VERSION_STORE: &str = "file:///var/lib/containerd-migrate/versions";

/// Ticking faster than this would keep the container frozen more than
/// running once its memory is large; a typo like "30ms" for "30s" is
/// refused instead.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How to tell that a container is ready to be checkpointed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyProbe {
    /// Something in the container's network namespace listens on this port.
    Tcp { port: u16 },
    /// A GET of `path` on 127.0.0.1:`port`, in the container's network
    /// namespace, answers 2xx or 3xx (kubelet's httpGet).
    Http { port: u16, path: String },
    /// This command, run in the container as `ctr task exec` runs one
    /// (the spec's user, environment and working directory), exits 0
    /// (kubelet's exec). Never empty.
    Exec { argv: Vec<String> },
    /// The app says so itself: READY=1 on the socket named by the
    /// NOTIFY_SOCKET variable the shim gives it (sd_notify(3)).
    Notify,
}

/// As the annotation writes it, for the log and the manifest.
impl std::fmt::Display for ReadyProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadyProbe::Tcp { port } => write!(f, "tcp:{port}"),
            ReadyProbe::Http { port, path } => write!(f, "http:{port}{path}"),
            ReadyProbe::Exec { argv } if argv.iter().any(|a| a.is_empty() || a.contains(char::is_whitespace)) => {
                write!(f, "exec:{}", serde_json::to_string(argv).map_err(|_| std::fmt::Error)?)
            }
            ReadyProbe::Exec { argv } => write!(f, "exec:{}", argv.join(" ")),
            ReadyProbe::Notify => f.write_str("notify"),
        }
    }
}

pub fn ready_probe(value: &str) -> Result<ReadyProbe> {
    const EXPECTED: &str = "tcp:PORT, http:PORT/PATH (PORT in 1-65535, PATH optional, default /, printable ASCII \
                            without spaces), exec:COMMAND ARGS (split at spaces; a JSON array of strings for \
                            arguments with spaces) or notify";
    let err = || bad(CHECKPOINT_WHEN_READY, value, EXPECTED);
    if value == "notify" {
        return Ok(ReadyProbe::Notify);
    }
    if let Some(command) = value.strip_prefix("exec:") {
        let argv: Vec<String> = if command.trim_start().starts_with('[') {
            serde_json::from_str(command).map_err(|_| err())?
        } else {
            command.split_whitespace().map(str::to_owned).collect()
        };
        if argv.first().is_none_or(String::is_empty) {
            return Err(err());
        }
        return Ok(ReadyProbe::Exec { argv });
    }
    if let Some(port) = value.strip_prefix("tcp:") {
        return Ok(ReadyProbe::Tcp { port: port_number(port).ok_or_else(err)? });
    }
    let rest = value.strip_prefix("http:").ok_or_else(err)?;
    let (port, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    // The path goes into the request line as it is: a space or a control
    // character would break the request, so it is refused here.
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(err());
    }
    Ok(ReadyProbe::Http { port: port_number(port).ok_or_else(err)?, path: path.to_owned() })
}

/// A port in 1-65535 as plain digits (u16 parsing alone would accept "+80").
fn port_number(value: &str) -> Option<u16> {
    Some(value)
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|&p| p != 0)
}

/// A ready probe's duration setting; zero only where `zero_allowed`
/// (an initial delay of none; a period, timeout or give-up of zero means
/// nothing sensible).
pub fn probe_duration(name: &'static str, value: &str, zero_allowed: bool) -> Result<Duration> {
    let expected = if zero_allowed {
        "a duration such as 0s, 500ms, 2s or 1m30s (units h, m, s, ms)"
    } else {
        "a duration above zero such as 50ms, 2s or 5m (units h, m, s, ms)"
    };
    duration(value).filter(|d| zero_allowed || !d.is_zero()).ok_or_else(|| bad(name, value, expected))
}

pub fn restore_from(value: &str) -> Result<PathBuf> {
    file_url(RESTORE_FROM, value, "file:///ABSOLUTE/PATH/TO/CHECKPOINT-DIR (a file URL of a checkpoint directory)")
}

pub fn ready_store(value: &str) -> Result<PathBuf> {
    file_url(READY_STORE, value, "file:///ABSOLUTE/PATH (a file URL of a checkpoint store directory)")
}

/// A duration in Go's notation (as `ctr` and Kubernetes write them): one
/// or more `<integer><unit>` with unit h, m, s or ms, e.g. "30s", "1h30m";
/// at least one second.
pub fn interval(value: &str) -> Result<Duration> {
    const EXPECTED: &str = "a duration of at least 1s such as 30s, 2m or 1h30m (units h, m, s, ms)";
    duration(value).filter(|&d| d >= MIN_INTERVAL).ok_or_else(|| bad(CHECKPOINT_INTERVAL, value, EXPECTED))
}

/// Go's duration notation, restricted to whole numbers of h, m, s and ms.
fn duration(value: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = value;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "h" => Duration::from_secs(3600),
            "m" => Duration::from_secs(60),
            "s" => Duration::from_secs(1),
            "ms" => Duration::from_millis(1),
            _ => return None,
        };
        rest = &rest[unit_len..];
        let part = u32::try_from(number).ok().and_then(|n| unit.checked_mul(n))?;
        total = total.checked_add(part)?;
    }
    Some(total)
}

/// A count of zero or more, for [`READY_WARM_UP`].
pub fn count_or_zero(name: &'static str, value: &str) -> Result<u64> {
    value
        .parse::<u64>()
        .ok()
        .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| bad(name, value, "a whole number such as 0, 5 or 100"))
}

/// A count of at least one, for [`VERSION_GROUP`], [`KEEP_GROUPS`] and
/// [`READY_SUCCESS_THRESHOLD`].
pub fn count(name: &'static str, value: &str) -> Result<u64> {
    value
        .parse::<u64>()
        .ok()
        .filter(|&n| n >= 1 && value.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| bad(name, value, "a whole number of at least 1"))
}

pub fn version_store(value: &str) -> Result<StoreLocation> {
    value.parse().map_err(|_| bad(CHECKPOINT_STORE, value, versions::LOCATION_FORMS))
}

pub fn key_file(value: &str) -> Result<PathBuf> {
    let path = Path::new(value);
    if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err(bad(KEY_FILE, value, "the absolute path of a file holding 32 raw bytes or 64 hex digits"));
    }
    Ok(path.to_path_buf())
}

/// The path of a `file://` URL with an empty host. Percent-encoding is not
/// decoded: a `%` in the value is refused rather than guessed at.
fn file_url(name: &'static str, value: &str, expected: &'static str) -> Result<PathBuf> {
    let path = value
        .strip_prefix("file://")
        .filter(|p| p.starts_with('/') && !p.contains(['%', '?', '#']))
        .map(Path::new)
        .filter(|p| p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_))))
        .filter(|p| p.components().count() > 1);
    path.map(Path::to_path_buf).ok_or_else(|| bad(name, value, expected))
}

fn bad(name: &'static str, value: &str, expected: &'static str) -> BadAnnotation {
    BadAnnotation { name, value: value.to_owned(), expected }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_policies_that_fence() {
        assert!(fenced_by_policy("checkpoint").unwrap());
        assert!(fenced_by_policy("restart").unwrap());
        assert!(!fenced_by_policy("none").unwrap());
        let e = fenced_by_policy("always").unwrap_err().to_string();
        assert!(e.contains(RESTORE_POLICY) && e.contains("checkpoint, restart or none"), "{e}");
    }

    #[test]
    fn store_annotation() {
        assert!(version_store("oci://127.0.0.1:5000/checkpoints").is_ok());
        let err = version_store("s3://x").unwrap_err().to_string();
        assert!(err.contains(CHECKPOINT_STORE), "{err}");
        assert!(err.contains("file:///ABSOLUTE/PATH or oci://HOST:PORT/REPOSITORY"), "{err}");
    }

    #[test]
    fn ready_probes() {
        assert_eq!(ready_probe("tcp:8080").unwrap(), ReadyProbe::Tcp { port: 8080 });
        assert_eq!(ready_probe("tcp:65535").unwrap(), ReadyProbe::Tcp { port: 65535 });
        let http = |port, path: &str| ReadyProbe::Http { port, path: path.to_owned() };
        assert_eq!(ready_probe("http:8080/healthz").unwrap(), http(8080, "/healthz"));
        assert_eq!(ready_probe("http:80").unwrap(), http(80, "/"));
        assert_eq!(ready_probe("http:80/").unwrap(), http(80, "/"));
        assert_eq!(ready_probe("http:80/a/b?x=1").unwrap(), http(80, "/a/b?x=1"));
        let exec = |argv: &[&str]| ReadyProbe::Exec { argv: argv.iter().map(|a| a.to_string()).collect() };
        assert_eq!(ready_probe("exec:cat /tmp/ready").unwrap(), exec(&["cat", "/tmp/ready"]));
        assert_eq!(ready_probe("exec:  redis-cli   ping ").unwrap(), exec(&["redis-cli", "ping"]));
        assert_eq!(
            ready_probe(r#"exec:["sh", "-c", "test -f /ready"]"#).unwrap(),
            exec(&["sh", "-c", "test -f /ready"])
        );
        assert_eq!(ready_probe("notify").unwrap(), ReadyProbe::Notify);
        for written in ["tcp:8080", "http:80/", "http:8080/healthz", "exec:cat /tmp/ready", "notify"] {
            assert_eq!(ready_probe(written).unwrap().to_string(), written);
        }
        let written = r#"exec:["sh","-c","test -f /ready"]"#;
        assert_eq!(ready_probe(written).unwrap().to_string(), written);
        for bad in [
            "tcp:abc",
            "tcp:0",
            "tcp:65536",
            "tcp:",
            "tcp:+80",
            "8080",
            "",
            "http:",
            "http:/x",
            "http:0/x",
            "http:+80/x",
            "http:80/a b",
            "http:80/a\r\n",
            "https:443/",
            "tcp:80/x",
            "exec:",
            "exec:   ",
            "exec:[]",
            r#"exec:[""]"#,
            "exec:[1, 2]",
            r#"exec:["sh", "-c""#,
            "notify:1",
            "NOTIFY",
        ] {
            assert!(ready_probe(bad).is_err(), "{bad}");
        }
        assert_eq!(
            ready_probe("http:abc/x").unwrap_err().to_string(),
            r#"io.containerd.migrate.checkpoint-when-ready="http:abc/x" is not valid: expected tcp:PORT, http:PORT/PATH (PORT in 1-65535, PATH optional, default /, printable ASCII without spaces), exec:COMMAND ARGS (split at spaces; a JSON array of strings for arguments with spaces) or notify"#
        );
    }

    #[test]
    fn probe_durations() {
        assert_eq!(probe_duration(READY_PERIOD, "50ms", false).unwrap(), Duration::from_millis(50));
        assert_eq!(probe_duration(READY_GIVE_UP, "1m30s", false).unwrap(), Duration::from_secs(90));
        assert_eq!(probe_duration(READY_INITIAL_DELAY, "0s", true).unwrap(), Duration::ZERO);
        assert!(probe_duration(READY_TIMEOUT, "0ms", false).is_err());
        for bad in ["", "50", "1.5s", "-1s", "5 s", "ms"] {
            assert!(probe_duration(READY_INITIAL_DELAY, bad, true).is_err(), "{bad}");
        }
        assert_eq!(
            probe_duration(READY_PERIOD, "0s", false).unwrap_err().to_string(),
            r#"io.containerd.migrate.checkpoint-when-ready.period="0s" is not valid: expected a duration above zero such as 50ms, 2s or 5m (units h, m, s, ms)"#
        );
        assert_eq!(
            probe_duration(READY_INITIAL_DELAY, "soon", true).unwrap_err().to_string(),
            r#"io.containerd.migrate.checkpoint-when-ready.initial-delay="soon" is not valid: expected a duration such as 0s, 500ms, 2s or 1m30s (units h, m, s, ms)"#
        );
    }

    #[test]
    fn file_urls() {
        assert_eq!(restore_from("file:///var/lib/cp/web-1").unwrap(), PathBuf::from("/var/lib/cp/web-1"));
        assert_eq!(ready_store("file:///srv/checkpoints/").unwrap(), PathBuf::from("/srv/checkpoints/"));
        for bad in
            ["/var/lib/cp", "file://host/x", "file://relative", "file:///", "file:///a/../b", "file:///a%20b", ""]
        {
            let err = restore_from(bad).unwrap_err();
            assert_eq!(err.name, RESTORE_FROM, "{bad}: {err}");
        }
        let msg = ready_store("s3://bucket").unwrap_err().to_string();
        assert!(
            msg.starts_with(
                r#"io.containerd.migrate.checkpoint-when-ready.store="s3://bucket" is not valid: expected file:///"#
            ),
            "{msg}"
        );
    }

    #[test]
    fn intervals() {
        assert_eq!(interval("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(interval("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(interval("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(interval("1500ms").unwrap(), Duration::from_millis(1500));
        for bad in ["", "30", "s", "30ms", "0s", "-5s", "1.5s", "5 s", "3d", "30S", "99999999999h"] {
            let err = interval(bad).unwrap_err().to_string();
            assert!(err.starts_with(r#"io.containerd.migrate.checkpoint.interval=""#), "{bad}: {err}");
            assert!(err.contains("such as 30s"), "{bad}: {err}");
        }
    }

    #[test]
    fn ticker_settings() {
        assert_eq!(count(VERSION_GROUP, "5").unwrap(), 5);
        for bad in ["0", "-1", "+3", "", "x"] {
            let err = count(KEEP_GROUPS, bad).unwrap_err().to_string();
            assert!(
                err.contains("io.containerd.migrate.checkpoint.keep-groups") && err.contains("at least 1"),
                "{err}"
            );
        }
        assert_eq!(key_file("/etc/migrate/key").unwrap(), PathBuf::from("/etc/migrate/key"));
        for bad in ["key", "./key", "/etc/../key", ""] {
            assert!(key_file(bad).is_err(), "{bad}");
        }
    }
}
