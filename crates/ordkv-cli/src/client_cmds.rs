//! The client commands of `ordkv` (`put`, `get`, `del`, `scan`, `watch`, `txn`, `compact`,
//! `cluster status`): argument definitions and their execution over `ordkv-client`.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{ArgMatches, Args, Subcommand, ValueEnum};
use futures::StreamExt;
use ordkv_client::Client;
use ordkv_proto::v1::{
    CompactRequest, Compare, Consistency, DeleteRequest, GetRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, WatchRequest, compare, event::EventType, request_op,
};
use serde_json::{Value, json};

use crate::output::{self, Format};

/// Flags shared by every command.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Client endpoints (`host:port` or `http://host:port`), tried in order.
    #[arg(
        long,
        global = true,
        env = "ORDKV_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7379"
    )]
    pub endpoints: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Human)]
    pub output: Format,
    /// gRPC deadline of each request, e.g. `5s`, `500ms`, `1m`; `0` means none.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
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
    /// Stream changes of a key or prefix until Ctrl-C.
    Watch(WatchArgs),
    /// Compare-and-swap: run the `--then-*` ops if every `--if-*` holds, else the `--else-*`.
    Txn(TxnArgs),
    /// Discard watch history older than a revision.
    Compact(CompactArgs),
    /// Cluster administration.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

/// `ordkv cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, roles, leader, term, commit/applied index and lag.
    Status,
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
}

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

/// Parses `500ms`, `5s`, `2m`, `1h` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 5s, 500ms)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!(
            "invalid duration unit in {s:?} (use ms, s, m or h)"
        )),
    }
}

/// Runs a client command; `matches` are the top-level matches (for `txn` op order).
pub async fn run(
    global: GlobalArgs,
    cmd: ClientCommand,
    matches: &ArgMatches,
) -> anyhow::Result<ExitCode> {
    let timeout = (!global.timeout.is_zero()).then_some(global.timeout);
    let client = Client::connect(&global.endpoints)
        .await?
        .with_timeout(timeout);
    let fmt = global.output;
    match cmd {
        ClientCommand::Put(a) => put(&client, fmt, a).await?,
        ClientCommand::Get(a) => return get(&client, fmt, a).await,
        ClientCommand::Del(a) => del(&client, fmt, a).await?,
        ClientCommand::Scan(a) => scan(&client, fmt, a).await?,
        ClientCommand::Watch(a) => watch(&client, fmt, a).await?,
        ClientCommand::Txn(a) => {
            let sub = matches.subcommand_matches("txn").context("txn matches")?;
            txn(&client, fmt, a, sub).await?
        }
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
        ClientCommand::Cluster(ClusterCommand::Status) => {
            let status = leader_view(&client, client.status().await?).await;
            match fmt {
                Format::Human => print!("{}", output::status_table(&status)),
                Format::Json => print_json(&output::status_json(&status))?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A follower knows only itself and the leader; the leader knows every member's progress.
/// Ask the leader when the answering member is not it (keep the first answer if it fails).
async fn leader_view(
    client: &Client,
    status: ordkv_proto::v1::StatusResponse,
) -> ordkv_proto::v1::StatusResponse {
    let leader = status
        .members
        .iter()
        .find(|m| Some(m.ordinal) == status.leader && m.name != status.member);
    let Some(leader) = leader else { return status };
    let Ok(at_leader) = Client::connect(std::slice::from_ref(&leader.client_addr)).await else {
        return status;
    };
    let at_leader = at_leader.with_timeout(client.timeout());
    at_leader.status().await.unwrap_or(status)
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

fn print_json(v: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    out.write_all(b"\n")?;
    out.flush()?;
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

async fn get(client: &Client, fmt: Format, a: GetArgs) -> anyhow::Result<ExitCode> {
    let resp = client
        .get(GetRequest {
            key: a.key.into(),
            consistency: consistency(a.consistency),
            min_revision: a.min_revision,
        })
        .await?;
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
    if a.count_only {
        let resp = client.range(req).await?;
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
        let resp = client.range(req.clone()).await?;
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

async fn watch(client: &Client, fmt: Format, a: WatchArgs) -> anyhow::Result<()> {
    let mut stream = client
        .watch(WatchRequest {
            key: a.key.map(Bytes::from).unwrap_or_default(),
            prefix: a.prefix.map(Bytes::from).unwrap_or_default(),
            start_revision: a.from_revision,
            prev_kv: a.prev_kv,
        })
        .await?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let msg = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            msg = stream.next() => match msg {
                None => return Ok(()),
                Some(msg) => msg?,
            },
        };
        let mut out = std::io::stdout().lock();
        for ev in &msg.events {
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
                    if a.prev_kv {
                        v["prev_kv"] = output::opt_kv_json(ev.prev_kv.as_ref());
                    }
                    serde_json::to_writer(&mut out, &v)?;
                    out.write_all(b"\n")?;
                }
            }
        }
        out.flush()?;
    }
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

async fn txn(client: &Client, fmt: Format, a: TxnArgs, m: &ArgMatches) -> anyhow::Result<()> {
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
    Ok(())
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

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
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
