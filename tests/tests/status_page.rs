//! The status page (`/` on the HTTP port) in a real headless browser: Debian's `chromium`,
//! driven over the DevTools protocol. One page, opened on the leader, draws the three
//! members of a cluster and marks the leader; after `cluster transfer-leader` the same page
//! redraws by itself with the new leader and lists the change. Screenshots of both are kept
//! in the test's output directory. The page's `/api/status` is the document
//! `ordkv cluster status -o json` prints.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use ordkv_tests::cluster::{CONVERGE, Cluster, member_name};
use ordkv_tests::{free_port, http_get};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless chromium showing one page, and a DevTools connection to that page.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    socket: Socket,
    next_id: u64,
}

impl Browser {
    async fn open(url: &str) -> Browser {
        let binary = ["chromium", "chromium-browser"]
            .into_iter()
            .find(|b| {
                std::env::var_os("PATH").is_some_and(|path| {
                    std::env::split_paths(&path).any(|dir| dir.join(b).is_file())
                })
            })
            .unwrap_or_else(|| {
                panic!("the status page test needs chromium on the host (apt-get install chromium; .ci/run installs it)")
            });
        let profile = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1280,860",
                &format!("--user-data-dir={}", profile.path().display()),
                &format!("--remote-debugging-port={port}"),
                url,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        let mut ws_url = None;
        for _ in 0..300 {
            if let Ok(body) = devtools_targets(port) {
                let targets: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                ws_url = targets.as_array().and_then(|ts| {
                    ts.iter()
                        .find(|t| t["type"] == "page" && t["url"].as_str() == Some(url))
                        .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
                });
                if ws_url.is_some() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ws_url = ws_url.expect("chromium opened no DevTools page target in 30 s");
        let (socket, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .expect("connecting to the page over DevTools");
        Browser {
            child,
            _profile: profile,
            socket,
            next_id: 1,
        }
    }

    /// One DevTools command and its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::text(request.to_string()))
            .await
            .unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer"))
                .expect("the DevTools connection closed")
                .unwrap();
            let Message::Text(text) = msg else { continue };
            let reply: Value = serde_json::from_str(&text).unwrap();
            if reply["id"] == id {
                assert!(reply["error"].is_null(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page.
    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Evaluates `expression` until `ok` accepts it.
    async fn wait_for(
        &mut self,
        what: &str,
        expression: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        loop {
            let v = self.eval(expression).await;
            if ok(&v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never showed {what}: last {v}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn screenshot(&mut self, name: &str) -> PathBuf {
        let r = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

/// `GET /json/list` of the DevTools HTTP endpoint (which refuses HTTP/1.0 and keeps the
/// connection open: the body is read to its Content-Length).
fn devtools_targets(port: u16) -> std::io::Result<String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        conn,
        "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut reader = BufReader::new(conn);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each drawn member as `[name, role, is leader]`.
const DRAWN: &str = "Array.from(document.querySelectorAll('#ring .member'))\
    .map(g => [g.dataset.name, g.dataset.role, g.dataset.leader])";
/// The leader in the summary and the newest leader change listed.
const LEADER: &str = "[document.getElementById('leader')?.textContent ?? '', \
    document.querySelector('#changes .leader-change')?.dataset.leader ?? '', \
    Number(document.body.dataset.refreshes)]";

fn drawn(leader: usize) -> Value {
    json!(
        (0..3)
            .map(|i| json!([member_name(i), "voter", (i == leader).to_string()]))
            .collect::<Vec<_>>()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_draws_the_cluster_and_follows_a_leader_change() {
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let url = format!("http://{}/", c.node(leader).http_addr());
    let mut page = Browser::open(&url).await;

    let expected = drawn(leader);
    page.wait_for("three members with the leader marked", DRAWN, |v| {
        *v == expected
    })
    .await;
    let rows = page
        .eval("document.querySelectorAll('#members tr').length")
        .await;
    assert_eq!(rows, 3);
    let before = page.screenshot("status-page-before.png").await;

    let target = (leader + 1) % 3;
    c.node(leader)
        .cli(&["cluster", "transfer-leader", &target.to_string()])
        .await
        .assert_success("cluster transfer-leader");
    let new_leader = format!("leader: {}", member_name(target));
    let seen = page
        .wait_for("the new leader", LEADER, |v| {
            v[0] == new_leader.as_str() && v[1] == member_name(target).as_str()
        })
        .await;
    // The page redrew itself: it was loaded once, before the change.
    assert!(seen[2].as_u64().unwrap() >= 2, "{seen}");
    let expected = drawn(target);
    page.wait_for("the members with the new leader marked", DRAWN, |v| {
        *v == expected
    })
    .await;
    let after = page.screenshot("status-page-after.png").await;
    println!(
        "status page screenshots: {} (leader kv-{leader}), {} (after the transfer to kv-{target})",
        before.display(),
        after.display()
    );

    // `/api/status` is `cluster status -o json` (from the new leader, which both ask).
    let http = c.node(target).http_addr();
    c.wait_until(
        "/api/status equals cluster status -o json",
        CONVERGE,
        || async {
            let (code, body) = http_get(http, "/api/status").map_err(|e| e.to_string())?;
            let mut page: Value =
                serde_json::from_str(&body).map_err(|e| format!("{code}: {e}"))?;
            let out = c
                .node(target)
                .cli(&["cluster", "status", "-o", "json"])
                .await;
            let mut cli: Value =
                serde_json::from_slice(&out.stdout).map_err(|e| format!("{out}: {e}"))?;
            // The database's size on disk moves by itself (sled's background work).
            page["db_size_bytes"] = Value::Null;
            cli["db_size_bytes"] = Value::Null;
            if page == cli {
                Ok(())
            } else {
                Err(format!("page {page}\ncli {cli}"))
            }
        },
    )
    .await;
}
