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
    walk(root, "", &ignore, &mut summary)?;
    Ok(summary)
}

fn walk(dir: &Path, rel: &str, ignore: &DockerIgnore, out: &mut ContextSummary) -> anyhow::Result<()> {
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
        if meta.is_dir() {
            if !excluded || ignore.may_reinclude_under(&path) {
                walk(&entry.path(), &path, ignore, out)?;
            }
            if excluded {
                out.excluded += 1;
            }
        } else if excluded {
            out.excluded += 1;
        } else {
            out.files += 1;
            out.bytes += meta.len();
        }
    }
    Ok(())
}
