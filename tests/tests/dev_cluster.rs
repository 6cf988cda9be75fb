//! `ordkv dev-cluster` behaves like a small StatefulSet: a member that exits (SIGTERM,
//! SIGKILL) comes back with the same name and data while the others keep taking writes;
//! `dev-cluster stop|start N` keeps a member down and brings it back; a second dev-cluster
//! in the same dir, or busy ports, are refused before anything is touched.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ordkv_tests::{COMMAND_DEADLINE, free_port, http_get, ordkv_command, run_async};

/// How long a member that exited may take to be back and ready.
const BACK_WITHIN: Duration = Duration::from_secs(15);

/// A running `ordkv dev-cluster --replicas 3` in a temp dir; stopped (SIGTERM) on drop.
struct DevCluster {
    child: Child,
    dir: tempfile::TempDir,
    base: u16,
}

/// A base port with base..base+22 free a moment ago, apart from every other one this process
/// picked (tests run in parallel).
fn free_base() -> u16 {
    static PICKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = PICKING.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let base = free_port();
        let free = (0..23).all(|d| TcpListener::bind(("127.0.0.1", base + d)).is_ok());
        // `free_port` walks up one port per call at least: move it past this block.
        for _ in 0..23 {
            free_port();
        }
        if free {
            return base;
        }
    }
}

fn dev_cluster_command(dir: &Path, base: u16) -> std::process::Command {
    let mut cmd = ordkv_command();
    cmd.args(["dev-cluster", "--replicas", "3", "--base-port"])
        .arg(base.to_string())
        .arg("--dir")
        .arg(dir);
    cmd
}

impl DevCluster {
    async fn start() -> DevCluster {
        DevCluster::start_with(&[]).await
    }

    async fn start_with(flags: &[&str]) -> DevCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = free_base();
        let child = dev_cluster_command(dir.path(), base)
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dev-cluster");
        let c = DevCluster { child, dir, base };
        for i in 0..3 {
            c.wait_ready(i, Duration::from_secs(30)).await;
        }
        c
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn client(&self, i: u16) -> String {
        format!("127.0.0.1:{}", self.base + 10 * i)
    }

    fn http(&self, i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 10 * i + 2))
    }

    fn pid(&self, i: u16) -> Option<i32> {
        std::fs::read_to_string(self.dir().join(format!("kv-{i}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn log(&self, i: u16) -> PathBuf {
        self.dir().join(format!("kv-{i}.log"))
    }

    async fn ready(&self, i: u16) -> bool {
        let addr = self.http(i);
        tokio::task::spawn_blocking(move || http_get(addr, "/readyz"))
            .await
            .expect("http thread")
            .is_ok_and(|(code, _)| code == 200)
    }

    /// Waits until member `i` answers `/readyz` with 200; returns when.
    async fn wait_ready(&self, i: u16, within: Duration) -> Instant {
        let until = Instant::now() + within;
        while !self.ready(i).await {
            assert!(
                Instant::now() < until,
                "kv-{i} not ready within {within:?}\n{}",
                std::fs::read_to_string(self.log(i)).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Instant::now()
    }

    async fn cli(&self, args: &[&str]) -> ordkv_tests::Output {
        let mut cmd = ordkv_command();
        cmd.arg("dev-cluster")
            .arg("--dir")
            .arg(self.dir())
            .args(args);
        run_async(cmd, None, COMMAND_DEADLINE).await
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The members outlive a killed dev-cluster: kill them too.
        let _ = self.child.kill();
        for i in 0..3 {
            if let Some(pid) = self.pid(i) {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("signal the member");
}

/// A writer through kv-0: counts acknowledged puts until stopped.
fn writer(endpoint: String) -> (Arc<AtomicBool>, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn({
        let (stop, acked) = (stop.clone(), acked.clone());
        async move {
            let client = ordkv_client::Client::connect(&[endpoint])
                .await
                .expect("client")
                .with_timeout(Some(Duration::from_secs(5)));
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                if client.put_value(format!("w/{n:06}"), "v").await.is_ok() {
                    acked.fetch_add(1, Ordering::SeqCst);
                    n += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    (stop, acked, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_exits_comes_back_while_the_others_take_writes() {
    let c = DevCluster::start().await;
    let (stop, acked, task) = writer(c.client(0));
    for (i, sig) in [
        (1, nix::sys::signal::Signal::SIGKILL),
        (2, nix::sys::signal::Signal::SIGTERM),
        (0, nix::sys::signal::Signal::SIGKILL),
    ] {
        let pid = c.pid(i).expect("pid file");
        let before = acked.load(Ordering::SeqCst);
        let t = Instant::now();
        signal(pid, sig);
        // Wait until the member is gone, then back under a new pid and ready.
        let until = t + BACK_WITHIN;
        while c.pid(i) == Some(pid) || !c.ready(i).await {
            assert!(
                Instant::now() < until,
                "kv-{i} not back within {BACK_WITHIN:?} after {sig}\n{}",
                std::fs::read_to_string(c.log(i)).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("kv-{i} back and ready {:?} after {sig}", t.elapsed());
        // Writes through kv-0 go on (after an election when kv-0 itself went).
        let until = Instant::now() + BACK_WITHIN;
        while acked.load(Ordering::SeqCst) < before + 20 {
            assert!(Instant::now() < until, "no writes after {sig} to kv-{i}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    task.await.expect("writer");
    println!("{} writes acknowledged", acked.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_keeps_a_member_down_until_start() {
    let c = DevCluster::start().await;
    let out = c.cli(&["stop", "1"]).await;
    out.assert_success("dev-cluster stop 1");
    let until = Instant::now() + BACK_WITHIN;
    while c.pid(1).is_some() {
        assert!(Instant::now() < until, "kv-1 did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        c.pid(1).is_none() && !c.ready(1).await,
        "kv-1 came back while held"
    );
    let out = c.cli(&["start", "1"]).await;
    out.assert_success("dev-cluster start 1");
    c.wait_ready(1, BACK_WITHIN).await;
    let again = c.cli(&["start", "1"]).await;
    assert!(
        !again.status.success(),
        "start of a running member succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_dev_cluster_in_the_same_dir_is_refused_untouched() {
    let c = DevCluster::start().await;
    let log_before = std::fs::read(c.log(0)).expect("kv-0.log");
    let out = run_async(
        dev_cluster_command(c.dir(), free_base()),
        None,
        COMMAND_DEADLINE,
    )
    .await;
    assert!(
        !out.status.success(),
        "a second dev-cluster started\n{out:?}"
    );
    assert!(
        out.stderr.contains("another dev-cluster") && out.stderr.contains("--dir"),
        "{}",
        out.stderr
    );
    let log_after = std::fs::read(c.log(0)).expect("kv-0.log");
    assert!(
        log_after.starts_with(&log_before),
        "the running cluster's log was rewritten"
    );
    assert!(c.ready(0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_ports_are_refused_with_the_way_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = free_base();
    let _busy = TcpListener::bind(("127.0.0.1", base + 11)).expect("bind");
    let out = run_async(
        dev_cluster_command(dir.path(), base),
        None,
        COMMAND_DEADLINE,
    )
    .await;
    assert!(!out.status.success());
    assert!(
        out.stderr.contains(&format!("port {}", base + 11))
            && out.stderr.contains("kv-1's peer port")
            && out.stderr.contains("--base-port"),
        "{}",
        out.stderr
    );
    assert!(
        !dir.path().join("kv-0.log").exists(),
        "files were created before the ports were checked"
    );
}

/// `dev-cluster --tls`: the members talk mutual TLS with a throwaway CA, and a client with
/// the printed `ORDKV_CACERT` is served while a plaintext one is told to use TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_dev_cluster_serves_clients_that_trust_its_ca() {
    let c = DevCluster::start_with(&["--tls"]).await;
    let ca = c.dir().join("tls/ca.crt");
    let mut put = ordkv_command();
    put.args(["put", "greeting", "hello", "--endpoints", &c.client(1)])
        .env("ORDKV_CACERT", &ca);
    run_async(put, None, COMMAND_DEADLINE)
        .await
        .assert_success("put through a follower with TLS");
    let mut get = ordkv_command();
    get.args(["get", "greeting", "--endpoints", &c.client(2)])
        .env("ORDKV_CACERT", &ca);
    let out = run_async(get, None, COMMAND_DEADLINE).await;
    out.assert_success("get with TLS");
    assert!(out.stdout_str().contains("hello"), "{}", out.stdout_str());

    let mut plain = ordkv_command();
    plain.args(["get", "greeting", "--endpoints", &c.client(0)]);
    let out = run_async(plain, None, COMMAND_DEADLINE).await;
    assert!(
        !out.status.success() && out.stderr.contains("requires TLS"),
        "{}",
        out.stderr
    );
}
