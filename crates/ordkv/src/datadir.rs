//! The data dir: who it belongs to, and one process at a time.
//!
//! ```text
//! <data-dir>/LOCK          exclusive flock while a node runs
//! <data-dir>/member.json   cluster id, node id, member name (written once, fsynced)
//! <data-dir>/sled/         the Raft log and the state machine
//! <data-dir>/snapshots/    the current snapshot file
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use fs2::FileExt;
use serde::{Deserialize, Serialize};

use crate::config::Identity;
use crate::error::{Error, Result};

const MEMBER_FILE: &str = "member.json";
/// The data format: the WAL segments, sled rows and snapshot files this version writes, as
/// pinned by `ordkv_store`'s golden tests. 2: WAL segments start with a header naming their
/// format and hold ordkv's own record encoding. 1: headerless segments of postcard records
/// (read as well; such a dir is moved to 2 at open).
const FORMAT: u32 = 2;
/// The oldest data format this version reads.
const OLDEST_FORMAT: u32 = 1;

/// What a data dir records about its owner.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct MemberRecord {
    pub(crate) format: u32,
    /// The cluster this data belongs to; empty until the member bootstraps or joins one.
    pub(crate) cluster_id: String,
    /// The Raft node id: created with the data dir, never reused by another one.
    pub(crate) node_id: u64,
    /// The member name that created it.
    pub(crate) name: String,
}

/// An opened, locked data dir. The lock is released when this is dropped.
pub(crate) struct DataDir {
    pub(crate) path: PathBuf,
    pub(crate) record: MemberRecord,
    _lock: File,
}

fn dir_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::DataDir {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

impl DataDir {
    /// Opens `path` for `identity`, creating it when absent or empty. Refuses, touching
    /// nothing, a dir that another process holds, that belongs to another member, or that
    /// is not an ordkv data dir.
    pub(crate) fn open(path: &Path, identity: &Identity) -> Result<DataDir> {
        fs::create_dir_all(path).map_err(|e| dir_err(path, format!("cannot create it: {e}")))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join("LOCK"))
            .map_err(|e| dir_err(path, format!("cannot open LOCK: {e}")))?;
        lock.try_lock_exclusive().map_err(|_| {
            dir_err(
                path,
                "another ordkv process is using this data dir; stop it or choose another data dir (`data_dir`, --data-dir)",
            )
        })?;

        let member_file = path.join(MEMBER_FILE);
        if member_file.exists() {
            let bytes = fs::read(&member_file)
                .map_err(|e| dir_err(path, format!("cannot read {MEMBER_FILE}: {e}")))?;
            let record: MemberRecord = serde_json::from_slice(&bytes).map_err(|e| {
                dir_err(
                    path,
                    format!("{MEMBER_FILE} is corrupt ({e}); restore the volume or wipe it so the member rejoins"),
                )
            })?;
            if !(OLDEST_FORMAT..=FORMAT).contains(&record.format) {
                return Err(dir_err(
                    path,
                    format!(
                        "it is in data format {}; this ordkv ({}) reads data formats \
                         {OLDEST_FORMAT} to {FORMAT}: run the ordkv that wrote it (or a newer one)",
                        record.format,
                        env!("CARGO_PKG_VERSION")
                    ),
                ));
            }
            if record.name != identity.name {
                return Err(dir_err(
                    path,
                    format!(
                        "it belongs to member {:?} of cluster {}, not to {:?}; point the data dir (`data_dir`, --data-dir) at this member's own volume",
                        record.name, record.cluster_id, identity.name
                    ),
                ));
            }
            let mut dir = DataDir {
                path: path.to_path_buf(),
                record,
                _lock: lock,
            };
            if dir.record.format < FORMAT {
                dir.upgrade()?;
            }
            return Ok(dir);
        }

        // No member file: only an empty dir may become a member (a PVC may hold lost+found).
        let strangers: Vec<String> = fs::read_dir(path)
            .map_err(|e| dir_err(path, format!("cannot list it: {e}")))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "LOCK" && n != "lost+found")
            .collect();
        if !strangers.is_empty() {
            return Err(dir_err(
                path,
                format!(
                    "it is not empty and has no {MEMBER_FILE} (found {}); it is not an ordkv data dir or it is corrupt. Nothing was changed",
                    strangers.join(", ")
                ),
            ));
        }
        let (a, b) = uuid::Uuid::new_v4().as_u64_pair();
        let record = MemberRecord {
            format: FORMAT,
            cluster_id: String::new(),
            // Random 63-bit ids: a wiped volume never comes back under an old id.
            node_id: (a ^ b) >> 1 | 1,
            name: identity.name.clone(),
        };
        write_durably(
            &member_file,
            &serde_json::to_vec_pretty(&record).expect("serializable"),
        )
        .map_err(|e| dir_err(path, format!("cannot write {MEMBER_FILE}: {e}")))?;
        Ok(DataDir {
            path: path.to_path_buf(),
            record,
            _lock: lock,
        })
    }
}

impl DataDir {
    /// Records the cluster this member bootstrapped or joined (once, durably).
    pub(crate) fn set_cluster_id(&self, cluster_id: &str) -> Result<()> {
        self.write_record(MemberRecord {
            cluster_id: cluster_id.to_string(),
            ..self.record.clone()
        })
    }

    /// Marks an older data dir as this format before anything of this format is written to
    /// it, so that an older ordkv refuses it (naming the format) rather than misreading it.
    fn upgrade(&mut self) -> Result<()> {
        let from = self.record.format;
        self.record.format = FORMAT;
        self.write_record(self.record.clone())?;
        tracing::info!(
            path = %self.path.display(),
            from,
            to = FORMAT,
            "data dir moved to this version's data format; an ordkv that reads only data \
             format {from} can no longer open it"
        );
        Ok(())
    }

    fn write_record(&self, record: MemberRecord) -> Result<()> {
        write_durably(
            &self.path.join(MEMBER_FILE),
            &serde_json::to_vec_pretty(&record).expect("serializable"),
        )
        .map_err(|e| dir_err(&self.path, format!("cannot write {MEMBER_FILE}: {e}")))
    }
}

/// Write to a temp file, fsync, rename, fsync the dir: the file is whole or absent.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> Identity {
        Identity::parse(name).unwrap()
    }

    #[test]
    fn creates_then_reopens_with_the_same_record() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path(), &id("kv-0")).unwrap();
        let record = first.record.clone();
        drop(first);
        first_cluster(&record);
        let again = DataDir::open(dir.path(), &id("kv-0")).unwrap();
        assert_eq!(again.record, record);
        again.set_cluster_id("c1").unwrap();
        drop(again);
        let third = DataDir::open(dir.path(), &id("kv-0")).unwrap();
        assert_eq!(third.record.cluster_id, "c1");
        assert_eq!(third.record.node_id, record.node_id);
    }

    fn first_cluster(record: &MemberRecord) {
        assert!(
            record.cluster_id.is_empty(),
            "a new dir belongs to no cluster yet"
        );
    }

    #[test]
    fn a_second_open_is_refused_while_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DataDir::open(dir.path(), &id("kv-0")).unwrap();
        let err = DataDir::open(dir.path(), &id("kv-0"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("another ordkv process"), "{err}");
    }

    #[test]
    fn another_members_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(DataDir::open(dir.path(), &id("kv-0")).unwrap());
        let err = DataDir::open(dir.path(), &id("kv-1"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("belongs to member \"kv-0\""), "{err}");
    }

    #[test]
    fn corrupt_or_foreign_dirs_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("member.json"), b"{not json").unwrap();
        let err = DataDir::open(dir.path(), &id("kv-0"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("corrupt"), "{err}");
        assert_eq!(
            fs::read(dir.path().join("member.json")).unwrap(),
            b"{not json"
        );

        let other = tempfile::tempdir().unwrap();
        fs::write(other.path().join("important.txt"), b"x").unwrap();
        let err = DataDir::open(other.path(), &id("kv-0"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not an ordkv data dir"), "{err}");
        assert!(!other.path().join("member.json").exists());
    }
    fn set_format(path: &Path, format: u32) {
        let file = path.join(MEMBER_FILE);
        let mut record: MemberRecord = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        record.format = format;
        fs::write(file, serde_json::to_vec(&record).unwrap()).unwrap();
    }

    #[test]
    fn an_older_format_is_moved_to_this_one_and_a_newer_one_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        drop(DataDir::open(dir.path(), &id("kv-0")).unwrap());
        set_format(dir.path(), 1);
        let opened = DataDir::open(dir.path(), &id("kv-0")).unwrap();
        assert_eq!(opened.record.format, FORMAT);
        drop(opened);
        let record: MemberRecord =
            serde_json::from_slice(&fs::read(dir.path().join(MEMBER_FILE)).unwrap()).unwrap();
        assert_eq!(record.format, FORMAT, "recorded on disk");

        set_format(dir.path(), FORMAT + 1);
        let before = fs::read(dir.path().join(MEMBER_FILE)).unwrap();
        let err = DataDir::open(dir.path(), &id("kv-0"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&format!("in data format {}", FORMAT + 1))
                && err.contains(&format!("reads data formats 1 to {FORMAT}")),
            "{err}"
        );
        assert_eq!(fs::read(dir.path().join(MEMBER_FILE)).unwrap(), before);
    }
}
