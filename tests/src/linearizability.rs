//! A linearizability checker for histories of single-key register operations.
//!
//! A history is a list of [`Event`]s recorded by concurrent clients doing puts, deletes and
//! gets against a cluster, possibly while nodes are killed or partitioned. [`check`] decides
//! whether one total order of the operations exists that (a) respects real time: an operation
//! that returned before another was called comes first, and (b) is a legal sequential run of a
//! read/write register. Each key is a separate register, so the history is split per key and
//! each part is checked on its own (linearizability is compositional).
//!
//! Per key the search is the Wing–Gong algorithm with Lowe's memoization, as in porcupine's
//! `CheckOperations`. The call and return events sit in a doubly linked list sorted by time.
//! The DFS tries each "minimal" operation (one called before the earliest return still in the
//! list), applies it to the register, unlinks it and goes on. Reaching a return event means
//! that operation was not placed in time, so the search backtracks. A set of visited
//! configurations (linearized set, register value) prunes states already known to fail.
//! Operations whose outcome is unknown are handled as described on [`Event::ret`].
//!
//! A few register-specific rules cut the search further without losing solutions: a minimal
//! read that sees the current value is taken without trying alternatives; a write with
//! unknown outcome, or the only write of a value that some read saw, is only placed right
//! before a read of its value; writes with unknown outcome and equal values are
//! interchangeable. (The tests check the verdicts against brute force.) The worst case stays
//! exponential in the number of operations concurrent on one key, so spread clients over
//! several keys: with a handful of clients per key, thousands of operations per key
//! typically check in milliseconds.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One operation on a single-key register.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// A put of `Some(value)`, or a delete when `value` is `None`.
    Write {
        /// The value written; `None` deletes the key.
        value: Option<Vec<u8>>,
    },
    /// A get that observed `value`; `None` means it observed the key as absent.
    Read {
        /// The value observed; `None` means "absent".
        value: Option<Vec<u8>>,
    },
}

/// One client operation in a recorded history.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    /// The client that issued the operation; only used in explanations.
    pub client: u64,
    /// The key operated on. Every key is an independent register.
    pub key: Vec<u8>,
    /// What was done, and what a read observed.
    pub op: Op,
    /// When the request was sent, in nanoseconds since the start of the test.
    pub call: u64,
    /// When the response arrived, in the same clock as `call`. A value below `call` is
    /// treated as `call`.
    ///
    /// `None` means the outcome is unknown (timeout, lost connection): the operation may or
    /// may not have taken effect, at any time after its call. A read with an unknown outcome
    /// observed nothing and is ignored. A write with an unknown outcome returns at +infinity,
    /// as in porcupine, and "never took effect" is the same as "took effect after everything
    /// else", which no recorded read observes. The checker narrows this down without losing
    /// solutions, since such a write only matters right before a read of its value: one
    /// whose value no read saw is left out; the only writer of a value that reads saw must
    /// take effect before the first of them returns; any other may take effect until the
    /// last read of its value returns, or never.
    pub ret: Option<u64>,
}

/// The verdict of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Every key's history is linearizable.
    Ok,
    /// The history of `key` has no linearization; `detail` explains why, for humans.
    Violation {
        /// The key whose history is not linearizable.
        key: Vec<u8>,
        /// A multi-line explanation: a longest linearizable prefix and the operations that
        /// could not be placed after it. Operations are named `#i` by their index in the
        /// checked history.
        detail: String,
    },
    /// The budget ran out before every key was decided (no violation was found so far).
    Timeout,
}

/// Checks that `history` is linearizable for a map of independent registers that all start
/// at `initial`.
///
/// Keys are checked one by one, those with fewer operations first, and the first violation
/// found is returned. `budget` bounds the wall-clock time of the whole check, including the
/// explanation of a violation; when it runs out, the result is [`CheckResult::Timeout`] (use
/// [`Duration::MAX`] for no limit).
pub fn check(history: &[Event], initial: Option<Vec<u8>>, budget: Duration) -> CheckResult {
    let deadline = Instant::now().checked_add(budget);
    let mut by_key: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (i, event) in history.iter().enumerate() {
        by_key.entry(&event.key).or_default().push(i);
    }
    let mut keys: Vec<(&[u8], Vec<usize>)> = by_key.into_iter().collect();
    keys.sort_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| a.0.cmp(b.0)));
    for (key, indices) in keys {
        match check_key(history, &indices, initial.as_deref(), deadline) {
            KeyOutcome::Ok => {}
            KeyOutcome::Violation(detail) => {
                return CheckResult::Violation {
                    key: key.to_vec(),
                    detail,
                };
            }
            KeyOutcome::Timeout => return CheckResult::Timeout,
        }
    }
    CheckResult::Ok
}

/// A thread-safe, clonable collector of [`Event`]s sharing one time origin.
///
/// Take `call = recorder.now()` before sending a request and `ret = Some(recorder.now())`
/// after its response arrived (or `None` if the outcome is unknown), then [`record`] it.
///
/// [`record`]: Recorder::record
#[derive(Clone, Debug)]
pub struct Recorder {
    origin: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    /// Starts an empty recording; [`Recorder::now`] counts from this instant.
    pub fn start() -> Recorder {
        Recorder {
            origin: Instant::now(),
            events: Arc::default(),
        }
    }

    /// Nanoseconds since [`Recorder::start`].
    pub fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Appends one completed (or abandoned) operation.
    pub fn record(&self, event: Event) {
        // A client thread that panicked while holding the lock cannot have left the vector
        // half-updated, so the history is still worth keeping.
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
    }

    /// A copy of everything recorded so far, in recording order.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

// ---------------------------------------------------------------------------------------
// Per-key search
// ---------------------------------------------------------------------------------------

/// An interned register value: [`ABSENT`] or an index into [`Values::bytes`].
type Val = u32;
/// The register value of an absent (never written or deleted) key.
const ABSENT: Val = 0;
/// The head sentinel of the circular event list.
const HEAD: usize = 0;
/// How many search steps run between two looks at the clock.
const STEPS_PER_CLOCK_CHECK: u64 = 1024;
/// How many steps the search for a better explanation of a violation may take.
const EXPLAIN_STEPS: u64 = 1 << 20;
/// How many operations an explanation lists at most per section.
const EXPLAIN_LIMIT: usize = 8;

enum KeyOutcome {
    Ok,
    Violation(String),
    Timeout,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

/// An operation of one key, with its value interned.
struct KeyOp {
    /// Index in the checked history, for explanations.
    index: usize,
    client: u64,
    kind: Kind,
    value: Val,
    call: u64,
    /// The recorded return, for explanations.
    ret: Option<u64>,
    /// When the op must have taken effect: its return, or a bound derived for a write with
    /// unknown outcome (see [`Event::ret`]). Never below `call`.
    deadline: u64,
    /// Whether the op must take effect; only writes with unknown outcome may not.
    required: bool,
    /// Whether this write is useful only if a read of its value comes right after it (see
    /// [`Search::push`]).
    must_be_seen: bool,
    /// For a write that need not take effect: the previous such write (in call order) with
    /// the same value.
    previous_twin: Option<usize>,
}

impl KeyOp {
    /// The register model: the value after applying this op to `state`, or `None` if the
    /// op is impossible in `state` (a read that observed something else).
    fn apply(&self, state: Val) -> Option<Val> {
        match self.kind {
            Kind::Write => Some(self.value),
            Kind::Read => (self.value == state).then_some(state),
        }
    }
}

/// Interns values so the register state is a small integer.
struct Values<'a> {
    ids: HashMap<&'a [u8], Val>,
    bytes: Vec<Option<&'a [u8]>>,
}

impl<'a> Values<'a> {
    fn new() -> Self {
        Values {
            ids: HashMap::new(),
            bytes: vec![None],
        }
    }

    fn intern(&mut self, value: Option<&'a [u8]>) -> Val {
        let Some(value) = value else { return ABSENT };
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        let id = Val::try_from(self.bytes.len()).expect("fewer than 2^32 distinct values");
        self.ids.insert(value, id);
        self.bytes.push(Some(value));
        id
    }

    fn show(&self, value: Val) -> String {
        fmt_value(self.bytes[value as usize])
    }
}

fn check_key(
    history: &[Event],
    indices: &[usize],
    initial: Option<&[u8]>,
    deadline: Option<Instant>,
) -> KeyOutcome {
    let mut values = Values::new();
    let init = values.intern(initial);
    let mut ops = Vec::with_capacity(indices.len());
    for &index in indices {
        let event = &history[index];
        let (kind, value) = match &event.op {
            Op::Write { value } => (Kind::Write, value.as_deref()),
            Op::Read { value } => (Kind::Read, value.as_deref()),
        };
        if kind == Kind::Read && event.ret.is_none() {
            // A read whose result never arrived observed nothing and constrains nothing.
            continue;
        }
        let ret = event.ret.map(|ret| ret.max(event.call));
        ops.push(KeyOp {
            index,
            client: event.client,
            kind,
            value: values.intern(value),
            call: event.call,
            ret,
            deadline: ret.unwrap_or(u64::MAX),
            required: ret.is_some(),
            must_be_seen: false,
            previous_twin: None,
        });
    }

    // When the reads of each value returned: (first, last).
    let mut reads: HashMap<Val, (u64, u64)> = HashMap::new();
    for op in ops.iter().filter(|op| op.kind == Kind::Read) {
        let ret = op.deadline;
        let span = reads.entry(op.value).or_insert((ret, ret));
        *span = (span.0.min(ret), span.1.max(ret));
    }
    // A write with unknown outcome is only worth linearizing right before a read of its
    // value. If one is followed by a write or by nothing, or overwrites its own value,
    // removing it keeps the order legal, and "never took effect" is allowed. So it need not
    // take effect after the last read of its value returned, and is dropped if called later
    // or if no read saw its value.
    ops.retain(|op| {
        op.required
            || reads
                .get(&op.value)
                .is_some_and(|&(_, last)| op.call <= last)
    });
    let mut writers: HashMap<Val, usize> = HashMap::new();
    for op in ops.iter().filter(|op| op.kind == Kind::Write) {
        *writers.entry(op.value).or_default() += 1;
    }
    for op in &mut ops {
        let unique = op.value != init && writers.get(&op.value) == Some(&1);
        op.must_be_seen =
            op.kind == Kind::Write && reads.contains_key(&op.value) && (unique || !op.required);
        if op.required {
            continue;
        }
        let (first, last) = reads[&op.value];
        if unique {
            // The only way to explain the reads of this value: it must precede all of them.
            op.required = true;
            op.deadline = first.max(op.call);
        } else {
            op.deadline = last;
        }
    }

    // Fast path with a precise explanation: a read of a value nobody could have written.
    if let Some(op) = ops
        .iter()
        .find(|op| op.value != init && !writers.contains_key(&op.value))
    {
        return KeyOutcome::Violation(format!(
            "{} observed a value that is not the initial value ({}) and that no write on \
             this key wrote, except maybe writes with unknown outcome called after every \
             read of it returned",
            describe(op, &values),
            values.show(init)
        ));
    }

    ops.sort_by_key(|op| (op.call, op.index));
    // Writes with unknown outcome and the same value are interchangeable once called (same
    // value, same deadline): the search only uses the earliest called one left.
    let mut last_optional: HashMap<Val, usize> = HashMap::new();
    for (i, op) in ops.iter_mut().enumerate() {
        if !op.required {
            op.previous_twin = last_optional.insert(op.value, i);
        }
    }
    let mut search = Search::new(&ops, init, true);
    match search.run(deadline, u64::MAX) {
        SearchOutcome::Linearizable => KeyOutcome::Ok,
        SearchOutcome::Timeout => KeyOutcome::Timeout,
        SearchOutcome::Violation => {
            // Pruning can stop the search at a short prefix that says little (a write whose
            // read is far away is never placed); a bounded run without that pruning usually
            // gets further, up to the op that really does not fit.
            let mut plain = Search::new(&ops, init, false);
            let outcome = plain.run(deadline, EXPLAIN_STEPS);
            debug_assert!(!matches!(outcome, SearchOutcome::Linearizable));
            let best = if plain.best.len() > search.best.len() {
                &plain
            } else {
                &search
            };
            KeyOutcome::Violation(best.explain(&values))
        }
    }
}

enum SearchOutcome {
    Linearizable,
    Violation,
    Timeout,
}

/// How an op left the event list.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Choice {
    /// Linearized as one alternative among the minimal ops.
    Tried,
    /// A read linearized without trying alternatives (see [`Search::matching_read`]).
    MatchingRead,
    /// An optional write whose deadline came: it never took effect.
    Dropped,
}

/// One step on the search stack.
struct Frame {
    op: usize,
    choice: Choice,
    /// The register value before the step.
    before: Val,
}

/// The Wing–Gong/Lowe DFS over one key's operations (sorted by call).
struct Search<'o> {
    ops: &'o [KeyOp],
    init: Val,
    /// Whether to skip writes that [must be seen](KeyOp::must_be_seen) but cannot be.
    prune_unseen: bool,
    /// The circular doubly linked list of events; entry [`HEAD`] is the sentinel.
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each non-sentinel entry: its op, and whether it is the call (else the deadline).
    entry_op: Vec<usize>,
    entry_is_call: Vec<bool>,
    /// For each op: its call and deadline entries.
    call_entry: Vec<usize>,
    deadline_entry: Vec<usize>,
    /// Two random keys per op: the XOR of the keys of the done ops (linearized or dropped)
    /// is a 128-bit fingerprint of that set, maintained incrementally.
    zobrist: Vec<u128>,
    /// The current configuration: the steps taken, the fingerprint of their ops, the
    /// register value, and how many required ops are not done yet.
    stack: Vec<Frame>,
    done: Vec<bool>,
    fingerprint: u128,
    state: Val,
    remaining: usize,
    /// Fingerprints of the configurations entered so far (see [`Search::push`]).
    visited: HashSet<u128, BuildHasherDefault<FingerprintHasher>>,
    /// A longest sequence of steps seen, and the register value after it.
    best: Vec<(usize, Choice)>,
    best_state: Val,
}

impl<'o> Search<'o> {
    fn new(ops: &'o [KeyOp], init: Val, prune_unseen: bool) -> Self {
        // Calls before deadlines at equal times: operations that touch are concurrent.
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call, false, i));
            events.push((op.deadline, true, i));
        }
        events.sort_unstable();
        let len = events.len() + 1;
        let mut search = Search {
            ops,
            init,
            prune_unseen,
            next: (0..len).map(|e| (e + 1) % len).collect(),
            prev: (0..len).map(|e| (e + len - 1) % len).collect(),
            entry_op: vec![0; len],
            entry_is_call: vec![false; len],
            call_entry: vec![HEAD; ops.len()],
            deadline_entry: vec![HEAD; ops.len()],
            zobrist: (0..ops.len() as u64)
                .map(|i| (u128::from(splitmix64(2 * i)) << 64) | u128::from(splitmix64(2 * i + 1)))
                .collect(),
            stack: Vec::new(),
            done: vec![false; ops.len()],
            fingerprint: 0,
            state: init,
            remaining: ops.iter().filter(|op| op.required).count(),
            visited: HashSet::default(),
            best: Vec::new(),
            best_state: init,
        };
        for (position, &(_, is_deadline, op)) in events.iter().enumerate() {
            let entry = position + 1;
            search.entry_op[entry] = op;
            search.entry_is_call[entry] = !is_deadline;
            if is_deadline {
                search.deadline_entry[op] = entry;
            } else {
                search.call_entry[op] = entry;
            }
        }
        search
    }

    fn unlink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = entry;
        self.prev[next] = entry;
    }

    /// Takes a step: linearizes `op` next (or drops it), unless that is pointless (see
    /// below) or the resulting configuration was entered before, and so is known to fail (the
    /// search only meets a configuration again after exhausting it). Returns whether it did.
    ///
    /// A configuration is the set of done ops plus the register value; what can follow
    /// depends on nothing else. It is remembered by a 128-bit fingerprint (a Zobrist hash of
    /// the set mixed with the value). A collision would wrongly prune a configuration, but
    /// even with 10^9 configurations its probability is below 10^-20.
    ///
    /// Pointless steps: a read that sees another value; a write with unknown outcome that
    /// writes the current value, or while an interchangeable [twin](KeyOp::previous_twin)
    /// is left; and a write that [must be seen](KeyOp::must_be_seen) when no read of its
    /// value could come right after it. Such a write is either the only writer of a value
    /// that is read (so the reads after it up to the next write see it, and the first of
    /// them must exist) or has an unknown outcome (if nothing reads it before the next
    /// write, leaving it out is as good). All this depends on the configuration only, so the
    /// visited set stays exact.
    fn push(&mut self, op: usize, choice: Choice) -> bool {
        let state = if choice == Choice::Dropped {
            self.state
        } else {
            let Some(state) = self.ops[op].apply(self.state) else {
                return false;
            };
            state
        };
        if choice == Choice::Tried && !self.ops[op].required {
            let twin_left = self.ops[op]
                .previous_twin
                .is_some_and(|twin| !self.done[twin]);
            if twin_left || state == self.state {
                return false;
            }
        }
        let fingerprint = self.fingerprint ^ self.zobrist[op];
        let key = fingerprint ^ mix_state(state);
        if self.visited.contains(&key) {
            return false;
        }
        self.unlink(self.call_entry[op]);
        self.unlink(self.deadline_entry[op]);
        if self.prune_unseen
            && choice == Choice::Tried
            && self.ops[op].must_be_seen
            && !self.read_can_follow(state)
        {
            self.relink(self.deadline_entry[op]);
            self.relink(self.call_entry[op]);
            return false;
        }
        self.visited.insert(key);
        self.done[op] = true;
        self.stack.push(Frame {
            op,
            choice,
            before: self.state,
        });
        self.fingerprint = fingerprint;
        self.state = state;
        if self.ops[op].required {
            self.remaining -= 1;
        }
        if self.stack.len() > self.best.len() {
            self.best = self
                .stack
                .iter()
                .map(|frame| (frame.op, frame.choice))
                .collect();
            self.best_state = self.state;
        }
        true
    }

    /// Undoes the last [`Search::push`] and returns its frame.
    fn pop(&mut self) -> Option<Frame> {
        let frame = self.stack.pop()?;
        let op = frame.op;
        self.done[op] = false;
        self.fingerprint ^= self.zobrist[op];
        self.state = frame.before;
        if self.ops[op].required {
            self.remaining += 1;
        }
        // Dancing links: relink in the reverse order of unlinking.
        self.relink(self.deadline_entry[op]);
        self.relink(self.call_entry[op]);
        Some(frame)
    }

    /// A minimal read that observed `state`, if any.
    ///
    /// Linearizing such a read next loses no solution: in any valid continuation it can be
    /// moved to the front, since being minimal, no op left had to precede it in real time,
    /// and a read that sees the current value changes nothing for the ops it moves past. So
    /// the search takes it without trying alternatives.
    fn matching_read(&self, state: Val) -> Option<usize> {
        let mut entry = self.next[HEAD];
        while entry != HEAD && self.entry_is_call[entry] {
            let op = &self.ops[self.entry_op[entry]];
            if op.kind == Kind::Read && op.value == state {
                return Some(self.entry_op[entry]);
            }
            entry = self.next[entry];
        }
        None
    }

    /// Whether a read that observed `state` could be linearized next, once the optional
    /// writes whose deadlines come first are dropped (which changes nothing else).
    fn read_can_follow(&self, state: Val) -> bool {
        let mut entry = self.next[HEAD];
        while entry != HEAD {
            let op = &self.ops[self.entry_op[entry]];
            if self.entry_is_call[entry] {
                if op.kind == Kind::Read && op.value == state {
                    return true;
                }
            } else if op.required {
                return false;
            }
            entry = self.next[entry];
        }
        false
    }

    /// Searches until decided, past `deadline`, or after `max_steps` steps (then it reports
    /// a timeout).
    fn run(&mut self, deadline: Option<Instant>, max_steps: u64) -> SearchOutcome {
        // The minimal ops are the calls before the first deadline in the list. `entry` walks
        // them in order of call, trying each; `fresh` says the configuration was just entered.
        let mut entry = self.next[HEAD];
        let mut fresh = true;
        let mut steps = 0u64;
        loop {
            // Success once every required op is linearized. The ops left are writes with
            // unknown outcome: they never took effect, or took effect after everything else,
            // which is the same since no recorded read observes them.
            if self.remaining == 0 {
                return SearchOutcome::Linearizable;
            }
            if steps == max_steps
                || steps.is_multiple_of(STEPS_PER_CLOCK_CHECK)
                    && deadline.is_some_and(|deadline| Instant::now() >= deadline)
            {
                return SearchOutcome::Timeout;
            }
            steps += 1;

            // `Some(choice)`: a step to take with no alternative left at this configuration.
            let mut forced = None;
            if fresh {
                fresh = false;
                forced = self
                    .matching_read(self.state)
                    .map(|read| (read, Choice::MatchingRead));
            }
            if forced.is_none() && entry != HEAD && !self.entry_is_call[entry] {
                let op = self.entry_op[entry];
                if !self.ops[op].required {
                    // Every minimal op was tried; the last alternative is that this optional
                    // write never took effect (it cannot usefully take effect any later).
                    forced = Some((op, Choice::Dropped));
                }
            }

            if let Some((op, choice)) = forced {
                if self.push(op, choice) {
                    fresh = true;
                    entry = self.next[HEAD];
                    continue;
                }
                // Already explored after this step, and it failed: so does this configuration.
            } else if entry != HEAD && self.entry_is_call[entry] {
                if self.push(self.entry_op[entry], Choice::Tried) {
                    fresh = true;
                    entry = self.next[HEAD];
                } else {
                    entry = self.next[entry];
                }
                continue;
            }

            // The deadline of a required op (or, never in practice, the end of the list): it
            // had to be linearized before anything called later, and no minimal op led to a
            // solution. Backtrack to the last step that has alternatives left.
            loop {
                let Some(frame) = self.pop() else {
                    return SearchOutcome::Violation;
                };
                if frame.choice == Choice::Tried {
                    entry = self.next[self.call_entry[frame.op]];
                    break;
                }
            }
        }
    }

    /// Explains a failed search from the longest sequence of steps it found.
    fn explain(&self, values: &Values<'_>) -> String {
        let ops = self.ops;
        let unknown = ops.iter().filter(|op| op.ret.is_none()).count();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "no linearization exists for the {} operations on this key ({unknown} of them \
             writes with unknown outcome; initial value {}).",
            ops.len(),
            values.show(self.init)
        );
        if self.best.is_empty() {
            let _ = writeln!(out, "No operation can be linearized first.");
        } else {
            let _ = writeln!(
                out,
                "A longest linearizable prefix has {} operation(s) and leaves the value {}; \
                 it ends:",
                self.best.len(),
                values.show(self.best_state)
            );
            let shown = self.best.len().min(EXPLAIN_LIMIT);
            if shown < self.best.len() {
                let _ = writeln!(
                    out,
                    "  ... {} earlier operation(s)",
                    self.best.len() - shown
                );
            }
            for &(op, choice) in &self.best[self.best.len() - shown..] {
                let dropped = if choice == Choice::Dropped {
                    " (never took effect)"
                } else {
                    ""
                };
                let _ = writeln!(out, "  {}{dropped}", describe(&ops[op], values));
            }
        }

        let mut done = vec![false; ops.len()];
        for &(op, _) in &self.best {
            done[op] = true;
        }
        let blocking = (0..ops.len())
            .filter(|&op| !done[op] && ops[op].required)
            .min_by_key(|&op| (ops[op].deadline, op));
        if let Some(blocking) = blocking {
            let by = ops[blocking].deadline;
            let why = if ops[blocking].ret.is_none() {
                " (when the first read of its value returned)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "Nothing fits next: {} must take effect by t={by}{why}, and no operation \
                 called by then can come next:",
                describe(&ops[blocking], values)
            );
            let candidates = (0..ops.len()).filter(|&op| !done[op] && ops[op].call <= by);
            for op in candidates.take(EXPLAIN_LIMIT) {
                let why = if ops[op].apply(self.best_state).is_none() {
                    format!("the value is {}", values.show(self.best_state))
                } else {
                    "every continuation after it fails".to_string()
                };
                let _ = writeln!(out, "  {}: {why}", describe(&ops[op], values));
            }
        }
        out.truncate(out.trim_end().len());
        out
    }
}

/// `#index client c <op> [call t, ret t]`, with times in ns since the start of the test.
fn describe(op: &KeyOp, values: &Values<'_>) -> String {
    let what = match (op.kind, op.value) {
        (Kind::Write, ABSENT) => "delete".to_string(),
        (Kind::Write, value) => format!("write {}", values.show(value)),
        (Kind::Read, value) => format!("read -> {}", values.show(value)),
    };
    let ret = op
        .ret
        .map_or_else(|| "unknown".to_string(), |ret| ret.to_string());
    format!(
        "#{} client {} {what} [call {}, ret {ret}]",
        op.index, op.client, op.call
    )
}

fn fmt_value(value: Option<&[u8]>) -> String {
    const MAX: usize = 48;
    match value {
        None => "absent".to_string(),
        Some(bytes) if bytes.len() <= MAX => format!("\"{}\"", bytes.escape_ascii()),
        Some(bytes) => format!(
            "\"{}\"... ({} bytes)",
            bytes[..MAX].escape_ascii(),
            bytes.len()
        ),
    }
}

/// Mixes a register value into a configuration fingerprint.
fn mix_state(state: Val) -> u128 {
    let mixed = splitmix64(u64::from(state) ^ 0x5A5A_5A5A_0000_0000);
    (u128::from(mixed) << 64) | u128::from(splitmix64(mixed))
}

/// Hashes fingerprints, which are already uniformly random, by folding them.
#[derive(Default)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x100_0000_01B3);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 ^= (value as u64) ^ ((value >> 64) as u64);
    }
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_secs(10);

    fn event(client: u64, key: &str, op: Op, call: u64, ret: Option<u64>) -> Event {
        Event {
            client,
            key: key.as_bytes().to_vec(),
            op,
            call,
            ret,
        }
    }

    fn bytes(value: Option<&str>) -> Option<Vec<u8>> {
        value.map(|v| v.as_bytes().to_vec())
    }

    /// A write of `value` (`None` = delete) on key "k".
    fn write(client: u64, value: Option<&str>, call: u64, ret: Option<u64>) -> Event {
        event(
            client,
            "k",
            Op::Write {
                value: bytes(value),
            },
            call,
            ret,
        )
    }

    /// A read on key "k" that observed `value` (`None` = absent).
    fn read(client: u64, value: Option<&str>, call: u64, ret: Option<u64>) -> Event {
        event(
            client,
            "k",
            Op::Read {
                value: bytes(value),
            },
            call,
            ret,
        )
    }

    fn assert_ok(history: &[Event]) {
        assert_eq!(check(history, None, BUDGET), CheckResult::Ok);
    }

    /// Asserts a violation on key "k" and returns its explanation.
    fn assert_violation(history: &[Event]) -> String {
        match check(history, None, BUDGET) {
            CheckResult::Violation { key, detail } => {
                assert_eq!(key, b"k");
                println!("{detail}");
                detail
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn empty_history_is_ok() {
        assert_ok(&[]);
    }

    #[test]
    fn sequential_history_is_ok() {
        assert_ok(&[
            read(1, None, 0, Some(5)),
            write(1, Some("1"), 10, Some(20)),
            read(2, Some("1"), 30, Some(40)),
            write(2, Some("2"), 50, Some(60)),
            read(1, Some("2"), 70, Some(80)),
            read(3, Some("2"), 90, Some(100)),
        ]);
    }

    #[test]
    fn read_of_never_written_value_is_violation() {
        let detail = assert_violation(&[
            write(1, Some("1"), 0, Some(10)),
            read(2, Some("9"), 20, Some(30)),
        ]);
        assert!(detail.contains("#1 client 2 read -> \"9\""), "{detail}");
    }

    #[test]
    fn stale_read_is_violation() {
        let detail = assert_violation(&[
            write(1, Some("1"), 0, Some(10)),
            write(1, Some("2"), 20, Some(30)),
            read(2, Some("1"), 40, Some(50)),
        ]);
        assert!(
            detail.contains("A longest linearizable prefix has 2 operation(s)"),
            "{detail}"
        );
        assert!(detail.contains("#2 client 2 read -> \"1\""), "{detail}");
    }

    #[test]
    fn read_overlapping_concurrent_writes_may_return_either() {
        for seen in ["1", "2"] {
            assert_ok(&[
                write(1, Some("1"), 0, Some(100)),
                write(2, Some("2"), 10, Some(90)),
                read(3, Some(seen), 50, Some(150)),
            ]);
        }
    }

    #[test]
    fn new_old_inversion_is_violation() {
        // "1" is in place; the write of "2" overlaps both reads. Once a read saw "2", a later
        // read cannot see "1" again.
        assert_violation(&[
            write(1, Some("1"), 0, Some(10)),
            write(2, Some("2"), 20, Some(200)),
            read(3, Some("2"), 30, Some(40)),
            read(3, Some("1"), 50, Some(60)),
        ]);
        // Also across clients: the reads only need to be ordered in real time.
        assert_violation(&[
            write(1, Some("1"), 0, Some(10)),
            write(2, Some("2"), 20, Some(200)),
            read(3, Some("2"), 30, Some(40)),
            read(4, Some("1"), 50, Some(60)),
        ]);
    }

    #[test]
    fn both_writes_overlapping_both_reads_allow_two_then_one() {
        // Not an inversion: "2", read, "1", read is a valid order.
        assert_ok(&[
            write(1, Some("1"), 0, Some(200)),
            write(2, Some("2"), 0, Some(200)),
            read(3, Some("2"), 30, Some(40)),
            read(3, Some("1"), 50, Some(60)),
        ]);
    }

    #[test]
    fn unknown_outcome_write_later_read_is_ok() {
        assert_ok(&[
            write(1, Some("1"), 0, Some(10)),
            write(2, Some("2"), 20, None),
            read(3, Some("1"), 1_000, Some(1_010)),
            read(3, Some("2"), 5_000, Some(5_010)),
        ]);
    }

    #[test]
    fn unknown_outcome_write_never_read_is_ok() {
        assert_ok(&[
            write(1, Some("1"), 0, Some(10)),
            write(2, Some("2"), 20, None),
            read(3, Some("1"), 30, Some(40)),
            read(3, Some("1"), 50, Some(60)),
        ]);
    }

    #[test]
    fn unknown_outcome_write_cannot_take_effect_before_its_call() {
        assert_violation(&[
            read(3, Some("2"), 0, Some(10)),
            write(2, Some("2"), 20, None),
        ]);
    }

    #[test]
    fn unknown_outcome_write_takes_effect_at_most_once() {
        // Once "2" was seen, "1" is back only if some write puts it back.
        assert_violation(&[
            write(1, Some("1"), 0, Some(10)),
            write(2, Some("2"), 20, None),
            read(3, Some("2"), 30, Some(40)),
            read(3, Some("1"), 50, Some(60)),
        ]);
    }

    #[test]
    fn unknown_outcome_read_is_ignored() {
        assert_ok(&[
            write(1, Some("1"), 0, Some(10)),
            read(2, Some("garbage"), 20, None),
        ]);
    }

    #[test]
    fn delete_then_read_absent_is_ok() {
        assert_ok(&[
            write(1, Some("1"), 0, Some(10)),
            read(2, Some("1"), 20, Some(30)),
            write(1, None, 40, Some(50)),
            read(2, None, 60, Some(70)),
        ]);
    }

    #[test]
    fn read_absent_after_write_without_delete_is_violation() {
        let detail = assert_violation(&[
            write(1, Some("1"), 0, Some(10)),
            read(2, None, 20, Some(30)),
        ]);
        assert!(detail.contains("#1 client 2 read -> absent"), "{detail}");
        assert!(detail.contains("the value is \"1\""), "{detail}");
    }

    #[test]
    fn initial_value_is_respected() {
        let history = [read(1, Some("x"), 0, Some(10))];
        assert_eq!(check(&history, bytes(Some("x")), BUDGET), CheckResult::Ok);
        assert!(matches!(
            check(&history, None, BUDGET),
            CheckResult::Violation { .. }
        ));
    }

    #[test]
    fn keys_are_independent_registers() {
        let history = [
            event(
                1,
                "a",
                Op::Write {
                    value: bytes(Some("1")),
                },
                0,
                Some(10),
            ),
            event(2, "b", Op::Read { value: None }, 20, Some(30)),
            event(
                2,
                "a",
                Op::Read {
                    value: bytes(Some("1")),
                },
                20,
                Some(30),
            ),
        ];
        assert_eq!(check(&history, None, BUDGET), CheckResult::Ok);
        let mut bad = history.to_vec();
        bad.push(event(
            3,
            "b",
            Op::Read {
                value: bytes(Some("1")),
            },
            40,
            Some(50),
        ));
        assert!(matches!(
            check(&bad, None, BUDGET),
            CheckResult::Violation { key, .. } if key == b"b"
        ));
    }

    #[test]
    fn zero_budget_times_out() {
        let history = [
            write(1, Some("1"), 0, Some(10)),
            read(2, Some("1"), 20, Some(30)),
        ];
        assert_eq!(check(&history, None, Duration::ZERO), CheckResult::Timeout);
    }

    #[test]
    fn recorder_collects_events_from_threads() {
        let recorder = Recorder::start();
        let threads: Vec<_> = (0..4)
            .map(|client| {
                let recorder = recorder.clone();
                std::thread::spawn(move || {
                    let call = recorder.now();
                    let value = Some(client.to_string().into_bytes());
                    let ret = Some(recorder.now());
                    recorder.record(Event {
                        client,
                        key: b"k".to_vec(),
                        op: Op::Write { value },
                        call,
                        ret,
                    });
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let events = recorder.events();
        assert_eq!(events.len(), 4);
        assert!(events.iter().all(|e| e.ret.unwrap() >= e.call));
        assert_eq!(check(&events, None, BUDGET), CheckResult::Ok);
    }

    /// xorshift64: tiny and deterministic.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Rng(splitmix64(seed) | 1)
        }

        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The seed of the randomized tests: `LINCHECK_SEED`, or a fixed default. Printed, so a
    /// failure can be replayed.
    fn seed() -> u64 {
        let seed = std::env::var("LINCHECK_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or(0x0DD5_EED5);
        println!("LINCHECK_SEED={seed}");
        seed
    }

    /// Simulates `clients` sequential clients on a real register per key: each op takes
    /// effect at a random instant within [call, ret]. 1 in 20 ops has an unknown outcome: a
    /// read is then lost, and a write takes effect at a random later instant or never, and
    /// is retried with the same value.
    fn linearizable_history(seed: u64, clients: u64, ops: u64, keys: &[&str]) -> Vec<Event> {
        let mut rng = Rng::new(seed);
        let mut history = Vec::new();
        // When each op takes effect, by index in `history`.
        let mut effect: Vec<Option<u64>> = Vec::new();
        for client in 0..clients {
            let mut now = rng.below(100);
            let mut retry = None;
            for i in 0..ops {
                let (call, duration) = (now, 1 + rng.below(400));
                let (key, op) = match retry.take() {
                    Some((key, value)) => (key, Op::Write { value }),
                    None if rng.below(2) == 0 => {
                        let value = (rng.below(8) != 0).then(|| format!("c{client}-{i}"));
                        let key = keys[rng.below(keys.len() as u64) as usize];
                        (
                            key,
                            Op::Write {
                                value: value.map(String::into_bytes),
                            },
                        )
                    }
                    None => (
                        keys[rng.below(keys.len() as u64) as usize],
                        Op::Read { value: None },
                    ),
                };
                let (ret, at) = if rng.below(20) == 0 {
                    if let Op::Write { value } = &op {
                        retry = Some((key, value.clone()));
                    }
                    let at = matches!(op, Op::Write { .. }) && rng.below(2) == 0;
                    (None, at.then(|| call + rng.below(2_000)))
                } else {
                    (Some(call + duration), Some(call + rng.below(duration + 1)))
                };
                history.push(event(client, key, op, call, ret));
                effect.push(at);
                now = call + duration + rng.below(50);
            }
        }
        let mut order: Vec<usize> = (0..history.len())
            .filter(|&i| effect[i].is_some())
            .collect();
        order.sort_by_key(|&i| (effect[i], i));
        let mut registers: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        for i in order {
            let event = &mut history[i];
            let register = registers.entry(event.key.clone()).or_default();
            match &mut event.op {
                Op::Write { value } => *register = value.clone(),
                Op::Read { value } => *value = register.clone(),
            }
        }
        for event in &mut history {
            if let (Op::Read { value }, None) = (&mut event.op, event.ret) {
                *value = Some(b"lost".to_vec()); // never delivered, so never checked
            }
        }
        history
    }

    /// Indices of the reads with a known outcome.
    fn completed_reads(history: &[Event]) -> Vec<usize> {
        (0..history.len())
            .filter(|&i| matches!(history[i].op, Op::Read { .. }) && history[i].ret.is_some())
            .collect()
    }

    /// Makes the read `victim` observe a value that only completed writes called after the
    /// read returned wrote, which only the search (not the fast path) can find to be
    /// impossible. Returns false if there is no such value.
    fn read_from_the_future(history: &mut [Event], victim: usize) -> bool {
        let (key, ret) = (&history[victim].key, history[victim].ret.unwrap());
        // Per value: the earliest call of a write of it, and whether all those completed.
        let mut writes: HashMap<&[u8], (u64, bool)> = HashMap::new();
        for w in history.iter().filter(|w| w.key == *key) {
            if let Op::Write { value: Some(value) } = &w.op {
                let first = writes.entry(value).or_insert((w.call, true));
                *first = (first.0.min(w.call), first.1 && w.ret.is_some());
            }
        }
        let future = writes
            .into_iter()
            .filter(|&(_, (call, completed))| call > ret && completed)
            .map(|(value, (call, _))| (call, value.to_vec()))
            .min();
        let Some((_, value)) = future else {
            return false;
        };
        history[victim].op = Op::Read { value: Some(value) };
        true
    }

    fn assert_violation_on(history: &[Event], key: &[u8], seed: u64) {
        let started = Instant::now();
        match check(history, None, BUDGET) {
            CheckResult::Violation { key: found, detail } => {
                assert_eq!(found, key, "seed {seed}: {detail}");
                println!("found in {:?}:\n{detail}", started.elapsed());
            }
            other => panic!("seed {seed}: expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn randomized_histories() {
        let seed = seed();
        let mut history = linearizable_history(seed, 5, 200, &["a", "b", "c"]);
        let started = Instant::now();
        assert_eq!(
            check(&history, None, BUDGET),
            CheckResult::Ok,
            "seed {seed}"
        );
        println!("{} ops checked in {:?}", history.len(), started.elapsed());

        let mut rng = Rng::new(seed ^ 0xC0FF_EE00);
        let reads = completed_reads(&history);

        // A read of a value never written.
        let mut corrupt = history.clone();
        let victim = reads[rng.below(reads.len() as u64) as usize];
        corrupt[victim].op = Op::Read {
            value: Some(b"never-written".to_vec()),
        };
        assert_violation_on(&corrupt, &corrupt[victim].key, seed);

        // A read of a value from the future, somewhere in the middle.
        let victim = loop {
            let victim = reads[rng.below(reads.len() as u64) as usize];
            if read_from_the_future(&mut history, victim) {
                break victim;
            }
        };
        assert_violation_on(&history, &history[victim].key, seed);
    }

    #[test]
    fn randomized_histories_many_seeds() {
        let seed = seed();
        for round in 0..50 {
            let seed = seed.wrapping_add(round);
            let history = linearizable_history(seed, 4, 60, &["a", "b"]);
            assert_eq!(
                check(&history, None, BUDGET),
                CheckResult::Ok,
                "seed {seed}"
            );
        }
    }

    #[test]
    fn randomized_concurrent_single_key() {
        let seed = seed();
        let mut history = linearizable_history(seed, 8, 250, &["k"]);
        let started = Instant::now();
        assert_eq!(
            check(&history, None, BUDGET),
            CheckResult::Ok,
            "seed {seed}"
        );
        println!("{} ops checked in {:?}", history.len(), started.elapsed());
        let reads = completed_reads(&history);
        let corrupted = reads[reads.len() / 2..]
            .iter()
            .any(|&victim| read_from_the_future(&mut history, victim));
        assert!(corrupted, "seed {seed}: no read has writes after it");
        assert_violation_on(&history, b"k", seed);
    }

    /// Whether `history` (one key, a handful of ops) is linearizable, by trying every order.
    fn brute_force(history: &[Event], initial: &Option<Vec<u8>>) -> bool {
        fn extend(ops: &[&Event], done: &mut [bool], state: &Option<Vec<u8>>) -> bool {
            if (0..ops.len()).all(|i| done[i] || ops[i].ret.is_none()) {
                return true; // writes with unknown outcome left out never took effect
            }
            for i in 0..ops.len() {
                let blocked = (0..ops.len())
                    .any(|j| !done[j] && ops[j].ret.is_some_and(|ret| ret < ops[i].call));
                if done[i] || blocked {
                    continue;
                }
                let next = match &ops[i].op {
                    Op::Write { value } => value.clone(),
                    Op::Read { value } if value == state => value.clone(),
                    Op::Read { .. } => continue,
                };
                done[i] = true;
                if extend(ops, done, &next) {
                    return true;
                }
                done[i] = false;
            }
            false
        }
        let ops: Vec<&Event> = history
            .iter()
            .filter(|e| e.ret.is_some() || matches!(e.op, Op::Write { .. }))
            .collect();
        extend(&ops, &mut vec![false; ops.len()], initial)
    }

    /// One line per event, for failure messages.
    fn compact(history: &[Event]) -> String {
        let show = |value: &Option<Vec<u8>>| match value {
            Some(value) => String::from_utf8_lossy(value).into_owned(),
            None => "-".to_string(),
        };
        let lines: Vec<String> = history
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let op = match &e.op {
                    Op::Write { value } => format!("write {}", show(value)),
                    Op::Read { value } => format!("read {}", show(value)),
                };
                format!("#{i} client {} {op} [{}, {:?}]", e.client, e.call, e.ret)
            })
            .collect();
        lines.join("\n")
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        let seed = seed();
        let mut rng = Rng::new(seed);
        let (mut ok, mut violations) = (0, 0);
        for round in 0..20_000 {
            let values = [None, Some("a"), Some("b")];
            let value = |rng: &mut Rng| bytes(values[rng.below(3) as usize]);
            let history: Vec<Event> = (0..1 + rng.below(7))
                .map(|_| {
                    let client = rng.below(3);
                    let op = if rng.below(2) == 0 {
                        Op::Write {
                            value: value(&mut rng),
                        }
                    } else {
                        Op::Read {
                            value: value(&mut rng),
                        }
                    };
                    let call = rng.below(20);
                    let ret = (rng.below(6) != 0).then(|| call + rng.below(10));
                    event(client, "k", op, call, ret)
                })
                .collect();
            let initial = value(&mut rng);
            let expected = brute_force(&history, &initial);
            let result = check(&history, initial.clone(), BUDGET);
            assert_eq!(
                result == CheckResult::Ok,
                expected,
                "seed {seed} round {round}: initial {initial:?}\n{}\n{result:?}",
                compact(&history)
            );
            if expected {
                ok += 1;
            } else {
                violations += 1;
            }
        }
        println!("{ok} linearizable, {violations} not");
    }
}
