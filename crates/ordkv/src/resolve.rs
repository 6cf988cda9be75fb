//! Name resolution for peers: a pure-Rust resolver that reads `/etc/resolv.conf` and
//! `/etc/hosts` (so it works in a `FROM scratch` image, where glibc's NSS cannot load), and a
//! tonic connector that resolves the peer's DNS name on every (re)connect: a restarted pod
//! comes back with a new IP under the same name.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::tls::TlsMaterial;

fn resolver() -> Option<&'static TokioResolver> {
    static RESOLVER: OnceLock<Option<TokioResolver>> = OnceLock::new();
    RESOLVER
        .get_or_init(|| {
            let mut builder = match TokioResolver::builder_tokio() {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the system DNS configuration");
                    return None;
                }
            };
            // Pods come and go: never trust a cached answer for long.
            builder.options_mut().positive_max_ttl = Some(Duration::from_secs(2));
            builder.options_mut().negative_max_ttl = Some(Duration::from_secs(1));
            builder.build().ok()
        })
        .as_ref()
}

/// The addresses of `host` (an IP literal, a name in /etc/hosts, or a DNS name).
pub(crate) async fn lookup(host: &str) -> std::io::Result<Vec<IpAddr>> {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let r = resolver().ok_or_else(|| std::io::Error::other("no DNS resolver configured"))?;
    let found = r
        .lookup_ip(host)
        .await
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host}: {e}")))?;
    Ok(found.iter().collect())
}

/// Splits `host:port`.
pub(crate) fn split_host_port(addr: &str) -> std::io::Result<(&str, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| std::io::Error::other(format!("{addr:?} is not host:port")))?;
    let port = port
        .parse()
        .map_err(|_| std::io::Error::other(format!("{addr:?} has no valid port")))?;
    Ok((host, port))
}

type PeerIo = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

async fn connect(uri: Uri, tls: Option<TlsMaterial>) -> std::io::Result<TokioIo<PeerIo>> {
    let host = uri.host().unwrap_or_default().to_string();
    let port = uri.port_u16().unwrap_or(80);
    let mut last = std::io::Error::other(format!("{host} has no address"));
    for ip in lookup(&host).await? {
        match TcpStream::connect(SocketAddr::new(ip, port)).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                let Some(tls) = &tls else {
                    return Ok(TokioIo::new(Either::Left(s)));
                };
                // The peer must present a certificate from the CA valid for the name dialed.
                let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                    .map_err(|e| std::io::Error::other(format!("{host}: {e}")))?;
                let connector = tokio_rustls::TlsConnector::from(tls.dial_config());
                let stream = connector
                    .connect(name, s)
                    .await
                    .map_err(|e| std::io::Error::new(e.kind(), format!("TLS with {host}: {e}")))?;
                return Ok(TokioIo::new(Either::Right(stream)));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A lazily connecting channel to `addr` (`host:port`), re-resolving `host` on each connect,
/// with TLS from `tls` (the material current at each connect).
pub(crate) fn channel(
    addr: &str,
    connect_timeout: Duration,
    tls: Option<TlsMaterial>,
) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad peer address {addr:?}: {e}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(endpoint
        .connect_with_connector_lazy(tower::service_fn(move |uri| connect(uri, tls.clone()))))
}

/// Whether the host of `addr` (`host:port`) resolves to at least one address now.
pub(crate) async fn resolves(addr: &str) -> bool {
    match split_host_port(addr) {
        Ok((host, _)) => lookup(host).await.is_ok_and(|a| !a.is_empty()),
        Err(_) => false,
    }
}
