//! RUN's secret and ssh mounts, as BuildKit makes them: a secret is a file on a tmpfs private
//! to the step (or an environment variable of its process), an ssh mount a socket that relays
//! the ssh-agent protocol to the client's agent through the build's session. Nothing of either
//! reaches a layer, the step cache or the agent's disk: the tmpfs is unmounted when the step
//! ends, and the secret's bytes are wiped from memory once written.

use super::{EngineError, Session};
use crate::error::io_err;
use crate::executor::{Executor, Mounted};
use kiln_shared::frontend::mount::Mount;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use zeroize::Zeroize;

/// The step's private tmpfs, mounted on first use; unmounted (and so emptied) on drop.
pub(super) struct Private<'a> {
    executor: &'a dyn Executor,
    dir: PathBuf,
    mounted: Option<Mounted>,
    files: usize,
}

impl<'a> Private<'a> {
    pub fn new(executor: &'a dyn Executor, dir: PathBuf) -> Private<'a> {
        Private { executor, dir, mounted: None, files: 0 }
    }

    /// Whether anything of the step lives here (then the bundle does too: see [`super::run`]).
    pub fn used(&self) -> bool {
        self.mounted.is_some()
    }

    pub fn dir(&mut self) -> Result<&Path, EngineError> {
        if self.mounted.is_none() {
            self.mounted = Some(self.executor.tmpfs(&self.dir)?);
        }
        Ok(&self.dir)
    }

    fn next(&mut self, what: &str) -> Result<PathBuf, EngineError> {
        self.files += 1;
        let n = self.files;
        Ok(self.dir()?.join(format!("{what}-{n}")))
    }
}

/// BuildKit's secret id: `id`, else `source`, else the target's file name.
fn secret_id(m: &Mount) -> String {
    m.id.clone().or_else(|| m.source.clone()).unwrap_or_else(|| m.target.as_deref().map(base).unwrap_or_default().to_string())
}

fn base(p: &str) -> &str {
    p.trim_end_matches('/').rsplit('/').next().unwrap_or(p)
}

fn number(v: &Option<String>, default: u32, radix: u32, what: &str) -> Result<u32, EngineError> {
    match v {
        None => Ok(default),
        Some(s) => u32::from_str_radix(s, radix).map_err(|_| EngineError::Copy(format!("invalid {what} {s:?} for a secret or ssh mount"))),
    }
}

/// Writes `bytes` as the mount's file with its mode and owner (BuildKit: 0400, 0:0).
fn place(path: &Path, bytes: &[u8], m: &Mount, mode: u32) -> Result<(), EngineError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io_err("writing a secret"))?;
    f.write_all(bytes).map_err(io_err("writing a secret"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(number(&m.mode, mode, 8, "mode")?))
        .map_err(io_err("writing a secret"))?;
    std::os::unix::fs::chown(path, Some(number(&m.uid, 0, 10, "uid")?), Some(number(&m.gid, 0, 10, "gid")?))
        .map_err(io_err("writing a secret"))?;
    Ok(())
}

/// A `--mount=type=secret`: its file bound at the target (default `/run/secrets/ID`) and/or its
/// value in the environment (`env=`). A secret the client lacks is skipped, or fails the step
/// when `required`.
pub(super) fn secret(
    session: &dyn Session,
    m: &Mount,
    private: &mut Private,
    binds: &mut Vec<(PathBuf, String, bool)>,
    env: &mut Vec<String>,
) -> Result<(), EngineError> {
    let id = secret_id(m);
    let Some(mut bytes) = session.secret(&id).map_err(|e| EngineError::Copy(format!("secret {id:?}: {e}")))? else {
        if m.required == Some(true) {
            return Err(EngineError::Copy(format!(
                "secret {id} is required but was not provided (kiln build --secret id={id},src=FILE or env=VAR)"
            )));
        }
        return Ok(());
    };
    let result = (|| {
        if let Some(var) = &m.env {
            let value = std::str::from_utf8(&bytes)
                .map_err(|_| EngineError::Copy(format!("secret {id} is not valid UTF-8 and cannot be the environment variable {var}")))?;
            env.retain(|e| e.split('=').next() != Some(var.as_str()));
            env.push(format!("{var}={value}"));
        }
        if m.target.is_some() || m.env.is_none() {
            let target = m.target.clone().unwrap_or_else(|| format!("/run/secrets/{}", base(&id)));
            let host = private.next("secret")?;
            place(&host, &bytes, m, 0o400)?;
            binds.push((host, target, true));
        }
        Ok(())
    })();
    bytes.zeroize();
    result
}

/// A `--mount=type=ssh`: a socket bound at the target (default `/run/buildkit/ssh_agent.N`),
/// served by [`relay`] while the step runs. `None` when the client has no such agent and the
/// mount is not `required=true`.
pub(super) fn ssh(
    session: &dyn Session,
    m: &Mount,
    n: usize,
    private: &mut Private,
    binds: &mut Vec<(PathBuf, String, bool)>,
    env: &mut Vec<String>,
) -> Result<Option<(UnixListener, PathBuf, String)>, EngineError> {
    let id = m.id.clone().unwrap_or_else(|| "default".to_string());
    // Whether the client has this agent: ask it for its identities (an empty request is harmless).
    const REQUEST_IDENTITIES: [u8; 5] = [0, 0, 0, 1, 11];
    match session.ssh(&id, &REQUEST_IDENTITIES).map_err(|e| EngineError::Copy(format!("ssh {id:?}: {e}")))? {
        Some(_) => {}
        // As BuildKit: an ssh mount is optional unless `required=true`.
        None if m.required != Some(true) => return Ok(None),
        None => return Err(EngineError::Copy(format!("no SSH key {id:?} forwarded from the client (kiln build --ssh {id}[=SOCKET|KEY])"))),
    }
    let target = m.target.clone().unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{n}"));
    let path = private.next("ssh")?.with_extension("sock");
    let listener = UnixListener::bind(&path).map_err(io_err("creating an ssh-agent socket"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(number(&m.mode, 0o600, 8, "mode")?))
        .map_err(io_err("creating an ssh-agent socket"))?;
    std::os::unix::fs::chown(&path, Some(number(&m.uid, 0, 10, "uid")?), Some(number(&m.gid, 0, 10, "gid")?))
        .map_err(io_err("creating an ssh-agent socket"))?;
    if n == 0 && !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
        env.push(format!("SSH_AUTH_SOCK={target}"));
    }
    binds.push((path.clone(), target, false));
    Ok(Some((listener, path, id)))
}

/// The largest ssh-agent message relayed (OpenSSH's agent allows 256 KiB).
const MAX_SSH_MESSAGE: usize = 256 * 1024;

/// Serves one ssh mount's socket until `stop`: every message a process in the step sends is
/// relayed to the client's agent, and its reply written back.
pub(super) fn relay(listener: &UnixListener, id: &str, session: &dyn Session, stop: &AtomicBool) {
    std::thread::scope(|scope| {
        for conn in listener.incoming() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let Ok(mut conn) = conn else { continue };
            scope.spawn(move || {
                while let Some(message) = read_message(&mut conn) {
                    match session.ssh(id, &message) {
                        Ok(Some(reply)) if conn.write_all(&reply).is_ok() => {}
                        _ => break,
                    }
                }
            });
        }
    });
}

/// Wakes [`relay`]'s accept so it sees `stop`.
pub(super) fn wake(path: &Path) {
    let _ = UnixStream::connect(path);
}

fn read_message(conn: &mut UnixStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).ok()?;
    let n = u32::from_be_bytes(len) as usize;
    if n == 0 || n > MAX_SSH_MESSAGE {
        return None;
    }
    let mut message = vec![0u8; 4 + n];
    message[..4].copy_from_slice(&len);
    conn.read_exact(&mut message[4..]).ok()?;
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(text: &str) -> Mount {
        Mount::parse(text).unwrap()
    }

    #[test]
    fn secret_ids_and_targets_as_buildkit_derives_them() {
        assert_eq!(secret_id(&mount("type=secret,id=npmrc")), "npmrc");
        assert_eq!(secret_id(&mount("type=secret,target=/root/.npmrc")), ".npmrc");
        assert_eq!(secret_id(&mount("type=secret,source=aws")), "aws");
        assert_eq!(base("/run/secrets/x/"), "x");
    }
}
