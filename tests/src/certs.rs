//! Certificates for TLS scenarios, issued and mounted the way cert-manager and the kubelet
//! do it: a CA, leaf certificates per member, and Secret-like directories (`tls.crt`,
//! `tls.key`, `ca.crt`) whose contents are swapped atomically through a `..data` symlink.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// A certificate and its key, PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The first name it was issued for (its CN).
    pub name: String,
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

/// A throwaway CA.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("self-signed CA"),
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `names` (DNS names or IP addresses); the first is its CN.
    pub fn issue(&self, names: &[&str]) -> Issued {
        self.issue_with(names, |_| {})
    }

    /// [`TestCa::issue`] with the parameters edited first (e.g. an expired validity).
    pub fn issue_with(&self, names: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> Issued {
        let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        edit(&mut params);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Issued {
            name: names[0].to_string(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// Writes a `kubernetes.io/tls` Secret volume into `dir` as the kubelet does: the files in
/// a new timestamped directory, then `..data` swapped to it with one rename, so a reader
/// sees the old files or the new ones. `tls.crt`, `tls.key` and `ca.crt` link through
/// `..data`.
pub fn write_secret(dir: &Path, leaf: &Issued, ca_bundle: &str) {
    use std::os::unix::fs::symlink;
    std::fs::create_dir_all(dir).expect("secret dir");
    let version = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos()
    );
    let data = dir.join(&version);
    std::fs::create_dir(&data).expect("secret version dir");
    std::fs::write(data.join("tls.crt"), &leaf.cert).expect("tls.crt");
    std::fs::write(data.join("tls.key"), &leaf.key).expect("tls.key");
    std::fs::write(data.join("ca.crt"), ca_bundle).expect("ca.crt");
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&version, &tmp).expect("..data_tmp");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    for name in ["tls.crt", "tls.key", "ca.crt"] {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{name}"), &link).expect("file link");
        }
    }
}

/// A tonic client TLS configuration trusting `ca_bundle`, presenting `identity` if given.
pub fn client_tls(ca_bundle: &str, identity: Option<&Issued>) -> ClientTlsConfig {
    let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_bundle));
    match identity {
        Some(id) => config.identity(Identity::from_pem(&id.cert, &id.key)),
        None => config,
    }
}

/// The certificate a TLS server at `addr` presents now (DER), through a fresh handshake that
/// trusts `ca_bundle` and presents `identity` if given.
pub async fn presented_certificate(
    addr: std::net::SocketAddr,
    ca_bundle: &str,
    identity: Option<&Issued>,
) -> Result<Vec<u8>, String> {
    let tls = connect(addr, ca_bundle, identity).await?;
    let (_, conn) = tls.get_ref();
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or_else(|| "no certificate presented".to_string())
}

/// An HTTP/1.0 GET over TLS: `(status code, body)`.
pub async fn https_get(
    addr: std::net::SocketAddr,
    ca_bundle: &str,
    path: &str,
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = connect(addr, ca_bundle, None).await?;
    tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    // A server may close without close_notify; what was read counts.
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((code, body.to_string()))
}

async fn connect(
    addr: std::net::SocketAddr,
    ca_bundle: &str,
    identity: Option<&Issued>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_bundle.as_bytes()) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(id.cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?,
                PrivateKeyDer::from_pem_slice(id.key.as_bytes()).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::from(addr.ip());
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

/// The DER of the first certificate in `pem`.
pub fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("PEM certificate")
        .to_vec()
}
