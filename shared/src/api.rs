//! The messages kiln sends, carried by [`crate::transport`] in [`crate::wire`] frames: one
//! request/response pair per protocol, each in its module, and the types they share here.
//!
//! - [`join`]: a caller without a certificate gets one (the only protocol served to it);
//! - [`client`]: the CLI (users and admins) → a coordinator;
//! - [`agent`]: an agent → a coordinator;
//! - [`coordinator`]: coordinator ↔ coordinator (Raft, forwarding to the leader, status);
//! - [`peer`]: agent ↔ agent and coordinator → agent, on an agent's peer endpoint;
//! - [`blobs`]: blob transfer, inside the client and agent protocols.
//!
//! A coordinator serves the first four on one endpoint, in frames tagged by protocol ([`Call`]).
//! Plain data only (no JSON values, no skipped fields): bincode needs every field on the wire.
//! Raft's own RPCs travel as opaque JSON inside [`CoordinatorRequest::Raft`], so openraft's
//! types stay a coordinator matter.

pub mod agent;
pub mod blobs;
pub mod client;
pub mod context;
pub mod coordinator;
pub mod grant;
pub mod history;
pub mod join;
pub mod peer;

pub use agent::{AgentRequest, AgentResponse};
pub use blobs::{BlobRequest, BlobResponse};
pub use client::{ClientRequest, ClientResponse};
pub use coordinator::{CoordinatorRequest, CoordinatorResponse, Forwarded, ForwardedResponse, RaftRpc};
pub use grant::{Grant, GrantError};
pub use history::{BuildDetail, BuildSummary, HistoryFilter, MissReason, StepRecord, StepSource};
pub use join::{JoinRequest, JoinResponse};
pub use peer::{PeerRequest, PeerResponse};

use crate::oci::{Descriptor, Index};
use crate::Platform;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Who a request comes from, as its certificate says (`role:name`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Manages builders, contexts and tokens; builds in its tenant.
    Admin,
    /// Builds in its tenant.
    User,
    /// A build host.
    Agent,
    /// A member of the Raft cluster.
    Coordinator,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
            Role::Agent => "agent",
            Role::Coordinator => "coordinator",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "user" => Role::User,
            "agent" => Role::Agent,
            "coordinator" => Role::Coordinator,
            _ => return None,
        })
    }
}

/// An authenticated caller: role, name (agent name, coordinator id, or tenant for users).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub role: Role,
    pub name: String,
}

impl Principal {
    /// The certificate common name that carries this principal.
    pub fn common_name(&self) -> String {
        format!("{}:{}", self.role.as_str(), self.name)
    }

    pub fn from_common_name(cn: &str) -> Option<Principal> {
        let (role, name) = cn.split_once(':')?;
        Some(Principal { role: Role::parse(role)?, name: name.to_string() })
    }

    /// The tenant a build of this principal belongs to.
    pub fn tenant(&self) -> &str {
        &self.name
    }
}

/// One step's progress, as the engine reports it and as it travels to the CLI.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A step starts; `name` is `[linux/arm64 build 3/7] RUN make`.
    Start {
        id: u64,
        name: String,
    },
    Cached {
        id: u64,
    },
    Log {
        id: u64,
        line: String,
    },
    Done {
        id: u64,
        secs: f64,
    },
    Failed {
        id: u64,
        message: String,
    },
}

/// What an agent tells the farm about itself when it registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub name: String,
    /// Where peers reach it (QUIC).
    pub endpoint: String,
    pub native: Vec<Platform>,
    pub emulated: Vec<Platform>,
    pub slots: u32,
    pub labels: BTreeMap<String, String>,
    pub version: String,
}

/// One entry of a build context, as the CLI walked it (after `.dockerignore`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextEntry {
    /// Relative, `/`-separated; bytes, as the file system has them (a name need not be UTF-8).
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    Dir,
    File {
        digest: String,
        size: u64,
    },
    Symlink {
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
    },
    /// A named pipe: BuildKit's context transfer keeps them, and COPY copies them as pipes.
    Fifo,
}

/// What `kiln build` submits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildSpec {
    pub dockerfile: String,
    pub dockerfile_name: String,
    pub platforms: Vec<Platform>,
    pub build_args: Vec<(String, String)>,
    /// `--label K=V`: set on the final image's config (after the Dockerfile's own LABELs).
    #[serde(default)]
    pub labels: Vec<(String, String)>,
    pub target: Option<String>,
    pub no_cache: bool,
    /// The context's entries, when they are few enough to travel inline (see [`context`]);
    /// empty when [`BuildSpec::context_manifest`] names them.
    pub context: Vec<ContextEntry>,
    pub tags: Vec<String>,
    pub push: bool,
    pub zstd: bool,
    /// `--provenance`, `--sbom`, `--attest`: the attestation manifest each slice gets; and
    /// `--annotation`: where each annotation goes (see [`crate::attest`]).
    pub attest: crate::attest::Attestations,
    pub annotations: Vec<crate::attest::Annotation>,
    pub builder: Option<String>,
    pub insecure_registries: Vec<String>,
    /// Chosen by the client: a submit retried after a lost answer finds the same build.
    pub submission: String,
    /// Agents send every blob of their image to the coordinator that received the build, for
    /// the CLI to fetch (`-o type=oci`).
    pub return_blobs: bool,
    /// Whose step cache records the build may use and adds: set by the leader at submit from the
    /// caller's tenant (or `shared` when the builder shares its cache), never by the client.
    pub cache_scope: String,
    /// The submitting tenant (set by the leader).
    pub tenant: String,
    /// `--cache-from`: caches to import records from.
    pub cache_from: Vec<CacheRef>,
    /// `--cache-to`: where the build's records go (one cache for every platform).
    pub cache_to: Option<CacheExport>,
    /// `--secret` ids the client offers (ids only: the bytes stay with the client until a step
    /// that mounts one asks, through the build's session).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// `--ssh` ids the client offers (its ssh-agents stay with it; see [`SessionAsk::Ssh`]).
    #[serde(default)]
    pub ssh: Vec<String>,
    /// `RUN` options that are the build's, not the Dockerfile's.
    #[serde(default)]
    pub run: RunOptions,
    /// `--build-context NAME=...`.
    #[serde(default)]
    pub named_contexts: Vec<NamedContextSpec>,
    /// `--pull`: resolve every base image's tag at its registry again, whatever the agent knows.
    #[serde(default)]
    pub pull: bool,
    /// `--no-cache-filter`: the stages whose steps run without the step cache.
    #[serde(default)]
    pub no_cache_filter: Vec<String>,
    /// Other coordinators holding copies of the build's blobs: set by the coordinator that
    /// received the build (whatever a client sends is replaced).
    #[serde(default)]
    pub replicas: Vec<std::net::SocketAddr>,
    /// The digest of the blob that holds the context's entries when there are too many to
    /// travel inline ([`context`]): uploaded with the context's files, read back and verified
    /// by whoever needs the entries. `None`: they are in [`BuildSpec::context`].
    #[serde(default)]
    pub context_manifest: Option<String>,
}

/// One `--build-context NAME=SOURCE`, as the farm gets it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedContextSpec {
    pub name: String,
    pub source: NamedSource,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamedSource {
    /// `docker-image://REF`: the image to use wherever the name is.
    Image(String),
    /// A directory (local, or a git repository or URL the client fetched): its manifest, whose
    /// blobs travel with the build's context.
    Local(Vec<ContextEntry>),
    /// `oci-layout://PATH[:TAG|@DIGEST]`: the chosen manifest or index, and every blob of it
    /// (uploaded with the context).
    Layout { digest: String, blobs: Vec<String> },
}

impl BuildSpec {
    /// Every context entry the build carries inline: the context's (unless a manifest blob holds
    /// them, [`BuildSpec::context_manifest`]), then each named directory's.
    pub fn all_entries(&self) -> impl Iterator<Item = &ContextEntry> {
        self.context.iter().chain(self.named_contexts.iter().flat_map(|n| match &n.source {
            NamedSource::Local(entries) => entries.as_slice(),
            NamedSource::Image(_) | NamedSource::Layout { .. } => &[],
        }))
    }

    /// The blobs of the OCI layouts among the named contexts (uploaded with the context).
    pub fn layout_blobs(&self) -> impl Iterator<Item = &str> {
        self.named_contexts
            .iter()
            .flat_map(|n| match &n.source {
                NamedSource::Layout { blobs, .. } => blobs.as_slice(),
                _ => &[],
            })
            .map(String::as_str)
    }
}

/// `kiln build`'s options for every RUN step (`--network`, `--add-host`, `--shm-size`,
/// `--ulimit`), as buildx passes them to BuildKit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOptions {
    /// `default`, `none` or `host`; a step's own `RUN --network` wins.
    pub network: Option<String>,
    /// `--add-host HOST:IP`: extra lines of the steps' `/etc/hosts`.
    pub hosts: Vec<(String, String)>,
    /// `--shm-size` in bytes (`/dev/shm`'s size; BuildKit's default is 64 MiB).
    pub shm_bytes: Option<u64>,
    /// `--ulimit NAME=SOFT[:HARD]`: (name, soft, hard).
    pub ulimits: Vec<(String, u64, u64)>,
    /// `--allow`: the entitlements the build asks for (`network.host`, `security.insecure`).
    pub entitlements: Vec<String>,
}

/// What a running step asks of the client that submitted its build (BuildKit's session),
/// relayed by the leader and kept only in memory until answered: never committed, logged or
/// stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionAsk {
    /// The bytes of `--secret id=ID`.
    Secret { id: String },
    /// One ssh-agent protocol message for `--ssh ID`'s agent; answered with its reply.
    Ssh {
        id: String,
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
}

impl std::fmt::Debug for SessionAsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionAsk::Secret { id } => write!(f, "Secret({id:?})"),
            SessionAsk::Ssh { id, message } => write!(f, "Ssh({id:?}, {} bytes)", message.len()),
        }
    }
}

/// The client's answer to a [`SessionAsk`]. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionAnswer {
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The client has no such secret or ssh id.
    Missing,
    Failed(String),
}

impl std::fmt::Debug for SessionAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionAnswer::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            SessionAnswer::Missing => write!(f, "Missing"),
            SessionAnswer::Failed(m) => write!(f, "Failed({m:?})"),
        }
    }
}

/// A cache in a registry (`type=registry,ref=R`) or uploaded by the CLI from a directory
/// (`type=local,src=D`: its config blob is on the build's origin coordinator).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheRef {
    Registry { reference: String },
    Uploaded { config: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheExport {
    /// `mode=max`: every stage's records; `min`: the final image's only.
    pub max: bool,
    /// A registry reference; `None`: records and blobs return to the CLI (`type=local`).
    pub registry: Option<String>,
}

/// One exported step cache record: the step's unscoped cache key and the image state it gives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    pub key: String,
    /// The record as the agent stores it (JSON).
    pub state_json: String,
    /// Part of the final image's chain (what `mode=min` exports).
    pub in_final: bool,
}

/// What an agent's disk holds (`kiln du`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    pub records: u64,
    pub content_blobs: u64,
    pub content_bytes: u64,
    pub snapshots: u64,
    pub snapshot_bytes: u64,
    /// Bytes no step cache record references (prune removes them).
    pub reclaimable_bytes: u64,
}

/// `kiln prune`'s filters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneSpec {
    /// `-a`: every record, not only unreferenced data.
    pub all: bool,
    /// `--filter until=`: only what was unused for this long (seconds).
    pub until_s: Option<u64>,
    /// `--keep-storage`: remove least recently used records until what remains fits.
    pub keep_storage: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    pub records_removed: u64,
    pub blobs_removed: u64,
    pub snapshots_removed: u64,
    pub bytes_reclaimed: u64,
}

/// Changes to what an agent holds, for the tracker on the leader. `full`: the whole
/// inventory (after a failover the new leader knows nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub agent: String,
    pub full: bool,
    pub blobs_added: Vec<String>,
    pub blobs_removed: Vec<String>,
    /// Step cache record names (scoped: see [`BuildSpec::cache_scope`]).
    pub records_added: Vec<String>,
    pub records_removed: Vec<String>,
}

/// A slice handed to an agent. `attempt` fences reports: one from an older attempt is ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SliceTask {
    pub build: u64,
    pub slice: u32,
    pub attempt: u32,
    pub platform: Platform,
    pub emulated: bool,
    pub spec: BuildSpec,
    /// Coordinators that hold the context's blobs (the one that received the upload first).
    pub context_origin: Vec<SocketAddr>,
    /// What this attempt may read, signed by the leader (see [`Grant`]).
    #[serde(default)]
    pub grant: Option<Grant>,
}

/// What an agent reports when a slice is done.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SliceOutcome {
    pub build: u64,
    pub slice: u32,
    pub attempt: u32,
    /// The descriptor of the slice's manifest, with its platform.
    pub manifest: Descriptor,
    /// The slice's attestation manifest (listed in the index after the images), if any
    /// (boxed: it keeps the agent's messages small).
    pub attestation: Option<Box<Descriptor>>,
    /// Some RUN step ran under emulation (not merely: the agent emulates the platform).
    pub emulated: bool,
    /// The RUN steps that ran under emulation, as the progress names them.
    #[serde(default)]
    pub emulated_steps: Vec<String>,
    pub duration_ms: u64,
    pub cache_hits: u32,
    pub cache_misses: u32,
    /// Of the hits, records fetched from peers.
    pub cache_peer_hits: u32,
    /// With `--cache-to`: the records to export.
    pub records: Vec<CacheRecord>,
    /// The scoped names of every step cache record the slice used or made: where the next
    /// build of the same Dockerfile and platform would find its cache.
    #[serde(default)]
    pub step_records: Vec<String>,
    /// Every step, as it happened (build history).
    #[serde(default)]
    pub steps: Vec<StepRecord>,
}

/// Where a slice is: the same value in the Raft state and on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SliceState {
    Queued,
    Running,
    Done,
    Failed,
}

/// Where a build is: the same value in the Raft state and on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    Running,
    Done,
    Failed,
}

impl SliceState {
    pub fn as_str(self) -> &'static str {
        match self {
            SliceState::Queued => "queued",
            SliceState::Running => "running",
            SliceState::Done => "done",
            SliceState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for SliceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The state of one slice, as `kiln build` and `kiln inspect` show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SliceView {
    pub slice: u32,
    pub platform: Platform,
    pub state: SliceState,
    pub agent: String,
    pub emulated: bool,
    /// The RUN steps that ran under emulation.
    #[serde(default)]
    pub emulated_steps: Vec<String>,
    pub attempt: u32,
    /// The manifest's descriptor once the slice is done.
    pub manifest: Option<Descriptor>,
    /// Its attestation manifest's descriptor, if the build attaches attestations.
    pub attestation: Option<Descriptor>,
    pub queue_ms: u64,
    pub duration_ms: u64,
    pub cache_hits: u32,
    pub cache_misses: u32,
    pub cache_peer_hits: u32,
    pub reason: String,
    /// Why the slice waits (or last waited) for an agent, as the scheduler said.
    #[serde(default)]
    pub waiting: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildView {
    pub id: u64,
    pub state: BuildState,
    pub slices: Vec<SliceView>,
    /// The image index once done: the exact bytes pushed under the tags, which
    /// `index_digest` is the digest of (so kept as bytes, not re-serialized; see [`BuildView::index`]).
    #[serde(with = "serde_bytes")]
    pub index: Vec<u8>,
    pub index_digest: String,
    pub error: String,
    /// With `--cache-to type=local`, once done: every slice's records.
    pub cache_records: Vec<CacheRecord>,
}

impl BuildView {
    /// The image index, decoded (`None` until the build is done).
    pub fn index(&self) -> Result<Option<Index>, serde_json::Error> {
        if self.index.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&self.index).map(Some)
    }
}

/// One progress event of a build, labelled with where it happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildEvent {
    pub platform: Platform,
    pub agent: String,
    pub event: Event,
}

/// A context (agent) as `kiln context ls|inspect` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContextView {
    pub info: AgentInfo,
    /// ready, draining, lost.
    pub status: String,
    pub running: u32,
    pub last_seen_ms_ago: u64,
    pub cache_bytes: u64,
    /// Step cache records the tracker knows the agent holds (`None`: not advertised yet).
    pub cache_records: Option<u64>,
}

/// A builder node as `kiln ls|inspect` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub context: String,
    pub endpoint: String,
    /// running, inactive (not connected), draining, lost, or missing (no such context).
    pub status: String,
    /// The pinned platforms, else every platform the agent runs (native first).
    pub platforms: Vec<Platform>,
    pub native: Vec<Platform>,
    pub slots: u32,
    pub running: u32,
    pub cache_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuilderView {
    pub name: String,
    pub driver: String,
    pub nodes: Vec<NodeView>,
    /// Recent slices run by this builder's nodes (`kiln inspect`).
    pub recent: Vec<(u64, SliceView)>,
}

/// What `kiln create` asks for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateSpec {
    pub context: Option<String>,
    pub name: Option<String>,
    pub driver: Option<String>,
    pub platforms: Vec<Platform>,
    pub node: Option<String>,
    pub append: bool,
    pub leave: bool,
    /// `--driver-opt share-cache=true`: tenants share step cache records on this builder.
    pub share_cache: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The coordinator that answered.
    pub id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_applied: u64,
    pub members: Vec<Member>,
    /// The answering coordinator's web console (`http://ADDR`), if it serves one.
    #[serde(default)]
    pub console: Option<String>,
}

/// What a frame to a coordinator carries: a request of one of the protocols it serves, tagged
/// with which, so that one QUIC endpoint serves them all. Each is handled by a handler typed by
/// its protocol; which protocol a connection may speak is decided by its certificate's role
/// (none: [`Call::Join`] only). Generic so that a sender can borrow what it sends
/// ([`CallRef`]) and a receiver own it ([`Call`]): both encode alike.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Tagged<J, C, A, K> {
    Join(J),
    Client(C),
    Agent(A),
    Coordinator(K),
}

/// A request to a coordinator, as received.
pub type Call = Tagged<JoinRequest, ClientRequest, AgentRequest, CoordinatorRequest>;
/// A request to a coordinator, as sent.
pub type CallRef<'a> = Tagged<&'a JoinRequest, &'a ClientRequest, &'a AgentRequest, &'a CoordinatorRequest>;
/// A coordinator's answer: of the protocol of its request.
pub type Reply = Tagged<JoinResponse, ClientResponse, AgentResponse, CoordinatorResponse>;

impl<J, C, A, K> Tagged<J, C, A, K> {
    /// The protocol's name, for errors and logs.
    pub fn protocol(&self) -> &'static str {
        match self {
            Tagged::Join(_) => "join",
            Tagged::Client(_) => "client",
            Tagged::Agent(_) => "agent",
            Tagged::Coordinator(_) => "coordinator",
        }
    }
}

/// An agent's answer to `kiln du` or `kiln prune`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentStorage {
    Usage(DiskUsage),
    Pruned(PruneReport),
    /// `resync`: the tracker does not know this agent; send the whole inventory.
    Advertised {
        resync: bool,
    },
}

/// A join token: `K1` + the CA's sha256 + `.` + role + `.` + secret (as k3s pins its CA in the
/// token, so that joining needs nothing but the token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub ca_fingerprint: String,
    pub role: Role,
    pub secret: String,
}

impl Token {
    pub fn parse(s: &str) -> Result<Token, String> {
        let bad = || "the token is malformed: expected the content of c1/admin.token or c1/agent.token".to_string();
        let rest = s.trim().strip_prefix("K1").ok_or_else(bad)?;
        let mut parts = rest.splitn(3, '.');
        let (fp, role, secret) = (parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?);
        if fp.len() != 64 || !fp.chars().all(|c| c.is_ascii_hexdigit()) || secret.len() < 16 {
            return Err(bad());
        }
        Ok(Token { ca_fingerprint: fp.to_string(), role: Role::parse(role).ok_or_else(bad)?, secret: secret.to_string() })
    }

    /// What the cluster stores: never the token itself.
    pub fn hash(&self) -> String {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(self.to_string().as_bytes()))
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "K1{}.{}.{}", self.ca_fingerprint, self.role.as_str(), self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    #[test]
    fn tokens_round_trip_and_refuse_garbage() {
        let t = Token { ca_fingerprint: "ab".repeat(32), role: Role::Agent, secret: "0123456789abcdef0123".into() };
        assert_eq!(Token::parse(&t.to_string()).unwrap(), t);
        assert_eq!(Token::parse(&format!(" {t}\n")).unwrap(), t);
        for bad in ["", "K1", "nonsense", &t.to_string().replace("agent", "root"), &t.to_string()[..70]] {
            assert!(Token::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn messages_survive_the_wire() {
        let spec = BuildSpec {
            dockerfile: "FROM scratch\n".into(),
            dockerfile_name: "Dockerfile".into(),
            platforms: vec!["linux/arm64".parse().unwrap()],
            build_args: vec![("A".into(), "1".into())],
            labels: vec![],
            target: None,
            no_cache: false,
            context: vec![ContextEntry {
                path: b"a/b".to_vec(),
                kind: EntryKind::File { digest: "sha256:00".into(), size: 3 },
                mode: 0o644,
                uid: 0,
                gid: 0,
            }],
            tags: vec!["127.0.0.1:5000/a:1".into()],
            push: true,
            zstd: false,
            attest: Default::default(),
            annotations: vec![],
            builder: Some("b".into()),
            insecure_registries: vec![],
            submission: "x".into(),
            return_blobs: false,
            cache_scope: "tenant:t".into(),
            tenant: "t".into(),
            cache_from: vec![CacheRef::Registry { reference: "127.0.0.1:5000/c:1".into() }],
            cache_to: Some(CacheExport { max: true, registry: None }),
            secrets: vec!["npmrc".into()],
            ssh: vec!["default".into()],
            pull: true,
            no_cache_filter: vec!["build".into()],
            replicas: vec![],
            context_manifest: Some(format!("sha256:{}", "c".repeat(64))),
            named_contexts: vec![NamedContextSpec { name: "base".into(), source: NamedSource::Image("busybox:1".into()) }],
            run: RunOptions {
                network: Some("none".into()),
                hosts: vec![("db".into(), "10.0.0.2".into())],
                shm_bytes: Some(1 << 20),
                ulimits: vec![],
                entitlements: vec![],
            },
        };
        // A Raft log an older kiln wrote (JSON, without the newer fields) still decodes.
        let mut old: serde_json::Value = serde_json::to_value(&spec).unwrap();
        for key in ["secrets", "ssh", "run", "named_contexts", "pull", "no_cache_filter", "context_manifest"] {
            old.as_object_mut().unwrap().remove(key);
        }
        let old: BuildSpec = serde_json::from_value(old).expect("an older build spec decodes");
        assert!(old.secrets.is_empty() && old.run == RunOptions::default() && !old.pull && old.context_manifest.is_none());
        let principal = Principal { role: Role::User, name: "t".into() };
        let origin = "127.0.0.1:7401".parse().unwrap();
        let req = CoordinatorRequest::Forward {
            principal,
            origin,
            request: Box::new(Forwarded::Client(ClientRequest::Submit(Box::new(spec)))),
            key: None,
        };
        // Sent borrowed, received owned: the same bytes.
        let bytes = wire::encode(&CallRef::Coordinator(&req)).unwrap();
        assert_eq!(bytes, wire::encode(&Call::Coordinator(req.clone())).unwrap());
        assert_eq!(wire::decode::<Call>(&bytes).unwrap(), Call::Coordinator(req));
        // A slice report with its manifest's descriptor, typed.
        let manifest = crate::oci::Descriptor {
            platform: Some((&"linux/arm/v7".parse::<crate::Platform>().unwrap()).into()),
            ..crate::oci::Descriptor::new(crate::oci::MEDIA_MANIFEST, crate::Digest::of(b"m"), 9)
        };
        let outcome = SliceOutcome {
            build: 1,
            slice: 0,
            attempt: 1,
            manifest,
            attestation: None,
            emulated: false,
            emulated_steps: vec![],
            duration_ms: 5,
            cache_hits: 1,
            cache_misses: 2,
            cache_peer_hits: 0,
            records: vec![],
            step_records: vec!["r".into()],
            steps: vec![],
        };
        let call = Call::Agent(AgentRequest::SliceDone(outcome));
        assert_eq!(wire::decode::<Call>(&wire::encode(&call).unwrap()).unwrap(), call);
        // A chunk table answer, as peers send it.
        let table = crate::chunks::ChunkTable::compute(&mut &[7u8; 100_000][..], 100_000, crate::chunks::MIN_CHUNK).unwrap().0;
        let answer: Result<PeerResponse, wire::RemoteError> = Ok(PeerResponse::Table(table));
        assert_eq!(wire::decode::<Result<PeerResponse, wire::RemoteError>>(&wire::encode(&answer).unwrap()).unwrap(), answer);
        let p = Principal::from_common_name("agent:a1").unwrap();
        assert_eq!(p, Principal { role: Role::Agent, name: "a1".into() });
        assert_eq!(Principal::from_common_name(&p.common_name()), Some(p));
        assert_eq!(Principal::from_common_name("root:x"), None);
    }
}
