//! The cluster's certificates: one CA made once by `migratectl cluster init`,
//! and a key and certificate per host, coordinator or client, signed by it.
//!
//! Files in one directory: `ca.pem` and `ca-key.pem`, then `NAME.pem` and
//! `NAME-key.pem` per name. Keys are written 0600. Nothing is overwritten: a
//! new CA would orphan every certificate signed by the old one, and a
//! re-issued host certificate could silently drop an address it had.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The CA's subject. Certificates name their issuer by it, so the signing
/// side rebuilds the CA's parameters from this constant rather than parsing
/// `ca.pem` (which would pull in an X.509 parser). A CA of another cluster
/// has the same subject but another key: its certificates fail the
/// signature check, which is what tells the clusters apart.
const CA_COMMON_NAME: &str = "containerd-migrate cluster CA";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(
        "{path} already exists: the cluster already has a CA (a new one would invalidate every certificate it signed); \
         remove the directory's ca.pem and ca-key.pem first to start a new cluster"
    )]
    CaExists { path: PathBuf },
    #[error("{path} already exists; remove {path} and its key to issue a new certificate for {name}")]
    CertExists { name: String, path: PathBuf },
    #[error("no cluster CA in {dir} ({path}: {source}); run `migratectl cluster init --dir {dir}` first")]
    NoCa { dir: PathBuf, path: PathBuf, source: std::io::Error },
    #[error(
        "{name:?} is not a valid certificate name: use letters, digits, '-' and '.', starting with a letter or digit"
    )]
    BadName { name: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{what}: {source}")]
    Rcgen { what: String, source: rcgen::Error },
}

/// The files of one identity in a TLS directory.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl IdentityFiles {
    pub fn of(dir: &Path, name: &str) -> IdentityFiles {
        IdentityFiles { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}-key.pem")) }
    }

    pub fn ca(dir: &Path) -> IdentityFiles {
        IdentityFiles::of(dir, "ca")
    }
}

/// Makes the cluster CA in `dir` (created if missing).
pub fn init_ca(dir: &Path) -> Result<IdentityFiles, CertError> {
    let files = IdentityFiles::ca(dir);
    for path in [&files.cert, &files.key] {
        if path.exists() {
            return Err(CertError::CaExists { path: path.clone() });
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io { path: dir.to_path_buf(), source })?;
    let key = KeyPair::generate().map_err(rcgen_err("generating the CA key"))?;
    let cert = ca_params().self_signed(&key).map_err(rcgen_err("signing the CA certificate"))?;
    // The key first: a crash in between leaves no certificate without its key.
    write_new(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&files.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(files)
}

/// Issues a key and certificate for `name`, signed by the CA in `dir`. The
/// certificate names `name` (common name and DNS name) and each of `ips`,
/// and serves both as a server's and as a client's: an agent is both.
pub fn issue(dir: &Path, name: &str, ips: &[IpAddr]) -> Result<IdentityFiles, CertError> {
    check_name(name)?;
    let files = IdentityFiles::of(dir, name);
    for path in [&files.cert, &files.key] {
        if path.exists() {
            return Err(CertError::CertExists { name: name.to_string(), path: path.clone() });
        }
    }
    let ca = IdentityFiles::ca(dir);
    let ca_key_pem = std::fs::read_to_string(&ca.key).map_err(|source| CertError::NoCa {
        dir: dir.to_path_buf(),
        path: ca.key.clone(),
        source,
    })?;
    let ca_key =
        KeyPair::from_pem(&ca_key_pem).map_err(rcgen_err(format!("reading the CA key {}", ca.key.display())))?;
    let issuer = Issuer::new(ca_params(), ca_key);

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    let dns = name.to_string().try_into().map_err(rcgen_err(format!("naming {name} in its certificate")))?;
    params.subject_alt_names =
        std::iter::once(SanType::DnsName(dns)).chain(ips.iter().map(|ip| SanType::IpAddress(*ip))).collect();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);

    let key = KeyPair::generate().map_err(rcgen_err(format!("generating a key for {name}")))?;
    let cert = params.signed_by(&key, &issuer).map_err(rcgen_err(format!("signing the certificate of {name}")))?;
    write_new(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&files.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(files)
}

/// The CA's parameters, the same at `init` and at every signing.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    params
}

/// Names become file names and DNS names in certificates: keep them to
/// what both accept.
fn check_name(name: &str) -> Result<(), CertError> {
    let ok = name.len() <= 63
        && name != "ca"
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if ok { Ok(()) } else { Err(CertError::BadName { name: name.to_string() }) }
}

/// Writes a file that must not exist yet, with `mode` from its creation on
/// (a key is never readable by others, not even for a moment).
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), CertError> {
    let io = |source| CertError::Io { path: path.to_path_buf(), source };
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io)?;
    file.write_all(data).map_err(io)?;
    file.sync_all().map_err(io)
}

fn rcgen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertError {
    let what = what.into();
    move |source| CertError::Rcgen { what, source }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn ca_and_certificates_are_made_once_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&ca.key).unwrap().permissions().mode() & 0o777, 0o600);
        let err = init_ca(dir.path()).unwrap_err();
        assert!(matches!(err, CertError::CaExists { .. }), "{err}");
        assert!(err.to_string().contains("already has a CA"), "{err}");

        let h1 = issue(dir.path(), "h1", &["127.0.0.1".parse().unwrap()]).unwrap();
        assert_eq!(std::fs::metadata(&h1.key).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(std::fs::read_to_string(&h1.cert).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(matches!(issue(dir.path(), "h1", &[]).unwrap_err(), CertError::CertExists { .. }));
    }

    #[test]
    fn issuing_needs_a_ca_and_a_plain_name() {
        let dir = tempfile::tempdir().unwrap();
        let err = issue(dir.path(), "h1", &[]).unwrap_err();
        assert!(err.to_string().contains("migratectl cluster init"), "{err}");
        init_ca(dir.path()).unwrap();
        for bad in ["", "ca", "../x", "-h", "a b"] {
            assert!(matches!(issue(dir.path(), bad, &[]).unwrap_err(), CertError::BadName { .. }), "{bad:?}");
        }
    }
}
