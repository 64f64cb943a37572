//! What a benchmark hands back: aligned text tables, goals printed as
//! ok / MISSED, and the JSON file with every sample under target/bench/.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

/// One goal of an issue: the measured value, the goal in words and whether
/// it was met (a goal that could not be measured is not met).
#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub value: Value,
    pub goal: String,
    pub met: bool,
}

impl Goal {
    /// A goal on a number: met when `value` is there and `test` accepts it.
    pub fn number(value: Option<f64>, goal: impl Into<String>, test: impl Fn(f64) -> bool) -> Goal {
        Goal {
            value: value.map_or(Value::Null, Value::from),
            goal: goal.into(),
            met: value.is_some_and(test),
        }
    }

    /// "ok" or "MISSED".
    pub fn verdict(&self) -> &'static str {
        verdict(self.met)
    }
}

pub fn verdict(met: bool) -> &'static str {
    if met { "ok" } else { "MISSED" }
}

/// A text table: the first columns (one unless [`Table::left`] says more)
/// left-aligned, the others right-aligned, each as wide as its widest cell.
pub struct Table {
    rows: Vec<Vec<String>>,
    left: usize,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
            left: 1,
        }
    }

    /// Left-align the first `n` columns (names), not just the first.
    pub fn left(mut self, n: usize) -> Table {
        self.left = n;
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let sep = if c == 0 { "" } else { "  " };
                if c < self.left {
                    let _ = write!(line, "{sep}{cell:<w$}", w = widths[c]);
                } else {
                    let _ = write!(line, "{sep}{cell:>w$}", w = widths[c]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A number with `decimals` places, or "-" when it was not measured.
pub fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

/// Bytes as MiB with one decimal ("12.5M"), or "-".
pub fn mib(bytes: Option<f64>) -> String {
    bytes.map_or_else(|| "-".to_string(), |b| format!("{:.1}M", b / 1_048_576.0))
}

/// Where a benchmark's JSON goes unless `--out` says otherwise:
/// `<repo>/target/bench/<name>.json`.
pub fn default_out(name: &str) -> PathBuf {
    containerd_migrate_tests::fixture::repo_root()
        .join("target/bench")
        .join(format!("{name}.json"))
}

/// Writes `value` as pretty JSON to `path`, creating its directory.
pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value).context("encoding the results")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    eprintln!("==> wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["metric", "a", "b"]);
        t.row(vec!["long metric".into(), "1.0".into(), "-".into()]);
        assert_eq!(t.render(), "metric         a  b\nlong metric  1.0  -\n");
    }

    #[test]
    fn goals_without_a_value_are_missed() {
        let g = Goal::number(None, "<= 1", |v| v <= 1.0);
        assert_eq!(g.verdict(), "MISSED");
        assert!(Goal::number(Some(0.5), "<= 1", |v| v <= 1.0).met);
        assert_eq!(num(Some(1.25), 1), "1.2");
        assert_eq!(mib(Some(3.0 * 1_048_576.0)), "3.0M");
    }
}
