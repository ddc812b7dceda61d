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
    /// Relative to the context, `/`-separated.
    pub rel: &'a str,
    pub path: &'a Path,
    /// Of the path itself (symlinks are not followed).
    pub meta: &'a std::fs::Metadata,
    pub excluded: bool,
}

/// Visits every path of the context in name order, excluded ones included (flagged), without
/// following symlinks; an excluded directory is entered only when an exception pattern could
/// bring something inside it back.
pub fn walk(root: &Path, ignore: &DockerIgnore, visit: &mut dyn FnMut(Visit) -> anyhow::Result<()>) -> anyhow::Result<()> {
    walk_dir(root, "", ignore, visit)
}

fn walk_dir(dir: &Path, rel: &str, ignore: &DockerIgnore, visit: &mut dyn FnMut(Visit) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading build context directory {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading build context directory {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let meta = entry.metadata().with_context(|| format!("reading {}", entry.path().display()))?;
        let excluded = ignore.is_excluded(&path);
        visit(Visit { rel: &path, path: &entry.path(), meta: &meta, excluded })?;
        if meta.is_dir() && (!excluded || ignore.may_reinclude_under(&path)) {
            walk_dir(&entry.path(), &path, ignore, visit)?;
        }
    }
    Ok(())
}
