//! The client side of a farm, shared by the CLI and the agents: join with a token (getting a
//! certificate for a key made here), then call any coordinator, moving to the next one when a
//! coordinator is unreachable or busy electing a leader. A [`Farm`] is typed by the protocol it
//! speaks ([`ClientFarm`] for the CLI, [`AgentFarm`] for agents): neither can send the other's
//! requests.

use crate::api::{AgentRequest, AgentResponse, BlobRequest, BlobResponse, CallRef, ClientRequest, ClientResponse};
use crate::api::{Grant, JoinRequest, JoinResponse, Principal, Reply, Tagged, Token};
use crate::digest::Digest;
use crate::store::{ContentStore, StoreError};
use crate::transport::{self, Identity, KeyRequest, TransportError};
use crate::wire::{Envelope, ErrorCode, WireError};
use rustls::pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Size of the chunks a blob travels in between a coordinator and its clients.
pub const BLOB_CHUNK: u32 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("transferring blob {digest}: {source}")]
    Transport { digest: String, source: TransportError },
    #[error("transferring blob {digest}: unexpected answer {answer}")]
    Unexpected { digest: String, answer: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Parses `ADDR[,ADDR..]`.
pub fn parse_hosts(list: &str) -> Result<Vec<SocketAddr>, String> {
    let hosts: Result<Vec<SocketAddr>, String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|e| format!("--host {s:?}: {e} (expected IP:PORT)")))
        .collect();
    let hosts = hosts?;
    if hosts.is_empty() {
        return Err("--host needs at least one coordinator address (IP:PORT)".into());
    }
    Ok(hosts)
}

/// How long a farm client waits, in one place (the registry client has its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening a QUIC connection to a coordinator (default 3000 ms).
    pub connect_ms: u64,
    /// Connecting to a coordinator to join (default 5000 ms).
    pub join_connect_ms: u64,
    /// The join request itself (default 10000 ms).
    pub join_request_ms: u64,
    /// Each blob chunk: per attempt, and in all with retries (default 30000 ms).
    pub blob_chunk_ms: u64,
    /// First pause between retries of a call; it doubles up to `retry_pause_max_ms`
    /// (default 50 and 1000 ms).
    pub retry_pause_min_ms: u64,
    pub retry_pause_max_ms: u64,
    /// The QUIC endpoint's own clocks.
    pub quic: transport::Timeouts,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: 3_000,
            join_connect_ms: 5_000,
            join_request_ms: 10_000,
            blob_chunk_ms: 30_000,
            retry_pause_min_ms: 50,
            retry_pause_max_ms: 1_000,
            quic: transport::Timeouts::default(),
        }
    }
}

/// What [`Farm::send_blob`] reads from: it seeks when an upload resumes.
pub trait ReadSeek: std::io::Read + std::io::Seek {}

impl<T: std::io::Read + std::io::Seek> ReadSeek for T {}

/// A protocol a [`Farm`] speaks with the coordinators, implemented by its request type.
pub trait FarmProtocol: Serialize + std::fmt::Debug + Send + Sync {
    type Response: DeserializeOwned + std::fmt::Debug + Send;
    /// This request, tagged with its protocol, as a coordinator's frame carries it.
    fn tagged(&self) -> CallRef<'_>;
    /// The answer of this protocol in a reply (`Err`: the reply is of another protocol, named).
    fn answer(reply: Reply) -> Result<Self::Response, &'static str>;
    /// A blob transfer request of this protocol (agents send theirs under a slice's grant).
    fn blob(request: BlobRequest, grant: Option<Grant>) -> Self;
    /// The blob transfer answer in a response (`Err`: another answer).
    fn blob_answer(response: Self::Response) -> Result<BlobResponse, Self::Response>;
}

impl FarmProtocol for ClientRequest {
    type Response = ClientResponse;
    fn tagged(&self) -> CallRef<'_> {
        Tagged::Client(self)
    }
    fn answer(reply: Reply) -> Result<ClientResponse, &'static str> {
        match reply {
            Tagged::Client(r) => Ok(r),
            other => Err(other.protocol()),
        }
    }
    fn blob(request: BlobRequest, _grant: Option<Grant>) -> Self {
        ClientRequest::Blob(request)
    }
    fn blob_answer(response: ClientResponse) -> Result<BlobResponse, ClientResponse> {
        match response {
            ClientResponse::Blob(b) => Ok(b),
            other => Err(other),
        }
    }
}

impl FarmProtocol for AgentRequest {
    type Response = AgentResponse;
    fn tagged(&self) -> CallRef<'_> {
        Tagged::Agent(self)
    }
    fn answer(reply: Reply) -> Result<AgentResponse, &'static str> {
        match reply {
            Tagged::Agent(r) => Ok(r),
            other => Err(other.protocol()),
        }
    }
    fn blob(request: BlobRequest, grant: Option<Grant>) -> Self {
        AgentRequest::Blob(request, grant)
    }
    fn blob_answer(response: AgentResponse) -> Result<BlobResponse, AgentResponse> {
        match response {
            AgentResponse::Blob(b) => Ok(b),
            other => Err(other),
        }
    }
}

/// The CLI's connection to a farm.
pub type ClientFarm = Farm<ClientRequest>;
/// An agent's connection to a farm.
pub type AgentFarm = Farm<AgentRequest>;

/// A connection to the farm with failover across its coordinators, speaking protocol `P`.
pub struct Farm<P> {
    hosts: Vec<SocketAddr>,
    endpoint: quinn::Endpoint,
    /// The client configuration when `endpoint` is shared with other farms
    /// ([`Farm::on_endpoint`]); `None`: the endpoint's own.
    shared: Option<quinn::ClientConfig>,
    current: Mutex<Option<(usize, quinn::Connection)>>,
    /// The coordinator that answered the last call, plus one (0: none yet).
    answered: AtomicUsize,
    start: AtomicUsize,
    next_id: AtomicU64,
    pub principal: Principal,
    ca: CertificateDer<'static>,
    identity: Identity,
    timeouts: Timeouts,
    /// The slice grant blob transfers are sent under (agents; see [`Farm::with_grant`]).
    grant: Option<Grant>,
    protocol: std::marker::PhantomData<fn(P)>,
}

/// Errors a retry elsewhere may cure.
fn retryable(e: &TransportError) -> bool {
    match e {
        TransportError::Remote(r) => matches!(r.code, ErrorCode::Unavailable | ErrorCode::NotLeader),
        TransportError::Connect { .. } | TransportError::Timeout { .. } | TransportError::Closed(_) | TransportError::Io(_) => true,
        TransportError::Tls(_) | TransportError::Wire(_) => false,
    }
}

/// One join request to the coordinator at `addr`, on an endpoint without a certificate
/// ([`transport::joining_client`]).
pub async fn join_at(
    joining: &quinn::Endpoint,
    addr: SocketAddr,
    request: &JoinRequest,
    timeouts: &Timeouts,
) -> Result<JoinResponse, TransportError> {
    let conn = transport::connect(joining, addr, Duration::from_millis(timeouts.join_connect_ms)).await?;
    let deadline_ms = u32::try_from(timeouts.join_request_ms).unwrap_or(u32::MAX);
    let env = Envelope { request_id: 0, deadline_ms, body: CallRef::Join(request) };
    match transport::call::<CallRef, Reply>(&conn, &env).await? {
        Tagged::Join(r) => Ok(r),
        other => Err(other_protocol(other.protocol())),
    }
}

fn other_protocol(protocol: &str) -> TransportError {
    TransportError::Wire(WireError::Decode(format!("the coordinator answered in the {protocol} protocol")))
}

impl<P: FarmProtocol> Farm<P> {
    /// Exchanges `token` for a certificate at the first coordinator that answers, then opens
    /// the farm with it. `name` names an agent (users get their token's tenant).
    pub async fn join(hosts: &[SocketAddr], token: &str, name: &str) -> Result<Farm<P>, TransportError> {
        Farm::join_with(hosts, token, name, Timeouts::default()).await
    }

    /// [`Farm::join`] with the given timeouts (kept by the farm it opens).
    pub async fn join_with(hosts: &[SocketAddr], token: &str, name: &str, timeouts: Timeouts) -> Result<Farm<P>, TransportError> {
        Farm::join_with_key(hosts, token, name, None, timeouts).await
    }

    /// [`Farm::join_with`] with the key in `key_pem` (an agent's own, kept across restarts;
    /// its registration is bound to it), or a new one.
    pub async fn join_with_key(
        hosts: &[SocketAddr],
        token: &str,
        name: &str,
        key_pem: Option<&str>,
        timeouts: Timeouts,
    ) -> Result<Farm<P>, TransportError> {
        let parsed = Token::parse(token).map_err(TransportError::Tls)?;
        let joining = transport::joining_client(Some(&parsed.ca_fingerprint))?;
        let mut last = None;
        for &addr in hosts {
            let key = match key_pem {
                Some(pem) => KeyRequest::from_key_pem(pem)?,
                None => KeyRequest::new()?,
            };
            let request = JoinRequest::Token { token: token.trim().to_string(), name: name.to_string(), csr_der: key.csr_der.clone() };
            match join_at(&joining, addr, &request, &timeouts).await {
                Ok(JoinResponse::Joined { cert_der, ca_der, principal }) => {
                    joining.close(0u32.into(), b"joined");
                    let identity = key.into_identity(cert_der);
                    return Farm::open(hosts, &CertificateDer::from(ca_der), &identity, principal)?.with_timeouts(timeouts);
                }
                Ok(other) => last = Some(TransportError::Closed(format!("unexpected answer to a join: {other:?}"))),
                Err(e) if retryable(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(TransportError::Closed("no coordinator given".into())))
    }

    pub fn open(
        hosts: &[SocketAddr],
        ca: &CertificateDer<'static>,
        identity: &Identity,
        principal: Principal,
    ) -> Result<Farm<P>, TransportError> {
        Ok(Farm {
            hosts: hosts.to_vec(),
            endpoint: transport::client(ca, Some(identity))?,
            shared: None,
            current: Mutex::new(None),
            answered: AtomicUsize::new(0),
            start: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            principal,
            ca: ca.clone(),
            identity: identity.clone(),
            timeouts: Timeouts::default(),
            grant: None,
            protocol: std::marker::PhantomData,
        })
    }

    /// The farm with other timeouts (its endpoint is opened again with their QUIC clocks).
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Result<Farm<P>, TransportError> {
        if timeouts.quic != self.timeouts.quic {
            match self.shared {
                Some(_) => self.shared = Some(transport::client_config(&self.ca, Some(&self.identity), &timeouts.quic)?),
                None => self.endpoint = transport::client_with(&self.ca, Some(&self.identity), &timeouts.quic)?,
            }
        }
        self.timeouts = timeouts;
        Ok(self)
    }

    /// The farm opening its connections on `endpoint`, which other farms share (one UDP socket
    /// for many identities: a load generator's simulated agents), with its own certificate.
    pub fn on_endpoint(mut self, endpoint: quinn::Endpoint) -> Result<Farm<P>, TransportError> {
        self.shared = Some(transport::client_config(&self.ca, Some(&self.identity), &self.timeouts.quic)?);
        self.endpoint = endpoint;
        Ok(self)
    }

    /// The farm sending its blob transfers under `grant` (an agent fetching a slice's context).
    pub fn with_grant(mut self, grant: Option<Grant>) -> Farm<P> {
        self.grant = grant;
        self
    }

    pub fn grant(&self) -> Option<Grant> {
        self.grant.clone()
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The CA and this client's identity, to open connections to other endpoints of the farm.
    pub fn credentials(&self) -> (CertificateDer<'static>, Identity) {
        (self.ca.clone(), self.identity.clone())
    }

    /// The coordinator this farm's calls go to now, if one is connected.
    pub async fn current_host(&self) -> Option<SocketAddr> {
        self.current.lock().await.as_ref().map(|(i, _)| self.hosts[*i])
    }

    /// The coordinator that answered this farm's last call, even if its connection was
    /// dropped since (by a failed call of another task).
    pub fn answered_host(&self) -> Option<SocketAddr> {
        self.answered.load(Ordering::Relaxed).checked_sub(1).map(|i| self.hosts[i])
    }

    async fn connection(&self) -> Result<(usize, quinn::Connection), TransportError> {
        let mut current = self.current.lock().await;
        if let Some((i, c)) = &*current {
            if c.close_reason().is_none() {
                return Ok((*i, c.clone()));
            }
        }
        let start = self.start.load(Ordering::Relaxed);
        let mut last = None;
        for k in 0..self.hosts.len() {
            let i = (start + k) % self.hosts.len();
            let timeout = Duration::from_millis(self.timeouts.connect_ms);
            let connected = match &self.shared {
                Some(config) => transport::connect_with(&self.endpoint, config.clone(), self.hosts[i], timeout).await,
                None => transport::connect(&self.endpoint, self.hosts[i], timeout).await,
            };
            match connected {
                Ok(c) => {
                    *current = Some((i, c.clone()));
                    return Ok((i, c));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(TransportError::Closed("no coordinator given".into())))
    }

    /// One request; retried on another coordinator (or after an election) until `patience`
    /// runs out. `deadline` bounds each attempt.
    pub async fn call(&self, request: &P, deadline: Duration, patience: Duration) -> Result<P::Response, TransportError> {
        let give_up = Instant::now() + patience;
        let mut pause = Duration::from_millis(self.timeouts.retry_pause_min_ms);
        loop {
            let attempt = async {
                let (i, conn) = self.connection().await.map_err(|e| (self.start.load(Ordering::Relaxed), e))?;
                let env = Envelope {
                    request_id: self.next_id.fetch_add(1, Ordering::Relaxed),
                    deadline_ms: deadline.as_millis().min(u32::MAX as u128) as u32,
                    body: request.tagged(),
                };
                let reply = transport::call::<CallRef, Reply>(&conn, &env).await.map_err(|e| (i, e))?;
                self.answered.store(i + 1, Ordering::Relaxed);
                P::answer(reply).map_err(|other| (i, other_protocol(other)))
            };
            let e = match attempt.await {
                Ok(r) => return Ok(r),
                Err((i, e)) => {
                    // The coordinator itself is in trouble, or cannot serve now (no leader it
                    // knows of; a leader no quorum hears, which cannot know of the new one):
                    // next time start with the next one.
                    if !matches!(&e, TransportError::Remote(r) if r.code != ErrorCode::Unavailable) {
                        *self.current.lock().await = None;
                        self.start.store(i + 1, Ordering::Relaxed);
                    }
                    e
                }
            };
            if !retryable(&e) || Instant::now() + pause > give_up {
                return Err(e);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(self.timeouts.retry_pause_max_ms));
        }
    }

    /// Closes the farm's connections (a shared endpoint stays open for the others).
    pub fn close(&self) {
        if self.shared.is_some() {
            if let Ok(current) = self.current.try_lock() {
                if let Some((_, c)) = &*current {
                    c.close(0u32.into(), b"bye");
                }
            }
            return;
        }
        self.endpoint.close(0u32.into(), b"bye");
    }

    /// Fetches blob `d` into `store` chunk by chunk; it is kept only if it hashes to `d`.
    pub async fn fetch_blob(&self, store: &ContentStore, d: &Digest) -> Result<(), BlobError> {
        if store.has(d) {
            return Ok(());
        }
        let tmp = store.temp_path();
        let result = self.fetch_into(store, d, &tmp).await;
        let _ = std::fs::remove_file(&tmp);
        result
    }

    async fn fetch_into(&self, store: &ContentStore, d: &Digest, tmp: &std::path::Path) -> Result<(), BlobError> {
        use std::io::Write;
        let io = |source| BlobError::Io { what: tmp.display().to_string(), source };
        let mut file = std::fs::File::create(tmp).map_err(io)?;
        let mut offset = 0u64;
        loop {
            let req = P::blob(BlobRequest::Get { digest: d.to_string(), offset, len: BLOB_CHUNK }, self.grant.clone());
            let chunk = Duration::from_millis(self.timeouts.blob_chunk_ms);
            let answer = self.call(&req, chunk, chunk).await;
            match P::blob_answer(answer.map_err(|source| BlobError::Transport { digest: d.to_string(), source })?) {
                Ok(BlobResponse::Bytes(b)) => {
                    file.write_all(&b).map_err(io)?;
                    offset += b.len() as u64;
                    // The server sends whole chunks until the end: a short one is the last.
                    if b.len() < BLOB_CHUNK as usize {
                        break;
                    }
                }
                other => return Err(BlobError::Unexpected { digest: d.to_string(), answer: format!("{other:?}") }),
            }
        }
        drop(file);
        store.put_reader(&mut std::fs::File::open(tmp).map_err(io)?, d)?;
        Ok(())
    }

    /// Sends what `reader` holds as blob `digest`, chunk by chunk; the receiver verifies it.
    /// Returns the bytes sent.
    /// `owner`: the tenant an agent returns the blob for (ignored for other callers).
    /// The receiver's offset counts: when it holds another one (an earlier sender was
    /// interrupted), the upload goes on from there.
    pub async fn send_blob(&self, digest: &str, reader: &mut (dyn ReadSeek + Send), owner: Option<&str>) -> Result<u64, BlobError> {
        let mut offset = 0u64;
        let mut resumes = 0;
        let mut buf = vec![0u8; BLOB_CHUNK as usize];
        loop {
            let mut n = 0;
            while n < buf.len() {
                match reader.read(&mut buf[n..]).map_err(|source| BlobError::Io { what: format!("reading blob {digest}"), source })? {
                    0 => break,
                    k => n += k,
                }
            }
            let last = n < buf.len();
            let req = P::blob(
                BlobRequest::Put { digest: digest.to_string(), offset, data: buf[..n].to_vec(), last, owner: owner.map(str::to_string) },
                self.grant.clone(),
            );
            let chunk = Duration::from_millis(self.timeouts.blob_chunk_ms);
            match self.call(&req, chunk, chunk).await.map(P::blob_answer) {
                Ok(Ok(BlobResponse::Stored)) => {}
                Ok(Ok(BlobResponse::Resume { offset: at })) if resumes < 8 => {
                    resumes += 1;
                    reader
                        .seek(std::io::SeekFrom::Start(at))
                        .map_err(|source| BlobError::Io { what: format!("resuming blob {digest} at {at}"), source })?;
                    offset = at;
                    continue;
                }
                Ok(other) => return Err(BlobError::Unexpected { digest: digest.to_string(), answer: format!("{other:?}") }),
                Err(source) => return Err(BlobError::Transport { digest: digest.to_string(), source }),
            }
            offset += n as u64;
            if last {
                return Ok(offset);
            }
        }
    }
}
