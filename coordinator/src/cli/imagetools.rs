//! `kiln imagetools inspect REF [--raw]` and `kiln imagetools create -t REF SRC..`, as in buildx.

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use kiln_shared::oci::{self, Descriptor, ImageConfig, Index, Manifest};
use kiln_shared::registry::{Fetched, Reference, RegistryClient};
use kiln_shared::store::ContentStore;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum ImagetoolsCommand {
    /// Show an image's index and per-platform manifests.
    Inspect {
        reference: String,
        /// Print the manifest or index exactly as the registry stores it.
        #[arg(long)]
        raw: bool,
        /// A Go template as buildx takes it: {{json .}}, {{json .Provenance}}, {{json .SBOM}}, {{json .Image}}, {{.Name}}...
        #[arg(long, conflicts_with = "raw")]
        format: Option<String>,
        #[arg(long = "insecure-registry")]
        insecure: Vec<String>,
    },
    /// Merge manifests or indexes into one index under every tag.
    Create(CreateArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Where to push the new index (repeatable).
    #[arg(short = 't', long = "tag", required = true)]
    pub tags: Vec<String>,
    /// Print the index instead of pushing it.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long = "insecure-registry")]
    pub insecure: Vec<String>,
    /// Source images (manifests or indexes).
    #[arg(required = true)]
    pub sources: Vec<String>,
}

fn is_index(f: &Fetched) -> bool {
    f.media_type == oci::MEDIA_INDEX || f.media_type == oci::DOCKER_MANIFEST_LIST
}

pub fn run(cmd: ImagetoolsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImagetoolsCommand::Inspect { reference, raw, format, insecure } => inspect(&reference, raw, format.as_deref(), &insecure),
        ImagetoolsCommand::Create(args) => create(args),
    }
}

fn inspect(reference: &str, raw: bool, format: Option<&str>, insecure: &[String]) -> anyhow::Result<ExitCode> {
    let r: Reference = reference.parse()?;
    if let Some(t) = format {
        super::inspect_format::check(t)?;
    }
    let client = RegistryClient::new(insecure);
    let f = client.get_manifest(&r)?;
    if let Some(t) = format {
        let store = ContentStore::open(&super::home::kiln_home().join("client/content"))?;
        let root = super::inspect_format::inputs(&client, &store, &r, &f)?;
        println!("{}", super::inspect_format::render(t, &root)?);
        return Ok(ExitCode::SUCCESS);
    }
    if raw {
        println!("{}", String::from_utf8_lossy(&f.bytes));
        return Ok(ExitCode::SUCCESS);
    }
    println!("Name:      {r}");
    println!("MediaType: {}", f.media_type);
    println!("Digest:    {}", f.digest);
    if is_index(&f) {
        let index: Index = serde_json::from_slice(&f.bytes).context("parsing the index")?;
        println!();
        println!("Manifests:");
        for (i, m) in index.manifests.iter().enumerate() {
            if i > 0 {
                println!();
            }
            let name = Reference { tag: None, ..r.with_digest(m.digest.clone()) };
            println!("  Name:        {name}");
            println!("  MediaType:   {}", m.media_type);
            if let Some(p) = &m.platform {
                println!("  Platform:    {}/{}{}", p.os, p.architecture, p.variant.as_ref().map(|v| format!("/{v}")).unwrap_or_default());
            }
            for (k, v) in &m.annotations {
                println!("  Annotation:  {k}={v}");
            }
        }
    } else {
        let m: Manifest = serde_json::from_slice(&f.bytes).context("parsing the manifest")?;
        println!("Config:    {}", m.config.digest);
        println!("Layers:    {}", m.layers.len());
    }
    Ok(ExitCode::SUCCESS)
}

fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let client = RegistryClient::new(&args.insecure);
    let home = super::home::kiln_home();
    let store = ContentStore::open(&home.join("agent/content"))?;
    let targets: Vec<Reference> = args.tags.iter().map(|t| t.parse()).collect::<Result<_, _>>()?;
    // Every source's manifests, with the platform each is for.
    let mut entries: Vec<(Reference, Descriptor)> = Vec::new();
    for src in &args.sources {
        let r: Reference = src.parse()?;
        let f = client.get_manifest(&r)?;
        if is_index(&f) {
            let index: Index = serde_json::from_slice(&f.bytes).context("parsing the index")?;
            entries.extend(index.manifests.into_iter().map(|m| (r.clone(), m)));
        } else {
            let m: Manifest = serde_json::from_slice(&f.bytes).context("parsing the manifest")?;
            client.fetch_blob(&r, &m.config.digest, &store)?;
            let cfg: ImageConfig = serde_json::from_slice(&store.read(&m.config.digest)?).context("parsing the image config")?;
            let mut d = Descriptor::new(&f.media_type, f.digest.clone(), f.bytes.len() as u64);
            d.platform = Some(oci::OciPlatform { architecture: cfg.architecture, os: cfg.os, variant: cfg.variant });
            entries.push((r, d));
        }
    }
    let mut seen = Vec::new();
    // Attestation manifests (`unknown/unknown`) are no platform's image: they come along.
    for (_, d) in entries.iter().filter(|(_, d)| !kiln_shared::attest::is_attestation(d)) {
        if let Some(p) = &d.platform {
            if seen.contains(p) {
                bail!("two sources provide {}/{}: an index can hold one manifest per platform", p.os, p.architecture);
            }
            seen.push(p.clone());
        }
    }
    let index = Index::new(entries.iter().map(|(_, d)| d.clone()).collect());
    let bytes = oci::to_json(&index);
    if args.dry_run {
        println!("{}", serde_json::to_string_pretty(&index)?);
        return Ok(ExitCode::SUCCESS);
    }
    for target in &targets {
        for (src, d) in &entries {
            // Copy the manifest and its blobs into the target repository unless it is the same one.
            let f = client.get_manifest(&src.with_digest(d.digest.clone()))?;
            if src.registry != target.registry || src.repository != target.repository {
                let m: Manifest = serde_json::from_slice(&f.bytes).context("parsing a manifest")?;
                for blob in std::iter::once(&m.config).chain(&m.layers) {
                    client.fetch_blob(src, &blob.digest, &store)?;
                    client.push_blob(target, &blob.digest, &store)?;
                }
            }
            client.put_manifest(target, d.digest.as_str(), &f.media_type, &f.bytes)?;
        }
        client.put_manifest(target, &target.reference(), oci::MEDIA_INDEX, &bytes)?;
        eprintln!("{target}: index {} ({} manifests)", kiln_shared::Digest::of(&bytes), entries.len());
    }
    Ok(ExitCode::SUCCESS)
}
