//! Running one slice: its context recreated, the engine run on a blocking thread with the
//! caches it may import, progress forwarded in batches, the image pushed or returned, and the
//! outcome the farm is told.

use super::advertise::advertise;
use super::context::{materialize, named_dir, RemoveOnDrop};
use super::error::SliceError;
use super::peers::UploadedCache;
use super::publish::{push, send_blobs};
use super::session::FarmSession;
use super::Worker;
use crate::cache::Imported;
use crate::engine::{Named, RemoteCache, SliceRequest};
use kiln_shared::api::{AgentRequest, CacheRef, Event, NamedSource, SliceOutcome, SliceTask};
use kiln_shared::client::AgentFarm;
use kiln_shared::digest::Digest;
use kiln_shared::frontend::dockerignore::DockerIgnore;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// Runs one slice on this agent: what the farm is told when it is done.
pub(super) async fn execute(w: &Arc<Worker>, task: &SliceTask, cancelled: Arc<AtomicBool>) -> Result<SliceOutcome, SliceError> {
    let dir = w.cfg.data_dir.join("contexts").join(format!("{}-{}-{}", task.build, task.slice, task.attempt));
    let _cleanup = RemoveOnDrop(dir.clone());
    // An entitlement the build asks for must be one this agent grants (its builder permits it).
    if let Some(e) = task.spec.run.entitlements.iter().find(|e| !w.cfg.allow_insecure_entitlements.contains(e)) {
        return Err(SliceError::Entitlement { entitlement: e.clone(), agent: w.cfg.name.clone() });
    }
    let named: Vec<(String, Named)> = task
        .spec
        .named_contexts
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                match &n.source {
                    NamedSource::Image(r) => Named::Image(r.clone()),
                    NamedSource::Layout { digest, .. } => Named::Image(format!("{}{digest}", crate::engine::LAYOUT_PREFIX)),
                    NamedSource::Local(_) => Named::Dir(named_dir(&dir, &n.name)),
                },
            )
        })
        .collect();
    let _named_cleanup: Vec<RemoveOnDrop> =
        named.iter().filter_map(|(_, n)| if let Named::Dir(d) = n { Some(RemoveOnDrop(d.clone())) } else { None }).collect();
    let started = std::time::Instant::now();
    materialize(w, task, &dir).await?;
    let materialized = started.elapsed();

    // Progress goes to the coordinators in small batches while the slice runs.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let forwarder = {
        let w = w.clone();
        let (build, slice, attempt) = (task.build, task.slice, task.attempt);
        let (batch, deadline) = (Duration::from_millis(w.cfg.event_batch_ms), Duration::from_millis(w.cfg.events_deadline_ms));
        kiln_shared::task::spawn(format!("events of slice {build}/{slice}"), async move {
            let mut open = true;
            while open {
                let mut events = Vec::new();
                match rx.recv().await {
                    Some(e) => events.push(e),
                    None => break,
                }
                // Batch what follows within `event_batch_ms`, but send at once when the slice ends.
                let window = tokio::time::sleep(batch);
                tokio::pin!(window);
                loop {
                    tokio::select! {
                        e = rx.recv() => match e {
                            Some(e) => events.push(e),
                            None => {
                                open = false;
                                break;
                            }
                        },
                        _ = &mut window => break,
                    }
                }
                let _ = w.farm.call(&AgentRequest::Events { build, slice, attempt, events }, deadline, deadline).await;
            }
        })
    };

    let engine = w.engine.clone();
    let spec = task.spec.clone();
    let platform = task.platform.clone();
    let native = w.native.clone();
    let context = dir.clone();
    let uploaded = uploaded_caches(w, task).await?;
    let agent_name = w.cfg.name.clone();
    let started_secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let handle = tokio::runtime::Handle::current();
    let session = FarmSession { worker: w.clone(), handle: handle.clone(), build: task.build, slice: task.slice, attempt: task.attempt };
    let span = tracing::Span::current();
    let result = tokio::task::spawn_blocking(move || {
        let _in_slice = span.enter();
        let mut imports: Vec<Box<dyn RemoteCache>> = Vec::new();
        for c in &spec.cache_from {
            if let CacheRef::Registry { reference } = c {
                match Imported::registry(reference, kiln_shared::registry::RegistryClient::new(&spec.insecure_registries), &engine.store) {
                    Ok(i) => imports.push(Box::new(i)),
                    // As buildx: a cache that cannot be imported is a warning, not a failure.
                    Err(e) => {
                        let _ = tx.send(Event::Log { id: 0, line: format!("importing cache {reference}: {e}") });
                    }
                }
            }
        }
        for (config, origin_farm) in uploaded {
            match Imported::from_config(&config, "uploaded cache".into()) {
                Ok(imported) => imports.push(Box::new(UploadedCache { imported, origin: origin_farm, handle: handle.clone() })),
                Err(e) => {
                    let _ = tx.send(Event::Log { id: 0, line: e.to_string() });
                }
            }
        }
        let remote: Vec<&dyn RemoteCache> = imports.iter().map(|b| &**b).collect();
        // Build and publish; a blob of the store found corrupt on the way out is removed (the
        // store verifies every blob it pushes), so the slice runs once more and heals: the steps
        // whose layers went run again, a base layer is fetched again.
        let build_and_push = || {
            let req = SliceRequest {
                dockerfile: &spec.dockerfile,
                dockerfile_name: &spec.dockerfile_name,
                context: &context,
                // The CLI already applied .dockerignore to what it sent.
                ignore: &DockerIgnore::default(),
                platform: platform.clone(),
                build_args: &spec.build_args,
                target: spec.target.as_deref(),
                no_cache: spec.no_cache,
                no_cache_filter: &spec.no_cache_filter,
                pull: spec.pull,
                cache_scope: &spec.cache_scope,
                remote: &remote,
                native: &native,
                labels: &spec.labels,
                session: &session,
                run: &spec.run,
                named: &named,
                cancelled: &cancelled,
            };
            let mut result = engine.run_slice(&req, &|e| {
                let _ = tx.send(e);
            })?;
            let image = if spec.zstd { engine.zstd_image(&result)? } else { (result.manifest.clone(), result.blobs.clone()) };
            let image = engine.annotate(image, &spec, &result.platform)?;
            // The attestations are about the manifest as published (annotated, maybe zstd).
            let attestation = engine.attest(&spec, &agent_name, started_secs, &result, &image.0)?;
            if spec.push {
                push(&engine, &spec.tags, &image)?;
                if let Some(a) = &attestation {
                    push(&engine, &spec.tags, a)?;
                }
            }
            let step_records = result.records.iter().map(|r| crate::engine::record_name(&spec.cache_scope, &r.key)).collect::<Vec<_>>();
            // --cache-to: this slice's records; their layers go where the cache is written.
            result.records = match &spec.cache_to {
                Some(export) => {
                    let records = crate::cache::select(std::mem::take(&mut result.records), export.max);
                    if let Some(reference) = &export.registry {
                        crate::cache::push_layers(reference, &records, &engine.store, &engine.registry)?;
                    }
                    records
                }
                None => vec![],
            };
            Ok::<_, SliceError>((result, image.0, image.1, step_records, attestation))
        };
        match build_and_push() {
            Err(e) if e.corrupt_blob() => {
                tracing::warn!("{e}: the corrupt blob was removed from the store; running the slice again");
                crate::metrics::get().corrupt_blobs.inc(&[]);
                let _ = tx.send(Event::Log { id: 0, line: format!("{e}: the corrupt blob was removed; building the slice again") });
                build_and_push()
            }
            r => r,
        }
    })
    .await;
    let _ = forwarder.await;
    let (result, manifest, blobs, step_records, attestation) = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(SliceError::Task(e)),
    };
    // Local cache exports return their layers with the image's blobs.
    let mut returned: Vec<Digest> = if task.spec.return_blobs { blobs } else { vec![] };
    // An OCI output carries the attestations too. A pushed build's are read back from the
    // registry (a slice never needs its origin coordinator once it has pushed: it may be gone).
    let attestation = attestation.map(|(desc, blobs)| {
        if task.spec.return_blobs {
            returned.extend(blobs);
        }
        Box::new(desc)
    });
    if task.spec.cache_to.as_ref().is_some_and(|c| c.registry.is_none()) {
        let layers = crate::cache::layers(&result.records)?;
        returned.extend(layers.into_iter().map(|l| l.digest));
    }
    if !returned.is_empty() {
        let origin = w.connect(task)?;
        let sent = send_blobs(w, &origin, &returned, &task.spec.tenant).await;
        origin.close();
        sent?;
    }
    let built = started.elapsed();
    // The tracker learns what this slice added before the farm learns the slice is done, so a
    // build that follows finds it.
    advertise(w).await;
    tracing::debug!(
        agent = %w.cfg.name,
        build = task.build,
        slice = task.slice,
        materialize_ms = materialized.as_secs_f64() * 1e3,
        build_ms = (built - materialized).as_secs_f64() * 1e3,
        advertise_ms = (started.elapsed() - built).as_secs_f64() * 1e3,
        "slice done"
    );
    Ok(SliceOutcome {
        build: task.build,
        slice: task.slice,
        attempt: task.attempt,
        manifest,
        attestation,
        // What happened, with the farm's notion of native (a host declared native for a
        // platform runs it natively): some RUN step ran under emulation. A slice that runs its
        // RUN steps on the build platform (`FROM --platform=$BUILDPLATFORM`) is not emulated.
        emulated: result.emulated,
        emulated_steps: result.emulated_steps.clone(),
        duration_ms: result.duration_ms,
        cache_hits: result.cache_hits,
        cache_misses: result.cache_misses,
        cache_peer_hits: result.cache_peer_hits,
        records: result.records,
        step_records,
        steps: result.steps,
    })
}

/// The configs of caches the CLI uploaded, with a connection to fetch their blobs.
async fn uploaded_caches(w: &Arc<Worker>, task: &SliceTask) -> Result<Vec<(Vec<u8>, AgentFarm)>, SliceError> {
    let mut out = Vec::new();
    for c in &task.spec.cache_from {
        if let CacheRef::Uploaded { config } = c {
            let d: Digest = config.parse().map_err(SliceError::digest(config))?;
            let origin = w.connect(task)?;
            origin.fetch_blob(&w.engine.store, &d).await.map_err(SliceError::ImportedCache)?;
            let bytes = w.engine.store.read(&d)?;
            out.push((bytes, origin));
        }
    }
    Ok(out)
}
