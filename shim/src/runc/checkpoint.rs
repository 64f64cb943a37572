//! Typed options for `runc checkpoint` and `runc restore`, i.e. for CRIU.
//!
//! Everything runc offers is here from the start, including what live
//! migration needs later (page server, lazy pages, parent images for
//! incremental dumps), so that callers never assemble flags by hand.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

/// CRIU's handling of cgroups (`--manage-cgroups-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupsMode {
    Soft,
    Full,
    Strict,
    Ignore,
}

impl CgroupsMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "soft" => Some(Self::Soft),
            "full" => Some(Self::Full),
            "strict" => Some(Self::Strict),
            "ignore" => Some(Self::Ignore),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Soft => "soft",
            Self::Full => "full",
            Self::Strict => "strict",
            Self::Ignore => "ignore",
        }
    }
}

/// What dump and restore must agree on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CriuOptions {
    /// Checkpoint established TCP connections (`--tcp-established`).
    pub tcp_established: bool,
    /// Allow external unix sockets (`--ext-unix-sk`).
    pub external_unix_sockets: bool,
    /// The process has a terminal (`--shell-job`).
    pub shell_job: bool,
    /// Checkpoint file locks (`--file-locks`).
    pub file_locks: bool,
    pub cgroups_mode: Option<CgroupsMode>,
    /// Namespaces to leave empty and recreate on restore (`--empty-ns`),
    /// e.g. "network" to restore a clone into a fresh network namespace.
    pub empty_namespaces: Vec<String>,
    /// Connected TCP sockets are dumped without their state and restored
    /// closed (`tcp-close`; runc has no flag, so it goes into
    /// [`CriuConfig`]): for checkpoints restored only as new containers,
    /// whose connections could not continue anyway.
    pub tcp_close: bool,
}

impl CriuOptions {
    fn push_args(&self, args: &mut Vec<OsString>) {
        flag(args, self.tcp_established, "--tcp-established");
        flag(args, self.external_unix_sockets, "--ext-unix-sk");
        flag(args, self.shell_job, "--shell-job");
        flag(args, self.file_locks, "--file-locks");
        if let Some(mode) = self.cgroups_mode {
            args.extend(["--manage-cgroups-mode".into(), mode.as_str().into()]);
        }
        for ns in &self.empty_namespaces {
            args.extend(["--empty-ns".into(), ns.into()]);
        }
    }
}

/// How CRIU keeps packets away from the container's network namespace
/// while it dumps (`--network-lock`). A restore locks the same way as the
/// dump did: CRIU records the method in the images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkLock {
    /// CRIU's default: rules loaded with `iptables-restore`, a process per
    /// change.
    Iptables,
    /// Rules set in-process through libnftables.
    Nftables,
    /// No lock (CRIU 3.19 and later), for dumps whose restores cannot carry
    /// on the container's connections anyway.
    Skip,
}

impl NetworkLock {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "iptables" => Some(Self::Iptables),
            "nftables" => Some(Self::Nftables),
            "skip" => Some(Self::Skip),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
            Self::Skip => "skip",
        }
    }
}

/// CRIU settings runc has no flag for. They reach CRIU in a configuration
/// file named by `CRIU_CONFIG_FILE`, which CRIU reads in runc's swrk mode
/// as well; an operator's `/etc/criu/runc.conf` is read after it and wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CriuConfig {
    pub network_lock: Option<NetworkLock>,
    /// A program CRIU runs at every stage, the stage's name in
    /// `CRTOOLS_SCRIPT_ACTION`. A failure at "post-restore" aborts a restore
    /// before the restored processes run; at other stages CRIU only logs it.
    pub action_script: Option<PathBuf>,
    /// [`CriuOptions::tcp_close`].
    pub tcp_close: bool,
    /// TLS for the connection to a page server: runc has no flags for it,
    /// CRIU reads it from the configuration file.
    pub tls: Option<CriuTls>,
}

/// The files of a TLS connection between CRIU and a page server (PEM):
/// each side proves a certificate of the same CA.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriuTls {
    pub cacert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CriuConfig {
    /// The file's text, or None when there is nothing to say.
    pub fn render(&self) -> Result<Option<String>, String> {
        let mut text = String::new();
        if let Some(lock) = self.network_lock {
            text.push_str(&format!("network-lock {}\n", lock.as_str()));
        }
        if self.tcp_close {
            text.push_str("tcp-close\n");
        }
        if let Some(tls) = &self.tls {
            text.push_str("tls\n");
            for (option, path) in [("tls-cacert", &tls.cacert), ("tls-cert", &tls.cert), ("tls-key", &tls.key)] {
                text.push_str(&format!("{option} \"{}\"\n", quotable(path)?));
            }
        }
        if let Some(script) = &self.action_script {
            text.push_str(&format!("action-script \"{}\"\n", quotable(script)?));
        }
        Ok((!text.is_empty()).then_some(text))
    }
}

/// `path` as a quoted value of a CRIU configuration file, which has no
/// escapes.
fn quotable(path: &Path) -> Result<&str, String> {
    path.to_str()
        .filter(|p| !p.contains(['"', '\\', '\n']))
        .ok_or_else(|| format!("the path {} cannot be written in a CRIU configuration file", path.display()))
}

/// Where a dump's memory pages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pages {
    /// Into the image directory with everything else.
    Local,
    /// Streamed to a CRIU page server at "ADDRESS:PORT".
    PageServer(String),
    /// Served on demand from the source after restore (post-copy): runc
    /// keeps a page server at "ADDRESS:PORT" until the restored side has
    /// pulled every page; the dump returns only then. runc writes a zero
    /// byte into the `status` FIFO once the page server is up, which is
    /// when the images are complete and the restore may begin.
    Lazy { page_server: String, status: Option<PathBuf> },
}

#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    pub image_path: PathBuf,
    pub work_path: PathBuf,
    /// Images of an earlier (pre-)dump this one is incremental against.
    pub parent_path: Option<PathBuf>,
    /// Keep the container running after the dump; otherwise CRIU kills it.
    pub leave_running: bool,
    /// Only dump memory, for pre-copy iterations (needs soft-dirty tracking).
    pub pre_dump: bool,
    pub pages: Pages,
    pub criu: CriuOptions,
    pub config: CriuConfig,
}

impl CheckpointOptions {
    pub fn args(&self, id: &str) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "checkpoint".into(),
            "--image-path".into(),
            self.image_path.clone().into(),
            "--work-path".into(),
            self.work_path.clone().into(),
        ];
        if let Some(parent) = &self.parent_path {
            args.extend(["--parent-path".into(), parent.clone().into()]);
        }
        flag(&mut args, self.leave_running, "--leave-running");
        flag(&mut args, self.pre_dump, "--pre-dump");
        match &self.pages {
            Pages::Local => {}
            Pages::PageServer(address) => args.extend(["--page-server".into(), address.into()]),
            Pages::Lazy { page_server, status } => {
                args.extend(["--lazy-pages".into(), "--page-server".into(), page_server.into()]);
                if status.is_some() {
                    args.extend(["--status-fd".into(), super::command::STATUS_FD.to_string().into()]);
                }
            }
        }
        self.criu.push_args(&mut args);
        args.push(id.into());
        args
    }
}

#[derive(Debug)]
pub struct RestoreOptions<'a> {
    pub bundle: &'a Path,
    pub image_path: &'a Path,
    pub work_path: &'a Path,
    pub pid_file: &'a Path,
    pub console_socket: Option<&'a Path>,
    pub no_pivot: bool,
    /// Fetch memory pages on demand from a lazy-pages daemon (post-copy).
    pub lazy_pages: bool,
    pub criu: CriuOptions,
    pub config: CriuConfig,
}

impl RestoreOptions<'_> {
    pub fn args(&self, id: &str) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "restore".into(),
            "--detach".into(),
            "--bundle".into(),
            self.bundle.into(),
            "--image-path".into(),
            self.image_path.into(),
            "--work-path".into(),
            self.work_path.into(),
            "--pid-file".into(),
            self.pid_file.into(),
        ];
        if let Some(socket) = self.console_socket {
            args.extend(["--console-socket".into(), socket.into()]);
        }
        flag(&mut args, self.no_pivot, "--no-pivot");
        flag(&mut args, self.lazy_pages, "--lazy-pages");
        self.criu.push_args(&mut args);
        args.push(id.into());
        args
    }
}

fn flag(args: &mut Vec<OsString>, on: bool, name: &str) {
    if on {
        args.push(name.into());
    }
}

/// Errors CRIU logs on every run here that are no cause of anything: it
/// cannot raise its own open-files limit without CAP_SYS_RESOURCE.
const HARMLESS: [&str; 1] = ["Can't setup RLIMIT_NOFILE"];

/// The CRIU lines that explain a failure: every `Error` line of the log,
/// first one first, since CRIU's first error is usually the cause and the
/// rest its consequences.
pub fn criu_errors(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("Error (") || l.contains("Error:"))
        .filter(|l| !HARMLESS.iter().any(|h| l.contains(h)))
        .map(|l| l.trim().to_string())
        .collect()
}

/// What to do about CRIU's error `line` where its cause lies outside CRIU
/// and is known; `sys_resource` is whether the shim has CAP_SYS_RESOURCE.
pub fn hint(line: &str, sys_resource: bool) -> Option<&'static str> {
    // prlimit(2) of another process needs the same uids or
    // CAP_SYS_RESOURCE, which some sandboxes withhold from root.
    (line.contains("Can't get rlimit") && !sys_resource).then_some(
        "CRIU reads the resource limits of every process it dumps, which for a process of another user than \
         root needs CAP_SYS_RESOURCE, and the shim runs without it: give containerd, whose capabilities its \
         shims inherit, CAP_SYS_RESOURCE, or run the container's processes as root",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_capability_is_named() {
        let line = "(00.017455) Error (criu/cr-dump.c:389): Can't get rlimit 0: Operation not permitted";
        assert!(hint(line, false).unwrap().contains("give containerd"));
        assert_eq!(hint(line, true), None);
        assert_eq!(hint("(00.1) Error (criu/files.c:1): something else", false), None);
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn checkpoint_flags() {
        let opts = CheckpointOptions {
            image_path: "/img".into(),
            work_path: "/work".into(),
            parent_path: Some("../v1".into()),
            leave_running: true,
            pre_dump: false,
            pages: Pages::Lazy { page_server: "10.0.0.1:27".into(), status: None },
            criu: CriuOptions {
                tcp_established: true,
                cgroups_mode: Some(CgroupsMode::Soft),
                empty_namespaces: vec!["network".into()],
                ..Default::default()
            },
            config: CriuConfig::default(),
        };
        assert_eq!(
            strings(opts.args("c1")).join(" "),
            "checkpoint --image-path /img --work-path /work --parent-path ../v1 --leave-running \
             --lazy-pages --page-server 10.0.0.1:27 --tcp-established \
             --manage-cgroups-mode soft --empty-ns network c1"
        );
    }

    #[test]
    fn restore_flags() {
        let opts = RestoreOptions {
            bundle: Path::new("/b"),
            image_path: Path::new("/img"),
            work_path: Path::new("/w"),
            pid_file: Path::new("/b/init.pid"),
            console_socket: None,
            no_pivot: false,
            lazy_pages: false,
            criu: CriuOptions { shell_job: true, ..Default::default() },
            config: CriuConfig::default(),
        };
        assert_eq!(
            strings(opts.args("c1")).join(" "),
            "restore --detach --bundle /b --image-path /img --work-path /w --pid-file /b/init.pid --shell-job c1"
        );
    }

    #[test]
    fn criu_errors_are_quoted_in_order() {
        let log = "(00.000) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n(00.001) Dumping\n(00.002) Error (criu/sockets.c:123): sockets: Can't get 1:16 opt: Operation not supported\n(00.003) Error (criu/cr-dump.c:2000): Dumping FAILED.\n";
        let errors = criu_errors(log);
        assert_eq!(errors.len(), 2);
        assert!(errors[0].contains("Can't get 1:16 opt"));
    }

    #[test]
    fn config_file_says_only_what_is_set() {
        assert_eq!(CriuConfig::default().render(), Ok(None));
        let config = CriuConfig {
            network_lock: Some(NetworkLock::Nftables),
            action_script: Some("/run/b/criu-restore-work/gate".into()),
            tcp_close: true,
            tls: Some(CriuTls { cacert: "/t/ca.pem".into(), cert: "/t/h1.pem".into(), key: "/t/h1-key.pem".into() }),
        };
        assert_eq!(
            config.render().unwrap().unwrap(),
            "network-lock nftables\ntcp-close\ntls\ntls-cacert \"/t/ca.pem\"\ntls-cert \"/t/h1.pem\"\n\
             tls-key \"/t/h1-key.pem\"\naction-script \"/run/b/criu-restore-work/gate\"\n"
        );
        for (name, lock) in
            [("iptables", NetworkLock::Iptables), ("nftables", NetworkLock::Nftables), ("skip", NetworkLock::Skip)]
        {
            assert_eq!(NetworkLock::parse(name), Some(lock));
            let config = CriuConfig { network_lock: Some(lock), ..Default::default() };
            assert_eq!(config.render().unwrap().unwrap(), format!("network-lock {name}\n"));
        }
        assert_eq!(NetworkLock::parse("none"), None, "CRIU's alias is not this API's");
        let unquotable = CriuConfig { action_script: Some("/a\"b".into()), ..Default::default() };
        assert!(unquotable.render().unwrap_err().contains("/a\"b"));
    }

    #[test]
    fn cgroups_modes_parse() {
        assert_eq!(CgroupsMode::parse("strict"), Some(CgroupsMode::Strict));
        assert_eq!(CgroupsMode::parse("bogus"), None);
    }
}
