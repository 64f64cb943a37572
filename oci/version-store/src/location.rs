//! Where a version store is, as the policy names it: `file:///PATH` (a
//! directory, possibly a shared mount) or `oci://HOST:PORT/REPOSITORY` (an
//! OCI registry). Parsed once, where the value is given, so that a typo
//! fails container creation rather than the first tick.

use std::{fmt, path::PathBuf, str::FromStr};

use crate::{
    DirStore, RegistryStore, VersionStore,
    error::{Result, VersionError},
};

/// What a store location looks like, for error messages.
pub const LOCATION_FORMS: &str = "file:///ABSOLUTE/PATH or oci://HOST:PORT/REPOSITORY";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Dir(PathBuf),
    Registry(RegistryLocation),
}

/// An OCI registry repository, reached over plain HTTP: registries that
/// hold checkpoints sit on the cluster's own network, next to its nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryLocation {
    pub host: String,
    pub port: u16,
    /// Lower-case path components of `[a-z0-9]+([._-][a-z0-9]+)*`, joined by `/`.
    pub repository: String,
}

impl StoreLocation {
    /// Opens the store, creating a directory store if need be; a registry
    /// must answer at once.
    pub fn open(&self) -> Result<Box<dyn VersionStore>> {
        match self {
            StoreLocation::Dir(root) => Ok(Box::new(DirStore::open(root.clone())?)),
            StoreLocation::Registry(registry) => Ok(Box::new(RegistryStore::open(registry)?)),
        }
    }
}

impl FromStr for StoreLocation {
    type Err = VersionError;

    fn from_str(url: &str) -> Result<StoreLocation> {
        let bad = |reason| VersionError::BadLocation { url: url.to_owned(), reason };
        if let Some(path) = url.strip_prefix("file://") {
            let path = std::path::Path::new(path);
            let plain =
                path.components().all(|c| matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_)));
            if !path.is_absolute() || path.components().count() < 2 || !plain {
                return Err(bad("the path after file:// must be absolute, without . or .. (file:///srv/versions)"));
            }
            if url.contains(['%', '?', '#']) {
                return Err(bad("percent-encoding, queries and fragments are not accepted in file:// URLs"));
            }
            return Ok(StoreLocation::Dir(path.to_path_buf()));
        }
        if let Some(rest) = url.strip_prefix("oci://") {
            let (authority, repository) =
                rest.split_once('/').ok_or_else(|| bad("name a repository: oci://HOST:PORT/REPOSITORY"))?;
            let (host, port) = authority
                .rsplit_once(':')
                .ok_or_else(|| bad("name the registry's port: oci://HOST:PORT/REPOSITORY"))?;
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0 && port.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| bad("the port must be a number in 1-65535"))?;
            let host_ok = !host.is_empty()
                && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
            if !host_ok {
                return Err(bad("the host must be a DNS name or an IP address"));
            }
            if !valid_repository(repository) {
                return Err(bad("a repository is lower-case path components of a-z 0-9 separated by . _ - \
                     and joined by / (oci://registry:5000/checkpoints/web)"));
            }
            return Ok(StoreLocation::Registry(RegistryLocation {
                host: host.to_owned(),
                port,
                repository: repository.to_owned(),
            }));
        }
        Err(bad("expected file:///ABSOLUTE/PATH or oci://HOST:PORT/REPOSITORY"))
    }
}

/// The distribution spec's repository grammar.
fn valid_repository(repository: &str) -> bool {
    let component = |c: &str| {
        let bytes = c.as_bytes();
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        !bytes.is_empty()
            && alnum(&bytes[0])
            && alnum(&bytes[bytes.len() - 1])
            && bytes.iter().all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
            && !c.contains("..")
    };
    repository.len() <= 255 && repository.split('/').all(component)
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Dir(path) => write!(f, "file://{}", path.display()),
            StoreLocation::Registry(r) => write!(f, "oci://{}:{}/{}", r.host, r.port, r.repository),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_print_back() {
        for url in ["file:///srv/versions", "oci://127.0.0.1:5000/checkpoints", "oci://registry.local:443/a/b-c.d"] {
            assert_eq!(url.parse::<StoreLocation>().unwrap().to_string(), url);
        }
        assert_eq!("file:///srv/v/".parse::<StoreLocation>().unwrap(), StoreLocation::Dir(PathBuf::from("/srv/v/")));
    }

    #[test]
    fn bad_locations_say_why() {
        for (url, says) in [
            ("/srv/versions", "expected file:///"),
            ("file://srv", "must be absolute"),
            ("file:///", "must be absolute"),
            ("file:///a/../b", "without . or .."),
            ("oci://host/repo", "port"),
            ("oci://host:0/repo", "1-65535"),
            ("oci://host:5000", "name a repository"),
            ("oci://host:5000/Upper", "lower-case"),
            ("oci://host:5000/a//b", "lower-case"),
            ("s3://bucket", "expected file:///"),
        ] {
            let err = url.parse::<StoreLocation>().unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
            assert!(err.contains(url), "{url}: {err}");
        }
    }
}
