//! The client commands of `ordkv` (`put`, `get`, `del`, `scan`, `watch`, `txn`, `compact`,
//! `cluster status`): argument definitions and their execution over `ordkv-client`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Subcommand, ValueEnum};
use futures::StreamExt;
use ordkv_client::{Client, Code, WatchStream};
use ordkv_proto::v1::{
    CompactRequest, Compare, Consistency, DeleteRequest, Event, GetRequest, PutRequest,
    RangeRequest, RequestOp, StatusResponse, TxnRequest, WatchRequest, WatchResponse, compare,
    event::EventType, request_op,
};
use serde_json::json;

use crate::output::{self, Format, print_json};

/// Flags of every client command, accepted before the command (`ordkv --endpoints E get K`)
/// or after it (`ordkv get K --endpoints E`); see [`with_client_args`].
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Client endpoints (`host:port`, port 7379 by default, or `http://host:port`): a
    /// request goes to the first that answers; those that refused or were shutting down
    /// are skipped.
    #[arg(
        long,
        env = "ORDKV_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7379"
    )]
    pub endpoints: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Human)]
    pub output: Format,
    /// gRPC deadline of each request, e.g. `5s`, `500ms`, `1m`; `0` means none.
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse_duration)]
    pub timeout: Duration,
    /// The CA certificate (PEM) that signed the servers' certificates: turns TLS on
    /// (endpoints without a scheme become `https://`).
    #[arg(long, env = "ORDKV_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM), for servers run with --client-cert-auth; needs --key.
    #[arg(
        long = "cert",
        id = "client_cert",
        env = "ORDKV_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long = "key",
        id = "client_key",
        env = "ORDKV_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub key: Option<PathBuf>,
    /// A bearer token (the server's --auth-token-file names its identity); prefer the
    /// environment variable, which does not show in the process list.
    #[arg(
        long,
        env = "ORDKV_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Where `endpoints` came from (the default: neither the flag nor `ORDKV_ENDPOINTS`).
    #[arg(skip)]
    pub endpoints_from_default: bool,
}

/// The ids of the [`GlobalArgs`] flags.
const CLIENT_ARG_IDS: [&str; 7] = [
    "endpoints",
    "output",
    "timeout",
    "cacert",
    "client_cert",
    "client_key",
    "token",
];

/// Adds the client flags to the client commands of `ordkv` (not to `serve`, `dev-cluster`,
/// `snapshot restore`), and hides the top-level copies (still accepted there).
/// Adds the client flags' `-o/--output` alone (commands that work on local files).
fn with_output_arg(cmd: clap::Command) -> clap::Command {
    let client = GlobalArgs::augment_args(clap::Command::new("client"));
    let output = client.get_arguments().find(|a| a.get_id() == "output");
    cmd.arg(output.expect("the output flag").clone())
}

pub fn with_client_args(cmd: clap::Command) -> clap::Command {
    let mut cmd = cmd.after_help(
        "Client commands take --endpoints (or ORDKV_ENDPOINTS), -o/--output, --timeout and \
         TLS's --cacert, --cert, --key and --token, before or after the command: see `ordkv <command> --help`.",
    );
    for id in CLIENT_ARG_IDS {
        cmd = cmd.mut_arg(id, |a| a.hide(true));
    }
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in names {
        cmd = match name.as_str() {
            "serve" | "dev-cluster" | "help" => cmd,
            "snapshot" => cmd.mut_subcommand(name, |s| {
                s.mut_subcommand("save", GlobalArgs::augment_args)
                    .mut_subcommand("verify", with_output_arg)
                    .mut_subcommand("restore", with_output_arg)
            }),
            // Works on a stopped member's data dir: no endpoints, but -o.
            "recover" => cmd.mut_subcommand(name, with_output_arg),
            _ => cmd.mut_subcommand(name, |s| {
                if s.has_subcommands() {
                    let inner: Vec<String> = s
                        .get_subcommands()
                        .map(|c| c.get_name().to_string())
                        .collect();
                    inner
                        .into_iter()
                        .fold(s, |s, n| s.mut_subcommand(n, GlobalArgs::augment_args))
                } else {
                    GlobalArgs::augment_args(s)
                }
            }),
        };
    }
    cmd
}

impl GlobalArgs {
    /// The client flags of a parsed command line: each as given after the command, else as
    /// given before it, else from the environment or the default.
    pub fn resolve(top: &ArgMatches) -> GlobalArgs {
        let mut leaf = top;
        while let Some((_, sub)) = leaf.subcommand() {
            leaf = sub;
        }
        let given = |m: &ArgMatches, id| {
            m.try_contains_id(id).unwrap_or(false)
                && m.value_source(id) == Some(ValueSource::CommandLine)
        };
        let pick = |id| {
            let leaf_has = leaf.try_contains_id(id).unwrap_or(false);
            if leaf_has && (given(leaf, id) || !given(top, id)) {
                leaf
            } else {
                top
            }
        };
        let m = pick("endpoints");
        GlobalArgs {
            endpoints: m
                .get_many::<String>("endpoints")
                .map(|v| v.cloned().collect())
                .unwrap_or_default(),
            endpoints_from_default: m.value_source("endpoints") == Some(ValueSource::DefaultValue),
            output: pick("output")
                .get_one::<Format>("output")
                .copied()
                .unwrap_or(Format::Human),
            timeout: pick("timeout")
                .get_one::<Duration>("timeout")
                .copied()
                .unwrap_or(Duration::from_secs(5)),
            cacert: pick("cacert").get_one::<PathBuf>("cacert").cloned(),
            cert: pick("client_cert")
                .get_one::<PathBuf>("client_cert")
                .cloned(),
            key: pick("client_key").get_one::<PathBuf>("client_key").cloned(),
            token: pick("token").get_one::<String>("token").cloned(),
        }
    }

    /// A client for the endpoints, with TLS when --cacert is given.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let mut options = ordkv_client::ConnectOptions::from_files(
            self.cacert.as_deref(),
            self.cert.as_deref(),
            self.key.as_deref(),
        )?;
        options.token = self.token.clone();
        Ok(Client::connect_with(&self.endpoints, options).await?)
    }

    /// What to tell the user after `err` ended a client command, if anything.
    pub fn notes(&self, err: &anyhow::Error) -> Vec<String> {
        let mut notes = Vec::new();
        let client_err = err
            .chain()
            .find_map(|c| c.downcast_ref::<ordkv_client::Error>());
        if self.endpoints_from_default
            && client_err.is_some_and(|e| e.code() == Some(Code::Unavailable))
        {
            notes.push(format!(
                "no ordkv member answered at the default endpoint {}: pass --endpoints \
                 host:port,... or set ORDKV_ENDPOINTS (`ordkv dev-cluster` prints the line)",
                self.endpoints.join(",")
            ));
        }
        notes
    }
}

/// How a read is served.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ConsistencyArg {
    /// Reflects every write acknowledged before the read (default).
    Linearizable,
    /// Local to the answering replica: never blocks on the leader, may be stale.
    Serializable,
}

fn consistency(c: Option<ConsistencyArg>) -> i32 {
    let c = match c {
        None => Consistency::Unspecified,
        Some(ConsistencyArg::Linearizable) => Consistency::Linearizable,
        Some(ConsistencyArg::Serializable) => Consistency::Serializable,
    };
    c as i32
}

/// The client commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Set a key; prints `OK`.
    Put(PutArgs),
    /// Print a key's value (exit 1 with `not found` on stderr when absent).
    Get(GetArgs),
    /// Delete a key, a range or a prefix; prints the number of keys deleted.
    Del(DelArgs),
    /// List keys in order, one `key<TAB>value` per line.
    Scan(ScanArgs),
    /// Stream changes of a key or prefix until Ctrl-C; resumes on the next endpoint, from
    /// the revision after the last event printed, when its member stops.
    Watch(WatchArgs),
    /// Compare-and-swap: run the `--then-*` ops if every `--if-*` holds, else the `--else-*`;
    /// prints `SUCCEEDED` or `FAILED` (exit 0 either way unless `--fail-if-false`).
    Txn(TxnArgs),
    /// Discard watch history older than a revision.
    Compact(CompactArgs),
    /// Cluster administration.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Leases: keys with a time to live.
    #[command(subcommand)]
    Lease(crate::coord_cmds::LeaseCommand),
    /// Hold a lock while a command runs (or until Ctrl-C); prints the fencing token.
    Lock(crate::coord_cmds::LockArgs),
    /// Campaign in an election and lead until Ctrl-C, or watch who leads.
    Elect(crate::coord_cmds::ElectArgs),
}

/// `ordkv cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, roles, leader, term, commit/applied index and lag, as the leader sees them
    /// (`-` or `null`: not known to the answering member).
    Status {
        /// Ask every endpoint for its own state instead (revision, applied index, term, the
        /// leader it knows), even without a leader: after a quorum loss, the member with the
        /// highest revision is the one to `ordkv recover`.
        #[arg(long)]
        each: bool,
    },
    /// Removes the member with this ordinal now (scale-down without waiting for the
    /// dead-member timeout). Refused when the remaining voters would lose their quorum.
    Remove {
        /// The member's StatefulSet ordinal.
        ordinal: u32,
    },
    /// Hands leadership to the voter with this ordinal.
    TransferLeader {
        /// The voter's StatefulSet ordinal.
        ordinal: u32,
    },
}

/// `ordkv put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The key.
    pub key: String,
    /// The value; `-` reads it from stdin (binary-safe).
    #[arg(allow_hyphen_values = true)]
    pub value: String,
    /// Also print the previous value, if any.
    #[arg(long)]
    pub prev_kv: bool,
    /// Attach the key to this lease (an id as `lease grant` prints it): the key is deleted
    /// when the lease expires or is revoked.
    #[arg(long, value_name = "ID", default_value_t = 0)]
    pub lease: u64,
}

/// `ordkv get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The key.
    pub key: String,
    /// Read consistency (default linearizable).
    #[arg(long, value_enum)]
    pub consistency: Option<ConsistencyArg>,
    /// Wait until the answering replica has applied this revision.
    #[arg(long, default_value_t = 0)]
    pub min_revision: u64,
}

/// `ordkv del`.
#[derive(Debug, Args)]
pub struct DelArgs {
    /// The key (with `--prefix`: the prefix; with `--to`: the first key of the range).
    pub key: String,
    /// Delete every key starting with KEY.
    #[arg(long)]
    pub prefix: bool,
    /// Delete the range [KEY, END).
    #[arg(long, value_name = "END", conflicts_with = "prefix")]
    pub to: Option<String>,
    /// Also print the deleted key-values.
    #[arg(long)]
    pub prev_kv: bool,
}

/// `ordkv scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Every key starting with P.
    #[arg(long, value_name = "P", conflicts_with_all = ["from", "to"])]
    pub prefix: Option<String>,
    /// First key, inclusive (default: the first key).
    #[arg(long, value_name = "A")]
    pub from: Option<String>,
    /// Last key, exclusive (default: no upper bound).
    #[arg(long, value_name = "B")]
    pub to: Option<String>,
    /// At most N keys; 0 means all (pages are followed until then).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub limit: u64,
    /// Print keys only.
    #[arg(long)]
    pub keys_only: bool,
    /// Print the number of keys only.
    #[arg(long, conflicts_with = "keys_only")]
    pub count_only: bool,
    /// Read consistency (default linearizable).
    #[arg(long, value_enum)]
    pub consistency: Option<ConsistencyArg>,
    /// Wait until the answering replica has applied this revision.
    #[arg(long, default_value_t = 0)]
    pub min_revision: u64,
}

/// `ordkv watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Watch this key only (no key and no prefix: every key).
    pub key: Option<String>,
    /// Watch every key starting with P.
    #[arg(long, value_name = "P", conflicts_with = "key")]
    pub prefix: Option<String>,
    /// First revision to deliver; 0 means from now on.
    #[arg(long, value_name = "R", default_value_t = 0)]
    pub from_revision: u64,
    /// Include the previous key-value in events (shown with `-o json`).
    #[arg(long)]
    pub prev_kv: bool,
}

/// `ordkv txn`. Every compare is an equality; ops of one branch run in command-line order.
#[derive(Debug, Args)]
pub struct TxnArgs {
    /// Compare: K's value equals V.
    #[arg(long, value_name = "K=V", value_parser = parse_kv)]
    pub if_value: Vec<(String, String)>,
    /// Compare: K's version equals N (0 = absent).
    #[arg(long, value_name = "K=N", value_parser = parse_kn)]
    pub if_version: Vec<(String, u64)>,
    /// Compare: K's mod revision equals N.
    #[arg(long, value_name = "K=N", value_parser = parse_kn)]
    pub if_mod_revision: Vec<(String, u64)>,
    /// Compare: K's create revision equals N.
    #[arg(long, value_name = "K=N", value_parser = parse_kn)]
    pub if_create_revision: Vec<(String, u64)>,
    /// Compare: K does not exist (create revision 0).
    #[arg(long, value_name = "K")]
    pub if_absent: Vec<String>,
    /// On success: set K to V.
    #[arg(long, value_name = "K=V", value_parser = parse_kv)]
    pub then_put: Vec<(String, String)>,
    /// On success: delete K.
    #[arg(long, value_name = "K")]
    pub then_del: Vec<String>,
    /// On failure: set K to V.
    #[arg(long, value_name = "K=V", value_parser = parse_kv)]
    pub else_put: Vec<(String, String)>,
    /// On failure: delete K.
    #[arg(long, value_name = "K")]
    pub else_del: Vec<String>,
    /// Exit with status 3 when a compare did not hold (the `--else-*` ops ran); without
    /// it `FAILED` is an answer, not an error, and the exit status is 0.
    #[arg(long)]
    pub fail_if_false: bool,
}

/// The exit status of `txn --fail-if-false` whose compares did not all hold.
pub const TXN_FALSE_EXIT: u8 = 3;

/// `ordkv compact`.
#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Discard watch history strictly older than this revision.
    pub revision: u64,
}

/// Parses `K=V` (split at the first `=`; K must not be empty, V may be).
fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Parses `K=N` with N an unsigned integer.
fn parse_kn(s: &str) -> Result<(String, u64), String> {
    let (k, n) = parse_kv(s)?;
    let n = n
        .parse()
        .map_err(|_| format!("expected KEY=NUMBER, got {s:?}"))?;
    Ok((k, n))
}

/// Runs a client command; `matches` are the top-level matches (for `txn` op order).
pub async fn run(
    global: GlobalArgs,
    cmd: ClientCommand,
    matches: &ArgMatches,
) -> anyhow::Result<ExitCode> {
    let timeout = (!global.timeout.is_zero()).then_some(global.timeout);
    let client = global.connect().await?.with_timeout(timeout);
    let fmt = global.output;
    match cmd {
        ClientCommand::Put(a) => put(&client, fmt, a).await?,
        ClientCommand::Get(a) => return get(&client, fmt, a).await,
        ClientCommand::Txn(a) => {
            let sub = matches.subcommand_matches("txn").context("txn matches")?;
            return txn(&client, fmt, a, sub).await;
        }
        ClientCommand::Del(a) => del(&client, fmt, a).await?,
        ClientCommand::Scan(a) => scan(&client, fmt, a).await?,
        ClientCommand::Watch(a) => watch(&client, fmt, a).await?,
        ClientCommand::Compact(a) => {
            let resp = client
                .compact(CompactRequest {
                    revision: a.revision,
                })
                .await?;
            let revision = resp.header.map_or(0, |h| h.revision);
            match fmt {
                Format::Human => println!("compacted revision {}", a.revision),
                Format::Json => print_json(&json!({
                    "compacted": a.revision,
                    "revision": revision,
                }))?,
            }
        }
        ClientCommand::Cluster(ClusterCommand::Remove { ordinal }) => {
            print_change(fmt, client.remove_member(ordinal).await?)?
        }
        ClientCommand::Cluster(ClusterCommand::TransferLeader { ordinal }) => {
            print_change(fmt, client.transfer_leader(ordinal).await?)?
        }
        ClientCommand::Lease(c) => return crate::coord_cmds::lease(&client, fmt, c).await,
        ClientCommand::Lock(a) => return crate::coord_cmds::lock(&client, fmt, a).await,
        ClientCommand::Elect(a) => return crate::coord_cmds::elect(&client, fmt, a).await,
        ClientCommand::Cluster(ClusterCommand::Status { each: true }) => {
            let mut answers = Vec::new();
            for endpoint in client.endpoints().map(str::to_string).collect::<Vec<_>>() {
                let answer = match client.connect_to(&endpoint).await {
                    Ok(at) => at.status().await.map_err(anyhow::Error::from),
                    Err(e) => Err(e.into()),
                };
                answers.push((endpoint, answer));
            }
            match fmt {
                Format::Human => print!("{}", output::each_status_table(&answers)),
                Format::Json => print_json(&output::each_status_json(&answers))?,
            }
        }
        ClientCommand::Cluster(ClusterCommand::Status { each: false }) => {
            let status = leader_view(&client, client.status().await?).await;
            match fmt {
                Format::Human => print!("{}", output::status_table(&status)),
                Format::Json => print_json(&output::status_json(&status))?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `s` is the leader's own answer.
fn from_leader(s: &StatusResponse) -> bool {
    s.leader
        .and_then(|o| s.members.iter().find(|m| m.ordinal == o))
        .is_some_and(|m| m.name == s.member)
}

/// A follower knows only itself (and that the leader is there); the leader knows every
/// member's progress. When the answering member is not the leader, ask the leader's client
/// address, then the other endpoints, for the leader's answer; keep the first answer when
/// none gives it (its unknown values are unknown, not 0).
async fn leader_view(client: &Client, status: StatusResponse) -> StatusResponse {
    if from_leader(&status) {
        return status;
    }
    let leader_addr = status
        .leader
        .and_then(|o| status.members.iter().find(|m| m.ordinal == o))
        .map(|m| m.client_addr.clone());
    let answered = client.preferred_endpoint().to_string();
    let candidates = leader_addr
        .into_iter()
        .chain(client.endpoints().map(str::to_string))
        .filter(|e| *e != answered);
    for addr in candidates {
        let Ok(at) = client.connect_to(&addr).await else {
            continue;
        };
        match at.status().await {
            Ok(s) if from_leader(&s) => return s,
            _ => continue,
        }
    }
    status
}

fn print_change(fmt: Format, resp: ordkv_proto::v1::MemberChangeResponse) -> anyhow::Result<()> {
    match fmt {
        Format::Human => println!("{}", resp.outcome),
        Format::Json => print_json(&json!({
            "outcome": resp.outcome,
            "revision": resp.header.map_or(0, |h| h.revision),
        }))?,
    }
    Ok(())
}

/// Writes `parts` joined by `sep`, then a newline.
fn write_line(out: &mut impl Write, parts: &[&[u8]], sep: u8) -> std::io::Result<()> {
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.write_all(&[sep])?;
        }
        out.write_all(p)?;
    }
    out.write_all(b"\n")
}

async fn put(client: &Client, fmt: Format, a: PutArgs) -> anyhow::Result<()> {
    let value = if a.value == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the value from stdin")?;
        Bytes::from(buf)
    } else {
        Bytes::from(a.value)
    };
    let resp = client
        .put(PutRequest {
            key: a.key.into(),
            value,
            prev_kv: a.prev_kv,
            lease: a.lease,
        })
        .await?;
    match fmt {
        Format::Human => {
            let mut out = std::io::stdout().lock();
            out.write_all(b"OK\n")?;
            if let Some(prev) = &resp.prev_kv {
                write_line(&mut out, &[&prev.key, &prev.value], b'\t')?;
            }
            out.flush()?;
        }
        Format::Json => print_json(&json!({
            "revision": resp.header.map_or(0, |h| h.revision),
            "prev_kv": output::opt_kv_json(resp.prev_kv.as_ref()),
        }))?,
    }
    Ok(())
}

/// How long a request that ran out of time waited, for people: the deadline when it was
/// (about) reached, else the time taken to a tenth of a second (the member's own limit).
fn waited(elapsed: Duration, deadline: Option<Duration>) -> String {
    match deadline {
        Some(d) if elapsed.as_secs_f64() >= d.as_secs_f64() * 0.9 => format!("{d:?}"),
        _ => {
            let tenths = (elapsed.as_millis() as u64 + 50) / 100;
            format!("{:?}", Duration::from_millis(tenths * 100))
        }
    }
}

/// A read that failed waiting for `--min-revision`: says what the member applied, how long
/// the read waited and what to do (other errors are returned as they are).
async fn explain_min_revision(
    client: &Client,
    min_revision: u64,
    started: Instant,
    err: ordkv_client::Error,
) -> anyhow::Error {
    if min_revision == 0 || err.code() != Some(Code::DeadlineExceeded) {
        return err.into();
    }
    let endpoint = client.preferred_endpoint().to_string();
    let waited = waited(started.elapsed(), client.timeout());
    let probe = client.connect_to(&endpoint).await;
    let status = match probe {
        Ok(c) => c
            .with_timeout(Some(Duration::from_secs(2)))
            .status()
            .await
            .ok(),
        Err(_) => None,
    };
    match status {
        Some(s) => anyhow::anyhow!(
            "{endpoint} ({}): this member applied revision {}; waited {waited} for \
             {min_revision}: retry with a longer --timeout, read from a member that has it, \
             or leave out --min-revision",
            s.member,
            s.revision
        ),
        None => anyhow::Error::from(err).context(format!(
            "{endpoint}: revision {min_revision} was not applied there in time"
        )),
    }
}

async fn get(client: &Client, fmt: Format, a: GetArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let resp = client
        .get(GetRequest {
            key: a.key.into(),
            consistency: consistency(a.consistency),
            min_revision: a.min_revision,
        })
        .await;
    let resp = match resp {
        Ok(resp) => resp,
        Err(e) => return Err(explain_min_revision(client, a.min_revision, started, e).await),
    };
    let Some(kv) = resp.kv else {
        eprintln!("not found");
        return Ok(ExitCode::from(1));
    };
    match fmt {
        Format::Human => {
            let mut out = std::io::stdout().lock();
            write_line(&mut out, &[&kv.value], b'\t')?;
            out.flush()?;
        }
        Format::Json => {
            let mut v = output::kv_json(&kv, true);
            v["revision"] = resp.header.map_or(0, |h| h.revision).into();
            print_json(&v)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn del(client: &Client, fmt: Format, a: DelArgs) -> anyhow::Result<()> {
    let req = if a.prefix {
        DeleteRequest {
            prefix: a.key.into(),
            prev_kv: a.prev_kv,
            ..Default::default()
        }
    } else {
        DeleteRequest {
            key: a.key.into(),
            end: a.to.map(Bytes::from).unwrap_or_default(),
            prev_kv: a.prev_kv,
            ..Default::default()
        }
    };
    let resp = client.delete(req).await?;
    match fmt {
        Format::Human => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", resp.deleted)?;
            for kv in &resp.prev_kvs {
                write_line(&mut out, &[&kv.key, &kv.value], b'\t')?;
            }
            out.flush()?;
        }
        Format::Json => print_json(&json!({
            "deleted": resp.deleted,
            "revision": resp.header.map_or(0, |h| h.revision),
            "prev_kvs": resp.prev_kvs.iter().map(|kv| output::kv_json(kv, true)).collect::<Vec<_>>(),
        }))?,
    }
    Ok(())
}

async fn scan(client: &Client, fmt: Format, a: ScanArgs) -> anyhow::Result<()> {
    let mut req = RangeRequest {
        start: a.from.map(Bytes::from).unwrap_or_default(),
        end: a.to.map(Bytes::from).unwrap_or_default(),
        prefix: a.prefix.map(Bytes::from).unwrap_or_default(),
        limit: a.limit,
        keys_only: a.keys_only,
        count_only: a.count_only,
        consistency: consistency(a.consistency),
        min_revision: a.min_revision,
    };
    let min_revision = a.min_revision;
    let range = |req: RangeRequest| async move {
        let started = Instant::now();
        match client.range(req).await {
            Ok(resp) => Ok(resp),
            Err(e) => Err(explain_min_revision(client, min_revision, started, e).await),
        }
    };
    if a.count_only {
        let resp = range(req).await?;
        match fmt {
            Format::Human => println!("{}", resp.count),
            Format::Json => print_json(&json!({
                "count": resp.count,
                "revision": resp.header.map_or(0, |h| h.revision),
            }))?,
        }
        return Ok(());
    }

    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut kvs_json = Vec::new();
    let (mut returned, mut revision) = (0u64, 0u64);
    let more = loop {
        let resp = range(req.clone()).await?;
        if revision == 0 {
            revision = resp.header.as_ref().map_or(0, |h| h.revision);
        }
        for kv in &resp.kvs {
            match fmt {
                Format::Human if a.keys_only => write_line(&mut out, &[&kv.key], b'\t')?,
                Format::Human => write_line(&mut out, &[&kv.key, &kv.value], b'\t')?,
                Format::Json => kvs_json.push(output::kv_json(kv, !a.keys_only)),
            }
        }
        returned += resp.kvs.len() as u64;
        if !resp.more || (a.limit > 0 && returned >= a.limit) {
            break resp.more;
        }
        if resp.next_start.is_empty() || resp.next_start <= req.start {
            bail!("server reported more keys without advancing next_start");
        }
        req.start = resp.next_start;
        if a.limit > 0 {
            req.limit = a.limit - returned;
        }
    };
    if fmt == Format::Json {
        serde_json::to_writer(
            &mut out,
            &json!({"count": returned, "more": more, "revision": revision, "kvs": kvs_json}),
        )?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// How long `watch` keeps trying to resume after its stream broke before it gives up.
const WATCH_RESUME_WITHIN: Duration = Duration::from_secs(60);

/// Where a watch is: the first revision it has not delivered yet (0: "from now on" and not
/// established yet). Resuming there after a broken stream neither skips nor repeats events,
/// since all events of one revision arrive in one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WatchPosition {
    next: u64,
}

impl WatchPosition {
    fn new(from_revision: u64) -> WatchPosition {
        WatchPosition {
            next: from_revision,
        }
    }

    /// The events of `msg` not delivered yet; advances past them. A `created` message of a
    /// watch "from now on" fixes "now" to the revision it was established at.
    fn take<'a>(&mut self, msg: &'a WatchResponse) -> Vec<&'a Event> {
        if msg.created && self.next == 0 {
            self.next = msg.header.as_ref().map_or(0, |h| h.revision) + 1;
        }
        let mut out = Vec::new();
        for ev in &msg.events {
            let rev = ev.kv.as_ref().map_or(0, |kv| kv.mod_revision);
            if rev >= self.next || self.next == 0 {
                out.push(ev);
            }
        }
        if let Some(last) = out.last().and_then(|e| e.kv.as_ref()) {
            self.next = self.next.max(last.mod_revision + 1);
        }
        out
    }
}

/// Whether a watch that ended with `err` may resume on another member: the member stopped,
/// shut down or broke the connection, as opposed to a refusal of the watch itself (a
/// compacted start revision, a bad key).
fn watch_may_resume(err: &ordkv_client::Error) -> bool {
    matches!(
        err.code(),
        Some(
            Code::Unavailable
                | Code::Unknown
                | Code::Internal
                | Code::Cancelled
                | Code::Aborted
                | Code::DeadlineExceeded
        )
    )
}

/// Establishes the watch again at `req.start_revision`, starting with the endpoint after
/// the one whose stream broke; retries while the members are unavailable, for up to
/// [`WATCH_RESUME_WITHIN`].
async fn resume_watch(client: &Client, req: &WatchRequest) -> anyhow::Result<WatchStream> {
    let until = Instant::now() + WATCH_RESUME_WITHIN;
    let mut pause = Duration::from_millis(100);
    loop {
        client.prefer_next_endpoint();
        match client.watch(req.clone()).await {
            Ok(stream) => {
                eprintln!(
                    "watch: resumed at revision {} on {}",
                    req.start_revision,
                    client.preferred_endpoint()
                );
                return Ok(stream);
            }
            Err(e) if watch_may_resume(&e) && Instant::now() + pause < until => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                return Err(anyhow::Error::from(e).context(format!(
                    "cannot resume the watch at revision {}",
                    req.start_revision
                )));
            }
        }
    }
}

async fn watch(client: &Client, fmt: Format, a: WatchArgs) -> anyhow::Result<()> {
    let mut req = WatchRequest {
        key: a.key.map(Bytes::from).unwrap_or_default(),
        prefix: a.prefix.map(Bytes::from).unwrap_or_default(),
        start_revision: a.from_revision,
        prev_kv: a.prev_kv,
    };
    let mut position = WatchPosition::new(a.from_revision);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut stream = tokio::select! {
        _ = &mut ctrl_c => return Ok(()),
        stream = client.watch(req.clone()) => stream?,
    };
    loop {
        let msg = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            msg = stream.next() => msg,
        };
        let why = match msg {
            Some(Ok(msg)) => {
                print_events(fmt, a.prev_kv, &position.take(&msg))?;
                continue;
            }
            Some(Err(e)) if watch_may_resume(&e) => e.to_string(),
            Some(Err(e)) => return Err(e.into()),
            None => "the member ended the stream".to_string(),
        };
        eprintln!(
            "watch: {}: {why}; resuming from revision {} on the next endpoint",
            client.preferred_endpoint(),
            position.next
        );
        req.start_revision = position.next;
        stream = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            stream = resume_watch(client, &req) => stream?,
        };
    }
}

fn print_events(fmt: Format, prev_kv: bool, events: &[&Event]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for ev in events {
        let kv = ev.kv.clone().unwrap_or_default();
        let ty = ev.r#type();
        match fmt {
            Format::Human if ty == EventType::Delete => {
                write_line(&mut out, &[b"DELETE", &kv.key], b' ')?
            }
            Format::Human => write_line(&mut out, &[b"PUT", &kv.key, &kv.value], b' ')?,
            Format::Json => {
                let mut v = output::kv_json(&kv, ty == EventType::Put);
                v["type"] = output::event_type_name(ty).into();
                v["revision"] = kv.mod_revision.into();
                if prev_kv {
                    v["prev_kv"] = output::opt_kv_json(ev.prev_kv.as_ref());
                }
                serde_json::to_writer(&mut out, &v)?;
                out.write_all(b"\n")?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// Collects `(command-line index, op)` of a repeatable op flag.
fn indexed<T>(
    m: &ArgMatches,
    id: &str,
    values: Vec<T>,
    op: impl Fn(T) -> RequestOp,
) -> Vec<(usize, RequestOp)> {
    let idx = m.indices_of(id).into_iter().flatten();
    idx.zip(values.into_iter().map(op)).collect()
}

fn put_op((k, v): (String, String)) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::Put(PutRequest {
            key: k.into(),
            value: v.into(),
            prev_kv: false,
            lease: 0,
        })),
    }
}

fn del_op(k: String) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::Delete(DeleteRequest {
            key: k.into(),
            ..Default::default()
        })),
    }
}

/// Puts and deletes of one branch, in command-line order.
fn branch(
    m: &ArgMatches,
    (put_id, puts): (&str, Vec<(String, String)>),
    (del_id, dels): (&str, Vec<String>),
) -> Vec<RequestOp> {
    let mut ops = indexed(m, put_id, puts, put_op);
    ops.extend(indexed(m, del_id, dels, del_op));
    ops.sort_by_key(|(i, _)| *i);
    ops.into_iter().map(|(_, op)| op).collect()
}

fn compares(a: &mut TxnArgs) -> Vec<Compare> {
    let eq = |key: String, target| Compare {
        result: compare::Result::Equal as i32,
        key: key.into(),
        target: Some(target),
    };
    let mut out = Vec::new();
    for (k, v) in a.if_value.drain(..) {
        out.push(eq(k, compare::Target::Value(v.into())));
    }
    for (k, n) in a.if_version.drain(..) {
        out.push(eq(k, compare::Target::Version(n)));
    }
    for (k, n) in a.if_mod_revision.drain(..) {
        out.push(eq(k, compare::Target::ModRevision(n)));
    }
    for (k, n) in a.if_create_revision.drain(..) {
        out.push(eq(k, compare::Target::CreateRevision(n)));
    }
    for k in a.if_absent.drain(..) {
        out.push(eq(k, compare::Target::CreateRevision(0)));
    }
    out
}

fn build_txn(mut a: TxnArgs, m: &ArgMatches) -> TxnRequest {
    TxnRequest {
        compare: compares(&mut a),
        success: branch(m, ("then_put", a.then_put), ("then_del", a.then_del)),
        failure: branch(m, ("else_put", a.else_put), ("else_del", a.else_del)),
    }
}

async fn txn(client: &Client, fmt: Format, a: TxnArgs, m: &ArgMatches) -> anyhow::Result<ExitCode> {
    let fail_if_false = a.fail_if_false;
    let req = build_txn(a, m);
    if req.success.is_empty() && req.failure.is_empty() {
        bail!("txn needs at least one --then-put/--then-del/--else-put/--else-del");
    }
    let resp = client.txn(req).await?;
    match fmt {
        Format::Human => println!(
            "{}",
            if resp.succeeded {
                "SUCCEEDED"
            } else {
                "FAILED"
            }
        ),
        Format::Json => print_json(&json!({
            "succeeded": resp.succeeded,
            "revision": resp.header.map_or(0, |h| h.revision),
        }))?,
    }
    Ok(if resp.succeeded || !fail_if_false {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(TXN_FALSE_EXIT)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        cmd: ClientCommand,
    }

    fn parse(args: &[&str]) -> (ClientCommand, ArgMatches) {
        let m = T::command()
            .try_get_matches_from(std::iter::once("ordkv").chain(args.iter().copied()))
            .unwrap();
        (T::from_arg_matches(&m).unwrap().cmd, m)
    }

    #[test]
    fn parses_key_value_pairs() {
        assert_eq!(parse_kv("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_kv("a="), Ok(("a".into(), "".into())));
        assert!(parse_kv("=b").is_err());
        assert!(parse_kv("ab").is_err());
        assert_eq!(parse_kn("k=7"), Ok(("k".into(), 7)));
        assert!(parse_kn("k=x").is_err());
        assert!(parse_kn("k=-1").is_err());
    }

    fn msg(created: bool, header_revision: u64, revs: &[u64]) -> WatchResponse {
        WatchResponse {
            header: Some(ordkv_proto::v1::ResponseHeader {
                revision: header_revision,
                ..Default::default()
            }),
            created,
            events: revs
                .iter()
                .map(|&r| Event {
                    kv: Some(ordkv_proto::v1::KeyValue {
                        key: format!("k{r}").into(),
                        mod_revision: r,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn revs(events: Vec<&Event>) -> Vec<u64> {
        events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect()
    }

    #[test]
    fn a_watch_resumes_after_the_last_event_it_delivered() {
        // From now on: "now" is the revision the watch was established at.
        let mut p = WatchPosition::new(0);
        assert!(revs(p.take(&msg(true, 7, &[]))).is_empty());
        assert_eq!(p.next, 8);
        assert_eq!(revs(p.take(&msg(false, 9, &[8, 9, 9]))), [8, 9, 9]);
        assert_eq!(p.next, 10);
        // The resumed stream's `created` does not move it back; events already delivered
        // (a member that replays from earlier) are dropped, later ones kept.
        assert!(revs(p.take(&msg(true, 12, &[]))).is_empty());
        assert_eq!(p.next, 10);
        assert_eq!(revs(p.take(&msg(false, 11, &[9, 10, 11]))), [10, 11]);
        assert_eq!(p.next, 12);

        // From a given revision: kept until an event passes it.
        let mut p = WatchPosition::new(5);
        assert!(revs(p.take(&msg(true, 20, &[]))).is_empty());
        assert_eq!(p.next, 5);
        assert_eq!(revs(p.take(&msg(false, 5, &[5]))), [5]);
        assert_eq!(p.next, 6);
    }

    #[test]
    fn a_watch_resumes_when_its_member_goes_away_not_when_refused() {
        use ordkv_client::Error;
        use tonic::Status;
        let may = |s: Status| watch_may_resume(&Error::from(s));
        assert!(may(Status::unavailable(
            "server is shutting down; resume the watch on another member"
        )));
        assert!(may(Status::unknown("error reading a body from connection")));
        assert!(may(Status::internal("h2 protocol error")));
        assert!(!may(Status::out_of_range("compacted")));
        assert!(!may(Status::invalid_argument("key too long")));
        assert!(!watch_may_resume(&Error::NoEndpoints));
    }

    #[test]
    fn only_the_leaders_own_answer_is_the_leaders_view() {
        use ordkv_proto::v1::Member;
        let member = |ordinal: u32| Member {
            ordinal,
            name: format!("kv-{ordinal}"),
            ..Default::default()
        };
        let s = StatusResponse {
            leader: Some(1),
            member: "kv-1".into(),
            members: vec![member(0), member(1)],
            ..Default::default()
        };
        assert!(from_leader(&s));
        let follower = StatusResponse {
            member: "kv-0".into(),
            ..s.clone()
        };
        assert!(!from_leader(&follower));
        let no_leader = StatusResponse { leader: None, ..s };
        assert!(!from_leader(&no_leader));
    }

    #[test]
    fn waited_names_the_deadline_or_the_time_taken() {
        let secs = Duration::from_secs;
        assert_eq!(waited(Duration::from_millis(1004), Some(secs(1))), "1s");
        assert_eq!(waited(Duration::from_millis(960), Some(secs(1))), "1s");
        assert_eq!(waited(Duration::from_millis(5020), Some(secs(10))), "5s");
        assert_eq!(waited(Duration::from_millis(1234), None), "1.2s");
    }

    #[test]
    fn txn_keeps_op_order_and_builds_compares() {
        let (cmd, m) = parse(&[
            "txn",
            "--if-value",
            "k=v",
            "--if-absent",
            "lock",
            "--then-del",
            "a",
            "--then-put",
            "b=1",
            "--then-del",
            "c",
            "--else-put",
            "x=y",
        ]);
        let ClientCommand::Txn(a) = cmd else {
            panic!("not txn")
        };
        let req = build_txn(a, m.subcommand_matches("txn").unwrap());
        assert_eq!(req.compare.len(), 2);
        assert_eq!(
            req.compare[0].target,
            Some(compare::Target::Value(Bytes::from("v")))
        );
        assert_eq!(
            req.compare[1].target,
            Some(compare::Target::CreateRevision(0))
        );
        assert_eq!(&req.compare[1].key[..], b"lock");
        let kinds: Vec<String> = req
            .success
            .iter()
            .map(|op| match &op.request {
                Some(request_op::Request::Put(p)) => {
                    format!("put {}", String::from_utf8_lossy(&p.key))
                }
                Some(request_op::Request::Delete(d)) => {
                    format!("del {}", String::from_utf8_lossy(&d.key))
                }
                _ => "other".into(),
            })
            .collect();
        assert_eq!(kinds, ["del a", "put b", "del c"]);
        assert_eq!(req.failure.len(), 1);
    }

    #[test]
    fn rejects_bad_arguments() {
        let bad = |args: &[&str]| {
            T::try_parse_from(std::iter::once("ordkv").chain(args.iter().copied())).is_err()
        };
        assert!(bad(&["get", "k", "--consistency", "eventual"]));
        assert!(bad(&["scan", "--prefix", "p", "--from", "a"]));
        assert!(bad(&["watch", "k", "--prefix", "p"]));
        assert!(bad(&["txn", "--then-put", "novalue"]));
        assert!(!bad(&["put", "k", "-"]));
        assert!(!bad(&["put", "k", "-5"]));
        assert!(!bad(&["get", "k", "--consistency", "serializable"]));
    }
}
