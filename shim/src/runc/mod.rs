//! A driver for the runc command line, with typed options and runc's own
//! error message attached to every failure.
//!
//! The `runc` crate on crates.io stops short of checkpoint and restore, which
//! this project is about, so the shim carries its own small driver.

mod checkpoint;
mod command;
mod features;
mod kerndat;
mod log;
mod replies;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

pub use checkpoint::{
    CgroupsMode, CheckpointOptions, CriuConfig, CriuOptions, CriuTls, NetworkLock, Pages, RestoreOptions, criu_errors,
};
pub use command::Stdio3;
use command::run;
pub use features::{
    Feature, config_scripts_under_runc, criu_version_text, memory_tracking, network_lock_skip, nftables_lock,
};
use log::LogFile;

/// A failure's message when runc (or what it ran) said nothing.
pub const PRINTED_NOTHING: &str = "runc printed nothing";

/// Where runc keeps container state when the runtime options name no root,
/// per namespace, as containerd's own runc shim does.
pub const DEFAULT_ROOT: &str = "/run/containerd/runc";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to run {}: {source}", binary.display())]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("failed to watch for runc's exit: {source}")]
    Monitor {
        #[source]
        source: containerd_shim::Error,
    },

    #[error("{} (exit status {status})", failed(command, message))]
    Failed { command: &'static str, status: i32, message: String },

    /// runc says the container or process is gone; containerd expects
    /// NOT_FOUND for this, e.g. when killing a process that just exited.
    #[error("runc {command}: {message}")]
    NotFound { command: &'static str, message: String },

    /// CRIU failed under runc; `line` is the first error CRIU logged, and
    /// `hint` what to do about it where the cause is known to lie outside
    /// CRIU.
    #[error("runc {command} failed: CRIU: {line} ({}CRIU log: {})", hint.map(|h| format!("{h}; ")).unwrap_or_default(), log.display())]
    Criu { command: &'static str, line: String, hint: Option<&'static str>, log: PathBuf },

    #[error("{message}")]
    Config { message: String },

    #[error("runc {command} printed output that is not valid: {source}")]
    Output {
        command: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// The runtime options containerd hands to a runc-based shim
/// (`containerd.runc.v1.Options`), as far as they concern runc itself.
#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
    systemd_cgroup: bool,
    /// runc's JSON log, in the bundle.
    log: PathBuf,
}

#[derive(Debug)]
pub struct CreateOptions<'a> {
    pub bundle: &'a Path,
    pub pid_file: &'a Path,
    pub console_socket: Option<&'a Path>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
}

#[derive(Debug)]
pub struct ExecOptions<'a> {
    pub process: &'a Path,
    pub pid_file: &'a Path,
    pub console_socket: Option<&'a Path>,
}

impl Runc {
    /// `binary` empty means `runc` from PATH; `root` empty means the default
    /// root for `namespace`. runc's log goes to `log.json` in the bundle.
    pub fn new(binary: &str, root: &str, namespace: &str, systemd_cgroup: bool, bundle: &Path) -> Self {
        let binary = if binary.is_empty() { "runc" } else { binary };
        let root =
            if root.is_empty() { Path::new(DEFAULT_ROOT).join(namespace) } else { Path::new(root).join(namespace) };
        Self { binary: PathBuf::from(binary), root, systemd_cgroup, log: bundle.join("log.json") }
    }

    pub async fn create(&self, id: &str, opts: &CreateOptions<'_>, stdio: Stdio3) -> Result<(), Error> {
        let mut args = vec![os("create"), os("--bundle"), opts.bundle.into(), os("--pid-file"), opts.pid_file.into()];
        if let Some(socket) = opts.console_socket {
            args.extend([os("--console-socket"), socket.into()]);
        }
        if opts.no_pivot {
            args.push(os("--no-pivot"));
        }
        if opts.no_new_keyring {
            args.push(os("--no-new-keyring"));
        }
        args.push(id.into());
        self.exec_command("create", args, stdio, None).await.map(drop)
    }

    /// Dumps the container with CRIU. On failure CRIU's log stays in the
    /// work path and its first error line is in the error.
    pub async fn checkpoint(&self, id: &str, opts: &CheckpointOptions) -> Result<(), Error> {
        kerndat::ensure_cache().await;
        let env = criu_config_env(&opts.config, &opts.work_path)?;
        let status = match &opts.pages {
            Pages::Lazy { status: Some(fifo), .. } => Some(open_status_fifo(fifo)?),
            _ => None,
        };
        let result =
            self.exec_command_env("checkpoint", opts.args(id), Stdio3::Captured, None, &env, status.as_ref()).await;
        drop(status);
        result.map(drop).map_err(|e| with_criu_log(e, "checkpoint", &opts.work_path.join("dump.log")))
    }

    /// Restores a checkpointed container, detached, with `stdio` as the
    /// restored process's stdio where it was a pipe at dump time.
    pub async fn restore(&self, id: &str, opts: &RestoreOptions<'_>, stdio: Stdio3) -> Result<(), Error> {
        kerndat::ensure_cache().await;
        let env = criu_config_env(&opts.config, opts.work_path)?;
        let result = self.exec_command_env("restore", opts.args(id), stdio, None, &env, None).await;
        result.map(drop).map_err(|e| with_criu_log(e, "restore", &opts.work_path.join("restore.log")))
    }

    pub async fn start(&self, id: &str) -> Result<(), Error> {
        self.simple("start", vec![os("start"), id.into()]).await
    }

    pub async fn exec(&self, id: &str, opts: &ExecOptions<'_>, stdio: Stdio3) -> Result<(), Error> {
        let mut args = vec![
            os("exec"),
            os("--detach"),
            os("--process"),
            opts.process.into(),
            os("--pid-file"),
            opts.pid_file.into(),
        ];
        if let Some(socket) = opts.console_socket {
            args.extend([os("--console-socket"), socket.into()]);
        }
        args.push(id.into());
        self.exec_command("exec", args, stdio, None).await.map(drop)
    }

    /// Runs `argv` in the container as `ctr task exec` would (the spec's
    /// user, environment and working directory; no terminal) and waits for
    /// it to exit: runc exits with its status, and fails with its output.
    /// Its pid goes to `pid_file`, for whoever must kill it sooner.
    pub async fn exec_wait(&self, id: &str, argv: &[String], pid_file: &Path) -> Result<(), Error> {
        let mut args = vec![os("exec"), os("--pid-file"), pid_file.into(), id.into()];
        args.extend(argv.iter().map(OsString::from));
        self.exec_command("exec", args, Stdio3::Captured, None).await.map(drop)
    }

    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), Error> {
        let mut args = vec![os("kill")];
        if all {
            args.push(os("--all"));
        }
        args.extend([id.into(), signal.to_string().into()]);
        self.simple("kill", args).await
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<(), Error> {
        let mut args = vec![os("delete")];
        if force {
            args.push(os("--force"));
        }
        args.push(id.into());
        self.simple("delete", args).await
    }

    pub async fn pause(&self, id: &str) -> Result<(), Error> {
        self.simple("pause", vec![os("pause"), id.into()]).await
    }

    pub async fn resume(&self, id: &str) -> Result<(), Error> {
        self.simple("resume", vec![os("resume"), id.into()]).await
    }

    /// The pids of every process in the container.
    pub async fn ps(&self, id: &str) -> Result<Vec<u32>, Error> {
        let args = vec![os("ps"), os("--format"), os("json"), id.into()];
        let out = self.exec_command("ps", args, Stdio3::Captured, None).await?;
        let text = String::from_utf8_lossy(&out);
        // runc prints "null" for a container without processes.
        let pids: Option<Vec<u32>> =
            serde_json::from_str(text.trim()).map_err(|source| Error::Output { command: "ps", source })?;
        Ok(pids.unwrap_or_default())
    }

    /// Applies `resources`, the JSON form of an OCI `LinuxResources`.
    pub async fn update(&self, id: &str, resources: &[u8]) -> Result<(), Error> {
        let args = vec![os("update"), os("--resources"), os("-"), id.into()];
        self.exec_command("update", args, Stdio3::Captured, Some(resources)).await.map(drop)
    }

    async fn simple(&self, command: &'static str, args: Vec<OsString>) -> Result<(), Error> {
        self.exec_command(command, args, Stdio3::Captured, None).await.map(drop)
    }

    async fn exec_command(
        &self,
        command: &'static str,
        args: Vec<OsString>,
        stdio: Stdio3,
        input: Option<&[u8]>,
    ) -> Result<Vec<u8>, Error> {
        self.exec_command_env(command, args, stdio, input, &[], None).await
    }

    /// Runs runc with the global options in front of `args`, `env` added
    /// to its environment and `status` as its [`command::STATUS_FD`];
    /// returns stdout.
    async fn exec_command_env(
        &self,
        command: &'static str,
        args: Vec<OsString>,
        stdio: Stdio3,
        input: Option<&[u8]>,
        env: &[(&str, PathBuf)],
        status: Option<&std::fs::File>,
    ) -> Result<Vec<u8>, Error> {
        let log = LogFile::new(&self.log);
        let mut full = vec![
            os("--root"),
            self.root.clone().into(),
            os("--log"),
            log.path().into(),
            os("--log-format"),
            os("json"),
        ];
        if self.systemd_cgroup {
            full.push(os("--systemd-cgroup"));
        }
        full.extend(args);

        let mark = log.mark();
        let out = run(&self.binary, full, stdio, input, env, status).await?;
        if out.status == 0 {
            return Ok(out.stdout);
        }
        let message = log
            .last_error_since(mark)
            .or_else(|| non_empty(&out.stderr))
            .or_else(|| non_empty(&out.stdout))
            .unwrap_or_else(|| PRINTED_NOTHING.to_string());
        Err(classify(command, out.status, message))
    }
}

/// Opens the FIFO the caller reads a lazy dump's readiness from. Without
/// blocking: a FIFO nobody reads is the caller's mistake, not a reason to
/// hang the dump.
fn open_status_fifo(fifo: &Path) -> Result<std::fs::File, Error> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let not_usable =
        |why: String| Error::Config { message: format!("the status FIFO {} is not usable: {why}", fifo.display()) };
    let meta = std::fs::metadata(fifo).map_err(|e| not_usable(e.to_string()))?;
    if !meta.file_type().is_fifo() {
        return Err(not_usable("it is not a FIFO (mkfifo)".into()));
    }
    let file =
        std::fs::OpenOptions::new().write(true).custom_flags(nix::libc::O_NONBLOCK).open(fifo).map_err(|e| match e
            .raw_os_error()
        {
            Some(nix::libc::ENXIO) => not_usable("nobody has it open for reading".into()),
            _ => not_usable(e.to_string()),
        })?;
    // runc writes one byte; a blocking descriptor is what it expects.
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()))
        .map_err(|e| not_usable(e.to_string()))?;
    Ok(file)
}

/// Writes `config` into `work` as CRIU's configuration file, if it says
/// anything, and returns the environment that makes CRIU read it.
fn criu_config_env(config: &CriuConfig, work: &Path) -> Result<Vec<(&'static str, PathBuf)>, Error> {
    let text = match config.render() {
        Ok(Some(text)) => text,
        Ok(None) => return Ok(Vec::new()),
        Err(message) => return Err(Error::Config { message }),
    };
    let path = work.join("criu.conf");
    std::fs::write(&path, text).map_err(|source| Error::Config {
        message: format!("cannot write CRIU's configuration file {}: {source}", path.display()),
    })?;
    Ok(vec![("CRIU_CONFIG_FILE", path)])
}

/// Replaces runc's "criu failed ... see log" with the line CRIU logged.
fn with_criu_log(e: Error, command: &'static str, log: &Path) -> Error {
    let Error::Failed { .. } = e else { return e };
    let Ok(text) = std::fs::read_to_string(log) else { return e };
    match checkpoint::criu_errors(&text).into_iter().next() {
        Some(line) => {
            let sys_resource = caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SYS_RESOURCE);
            let hint = checkpoint::hint(&line, sys_resource.unwrap_or(true));
            Error::Criu { command, line, hint, log: log.to_path_buf() }
        }
        None => e,
    }
}

fn classify(command: &'static str, status: i32, message: String) -> Error {
    // runc has no machine-readable error kinds; these are its words for a
    // container or process that is already gone.
    const GONE: [&str; 3] = ["does not exist", "container not running", "process already finished"];
    if GONE.iter().any(|g| message.contains(g)) {
        Error::NotFound { command, message }
    } else {
        Error::Failed { command, status, message }
    }
}

/// runc's own messages often start with "runc create failed: ..." already.
fn failed(command: &str, message: &str) -> String {
    if message.starts_with(&format!("runc {command} failed")) {
        message.to_string()
    } else {
        format!("runc {command} failed: {message}")
    }
}

fn non_empty(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes).trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn os(s: &str) -> OsString {
    OsString::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_per_namespace() {
        let r = Runc::new("", "", "k8s.io", false, Path::new("/b"));
        assert_eq!(r.root, Path::new("/run/containerd/runc/k8s.io"));
        assert_eq!(r.binary, Path::new("runc"));
        let r = Runc::new("/opt/runc", "/var/run/alt", "default", true, Path::new("/b"));
        assert_eq!(r.root, Path::new("/var/run/alt/default"));
        assert_eq!(r.log, Path::new("/b/log.json"));
    }

    #[test]
    fn gone_containers_are_not_found() {
        assert!(matches!(classify("kill", 1, "container \"x\" does not exist".into()), Error::NotFound { .. }));
        assert!(matches!(classify("start", 1, "permission denied".into()), Error::Failed { .. }));
    }

    #[test]
    fn failure_messages_name_the_command_once() {
        let e = classify("create", 1, "runc create failed: unable to start container process".into());
        assert_eq!(e.to_string(), "runc create failed: unable to start container process (exit status 1)");
        let e = classify("pause", 1, "permission denied".into());
        assert_eq!(e.to_string(), "runc pause failed: permission denied (exit status 1)");
    }
}
