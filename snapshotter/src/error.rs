//! The snapshotter's errors, by the gRPC code containerd turns into its own
//! error kinds (errdefs): containerd's client tells "not found" from
//! "already exists" by these codes, so they must be right.

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("corrupt snapshot metadata: {0}")]
    Corrupt(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        let msg = e.to_string();
        match e {
            Error::NotFound(_) => tonic::Status::not_found(msg),
            Error::AlreadyExists(_) => tonic::Status::already_exists(msg),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            Error::Unsupported(_) => tonic::Status::unimplemented(msg),
            Error::Corrupt(_) | Error::Io { .. } => tonic::Status::internal(msg),
        }
    }
}
