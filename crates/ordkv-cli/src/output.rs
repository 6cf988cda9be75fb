//! Rendering of client command results: JSON objects for `-o json` and the status table.
//!
//! Keys and values are bytes. In JSON a byte field `f` is written as the string `f` when it
//! is valid UTF-8, and otherwise as `f_base64` (standard alphabet, padded); exactly one of
//! the two is present.

use base64::{Engine, engine::general_purpose::STANDARD};
use ordkv_proto::v1::{KeyValue, Role, StatusResponse, event::EventType};
use serde_json::{Map, Value, json};

/// Output format selected with `-o/--output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable text.
    Human,
    /// One JSON document (for `watch`: one JSON object per line per event).
    Json,
}

/// Inserts `name` (UTF-8) or `name_base64` (anything else) for `bytes`.
pub fn put_bytes(obj: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => obj.insert(name.to_string(), s.into()),
        Err(_) => obj.insert(format!("{name}_base64"), STANDARD.encode(bytes).into()),
    };
}

/// A key-value as JSON: key/value (see the module docs) and its revisions; `with_value =
/// false` leaves the value out (`--keys-only`).
pub fn kv_json(kv: &KeyValue, with_value: bool) -> Value {
    let mut obj = Map::new();
    put_bytes(&mut obj, "key", &kv.key);
    if with_value {
        put_bytes(&mut obj, "value", &kv.value);
    }
    obj.insert("create_revision".into(), kv.create_revision.into());
    obj.insert("mod_revision".into(), kv.mod_revision.into());
    obj.insert("version".into(), kv.version.into());
    if kv.lease != 0 {
        obj.insert("lease".into(), kv.lease.into());
    }
    Value::Object(obj)
}

/// An optional key-value as JSON (`null` when absent).
pub fn opt_kv_json(kv: Option<&KeyValue>) -> Value {
    kv.map_or(Value::Null, |kv| kv_json(kv, true))
}

/// Name of an event type as printed by `watch`.
pub fn event_type_name(t: EventType) -> &'static str {
    match t {
        EventType::Put => "PUT",
        EventType::Delete => "DELETE",
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Voter => "voter",
        Role::Learner => "learner",
        Role::Unspecified => "unknown",
    }
}

/// `ordkv cluster status -o json` (the status page's `/api/status` is the same document).
pub use ordkv_server::status_json;

/// `ordkv cluster status`: a summary followed by one table row per member (`*` marks the
/// leader).
pub fn status_table(s: &StatusResponse) -> String {
    let leader = match s.leader {
        Some(ord) => match s.members.iter().find(|m| m.ordinal == ord) {
            Some(m) => format!("{} (ordinal {ord})", m.name),
            None => format!("ordinal {ord}"),
        },
        None => "none".to_string(),
    };
    let mut out = format!("cluster: {}  answered by: {}", s.cluster_id, s.member);
    if !s.version.is_empty() {
        out.push_str(&format!("  version: {}", s.version));
    }
    out.push_str(&format!(
        "\nleader: {leader}  term: {}  commit index: {}  applied index: {}  revision: {}\n",
        s.term, s.commit_index, s.applied_index, s.revision
    ));
    if !s.scale_intent.is_empty() {
        out.push_str(&format!("scale intent: {}\n", s.scale_intent));
    }
    if !s.access_control.is_empty() {
        out.push_str(&format!("access control: {}\n", s.access_control));
    }
    let leader_name = s
        .leader
        .and_then(|o| s.members.iter().find(|m| m.ordinal == o))
        .map(|m| m.name.as_str());
    match leader_name {
        Some(name) if name == s.member => {}
        Some(name) => out.push_str(&format!(
            "note: answered by {}, a follower ({name} could not be asked): other members' \
             progress is unknown to it (-)\n",
            s.member
        )),
        None => out.push_str("note: no leader known: other members' progress is unknown (-)\n"),
    }
    out.push('\n');
    let mut rows = vec![
        [
            "",
            "ORDINAL",
            "NAME",
            "ROLE",
            "PEER ADDR",
            "CLIENT ADDR",
            "APPLIED",
            "REACHABLE",
            "LAG",
        ]
        .map(String::from),
    ];
    for m in &s.members {
        rows.push([
            if s.leader == Some(m.ordinal) { "*" } else { "" }.to_string(),
            m.ordinal.to_string(),
            m.name.clone(),
            role_name(m.role()).to_string(),
            m.peer_addr.clone(),
            m.client_addr.clone(),
            or_dash(m.applied_index),
            if m.reachable { "yes" } else { "no" }.to_string(),
            or_dash(m.lag),
        ]);
    }
    out.push_str(&table(&rows));
    out
}

/// `ordkv cluster status --each`: one row per endpoint, each member's own state; the
/// highest revision is marked `*` (the member to recover from after a quorum loss).
pub fn each_status_table(answers: &[(String, anyhow::Result<StatusResponse>)]) -> String {
    let highest = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok().map(|s| s.revision))
        .max();
    let mut rows = vec![
        [
            "", "ENDPOINT", "MEMBER", "REVISION", "APPLIED", "TERM", "LEADER",
        ]
        .map(String::from),
    ];
    let mut failures = String::new();
    for (endpoint, answer) in answers {
        match answer {
            Ok(s) => rows.push([
                if Some(s.revision) == highest { "*" } else { "" }.to_string(),
                endpoint.clone(),
                s.member.clone(),
                s.revision.to_string(),
                s.applied_index.to_string(),
                s.term.to_string(),
                s.leader
                    .map_or_else(|| "none".to_string(), |o| format!("ordinal {o}")),
            ]),
            Err(e) => failures.push_str(&format!("{endpoint}: no answer: {e:#}\n")),
        }
    }
    let mut out = table(&rows);
    out.push_str(&failures);
    out
}

/// `ordkv cluster status --each -o json`: each endpoint's own answer, or its error.
pub fn each_status_json(answers: &[(String, anyhow::Result<StatusResponse>)]) -> Value {
    Value::Array(
        answers
            .iter()
            .map(|(endpoint, a)| match a {
                Ok(s) => json!({"endpoint": endpoint, "status": status_json(s)}),
                Err(e) => json!({"endpoint": endpoint, "error": format!("{e:#}")}),
            })
            .collect(),
    )
}

/// A value the answering member may not know: `-` when it does not.
fn or_dash(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Left-aligned columns separated by two spaces, without trailing whitespace.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', widths[i] - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Prints one JSON value on a line of its own.
pub fn print_json(v: &Value) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// A key alone as JSON: `{"key": ...}` or `{"key_base64": ...}`.
pub fn key_json(key: &[u8]) -> Value {
    let mut obj = Map::new();
    put_bytes(&mut obj, "key", key);
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ordkv_proto::v1::Member;

    #[test]
    fn kv_json_uses_base64_only_for_non_utf8() {
        let kv = KeyValue {
            key: "k".into(),
            value: vec![0xff, 0x00].into(),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            lease: 0,
        };
        assert_eq!(
            kv_json(&kv, true),
            json!({"key": "k", "value_base64": "/wA=", "create_revision": 2,
                   "mod_revision": 5, "version": 3})
        );
        let kv = KeyValue {
            value: "v".into(),
            ..kv
        };
        assert_eq!(kv_json(&kv, true)["value"], "v");
        assert!(kv_json(&kv, false).get("value").is_none());
        assert_eq!(opt_kv_json(None), Value::Null);
    }

    fn status() -> StatusResponse {
        StatusResponse {
            cluster_id: "c1".into(),
            leader: Some(0),
            term: 4,
            commit_index: 9,
            applied_index: 8,
            member: "kv-1".into(),
            revision: 7,
            members: vec![
                Member {
                    ordinal: 0,
                    name: "kv-0".into(),
                    role: Role::Voter as i32,
                    peer_addr: "kv-0.kv:7380".into(),
                    client_addr: "kv-0.kv:7379".into(),
                    applied_index: Some(9),
                    reachable: true,
                    node_id: 11,
                    lag: Some(0),
                },
                Member {
                    ordinal: 1,
                    name: "kv-1".into(),
                    role: Role::Learner as i32,
                    applied_index: Some(8),
                    lag: Some(1),
                    ..Default::default()
                },
                Member {
                    ordinal: 2,
                    name: "kv-2".into(),
                    role: Role::Voter as i32,
                    reachable: false,
                    applied_index: None,
                    lag: None,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn status_json_has_contract_fields() {
        let v = status_json(&status());
        assert_eq!(v["cluster_id"], "c1");
        assert_eq!(v["leader"], 0);
        assert_eq!(v["term"], 4);
        assert_eq!(v["members"][0]["role"], "voter");
        assert_eq!(v["members"][0]["client_addr"], "kv-0.kv:7379");
        assert_eq!(v["members"][0]["reachable"], true);
        assert_eq!(v["members"][1]["role"], "learner");
        assert_eq!(v["members"][1]["applied_index"], 8);
        // Unknown is null, not 0 ("caught up").
        assert_eq!(v["members"][2]["applied_index"], Value::Null);
        assert_eq!(v["members"][2]["lag"], Value::Null);
        assert_eq!(v["members"][2]["reachable"], false);
        let no_leader = StatusResponse {
            leader: None,
            ..status()
        };
        assert_eq!(status_json(&no_leader)["leader"], Value::Null);
    }

    #[test]
    fn status_table_lists_members() {
        let text = status_table(&status());
        assert!(text.contains("leader: kv-0 (ordinal 0)"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        // Answered by kv-1, a follower.
        assert!(
            lines[2].starts_with("note: answered by kv-1, a follower"),
            "{text}"
        );
        assert!(lines[4].starts_with("   ORDINAL  NAME"), "{text}");
        assert!(lines[5].starts_with("*  0        kv-0  voter"), "{text}");
        assert!(lines[6].contains("learner"), "{text}");
        let unknown: Vec<&str> = lines[7].split_whitespace().collect();
        assert_eq!(unknown[unknown.len() - 3..], ["-", "no", "-"], "{text}");
        assert!(text.lines().all(|l| l == l.trim_end()));
        let at_leader = status_table(&StatusResponse {
            member: "kv-0".into(),
            ..status()
        });
        assert!(!at_leader.contains("note:"), "{at_leader}");
    }
}
