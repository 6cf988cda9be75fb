//! TLS material from a directory laid out as a Kubernetes `kubernetes.io/tls` Secret
//! (`tls.crt`, `tls.key`, `ca.crt`, as cert-manager writes it), re-read when it changes, and
//! the rustls configurations built from it for the three ports and the peer dialer.
//!
//! Kubernetes updates a Secret volume by swapping its `..data` symlink, so the three files
//! change at once; cert-manager renews before expiry. [`TlsMaterial::watch`] polls the files
//! and swaps in new material that parses and whose key matches its certificate: new
//! connections use it, open ones continue. Bad new files keep the old material, are logged
//! once and counted (`ordkv_tls_reload_errors_total`).

mod cert;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

pub use cert::CertInfo;
pub use verify::{ClientAuth, PeerNames};

/// Counter: reloads that found new files unusable (the old material stays in use).
pub const TLS_RELOAD_ERRORS: &str = "ordkv_tls_reload_errors_total";
/// Counter: reloads that put new material in use.
pub const TLS_RELOADS: &str = "ordkv_tls_reloads_total";
/// Gauge: the serving certificate's `not_after`, Unix seconds (alert before it passes).
pub const TLS_CERT_NOT_AFTER: &str = "ordkv_tls_cert_not_after_seconds";

/// How often the files are checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The certificate, key and CA bundle of one member, shared by its ports and re-read on
/// change. Cloning is cheap.
#[derive(Clone)]
pub struct TlsMaterial {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

struct Shared {
    dir: PathBuf,
    current: RwLock<Arc<Loaded>>,
}

/// One version of the files, with what is built from them.
pub(crate) struct Loaded {
    /// The bytes read, to notice a change.
    files: [Vec<u8>; 3],
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) info: CertInfo,
    client_required: Arc<dyn ClientCertVerifier>,
    client_optional: Arc<dyn ClientCertVerifier>,
    /// How this member dials peers: verifies them against the CA, presents its certificate.
    dial: Arc<rustls::ClientConfig>,
}

/// rustls with ring. rustls 0.23.48 deprecates it for lacking post-quantum key exchange; its
/// alternative, aws-lc-rs, needs cmake and a C++ toolchain to build.
#[allow(deprecated)]
pub(crate) fn ring_provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

const FILES: [&str; 3] = ["tls.crt", "tls.key", "ca.crt"];

impl TlsMaterial {
    /// Reads `dir/tls.crt`, `dir/tls.key` and `dir/ca.crt`. The error names the file and
    /// what is wrong with it.
    pub fn load(dir: impl Into<PathBuf>) -> Result<TlsMaterial, String> {
        let dir = dir.into();
        let loaded = Loaded::read(&dir)?;
        tracing::info!(
            dir = %dir.display(),
            names = %loaded.info.names(),
            not_after = loaded.info.not_after,
            "TLS on"
        );
        Ok(TlsMaterial {
            shared: Arc::new(Shared {
                dir,
                current: RwLock::new(Arc::new(loaded)),
            }),
        })
    }

    /// The directory the material is read from.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub(crate) fn current(&self) -> Arc<Loaded> {
        self.shared
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What the serving certificate says (names, expiry).
    pub fn cert_info(&self) -> CertInfo {
        self.current().info.clone()
    }

    /// Re-reads the files; returns whether new material is now in use. Unchanged files are
    /// not parsed again; unusable ones leave the current material in place.
    pub fn reload(&self) -> Result<bool, String> {
        let current = self.current();
        let files = read_files(&self.shared.dir)?;
        if files == current.files {
            return Ok(false);
        }
        let loaded = Loaded::parse(&self.shared.dir, files)?;
        tracing::info!(
            dir = %self.shared.dir.display(),
            names = %loaded.info.names(),
            not_after = loaded.info.not_after,
            "TLS material reloaded; new connections use it"
        );
        *self
            .shared
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        Ok(true)
    }

    /// Polls the files until `stop`, swapping in new material when they change.
    pub async fn watch(self, stop: CancellationToken) {
        // The same bad files are reported once, not every poll.
        let mut reported: Option<String> = None;
        // The files of a Secret are read one by one, so a read can straddle an update; a
        // failure counts only when the next read sees the same.
        let mut pending: Option<String> = None;
        loop {
            metrics::gauge!(TLS_CERT_NOT_AFTER).set(self.current().info.not_after as f64);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RELOAD_EVERY) => {}
            }
            match self.reload() {
                Ok(changed) => {
                    if changed {
                        metrics::counter!(TLS_RELOADS).increment(1);
                    }
                    reported = None;
                    pending = None;
                }
                Err(e) if pending.as_ref() != Some(&e) => pending = Some(e),
                Err(e) => {
                    if reported.as_ref() != Some(&e) {
                        metrics::counter!(TLS_RELOAD_ERRORS).increment(1);
                        tracing::error!(
                            dir = %self.shared.dir.display(),
                            error = %e,
                            "new TLS files are unusable; still using the previous ones"
                        );
                        reported = Some(e);
                    }
                }
            }
        }
    }

    /// A server configuration for one port. It resolves the certificate and the client
    /// verifier at each handshake, so reloads reach new connections.
    pub fn server_config(&self, auth: ClientAuth, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let verifier = Arc::new(verify::DynamicClientVerifier {
            material: self.clone(),
            auth,
        });
        let builder = rustls::ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let builder = if verifier.auth.offers() {
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_cert_resolver(Arc::new(verify::CurrentCert(self.clone())));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// How this member dials a peer now.
    pub(crate) fn dial_config(&self) -> Arc<rustls::ClientConfig> {
        self.current().dial.clone()
    }
}

fn read_files(dir: &Path) -> Result<[Vec<u8>; 3], String> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| {
            format!(
                "cannot read {}: {e}; --tls-dir must hold tls.crt, tls.key and ca.crt (a kubernetes.io/tls Secret)",
                path.display()
            )
        })
    };
    Ok([read(FILES[0])?, read(FILES[1])?, read(FILES[2])?])
}

impl Loaded {
    fn read(dir: &Path) -> Result<Loaded, String> {
        Loaded::parse(dir, read_files(dir)?)
    }

    fn parse(dir: &Path, files: [Vec<u8>; 3]) -> Result<Loaded, String> {
        let path = |i: usize| dir.join(FILES[i]).display().to_string();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files[0])
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", path(0)))?;
        if chain.is_empty() {
            return Err(format!("{} holds no PEM certificate", path(0)));
        }
        let key = PrivateKeyDer::from_pem_slice(&files[1])
            .map_err(|e| format!("{}: no usable PEM private key: {e}", path(1)))?;
        let provider = ring_provider();
        let certified = CertifiedKey::from_der(chain.clone(), key, &provider).map_err(|e| {
            format!(
                "{} does not go with {}: {e}; the key must be the certificate's",
                path(1),
                path(0)
            )
        })?;
        let info = CertInfo::parse(&chain[0]).map_err(|e| format!("{}: {e}", path(0)))?;

        let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files[2])
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", path(2)))?;
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(cas);
        if added == 0 {
            return Err(format!("{} holds no usable CA certificate", path(2)));
        }
        let roots = Arc::new(roots);
        let verifier_error = |e| format!("{}: {e}", path(2));
        let client_required =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(verifier_error)?;
        let client_optional =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(verifier_error)?;
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(verifier_error)?;
        let key = Arc::new(certified);
        let mut dial = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_webpki_verifier(server_verifier)
            .with_client_cert_resolver(Arc::new(verify::FixedClientCert(key.clone())));
        dial.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Loaded {
            files,
            key,
            info,
            client_required,
            client_optional,
            dial: Arc::new(dial),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
