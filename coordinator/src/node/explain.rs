//! Why did it miss? For each step a build ran where the previous build of the same target had
//! the step too, the input that changed: the instruction text, a build argument, a context
//! path (added, removed, content or mode), the base image, or the step before it. A pure
//! function of the two builds' records.

use crate::raft::{BuildRecord, BuildState};
use kiln_shared::api::{ContextEntry, EntryKind, MissReason, StepRecord, StepSource};
use std::collections::BTreeMap;

/// The newest finished, successful build of the same target before `b`: same tenant,
/// Dockerfile name, target stage and first tag.
pub fn previous<'a>(builds: impl DoubleEndedIterator<Item = &'a BuildRecord>, b: &BuildRecord) -> Option<&'a BuildRecord> {
    builds.rev().find(|p| {
        p.id < b.id
            && p.state == BuildState::Done
            && p.tenant == b.tenant
            && p.spec.dockerfile_name == b.spec.dockerfile_name
            && p.spec.target == b.spec.target
            && p.spec.tags.first() == b.spec.tags.first()
    })
}

/// For each step of `cur` that ran while `prev` had it: why.
pub fn explain(prev: &BuildRecord, cur: &BuildRecord) -> Vec<MissReason> {
    let mut out = Vec::new();
    for slice in &cur.slices {
        let Some(before) = prev.slices.iter().find(|s| s.platform == slice.platform) else { continue };
        let old: BTreeMap<(&str, u32), &StepRecord> = before.steps.iter().map(|s| ((s.stage.as_str(), s.position), s)).collect();
        let now: BTreeMap<(&str, u32), &StepRecord> = slice.steps.iter().map(|s| ((s.stage.as_str(), s.position), s)).collect();
        for step in slice.steps.iter().filter(|s| s.position > 1 && s.source == StepSource::Executed) {
            let Some(p) = old.get(&(step.stage.as_str(), step.position)) else { continue };
            let reason = if cur.spec.no_cache {
                "--no-cache was given".to_string()
            } else if cur.spec.no_cache_filter.iter().any(|f| f.eq_ignore_ascii_case(&step.stage)) {
                format!("--no-cache-filter names stage {}", step.stage)
            } else {
                why(step, p, &now, &old, cur, prev)
            };
            out.push(MissReason { platform: slice.platform.clone(), step: step.name.clone(), reason });
        }
    }
    out
}

type Steps<'a> = BTreeMap<(&'a str, u32), &'a StepRecord>;

fn why(step: &StepRecord, p: &StepRecord, now: &Steps, old: &Steps, cur: &BuildRecord, prev: &BuildRecord) -> String {
    if step.key == p.key {
        return "the same step was cached before, but its record was gone (pruned, or held by no reachable agent)".into();
    }
    if step.parent != p.parent {
        let key = (step.stage.as_str(), step.position - 1);
        return match (now.get(&key), old.get(&key)) {
            (Some(a), Some(b)) if a.position == 1 => {
                if a.text != b.text {
                    format!("the stage's base changed: `{}` was `{}`", a.text, b.text)
                } else if a.base_digest != b.base_digest && !a.base_digest.is_empty() {
                    format!(
                        "the base image changed: {} is now {} (was {})",
                        a.text.trim_start_matches("FROM "),
                        a.base_digest,
                        b.base_digest
                    )
                } else {
                    "the stage it starts from changed".into()
                }
            }
            (Some(a), _) => format!("the step before it ran: {}", a.name),
            _ => "the step before it changed".into(),
        };
    }
    if step.text != p.text {
        return format!("the instruction changed: `{}` was `{}`", step.text, p.text);
    }
    let args = changed_args(&step.args, &p.args);
    if !args.is_empty() {
        return args;
    }
    if !step.sources.is_empty() {
        let paths = changed_paths(&step.sources, &cur.spec.context, &prev.spec.context);
        if !paths.is_empty() {
            return paths;
        }
    }
    "an input besides its text changed (a stage or image it copies from, a mount, or a file it reads)".into()
}

fn changed_args(now: &[(String, String)], before: &[(String, String)]) -> String {
    let old: BTreeMap<&str, &str> = before.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let new: BTreeMap<&str, &str> = now.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut parts = Vec::new();
    for (k, v) in &new {
        match old.get(k) {
            Some(o) if o == v => {}
            Some(o) => parts.push(format!("build argument {k} changed: {v:?} was {o:?}")),
            None => parts.push(format!("build argument {k} is new: {v:?}")),
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        parts.push(format!("build argument {k} is gone"));
    }
    parts.join("; ")
}

/// The context paths under `sources` that were added, removed, or changed in content or mode.
fn changed_paths(sources: &[String], now: &[ContextEntry], before: &[ContextEntry]) -> String {
    let pick = |entries: &[ContextEntry]| -> BTreeMap<String, (String, u32)> {
        entries
            .iter()
            .map(|e| (String::from_utf8_lossy(&e.path).into_owned(), e))
            .filter(|(path, _)| sources.iter().any(|s| under(path, s)))
            .map(|(path, e)| {
                let content = match &e.kind {
                    EntryKind::File { digest, .. } => digest.clone(),
                    EntryKind::Symlink { target } => format!("-> {}", String::from_utf8_lossy(target)),
                    other => format!("{other:?}"),
                };
                (path, (content, e.mode))
            })
            .collect()
    };
    let (new, old) = (pick(now), pick(before));
    let mut parts = Vec::new();
    for (path, (content, mode)) in &new {
        match old.get(path) {
            None => parts.push(format!("{path} added")),
            Some((c, _)) if c != content => parts.push(format!("{path} changed content")),
            Some((_, m)) if m != mode => parts.push(format!("{path} changed mode ({m:o} to {mode:o})")),
            Some(_) => {}
        }
    }
    parts.extend(old.keys().filter(|p| !new.contains_key(*p)).map(|p| format!("{p} removed")));
    let more = parts.len().saturating_sub(5);
    parts.truncate(5);
    let mut text = if parts.is_empty() { String::new() } else { format!("context: {}", parts.join(", ")) };
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

/// Whether context path `path` is under source pattern `source` (`.`, a directory, a file or
/// a glob with `*` and `?`).
fn under(path: &str, source: &str) -> bool {
    let s = source.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/');
    if s.is_empty() || s == "." {
        return true;
    }
    if s.contains(['*', '?', '[']) {
        let depth = s.matches('/').count() + 1;
        let head: Vec<&str> = path.splitn(depth + 1, '/').collect();
        return head.len() >= depth && glob(s.as_bytes(), head[..depth].join("/").as_bytes());
    }
    path == s || path.strip_prefix(s).is_some_and(|rest| rest.starts_with('/'))
}

fn glob(p: &[u8], t: &[u8]) -> bool {
    match (p.first(), t.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], t) || (!t.is_empty() && t[0] != b'/' && glob(p, &t[1..])),
        (Some(b'?'), Some(c)) if *c != b'/' => glob(&p[1..], &t[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &t[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(position: u32, text: &str, key: &str, parent: &str) -> StepRecord {
        StepRecord {
            name: format!("[stage-0 {position}/3] {text}"),
            stage: "stage-0".into(),
            position,
            text: text.into(),
            source: StepSource::Executed,
            emulated: false,
            start_ms: 0,
            duration_ms: 0,
            key: key.into(),
            parent: parent.into(),
            base_digest: String::new(),
            sources: vec![],
            args: vec![],
        }
    }

    fn file(path: &str, digest: &str, mode: u32) -> ContextEntry {
        ContextEntry { path: path.into(), kind: EntryKind::File { digest: digest.into(), size: 1 }, mode, uid: 0, gid: 0 }
    }

    #[test]
    fn names_the_changed_input() {
        let now = BTreeMap::new();
        let cur = BuildRecord::new("t", Default::default(), vec![], 0);
        let prev = cur.clone();
        let (a, b) = (step(2, "RUN make", "k2", "k1"), step(2, "RUN make all", "k3", "k1"));
        assert_eq!(why(&b, &a, &now, &now, &cur, &prev), "the instruction changed: `RUN make all` was `RUN make`");
        let mut c = step(2, "RUN make", "k4", "k1");
        c.args = vec![("V".into(), "2".into())];
        let mut a2 = a.clone();
        a2.args = vec![("V".into(), "1".into())];
        assert_eq!(why(&c, &a2, &now, &now, &cur, &prev), "build argument V changed: \"2\" was \"1\"");
        let same = step(2, "RUN make", "k2", "k1");
        assert!(why(&same, &a, &now, &now, &cur, &prev).contains("record was gone"));
    }

    #[test]
    fn names_context_paths() {
        let before = [file("src/a.c", "d1", 0o644), file("src/b.c", "d2", 0o644), file("README", "d3", 0o644)];
        let now = [file("src/a.c", "d9", 0o644), file("src/c.c", "d4", 0o644), file("README", "d8", 0o644)];
        let text = changed_paths(&["src/".into()], &now, &before);
        assert_eq!(text, "context: src/a.c changed content, src/c.c added, src/b.c removed");
        let mode = changed_paths(&["*.c".into(), "src/*.c".into()], &[file("src/a.c", "d1", 0o755)], &before[..1]);
        assert_eq!(mode, "context: src/a.c changed mode (644 to 755)");
        assert!(under("src/x/y", "src") && under("a", ".") && !under("srcx", "src") && under("src/a.c", "src/*.c"));
    }
}
