//! `ordkv recover <serve flags> [--force]`: makes a stopped member the only voter of its
//! cluster after a permanent loss of quorum (see `ordkv::recover`).

use serde_json::json;

use crate::output::{Format, print_json};
use crate::serve::ServeArgs;

/// `ordkv recover`.
#[derive(Debug, clap::Args)]
pub struct RecoverArgs {
    /// Recover even though other members of the cluster answer (they are dropped from it,
    /// and what they hold beyond this member's revision is lost).
    #[arg(long)]
    pub force: bool,
    /// The member's own `ordkv serve` flags (name, data dir, service or peers).
    #[command(flatten)]
    pub serve: Box<ServeArgs>,
}

pub async fn run(args: RecoverArgs, fmt: Format) -> anyhow::Result<()> {
    let resolved = crate::serve::resolve(&args.serve)?;
    let report = ordkv::recover(&resolved.node, args.force).await?;
    print_report(fmt, &report)
}

pub fn print_report(fmt: Format, r: &ordkv::RecoverReport) -> anyhow::Result<()> {
    let others: Vec<_> = r
        .others
        .iter()
        .map(|o| {
            json!({
                "name": o.name,
                "answered": o.answer.is_some(),
                "revision": o.answer.map(|a| a.revision),
                "applied_index": o.answer.map(|a| a.applied_index),
            })
        })
        .collect();
    match fmt {
        Format::Json => print_json(&json!({
            "member": r.member,
            "cluster_id": r.cluster_id,
            "revision": r.progress.revision,
            "applied_index": r.progress.applied_index,
            "last_log_index": r.last_log_index,
            "removed": others,
        }))?,
        Format::Human => {
            println!(
                "{} is now the only voter of cluster {} (applied: revision {}, log index {}; its log up to index {} is applied when it starts)",
                r.member,
                r.cluster_id,
                r.progress.revision,
                r.progress.applied_index,
                r.last_log_index
            );
            for o in &r.others {
                match o.answer {
                    Some(a) => {
                        println!("removed {}: it answered at revision {}", o.name, a.revision)
                    }
                    None => println!("removed {}: it did not answer", o.name),
                }
            }
            for (name, a) in r.ahead() {
                println!(
                    "lost: {name} had applied log index {} (revision {}), beyond this member's log (index {})",
                    a.applied_index, a.revision, r.last_log_index
                );
            }
            println!(
                "start `ordkv serve` with the same flags; the other members rejoin with empty data dirs"
            );
        }
    }
    Ok(())
}
