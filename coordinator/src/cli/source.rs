//! Where a build's context comes from, as buildx reads `PATH | URL | -`: a directory, a git
//! repository (`https://host/repo.git#REF:SUBDIR`, `git@host:repo.git`, `git://`, `ssh://`), a
//! tarball or Dockerfile at an HTTP(S) URL, or standard input (a tar archive, or a Dockerfile
//! alone). Remote and piped contexts are fetched into a temporary directory first; from there
//! on they are ordinary directories, so `.dockerignore` and `-f` apply as they do locally.

use anyhow::{anyhow, bail, Context as _};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A context ready to walk.
pub struct Fetched {
    pub dir: PathBuf,
    /// The Dockerfile, when the source was one alone (a URL or standard input).
    pub dockerfile: Option<PathBuf>,
    /// Holds a fetched context until the build is done.
    _temp: Option<tempfile::TempDir>,
}

/// A git source: the URL to clone, the ref and the subdirectory (`#REF:SUBDIR`).
#[derive(Debug, PartialEq, Eq)]
pub struct GitSource {
    pub url: String,
    pub reference: Option<String>,
    pub subdir: Option<String>,
}

/// buildx's rule: `git://`, `git@`, `ssh://`, `file://`, or an http(s) URL whose path ends in `.git` (or a
/// github.com one) is a repository.
pub fn git_source(s: &str) -> Option<GitSource> {
    let (url, fragment) = match s.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (s, None),
    };
    let http = url.starts_with("http://") || url.starts_with("https://");
    let is_git = url.starts_with("git://")
        || url.starts_with("file://")
        || url.starts_with("git@")
        || url.starts_with("ssh://")
        || (http && (url.trim_end_matches('/').ends_with(".git") || url.contains("://github.com/")));
    if !is_git {
        return None;
    }
    let (reference, subdir) = match fragment {
        None => (None, None),
        Some(f) => match f.split_once(':') {
            Some((r, d)) => (Some(r.to_string()), Some(d.to_string())),
            None => (Some(f.to_string()), None),
        },
    };
    let nonempty = |v: Option<String>| v.filter(|x| !x.is_empty());
    Some(GitSource { url: url.to_string(), reference: nonempty(reference), subdir: nonempty(subdir) })
}

/// Fetches `source` when it is not a local directory. `keep_git`: `BUILDKIT_CONTEXT_KEEP_GIT_DIR`.
pub fn fetch(source: &Path, keep_git: bool) -> anyhow::Result<Fetched> {
    let s = source.to_string_lossy();
    if s == "-" {
        return from_stdin();
    }
    if let Some(git) = git_source(&s) {
        return clone(&git, keep_git);
    }
    if s.starts_with("http://") || s.starts_with("https://") {
        return download(&s);
    }
    Ok(Fetched { dir: source.to_path_buf(), dockerfile: None, _temp: None })
}

fn temp() -> anyhow::Result<tempfile::TempDir> {
    let base = super::home::kiln_home().join("client/contexts");
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    tempfile::tempdir_in(&base).context("creating a directory for the context")
}

/// Bytes that are a tar archive (possibly compressed) become the context; anything else is a
/// Dockerfile with an empty context, as BuildKit takes a remote file.
fn unpack_or_dockerfile(bytes: Vec<u8>, what: &str) -> anyhow::Result<Fetched> {
    let t = temp()?;
    let dir = t.path().join("context");
    std::fs::create_dir_all(&dir)?;
    let probe = t.path().join("source");
    std::fs::write(&probe, &bytes).with_context(|| format!("saving {what}"))?;
    if kiln_agent::layers::is_archive(&probe) {
        kiln_agent::layers::extract(std::fs::File::open(&probe)?, &dir).with_context(|| format!("extracting {what}"))?;
        std::fs::remove_file(&probe)?;
        return Ok(Fetched { dir, dockerfile: None, _temp: Some(t) });
    }
    if std::str::from_utf8(&bytes).is_err() {
        bail!("{what} is neither a tar archive (plain, gzip, bzip2, xz or zstd) nor a Dockerfile");
    }
    let dockerfile = t.path().join("Dockerfile");
    std::fs::rename(&probe, &dockerfile)?;
    Ok(Fetched { dir, dockerfile: Some(dockerfile), _temp: Some(t) })
}

fn from_stdin() -> anyhow::Result<Fetched> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        bail!("the context is `-` but standard input is a terminal: pipe a tar archive or a Dockerfile into kiln build -");
    }
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes).context("reading the context from standard input")?;
    unpack_or_dockerfile(bytes, "standard input")
}

/// The largest remote context or Dockerfile downloaded.
const MAX_DOWNLOAD: u64 = 4 << 30;

fn download(url: &str) -> anyhow::Result<Fetched> {
    let agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(30)).timeout_read(Duration::from_secs(300)).build();
    let resp = agent.get(url).call().map_err(|e| anyhow!("downloading the context {url}: {}", one_line(&e.to_string())))?;
    let mut bytes = Vec::new();
    resp.into_reader().take(MAX_DOWNLOAD + 1).read_to_end(&mut bytes).with_context(|| format!("downloading the context {url}"))?;
    if bytes.len() as u64 > MAX_DOWNLOAD {
        bail!("the context {url} is larger than 4 GiB");
    }
    unpack_or_dockerfile(bytes, url)
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

fn git(args: &[&str], dir: Option<&Path>) -> anyhow::Result<()> {
    let mut cmd = Command::new("git");
    cmd.args(args).env("GIT_TERMINAL_PROMPT", "0");
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let out = cmd.output().map_err(|e| anyhow!("running git: {e} (a git context needs git: apt-get install git)"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        bail!("git {}: {last}", args.iter().take(2).copied().collect::<Vec<_>>().join(" "));
    }
    Ok(())
}

fn clone(src: &GitSource, keep_git: bool) -> anyhow::Result<Fetched> {
    let t = temp()?;
    let repo = t.path().join("repo");
    let repo_s = repo.display().to_string();
    let what = || format!("fetching the git context {}", src.url);
    match &src.reference {
        // A branch or tag: a shallow clone; a commit or anything else: fetch and check it out.
        Some(r) if !looks_like_commit(r) => {
            git(&["clone", "--quiet", "--depth", "1", "--recurse-submodules", "--branch", r, &src.url, &repo_s], None)
                .or_else(|_| full_clone(&src.url, &repo_s, Some(r)))
                .with_context(what)?;
        }
        r => full_clone(&src.url, &repo_s, r.as_deref()).with_context(what)?,
    }
    if !keep_git {
        let _ = std::fs::remove_dir_all(repo.join(".git"));
    }
    let dir = match &src.subdir {
        Some(sub) => {
            let d = repo.join(sub.trim_start_matches('/'));
            let inside = std::fs::canonicalize(&d).ok().is_some_and(|c| c.starts_with(std::fs::canonicalize(&repo).unwrap_or_default()));
            if !inside || !d.is_dir() {
                bail!("the git context {} has no directory {sub:?}", src.url);
            }
            d
        }
        None => repo,
    };
    Ok(Fetched { dir, dockerfile: None, _temp: Some(t) })
}

fn full_clone(url: &str, dest: &str, reference: Option<&str>) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dest);
    git(&["clone", "--quiet", "--recurse-submodules", url, dest], None)?;
    if let Some(r) = reference {
        git(&["checkout", "--quiet", r], Some(Path::new(dest))).map_err(|e| anyhow!("{e} (no branch, tag or commit {r:?})"))?;
        git(&["submodule", "update", "--quiet", "--init", "--recursive"], Some(Path::new(dest)))?;
    }
    Ok(())
}

fn looks_like_commit(r: &str) -> bool {
    (7..=40).contains(&r.len()) && r.chars().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_urls_as_buildx_tells_them() {
        let g = git_source("https://example.com/org/repo.git#v1.2:docker/app").unwrap();
        assert_eq!(
            g,
            GitSource { url: "https://example.com/org/repo.git".into(), reference: Some("v1.2".into()), subdir: Some("docker/app".into()) }
        );
        assert_eq!(git_source("git@github.com:org/repo.git").unwrap().reference, None);
        assert_eq!(git_source("https://github.com/org/repo#main").unwrap().reference.as_deref(), Some("main"));
        assert_eq!(git_source("git://127.0.0.1:9418/r#:sub").unwrap().subdir.as_deref(), Some("sub"));
        assert!(git_source("https://example.com/context.tar.gz").is_none());
        assert!(git_source("./some/dir").is_none());
        assert!(looks_like_commit("0123abc") && !looks_like_commit("main"));
    }
}
