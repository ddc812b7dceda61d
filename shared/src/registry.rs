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
    /// A 5xx answer: the registry's own trouble (retried where the request is idempotent).
    #[error("registry {registry} failed the request (HTTP {status}): {reason}")]
    Server { registry: String, status: u16, reason: String },
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
        if let Some(reason) = bad_domain(&registry) {
            return Err(bad(&reason));
        }
        if !repository.split('/').all(path_component) {
            return Err(bad(
                "repository names are lowercase letters and digits, separated by one . _ __ or dashes, in components separated by /",
            ));
        }
        if let Some(t) = &tag {
            let first = t.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            if !first || t.len() > 128 || !t.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                return Err(bad("tags are up to 128 letters, digits and . _ -, not starting with . or -"));
            }
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
        Ok(Reference { registry, repository, tag, digest })
    }
}

/// One component of a repository path, as the distribution reference grammar has it:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn path_component(c: &str) -> bool {
    let alnum = |ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit();
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0] as char) || !alnum(b[b.len() - 1] as char) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let ch = b[i] as char;
        if alnum(ch) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i] as char) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.chars().all(|x| x == '-')) {
            return false;
        }
    }
    true
}

/// Why `host[:port]` is not a registry address (`None` when it is one).
fn bad_domain(domain: &str) -> Option<String> {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Some(format!("{domain} is not an IPv6 address in brackets"));
        }
        (None, after.strip_prefix(':'))
    } else {
        match domain.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(domain), None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) || p.parse::<u16>().map_or(true, |n| n == 0) {
            return Some(format!("the registry port {p:?} is not a number from 1 to 65535"));
        }
    }
    let label =
        |l: &str| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-') && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    match host {
        Some(h) if !h.split('.').all(label) => Some(format!("{h:?} is not a registry host name")),
        _ => None,
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
    /// The deadline of a request without a layer body.
    total: Duration,
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

/// How long the registry client waits: to connect, for the next bytes of an answer (or for a
/// write to drain: a stalled layer transfer fails after this), and for a whole request that
/// carries no layer (manifests, HEADs, tokens). Set with `KILN_REGISTRY_CONNECT_TIMEOUT_SECS`
/// (default 10), `KILN_REGISTRY_READ_TIMEOUT_SECS` (30) and `KILN_REGISTRY_TOTAL_TIMEOUT_SECS`
/// (60).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub total: Duration,
}

impl Timeouts {
    pub fn from_env() -> Timeouts {
        let secs = |name: &str, default: u64| {
            Duration::from_secs(std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).filter(|&n| n > 0).unwrap_or(default))
        };
        Timeouts {
            connect: secs("KILN_REGISTRY_CONNECT_TIMEOUT_SECS", 10),
            read: secs("KILN_REGISTRY_READ_TIMEOUT_SECS", 30),
            total: secs("KILN_REGISTRY_TOTAL_TIMEOUT_SECS", 60),
        }
    }
}

impl RegistryClient {
    pub fn new(insecure: &[String]) -> RegistryClient {
        RegistryClient::with_timeouts(insecure, Timeouts::from_env())
    }

    pub fn with_timeouts(insecure: &[String], t: Timeouts) -> RegistryClient {
        let agent = ureq::AgentBuilder::new().timeout_connect(t.connect).timeout_read(t.read).timeout_write(t.read).redirects(5).build();
        RegistryClient {
            agent,
            total: t.total,
            insecure: insecure.to_vec(),
            credentials: load_docker_credentials(),
            tokens: Mutex::new(HashMap::new()),
        }
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
            // Layers stream for as long as they make progress (the read and write timeouts);
            // everything else has a whole-request deadline.
            let streams = matches!(body, Some(Body::File(..))) || (method == "GET" && url.contains("/blobs/"));
            if !streams {
                req = req.timeout(self.total);
            }
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
        let mut req = self.agent.get(&url).timeout(self.total);
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
        self.has_blob_sized(r, d, None)
    }

    /// HEAD on a blob. A 200 counts only when the registry names the same digest
    /// (`Docker-Content-Digest`) or, without that header, the expected size: a server that
    /// answers 200 to everything does not make a push "already there".
    fn has_blob_sized(&self, r: &Reference, d: &Digest, size: Option<u64>) -> Result<bool, RegistryError> {
        let url = format!("{}/v2/{}/blobs/{d}", self.base(&r.registry), r.repository);
        match self.send("HEAD", &url, r, &[], None) {
            Ok(resp) if resp.status() == 200 => match resp.header("docker-content-digest") {
                Some(named) => Ok(named.trim() == d.as_str()),
                None => Ok(size.is_some_and(|n| resp.header("content-length").and_then(|l| l.trim().parse::<u64>().ok()) == Some(n))),
            },
            Ok(_) => Ok(false),
            Err(RegistryError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Pushes a blob from the store; returns false when the registry already had it. The blob
    /// is verified first: a corrupt one is removed from the store, not pushed.
    pub fn push_blob(&self, r: &Reference, d: &Digest, store: &ContentStore) -> Result<bool, RegistryError> {
        let size = store.verify(d)?;
        // Two slices may push one blob (layers both platforms share) at once: a registry that
        // fails one of them (docker-registry answers 500) gets asked again, and a blob that
        // arrived meanwhile counts as pushed.
        asked_again_on_5xx(|| match self.has_blob_sized(r, d, Some(size))? {
            true => Ok(false),
            false => self.upload_blob(r, d, store, size).map(|_| true),
        })
    }

    fn upload_blob(&self, r: &Reference, d: &Digest, store: &ContentStore, size: u64) -> Result<(), RegistryError> {
        let url = format!("{}/v2/{}/blobs/uploads/", self.base(&r.registry), r.repository);
        let resp = self.send("POST", &url, r, &[("Content-Length", "0")], Some(b""))?;
        expect_status(&resp, 202, r, "starting a blob upload")?;
        let location = resp
            .header("location")
            .ok_or_else(|| RegistryError::Protocol { registry: r.registry.clone(), reason: "upload without a Location".into() })?
            .to_string();
        let location = if location.starts_with("http") { location } else { format!("{}{location}", self.base(&r.registry)) };
        let sep = if location.contains('?') { '&' } else { '?' };
        let body = Body::File(store.path(d), size);
        let resp =
            self.send_body("PUT", &format!("{location}{sep}digest={d}"), r, &[("Content-Type", "application/octet-stream")], Some(body))?;
        expect_status(&resp, 201, r, &format!("uploading blob {d}"))?;
        expect_digest(&resp, d, r)
    }

    /// Puts a manifest or index; the registry must answer 201 and, when it names a digest,
    /// the digest of these bytes.
    pub fn put_manifest(&self, r: &Reference, reference: &str, media_type: &str, bytes: &[u8]) -> Result<(), RegistryError> {
        let url = format!("{}/v2/{}/manifests/{reference}", self.base(&r.registry), r.repository);
        // A PUT of the same bytes is idempotent: a registry's 5xx is asked again.
        let resp = asked_again_on_5xx(|| self.send("PUT", &url, r, &[("Content-Type", media_type)], Some(bytes)))?;
        expect_status(&resp, 201, r, &format!("putting manifest {reference}"))?;
        expect_digest(&resp, &Digest::of(bytes), r)
    }
}

/// Runs an idempotent request again when the registry fails it with a 5xx: three more times,
/// 200, 400 and 600 ms apart.
fn asked_again_on_5xx<T>(mut request: impl FnMut() -> Result<T, RegistryError>) -> Result<T, RegistryError> {
    let mut attempt = 0;
    loop {
        match request() {
            Err(RegistryError::Server { .. }) if attempt < 3 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(200 * attempt));
            }
            other => return other,
        }
    }
}

fn expect_status(resp: &ureq::Response, want: u16, r: &Reference, what: &str) -> Result<(), RegistryError> {
    if resp.status() == want {
        return Ok(());
    }
    Err(RegistryError::Protocol {
        registry: r.registry.clone(),
        reason: format!("{what}: answered HTTP {} where the distribution API says {want}; is this a registry?", resp.status()),
    })
}

fn expect_digest(resp: &ureq::Response, d: &Digest, r: &Reference) -> Result<(), RegistryError> {
    match resp.header("docker-content-digest") {
        Some(named) if named.trim() != d.as_str() => {
            Err(RegistryError::Protocol { registry: r.registry.clone(), reason: format!("stored {} where {d} was sent", named.trim()) })
        }
        _ => Ok(()),
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
    let body: String = body.chars().take(200).collect();
    if (500..600).contains(&code) {
        return RegistryError::Server { registry: r.registry.clone(), status: code, reason: body };
    }
    RegistryError::Protocol { registry: r.registry.clone(), reason: format!("HTTP {code}: {body}") }
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
        // The distribution grammar: no path tricks, ports that exist, tags that start well.
        for bad in ["../../etc/passwd", "host:99999/x", "host:0/x", "a/../b", "a/.b", "a-/b", "reg.io/a//b", "x:.tag", "x:-t", "-h.io/x"] {
            assert!(bad.parse::<Reference>().is_err(), "{bad} must be refused");
        }
        for good in ["a__b/c-d/e.f_g", "[::1]:5000/x:1", "my-reg.example.com:443/team/app:v1.2_3", "a---b"] {
            assert!(good.parse::<Reference>().is_ok(), "{good} is a valid reference");
        }
    }

    /// A loopback server answering every request with `answer` (or never, when `None`).
    fn fake_server(answer: Option<&'static str>) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for (n, conn) in l.incoming().enumerate() {
                let Ok(mut c) = conn else { return };
                if n > 50 {
                    return;
                }
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = [0u8; 65536];
                    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = c.read(&mut buf);
                    match answer {
                        Some(a) => {
                            let _ = c.write_all(a.as_bytes());
                        }
                        None => std::thread::sleep(Duration::from_secs(5)),
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn a_server_answering_200_to_everything_is_no_registry() {
        let addr = fake_server(Some("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\njunk"));
        let dir = std::env::temp_dir().join(format!("kiln-registry-junk-{}", std::process::id()));
        let store = ContentStore::open(&dir).unwrap();
        let d = store.put(b"a layer").unwrap();
        let client = RegistryClient::new(&[]);
        let r = r(&format!("{addr}/x:1"));
        let e = client.push_blob(&r, &d, &store).unwrap_err().to_string();
        assert!(e.contains("answered HTTP 200 where the distribution API says 202"), "{e}");
        let e = client.put_manifest(&r, "1", oci::MEDIA_MANIFEST, b"{}").unwrap_err().to_string();
        assert!(e.contains("answered HTTP 200 where the distribution API says 201"), "{e}");
        // A corrupt blob is not pushed: it leaves the store.
        std::fs::write(store.path(&d), b"a layeR").unwrap();
        assert!(matches!(client.push_blob(&r, &d, &store), Err(RegistryError::Store(StoreError::Mismatch { .. }))));
        assert!(!store.has(&d));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failing_registry_is_asked_again_then_named() {
        let addr = fake_server(Some("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\noops"));
        let dir = std::env::temp_dir().join(format!("kiln-registry-500-{}", std::process::id()));
        let store = ContentStore::open(&dir).unwrap();
        let d = store.put(b"a layer").unwrap();
        let start = std::time::Instant::now();
        let e = RegistryClient::new(&[]).push_blob(&r(&format!("{addr}/x:1")), &d, &store).unwrap_err();
        assert!(matches!(e, RegistryError::Server { status: 500, .. }), "{e}");
        assert!(e.to_string().contains("failed the request (HTTP 500)"), "{e}");
        assert!(start.elapsed() >= Duration::from_millis(1100), "retried three times, with pauses");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_hanging_registry_times_out() {
        let addr = fake_server(None);
        let t = Timeouts { connect: Duration::from_secs(2), read: Duration::from_millis(300), total: Duration::from_secs(1) };
        let client = RegistryClient::with_timeouts(&[], t);
        let start = std::time::Instant::now();
        let e = client.get_manifest(&r(&format!("{addr}/x:1"))).unwrap_err();
        assert!(matches!(e, RegistryError::Unreachable { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_millis(2500), "a manifest waited {:?}", start.elapsed());
        // A layer download that stalls fails after the read timeout.
        let dir = std::env::temp_dir().join(format!("kiln-registry-hang-{}", std::process::id()));
        let store = ContentStore::open(&dir).unwrap();
        let start = std::time::Instant::now();
        let e = client.fetch_blob(&r(&format!("{addr}/x:1")), &Digest::of(b"x"), &store).unwrap_err();
        assert!(matches!(e, RegistryError::Unreachable { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_millis(900), "a layer waited {:?}", start.elapsed());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn challenges() {
        let c = parse_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#);
        assert_eq!(c["realm"], "https://auth.example/token");
        assert_eq!(c["service"], "registry.example");
        assert!(is_loopback("127.0.0.1:5000") && is_loopback("localhost:80") && !is_loopback("ghcr.io"));
    }
}
