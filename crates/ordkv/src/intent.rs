//! Scale intent: the `spec.replicas` of this member's StatefulSet, read from the Kubernetes
//! API with the pod's service account (the standard in-cluster configuration).
//!
//! `kubectl scale` changes `spec.replicas` before the controller terminates any pod, so a
//! member whose ordinal is at or above it knows it is leaving for good and not restarting,
//! and the leader knows which gone members will not come back. Without API access (no
//! Kubernetes, no RBAC, the API down) the intent is unavailable and nothing acts on it.
//!
//! One GET of the StatefulSet every [`POLL`], over HTTPS with the service account's CA and
//! bearer token (re-read each time: Kubernetes rotates projected tokens), HTTP/1.1 through
//! hyper and rustls. A failed poll keeps the last known count for [`STALE_AFTER`], then
//! reports the failure; it never stops the node.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the StatefulSet is read.
pub const POLL: Duration = Duration::from_secs(3);
/// How long a count read earlier stays in force while polls fail.
const STALE_AFTER: Duration = Duration::from_secs(30);
/// One request's limit (connect, TLS, answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest StatefulSet document read.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The intent before the first poll answered.
pub(crate) const NOT_READ_YET: &str = "not read yet";

/// Where the pod's service account is mounted.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How to reach the Kubernetes API and which StatefulSet to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesApi {
    /// `KUBERNETES_SERVICE_HOST`: an IP address or a DNS name.
    pub host: String,
    /// `KUBERNETES_SERVICE_PORT`.
    pub port: u16,
    /// Holds `token` and `ca.crt`.
    pub service_account_dir: PathBuf,
    /// The namespace of the StatefulSet.
    pub namespace: String,
    /// The StatefulSet's name (the member name without its `-N` by default).
    pub statefulset: String,
}

impl KubernetesApi {
    /// The in-cluster configuration from the environment Kubernetes gives every pod, or why
    /// there is none.
    pub fn in_cluster(
        statefulset: &str,
        namespace: &str,
        service_account_dir: Option<PathBuf>,
    ) -> std::result::Result<KubernetesApi, String> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .ok_or("not running in Kubernetes (KUBERNETES_SERVICE_HOST is not set)")?;
        let port = match std::env::var("KUBERNETES_SERVICE_PORT") {
            Ok(p) => p
                .parse()
                .map_err(|_| format!("KUBERNETES_SERVICE_PORT={p:?} is not a port"))?,
            Err(_) => 443,
        };
        Ok(KubernetesApi {
            host,
            port,
            service_account_dir: service_account_dir
                .unwrap_or_else(|| PathBuf::from(SERVICE_ACCOUNT_DIR)),
            namespace: namespace.to_string(),
            statefulset: statefulset.to_string(),
        })
    }

    /// `spec.replicas` now (Kubernetes defaults an absent count to 1).
    pub async fn replicas(&self) -> std::result::Result<u32, String> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.get_replicas())
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
    }

    async fn get_replicas(&self) -> std::result::Result<u32, String> {
        let dir = &self.service_account_dir;
        let token = std::fs::read_to_string(dir.join("token"))
            .map_err(|e| format!("reading {}: {e}", dir.join("token").display()))?;
        let tls = tls_config(&dir.join("ca.crt"))?;
        let server_name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .map_err(|e| format!("API host {:?}: {e}", self.host))?;
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connecting to {}:{}: {e}", self.host, self.port))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("TLS with {}:{}: {e}", self.host, self.port))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
        let conn = tokio::spawn(conn);
        let path = format!(
            "/apis/apps/v1/namespaces/{}/statefulsets/{}",
            self.namespace, self.statefulset
        );
        let req = hyper::Request::get(&path)
            .header(hyper::header::HOST, &self.host)
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            )
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| format!("GET {path}: reading the answer: {e}"))?
            .to_bytes();
        conn.abort();
        parse_replicas(status.as_u16(), &body).map_err(|e| format!("GET {path}: {e}"))
    }
}

fn tls_config(ca: &std::path::Path) -> std::result::Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .and_then(|i| i.collect())
        .map_err(|e| format!("reading {}: {e}", ca.display()))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{} holds no usable certificate", ca.display()));
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `spec.replicas` from the API's answer, or what the API said instead.
fn parse_replicas(status: u16, body: &[u8]) -> std::result::Result<u32, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("HTTP {status}: not JSON: {e}"))?;
    if status != 200 {
        // A `Status` object: "statefulsets.apps \"kv\" is forbidden: ...".
        let message = doc["message"].as_str().unwrap_or("no message");
        return Err(format!("HTTP {status}: {message}"));
    }
    match &doc["spec"]["replicas"] {
        serde_json::Value::Null => Ok(1),
        v => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("spec.replicas is {v}, not a count")),
    }
}

/// What this member knows of its StatefulSet's intended size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScaleIntent {
    /// `spec.replicas` as last read.
    Replicas(u32),
    /// No count is known, and why (shown in `cluster status`).
    Unavailable(String),
}

impl ScaleIntent {
    /// The count, when known.
    pub fn replicas(&self) -> Option<u32> {
        match self {
            ScaleIntent::Replicas(n) => Some(*n),
            ScaleIntent::Unavailable(_) => None,
        }
    }

    /// Whether a member with this ordinal is being scaled away (never at zero replicas:
    /// scaling to zero is a stop, and everyone comes back).
    pub fn removes(&self, ordinal: u32) -> bool {
        self.replicas().is_some_and(|n| n > 0 && ordinal >= n)
    }
}

impl std::fmt::Display for ScaleIntent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScaleIntent::Replicas(n) => write!(f, "replicas {n}"),
            ScaleIntent::Unavailable(why) => write!(f, "unavailable ({why})"),
        }
    }
}

/// The latest intent, kept fresh by a polling task.
#[derive(Clone)]
pub(crate) struct IntentWatch {
    api: Option<Arc<KubernetesApi>>,
    tx: Arc<watch::Sender<ScaleIntent>>,
}

impl IntentWatch {
    /// The intent from `api`, unavailable for the reason given without one; [`poll`] keeps
    /// it current.
    ///
    /// [`poll`]: IntentWatch::poll
    pub(crate) fn new(api: std::result::Result<KubernetesApi, String>) -> IntentWatch {
        let (api, first) = match api {
            Ok(api) => (
                Some(Arc::new(api)),
                ScaleIntent::Unavailable(NOT_READ_YET.into()),
            ),
            Err(why) => (None, ScaleIntent::Unavailable(why)),
        };
        let watch = IntentWatch {
            api,
            tx: Arc::new(watch::channel(first).0),
        };
        if watch.api.is_none() {
            tracing::info!(scale_intent = %watch.current(), "scale intent: scale-down waits for the dead-member timeout")
        }
        watch
    }

    /// The intent as last read.
    pub(crate) fn current(&self) -> ScaleIntent {
        self.tx.borrow().clone()
    }

    /// The intent read now (on SIGTERM: the count may have changed since the last poll),
    /// else the last one known.
    pub(crate) async fn fresh(&self) -> ScaleIntent {
        if let Some(api) = &self.api
            && let Ok(n) = api.replicas().await
        {
            self.set(ScaleIntent::Replicas(n));
        }
        self.current()
    }

    fn first_read_pending(&self) -> bool {
        matches!(&*self.tx.borrow(), ScaleIntent::Unavailable(why) if why == NOT_READ_YET)
    }

    fn set(&self, next: ScaleIntent) {
        if *self.tx.borrow() == next {
            return;
        }
        let statefulset = self.api.as_ref().map(|a| a.statefulset.as_str());
        let was_unavailable = self.current().replicas().is_none();
        match &next {
            ScaleIntent::Replicas(_) => {
                tracing::info!(statefulset, scale_intent = %next, "scale intent")
            }
            // Said once per outage: only the reason's wording changed (`cluster status` shows
            // the latest).
            ScaleIntent::Unavailable(_) if was_unavailable && !self.first_read_pending() => {
                tracing::debug!(statefulset, scale_intent = %next, "scale intent still unavailable")
            }
            ScaleIntent::Unavailable(_) => {
                tracing::warn!(statefulset, scale_intent = %next, "scale intent: scale-down waits for the dead-member timeout")
            }
        }
        self.tx.send_replace(next);
    }

    /// Reads the StatefulSet every [`POLL`] until `stop` (returns at once without an API).
    pub(crate) async fn poll(self, stop: CancellationToken) {
        let Some(api) = self.api.clone() else { return };
        let mut last_ok = tokio::time::Instant::now();
        loop {
            match api.replicas().await {
                Ok(n) => {
                    last_ok = tokio::time::Instant::now();
                    self.set(ScaleIntent::Replicas(n));
                }
                Err(why)
                    if self.current().replicas().is_some() && last_ok.elapsed() < STALE_AFTER =>
                {
                    tracing::debug!(error = %why, "scale intent: reading the StatefulSet failed; keeping the last count");
                }
                Err(why) => self.set(ScaleIntent::Unavailable(why)),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_come_from_the_spec_and_default_to_one() {
        let sts = br#"{"kind":"StatefulSet","spec":{"replicas":4},"status":{"replicas":3}}"#;
        assert_eq!(parse_replicas(200, sts), Ok(4));
        assert_eq!(parse_replicas(200, br#"{"spec":{}}"#), Ok(1));
        assert!(parse_replicas(200, br#"{"spec":{"replicas":-1}}"#).is_err());
        assert!(parse_replicas(200, b"<html>").is_err());
    }

    #[test]
    fn an_api_refusal_says_what_the_api_said() {
        let forbidden = br#"{"kind":"Status","message":"statefulsets.apps \"kv\" is forbidden: User \"system:serviceaccount:default:default\" cannot get resource"}"#;
        let err = parse_replicas(403, forbidden).unwrap_err();
        assert!(err.starts_with("HTTP 403: statefulsets.apps"), "{err}");
    }

    #[test]
    fn scale_to_zero_removes_nobody() {
        assert!(ScaleIntent::Replicas(2).removes(2));
        assert!(ScaleIntent::Replicas(2).removes(3));
        assert!(!ScaleIntent::Replicas(2).removes(1));
        assert!(!ScaleIntent::Replicas(0).removes(0));
        assert!(!ScaleIntent::Replicas(0).removes(5));
        assert!(!ScaleIntent::Unavailable("no API".into()).removes(5));
    }
}
