//! Mutual TLS for every gRPC connection of the cluster: each side shows a
//! certificate of the cluster's CA and accepts only such a certificate from
//! the other. A peer without one is refused during the handshake, before any
//! request is read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::certs::IdentityFiles;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "cannot read {path} ({source}); the TLS directory needs the cluster's ca.pem and this side's \
         {name}.pem and {name}-key.pem (made by `migratectl cluster init` and `migratectl cluster cert`)"
    )]
    Read { name: String, path: PathBuf, source: std::io::Error },
    #[error("{url} is not a usable https URL: {source}")]
    Url { url: String, source: tonic::transport::Error },
    #[error("setting up TLS for {url}: {source}")]
    Config { url: String, source: tonic::transport::Error },
    #[error(
        "cannot connect to {url}: {}; check the address, and that both sides have certificates of the same \
         cluster CA (the server's naming {server_name})",
        chain(.cause)
    )]
    // Not a `source`: the chain is in the message, once.
    Connect { url: String, server_name: String, cause: tonic::transport::Error },
}

/// This side's certificate and key, and the CA it trusts.
#[derive(Debug, Clone)]
pub struct Tls {
    ca: Certificate,
    identity: Identity,
}

impl Tls {
    /// Reads `ca.pem`, `NAME.pem` and `NAME-key.pem` from `dir`.
    pub fn load(dir: &Path, name: &str) -> Result<Tls, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                name: name.to_string(),
                path: path.to_path_buf(),
                source,
            })
        };
        let own = IdentityFiles::of(dir, name);
        Ok(Tls {
            ca: Certificate::from_pem(read(&IdentityFiles::ca(dir).cert)?),
            identity: Identity::from_pem(read(&own.cert)?, read(&own.key)?),
        })
    }

    /// A server that requires a client certificate of the cluster's CA
    /// (tonic makes client authentication mandatory once a client CA is set).
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(self.identity.clone()).client_ca_root(self.ca.clone())
    }

    /// Connects to `url` (`https://HOST:PORT`), expecting the server's
    /// certificate to name `server_name` and showing ours.
    pub async fn connect(&self, url: &str, server_name: &str, timeout: Duration) -> Result<Channel, TlsError> {
        self.endpoint(url, server_name, timeout, Some(timeout), false).await
    }

    /// As [`Tls::connect`], but without a deadline on each call: for calls
    /// that take as long as their work does (a migration's steps move
    /// gigabytes), whose callers bound them where they must.
    pub async fn connect_without_deadline(
        &self,
        url: &str,
        server_name: &str,
        connect_timeout: Duration,
    ) -> Result<Channel, TlsError> {
        self.endpoint(url, server_name, connect_timeout, None, false).await
    }

    /// As [`Tls::connect_without_deadline`], but the channel pings its peer
    /// and fails its calls within seconds once the peer stops answering (a
    /// host lost sends no reset). Only where giving up on a silent peer is
    /// safe: no copy of a container may be running there that the caller
    /// would then run again elsewhere (a migration's source, a
    /// coordinator); a migration's target is waited for instead.
    pub async fn connect_watched(
        &self,
        url: &str,
        server_name: &str,
        connect_timeout: Duration,
    ) -> Result<Channel, TlsError> {
        self.endpoint(url, server_name, connect_timeout, None, true).await
    }

    async fn endpoint(
        &self,
        url: &str,
        server_name: &str,
        connect_timeout: Duration,
        call_timeout: Option<Duration>,
        watched: bool,
    ) -> Result<Channel, TlsError> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(server_name);
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|source| TlsError::Url { url: url.to_string(), source })?
            .tls_config(tls)
            .map_err(|source| TlsError::Config { url: url.to_string(), source })?
            .connect_timeout(connect_timeout);
        if watched {
            endpoint = endpoint
                .http2_keep_alive_interval(PING_INTERVAL)
                .keep_alive_timeout(PING_TIMEOUT)
                .keep_alive_while_idle(true);
        }
        if let Some(timeout) = call_timeout {
            endpoint = endpoint.timeout(timeout);
        }
        endpoint.connect().await.map_err(|cause| TlsError::Connect {
            url: url.to_string(),
            server_name: server_name.to_string(),
            cause,
        })
    }
}

/// How often a channel pings its peer, and how long an answer may take.
const PING_INTERVAL: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The host part of an `https://HOST:PORT` URL: the name the server's
/// certificate must carry (an IP address or a DNS name).
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next();
    }
    authority.rsplit_once(':').map_or(Some(authority), |(host, _)| Some(host))
}

/// An error and its sources on one line: tonic's own Display says only
/// "transport error"; the cause (a refused certificate) is further down.
/// A source that says what its error said already is left out (rustls'
/// errors come wrapped in io::Errors that repeat them).
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// What a failed call says, with the causes tonic keeps out of its message.
/// With TLS 1.3 the server checks the client's certificate after the
/// client's side of the handshake is done, so a refused certificate shows
/// up at the first call, not at connect, as a broken connection; the hint
/// says what that most likely means.
pub fn status_chain(status: &tonic::Status) -> String {
    let mut text = format!("{} ({:?})", status.message(), status.code());
    // A status the server sent has no source; one with a source is the
    // connection failing under the call ("transport error", "operation was
    // canceled", as the timing has it).
    if let Some(source) = std::error::Error::source(status) {
        text = format!(
            "{text}: {}; the connection broke, as it does when the server refuses a certificate: is this side's \
             certificate signed by the cluster's CA?",
            chain(source)
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hosts() {
        assert_eq!(url_host("https://127.0.0.1:7000"), Some("127.0.0.1"));
        assert_eq!(url_host("https://coordinator:7000/"), Some("coordinator"));
        assert_eq!(url_host("https://[::1]:7000"), Some("::1"));
        assert_eq!(url_host("https://h1"), Some("h1"));
        assert_eq!(url_host("http://h1:7000"), None);
    }
}
