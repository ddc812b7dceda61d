//! Builders and contexts, as `docker buildx` has them: `create`, `use`, `ls`, `inspect`, `rm`
//! and `context ls|inspect|rm`. They live in the farm (in Raft), so a whole organisation
//! shares them; the builder in use is a client choice (`kiln use`).

use super::remote::{self, expect_ok, unexpected, FarmArgs};
use crate::builders::{DEFAULT_BUILDER, DRIVERS};
use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use kiln_shared::api::{BuilderView, ClientRequest, ClientResponse, ContextView, CreateSpec, NodeView};
use kiln_shared::Platform;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The context (agent) to make the first node of.
    pub context: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    /// runc (default); docker-container is accepted as its alias.
    #[arg(long)]
    pub driver: Option<String>,
    /// Platforms pinned on the node: only these are scheduled on it.
    #[arg(long, value_delimiter = ',')]
    pub platform: Vec<String>,
    #[arg(long)]
    pub node: Option<String>,
    #[arg(long)]
    pub append: bool,
    #[arg(long)]
    pub leave: bool,
    /// Switch to the new builder.
    #[arg(long = "use")]
    pub use_it: bool,
    /// Wait until every node is reachable.
    #[arg(long)]
    pub bootstrap: bool,
    /// Driver options: `share-cache=true` lets every tenant use this builder's step cache
    /// records (by default each tenant sees only its own).
    #[arg(long = "driver-opt")]
    pub driver_opt: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    pub names: Vec<String>,
    /// Do not prompt (kiln never prompts; accepted for buildx habits).
    #[arg(short, long)]
    pub force: bool,
    /// Remove every builder whose nodes are all unreachable.
    #[arg(long)]
    pub all_inactive: bool,
}

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// List contexts (agents).
    Ls {
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Show a context.
    Inspect { name: String },
    /// Drain a context (its running slices finish or move) and deregister it.
    Rm {
        names: Vec<String>,
        /// Remove the agent at once and refuse its key from now on, on every coordinator and
        /// agent (its running slices are retried elsewhere). A stolen or retired machine.
        #[arg(long)]
        revoke: bool,
    },
}

fn platforms(list: &[String]) -> anyhow::Result<Vec<Platform>> {
    if list.is_empty() {
        return Ok(vec![]);
    }
    Ok(Platform::parse_list(&list.join(","))?)
}

pub fn create(args: CreateArgs, farm: FarmArgs) -> anyhow::Result<ExitCode> {
    if let Some(d) = &args.driver {
        if !DRIVERS.contains(&d.as_str()) {
            bail!("driver {d:?} is not supported (kiln has: runc, docker-container as its alias)");
        }
    }
    let mut share_cache = false;
    for o in &args.driver_opt {
        match o.split_once('=') {
            Some(("share-cache", v)) => {
                share_cache = v.parse::<bool>().map_err(|_| anyhow::anyhow!("--driver-opt {o:?}: expected share-cache=true|false"))?
            }
            _ => bail!("--driver-opt {o:?}: kiln's runc driver takes share-cache=true|false"),
        }
    }
    let session = farm.open()?;
    let spec = CreateSpec {
        context: args.context.clone(),
        name: args.name.clone(),
        driver: args.driver.clone(),
        platforms: platforms(&args.platform)?,
        node: args.node.clone(),
        append: args.append,
        leave: args.leave,
        share_cache,
    };
    let name = session.block_on(async {
        let f = session.connect().await?;
        let name = match remote::call(&f, &ClientRequest::CreateBuilder(spec)).await? {
            ClientResponse::Name(n) => n,
            other => bail!(unexpected(other)),
        };
        if args.bootstrap && !args.leave {
            bootstrap(&f, &name).await?;
        }
        Ok(name)
    })?;
    if args.use_it {
        session.set_current_builder(Some(&name))?;
    }
    println!("{name}");
    Ok(ExitCode::SUCCESS)
}

/// Waits until every node of the builder is running (reachable), up to a minute.
async fn bootstrap(f: &kiln_shared::client::ClientFarm, name: &str) -> anyhow::Result<BuilderView> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let b = match remote::call(f, &ClientRequest::Inspect { name: name.to_string() }).await? {
            ClientResponse::Builder(b) => b,
            other => bail!(unexpected(other)),
        };
        if !b.nodes.is_empty() && b.nodes.iter().all(|n| n.status == "running") {
            return Ok(b);
        }
        if Instant::now() > deadline {
            let down: Vec<String> =
                b.nodes.iter().filter(|n| n.status != "running").map(|n| format!("{} ({})", n.name, n.status)).collect();
            bail!(
                "builder {name}: nodes not reachable after 60 s: {}",
                if down.is_empty() { "the builder has no nodes".into() } else { down.join(", ") }
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn use_builder(name: String, farm: FarmArgs) -> anyhow::Result<ExitCode> {
    let session = farm.open()?;
    session.block_on(async {
        let f = session.connect().await?;
        match remote::call(&f, &ClientRequest::Inspect { name: name.clone() }).await? {
            ClientResponse::Builder(_) => Ok(()),
            other => bail!(unexpected(other)),
        }
    })?;
    session.set_current_builder(if name == DEFAULT_BUILDER { None } else { Some(&name) })?;
    Ok(ExitCode::SUCCESS)
}

fn platform_list(n: &NodeView) -> String {
    n.platforms
        .iter()
        .map(|p| {
            let emu = if n.native.contains(p) { "" } else { " (emulated)" };
            format!("{p}{emu}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn ls(format: ListFormat, farm: FarmArgs) -> anyhow::Result<ExitCode> {
    let session = farm.open()?;
    let builders = session.block_on(async {
        let f = session.connect().await?;
        match remote::call(&f, &ClientRequest::Builders).await? {
            ClientResponse::Builders(b) => Ok(b),
            other => bail!(unexpected(other)),
        }
    })?;
    let current = session.current_builder().unwrap_or_else(|| DEFAULT_BUILDER.to_string());
    if format == ListFormat::Json {
        let v: Vec<serde_json::Value> = builders
            .iter()
            .map(|b| {
                serde_json::json!({
                    "name": b.name,
                    "driver": b.driver,
                    "current": b.name == current,
                    "nodes": b.nodes.iter().map(|n| serde_json::json!({
                        "name": n.name, "context": n.context, "endpoint": n.endpoint, "status": n.status,
                        "platforms": n.platforms, "native": n.native, "slots": n.slots, "running": n.running,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![["NAME/NODE".to_string(), "DRIVER/ENDPOINT".into(), "STATUS".into(), "PLATFORMS".into()]];
    for b in &builders {
        let star = if b.name == current { " *" } else { "" };
        rows.push([format!("{}{star}", b.name), b.driver.clone(), String::new(), String::new()]);
        for n in &b.nodes {
            rows.push([format!(" \\_ {}", n.name), format!(" \\_ {}", n.endpoint), n.status.clone(), platform_list(n)]);
        }
    }
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

fn print_table(rows: &[[String; 4]]) {
    let widths: Vec<usize> = (0..4).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let line = format!("{:w0$}   {:w1$}   {:w2$}   {}", r[0], r[1], r[2], r[3], w0 = widths[0], w1 = widths[1], w2 = widths[2]);
        println!("{}", line.trim_end());
    }
}

fn size(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn print_builder(b: &BuilderView) {
    println!("Name:          {}", b.name);
    println!("Driver:        {}", b.driver);
    for n in &b.nodes {
        println!();
        println!("Name:          {}", n.name);
        println!("Context:       {}", n.context);
        println!("Endpoint:      {}", n.endpoint);
        println!("Status:        {}", n.status);
        println!("Platforms:     {}", platform_list(n));
        println!("Slots:         {} ({} running)", n.slots, n.running);
        println!("Cache:         {}", size(n.cache_bytes));
    }
    if !b.recent.is_empty() {
        println!();
        println!("Recent slices:");
        for (build, s) in &b.recent {
            println!(
                "  build {build} {:<14} {:<8} on {:<10} {:<8} queued {} ms, ran {} ms, {} cached / {} run{}{}",
                s.platform.to_string(),
                s.state,
                s.agent,
                if s.emulated { "emulated" } else { "native" },
                s.queue_ms,
                s.duration_ms,
                s.cache_hits,
                s.cache_misses,
                if s.reason.is_empty() { String::new() } else { format!(" ({})", s.reason) },
                s.waiting.as_ref().map(|w| format!("\n      waited: {w}")).unwrap_or_default()
            );
        }
    }
}

pub fn inspect(name: Option<String>, bootstrap_it: bool, farm: FarmArgs) -> anyhow::Result<ExitCode> {
    // The embedded farm's agent is this host: qemu is set up before it starts (and probes).
    // What cannot be set up is said, and the builder is shown as it is.
    if bootstrap_it && farm.hosts()?.is_none() {
        match super::serve::install_binfmt() {
            Ok(report) => println!("{report}"),
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    let session = farm.open()?;
    let name = name.or_else(|| session.current_builder()).unwrap_or_else(|| DEFAULT_BUILDER.to_string());
    let b = session.block_on(async {
        let f = session.connect().await?;
        if bootstrap_it {
            return bootstrap(&f, &name).await;
        }
        match remote::call(&f, &ClientRequest::Inspect { name: name.clone() }).await? {
            ClientResponse::Builder(b) => Ok(b),
            other => bail!(unexpected(other)),
        }
    })?;
    print_builder(&b);
    Ok(ExitCode::SUCCESS)
}

pub fn rm(args: RmArgs, farm: FarmArgs) -> anyhow::Result<ExitCode> {
    if args.names.is_empty() && !args.all_inactive {
        bail!("kiln rm needs a builder name (or --all-inactive)");
    }
    let session = farm.open()?;
    let current = session.current_builder();
    session.block_on(async {
        let f = session.connect().await?;
        let mut names = args.names.clone();
        if args.all_inactive {
            if let ClientResponse::Builders(list) = remote::call(&f, &ClientRequest::Builders).await? {
                let contexts: Vec<String> = match remote::call(&f, &ClientRequest::Contexts).await? {
                    ClientResponse::Contexts(c) => c.into_iter().map(|c| c.info.name).collect(),
                    _ => vec![],
                };
                names.extend(
                    list.into_iter()
                        .filter(|b| b.name != DEFAULT_BUILDER && !contexts.contains(&b.name))
                        .filter(|b| b.nodes.iter().all(|n| n.status != "running"))
                        .map(|b| b.name),
                );
            }
        }
        for name in &names {
            expect_ok(remote::call(&f, &ClientRequest::RemoveBuilder { name: name.clone() }).await?)?;
            println!("{name} removed");
        }
        anyhow::Ok(())
    })?;
    if current.is_some_and(|c| args.names.contains(&c)) {
        session.set_current_builder(None)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn context(cmd: ContextCommand, farm: FarmArgs) -> anyhow::Result<ExitCode> {
    let session = farm.open()?;
    let list = || async {
        let f = session.connect().await?;
        match remote::call(&f, &ClientRequest::Contexts).await? {
            ClientResponse::Contexts(c) => Ok::<_, anyhow::Error>(c),
            other => bail!(unexpected(other)),
        }
    };
    match cmd {
        ContextCommand::Ls { format } => {
            let contexts = session.block_on(list())?;
            if format == ListFormat::Json {
                println!("{}", serde_json::to_string_pretty(&contexts.iter().map(context_json).collect::<Vec<_>>())?);
                return Ok(ExitCode::SUCCESS);
            }
            let mut rows = vec![["NAME".to_string(), "ENDPOINT".into(), "STATUS".into(), "PLATFORMS".into()]];
            for c in &contexts {
                let native = c.info.native.iter().map(|p| p.to_string());
                let emulated = c.info.emulated.iter().map(|p| format!("{p} (emulated)"));
                rows.push([
                    c.info.name.clone(),
                    c.info.endpoint.clone(),
                    c.status.clone(),
                    native.chain(emulated).collect::<Vec<_>>().join(", "),
                ]);
            }
            print_table(&rows);
        }
        ContextCommand::Inspect { name } => {
            let contexts = session.block_on(list())?;
            let c = contexts.iter().find(|c| c.info.name == name).with_context(|| format!("no context {name:?} found"))?;
            println!("{}", serde_json::to_string_pretty(&context_json(c))?);
        }
        ContextCommand::Rm { names, revoke } => {
            if names.is_empty() {
                bail!("kiln context rm needs a context name");
            }
            session.block_on(async {
                let f = session.connect().await?;
                for name in &names {
                    let r = f
                        .call(
                            &ClientRequest::RemoveContext { name: name.clone(), revoke },
                            Duration::from_secs(120),
                            Duration::from_secs(20),
                        )
                        .await;
                    expect_ok(r.map_err(|e| anyhow::anyhow!("{e}"))?)?;
                    println!("{name} {}", if revoke { "revoked" } else { "removed" });
                }
                anyhow::Ok(())
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn context_json(c: &ContextView) -> serde_json::Value {
    serde_json::json!({
        "name": c.info.name,
        "endpoint": c.info.endpoint,
        "status": c.status,
        "native": c.info.native,
        "emulated": c.info.emulated,
        "slots": c.info.slots,
        "running": c.running,
        "labels": c.info.labels,
        "version": c.info.version,
        "cache_bytes": c.cache_bytes,
        "cache_records": c.cache_records,
        "last_seen_ms_ago": if c.last_seen_ms_ago == u64::MAX { serde_json::Value::Null } else { c.last_seen_ms_ago.into() },
    })
}
