//! TLS scenarios with real processes: a 3-member cluster with mutual TLS on the peer and
//! client ports, members with wrong certificates, plaintext and certificate-less clients,
//! certificate and CA rotation under a write load, and connections that hold a slot and
//! say nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ordkv_proto::v1::{Consistency, PutRequest, RangeRequest};
use ordkv_tests::NodeProcess;
use ordkv_tests::certs::{self, Issued, TestCa};
use ordkv_tests::cluster::{BackgroundWriter, Cluster, member_name};
use tokio::io::AsyncWriteExt;

/// One Secret-like directory per member under `root` (`root/kv-N`), each with a certificate
/// for the member's name and 127.0.0.1 (the static peer map dials 127.0.0.1).
fn member_secrets(root: &Path, ca: &TestCa, members: usize) -> Vec<Issued> {
    (0..members)
        .map(|i| {
            let name = member_name(i);
            let leaf = ca.issue(&[&name, "127.0.0.1"]);
            certs::write_secret(&root.join(&name), &leaf, &ca.pem());
            leaf
        })
        .collect()
}

fn tls_dir_arg(root: &Path) -> String {
    format!("{}/{{name}}", root.display())
}

fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write");
    path
}

/// Mutual TLS on both ports: the members elect, replicate, forward writes and serve
/// linearizable follower reads; the CLI works with --cacert/--cert/--key; a plaintext client
/// and a client without a certificate are refused with messages that say what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_cluster_serves_and_refuses_clearly() {
    let root = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ordkv test CA");
    member_secrets(root.path(), &ca, 3);
    let app = ca.issue(&["app"]);
    let tls_dir = tls_dir_arg(root.path());
    let c = Cluster::start_tls(
        3,
        3,
        &[
            "--tls-dir",
            &tls_dir,
            "--client-cert-auth",
            "--http-plaintext",
        ],
        certs::client_tls(&ca.pem(), Some(&app)),
    )
    .await;

    let leader = c.leader().await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    // A write on a follower is forwarded to the leader over the (mutual TLS) peer port.
    c.kv(followers[0])
        .put(PutRequest {
            key: Bytes::from("tls/forwarded"),
            value: Bytes::from("yes"),
            prev_kv: false,
            lease: 0,
        })
        .await
        .unwrap_or_else(|e| panic!("forwarded put: {e:?}\n{}", c.logs()));
    // A linearizable read on the other follower asks the leader for a read index.
    let got = c
        .kv(followers[1])
        .range(RangeRequest {
            prefix: Bytes::from("tls/forwarded"),
            consistency: Consistency::Linearizable as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.kvs.len(),
        1,
        "the follower's linearizable read missed the write"
    );
    assert_eq!(got.kvs[0].value, Bytes::from("yes"));

    // The CLI, through a follower.
    let files = tempfile::tempdir().unwrap();
    let cacert = write_file(files.path(), "ca.pem", &ca.pem());
    let cert = write_file(files.path(), "app.pem", &app.cert);
    let key = write_file(files.path(), "app.key", &app.key);
    let (cacert, cert, key) = (
        cacert.to_str().unwrap(),
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    );
    let node = c.node(followers[1]);
    node.cli(&[
        "put", "tls/cli", "v", "--cacert", cacert, "--cert", cert, "--key", key,
    ])
    .await
    .assert_success("put with TLS");
    let out = node
        .cli(&[
            "get", "tls/cli", "--cacert", cacert, "--cert", cert, "--key", key,
        ])
        .await;
    out.assert_success("get with TLS");
    assert!(out.stdout_str().contains('v'), "{}", out.stdout_str());

    // Without a client certificate: refused, and the message says why.
    let out = node.cli(&["get", "tls/cli", "--cacert", cacert]).await;
    assert!(
        !out.status.success(),
        "a client without a certificate was served"
    );
    assert!(
        out.stderr.contains("UNAUTHENTICATED")
            && out.stderr.contains("requires a client certificate"),
        "the refusal does not mention the certificate: {}",
        out.stderr
    );
    // Plaintext on the TLS port: told to use TLS.
    let out = node.cli(&["get", "tls/cli"]).await;
    assert!(!out.status.success(), "a plaintext client was served");
    assert!(
        out.stderr.contains("UNAUTHENTICATED") && out.stderr.contains("requires TLS"),
        "{}",
        out.stderr
    );
    // The server logs the plaintext client once, not a stack of lines.
    let logs = node.current_log();
    let lines = logs
        .matches("plaintext HTTP/2 client on a TLS port")
        .count();
    assert_eq!(lines, 1, "{logs}");
}

/// Members whose certificate names no member, comes from another CA or has expired are
/// refused by the others, whose logs say which; the cluster keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_with_wrong_certificates_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ordkv test CA");
    member_secrets(root.path(), &ca, 3);
    let tls_dir = tls_dir_arg(root.path());
    let mut c = Cluster::start_tls(
        3,
        6,
        &["--tls-dir", &tls_dir, "--http-plaintext"],
        certs::client_tls(&ca.pem(), None),
    )
    .await;

    let intruder = ca.issue(&["intruder.example"]);
    certs::write_secret(&root.path().join("kv-3"), &intruder, &ca.pem());
    let stranger = TestCa::new("another CA").issue(&["kv-4", "127.0.0.1"]);
    certs::write_secret(&root.path().join("kv-4"), &stranger, &ca.pem());
    let expired = ca.issue_with(&["kv-5", "127.0.0.1"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    certs::write_secret(&root.path().join("kv-5"), &expired, &ca.pem());
    for i in 3..6 {
        c.launch_member(i, &[]);
    }

    let wanted = [
        "match no member name",
        "UnknownIssuer",
        "certificate expired",
    ];
    c.wait_until(
        "the members to log every refusal",
        Duration::from_secs(20),
        || async {
            let logs: String = (0..3).map(|i| c.node(i).current_log()).collect();
            match wanted.iter().find(|w| !logs.contains(**w)) {
                None => Ok(()),
                Some(missing) => Err(format!("no {missing:?} in the logs yet")),
            }
        },
    )
    .await;
    for i in 3..6 {
        let ready = c.node(i).http_get("/readyz").await;
        assert!(
            !matches!(ready, Ok((200, _))),
            "kv-{i} became ready: {ready:?}"
        );
    }
    let status = c.status(c.leader_among(&[0, 1, 2]).await).await;
    assert_eq!(status.members.len(), 3, "{:?}", status.members);
    c.kv(0)
        .put(PutRequest {
            key: Bytes::from("still"),
            value: Bytes::from("serving"),
            prev_kv: false,
            lease: 0,
        })
        .await
        .expect("the cluster stopped serving");
    for i in 3..6 {
        c.remove(i);
    }
}

/// Every member's certificate is replaced, then the CA (both trusted during the switch,
/// then only the new one), through Secret-style atomic updates, under a steady write load:
/// no request fails, no acknowledged write is lost, new connections see the new
/// certificates, and a restarted member rejoins under the new CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_ca_rotate_without_restart() {
    let root = tempfile::tempdir().unwrap();
    let old_ca = TestCa::new("old CA");
    let new_ca = TestCa::new("new CA");
    let both = format!("{}{}", old_ca.pem(), new_ca.pem());
    member_secrets(root.path(), &old_ca, 3);
    let tls_dir = tls_dir_arg(root.path());
    let mut c = Cluster::start_tls(
        3,
        3,
        &["--tls-dir", &tls_dir, "--http-plaintext"],
        certs::client_tls(&both, None),
    )
    .await;
    let writer = BackgroundWriter::start(&c, &[0, 1, 2], "rot/");
    let mut done = writer.progresses(&c, 0, 100, "before rotation").await;

    // Each step: new Secret contents for every member, then wait until new connections to
    // both ports present the new certificate.
    let steps: [(&str, &TestCa, &str); 3] = [
        ("new certificates from the old CA", &old_ca, &old_ca.pem()),
        ("certificates from the new CA, both trusted", &new_ca, &both),
        ("only the new CA trusted", &new_ca, &new_ca.pem()),
    ];
    for (step, issuer, bundle) in steps {
        let mut leaves = Vec::new();
        for i in 0..3 {
            let name = member_name(i);
            let leaf = issuer.issue(&[&name, "127.0.0.1"]);
            certs::write_secret(&root.path().join(&name), &leaf, bundle);
            leaves.push(leaf);
        }
        for (i, leaf) in leaves.iter().enumerate() {
            let want = certs::der_of(&leaf.cert);
            let node = c.node(i);
            let peer_addr = node.peer_addr().parse().unwrap();
            let addrs = [node.client_socket_addr(), peer_addr];
            c.wait_until(
                &format!("kv-{i} to present its new certificate ({step})"),
                Duration::from_secs(15),
                || async {
                    for addr in addrs {
                        let got = certs::presented_certificate(addr, &both, Some(leaf)).await?;
                        if got != want {
                            return Err(format!("{addr} presents the previous certificate"));
                        }
                    }
                    Ok(())
                },
            )
            .await;
        }
        done = writer.progresses(&c, done, 100, step).await;
    }
    let report = writer.stop().await;
    assert_eq!(report.failed, 0, "requests failed during the rotation");
    let acked = report.acked.len();
    let kvs = c.converged_at_least(&[0, 1, 2], 1).await;
    for (key, value) in &report.acked {
        assert!(
            kvs.iter()
                .any(|kv| kv.key == key.as_bytes() && kv.value == value.as_bytes()),
            "acknowledged {key} is missing"
        );
    }

    // New peer connections under the new CA only: a restarted leader rejoins and the
    // cluster takes writes again.
    let leader = c.leader().await;
    c.kill_9(leader);
    c.restart(leader).await;
    c.wait_voters(3).await;
    let mut kv = c.kv(leader);
    kv.put(PutRequest {
        key: Bytes::from("after/rotation"),
        value: Bytes::from("ok"),
        prev_kv: false,
        lease: 0,
    })
    .await
    .unwrap_or_else(|e| panic!("write after the rotation: {e:?}\n{}", c.logs()));
    let (_, metrics) = c.node((leader + 1) % 3).http_get("/metrics").await.unwrap();
    assert!(metrics.contains("ordkv_tls_reloads_total 3"), "{metrics}");
    assert!(
        metrics.contains("ordkv_tls_cert_not_after_seconds"),
        "{metrics}"
    );
    eprintln!("rotation: {acked} writes acknowledged, none failed, none lost");
}

/// 5,000 connections from one address that send the HTTP/2 preface and then nothing, random
/// bytes, or a stalled TLS handshake, on the client port (plaintext and TLS), the HTTP port
/// and the peer port: a well-behaved client from another address is served at once, and the
/// silent ones are closed within the setup deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_lock_out_clients() {
    let root = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ca");
    let leaf = ca.issue(&["kv-0", "127.0.0.1"]);
    certs::write_secret(&root.path().join("kv-0"), &leaf, &ca.pem());
    let tls_dir = root.path().join("kv-0");
    // A member of a one-member static map, so that it has a peer port.
    let ports = ordkv_tests::Ports::free();
    let peers = format!("flood-0=127.0.0.1:{}", ports.peer);
    let mut plain = NodeProcess::new("flood-0", ports, &["--peers".into(), peers]);
    plain.spawn();
    plain.wait_ready().await;
    let tls = NodeProcess::start_with(
        "kv-0",
        &["--tls-dir", tls_dir.to_str().unwrap(), "--http-plaintext"],
    )
    .await;
    let peer_addr: std::net::SocketAddr = plain.peer_addr().parse().unwrap();
    let ca_pem = ca.pem();

    let cases: [(&str, std::net::SocketAddr, Option<&str>); 4] = [
        ("client", plain.client_socket_addr(), None),
        (
            "client over TLS",
            tls.client_socket_addr(),
            Some(ca_pem.as_str()),
        ),
        ("HTTP", plain.http_addr(), None),
        ("peer", peer_addr, None),
    ];
    for (port, addr, ca) in cases {
        let junk: [&[u8]; 3] = [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            &[0x5a; 64],
            &[0x16, 0x03, 0x01, 0x00],
        ];
        let mut silent = Vec::new();
        for n in 0..5000 {
            let Ok(mut conn) = tokio::net::TcpStream::connect(addr).await else {
                continue;
            };
            let _ = conn.write_all(junk[n % 3]).await;
            silent.push(conn);
        }

        let started = Instant::now();
        good_client(port, addr, ca).await;
        let served_in = started.elapsed();
        assert!(
            served_in < Duration::from_secs(1),
            "{port}: a good client waited {served_in:?} behind {} silent connections",
            silent.len()
        );

        // Every silent connection is closed by the server within the setup deadline (5 s).
        let closing = Instant::now();
        for conn in &mut silent {
            let mut buf = [0u8; 256];
            loop {
                use tokio::io::AsyncReadExt;
                let left = Duration::from_secs(15).saturating_sub(closing.elapsed());
                match tokio::time::timeout(left, conn.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) => continue,
                    Err(_) => panic!("{port}: a silent connection is still open after 15 s"),
                }
            }
        }
        eprintln!(
            "{port}: good client served in {served_in:?}; {} silent connections closed within {:?}",
            silent.len(),
            closing.elapsed()
        );
    }
}

/// A well-behaved client from 127.0.0.2: a put on a client port, `/readyz` on the HTTP
/// port, an HTTP/2 connection on the peer port.
async fn good_client(port: &str, addr: std::net::SocketAddr, ca: Option<&str>) {
    let source: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    if port == "HTTP" {
        use tokio::io::AsyncReadExt;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((source, 0).into()).unwrap();
        let mut conn = socket.connect(addr).await.unwrap();
        conn.write_all(b"GET /readyz HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.0 200"), "{port}: {response}");
        return;
    }
    let scheme = if ca.is_some() { "https" } else { "http" };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}")).unwrap();
    let endpoint = match ca {
        Some(ca) => endpoint.tls_config(certs::client_tls(ca, None)).unwrap(),
        None => endpoint,
    };
    let channel = endpoint
        .local_address(Some(source))
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{port}: a good client could not connect: {e:?}"));
    if port == "peer" {
        return;
    }
    ordkv_proto::v1::kv_client::KvClient::new(channel)
        .put(PutRequest {
            key: Bytes::from("good"),
            value: Bytes::from("client"),
            prev_kv: false,
            lease: 0,
        })
        .await
        .unwrap_or_else(|e| panic!("{port}: a good client was not served: {e:?}"));
}

/// Without --http-plaintext the HTTP port serves HTTPS with the same certificate: probes and
/// metrics work over TLS, and a plaintext request gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_port_serves_https_by_default() {
    let root = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ca");
    let leaf = ca.issue(&["kv-0", "127.0.0.1"]);
    certs::write_secret(root.path(), &leaf, &ca.pem());
    let args = vec!["--tls-dir".to_string(), root.path().display().to_string()];
    let mut node = NodeProcess::new("kv-0", ordkv_tests::Ports::free(), &args);
    node.spawn();
    let addr = node.http_addr();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match certs::https_get(addr, &ca.pem(), "/readyz").await {
            Ok((200, _)) => break,
            other if Instant::now() > until => {
                panic!("/readyz over HTTPS: {other:?}\n{}", node.logs())
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(
        certs::presented_certificate(addr, &ca.pem(), None)
            .await
            .unwrap(),
        certs::der_of(&leaf.cert)
    );
    let (code, metrics) = certs::https_get(addr, &ca.pem(), "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("ordkv_tls_cert_not_after_seconds"),
        "{metrics}"
    );
    let plain = node.http_get("/readyz").await;
    assert!(
        plain.is_err(),
        "a plaintext request was answered: {plain:?}"
    );
}
