//! Crash points for the fault tests. With `ORDKV_CRASH_AT=<point>` (or `<point>:<n>` for the
//! n-th time it is reached) in its environment, the process exits at once with status
//! [`CRASH_EXIT_CODE`] at that point, as if killed there: no destructor runs and nothing
//! buffered in the process reaches a file (what was written stays in the page cache, as with
//! SIGKILL). Unset, a point costs one atomic load. The points:
//!
//! | point | where |
//! |---|---|
//! | `wal.before_sync` | log entries written to the segment, before its `fdatasync` |
//! | `wal.after_sync` | after the `fdatasync`, before the entries are acknowledged |
//! | `apply.mid_batch` | a batch's history and keys written, not its `state` row (sled flushed) |
//! | `apply.joint_membership` | applying a joint membership (between the two phases of a change) |
//! | `snapshot.build` | a snapshot file being written (after its first key) |
//! | `snapshot.install` | a received snapshot's keys written, not its state (sled flushed) |
//!
//! Only builds with the `fault-injection` feature (the tests') read `ORDKV_CRASH_AT`; in
//! other builds a point is an empty function.

/// The exit status of a process stopped at a crash point.
pub const CRASH_EXIT_CODE: i32 = 86;

#[cfg(feature = "fault-injection")]
pub use armed::{point, point_with};

/// Without the feature: nothing to arm.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}

/// Without the feature: nothing to arm; `before` never runs.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point_with(_name: &str, _before: impl FnOnce()) {}

#[cfg(feature = "fault-injection")]
mod armed {
    use super::CRASH_EXIT_CODE;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Armed {
        point: String,
        /// Passes left before the crash.
        left: AtomicU64,
    }

    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

    fn armed() -> Option<&'static Armed> {
        ARMED
            .get_or_init(|| {
                let spec = std::env::var("ORDKV_CRASH_AT").ok()?;
                let (point, n) = match spec.split_once(':') {
                    Some((p, n)) => (p.to_string(), n.parse().unwrap_or(1)),
                    None => (spec, 1),
                };
                Some(Armed {
                    point,
                    left: AtomicU64::new(n.max(1)),
                })
            })
            .as_ref()
    }

    /// Exits the process here if `ORDKV_CRASH_AT` names this point (see the module docs).
    pub fn point(name: &str) {
        point_with(name, || {});
    }

    /// Like [`point`], running `before` first when it crashes: e.g. a sled flush, as if sled's
    /// own background flush had run just then, so that what was written so far is on disk.
    pub fn point_with(name: &str, before: impl FnOnce()) {
        if let Some(a) = armed()
            && a.point == name
            && a.left.fetch_sub(1, Ordering::SeqCst) == 1
        {
            before();
            eprintln!("crash point {name} reached: exiting with status {CRASH_EXIT_CODE}");
            std::process::exit(CRASH_EXIT_CODE);
        }
    }
}
