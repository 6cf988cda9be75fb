//! What every client RPC shares: a tracing span, the deadline, the error mapping and metrics.

use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::access::{AccessControl, Needs};
use crate::status::status_from_error;

/// State shared by the gRPC services of one server.
#[derive(Clone)]
pub(crate) struct RpcContext {
    pub(crate) node: ordkv::Node,
    pub(crate) request_timeout: Duration,
    /// Cancelled when the server starts shutting down; ends open watch streams.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
    /// Who may do what; `None` admits everyone.
    pub(crate) access: Option<std::sync::Arc<AccessControl>>,
}

impl RpcContext {
    /// Admits `request` under the access policy; the caller's name when there is one.
    #[allow(clippy::result_large_err)]
    pub(crate) fn authorize<Q: Needs>(
        &self,
        request: &Request<Q>,
    ) -> Result<Option<String>, Status> {
        match &self.access {
            Some(access) => access.check(request).map(Some),
            None => Ok(None),
        }
    }

    /// Runs one unary call: the caller must be allowed to (see [`RpcContext::authorize`]);
    /// `call` gets the request message; its result or error is mapped to a response or a
    /// status; the call is cut off at the deadline with `DEADLINE_EXCEEDED`; the outcome is
    /// counted under `rpc`.
    pub(crate) async fn unary<Q: Needs, R, F>(
        &self,
        rpc: &'static str,
        request: Request<Q>,
        call: impl FnOnce(ordkv::Node, Q) -> F,
    ) -> Result<Response<R>, Status>
    where
        F: Future<Output = ordkv::Result<R>>,
    {
        let started = Instant::now();
        let caller = match self.authorize(&request) {
            Ok(caller) => caller,
            Err(status) => {
                crate::metrics::record_request(rpc, status.code(), started.elapsed());
                return Err(status);
            }
        };
        let deadline = deadline(self.request_timeout, request.metadata());
        let span = tracing::info_span!("rpc", node = %self.node.identity().name, rpc, caller = caller.as_deref());
        let work = call(self.node.clone(), request.into_inner());
        let result = async {
            match tokio::time::timeout(deadline, work).await {
                Ok(Ok(response)) => Ok(Response::new(response)),
                Ok(Err(e)) => Err(status_from_error(e)),
                Err(_) => {
                    tracing::debug!(?deadline, "deadline exceeded");
                    Err(Status::deadline_exceeded(format!(
                        "deadline exceeded after {deadline:?}"
                    )))
                }
            }
        }
        .instrument(span)
        .await;
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        crate::metrics::record_request(rpc, code, started.elapsed());
        result
    }
}

/// How long a call may run: the server's timeout, or the client's `grpc-timeout` if shorter.
/// The client's deadline is shortened by a small margin (a tenth, at most 20 ms) so that the
/// server answers `DEADLINE_EXCEEDED` itself before tonic's own timeout cancels the call
/// (which clients would see as `CANCELLED`).
pub(crate) fn deadline(server: Duration, metadata: &MetadataMap) -> Duration {
    let client = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    match client {
        Some(client) => {
            let margin = (client / 10).min(Duration::from_millis(20));
            server.min(client - margin)
        }
        None => server,
    }
}

/// Parses a `grpc-timeout` header value: at most 8 digits and a unit (`H M S m u n`).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let split = value.len().checked_sub(1)?;
    if !value.is_char_boundary(split) {
        return None;
    }
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("10u"), Some(Duration::from_micros(10)));
        for bad in ["", "S", "5", "5x", "123456789S", "-5S", "5é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_shorter_deadline_wins() {
        let server = Duration::from_secs(30);
        let mut md = MetadataMap::new();
        assert_eq!(deadline(server, &md), server);
        md.insert("grpc-timeout", "1S".parse().unwrap());
        assert_eq!(deadline(server, &md), Duration::from_millis(980));
        md.insert("grpc-timeout", "100m".parse().unwrap());
        assert_eq!(deadline(server, &md), Duration::from_millis(90));
        md.insert("grpc-timeout", "1H".parse().unwrap());
        assert_eq!(deadline(server, &md), server);
        md.insert("grpc-timeout", "junk".parse().unwrap());
        assert_eq!(deadline(server, &md), server);
    }
}
