//! Rebuilding a checkpoint directory from one version.

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
};

use super::{
    ContainerRef, VersionStore,
    crypto::{self, ChunkCipher},
    error::{Result, VersionError},
    manifest::{VERSION_MEDIA_TYPE, VERSION_SCHEMA_VERSION, VersionManifest},
};
use crate::{
    Checkpoint,
    durable::{rename_noreplace, unique_suffix},
    layout,
};

/// Reads and checks the manifest of version `version` of `container`.
pub fn read_manifest(store: &dyn VersionStore, container: &ContainerRef, version: u64) -> Result<VersionManifest> {
    let bytes = store
        .get_manifest(container, version)?
        .ok_or_else(|| VersionError::VersionNotFound { container: container.clone(), version })?;
    let bad = |reason: String| VersionError::BadVersionManifest { container: container.clone(), version, reason };
    let manifest: VersionManifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if manifest.schema_version != VERSION_SCHEMA_VERSION || manifest.media_type != VERSION_MEDIA_TYPE {
        return Err(bad(format!(
            "schemaVersion {} of {:?}, where this containerd-migrate reads schemaVersion {VERSION_SCHEMA_VERSION} \
             of {VERSION_MEDIA_TYPE}",
            manifest.schema_version, manifest.media_type
        )));
    }
    if manifest.namespace != container.namespace || manifest.container != container.id || manifest.version != version {
        return Err(bad(format!(
            "it is the manifest of version {} of container {}/{}",
            manifest.version, manifest.namespace, manifest.container
        )));
    }
    Ok(manifest)
}

/// Rebuilds version `version` of `container` as the checkpoint directory
/// `dest` (which must not exist) and verifies it. The files are written into
/// a sibling temporary directory, manifest.json last, checked with
/// [`Checkpoint::verify`] and renamed to `dest`: on any error nothing is left
/// at `dest`, and the error names the version and the file and chunk at
/// fault, so that the caller can fall back to the previous version.
pub fn materialize(
    store: &dyn VersionStore,
    container: &ContainerRef,
    version: u64,
    cipher: Option<&ChunkCipher>,
    dest: &Path,
) -> Result<Checkpoint> {
    let manifest = read_manifest(store, container, version)?;
    match (&manifest.encryption, cipher) {
        (None, None) => {}
        (Some(e), None) => {
            return Err(VersionError::KeyNeeded { container: container.clone(), version, key_id: e.key_id.clone() });
        }
        (None, Some(_)) => return Err(VersionError::NotEncrypted { container: container.clone(), version }),
        (Some(e), Some(c)) if e.key_id != c.key_id() => {
            return Err(VersionError::WrongKey {
                container: container.clone(),
                version,
                expected: e.key_id.clone(),
                found: c.key_id().to_owned(),
            });
        }
        (Some(_), Some(_)) => {}
    }
    if dest.symlink_metadata().is_ok() {
        return Err(VersionError::DestinationExists { path: dest.to_owned() });
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = dest.file_name().map_or("checkpoint".into(), |n| n.to_string_lossy().into_owned());
    let tmp = parent.join(format!(".{name}.materialize-{}", unique_suffix()));
    std::fs::create_dir(&tmp).map_err(VersionError::io("create directory", &tmp))?;
    let result = write_files(store, container, &manifest, cipher, &tmp).and_then(|()| {
        let rebuilt = Checkpoint::open(&tmp).and_then(|cp| cp.verify());
        rebuilt.map_err(|source| VersionError::Rebuilt {
            container: container.clone(),
            version,
            source: Box::new(source),
        })
    });
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if let Err(e) = rename_noreplace(&tmp, dest) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
            VersionError::DestinationExists { path: dest.to_owned() }
        } else {
            VersionError::Io { op: "rename into place", path: dest.to_owned(), source: e }
        });
    }
    sync_dir(parent)?;
    Checkpoint::open(dest).map_err(|source| VersionError::Rebuilt {
        container: container.clone(),
        version,
        source: Box::new(source),
    })
}

fn write_files(
    store: &dyn VersionStore,
    container: &ContainerRef,
    manifest: &VersionManifest,
    cipher: Option<&ChunkCipher>,
    root: &Path,
) -> Result<()> {
    let version = manifest.version;
    let mut dirs: Vec<PathBuf> = vec![root.to_owned()];
    // manifest.json last, whatever the order in the version's manifest: a
    // directory interrupted mid-way is then never a checkpoint.
    let (last, rest): (Vec<_>, Vec<_>) = manifest.files.iter().partition(|f| f.path == layout::MANIFEST_FILE);
    for file in rest.into_iter().chain(last) {
        let path = root.join(&file.path);
        let dir = path.parent().expect("a file in the checkpoint has a directory");
        if !dirs.iter().any(|d| d == dir) {
            std::fs::create_dir_all(dir).map_err(VersionError::io("create directory", dir))?;
            dirs.push(dir.to_owned());
        }
        let mut out = File::create_new(&path).map_err(VersionError::io("create", &path))?;
        for chunk in &file.chunks {
            let fault = |missing: bool| {
                let (container, path, id) = (container.clone(), file.path.clone(), chunk.id);
                if missing {
                    VersionError::ChunkMissing { container, version, path, id }
                } else {
                    VersionError::ChunkDamaged { container, version, path, id }
                }
            };
            let blob = store.get_chunk(&chunk.id)?.ok_or_else(|| fault(true))?;
            let plain = crypto::open(cipher, &chunk.id, blob).ok_or_else(|| fault(false))?;
            if plain.len() != chunk.size as usize {
                return Err(fault(false));
            }
            out.write_all(&plain).map_err(VersionError::io("write", &path))?;
        }
        out.sync_all().map_err(VersionError::io("fsync", &path))?;
    }
    for dir in dirs.iter().rev() {
        sync_dir(dir)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(VersionError::io("fsync", dir))
}
