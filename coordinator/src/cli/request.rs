//! A build request: what `kiln build`'s flags say, or one `kiln bake` target, checked (outputs,
//! tags, destinations) and turned into the `BuildSpec` both verbs submit (its context walked,
//! caches, named contexts, secrets and attestations resolved).

use super::farm_build::Prepared;
use super::outputs::{CacheFrom, CacheTo, Dest, Output};
use super::progress::Mode;
use super::session::BuildSession;
use anyhow::bail;
use kiln_shared::api::{BuildSpec, CacheExport, CacheRef};
use kiln_shared::attest::{self, Annotation, AttestFlags, Attestations};
use kiln_shared::frontend::dockerignore::DockerIgnore;
use kiln_shared::Platform;
use std::path::PathBuf;

/// A resolved build description: what `kiln build`'s flags say, or one `kiln bake` target.
/// Both verbs turn it into the same `BuildSpec` through [`prepare`].
#[derive(Clone, Debug, Default)]
pub struct BuildRequest {
    pub context: PathBuf,
    /// The Dockerfile as named in messages, and its text.
    pub dockerfile_name: String,
    pub dockerfile_text: String,
    /// Where the Dockerfile is (its `.dockerignore` beside it wins over the context's).
    pub dockerfile_path: PathBuf,
    pub platforms: Vec<Platform>,
    pub build_args: Vec<(String, String)>,
    pub labels: Vec<(String, String)>,
    pub target: Option<String>,
    pub tags: Vec<String>,
    pub push: bool,
    /// `-o` specs in buildx's syntax.
    pub outputs: Vec<String>,
    pub no_cache: bool,
    pub cache_from: Vec<String>,
    pub cache_to: Option<String>,
    pub insecure_registries: Vec<String>,
    pub builder: Option<String>,
    /// `--build-context NAME=SOURCE` specs.
    pub build_contexts: Vec<String>,
    pub no_cache_filter: Vec<String>,
    pub pull: bool,
    /// `--secret` and `--ssh` specs in buildx's syntax.
    pub secrets: Vec<String>,
    pub ssh: Vec<String>,
    /// `--network`, `--add-host`, `--shm-size`, `--ulimit`, `--allow`.
    pub run: kiln_shared::api::RunOptions,
    /// `--provenance`, `--sbom`, `--attest` and `--annotation` specs in buildx's syntax.
    pub provenance: Option<String>,
    pub sbom: Option<String>,
    pub attest: Vec<String>,
    pub annotations: Vec<String>,
}

/// The image's names: every `-t`, then every `name=` of a registry output.
fn tags(req: &BuildRequest, outputs: &[Output]) -> Vec<String> {
    let mut tags = req.tags.clone();
    for o in outputs {
        if let Output::Registry { names, .. } = o {
            tags.extend(names.iter().filter(|n| !req.tags.contains(n)).cloned());
        }
    }
    tags
}

/// What can be checked before a farm is started or joined: outputs, tags and destinations.
pub fn check(req: &BuildRequest) -> anyhow::Result<()> {
    outputs(req).map(|_| ())
}

/// The request's outputs (`--push` and `--load` among them), checked.
fn outputs(req: &BuildRequest) -> anyhow::Result<Vec<Output>> {
    let mut outputs = req.outputs.iter().map(|o| Output::parse(o)).collect::<anyhow::Result<Vec<_>>>()?;
    if req.push && !outputs.iter().any(Output::is_registry) {
        outputs.push(Output::Registry { zstd: false, names: vec![] });
    }
    if outputs.iter().any(Output::is_registry) && tags(req, &outputs).is_empty() {
        bail!("--push needs at least one tag: -t REGISTRY/REPOSITORY:TAG (or -o type=registry,name=REF)");
    }
    for t in &tags(req, &outputs) {
        t.parse::<kiln_shared::registry::Reference>()?;
    }
    for o in &outputs {
        o.check_dest()?;
    }
    // As buildx: Docker's image store holds one platform's image, not an index.
    if req.platforms.len() > 1 && outputs.iter().any(|o| matches!(o, Output::Docker { .. })) {
        bail!("docker exporter does not currently support exporting manifest lists (build one --platform for --load or -o type=docker, or use --push)");
    }
    let to_stdout = |o: &Output| {
        matches!(
            o,
            Output::Oci { dest: Dest::Stdout, .. } | Output::Tar { dest: Dest::Stdout } | Output::Docker { dest: Some(Dest::Stdout) }
        )
    };
    if outputs.iter().filter(|o| to_stdout(o)).count() > 1 {
        bail!("only one output can go to standard output");
    }
    Ok(outputs)
}

/// Checks a request's outputs and caches and walks its context: the `BuildSpec` to submit.
/// `current_builder`: the builder `kiln use` chose, for a request that names none.
pub fn prepare(req: &BuildRequest, current_builder: Option<String>, mode: Mode) -> anyhow::Result<Prepared> {
    let outputs = outputs(req)?;
    if outputs.is_empty() && mode != Mode::Quiet {
        eprintln!("WARNING: no output specified: the result will only be in the build cache (use --push, -o type=oci,dest=FILE or -o type=local,dest=DIR)");
    }
    let ignore = DockerIgnore::load(&req.context, &req.dockerfile_path)?;
    let cache_from = req.cache_from.iter().map(|c| CacheFrom::parse(c)).collect::<anyhow::Result<Vec<_>>>()?;
    let cache_to = req.cache_to.as_deref().map(CacheTo::parse).transpose()?;
    let zstd = outputs.iter().any(|o| matches!(o, Output::Registry { zstd: true, .. } | Output::Oci { zstd: true, .. }));
    let (attest, annotations) = attestations(req, &outputs, mode)?;
    let push = outputs.iter().any(Output::is_registry);
    let mut context = super::farm_build::manifest(&req.context, &ignore)?;
    // A local cache to import travels with the context: its config and layers.
    let mut cache_refs = Vec::new();
    for c in &cache_from {
        match c {
            CacheFrom::Registry { reference } => cache_refs.push(CacheRef::Registry { reference: reference.clone() }),
            CacheFrom::Local { src } => match super::farm_build::local_cache_files(src) {
                Ok((config, files)) => {
                    context.files.extend(files);
                    cache_refs.push(CacheRef::Uploaded { config });
                }
                Err(e) => eprintln!("WARNING: importing cache {}: {e:#}", src.display()),
            },
        }
    }
    let export = cache_to.as_ref().map(|c| match c {
        CacheTo::Local { max, .. } => CacheExport { max: *max, registry: None },
        CacheTo::Registry { reference, max } => CacheExport { max: *max, registry: Some(reference.clone()) },
    });
    // Secrets and ssh-agents stay in this process; steps ask for them while the build runs.
    let build_session = BuildSession::open(&req.secrets, &req.ssh)?;
    let mut fetched = Vec::new();
    let mut named_contexts = Vec::new();
    for raw in &req.build_contexts {
        let (spec, files, f) = super::named::parse(raw)?;
        context.files.extend(files);
        named_contexts.push(spec);
        fetched.extend(f);
    }
    let mut spec = BuildSpec {
        dockerfile: req.dockerfile_text.clone(),
        dockerfile_name: req.dockerfile_name.clone(),
        platforms: req.platforms.clone(),
        build_args: req.build_args.clone(),
        labels: req.labels.clone(),
        target: req.target.clone(),
        no_cache: req.no_cache,
        context: context.entries,
        tags: tags(req, &outputs),
        push,
        zstd,
        attest,
        annotations,
        builder: req.builder.clone().or(current_builder),
        insecure_registries: req.insecure_registries.clone(),
        submission: crate::node::random_hex(16)?,
        return_blobs: outputs.iter().any(Output::needs_blobs),
        cache_scope: String::new(),
        tenant: String::new(),
        cache_from: cache_refs,
        cache_to: export,
        secrets: build_session.secret_ids(),
        ssh: build_session.ssh_ids(),
        run: req.run.clone(),
        named_contexts,
        pull: req.pull,
        no_cache_filter: req.no_cache_filter.clone(),
        replicas: vec![],
        context_manifest: None,
    };
    let mut files = context.files;
    // Too many entries for one frame: they travel as a blob, uploaded with the files.
    let manifest = match spec.move_context_to_manifest()? {
        Some((digest, bytes)) => {
            let path = manifest_file(&bytes)?;
            files.insert(digest.to_string(), path.to_path_buf());
            Some(path)
        }
        None => None,
    };
    Ok(Prepared { spec, files, outputs, cache_to, session: build_session, _fetched: fetched, _manifest: manifest })
}

/// The context manifest blob in a file of the client's scratch directory, for the upload to
/// read (removed when the returned path is dropped).
fn manifest_file(bytes: &[u8]) -> anyhow::Result<tempfile::TempPath> {
    use anyhow::Context as _;
    let dir = super::home::kiln_home().join("client/tmp");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut f = tempfile::Builder::new().prefix("context-manifest-").tempfile_in(&dir).context("the context manifest")?;
    std::io::Write::write_all(&mut f, bytes).context("writing the context manifest")?;
    Ok(f.into_temp_path())
}

/// `--provenance`, `--sbom`, `--attest` and `--annotation`, with buildx's defaults: provenance
/// (`mode=min`) for registry and OCI outputs unless `BUILDX_NO_DEFAULT_ATTESTATIONS` is set.
fn attestations(req: &BuildRequest, outputs: &[Output], mode: Mode) -> anyhow::Result<(Attestations, Vec<Annotation>)> {
    let inline = outputs.iter().any(|o| matches!(o, Output::Registry { .. } | Output::Oci { .. }));
    let no_default = std::env::var("BUILDX_NO_DEFAULT_ATTESTATIONS").is_ok_and(|v| attest::parse_bool(&v).unwrap_or(!v.is_empty()));
    let flags = AttestFlags { provenance: req.provenance.clone(), sbom: req.sbom.clone(), attest: req.attest.clone() };
    let wanted = attest::resolve(&flags, true, true)?;
    if !inline && wanted.any() && mode != Mode::Quiet {
        eprintln!("WARNING: attestations are attached to registry and OCI outputs only (--push, -o type=registry, -o type=oci): none is made for this build");
    }
    let resolved = attest::resolve(&flags, inline, no_default)?;
    let mut annotations = Vec::new();
    for a in &req.annotations {
        annotations.extend(attest::parse_annotation(a)?);
    }
    Ok((resolved, annotations))
}
