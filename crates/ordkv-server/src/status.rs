//! The one mapping from [`ordkv::Error`] to a gRPC [`Status`], and gRPC code names for metrics.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// Metadata key carrying the leader's client address on `FAILED_PRECONDITION` (not leader).
pub const LEADER_METADATA_KEY: &str = "ordkv-leader";

/// Maps a node error to the status a client sees, and logs it once: `warn` for server-side
/// failures (storage, data dir, internal), `debug` for everything a client caused or can retry.
///
/// | error | code |
/// |---|---|
/// | `InvalidArgument` | `INVALID_ARGUMENT` |
/// | `Compacted` | `OUT_OF_RANGE` |
/// | `NotLeader` | `FAILED_PRECONDITION`, metadata `ordkv-leader: <addr>` when known |
/// | `Unavailable` | `UNAVAILABLE` |
/// | `OutcomeUnknown` | `UNAVAILABLE` |
/// | `NoSpace` | `RESOURCE_EXHAUSTED` |
/// | `DeadlineExceeded` | `DEADLINE_EXCEEDED` |
/// | `DataDir`, `Storage`, `Internal` | `INTERNAL` |
///
/// `NotLeader`, `Unavailable` and `NoSpace` also carry `ordkv-write-outcome: not-applied`,
/// `OutcomeUnknown` carries `ordkv-write-outcome: unknown` (see `kv.proto`).
pub fn status_from_error(e: ordkv::Error) -> Status {
    use ordkv::Error as E;
    let message = e.to_string();
    let code = match &e {
        E::InvalidArgument(_) => Code::InvalidArgument,
        E::Compacted { .. } => Code::OutOfRange,
        E::NotFound(_) => Code::NotFound,
        E::AlreadyExists(_) => Code::AlreadyExists,
        E::NotLeader { .. } => Code::FailedPrecondition,
        E::Unavailable(_) | E::OutcomeUnknown(_) => Code::Unavailable,
        E::NoSpace(_) => Code::ResourceExhausted,
        E::DeadlineExceeded(_) => Code::DeadlineExceeded,
        E::DataDir { .. } | E::Storage(_) | E::Internal(_) => Code::Internal,
    };
    if code == Code::Internal {
        tracing::warn!(code = code_name(code), error = %message, "request failed");
    } else {
        tracing::debug!(code = code_name(code), error = %message, "request failed");
    }
    let mut status = Status::new(code, message);
    let outcome = match &e {
        E::NotLeader { .. } | E::Unavailable(_) | E::NoSpace(_) => Some(ordkv_proto::NOT_APPLIED),
        E::OutcomeUnknown(_) => Some(ordkv_proto::OUTCOME_UNKNOWN),
        _ => None,
    };
    if let Some(outcome) = outcome {
        status.metadata_mut().insert(
            ordkv_proto::WRITE_OUTCOME_METADATA_KEY,
            MetadataValue::from_static(outcome),
        );
    }
    if let E::NotLeader {
        leader_client_addr: Some(addr),
    } = &e
    {
        match MetadataValue::try_from(addr.as_str()) {
            Ok(value) => {
                status.metadata_mut().insert(LEADER_METADATA_KEY, value);
            }
            Err(_) => tracing::warn!(leader = %addr, "leader address is not valid metadata"),
        }
    }
    status
}

/// The canonical upper-case name of a gRPC code (`"INVALID_ARGUMENT"`), as used in the
/// `code` label of `ordkv_requests_total`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ordkv::Error as E;

    #[test]
    fn every_variant_maps_to_its_code() {
        let cases = [
            (
                E::InvalidArgument("key is empty".into()),
                Code::InvalidArgument,
            ),
            (
                E::Compacted {
                    requested: 3,
                    oldest: 10,
                },
                Code::OutOfRange,
            ),
            (
                E::NotLeader {
                    leader_client_addr: None,
                },
                Code::FailedPrecondition,
            ),
            (E::Unavailable("no leader".into()), Code::Unavailable),
            (
                E::OutcomeUnknown("leader changed".into()),
                Code::Unavailable,
            ),
            (
                E::DeadlineExceeded("min revision".into()),
                Code::DeadlineExceeded,
            ),
            (
                E::DataDir {
                    path: "/data".into(),
                    reason: "belongs to kv-1".into(),
                },
                Code::Internal,
            ),
            (E::Storage("fsync failed".into()), Code::Internal),
            (E::Internal("bug".into()), Code::Internal),
        ];
        for (error, code) in cases {
            let display = error.to_string();
            let status = status_from_error(error);
            assert_eq!(status.code(), code, "{display}");
            assert_eq!(status.message(), display);
        }
    }

    #[test]
    fn write_errors_say_whether_the_write_happened() {
        let outcome = |e: E| {
            let status = status_from_error(e);
            status
                .metadata()
                .get(ordkv_proto::WRITE_OUTCOME_METADATA_KEY)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let not_leader = E::NotLeader {
            leader_client_addr: None,
        };
        assert_eq!(outcome(not_leader).as_deref(), Some("not-applied"));
        assert_eq!(
            outcome(E::Unavailable("no leader".into())).as_deref(),
            Some("not-applied")
        );
        let unknown = E::OutcomeUnknown("the leader changed".into());
        assert_eq!(outcome(unknown).as_deref(), Some("unknown"));
        assert_eq!(outcome(E::InvalidArgument("bad".into())), None);
    }

    #[test]
    fn not_leader_carries_the_leader_in_message_and_metadata() {
        let addr = "kv-0.kv.default.svc.cluster.local:7379";
        let status = status_from_error(E::NotLeader {
            leader_client_addr: Some(addr.into()),
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(
            status.message(),
            format!("read-only replica; leader is {addr}")
        );
        let leader = status.metadata().get(LEADER_METADATA_KEY).unwrap();
        assert_eq!(leader.to_str().unwrap(), addr);
    }

    #[test]
    fn unknown_leader_has_no_metadata() {
        let status = status_from_error(E::NotLeader {
            leader_client_addr: None,
        });
        assert_eq!(status.message(), "read-only replica; leader is unknown");
        assert!(status.metadata().get(LEADER_METADATA_KEY).is_none());
    }

    #[test]
    fn code_names_are_canonical() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
        assert_eq!(code_name(Code::OutOfRange), "OUT_OF_RANGE");
    }
}
