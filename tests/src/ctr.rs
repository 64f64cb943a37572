//! The `ctr` CLI, pointed at one containerd instance.
//!
//! Every call has a deadline, and every failure message carries the command
//! line, its exit status, stdout and stderr (see [`Output`]).

use std::process::Command;
use std::time::Duration;

use crate::process::{self, Background, Output, Stdin};
use crate::pty::{self, PtyChild};

/// Namespace the suite works in; hack/images.sh imports the image there.
pub const NAMESPACE: &str = "default";

/// Deadline for one `ctr` call that is expected to return promptly.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// `ctr --address ADDRESS --namespace default ...`.
#[derive(Clone, Debug)]
pub struct Ctr {
    address: String,
}

/// One line of `ctr tasks ls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRow {
    pub id: String,
    pub pid: u32,
    pub status: String,
}

impl Ctr {
    pub fn new(address: impl Into<String>) -> Ctr {
        Ctr {
            address: address.into(),
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The command, not yet started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(NAMESPACE);
        cmd.args(args);
        cmd
    }

    /// Runs `ctr ARGS` (stdin /dev/null) and returns whatever it did.
    #[track_caller]
    pub fn run(&self, args: &[&str]) -> Output {
        process::run(self.command(args), None, CALL_TIMEOUT)
    }

    /// Runs `ctr ARGS` with a deadline of `timeout`; a timeout is an error,
    /// not a panic.
    pub fn run_within(&self, args: &[&str], timeout: Duration) -> Result<Output, String> {
        process::run_within(self.command(args), timeout)
    }

    /// Runs `ctr ARGS` and panics with the full record unless it exits 0.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> Output {
        self.run(args).expect_success()
    }

    /// Starts `ctr ARGS` in the background (stdin /dev/null).
    pub fn spawn(&self, args: &[&str]) -> Background {
        Background::spawn(self.command(args), None)
    }

    /// Starts `ctr ARGS` in the background with the given stdin.
    ///
    /// Note for `Stdin::Data`: `ctr run`/`ctr tasks exec` close the task's
    /// stdin on end of file only if the EOF arrives after the task was
    /// created (the closer is installed after `NewTask` returns), so input
    /// that ends at once can leave the task waiting for more forever. Use
    /// `Stdin::Pipe` and close it once the task runs.
    pub fn spawn_with(&self, args: &[&str], stdin: Stdin) -> Background {
        Background::spawn_with(self.command(args), stdin)
    }

    /// Runs `ctr ARGS` on a fresh pty (for `-t`).
    #[track_caller]
    pub fn run_on_pty(&self, args: &[&str]) -> Output {
        pty::run(self.command(args), CALL_TIMEOUT)
    }

    /// Starts `ctr ARGS` on a fresh pty, to type on and read from.
    pub fn spawn_on_pty(&self, args: &[&str]) -> PtyChild {
        PtyChild::spawn(self.command(args))
    }

    /// All tasks, parsed from `ctr tasks ls`.
    #[track_caller]
    pub fn tasks(&self) -> Vec<TaskRow> {
        let out = self.ok(&["tasks", "ls"]);
        parse_task_list(&out.stdout_str()).unwrap_or_else(|e| panic!("{e}\n{out}"))
    }

    /// The task of container `id`, if it has one.
    #[track_caller]
    pub fn task(&self, id: &str) -> Option<TaskRow> {
        self.tasks().into_iter().find(|t| t.id == id)
    }

    /// The host pids of every process in the task, from `ctr tasks ps`.
    #[track_caller]
    pub fn task_pids(&self, id: &str) -> Vec<u32> {
        let out = self.ok(&["tasks", "ps", id]);
        parse_ps(&out.stdout_str()).unwrap_or_else(|e| panic!("{e}\n{out}"))
    }

    /// Container ids, from `ctr containers ls -q`.
    #[track_caller]
    pub fn containers(&self) -> Vec<String> {
        self.ok(&["containers", "ls", "-q"])
            .stdout_str()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// `ctr tasks metrics --format json ID`, parsed.
    #[track_caller]
    pub fn metrics(&self, id: &str) -> serde_json::Value {
        let out = self.ok(&["tasks", "metrics", "--format", "json", id]);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("metrics are not JSON: {e}\n{out}"))
    }
}

/// Parses `ctr tasks ls`: a `TASK PID STATUS` header, then one row a task.
pub fn parse_task_list(text: &str) -> Result<Vec<TaskRow>, String> {
    let mut lines = text.lines();
    match lines.next() {
        Some(header) if header.split_whitespace().eq(["TASK", "PID", "STATUS"]) => {}
        other => return Err(format!("unexpected `ctr tasks ls` header {other:?}")),
    }
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            match cols.as_slice() {
                [id, pid, status] => Ok(TaskRow {
                    id: id.to_string(),
                    pid: pid
                        .parse()
                        .map_err(|_| format!("bad pid in task row {l:?}"))?,
                    status: status.to_string(),
                }),
                _ => Err(format!("unexpected task row {l:?}")),
            }
        })
        .collect()
}

/// Parses `ctr tasks ps`: a `PID INFO` header, then one row a process.
pub fn parse_ps(text: &str) -> Result<Vec<u32>, String> {
    let mut lines = text.lines();
    match lines.next() {
        Some(header) if header.split_whitespace().eq(["PID", "INFO"]) => {}
        other => return Err(format!("unexpected `ctr tasks ps` header {other:?}")),
    }
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("unexpected ps row {l:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_list_rows() {
        let text = "TASK    PID     STATUS    \nabc     1234    RUNNING\ndef     0       STOPPED\n";
        let rows = parse_task_list(text).unwrap();
        assert_eq!(
            rows,
            vec![
                TaskRow {
                    id: "abc".into(),
                    pid: 1234,
                    status: "RUNNING".into()
                },
                TaskRow {
                    id: "def".into(),
                    pid: 0,
                    status: "STOPPED".into()
                },
            ]
        );
        assert!(parse_task_list("").is_err());
    }

    #[test]
    fn ps_rows() {
        assert_eq!(
            parse_ps("PID     INFO\n10      -\n11      -\n").unwrap(),
            vec![10, 11]
        );
        assert!(parse_ps("PID INFO\nx -\n").is_err());
    }
}
