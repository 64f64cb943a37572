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
    capture::{After, Capture, Existing, Increment, Memory, Parent, Route, StoreTarget},
    error::{Error, Result},
    runc::{CgroupsMode, CriuOptions, CriuTls, NetworkLock},
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
    /// TLS files for the connection to the page server.
    page_server_tls: Option<CriuTls>,
    lazy_pages: bool,
    /// With `lazy_pages`: a FIFO the caller reads; a zero byte arrives
    /// once the page server is up and the images are complete (runc's
    /// `--status-fd`), long before the call returns.
    status_fifo: Option<PathBuf>,
    tcp_established: bool,
    external_unix_sockets: bool,
    file_locks: bool,
    cgroups_mode: Option<String>,
    empty_namespaces: Vec<String>,
    /// "iptables" or "nftables"; by default nftables where CRIU can.
    network_lock: Option<String>,
    /// Commit the checkpoint into the checkpoint store at this directory
    /// (`migratectl checkpoint create`): the call returns once it is there.
    store: Option<PathBuf>,
    /// With `store`: the checkpoint's id, which must not be taken.
    id: Option<String>,
    /// With `store`: where CRIU dumps what is not memory (RAM by default).
    staging: Option<PathBuf>,
    /// With `store`: CRIU dumps straight into the store.
    direct: bool,
}

/// The capture a Checkpoint RPC asks for, of container `bundle`'s init,
/// into `path` (the request's path, unless the options name an image path
/// or a store).
pub fn decode(any: Option<&Any>, path: &str, bundle: &Path, terminal: bool) -> Result<(Capture, Memory)> {
    let mut memory = Memory::Directory(PathBuf::from(path));
    let mut capture = Capture {
        after: After::LeaveRunning,
        increment: Increment::Full,
        criu: CriuOptions { shell_job: terminal, ..Default::default() },
        network_lock: None,
        work_path: bundle.join("criu-work"),
        tls: None,
    };
    match any.filter(|a| !a.type_url.is_empty()) {
        None => {}
        Some(any) if any.type_url.ends_with(RUNC_OPTIONS_TYPE) => {
            let runc = RuncCheckpointOptions::parse_from_bytes(&any.value).map_err(|e| {
                Error::InvalidArgument(format!("the checkpoint options ({RUNC_OPTIONS_TYPE}) do not decode: {e}"))
            })?;
            capture.after = after(runc.exit);
            if !runc.image_path.is_empty() {
                memory = Memory::Directory(PathBuf::from(&runc.image_path));
            }
            set_path(&mut capture.work_path, &runc.work_path);
            capture.criu = CriuOptions {
                tcp_established: runc.open_tcp,
                external_unix_sockets: runc.external_unix_sockets,
                shell_job: runc.terminal || terminal,
                file_locks: runc.file_locks,
                cgroups_mode: cgroups_mode(&runc.cgroups_mode)?,
                empty_namespaces: runc.empty_namespaces,
                ..Default::default()
            };
        }
        Some(any) if any.type_url.ends_with(MIGRATE_OPTIONS_TYPE) => {
            let m: MigrateOptions = serde_json::from_slice(&any.value).map_err(|e| {
                Error::InvalidArgument(format!(
                    "the checkpoint options ({MIGRATE_OPTIONS_TYPE}, JSON) are not valid: {e}"
                ))
            })?;
            capture.after = after(m.exit);
            if let Some(p) = &m.work_path {
                capture.work_path = p.clone();
            }
            capture.criu = CriuOptions {
                tcp_established: m.tcp_established,
                external_unix_sockets: m.external_unix_sockets,
                shell_job: terminal,
                file_locks: m.file_locks,
                cgroups_mode: m.cgroups_mode.as_deref().map(cgroups_mode).transpose()?.flatten(),
                empty_namespaces: m.empty_namespaces.clone(),
                ..Default::default()
            };
            capture.network_lock = m.network_lock.as_deref().map(network_lock).transpose()?;
            if m.page_server_tls.is_some() && m.page_server.is_none() {
                return Err(Error::InvalidArgument(
                    "page_server_tls needs page_server: the ADDRESS:PORT the memory goes to".into(),
                ));
            }
            capture.tls = m.page_server_tls.clone();
            let parent = m.parent_path.clone().map(Parent::Images);
            capture.increment = match (m.pre_dump, parent) {
                (false, None) => Increment::Full,
                (true, parent) => Increment::PreDump(parent),
                (false, Some(parent)) => Increment::OnParent(parent),
            };
            memory = match m.store.clone() {
                Some(store) => store_target(m, store)?,
                None => {
                    let images = m.image_path.unwrap_or_else(|| PathBuf::from(path));
                    if m.status_fifo.is_some() && !m.lazy_pages {
                        return Err(Error::InvalidArgument(
                            "status_fifo needs lazy_pages: only a lazy dump is ready before it returns".into(),
                        ));
                    }
                    match (m.page_server, m.lazy_pages) {
                        (None, false) => Memory::Directory(images),
                        (Some(address), false) => Memory::PageServer { images, address },
                        (Some(page_server), true) => Memory::Lazy { images, page_server, status: m.status_fifo },
                        (None, true) => {
                            return Err(Error::InvalidArgument(
                                "lazy_pages needs page_server: the ADDRESS:PORT the restoring side pulls pages from"
                                    .into(),
                            ));
                        }
                    }
                }
            };
        }
        Some(any) => {
            return Err(Error::InvalidArgument(format!(
                "checkpoint options of type {} are not understood; io.containerd.migrate.v1 takes \
                 {RUNC_OPTIONS_TYPE} or {MIGRATE_OPTIONS_TYPE}",
                any.type_url
            )));
        }
    }
    let target = match &memory {
        Memory::Directory(images) | Memory::PageServer { images, .. } | Memory::Lazy { images, .. } => images,
        Memory::Store(target) => &target.store,
    };
    if target.as_os_str().is_empty() {
        return Err(Error::InvalidArgument("the checkpoint has no image path to write to".into()));
    }
    if !target.is_absolute() || !capture.work_path.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "checkpoint paths must be absolute (image path or store {}, work path {})",
            target.display(),
            capture.work_path.display()
        )));
    }
    Ok((capture, memory))
}

fn after(exit: bool) -> After {
    if exit { After::Exit } else { After::LeaveRunning }
}

/// A committed checkpoint `m.id` in `store`, as `migratectl checkpoint
/// create` asks for it: with the rootfs diff, never replacing one.
fn store_target(m: MigrateOptions, store: PathBuf) -> Result<Memory> {
    let not_with_store = [
        ("image_path", m.image_path.is_some()),
        ("parent_path", m.parent_path.is_some()),
        ("pre_dump", m.pre_dump),
        ("page_server", m.page_server.is_some()),
        ("lazy_pages", m.lazy_pages),
        ("status_fifo", m.status_fifo.is_some()),
    ];
    if let Some((name, _)) = not_with_store.iter().find(|(_, set)| *set) {
        return Err(Error::Unsupported(format!("{name} together with store")));
    }
    let id = m.id.ok_or_else(|| Error::InvalidArgument("store needs id: the checkpoint's id in the store".into()))?;
    let route = match (m.direct, m.staging) {
        (true, Some(_)) => {
            return Err(Error::InvalidArgument("direct and staging exclude each other".into()));
        }
        (true, None) => Route::Direct,
        (false, Some(root)) => {
            if !migrate_oci::ram::is_ram_backed(&root).unwrap_or(true) {
                log::warn!(
                    "{} is not on a RAM-backed file system (tmpfs, ramfs): the container stays frozen while CRIU \
                     writes there",
                    root.display()
                );
            }
            Route::Tapped { root }
        }
        (false, None) => match migrate_oci::ram::staging_root() {
            Some(root) => Route::Tapped { root },
            None => {
                log::warn!(
                    "no RAM-backed staging directory (tmpfs, ramfs): CRIU dumps straight into the store, and the \
                     container stays frozen while it writes there"
                );
                Route::Direct
            }
        },
    };
    Ok(Memory::Store(StoreTarget { store, id, route, rootfs_diff: true, existing: Existing::Refuse, ready: None }))
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
    pub tcp_close: bool,
    /// The dump left its memory with the source (post-copy): the restore
    /// needs a page source ([`crate::lazy_pages`]).
    pub lazy_pages: bool,
}

impl From<&CriuOptions> for RestoreCriuOptions {
    fn from(c: &CriuOptions) -> Self {
        Self {
            tcp_established: c.tcp_established,
            external_unix_sockets: c.external_unix_sockets,
            file_locks: c.file_locks,
            shell_job: c.shell_job,
            tcp_close: c.tcp_close,
            lazy_pages: false,
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
            tcp_close: self.tcp_close,
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
        let (o, memory) = decode(None, "/tmp/ckpt", Path::new("/b"), false).unwrap();
        assert_eq!(o.after, After::LeaveRunning);
        assert_eq!(memory, Memory::Directory("/tmp/ckpt".into()));
        assert_eq!(o.work_path, Path::new("/b/criu-work"));
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
        let (o, memory) = decode(Some(&a), "/tmp/ignored", Path::new("/b"), true).unwrap();
        assert_eq!(o.after, After::Exit);
        assert_eq!(memory, Memory::Directory("/img".into()));
        assert!(o.criu.tcp_established && o.criu.shell_job);
        assert_eq!(o.criu.cgroups_mode, Some(CgroupsMode::Soft));
        assert_eq!(o.criu.empty_namespaces, vec!["network".to_string()]);
    }

    #[test]
    fn page_server_tls_reaches_the_capture() {
        let json = br#"{"page_server":"10.1.0.2:27000","page_server_tls":{"cacert":"/t/ca.pem","cert":"/t/h.pem","key":"/t/k.pem"}}"#;
        let (capture, memory) =
            decode(Some(&any(MIGRATE_OPTIONS_TYPE, json.to_vec())), "/img", Path::new("/b"), false).unwrap();
        assert_eq!(memory, Memory::PageServer { images: "/img".into(), address: "10.1.0.2:27000".into() });
        assert_eq!(capture.tls.unwrap().cert, PathBuf::from("/t/h.pem"));
        let e = decode(
            Some(&any(MIGRATE_OPTIONS_TYPE, br#"{"page_server_tls":{"cacert":"/a","cert":"/b","key":"/c"}}"#.to_vec())),
            "/img",
            Path::new("/b"),
            false,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("page_server_tls needs page_server"), "{e}");
    }

    #[test]
    fn migrate_options_reach_lazy_pages() {
        let json = br#"{"page_server":"10.1.0.2:27000","lazy_pages":true,"parent_path":"../v1"}"#;
        let (o, memory) =
            decode(Some(&any(MIGRATE_OPTIONS_TYPE, json.to_vec())), "/img", Path::new("/b"), false).unwrap();
        assert_eq!(memory, Memory::Lazy { images: "/img".into(), page_server: "10.1.0.2:27000".into(), status: None });
        assert_eq!(o.increment, Increment::OnParent(Parent::Images("../v1".into())));
    }

    #[test]
    fn migrate_options_ask_for_a_committed_checkpoint() {
        let json = br#"{"store":"/var/lib/cp","id":"web-1","exit":true,"tcp_established":true,"file_locks":true,
            "direct":true}"#;
        let (o, memory) = decode(Some(&any(MIGRATE_OPTIONS_TYPE, json.to_vec())), "", Path::new("/b"), false).unwrap();
        assert_eq!(o.after, After::Exit);
        assert!(o.criu.tcp_established && o.criu.file_locks);
        assert_eq!(
            memory,
            Memory::Store(StoreTarget {
                store: "/var/lib/cp".into(),
                id: "web-1".into(),
                route: Route::Direct,
                rootfs_diff: true,
                existing: Existing::Refuse,
                ready: None,
            })
        );
        let staged = br#"{"store":"/var/lib/cp","id":"web-1","staging":"/dev/shm/s"}"#;
        let (_, memory) =
            decode(Some(&any(MIGRATE_OPTIONS_TYPE, staged.to_vec())), "", Path::new("/b"), false).unwrap();
        assert!(
            matches!(memory, Memory::Store(StoreTarget { route: Route::Tapped { root }, .. }) if root == Path::new("/dev/shm/s"))
        );
        for (json, expected) in [
            (&br#"{"store":"/var/lib/cp"}"#[..], "store needs id"),
            (br#"{"store":"/var/lib/cp","id":"x","pre_dump":true}"#, "pre_dump together with store"),
            (br#"{"store":"/var/lib/cp","id":"x","direct":true,"staging":"/s"}"#, "exclude each other"),
            (br#"{"store":"cp","id":"x"}"#, "absolute"),
        ] {
            let e = decode(Some(&any(MIGRATE_OPTIONS_TYPE, json.to_vec())), "", Path::new("/b"), false)
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{e}");
        }
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
