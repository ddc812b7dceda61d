//! COPY, ADD and WORKDIR: building a layer from files of the context, another stage or an image.
//!
//! Files are copied into a fresh directory laid out like the image and diffed into a layer, so
//! every COPY layer is independent of what is below it (which is what `--link` promises).
//! Docker's rules: a source directory's contents are copied, not the directory; several sources
//! need a destination directory (ending in `/`); files from the context belong to root unless
//! `--chown` says otherwise; modes and modification times are kept.

use crate::error::EngineError;
use crate::executor::Mounted;
use crate::layers::{self, Layer};
use crate::state::State;
use kiln_shared::digest::Digest;
use kiln_shared::frontend::dockerignore::DockerIgnore;
use kiln_shared::frontend::instructions::{Heredoc, Instruction};
use kiln_shared::frontend::parser::heredoc_word;
use kiln_shared::frontend::resolve::{join_path, Stage, Step};
use kiln_shared::store::ContentStore;
use kiln_shared::Platform;
use sha2::{Digest as _, Sha256};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What COPY, ADD and WORKDIR need of the slice they run in (the engine provides it).
pub(crate) trait CopyEnv {
    fn store(&self) -> &ContentStore;
    /// Where scratch directories go.
    fn run_dir(&self) -> PathBuf;
    /// Lower directories of a state, top layer first.
    fn lowers(&self, state: &State) -> Result<Vec<PathBuf>, EngineError>;
    /// A state's filesystem mounted read-only, and where.
    fn mount_ro(&self, state: &State) -> Result<(Mounted, PathBuf), EngineError>;
    /// The state a `--from` value names: a built stage, or a pulled image.
    fn source_state(&self, from: &str, platform: &Platform) -> Result<Option<State>, EngineError>;
    /// The build context directory.
    fn context(&self) -> &Path;
    fn ignore(&self) -> &DockerIgnore;
    /// `SOURCE_DATE_EPOCH`, if the build has one.
    fn epoch(&self) -> Option<u64>;
}

fn copy_err(msg: impl Into<String>) -> EngineError {
    EngineError::Copy(msg.into())
}

fn io(what: &str, p: &Path) -> impl FnOnce(std::io::Error) -> EngineError {
    let what = format!("{what} {}", p.display());
    move |e| copy_err(format!("{what}: {e}"))
}

/// Shell-style match of one path against a pattern (`*` and `?` do not cross `/`).
fn glob(p: &[char], s: &[char]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some('*') => (0..=s.len()).take_while(|&i| i == 0 || s[i - 1] != '/').any(|i| glob(&p[1..], &s[i..])),
        Some('?') => s.first().is_some_and(|&c| c != '/') && glob(&p[1..], &s[1..]),
        Some('[') => {
            let Some(end) = p.iter().skip(1).position(|&c| c == ']').map(|e| e + 1) else {
                return s.first() == Some(&'[') && glob(&p[1..], &s[1..]);
            };
            let Some(&c) = s.first() else { return false };
            let class = &p[1..end];
            let (neg, class) = match class.first() {
                Some('^' | '!') => (true, &class[1..]),
                _ => (false, class),
            };
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == '-' {
                    hit |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit != neg && c != '/' && glob(&p[end + 1..], &s[1..])
        }
        Some('\\') if p.len() > 1 => s.first() == Some(&p[1]) && glob(&p[2..], &s[1..]),
        Some(c) => s.first() == Some(c) && glob(&p[1..], &s[1..]),
    }
}

/// `rel` inside `root`, with every symlink in its parent directories resolved as if `root`
/// were `/` (the final component is kept as it is: COPY copies a symlink as a symlink). An
/// absolute link in an image, or `..` in the context, can never lead outside `root`.
pub(crate) fn secure_join(root: &Path, rel: &str) -> PathBuf {
    root.join(resolve_rel(root, rel, false))
}

/// `rel` resolved inside `root` as the image sees it: every symlink on the way is followed
/// (the last one too with `follow_last`), absolute links and `..` never leave `root`. Returns
/// the path relative to `root`.
pub(crate) fn resolve_rel(root: &Path, rel: &str, follow_last: bool) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut pending: Vec<String> = rel.split('/').filter(|c| !c.is_empty() && *c != ".").map(str::to_string).rev().collect();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            parts.pop();
            continue;
        }
        let here = root.join(parts.iter().collect::<PathBuf>()).join(&c);
        let is_last = pending.is_empty();
        match fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() && (follow_last || !is_last) && hops < 40 => {
                hops += 1;
                let target = fs::read_link(&here).unwrap_or_default();
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    parts.clear();
                }
                pending.extend(target.split('/').filter(|c| !c.is_empty() && *c != ".").map(str::to_string).rev());
            }
            _ => parts.push(c),
        }
    }
    parts.join("/")
}

/// A source pattern as a path relative to its root ("" is the root itself).
fn clean(pattern: &str) -> String {
    join_path("/", pattern).trim_start_matches('/').to_string()
}

/// Paths under `root` (relative) that `pattern` names, honouring `.dockerignore` for the context.
pub(crate) fn matches(root: &Path, ignore: Option<&DockerIgnore>, pattern: &str) -> Result<Vec<String>, EngineError> {
    let pat = clean(pattern);
    let excluded = |rel: &str| ignore.is_some_and(|i| !rel.is_empty() && i.is_excluded(rel));
    if !pat.contains(['*', '?', '[']) {
        let ok = fs::symlink_metadata(secure_join(root, &pat)).is_ok() && !excluded(&pat);
        return Ok(if ok { vec![pat] } else { vec![] });
    }
    let p: Vec<char> = pat.chars().collect();
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(root.join(&dir)) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if dir.is_empty() { name } else { format!("{dir}/{name}") };
            if excluded(&rel) {
                continue;
            }
            let r: Vec<char> = rel.chars().collect();
            if glob(&p, &r) {
                out.push(rel.clone());
            }
            // Only descend where the pattern has more components.
            if e.file_type().is_ok_and(|t| t.is_dir()) && rel.matches('/').count() < pat.matches('/').count() {
                stack.push(rel);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn is_remote(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// Checksum of what COPY/ADD sources name in the context: paths, modes, content (not mtimes).
pub(crate) fn context_checksum(context: &Path, ignore: &DockerIgnore, sources: &[String]) -> Result<String, EngineError> {
    let mut h = Sha256::new();
    for s in sources {
        if heredoc_word(s).is_some() || is_remote(s) {
            h.update(s.as_bytes());
            continue;
        }
        let found = matches(context, Some(ignore), s)?;
        if found.is_empty() {
            return Err(copy_err(format!("COPY source {s:?} not found: it is not in the build context or is excluded by .dockerignore")));
        }
        for rel in found {
            hash_tree(context, &rel, ignore, &mut h)?;
        }
    }
    Ok(hex::encode(h.finalize()))
}

fn hash_tree(root: &Path, rel: &str, ignore: &DockerIgnore, h: &mut Sha256) -> Result<(), EngineError> {
    hash_entry(root, Path::new(rel), ignore, h)
}

/// Hashes one context path and what is under it. Names are hashed as the file system's bytes
/// (they need not be UTF-8); `.dockerignore` matches their text.
fn hash_entry(root: &Path, rel: &Path, ignore: &DockerIgnore, h: &mut Sha256) -> Result<(), EngineError> {
    use std::os::unix::ffi::OsStrExt;
    let p = root.join(rel);
    let m = fs::symlink_metadata(&p).map_err(io("reading", &p))?;
    h.update(rel.as_os_str().as_bytes());
    h.update(format!("\0{:o}\0", m.mode()).as_bytes());
    if m.file_type().is_symlink() {
        h.update(fs::read_link(&p).map_err(io("reading", &p))?.as_os_str().as_bytes());
    } else if m.is_file() {
        let mut f = fs::File::open(&p).map_err(io("reading", &p))?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).map_err(io("reading", &p))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    } else if m.is_dir() {
        let mut names: Vec<std::ffi::OsString> = fs::read_dir(&p).map_err(io("reading", &p))?.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for n in names {
            let child = rel.join(&n);
            if !ignore.is_excluded(&child.to_string_lossy()) {
                hash_entry(root, &child, ignore, h)?;
            }
        }
    }
    Ok(())
}

/// The topmost lower path for `rel` in a state's snapshots (None when absent or whited out).
pub(crate) fn lookup_lower(env: &dyn CopyEnv, state: &State, rel: &str) -> Result<Option<PathBuf>, EngineError> {
    for dir in env.lowers(state)? {
        let p = dir.join(rel);
        if let Ok(m) = fs::symlink_metadata(&p) {
            use std::os::unix::fs::FileTypeExt;
            return Ok(if m.file_type().is_char_device() && m.rdev() == 0 { None } else { Some(p) });
        }
    }
    Ok(None)
}

/// The supplementary groups of `user` (its memberships in the rootfs's /etc/group), as
/// runc's `additionalGids`; a numeric user with no passwd entry has none.
pub(crate) fn supplementary_groups(rootfs: &Path, user: &str, primary: u32) -> Vec<u32> {
    let name = user.split(':').next().unwrap_or("");
    if name.is_empty() || user.contains(':') {
        return vec![];
    }
    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let login = if name.parse::<u32>().is_ok() {
        passwd.lines().find(|l| l.split(':').nth(2) == Some(name)).and_then(|l| l.split(':').next()).map(str::to_string)
    } else {
        Some(name.to_string())
    };
    let Some(login) = login else { return vec![] };
    let groups = fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let mut out: Vec<u32> = groups
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let members = f.get(3)?;
            members.split(',').any(|m| m.trim() == login).then(|| f.get(2)?.parse().ok()).flatten()
        })
        .filter(|g| *g != primary)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// `--chown`: as `resolve_user`, except that a numeric uid without a group uses the same
/// number as its gid (Docker's documented rule; a name without a group gets its primary group).
fn resolve_chown(rootfs: &Path, spec: &str) -> Result<(u32, u32), EngineError> {
    match spec.parse::<u32>() {
        Ok(n) => Ok((n, n)),
        Err(_) => resolve_user(rootfs, spec),
    }
}

/// `uid[:gid]` or names looked up in the rootfs's /etc/passwd and /etc/group.
pub(crate) fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32), EngineError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let read = |f: &str| fs::read_to_string(rootfs.join(f)).unwrap_or_default();
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (
            n,
            read("etc/passwd")
                .lines()
                .find(|l| l.split(':').nth(2) == Some(u))
                .and_then(|l| l.split(':').nth(3)?.parse().ok())
                .unwrap_or(0),
        ),
        Err(_) => {
            let line = read("etc/passwd").lines().find(|l| l.split(':').next() == Some(u)).map(str::to_string);
            let line = line.ok_or_else(|| copy_err(format!("unable to find user {u}: no matching entries in passwd file")))?;
            let f: Vec<&str> = line.split(':').collect();
            (f.get(2).and_then(|v| v.parse().ok()).unwrap_or(0), f.get(3).and_then(|v| v.parse().ok()).unwrap_or(0))
        }
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => read("etc/group")
                .lines()
                .find(|l| l.split(':').next() == Some(g))
                .and_then(|l| l.split(':').nth(2)?.parse().ok())
                .ok_or_else(|| copy_err(format!("unable to find group {g}: no matching entries in group file")))?,
        },
    };
    Ok((uid, gid))
}

fn set_times(p: &Path, mtime: i64) -> Result<(), EngineError> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(mtime, 0);
    utimensat(None, p, &t, &t, UtimensatFlags::NoFollowSymlink).map_err(|e| copy_err(format!("setting times on {}: {e}", p.display())))
}

struct Owner {
    chown: Option<(u32, u32)>,
    chmod: Option<u32>,
    /// Keep the source's ownership (copies between images); else root.
    keep: bool,
    /// `--exclude` patterns, matched against paths inside each copied directory.
    exclude: Option<DockerIgnore>,
    /// (upper, image root): an entry whose path is a symlink in the image is written where
    /// the link points (a merged-/usr `/bin` stays a link when a tree is copied onto `/`).
    view: Option<(PathBuf, PathBuf)>,
}

impl Owner {
    /// Where `dst` (in the upper dir) really goes, following the image's symlinks.
    fn target(&self, dst: &Path) -> PathBuf {
        let Some((upper, root)) = &self.view else { return dst.to_path_buf() };
        let Ok(rel) = dst.strip_prefix(upper) else { return dst.to_path_buf() };
        let rel = rel.to_string_lossy();
        match fs::symlink_metadata(root.join(rel.as_ref())) {
            Ok(m) if m.file_type().is_symlink() => upper.join(resolve_rel(root, &rel, true)),
            _ => dst.to_path_buf(),
        }
    }

    fn excluded(&self, rel: &str) -> bool {
        self.exclude.as_ref().is_some_and(|e| !rel.is_empty() && e.is_excluded(rel))
    }
}

/// Copies `src` to `dst` (a file, symlink or whole tree).
fn copy_tree(src: &Path, dst: &Path, own: &Owner) -> Result<(), EngineError> {
    copy_entry(src, &own.target(dst), own, "")
}

/// `rel`: the path inside the directory being copied (for `--exclude`).
fn copy_entry(src: &Path, dst: &Path, own: &Owner, rel: &str) -> Result<(), EngineError> {
    let m = fs::symlink_metadata(src).map_err(io("reading", src))?;
    let (uid, gid) = own.chown.unwrap_or(if own.keep { (m.uid(), m.gid()) } else { (0, 0) });
    if m.file_type().is_symlink() {
        let _ = fs::remove_file(dst);
        std::os::unix::fs::symlink(fs::read_link(src).map_err(io("reading", src))?, dst).map_err(io("creating", dst))?;
    } else if m.is_dir() {
        fs::create_dir_all(dst).map_err(io("creating", dst))?;
        let mut names: Vec<_> = fs::read_dir(src).map_err(io("reading", src))?.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for n in names {
            let child = if rel.is_empty() { n.to_string_lossy().into_owned() } else { format!("{rel}/{}", n.to_string_lossy()) };
            if own.excluded(&child) {
                continue;
            }
            copy_entry(&src.join(&n), &own.target(&dst.join(&n)), own, &child)?;
        }
        fs::set_permissions(dst, fs::Permissions::from_mode(own.chmod.unwrap_or(m.mode() & 0o7777))).map_err(io("chmod", dst))?;
    } else if m.is_file() {
        fs::copy(src, dst).map_err(io("copying to", dst))?;
        fs::set_permissions(dst, fs::Permissions::from_mode(own.chmod.unwrap_or(m.mode() & 0o7777))).map_err(io("chmod", dst))?;
    } else if m.file_type().is_fifo() {
        // BuildKit copies a named pipe as a named pipe.
        let _ = fs::remove_file(dst);
        let mode = own.chmod.unwrap_or(m.mode() & 0o7777);
        nix::unistd::mkfifo(dst, nix::sys::stat::Mode::from_bits_truncate(mode)).map_err(|e| io("creating", dst)(e.into()))?;
    } else {
        return Ok(()); // Sockets and devices in a context are skipped.
    }
    std::os::unix::fs::lchown(dst, Some(uid), Some(gid)).map_err(io("chown", dst))?;
    set_times(dst, m.mtime())
}

/// Creates the parents of `rel` in `upper`, copying their metadata from the image below.
/// Directories the image lacks are created owned by `owner`.
fn make_parents(
    env: &dyn CopyEnv,
    state: &State,
    upper: &Path,
    rel: &str,
    epoch: Option<u64>,
    owner: (u32, u32),
) -> Result<(), EngineError> {
    let mut path = String::new();
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        path = if path.is_empty() { part.to_string() } else { format!("{path}/{part}") };
        let dst = upper.join(&path);
        if dst.exists() {
            continue;
        }
        fs::create_dir(&dst).map_err(io("creating", &dst))?;
        let (mode, uid, gid, mtime) = match lookup_lower(env, state, &path)?.and_then(|p| fs::metadata(p).ok()) {
            Some(m) => (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
            None => (0o755, owner.0, owner.1, epoch.unwrap_or(0) as i64),
        };
        fs::set_permissions(&dst, fs::Permissions::from_mode(mode)).map_err(io("chmod", &dst))?;
        std::os::unix::fs::lchown(&dst, Some(uid), Some(gid)).map_err(io("chown", &dst))?;
        set_times(&dst, mtime)?;
    }
    Ok(())
}

/// WORKDIR creates its directory when the image lacks it.
/// The path is resolved inside the image (a WORKDIR through a symlinked directory creates the
/// directory where the link points), and new directories belong to the stage's USER.
pub(crate) fn workdir(env: &dyn CopyEnv, state: &State, path: &str, epoch: Option<u64>) -> Result<Option<Layer>, EngineError> {
    let scratch = env.run_dir().join(format!(
        "wd-{}-{}",
        std::process::id(),
        Digest::of(format!("{path}{:?}", std::time::SystemTime::now()).as_bytes()).hex()
    ));
    let (ov, root) = image_view(env, state, &scratch)?;
    let rel = resolve_rel(&root, path.trim_start_matches('/'), true);
    let exists = rel.is_empty() || fs::metadata(root.join(&rel)).is_ok();
    let owner = resolve_user(&root, &state.config.config.user).unwrap_or((0, 0));
    drop(ov);
    let _ = fs::remove_dir(scratch.with_extension("empty"));
    let rel = rel.as_str();
    if exists {
        return Ok(None);
    }
    let upper = env.run_dir().join(format!("workdir-{}", Digest::of(format!("{path}{:?}", std::time::SystemTime::now()).as_bytes()).hex()));
    fs::create_dir_all(&upper).map_err(io("creating", &upper))?;
    let res = (|| {
        make_parents(env, state, &upper, &format!("{rel}/x"), epoch, owner)?;
        Ok(layers::diff(&upper, env.store(), epoch)?)
    })();
    let _ = fs::remove_dir_all(&upper);
    res
}

fn extract_tar(path: &Path, dest: &Path) -> Result<(), EngineError> {
    let f = fs::File::open(path).map_err(io("reading", path))?;
    layers::extract(f, dest).map_err(io("extracting", path))
}

fn download(url: &str, checksum: Option<&str>, dest: &Path) -> Result<(), EngineError> {
    let resp = ureq_get(url)?;
    let mut bytes = Vec::new();
    resp.take(1 << 32).read_to_end(&mut bytes).map_err(|e| copy_err(format!("downloading {url}: {e}")))?;
    if let Some(sum) = checksum {
        let got = Digest::of(&bytes);
        if got.as_str() != sum {
            return Err(copy_err(format!("digest mismatch for {url}: expected {sum}, got {got}")));
        }
    }
    fs::write(dest, &bytes).map_err(io("writing", dest))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(0o600)).map_err(io("chmod", dest))
}

fn ureq_get(url: &str) -> Result<Box<dyn Read + Send + Sync>, EngineError> {
    match ureq::get(url).call() {
        Ok(r) => Ok(r.into_reader()),
        Err(e) => Err(copy_err(format!("downloading {url}: {e}"))),
    }
}

/// The image's filesystem so far, read-only: a mount of its layers, or (an image without
/// layers) an empty directory beside `near`.
fn image_view(env: &dyn CopyEnv, state: &State, near: &Path) -> Result<(Option<Mounted>, PathBuf), EngineError> {
    if state.layers.is_empty() {
        let empty = near.with_extension("empty");
        fs::create_dir_all(&empty).map_err(io("creating", &empty))?;
        return Ok((None, empty));
    }
    let (ov, root) = env.mount_ro(state)?;
    Ok((Some(ov), root))
}

/// The parts of COPY and ADD this module uses.
struct CopySpec<'a> {
    sources: &'a [String],
    dest: &'a str,
    from: Option<&'a String>,
    chown: Option<&'a String>,
    chmod: Option<&'a String>,
    heredocs: &'a [Heredoc],
    is_add: bool,
    checksum: Option<&'a String>,
    parents: bool,
    exclude: &'a [String],
}

/// Runs a COPY or ADD step.
pub(crate) fn copy(env: &dyn CopyEnv, stage: &Stage, step: &Step, state: &State) -> Result<Option<Layer>, EngineError> {
    let spec = match &step.instruction {
        Instruction::Copy(c) => CopySpec {
            sources: &c.sources,
            dest: &c.dest,
            from: c.from.as_ref(),
            chown: c.chown.as_ref(),
            chmod: c.chmod.as_ref(),
            heredocs: &c.heredocs,
            is_add: false,
            checksum: None,
            parents: c.parents,
            exclude: &c.exclude,
        },
        Instruction::Add(a) => CopySpec {
            sources: &a.sources,
            dest: &a.dest,
            from: None,
            chown: a.chown.as_ref(),
            chmod: a.chmod.as_ref(),
            heredocs: &a.heredocs,
            is_add: true,
            checksum: a.checksum.as_ref(),
            parents: false,
            exclude: &a.exclude,
        },
        _ => return Ok(None),
    };
    let CopySpec { sources, dest, from, chown, chmod, heredocs, is_add, checksum, parents, exclude } = spec;
    let exclude = if exclude.is_empty() {
        None
    } else {
        Some(DockerIgnore::parse(&exclude.join("\n")).map_err(|e| copy_err(format!("--exclude: {e}")))?)
    };
    let upper = env.run_dir().join(format!(
        "copy-{}",
        Digest::of(format!("{}{:?}{:?}", step.pos, stage.platform, std::time::SystemTime::now()).as_bytes()).hex()
    ));
    fs::create_dir_all(&upper).map_err(io("creating", &upper))?;
    let mut mounts = Vec::new();
    let result = (|| {
        // The image as it is so far: destinations resolve in it, following its symlinks (a
        // merged-/usr `/lib -> usr/lib` stays a link), and --chown names are looked up in it.
        let (image_ov, image_root) = image_view(env, state, &upper)?;
        mounts.extend(image_ov);
        // Where sources come from: the context, or another stage's / image's filesystem.
        let (src_root, ignore, keep) = match from {
            Some(f) => {
                let src = env.source_state(f, &stage.platform)?.ok_or_else(|| copy_err(format!("stage {f} is not built")))?;
                let (ov, root) = env.mount_ro(&src)?;
                mounts.push(ov);
                (root, None, true)
            }
            None => (env.context().to_path_buf(), Some(env.ignore()), false),
        };
        let chown_ids = match chown {
            None => None,
            Some(c) => Some(resolve_chown(&image_root, c)?),
        };
        let own = Owner {
            chown: chown_ids,
            chmod: chmod.and_then(|m| u32::from_str_radix(m, 8).ok()),
            keep,
            exclude,
            view: Some((upper.clone(), image_root.clone())),
        };
        let dest_abs = join_path(&step.workdir, dest);
        let dest_rel = resolve_rel(&image_root, dest_abs.trim_start_matches('/'), true);
        let mut items: Vec<(PathBuf, String)> = Vec::new(); // (source path, name)
        let mut docs = heredocs.iter();
        for s in sources {
            if heredoc_word(s).is_some() {
                continue;
            }
            if is_add && is_remote(s) {
                let name = s.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("download").to_string();
                let tmp = upper.with_extension(format!("dl-{}", items.len()));
                download(s, checksum.map(String::as_str), &tmp)?;
                items.push((tmp, name));
                continue;
            }
            let found = matches(&src_root, ignore, s)?;
            if found.is_empty() {
                return Err(copy_err(format!(
                    "{} source {s:?} not found: {}",
                    if is_add { "ADD" } else { "COPY" },
                    if from.is_some() {
                        format!("no such path in {}", from.map(String::as_str).unwrap_or(""))
                    } else {
                        "it is not in the build context or is excluded by .dockerignore".to_string()
                    }
                )));
            }
            // `--parents`: the path from the context (or after a `/./` in the source) is kept.
            let pivot = s.find("/./").map(|i| clean(&s[..i]));
            for rel in found {
                if own.excluded(&rel) {
                    continue;
                }
                // A source that is a symlink is followed (inside its root), as BuildKit does;
                // it keeps its own name at the destination.
                let name = if parents {
                    match &pivot {
                        Some(p) if !p.is_empty() => rel.strip_prefix(&format!("{p}/")).unwrap_or(&rel).to_string(),
                        _ => rel.clone(),
                    }
                } else {
                    rel.rsplit('/').next().unwrap_or("").to_string()
                };
                items.push((src_root.join(resolve_rel(&src_root, &rel, true)), name));
            }
        }
        let doc_count = heredocs.len();
        let many = items.len() + doc_count > 1;
        let dest_is_dir =
            dest.ends_with('/') || many || dest_rel.is_empty() || lookup_lower(env, state, &dest_rel)?.is_some_and(|p| p.is_dir());
        if many && !dest.ends_with('/') && !dest_rel.is_empty() && !lookup_lower(env, state, &dest_rel)?.is_some_and(|p| p.is_dir()) {
            return Err(copy_err(format!("When using COPY with more than one source file, the destination must be a directory and end with a / (destination {dest:?})")));
        }
        let dest_dir = upper.join(&dest_rel);
        // Directories COPY creates for the destination belong to the --chown user.
        let created = own.chown.unwrap_or((0, 0));
        if dest_is_dir {
            make_parents(env, state, &upper, &format!("{dest_rel}/x"), env.epoch(), created)?;
        } else {
            make_parents(env, state, &upper, &dest_rel, env.epoch(), created)?;
        }
        let dest_existed = lookup_lower(env, state, &dest_rel)?.is_some();
        for (src, name) in &items {
            let is_dir =
                fs::metadata(src).is_ok_and(|m| m.is_dir()) && !fs::symlink_metadata(src).is_ok_and(|m| m.file_type().is_symlink());
            if is_add && !is_dir && from.is_none() && src.starts_with(&src_root) && layers::is_archive(src) {
                extract_tar(src, &dest_dir)?;
            } else if is_dir && parents {
                let target = dest_dir.join(name);
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(io("creating", parent))?;
                }
                copy_tree(src, &target, &own)?;
            } else if is_dir {
                copy_tree(src, &dest_dir, &own)?;
                // The destination root keeps what it was; a new one gets the source
                // directory's mode (--chmod applies to what is copied into it, as Docker's).
                let keep = if dest_existed { lookup_lower(env, state, &dest_rel)?.and_then(|p| fs::metadata(p).ok()) } else { None };
                let src_meta = fs::metadata(src).map_err(io("reading", src))?;
                let m = keep.as_ref().unwrap_or(&src_meta);
                fs::set_permissions(&dest_dir, fs::Permissions::from_mode(m.mode() & 0o7777)).map_err(io("chmod", &dest_dir))?;
                if let Some(k) = &keep {
                    std::os::unix::fs::lchown(&dest_dir, Some(k.uid()), Some(k.gid())).map_err(io("chown", &dest_dir))?;
                    set_times(&dest_dir, k.mtime())?;
                }
            } else {
                let target = if dest_is_dir { dest_dir.join(name) } else { dest_dir.clone() };
                if parents {
                    if let Some(parent) = target.parent() {
                        fs::create_dir_all(parent).map_err(io("creating", parent))?;
                    }
                }
                copy_tree(src, &target, &own)?;
            }
        }
        for doc in docs.by_ref() {
            let target = if dest_is_dir { dest_dir.join(&doc.name) } else { dest_dir.clone() };
            fs::write(&target, doc.content.as_bytes()).map_err(io("writing", &target))?;
            fs::set_permissions(&target, fs::Permissions::from_mode(own.chmod.unwrap_or(0o644))).map_err(io("chmod", &target))?;
            let (uid, gid) = own.chown.unwrap_or((0, 0));
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid)).map_err(io("chown", &target))?;
            set_times(&target, env.epoch().unwrap_or(0) as i64)?;
        }
        drop(mounts);
        Ok(layers::diff(&upper, env.store(), env.epoch())?)
    })();
    let _ = fs::remove_dir_all(&upper);
    let _ = fs::remove_dir(upper.with_extension("empty"));
    for i in 0..sources.len() {
        let _ = fs::remove_file(upper.with_extension(format!("dl-{i}")));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::glob;

    fn g(p: &str, s: &str) -> bool {
        glob(&p.chars().collect::<Vec<_>>(), &s.chars().collect::<Vec<_>>())
    }

    #[test]
    fn secure_join_stays_inside() {
        let root = std::env::temp_dir().join(format!("kiln-securejoin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("/usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("usr/up")).unwrap();
        std::fs::write(root.join("usr/lib/x"), "x").unwrap();
        assert_eq!(super::secure_join(&root, "lib/x"), root.join("usr/lib/x"));
        assert_eq!(super::secure_join(&root, "usr/up/etc/passwd"), root.join("etc/passwd"));
        assert_eq!(super::secure_join(&root, "../../etc"), root.join("etc"));
        // The last component stays a link.
        assert_eq!(super::secure_join(&root, "lib"), root.join("lib"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn globs() {
        assert!(g("*.txt", "a.txt"));
        assert!(!g("*.txt", "d/a.txt"));
        assert!(g("d/*.txt", "d/a.txt"));
        assert!(g("file?.c", "file1.c"));
        assert!(g("[ab]*", "beta"));
        assert!(!g("[!ab]*", "beta"));
    }
}
