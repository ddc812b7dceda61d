//! The build context as the CLI sees it: the files under PATH that `.dockerignore` keeps.
//!
//! Walks the directory without following symlinks, asking the frontend's [`DockerIgnore`]
//! about every path, and descends into an excluded directory only when an exception pattern
//! could bring something inside it back.

use anyhow::Context as _;
use kiln_shared::frontend::dockerignore::DockerIgnore;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Default, Serialize)]
pub struct ContextSummary {
    /// Regular files, symlinks and other non-directories that will be sent.
    pub files: u64,
    pub bytes: u64,
    /// Paths (files or whole directories) left out by `.dockerignore`.
    pub excluded: u64,
    /// The ignore file that applied, if any.
    pub ignore_file: Option<String>,
}

pub fn summarize(root: &Path, dockerfile: &Path) -> anyhow::Result<ContextSummary> {
    let ignore = DockerIgnore::load(root, dockerfile)?;
    let mut summary =
        ContextSummary { ignore_file: DockerIgnore::locate(root, dockerfile).map(|p| p.display().to_string()), ..Default::default() };
    walk(root, &ignore, &mut |e| {
        if e.excluded {
            summary.excluded += 1;
        } else if !e.meta.is_dir() {
            summary.files += 1;
            summary.bytes += e.meta.len();
        }
        Ok(())
    })?;
    Ok(summary)
}

/// One path met by [`walk`].
pub struct Visit<'a> {
    /// Relative to the context, `/`-separated, as text (`.dockerignore` patterns match this).
    pub rel: &'a str,
    /// The same path as the file system's bytes (a name need not be UTF-8).
    pub rel_bytes: &'a [u8],
    pub path: &'a Path,
    /// Of the path itself (symlinks are not followed).
    pub meta: &'a std::fs::Metadata,
    pub excluded: bool,
}

/// Visits every path of the context in name order, excluded ones included (flagged), without
/// following symlinks; an excluded directory is entered only when an exception pattern could
/// bring something inside it back.
pub fn walk(root: &Path, ignore: &DockerIgnore, visit: &mut dyn FnMut(Visit) -> anyhow::Result<()>) -> anyhow::Result<()> {
    walk_dir(root, "", b"", ignore, visit)
}

fn walk_dir(
    dir: &Path,
    rel: &str,
    rel_bytes: &[u8],
    ignore: &DockerIgnore,
    visit: &mut dyn FnMut(Visit) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading build context directory {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading build context directory {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let file_name = entry.file_name();
        let name = file_name.to_string_lossy();
        let path = if rel.is_empty() { name.into_owned() } else { format!("{rel}/{name}") };
        let path_bytes =
            if rel_bytes.is_empty() { file_name.as_bytes().to_vec() } else { [rel_bytes, b"/", file_name.as_bytes()].concat() };
        let meta = entry.metadata().with_context(|| format!("reading {}", entry.path().display()))?;
        let excluded = ignore.is_excluded(&path);
        visit(Visit { rel: &path, rel_bytes: &path_bytes, path: &entry.path(), meta: &meta, excluded })?;
        if meta.is_dir() && (!excluded || ignore.may_reinclude_under(&path)) {
            walk_dir(&entry.path(), &path, &path_bytes, ignore, visit)?;
        }
    }
    Ok(())
}
