//! Failures injected into a migration's steps on this host, for the tests
//! and the demo that prove a failed migration leaves the container running
//! on its source. Off unless the agent is given a file (`--failpoints`);
//! the local cluster gives one in each host's shared directory. Each line
//! of the file is `STEP=ACTION`, read when the step begins:
//!
//! - `error`: the step fails with an error saying it was injected;
//! - `exit`: the agent dies at once (SIGKILL, as if its host's power went,
//!   nothing cleaned up);
//! - `hold`: the step waits until the line is gone from the file (a test
//!   then does something to the host mid-step, such as `hack/cluster.sh
//!   fail`), logging `holding step STEP` once.
//!
//! Steps: `prepare`, `sync`, `dump`, `restore` (see [`super::migration`]),
//! and `recover` (a lost host's container restored here).

use std::path::PathBuf;

use anyhow::{Result, bail};

pub struct Failpoints {
    file: Option<PathBuf>,
}

impl Failpoints {
    pub fn new(file: Option<PathBuf>) -> Failpoints {
        Failpoints { file }
    }

    /// Fails, holds or kills the agent if the file says so for `step`.
    pub async fn check(&self, step: &str) -> Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        let read = || std::fs::read_to_string(file).unwrap_or_default();
        let text = read();
        match action(&text, step) {
            None => Ok(()),
            Some("hold") => {
                log::warn!("holding step {step}, as {} says", file.display());
                // Tests only: a poll, as nothing signals the file's change.
                while action(&read(), step) == Some("hold") {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Ok(())
            }
            Some("error") => bail!("a failure was injected at step {step} ({})", file.display()),
            Some("exit") => {
                log::warn!("killing the agent at step {step}, as {} says", file.display());
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
                unreachable!("SIGKILL ends the process")
            }
            Some(other) => bail!("{}: unknown action {other:?} for step {step} (error, exit or hold)", file.display()),
        }
    }
}

fn action<'a>(text: &'a str, step: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.trim().strip_prefix(step)?.strip_prefix('=').map(str::trim))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_line_names_a_step_and_what_happens_there() {
        assert_eq!(action("restore=error\n", "restore"), Some("error"));
        assert_eq!(action("prepare=exit\nrestore=error", "restore"), Some("error"));
        assert_eq!(action("restored=error", "restore"), None);
        assert_eq!(action("", "dump"), None);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("failpoints");
        let points = Failpoints::new(Some(file.clone()));
        assert!(points.check("restore").await.is_ok(), "no file, no failure");
        std::fs::write(&file, "restore=error\n").unwrap();
        let e = points.check("restore").await.unwrap_err().to_string();
        assert!(e.contains("injected at step restore"), "{e}");
        assert!(points.check("dump").await.is_ok());
        assert!(Failpoints::new(None).check("restore").await.is_ok());
    }
}
