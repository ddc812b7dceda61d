//! `kiln build` on a farm (a real one, or the embedded one): send the context once (only the
//! blobs the farm lacks), submit the build, follow its slices live, write the outputs.

use super::outputs::{CacheTo, Dest, Output};
use super::progress::{Mode, Progress};
use super::remote::{self, unexpected, Session};
use super::session::BuildSession;
use anyhow::{anyhow, bail, Context as _};
use kiln_agent::Event;
use kiln_shared::api::{
    BlobRequest, BlobResponse, BuildSpec, BuildState, BuildView, ClientRequest, ClientResponse, ContextEntry, EntryKind,
};
use kiln_shared::client::ClientFarm;
use kiln_shared::digest::Digest;
use kiln_shared::frontend::dockerignore::DockerIgnore;
use kiln_shared::transport::TransportError;
use kiln_shared::wire::ErrorCode;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// What the farm needs to know about the context, and where each blob is on this machine.
pub struct ContextManifest {
    pub entries: Vec<ContextEntry>,
    pub files: BTreeMap<String, PathBuf>,
    pub bytes: u64,
}

/// Walks the context as `.dockerignore` allows, hashing every regular file.
pub fn manifest(root: &Path, ignore: &DockerIgnore) -> anyhow::Result<ContextManifest> {
    let mut out = ContextManifest { entries: vec![], files: BTreeMap::new(), bytes: 0 };
    super::context::walk(root, ignore, &mut |v| {
        if v.excluded {
            return Ok(());
        }
        let meta = v.meta;
        let entry_of =
            |kind| ContextEntry { path: v.rel_bytes.to_vec(), kind, mode: meta.mode() & 0o7777, uid: meta.uid(), gid: meta.gid() };
        if meta.is_dir() {
            out.entries.push(entry_of(EntryKind::Dir));
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(v.path).with_context(|| format!("reading {}", v.path.display()))?;
            out.entries.push(entry_of(EntryKind::Symlink { target: target.into_os_string().into_vec() }));
        } else if meta.is_file() {
            let digest = hash_file_once(v.path, meta)?;
            out.bytes += meta.len();
            out.files.insert(digest.to_string(), v.path.to_path_buf());
            out.entries.push(entry_of(EntryKind::File { digest: digest.to_string(), size: meta.len() }));
        } else if meta.file_type().is_fifo() {
            out.entries.push(entry_of(EntryKind::Fifo));
        }
        // Sockets and devices are not sent.
        Ok(())
    })?;
    Ok(out)
}

/// A file's digest, hashed once per process for as long as its inode, size and mtime stay the
/// same: the targets of a bake that share a context directory walk it each, but hash it once.
fn hash_file_once(path: &Path, meta: &std::fs::Metadata) -> anyhow::Result<Digest> {
    type Key = (PathBuf, u64, u64, u64, i64, i64);
    static SEEN: std::sync::OnceLock<std::sync::Mutex<HashMap<Key, Digest>>> = std::sync::OnceLock::new();
    let key = (path.to_path_buf(), meta.dev(), meta.ino(), meta.len(), meta.mtime(), meta.mtime_nsec());
    let seen = SEEN.get_or_init(Default::default);
    if let Some(d) = seen.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(d);
    }
    let digest = hash_file(path)?;
    if let Ok(mut m) = seen.lock() {
        m.insert(key, digest.clone());
    }
    Ok(digest)
}

fn hash_file(path: &Path) -> anyhow::Result<Digest> {
    use sha2::Digest as _;
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(Digest::from_sha256(h.finalize().into()))
}

/// Sends the blobs the farm lacks; returns (blobs sent, bytes sent).
pub async fn upload(farm: &ClientFarm, files: &BTreeMap<String, PathBuf>) -> anyhow::Result<(usize, u64)> {
    let digests: Vec<String> = files.keys().cloned().collect();
    let mut missing = Vec::new();
    for batch in digests.chunks(20_000) {
        let ask = ClientRequest::Blob(BlobRequest::Missing { digests: batch.to_vec(), owner: None });
        match remote::call(farm, &ask).await? {
            ClientResponse::Blob(BlobResponse::Missing(d)) => missing.extend(d),
            other => bail!(unexpected(other)),
        }
    }
    let mut bytes = 0u64;
    for digest in &missing {
        let path = &files[digest];
        let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        bytes += farm.send_blob(digest, &mut f, None).await?;
    }
    Ok((missing.len(), bytes))
}

/// A build ready to submit: the request, the blobs to upload, and where its outputs go.
pub struct Prepared {
    pub spec: BuildSpec,
    pub files: std::collections::BTreeMap<String, PathBuf>,
    pub outputs: Vec<Output>,
    pub cache_to: Option<CacheTo>,
    /// The build's `--secret`s and `--ssh` agents, for the steps that ask.
    pub session: BuildSession,
    /// Named contexts fetched from git or URLs: kept until their files are uploaded.
    pub _fetched: Vec<super::source::Fetched>,
    /// The context manifest blob's file (among `files`), when the context's entries are too
    /// many to travel inline: removed when the build is done with it.
    pub _manifest: Option<tempfile::TempPath>,
}

impl Prepared {
    pub fn cache_dest(&self) -> Option<&Path> {
        match &self.cache_to {
            Some(CacheTo::Local { dest, .. }) => Some(dest.as_path()),
            _ => None,
        }
    }
}

/// Each platform's SLSA provenance predicate, read back from its attestation manifest.
pub type Provenances = Vec<(String, serde_json::Value)>;

/// Runs a build on the farm and follows it; writes the outputs; returns the finished build
/// and its provenance.
pub fn run(session: &Session, prepared: Prepared, mode: Mode) -> anyhow::Result<(BuildView, Provenances)> {
    session.block_on(async {
        let farm = session.connect().await?;
        let build = submit(&farm, prepared.spec.clone(), &prepared.files, mode).await?;
        follow(&farm, build, &prepared, mode, "").await
    })
}

/// Why steps ran that the previous build of the same target had: a line each (at most ten),
/// as `kiln history inspect --cache` explains them.
async fn explain_misses(farm: &ClientFarm, build: u64, progress: &Progress) {
    let req = ClientRequest::HistoryInspect { build: Some(build) };
    let Ok(ClientResponse::BuildDetail(d)) = farm.call(&req, Duration::from_secs(10), Duration::from_secs(20)).await else { return };
    for m in d.misses.iter().take(10) {
        progress.note(&format!("=> cache miss [{} {}: {}", m.platform, m.step.trim_start_matches('['), m.reason));
    }
    if d.misses.len() > 10 {
        progress.note(&format!("=> ... and {} more (kiln history inspect {build} --cache)", d.misses.len() - 10));
    }
}

/// `kiln build --detach`: uploads and submits; the build's id.
pub fn detach(session: &Session, prepared: Prepared, mode: Mode) -> anyhow::Result<u64> {
    session.block_on(async {
        let farm = session.connect().await?;
        submit(&farm, prepared.spec.clone(), &prepared.files, mode).await
    })
}

/// Sends the blobs of `files` the farm lacks and submits the build; returns its id.
pub async fn submit(farm: &ClientFarm, spec: BuildSpec, files: &BTreeMap<String, PathBuf>, mode: Mode) -> anyhow::Result<u64> {
    let (sent, bytes) = upload(farm, files).await?;
    if mode == Mode::Plain {
        // The manifest (names, modes, digests) travels in the build request, or as a blob.
        let manifest = kiln_shared::wire::encode(&ClientRequest::Submit(Box::new(spec.clone()))).map(|f| f.len()).unwrap_or(0);
        eprintln!(
            "#0 context: {} files, {sent} sent ({bytes} bytes) + manifest ({manifest} bytes), the rest already on the farm",
            files.len()
        );
    }
    hold_before_submit(farm).await?;
    submit_uploaded(farm, spec, files).await
}

/// How many times a submit refused for missing blobs uploads them again and resubmits.
const RESUBMITS: u32 = 3;

/// Submits a build whose blobs were uploaded; returns its id. A coordinator that lacks some of
/// them refuses it (the one that received the upload died, or the leader changed and this
/// client moved on to another): they go to the coordinator now answering, and the build is
/// submitted again. The submission id makes that safe: a build the farm accepted before its
/// answer was lost is found, not made twice.
pub async fn submit_uploaded(farm: &ClientFarm, spec: BuildSpec, files: &BTreeMap<String, PathBuf>) -> anyhow::Result<u64> {
    let req = ClientRequest::Submit(Box::new(spec));
    let mut refused = 0;
    loop {
        match farm.call(&req, Duration::from_secs(30), Duration::from_secs(20)).await {
            Ok(ClientResponse::Submitted { build }) => return Ok(build),
            Ok(other) => bail!(unexpected(other)),
            Err(TransportError::Remote(e)) if e.code == ErrorCode::BlobsMissing && refused < RESUBMITS => {
                refused += 1;
                let at = farm.current_host().await.map(|h| h.to_string()).unwrap_or_else(|| "the farm".into());
                tracing::warn!("{at} lacks the build's blobs ({e}): uploading them there and submitting again");
                upload(farm, files).await?;
            }
            Err(e) => bail!("{e}"),
        }
    }
}

/// For tests only: with `KILN_TEST_HOLD_SUBMIT=PATH`, the build waits between its upload and
/// its submit until `PATH` exists (at most two minutes), having written `PATH.uploaded` with
/// the address of the coordinator that received the upload. A test kills that coordinator or
/// prunes the farm in the window.
async fn hold_before_submit(farm: &ClientFarm) -> anyhow::Result<()> {
    let Some(path) = std::env::var_os("KILN_TEST_HOLD_SUBMIT").map(PathBuf::from) else { return Ok(()) };
    let at = farm.current_host().await.or(farm.answered_host()).map(|h| h.to_string()).unwrap_or_default();
    let mut uploaded = path.clone().into_os_string();
    uploaded.push(".uploaded");
    // Written whole, then renamed into place: the test reads it as soon as it exists.
    let mut partial = uploaded.clone();
    partial.push(".partial");
    std::fs::write(&partial, at).with_context(|| format!("writing {}", Path::new(&partial).display()))?;
    std::fs::rename(&partial, &uploaded).with_context(|| format!("writing {}", Path::new(&uploaded).display()))?;
    let give_up = std::time::Instant::now() + Duration::from_secs(120);
    while !path.exists() && std::time::Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Follows a submitted build to its end: answers what its steps ask of the build's session
/// (secrets, ssh-agent messages), shows its progress (every line labelled with `label` when
/// there is one: `kiln bake` names the target, `[web a2 linux/arm64 ...]`), writes its outputs
/// and reads back its provenance.
pub async fn follow(farm: &ClientFarm, build: u64, p: &Prepared, mode: Mode, label: &str) -> anyhow::Result<(BuildView, Provenances)> {
    let (build_session, outputs, tags, cache_dest) = (&p.session, &p.outputs[..], &p.spec.tags[..], p.cache_dest());
    // Where the attestations can be read back: the coordinator (OCI and local outputs) or the registry.
    let attested_in = if p.spec.return_blobs {
        AttestedIn::Farm
    } else {
        AttestedIn::Registry { tag: p.spec.tags.first().cloned().unwrap_or_default(), insecure: p.spec.insecure_registries.clone() }
    };
    let index_descriptor: BTreeMap<String, String> =
        kiln_shared::attest::annotations_for(&p.spec.annotations, kiln_shared::attest::AnnotationLevel::IndexDescriptor, None)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    let progress = Progress::new(mode);
    let mut ids = StepIds::new();
    let mut cursor = 0;
    // Ctrl-C cancels the build, as in buildx; a client that merely dies does not. One listener
    // for the whole follow, so that a Ctrl-C between two polls is not lost.
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let req = ClientRequest::Watch { build, cursor, wait_ms: 5_000 };
        let answer = tokio::select! {
            a = farm.call(&req, Duration::from_secs(15), Duration::from_secs(60)) => a.map_err(|e| anyhow!("following build {build}: {e}"))?,
            _ = &mut interrupted => {
                progress.note(&format!("cancelling build {build}"));
                let cancelled = farm.call(&ClientRequest::Cancel { build }, Duration::from_secs(10), Duration::from_secs(20)).await;
                match cancelled {
                    Ok(_) => bail!("build {build} cancelled"),
                    Err(e) => bail!("cancelling build {build}: {e}"),
                }
            }
        };
        let ClientResponse::Build { view, events, cursor: next, asks } = answer else {
            bail!("unexpected answer while following build {build}")
        };
        // What the build's steps ask of this client: secrets, ssh-agent messages.
        for (ask, question) in asks {
            // An ssh-agent exchange blocks (briefly, bounded): off the runtime's own workers.
            let answer = tokio::task::block_in_place(|| build_session.answer(&question));
            let req = ClientRequest::Answer { build, ask, answer };
            farm.call(&req, Duration::from_secs(15), Duration::from_secs(30))
                .await
                .map_err(|e| anyhow!("answering build {build}'s question: {e}"))?;
        }
        // A new leader starts its event log afresh.
        cursor = if next < cursor { 0 } else { next };
        show(&progress, &mut ids, events, label);
        match view.state {
            BuildState::Done => {
                if outputs.iter().any(Output::needs_blobs) {
                    write_outputs(farm, &view, outputs, tags, &index_descriptor).await?;
                }
                if let Some(dest) = cache_dest {
                    write_cache(farm, &view, dest).await?;
                }
                let provenance = provenances(farm, &view, &attested_in).await?;
                explain_misses(farm, build, &progress).await;
                return Ok((view, provenance));
            }
            BuildState::Failed => bail!("{}", view.error),
            BuildState::Running => {}
        }
    }
}

/// Step ids as the CLI numbers them, by (platform, agent, the agent's id).
pub type StepIds = HashMap<(String, String, u64), u64>;

/// Shows a build's events: every step labelled with its agent (and `label`, a bake target),
/// numbered in the order they first appear.
pub fn show(progress: &Progress, ids: &mut StepIds, events: Vec<kiln_shared::api::BuildEvent>, label: &str) {
    for e in events {
        let key = |id: u64| (e.platform.to_string(), e.agent.clone(), id);
        let n = ids.len() as u64 + 1;
        let map = |id: u64, ids: &mut HashMap<(String, String, u64), u64>| *ids.entry(key(id)).or_insert(n);
        let event = match e.event {
            Event::Start { id, name } => {
                // Label every step with the agent it runs on: `[a2 linux/arm64 ...]`.
                let who = if label.is_empty() { e.agent.clone() } else { format!("{label} {}", e.agent) };
                let name = match name.strip_prefix('[') {
                    Some(rest) => format!("[{who} {rest}"),
                    None => format!("[{who}] {name}"),
                };
                Event::Start { id: map(id, ids), name }
            }
            Event::Cached { id } => Event::Cached { id: map(id, ids) },
            Event::Log { id, line } => Event::Log { id: map(id, ids), line },
            Event::Done { id, secs } => Event::Done { id: map(id, ids), secs },
            Event::Failed { id, message } => Event::Failed { id: map(id, ids), message },
        };
        progress.event(event);
    }
}

/// A finished build's images in the client's store, fetched from the coordinator (where the
/// agents sent them when the build asked for its blobs).
pub struct Fetched {
    pub store: kiln_shared::store::ContentStore,
    pub index: kiln_shared::oci::Index,
    /// Every manifest, config and layer the index names.
    pub blobs: Vec<Digest>,
    /// Each platform's image (attestation manifests are no platform's filesystem).
    pub images: Vec<(Option<kiln_shared::Platform>, kiln_shared::oci::Manifest)>,
}

pub async fn fetch_images(farm: &ClientFarm, view: &BuildView) -> anyhow::Result<Fetched> {
    let store = kiln_shared::store::ContentStore::open(&super::home::kiln_home().join("client/content"))?;
    let index = view.index().context("the build's index")?.ok_or_else(|| anyhow!("the build is done but has no index"))?;
    let mut blobs = Vec::new();
    let mut images = Vec::new();
    for m in &index.manifests {
        farm.fetch_blob(&store, &m.digest).await?;
        let manifest: kiln_shared::oci::Manifest = serde_json::from_slice(&store.read(&m.digest)?).context("a slice's manifest")?;
        for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
            farm.fetch_blob(&store, &d.digest).await?;
            blobs.push(d.digest.clone());
        }
        blobs.push(m.digest.clone());
        if !kiln_shared::attest::is_attestation(m) {
            images.push((m.platform.as_ref().and_then(|p| p.to_platform()), manifest));
        }
    }
    Ok(Fetched { store, index, blobs, images })
}

/// `-o type=oci` and `-o type=local`: the agents sent their images to the coordinator; fetch
/// the manifests, configs and layers into the client's store and write each output.
async fn write_outputs(
    farm: &ClientFarm,
    view: &BuildView,
    outputs: &[Output],
    tags: &[String],
    index_descriptor: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let Fetched { store, index, blobs, images } = fetch_images(farm, view).await?;
    for out in outputs {
        match out {
            Output::Oci { dest: Dest::File(dest), .. } => {
                kiln_shared::layout::write_archive(dest, &store, &index, &blobs, tags, index_descriptor)?
            }
            Output::Oci { dest: Dest::Stdout, .. } => {
                let tmp = tempfile_in_home("oci")?;
                kiln_shared::layout::write_archive(&tmp, &store, &index, &blobs, tags, index_descriptor)?;
                to_stdout(&tmp)?;
            }
            Output::Local { dest } => unpack_images(&store, &images, dest)?,
            Output::Tar { dest } => {
                let root = tempfile_in_home("rootfs")?;
                unpack_images(&store, &images, &root)?;
                let (tar_path, stdout) = match dest {
                    Dest::File(p) => (p.clone(), false),
                    Dest::Stdout => (tempfile_in_home("tar")?, true),
                };
                let written = write_tar(&root, &tar_path);
                let _ = std::fs::remove_dir_all(&root);
                written?;
                if stdout {
                    to_stdout(&tar_path)?;
                }
            }
            Output::Docker { dest } => {
                let [(_, manifest)] = images.as_slice() else {
                    bail!("docker exporter does not currently support exporting manifest lists");
                };
                let (path, keep) = match dest {
                    Some(Dest::File(p)) => (p.clone(), true),
                    _ => (tempfile_in_home("docker")?, false),
                };
                kiln_shared::layout::write_docker_archive(&path, &store, manifest, tags)?;
                match dest {
                    Some(Dest::Stdout) => to_stdout(&path)?,
                    None => {
                        let said = super::docker::load(&path);
                        let _ = std::fs::remove_file(&path);
                        eprintln!("{}", said?);
                    }
                    Some(Dest::File(_)) => {}
                }
                if !keep {
                    let _ = std::fs::remove_file(&path);
                }
            }
            Output::Registry { .. } | Output::CacheOnly => {}
        }
    }
    Ok(())
}

/// Each platform's filesystem under `dest` (in `linux_ARCH` subdirectories when there are several).
fn unpack_images(
    store: &kiln_shared::store::ContentStore,
    images: &[(Option<kiln_shared::Platform>, kiln_shared::oci::Manifest)],
    dest: &Path,
) -> anyhow::Result<()> {
    for (platform, manifest) in images {
        let dir = match platform {
            Some(p) if images.len() > 1 => dest.join(p.to_string().replace('/', "_")),
            _ => dest.to_path_buf(),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for l in &manifest.layers {
            kiln_agent::layers::unpack(store, &l.digest, &dir, kiln_agent::layers::Whiteouts::Delete)?;
        }
    }
    Ok(())
}

/// A fresh path in the client's scratch directory (removed by the caller).
fn tempfile_in_home(what: &str) -> anyhow::Result<PathBuf> {
    let dir = super::home::kiln_home().join("client/tmp");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.join(format!("{what}-{}-{}", std::process::id(), crate::node::random_hex(4)?)))
}

/// The tree under `root` as a tar at `dest` (written beside it and renamed).
fn write_tar(root: &Path, dest: &Path) -> anyhow::Result<()> {
    let tmp = dest.with_extension("kiln-tmp");
    let written = (|| -> std::io::Result<()> {
        let mut b = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(&tmp)?));
        b.follow_symlinks(false);
        b.mode(tar::HeaderMode::Complete);
        let mut top: Vec<_> = std::fs::read_dir(root)?.collect::<std::io::Result<_>>()?;
        top.sort_by_key(|e| e.file_name());
        for e in top {
            if e.file_type()?.is_dir() {
                b.append_dir_all(e.file_name(), e.path())?;
            } else {
                b.append_path_with_name(e.path(), e.file_name())?;
            }
        }
        b.into_inner()?.into_inner().map_err(|e| e.into_error())?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow!("writing {}: {e}", dest.display()));
    }
    std::fs::rename(&tmp, dest).with_context(|| format!("writing {}", dest.display()))
}

/// Copies a finished archive to standard output and removes it.
fn to_stdout(path: &Path) -> anyhow::Result<()> {
    let copied = std::fs::File::open(path).and_then(|mut f| {
        let mut out = std::io::stdout().lock();
        std::io::copy(&mut f, &mut out)?;
        std::io::Write::flush(&mut out)
    });
    let _ = std::fs::remove_file(path);
    copied.context("writing the archive to standard output")
}

/// Where a build's attestation blobs are once it is done.
enum AttestedIn {
    /// The agents sent them to the coordinator that received the build (with the images).
    Farm,
    /// The agents pushed them (by digest, to every tag's repository).
    Registry { tag: String, insecure: Vec<String> },
}

/// The provenance predicate of every slice that has an attestation manifest.
async fn provenances(farm: &ClientFarm, view: &BuildView, from: &AttestedIn) -> anyhow::Result<Provenances> {
    let mut out = Vec::new();
    if view.slices.iter().all(|s| s.attestation.is_none()) {
        return Ok(out);
    }
    let store = kiln_shared::store::ContentStore::open(&super::home::kiln_home().join("client/content"))?;
    // A manifest (`manifest`) or a blob, from wherever the build left them.
    let fetch = |d: Digest, manifest: bool| {
        let store = store.clone();
        async move {
            match from {
                AttestedIn::Farm => farm.fetch_blob(&store, &d).await?,
                AttestedIn::Registry { tag, insecure } => {
                    let r = tag.parse::<kiln_shared::registry::Reference>()?.with_digest(d.clone());
                    let (insecure, s, d) = (insecure.clone(), store.clone(), d.clone());
                    let read = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, kiln_shared::registry::RegistryError> {
                        let client = kiln_shared::registry::RegistryClient::new(&insecure);
                        if manifest {
                            return Ok(client.get_manifest(&r)?.bytes);
                        }
                        client.fetch_blob(&r, &d, &s)?;
                        Ok(Vec::new())
                    });
                    let bytes = read
                        .await
                        .map_err(|e| anyhow!("reading the provenance: {e}"))?
                        .with_context(|| format!("reading the provenance from {tag}"))?;
                    if manifest {
                        return anyhow::Ok(bytes);
                    }
                }
            }
            anyhow::Ok(store.read(&d)?)
        }
    };
    for s in &view.slices {
        let Some(a) = &s.attestation else { continue };
        let manifest: kiln_shared::oci::Manifest =
            serde_json::from_slice(&fetch(a.digest.clone(), true).await?).context("an attestation manifest")?;
        for l in &manifest.layers {
            if l.annotations.get(kiln_shared::attest::PREDICATE_TYPE).map(String::as_str) != Some(kiln_shared::attest::SLSA_V1) {
                continue;
            }
            let statement: serde_json::Value =
                serde_json::from_slice(&fetch(l.digest.clone(), false).await?).context("a provenance statement")?;
            out.push((s.platform.to_string(), statement["predicate"].clone()));
        }
    }
    Ok(out)
}

/// `--cache-to type=local` on a farm: the agents sent the records' layers to the coordinator.
async fn write_cache(farm: &ClientFarm, view: &BuildView, dest: &Path) -> anyhow::Result<()> {
    let store = kiln_shared::store::ContentStore::open(&super::home::kiln_home().join("client/content"))?;
    for l in kiln_agent::cache::layers(&view.cache_records)? {
        farm.fetch_blob(&store, &l.digest).await?;
    }
    kiln_agent::cache::write_local(dest, &view.cache_records, &store)?;
    Ok(())
}

/// A local cache directory to import on a farm: its config's digest, and every blob file to
/// upload (config and layers), by digest.
pub fn local_cache_files(src: &Path) -> anyhow::Result<(String, BTreeMap<String, PathBuf>)> {
    let index: kiln_shared::oci::Index =
        serde_json::from_slice(&std::fs::read(src.join("index.json")).with_context(|| format!("reading {}/index.json", src.display()))?)
            .context("index.json")?;
    let m = index.manifests.first().ok_or_else(|| anyhow!("{}: index.json lists no manifest", src.display()))?;
    let blob = |d: &Digest| src.join("blobs/sha256").join(d.hex());
    let manifest: kiln_shared::oci::Manifest =
        serde_json::from_slice(&std::fs::read(blob(&m.digest)).context("the cache's manifest")?).context("the cache's manifest")?;
    if manifest.config.media_type != kiln_agent::cache::CONFIG_TYPE {
        bail!("{} is not a kiln cache", src.display());
    }
    let mut files = BTreeMap::new();
    for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
        files.insert(d.digest.to_string(), blob(&d.digest));
    }
    Ok((manifest.config.digest.to_string(), files))
}

/// What `--metadata-file` holds for one build (`kiln bake` writes one per target).
pub fn metadata(view: &BuildView, provenance: &Provenances, tags: &[String]) -> serde_json::Value {
    let slices: Vec<serde_json::Value> = view
        .slices
        .iter()
        .map(|s| {
            serde_json::json!({
                "platform": s.platform.to_string(),
                "agent": s.agent,
                "emulated": s.emulated,
                "emulated_steps": s.emulated_steps,
                "manifest_digest": s.manifest.as_ref().map(|d| d.digest.to_string()).unwrap_or_default(),
                "attestation_digest": s.attestation.as_ref().map(|d| d.digest.to_string()),
                "duration_ms": s.duration_ms,
                "queue_ms": s.queue_ms,
                "attempt": s.attempt,
                "cache_hits": s.cache_hits,
                "cache_misses": s.cache_misses,
                "cache_peer_hits": s.cache_peer_hits,
                "reason": s.reason,
                "waiting_reason": s.waiting,
            })
        })
        .collect();
    let descriptor = serde_json::json!({
        "mediaType": kiln_shared::oci::MEDIA_INDEX,
        "digest": view.index_digest,
        "size": view.index.len(),
    });
    let mut meta = serde_json::json!({
        "containerimage.digest": view.index_digest,
        "containerimage.descriptor": descriptor,
        "image.name": tags.join(","),
        "kiln.build": view.id,
        "kiln.slices": slices,
    });
    // As buildx: `buildx.build.provenance`, per platform (`.../linux/arm64`) when there are several.
    for (platform, predicate) in provenance {
        let key = if view.slices.len() > 1 { format!("buildx.build.provenance/{platform}") } else { "buildx.build.provenance".into() };
        meta[key] = predicate.clone();
    }
    meta
}

/// Reports the finished build as the embedded farm does: metadata file and summary line.
pub fn finish(
    view: &BuildView,
    provenance: &Provenances,
    tags: &[String],
    metadata_file: Option<&Path>,
    mode: Mode,
) -> anyhow::Result<ExitCode> {
    if let Some(path) = metadata_file {
        std::fs::write(path, serde_json::to_vec_pretty(&metadata(view, provenance, tags))?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if mode == Mode::Quiet {
        println!("{}", view.index_digest);
    } else {
        let cached: u32 = view.slices.iter().map(|s| s.cache_hits).sum();
        let ran: u32 = view.slices.iter().map(|s| s.cache_misses).sum();
        for s in &view.slices {
            eprintln!(
                "=> {} on {} ({}), queued {} ms, ran {} ms",
                s.platform,
                s.agent,
                if s.emulated { "emulated" } else { "native" },
                s.queue_ms,
                s.duration_ms
            );
        }
        eprintln!("=> image index {} ({} platforms; {ran} steps run, {cached} cached)", view.index_digest, view.slices.len());
    }
    Ok(ExitCode::SUCCESS)
}
