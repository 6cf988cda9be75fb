//! The monitoring files in `deploy/monitoring/` name only metrics (and label values) that a
//! live cluster exports: a 3-member cluster with writes, reads and a lease that expires is
//! scraped, and every `ordkv_*` name in the alert rules and the dashboard must be among its
//! metric families, with the label values they select on.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ordkv_client::Client;
use ordkv_proto::v1::LeaseGrantRequest;
use ordkv_tests::cluster::Cluster;

fn repo_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Metric families (from `# TYPE` lines) and, per family, the `label="value"` pairs seen.
fn exported(text: &str, into: &mut BTreeMap<String, BTreeSet<(String, String)>>) {
    let mut families: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            into.entry(name.clone()).or_default();
            families.push(name);
        } else if !line.starts_with('#') && !line.is_empty() {
            let (name, labels) = match line.split_once('{') {
                Some((name, rest)) => (name, rest.split('}').next().unwrap_or_default()),
                None => (line.split_whitespace().next().unwrap_or_default(), ""),
            };
            let family = families
                .iter()
                .rev()
                .find(|f| name.starts_with(f.as_str()))
                .cloned()
                .unwrap_or_else(|| name.to_string());
            let pairs = into.entry(family).or_default();
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                if let Some((k, v)) = pair.split_once('=') {
                    pairs.insert((k.to_string(), v.trim_matches('"').to_string()));
                }
            }
        }
    }
}

/// A label matcher with a literal value: `(label, "=" or "!=", value)`.
type Matcher = (String, String, String);

/// Every `ordkv_*` selector in `text`: its family and its literal label matchers.
fn selectors(text: &str) -> Vec<(String, Vec<Matcher>)> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("ordkv_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let mut name = text[start..end].to_string();
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                name = base.to_string();
            }
        }
        let mut matchers = Vec::new();
        if bytes.get(end) == Some(&b'{') {
            let close = text[end..].find('}').map_or(text.len(), |c| end + c);
            for m in text[end + 1..close].split(',') {
                let m = m.trim();
                let (label, op, value) = if let Some((l, v)) = m.split_once("!=") {
                    (l, "!=", v)
                } else if let Some((l, v)) = m.split_once('=') {
                    (l, "=", v)
                } else {
                    continue;
                };
                let value = value.trim().trim_matches('"');
                // Labels Prometheus adds when scraping (see prometheus-scrape.yaml).
                if ["namespace", "statefulset", "member", "job", "instance"].contains(&label.trim())
                    || value.contains('$')
                {
                    continue;
                }
                matchers.push((label.trim().to_string(), op.to_string(), value.to_string()));
            }
        }
        out.push((name, matchers));
        i = end;
    }
    out
}

/// Every `expr` string in a Grafana dashboard.
fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alerts_use_only_exported_metrics() {
    let c = Cluster::start(3, &[]).await;
    let endpoints: Vec<String> = (0..3).map(|i| c.node(i).client_addr()).collect();
    let client = Client::connect(&endpoints).await.expect("client");
    for i in 0..50 {
        client.put_value(format!("k{i}"), "v").await.expect("put");
        client.get_value(format!("k{i}")).await.expect("get");
    }
    assert!(client.get_value("missing").await.expect("get").is_none());
    // A lease kept alive once, then left to expire: the lease metrics appear.
    let lease = client
        .lease_grant(LeaseGrantRequest { ttl: 2, id: 0 })
        .await
        .expect("grant")
        .id;
    client.lease_keep_alive(lease).await.expect("keepalive");
    c.wait_until("the lease expired", Duration::from_secs(15), || async {
        let left = client.lease_leases().await.map_err(|e| e.to_string())?;
        if left.leases.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
    // Every member, so that leader-only metrics (appends to followers) are in.
    let mut families = BTreeMap::new();
    for i in 0..3 {
        let (code, body) = c.node(i).http_get("/metrics").await.expect("scrape");
        assert_eq!(code, 200, "{body}");
        exported(&body, &mut families);
    }
    let mut missing = Vec::new();
    for file in [
        "deploy/monitoring/ordkv-alerts.yaml",
        "deploy/monitoring/ordkv-dashboard.json",
    ] {
        let text = repo_file(file);
        // The dashboard's queries are JSON strings: read them unescaped.
        let text = if file.ends_with(".json") {
            let dashboard: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            let mut exprs = Vec::new();
            collect_exprs(&dashboard, &mut exprs);
            exprs.join("\n")
        } else {
            text
        };
        let used = selectors(&text);
        assert!(
            used.len() >= 7,
            "{file}: only {} selectors found",
            used.len()
        );
        for (name, matchers) in used {
            let Some(pairs) = families.get(&name) else {
                missing.push(format!("{file}: {name} is not exported"));
                continue;
            };
            for (label, op, value) in matchers {
                let ok = match op.as_str() {
                    "=" => pairs.contains(&(label.clone(), value.clone())),
                    _ => pairs.iter().any(|(l, _)| *l == label),
                };
                if !ok {
                    missing.push(format!(
                        "{file}: {name}{{{label}{op}\"{value}\"}} matches nothing exported"
                    ));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{}\nexported: {:?}",
        missing.join("\n"),
        families.keys().collect::<Vec<_>>()
    );
}
