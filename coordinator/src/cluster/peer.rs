//! Who is calling: the name the caller's certificate was issued for.
//!
//! TLS has already proven that the certificate is the cluster CA's and that
//! the caller holds its key; this checks that it names the host the request
//! speaks for. So one host cannot register or beat as another, and neither
//! can a client certificate such as migratectl's.

use rustls_pki_types::{CertificateDer, ServerName};
use tonic::{Request, Status};

/// Refuses `request` unless its client certificate is valid for `name`.
pub fn check_is<T>(request: &Request<T>, name: &str) -> Result<(), Status> {
    let certs = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated("the call came without a client certificate (is the server running without TLS?)")
    })?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("the client showed no certificate"))?;
    if is_valid_for(leaf, name) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "the caller's certificate is not issued for {name:?}: a host registers and beats only with the certificate \
             `migratectl cluster cert` made for its own name"
        )))
    }
}

fn is_valid_for(cert: &CertificateDer<'_>, name: &str) -> bool {
    let (Ok(cert), Ok(name)) = (webpki::EndEntityCert::try_from(cert), ServerName::try_from(name)) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn a_certificate_is_valid_for_its_own_name_only() {
        let dir = tempfile::tempdir().unwrap();
        crate::certs::init_ca(dir.path()).unwrap();
        let files = crate::certs::issue(dir.path(), "h1", &["10.0.0.1".parse().unwrap()]).unwrap();
        let der = CertificateDer::from_pem_file(&files.cert).unwrap();
        assert!(is_valid_for(&der, "h1"));
        assert!(!is_valid_for(&der, "h2"));
        assert!(!is_valid_for(&der, "migratectl"));
        assert!(!is_valid_for(&der, "not a name"));
    }
}
