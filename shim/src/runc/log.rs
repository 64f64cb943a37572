//! runc's `--log-format json` file: where runc says why a command failed.
//!
//! runc appends to one log file per container for its whole life, so the
//! reader starts at the offset taken just before the command ran: an old
//! error from an earlier command must never be blamed on this one.

use std::{
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use serde::Deserialize;

#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
}

/// Where the log stood before a command ran.
#[derive(Debug, Clone, Copy)]
pub struct Mark(u64);

#[derive(Deserialize)]
struct Line {
    #[serde(default)]
    level: String,
    #[serde(default)]
    msg: String,
}

impl LogFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn mark(&self) -> Mark {
        Mark(std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0))
    }

    /// The last error runc logged since `mark`, if any.
    pub fn last_error_since(&self, mark: Mark) -> Option<String> {
        let mut file = std::fs::File::open(&self.path).ok()?;
        file.seek(SeekFrom::Start(mark.0)).ok()?;
        let mut text = String::new();
        file.read_to_string(&mut text).ok()?;
        last_error(&text)
    }
}

fn last_error(text: &str) -> Option<String> {
    text.lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<Line>(line).ok())
        .find(|line| matches!(line.level.as_str(), "error" | "fatal"))
        .map(|line| line.msg)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn picks_the_last_error_after_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::new(dir.path().join("log.json"));
        std::fs::write(log.path(), "{\"level\":\"error\",\"msg\":\"old failure\"}\n").unwrap();
        let mark = log.mark();
        assert_eq!(log.last_error_since(mark), None);

        let mut f = std::fs::OpenOptions::new().append(true).open(log.path()).unwrap();
        writeln!(f, "{{\"level\":\"warning\",\"msg\":\"noise\"}}").unwrap();
        writeln!(f, "{{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": executable file not found in $PATH\"}}")
            .unwrap();
        writeln!(f, "not json").unwrap();
        assert_eq!(log.last_error_since(mark).as_deref(), Some("exec: \"nope\": executable file not found in $PATH"));
    }

    #[test]
    fn missing_file_has_no_error() {
        let log = LogFile::new("/nonexistent/log.json");
        assert_eq!(log.last_error_since(log.mark()), None);
    }
}
