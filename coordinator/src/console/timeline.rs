//! One build's page: what it was (status, tags with links to the image in the registry, the
//! index digest, build arguments), a Gantt chart of its slices and steps (each bar placed by
//! the step's start and length within its slice; its classes say where the result came from:
//! `executed`, `cached local`, `cached peer`, `cached imported`, and `emulated`), why steps
//! missed the cache, and the progress log.

use super::api::Build;
use super::pages::{esc, seconds, time};
use kiln_shared::api::{BuildEvent, Event, StepRecord, StepSource};

/// Log lines shown at most (the newest); `kiln history logs ID` prints them all.
pub const MAX_LOG_LINES: usize = 2000;

/// The classes of a step's bar.
pub fn classes(st: &StepRecord) -> String {
    let source = match st.source {
        StepSource::Executed => "executed",
        StepSource::Local => "cached local",
        StepSource::Peer => "cached peer",
        StepSource::Imported => "cached imported",
    };
    if st.emulated {
        format!("{source} emulated")
    } else {
        source.to_string()
    }
}

fn how(st: &StepRecord) -> String {
    let what = match st.source {
        StepSource::Executed if st.position == 1 => "resolved".to_string(),
        StepSource::Executed => format!("ran {}", seconds(st.duration_ms)),
        StepSource::Local => "cached".into(),
        StepSource::Peer => format!("cached, fetched from a peer in {}", seconds(st.duration_ms)),
        StepSource::Imported => "cached, imported".into(),
    };
    if st.emulated {
        format!("{what}, emulated")
    } else {
        what
    }
}

/// `http://` for a loopback registry (as the registry client speaks to it), else `https://`.
fn registry_url(registry: &str, repository: &str, reference: &str) -> String {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    let scheme = if host == "localhost" || host.starts_with("127.") || host == "[::1]" { "http" } else { "https" };
    let registry = if registry == "docker.io" { "registry-1.docker.io" } else { registry };
    format!("{scheme}://{registry}/v2/{repository}/manifests/{reference}")
}

fn image(b: &Build) -> String {
    let s = &b.detail.summary;
    let digest = &b.detail.view.index_digest;
    let mut out = String::from("<section class=\"image\"><h2>Image</h2><ul>");
    if s.tags.is_empty() {
        out.push_str("<li>No tags: the build was not pushed under a name.</li>");
    }
    for tag in &s.tags {
        match tag.parse::<kiln_shared::registry::Reference>() {
            Ok(r) => {
                let by_tag = registry_url(&r.registry, &r.repository, &r.reference());
                let by_digest = (!digest.is_empty()).then(|| {
                    format!(" · <a class=\"registry\" href=\"{}\">by digest</a>", esc(&registry_url(&r.registry, &r.repository, digest)))
                });
                out.push_str(&format!(
                    "<li class=\"tag\"><code>{}</code> · <a class=\"registry\" href=\"{}\">manifest in the registry</a>{}</li>",
                    esc(tag),
                    esc(&by_tag),
                    by_digest.unwrap_or_default()
                ));
            }
            Err(_) => out.push_str(&format!("<li class=\"tag\"><code>{}</code></li>", esc(tag))),
        }
    }
    out.push_str("</ul>");
    if !digest.is_empty() {
        out.push_str(&format!("<p>Image index <code class=\"digest\">{}</code></p>", esc(digest)));
    }
    if !b.detail.build_args.is_empty() {
        out.push_str("<h3>Build arguments</h3><ul class=\"args\">");
        for (k, v) in &b.detail.build_args {
            out.push_str(&format!("<li><code>{}={}</code></li>", esc(k), esc(v)));
        }
        out.push_str("</ul>");
    }
    out.push_str("</section>");
    out
}

const LEGEND: &str = "<p class=\"legend\"><span class=\"swatch executed\"></span>executed <span class=\"swatch cached local\"></span>cached (this agent) <span class=\"swatch cached peer\"></span>cached, fetched from a peer <span class=\"swatch cached imported\"></span>cached, imported (--cache-from) <span class=\"swatch executed emulated\"></span>emulated (qemu)</p>";

fn gantt(b: &Build) -> String {
    let d = &b.detail;
    let mut out = format!("<section class=\"timeline\"><h2>Timeline</h2>{LEGEND}");
    // One scale for every slice: they ran side by side.
    let span = d.steps.iter().flatten().map(|s| s.start_ms + s.duration_ms).max().unwrap_or(0).max(1);
    for (slice, steps) in d.view.slices.iter().zip(&d.steps) {
        let mode = if slice.emulated { "emulated" } else { "native" };
        let agent = if slice.agent.is_empty() { "-" } else { &slice.agent };
        out.push_str(&format!(
            "<div class=\"slice\" data-platform=\"{p}\"><h3><span class=\"platform\">{p}</span> on <b>{}</b> · {mode} · {} · attempt {} · queued {} · ran {} · {} cache hits ({} from peers), {} misses</h3>",
            esc(agent),
            esc(slice.state.as_str()),
            slice.attempt,
            seconds(slice.queue_ms),
            seconds(slice.duration_ms),
            slice.cache_hits,
            slice.cache_peer_hits,
            slice.cache_misses,
            p = esc(&slice.platform.to_string()),
        ));
        if let Some(w) = slice.waiting.as_deref().filter(|_| slice.agent.is_empty()) {
            out.push_str(&format!("<p class=\"waiting\">waiting: {}</p>", esc(w)));
        }
        if steps.is_empty() {
            out.push_str("<p class=\"empty\">No steps recorded yet (they are recorded when the slice ends).</p></div>");
            continue;
        }
        for st in steps {
            let left = st.start_ms as f64 * 100.0 / span as f64;
            let width = (st.duration_ms as f64 * 100.0 / span as f64).max(0.4).min(100.0 - left.min(99.6));
            out.push_str(&format!(
                "<div class=\"row\"><span class=\"label\" title=\"{t}\">{n}</span><span class=\"track\"><span class=\"bar {c}\" data-source=\"{s}\" style=\"left:{left:.2}%;width:{width:.2}%\" title=\"{n}: {h}\"></span></span><span class=\"how\">{h}</span></div>",
                t = esc(&st.text),
                n = esc(&st.name),
                c = classes(st),
                s = st.source.as_str(),
                h = esc(&how(st)),
            ));
        }
        out.push_str("</div>");
    }
    out.push_str(&format!("<p class=\"axis\">0 s — {}</p></section>", seconds(span)));
    out
}

fn misses(b: &Build) -> String {
    let d = &b.detail;
    let mut out = String::from("<section class=\"misses\"><h2>Why steps missed the cache</h2>");
    match d.previous {
        None => out.push_str("<p>No earlier build of this target to compare with.</p>"),
        Some(p) if d.misses.is_empty() => {
            out.push_str(&format!("<p>Compared with <a href=\"/builds/{p}\">build {p}</a>: every step that build had was cached.</p>"))
        }
        Some(p) => {
            out.push_str(&format!("<p>Compared with <a href=\"/builds/{p}\">build {p}</a>, these steps ran:</p><ul>"));
            for m in &d.misses {
                out.push_str(&format!(
                    "<li class=\"miss\"><span class=\"platform\">{}</span> <code>{}</code>: {}</li>",
                    esc(&m.platform.to_string()),
                    esc(m.step.trim_start_matches('[')),
                    esc(&m.reason)
                ));
            }
            out.push_str("</ul>");
        }
    }
    out.push_str("</section>");
    out
}

/// The progress log, a line per event, as `kiln history logs` prints it in plain mode.
fn log_lines(events: &[BuildEvent]) -> Vec<String> {
    let mut names = std::collections::HashMap::new();
    let mut out = Vec::new();
    for e in events {
        let name = |id: &u64, names: &std::collections::HashMap<(String, u64), String>| {
            names.get(&(e.platform.to_string(), *id)).cloned().unwrap_or_else(|| format!("[{}] #{id}", e.platform))
        };
        match &e.event {
            Event::Start { id, name: n } => {
                names.insert((e.platform.to_string(), *id), n.clone());
                out.push(n.clone());
            }
            Event::Cached { id } => out.push(format!("{} CACHED", name(id, &names))),
            Event::Log { id, line } => out.push(format!("{} {line}", name(id, &names))),
            Event::Done { id, secs } => out.push(format!("{} DONE {secs:.1}s", name(id, &names))),
            Event::Failed { id, message } => out.push(format!("{} ERROR: {message}", name(id, &names))),
        }
    }
    out
}

fn logs(b: &Build) -> String {
    let lines = log_lines(&b.events);
    let skipped = lines.len().saturating_sub(MAX_LOG_LINES);
    let mut out = String::from("<section class=\"logs\"><h2>Log</h2>");
    if skipped > 0 {
        out.push_str(&format!(
            "<p class=\"meta\">{skipped} earlier lines are not shown: <code>kiln history logs {}</code> prints them all.</p>",
            b.detail.summary.id
        ));
    }
    if lines.is_empty() {
        out.push_str("<p class=\"empty\">No log yet.</p>");
    } else {
        out.push_str("<pre class=\"log\">");
        for l in &lines[skipped..] {
            out.push_str(&format!("<span class=\"line\">{}</span>\n", esc(l)));
        }
        out.push_str("</pre>");
    }
    out.push_str("</section>");
    out
}

pub fn build(b: &Build) -> String {
    let s = &b.detail.summary;
    let took = if s.finished_at_ms == 0 { "running".into() } else { seconds(s.finished_at_ms.saturating_sub(s.submitted_at_ms)) };
    let target = s.target.as_deref().map(|t| format!(" · target <code>{}</code>", esc(t))).unwrap_or_default();
    let error = if s.error.is_empty() { String::new() } else { format!("<p class=\"error\">{}</p>", esc(&s.error)) };
    format!(
        "<h1>Build #{} <span class=\"status {st}\">{st}</span></h1><p class=\"meta\">tenant <b>{}</b> · builder {} · <code>{}</code>{target} · submitted {} · {took} · {} steps ({} cached)</p>{error}{}{}{}{}",
        s.id,
        esc(&s.tenant),
        esc(&s.builder),
        esc(&s.dockerfile),
        time(s.submitted_at_ms),
        s.steps,
        s.cached_steps,
        image(b),
        gantt(b),
        misses(b),
        logs(b),
        st = esc(&s.status),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(source: StepSource, emulated: bool) -> StepRecord {
        StepRecord {
            name: "[stage-0 2/3] RUN <b>".into(),
            stage: "stage-0".into(),
            position: 2,
            text: "RUN <b>".into(),
            source,
            emulated,
            start_ms: 10,
            duration_ms: 20,
            key: String::new(),
            parent: String::new(),
            base_digest: String::new(),
            sources: vec![],
            args: vec![],
        }
    }

    #[test]
    fn every_source_has_its_classes() {
        assert_eq!(classes(&step(StepSource::Executed, false)), "executed");
        assert_eq!(classes(&step(StepSource::Local, false)), "cached local");
        assert_eq!(classes(&step(StepSource::Peer, false)), "cached peer");
        assert_eq!(classes(&step(StepSource::Imported, false)), "cached imported");
        assert_eq!(classes(&step(StepSource::Executed, true)), "executed emulated");
    }

    #[test]
    fn registry_links_speak_http_to_loopback_only() {
        assert_eq!(registry_url("127.0.0.1:5000", "app", "1"), "http://127.0.0.1:5000/v2/app/manifests/1");
        assert_eq!(registry_url("ghcr.io", "org/app", "sha256:ab"), "https://ghcr.io/v2/org/app/manifests/sha256:ab");
        assert_eq!(registry_url("docker.io", "library/x", "latest"), "https://registry-1.docker.io/v2/library/x/manifests/latest");
    }

    #[test]
    fn log_lines_name_their_step_and_keep_markup_as_text() {
        let p: kiln_shared::Platform = "linux/amd64".parse().unwrap();
        let ev = |event| BuildEvent { platform: p.clone(), agent: "a1".into(), event };
        let lines = log_lines(&[
            ev(Event::Start { id: 1, name: "[linux/amd64 stage-0 2/2] RUN echo".into() }),
            ev(Event::Log { id: 1, line: "<script>x</script>".into() }),
            ev(Event::Done { id: 1, secs: 0.3 }),
        ]);
        assert_eq!(lines[1], "[linux/amd64 stage-0 2/2] RUN echo <script>x</script>");
        assert_eq!(lines[2], "[linux/amd64 stage-0 2/2] RUN echo DONE 0.3s");
    }
}
