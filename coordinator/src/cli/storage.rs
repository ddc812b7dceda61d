//! `kiln du` and `kiln prune`: on every agent of a builder (the embedded farm's one agent
//! without `--host`).

use super::remote::{self, FarmArgs};
use anyhow::{bail, Context as _};
use clap::Args;
use kiln_agent::gc::{self, PruneOptions};
use kiln_shared::api::{AgentStorage, ClientRequest, ClientResponse};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Remove every step cache record, not only unreferenced data.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Filters: `until=DURATION` (e.g. 24h, 90m) removes records unused for that long.
    #[arg(long)]
    pub filter: Vec<String>,
    /// Keep at most this much (e.g. 10GB, 512MB), removing the least recently used first.
    #[arg(long)]
    pub keep_storage: Option<String>,
    /// Do not ask for confirmation (kiln never asks; accepted for buildx compatibility).
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Prune every coordinator's blob store (uploaded contexts, caches, returned images) instead
    /// of the agents' caches: what no running build names (admins).
    #[arg(long)]
    pub coordinators: bool,
}

/// Go-style durations as `prune --filter until=` takes them (`24h`, `1h30m`, `90s`).
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    kiln_shared::frontend::instructions::parse_go_duration(s)
        .map(Duration::from_nanos)
        .with_context(|| format!("{s:?} is not a duration (expected e.g. 24h, 90m, 30s)"))
}

/// Sizes like `10GB`, `512MB`, `1.5GiB`, `1000`.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().with_context(|| format!("{s:?} is not a size (expected e.g. 10GB, 512MB)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("{s:?}: unknown size unit {other:?} (expected B, KB, MB, GB, TB, KiB, MiB, GiB)"),
    };
    Ok((n * mult) as u64)
}

fn human(bytes: u64) -> String {
    let mut v = bytes as f64;
    for unit in ["B", "kB", "MB", "GB"] {
        if v < 1000.0 {
            return if unit == "B" { format!("{bytes}B") } else { format!("{v:.2}{unit}") };
        }
        v /= 1000.0;
    }
    format!("{v:.2}TB")
}

/// Each agent's answer, or why it gave none.
type PerAgent = Vec<(String, Result<AgentStorage, String>)>;

/// Asks every agent of a builder (through the farm) and prints one block per agent.
fn per_agent(builder: Option<String>, farm: FarmArgs, req: impl FnOnce(Option<String>) -> ClientRequest) -> anyhow::Result<PerAgent> {
    let session = farm.open()?;
    let builder = builder.or_else(|| session.current_builder());
    session.block_on(async {
        let f = session.connect().await?;
        match remote::call(&f, &req(builder)).await? {
            ClientResponse::PerAgent(list) => Ok(list),
            other => bail!(remote::unexpected(other)),
        }
    })
}

fn print_usage(u: &gc::Usage) {
    println!("{:<28}{:>10}{:>14}", "TYPE", "COUNT", "SIZE");
    println!("{:<28}{:>10}{:>14}", "step cache records", u.records, "");
    println!("{:<28}{:>10}{:>14}", "content blobs", u.content_blobs, human(u.content_bytes));
    println!("{:<28}{:>10}{:>14}", "snapshots", u.snapshots, human(u.snapshot_bytes));
    println!("Reclaimable:\t{}", human(u.reclaimable_bytes));
    println!("Total:\t\t{}", human(u.content_bytes + u.snapshot_bytes));
}

pub fn du(builder: Option<String>, farm: FarmArgs) -> anyhow::Result<ExitCode> {
    let list = per_agent(builder, farm, |builder| ClientRequest::DiskUsage { builder })?;
    let (mut total, mut reclaimable) = (0, 0);
    let mut failed = false;
    for (agent, answer) in list {
        println!("Agent:\t\t{agent}");
        match answer {
            Ok(AgentStorage::Usage(u)) => {
                print_usage(&u);
                total += u.content_bytes + u.snapshot_bytes;
                reclaimable += u.reclaimable_bytes;
            }
            Ok(other) => println!("unexpected answer {other:?}"),
            Err(e) => {
                failed = true;
                println!("unreachable: {e}");
            }
        }
        println!();
    }
    println!("Farm reclaimable:\t{}", human(reclaimable));
    println!("Farm total:\t\t{}", human(total));
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

pub fn prune(args: PruneArgs, builder: Option<String>, farm: FarmArgs) -> anyhow::Result<ExitCode> {
    let mut until = None;
    for f in &args.filter {
        match f.split_once('=') {
            Some(("until", v)) => until = Some(parse_duration(v)?),
            _ => bail!("--filter {f:?}: kiln supports until=DURATION"),
        }
    }
    let keep_storage = args.keep_storage.as_deref().map(parse_size).transpose()?;
    let spec = PruneOptions { all: args.all, until_s: until.map(|d| d.as_secs()), keep_storage };
    let print = |r: &gc::PruneReport| {
        println!("Removed {} step cache records, {} blobs, {} snapshots", r.records_removed, r.blobs_removed, r.snapshots_removed);
        println!("Total:\t{}", human(r.bytes_reclaimed));
    };
    if args.coordinators {
        return prune_coordinators(spec, farm);
    }
    let list = per_agent(builder, farm, |builder| ClientRequest::Prune { builder, spec: spec.clone() })?;
    let mut total = 0;
    let mut failed = false;
    for (agent, answer) in list {
        println!("Agent:\t{agent}");
        match answer {
            Ok(AgentStorage::Pruned(r)) => {
                print(&r);
                total += r.bytes_reclaimed;
            }
            Ok(other) => println!("unexpected answer {other:?}"),
            Err(e) => {
                failed = true;
                println!("unreachable: {e}");
            }
        }
    }
    println!("Farm total reclaimed:\t{}", human(total));
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// `kiln prune --coordinators`: each coordinator prunes its own blob store.
fn prune_coordinators(spec: PruneOptions, farm: FarmArgs) -> anyhow::Result<ExitCode> {
    let session = farm.open()?;
    let mut failed = false;
    let mut total = 0;
    for host in session.hosts.clone() {
        let answer = session.block_on(async {
            let f = session.connect_to(host).await?;
            let r = remote::call(&f, &ClientRequest::PruneCoordinator { spec: spec.clone() }).await;
            f.close();
            r
        });
        match answer {
            Ok(ClientResponse::CoordinatorPruned { coordinator, report }) => {
                println!("Coordinator {coordinator} ({host}):\tremoved {} blobs, {}", report.blobs_removed, human(report.bytes_reclaimed));
                total += report.bytes_reclaimed;
            }
            Ok(other) => bail!(remote::unexpected(other)),
            Err(e) => {
                failed = true;
                println!("Coordinator {host}:\tunreachable: {e:#}");
            }
        }
    }
    println!("Farm total reclaimed:\t{}", human(total));
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("10GB").unwrap(), 10_000_000_000);
        assert_eq!(parse_size("1.5MiB").unwrap(), 1_572_864);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("10XB").is_err());
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert!(parse_duration("1d").is_err());
    }
}
