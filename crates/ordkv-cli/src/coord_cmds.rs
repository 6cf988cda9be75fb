//! `ordkv lease ...`, `ordkv lock` and `ordkv elect`: leases and the coordination recipes
//! (`ordkv-recipes`) from the command line, as `etcdctl lease|lock|elect` does.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use ordkv_client::{Client, Election, Lock, Session};
use ordkv_proto::v1::{LeaseGrantRequest, LeaseTimeToLiveRequest};
use serde_json::json;

use crate::output::{self, Format};

/// `ordkv lease ...`.
#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Grant a lease; prints its id (pass it to `put --lease`).
    Grant {
        /// Time to live in seconds (raised to the cluster's minimum when shorter).
        ttl: i64,
        /// Grant this id instead of one the cluster picks.
        #[arg(long, default_value_t = 0)]
        id: u64,
    },
    /// Revoke a lease and delete its keys.
    Revoke {
        /// The lease id.
        id: u64,
    },
    /// Keep a lease alive until Ctrl-C (a line per keepalive); exits 1 once the lease is gone.
    KeepAlive {
        /// The lease id.
        id: u64,
        /// Send one keepalive and exit.
        #[arg(long)]
        once: bool,
    },
    /// A lease's granted TTL and the seconds it has left.
    Ttl {
        /// The lease id.
        id: u64,
        /// Also list its keys.
        #[arg(long)]
        keys: bool,
    },
    /// List the live leases.
    List,
}

/// `ordkv lock`.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// The lock's name (a key prefix).
    pub name: String,
    /// The session's lease TTL in seconds: how long the lock outlives a holder that died.
    #[arg(long, default_value_t = 10)]
    pub ttl: i64,
    /// Give up when the lock is not held within this long (e.g. `30s`); default: wait.
    #[arg(long, value_parser = crate::duration::parse_duration)]
    pub wait: Option<Duration>,
    /// Run this command while holding the lock, then release it and exit with its status.
    /// It gets ORDKV_LOCK_KEY and ORDKV_LOCK_FENCING_TOKEN. Without it: hold until Ctrl-C.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `ordkv elect`.
#[derive(Debug, Args)]
pub struct ElectArgs {
    /// The election's name (a key prefix).
    pub name: String,
    /// Campaign with this value and, once elected, print it and lead until Ctrl-C. Without
    /// it: print the leader's value at each change until Ctrl-C.
    pub value: Option<String>,
    /// The session's lease TTL in seconds: how long a leader that died stays leader.
    #[arg(long, default_value_t = 10)]
    pub ttl: i64,
}

/// The exit status when the session (so the lock or the leadership) was lost.
pub const SESSION_LOST_EXIT: u8 = 4;

pub async fn lease(client: &Client, fmt: Format, cmd: LeaseCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        LeaseCommand::Grant { ttl, id } => {
            let g = client.lease_grant(LeaseGrantRequest { ttl, id }).await?;
            match fmt {
                Format::Human => {
                    println!("lease {} granted with TTL {}s", g.id, g.ttl);
                    if g.ttl_raised {
                        eprintln!(
                            "note: TTL {ttl}s is below the cluster's minimum; raised to {}s",
                            g.ttl
                        );
                    }
                }
                Format::Json => output::print_json(&json!({
                    "id": g.id, "ttl": g.ttl, "ttl_raised": g.ttl_raised,
                }))?,
            }
        }
        LeaseCommand::Revoke { id } => {
            let r = client.lease_revoke(id).await?;
            let revision = r.header.map_or(0, |h| h.revision);
            match fmt {
                Format::Human => println!("lease {id} revoked ({} keys deleted)", r.deleted),
                Format::Json => output::print_json(&json!({
                    "id": id, "deleted": r.deleted, "revision": revision,
                }))?,
            }
        }
        LeaseCommand::KeepAlive { id, once } => loop {
            let k = client.lease_keep_alive(id).await?;
            match fmt {
                Format::Human if k.ttl > 0 => println!("lease {id} kept alive with TTL {}s", k.ttl),
                Format::Human => println!("lease {id} expired or was revoked"),
                Format::Json => output::print_json(&json!({"id": id, "ttl": k.ttl}))?,
            }
            if k.ttl <= 0 {
                return Ok(ExitCode::FAILURE);
            }
            if once {
                break;
            }
            let every = Duration::from_secs(k.ttl as u64) / 3;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = tokio::time::sleep(every) => {}
            }
        },
        LeaseCommand::Ttl { id, keys } => {
            let t = client
                .lease_time_to_live(LeaseTimeToLiveRequest { id, keys })
                .await?;
            match fmt {
                Format::Human => {
                    println!(
                        "lease {id} granted with TTL {}s, {}s left",
                        t.granted_ttl, t.ttl
                    );
                    for k in &t.keys {
                        println!("{}", String::from_utf8_lossy(k));
                    }
                }
                Format::Json => {
                    let keys: Vec<_> = t.keys.iter().map(|k| output::key_json(k)).collect();
                    output::print_json(&json!({
                        "id": id, "granted_ttl": t.granted_ttl, "ttl": t.ttl, "keys": keys,
                    }))?
                }
            }
        }
        LeaseCommand::List => {
            let l = client.lease_leases().await?;
            match fmt {
                Format::Human => {
                    for lease in &l.leases {
                        println!("{}\t{}s", lease.id, lease.granted_ttl);
                    }
                }
                Format::Json => {
                    let leases: Vec<_> = l
                        .leases
                        .iter()
                        .map(|l| json!({"id": l.id, "ttl": l.granted_ttl}))
                        .collect();
                    output::print_json(&json!({ "leases": leases }))?
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Holds the lock while the command runs (or until Ctrl-C), then releases it.
pub async fn lock(client: &Client, fmt: Format, a: LockArgs) -> anyhow::Result<ExitCode> {
    let session = Session::new(client.clone(), a.ttl).await?;
    let lock = Lock::new(&session, a.name.clone());
    let guard = match a.wait {
        Some(wait) => lock.lock_timeout(wait).await,
        None => tokio::select! {
            held = lock.lock() => held,
            _ = tokio::signal::ctrl_c() => {
                session.close().await?;
                return Ok(ExitCode::from(130));
            }
        },
    }?;
    let key = String::from_utf8_lossy(guard.key()).into_owned();
    let token = guard.fencing_token();
    let status = if a.command.is_empty() {
        match fmt {
            Format::Human => println!("{key}\nfencing token {token}"),
            Format::Json => output::print_json(&json!({"key": key, "fencing_token": token}))?,
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
            () = session.lost() => {
                eprintln!("error: the lock's session was lost; the lock may be held by another");
                ExitCode::from(SESSION_LOST_EXIT)
            }
        }
    } else {
        let mut child = tokio::process::Command::new(&a.command[0])
            .args(&a.command[1..])
            .env("ORDKV_LOCK_KEY", &key)
            .env("ORDKV_LOCK_FENCING_TOKEN", token.to_string())
            .spawn()
            .with_context(|| format!("starting {:?}", a.command[0]))?;
        tokio::select! {
            exit = child.wait() => {
                let exit = exit.context("waiting for the command")?;
                ExitCode::from(exit.code().map_or(1, |c| c.clamp(0, 255) as u8))
            }
            () = session.lost() => {
                // The lock may pass to another holder: stop the command rather than let two run.
                let _ = child.kill().await;
                eprintln!("error: the lock's session was lost; the command was stopped");
                ExitCode::from(SESSION_LOST_EXIT)
            }
        }
    };
    lock.unlock(guard).await?;
    session.close().await?;
    Ok(status)
}

/// Campaigns and leads until Ctrl-C, or observes the leader.
pub async fn elect(client: &Client, fmt: Format, a: ElectArgs) -> anyhow::Result<ExitCode> {
    let election = Election::new(client.clone(), a.name.clone());
    let print = |leader: Option<&ordkv_proto::v1::KeyValue>| -> anyhow::Result<()> {
        match (fmt, leader) {
            (Format::Human, Some(kv)) => println!("{}", String::from_utf8_lossy(&kv.value)),
            (Format::Human, None) => println!("(no leader)"),
            (Format::Json, leader) => output::print_json(&json!({
                "leader": leader.map(|kv| output::kv_json(kv, true)),
            }))?,
        }
        Ok(())
    };
    let Some(value) = a.value else {
        let mut changes = election.observe();
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
                change = changes.next() => match change {
                    Some(leader) => print(leader.as_ref())?,
                    None => bail!("the observation ended"),
                },
            }
        }
    };
    let session = Session::new(client.clone(), a.ttl).await?;
    let leadership = tokio::select! {
        won = election.campaign(&session, value) => won?,
        _ = tokio::signal::ctrl_c() => {
            session.close().await?;
            return Ok(ExitCode::from(130));
        }
    };
    print(election.leader().await?.as_ref())?;
    let status = tokio::select! {
        _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
        () = session.lost() => {
            eprintln!("error: the session was lost; another campaigner may lead now");
            ExitCode::from(SESSION_LOST_EXIT)
        }
    };
    election.resign(leadership).await?;
    session.close().await?;
    Ok(status)
}
