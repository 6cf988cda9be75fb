//! Access control on the client port: who is calling (a client certificate or a bearer
//! token) and what a grant of the policy lets them read, write or administer, by key prefix.
//!
//! `--auth-policy FILE` (YAML) is a list of grants:
//!
//! ```yaml
//! - name: app          # a token name or a certificate identity (CN, else first DNS name)
//!   read: ["app/"]     # key prefixes; "" is every key
//!   write: ["app/"]
//! - name: ops
//!   read: [""]
//!   write: [""]
//!   admin: true        # cluster remove, transfer-leader, backup, compact
//! ```
//!
//! `--auth-token-file FILE` holds `token,name[,...]` lines (the first two columns of
//! Kubernetes' static token file). Both files are re-read when they change; tokens are never
//! logged. Without a policy every request is admitted, as before.
//!
//! A request is admitted when one grant of its caller covers every key it touches: a range
//! or a watch wholly inside a granted prefix, never a range that reaches past it (so a range
//! or a watch can never return keys outside the grant). Forwarded writes are checked here,
//! where they enter; the peer port is for members only (mutual TLS).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use ordkv::listen::ConnInfo;
use ordkv::pb;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// Counter: reloads of the policy or token file that found it unusable (the previous one
/// stays in use).
pub const AUTH_RELOAD_ERRORS: &str = "ordkv_auth_reload_errors_total";
/// Counter: requests refused, label `code` (`UNAUTHENTICATED` or `PERMISSION_DENIED`).
pub const AUTH_REFUSED: &str = "ordkv_auth_refused_total";

const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// One grant of the policy file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The identity it is for.
    pub name: String,
    /// Key prefixes it may read.
    #[serde(default)]
    pub read: Vec<String>,
    /// Key prefixes it may write (put, delete, and the ops of a Txn).
    #[serde(default)]
    pub write: Vec<String>,
    /// Cluster administration: remove, transfer-leader, backup, compact.
    #[serde(default)]
    pub admin: bool,
}

/// What a request touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Need {
    /// Read the keys in a range.
    Read(KeyRange),
    /// Write the keys in a range.
    Write(KeyRange),
    /// An administrative operation.
    Admin(&'static str),
    /// Any known identity (cluster status).
    Known,
}

/// Keys from `start`: only `start` itself, up to `end` (exclusive), or every later key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyRange {
    start: Bytes,
    end: End,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// Only the key `start`.
    Key,
    /// Up to this key, exclusive.
    Before(Bytes),
    /// No upper bound.
    Unbounded,
}

impl KeyRange {
    fn key(key: &Bytes) -> KeyRange {
        KeyRange {
            start: key.clone(),
            end: End::Key,
        }
    }

    fn prefix(prefix: &Bytes) -> KeyRange {
        match prefix_end(prefix) {
            Some(end) => KeyRange {
                start: prefix.clone(),
                end: End::Before(end),
            },
            None => KeyRange {
                start: prefix.clone(),
                end: End::Unbounded,
            },
        }
    }

    fn between(start: &Bytes, end: &Bytes) -> KeyRange {
        KeyRange {
            start: start.clone(),
            end: if end.is_empty() {
                End::Unbounded
            } else {
                End::Before(end.clone())
            },
        }
    }

    /// Whether every key of this range starts with `prefix`.
    fn within(&self, prefix: &[u8]) -> bool {
        if !self.start.starts_with(prefix) {
            return false;
        }
        match (&self.end, prefix_end(prefix)) {
            (End::Key, _) => true,
            (_, None) => true,
            (End::Before(end), Some(limit)) => end.as_ref() <= limit.as_ref(),
            (End::Unbounded, Some(_)) => false,
        }
    }
}

impl std::fmt::Display for KeyRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = |b: &[u8]| format!("{:?}", String::from_utf8_lossy(b));
        match &self.end {
            End::Key => write!(f, "key {}", text(&self.start)),
            End::Before(end) => write!(f, "keys {}..{}", text(&self.start), text(end)),
            End::Unbounded => write!(f, "keys from {}", text(&self.start)),
        }
    }
}

/// The first key after every key starting with `prefix`, or `None` when there is none
/// (`prefix` is empty or all 0xff).
fn prefix_end(prefix: &[u8]) -> Option<Bytes> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end.into());
        }
    }
    None
}

/// The keys a request touches, for each request type of the client API.
pub(crate) trait Needs {
    fn needs(&self) -> Vec<Need>;
}

impl Needs for pb::PutRequest {
    fn needs(&self) -> Vec<Need> {
        vec![Need::Write(KeyRange::key(&self.key))]
    }
}

impl Needs for pb::GetRequest {
    fn needs(&self) -> Vec<Need> {
        vec![Need::Read(KeyRange::key(&self.key))]
    }
}

fn delete_range(d: &pb::DeleteRequest) -> KeyRange {
    if !d.prefix.is_empty() {
        KeyRange::prefix(&d.prefix)
    } else if !d.end.is_empty() {
        KeyRange::between(&d.key, &d.end)
    } else {
        KeyRange::key(&d.key)
    }
}

fn range_range(r: &pb::RangeRequest) -> KeyRange {
    if !r.prefix.is_empty() && r.end.is_empty() {
        let mut range = KeyRange::prefix(&r.prefix);
        if r.start > range.start {
            range.start = r.start.clone();
        }
        range
    } else {
        KeyRange::between(&r.start, &r.end)
    }
}

impl Needs for pb::DeleteRequest {
    fn needs(&self) -> Vec<Need> {
        vec![Need::Write(delete_range(self))]
    }
}

impl Needs for pb::RangeRequest {
    fn needs(&self) -> Vec<Need> {
        vec![Need::Read(range_range(self))]
    }
}

impl Needs for pb::TxnRequest {
    fn needs(&self) -> Vec<Need> {
        use pb::request_op::Request;
        let compares = self
            .compare
            .iter()
            .map(|c| Need::Read(KeyRange::key(&c.key)));
        let ops = self
            .success
            .iter()
            .chain(&self.failure)
            .filter_map(|op| op.request.as_ref())
            .map(|op| match op {
                Request::Put(p) => Need::Write(KeyRange::key(&p.key)),
                Request::Delete(d) => Need::Write(delete_range(d)),
                Request::Range(r) => Need::Read(range_range(r)),
            });
        compares.chain(ops).collect()
    }
}

impl Needs for pb::WatchRequest {
    fn needs(&self) -> Vec<Need> {
        let range = if !self.key.is_empty() {
            KeyRange::key(&self.key)
        } else {
            KeyRange::prefix(&self.prefix)
        };
        vec![Need::Read(range)]
    }
}

impl Needs for pb::CompactRequest {
    fn needs(&self) -> Vec<Need> {
        vec![Need::Admin("compact")]
    }
}

/// Leases name no keys: any known identity may grant one and keep it alive (the keys it
/// puts with a lease are checked as puts). A revoke deletes the lease's keys, which
/// `LeaseRevoke` checks on top (see `lease_service`).
macro_rules! known_identity_needs {
    ($($t:ty),*) => {$(
        impl Needs for $t {
            fn needs(&self) -> Vec<Need> {
                vec![Need::Known]
            }
        }
    )*};
}
known_identity_needs!(
    pb::LeaseGrantRequest,
    pb::LeaseRevokeRequest,
    pb::LeaseTimeToLiveRequest,
    pb::LeaseLeasesRequest,
    tonic::Streaming<pb::LeaseKeepAliveRequest>
);

impl Needs for pb::StatusRequest {
    fn needs(&self) -> Vec<Need> {
        vec![Need::Known]
    }
}

impl Needs for pb::RemoveMemberRequest {
    fn needs(&self) -> Vec<Need> {
        vec![Need::Admin("cluster remove")]
    }
}

impl Needs for pb::TransferLeaderRequest {
    fn needs(&self) -> Vec<Need> {
        vec![Need::Admin("transfer-leader")]
    }
}

impl Needs for pb::BackupRequest {
    fn needs(&self) -> Vec<Need> {
        vec![Need::Admin("backup")]
    }
}

/// The policy and tokens in force, re-read from their files when they change.
pub struct AccessControl {
    policy_path: PathBuf,
    tokens_path: Option<PathBuf>,
    current: RwLock<Arc<Rules>>,
}

impl std::fmt::Debug for AccessControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessControl")
            .field("policy", &self.policy_path)
            .field("tokens", &self.tokens_path)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Rules {
    /// The bytes read, to notice a change.
    files: (Vec<u8>, Vec<u8>),
    grants: HashMap<String, Grant>,
    /// Token → name.
    tokens: HashMap<String, String>,
}

impl AccessControl {
    /// Reads the policy (and the token file, if any); the error names the file and the line.
    pub fn load(policy: &Path, tokens: Option<&Path>) -> Result<AccessControl, String> {
        let access = AccessControl {
            policy_path: policy.to_path_buf(),
            tokens_path: tokens.map(Path::to_path_buf),
            current: RwLock::new(Arc::default()),
        };
        access.reload()?;
        Ok(access)
    }

    fn rules(&self) -> Arc<Rules> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One line for logs and `cluster status`.
    pub fn describe(&self) -> String {
        let rules = self.rules();
        format!(
            "on: {} grants in {}, {} tokens",
            rules.grants.len(),
            self.policy_path.display(),
            rules.tokens.len()
        )
    }

    /// Re-reads both files; `Ok(true)` when new rules are in force.
    pub fn reload(&self) -> Result<bool, String> {
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let policy = read(&self.policy_path)?;
        let tokens = match &self.tokens_path {
            Some(p) => read(p)?,
            None => Vec::new(),
        };
        let current = self.rules();
        if current.files.0 == policy && current.files.1 == tokens {
            return Ok(false);
        }
        let grants =
            parse_policy(&policy).map_err(|e| format!("{}: {e}", self.policy_path.display()))?;
        let parsed_tokens = match &self.tokens_path {
            Some(p) => parse_tokens(&tokens).map_err(|e| format!("{}: {e}", p.display()))?,
            None => HashMap::new(),
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Rules {
            files: (policy, tokens),
            grants,
            tokens: parsed_tokens,
        });
        Ok(true)
    }

    /// Polls the files until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut reported: Option<String> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RELOAD_EVERY) => {}
            }
            match self.reload() {
                Ok(true) => {
                    reported = None;
                    tracing::info!(access_control = %self.describe(), "access policy reloaded");
                }
                Ok(false) => reported = None,
                Err(e) if reported.as_ref() != Some(&e) => {
                    metrics::counter!(AUTH_RELOAD_ERRORS).increment(1);
                    tracing::error!(error = %e, "the access policy or token file is unusable; still using the previous one");
                    reported = Some(e);
                }
                Err(_) => {}
            }
        }
    }

    /// Admits `request` when its caller's grant covers every need; else the status to answer.
    #[allow(clippy::result_large_err)]
    pub(crate) fn check<T: Needs>(&self, request: &tonic::Request<T>) -> Result<String, Status> {
        self.check_needs(request, request.get_ref().needs())
    }

    /// Admits `request` only if its caller may write each of `keys`.
    #[allow(clippy::result_large_err)]
    pub(crate) fn check_writes<T>(
        &self,
        request: &tonic::Request<T>,
        keys: &[Bytes],
    ) -> Result<String, Status> {
        let needs = keys.iter().map(|k| Need::Write(KeyRange::key(k)));
        self.check_needs(request, needs.collect())
    }

    #[allow(clippy::result_large_err)]
    fn check_needs<T>(
        &self,
        request: &tonic::Request<T>,
        needs: Vec<Need>,
    ) -> Result<String, Status> {
        let rules = self.rules();
        let refused = |status: Status| {
            metrics::counter!(AUTH_REFUSED, "code" => crate::status::code_name(status.code()))
                .increment(1);
            status
        };
        let name = identity(&rules, request).map_err(refused)?;
        let Some(grant) = rules.grants.get(&name) else {
            return Err(refused(Status::permission_denied(format!(
                "{name:?} has no grant in the access policy"
            ))));
        };
        for need in needs {
            let allowed = match &need {
                Need::Read(range) => grant.read.iter().any(|p| range.within(p.as_bytes())),
                Need::Write(range) => grant.write.iter().any(|p| range.within(p.as_bytes())),
                Need::Admin(_) => grant.admin,
                Need::Known => true,
            };
            if !allowed {
                let what = match &need {
                    Need::Read(range) => format!("read {range}"),
                    Need::Write(range) => format!("write {range}"),
                    Need::Admin(op) => format!("run {op} (an admin operation)"),
                    Need::Known => unreachable!("any identity may"),
                };
                return Err(refused(Status::permission_denied(format!(
                    "{name:?} may not {what}: no prefix of its grant covers it"
                ))));
            }
        }
        Ok(name)
    }
}

/// Who is calling: the token's name when a bearer token is sent, else the client
/// certificate's identity.
#[allow(clippy::result_large_err)]
fn identity<T>(rules: &Rules, request: &tonic::Request<T>) -> Result<String, Status> {
    if let Some(value) = request.metadata().get("authorization") {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header is not `Bearer <token>`")
            })?;
        return rules
            .tokens
            .get(token.trim())
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown token"));
    }
    let cert = request
        .extensions()
        .get::<ConnInfo>()
        .and_then(|info| info.client_cert.as_ref());
    match cert.and_then(|c| c.identity()) {
        Some(name) => Ok(name.to_string()),
        None => Err(Status::unauthenticated(
            "access control is on: present a client certificate (--cert and --key) or a token (--token)",
        )),
    }
}

fn parse_policy(bytes: &[u8]) -> Result<HashMap<String, Grant>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let grants: Vec<Grant> = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let mut by_name = HashMap::new();
    for grant in grants {
        if grant.name.is_empty() {
            return Err("a grant has an empty name".into());
        }
        if let Some(old) = by_name.insert(grant.name.clone(), grant) {
            return Err(format!(
                "{:?} has two grants; merge them into one",
                old.name
            ));
        }
    }
    Ok(by_name)
}

fn parse_tokens(bytes: &[u8]) -> Result<HashMap<String, String>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut tokens = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut columns = line.split(',').map(str::trim);
        let (Some(token), Some(name)) = (columns.next(), columns.next()) else {
            return Err(format!("line {}: expected `token,name`", n + 1));
        };
        if token.is_empty() || name.is_empty() {
            return Err(format!("line {}: empty token or name", n + 1));
        }
        let name = name.trim_matches('"').to_string();
        if tokens.insert(token.to_string(), name).is_some() {
            return Err(format!("line {}: a token appears twice", n + 1));
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    #[test]
    fn ranges_are_within_a_prefix_only_when_every_key_is() {
        assert!(KeyRange::key(&b("app/x")).within(b"app/"));
        assert!(!KeyRange::key(&b("apq")).within(b"app/"));
        assert!(KeyRange::prefix(&b("app/sub/")).within(b"app/"));
        assert!(!KeyRange::prefix(&b("ap")).within(b"app/"));
        assert!(KeyRange::between(&b("app/a"), &b("app0")).within(b"app/"));
        assert!(!KeyRange::between(&b("app/a"), &b("app1")).within(b"app/"));
        assert!(!KeyRange::between(&b("app/a"), &b("")).within(b"app/"));
        assert!(KeyRange::between(&b(""), &b("")).within(b""));
        assert!(KeyRange::prefix(&Bytes::from_static(&[0xff, 0xff])).within(&[0xff]));
        assert_eq!(prefix_end(b"a\xff"), Some(b("b")));
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn a_txn_needs_its_compares_and_both_branches() {
        let txn = pb::TxnRequest {
            compare: vec![pb::Compare {
                key: b("c"),
                ..Default::default()
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::Put(pb::PutRequest {
                    key: b("s"),
                    ..Default::default()
                })),
            }],
            failure: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::Range(pb::RangeRequest {
                    prefix: b("f/"),
                    ..Default::default()
                })),
            }],
        };
        assert_eq!(
            txn.needs(),
            vec![
                Need::Read(KeyRange::key(&b("c"))),
                Need::Write(KeyRange::key(&b("s"))),
                Need::Read(KeyRange::prefix(&b("f/"))),
            ]
        );
    }

    #[test]
    fn policy_and_token_files_parse_with_clear_errors() {
        let grants = parse_policy(b"- name: app\n  read: [\"app/\"]\n  write: [\"app/\"]\n- name: ops\n  read: [\"\"]\n  admin: true\n").unwrap();
        assert_eq!(grants["app"].write, ["app/"]);
        assert!(grants["ops"].admin && grants["ops"].write.is_empty());
        let dup = parse_policy(b"- name: a\n- name: a\n").unwrap_err();
        assert!(dup.contains("two grants"), "{dup}");
        let unknown = parse_policy(b"- name: a\n  writes: [\"x\"]\n").unwrap_err();
        assert!(unknown.contains("writes"), "{unknown}");

        let tokens = parse_tokens(b"t1,alice\n# comment\n\nt2, bob ,1002,\"g1,g2\"\n").unwrap();
        assert_eq!(tokens["t1"], "alice");
        assert_eq!(tokens["t2"], "bob");
        let err = parse_tokens(b"t1,alice\nlonely\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(
            !err.contains("lonely"),
            "a token leaked into an error: {err}"
        );
    }
}
