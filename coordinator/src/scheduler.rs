//! The scheduler: which agent runs which slice. Pure: pending slices, agent snapshots and the
//! expected durations in; assignments with their reasons out. No I/O and no clock, so it is
//! tested with thousands of generated cases (see the property tests below).
//!
//! Rules (DESIGN.md, "Scheduling"):
//! - strict platform matching: a slice only goes to an agent that can execute its platform;
//! - native first: an emulated agent is used only when no native agent of the builder can take
//!   the slice before the emulated run would have finished (emulation slowdown per architecture,
//!   measured from finished slices, 5x by default);
//! - among equals, the agent holding the most step cache records of the build, then the least
//!   loaded;
//! - slot limits per agent; fair share between tenants (the tenant with the fewest running
//!   slices goes first); a builder restricts the candidate agents;
//! - a slice whose platform no candidate can run fails at once, with the reason.

use kiln_shared::Platform;
use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

/// What the scheduler knows about an agent. Its name and platforms may be borrowed from the
/// farm's state: the leader makes one per agent for every submit.
#[derive(Clone, Debug)]
pub struct AgentSnapshot<'a> {
    pub name: Cow<'a, str>,
    pub native: Cow<'a, [Platform]>,
    pub emulated: Cow<'a, [Platform]>,
    pub slots: u32,
    pub running: u32,
    /// Step cache records this agent holds, per affinity key (see [`PendingSlice::affinity`]).
    pub cache_records: HashMap<u64, u32>,
}

impl AgentSnapshot<'_> {
    /// The snapshot with its own copies, to outlive the state it was read from.
    pub fn into_owned(self) -> AgentSnapshot<'static> {
        AgentSnapshot {
            name: Cow::Owned(self.name.into_owned()),
            native: Cow::Owned(self.native.into_owned()),
            emulated: Cow::Owned(self.emulated.into_owned()),
            slots: self.slots,
            running: self.running,
            cache_records: self.cache_records,
        }
    }
}

#[derive(Clone, Debug)]
pub struct PendingSlice {
    /// The caller's handle for the slice, opaque here (the leader's plan numbers its pending
    /// list); assignments and decisions name the slice by it.
    pub id: u64,
    /// The key of the agents' cache records that would serve this slice
    /// ([`AgentSnapshot::cache_records`]); the caller's choice (the leader uses the slice's id:
    /// records are per platform).
    pub affinity: u64,
    pub tenant: String,
    pub platform: Platform,
    /// Order of arrival (smaller is older).
    pub queued_seq: u64,
    /// Agents the build's builder allows (None: every agent).
    pub candidates: Option<Vec<String>>,
    /// Expected duration of the slice on native hardware.
    pub expected_native_ms: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    pub slice: u64,
    pub agent: String,
    pub emulated: bool,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decisions {
    pub assignments: Vec<Assignment>,
    /// Slices no candidate agent can ever run, with the reason; their builds fail at once.
    pub impossible: Vec<(u64, String)>,
    /// Slices that wait for a slot (their reason says for what).
    pub waiting: Vec<(u64, String)>,
}

/// How much of the farm a tenant uses: slices running now, and slices assigned recently
/// (decayed by the caller). The tenant using least goes first.
#[derive(Clone, Copy, Debug, Default)]
pub struct TenantUsage {
    pub running: u32,
    pub recent: u64,
}

#[derive(Clone, Debug)]
pub struct Params {
    /// Emulation slowdown per architecture (measured); `default_slowdown` otherwise.
    pub slowdown: HashMap<String, f64>,
    pub default_slowdown: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params { slowdown: HashMap::new(), default_slowdown: 5.0 }
    }
}

/// Whether an agent running `list` can run `p` (a variant-less side matches any variant).
pub fn runs(list: &[Platform], p: &Platform) -> bool {
    list.iter()
        .any(|a| a.os() == p.os() && a.arch() == p.arch() && (p.variant().is_none() || a.variant().is_none() || a.variant() == p.variant()))
}

/// Per platform: the agents that run it natively and under emulation, and their free slots.
struct Pool {
    natives: Vec<usize>,
    emulators: Vec<usize>,
    /// Per agent: 1 native, 2 emulated, 0 neither.
    member: Vec<u8>,
    native_free: u32,
    emulated_free: u32,
    /// Slices already running on the native agents.
    native_running: u32,
}

struct AgentState<'a> {
    snap: &'a AgentSnapshot<'a>,
    free: u32,
    load: u32,
}

/// Decides assignments for `pending` on `agents`, given each tenant's usage.
pub fn schedule(
    pending: &[PendingSlice],
    agents: &[AgentSnapshot<'_>],
    usage: &HashMap<String, TenantUsage>,
    params: &Params,
) -> Decisions {
    let mut state: Vec<AgentState> =
        agents.iter().map(|a| AgentState { snap: a, free: a.slots.saturating_sub(a.running), load: a.running }).collect();
    let mut out = Decisions::default();

    // Native and emulated capacity per platform (all candidates, for the wait estimate).
    let mut native_slots: HashMap<&Platform, u32> = HashMap::new();
    for s in pending {
        native_slots
            .entry(&s.platform)
            .or_insert_with(|| agents.iter().filter(|a| runs(&a.native, &s.platform)).map(|a| a.slots.max(1)).sum());
    }

    // Fair share: per tenant, its slices oldest first; the tenant with the fewest running
    // slices (counting what this round assigns) goes next.
    let mut queues: BTreeMap<&str, VecDeque<&PendingSlice>> = BTreeMap::new();
    let mut sorted: Vec<&PendingSlice> = pending.iter().collect();
    sorted.sort_by_key(|s| s.queued_seq);
    for s in sorted {
        queues.entry(s.tenant.as_str()).or_default().push_back(s);
    }
    let use_of = |t: &str| usage.get(t).copied().unwrap_or_default();
    let mut heap: BinaryHeap<Reverse<(u32, u64, &str)>> =
        queues.keys().map(|t| Reverse((use_of(t).running, use_of(t).recent, *t))).collect();
    // Slices of one platform that are queued ahead for native slots, for the wait estimate.
    let mut native_queue: HashMap<&Platform, u32> = HashMap::new();

    let mut pools: HashMap<&Platform, Pool> = HashMap::new();
    for s in pending {
        pools.entry(&s.platform).or_insert_with(|| {
            let natives: Vec<usize> = (0..agents.len()).filter(|i| runs(&agents[*i].native, &s.platform)).collect();
            let emulators: Vec<usize> =
                (0..agents.len()).filter(|i| !runs(&agents[*i].native, &s.platform) && runs(&agents[*i].emulated, &s.platform)).collect();
            let native_free = natives.iter().map(|i| state[*i].free).sum();
            let emulated_free = emulators.iter().map(|i| state[*i].free).sum();
            let mut member = vec![0u8; agents.len()];
            natives.iter().for_each(|i| member[*i] = 1);
            emulators.iter().for_each(|i| member[*i] = 2);
            let native_running = natives.iter().map(|i| agents[*i].running).sum();
            Pool { natives, emulators, member, native_free, emulated_free, native_running }
        });
    }

    let mut cache_by_key: HashMap<u64, Vec<(usize, u32)>> = HashMap::new();
    for (i, a) in agents.iter().enumerate() {
        for (key, records) in &a.cache_records {
            if *records > 0 {
                cache_by_key.entry(*key).or_default().push((i, *records));
            }
        }
    }

    while let Some(Reverse((count, recent, tenant))) = heap.pop() {
        let Some(queue) = queues.get_mut(tenant) else { continue };
        let Some(slice) = queue.pop_front() else { continue };
        let Some(pool) = pools.get(&slice.platform) else { continue };
        let allowed = |i: usize| slice.candidates.as_ref().is_none_or(|c| c.iter().any(|n| n == &agents[i].name));
        let any_native = pool.natives.iter().any(|i| allowed(*i));
        let any_emulator = pool.emulators.iter().any(|i| allowed(*i));
        if !any_native && !any_emulator {
            out.impossible.push((
                slice.id,
                format!(
                    "no agent{} can run {} (natively or under emulation)",
                    if slice.candidates.is_some() { " of the builder" } else { "" },
                    slice.platform
                ),
            ));
            heap.push(Reverse((count, recent, tenant)));
            continue;
        }
        // Most cache of this build first, then the lowest load per slot; ties keep the first.
        // Agents holding records of the build are few: look at them before scanning for load.
        let best = |list: &[usize], kind: u8, pool: &Pool, state: &[AgentState]| -> Option<usize> {
            let load = |i: usize| (u64::from(state[i].load) * 1000) / u64::from(state[i].snap.slots.max(1));
            let mut best: Option<(usize, u32, u64)> = None;
            for &(i, cache) in cache_by_key.get(&slice.affinity).map(Vec::as_slice).unwrap_or(&[]) {
                if pool.member[i] == kind
                    && state[i].free > 0
                    && allowed(i)
                    && best.is_none_or(|(_, c, l)| cache > c || (cache == c && load(i) < l))
                {
                    best = Some((i, cache, load(i)));
                }
            }
            if best.is_none() {
                for &i in list {
                    if state[i].free > 0 && allowed(i) && best.is_none_or(|(_, _, l)| load(i) < l) {
                        best = Some((i, 0, load(i)));
                    }
                }
            }
            best.map(|b| b.0)
        };
        let mut assigned = None;
        if pool.native_free > 0 {
            if let Some(i) = best(&pool.natives, 1, pool, &state) {
                let cache = state[i].snap.cache_records.get(&slice.affinity).copied().unwrap_or(0);
                assigned =
                    Some((i, false, format!("native {} agent with a free slot ({cache} cache records of this build)", slice.platform)));
            }
        }
        if assigned.is_none() && pool.emulated_free > 0 {
            if let Some(i) = best(&pool.emulators, 2, pool, &state) {
                let slow = params.slowdown.get(slice.platform.arch()).copied().unwrap_or(params.default_slowdown);
                if !any_native {
                    assigned = Some((i, true, format!("no native {} agent; emulated ({slow}x)", slice.platform)));
                } else {
                    // Waiting for a native slot: the work ahead spread over the native slots.
                    let slots = native_slots.get(&slice.platform).copied().unwrap_or(0);
                    let ahead = native_queue.get(&slice.platform).copied().unwrap_or(0) + pool.native_running;
                    let wait_ms = slice.expected_native_ms as f64 * f64::from(ahead) / f64::from(slots.max(1));
                    if wait_ms + slice.expected_native_ms as f64 > slice.expected_native_ms as f64 * slow {
                        assigned = Some((
                            i,
                            true,
                            format!("native {} agents busy (~{:.0} ms wait); emulation ({slow}x) finishes sooner", slice.platform, wait_ms),
                        ));
                    }
                }
            }
        }
        match assigned {
            Some((i, emulated, reason)) => {
                state[i].free -= 1;
                state[i].load += 1;
                // The agent's slot is gone from every platform pool it serves.
                for pool in pools.values_mut() {
                    match pool.member[i] {
                        1 => pool.native_free -= 1,
                        2 => pool.emulated_free -= 1,
                        _ => {}
                    }
                }
                out.assignments.push(Assignment { slice: slice.id, agent: agents[i].name.to_string(), emulated, reason });
                heap.push(Reverse((count + 1, recent, tenant)));
            }
            None => {
                *native_queue.entry(&slice.platform).or_insert(0) += 1;
                out.waiting.push((slice.id, waiting_reason(slice, agents, &state, pool, &allowed, params)));
                heap.push(Reverse((count, recent, tenant)));
            }
        }
    }
    out
}

/// Why `slice` waits: the agents that could run it are busy (natively first), and which of
/// them holds most of its cache.
fn waiting_reason(
    slice: &PendingSlice,
    agents: &[AgentSnapshot<'_>],
    state: &[AgentState],
    pool: &Pool,
    allowed: &dyn Fn(usize) -> bool,
    params: &Params,
) -> String {
    let tally = |list: &[usize]| {
        let list: Vec<usize> = list.iter().copied().filter(|&i| allowed(i)).collect();
        let used: u32 = list.iter().map(|&i| state[i].load.min(agents[i].slots)).sum();
        let slots: u32 = list.iter().map(|&i| agents[i].slots).sum();
        (list, used, slots)
    };
    let plural = |n: usize| if n == 1 { "the 1 agent that runs".to_string() } else { format!("all {n} agents that run") };
    let (natives, used, slots) = tally(&pool.natives);
    let mut reason = if !natives.is_empty() {
        let mut r = format!("{} {} natively {} busy ({used}/{slots} slots)", plural(natives.len()), slice.platform, is_are(natives.len()));
        let (emulators, _, _) = tally(&pool.emulators);
        if !emulators.is_empty() && pool.emulated_free > 0 {
            let slow = params.slowdown.get(slice.platform.arch()).copied().unwrap_or(params.default_slowdown);
            r.push_str(&format!("; waiting is faster than emulation ({slow}x)"));
        }
        r
    } else {
        let (emulators, used, slots) = tally(&pool.emulators);
        format!("{} {} under emulation {} busy ({used}/{slots} slots)", plural(emulators.len()), slice.platform, is_are(emulators.len()))
    };
    let holder = agents
        .iter()
        .enumerate()
        .filter(|(i, _)| allowed(*i) && pool.member[*i] != 0)
        .filter_map(|(_, a)| a.cache_records.get(&slice.affinity).filter(|n| **n > 0).map(|n| (a, *n)))
        .max_by_key(|(a, n)| (*n, Reverse(a.name.clone())));
    if let Some((a, n)) = holder {
        reason.push_str(&format!("; waiting for agent {} holding {n} cached steps", a.name));
    }
    reason
}

fn is_are(n: usize) -> &'static str {
    if n == 1 {
        "is"
    } else {
        "are"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    fn agent(name: &str, native: &[&str], emulated: &[&str], slots: u32, running: u32) -> AgentSnapshot<'static> {
        AgentSnapshot {
            name: name.to_string().into(),
            native: native.iter().map(|s| p(s)).collect::<Vec<_>>().into(),
            emulated: emulated.iter().map(|s| p(s)).collect::<Vec<_>>().into(),
            slots,
            running,
            cache_records: HashMap::new(),
        }
    }

    fn slice(id: u64, tenant: &str, platform: &str) -> PendingSlice {
        PendingSlice {
            id,
            affinity: 1,
            tenant: tenant.into(),
            platform: p(platform),
            queued_seq: id,
            candidates: None,
            expected_native_ms: 10_000,
        }
    }

    #[test]
    fn native_first_then_emulation_only_when_it_is_faster() {
        let agents = vec![agent("x86", &["linux/amd64"], &["linux/arm64"], 2, 0), agent("arm", &["linux/arm64"], &[], 1, 0)];
        let d = schedule(&[slice(1, "t", "linux/arm64"), slice(2, "t", "linux/amd64")], &agents, &HashMap::new(), &Params::default());
        assert_eq!(d.assignments.len(), 2);
        assert_eq!(d.assignments.iter().find(|a| a.slice == 1).unwrap().agent, "arm");
        // The arm agent is busy with one slice: a second arm64 slice waits one slice (10 s)
        // rather than running 5x slower (50 s) under emulation.
        let busy = vec![agent("x86", &["linux/amd64"], &["linux/arm64"], 2, 0), agent("arm", &["linux/arm64"], &[], 1, 1)];
        let d = schedule(&[slice(3, "t", "linux/arm64")], &busy, &HashMap::new(), &Params::default());
        assert!(d.assignments.is_empty());
        assert_eq!(d.waiting.len(), 1);
        // With a long native queue, emulation finishes sooner.
        let queue: Vec<PendingSlice> = (10..20).map(|i| slice(i, "t", "linux/arm64")).collect();
        let d = schedule(&queue, &busy, &HashMap::new(), &Params::default());
        assert!(d.assignments.iter().any(|a| a.emulated && a.agent == "x86"), "{d:?}");
    }

    #[test]
    fn impossible_platforms_fail_at_once() {
        let agents = vec![agent("x86", &["linux/amd64"], &[], 2, 0)];
        let d = schedule(&[slice(1, "t", "linux/s390x")], &agents, &HashMap::new(), &Params::default());
        assert_eq!(d.impossible, vec![(1, "no agent can run linux/s390x (natively or under emulation)".to_string())]);
    }

    #[test]
    fn builders_restrict_candidates_and_cache_wins_ties() {
        let mut a = agent("a", &["linux/amd64"], &[], 4, 0);
        let b = agent("b", &["linux/amd64"], &[], 4, 0);
        a.cache_records.insert(1, 7);
        let d = schedule(&[slice(1, "t", "linux/amd64")], &[a.clone(), b.clone()], &HashMap::new(), &Params::default());
        assert_eq!(d.assignments[0].agent, "a");
        let mut s = slice(2, "t", "linux/amd64");
        s.candidates = Some(vec!["b".into()]);
        let d = schedule(&[s], &[a, b], &HashMap::new(), &Params::default());
        assert_eq!(d.assignments[0].agent, "b");
    }

    #[test]
    fn recent_usage_breaks_ties_between_tenants_with_nothing_running() {
        let agents = vec![agent("a", &["linux/amd64"], &[], 1, 0)];
        // "heavy" queued first but used the farm for an hour lately.
        let pending = [slice(1, "heavy", "linux/amd64"), slice(2, "light", "linux/amd64")];
        let usage = HashMap::from([("heavy".to_string(), TenantUsage { running: 0, recent: 3600 })]);
        let d = schedule(&pending, &agents, &usage, &Params::default());
        assert_eq!(d.assignments.iter().map(|a| a.slice).collect::<Vec<_>>(), vec![2]);
        assert_eq!(d.waiting, vec![(1, "the 1 agent that runs linux/amd64 natively is busy (1/1 slots)".to_string())]);
        // Without the history, the older slice goes first.
        let d = schedule(&pending, &agents, &HashMap::new(), &Params::default());
        assert_eq!(d.assignments[0].slice, 1);
    }

    #[test]
    fn waiting_for_a_native_slot_says_emulation_would_be_slower() {
        let busy = vec![agent("x86", &["linux/amd64"], &["linux/arm64"], 2, 0), agent("arm", &["linux/arm64"], &[], 1, 1)];
        let d = schedule(&[slice(3, "t", "linux/arm64")], &busy, &HashMap::new(), &Params::default());
        assert_eq!(
            d.waiting,
            vec![(3, "the 1 agent that runs linux/arm64 natively is busy (1/1 slots); waiting is faster than emulation (5x)".to_string())]
        );
    }

    const PLATFORMS: &[&str] = &["linux/amd64", "linux/arm64", "linux/riscv64"];

    fn arb_agent(i: usize) -> impl Strategy<Value = AgentSnapshot<'static>> {
        (prop::sample::subsequence(PLATFORMS, 0..=2), prop::sample::subsequence(PLATFORMS, 0..=2), 1u32..4, 0u32..4).prop_map(
            move |(native, emulated, slots, running)| AgentSnapshot {
                name: format!("a{i}").into(),
                native: native.iter().map(|s| p(s)).collect::<Vec<_>>().into(),
                emulated: emulated.iter().map(|s| p(s)).collect::<Vec<_>>().into(),
                slots,
                running: running.min(slots),
                cache_records: HashMap::new(),
            },
        )
    }

    fn arb_world() -> impl Strategy<Value = (Vec<AgentSnapshot<'static>>, Vec<PendingSlice>)> {
        let agents = (1usize..8).prop_flat_map(|n| (0..n).map(arb_agent).collect::<Vec<_>>());
        let slices = prop::collection::vec((0usize..3, prop::sample::select(PLATFORMS), 1u64..60_000), 0..40).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (t, pl, ms))| PendingSlice {
                    id: i as u64,
                    affinity: (i % 3) as u64,
                    tenant: format!("t{t}"),
                    platform: p(pl),
                    queued_seq: i as u64,
                    candidates: None,
                    expected_native_ms: ms,
                })
                .collect()
        });
        (agents, slices)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn never_on_an_agent_that_cannot_run_it_and_slots_hold((agents, slices) in arb_world()) {
            let d = schedule(&slices, &agents, &HashMap::new(), &Params::default());
            let mut used: HashMap<&str, u32> = HashMap::new();
            for a in &d.assignments {
                let s = slices.iter().find(|s| s.id == a.slice).unwrap();
                let ag = agents.iter().find(|g| g.name == a.agent).unwrap();
                prop_assert!(runs(&ag.native, &s.platform) || runs(&ag.emulated, &s.platform));
                prop_assert_eq!(a.emulated, !runs(&ag.native, &s.platform));
                *used.entry(&ag.name).or_insert(0) += 1;
            }
            for ag in &agents {
                prop_assert!(used.get(ag.name.as_ref()).copied().unwrap_or(0) + ag.running <= ag.slots);
            }
            // Every slice is accounted for exactly once.
            prop_assert_eq!(d.assignments.len() + d.impossible.len() + d.waiting.len(), slices.len());
        }

        #[test]
        fn native_preferred_whenever_a_native_agent_has_a_free_slot((agents, slices) in arb_world()) {
            let d = schedule(&slices, &agents, &HashMap::new(), &Params::default());
            let mut used: HashMap<&str, u32> = HashMap::new();
            for a in &d.assignments {
                *used.entry(a.agent.as_str()).or_insert(0) += 1;
            }
            for a in d.assignments.iter().filter(|a| a.emulated) {
                let s = slices.iter().find(|s| s.id == a.slice).unwrap();
                // At the end of the round no native agent for that platform has a free slot.
                for ag in agents.iter().filter(|g| runs(&g.native, &s.platform)) {
                    prop_assert!(ag.running + used.get(ag.name.as_ref()).copied().unwrap_or(0) >= ag.slots, "{} emulated while {} had a free slot", a.slice, ag.name);
                }
            }
        }

        #[test]
        fn no_tenant_starves((agents, slices) in arb_world()) {
            // Rounds where every running slice finishes: each tenant with runnable work gets
            // a slot within as many rounds as there are tenants.
            let mut agents: Vec<AgentSnapshot<'static>> = agents.into_iter().map(|mut a| { a.running = 0; a }).collect();
            let mut pending = slices.clone();
            let tenants: std::collections::BTreeSet<String> = pending.iter().map(|s| s.tenant.clone()).collect();
            let rounds = tenants.len().max(1) + 1;
            let mut served: HashMap<String, usize> = HashMap::new();
            let mut usage: HashMap<String, TenantUsage> = HashMap::new();
            for round in 0..rounds {
                let d = schedule(&pending, &agents, &usage, &Params::default());
                for a in &d.assignments {
                    let t = pending.iter().find(|s| s.id == a.slice).unwrap().tenant.clone();
                    usage.entry(t.clone()).or_default().recent += 1;
                    served.entry(t).or_insert(round);
                }
                let done: Vec<u64> = d.assignments.iter().map(|a| a.slice).chain(d.impossible.iter().map(|i| i.0)).collect();
                pending.retain(|s| !done.contains(&s.id));
                agents.iter_mut().for_each(|a| a.running = 0);
            }
            for t in tenants {
                let runnable = slices.iter().any(|s| s.tenant == t && agents.iter().any(|a| runs(&a.native, &s.platform) || runs(&a.emulated, &s.platform)));
                if runnable {
                    prop_assert!(served.contains_key(&t), "tenant {} never got a slot", t);
                }
            }
        }
    }
}
