//! QUIC transport with mutual TLS: every connection between CLI, coordinators and agents.
//!
//! The cluster has its own CA ([`ClusterCa`]); every party holds a certificate it issued and
//! verifies its peer's against it (TLS 1.3 only, the ring crypto provider chosen explicitly).
//! A request is one bidirectional QUIC stream carrying one [`wire`] frame each way, bounded by
//! the request's deadline. A peer without a valid certificate never gets a stream opened.

use crate::wire::{self, Envelope, ErrorCode, RemoteError, WireError, HEADER_LEN};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub const ALPN: &[u8] = b"kiln/1";
/// The name every kiln certificate carries, which clients verify.
pub const SERVER_NAME: &str = "kiln";

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot reach {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("no answer within {ms} ms")]
    Timeout { ms: u64 },
    #[error("{0}")]
    Remote(RemoteError),
    #[error("connection closed: {0}")]
    Closed(String),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

impl TransportError {
    /// A short name for the kind of failure (the `kind` label of `kiln_transport_errors_total`).
    pub fn kind(&self) -> &'static str {
        match self {
            TransportError::Tls(_) => "tls",
            TransportError::Connect { .. } => "connect",
            TransportError::Wire(_) => "wire",
            TransportError::Timeout { .. } => "timeout",
            TransportError::Remote(_) => "remote",
            TransportError::Closed(_) => "closed",
            TransportError::Io(_) => "io",
        }
    }
}

/// Counts a failure in `kiln_transport_errors_total` (an error answer, `Remote`, is the other
/// side's verdict, not a transport failure).
fn counted<T>(r: Result<T, TransportError>) -> Result<T, TransportError> {
    match &r {
        Err(TransportError::Remote(_)) | Ok(_) => {}
        Err(e) => crate::metrics::transport_errors().inc(&[e.kind()]),
    }
    r
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls(e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(e.to_string())
}

/// A certificate and its private key.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivatePkcs8KeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity { cert: self.cert.clone(), key: self.key.clone_key() }
    }
}

/// The cluster's certificate authority.
pub struct ClusterCa {
    /// For signing only: rcgen rebuilds the CA certificate from its parameters, which gives the
    /// same subject and key but not the same bytes.
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    /// The CA certificate as first made: what peers trust and what tokens pin.
    original: CertificateDer<'static>,
}

impl ClusterCa {
    pub fn generate(name: &str) -> Result<ClusterCa, TransportError> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().map_err(tls)?;
        let cert = params.self_signed(&key).map_err(tls)?;
        Ok(ClusterCa { original: cert.der().clone(), cert, key })
    }

    /// Restores a CA from its PEM certificate and key (as stored in a coordinator's data dir).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, TransportError> {
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(tls)?;
        let params = rcgen::CertificateParams::from_ca_cert_pem(cert_pem).map_err(tls)?;
        let cert = params.self_signed(&key).map_err(tls)?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(tls)?;
        Ok(ClusterCa { cert, key, original: CertificateDer::from(pem.contents) })
    }

    pub fn cert_pem(&self) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.original.as_ref());
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
        format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.original.clone()
    }

    /// Issues a certificate for `common_name` (a coordinator, an agent or a user), valid for
    /// the name clients verify and for the given IP addresses.
    /// sha256 of the CA certificate (hex): what join tokens pin.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.original)
    }

    /// Signs a certificate signing request, replacing whatever subject it asked for with
    /// `common_name`: the CA, not the requester, decides who the holder is (its role and name).
    pub fn sign_request(&self, csr_der: &[u8], common_name: &str) -> Result<CertificateDer<'static>, TransportError> {
        let der = rustls::pki_types::CertificateSigningRequestDer::from(csr_der.to_vec());
        let mut csr = rcgen::CertificateSigningRequestParams::from_der(&der).map_err(tls)?;
        csr.params.distinguished_name = rcgen::DistinguishedName::new();
        csr.params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        csr.params.subject_alt_names = vec![rcgen::SanType::DnsName(SERVER_NAME.try_into().map_err(tls)?)];
        csr.params.is_ca = rcgen::IsCa::NoCa;
        csr.params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = csr.signed_by(&self.cert, &self.key).map_err(tls)?;
        Ok(cert.der().clone())
    }

    /// Signs `message` with the CA's key (ECDSA P-256, ASN.1): what [`verify_signed`] checks
    /// with the CA certificate alone (slice grants; see [`crate::api::Grant`]).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, TransportError> {
        use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.key.serialize_der(), &rng).map_err(tls)?;
        Ok(key.sign(&rng, message).map_err(tls)?.as_ref().to_vec())
    }

    pub fn issue(&self, common_name: &str, ips: &[std::net::IpAddr]) -> Result<Identity, TransportError> {
        let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string(), "localhost".to_string()]).map_err(tls)?;
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        params.subject_alt_names.extend(ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().map_err(tls)?;
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(tls)?;
        Ok(Identity { cert: cert.der().clone(), key: PrivatePkcs8KeyDer::from(key.serialize_der()) })
    }
}

/// sha256 (hex) of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(der))
}

/// Whether `signature` is the CA's over `message` ([`ClusterCa::sign`]); `ca_der` is the CA
/// certificate, which every member of the farm holds.
pub fn verify_signed(ca_der: &[u8], message: &[u8], signature: &[u8]) -> bool {
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
    let Ok((_, ca)) = x509_parser::parse_x509_certificate(ca_der) else { return false };
    let key = ca.public_key().subject_public_key.data.to_vec();
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key).verify(message, signature).is_ok()
}

/// sha256 (hex) of a certificate's public key (its SubjectPublicKeyInfo): what binds an
/// agent's name to the key it joined with, across the certificates it is given.
pub fn key_fingerprint(cert_der: &[u8]) -> Option<String> {
    use sha2::Digest as _;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(hex::encode(sha2::Sha256::digest(cert.public_key().raw)))
}

/// [`key_fingerprint`] of the certificate a peer presented, if it presented one.
pub fn peer_key_fingerprint(conn: &quinn::Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast_ref::<Vec<CertificateDer<'static>>>()?;
    key_fingerprint(certs.first()?)
}

/// A key pair and the certificate signing request for it, made before joining: the private key
/// never leaves this process.
pub struct KeyRequest {
    key: rcgen::KeyPair,
    pub csr_der: Vec<u8>,
}

impl KeyRequest {
    pub fn new() -> Result<KeyRequest, TransportError> {
        let key = rcgen::KeyPair::generate().map_err(tls)?;
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(tls)?;
        let csr = params.serialize_request(&key).map_err(tls)?;
        Ok(KeyRequest { csr_der: csr.der().to_vec(), key })
    }

    /// A request for a key kept from before ([`KeyRequest::key_pem`]): an agent joins with the
    /// same key every time, which is what its registration is bound to.
    pub fn from_key_pem(pem: &str) -> Result<KeyRequest, TransportError> {
        let key = rcgen::KeyPair::from_pem(pem).map_err(tls)?;
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(tls)?;
        let csr = params.serialize_request(&key).map_err(tls)?;
        Ok(KeyRequest { csr_der: csr.der().to_vec(), key })
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The identity once the CA has signed the request.
    pub fn into_identity(self, cert_der: Vec<u8>) -> Identity {
        Identity { cert: CertificateDer::from(cert_der), key: PrivatePkcs8KeyDer::from(self.key.serialize_der()) }
    }
}

/// The common name of the certificate a peer presented, if it presented one (which the
/// handshake has verified against the cluster CA).
pub fn peer_common_name(conn: &quinn::Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast_ref::<Vec<CertificateDer<'static>>>()?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// Verifies the server against a CA known only by its fingerprint (from a join token): the
/// server sends the CA with its chain, and it is trusted only if its sha256 is the pinned one.
#[derive(Debug)]
struct PinnedCa {
    pin: Option<String>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ca = match &self.pin {
            Some(pin) => intermediates.iter().find(|c| fingerprint(c) == *pin).ok_or_else(|| {
                rustls::Error::General("the server's CA is not the one the token names: wrong cluster or a stale token".into())
            })?,
            // Trust on first use (a coordinator's first start, see `kiln coordinator`).
            None => intermediates.last().ok_or_else(|| rustls::Error::General("the server sent no CA certificate".into()))?,
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client endpoint without a certificate, for joining: it trusts the server whose CA has the
/// fingerprint `pin` (`None`: the first CA it is shown, only for a coordinator's first start).
pub fn joining_client(pin: Option<&str>) -> Result<quinn::Endpoint, TransportError> {
    let verifier = Arc::new(PinnedCa { pin: pin.map(str::to_string), provider: provider() });
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    endpoint_with(crypto, &Timeouts::default())
}

fn endpoint_with(crypto: rustls::ClientConfig, timeouts: &Timeouts) -> Result<quinn::Endpoint, TransportError> {
    let config = quic_client_config(crypto, timeouts)?;
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

fn quic_client_config(crypto: rustls::ClientConfig, timeouts: &Timeouts) -> Result<quinn::ClientConfig, TransportError> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport_config(timeouts)));
    Ok(config)
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<rustls::RootCertStore>, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(tls)?;
    Ok(Arc::new(roots))
}

/// QUIC's clocks for an endpoint ([`server_with`], [`client_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A connection silent this long is dead (default 5000 ms). A peer that died is noticed
    /// within seconds: agents must reach a new leader within their lease.
    pub idle_ms: u32,
    /// Keep-alives keep idle but live connections open (default 1000 ms; under `idle_ms`).
    pub keep_alive_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { idle_ms: 5_000, keep_alive_ms: 1_000 }
    }
}

fn transport_config(timeouts: &Timeouts) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(timeouts.idle_ms))));
    t.keep_alive_interval(Some(Duration::from_millis(timeouts.keep_alive_ms)));
    t
}

/// A server endpoint that only accepts clients with a certificate from `ca`.
/// A server endpoint. A client certificate, when presented, must be issued by the cluster CA;
/// with `allow_joining` a client may also connect without one, and the server must then answer
/// nothing but a join (see [`peer_common_name`]). The server sends the CA along with its own
/// certificate so that joining clients can check it against their token's pin.
pub fn server(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    id: &Identity,
    allow_joining: bool,
) -> Result<quinn::Endpoint, TransportError> {
    server_with(addr, ca, id, allow_joining, &Timeouts::default(), Connections::Few)
}

/// How many connections a server endpoint is shaped for ([`server_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connections {
    /// A few (an agent serving its peers): datagrams are batched into segmentation-offload
    /// sends where the host supports it, fastest in bulk, and a peer may open quinn's default
    /// of 100 streams at once.
    Few,
    /// One per agent (a coordinator): one datagram per send, which keeps each connection's
    /// send buffer at one datagram (see [`crate::unbatched`]), and a peer may open
    /// [`MANY_STREAMS`] streams at once to begin with. quinn sets up state for every stream a
    /// peer may open when the connection starts; the server raises the limit of a connection
    /// whose peer needs more (`quinn::Connection::set_max_concurrent_bi_streams`).
    Many,
}

/// The streams a peer of a [`Connections::Many`] endpoint may open at once to begin with: an
/// agent's held poll, heartbeat, reports and blob fetches. quinn's state for them costs about
/// 1.5 KB a connection, against 6.5 KB for its default of 100.
pub const MANY_STREAMS: u32 = 24;

/// [`server`] with the given QUIC timeouts.
pub fn server_with(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    id: &Identity,
    allow_joining: bool,
    timeouts: &Timeouts,
    connections: Connections,
) -> Result<quinn::Endpoint, TransportError> {
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider());
    let builder = if allow_joining { builder.allow_unauthenticated() } else { builder };
    let verifier = builder.build().map_err(tls)?;
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![id.cert.clone(), ca.clone()], PrivateKeyDer::Pkcs8(id.key.clone_key()))
        .map_err(tls)?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = transport_config(timeouts);
    // A request is a bidirectional stream; no client opens a unidirectional one. quinn sets up
    // state for every stream a peer may open, so allowing none saves that on each connection
    // (a coordinator holds one per agent).
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    if connections == Connections::Many {
        transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MANY_STREAMS));
    }
    config.transport_config(Arc::new(transport));
    let runtime = quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime"))?;
    let socket = std::net::UdpSocket::bind(addr)?;
    let socket = match connections {
        Connections::Few => runtime.wrap_udp_socket(socket)?,
        Connections::Many => crate::unbatched::Unbatched::wrap(runtime.as_ref(), socket)?,
    };
    Ok(quinn::Endpoint::new_with_abstract_socket(quinn::EndpointConfig::default(), Some(config), socket, runtime)?)
}

/// A client endpoint presenting `id` and trusting only `ca`.
pub fn client(ca: &CertificateDer<'static>, id: Option<&Identity>) -> Result<quinn::Endpoint, TransportError> {
    client_with(ca, id, &Timeouts::default())
}

/// [`client`] with the given QUIC timeouts.
pub fn client_with(ca: &CertificateDer<'static>, id: Option<&Identity>, timeouts: &Timeouts) -> Result<quinn::Endpoint, TransportError> {
    endpoint_with(client_crypto(ca, id)?, timeouts)
}

/// What [`client_with`] sets on its endpoint, for connections opened on another one
/// ([`connect_with`]): several identities on one UDP socket.
pub fn client_config(
    ca: &CertificateDer<'static>,
    id: Option<&Identity>,
    timeouts: &Timeouts,
) -> Result<quinn::ClientConfig, TransportError> {
    quic_client_config(client_crypto(ca, id)?, timeouts)
}

fn client_crypto(ca: &CertificateDer<'static>, id: Option<&Identity>) -> Result<rustls::ClientConfig, TransportError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(roots(ca)?);
    let mut crypto = match id {
        Some(id) => builder.with_client_auth_cert(vec![id.cert.clone()], PrivateKeyDer::Pkcs8(id.key.clone_key())).map_err(tls)?,
        None => builder.with_no_client_auth(),
    };
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    Ok(crypto)
}

pub async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr, timeout: Duration) -> Result<quinn::Connection, TransportError> {
    counted(connect_inner(endpoint, None, addr, timeout).await)
}

/// [`connect`] with a client configuration of its own ([`client_config`]), not the endpoint's.
pub async fn connect_with(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<quinn::Connection, TransportError> {
    counted(connect_inner(endpoint, Some(config), addr, timeout).await)
}

async fn connect_inner(
    endpoint: &quinn::Endpoint,
    config: Option<quinn::ClientConfig>,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<quinn::Connection, TransportError> {
    let connecting = match config {
        Some(c) => endpoint.connect_with(c, addr, SERVER_NAME),
        None => endpoint.connect(addr, SERVER_NAME),
    }
    .map_err(|e| TransportError::Connect { addr, reason: e.to_string() })?;
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(TransportError::Timeout { ms: timeout.as_millis() as u64 }),
        Ok(Err(e)) => Err(TransportError::Connect { addr, reason: e.to_string() }),
        Ok(Ok(c)) => Ok(c),
    }
}

async fn read_frame(recv: &mut quinn::RecvStream, max: usize) -> Result<Vec<u8>, TransportError> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header).await.map_err(|e| TransportError::Closed(e.to_string()))?;
    let len = wire::decode_header(&header, max)?;
    let mut frame = header.to_vec();
    frame.resize(HEADER_LEN + len, 0);
    recv.read_exact(&mut frame[HEADER_LEN..]).await.map_err(|e| TransportError::Closed(e.to_string()))?;
    Ok(frame)
}

/// Sends a request on a fresh stream and reads its answer frame; the stream stays open for
/// whatever follows the answer.
async fn exchange<Req: Serialize, Resp: DeserializeOwned>(
    conn: &quinn::Connection,
    req: &Envelope<Req>,
) -> Result<(Resp, quinn::RecvStream), TransportError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| TransportError::Closed(e.to_string()))?;
    send.write_all(&wire::encode(req)?).await.map_err(|e| TransportError::Closed(e.to_string()))?;
    send.finish().map_err(|e| TransportError::Closed(e.to_string()))?;
    let frame = read_frame(&mut recv, wire::MAX_FRAME).await?;
    match wire::decode::<Result<Resp, RemoteError>>(&frame)? {
        Ok(r) => Ok((r, recv)),
        Err(e) => Err(TransportError::Remote(e)),
    }
}

/// One request and its response over a fresh stream, within the envelope's deadline.
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(conn: &quinn::Connection, req: &Envelope<Req>) -> Result<Resp, TransportError> {
    let ms = u64::from(req.deadline_ms);
    let work = async { exchange(conn, req).await.map(|(r, _)| r) };
    counted(tokio::time::timeout(Duration::from_millis(ms), work).await.map_err(|_| TransportError::Timeout { ms }).and_then(|r| r))
}

/// [`call`] for an answer followed by a raw body on the same stream (a blob chunk: it is not
/// copied into and out of a frame). The body may be at most `max_body` bytes; it is read into
/// `buf` (cleared first), so that a caller reusing its buffer allocates nothing per call. The
/// body starts at the returned offset in the buffer, which is a multiple of `align` in memory
/// (for direct I/O; 1: no alignment).
pub async fn call_with_body<Req: Serialize, Resp: DeserializeOwned>(
    conn: &quinn::Connection,
    req: &Envelope<Req>,
    max_body: usize,
    mut buf: Vec<u8>,
    align: usize,
) -> Result<(Resp, Vec<u8>, usize), TransportError> {
    let ms = u64::from(req.deadline_ms);
    let work = async {
        let (answer, mut recv) = exchange(conn, req).await?;
        buf.clear();
        // Room for the body, its alignment and padding to a whole block: no reallocation below.
        let align = align.max(1);
        buf.reserve(max_body + 2 * align);
        let start = (align - buf.as_ptr() as usize % align) % align;
        buf.resize(start, 0);
        while let Some(chunk) = recv.read_chunk(max_body, true).await.map_err(|e| TransportError::Closed(e.to_string()))? {
            if buf.len() - start + chunk.bytes.len() > max_body {
                return Err(TransportError::Closed(format!("a body of more than {max_body} bytes")));
            }
            buf.extend_from_slice(&chunk.bytes);
        }
        Ok((answer, buf, start))
    };
    counted(tokio::time::timeout(Duration::from_millis(ms), work).await.map_err(|_| TransportError::Timeout { ms }).and_then(|r| r))
}

/// Serves one connection: each stream carries one request to `handler`. A frame that does not
/// decode gets a `BadRequest` answer; the connection stays up.
pub async fn serve_connection<Req, Resp, F, Fut>(conn: quinn::Connection, handler: F)
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, RemoteError>> + Send,
{
    // The handler's future is made inside the block: made outside and captured, it would be
    // in the block's state twice (as the capture and as the awaited future), and a held
    // request keeps that state for as long as it is held.
    serve_connection_with_bodies(conn, move |req| {
        let handler = handler.clone();
        async move { handler(req).await.map(|r| (r, None)) }
    })
    .await
}

/// [`serve_connection`] for handlers that may follow their answer with a raw body
/// (see [`call_with_body`]).
pub async fn serve_connection_with_bodies<Req, Resp, F, Fut>(conn: quinn::Connection, handler: F)
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(Resp, Option<bytes::Bytes>), RemoteError>> + Send,
{
    let mut tasks = tokio::task::JoinSet::new();
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let handler = handler.clone();
        tasks.spawn(async move {
            let answer: Result<(Resp, Option<bytes::Bytes>), RemoteError> =
                match counted(read_frame(&mut recv, wire::MAX_FRAME).await.and_then(|f| Ok(wire::decode::<Envelope<Req>>(&f)?))) {
                    Err(e) => Err(RemoteError { code: ErrorCode::BadRequest, message: format!("bad request frame: {e}") }),
                    Ok(env) => {
                        let deadline = Duration::from_millis(u64::from(env.deadline_ms));
                        match tokio::time::timeout(deadline, handler(env.body)).await {
                            Ok(r) => r,
                            Err(_) => Err(RemoteError {
                                code: ErrorCode::DeadlineExceeded,
                                message: format!("the request's deadline of {} ms passed", env.deadline_ms),
                            }),
                        }
                    }
                };
            let (answer, body) = match answer {
                Ok((r, body)) => (Ok(r), body),
                Err(e) => (Err(e), None),
            };
            if let Ok(bytes) = wire::encode(&answer) {
                let _ = send.write_all(&bytes).await;
                if let Some(body) = body {
                    let _ = send.write_chunk(body).await;
                }
                let _ = send.finish();
            }
        });
        // Reap finished streams so a long-lived connection does not accumulate them.
        while tasks.try_join_next().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Req {
        Ping(u64),
        Sleep(u64),
        Fail,
    }

    async fn handler(r: Req) -> Result<u64, RemoteError> {
        match r {
            Req::Ping(n) => Ok(n + 1),
            Req::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(0)
            }
            Req::Fail => Err(RemoteError { code: ErrorCode::PermissionDenied, message: "not allowed".into() }),
        }
    }

    fn env(body: Req, deadline_ms: u32) -> Envelope<Req> {
        Envelope { request_id: 1, deadline_ms, body }
    }

    async fn start(ca: &ClusterCa) -> (quinn::Endpoint, SocketAddr) {
        let id = ca.issue("coordinator-1", &["127.0.0.1".parse().unwrap()]).unwrap();
        let ep = server("127.0.0.1:0".parse().unwrap(), &ca.cert_der(), &id, false).unwrap();
        let addr = ep.local_addr().unwrap();
        let accept = ep.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accept.accept().await {
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        serve_connection(conn, handler).await;
                    }
                });
            }
        });
        (ep, addr)
    }

    #[tokio::test]
    async fn mutual_tls_requests_errors_and_deadlines() {
        let ca = ClusterCa::generate("kiln test CA").unwrap();
        let (_server, addr) = start(&ca).await;
        let me = ca.issue("agent-a1", &[]).unwrap();
        let ep = client(&ca.cert_der(), Some(&me)).unwrap();
        let conn = connect(&ep, addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(call::<Req, u64>(&conn, &env(Req::Ping(41), 2000)).await.unwrap(), 42);
        match call::<Req, u64>(&conn, &env(Req::Fail, 2000)).await {
            Err(TransportError::Remote(e)) => assert_eq!(e.code, ErrorCode::PermissionDenied),
            other => panic!("{other:?}"),
        }
        // The server gives up at the deadline and says so; the connection stays usable.
        match call::<Req, u64>(&conn, &env(Req::Sleep(5_000), 200)).await {
            Err(TransportError::Timeout { .. }) | Err(TransportError::Remote(RemoteError { code: ErrorCode::DeadlineExceeded, .. })) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(call::<Req, u64>(&conn, &env(Req::Ping(1), 2000)).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn garbage_frames_get_a_typed_error() {
        let ca = ClusterCa::generate("kiln test CA").unwrap();
        let (_server, addr) = start(&ca).await;
        let ep = client(&ca.cert_der(), Some(&ca.issue("cli", &[]).unwrap())).unwrap();
        let conn = connect(&ep, addr, Duration::from_secs(5)).await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        send.finish().unwrap();
        let frame = read_frame(&mut recv, wire::MAX_FRAME).await.unwrap();
        let answer: Result<u64, RemoteError> = wire::decode(&frame).unwrap();
        let e = answer.unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("not a kiln frame"), "{}", e.message);
        assert_eq!(call::<Req, u64>(&conn, &env(Req::Ping(1), 2000)).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn peers_without_a_cluster_certificate_get_nothing() {
        let ca = ClusterCa::generate("kiln test CA").unwrap();
        let (_server, addr) = start(&ca).await;
        // A certificate from another CA.
        let other = ClusterCa::generate("someone else").unwrap();
        let ep = client(&ca.cert_der(), Some(&other.issue("intruder", &[]).unwrap())).unwrap();
        let refused = match connect(&ep, addr, Duration::from_secs(5)).await {
            Err(_) => true,
            Ok(conn) => call::<Req, u64>(&conn, &env(Req::Ping(1), 2000)).await.is_err(),
        };
        assert!(refused, "a foreign certificate was accepted");
        // No certificate at all.
        let ep = client(&ca.cert_der(), None).unwrap();
        let refused = match connect(&ep, addr, Duration::from_secs(5)).await {
            Err(_) => true,
            Ok(conn) => call::<Req, u64>(&conn, &env(Req::Ping(1), 2000)).await.is_err(),
        };
        assert!(refused, "a client without a certificate was accepted");
        // A server whose certificate is not from the trusted CA is refused by the client.
        let ep = client(&other.cert_der(), Some(&other.issue("x", &[]).unwrap())).unwrap();
        assert!(connect(&ep, addr, Duration::from_secs(5)).await.is_err());
    }

    /// Both shapes of server carry a body of many datagrams intact, batched or one at a time.
    #[tokio::test]
    async fn batched_and_unbatched_servers_carry_bodies_whole() {
        let ca = ClusterCa::generate("kiln test CA").unwrap();
        let body: bytes::Bytes = (0..4u32 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
        for shape in [Connections::Few, Connections::Many] {
            let id = ca.issue("coordinator-1", &["127.0.0.1".parse().unwrap()]).unwrap();
            let ep = server_with("127.0.0.1:0".parse().unwrap(), &ca.cert_der(), &id, false, &Timeouts::default(), shape).unwrap();
            let addr = ep.local_addr().unwrap();
            let served = body.clone();
            let accept = ep.clone();
            tokio::spawn(async move {
                while let Some(incoming) = accept.accept().await {
                    let served = served.clone();
                    tokio::spawn(async move {
                        if let Ok(conn) = incoming.await {
                            serve_connection_with_bodies(conn, move |n: u64| {
                                let served = served.clone();
                                async move { Ok((n, Some(served))) }
                            })
                            .await;
                        }
                    });
                }
            });
            let cli = client(&ca.cert_der(), Some(&ca.issue("agent-a1", &[]).unwrap())).unwrap();
            let conn = connect(&cli, addr, Duration::from_secs(5)).await.unwrap();
            let req = Envelope { request_id: 1, deadline_ms: 20_000, body: 7u64 };
            let (n, got, start): (u64, Vec<u8>, usize) = call_with_body(&conn, &req, 8 << 20, Vec::new(), 1).await.unwrap();
            assert_eq!(n, 7, "{shape:?}");
            assert!(got[start..] == body[..], "{shape:?}: the body came back different");
        }
    }

    #[test]
    fn ca_survives_pem() {
        let ca = ClusterCa::generate("kiln").unwrap();
        let again = ClusterCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert!(again.issue("a", &[]).is_ok());
        // The same certificate, byte for byte: tokens pin its hash.
        assert_eq!(again.cert_der(), ca.cert_der());
        assert_eq!(again.fingerprint(), ca.fingerprint());
        assert_eq!(again.cert_pem(), ca.cert_pem());
    }
}
