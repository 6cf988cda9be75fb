//! The process harness of ordkv's integration tests (the tests themselves live in
//! `tests/tests/`).
//!
//! [`NodeProcess`] runs the real `ordkv serve` binary on free loopback ports and a temp data
//! dir, waits for `/readyz`, and can be SIGKILLed and restarted on the same data dir and
//! ports. Its stderr goes to a file in the temp dir; [`NodeProcess::logs`] returns it, every
//! wait helper puts it in its panic message, and a node dropped while its test panics prints
//! it.
//!
//! The binary is `<target>/<profile>/ordkv`, found next to the running test executable (so
//! `CARGO_TARGET_DIR` is respected); `ORDKV_TEST_BIN` overrides it. Each test process runs
//! `cargo build -p ordkv-cli` once first (a no-op when it is up to date), so tests never run
//! a stale binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use ordkv_proto::v1::{
    StatusRequest, StatusResponse, cluster_client::ClusterClient, kv_client::KvClient,
};
use tonic::transport::{Channel, Endpoint};

pub mod certs;
pub mod cluster;
pub mod containers;
pub mod history;
pub mod kube_api;
pub mod linearizability;
pub mod netdelay;

/// How long a node may take to become ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How long a one-shot command (`ordkv put`, a failing `ordkv serve`) may run.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(20);
/// The per-request deadline of clients made by [`NodeProcess::channel`].
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------

/// The repository root (the workspace).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The cargo target dir the tests were built in.
pub fn target_dir() -> PathBuf {
    let profile = profile_dir();
    profile.parent().map_or(profile.clone(), Path::to_path_buf)
}

/// `<target>/<profile>`: the test executable runs from `<target>/<profile>/deps/`.
fn profile_dir() -> PathBuf {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
        && dir.join("deps").is_dir()
    {
        return dir;
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if Path::new(&t).is_absolute() => PathBuf::from(t),
        Some(t) => workspace_root().join(t),
        None => workspace_root().join("target"),
    };
    target.join("debug")
}

/// The `ordkv` binary, brought up to date once per test process.
pub fn ordkv_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(rebuild_ordkv)
}

/// Builds this `ordkv` (with the `fault-injection` feature the tests use) and returns its
/// path; `ORDKV_TEST_BIN` names a binary to use instead.
pub fn rebuild_ordkv() -> PathBuf {
    if let Some(bin) = std::env::var_os("ORDKV_TEST_BIN") {
        return PathBuf::from(bin);
    }
    let dir = profile_dir();
    let bin = dir.join("ordkv");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args([
        "build",
        "-p",
        "ordkv-cli",
        "--features",
        "fault-injection",
    ]);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    cmd.arg("--quiet");
    let status = cmd.status().expect("run cargo build -p ordkv-cli");
    assert!(
        status.success(),
        "cargo build -p ordkv-cli failed: {status}"
    );
    assert!(
        bin.exists(),
        "{} still missing after the build",
        bin.display()
    );
    bin
}

/// A `Command` for the binary with an environment that cannot change its behaviour.
pub fn ordkv_command() -> Command {
    ordkv_command_of(ordkv_bin())
}

/// [`ordkv_command`] for another `ordkv` binary (an earlier build, in upgrade tests).
pub fn ordkv_command_of(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for var in [
        "POD_NAME",
        "POD_NAMESPACE",
        "ORDKV_ENDPOINTS",
        "ORDKV_DATA_DIR",
        "ORDKV_NAME",
        "ORDKV_PEERS",
        "ORDKV_SERVICE",
        "ORDKV_CLIENT_ADDR",
        "ORDKV_PEER_ADDR",
        "ORDKV_HTTP_ADDR",
        "ORDKV_MAX_VALUE_BYTES",
        "ORDKV_MAX_KEY_BYTES",
        "ORDKV_MAX_TXN_OPS",
        "ORDKV_LOG_FORMAT",
        "ORDKV_STATEFULSET",
        "ORDKV_SERVICE_ACCOUNT_DIR",
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
        "ORDKV_TLS_DIR",
        "ORDKV_CACERT",
        "ORDKV_CERT",
        "ORDKV_KEY",
    ] {
        cmd.env_remove(var);
    }
    // The binary's default log filter, whatever the caller's environment says.
    cmd.env_remove("ORDKV_LOG")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1");
    cmd
}

/// The three loopback ports of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Client gRPC.
    pub client: u16,
    /// Peer gRPC.
    pub peer: u16,
    /// HTTP (probes, metrics, fault injection).
    pub http: u16,
}

impl Ports {
    /// Three ports that were free a moment ago.
    pub fn free() -> Ports {
        Ports {
            client: free_port(),
            peer: free_port(),
            http: free_port(),
        }
    }
}

/// A loopback port that was free a moment ago. Taken below Linux's ephemeral range
/// (32768 and up): a node may bind its port long after it is picked (a member added later),
/// and in between an outgoing connection could be given an ephemeral port. Each test process
/// walks its own stretch of 20000..32000, so parallel tests do not pick the same port.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = std::process::id() * 97;
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (FIRST + (start + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

// ---------------------------------------------------------------------------------------
// One-shot commands
// ---------------------------------------------------------------------------------------

/// What a finished command left behind.
#[derive(Debug)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr (lossy UTF-8).
    pub stderr: String,
}

impl Output {
    /// stdout as (lossy) UTF-8.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Panics, showing both streams, unless the command exited 0.
    pub fn assert_success(&self, what: &str) -> &Self {
        assert!(self.status.success(), "{what}: expected success\n{self}");
        self
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        )
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Runs `cmd` to completion (blocking), feeding `stdin`, and kills it with a panic after
/// `deadline`. Call it through [`run_async`] from async tests.
pub fn run_blocking(mut cmd: Command, stdin: Option<Vec<u8>>, deadline: Duration) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
            // Dropping the pipe closes it: EOF for the child.
        });
    }
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let until = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            panic!(
                "{cmd:?} did not finish within {deadline:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned(),
    }
}

/// [`run_blocking`] on a blocking thread.
pub async fn run_async(cmd: Command, stdin: Option<Vec<u8>>, deadline: Duration) -> Output {
    tokio::task::spawn_blocking(move || run_blocking(cmd, stdin, deadline))
        .await
        .expect("command thread panicked")
}

// ---------------------------------------------------------------------------------------
// Node processes
// ---------------------------------------------------------------------------------------

/// One `ordkv serve` process on its own temp data dir and free ports.
pub struct NodeProcess {
    name: String,
    root: tempfile::TempDir,
    data_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    http_port: u16,
    extra_args: Vec<String>,
    /// Environment variables set on every start (e.g. a pod's Kubernetes API variables).
    env: Vec<(String, String)>,
    /// Another `ordkv` binary to start instead of this build's (see [`NodeProcess::set_bin`]).
    bin: Option<PathBuf>,
    child: Option<Child>,
    /// How many times the process was started (names its log files).
    starts: u32,
    /// Set once [`NodeProcess::logs`] was called, so a failing test does not print them twice.
    logs_shown: std::sync::atomic::AtomicBool,
}

impl NodeProcess {
    /// Starts `ordkv serve --name <name>` and waits until it is ready.
    pub async fn start(name: &str) -> NodeProcess {
        NodeProcess::start_with(name, &[]).await
    }

    /// Like [`NodeProcess::start`] with extra `serve` flags (kept across restarts).
    pub async fn start_with(name: &str, extra_args: &[&str]) -> NodeProcess {
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let mut node = NodeProcess::new(name, Ports::free(), &extra_args);
        node.spawn();
        node.wait_ready().await;
        node
    }

    /// A node on `ports` and a new temp data dir, not started yet: [`NodeProcess::spawn`]
    /// starts it (for members that must know each other's ports before any of them runs).
    pub fn new(name: &str, ports: Ports, extra_args: &[String]) -> NodeProcess {
        let root = tempfile::Builder::new()
            .prefix("ordkv-test-")
            .tempdir()
            .expect("temp dir");
        let data_dir = root.path().join("data");
        NodeProcess {
            name: name.to_string(),
            data_dir,
            root,
            client_port: ports.client,
            peer_port: ports.peer,
            http_port: ports.http,
            extra_args: extra_args.to_vec(),
            env: Vec::new(),
            bin: None,
            child: None,
            starts: 0,
            logs_shown: Default::default(),
        }
    }

    /// Adds `serve` flags for this and every later start.
    pub fn add_args(&mut self, args: &[&str]) {
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
    }

    /// The `serve` arguments of this node.
    pub fn serve_args(&self) -> Vec<String> {
        let mut args = vec![
            "serve".to_string(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--name".into(),
            self.name.clone(),
            "--client-addr".into(),
            self.client_addr(),
            "--peer-addr".into(),
            format!("127.0.0.1:{}", self.peer_port),
            "--http-addr".into(),
            format!("127.0.0.1:{}", self.http_port),
        ];
        args.extend(self.extra_args.iter().cloned());
        args
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.root.path().join(format!("serve-{start}.stderr.log"))
    }

    /// Starts the process without waiting for it (see [`NodeProcess::wait_ready`]).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).expect("create log file");
        let mut cmd = match &self.bin {
            Some(bin) => ordkv_command_of(bin),
            None => ordkv_command(),
        };
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.args(self.serve_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        self.child = Some(child);
    }

    /// Polls `/readyz` until it answers 200; panics with the logs after [`READY_DEADLINE`]
    /// or if the process exits.
    pub async fn wait_ready(&mut self) {
        let until = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().expect("try_wait")
            {
                self.child = None;
                panic!(
                    "{} exited with {status} before it was ready\n{}",
                    self.name,
                    self.logs()
                );
            }
            let last = match self.http_get("/readyz").await {
                Ok((200, _)) => return,
                Ok((code, body)) => format!("{code} {}", body.trim()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= until {
                panic!(
                    "{} not ready within {READY_DEADLINE:?} (last /readyz: {last})\n{}",
                    self.name,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A minimal HTTP/1.0 GET on the HTTP port: `(status code, body)`.
    pub async fn http_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let addr = self.http_addr();
        let path = path.to_string();
        tokio::task::spawn_blocking(move || http_get(addr, &path))
            .await
            .expect("http thread panicked")
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("the node is not running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
        let status = child.wait().expect("wait for the killed node");
        assert!(!status.success(), "a SIGKILLed node exited 0");
    }

    /// Stops the process with SIGSTOP: it keeps its sockets but runs nothing (a long GC
    /// pause, a starved VM) until [`NodeProcess::resume`].
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let child = self.child.as_ref().expect("the node is not running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap_or_else(|e| panic!("{signal}: {e}"));
    }

    /// Sets environment variables for every later start.
    pub fn set_env(&mut self, env: &[(String, String)]) {
        self.env = env.to_vec();
    }

    /// Starts `bin` (another build of `ordkv`) from the next start on; `None`: this build.
    pub fn set_bin(&mut self, bin: Option<PathBuf>) {
        self.bin = bin;
    }

    /// Sends SIGTERM (as the kubelet does when a pod is deleted) without waiting.
    pub fn sigterm(&mut self) {
        let child = self.child.as_ref().expect("the node is not running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    }

    /// Waits for the process to exit within `grace`; SIGKILLs it after that (as the kubelet
    /// does at the end of the grace period). Returns the exit status, `None` if killed.
    pub async fn wait_exit(&mut self, grace: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + grace;
        loop {
            let child = self.child.as_mut().expect("the node is not running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= until {
                self.kill_9();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the process again on the same data dir, ports and flags, and waits for ready.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.kill_9();
        }
        self.spawn();
        self.wait_ready().await;
    }

    /// Deletes the data dir (the node must be stopped): the next start is a lost volume.
    pub fn wipe_data_dir(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        if self.data_dir.exists() {
            std::fs::remove_dir_all(&self.data_dir).expect("remove the data dir");
        }
    }

    /// Whether a process was started and not killed since (it may have exited by itself).
    pub fn is_started(&self) -> bool {
        self.child.is_some()
    }

    /// The stderr of the latest start only.
    pub fn current_log(&self) -> String {
        std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default()
    }

    /// A minimal HTTP/1.0 POST with an empty body on the HTTP port: `(status code, body)`.
    pub async fn http_post(&self, path: &str) -> std::io::Result<(u16, String)> {
        let addr = self.http_addr();
        let path = path.to_string();
        tokio::task::spawn_blocking(move || http_request(addr, "POST", &path))
            .await
            .expect("http thread panicked")
    }

    /// The ports of this node.
    pub fn ports(&self) -> Ports {
        Ports {
            client: self.client_port,
            peer: self.peer_port,
            http: self.http_port,
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// Every start's stderr, in order.
    pub fn logs(&self) -> String {
        self.logs_shown
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut out = String::new();
        for start in 1..=self.starts {
            let text = std::fs::read_to_string(self.log_path(start)).unwrap_or_default();
            out.push_str(&format!(
                "===== {} stderr (start {start}) =====\n{text}\n",
                self.name
            ));
        }
        out
    }

    /// The member name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `127.0.0.1:<client port>`.
    pub fn client_addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The client port as a socket address.
    pub fn client_socket_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// `127.0.0.1:<peer port>`.
    pub fn peer_addr(&self) -> String {
        format!("127.0.0.1:{}", self.peer_port)
    }

    /// The HTTP port as a socket address.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }

    /// A new HTTP/2 connection to the client port (each call opens its own connection).
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.client_addr()))
            .expect("valid endpoint")
            .connect_timeout(Duration::from_secs(5))
            .timeout(RPC_TIMEOUT)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", self.name, self.logs()))
    }

    /// A KV client on a new connection.
    pub async fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel().await)
    }

    /// A Cluster client on a new connection.
    pub async fn cluster(&self) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel().await)
    }

    /// `Cluster.Status` of this node.
    pub async fn status(&self) -> StatusResponse {
        self.cluster()
            .await
            .status(StatusRequest {})
            .await
            .unwrap_or_else(|e| panic!("Cluster.Status: {e:?}\n{}", self.logs()))
            .into_inner()
    }

    /// An `ordkv <args...> --endpoints <this node>` client command.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = ordkv_command();
        cmd.args(args).args(["--endpoints", &self.client_addr()]);
        cmd
    }

    /// Runs a client command against this node to completion.
    pub async fn cli(&self, args: &[&str]) -> Output {
        run_async(self.cli_command(args), None, COMMAND_DEADLINE).await
    }

    /// Runs a client command with `stdin` as its standard input.
    pub async fn cli_stdin(&self, args: &[&str], stdin: Vec<u8>) -> Output {
        run_async(self.cli_command(args), Some(stdin), COMMAND_DEADLINE).await
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() && !self.logs_shown.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!("{}", self.logs());
        }
    }
}

/// A minimal HTTP/1.0 GET: `(status code, body)`.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path)
}

fn http_request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(
        format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    )?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

// ---------------------------------------------------------------------------------------
// A streaming child (`ordkv watch`)
// ---------------------------------------------------------------------------------------

/// A long-running client command whose stdout is read line by line. Killed on drop.
pub struct LineChild {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

impl LineChild {
    /// Spawns `cmd` with stdout and stderr piped.
    pub fn spawn(mut cmd: Command) -> LineChild {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut line = Vec::new();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let stderr = drain(child.stderr.take().expect("piped stderr"));
        LineChild {
            child,
            lines,
            stderr,
        }
    }

    /// The next stdout line (with its `\n`), or `None` if none arrives within `within` or
    /// stdout closed.
    pub async fn next_line(&mut self, within: Duration) -> Option<Vec<u8>> {
        tokio::time::timeout(within, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    /// Kills the process and returns its stderr.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(Vec::new));
        String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned()
    }
}

impl Drop for LineChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Raw gRPC
// ---------------------------------------------------------------------------------------

/// A gRPC codec that sends and receives message bodies as raw bytes, to put arbitrary
/// (malformed) payloads on the wire and to call methods no generated client has.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

/// Sends `body` as the single message of a unary call to `path` (e.g.
/// `/ordkv.v1.KV/Put`) and returns the raw response message.
pub async fn raw_unary(channel: Channel, path: &str, body: Bytes) -> Result<Bytes, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path.to_string())
        .expect("valid gRPC path");
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

/// A seeded SplitMix64: reproducible random bytes without another dependency.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// A seed from the clock, or `ORDKV_TEST_SEED` when set. Printed by the caller.
    pub fn seed_from_env_or_clock() -> u64 {
        if let Some(seed) = std::env::var("ORDKV_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            return seed;
        }
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Every file under `dir` with its length and modification time, sorted: a fingerprint
/// that changes when anything in the tree is written.
pub fn tree_fingerprint(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let entry = entry.expect("dir entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                let rel = entry
                    .path()
                    .strip_prefix(dir)
                    .expect("under dir")
                    .to_path_buf();
                out.push((rel, meta.len(), meta.modified().expect("mtime")));
            }
        }
    }
    out.sort();
    out
}

/// The highest index the leader's log says it purged up to (openraft's `purge log, ...
/// purge_upto: T1-N<id>.<index>` lines), if any.
pub fn purged_upto(logs: &str) -> Option<u64> {
    logs.lines()
        .filter(|l| l.contains("purge log,"))
        .filter_map(|l| {
            let tail = l.split("purge_upto: ").nth(1)?;
            let id = tail.split_whitespace().next()?;
            id.rsplit('.').next()?.trim_end_matches(',').parse().ok()
        })
        .max()
}
