//! The `ordkv` binary: `ordkv serve` runs a node; every other command is a client of one.
//!
//! Errors are printed to stderr as `error: <message>` with exit status 1; `ordkv get` of a
//! missing key prints `not found` and exits 1; usage errors exit 2.

mod client_cmds;
mod coord_cmds;
mod dev_cluster;
mod duration;
mod output;
mod recover_cmd;
mod serve;
mod snapshot_cmds;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// ordkv: a replicated key-value store for Kubernetes StatefulSets.
#[derive(Debug, Parser)]
#[command(name = "ordkv", version)]
struct Cli {
    #[command(flatten)]
    global: client_cmds::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: variant sizes do not matter (and ServeArgs grows independently).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (one replica per pod).
    Serve(serve::ServeArgs),
    /// Run a local StatefulSet-shaped cluster (kv-0..N-1) on loopback.
    DevCluster(dev_cluster::DevClusterArgs),
    /// Back up a member, or restore a backup into a new data dir.
    #[command(subcommand)]
    Snapshot(snapshot_cmds::SnapshotCommand),
    /// After a quorum is lost for good: make this stopped member the only voter of its
    /// cluster, so it starts and the others rejoin it (deploy/README.md, "Quorum loss").
    Recover(recover_cmd::RecoverArgs),
    #[command(flatten)]
    Client(client_cmds::ClientCommand),
}

// glibc's malloc and free were ~15% of a loaded leader's CPU (many small gRPC and sled
// allocations across threads); mimalloc spends less there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The command line definition: [`Cli`] with the client flags on the client commands only.
fn command() -> clap::Command {
    client_cmds::with_client_args(Cli::command())
}

/// Parses `args` (with the program name first).
#[cfg(test)]
fn parse(args: &[&str]) -> Result<(Cli, clap::ArgMatches), clap::Error> {
    let matches = command().try_get_matches_from(args)?;
    Ok((Cli::from_arg_matches(&matches)?, matches))
}

fn main() -> ExitCode {
    let matches = command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Command::Serve(args) = &cli.command
        && let Some(n) = args.worker_threads
    {
        runtime.worker_threads(n.into());
    }
    match tuned(runtime.enable_all()).build() {
        Ok(runtime) => runtime.block_on(run(cli, matches)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Without the LIFO slot, the responses that one applied batch completes are written to each
/// client connection together: with it, every response task wakes its connection task, which
/// runs next and writes that one response alone (one `writev` per put). Measured at 64
/// clients on 3 nodes: +8..20% puts/s, -12..21% CPU per put; 256 clients +3..11%.
///
/// `disable_lifo_slot` is tokio-unstable: the repository's `.cargo/config.toml` sets
/// `--cfg tokio_unstable`; a build without it (`cargo install` from another directory, a
/// dependent crate) gets tokio's stable runtime, which behaves the same but slower under load.
#[cfg(tokio_unstable)]
fn tuned(runtime: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
    runtime.disable_lifo_slot()
}

/// The stable runtime (see the `tokio_unstable` variant).
#[cfg(not(tokio_unstable))]
fn tuned(runtime: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
    runtime
}

async fn run(cli: Cli, matches: clap::ArgMatches) -> ExitCode {
    let global = client_cmds::GlobalArgs::resolve(&matches);
    let is_cluster_change = matches!(
        cli.command,
        Command::Client(client_cmds::ClientCommand::Cluster(
            client_cmds::ClusterCommand::Remove { .. }
                | client_cmds::ClusterCommand::TransferLeader { .. }
        ))
    );
    let result = match cli.command {
        Command::Serve(args) => serve::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::DevCluster(args) => dev_cluster::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Snapshot(snapshot_cmds::SnapshotCommand::Save { file, dir, keep }) => {
            let to = match (file, dir) {
                (Some(file), _) => snapshot_cmds::SaveTo::File(file),
                (None, Some(dir)) => snapshot_cmds::SaveTo::Dir { dir, keep },
                (None, None) => unreachable!("clap requires FILE or --dir"),
            };
            snapshot_save(global.clone(), to).await
        }
        Command::Snapshot(snapshot_cmds::SnapshotCommand::Verify { file }) => {
            snapshot_cmds::verify(&file, global.output).map(|()| ExitCode::SUCCESS)
        }
        Command::Snapshot(snapshot_cmds::SnapshotCommand::Restore { file, serve }) => {
            snapshot_cmds::restore(file, &serve, global.output)
                .await
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Recover(args) => recover_cmd::run(args, global.output)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Client(cmd) => client_cmds::run(global.clone(), cmd, &matches).await,
    };
    match result {
        Ok(code) => code,
        // A closed stdout (`ordkv scan | head`) is not an error worth reporting.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            let outcome = e
                .chain()
                .find_map(|c| c.downcast_ref::<ordkv_client::Error>())
                .and_then(|c| c.write_outcome());
            if outcome == Some(ordkv_client::WriteOutcome::Unknown) {
                if is_cluster_change {
                    eprintln!(
                        "note: the change may or may not have happened; check `ordkv cluster status` before retrying it"
                    );
                } else {
                    eprintln!(
                        "note: the write may or may not have happened; read the key before retrying it"
                    );
                }
            }
            for note in global.notes(&e) {
                eprintln!("note: {note}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn snapshot_save(
    global: client_cmds::GlobalArgs,
    to: snapshot_cmds::SaveTo,
) -> anyhow::Result<ExitCode> {
    // A backup of a large store takes longer than a request deadline.
    let client = global.connect().await?;
    snapshot_cmds::save(&client, to, global.output).await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        command().debug_assert();
    }

    fn global(args: &[&str]) -> client_cmds::GlobalArgs {
        let (_, m) = parse(args).unwrap();
        client_cmds::GlobalArgs::resolve(&m)
    }

    #[test]
    fn client_flags_apply_before_and_after_the_command() {
        let g = global(&[
            "ordkv",
            "get",
            "k",
            "--endpoints",
            "a:1,http://b:2",
            "-o",
            "json",
            "--timeout",
            "250ms",
        ]);
        assert_eq!(g.endpoints, ["a:1", "http://b:2"]);
        assert_eq!(g.output, output::Format::Json);
        assert_eq!(g.timeout, std::time::Duration::from_millis(250));
        assert!(!g.endpoints_from_default);
        let g = global(&["ordkv", "-o", "json", "--endpoints", "a:1", "get", "k"]);
        assert_eq!(g.endpoints, ["a:1"]);
        assert_eq!(g.output, output::Format::Json);
        // After the command wins over before it.
        let g = global(&[
            "ordkv",
            "--endpoints",
            "a:1",
            "cluster",
            "status",
            "--endpoints",
            "b:2",
        ]);
        assert_eq!(g.endpoints, ["b:2"]);
        let g = global(&["ordkv", "snapshot", "save", "f", "--timeout", "1s"]);
        assert_eq!(g.timeout, std::time::Duration::from_secs(1));
        assert!(parse(&["ordkv", "get", "k", "-o", "yaml"]).is_err());
        assert!(parse(&["ordkv", "cluster", "status"]).is_ok());
        assert!(
            parse(&[
                "ordkv",
                "txn",
                "--if-absent",
                "k",
                "--then-put",
                "k=v",
                "-o",
                "json"
            ])
            .is_ok()
        );
    }

    #[test]
    fn client_flags_are_not_serve_flags() {
        let mut cmd = command();
        cmd.build();
        let has = |path: &[&str], id: &str| {
            let mut c = &cmd;
            for p in path {
                c = c.find_subcommand(p).unwrap();
            }
            c.get_arguments()
                .any(|a| a.get_id() == id && !a.is_hide_set())
        };
        for id in ["endpoints", "output", "timeout"] {
            assert!(!has(&["serve"], id), "serve lists --{id}");
            assert!(!has(&["dev-cluster"], id), "dev-cluster lists --{id}");
            // Commands on local files take -o only.
            for local in [
                &["snapshot", "restore"][..],
                &["snapshot", "verify"],
                &["recover"],
            ] {
                assert_eq!(has(local, id), id == "output", "{local:?} and --{id}");
            }
            assert!(has(&["get"], id), "get lacks --{id}");
            assert!(has(&["watch"], id), "watch lacks --{id}");
            assert!(
                has(&["cluster", "status"], id),
                "cluster status lacks --{id}"
            );
            assert!(has(&["snapshot", "save"], id), "snapshot save lacks --{id}");
        }
        assert!(parse(&["ordkv", "serve", "--endpoints", "a:1"]).is_err());
        let help = command()
            .find_subcommand_mut("serve")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(!help.contains("--endpoints"), "{help}");
    }
}
