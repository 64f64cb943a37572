//! The shim's error type and its one mapping onto ttrpc status codes, so that
//! containerd turns each failure into the errdefs error its callers expect
//! (`ctr` prints "not found", "failed precondition", ...).

use containerd_shim::protos::ttrpc::{self, Code};

use crate::runc;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs `f` (`what`, for the error) off the async runtime, whose one thread
/// the shim's other containers share: hashing, writing a diff.
pub async fn blocking<T: Send + 'static>(what: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::io(what.to_string())(std::io::Error::other(e)))?
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: not found")]
    NotFound(String),

    #[error("{0}: already exists")]
    AlreadyExists(String),

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The process is in a state where the verb makes no sense, e.g. starting
    /// a running process. Worded like containerd's own runc shim.
    #[error("cannot {verb} a {state} process")]
    WrongState { verb: &'static str, state: &'static str },

    /// A request this runtime refuses by name rather than pretending to serve.
    #[error("{0} is not supported by io.containerd.migrate.v1")]
    Unsupported(String),

    #[error(transparent)]
    Runc(#[from] runc::Error),

    #[error(transparent)]
    Checkpoint(#[from] migrate_oci::Error),

    #[error(transparent)]
    BadAnnotation(#[from] crate::annotations::BadAnnotation),

    #[error(transparent)]
    Tap(#[from] crate::capture::pages_tap::TapError),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{context}: {source}")]
    Shim {
        context: String,
        #[source]
        source: containerd_shim::Error,
    },
}

impl Error {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub fn shim(context: impl Into<String>) -> impl FnOnce(containerd_shim::Error) -> Error {
        let context = context.into();
        move |source| Error::Shim { context, source }
    }

    fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::InvalidArgument(_) | Error::BadAnnotation(_) => Code::INVALID_ARGUMENT,
            Error::WrongState { .. } => Code::FAILED_PRECONDITION,
            Error::Unsupported(_) => Code::UNIMPLEMENTED,
            Error::Runc(runc::Error::NotFound { .. }) => Code::NOT_FOUND,
            // A damaged or mismatching checkpoint is the caller's to replace.
            Error::Checkpoint(_) => Code::FAILED_PRECONDITION,
            Error::Runc(_) | Error::Tap(_) | Error::Io { .. } | Error::Shim { .. } => Code::UNKNOWN,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        // The whole chain goes into the message: containerd shows only this
        // string, so a bare "runc failed" without its cause would be useless.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let cause = cause.to_string();
            if !message.contains(&cause) {
                message.push_str(": ");
                message.push_str(&cause);
            }
            source = cause_of(source);
        }
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), message))
    }
}

fn cause_of<'a>(e: Option<&'a (dyn std::error::Error + 'static)>) -> Option<&'a (dyn std::error::Error + 'static)> {
    e.and_then(std::error::Error::source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: Error) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn codes_follow_errdefs() {
        assert_eq!(status(Error::NotFound("container c1".into())).0, Code::NOT_FOUND);
        let (code, msg) = status(Error::WrongState { verb: "start", state: "running" });
        assert_eq!(code, Code::FAILED_PRECONDITION);
        assert_eq!(msg, "cannot start a running process");
        let (code, msg) = status(Error::Unsupported("checkpoint of an exec process".into()));
        assert_eq!(code, Code::UNIMPLEMENTED);
        assert!(msg.contains("not supported by io.containerd.migrate.v1"));
    }

    #[test]
    fn message_keeps_the_io_cause() {
        let e = Error::Io { context: "open /x".into(), source: std::io::Error::from_raw_os_error(libc::ENOENT) };
        let (_, msg) = status(e);
        assert!(msg.starts_with("open /x: No such file or directory"), "{msg}");
    }
}
