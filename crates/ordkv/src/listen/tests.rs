use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use super::*;
use crate::tls::tests::TestCa;
use crate::tls::{ClientAuth, TlsMaterial};

fn config(tls: Option<Arc<rustls::ServerConfig>>) -> ListenConfig {
    ListenConfig {
        max_per_address: 2,
        setup_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
        ..ListenConfig::grpc("test", tls)
    }
}

async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Reads until the server closes the connection; false if it stays open for 3 s.
async fn closed_by_server(conn: &mut TcpStream) -> bool {
    let mut sink = [0u8; 1024];
    let read = async {
        loop {
            match conn.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), read)
        .await
        .is_ok()
}

#[tokio::test]
async fn one_address_cannot_take_every_slot() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = incoming(listener, config(None));

    let _a = connect_from("127.0.0.1", addr).await;
    let _b = connect_from("127.0.0.1", addr).await;
    let first = incoming.next().await.unwrap().unwrap();
    let second = incoming.next().await.unwrap().unwrap();
    let mut third = connect_from("127.0.0.1", addr).await;
    assert!(
        closed_by_server(&mut third).await,
        "a third connection from one address was kept"
    );

    let _other = connect_from("127.0.0.2", addr).await;
    let accepted = tokio::time::timeout(Duration::from_secs(2), incoming.next()).await;
    assert!(
        matches!(accepted, Ok(Some(Ok(_)))),
        "another address was not served"
    );
    drop((first, second));
}

#[tokio::test]
async fn silent_connections_are_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = incoming(listener, config(None));

    // Half a preface, then nothing: closed at the setup deadline.
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"PRI * HTTP").await.unwrap();
    let mut conn = incoming.next().await.unwrap().unwrap();
    let mut buf = vec![0u8; 64];
    assert_eq!(conn.read(&mut buf).await.unwrap(), 10);
    let started = Instant::now();
    let err = conn.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // Set up, then silent for the idle timeout: closed; reads in between keep it open.
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&[7u8; 40]).await.unwrap();
    let mut conn = incoming.next().await.unwrap().unwrap();
    let keep_talking = async {
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            client.write_all(b"x").await.unwrap();
        }
        client
    };
    let reading = async {
        let mut total = 0;
        loop {
            match conn.read(&mut buf).await {
                Ok(n) => total += n,
                Err(e) => return (total, e),
            }
        }
    };
    let (_client, (total, err)) = tokio::join!(keep_talking, reading);
    assert_eq!(total, 44, "closed while still talking");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
}

#[tokio::test]
async fn tls_ports_close_stalled_handshakes_and_explain_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    TestCa::new("ca").issue(dir.path(), &["localhost"]);
    let material = TlsMaterial::load(dir.path()).unwrap();
    let tls = material.server_config(ClientAuth::None, &[b"h2"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = incoming(listener, config(Some(tls)));

    for junk in [&[0x16u8][..], &[0xff, 0x00, 0x13, 0x37][..]] {
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled.write_all(junk).await.unwrap();
        assert!(closed_by_server(&mut stalled).await, "{junk:?} kept open");
    }

    let mut plaintext = TcpStream::connect(addr).await.unwrap();
    plaintext
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let conn = incoming.next().await.unwrap().unwrap();
    assert_eq!(conn.info().refused, Some(TLS_REQUIRED));
}
