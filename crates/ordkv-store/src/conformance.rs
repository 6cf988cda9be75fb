//! openraft's storage conformance suite, run against the sled store.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use tempfile::TempDir;

use crate::{LogStore, StateMachine, StoreOptions, TypeConfig};

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().expect("temp dir");
        let (log, sm) = crate::open(dir.path(), &test_options()).expect("open store");
        Ok((dir, log, sm))
    }
}

pub(crate) fn test_options() -> StoreOptions {
    StoreOptions {
        cache_capacity_bytes: 16 * 1024 * 1024,
        history_revisions: 1000,
        max_range_limit: 10_000,
        // Rotations happen in the tests too, and each store zero-fills less.
        wal_segment_bytes: 8 << 20,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_openraft_storage_suite() {
    Suite::test_all(SledBuilder).await.expect("storage suite");
}
