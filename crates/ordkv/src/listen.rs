//! Accepting connections on one port (client, peer or HTTP): a bound in total and per remote
//! address, TLS handshakes off the accept loop under a deadline, and a watchdog that closes
//! connections which never set up their protocol or stop sending anything.
//!
//! Without these, connections that open and then say nothing hold their slot forever: 4,225
//! of them (the HTTP/2 preface, then silence) filled the client port's bound and new clients
//! timed out connecting for as long as they stayed open.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::tls::CertInfo;

/// Counter: connections closed by the listener, labels `port` and `reason`
/// (`per_address_limit`, `setup_timeout`, `tls_handshake`, `not_tls`, `idle`; and
/// `no_client_cert` for connections kept only to refuse their requests).
pub const CONNECTIONS_CLOSED: &str = "ordkv_connections_closed_total";

/// The first bytes of an HTTP/2 connection: the 24-byte preface and a SETTINGS frame header.
pub const HTTP2_SETUP_BYTES: u64 = 24 + 9;
/// The shortest HTTP/1 request line.
pub const HTTP1_SETUP_BYTES: u64 = 16;

/// How one port accepts.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// `client`, `peer` or `http`, for logs and metrics.
    pub port: &'static str,
    /// Connections open at once; at the bound, new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Connections open at once from one IP address; beyond it new ones are closed.
    pub max_per_address: usize,
    /// Time from accept to a finished TLS handshake and `setup_bytes` received.
    pub setup_timeout: Duration,
    /// Bytes the protocol's first message takes (see [`HTTP2_SETUP_BYTES`]).
    pub setup_bytes: u64,
    /// A connection from which nothing arrives for this long is closed. HTTP/2 peers answer
    /// the server's keepalive pings, so only dead or silent peers reach it.
    pub idle_timeout: Duration,
    /// TLS, or plaintext when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Requests on TLS connections without a verified client certificate are refused with
    /// [`CLIENT_CERT_REQUIRED`] (the handshake admits them, so the client reads why instead
    /// of a broken pipe).
    pub client_cert_required: bool,
}

impl ListenConfig {
    /// Defaults for an HTTP/2 (gRPC) port.
    pub fn grpc(port: &'static str, tls: Option<Arc<rustls::ServerConfig>>) -> ListenConfig {
        ListenConfig {
            port,
            max_connections: 4096,
            max_per_address: 1024,
            setup_timeout: Duration::from_secs(5),
            setup_bytes: HTTP2_SETUP_BYTES,
            idle_timeout: Duration::from_secs(300),
            tls,
            client_cert_required: false,
        }
    }
}

/// What a service learns about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The remote address.
    pub remote: SocketAddr,
    /// The verified client certificate, if one was presented.
    pub client_cert: Option<Arc<CertInfo>>,
    /// Set on a plaintext HTTP/2 connection to a TLS port: it is kept only to answer each
    /// request with this explanation (a clear error beats a reset connection).
    pub refused: Option<&'static str>,
}

/// What a client without a certificate is told on a port that requires one.
pub const CLIENT_CERT_REQUIRED: &str = "this port requires a client certificate signed by the \
     server's CA (ordkv CLI: --cert and --key)";

/// What a plaintext HTTP/2 client on a TLS port is told.
pub const TLS_REQUIRED: &str = "this port requires TLS: connect with https:// and the CA that signed \
     the server's certificate (ordkv CLI: --cacert; add --cert and --key if the server requires \
     client certificates)";

/// Accepts from `listener` per `config`. Each connection is set up (TLS handshake) in its
/// own task, so a stalled one delays no other. The accept loop stops when the returned stream
/// is dropped.
pub fn incoming(listener: TcpListener, config: ListenConfig) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, Arc::new(config), tx));
    ReceiverStream::new(rx)
}

struct Shared {
    config: Arc<ListenConfig>,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    log: LogLimiter,
}

/// The same log line at most once per [`LOG_EVERY`], with a count of the repeats left out:
/// a misconfigured client retrying in a loop, or a flood, logs a line now and then.
#[derive(Default)]
struct LogLimiter {
    lines: Mutex<HashMap<String, (Instant, u64)>>,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl LogLimiter {
    /// `Some(repeats left out since it was last logged)` when `line` may be logged now.
    fn allow(&self, line: &str) -> Option<u64> {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((last, repeats)) = lines.get_mut(line)
            && last.elapsed() < LOG_EVERY
        {
            *repeats += 1;
            return None;
        }
        if lines.len() >= 1024 {
            lines.retain(|_, (last, _)| last.elapsed() < LOG_EVERY);
        }
        let previous = lines.insert(line.to_string(), (Instant::now(), 0));
        Some(previous.map_or(0, |(_, repeats)| repeats))
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<ListenConfig>,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    let slots = Arc::new(Semaphore::new(
        config.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let shared = Arc::new(Shared {
        config,
        per_address: Mutex::new(HashMap::new()),
        log: Default::default(),
    });
    loop {
        let slot = tokio::select! {
            () = tx.closed() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = tx.closed() => return,
            a = listener.accept() => a,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) {
                    // E.g. out of file descriptors: pause rather than spin.
                    tracing::warn!(port = shared.config.port, error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let Some(slot) = Slot::take(&shared, remote.ip(), slot) else {
            shared.closed(remote, "per_address_limit", || {
                format!(
                    "more than {} connections from {}",
                    shared.config.max_per_address,
                    remote.ip()
                )
            });
            continue;
        };
        // Small request/response messages: do not wait to coalesce them.
        let _ = stream.set_nodelay(true);
        let tx = tx.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Some(conn) = set_up(stream, remote, slot, &shared).await {
                let _ = tx.send(Ok(conn)).await;
            }
        });
    }
}

/// Runs the TLS handshake (or checks that a plaintext HTTP/2 client came to a TLS port)
/// within the setup deadline.
async fn set_up(
    stream: TcpStream,
    remote: SocketAddr,
    slot: Slot,
    shared: &Shared,
) -> Option<Conn> {
    let config = &shared.config;
    let started = Instant::now();
    let mut info = ConnInfo {
        remote,
        client_cert: None,
        refused: None,
    };
    let io = match &config.tls {
        None => Io::Plain(stream),
        Some(tls) => {
            let mut first = [0u8; 1];
            match tokio::time::timeout(config.setup_timeout, stream.peek(&mut first)).await {
                Ok(Ok(1)) => {}
                Ok(_) => return None,
                Err(_) => {
                    shared.closed(remote, "setup_timeout", || "sent nothing".into());
                    return None;
                }
            }
            // 0x16: a TLS handshake record. `P`: the HTTP/2 preface (`PRI * HTTP/2.0`).
            if first[0] == b'P' {
                shared.closed(remote, "not_tls", || {
                    "a plaintext HTTP/2 client on a TLS port; it is told to use TLS".into()
                });
                info.refused = Some(TLS_REQUIRED);
                Io::Plain(stream)
            } else if first[0] != 0x16 {
                shared.closed(remote, "not_tls", || {
                    format!("not TLS (first byte {:#04x})", first[0])
                });
                return None;
            } else {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                let handshake =
                    tokio::time::timeout(config.setup_timeout, acceptor.accept(stream)).await;
                match handshake {
                    Ok(Ok(tls)) => {
                        info.client_cert = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| CertInfo::parse(c).ok())
                            .map(Arc::new);
                        if config.client_cert_required && info.client_cert.is_none() {
                            shared.closed(remote, "no_client_cert", || {
                                "a TLS client without a certificate; it is told to present one"
                                    .into()
                            });
                            info.refused = Some(CLIENT_CERT_REQUIRED);
                        }
                        Io::Tls(Box::new(tls))
                    }
                    Ok(Err(e)) => {
                        shared.closed(remote, "tls_handshake", || {
                            format!("TLS handshake refused: {e}")
                        });
                        return None;
                    }
                    Err(_) => {
                        shared.closed(remote, "setup_timeout", || {
                            format!(
                                "TLS handshake not finished within {:?}",
                                config.setup_timeout
                            )
                        });
                        return None;
                    }
                }
            }
        }
    };
    let deadline = started + config.setup_timeout;
    Some(Conn {
        io,
        info,
        watchdog: Watchdog {
            timer: Box::pin(tokio::time::sleep_until(deadline.into())),
            setup_deadline: deadline,
            setup_bytes: config.setup_bytes,
            idle_timeout: config.idle_timeout,
            received: 0,
            last_read: Instant::now(),
        },
        shared_port: config.port,
        _slot: slot,
    })
}

impl Shared {
    /// Counts a connection the listener closed (or marked refused) and logs it, at most
    /// one line per few seconds per port.
    fn closed(&self, remote: SocketAddr, reason: &'static str, why: impl FnOnce() -> String) {
        metrics::counter!(CONNECTIONS_CLOSED, "port" => self.config.port, "reason" => reason)
            .increment(1);
        let why = why();
        if let Some(repeats) = self.log.allow(&why) {
            tracing::warn!(
                port = self.config.port,
                %remote,
                repeats,
                "closing a connection: {why}"
            );
        }
    }
}

/// A connection's places in the total and per-address bounds, given back when it closes.
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
    _total: OwnedSemaphorePermit,
}

impl Slot {
    fn take(shared: &Arc<Shared>, ip: IpAddr, total: OwnedSemaphorePermit) -> Option<Slot> {
        let mut map = shared.per_address.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_default();
        if *n >= shared.config.max_per_address {
            return None;
        }
        *n += 1;
        Some(Slot {
            shared: shared.clone(),
            ip,
            _total: total,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self
            .shared
            .per_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Closes, through the read side, a connection that has not sent its protocol's first
/// message by the setup deadline or has sent nothing for the idle timeout. The server reads
/// continuously, so the timer is polled whenever a read is pending.
struct Watchdog {
    timer: Pin<Box<tokio::time::Sleep>>,
    setup_deadline: Instant,
    setup_bytes: u64,
    idle_timeout: Duration,
    received: u64,
    last_read: Instant,
}

impl Watchdog {
    fn next_deadline(&self) -> Instant {
        if self.received < self.setup_bytes {
            self.setup_deadline
        } else {
            self.last_read + self.idle_timeout
        }
    }

    /// Ready with the reason once the connection should close. The timer is moved only
    /// when it fires (reads push the idle deadline on, and resetting a timer per read would
    /// cost more than the check).
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<&'static str> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = self.next_deadline();
            if Instant::now() >= deadline {
                return Poll::Ready(if self.received < self.setup_bytes {
                    "setup_timeout"
                } else {
                    "idle"
                });
            }
            self.timer.as_mut().reset(deadline.into());
        }
    }
}

/// An accepted connection (plaintext or TLS) holding its slots until it closes.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    watchdog: Watchdog,
    shared_port: &'static str,
    _slot: Slot,
}

impl Conn {
    /// What the services see about this connection.
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        match polled {
            Poll::Ready(Ok(())) => {
                let n = (buf.filled().len() - before) as u64;
                if n > 0 {
                    this.watchdog.received += n;
                    this.watchdog.last_read = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.watchdog.poll_expired(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(reason) => {
                    let remote = this.info.remote;
                    let port = this.shared_port;
                    metrics::counter!(CONNECTIONS_CLOSED, "port" => port, "reason" => reason)
                        .increment(1);
                    tracing::debug!(port, %remote, reason, "closing a silent connection");
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("closed by the server ({reason})"),
                    )))
                }
            },
            ready => ready,
        }
    }
}

macro_rules! delegate_write {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.get_mut().io {
            Io::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Io::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate_write!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate_write!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate_write!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate_write!(self, s => s.poll_shutdown(cx))
    }
}

/// A gRPC interceptor that answers every request on a refused connection (a plaintext
/// client on a TLS port, a client without a required certificate) with `UNAUTHENTICATED`
/// and the reason.
#[allow(clippy::result_large_err)]
pub fn refuse_plaintext(req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    match req.extensions().get::<ConnInfo>().and_then(|i| i.refused) {
        Some(reason) => Err(tonic::Status::unauthenticated(reason)),
        None => Ok(req),
    }
}

#[cfg(test)]
mod tests;
