//! The agent's peer side: its QUIC endpoint serves its content store and step cache records to
//! the farm, and [`Peer::fetch`] gets a blob from several peers at once.
//!
//! A blob travels as chunks of its [`ChunkTable`]: the fetcher asks every source for the table
//! (sources that disagree with the majority are not used), then keeps a few chunk requests in
//! flight per source as the [`Plan`] decides. Every chunk is checked against its sha256 before
//! it is written; a source that sends a bad one is dropped for this blob and the chunk is asked
//! of another; a source whose connection fails costs only its unfinished chunks. The assembled
//! file enters the store only if it hashes to the blob's digest. While a fetch runs, the chunks
//! already verified are served to other agents fetching the same blob.

use crate::gc;
use kiln_shared::api::{PeerRequest, PeerResponse, Principal, Role};
use kiln_shared::chunks::{Bitmap, ChunkTable, Plan, Verdict};
use kiln_shared::digest::Digest;
use kiln_shared::join::join_all;
use kiln_shared::store::{ContentStore, StoreError};
use kiln_shared::transport::{self, Identity, TransportError};
use kiln_shared::wire::{Envelope, ErrorCode, RemoteError};
use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Chunk requests kept in flight per source: two hide a round trip behind a 4 MiB chunk; more
/// only add buffers (transfer bench: 2 and 4 measure alike, 3 no better).
const DEPTH: usize = 2;
/// Memory and file alignment of direct I/O.
const DIRECT_ALIGN: usize = 4096;
/// Bytes written between background syncs of a blob being fetched.
const SYNC_EVERY: u64 = 64 << 20;
/// How long a peer transfer waits, from the agent's config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerTimeouts {
    /// Connecting to another agent (default 3000 ms).
    pub connect_ms: u64,
    /// One chunk (default 30000 ms).
    pub chunk_ms: u64,
    /// One step cache record (default 10000 ms).
    pub record_ms: u64,
    /// A blob's chunk table, asked of every source at the start (default 20000 ms) and again
    /// of a source that is itself fetching (default 10000 ms).
    pub table_ms: u64,
    pub table_refresh_ms: u64,
    /// A fetch that keeps no chunk for this long gives up (default 30 s).
    pub stall_secs: u64,
    pub quic: transport::Timeouts,
}

impl Default for PeerTimeouts {
    fn default() -> Self {
        PeerTimeouts {
            connect_ms: 3_000,
            chunk_ms: 30_000,
            record_ms: 10_000,
            table_ms: 20_000,
            table_refresh_ms: 10_000,
            stall_secs: 30,
            quic: transport::Timeouts::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("blob {digest}: no peer could give it ({reasons})")]
    NoSource { digest: Digest, reasons: String },
    #[error("blob {digest}: {missing} of {total} chunks could not be fetched from any peer ({reasons})")]
    Incomplete { digest: Digest, missing: usize, total: usize, reasons: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("blob {digest}: {what}: {source}")]
    Io { digest: Digest, what: String, source: std::io::Error },
    #[error("step cache record {name}: {reason}")]
    Record { name: String, reason: String },
}

/// What a fetch did, per source.
#[derive(Debug, Default, Clone)]
pub struct FetchReport {
    pub bytes: u64,
    pub from: Vec<(SocketAddr, u64)>,
    /// Sources not used or dropped, and why.
    pub dropped: Vec<(SocketAddr, String)>,
}

/// Bytes per second through a token bucket: each caller reserves its bytes' time slot and
/// waits for its start, so the long-run rate never exceeds the cap.
pub struct RateLimit {
    bytes_per_s: u64,
    next: tokio::sync::Mutex<Instant>,
}

impl RateLimit {
    pub fn new(bytes_per_s: u64) -> Option<RateLimit> {
        (bytes_per_s > 0).then(|| RateLimit { bytes_per_s, next: tokio::sync::Mutex::new(Instant::now()) })
    }

    pub async fn take(&self, bytes: u64) {
        let start = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_s as f64);
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }
}

/// A blob being fetched: its verified chunks are already in `path`.
struct Partial {
    table: Arc<ChunkTable>,
    path: PathBuf,
    file: Arc<std::fs::File>,
    /// The same file for serving its chunks: buffered reads (a direct-I/O descriptor would
    /// need aligned buffers).
    reader: Arc<std::fs::File>,
    have: Mutex<Bitmap>,
    /// Opened with O_DIRECT: writes are whole aligned blocks.
    direct: bool,
}

pub struct Peer {
    pub store: ContentStore,
    /// The agent's data dir (step cache records in `cache/`, what `du` and `prune` work on).
    pub root: PathBuf,
    partials: Mutex<HashMap<Digest, Arc<Partial>>>,
    /// Chunk tables of stored blobs already served (a blob's table never changes).
    tables: Mutex<HashMap<Digest, Arc<ChunkTable>>>,
    up: Option<RateLimit>,
    down: Option<RateLimit>,
    /// Connections to other agents' peer endpoints.
    pool: kiln_shared::pool::Pool,
    /// Bytes served to peers.
    pub served: AtomicU64,
    /// What other agents may read here, and the grants this agent presents to them.
    pub access: crate::access::Access,
    /// Chunk size of the tables this agent computes ([`kiln_shared::chunks::CHUNK_SIZE`]).
    pub chunk_size: u32,
    timeouts: PeerTimeouts,
}

fn remote(code: ErrorCode, message: impl Into<String>) -> RemoteError {
    RemoteError { code, message: message.into() }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A step cache record's file name: 64 hex digits, nothing that could leave the directory.
pub fn record_path(root: &Path, name: &str) -> Option<PathBuf> {
    (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())).then(|| root.join("cache").join(format!("{name}.json")))
}

impl Peer {
    /// `limit_bytes_per_s` caps both what peers fetch from this agent and what it fetches.
    pub fn new(root: &Path, ca: &CertificateDer<'static>, identity: &Identity, limit_bytes_per_s: u64) -> Result<Peer, TransportError> {
        Peer::with_timeouts(root, ca, identity, limit_bytes_per_s, PeerTimeouts::default())
    }

    pub fn with_timeouts(
        root: &Path,
        ca: &CertificateDer<'static>,
        identity: &Identity,
        limit_bytes_per_s: u64,
        timeouts: PeerTimeouts,
    ) -> Result<Peer, TransportError> {
        let store = ContentStore::open(&root.join("content")).map_err(|e| TransportError::Closed(e.to_string()))?;
        Ok(Peer {
            store,
            root: root.to_path_buf(),
            partials: Mutex::new(HashMap::new()),
            tables: Mutex::new(HashMap::new()),
            up: RateLimit::new(limit_bytes_per_s),
            down: RateLimit::new(limit_bytes_per_s),
            pool: kiln_shared::pool::Pool::new(
                transport::client_with(ca, Some(identity), &timeouts.quic)?,
                Duration::from_millis(timeouts.connect_ms),
            ),
            served: AtomicU64::new(0),
            access: crate::access::Access::new(ca.as_ref(), root),
            chunk_size: kiln_shared::chunks::CHUNK_SIZE,
            timeouts,
        })
    }

    /// Serves peers on `addr` (port 0: any free port); returns the endpoint, whose address
    /// peers dial. Closing the endpoint stops the server.
    pub fn listen(
        self: &Arc<Self>,
        addr: SocketAddr,
        ca: &CertificateDer<'static>,
        identity: &Identity,
    ) -> Result<quinn::Endpoint, TransportError> {
        let endpoint = transport::server_with(addr, ca, identity, false, &self.timeouts.quic, transport::Connections::Few)?;
        // Detached: the server ends when its endpoint closes, which the caller owns.
        kiln_shared::task::spawn("peer server", self.clone().serve(endpoint.clone())).detach();
        Ok(endpoint)
    }

    /// Accepts peers on `endpoint` until it closes.
    pub async fn serve(self: Arc<Self>, endpoint: quinn::Endpoint) {
        let mut conns = tokio::task::JoinSet::new();
        while let Some(incoming) = endpoint.accept().await {
            let peer = self.clone();
            conns.spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let caller = transport::peer_common_name(&conn).and_then(|cn| Principal::from_common_name(&cn));
                let key = transport::peer_key_fingerprint(&conn).unwrap_or_default();
                transport::serve_connection_with_bodies(conn, move |req: PeerRequest| {
                    let (peer, caller, key) = (peer.clone(), caller.clone(), key.clone());
                    async move {
                        let req = peer.admit(caller.as_ref(), &key, req)?;
                        let role = caller.map(|p| p.role);
                        match req {
                            // Chunks travel raw after their answer: no copy into a frame.
                            PeerRequest::GetChunk { digest, index } => {
                                let d = digest.parse::<Digest>().map_err(|e| remote(ErrorCode::BadRequest, format!("{digest:?}: {e}")))?;
                                if !matches!(role, Some(Role::Agent | Role::Coordinator)) {
                                    return Err(remote(ErrorCode::PermissionDenied, "only agents and coordinators fetch chunks"));
                                }
                                let data = peer.chunk(&d, index as usize).await?;
                                Ok((PeerResponse::Body { len: data.len() as u64 }, Some(bytes::Bytes::from(data))))
                            }
                            req => peer.answer(role, req).await.map(|r| (r, None)),
                        }
                    }
                })
                .await;
            });
            while conns.try_join_next().is_some() {}
        }
    }

    /// The request an agent may have answered, unwrapped from its grants (see
    /// [`crate::access`]); coordinators' requests pass as they are.
    fn admit(&self, caller: Option<&Principal>, key: &str, req: PeerRequest) -> Result<PeerRequest, RemoteError> {
        let Some(p) = caller.filter(|p| p.role == Role::Agent) else {
            return match req {
                PeerRequest::Granted { .. } => Err(remote(ErrorCode::BadRequest, "grants are for agents' requests")),
                req => Ok(req),
            };
        };
        if self.access.is_revoked(key) {
            return Err(remote(ErrorCode::PermissionDenied, format!("the certificate of agent {} was revoked", p.name)));
        }
        let denied = |what: String| remote(ErrorCode::PermissionDenied, what);
        let PeerRequest::Granted { grants, request } = req else {
            return Err(denied(kiln_shared::api::GrantError::Missing.to_string()));
        };
        let valid = self.access.valid(&grants, &p.name).map_err(|e| denied(e.to_string()))?;
        match *request {
            PeerRequest::ChunkTable { ref digest } | PeerRequest::GetChunk { ref digest, .. } | PeerRequest::GetBlob { ref digest, .. } => {
                if !self.access.may_read_blob(&valid, digest) {
                    return Err(denied(format!("no grant agent {} holds names blob {digest}", p.name)));
                }
            }
            PeerRequest::GetRecord { ref name } => {
                let bytes = record_path(&self.root, name).and_then(|path| std::fs::read(path).ok());
                if !bytes.is_some_and(|b| crate::access::Access::may_read_record(&valid, name, &b)) {
                    // Not found and not granted answer alike: a record's existence is not told.
                    return Err(remote(ErrorCode::NotFound, format!("no step cache record {name} in the grant's scope")));
                }
            }
            _ => return Err(denied("agents fetch blobs and records only".to_string())),
        }
        Ok(*request)
    }

    /// `body` as this agent sends it to a peer: under the grants of the slices it runs.
    fn granted(&self, body: PeerRequest) -> PeerRequest {
        let grants = self.access.presented();
        if grants.is_empty() {
            return body;
        }
        PeerRequest::Granted { grants, request: Box::new(body) }
    }

    async fn answer(&self, role: Option<Role>, req: PeerRequest) -> Result<PeerResponse, RemoteError> {
        let coordinator = role == Some(Role::Coordinator);
        if !(coordinator || role == Some(Role::Agent)) {
            return Err(remote(ErrorCode::PermissionDenied, "only agents and coordinators talk to an agent's peer endpoint"));
        }
        let parse = |d: &str| d.parse::<Digest>().map_err(|e| remote(ErrorCode::BadRequest, format!("{d:?}: {e}")));
        match req {
            PeerRequest::ChunkTable { digest } => Ok(PeerResponse::Table(self.table(&parse(&digest)?).await?)),
            PeerRequest::GetBlob { digest, offset, len } => {
                let d = parse(&digest)?;
                use std::io::Read;
                let f = self.store.open_blob(&d).map_err(|e| remote(ErrorCode::NotFound, e.to_string()))?;
                let mut buf = Vec::new();
                ReadAt { file: &f, offset }
                    .take(u64::from(len.min(kiln_shared::client::BLOB_CHUNK)))
                    .read_to_end(&mut buf)
                    .map_err(|e| remote(ErrorCode::Internal, e.to_string()))?;
                Ok(PeerResponse::Bytes(buf))
            }
            PeerRequest::GetRecord { name } => {
                let path =
                    record_path(&self.root, &name).ok_or_else(|| remote(ErrorCode::BadRequest, format!("{name:?} is no record name")))?;
                std::fs::read(path)
                    .map(PeerResponse::Bytes)
                    .map_err(|_| remote(ErrorCode::NotFound, format!("no step cache record {name}")))
            }
            PeerRequest::Usage if coordinator => {
                let root = self.root.clone();
                let u =
                    tokio::task::spawn_blocking(move || gc::usage(&root)).await.map_err(|e| remote(ErrorCode::Internal, e.to_string()))?;
                Ok(PeerResponse::Usage(u))
            }
            PeerRequest::Prune(spec) if coordinator => {
                let root = self.root.clone();
                let r = tokio::task::spawn_blocking(move || gc::prune(&root, &spec))
                    .await
                    .map_err(|e| remote(ErrorCode::Internal, e.to_string()))?
                    .map_err(|e| remote(ErrorCode::Internal, e.to_string()))?;
                Ok(PeerResponse::Pruned(r))
            }
            PeerRequest::Usage | PeerRequest::Prune(_) | PeerRequest::Granted { .. } => {
                Err(remote(ErrorCode::PermissionDenied, "only coordinators manage an agent's storage"))
            }
            // Served with its body by the connection's handler.
            PeerRequest::GetChunk { .. } => Err(remote(ErrorCode::BadRequest, "a chunk is fetched with its body")),
        }
    }

    /// The store's table for a blob: computed on a blocking thread the first time, then kept in
    /// memory, so serving a chunk reads nothing but the chunk.
    async fn stored_table(&self, d: &Digest) -> Result<Arc<ChunkTable>, RemoteError> {
        if let Some(t) = lock(&self.tables).get(d).filter(|t| t.chunk_size == self.chunk_size) {
            return Ok(t.clone());
        }
        let (store, dd, size) = (self.store.clone(), d.clone(), self.chunk_size);
        let t = tokio::task::spawn_blocking(move || store.table_sized(&dd, size))
            .await
            .map_err(|e| remote(ErrorCode::Internal, e.to_string()))?
            .map_err(|e| remote(ErrorCode::NotFound, e.to_string()))?;
        let t = Arc::new(t);
        lock(&self.tables).insert(d.clone(), t.clone());
        Ok(t)
    }

    async fn table(&self, d: &Digest) -> Result<ChunkTable, RemoteError> {
        if self.store.has(d) {
            return self.stored_table(d).await.map(|t| (*t).clone());
        }
        let partial = lock(&self.partials).get(d).cloned();
        match partial {
            Some(p) => Ok(ChunkTable { have: Some(lock(&p.have).clone()), ..(*p.table).clone() }),
            None => Err(remote(ErrorCode::NotFound, format!("blob {d} is not here"))),
        }
    }

    async fn chunk(&self, d: &Digest, i: usize) -> Result<Vec<u8>, RemoteError> {
        let (file, table) = if self.store.has(d) {
            let t = self.stored_table(d).await?;
            (Arc::new(self.store.open_blob(d).map_err(|e| remote(ErrorCode::NotFound, e.to_string()))?), t)
        } else {
            let p = lock(&self.partials).get(d).cloned().ok_or_else(|| remote(ErrorCode::NotFound, format!("blob {d} is not here")))?;
            if !lock(&p.have).get(i) {
                return Err(remote(ErrorCode::NotFound, format!("chunk {i} of {d} is not here yet")));
            }
            (p.reader.clone(), p.table.clone())
        };
        if i >= table.chunks() {
            return Err(remote(ErrorCode::BadRequest, format!("blob {d} has {} chunks, not {}", table.chunks(), i + 1)));
        }
        let (offset, len) = table.range(i);
        if let Some(up) = &self.up {
            up.take(len as u64).await;
        }
        let buf = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut buf = Vec::with_capacity(len);
            let mut at = ReadAt { file: &file, offset };
            (&mut at).take(len as u64).read_to_end(&mut buf)?;
            Ok::<_, std::io::Error>(buf)
        })
        .await
        .map_err(|e| remote(ErrorCode::Internal, e.to_string()))?
        .map_err(|e| remote(ErrorCode::Internal, format!("reading {d}: {e}")))?;
        self.served.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(buf)
    }

    async fn call(&self, addr: SocketAddr, body: PeerRequest, deadline: Duration) -> Result<PeerResponse, TransportError> {
        self.pool.call(addr, self.granted(body), deadline).await
    }

    async fn call_chunk(
        &self,
        addr: SocketAddr,
        d: &Digest,
        i: usize,
        buf: Vec<u8>,
        align: usize,
    ) -> Result<(PeerResponse, Vec<u8>, usize), TransportError> {
        let deadline = Duration::from_millis(self.timeouts.chunk_ms);
        let r = async {
            let conn = self.pool.connection(addr, deadline).await?;
            let body = self.granted(PeerRequest::GetChunk { digest: d.to_string(), index: i as u32 });
            let env =
                Envelope { request_id: self.pool.next_id(), deadline_ms: u32::try_from(self.timeouts.chunk_ms).unwrap_or(u32::MAX), body };
            transport::call_with_body(&conn, &env, kiln_shared::chunks::MAX_CHUNK as usize, buf, align).await
        }
        .await;
        self.pool.settle(addr, &r).await;
        r
    }

    /// A step cache record from the first of `sources` that has it.
    pub async fn record(&self, name: &str, sources: &[SocketAddr]) -> Result<Vec<u8>, FetchError> {
        let mut reasons = Vec::new();
        for &s in sources {
            match self.call(s, PeerRequest::GetRecord { name: name.to_string() }, Duration::from_millis(self.timeouts.record_ms)).await {
                Ok(PeerResponse::Bytes(b)) => return Ok(b),
                Ok(other) => reasons.push(format!("{s}: unexpected answer {other:?}")),
                Err(e) => reasons.push(format!("{s}: {e}")),
            }
        }
        Err(FetchError::Record {
            name: name.to_string(),
            reason: if reasons.is_empty() { "no peer holds it".into() } else { reasons.join("; ") },
        })
    }

    /// Fetches blob `d` from `sources` into the store (nothing to do if it is there).
    pub async fn fetch(&self, d: &Digest, sources: &[SocketAddr]) -> Result<FetchReport, FetchError> {
        if self.store.has(d) {
            return Ok(FetchReport::default());
        }
        // Fetched for the tenants of the slices running here: their other agents may fetch it
        // from here too, while it arrives and after.
        let digest = d.to_string();
        for g in self.access.presented() {
            self.access.note_tenant_blobs(&g.tenant, [digest.as_str()]);
        }
        let mut report = FetchReport::default();
        // Every source's table; the majority's is used (a lone source is trusted until the
        // chunks or the digest say otherwise).
        let asks = sources.iter().map(|&s| async move {
            (s, self.call(s, PeerRequest::ChunkTable { digest: d.to_string() }, Duration::from_millis(self.timeouts.table_ms)).await)
        });
        let mut tables: Vec<(SocketAddr, ChunkTable)> = Vec::new();
        // Peers that do not hold it yet may be fetching it too: they are asked again later.
        let mut later: Vec<SocketAddr> = Vec::new();
        for (s, answer) in join_all(asks).await {
            match answer {
                Ok(PeerResponse::Table(t)) => match t.validate() {
                    Ok(()) if t.digest() == *d => tables.push((s, t)),
                    Ok(()) => report.dropped.push((s, format!("its chunk table is for {}", t.digest()))),
                    Err(e) => report.dropped.push((s, e.to_string())),
                },
                Err(TransportError::Remote(e)) if e.code == ErrorCode::NotFound => later.push(s),
                Ok(other) => report.dropped.push((s, format!("unexpected answer {other:?}"))),
                Err(e) => report.dropped.push((s, e.to_string())),
            }
        }
        let mut votes: Vec<(ChunkTable, usize)> = Vec::new();
        for (_, t) in &tables {
            match votes.iter_mut().find(|(v, _)| *v == t.content()) {
                Some(v) => v.1 += 1,
                None => votes.push((t.content(), 1)),
            }
        }
        let Some(table) = votes.iter().max_by_key(|(_, n)| *n).map(|(t, _)| t.clone()) else {
            return Err(FetchError::NoSource { digest: d.clone(), reasons: reasons(&report.dropped, "no peer holds it") });
        };
        let (mut used, disagree): (Vec<_>, Vec<_>) = tables.into_iter().partition(|(_, t)| t.content() == table);
        report.dropped.extend(disagree.into_iter().map(|(s, _)| (s, "its chunk table disagrees with the other peers'".to_string())));
        used.extend(later.into_iter().map(|s| (s, ChunkTable { have: Some(Bitmap::new(table.chunks())), ..table.clone() })));

        let tmp = self.store.temp_path();
        let io = |what: &str| {
            let what = what.to_string();
            move |source| FetchError::Io { digest: d.clone(), what, source }
        };
        // Direct I/O where the filesystem has it: verified chunks go to disk without a copy
        // through the page cache (which costs a core as much as the hashing does).
        let open = |flags: i32| {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::File::options().create(true).truncate(true).read(true).write(true).custom_flags(flags).open(&tmp)
        };
        let (file, direct) = match open(nix::fcntl::OFlag::O_DIRECT.bits()) {
            Ok(f) => (f, true),
            Err(_) => (open(0).map_err(io("creating"))?, false),
        };
        let partial = Arc::new(Partial {
            table: Arc::new(table.clone()),
            path: tmp.clone(),
            file: Arc::new(file),
            reader: Arc::new(std::fs::File::open(&tmp).map_err(io("opening"))?),
            have: Mutex::new(Bitmap::new(table.chunks())),
            direct,
        });
        lock(&self.partials).insert(d.clone(), partial.clone());
        let result = self.fetch_chunks(d, &partial, &used, &mut report).await;
        lock(&self.partials).remove(d);
        let result = match result {
            Ok(()) => {
                // Every chunk passed its link of the SHA-256 chain that ends in the digest.
                partial.file.set_len(table.size).map_err(io("sizing"))?;
                let (store, path) = (self.store.clone(), partial.path.clone());
                tokio::task::spawn_blocking(move || store.insert_chunked(&path, &table))
                    .await
                    .map_err(|e| FetchError::Io {
                        digest: d.clone(),
                        what: "storing".into(),
                        source: std::io::Error::other(e.to_string()),
                    })?
                    .map_err(FetchError::from)
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&tmp);
        report.bytes = result?;
        crate::metrics::get().fetched_bytes.add(&["peer"], report.bytes);
        Ok(report)
    }

    async fn fetch_chunks(
        &self,
        d: &Digest,
        partial: &Arc<Partial>,
        sources: &[(SocketAddr, ChunkTable)],
        report: &mut FetchReport,
    ) -> Result<(), FetchError> {
        let table = &partial.table;
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|t| t.subsec_nanos() as usize).unwrap_or(0);
        let plan = Mutex::new(Plan::new(table.chunks(), DEPTH, seed));
        for (_, t) in sources {
            lock(&plan).add_source(t.have.clone());
        }
        let shared = Shared {
            plan,
            changed: tokio::sync::Notify::new(),
            progress: Mutex::new(Instant::now()),
            bytes: sources.iter().map(|_| AtomicU64::new(0)).collect(),
            dropped: Mutex::new(Vec::new()),
            refreshed: sources.iter().map(|_| Mutex::new(Instant::now())).collect(),
            broken: Mutex::new(None),
            dirty: AtomicU64::new(0),
            syncing: Arc::default(),
        };
        let loops = sources.iter().enumerate().flat_map(|(src, (addr, _))| (0..DEPTH).map(move |_| (src, *addr)));
        join_all(loops.map(|(src, addr)| self.chunk_loop(d, partial, &shared, src, addr))).await;
        for (i, (addr, _)) in sources.iter().enumerate() {
            let n = shared.bytes[i].load(Ordering::Relaxed);
            if n > 0 {
                report.from.push((*addr, n));
            }
        }
        report.dropped.extend(lock(&shared.dropped).drain(..));
        if let Some(why) = lock(&shared.broken).take() {
            return Err(FetchError::Io { digest: d.clone(), what: why, source: std::io::Error::other("the blob was not stored") });
        }
        let plan = lock(&shared.plan);
        if !plan.complete() {
            let missing = table.chunks() - plan.done();
            return Err(FetchError::Incomplete {
                digest: d.clone(),
                missing,
                total: table.chunks(),
                reasons: reasons(&report.dropped, "the peers stopped answering"),
            });
        }
        Ok(())
    }

    /// One of a source's request slots: asks for chunks until the blob is complete, the source
    /// is dropped, or nothing has been kept for `stall_secs`.
    async fn chunk_loop(&self, d: &Digest, partial: &Partial, shared: &Shared, src: usize, addr: SocketAddr) {
        let table = &partial.table;
        // One buffer per request slot, reused for every chunk it fetches.
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let next = {
                let mut plan = lock(&shared.plan);
                if plan.complete() || plan.is_gone(src) || lock(&shared.broken).is_some() {
                    shared.changed.notify_waiters();
                    return;
                }
                plan.next(src)
            };
            let Some(i) = next else {
                if lock(&shared.progress).elapsed() > Duration::from_secs(self.timeouts.stall_secs) {
                    return;
                }
                // A source that is itself fetching gets more chunks over time: ask what it has.
                let refresh = {
                    let mut last = lock(&shared.refreshed[src]);
                    let due = sources_partial(shared, src) && last.elapsed() > Duration::from_millis(200);
                    if due {
                        *last = Instant::now();
                    }
                    due
                };
                if refresh {
                    if let Ok(PeerResponse::Table(t)) = self
                        .call(
                            addr,
                            PeerRequest::ChunkTable { digest: d.to_string() },
                            Duration::from_millis(self.timeouts.table_refresh_ms),
                        )
                        .await
                    {
                        if t.content() == table.content() {
                            lock(&shared.plan).update_have(src, t.have);
                        }
                    }
                    continue;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), shared.changed.notified()).await;
                continue;
            };
            if let Some(down) = &self.down {
                down.take(table.range(i).1 as u64).await;
            }
            let align = if partial.direct { DIRECT_ALIGN } else { 1 };
            let answer = self.call_chunk(addr, d, i, std::mem::take(&mut buf), align).await;
            let (data, start) = match answer {
                Ok((PeerResponse::Body { len }, b, start)) if len == (b.len() - start) as u64 => (b, start),
                Err(TransportError::Remote(e)) if e.code == ErrorCode::NotFound && sources_partial(shared, src) => {
                    // A partial source that lost the race: the chunk goes back, the source stays.
                    let mut plan = lock(&shared.plan);
                    plan.give_back(src, i);
                    plan.update_have(src, Some(Bitmap::new(table.chunks())));
                    drop(plan);
                    shared.changed.notify_waiters();
                    continue;
                }
                Ok((other, _, _)) => {
                    self.drop_source(shared, src, addr, format!("unexpected answer {other:?}"));
                    return;
                }
                Err(e) => {
                    self.drop_source(shared, src, addr, e.to_string());
                    return;
                }
            };
            // Hashing and writing 4 MiB would hold a runtime thread: a blocking thread does it.
            let (t, file) = (partial.table.clone(), partial.file.clone());
            let (offset, _) = table.range(i);
            let checked = tokio::task::spawn_blocking(move || (t.verify(i, &data[start..]), data)).await;
            let Ok((valid, data)) = checked else { return };
            let verdict = lock(&shared.plan).received(src, i, valid);
            match verdict {
                Verdict::Kept => {
                    let direct = partial.direct;
                    let written = tokio::task::spawn_blocking(move || {
                        let mut data = data;
                        if direct {
                            // Direct I/O writes whole blocks: the last chunk is padded, and the
                            // file cut to size before it enters the store.
                            let len = data.len() - start;
                            data.resize(start + len.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN, 0);
                        }
                        file.write_all_at(&data[start..], offset).map(|_| data)
                    })
                    .await;
                    // Write back as the chunks come, so the final fsync has little left to wait for.
                    let dirty = shared.dirty.fetch_add(table.range(i).1 as u64, Ordering::Relaxed);
                    if dirty > SYNC_EVERY && !shared.syncing.swap(true, Ordering::AcqRel) {
                        shared.dirty.store(0, Ordering::Relaxed);
                        let (file, flag) = (partial.file.clone(), shared.syncing.clone());
                        tokio::task::spawn_blocking(move || {
                            let _ = file.sync_data();
                            flag.store(false, Ordering::Release);
                        });
                    }
                    let written = written.unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
                    if let Err(e) = written.as_ref() {
                        // The disk, not the peer, failed: the chunk counts as kept but is not
                        // there, so the whole fetch fails rather than store a hole.
                        *lock(&shared.broken) = Some(format!("writing chunk {i}: {e}"));
                        shared.changed.notify_waiters();
                        return;
                    }
                    lock(&partial.have).set(i);
                    shared.bytes[src].fetch_add(table.range(i).1 as u64, Ordering::Relaxed);
                    buf = written.unwrap_or_default();
                    *lock(&shared.progress) = Instant::now();
                }
                Verdict::Duplicate => buf = data,
                Verdict::Dropped => {
                    lock(&shared.dropped).push((addr, format!("sent a corrupt chunk {i}")));
                    shared.changed.notify_waiters();
                    return;
                }
            }
        }
    }

    fn drop_source(&self, shared: &Shared, src: usize, addr: SocketAddr, why: String) {
        let mut plan = lock(&shared.plan);
        if !plan.is_gone(src) {
            plan.drop_source(src);
            lock(&shared.dropped).push((addr, why));
        }
        drop(plan);
        shared.changed.notify_waiters();
    }

    pub fn close(&self) {
        self.pool.close();
    }
}

struct Shared {
    plan: Mutex<Plan>,
    changed: tokio::sync::Notify,
    progress: Mutex<Instant>,
    bytes: Vec<AtomicU64>,
    dropped: Mutex<Vec<(SocketAddr, String)>>,
    refreshed: Vec<Mutex<Instant>>,
    /// A local write failed: the fetch fails whatever the plan says.
    broken: Mutex<Option<String>>,
    /// Bytes written since the last background fdatasync, and whether one runs.
    dirty: AtomicU64,
    syncing: Arc<std::sync::atomic::AtomicBool>,
}

/// Whether `src` is itself still fetching the blob (it announced a have-map).
fn sources_partial(shared: &Shared, src: usize) -> bool {
    lock(&shared.plan).is_partial(src)
}

fn reasons(dropped: &[(SocketAddr, String)], none: &str) -> String {
    if dropped.is_empty() {
        return none.to_string();
    }
    dropped.iter().map(|(s, r)| format!("{s}: {r}")).collect::<Vec<_>>().join("; ")
}

/// A file read from an offset on, without moving a shared cursor.
struct ReadAt<'a> {
    file: &'a std::fs::File,
    offset: u64,
}

impl std::io::Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}
