//! The calls of the OCI distribution API that the registry store makes,
//! over plain HTTP: the API root, blobs by digest, manifests by tag or
//! digest, the tag list. Each call reads the whole answer, so that its
//! connection goes back to the agent's pool, and turns every answer but the
//! expected ones into a [`VersionError`] that names the store, what was
//! being done, the request, the HTTP status and the registry's own error
//! code and message.

use std::{fmt, ops::Range, time::Duration};

use oci_spec::image::{Digest, MediaType, Sha256Digest};
use serde::Deserialize;
use sha2::Digest as _;
use ureq::http::{self, HeaderMap};

use crate::{
    RegistryLocation, StoreLocation,
    error::{Result, VersionError},
};

/// What manifest reads accept: both, since a registry not asked for an
/// index answers as if there were none (distribution 2.8: 404
/// MANIFEST_UNKNOWN).
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";

/// No answer this store asks for comes near it (ranges of packs are at
/// most 16 MiB, version manifests a few MiB per GiB of checkpoint,
/// registries take manifests of a few MiB); it only keeps a misbehaving server from
/// filling memory.
const MAX_ANSWER: u64 = 256 << 20;
/// Asked for per tag-list page; registries may send fewer, and then a
/// `Link` header to the next page.
const TAGS_PER_PAGE: u32 = 1000;

/// The sha256 digest of `bytes`, as registries name blobs and manifests.
/// Only these are made, and what is read is checked against them: a digest
/// of another algorithm in a manifest (which oci-spec's `Digest` parses)
/// never matches, so its blob counts as damaged. A `Digest` holds only
/// `[a-z0-9+._-]:[a-zA-Z0-9=_-]`, so one read from a manifest cannot
/// smuggle anything into a URL path.
pub(super) fn sha256_of(bytes: &[u8]) -> Digest {
    let hex = hex::encode(sha2::Sha256::digest(bytes));
    hex.parse::<Sha256Digest>().expect("64 lowercase hex digits are a sha256 digest").into()
}

/// A blob in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Blob {
    pub digest: Digest,
    pub size: u64,
}

/// One repository of one registry.
#[derive(Debug)]
pub(super) struct Registry {
    agent: ureq::Agent,
    /// `http://HOST:PORT`
    base: String,
    /// `/v2/REPOSITORY`
    prefix: String,
    /// `oci://HOST:PORT/REPOSITORY`, as errors name the store.
    store: String,
    /// `HOST:PORT`
    authority: String,
}

/// What the registry answered.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// A request, and what it is for, as errors name it.
struct Call<'a> {
    method: &'static str,
    url: String,
    what: fmt::Arguments<'a>,
}

/// What a request sends besides its URL.
#[derive(Default)]
struct Send<'a> {
    body: Option<&'a [u8]>,
    content_type: Option<&'a str>,
    accept: Option<&'static str>,
    range: Option<&'a str>,
}

impl Registry {
    pub(super) fn new(location: &RegistryLocation) -> Registry {
        let config = ureq::Agent::config_builder()
            // Statuses are answers here (404 is "no such blob"), not errors.
            .http_status_as_error(false)
            // The registry is on the cluster network; a proxy from the
            // environment is for the internet, and ureq would send even
            // loopback requests through it (Go's clients do not).
            .proxy(None)
            .timeout_connect(Some(Duration::from_secs(10)))
            // Bounds every call, so a registry that hangs fails a tick
            // instead of stalling its ticker; no answer of a healthy one
            // takes near this long.
            .timeout_global(Some(Duration::from_secs(120)))
            .user_agent(concat!("containerd-migrate/", env!("CARGO_PKG_VERSION")))
            .build();
        let authority = format!("{}:{}", location.host, location.port);
        Registry {
            agent: config.new_agent(),
            base: format!("http://{authority}"),
            prefix: format!("/v2/{}", location.repository),
            store: StoreLocation::Registry(location.clone()).to_string(),
            authority,
        }
    }

    /// `oci://HOST:PORT/REPOSITORY`
    pub(super) fn store(&self) -> &str {
        &self.store
    }

    /// Checks that a distribution API answers at the registry's address.
    pub(super) fn ping(&self) -> Result<()> {
        let call = Call { method: "GET", url: format!("{}/v2/", self.base), what: format_args!("opening the store") };
        let answer = self.send(&call, Send::default())?;
        match answer.status {
            200 => Ok(()),
            401 | 403 => Err(self.refused(&call, &answer, hint(answer.status, None))),
            _ => Err(self.refused(
                &call,
                &answer,
                "no OCI distribution API answers there: check the host and port of the store's oci:// URL",
            )),
        }
    }

    /// The size of blob `digest`, or None if the repository lacks it.
    pub(super) fn blob_size(&self, digest: &Digest, what: fmt::Arguments<'_>) -> Result<Option<u64>> {
        let call = Call { method: "HEAD", url: self.url(&format!("blobs/{digest}")), what };
        let answer = self.send(&call, Send::default())?;
        match answer.status {
            200 => {
                let size = answer.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
                size.map(Some).ok_or_else(|| self.bad_answer(&call, "the answer has no Content-Length".into()))
            }
            404 => Ok(None),
            _ => Err(self.refused(&call, &answer, hint(answer.status, None))),
        }
    }

    /// Blob `digest`, or None if the repository lacks it. Not checked
    /// against its digest: chunks are checked by their id when opened.
    pub(super) fn get_blob(&self, digest: &Digest, what: fmt::Arguments<'_>) -> Result<Option<Vec<u8>>> {
        let call = Call { method: "GET", url: self.url(&format!("blobs/{digest}")), what };
        self.get_optional(&call, Send::default())
    }

    /// Bytes `range` of blob `digest` (a `Range` request), or None if the
    /// repository lacks the blob or the range is past its end. A registry
    /// that ignores `Range` sends the whole blob, and the range is cut
    /// from it here. Not checked: what the range holds is checked when the
    /// chunks in it are opened.
    pub(super) fn get_blob_range(
        &self,
        digest: &Digest,
        range: Range<u64>,
        what: fmt::Arguments<'_>,
    ) -> Result<Option<Vec<u8>>> {
        let call = Call { method: "GET", url: self.url(&format!("blobs/{digest}")), what };
        let header = format!("bytes={}-{}", range.start, range.end.saturating_sub(1));
        let mut answer = self.send(&call, Send { range: Some(&header), ..Send::default() })?;
        let wanted = usize::try_from(range.end - range.start).unwrap_or(usize::MAX);
        match answer.status {
            206 if answer.body.len() == wanted => Ok(Some(answer.body)),
            206 => Err(self.bad_answer(
                &call,
                format!("asked for {wanted} bytes, it sent {} (is the blob shorter?)", answer.body.len()),
            )),
            200 => {
                let (start, end) = (range.start as usize, range.end as usize);
                if answer.body.len() < end {
                    return Ok(None);
                }
                answer.body.truncate(end);
                Ok(Some(answer.body.split_off(start)))
            }
            404 | 416 => Ok(None),
            _ => Err(self.refused(&call, &answer, hint(answer.status, None))),
        }
    }

    /// Uploads `bytes`, whose digest is `digest`, as one blob: a POST opens
    /// the upload, one PUT carries all of it and closes it (the registry
    /// checks the digest).
    pub(super) fn push_blob(&self, digest: Digest, bytes: &[u8], what: fmt::Arguments<'_>) -> Result<Blob> {
        let open = Call { method: "POST", url: self.url("blobs/uploads/"), what };
        let answer = self.send(&open, Send { body: Some(&[]), ..Send::default() })?;
        if answer.status != 202 {
            return Err(self.refused(&open, &answer, hint(answer.status, None)));
        }
        let location = answer
            .headers
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.bad_answer(&open, "the answer has no Location to upload to".into()))?;
        let upload = self.resolve(location).ok_or_else(|| {
            self.bad_answer(&open, format!("its Location {location:?} is neither a path nor an http:// URL"))
        })?;
        let separator = if upload.contains('?') { '&' } else { '?' };
        let put = Call { method: "PUT", url: format!("{upload}{separator}digest={digest}"), what };
        let answer = self.send(
            &put,
            Send { body: Some(bytes), content_type: Some("application/octet-stream"), ..Send::default() },
        )?;
        if answer.status != 201 {
            return Err(self.refused(&put, &answer, hint(answer.status, None)));
        }
        Ok(Blob { digest, size: bytes.len() as u64 })
    }

    /// The OCI manifest or index under `reference` (a tag or a digest), or
    /// None.
    pub(super) fn get_manifest(&self, reference: &str, what: fmt::Arguments<'_>) -> Result<Option<Vec<u8>>> {
        let call = Call { method: "GET", url: self.url(&format!("manifests/{reference}")), what };
        self.get_optional(&call, Send { accept: Some(ACCEPT_MANIFESTS), ..Send::default() })
    }

    pub(super) fn has_manifest(&self, reference: &str, what: fmt::Arguments<'_>) -> Result<bool> {
        let call = Call { method: "HEAD", url: self.url(&format!("manifests/{reference}")), what };
        let answer = self.send(&call, Send { accept: Some(ACCEPT_MANIFESTS), ..Send::default() })?;
        match answer.status {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.refused(&call, &answer, hint(answer.status, None))),
        }
    }

    /// Stores `bytes`, an OCI manifest or index as `media_type` says, tagged
    /// `tag`, replacing what the tag named.
    pub(super) fn put_manifest(
        &self,
        tag: &str,
        media_type: &MediaType,
        bytes: &[u8],
        what: fmt::Arguments<'_>,
    ) -> Result<()> {
        let call = Call { method: "PUT", url: self.url(&format!("manifests/{tag}")), what };
        let send = Send { body: Some(bytes), content_type: Some(media_type.as_ref()), ..Send::default() };
        let answer = self.send(&call, send)?;
        match answer.status {
            201 => Ok(()),
            _ => Err(self.refused(&call, &answer, hint(answer.status, error_code(&answer).as_deref()))),
        }
    }

    /// Deletes manifest `digest` and the tags naming it; false if there was
    /// none.
    pub(super) fn delete_manifest(&self, digest: &Digest, what: fmt::Arguments<'_>) -> Result<bool> {
        let call = Call { method: "DELETE", url: self.url(&format!("manifests/{digest}")), what };
        let answer = self.send(&call, Send::default())?;
        match answer.status {
            202 | 200 => Ok(true),
            404 => Ok(false),
            405 => Err(VersionError::RegistryDeleteDisabled { store: self.store.clone(), what: what.to_string() }),
            _ => Err(self.refused(&call, &answer, hint(answer.status, None))),
        }
    }

    /// Every tag of the repository (none if it does not exist yet),
    /// following the `Link` headers of registries that page the list.
    pub(super) fn tags(&self, what: fmt::Arguments<'_>) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        let mut tags = Vec::new();
        let mut url = format!("{}?n={TAGS_PER_PAGE}", self.url("tags/list"));
        loop {
            let call = Call { method: "GET", url, what };
            let answer = self.send(&call, Send::default())?;
            match answer.status {
                200 => {}
                // A repository exists once something is pushed to it.
                404 if tags.is_empty() && error_code(&answer).as_deref() == Some("NAME_UNKNOWN") => {
                    return Ok(tags);
                }
                _ => return Err(self.refused(&call, &answer, hint(answer.status, None))),
            }
            let page: TagList = serde_json::from_slice(&answer.body).map_err(|e| {
                self.bad_answer(&call, format!("the tag list is not JSON of the distribution API: {e}"))
            })?;
            let page = page.tags.unwrap_or_default();
            let next = answer.headers.get(http::header::LINK).and_then(|v| next_link(v.to_str().ok()?));
            // An empty page ends the walk even with a Link, so that a
            // registry repeating itself cannot keep it going.
            match next.and_then(|next| self.resolve(next)) {
                Some(next) if !page.is_empty() => {
                    tags.extend(page);
                    url = next;
                }
                _ => {
                    tags.extend(page);
                    return Ok(tags);
                }
            }
        }
    }

    fn url(&self, rest: &str) -> String {
        format!("{}{}/{rest}", self.base, self.prefix)
    }

    /// An absolute URL for a `Location` or `Link` target, which registries
    /// give as a path or as a whole URL.
    fn resolve(&self, target: &str) -> Option<String> {
        if target.starts_with('/') {
            Some(format!("{}{target}", self.base))
        } else if target.starts_with("http://") {
            Some(target.to_owned())
        } else {
            None
        }
    }

    fn get_optional(&self, call: &Call<'_>, send: Send<'_>) -> Result<Option<Vec<u8>>> {
        let answer = self.send(call, send)?;
        match answer.status {
            200 => Ok(Some(answer.body)),
            404 => Ok(None),
            _ => Err(self.refused(call, &answer, hint(answer.status, None))),
        }
    }

    /// Makes the request and reads the whole answer.
    fn send(&self, call: &Call<'_>, send: Send<'_>) -> Result<Answer> {
        let mut request = http::Request::builder().method(call.method).uri(&call.url);
        if let Some(content_type) = send.content_type {
            request = request.header(http::header::CONTENT_TYPE, content_type);
        }
        if let Some(accept) = send.accept {
            request = request.header(http::header::ACCEPT, accept);
        }
        if let Some(range) = send.range {
            request = request.header(http::header::RANGE, range);
        }
        let sent = match send.body {
            Some(bytes) => request.body(bytes).map(|r| self.agent.run(r)),
            None => request.body(()).map(|r| self.agent.run(r)),
        };
        let mut response = sent.map_err(|e| self.bad_request(call, e))?.map_err(|e| self.transport_error(call, e))?;
        let status = response.status().as_u16();
        // To the end even when empty (a HEAD's): that returns the
        // connection to the pool.
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(|e| self.transport_error(call, e))?;
        Ok(Answer { status, headers: std::mem::take(response.headers_mut()), body })
    }

    fn transport_error(&self, call: &Call<'_>, error: ureq::Error) -> VersionError {
        match error {
            ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed
            | ureq::Error::ConnectProxyFailed(_) => VersionError::RegistryUnreachable {
                store: self.store.clone(),
                authority: self.authority.clone(),
                what: call.what.to_string(),
                source: error.into_io(),
            },
            other => self.bad_answer(call, other.to_string()),
        }
    }

    /// A request that cannot be made: a URL the registry sent (`Location`,
    /// `Link`) that is not one.
    fn bad_request(&self, call: &Call<'_>, error: http::Error) -> VersionError {
        self.bad_answer(call, format!("the request cannot be made: {error}"))
    }

    fn bad_answer(&self, call: &Call<'_>, problem: String) -> VersionError {
        VersionError::RegistryBadAnswer {
            store: self.store.clone(),
            authority: self.authority.clone(),
            what: call.what.to_string(),
            request: format!("{} {}", call.method, call.url),
            problem,
        }
    }

    fn refused(&self, call: &Call<'_>, answer: &Answer, hint: &'static str) -> VersionError {
        let registry_said = match registry_said(&answer.body) {
            (Some(code), Some(message)) => format!(" ({code}: {message})"),
            (Some(said), None) | (None, Some(said)) => format!(" ({said})"),
            (None, None) => String::new(),
        };
        VersionError::RegistryRefused {
            store: self.store.clone(),
            what: call.what.to_string(),
            request: format!("{} {}", call.method, call.url),
            status: answer.status,
            registry_said,
            hint,
        }
    }
}

/// The distribution API's error body: `{"errors": [{"code", "message", "detail"}]}`.
#[derive(Deserialize)]
struct ErrorBody {
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    detail: Option<serde_json::Value>,
}

fn error_code(answer: &Answer) -> Option<String> {
    registry_said(&answer.body).0
}

/// The code and words of the first error in `body`; for a body that is not
/// the API's JSON (a proxy's error page), its start.
fn registry_said(body: &[u8]) -> (Option<String>, Option<String>) {
    if let Ok(ErrorBody { errors }) = serde_json::from_slice(body)
        && let Some(first) = errors.into_iter().next()
    {
        let detail = match first.detail {
            Some(serde_json::Value::String(s)) => s,
            Some(serde_json::Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        let message = match (first.message.is_empty(), detail.is_empty()) {
            (true, true) => None,
            (false, true) => Some(first.message),
            (true, false) => Some(detail),
            (false, false) => Some(format!("{}: {detail}", first.message)),
        };
        return (Some(first.code), message);
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let start: String = text.chars().take(200).collect();
    (None, (!start.is_empty()).then_some(start))
}

/// What to do about a refusal, by status and the registry's error code.
fn hint(status: u16, code: Option<&str>) -> &'static str {
    match (status, code) {
        (401 | 403, _) => {
            "this store sends no credentials: let anonymous clients push, pull and delete in this repository \
             (registries holding versions sit on the cluster network)"
        }
        (_, Some("MANIFEST_BLOB_UNKNOWN")) => {
            "a chunk or part the version references left the registry after it was checked (did `registry \
             garbage-collect` run while the registry was writable, or a retention without a grace period?); the \
             next try uploads it again"
        }
        (405, _) => "the registry takes no writes here: is it read-only (maintenance mode) or a pull-through cache?",
        (429, _) => "the registry is limiting requests; a later tick tries again",
        (500.., _) => "the registry failed; its log says why",
        _ => "the registry's log says why",
    }
}

/// The target of the `rel="next"` link in a `Link` header.
fn next_link(header: &str) -> Option<&str> {
    header.split(',').find_map(|link| {
        let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
        let next = params.split(';').any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
        next.then_some(target)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256_and_url_safe() {
        let d = sha256_of(b"abc");
        assert_eq!(d.to_string(), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        for bad in ["sha512:ab", "sha256:../../x", &d.to_string().to_uppercase(), &d.to_string()[..70]] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<Digest>("\"sha256:x/../y\"").is_err());
        // Another algorithm parses, but never matches what is read.
        let sha512 = format!("sha512:{}", "a".repeat(128)).parse::<Digest>().unwrap();
        assert_ne!(sha512, d);
    }

    #[test]
    fn next_links_are_found() {
        assert_eq!(next_link(r#"</v2/r/tags/list?last=b&n=2>; rel="next""#), Some("/v2/r/tags/list?last=b&n=2"));
        assert_eq!(next_link(r#"<http://x/a>; rel="prev", <http://x/b>; rel=next"#), Some("http://x/b"));
        assert_eq!(next_link(r#"</v2/r/tags/list?last=b>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn the_registry_is_quoted() {
        let body = br#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":"http: request body too large"}]}"#;
        assert_eq!(
            registry_said(body),
            (Some("MANIFEST_INVALID".into()), Some("manifest invalid: http: request body too large".into()))
        );
        let body = br#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":{"digest":"sha256:00"}}]}"#;
        assert_eq!(registry_said(body).1.unwrap(), r#"blob unknown to registry: {"digest":"sha256:00"}"#);
        assert_eq!(
            registry_said(b"<html>502 Bad Gateway</html>\n"),
            (None, Some("<html>502 Bad Gateway</html>".into()))
        );
        assert_eq!(registry_said(b""), (None, None));
    }
}
