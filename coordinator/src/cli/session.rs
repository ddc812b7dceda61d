//! The client's side of a build's session (BuildKit's word): `--secret` and `--ssh` stay in this
//! process; a step that mounts one asks through the farm while `kiln build` follows the build,
//! and gets the secret's bytes or its ssh-agent's replies. The farm never stores either.

use anyhow::{anyhow, bail, Context as _};
use kiln_shared::api::{SessionAnswer, SessionAsk};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

/// BuildKit's limit for one secret.
const MAX_SECRET_BYTES: u64 = 500 * 1024;
/// How long one ssh-agent exchange may take.
const SSH_AGENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct BuildSession {
    secrets: BTreeMap<String, Zeroizing<Vec<u8>>>,
    ssh: BTreeMap<String, Agent>,
}

/// An ssh-agent to relay to: the user's socket, or one this process started for key files.
struct Agent {
    socket: PathBuf,
    /// The private agent for `--ssh ID=KEY..` and its directory; stopped on drop.
    own: Option<(std::process::Child, tempfile::TempDir)>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some((child, _)) = &mut self.own {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl BuildSession {
    /// Reads every `--secret` (`id=ID[,src=FILE|,env=VAR][,type=file|env]`, as buildx) and
    /// readies every `--ssh` (`ID[=SOCKET|KEY[,KEY..]]`).
    pub fn open(secrets: &[String], ssh: &[String]) -> anyhow::Result<BuildSession> {
        let mut s = BuildSession::default();
        for spec in secrets {
            let (id, bytes) = read_secret(spec)?;
            s.secrets.insert(id, bytes);
        }
        for spec in ssh {
            let (id, agent) = ssh_agent(spec)?;
            s.ssh.insert(id, agent);
        }
        Ok(s)
    }

    pub fn secret_ids(&self) -> Vec<String> {
        self.secrets.keys().cloned().collect()
    }

    pub fn ssh_ids(&self) -> Vec<String> {
        self.ssh.keys().cloned().collect()
    }

    /// The answer to a step's question.
    pub fn answer(&self, ask: &SessionAsk) -> SessionAnswer {
        match ask {
            SessionAsk::Secret { id } => match self.secrets.get(id) {
                Some(b) => SessionAnswer::Bytes(b.to_vec()),
                None => SessionAnswer::Missing,
            },
            SessionAsk::Ssh { id, message } => match self.ssh.get(id) {
                Some(agent) => match exchange(&agent.socket, message) {
                    Ok(reply) => SessionAnswer::Bytes(reply),
                    Err(e) => SessionAnswer::Failed(format!("ssh-agent for --ssh {id}: {e:#}")),
                },
                None => SessionAnswer::Missing,
            },
        }
    }
}

fn read_secret(spec: &str) -> anyhow::Result<(String, Zeroizing<Vec<u8>>)> {
    let (mut id, mut src, mut env, mut kind) = (None, None, None, None);
    for field in spec.split(',') {
        let (k, v) = field.split_once('=').ok_or_else(|| anyhow!("--secret {spec:?}: field {field:?} must be a key=value pair"))?;
        match k.to_ascii_lowercase().as_str() {
            "id" => id = Some(v.to_string()),
            "src" | "source" => src = Some(v.to_string()),
            "env" => env = Some(v.to_string()),
            "type" if v == "file" || v == "env" => kind = Some(v.to_string()),
            "type" => bail!("--secret {spec:?}: unsupported secret type {v:?} (expected file or env)"),
            other => bail!("--secret {spec:?}: unexpected key {other:?} (expected id, src, env or type)"),
        }
    }
    let id = id.filter(|i| !i.is_empty()).ok_or_else(|| anyhow!("--secret {spec:?}: the id is missing (id=ID)"))?;
    // As buildx: `type=env,src=VAR` names the variable; with neither, the variable of the id's
    // name if it is set, else the file of that name.
    if kind.as_deref() == Some("env") && env.is_none() {
        env = src.take().or_else(|| Some(id.clone()));
    }
    if src.is_none() && env.is_none() {
        if std::env::var_os(&id).is_some() && kind.as_deref() != Some("file") {
            env = Some(id.clone());
        } else {
            src = Some(id.clone());
        }
    }
    let bytes = match (src, env) {
        (Some(path), _) => {
            let meta = std::fs::metadata(&path).with_context(|| format!("--secret id={id}: reading {path}"))?;
            if meta.len() > MAX_SECRET_BYTES {
                bail!("--secret id={id}: {path} is too big ({} bytes; a secret may have at most 500 KiB)", meta.len());
            }
            Zeroizing::new(std::fs::read(&path).with_context(|| format!("--secret id={id}: reading {path}"))?)
        }
        (None, Some(var)) => {
            let v = std::env::var_os(&var).ok_or_else(|| anyhow!("--secret id={id}: the environment variable {var} is not set"))?;
            Zeroizing::new(std::os::unix::ffi::OsStringExt::into_vec(v))
        }
        (None, None) => bail!("--secret id={id}: neither src nor env"),
    };
    Ok((id, bytes))
}

fn ssh_agent(spec: &str) -> anyhow::Result<(String, Agent)> {
    let (id, paths) = match spec.split_once('=') {
        Some((id, paths)) => (id.to_string(), paths.split(',').filter(|p| !p.is_empty()).map(PathBuf::from).collect::<Vec<_>>()),
        None => (spec.to_string(), vec![]),
    };
    if id.is_empty() {
        bail!("--ssh {spec:?}: the id is empty (expected default or ID[=SOCKET|KEY,..])");
    }
    if paths.is_empty() {
        let sock = std::env::var_os("SSH_AUTH_SOCK")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| anyhow!("--ssh {id}: SSH_AUTH_SOCK is not set (start ssh-agent, or name a socket or key: --ssh {id}=PATH)"))?;
        return Ok((id, Agent { socket: PathBuf::from(sock), own: None }));
    }
    let is_socket = |p: &Path| std::fs::metadata(p).map(|m| m.file_type().is_socket()).unwrap_or(false);
    if paths.len() == 1 && is_socket(&paths[0]) {
        return Ok((id, Agent { socket: paths[0].clone(), own: None }));
    }
    for p in &paths {
        if !p.is_file() {
            bail!("--ssh {id}: {} is neither an ssh-agent socket nor a key file", p.display());
        }
    }
    // Key files: a private ssh-agent of this process holds them for the build.
    let dir = tempfile::tempdir().context("--ssh: creating a directory for a private ssh-agent")?;
    let socket = dir.path().join("agent.sock");
    let child = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| anyhow!("--ssh {id}=KEY needs OpenSSH's ssh-agent ({e}; apt-get install openssh-client)"))?;
    let agent = Agent { socket: socket.clone(), own: Some((child, dir)) };
    let started = std::time::Instant::now();
    while !is_socket(&socket) {
        if started.elapsed() > SSH_AGENT_TIMEOUT {
            bail!("--ssh {id}: the private ssh-agent did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for key in &paths {
        let out = std::process::Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &socket)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| anyhow!("--ssh {id}: running ssh-add: {e} (apt-get install openssh-client)"))?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            bail!("--ssh {id}: ssh-add {} failed: {} (a key with a passphrase must be in your own ssh-agent)", key.display(), why.trim());
        }
    }
    Ok((id, agent))
}

/// One ssh-agent request (length prefix included) and its reply.
fn exchange(socket: &Path, message: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut conn = UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    conn.set_read_timeout(Some(SSH_AGENT_TIMEOUT))?;
    conn.set_write_timeout(Some(SSH_AGENT_TIMEOUT))?;
    conn.write_all(message)?;
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > 256 * 1024 {
        bail!("the agent's reply is too long ({n} bytes)");
    }
    let mut reply = vec![0u8; 4 + n];
    reply[..4].copy_from_slice(&len);
    conn.read_exact(&mut reply[4..])?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_read_as_buildx_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, b"s3cr3t").unwrap();
        let (id, b) = read_secret(&format!("id=tok,src={}", f.display())).unwrap();
        assert_eq!((id.as_str(), b.as_slice()), ("tok", &b"s3cr3t"[..]));
        std::env::set_var("KILN_TEST_SECRET_VAR", "from-env");
        let (_, b) = read_secret("id=x,env=KILN_TEST_SECRET_VAR").unwrap();
        assert_eq!(b.as_slice(), b"from-env");
        let (_, b) = read_secret("id=x,type=env,src=KILN_TEST_SECRET_VAR").unwrap();
        assert_eq!(b.as_slice(), b"from-env");
        let (_, b) = read_secret("id=KILN_TEST_SECRET_VAR").unwrap();
        assert_eq!(b.as_slice(), b"from-env");
        for (bad, says) in [
            ("src=/x", "id is missing"),
            ("id=a,type=vault", "unsupported secret type"),
            ("id=a,color=red", "unexpected key"),
            ("id=a,src", "key=value"),
            ("id=kiln-no-such-secret-file", "reading kiln-no-such-secret-file"),
            ("id=a,env=KILN_NO_SUCH_VARIABLE", "KILN_NO_SUCH_VARIABLE is not set"),
        ] {
            let e = read_secret(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let big = dir.path().join("big");
        std::fs::write(&big, vec![0u8; 600 * 1024]).unwrap();
        assert!(read_secret(&format!("id=b,src={}", big.display())).unwrap_err().to_string().contains("too big"));
    }

    #[test]
    fn a_session_answers_what_it_holds_and_nothing_else() {
        std::env::set_var("KILN_TEST_SECRET_ANSWER", "v");
        let s = BuildSession::open(&["id=a,env=KILN_TEST_SECRET_ANSWER".into()], &[]).unwrap();
        assert_eq!(s.answer(&SessionAsk::Secret { id: "a".into() }), SessionAnswer::Bytes(b"v".to_vec()));
        assert_eq!(s.answer(&SessionAsk::Secret { id: "b".into() }), SessionAnswer::Missing);
        assert_eq!(s.answer(&SessionAsk::Ssh { id: "default".into(), message: vec![0, 0, 0, 1, 11] }), SessionAnswer::Missing);
        assert_eq!(s.secret_ids(), ["a"]);
    }
}
