//! `ordkv dev-cluster --replicas N`: N real `ordkv serve` processes on loopback, shaped like
//! a StatefulSet (`kv-0..N-1`, one data dir each under `./ordkv-dev/`), so a newcomer sees
//! replication without Kubernetes. kv-0 takes the default ports, so plain `ordkv put/get`
//! talk to it; kv-i uses 7379+10i, 7380+10i, 7381+10i. Ctrl-C stops them all (SIGTERM).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};

/// Flags of `ordkv dev-cluster`.
#[derive(Debug, clap::Args)]
pub struct DevClusterArgs {
    /// Number of members.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub replicas: u16,
    /// Parent of the members' data dirs (`<dir>/kv-i`) and logs (`<dir>/kv-i.log`).
    #[arg(long, default_value = "./ordkv-dev")]
    pub dir: PathBuf,
}

fn ports(i: u16) -> (u16, u16, u16) {
    let base = 7379 + 10 * i;
    (base, base + 1, base + 2)
}

/// Starts the members and waits for Ctrl-C or SIGTERM.
pub async fn run(args: DevClusterArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the ordkv binary")?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let peers: Vec<String> = (0..args.replicas)
        .map(|i| format!("kv-{i}=127.0.0.1:{}", ports(i).1))
        .collect();
    let peers = peers.join(",");
    let mut children = Vec::new();
    println!(
        "starting {} members (logs in {}/kv-N.log)",
        args.replicas,
        args.dir.display()
    );
    for i in 0..args.replicas {
        let (client, peer, http) = ports(i);
        let log = std::fs::File::create(args.dir.join(format!("kv-{i}.log")))?;
        let child = tokio::process::Command::new(&exe)
            .arg("serve")
            .args(["--name", &format!("kv-{i}")])
            .arg("--data-dir")
            .arg(args.dir.join(format!("kv-{i}")))
            .args(["--peers", &peers])
            .args(["--client-addr", &format!("127.0.0.1:{client}")])
            .args(["--peer-addr", &format!("127.0.0.1:{peer}")])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting kv-{i}"))?;
        println!(
            "  kv-{i}: client 127.0.0.1:{client}  peer 127.0.0.1:{peer}  http http://127.0.0.1:{http}/readyz"
        );
        children.push(child);
    }
    let endpoints: Vec<String> = (0..args.replicas)
        .map(|i| format!("127.0.0.1:{}", ports(i).0))
        .collect();
    println!(
        "\ntry:  ordkv put greeting hello\n      ordkv --endpoints {} get greeting\n      ordkv --endpoints {} cluster status\n\nCtrl-C stops the cluster; the data stays in {}.",
        endpoints.last().map_or("", String::as_str),
        endpoints.join(","),
        args.dir.display()
    );

    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let exited = futures::future::select_all(children.iter_mut().map(|c| Box::pin(c.wait())));
    let early = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
        (status, i, _) = exited => Some((i, status)),
    };
    println!("stopping the cluster");
    for c in &children {
        if let Some(pid) = c.id() {
            // SIGTERM: each member hands off leadership and flushes.
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }
    for c in &mut children {
        let _ = tokio::time::timeout(Duration::from_secs(15), c.wait()).await;
    }
    if let Some((i, status)) = early {
        bail!(
            "kv-{i} exited ({}); see {}/kv-{i}.log",
            status
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string()),
            args.dir.display()
        );
    }
    Ok(())
}
