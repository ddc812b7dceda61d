//! Attestations and annotations of a built image, made on the agent where its layers are:
//! `--annotation`s on the platform manifest and its descriptor, and the attestation manifest
//! (SLSA provenance, an SPDX SBOM of the dpkg and apk databases) whose statements are about
//! that manifest. The same on an embedded farm and a real one: the worker calls these for
//! every slice before it publishes.

use super::{rfc3339, Agent, EngineError, SliceResult};
use crate::layers::Layer;
use kiln_shared::api::BuildSpec;
use kiln_shared::attest::{self, provenance, sbom, AnnotationLevel};
use kiln_shared::digest::Digest;
use kiln_shared::oci::{self, Descriptor, ImageConfig, Manifest, OciPlatform, RootFs};
use kiln_shared::Platform;
use sha1::Digest as _;
use std::collections::BTreeMap;
use std::io::Read;

/// A database file larger than this is not a package database (and is not held in memory).
const MAX_DATABASE_BYTES: u64 = 256 << 20;

impl Agent {
    /// Applies the `manifest` annotations for `platform` to the image's manifest (a new
    /// manifest, so a new digest) and the `manifest-descriptor` ones to its descriptor.
    pub fn annotate(
        &self,
        image: (Descriptor, Vec<Digest>),
        spec: &BuildSpec,
        platform: &Platform,
    ) -> Result<(Descriptor, Vec<Digest>), EngineError> {
        let (mut desc, mut blobs) = image;
        let on_manifest: BTreeMap<String, String> = attest::annotations_for(&spec.annotations, AnnotationLevel::Manifest, Some(platform))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !on_manifest.is_empty() {
            let mut manifest: Manifest = serde_json::from_slice(&self.store.read(&desc.digest)?)
                .map_err(|e| EngineError::Copy(format!("reading back the manifest: {e}")))?;
            manifest.annotations.extend(on_manifest);
            let bytes = oci::to_json(&manifest);
            let digest = self.store.put(&bytes)?;
            desc = Descriptor { digest: digest.clone(), size: bytes.len() as u64, ..desc };
            blobs.pop();
            blobs.push(digest);
        }
        for (k, v) in attest::annotations_for(&spec.annotations, AnnotationLevel::ManifestDescriptor, Some(platform)) {
            desc.annotations.insert(k.clone(), v.clone());
        }
        Ok((desc, blobs))
    }

    /// The attestation manifest for `manifest` (the slice's published image), written into the
    /// store: its descriptor (platform `unknown/unknown`, pointing at `manifest`) and every
    /// blob, the manifest last. `None` when the build attaches no attestations.
    pub fn attest(
        &self,
        spec: &BuildSpec,
        agent: &str,
        started_secs: u64,
        slice: &SliceResult,
        manifest: &Descriptor,
    ) -> Result<Option<(Descriptor, Vec<Digest>)>, EngineError> {
        if !spec.attest.any() {
            return Ok(None);
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let mut statements: Vec<(&str, Vec<u8>)> = Vec::new();
        if let Some(mode) = &spec.attest.provenance {
            let (started, finished) = (rfc3339(started_secs), rfc3339(now));
            let input = provenance::Input {
                mode,
                dockerfile: &spec.dockerfile,
                dockerfile_name: &spec.dockerfile_name,
                build_args: &spec.build_args,
                labels: &spec.labels,
                target: spec.target.as_deref(),
                platform: &slice.platform,
                build_platform: &slice.build_platform,
                materials: &slice.materials,
                agent,
                emulated: slice.emulated,
                emulated_steps: &slice.emulated_steps,
                invocation: &spec.submission,
                started: &started,
                finished: &finished,
                hermetic: slice.hermetic,
            };
            let statement =
                provenance::statement(attest::SLSA_V1, provenance::predicate(&input), &spec.tags, &slice.platform, &manifest.digest);
            statements.push((attest::SLSA_V1, oci::to_json(&statement)));
        }
        if spec.attest.sbom {
            let (databases, files) = scan(&self.store, &slice.layers, &slice.platform)?;
            let packages = sbom::packages(&databases);
            let name = spec.tags.first().cloned().unwrap_or_else(|| "sbom".into());
            let namespace = format!("https://kiln.invalid/spdx/{}/{}", manifest.digest.hex(), slice.platform.to_string().replace('/', "-"));
            let doc = sbom::spdx(&name, &namespace, &rfc3339(now), &packages, &files);
            let statement = provenance::statement(attest::SPDX_DOCUMENT, doc, &spec.tags, &slice.platform, &manifest.digest);
            statements.push((attest::SPDX_DOCUMENT, oci::to_json(&statement)));
        }
        let mut layers = Vec::new();
        let mut blobs = Vec::new();
        for (predicate_type, bytes) in statements {
            let digest = self.store.put(&bytes)?;
            let mut d = Descriptor::new(attest::MEDIA_IN_TOTO, digest.clone(), bytes.len() as u64);
            d.annotations.insert(attest::PREDICATE_TYPE.into(), predicate_type.into());
            layers.push(d);
            blobs.push(digest);
        }
        // An image config only for compatibility (attestation-storage.md): readers ignore it.
        let config = ImageConfig {
            architecture: "unknown".into(),
            os: "unknown".into(),
            rootfs: RootFs { kind: "layers".into(), diff_ids: blobs.clone() },
            ..Default::default()
        };
        let config_bytes = oci::to_json(&config);
        let config_digest = self.store.put(&config_bytes)?;
        blobs.push(config_digest.clone());
        let m = Manifest {
            schema_version: 2,
            media_type: Some(oci::MEDIA_MANIFEST.into()),
            config: Descriptor::new(oci::MEDIA_CONFIG, config_digest, config_bytes.len() as u64),
            layers,
            annotations: Default::default(),
        };
        let bytes = oci::to_json(&m);
        let digest = self.store.put(&bytes)?;
        blobs.push(digest.clone());
        let mut desc = Descriptor::new(oci::MEDIA_MANIFEST, digest, bytes.len() as u64);
        desc.platform = Some(OciPlatform { architecture: "unknown".into(), os: "unknown".into(), variant: None });
        desc.annotations.insert(attest::REFERENCE_TYPE.into(), attest::ATTESTATION_MANIFEST.into());
        desc.annotations.insert(attest::REFERENCE_DIGEST.into(), manifest.digest.to_string());
        Ok(Some((desc, blobs)))
    }
}

/// Reads the image's layers in order, as the merged filesystem would show them: the package
/// database files (path → bytes) and every regular file's hashes (path → hashes), with
/// whiteouts and opaque directories applied. Paths are relative, without a leading `/`.
type Scanned = (BTreeMap<String, Vec<u8>>, BTreeMap<String, sbom::FileHashes>);

fn scan(store: &kiln_shared::store::ContentStore, layers: &[Layer], platform: &Platform) -> Result<Scanned, EngineError> {
    let mut databases: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut files: BTreeMap<String, sbom::FileHashes> = BTreeMap::new();
    for layer in layers {
        let err = |source| EngineError::Sbom { platform: platform.to_string(), layer: layer.digest.to_string(), source };
        let reader = crate::layers::open(store, &layer.digest)?;
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(err)? {
            let mut entry = entry.map_err(err)?;
            let raw = entry.path().map_err(err)?.to_string_lossy().into_owned();
            let path = raw.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/').to_string();
            let (dir, name) = match path.rsplit_once('/') {
                Some((d, n)) => (d.to_string(), n.to_string()),
                None => (String::new(), path.clone()),
            };
            if name == ".wh..wh..opq" {
                let prefix = format!("{dir}/");
                files.retain(|p, _| !p.starts_with(&prefix));
                databases.retain(|p, _| !p.starts_with(&prefix));
                continue;
            }
            if let Some(hidden) = name.strip_prefix(".wh.") {
                let gone = if dir.is_empty() { hidden.to_string() } else { format!("{dir}/{hidden}") };
                let under = format!("{gone}/");
                files.retain(|p, _| p != &gone && !p.starts_with(&under));
                databases.retain(|p, _| p != &gone && !p.starts_with(&under));
                continue;
            }
            let kind = entry.header().entry_type();
            if kind.is_hard_link() {
                let target = entry
                    .link_name()
                    .map_err(err)?
                    .map(|t| t.to_string_lossy().trim_start_matches("./").trim_start_matches('/').to_string());
                if let Some(h) = target.and_then(|t| files.get(&t).cloned()) {
                    files.insert(path, h);
                }
                continue;
            }
            // Anything else (a directory, a symlink) replaces a file of that name.
            files.remove(&path);
            databases.remove(&path);
            if !kind.is_file() {
                continue;
            }
            let keep = sbom::is_database(&path) && entry.header().size().unwrap_or(0) <= MAX_DATABASE_BYTES;
            let (mut s1, mut s256) = (sha1::Sha1::new(), sha2::Sha256::new());
            let mut kept = Vec::new();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = entry.read(&mut buf).map_err(err)?;
                if n == 0 {
                    break;
                }
                s1.update(&buf[..n]);
                sha2::Digest::update(&mut s256, &buf[..n]);
                if keep {
                    kept.extend_from_slice(&buf[..n]);
                }
            }
            files.insert(
                path.clone(),
                sbom::FileHashes { sha1: hex::encode(s1.finalize()), sha256: hex::encode(sha2::Digest::finalize(s256)) },
            );
            if keep {
                databases.insert(path, kept);
            }
        }
    }
    Ok((databases, files))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_shared::store::ContentStore;

    /// A plain tar layer of (path, contents) regular files (`None`: a hard link to the path given).
    fn layer(store: &ContentStore, entries: &[(&str, &str, Option<&str>)]) -> Layer {
        let mut b = tar::Builder::new(Vec::new());
        for (path, text, link) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            match link {
                Some(target) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, path, target).expect("link");
                }
                None => {
                    h.set_size(text.len() as u64);
                    h.set_cksum();
                    b.append_data(&mut h, path, text.as_bytes()).expect("file");
                }
            }
        }
        let bytes = b.into_inner().expect("tar");
        let digest = store.put(&bytes).expect("put");
        Layer { digest: digest.clone(), diff_id: digest, size: bytes.len() as u64, media_type: oci::MEDIA_LAYER_TAR.into() }
    }

    #[test]
    fn the_scan_sees_the_merged_filesystem() {
        let dir = std::env::temp_dir().join(format!("kiln-attest-scan-{}", std::process::id()));
        let store = ContentStore::open(&dir).expect("store");
        let layers = [
            layer(
                &store,
                &[("var/lib/dpkg/status", "Package: a\n", None), ("usr/bin/a", "a1", None), ("opt/x/f", "x", None), ("gone", "g", None)],
            ),
            layer(
                &store,
                &[
                    ("./usr/bin/a", "a2", None),
                    ("usr/bin/hard", "", Some("usr/bin/a")),
                    ("opt/x/.wh..wh..opq", "", None),
                    (".wh.gone", "", None),
                    ("var/lib/dpkg/info/a.list", "/usr/bin/a\n", None),
                ],
            ),
        ];
        let (db, files) = scan(&store, &layers, &"linux/amd64".parse().expect("platform")).expect("scan");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(db.keys().collect::<Vec<_>>(), ["var/lib/dpkg/info/a.list", "var/lib/dpkg/status"]);
        assert_eq!(files.keys().collect::<Vec<_>>(), ["usr/bin/a", "usr/bin/hard", "var/lib/dpkg/info/a.list", "var/lib/dpkg/status"]);
        // The later layer's content wins, and the hard link has its target's hashes.
        assert_eq!(files["usr/bin/a"].sha1, hex::encode(sha1::Sha1::digest(b"a2")));
        assert_eq!(files["usr/bin/hard"], files["usr/bin/a"]);
    }
}
