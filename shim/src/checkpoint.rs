//! What a Checkpoint RPC asks for, decoded into typed CRIU options.
//!
//! containerd sends its runc `CheckpointOptions` (ctr and the Go client do
//! for every runtime); CRI and nerdctl send nothing to runtimes other than
//! runc.v2, in which case the safe default applies: leave the container
//! running. This runtime also takes its own options, JSON under
//! [`MIGRATE_OPTIONS_TYPE`], which reach what containerd's message cannot
//! express: parent images, pre-dumps, a page server and lazy pages.

use std::path::{Path, PathBuf};

use containerd_shim::protos::{
    protobuf::{Message, well_known_types::any::Any},
    shim::oci::CheckpointOptions as RuncCheckpointOptions,
};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    runc::{CgroupsMode, CheckpointOptions, CriuConfig, CriuOptions, NetworkLock, Pages},
};

const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.CheckpointOptions";
pub const MIGRATE_OPTIONS_TYPE: &str = "io.containerd.migrate.v1.CheckpointOptions";

/// The CRIU options of a dump, kept beside its images so that the restore
/// uses the same ones: CRIU refuses, for example, to restore established
/// TCP connections without being told to.
pub const CRIU_OPTIONS_FILE: &str = "migrate-criu-options.json";

/// This runtime's own checkpoint options.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct MigrateOptions {
    exit: bool,
    image_path: Option<PathBuf>,
    work_path: Option<PathBuf>,
    parent_path: Option<PathBuf>,
    pre_dump: bool,
    page_server: Option<String>,
    lazy_pages: bool,
    tcp_established: bool,
    external_unix_sockets: bool,
    file_locks: bool,
    cgroups_mode: Option<String>,
    empty_namespaces: Vec<String>,
    /// "iptables" or "nftables"; by default nftables where CRIU can.
    network_lock: Option<String>,
}

/// Typed options for a dump of container `bundle`'s init to `path` (the
/// request's path, unless the options name an image path).
pub fn decode(any: Option<&Any>, path: &str, bundle: &Path, terminal: bool) -> Result<CheckpointOptions> {
    let mut opts = CheckpointOptions {
        image_path: PathBuf::from(path),
        work_path: bundle.join("criu-work"),
        parent_path: None,
        leave_running: true,
        pre_dump: false,
        pages: Pages::Local,
        criu: CriuOptions { shell_job: terminal, ..Default::default() },
        config: CriuConfig::default(),
    };
    match any.filter(|a| !a.type_url.is_empty()) {
        None => {}
        Some(any) if any.type_url.ends_with(RUNC_OPTIONS_TYPE) => {
            let runc = RuncCheckpointOptions::parse_from_bytes(&any.value).map_err(|e| {
                Error::InvalidArgument(format!("the checkpoint options ({RUNC_OPTIONS_TYPE}) do not decode: {e}"))
            })?;
            opts.leave_running = !runc.exit;
            set_path(&mut opts.image_path, &runc.image_path);
            set_path(&mut opts.work_path, &runc.work_path);
            opts.criu = CriuOptions {
                tcp_established: runc.open_tcp,
                external_unix_sockets: runc.external_unix_sockets,
                shell_job: runc.terminal || terminal,
                file_locks: runc.file_locks,
                cgroups_mode: cgroups_mode(&runc.cgroups_mode)?,
                empty_namespaces: runc.empty_namespaces,
            };
        }
        Some(any) if any.type_url.ends_with(MIGRATE_OPTIONS_TYPE) => {
            let m: MigrateOptions = serde_json::from_slice(&any.value).map_err(|e| {
                Error::InvalidArgument(format!(
                    "the checkpoint options ({MIGRATE_OPTIONS_TYPE}, JSON) are not valid: {e}"
                ))
            })?;
            opts.leave_running = !m.exit;
            if let Some(p) = m.image_path {
                opts.image_path = p;
            }
            if let Some(p) = m.work_path {
                opts.work_path = p;
            }
            opts.parent_path = m.parent_path;
            opts.pre_dump = m.pre_dump;
            opts.pages = match (m.page_server, m.lazy_pages) {
                (None, false) => Pages::Local,
                (Some(address), false) => Pages::PageServer(address),
                (Some(page_server), true) => Pages::Lazy { page_server },
                (None, true) => {
                    return Err(Error::InvalidArgument(
                        "lazy_pages needs page_server: the ADDRESS:PORT the restoring side pulls pages from".into(),
                    ));
                }
            };
            opts.criu = CriuOptions {
                tcp_established: m.tcp_established,
                external_unix_sockets: m.external_unix_sockets,
                shell_job: terminal,
                file_locks: m.file_locks,
                cgroups_mode: m.cgroups_mode.as_deref().map(cgroups_mode).transpose()?.flatten(),
                empty_namespaces: m.empty_namespaces,
            };
            opts.config.network_lock = m.network_lock.as_deref().map(network_lock).transpose()?;
        }
        Some(any) => {
            return Err(Error::InvalidArgument(format!(
                "checkpoint options of type {} are not understood; io.containerd.migrate.v1 takes \
                 {RUNC_OPTIONS_TYPE} or {MIGRATE_OPTIONS_TYPE}",
                any.type_url
            )));
        }
    }
    if opts.image_path.as_os_str().is_empty() {
        return Err(Error::InvalidArgument("the checkpoint has no image path to write to".into()));
    }
    if !opts.image_path.is_absolute() || !opts.work_path.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "checkpoint paths must be absolute (image path {}, work path {})",
            opts.image_path.display(),
            opts.work_path.display()
        )));
    }
    Ok(opts)
}

fn set_path(target: &mut PathBuf, value: &str) {
    if !value.is_empty() {
        *target = PathBuf::from(value);
    }
}

fn network_lock(s: &str) -> Result<NetworkLock> {
    NetworkLock::parse(s)
        .ok_or_else(|| Error::InvalidArgument(format!("network lock {s:?} is not one of iptables, nftables, skip")))
}

fn cgroups_mode(s: &str) -> Result<Option<CgroupsMode>> {
    if s.is_empty() {
        return Ok(None);
    }
    CgroupsMode::parse(s)
        .map(Some)
        .ok_or_else(|| Error::InvalidArgument(format!("cgroups mode {s:?} is not one of soft, full, strict, ignore")))
}

/// The part of [`CriuOptions`] that a restore must repeat.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct RestoreCriuOptions {
    pub tcp_established: bool,
    pub external_unix_sockets: bool,
    pub file_locks: bool,
    pub shell_job: bool,
}

impl From<&CriuOptions> for RestoreCriuOptions {
    fn from(c: &CriuOptions) -> Self {
        Self {
            tcp_established: c.tcp_established,
            external_unix_sockets: c.external_unix_sockets,
            file_locks: c.file_locks,
            shell_job: c.shell_job,
        }
    }
}

impl RestoreCriuOptions {
    pub fn to_criu(&self) -> CriuOptions {
        CriuOptions {
            tcp_established: self.tcp_established,
            external_unix_sockets: self.external_unix_sockets,
            file_locks: self.file_locks,
            shell_job: self.shell_job,
            ..Default::default()
        }
    }

    /// Reads what the dump recorded; a checkpoint made elsewhere (e.g. by
    /// runc.v2) has nothing recorded and is restored with CRIU's defaults.
    pub fn read(image: &Path) -> Result<Self> {
        match std::fs::read(image.join(CRIU_OPTIONS_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::InvalidArgument(format!(
                    "{} in the checkpoint is not valid: {e}",
                    image.join(CRIU_OPTIONS_FILE).display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::io(format!("read {}", image.join(CRIU_OPTIONS_FILE).display()))(e)),
        }
    }

    pub fn write(&self, image: &Path) -> Result<()> {
        let path = image.join(CRIU_OPTIONS_FILE);
        let json = serde_json::to_vec(self).expect("plain struct serialises");
        std::fs::write(&path, json).map_err(Error::io(format!("write {}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        Any { type_url: type_url.into(), value, ..Default::default() }
    }

    #[test]
    fn no_options_means_leave_running_into_the_request_path() {
        let o = decode(None, "/tmp/ckpt", Path::new("/b"), false).unwrap();
        assert!(o.leave_running);
        assert_eq!(o.image_path, Path::new("/tmp/ckpt"));
        assert_eq!(o.work_path, Path::new("/b/criu-work"));
        assert_eq!(o.pages, Pages::Local);
    }

    #[test]
    fn runc_options_are_honoured() {
        let runc = RuncCheckpointOptions {
            exit: true,
            open_tcp: true,
            image_path: "/img".into(),
            cgroups_mode: "soft".into(),
            empty_namespaces: vec!["network".into()],
            ..Default::default()
        };
        let a = any(&format!("type.googleapis.com/{RUNC_OPTIONS_TYPE}"), runc.write_to_bytes().unwrap());
        let o = decode(Some(&a), "/tmp/ignored", Path::new("/b"), true).unwrap();
        assert!(!o.leave_running);
        assert_eq!(o.image_path, Path::new("/img"));
        assert!(o.criu.tcp_established && o.criu.shell_job);
        assert_eq!(o.criu.cgroups_mode, Some(CgroupsMode::Soft));
        assert_eq!(o.criu.empty_namespaces, vec!["network".to_string()]);
    }

    #[test]
    fn migrate_options_reach_lazy_pages() {
        let json = br#"{"page_server":"10.1.0.2:27000","lazy_pages":true,"parent_path":"../v1"}"#;
        let o = decode(Some(&any(MIGRATE_OPTIONS_TYPE, json.to_vec())), "/img", Path::new("/b"), false).unwrap();
        assert_eq!(o.pages, Pages::Lazy { page_server: "10.1.0.2:27000".into() });
        assert_eq!(o.parent_path.as_deref(), Some(Path::new("../v1")));
    }

    #[test]
    fn bad_options_are_explained() {
        let e =
            decode(Some(&any(MIGRATE_OPTIONS_TYPE, br#"{"lazy_pages":true}"#.to_vec())), "/i", Path::new("/b"), false)
                .unwrap_err()
                .to_string();
        assert!(e.contains("lazy_pages needs page_server"), "{e}");
        let e = decode(Some(&any(MIGRATE_OPTIONS_TYPE, br#"{"leave":1}"#.to_vec())), "/i", Path::new("/b"), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
        let e = decode(
            Some(&any(MIGRATE_OPTIONS_TYPE, br#"{"network_lock":"ebpf"}"#.to_vec())),
            "/i",
            Path::new("/b"),
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(r#""ebpf" is not one of iptables, nftables, skip"#), "{e}");
        let e = decode(Some(&any("foo.Bar", vec![])), "/i", Path::new("/b"), false).unwrap_err().to_string();
        assert!(e.contains("foo.Bar"), "{e}");
        let e = decode(None, "relative", Path::new("/b"), false).unwrap_err().to_string();
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn restore_options_round_trip_through_the_image() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RestoreCriuOptions::read(dir.path()).unwrap(), RestoreCriuOptions::default());
        let o = RestoreCriuOptions { tcp_established: true, ..Default::default() };
        o.write(dir.path()).unwrap();
        assert_eq!(RestoreCriuOptions::read(dir.path()).unwrap(), o);
    }
}
