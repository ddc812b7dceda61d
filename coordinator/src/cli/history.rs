//! `kiln history`, buildx's verbs over the farm's build history: `ls`, `inspect` (with the
//! cache-miss explanation), `logs` (`-f` re-attaches to a running build and renders the same
//! progress), `rm`, `export` and `open` (the build's page in the web console). Users see their
//! own tenant's builds; admins see all.

use super::builder::ListFormat;
use super::farm_build::{show, StepIds};
use super::progress::{Mode, Progress};
use super::remote::{self, unexpected, FarmArgs};
use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand};
use kiln_shared::api::{BuildDetail, BuildState, BuildSummary, ClientRequest, ClientResponse, HistoryFilter, StepSource};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum HistoryCommand {
    /// List builds, newest first.
    Ls {
        /// buildx's filters: status=running|completed|failed|cancelled, ref=TAG, platform=P,
        /// tenant=NAME (admins), since=DURATION (e.g. 2h, 7d) or since=UNIX_SECONDS.
        #[arg(long)]
        filter: Vec<String>,
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// At most this many builds.
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Show one build (the newest of your tenant's by default): slices, steps, cache.
    Inspect {
        id: Option<String>,
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// Only why steps missed the cache, compared with the previous build of the target.
        #[arg(long)]
        cache: bool,
    },
    /// Print a build's progress log; with -f, follow a running build to its end.
    Logs {
        id: Option<String>,
        #[arg(short = 'f', long)]
        follow: bool,
        /// plain, tty, rawjson (as `kiln build`).
        #[arg(long, default_value = "plain")]
        progress: String,
    },
    /// Remove finished builds from the history.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Print the URL of a build's page in the web console (the newest of your tenant's by
    /// default), and open it with xdg-open when there is a display.
    Open { id: Option<String> },
    /// Write a build's record and log as JSON (to a file, or standard output).
    Export {
        id: Option<String>,
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(subcommand)]
    pub command: HistoryCommand,
    #[command(flatten)]
    pub farm: FarmArgs,
}

fn id(s: &str) -> anyhow::Result<u64> {
    s.trim_start_matches('#').parse().map_err(|_| anyhow!("{s:?} is not a build id (kiln history ls lists them)"))
}

fn filter(specs: &[String], limit: u32) -> anyhow::Result<HistoryFilter> {
    let mut f = HistoryFilter { limit, ..Default::default() };
    for spec in specs {
        let (k, v) = spec.split_once('=').ok_or_else(|| anyhow!("--filter {spec:?}: expected KEY=VALUE"))?;
        match k {
            "status" => {
                if !["running", "completed", "failed", "error", "cancelled"].contains(&v) {
                    bail!("--filter status={v}: expected running, completed, failed or cancelled");
                }
                f.status = Some(v.to_string());
            }
            "ref" | "name" => f.reference = Some(v.to_string()),
            "platform" => f.platform = Some(v.parse().map_err(|e| anyhow!("--filter platform={v}: {e}"))?),
            "tenant" => f.tenant = Some(v.to_string()),
            "since" => f.since_ms = Some(since(v)?),
            other => bail!("--filter {other}: expected status, ref, platform, tenant or since"),
        }
    }
    Ok(f)
}

/// `2h`, `30m`, `7d`, `45s`: that long ago; a plain number: Unix seconds.
fn since(v: &str) -> anyhow::Result<u64> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default();
    let bad = || anyhow!("--filter since={v}: expected a duration (45s, 30m, 2h, 7d) or Unix seconds");
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(secs * 1000);
    }
    let (n, unit) = v.split_at(v.len().saturating_sub(1));
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(bad()),
    };
    Ok(now.saturating_sub(secs * 1000))
}

pub fn run(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let session = args.farm.open()?;
    session.block_on(async {
        let farm = session.connect().await?;
        match args.command {
            HistoryCommand::Ls { filter: specs, format, limit } => {
                let f = filter(&specs, limit)?;
                let ClientResponse::History(builds) = remote::call(&farm, &ClientRequest::History(f)).await? else {
                    bail!("unexpected answer to history ls")
                };
                print_list(&builds, format)?;
            }
            HistoryCommand::Inspect { id: which, format, cache } => {
                let d = detail(&farm, which.as_deref()).await?;
                match format {
                    ListFormat::Json => println!("{}", serde_json::to_string_pretty(&*d)?),
                    ListFormat::Table if cache => print_misses(&d),
                    ListFormat::Table => print_detail(&d),
                }
            }
            HistoryCommand::Logs { id: which, follow, progress } => {
                let build = match which.as_deref() {
                    Some(s) => id(s)?,
                    None => detail(&farm, None).await?.summary.id,
                };
                let mode = Mode::parse(&progress)?;
                return logs(&farm, build, follow, mode).await;
            }
            HistoryCommand::Rm { ids } => {
                let builds = ids.iter().map(|s| id(s)).collect::<anyhow::Result<Vec<_>>>()?;
                match remote::call(&farm, &ClientRequest::ForgetBuilds { builds: builds.clone() }).await? {
                    ClientResponse::Count(_) => {
                        for b in builds {
                            println!("{b}");
                        }
                    }
                    other => bail!(unexpected(other)),
                }
            }
            HistoryCommand::Open { id: which } => {
                // Through inspect: an unknown or another tenant's build is one clear line here.
                let build = detail(&farm, which.as_deref()).await?.summary.id;
                let ClientResponse::Status(status) = remote::call(&farm, &ClientRequest::Status).await? else {
                    bail!("unexpected answer to status")
                };
                let console = status.console.ok_or_else(|| {
                    anyhow!(
                        "coordinator {} serves no web console: start it with --console-listen 127.0.0.1:PORT (or console_listen in its config)",
                        status.id
                    )
                })?;
                let url = format!("{console}/builds/{build}");
                println!("{url}");
                open_in_browser(&url);
            }
            HistoryCommand::Export { id: which, output } => {
                let d = detail(&farm, which.as_deref()).await?;
                let events = all_events(&farm, d.summary.id).await?;
                let doc = serde_json::json!({ "build": &*d, "events": events });
                let bytes = serde_json::to_vec_pretty(&doc)?;
                match output {
                    Some(path) => std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?,
                    None => println!("{}", String::from_utf8_lossy(&bytes)),
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `xdg-open URL` when a display is there and xdg-open is installed; otherwise the printed
/// URL is all (a headless host, an SSH session).
fn open_in_browser(url: &str) {
    let display = ["DISPLAY", "WAYLAND_DISPLAY"].iter().any(|v| std::env::var_os(v).is_some_and(|d| !d.is_empty()));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| dir.join("xdg-open").is_file());
    if !display || !found {
        return;
    }
    let status = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("xdg-open could not open {url}: open it in a browser");
    }
}

async fn detail(farm: &kiln_shared::client::ClientFarm, which: Option<&str>) -> anyhow::Result<Box<BuildDetail>> {
    let build = which.map(id).transpose()?;
    match remote::call(farm, &ClientRequest::HistoryInspect { build }).await? {
        ClientResponse::BuildDetail(d) => Ok(d),
        other => bail!(unexpected(other)),
    }
}

/// Every event of a build so far.
async fn all_events(farm: &kiln_shared::client::ClientFarm, build: u64) -> anyhow::Result<Vec<kiln_shared::api::BuildEvent>> {
    let mut out = Vec::new();
    let mut cursor = 0;
    loop {
        let req = ClientRequest::Watch { build, cursor, wait_ms: 0 };
        let ClientResponse::Build { events, cursor: next, .. } = remote::call(farm, &req).await? else { bail!("unexpected answer") };
        let empty = events.is_empty();
        out.extend(events);
        if empty || next <= cursor {
            return Ok(out);
        }
        cursor = next;
    }
}

/// The build's log as `kiln build` shows it; with `follow`, until the build ends (the exit
/// status is the build's). Ctrl-C stops following; the build goes on.
async fn logs(farm: &kiln_shared::client::ClientFarm, build: u64, follow: bool, mode: Mode) -> anyhow::Result<ExitCode> {
    let progress = Progress::new(mode).on_stdout();
    let mut ids = StepIds::new();
    let mut cursor = 0;
    loop {
        let req = ClientRequest::Watch { build, cursor, wait_ms: if follow { 5_000 } else { 0 } };
        let answer = farm.call(&req, Duration::from_secs(15), Duration::from_secs(60)).await.map_err(|e| anyhow!("build {build}: {e}"))?;
        let ClientResponse::Build { view, events, cursor: next, .. } = answer else { bail!("unexpected answer for build {build}") };
        let more = !events.is_empty();
        cursor = if next < cursor { 0 } else { next };
        show(&progress, &mut ids, events, "");
        match view.state {
            BuildState::Done => {
                progress.note(&format!("=> build {build} done: image index {}", view.index_digest));
                return Ok(ExitCode::SUCCESS);
            }
            BuildState::Failed => {
                progress.note(&format!("=> build {build} failed: {}", view.error));
                return Ok(ExitCode::FAILURE);
            }
            BuildState::Running if !follow && !more => {
                progress.note(&format!("=> build {build} is still running (kiln history logs -f {build} follows it)"));
                return Ok(ExitCode::SUCCESS);
            }
            BuildState::Running => {}
        }
    }
}

fn ago(ms: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default();
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s} seconds ago"),
        60..=3599 => format!("{} minutes ago", s / 60),
        3600..=86_399 => format!("{} hours ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

fn took(b: &BuildSummary) -> String {
    if b.finished_at_ms == 0 {
        return "-".into();
    }
    format!("{:.1}s", b.finished_at_ms.saturating_sub(b.submitted_at_ms) as f64 / 1000.0)
}

fn print_list(builds: &[BuildSummary], format: ListFormat) -> anyhow::Result<()> {
    if format == ListFormat::Json {
        println!("{}", serde_json::to_string_pretty(builds)?);
        return Ok(());
    }
    let mut rows = vec![["BUILD ID", "NAME", "STATUS", "CREATED AT", "DURATION", "STEPS"].map(String::from).to_vec()];
    for b in builds {
        let name = b.tags.first().cloned().unwrap_or_else(|| b.target.clone().unwrap_or_else(|| b.dockerfile.clone()));
        rows.push(vec![
            b.id.to_string(),
            name,
            b.status.clone(),
            ago(b.submitted_at_ms),
            took(b),
            format!("{} ({} cached)", b.steps, b.cached_steps),
        ]);
    }
    print_table(&rows);
    Ok(())
}

fn print_table(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:w$}")).collect();
        println!("{}", line.join("   ").trim_end());
    }
}

fn print_detail(d: &BuildDetail) {
    let s = &d.summary;
    println!("Build:        {}", s.id);
    println!("Tenant:       {}", s.tenant);
    println!("Status:       {}", s.status);
    println!("Builder:      {}", s.builder);
    println!("Dockerfile:   {}", s.dockerfile);
    if let Some(t) = &s.target {
        println!("Target:       {t}");
    }
    println!("Tags:         {}", if s.tags.is_empty() { "-".to_string() } else { s.tags.join(", ") });
    println!("Created:      {}", ago(s.submitted_at_ms));
    println!("Duration:     {}", took(s));
    for (k, v) in &d.build_args {
        println!("Build arg:    {k}={v}");
    }
    if !d.view.index_digest.is_empty() {
        println!("Image index:  {}", d.view.index_digest);
    }
    if !s.error.is_empty() {
        println!("Error:        {}", s.error);
    }
    for (slice, steps) in d.view.slices.iter().zip(&d.steps) {
        println!();
        let mode = if slice.emulated { "emulated" } else { "native" };
        println!(
            "{}  agent {}  {mode}  attempt {}  queued {} ms  ran {} ms  cache: {} hits ({} from peers), {} misses  {}",
            slice.platform,
            if slice.agent.is_empty() { "-" } else { &slice.agent },
            slice.attempt,
            slice.queue_ms,
            slice.duration_ms,
            slice.cache_hits,
            slice.cache_peer_hits,
            slice.cache_misses,
            slice.state
        );
        for st in steps {
            let how = match st.source {
                StepSource::Executed => format!("{:.1}s", st.duration_ms as f64 / 1000.0),
                StepSource::Local => "CACHED".into(),
                other => format!("CACHED ({})", other.as_str()),
            };
            let emulated = if st.emulated { " (emulated)" } else { "" };
            println!("  {}{emulated}  {how}", st.name);
        }
    }
    if !d.misses.is_empty() {
        println!();
        print_misses(d);
    }
}

fn print_misses(d: &BuildDetail) {
    match d.previous {
        None => println!("No earlier build of this target to compare with."),
        Some(p) if d.misses.is_empty() => println!("Compared with build {p}: every step that build had was cached."),
        Some(p) => {
            println!("Compared with build {p}, these steps ran:");
            for m in &d.misses {
                println!("  [{} {}: {}", m.platform, m.step.trim_start_matches('['), m.reason);
            }
        }
    }
}
