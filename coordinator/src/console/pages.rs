//! The console's pages as HTML: the frame every page shares, the sign-in form, the farm and the
//! build list (one build is in [`super::timeline`]). Each page's live part is its `<main>`:
//! rendered here in full, and again as a fragment (`?partial=1`) that the page's script fetches
//! every [`POLL_MS`] to replace it, so that there is one renderer and every value that reaches
//! the browser has gone through [`esc`].

use super::api::Farm;
use kiln_shared::api::{BuildSummary, HistoryFilter, Principal, Role};

/// How often a page refreshes its live part.
pub const POLL_MS: u32 = 1500;

/// Escapes text for HTML content and (double-quoted) attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: the frame, `above` (what the refresh leaves alone, e.g. the filter form), and
/// a live `<main>` (with `poll`: the fragment to refresh it from; `None`: nothing changes, e.g.
/// a finished build).
pub fn page(title: &str, who: Option<&Principal>, above: &str, poll: Option<&str>, main: &str) -> String {
    let nav = match who {
        Some(p) => format!(
            "<nav><a href=\"/farm\">Farm</a><a href=\"/builds\">Builds</a><span class=\"who\">{} <b>{}</b></span><span id=\"updated\" class=\"updated\"></span><form method=\"post\" action=\"/logout\"><button type=\"submit\">Sign out</button></form></nav>",
            esc(p.role.as_str()),
            esc(&p.name)
        ),
        None => String::new(),
    };
    let poll = poll.map(|p| format!(" data-poll=\"{}\" data-interval=\"{POLL_MS}\"", esc(p))).unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{} · kiln</title><link rel=\"stylesheet\" href=\"/static/console.css\"><script src=\"/static/console.js\" defer></script></head>\n<body><header><a class=\"brand\" href=\"/\">kiln</a>{nav}</header>\n{above}<main id=\"live\"{poll}>{main}</main>\n</body></html>\n",
        esc(title)
    )
}

pub fn login(next: &str, error: Option<&str>) -> String {
    let error = error.map(|e| format!("<p class=\"error\">{}</p>", esc(e))).unwrap_or_default();
    let main = format!(
        "<section class=\"login\"><h1>Sign in</h1>{error}<form method=\"post\" action=\"/login\"><label for=\"token\">User or admin token</label><input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required><input type=\"hidden\" name=\"next\" value=\"{}\"><button type=\"submit\">Sign in</button></form><p class=\"hint\">Make one with <code>kiln coordinator token --role user --tenant NAME</code>. Scripts send it as <code>Authorization: Bearer TOKEN</code>.</p></section>",
        esc(next)
    );
    page("Sign in", None, "", None, &main)
}

/// An error in the frame (a missing build, a leader that cannot be reached).
pub fn error(who: Option<&Principal>, status: u16, message: &str) -> String {
    page("Error", who, "", None, &format!("<section><h1>{status}</h1><p class=\"error\">{}</p></section>", esc(message)))
}

pub fn bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Milliseconds since the epoch as `2026-05-01 12:00:00 UTC`.
pub fn time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (H. Hinnant's algorithm), for dates after 1970.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rest / 3600, rest % 3600 / 60, rest % 60)
}

pub fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

pub fn farm(f: &Farm) -> String {
    let mut out = String::from("<h1>Farm</h1><h2>Coordinators</h2><table class=\"coordinators\"><thead><tr><th>id</th><th>address</th><th>role</th><th></th></tr></thead><tbody>");
    for m in &f.status.members {
        let role = if f.status.leader == Some(m.id) {
            "leader"
        } else if m.voter {
            "follower"
        } else {
            "learner"
        };
        let here = if m.id == f.status.id { "this console" } else { "" };
        out.push_str(&format!(
            "<tr class=\"coordinator\" data-id=\"{}\"><td>{}</td><td>{}</td><td><span class=\"role {role}\">{role}</span></td><td>{here}</td></tr>",
            m.id,
            m.id,
            esc(&m.addr)
        ));
    }
    out.push_str(&format!(
        "</tbody></table><p class=\"meta\">Raft term {} · applied index {} on coordinator {}{}</p>",
        f.status.term,
        f.status.last_applied,
        f.status.id,
        if f.status.leader.is_none() { " · no leader elected: an election is under way" } else { "" }
    ));
    out.push_str("<h2>Agents</h2>");
    if f.agents.is_empty() {
        out.push_str("<p class=\"empty\">No agent has joined yet: start one with <code>kiln agent --token AGENT_TOKEN</code>.</p>");
        return out;
    }
    out.push_str("<table class=\"agents\"><thead><tr><th>agent</th><th>state</th><th>native</th><th>emulated</th><th>load</th><th>cache</th><th>last seen</th><th>version</th></tr></thead><tbody>");
    for a in &f.agents {
        let list = |ps: &[kiln_shared::Platform]| {
            if ps.is_empty() {
                "-".to_string()
            } else {
                ps.iter().map(|p| format!("<span class=\"platform\">{}</span>", esc(&p.to_string()))).collect::<Vec<_>>().join(" ")
            }
        };
        let load = if a.info.slots == 0 { 0 } else { (u64::from(a.running) * 100 / u64::from(a.info.slots)).min(100) };
        let seen = if a.last_seen_ms_ago == u64::MAX { "never".to_string() } else { format!("{} ago", seconds(a.last_seen_ms_ago)) };
        let records = a.cache_records.map(|r| format!(" · {r} records")).unwrap_or_default();
        out.push_str(&format!(
            "<tr class=\"agent\" data-name=\"{n}\"><td>{n}</td><td><span class=\"state {s}\">{s}</span></td><td>{}</td><td>{}</td><td><span class=\"load\"><span class=\"fill\" style=\"width:{load}%\"></span></span> {} / {} slots</td><td>{}{records}</td><td>{seen}</td><td>{}</td></tr>",
            list(&a.info.native),
            list(&a.info.emulated),
            a.running,
            a.info.slots,
            bytes(a.cache_bytes),
            esc(&a.info.version),
            n = esc(&a.info.name),
            s = esc(&a.status),
        ));
    }
    out.push_str("</tbody></table>");
    out
}

/// The filter form; outside the live part, so that typing is not undone by a refresh.
pub fn filters(f: &HistoryFilter, who: &Principal) -> String {
    let state = f.status.as_deref().unwrap_or("");
    let options: String = ["", "running", "completed", "failed", "cancelled"]
        .iter()
        .map(|s| {
            format!(
                "<option value=\"{s}\"{}>{}</option>",
                if *s == state { " selected" } else { "" },
                if s.is_empty() { "any state" } else { s }
            )
        })
        .collect();
    let tenant = if who.role == Role::Admin {
        format!("<input name=\"tenant\" placeholder=\"tenant\" value=\"{}\">", esc(f.tenant.as_deref().unwrap_or("")))
    } else {
        String::new()
    };
    format!(
        "<form class=\"filters\" method=\"get\" action=\"/builds\">{tenant}<select name=\"state\">{options}</select><input name=\"platform\" placeholder=\"platform, e.g. linux/arm64\" value=\"{}\"><input name=\"ref\" placeholder=\"tag\" value=\"{}\"><button type=\"submit\">Filter</button></form>",
        esc(&f.platform.as_ref().map(|p| p.to_string()).unwrap_or_default()),
        esc(f.reference.as_deref().unwrap_or(""))
    )
}

pub fn builds(list: &[BuildSummary]) -> String {
    if list.is_empty() {
        return "<p class=\"empty\">No builds match.</p>".into();
    }
    let mut out = String::from("<table class=\"builds\"><thead><tr><th>build</th><th>status</th><th>tenant</th><th>tags</th><th>platforms</th><th>submitted</th><th>duration</th><th>steps</th></tr></thead><tbody>");
    for b in list {
        let tags = if b.tags.is_empty() {
            esc(b.target.as_deref().unwrap_or(&b.dockerfile))
        } else {
            b.tags.iter().map(|t| esc(t)).collect::<Vec<_>>().join("<br>")
        };
        let platforms =
            b.platforms.iter().map(|p| format!("<span class=\"platform\">{}</span>", esc(&p.to_string()))).collect::<Vec<_>>().join(" ");
        let took = if b.finished_at_ms == 0 { "-".into() } else { seconds(b.finished_at_ms.saturating_sub(b.submitted_at_ms)) };
        out.push_str(&format!(
            "<tr class=\"build\" data-id=\"{id}\"><td><a href=\"/builds/{id}\">#{id}</a></td><td><span class=\"status {s}\">{s}</span></td><td>{}</td><td>{tags}</td><td>{platforms}</td><td>{}</td><td>{took}</td><td>{} ({} cached)</td></tr>",
            esc(&b.tenant),
            time(b.submitted_at_ms),
            b.steps,
            b.cached_steps,
            id = b.id,
            s = esc(&b.status),
        ));
    }
    out.push_str("</tbody></table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(esc("<script>alert('x')</script> & \"y\""), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;");
    }

    #[test]
    fn formats_times_and_sizes() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(time(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn the_sign_in_page_keeps_next_escaped() {
        let html = login("/builds\"><script>x</script>", Some("bad <token>"));
        assert!(html.contains("value=\"/builds&quot;&gt;&lt;script&gt;x&lt;/script&gt;\""), "{html}");
        assert!(html.contains("bad &lt;token&gt;") && !html.contains("<script>x"));
    }
}
