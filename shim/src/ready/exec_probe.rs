//! One exec readiness check, as kubelet's exec: the command run in the
//! container by `runc exec`, which waits for it; ready at exit status 0.
//!
//! A command that outlives the timeout is killed (SIGKILL, as containerd
//! kills an exec whose probe timed out) and the attempt fails; runc, its
//! parent, then exits too, so no probe process is left to be dumped.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::runc::{self, Runc};

/// How often a timed-out command's pid file is looked for: runc writes it
/// once the command runs, which may be after the timeout.
const KILL_RETRY: Duration = Duration::from_millis(20);
/// Of the command's output, in a failure's reason.
const MAX_OUTPUT: usize = 200;

/// Where an attempt's command runs.
pub struct ExecProbe {
    pub runc: Runc,
    pub id: String,
    pub argv: Vec<String>,
    /// The command's pid, written by runc.
    pub pid_file: PathBuf,
}

impl ExecProbe {
    /// Ok(()) at exit status 0; otherwise why not.
    pub async fn attempt(&self, timeout: Duration) -> Result<(), String> {
        let _ = std::fs::remove_file(&self.pid_file);
        let exec = self.runc.exec_wait(&self.id, &self.argv, &self.pid_file);
        tokio::pin!(exec);
        let result = match tokio::time::timeout(timeout, &mut exec).await {
            Ok(result) => result,
            Err(_) => {
                // Killed until runc reports its exit.
                loop {
                    kill_from(&self.pid_file);
                    if let Ok(result) = tokio::time::timeout(KILL_RETRY, &mut exec).await {
                        let _ = result;
                        break;
                    }
                }
                return Err(format!("{} did not exit within {timeout:?} and was killed", self.argv[0]));
            }
        };
        result.map_err(|e| match e {
            runc::Error::Failed { status, message, .. } if message == runc::PRINTED_NOTHING => {
                format!("{} exited with status {status}", self.argv[0])
            }
            runc::Error::Failed { status, message, .. } => {
                format!("{} exited with status {status}: {}", self.argv[0], shortened(&message))
            }
            other => other.to_string(),
        })
    }
}

fn kill_from(pid_file: &Path) {
    let pid = std::fs::read_to_string(pid_file).ok().and_then(|t| t.trim().parse::<i32>().ok());
    if let Some(pid) = pid.filter(|&p| p > 0) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

fn shortened(output: &str) -> String {
    match output.char_indices().nth(MAX_OUTPUT) {
        Some((at, _)) => format!("{}...", &output[..at]),
        None => output.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_output_is_shortened() {
        assert_eq!(shortened("no such file"), "no such file");
        let long = "x".repeat(500);
        assert_eq!(shortened(&long), format!("{}...", "x".repeat(MAX_OUTPUT)));
    }
}
