//! Access control through the real server: identities from client certificates and bearer
//! tokens, a table of identity × operation × keys on a follower (so writes are forwarded and
//! reads take a read index), and the policy and token files re-read under a write load.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use ordkv_proto::v1::cluster_client::ClusterClient;
use ordkv_proto::v1::kv_client::KvClient;
use ordkv_proto::v1::{
    BackupRequest, CompactRequest, Compare, DeleteRequest, GetRequest, PutRequest, RangeRequest,
    RequestOp, StatusRequest, TxnRequest, WatchRequest, compare, request_op,
};
use ordkv_tests::certs::{self, Issued, TestCa};
use ordkv_tests::cluster::{BackgroundWriter, Cluster, member_name};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const POLICY: &str = r#"
- name: app
  read: ["app/"]
  write: ["app/"]
- name: viewer
  read: ["app/"]
- name: ops
  read: [""]
  write: [""]
  admin: true
"#;

const TOKENS: &str = "app-token,app\nviewer-token,viewer,1001\n# a comment\nops-token,ops\n";

/// Who calls: a certificate identity, a token, or nothing.
#[derive(Clone, Copy)]
enum Caller<'a> {
    Cert(&'a Issued),
    Token(&'static str),
    Anonymous,
}

impl std::fmt::Debug for Caller<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Cert(id) => write!(f, "certificate {}", id.name),
            Caller::Token(token) => write!(f, "token {token}"),
            Caller::Anonymous => write!(f, "anonymous"),
        }
    }
}

fn channel(addr: &str, ca: &str, caller: Caller<'_>) -> Channel {
    let identity = match caller {
        Caller::Cert(id) => Some(id),
        _ => None,
    };
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(certs::client_tls(ca, identity))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

fn request<T>(message: T, caller: Caller<'_>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Caller::Token(token) = caller {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

fn put(key: &str) -> PutRequest {
    PutRequest {
        key: Bytes::from(key.to_string()),
        value: Bytes::from("v"),
        prev_kv: false,
        lease: 0,
    }
}

fn range(start: &str, end: &str, prefix: &str) -> RangeRequest {
    RangeRequest {
        start: Bytes::from(start.to_string()),
        end: Bytes::from(end.to_string()),
        prefix: Bytes::from(prefix.to_string()),
        ..Default::default()
    }
}

fn txn(compare: &str, put_key: &str) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            key: Bytes::from(compare.to_string()),
            target: Some(compare::Target::Version(0)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::Put(put(put_key))),
        }],
        failure: vec![],
    }
}

/// Runs `op` as `caller`; the code it got (`Ok` when served).
async fn run(channel: &Channel, caller: Caller<'_>, op: &str, key: &str) -> Code {
    let mut kv = KvClient::new(channel.clone());
    let mut cluster = ClusterClient::new(channel.clone());
    let code = |r: Result<(), tonic::Status>| r.map_or_else(|s| s.code(), |_| Code::Ok);
    match op {
        "put" => code(kv.put(request(put(key), caller)).await.map(drop)),
        "get" => code(
            kv.get(request(
                GetRequest {
                    key: Bytes::from(key.to_string()),
                    ..Default::default()
                },
                caller,
            ))
            .await
            .map(drop),
        ),
        "scan-prefix" => code(
            kv.range(request(range("", "", key), caller))
                .await
                .map(drop),
        ),
        "range-to-end" => code(
            kv.range(request(range(key, "", ""), caller))
                .await
                .map(drop),
        ),
        "range" => {
            let (start, end) = key.split_once("..").unwrap();
            code(
                kv.range(request(range(start, end, ""), caller))
                    .await
                    .map(drop),
            )
        }
        "delete-prefix" => code(
            kv.delete(request(
                DeleteRequest {
                    prefix: Bytes::from(key.to_string()),
                    ..Default::default()
                },
                caller,
            ))
            .await
            .map(drop),
        ),
        "txn" => {
            let (compare, put_key) = key.split_once("->").unwrap();
            code(
                kv.txn(request(txn(compare, put_key), caller))
                    .await
                    .map(drop),
            )
        }
        "watch-prefix" => code(
            kv.watch(request(
                WatchRequest {
                    prefix: Bytes::from(key.to_string()),
                    ..Default::default()
                },
                caller,
            ))
            .await
            .map(drop),
        ),
        "compact" => code(
            kv.compact(request(CompactRequest { revision: 1 }, caller))
                .await
                .map(drop),
        ),
        "status" => code(
            cluster
                .status(request(StatusRequest {}, caller))
                .await
                .map(drop),
        ),
        "backup" => code(
            cluster
                .backup(request(BackupRequest {}, caller))
                .await
                .map(drop),
        ),
        other => panic!("no op {other}"),
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    // Replaced with a rename, as an editor or a ConfigMap update does.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_decide_who_reads_writes_and_administers() {
    let root = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ca");
    for i in 0..3 {
        let name = member_name(i);
        certs::write_secret(
            &root.path().join(&name),
            &ca.issue(&[&name, "127.0.0.1"]),
            &ca.pem(),
        );
    }
    let files = tempfile::tempdir().unwrap();
    let policy = write(files.path(), "policy.yaml", POLICY);
    let tokens = write(files.path(), "tokens.csv", TOKENS);
    let ops = ca.issue(&["ops"]);
    let app = ca.issue(&["app"]);
    let nobody = ca.issue(&["nobody"]);
    let tls_dir = format!("{}/{{name}}", root.path().display());
    let c = Cluster::start_tls(
        3,
        3,
        &[
            "--tls-dir",
            &tls_dir,
            "--http-plaintext",
            "--auth-policy",
            &policy,
            "--auth-token-file",
            &tokens,
        ],
        certs::client_tls(&ca.pem(), Some(&ops)),
    )
    .await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let addr = c.node(follower).client_addr();
    let ca_pem = ca.pem();

    let ok = Code::Ok;
    let denied = Code::PermissionDenied;
    let unauth = Code::Unauthenticated;
    let table: &[(Caller<'_>, &str, &str, Code)] = &[
        (Caller::Cert(&app), "put", "app/x", ok),
        (Caller::Cert(&app), "put", "other/x", denied),
        (Caller::Cert(&app), "get", "app/x", ok),
        (Caller::Cert(&app), "get", "other/x", denied),
        (Caller::Cert(&app), "scan-prefix", "app/", ok),
        (Caller::Cert(&app), "scan-prefix", "app/sub/", ok),
        (Caller::Cert(&app), "scan-prefix", "ap", denied),
        (Caller::Cert(&app), "range-to-end", "app/", denied),
        (Caller::Cert(&app), "range", "app/a..app/z", ok),
        (Caller::Cert(&app), "range", "app/a..app0", ok),
        (Caller::Cert(&app), "range", "app/a..app1", denied),
        (Caller::Cert(&app), "range", "apo..app/z", denied),
        (Caller::Cert(&app), "delete-prefix", "app/tmp/", ok),
        (Caller::Cert(&app), "delete-prefix", "", denied),
        (Caller::Cert(&app), "txn", "app/x->app/y", ok),
        (Caller::Cert(&app), "txn", "app/x->other/y", denied),
        (Caller::Cert(&app), "txn", "other/x->app/y", denied),
        (Caller::Cert(&app), "watch-prefix", "app/", ok),
        (Caller::Cert(&app), "watch-prefix", "", denied),
        (Caller::Cert(&app), "compact", "", denied),
        (Caller::Cert(&app), "backup", "", denied),
        (Caller::Cert(&app), "status", "", ok),
        (Caller::Token("app-token"), "put", "app/t", ok),
        (Caller::Token("viewer-token"), "get", "app/x", ok),
        (Caller::Token("viewer-token"), "put", "app/x", denied),
        (Caller::Token("ops-token"), "put", "other/x", ok),
        (Caller::Token("ops-token"), "compact", "", ok),
        (Caller::Cert(&ops), "backup", "", ok),
        (Caller::Cert(&nobody), "get", "app/x", denied),
        (Caller::Token("no-such-token"), "get", "app/x", unauth),
        (Caller::Anonymous, "get", "app/x", unauth),
        (Caller::Anonymous, "status", "", unauth),
    ];
    let mut wrong = Vec::new();
    for (caller, op, key, want) in table {
        let got = run(&channel(&addr, &ca_pem, *caller), *caller, op, key).await;
        if got != *want {
            wrong.push(format!(
                "{caller:?} {op} {key:?}: got {got:?}, want {want:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), c.logs());

    // Leases: any known identity grants one; revoking deletes its keys, so it needs write
    // access to each of them.
    use ordkv_proto::v1::lease_client::LeaseClient;
    use ordkv_proto::v1::{LeaseGrantRequest, LeaseRevokeRequest};
    let app_channel = channel(&addr, &ca_pem, Caller::Cert(&app));
    let viewer = Caller::Token("viewer-token");
    let lease = LeaseClient::new(channel(&addr, &ca_pem, viewer))
        .lease_grant(request(LeaseGrantRequest { ttl: 30, id: 0 }, viewer))
        .await
        .expect("a viewer may grant a lease")
        .into_inner()
        .id;
    KvClient::new(app_channel.clone())
        .put(PutRequest {
            lease,
            ..put("app/leased")
        })
        .await
        .expect("app puts a key on the lease");
    let refused = LeaseClient::new(channel(&addr, &ca_pem, viewer))
        .lease_revoke(request(LeaseRevokeRequest { id: lease }, viewer))
        .await
        .expect_err("a viewer revoked a lease holding app's key");
    assert_eq!(refused.code(), denied, "{refused:?}");
    assert!(
        refused.message().contains("app/leased"),
        "{}",
        refused.message()
    );
    let anonymous = LeaseClient::new(channel(&addr, &ca_pem, Caller::Anonymous))
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .expect_err("an anonymous grant");
    assert_eq!(anonymous.code(), unauth, "{anonymous:?}");
    LeaseClient::new(app_channel)
        .lease_revoke(LeaseRevokeRequest { id: lease })
        .await
        .expect("app revokes the lease of its own key");

    // A denial names the identity and the keys.
    let err = KvClient::new(channel(&addr, &ca_pem, Caller::Cert(&app)))
        .put(put("other/x"))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("\"app\"") && err.message().contains("other/x"),
        "{}",
        err.message()
    );
    // Status says access control is on.
    let status = c.status(follower).await;
    assert!(
        status.access_control.starts_with("on"),
        "{}",
        status.access_control
    );

    // The CLI sends a token from ORDKV_TOKEN (kept out of the process list).
    let ca_file = files.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let cli = |args: &[&str]| {
        let mut cmd = c.node(follower).cli_command(args);
        cmd.env("ORDKV_CACERT", &ca_file)
            .env("ORDKV_TOKEN", "viewer-token");
        ordkv_tests::run_async(cmd, None, ordkv_tests::COMMAND_DEADLINE)
    };
    cli(&["get", "app/x"]).await.assert_success("get as viewer");
    let out = cli(&["put", "app/x", "v"]).await;
    assert!(
        !out.status.success()
            && out.stderr.contains("PERMISSION_DENIED")
            && out.stderr.contains("\"viewer\""),
        "{}",
        out.stderr
    );
    let out = cli(&["cluster", "status"]).await;
    out.assert_success("status as viewer");
    assert!(
        out.stdout_str().contains("access control: on"),
        "{}",
        out.stdout_str()
    );

    // Both files are re-read under a write load (as ops, through every member).
    let writer = BackgroundWriter::start(&c, &[0, 1, 2], "load/");
    let done = writer.progresses(&c, 0, 50, "before the reload").await;
    let app_channel = channel(&addr, &ca_pem, Caller::Cert(&app));
    write(
        files.path(),
        "policy.yaml",
        &POLICY.replace("write: [\"app/\"]", "write: [\"app/\", \"other/\"]"),
    );
    write(
        files.path(),
        "tokens.csv",
        &format!("{TOKENS}new-token,viewer\n"),
    );
    let app = &app;
    c.wait_until(
        "the new policy and token to apply",
        Duration::from_secs(15),
        || {
            let app_channel = app_channel.clone();
            let addr = addr.clone();
            let ca_pem = ca_pem.clone();
            async move {
                let put = run(&app_channel, Caller::Cert(app), "put", "other/z").await;
                let token = run(
                    &channel(&addr, &ca_pem, Caller::Token("new-token")),
                    Caller::Token("new-token"),
                    "get",
                    "app/x",
                )
                .await;
                if put == Code::Ok && token == Code::Ok {
                    Ok(())
                } else {
                    Err(format!("put other/z: {put:?}, new token: {token:?}"))
                }
            }
        },
    )
    .await;
    writer.progresses(&c, done, 50, "after the reload").await;
    let report = writer.stop().await;
    assert_eq!(
        report.failed, 0,
        "writes failed while the files were re-read"
    );

    // A broken policy keeps the previous one.
    write(files.path(), "policy.yaml", "- name: [unclosed");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        run(&app_channel, Caller::Cert(app), "put", "other/w").await,
        Code::Ok
    );
    let logs = c.node(follower).current_log();
    assert!(logs.contains("still using the previous one"), "{logs}");
    assert!(
        !logs.contains("app-token") && !logs.contains("new-token"),
        "a token was logged"
    );
}
