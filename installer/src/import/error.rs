//! What an import's failures are, for callers that match on them: a
//! containerd that is not running (nothing was written), one that went away
//! and did not come back in time, and gRPC refusals told apart from a broken
//! connection.

use containerd_client::tonic::{Code, Status};
use std::path::PathBuf;

/// containerd cannot be reached: nothing was written.
#[derive(Debug, thiserror::Error)]
#[error("containerd is not running at {}: {reason}", socket.display())]
pub struct NotRunning {
    pub socket: PathBuf,
    pub reason: String,
}

/// The import lost its connection to containerd and could not carry on:
/// containerd did not answer again in time, or came back without what had
/// been written. Nothing of the import is named in containerd.
#[derive(Debug, thiserror::Error)]
#[error("lost the connection to containerd at {} while {doing}", socket.display())]
pub struct ContainerdLost {
    pub socket: PathBuf,
    /// What the import was doing: `writing blob sha256:… (image …)`.
    pub doing: String,
}

/// A gRPC failure, shown as `containerd said NotFound: ...`.
#[derive(Debug, thiserror::Error)]
#[error("containerd said {code:?}: {message}")]
pub struct GrpcError {
    pub code: Code,
    pub message: String,
}

impl GrpcError {
    /// Whether the connection broke (containerd stopped or restarted)
    /// rather than containerd refusing the call.
    pub fn connection_lost(&self) -> bool {
        status_lost(self.code, &self.message)
    }
}

fn status_lost(code: Code, message: &str) -> bool {
    let message = message.to_lowercase();
    match code {
        Code::Unavailable => true,
        Code::Unknown | Code::Internal | Code::Cancelled | Code::Aborted => [
            "connection",
            "transport",
            "broken pipe",
            "h2 protocol",
            "stream closed",
            "ended the write",
        ]
        .iter()
        .any(|w| message.contains(w)),
        _ => false,
    }
}

/// Whether a status says the connection to containerd broke.
pub(crate) fn is_lost_status(status: &Status) -> bool {
    status_lost(status.code(), status.message())
}

/// Whether `e` came from a broken connection to containerd.
pub fn is_connection_lost(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<GrpcError>()
            .is_some_and(GrpcError::connection_lost)
    })
}

/// A gRPC failure as a short message: `containerd said NotFound: ...`.
pub(crate) fn grpc(status: Status) -> anyhow::Error {
    GrpcError {
        code: status.code(),
        message: status.message().to_string(),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_a_lost_connection_from_a_refusal() {
        assert!(status_lost(
            Code::Unavailable,
            "Connection refused (os error 111)"
        ));
        assert!(status_lost(
            Code::Unknown,
            "error reading a body from connection"
        ));
        assert!(status_lost(Code::Unknown, "h2 protocol error: broken pipe"));
        assert!(!status_lost(Code::NotFound, "connection"));
        assert!(!status_lost(
            Code::FailedPrecondition,
            "unexpected commit digest"
        ));
        let e = grpc(Status::unavailable("transport error")).context("writing");
        assert!(is_connection_lost(&e));
        assert!(!is_connection_lost(&grpc(Status::not_found("blob"))));
    }
}
