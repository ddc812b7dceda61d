//! Running a bake's builds on the farm: every target that links nothing has its context sent at
//! once (a blob shared by several is sent once) and is submitted straight away, so the scheduler
//! spreads every slice over every agent together; a target with `target:` contexts waits for the
//! targets it links, takes their results as named contexts (`link`), then is prepared, submitted
//! and followed like the rest. A target that others link is built once, whether it was asked for
//! or not. The first failure cancels the rest, as buildx does (the farm stops their builds);
//! with `keep_going` the others finish and publish, and a target whose link failed fails naming
//! it.

use super::link::{self, Scratch};
use crate::cli::build::{self, BuildRequest};
use crate::cli::farm_build::{self, Prepared, Provenances};
use crate::cli::progress::Mode;
use crate::cli::remote::Session;
use anyhow::{bail, Context as _};
use kiln_shared::api::{BuildView, ClientRequest};
use kiln_shared::client::ClientFarm;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// One target, ready for the executor.
pub struct Job {
    pub name: String,
    /// Its request, without its `target:` contexts.
    pub req: BuildRequest,
    /// Its `target:` contexts: (context name, linked target).
    pub links: Vec<(String, String)>,
    /// Prepared up front when it links nothing.
    pub prepared: Option<Prepared>,
    /// Whether another target links it: its result is then kept for them.
    pub linked_by_others: bool,
}

pub struct Options {
    pub mode: Mode,
    pub keep_going: bool,
    /// The builder `kiln use` chose, for targets prepared late.
    pub current_builder: Option<String>,
}

/// The finished targets (their tags, build and provenance) by name.
pub type Done = BTreeMap<String, (Vec<String>, BuildView, Provenances)>;

/// A linked target's outcome, as its dependents wait for it: the context source, or why not.
type Outcome = Option<Result<String, String>>;

/// Runs every job; returns the finished targets and the names of the failed ones.
pub async fn execute(session: &Session, jobs: Vec<Job>, opts: Options) -> anyhow::Result<(Done, Vec<String>)> {
    let farm = Arc::new(session.connect().await?);
    let mut files = BTreeMap::new();
    for p in jobs.iter().filter_map(|j| j.prepared.as_ref()) {
        files.extend(p.files.iter().map(|(d, path)| (d.clone(), path.clone())));
    }
    let (sent, bytes) = farm_build::upload(&farm, &files).await?;
    if opts.mode == Mode::Plain {
        eprintln!(
            "#0 contexts of {} targets: {} blobs, {sent} sent ({bytes} bytes), the rest already on the farm",
            jobs.iter().filter(|j| j.prepared.is_some()).count(),
            files.len()
        );
    }
    let scratch = Arc::new(Scratch::new()?);
    let mut senders: HashMap<String, watch::Sender<Outcome>> = HashMap::new();
    let mut receivers: HashMap<String, watch::Receiver<Outcome>> = HashMap::new();
    for j in jobs.iter().filter(|j| j.linked_by_others) {
        let (tx, rx) = watch::channel(None);
        senders.insert(j.name.clone(), tx);
        receivers.insert(j.name.clone(), rx);
    }
    let opts = Arc::new(opts);
    // The builds submitted so far, by target: what a failure cancels.
    let submitted: Arc<std::sync::Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut set = tokio::task::JoinSet::new();
    for j in jobs {
        let waits: Vec<(String, String, watch::Receiver<Outcome>)> =
            j.links.iter().filter_map(|(ctx, l)| receivers.get(l).map(|rx| (ctx.clone(), l.clone(), rx.clone()))).collect();
        let tx = senders.remove(&j.name);
        let shared =
            Shared { farm: Arc::clone(&farm), opts: Arc::clone(&opts), scratch: Arc::clone(&scratch), submitted: Arc::clone(&submitted) };
        set.spawn(async move {
            let name = j.name.clone();
            let mut tags = Vec::new();
            let result = one(&shared, j, waits, &tx, &mut tags).await;
            if let (Err(e), Some(tx)) = (&result, &tx) {
                tx.send_replace(Some(Err(format!("{e:#}"))));
            }
            (name, tags, result)
        });
    }
    let mut done = BTreeMap::new();
    let mut failed = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (name, tags, result) = joined.context("following a target")?;
        match result {
            Ok((v, provenance)) => {
                if opts.mode != Mode::Quiet {
                    let cached: u32 = v.slices.iter().map(|s| s.cache_hits).sum();
                    let ran: u32 = v.slices.iter().map(|s| s.cache_misses).sum();
                    let on: Vec<String> = v.slices.iter().map(|s| format!("{} on {}", s.platform, s.agent)).collect();
                    eprintln!("=> {name}: image index {} ({}; {ran} steps run, {cached} cached)", v.index_digest, on.join(", "));
                }
                done.insert(name, (tags, v, provenance));
            }
            Err(e) => {
                eprintln!("ERROR: target {name}: {e:#}");
                failed.push(name);
                if !opts.keep_going {
                    // buildx cancels the rest: so does kiln, on the farm.
                    set.abort_all();
                    let others: Vec<(String, u64)> = submitted
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .filter(|(n, _)| !done.contains_key(*n) && !failed.contains(*n))
                        .map(|(n, b)| (n.clone(), *b))
                        .collect();
                    for (other, build) in others {
                        let cancel = ClientRequest::Cancel { build };
                        // A build that ended meanwhile cannot be cancelled: nothing to do.
                        if farm.call(&cancel, Duration::from_secs(10), Duration::from_secs(20)).await.is_ok() && opts.mode != Mode::Quiet {
                            eprintln!("=> {other}: cancelled (build {build})");
                        }
                    }
                    break;
                }
            }
        }
    }
    // Keep the layouts until every follower is gone.
    drop(set);
    drop(scratch);
    Ok((done, failed))
}

/// What every target's task shares: the farm, the options, the layouts' scratch directory and
/// the builds submitted so far (by target: what a failure cancels).
struct Shared {
    farm: Arc<ClientFarm>,
    opts: Arc<Options>,
    scratch: Arc<Scratch>,
    submitted: Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
}

/// One target: its links awaited, prepared (if it was not), submitted, followed, and its result
/// handed to the targets that link it.
async fn one(
    shared: &Shared,
    job: Job,
    waits: Vec<(String, String, watch::Receiver<Outcome>)>,
    tx: &Option<watch::Sender<Outcome>>,
    tags: &mut Vec<String>,
) -> anyhow::Result<(BuildView, Provenances)> {
    let (farm, opts, scratch) = (&*shared.farm, &*shared.opts, &*shared.scratch);
    let mut p = match job.prepared {
        Some(p) => p,
        None => {
            let mut req = job.req;
            for (ctx, linked, mut rx) in waits {
                let outcome = rx.wait_for(Option::is_some).await.ok().and_then(|v| v.clone());
                match outcome {
                    Some(Ok(source)) => req.build_contexts.push(format!("{ctx}={source}")),
                    _ => bail!("linked target {linked} failed"),
                }
            }
            let current = opts.current_builder.clone();
            // Hashing the context blocks: off the runtime's own workers.
            let p = tokio::task::block_in_place(|| build::prepare(&req, current, opts.mode))?;
            farm_build::upload(farm, &p.files).await?;
            p
        }
    };
    // A linked target that does not push keeps its image on the farm for the layout.
    if tx.is_some() && !p.spec.push {
        p.spec.return_blobs = true;
    }
    tags.clone_from(&p.spec.tags);
    let build = farm_build::submit_uploaded(farm, p.spec.clone(), &p.files).await.context("submitting")?;
    shared.submitted.lock().unwrap_or_else(|e| e.into_inner()).insert(job.name.clone(), build);
    let (view, provenance) = farm_build::follow(farm, build, &p, opts.mode, &job.name).await?;
    if let Some(tx) = tx {
        let source = link::source(farm, &job.name, &p.spec, &view, scratch.path()).await?;
        tx.send_replace(Some(Ok(source)));
    }
    Ok((view, provenance))
}
