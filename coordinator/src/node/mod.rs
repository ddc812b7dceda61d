//! A coordinator process (`kiln coordinator`): one member of the Raft cluster serving the CLI,
//! the agents and the other coordinators on one QUIC endpoint.
//!
//! - [`bootstrap`]: the cluster CA, this member's certificate, the first tokens;
//! - [`dispatch`]: every request: who may send it, and where it runs (followers forward to the
//!   leader); the rooms that do the work: [`auth`] (tokens, joining), [`blobs`] (uploads and
//!   downloads), [`agents`] (registering, polls, slice reports), [`builds`] (submit, watch),
//!   [`admin`] (builders, contexts, coordinators, storage), with [`views`] of what the CLI sees;
//! - [`leader`]: what only the leader does: leases, scheduling, finishing builds, draining;
//! - [`live`]: which agents are alive; [`tracker`]: who holds which blob and record;
//!   [`owners`]: which tenant uploaded which blob; [`session`]: steps' questions to the
//!   client of their build (secrets, ssh-agent messages), in memory only;
//! - [`peers`]: connections to the other coordinators;
//! - [`probes`]: the metrics endpoint (`--metrics-listen`); the web console is
//!   [`crate::console`].

pub mod admin;
pub mod agents;
pub mod auth;
pub mod blob_gc;
pub mod blobs;
pub mod bootstrap;
pub mod builds;
pub mod dispatch;
pub mod explain;
pub mod history;
pub mod leader;
pub mod live;
pub mod owners;
pub mod peers;
pub mod probes;
pub mod replicate;
mod reply;
pub mod session;
pub mod tracker;
pub mod views;

use crate::config::CoordinatorConfig;
use crate::raft::network::Network;
use crate::raft::store::{StateMachineStore, Store};
use crate::raft::{BuildId, ClusterState, Command, CommandResult, NodeId, SliceAttempt, SliceKey, TypeConfig};
use anyhow::Context as _;
use kiln_shared::api::{BuildEvent, Role, Token};
use kiln_shared::store::ContentStore;
use kiln_shared::task::{self, Gate, TaskHandle};
use kiln_shared::transport::{self, ClusterCa};
use kiln_shared::wire::{ErrorCode, RemoteError};
use live::Live;
use openraft::{BasicNode, Raft};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// `n` random bytes as hex, from the kernel.
pub fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; n];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut buf).context("reading /dev/urandom")?;
    Ok(hex::encode(buf))
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Soft state of this coordinator.
#[derive(Default)]
pub struct Soft {
    pub agents: HashMap<String, Live>,
    /// Progress of running builds, per build (bounded; see [`MAX_EVENTS`]).
    pub events: HashMap<BuildId, Vec<BuildEvent>>,
    /// Builds whose index is being pushed by this leader.
    pub finishing: HashSet<BuildId>,
    /// When this coordinator last became leader: agents get a grace period from then.
    pub leader_since: Option<Instant>,
    /// Partial uploads: (tenant, digest) → the temp file, bytes received so far, last chunk.
    pub uploads: HashMap<String, (std::path::PathBuf, u64, Instant)>,
    /// Running slices per agent, as of an applied log index and when it was read: polls look
    /// up their own list instead of each scanning every build.
    pub assigned: Option<(u64, Instant, Arc<Assigned>)>,
    /// Assignments this leader committed since that map was read, per agent: what a poll
    /// needs at once and the map, recomputed at most every [`ASSIGNED_EVERY`], may not show.
    pub just_assigned: HashMap<String, Vec<(Instant, SliceAttempt)>>,
    /// The farm as submits see it, shared for a moment (see [`leader::placing`]).
    pub placing: Option<leader::placing::Placing>,
    /// Slots taken by scheduling decisions that are being committed: counted as running so
    /// that decisions made meanwhile do not place slices on the same slots.
    pub inflight: HashMap<String, u32>,
    /// Who holds which blob and step cache record (leader only; rebuilt after a failover).
    pub tracker: tracker::Tracker,
    /// The records each lineage's last slice used or made (leader only; after a failover it
    /// fills again as slices finish): where the next build of it finds its cache.
    pub lineage: Lineage,
    /// Why each queued slice waits, or last waited (the plan's words), for the build views.
    pub waiting: BTreeMap<SliceKey, String>,
    /// Steps' questions to their builds' clients (leader only; see [`session`]).
    pub sessions: session::Sessions,
    /// Per agent, the running slices of cancelled builds it has not been told to stop yet.
    pub cancels: HashMap<String, Vec<SliceAttempt>>,
    /// Agents whose lease held when last counted, and when that was (see [`Soft::live_agents`]).
    live_count: Option<(Instant, usize)>,
}

/// Lineages remembered, at most (the oldest are forgotten first).
const MAX_LINEAGES: usize = 4096;
/// Waiting reasons kept, at most (those of the oldest builds are dropped first).
const MAX_WAITING: usize = 4096;

/// lineage (see [`leader::plan::lineage`]) → the scoped names of its last slice's records.
#[derive(Default)]
pub struct Lineage {
    pub records: HashMap<String, Vec<String>>,
    order: std::collections::VecDeque<String>,
}

impl Lineage {
    pub fn remember(&mut self, lineage: String, records: Vec<String>) {
        if records.is_empty() {
            return;
        }
        if self.records.insert(lineage.clone(), records).is_none() {
            self.order.push_back(lineage);
        }
        while self.order.len() > MAX_LINEAGES {
            if let Some(old) = self.order.pop_front() {
                self.records.remove(&old);
            }
        }
    }
}

impl Soft {
    /// Agents heard from within `lease`, counted at most once a second: every poll's answer
    /// asks (the pace), and `agents` also holds the dead until the next election.
    pub fn live_agents(&mut self, lease: Duration) -> usize {
        let now = Instant::now();
        match self.live_count {
            Some((at, n)) if now.duration_since(at) < Duration::from_secs(1) => n,
            _ => {
                let n = self.agents.values().filter(|l| now.duration_since(l.last_seen) < lease).count();
                self.live_count = Some((now, n));
                n
            }
        }
    }

    /// Records a poll of `agent`: its heartbeat and what it runs. Every poll of every agent
    /// passes here: no new key when it is known.
    pub fn heard(&mut self, agent: &str, running: Vec<SliceAttempt>, cache_bytes: u64) {
        let live = Live { last_seen: Instant::now(), running, cache_bytes };
        match self.agents.get_mut(agent) {
            Some(l) => *l = live,
            None => {
                self.agents.insert(agent.to_string(), live);
            }
        }
    }

    /// Keeps the plan's waiting reasons; a slice that stops waiting keeps its last one.
    pub fn note_waiting(&mut self, waiting: &[(SliceKey, String)]) {
        for (key, reason) in waiting {
            self.waiting.insert(*key, reason.clone());
        }
        while self.waiting.len() > MAX_WAITING {
            self.waiting.pop_first();
        }
    }

    /// The waiting reasons of one build's slices, by index.
    pub fn waiting_of(&self, build: BuildId) -> BTreeMap<u32, String> {
        self.waiting.range(SliceKey::new(build, 0)..=SliceKey::new(build, u32::MAX)).map(|(k, r)| (k.index, r.clone())).collect()
    }
}

/// agent → the attempts of its running slices.
pub type Assigned = HashMap<String, Vec<SliceAttempt>>;

/// How stale the map of running slices per agent may be (see [`Node::assigned`]).
pub const ASSIGNED_EVERY: Duration = Duration::from_millis(250);

/// Events kept per build; a client that falls further behind sees a gap, not an unbounded heap.
pub const MAX_EVENTS: usize = 100_000;

pub struct Node {
    pub id: NodeId,
    pub cfg: CoordinatorConfig,
    pub raft: Raft<TypeConfig>,
    pub sm: StateMachineStore,
    /// The commit index openraft last saved (see [`Store::committed_index`]).
    pub committed: Arc<std::sync::atomic::AtomicU64>,
    pub ca: ClusterCa,
    pub pool: peers::Pool,
    pub blobs: ContentStore,
    pub owners: owners::Owners,
    pub soft: Mutex<Soft>,
    /// Bumped whenever build progress or state changes: `kiln build` watchers wait on it.
    pub changed: tokio::sync::watch::Sender<u64>,
    /// One wake-up per agent: its long poll waits on it, and only its new tasks ring it.
    pub agent_wake: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Held while [`Node::assigned`] recomputes: one poll does it, the others take its map.
    assigning: Mutex<()>,
    pub wake_leader: tokio::sync::Notify,
    /// Held from reading the state to committing a scheduling decision, so that two decisions
    /// never place slices on the same free slot.
    pub sched: tokio::sync::Mutex<()>,
    pub stop: CancellationToken,
    /// Requests being served; closed when `stop` is cancelled (see [`run`]).
    pub gate: Gate,
    /// Where this coordinator serves the web console, if it does (`--console-listen`).
    pub console: Option<SocketAddr>,
}

impl Node {
    pub fn soft(&self) -> std::sync::MutexGuard<'_, Soft> {
        self.soft.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Reserves the slots of `assignments` until [`Node::release`].
    pub fn reserve(&self, assignments: &[crate::raft::SliceAssignment]) {
        let mut soft = self.soft();
        for a in assignments {
            *soft.inflight.entry(a.agent.clone()).or_default() += 1;
        }
    }

    /// Ends a reservation (the decision is committed, or failed) and wakes the agents.
    pub fn release(&self, assignments: &[crate::raft::SliceAssignment]) {
        {
            let mut soft = self.soft();
            for a in assignments {
                if let Some(n) = soft.inflight.get_mut(&a.agent) {
                    *n = n.saturating_sub(1);
                }
            }
            soft.inflight.retain(|_, n| *n > 0);
        }
        let agents: std::collections::BTreeSet<&str> = assignments.iter().map(|a| a.agent.as_str()).collect();
        for agent in agents {
            self.agent_wake(agent).notify_one();
        }
    }

    pub fn agent_wake(&self, agent: &str) -> Arc<tokio::sync::Notify> {
        let mut map = self.agent_wake.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(agent.to_string()).or_default().clone()
    }

    /// Leader, caught up and still heard by a quorum: the state machine has applied an entry of
    /// this leader's term (the blank entry every new leader commits first), so everything
    /// committed before is applied too and reads of the state are current; and a quorum
    /// acknowledged it within an election timeout. A leader cut off from the other members
    /// keeps its vote until it hears a higher term, but the others elect a new leader after
    /// that long: past it, this one stops serving agents and clients, which fail over to the
    /// new one (the chaos suite's leader partition).
    pub fn is_leader(&self) -> bool {
        // Borrowed, not cloned: this runs on every poll.
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.current_leader == Some(self.id)
            && m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term)
            && m.millis_since_quorum_ack.is_some_and(|ms| ms <= self.cfg.election_timeout_max_ms)
    }

    /// Leader by vote, perhaps not yet caught up (see [`Node::is_leader`]).
    pub fn is_elected(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// The leader's id and address, if one is known.
    pub fn leader(&self) -> Option<(NodeId, SocketAddr)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?;
        Some((id, node.addr.parse().ok()?))
    }

    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        self.sm.read(f)
    }

    /// Running slices per agent, recomputed after a change at most every [`ASSIGNED_EVERY`]:
    /// with a busy farm every commit is a change, and the scan is over every running slice.
    /// Its lag is what [`Node::note_assigned`] covers; whatever it lists, a poll checks against
    /// the state before it hands a slice out (see `agents::tasks_for`).
    pub fn assigned(&self) -> Arc<Assigned> {
        let fresh = || {
            let applied = self.sm.last_applied_index();
            let soft = self.soft();
            let (at, read, map) = soft.assigned.as_ref()?;
            (*at == applied || read.elapsed() < ASSIGNED_EVERY).then(|| map.clone())
        };
        if let Some(map) = fresh() {
            return map;
        }
        // Every held poll asks: one recomputes and the others polling meanwhile wait for its
        // map rather than each building their own.
        let _one = self.assigning.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = fresh() {
            return map;
        }
        // Taken before the state is read: what was noted before is in what is read.
        let read = Instant::now();
        let applied = self.sm.last_applied_index();
        // The index is read before the state (never inside `read`: a second read lock while a
        // writer waits would deadlock); if it moves meanwhile, the next call recomputes.
        let map = self.read(|s| {
            let mut map = Assigned::new();
            for b in s.builds.values().filter(|b| b.state == crate::raft::BuildState::Running) {
                for (key, sl) in b.keyed_slices() {
                    if sl.state == crate::raft::SliceState::Running {
                        // The name is copied for a new key only.
                        let at = SliceAttempt::new(key, sl.attempt);
                        match map.get_mut(sl.agent.as_str()) {
                            Some(list) => list.push(at),
                            None => {
                                map.insert(sl.agent.clone(), vec![at]);
                            }
                        }
                    }
                }
            }
            Arc::new(map)
        });
        let mut soft = self.soft();
        soft.assigned = Some((applied, read, map.clone()));
        soft.just_assigned.retain(|_, list| {
            list.retain(|(noted, _)| *noted >= read);
            !list.is_empty()
        });
        map
    }

    /// Records assignments this leader just committed (each slice key with its build's id),
    /// before their agents are woken: their polls find them without waiting for
    /// [`Node::assigned`] to be recomputed.
    pub fn note_assigned(&self, assignments: impl IntoIterator<Item = (String, SliceAttempt)>) {
        let now = Instant::now();
        let mut soft = self.soft();
        for (agent, at) in assignments {
            soft.just_assigned.entry(agent).or_default().push((now, at));
        }
    }

    /// What `agent` was assigned, by the map and since it was read.
    pub fn assigned_to(&self, agent: &str) -> Vec<SliceAttempt> {
        let map = self.assigned();
        let mut mine = map.get(agent).cloned().unwrap_or_default();
        if let Some(recent) = self.soft().just_assigned.get(agent) {
            mine.extend(recent.iter().map(|(_, at)| *at));
        }
        mine.sort_unstable();
        mine.dedup();
        mine
    }

    /// Commits a command through Raft (on the leader); the result of applying it.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, RemoteError> {
        // What changes which agents submits may use, or their load beyond what submits add
        // themselves, drops the view they share.
        let farm_changes = !matches!(
            command,
            Command::Submit { .. }
                | Command::SliceDone { .. }
                | Command::SliceFailed { .. }
                | Command::CancelBuild { .. }
                | Command::ForgetBuilds { .. }
                | Command::FinishBuild { .. }
                | Command::PutToken { .. }
        );
        let r = self.raft.client_write(command).await;
        if farm_changes {
            self.soft().placing = None;
        }
        match r {
            Ok(r) => Ok(r.data),
            Err(openraft::error::RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(f))) => Err(RemoteError {
                code: ErrorCode::NotLeader,
                message: format!("coordinator {} is not the leader (leader: {:?}); retry", self.id, f.leader_id),
            }),
            Err(e) => Err(RemoteError { code: ErrorCode::Unavailable, message: format!("raft: {e}") }),
        }
    }

    /// Proposes and turns `ok: false` into an error the caller sees.
    pub async fn commit(&self, command: Command) -> Result<CommandResult, RemoteError> {
        let r = self.propose(command).await?;
        if !r.ok {
            return Err(RemoteError { code: ErrorCode::BadRequest, message: r.message.unwrap_or_default() });
        }
        Ok(r)
    }
}

/// Starts a coordinator and serves until `stop` is cancelled. `join` and `token` are only used
/// by a member that has no CA yet (see [`bootstrap`]).
/// The shape of the Raft log and state this kiln writes. A data dir written by a kiln with
/// another shape cannot be read: its log entries no longer decode.
pub const STATE_FORMAT: u32 = 5;
const STATE_FORMAT_FILE: &str = "state-format";

/// Whether `dir` holds Raft state of another format (`Some(found)`; `None`: same, or none yet).
pub fn other_state_format(dir: &std::path::Path) -> Option<String> {
    if !dir.join("raft.redb").exists() {
        return None;
    }
    let found = std::fs::read_to_string(dir.join(STATE_FORMAT_FILE)).map(|s| s.trim().to_string()).unwrap_or_else(|_| "1-3".into());
    (found != STATE_FORMAT.to_string()).then_some(found)
}

/// Refuses a data dir another kiln wrote (a clear message instead of a log that fails to
/// decode), and marks a new one with this kiln's format.
fn check_state_format(dir: &std::path::Path) -> anyhow::Result<()> {
    if let Some(found) = other_state_format(dir) {
        anyhow::bail!(
            "{} holds coordinator state of format {found}, written by another kiln version; this kiln reads format {STATE_FORMAT}: start it with a new --data-dir (or move this one away) and re-create builders and tokens",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(STATE_FORMAT_FILE), format!("{STATE_FORMAT}\n"))
        .with_context(|| format!("writing {}", dir.join(STATE_FORMAT_FILE).display()))?;
    Ok(())
}

pub async fn run(cfg: CoordinatorConfig, join: Option<SocketAddr>, token: Option<String>, stop: CancellationToken) -> anyhow::Result<()> {
    cfg.validate()?;
    // The `kiln` binary allocates with jemalloc: a coordinator returns freed pages to the
    // system from a background thread as they age, instead of only when it allocates again
    // (a farm's joins and a burst of submits free much that an idle leader would keep).
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::debug!(coordinator = cfg.id, "jemalloc background purging: {e}");
    }
    // The metrics endpoint answers from the start (`/healthz`; `/readyz` once caught up).
    let serving: Arc<std::sync::OnceLock<Arc<Node>>> = Arc::default();
    let _metrics = match cfg.metrics_listen {
        Some(addr) => {
            let served = probes::serve(addr, serving.clone()).await?;
            tracing::info!(coordinator = cfg.id, metrics = %addr, "serving metrics");
            Some(served)
        }
        None => None,
    };
    // As the metrics: bound first, so that a taken port fails the start.
    let console = match cfg.console_listen {
        Some(addr) => {
            let served = crate::console::serve(addr, serving.clone()).await?;
            tracing::info!(coordinator = cfg.id, console = %format!("http://{}", served.addr), "serving the web console");
            Some(served)
        }
        None => None,
    };
    let creds = bootstrap::credentials(&cfg, join, token.as_deref(), &stop).await?;
    let ca_der = creds.ca.cert_der();
    let endpoint = transport::server_with(cfg.listen, &ca_der, &creds.identity, true, &cfg.quic(), transport::Connections::Many)
        .with_context(|| format!("listening on {} (QUIC)", cfg.listen))?;
    let pool = peers::Pool::new(
        transport::client_with(&ca_der, Some(&creds.identity), &cfg.quic())?,
        Duration::from_millis(cfg.peer_connect_timeout_ms),
    );
    check_state_format(&cfg.data_dir)?;
    let store = Store::open(cfg.data_dir.join("raft.redb"))?;
    let raft_config = openraft::Config {
        cluster_name: "kiln".into(),
        heartbeat_interval: cfg.heartbeat_interval_ms,
        election_timeout_min: cfg.election_timeout_min_ms,
        election_timeout_max: cfg.election_timeout_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_every_entries),
        // Chunks travel as JSON inside one frame: keep them well under the frame limit.
        snapshot_max_chunk_size: 1 << 20,
        max_in_snapshot_log_to_keep: 1000,
        ..Default::default()
    }
    .validate()?;
    let sm = store.state_machine();
    let raft = Raft::new(cfg.id, Arc::new(raft_config), Network::new(pool.clone()), store.log_store(), sm.clone()).await?;
    let blobs = ContentStore::open(&cfg.data_dir.join("blobs"))?;
    // Partial uploads of an earlier process cannot be continued (their offsets were soft state).
    if let Ok(entries) = std::fs::read_dir(cfg.data_dir.join("blobs/tmp")) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let owners = owners::Owners::open(&cfg.data_dir.join("blob-owners")).context("opening blob-owners")?;
    let node = Arc::new(Node {
        id: cfg.id,
        cfg: cfg.clone(),
        raft,
        sm,
        committed: store.committed_index(),
        ca: creds.ca,
        pool,
        blobs,
        owners,
        soft: Mutex::new(Soft::default()),
        changed: tokio::sync::watch::channel(0).0,
        agent_wake: Mutex::new(HashMap::new()),
        assigning: Mutex::new(()),
        wake_leader: tokio::sync::Notify::new(),
        sched: tokio::sync::Mutex::new(()),
        stop: stop.clone(),
        gate: Gate::default(),
        console: console.as_ref().map(|c| c.addr),
    });
    let _ = serving.set(node.clone());
    let mut tasks: Vec<TaskHandle<()>> = Vec::new();
    if creds.founder {
        let members: BTreeMap<NodeId, BasicNode> = cfg.peers.iter().map(|(id, a)| (*id, BasicNode::new(a.to_string()))).collect();
        node.raft.initialize(members).await.context("initialising the cluster")?;
        tasks.push(task::spawn("found the cluster", found(node.clone())));
    }
    tasks.push(task::spawn("leader", leader::run(node.clone())));
    tasks.push(task::spawn("blob gc", blob_gc::keep_collecting(node.clone())));
    tasks.push(task::spawn("accept", accept(node.clone(), endpoint.clone())));
    tracing::info!(coordinator = cfg.id, listen = %cfg.listen, data_dir = %cfg.data_dir.display(), "listening");
    let fatal = tokio::select! {
        _ = stop.cancelled() => None,
        why = raft_stopped(&node) => Some(why),
    };
    if let Some(why) = &fatal {
        tracing::error!(coordinator = cfg.id, "Raft stopped ({why}): exiting, so that a restart resumes from the durable log");
    }
    // Drain: new connections and requests are refused from now on; those in flight (and builds
    // being finished) get up to `shutdown_drain_ms`, with Raft still running so that what they
    // propose commits. Long polls end early on `stop`.
    let inside = node.gate.inside();
    let drained = node.gate.drain(Duration::from_millis(cfg.shutdown_drain_ms)).await;
    let left = node.gate.inside();
    if !drained && cfg.shutdown_drain_ms == 0 {
        // No drain (the embedded farm's) cuts off by design: that is not worth a warning.
        tracing::debug!(coordinator = cfg.id, requests = left, "shutdown: requests cut off");
    } else if !drained {
        tracing::warn!(coordinator = cfg.id, requests = left, "shutdown: requests still running after the drain deadline are cut off");
    } else if inside > 0 {
        tracing::info!(coordinator = cfg.id, requests = inside, "shutdown: requests in flight finished");
    }
    drop(tasks);
    endpoint.close(0u32.into(), b"shutdown");
    node.pool.close();
    let _ = node.raft.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_millis(cfg.shutdown_drain_ms), endpoint.wait_idle()).await;
    match fatal {
        // A member whose Raft stopped must not go on answering as if it were one: it exits with
        // the reason, and its supervisor (systemd's `Restart=on-failure`) starts it again.
        Some(why) => anyhow::bail!(
            "coordinator {}: Raft stopped ({why}); exiting so that a restart resumes from the durable log (a full disk: free space first)",
            cfg.id
        ),
        None => Ok(()),
    }
}

/// Resolves once this member's Raft has stopped by itself: a fatal error, such as a log
/// write that failed (a full disk); the reason.
async fn raft_stopped(node: &Node) -> String {
    let mut metrics = node.raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow().running_state {
            return fatal.to_string();
        }
        if metrics.changed().await.is_err() {
            return "its metrics channel closed".to_string();
        }
    }
}

/// Serves every connection until aborted (by [`run`], after the drain); once the gate is
/// closed, new connections are refused.
async fn accept(node: Arc<Node>, endpoint: quinn::Endpoint) {
    let mut conns = tokio::task::JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        if node.gate.is_closed() {
            incoming.refuse();
            continue;
        }
        let node = node.clone();
        conns.spawn(async move {
            if let Ok(conn) = incoming.await {
                dispatch::serve(node, conn).await;
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

/// The founder commits the first tokens, then writes them to its data dir.
async fn found(node: Arc<Node>) {
    let tokens = (bootstrap::new_token(&node.ca, Role::Admin), bootstrap::new_token(&node.ca, Role::Agent));
    let (Ok(admin), Ok(agent)) = tokens else {
        tracing::error!(coordinator = node.id, "cannot make tokens (no /dev/urandom?)");
        return;
    };
    let put = |t: &Token, tenant: &str| Command::PutToken { token_hash: t.hash(), role: t.role.as_str().into(), tenant: tenant.into() };
    loop {
        if node.is_leader() {
            let a = node.propose(put(&admin, "default")).await;
            let b = node.propose(put(&agent, "")).await;
            if a.is_ok() && b.is_ok() {
                break;
            }
        }
        tokio::select! {
            _ = node.stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    if let Err(e) = bootstrap::write_tokens(&node.cfg.data_dir, &admin, &agent) {
        tracing::error!(coordinator = node.id, "writing tokens: {e:#}");
    }
}
