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
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl ClusterCa {
    pub fn generate(name: &str) -> Result<ClusterCa, TransportError> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().map_err(tls)?;
        let cert = params.self_signed(&key).map_err(tls)?;
        Ok(ClusterCa { cert, key })
    }

    /// Restores a CA from its PEM certificate and key (as stored in a coordinator's data dir).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, TransportError> {
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(tls)?;
        let params = rcgen::CertificateParams::from_ca_cert_pem(cert_pem).map_err(tls)?;
        let cert = params.self_signed(&key).map_err(tls)?;
        Ok(ClusterCa { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// Issues a certificate for `common_name` (a coordinator, an agent or a user), valid for
    /// the name clients verify and for the given IP addresses.
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

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<rustls::RootCertStore>, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(tls)?;
    Ok(Arc::new(roots))
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(Duration::from_secs(30).try_into().unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::from_u32(30_000)))));
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    Arc::new(t)
}

/// A server endpoint that only accepts clients with a certificate from `ca`.
pub fn server(addr: SocketAddr, ca: &CertificateDer<'static>, id: &Identity) -> Result<quinn::Endpoint, TransportError> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider()).build().map_err(tls)?;
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![id.cert.clone()], PrivateKeyDer::Pkcs8(id.key.clone_key()))
        .map_err(tls)?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(quinn::Endpoint::server(config, addr)?)
}

/// A client endpoint presenting `id` and trusting only `ca`.
pub fn client(ca: &CertificateDer<'static>, id: Option<&Identity>) -> Result<quinn::Endpoint, TransportError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(roots(ca)?);
    let mut crypto = match id {
        Some(id) => builder.with_client_auth_cert(vec![id.cert.clone()], PrivateKeyDer::Pkcs8(id.key.clone_key())).map_err(tls)?,
        None => builder.with_no_client_auth(),
    };
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

pub async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr, timeout: Duration) -> Result<quinn::Connection, TransportError> {
    let connecting = endpoint.connect(addr, SERVER_NAME).map_err(|e| TransportError::Connect { addr, reason: e.to_string() })?;
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

/// One request and its response over a fresh stream, within the envelope's deadline.
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(conn: &quinn::Connection, req: &Envelope<Req>) -> Result<Resp, TransportError> {
    let ms = u64::from(req.deadline_ms);
    let work = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| TransportError::Closed(e.to_string()))?;
        send.write_all(&wire::encode(req)?).await.map_err(|e| TransportError::Closed(e.to_string()))?;
        send.finish().map_err(|e| TransportError::Closed(e.to_string()))?;
        let frame = read_frame(&mut recv, wire::MAX_FRAME).await?;
        match wire::decode::<Result<Resp, RemoteError>>(&frame)? {
            Ok(r) => Ok(r),
            Err(e) => Err(TransportError::Remote(e)),
        }
    };
    tokio::time::timeout(Duration::from_millis(ms), work).await.map_err(|_| TransportError::Timeout { ms })?
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
    let mut tasks = tokio::task::JoinSet::new();
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let handler = handler.clone();
        tasks.spawn(async move {
            let answer: Result<Resp, RemoteError> =
                match read_frame(&mut recv, wire::MAX_FRAME).await.and_then(|f| Ok(wire::decode::<Envelope<Req>>(&f)?)) {
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
            if let Ok(bytes) = wire::encode(&answer) {
                let _ = send.write_all(&bytes).await;
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
        let ep = server("127.0.0.1:0".parse().unwrap(), &ca.cert_der(), &id).unwrap();
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

    #[test]
    fn ca_survives_pem() {
        let ca = ClusterCa::generate("kiln").unwrap();
        let again = ClusterCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert!(again.issue("a", &[]).is_ok());
    }
}
