//! A client for OCI / Docker registries (distribution spec v2).
//!
//! Pulls manifests (OCI and Docker schema 2, indexes and manifest lists) and blobs into the
//! content store, pushes blobs (skipping those the registry has), manifests and tags.
//! Credentials come from `~/.docker/config.json` (basic and bearer-token flows). Loopback
//! registries and those named as insecure are spoken to over plain HTTP.

use crate::digest::Digest;
use crate::oci;
use crate::store::{ContentStore, StoreError};
use base64::Engine as _;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {input:?}: {reason}")]
    BadReference { input: String, reason: String },
    #[error("registry {registry} is unreachable: {reason}")]
    Unreachable { registry: String, reason: String },
    #[error("registry {registry} refused the credentials for {repository} (HTTP {status}); check `~/.docker/config.json`")]
    Unauthorized { registry: String, repository: String, status: u16 },
    #[error("{what} not found in registry {registry}")]
    NotFound { registry: String, what: String },
    #[error("registry {registry}: {reason}")]
    Protocol { registry: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `[registry/]repository[:tag][@digest]`, normalised the way Docker does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// The tag or digest to ask the registry for.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    pub fn with_digest(&self, d: Digest) -> Reference {
        Reference { digest: Some(d), ..self.clone() }
    }
}

impl FromStr for Reference {
    type Err = RegistryError;
    fn from_str(input: &str) -> Result<Reference, RegistryError> {
        let bad = |reason: &str| RegistryError::BadReference { input: input.to_string(), reason: reason.to_string() };
        if input.is_empty() || input.contains(char::is_whitespace) {
            return Err(bad("it is empty or contains whitespace"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>().map_err(|e| bad(&e.to_string()))?)),
            None => (input, None),
        };
        let (name, tag) = match rest.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t.to_string())),
            _ => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => (first.to_string(), path.to_string()),
            _ if name.contains('/') => ("docker.io".to_string(), name.to_string()),
            _ => ("docker.io".to_string(), format!("library/{name}")),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.split('/')
                    .all(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch)))
        };
        if !valid(&repository) {
            return Err(bad("repository names are lowercase letters, digits and . _ - separated by /"));
        }
        if let Some(t) = &tag {
            if t.is_empty() || t.len() > 128 || !t.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                return Err(bad("tags are up to 128 letters, digits and . _ -"));
            }
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
        Ok(Reference { registry, repository, tag, digest })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// A manifest or index as fetched.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub media_type: String,
    pub digest: Digest,
    pub bytes: Vec<u8>,
}

pub struct RegistryClient {
    agent: ureq::Agent,
    insecure: Vec<String>,
    credentials: HashMap<String, String>,
    tokens: Mutex<HashMap<(String, String), String>>,
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Loopback hosts are always spoken to over HTTP (like Docker's default insecure 127.0.0.0/8).
fn is_loopback(host: &str) -> bool {
    let h = host.rsplit_once(':').map_or(host, |(h, port)| if port.chars().all(|c| c.is_ascii_digit()) { h } else { host });
    h == "localhost" || h.starts_with("127.") || h == "[::1]"
}

impl RegistryClient {
    pub fn new(insecure: &[String]) -> RegistryClient {
        let agent =
            ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(10)).timeout_read(Duration::from_secs(300)).redirects(5).build();
        RegistryClient { agent, insecure: insecure.to_vec(), credentials: load_docker_credentials(), tokens: Mutex::new(HashMap::new()) }
    }

    fn base(&self, registry: &str) -> String {
        let host = if registry == "docker.io" { "registry-1.docker.io" } else { registry };
        let scheme = if is_loopback(host) || self.insecure.iter().any(|i| i == registry) { "http" } else { "https" };
        format!("{scheme}://{host}")
    }

    fn auth_key(registry: &str) -> Vec<String> {
        if registry == "docker.io" {
            vec!["https://index.docker.io/v1/".into(), "docker.io".into(), "index.docker.io".into()]
        } else {
            vec![registry.to_string(), format!("https://{registry}"), format!("http://{registry}")]
        }
    }

    fn basic(&self, registry: &str) -> Option<String> {
        Self::auth_key(registry).iter().find_map(|k| self.credentials.get(k)).cloned()
    }

    /// Sends a request, answering a 401 challenge once (basic or bearer).
    fn send(
        &self,
        method: &str,
        url: &str,
        r: &Reference,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<ureq::Response, RegistryError> {
        self.send_body(method, url, r, headers, body.map(Body::Bytes))
    }

    fn send_body(
        &self,
        method: &str,
        url: &str,
        r: &Reference,
        headers: &[(&str, &str)],
        body: Option<Body>,
    ) -> Result<ureq::Response, RegistryError> {
        let key = (r.registry.clone(), r.repository.clone());
        let mut auth = self.tokens.lock().ok().and_then(|t| t.get(&key).cloned());
        for attempt in 0..2 {
            let mut req = self.agent.request(method, url);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            if let Some(a) = &auth {
                req = req.set("Authorization", a);
            }
            let res = match &body {
                Some(Body::Bytes(b)) => req.send_bytes(b),
                // Files are streamed (layers can be large); reopened for a retry.
                Some(Body::File(path, size)) => match std::fs::File::open(path) {
                    Ok(f) => req.set("Content-Length", &size.to_string()).send(f),
                    Err(e) => return Err(RegistryError::Store(StoreError::Io { path: path.clone(), source: e })),
                },
                None => req.call(),
            };
            match res {
                Ok(resp) => return Ok(resp),
                Err(ureq::Error::Status(401, resp)) if attempt == 0 => {
                    let challenge = resp.header("www-authenticate").unwrap_or("").to_string();
                    auth = Some(self.answer(&challenge, r)?);
                    if let Ok(mut t) = self.tokens.lock() {
                        t.insert(key.clone(), auth.clone().unwrap_or_default());
                    }
                }
                Err(ureq::Error::Status(code @ (401 | 403), _)) => {
                    return Err(RegistryError::Unauthorized {
                        registry: r.registry.clone(),
                        repository: r.repository.clone(),
                        status: code,
                    })
                }
                Err(ureq::Error::Status(code, resp)) => return Err(status_error(code, resp, r, url)),
                Err(ureq::Error::Transport(t)) => {
                    return Err(RegistryError::Unreachable { registry: r.registry.clone(), reason: t.to_string() })
                }
            }
        }
        Err(RegistryError::Unauthorized { registry: r.registry.clone(), repository: r.repository.clone(), status: 401 })
    }

    /// The Authorization header value for a challenge.
    fn answer(&self, challenge: &str, r: &Reference) -> Result<String, RegistryError> {
        let unauthorized = || RegistryError::Unauthorized { registry: r.registry.clone(), repository: r.repository.clone(), status: 401 };
        let basic = self.basic(&r.registry);
        if challenge.to_ascii_lowercase().starts_with("basic") {
            return basic.map(|b| format!("Basic {b}")).ok_or_else(unauthorized);
        }
        let params = parse_challenge(challenge);
        let realm = params.get("realm").ok_or_else(unauthorized)?;
        let mut url = format!("{realm}?");
        if let Some(s) = params.get("service") {
            url.push_str(&format!("service={s}&"));
        }
        url.push_str(&format!("scope=repository:{}:pull,push", r.repository));
        let mut req = self.agent.get(&url);
        if let Some(b) = &basic {
            req = req.set("Authorization", &format!("Basic {b}"));
        }
        let resp = match req.call() {
            Ok(resp) => resp,
            Err(ureq::Error::Status(..)) => return Err(unauthorized()),
            Err(ureq::Error::Transport(t)) => return Err(RegistryError::Unreachable { registry: realm.clone(), reason: t.to_string() }),
        };
        let v: serde_json::Value = serde_json::from_reader(resp.into_reader())
            .map_err(|e| RegistryError::Protocol { registry: r.registry.clone(), reason: format!("token response: {e}") })?;
        let token = v["token"].as_str().or(v["access_token"].as_str()).ok_or_else(unauthorized)?;
        Ok(format!("Bearer {token}"))
    }

    pub fn get_manifest(&self, r: &Reference) -> Result<Fetched, RegistryError> {
        let url = format!("{}/v2/{}/manifests/{}", self.base(&r.registry), r.repository, r.reference());
        let resp = self.send("GET", &url, r, &[("Accept", ACCEPT)], None)?;
        let media_type = resp.content_type().to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(resp.into_reader(), 16 << 20), &mut bytes)
            .map_err(|e| RegistryError::Unreachable { registry: r.registry.clone(), reason: e.to_string() })?;
        let digest = Digest::of(&bytes);
        if let Some(want) = &r.digest {
            if *want != digest {
                return Err(RegistryError::Protocol {
                    registry: r.registry.clone(),
                    reason: format!("manifest {want} has content hashing to {digest}"),
                });
            }
        }
        // Some registries answer with a generic type: trust the document's own mediaType.
        let media_type =
            match serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| v["mediaType"].as_str().map(str::to_string)) {
                Some(mt) => mt,
                None if media_type.contains("json") && !media_type.starts_with("application/json") => media_type,
                None => guess_media_type(&bytes),
            };
        Ok(Fetched { media_type, digest, bytes })
    }

    /// Downloads a blob into the store (verified) unless it is there already.
    pub fn fetch_blob(&self, r: &Reference, d: &Digest, store: &ContentStore) -> Result<(), RegistryError> {
        if store.has(d) {
            return Ok(());
        }
        let url = format!("{}/v2/{}/blobs/{d}", self.base(&r.registry), r.repository);
        let resp = self.send("GET", &url, r, &[], None)?;
        store.put_reader(&mut resp.into_reader(), d)?;
        Ok(())
    }

    pub fn has_blob(&self, r: &Reference, d: &Digest) -> Result<bool, RegistryError> {
        let url = format!("{}/v2/{}/blobs/{d}", self.base(&r.registry), r.repository);
        match self.send("HEAD", &url, r, &[], None) {
            Ok(_) => Ok(true),
            Err(RegistryError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Pushes a blob from the store; returns false when the registry already had it.
    pub fn push_blob(&self, r: &Reference, d: &Digest, store: &ContentStore) -> Result<bool, RegistryError> {
        if self.has_blob(r, d)? {
            return Ok(false);
        }
        let url = format!("{}/v2/{}/blobs/uploads/", self.base(&r.registry), r.repository);
        let resp = self.send("POST", &url, r, &[("Content-Length", "0")], Some(b""))?;
        let location = resp
            .header("location")
            .ok_or_else(|| RegistryError::Protocol { registry: r.registry.clone(), reason: "upload without a Location".into() })?
            .to_string();
        let location = if location.starts_with("http") { location } else { format!("{}{location}", self.base(&r.registry)) };
        let sep = if location.contains('?') { '&' } else { '?' };
        let body = Body::File(store.path(d), store.size(d)?);
        self.send_body("PUT", &format!("{location}{sep}digest={d}"), r, &[("Content-Type", "application/octet-stream")], Some(body))?;
        Ok(true)
    }

    pub fn put_manifest(&self, r: &Reference, reference: &str, media_type: &str, bytes: &[u8]) -> Result<(), RegistryError> {
        let url = format!("{}/v2/{}/manifests/{reference}", self.base(&r.registry), r.repository);
        self.send("PUT", &url, r, &[("Content-Type", media_type)], Some(bytes))?;
        Ok(())
    }
}

/// A request body: bytes in memory or a file streamed from disk.
enum Body<'a> {
    Bytes(&'a [u8]),
    File(std::path::PathBuf, u64),
}

fn status_error(code: u16, resp: ureq::Response, r: &Reference, url: &str) -> RegistryError {
    if code == 404 {
        let what = url.split("/v2/").nth(1).unwrap_or(url).to_string();
        return RegistryError::NotFound { registry: r.registry.clone(), what };
    }
    let body = resp.into_string().unwrap_or_default();
    RegistryError::Protocol { registry: r.registry.clone(), reason: format!("HTTP {code}: {}", body.chars().take(200).collect::<String>()) }
}

fn guess_media_type(bytes: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    if v.get("manifests").is_some() {
        oci::MEDIA_INDEX.into()
    } else {
        oci::MEDIA_MANIFEST.into()
    }
}

/// `Bearer realm="...",service="...",scope="..."` into its parameters.
fn parse_challenge(c: &str) -> HashMap<String, String> {
    let rest = c.split_once(' ').map_or("", |(_, r)| r);
    let mut out = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&ch| ch != '=').collect::<String>().trim().trim_start_matches(',').trim().to_string();
        if key.is_empty() {
            break;
        }
        let value: String = if chars.peek() == Some(&'"') {
            chars.next();
            let v = chars.by_ref().take_while(|&ch| ch != '"').collect();
            while chars.peek().is_some_and(|&ch| ch != ',') {
                chars.next();
            }
            v
        } else {
            chars.by_ref().take_while(|&ch| ch != ',').collect()
        };
        out.insert(key.to_ascii_lowercase(), value);
    }
    out
}

/// `auths` of `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`: registry → base64(user:pass).
fn load_docker_credentials() -> HashMap<String, String> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".docker")));
    let Some(path) = dir.map(|d| d.join("config.json")) else { return HashMap::new() };
    let Ok(text) = std::fs::read(&path) else { return HashMap::new() };
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
    let mut out = HashMap::new();
    if let Some(auths) = v["auths"].as_object() {
        for (k, a) in auths {
            let auth = match (a["auth"].as_str(), a["username"].as_str(), a["password"].as_str()) {
                (Some(x), _, _) if !x.is_empty() => x.to_string(),
                (_, Some(u), Some(p)) => base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")),
                _ => continue,
            };
            out.insert(k.trim_end_matches('/').to_string(), auth.clone());
            out.insert(k.clone(), auth);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        s.parse().unwrap()
    }

    #[test]
    fn references() {
        assert_eq!(r("busybox").to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r("user/app:1").to_string(), "docker.io/user/app:1");
        assert_eq!(r("127.0.0.1:5000/base/busybox:1").registry, "127.0.0.1:5000");
        assert_eq!(r("localhost/x").registry, "localhost");
        let d = Digest::of(b"x");
        assert_eq!(r(&format!("ghcr.io/o/i@{d}")).reference(), d.to_string());
        assert!("UPPER/case".parse::<Reference>().is_err());
        assert!("a:b c".parse::<Reference>().is_err());
        assert!("app@sha256:zz".parse::<Reference>().is_err());
    }

    #[test]
    fn challenges() {
        let c = parse_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#);
        assert_eq!(c["realm"], "https://auth.example/token");
        assert_eq!(c["service"], "registry.example");
        assert!(is_loopback("127.0.0.1:5000") && is_loopback("localhost:80") && !is_loopback("ghcr.io"));
    }
}
