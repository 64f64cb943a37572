//! The structured line the shim's checkpoint ticker logs per stored version,
//! as it reaches containerd's log: the shim's logger writes
//! `time="RFC3339" level=info msg="ticker-version container=ID version=V ..."`
//! to its log FIFO and containerd copies it to containerd.log unchanged.
//! Only this line is read (never the human one beside it), so rewording the
//! prose cannot silently turn the benchmark's figures into nulls.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The message's first word.
const MARK: &str = "ticker-version";
/// The first word of the message logged for a tick that failed.
const FAILED_MARK: &str = "ticker-failed";

/// One stored version, as the ticker reported it.
#[derive(Clone, Debug, PartialEq)]
pub struct TickerVersion {
    pub container: String,
    pub version: u64,
    pub group: u64,
    /// The pause the version's checkpoint recorded; `None` when unknown (`-`).
    pub frozen_ms: Option<f64>,
    pub dump_ms: f64,
    pub total_ms: f64,
    pub bytes_new: u64,
    pub bytes_total: u64,
    pub chunks_new: u64,
    pub chunks_total: u64,
    /// Version groups kept after retention; `None` when retention failed.
    pub retained: Option<u64>,
    /// When the line was logged (the logger's time stamp), ms since the epoch.
    pub log_ms: u64,
}

/// The `ticker-version` line in one line of containerd's log, if it is one.
pub fn parse(line: &str) -> Option<TickerVersion> {
    let msg = quoted_field(line, "msg")?;
    let rest = msg.strip_prefix(MARK)?.strip_prefix(' ')?;
    let time = quoted_field(line, "time")?;
    let stamp = OffsetDateTime::parse(&time, &Rfc3339).ok()?;
    let log_ms = u64::try_from(stamp.unix_timestamp_nanos() / 1_000_000).ok()?;
    let value = |key: &str| {
        rest.split(' ')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    let number = |key: &str| value(key)?.parse::<u64>().ok();
    let float = |key: &str| value(key)?.parse::<f64>().ok();
    Some(TickerVersion {
        container: value("container")?,
        version: number("version")?,
        group: number("group")?,
        frozen_ms: match value("frozen_ms")?.as_str() {
            "-" => None,
            f => Some(f.parse().ok()?),
        },
        dump_ms: float("dump_ms")?,
        total_ms: float("total_ms")?,
        bytes_new: number("bytes_new")?,
        bytes_total: number("bytes_total")?,
        chunks_new: number("chunks_new")?,
        chunks_total: number("chunks_total")?,
        retained: number("retained"),
        log_ms,
    })
}

/// How many ticks of container `id` stored nothing: the shim logs
/// `ticker-failed container=ID` beside its warning for each.
pub fn failures_of(log: &str, id: &str) -> usize {
    let container = format!("container={id}");
    log.lines()
        .filter_map(|line| quoted_field(line, "msg"))
        .filter(|msg| {
            msg.strip_prefix(FAILED_MARK)
                .and_then(|rest| rest.strip_prefix(' '))
                .is_some_and(|rest| rest.split(' ').any(|kv| kv == container))
        })
        .count()
}

/// Every version container `id`'s ticker logged, in log order.
pub fn versions_of(log: &str, id: &str) -> Vec<TickerVersion> {
    log.lines()
        .filter_map(parse)
        .filter(|v| v.container == id)
        .collect()
}

/// The value of `key="..."` in a logfmt line, with `\"` and `\\` unescaped.
fn quoted_field(line: &str, key: &str) -> Option<String> {
    let start = line
        .match_indices(&format!("{key}=\""))
        .find(|(i, _)| *i == 0 || line.as_bytes()[i - 1] == b' ')?
        .0;
    let mut chars = line[start + key.len() + 2..].chars();
    let mut value = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => value.push(chars.next()?),
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "time=\"2026-12-07T04:30:01.250000000Z\" level=info \
        msg=\"ticker-version container=tk-file-10 version=3 group=0 frozen_ms=812.4 dump_ms=790.1 \
        total_ms=4012.5 bytes_new=110100480 bytes_total=1181116006 chunks_new=210 chunks_total=2253 retained=1\"\n";

    #[test]
    fn parses_the_line_as_containerd_logs_it() {
        let v = parse(LINE).unwrap();
        assert_eq!(v.container, "tk-file-10");
        assert_eq!((v.version, v.group), (3, 0));
        assert_eq!(v.frozen_ms, Some(812.4));
        assert_eq!((v.dump_ms, v.total_ms), (790.1, 4012.5));
        assert_eq!((v.bytes_new, v.bytes_total), (110_100_480, 1_181_116_006));
        assert_eq!(
            (v.chunks_new, v.chunks_total, v.retained),
            (210, 2253, Some(1))
        );
        assert_eq!(v.log_ms, 1_796_617_801_250);
    }

    #[test]
    fn failed_ticks_are_counted_per_container() {
        let log = "time=\"2026-12-07T04:30:01Z\" level=warning msg=\"tk-1: checkpoint tick failed, the container runs on\"\n\
            time=\"2026-12-07T04:30:01Z\" level=warning msg=\"ticker-failed container=tk-1\"\n\
            time=\"2026-12-07T04:30:06Z\" level=warning msg=\"ticker-failed container=tk-10\"\n\
            time=\"2026-12-07T04:30:11Z\" level=warning msg=\"ticker-failed container=tk-1\"\n";
        assert_eq!(failures_of(log, "tk-1"), 2);
        assert_eq!(failures_of(log, "tk-10"), 1);
        assert_eq!(failures_of(LINE, "tk-file-10"), 0);
    }

    #[test]
    fn unknown_values_and_other_lines() {
        let line = LINE
            .replace("frozen_ms=812.4", "frozen_ms=-")
            .replace("retained=1", "retained=-");
        let v = parse(&line).unwrap();
        assert_eq!((v.frozen_ms, v.retained), (None, None));
        // The human line beside it, and a line with a field missing.
        assert!(parse("time=\"2026-12-07T04:30:01Z\" level=info msg=\"tk: version 3 (group 0) stored: 1.0 MiB new\"").is_none());
        assert!(parse(&LINE.replace(" dump_ms=790.1", "")).is_none());
        let log = format!("{LINE}{}", LINE.replace("tk-file-10", "other"));
        assert_eq!(versions_of(&log, "tk-file-10").len(), 1);
    }

    #[test]
    fn quoted_values_unescape() {
        assert_eq!(
            quoted_field(r#"a="x" msg="say \"hi\"" b=1"#, "msg").as_deref(),
            Some("say \"hi\"")
        );
        assert_eq!(quoted_field(r#"xmsg="no""#, "msg"), None);
    }
}
