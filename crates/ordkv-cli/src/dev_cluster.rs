//! `ordkv dev-cluster --replicas N`: N real `ordkv serve` processes on loopback, shaped like
//! a StatefulSet (`kv-0..N-1`, one data dir each under `./ordkv-dev/`), so a newcomer sees
//! replication without Kubernetes. kv-i listens on base+10i (client), +1 (peer), +2 (HTTP),
//! base 7379 by default, so plain `ordkv put/get` talk to kv-0.
//!
//! Like the StatefulSet controller, it brings back a member that exits, with the same name
//! and data, after a pause that grows while the member keeps failing; only Ctrl-C or SIGTERM
//! to dev-cluster stops them all. `ordkv dev-cluster stop N` stops member N on purpose and
//! keeps it down until `ordkv dev-cluster start N`.
//!
//! Files in the dir: `kv-i/` (data), `kv-i.log` (appended to), `kv-i.pid` (the running
//! member), `kv-i.held` (kept down by `stop`), `dev-cluster.lock` (held while it runs).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

/// Flags of `ordkv dev-cluster`.
#[derive(Debug, clap::Args)]
pub struct DevClusterArgs {
    #[command(subcommand)]
    pub action: Option<DevAction>,
    /// Number of members.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub replicas: u16,
    /// Parent of the members' data dirs (`<dir>/kv-i`) and logs (`<dir>/kv-i.log`).
    #[arg(
        long,
        env = "ORDKV_DEV_DIR",
        default_value = "./ordkv-dev",
        global = true
    )]
    pub dir: PathBuf,
    /// kv-i listens on base+10i (client), +1 (peer) and +2 (HTTP).
    #[arg(long, env = "ORDKV_DEV_BASE_PORT", default_value_t = 7379)]
    pub base_port: u16,
    /// TLS on the client and peer ports (mutual TLS between members), with a throwaway CA
    /// made at each start in `<dir>/tls/` (`ca.crt` is what clients pass as --cacert). The
    /// HTTP port stays plaintext.
    #[arg(long)]
    pub tls: bool,
}

/// Writes a new CA (`<dir>/ca.crt`) and, per member, `<dir>/kv-i/{tls.crt,tls.key,ca.crt}`
/// valid for `kv-i`, `localhost` and 127.0.0.1.
fn throwaway_pki(dir: &Path, replicas: u16) -> anyhow::Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "ordkv dev-cluster CA (throwaway)");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let write = |path: PathBuf, contents: &str| {
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write(dir.join("ca.crt"), &ca.pem())?;
    for i in 0..replicas {
        let name = format!("kv-{i}");
        let mut params =
            CertificateParams::new(vec![name.clone(), "localhost".into(), "127.0.0.1".into()])?;
        params.distinguished_name.push(DnType::CommonName, &name);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        let member = dir.join(&name);
        std::fs::create_dir_all(&member)?;
        write(member.join("tls.crt"), &cert.pem())?;
        write(member.join("tls.key"), &key.serialize_pem())?;
        write(member.join("ca.crt"), &ca.pem())?;
    }
    Ok(())
}

/// Acting on one member of the running dev-cluster.
#[derive(Debug, clap::Subcommand)]
pub enum DevAction {
    /// Stop member N (SIGTERM, as `kubectl delete pod` does) and keep it down.
    Stop {
        /// The member's ordinal.
        ordinal: u16,
    },
    /// Bring back member N after `stop N`.
    Start {
        /// The member's ordinal.
        ordinal: u16,
    },
}

/// The first pause before a member that exited is started again, doubled while it keeps
/// exiting soon after its start, up to [`MAX_PAUSE`] (Kubernetes' CrashLoopBackOff, shorter).
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const MAX_PAUSE: Duration = Duration::from_secs(30);
/// A member that ran this long before exiting starts again after [`FIRST_PAUSE`].
const RAN_WELL: Duration = Duration::from_secs(30);
/// How long a member may take to stop on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

fn ports(base: u16, i: u16) -> anyhow::Result<(u16, u16, u16)> {
    let client = base
        .checked_add(10 * i)
        .filter(|p| p.checked_add(2).is_some())
        .with_context(|| format!("--base-port {base} leaves no room for kv-{i}'s ports"))?;
    Ok((client, client + 1, client + 2))
}

fn file(dir: &Path, i: u16, ext: &str) -> PathBuf {
    dir.join(format!("kv-{i}.{ext}"))
}

/// Starts the members and keeps them running until Ctrl-C or SIGTERM; or stops or starts one
/// member of a running dev-cluster.
pub async fn run(args: DevClusterArgs) -> anyhow::Result<()> {
    match args.action {
        Some(DevAction::Stop { ordinal }) => return hold(&args.dir, ordinal),
        Some(DevAction::Start { ordinal }) => return release(&args.dir, ordinal),
        None => {}
    }
    let exe = std::env::current_exe().context("locating the ordkv binary")?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    // Checked before anything in the dir is touched.
    let _lock = lock_dir(&args.dir)?;
    let mut members = Vec::new();
    for i in 0..args.replicas {
        members.push(ports(args.base_port, i)?);
    }
    for (i, (client, peer, http)) in members.iter().enumerate() {
        for (port, kind) in [(client, "client"), (peer, "peer"), (http, "HTTP")] {
            if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", *port)) {
                bail!(
                    "port {port} (kv-{i}'s {kind} port) is in use ({e}); pick other ports with \
                     --base-port (kv-i uses base+10i, +1, +2)"
                );
            }
        }
    }
    let peers: Vec<String> = members
        .iter()
        .enumerate()
        .map(|(i, (_, peer, _))| format!("kv-{i}=127.0.0.1:{peer}"))
        .collect();
    let peers = peers.join(",");
    let tls_dir = std::path::absolute(args.dir.join("tls"))?;
    if args.tls {
        throwaway_pki(&tls_dir, args.replicas)?;
    }
    println!(
        "starting {} members (logs in {}/kv-N.log)",
        args.replicas,
        args.dir.display()
    );
    // Before any member starts, so that no signal leaves one behind.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let stop = CancellationToken::new();
    let mut supervisors = Vec::new();
    for (i, &(client, peer, http)) in members.iter().enumerate() {
        let i = i as u16;
        // A member held down by an earlier run comes back with this one.
        let _ = std::fs::remove_file(file(&args.dir, i, "held"));
        let mut serve_args = vec![
            "serve".into(),
            "--name".into(),
            format!("kv-{i}"),
            "--data-dir".into(),
            args.dir.join(format!("kv-{i}")).display().to_string(),
            "--peers".into(),
            peers.clone(),
            "--client-addr".into(),
            format!("127.0.0.1:{client}"),
            "--peer-addr".into(),
            format!("127.0.0.1:{peer}"),
            "--http-addr".into(),
            format!("127.0.0.1:{http}"),
        ];
        if args.tls {
            serve_args.push("--tls-dir".into());
            serve_args.push(tls_dir.join(format!("kv-{i}")).display().to_string());
            serve_args.push("--http-plaintext".into());
        }
        let serve = Member {
            i,
            exe: exe.clone(),
            dir: args.dir.clone(),
            args: serve_args,
        };
        println!(
            "  kv-{i}: client 127.0.0.1:{client}  peer 127.0.0.1:{peer}  http http://127.0.0.1:{http}/readyz"
        );
        supervisors.push(tokio::spawn(serve.supervise(stop.clone())));
    }
    let endpoints: Vec<String> = members
        .iter()
        .map(|(client, _, _)| format!("127.0.0.1:{client}"))
        .collect();
    if args.tls {
        println!("\nexport ORDKV_CACERT={}", tls_dir.join("ca.crt").display());
    }
    println!(
        "{}export ORDKV_ENDPOINTS={}\n\nthen try:  ordkv put greeting hello\n           ordkv get greeting\n           ordkv cluster status\n           ordkv dev-cluster stop 0    # and `start 0` to bring it back\n\nA member that exits is started again. Ctrl-C stops the cluster; the data stays in {}.",
        if args.tls { "" } else { "\n" },
        endpoints.join(","),
        args.dir.display()
    );

    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("stopping the cluster");
    stop.cancel();
    for s in supervisors {
        let _ = s.await;
    }
    Ok(())
}

/// Holds `<dir>/dev-cluster.lock` for the life of the returned file: one dev-cluster per dir.
fn lock_dir(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join("dev-cluster.lock");
    let mut lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if lock.try_lock().is_err() {
        let mut pid = String::new();
        let _ = lock.read_to_string(&mut pid);
        bail!(
            "another dev-cluster (pid {}) runs in {}; stop it with Ctrl-C, or choose another --dir",
            pid.trim(),
            dir.display()
        );
    }
    lock.set_len(0)?;
    write!(lock, "{}", std::process::id())?;
    Ok(lock)
}

/// `dev-cluster stop N`: marks the member held, then SIGTERMs it if it runs.
fn hold(dir: &Path, i: u16) -> anyhow::Result<()> {
    ensure_running(dir)?;
    File::create(file(dir, i, "held"))
        .with_context(|| format!("marking kv-{i} held in {}", dir.display()))?;
    match running_pid(dir, i) {
        Some(pid) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            println!(
                "kv-{i} (pid {pid}) is stopping; `ordkv dev-cluster start {i}` brings it back"
            );
        }
        None => {
            println!("kv-{i} is not running; it stays down until `ordkv dev-cluster start {i}`")
        }
    }
    Ok(())
}

/// Fails unless a dev-cluster holds the dir's lock (pid files of a dev-cluster that was
/// killed may name other processes by now).
fn ensure_running(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("dev-cluster.lock");
    let free = File::open(&path).is_ok_and(|f| f.try_lock().is_ok());
    if free || !path.exists() {
        bail!(
            "no dev-cluster runs in {} (start one with `ordkv dev-cluster`)",
            dir.display()
        );
    }
    Ok(())
}

/// `dev-cluster start N`: lifts the hold; the dev-cluster starts the member again.
fn release(dir: &Path, i: u16) -> anyhow::Result<()> {
    ensure_running(dir)?;
    match std::fs::remove_file(file(dir, i, "held")) {
        Ok(()) => {
            println!(
                "kv-{i} is starting again (log: {})",
                file(dir, i, "log").display()
            );
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("kv-{i} was not stopped with `ordkv dev-cluster stop {i}`")
        }
        Err(e) => Err(e).context("lifting the hold"),
    }
}

/// The pid of member `i`, when it runs.
fn running_pid(dir: &Path, i: u16) -> Option<i32> {
    std::fs::read_to_string(file(dir, i, "pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The last error a member logged, for the exit message.
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let line = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("error:") || l.contains(" ERROR "))
        .or(lines.last())?;
    Some(line.chars().take(300).collect())
}

/// One member, run and run again.
struct Member {
    i: u16,
    exe: PathBuf,
    dir: PathBuf,
    args: Vec<String>,
}

impl Member {
    async fn supervise(self, stop: CancellationToken) {
        let (i, log_path) = (self.i, file(&self.dir, self.i, "log"));
        let mut pause = FIRST_PAUSE;
        while !stop.is_cancelled() {
            if file(&self.dir, i, "held").exists() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            }
            let log = match OpenOptions::new().create(true).append(true).open(&log_path) {
                Ok(log) => log,
                Err(e) => {
                    eprintln!("kv-{i}: cannot open {}: {e}", log_path.display());
                    return;
                }
            };
            let mut child = match tokio::process::Command::new(&self.exe)
                .args(&self.args)
                // Its own process group: Ctrl-C in the terminal reaches dev-cluster only,
                // which stops the members in order.
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
            {
                Ok(child) => child,
                Err(e) => {
                    eprintln!("kv-{i}: cannot start: {e}");
                    return;
                }
            };
            let started = Instant::now();
            if let Some(pid) = child.id() {
                let _ = std::fs::write(file(&self.dir, i, "pid"), pid.to_string());
            }
            let status = tokio::select! {
                status = child.wait() => status,
                _ = stop.cancelled() => {
                    if let Some(pid) = child.id() {
                        // SIGTERM: the member hands off leadership and flushes.
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGTERM,
                        );
                    }
                    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                        let _ = child.kill().await;
                    }
                    let _ = std::fs::remove_file(file(&self.dir, i, "pid"));
                    return;
                }
            };
            let _ = std::fs::remove_file(file(&self.dir, i, "pid"));
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            if file(&self.dir, i, "held").exists() {
                println!("kv-{i} stopped ({status}); `ordkv dev-cluster start {i}` brings it back");
                pause = FIRST_PAUSE;
                continue;
            }
            if started.elapsed() >= RAN_WELL {
                pause = FIRST_PAUSE;
            }
            println!(
                "kv-{i} exited ({status}): {}; starting it again in {pause:?}",
                last_error(&log_path).unwrap_or_else(|| "no log".into())
            );
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}
