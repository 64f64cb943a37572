//! What migratectl prints: aligned tables like `ctr`'s, human sizes and
//! times, JSON, and warnings on stderr.

use std::fmt::Write as _;

use serde::Serialize;

/// A table with a header row; columns are padded to the widest cell and
/// separated by three spaces, as `ctr`'s tabwriter does.
#[derive(Debug)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Table {
        Table { header: header.to_vec(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
                if i + 1 == widths.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<w$}   ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `64.0 MiB`, `1.00 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v < 10.0 { format!("{v:.2} {}", UNITS[unit]) } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// Milliseconds for tables: `812 ms`, `1.25 s`, `-` when unknown.
pub fn human_ms(ms: Option<f64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1000.0 => format!("{ms:.0} ms"),
        Some(ms) => format!("{:.2} s", ms / 1000.0),
    }
}

/// An RFC 3339 time as `2026-11-22 14:30:00`, or as given if it does not parse.
pub fn human_time(rfc3339: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    match time::OffsetDateTime::parse(rfc3339, &Rfc3339) {
        Ok(t) => {
            let t = t.to_offset(time::UtcOffset::UTC);
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        }
        Err(_) => rfc3339.to_string(),
    }
}

/// Milliseconds rounded to a tenth, for JSON.
pub fn round_ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Writes `text` to stdout; a reader that went away (`| head`) ends the
/// output without an error, for commands that keep SIGPIPE ignored.
pub fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::Error::new(e).context("writing to stdout")),
        _ => Ok(()),
    }
}

/// Sends `log` records at warning level and above (and everything with
/// `MIGRATECTL_DEBUG` set) to stderr as `migratectl: warning: ...`.
pub fn init_logging() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::max_level()
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                let level = match r.level() {
                    log::Level::Warn => "warning".to_string(),
                    other => other.as_str().to_ascii_lowercase(),
                };
                eprintln!("migratectl: {level}: {}", r.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    let level =
        if std::env::var_os("MIGRATECTL_DEBUG").is_some() { log::LevelFilter::Debug } else { log::LevelFilter::Warn };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns_and_trims_line_ends() {
        let mut t = Table::new(&["ID", "SIZE", "VALID"]);
        t.row(vec!["web-1".into(), "64.2 MiB".into(), "yes".into()]);
        t.row(vec!["a".into(), "".into(), "no".into()]);
        assert_eq!(
            t.render(),
            "ID      SIZE       VALID\n\
             web-1   64.2 MiB   yes\n\
             a                  no\n"
        );
        assert_eq!(Table::new(&["A", "B"]).render(), "A   B\n");
    }

    #[test]
    fn bytes_in_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(64 * 1024 * 1024 + 300 * 1024), "64.3 MiB");
        assert_eq!(human_bytes(1 << 30), "1.00 GiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn millis_and_times() {
        assert_eq!(human_ms(None), "-");
        assert_eq!(human_ms(Some(812.4)), "812 ms");
        assert_eq!(human_ms(Some(1250.0)), "1.25 s");
        assert_eq!(human_time("2026-11-22T14:30:00.123Z"), "2026-11-22 14:30:00");
        assert_eq!(human_time("2026-11-22T15:30:00+01:00"), "2026-11-22 14:30:00");
        assert_eq!(human_time("yesterday"), "yesterday");
        assert_eq!(round_ms(std::time::Duration::from_micros(812_345)), 812.3);
    }
}
