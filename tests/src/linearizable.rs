//! A linearizability checker for histories of operations on a register map (name → value): the
//! model of kiln's builders and contexts as concurrent clients see them through the CLI.
//!
//! Clients record each operation's invocation and completion in a [`History`]; [`check`] then
//! searches for a sequential order that respects real time (an operation that completed before
//! another was invoked comes first) and in which every answer is the model's answer (Wing and
//! Gong's search, with Lowe's memo of visited (done set, state) pairs). An operation whose
//! client gave up (a timeout, a lost connection) is *unknown*: it may have taken effect at any
//! moment after its invocation, or never. Bounded: at most 128 operations per history.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// Succeeds when `name` is absent, and sets it.
    Create { name: String, value: String },
    /// Succeeds when `name` is present, and sets it.
    Update { name: String, value: String },
    /// Succeeds when `name` is present, and removes it.
    Remove { name: String },
    /// Answers `name`'s value, or none.
    Read { name: String },
}

/// What it was answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Answer {
    /// A create, update or remove took effect.
    Done,
    /// A create found the name taken, an update or remove found it missing.
    Refused,
    /// A read's answer.
    Value(Option<String>),
    /// No answer: the operation may or may not have taken effect.
    Unknown,
}

/// One operation: when it was invoked and completed (nanoseconds since the history began).
#[derive(Clone, Debug)]
pub struct Op {
    pub client: usize,
    pub call: Call,
    pub answer: Answer,
    pub invoked: u64,
    /// `u64::MAX` while pending, and for an unknown answer (it may take effect any time later).
    pub completed: u64,
}

/// The model's state: name → value.
pub type State = BTreeMap<String, String>;

/// The model: applies `call` to `state`, returning the answer it gives.
pub fn apply(state: &mut State, call: &Call) -> Answer {
    match call {
        Call::Create { name, value } if !state.contains_key(name) => {
            state.insert(name.clone(), value.clone());
            Answer::Done
        }
        Call::Update { name, value } if state.contains_key(name) => {
            state.insert(name.clone(), value.clone());
            Answer::Done
        }
        Call::Remove { name } if state.remove(name).is_some() => Answer::Done,
        Call::Create { .. } | Call::Update { .. } | Call::Remove { .. } => Answer::Refused,
        Call::Read { name } => Answer::Value(state.get(name).cloned()),
    }
}

/// A history being recorded by concurrent clients.
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Default for History {
    fn default() -> Self {
        History { start: Instant::now(), ops: Mutex::new(Vec::new()) }
    }
}

impl History {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Records the invocation; returns the operation's handle for [`History::complete`].
    pub fn invoke(&self, client: usize, call: Call) -> usize {
        let invoked = self.now();
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        ops.push(Op { client, call, answer: Answer::Unknown, invoked, completed: u64::MAX });
        ops.len() - 1
    }

    /// Records the answer (an [`Answer::Unknown`] leaves the operation open-ended).
    pub fn complete(&self, op: usize, answer: Answer) {
        let completed = if answer == Answer::Unknown { u64::MAX } else { self.now() };
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        ops[op].answer = answer;
        ops[op].completed = completed;
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Why a history is not linearizable (or could not be checked).
#[derive(Debug, PartialEq, Eq)]
pub enum CheckError {
    TooLong(usize),
    /// No order explains the answers; `longest` is the longest explained prefix found.
    NotLinearizable {
        longest: Vec<usize>,
    },
}

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckError::TooLong(n) => write!(f, "a history of {n} operations is longer than the checker's 128"),
            CheckError::NotLinearizable { longest } => {
                write!(f, "not linearizable: the longest explained order is {longest:?}")
            }
        }
    }
}

/// Searches for a linearization of `ops`, starting from `initial`. Returns the order found
/// (indices into `ops`; unknown operations that never took effect are left out).
pub fn check(ops: &[Op], initial: &State) -> Result<Vec<usize>, CheckError> {
    if ops.len() > 128 {
        return Err(CheckError::TooLong(ops.len()));
    }
    let mut search = Search { ops, seen: HashSet::new(), order: Vec::new(), longest: Vec::new() };
    if search.step(0, initial) {
        Ok(search.order)
    } else {
        Err(CheckError::NotLinearizable { longest: search.longest })
    }
}

struct Search<'a> {
    ops: &'a [Op],
    seen: HashSet<(u128, State)>,
    order: Vec<usize>,
    longest: Vec<usize>,
}

impl Search<'_> {
    /// Depth-first: `done` is the set of operations already placed, `state` the model after them.
    fn step(&mut self, done: u128, state: &State) -> bool {
        let pending = |i: usize| done & (1u128 << i) == 0;
        // Every answered operation placed: the unknown rest never took effect.
        if (0..self.ops.len()).all(|i| !pending(i) || self.ops[i].answer == Answer::Unknown) {
            return true;
        }
        if !self.seen.insert((done, state.clone())) {
            return false;
        }
        if self.order.len() > self.longest.len() {
            self.longest = self.order.clone();
        }
        // Only an operation invoked before every pending one completed can come next.
        let horizon = (0..self.ops.len()).filter(|&i| pending(i)).map(|i| self.ops[i].completed).min().unwrap_or(u64::MAX);
        for i in (0..self.ops.len()).filter(|&i| pending(i)) {
            let op = &self.ops[i];
            if op.invoked > horizon {
                continue;
            }
            let mut next = state.clone();
            let answer = apply(&mut next, &op.call);
            if op.answer != Answer::Unknown && op.answer != answer {
                continue;
            }
            self.order.push(i);
            if self.step(done | (1u128 << i), &next) {
                return true;
            }
            self.order.pop();
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(n: &str, v: &str) -> Call {
        Call::Create { name: n.into(), value: v.into() }
    }
    fn remove(n: &str) -> Call {
        Call::Remove { name: n.into() }
    }
    fn read(n: &str) -> Call {
        Call::Read { name: n.into() }
    }
    fn op(client: usize, call: Call, answer: Answer, invoked: u64, completed: u64) -> Op {
        let completed = if answer == Answer::Unknown { u64::MAX } else { completed };
        Op { client, call, answer, invoked, completed }
    }
    fn val(v: &str) -> Answer {
        Answer::Value(Some(v.into()))
    }

    #[test]
    fn a_sequential_history_is_its_own_order() {
        let h = vec![
            op(0, create("b", "x"), Answer::Done, 0, 1),
            op(0, read("b"), val("x"), 2, 3),
            op(0, create("b", "y"), Answer::Refused, 4, 5),
            op(0, remove("b"), Answer::Done, 6, 7),
            op(0, read("b"), Answer::Value(None), 8, 9),
            op(0, remove("b"), Answer::Refused, 10, 11),
        ];
        assert_eq!(check(&h, &State::new()), Ok(vec![0, 1, 2, 3, 4, 5]));
    }

    #[test]
    fn overlapping_operations_may_take_effect_in_either_order() {
        // The read overlaps the create: it may see the value or not; the second read, after
        // the create completed, must see it.
        let h = vec![
            op(0, create("b", "x"), Answer::Done, 0, 10),
            op(1, read("b"), Answer::Value(None), 1, 9),
            op(1, read("b"), val("x"), 11, 12),
        ];
        assert!(check(&h, &State::new()).is_ok());
        // Two overlapping creates of one name: exactly one wins, and a read shows the winner.
        let h = vec![
            op(0, create("b", "x"), Answer::Refused, 0, 10),
            op(1, create("b", "y"), Answer::Done, 2, 8),
            op(2, read("b"), val("y"), 11, 12),
        ];
        assert!(check(&h, &State::new()).is_ok());
    }

    #[test]
    fn a_stale_read_is_caught() {
        // The remove completed before the read was invoked, yet the read sees the value.
        let h = vec![op(0, create("b", "x"), Answer::Done, 0, 1), op(0, remove("b"), Answer::Done, 2, 3), op(1, read("b"), val("x"), 4, 5)];
        assert!(matches!(check(&h, &State::new()), Err(CheckError::NotLinearizable { .. })));
    }

    #[test]
    fn two_winning_creates_are_caught() {
        let h = vec![op(0, create("b", "x"), Answer::Done, 0, 10), op(1, create("b", "y"), Answer::Done, 1, 9)];
        assert!(check(&h, &State::new()).is_err());
        // And a lost acknowledged create: done, then never seen.
        let h = vec![op(0, create("b", "x"), Answer::Done, 0, 1), op(1, read("b"), Answer::Value(None), 2, 3)];
        assert!(check(&h, &State::new()).is_err());
    }

    #[test]
    fn an_unknown_operation_may_or_may_not_have_taken_effect() {
        let seen = vec![op(0, create("b", "x"), Answer::Unknown, 0, 0), op(1, read("b"), val("x"), 100, 101)];
        assert!(check(&seen, &State::new()).is_ok());
        let unseen = vec![op(0, create("b", "x"), Answer::Unknown, 0, 0), op(1, read("b"), Answer::Value(None), 100, 101)];
        assert!(check(&unseen, &State::new()).is_ok());
        // But once seen, it cannot be unseen without a remove.
        let flicker = vec![
            op(0, create("b", "x"), Answer::Unknown, 0, 0),
            op(1, read("b"), val("x"), 100, 101),
            op(1, read("b"), Answer::Value(None), 102, 103),
        ];
        assert!(check(&flicker, &State::new()).is_err());
        // Nor can it take effect before it was invoked.
        let early = vec![op(1, read("b"), val("x"), 0, 1), op(0, create("b", "x"), Answer::Unknown, 5, 0)];
        assert!(check(&early, &State::new()).is_err());
    }

    #[test]
    fn the_initial_state_counts_and_updates_need_a_present_name() {
        let mut init = State::new();
        init.insert("a1".into(), "ctx".into());
        let h = vec![
            op(0, Call::Update { name: "a1".into(), value: "v2".into() }, Answer::Done, 0, 1),
            op(0, Call::Update { name: "zz".into(), value: "v".into() }, Answer::Refused, 2, 3),
            op(1, read("a1"), val("v2"), 4, 5),
        ];
        assert!(check(&h, &init).is_ok());
        assert!(check(&h, &State::new()).is_err());
    }

    #[test]
    fn recording_keeps_real_time_order() {
        let h = History::default();
        let a = h.invoke(0, create("b", "x"));
        h.complete(a, Answer::Done);
        let b = h.invoke(1, read("b"));
        h.complete(b, Answer::Value(None));
        let ops = h.ops();
        assert!(ops[0].completed <= ops[1].invoked);
        assert!(check(&ops, &State::new()).is_err(), "the read came after the create was acknowledged");
    }

    #[test]
    fn a_few_dozen_concurrent_operations_check_quickly() {
        // 40 operations by 4 clients on 3 names, all overlapping in pairs: found fast, and a
        // corrupted copy is refused.
        let mut h = Vec::new();
        let mut state = State::new();
        for k in 0..40u64 {
            let name = format!("n{}", k % 3);
            let call = match k % 4 {
                0 => create(&name, &format!("v{k}")),
                1 => read(&name),
                2 => remove(&name),
                _ => read(&name),
            };
            let answer = apply(&mut state, &call);
            h.push(op((k % 4) as usize, call, answer, k * 10, k * 10 + 15));
        }
        let started = Instant::now();
        assert!(check(&h, &State::new()).is_ok());
        let bad_at = h.iter().position(|o| matches!(o.answer, Answer::Value(Some(_)))).expect("a read that saw a value");
        h[bad_at].answer = Answer::Value(Some("never-written".into()));
        assert!(check(&h, &State::new()).is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    }
}
