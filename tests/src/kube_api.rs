//! The slice of the Kubernetes API that an ordkv pod reads about itself: `GET` of its
//! StatefulSet, over HTTPS with a CA of its own, answering only the service account's bearer
//! token, with the `spec.replicas` the test (playing the StatefulSet controller) scales to.
//!
//! [`FakeKubeApi::start`] also writes the service-account files a pod gets mounted at
//! `/var/run/secrets/kubernetes.io/serviceaccount/` (`token`, `ca.crt`, `namespace`) into a
//! temp dir; [`FakeKubeApi::pod_env`] gives the environment that points a member at both.
//!
//! What it leaves out of the real API server: watches (ordkv polls), `resourceVersion`, any
//! other object, and RBAC beyond one token (a wrong token gets 401, another StatefulSet 403 as RBAC
//! would answer it).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TOKEN: &str = "test-service-account-token";

/// A running fake API server.
pub struct FakeKubeApi {
    replicas: Arc<AtomicU32>,
    /// GETs of the StatefulSet answered with 200.
    reads: Arc<AtomicU64>,
    /// Connections are closed unanswered (the API server down).
    down: Arc<AtomicBool>,
    ip: IpAddr,
    port: u16,
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl FakeKubeApi {
    /// Serves StatefulSet `statefulset` in `namespace` with `replicas` on a free loopback
    /// port.
    pub async fn start(namespace: &str, statefulset: &str, replicas: u32) -> FakeKubeApi {
        Self::start_at(Ipv4Addr::LOCALHOST.into(), namespace, statefulset, replicas).await
    }

    /// The same on a free port of `ip` (a Docker network's gateway, for containers).
    pub async fn start_at(
        ip: IpAddr,
        namespace: &str,
        statefulset: &str,
        replicas: u32,
    ) -> FakeKubeApi {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fake kubernetes CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("server key");
        // The API server's certificate names the Service IP it is reached by.
        let params = rcgen::CertificateParams::new(vec![ip.to_string()]).expect("server params");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");

        let dir = tempfile::tempdir().expect("service account dir");
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("namespace"), namespace).unwrap();
        // Readable by a container's non-root user when mounted (Kubernetes mounts them 0644).
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |m| std::fs::Permissions::from_mode(m);
            std::fs::set_permissions(dir.path(), mode(0o755)).unwrap();
            for f in ["token", "ca.crt", "namespace"] {
                std::fs::set_permissions(dir.path().join(f), mode(0o644)).unwrap();
            }
        }

        #[allow(deprecated)] // ring: see `ring_provider` in ordkv/src/intent.rs
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind((ip, 0))
            .await
            .unwrap_or_else(|e| panic!("binding the fake API to {ip}: {e}"));
        let port = listener.local_addr().unwrap().port();
        let replicas = Arc::new(AtomicU32::new(replicas));
        let reads = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let path = format!("/apis/apps/v1/namespaces/{namespace}/statefulsets/{statefulset}");
        let task = tokio::spawn({
            let (replicas, reads, down) = (replicas.clone(), reads.clone(), down.clone());
            async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    if down.load(Ordering::SeqCst) {
                        continue; // dropped: closed unanswered
                    }
                    let (acceptor, path) = (acceptor.clone(), path.clone());
                    let (replicas, reads) = (replicas.clone(), reads.clone());
                    tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            let _ = answer(tls, &path, &replicas, &reads).await;
                        }
                    });
                }
            }
        });
        FakeKubeApi {
            replicas,
            reads,
            down,
            ip,
            port,
            dir,
            task,
        }
    }

    /// Scales the StatefulSet: what `kubectl scale --replicas n` changes first.
    pub fn set_replicas(&self, n: u32) {
        self.replicas.store(n, Ordering::SeqCst);
    }

    /// The API server goes down (`true`: connections are closed unanswered) or comes back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`.
    pub fn host_and_port(&self) -> (String, u16) {
        (self.ip.to_string(), self.port)
    }

    /// How many times the StatefulSet was read successfully.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    /// The service-account dir (`token`, `ca.crt`, `namespace`).
    pub fn service_account_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The environment and flag a pod of this API gets: `KUBERNETES_SERVICE_HOST`/`PORT`,
    /// and where the service account is mounted.
    pub fn pod_env(&self) -> Vec<(String, String)> {
        vec![
            ("KUBERNETES_SERVICE_HOST".into(), self.ip.to_string()),
            ("KUBERNETES_SERVICE_PORT".into(), self.port.to_string()),
            (
                "ORDKV_SERVICE_ACCOUNT_DIR".into(),
                self.service_account_dir().display().to_string(),
            ),
        ]
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request and answers it as the API server would.
async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
    replicas: &AtomicU32,
    reads: &AtomicU64,
) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let request = String::from_utf8_lossy(&request);
    let mut lines = request.lines();
    let first = lines.next().unwrap_or_default();
    let authorized = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.eq_ignore_ascii_case("authorization") && v.trim() == format!("Bearer {TOKEN}")
        })
    });
    let (status, body) = if !authorized {
        (
            "401 Unauthorized",
            r#"{"kind":"Status","status":"Failure","message":"Unauthorized","code":401}"#
                .to_string(),
        )
    } else if first != format!("GET {path} HTTP/1.1") {
        (
            "403 Forbidden",
            format!(
                r#"{{"kind":"Status","status":"Failure","message":"{} is forbidden","code":403}}"#,
                first.replace('"', "'")
            ),
        )
    } else {
        reads.fetch_add(1, Ordering::SeqCst);
        (
            "200 OK",
            format!(
                r#"{{"kind":"StatefulSet","apiVersion":"apps/v1","spec":{{"replicas":{}}}}}"#,
                replicas.load(Ordering::SeqCst)
            ),
        )
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
