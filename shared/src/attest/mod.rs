//! Attestations and annotations as BuildKit lays them out: what `--provenance`, `--sbom`,
//! `--attest` and `--annotation` ask for (parsed here, pure), the in-toto statements
//! ([`provenance`], [`sbom`]) and where each annotation goes. The agent that builds a slice
//! makes its attestation manifest; the leader puts it in the index beside the image.
//!
//! Layout (BuildKit's docs/attestations/attestation-storage.md): one attestation manifest per
//! platform manifest, listed in the index with platform `unknown/unknown` and the annotations
//! [`REFERENCE_TYPE`] = [`ATTESTATION_MANIFEST`] and [`REFERENCE_DIGEST`] = the platform
//! manifest's digest; each layer is one in-toto statement ([`MEDIA_IN_TOTO`]) annotated with
//! its [`PREDICATE_TYPE`].

pub mod provenance;
pub mod sbom;

use crate::oci::Descriptor;
use crate::platform::Platform;
use serde::{Deserialize, Serialize};

pub const MEDIA_IN_TOTO: &str = "application/vnd.in-toto+json";
pub const PREDICATE_TYPE: &str = "in-toto.io/predicate-type";
pub const REFERENCE_TYPE: &str = "vnd.docker.reference.type";
pub const REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";
pub const ATTESTATION_MANIFEST: &str = "attestation-manifest";
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v0.1";
pub const SLSA_V1: &str = "https://slsa.dev/provenance/v1";
pub const SPDX_DOCUMENT: &str = "https://spdx.dev/Document";

/// Whether an index entry is an attestation manifest rather than an image for a platform.
/// Readers that pick a platform's image must skip these (their platform is `unknown/unknown`).
pub fn is_attestation(d: &Descriptor) -> bool {
    d.annotations.get(REFERENCE_TYPE).is_some_and(|t| t == ATTESTATION_MANIFEST)
        || d.platform.as_ref().is_some_and(|p| p.os == "unknown" && p.architecture == "unknown")
}

/// What attestations a build attaches to each platform's image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestations {
    pub provenance: Option<Provenance>,
    /// An SPDX SBOM of the image's dpkg and apk packages, made where the filesystem is.
    pub sbom: bool,
}

impl Attestations {
    pub fn any(&self) -> bool {
        self.provenance.is_some() || self.sbom
    }
}

/// `--attest type=provenance,...`: SLSA provenance v1.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// `mode=max`: the Dockerfile, the build arguments and the slice's facts as well.
    pub max: bool,
    /// `builder-id=URL` (`runDetails.builder.id`).
    pub builder_id: Option<String>,
    /// `reproducible=true` (`buildkit_reproducible`).
    pub reproducible: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    #[error("--attest {0:?}: the type is missing (expected type=provenance|sbom,...)")]
    NoType(String),
    #[error("--attest {0:?}: unknown attestation type {1:?} (expected provenance or sbom)")]
    UnknownType(String, String),
    #[error("--attest: attestation type {0} is given twice")]
    Duplicate(String),
    #[error("--attest {spec:?}: {message}")]
    Option { spec: String, message: String },
    #[error("--annotation {spec:?}: {message}")]
    Annotation { spec: String, message: String },
}

/// The attestation flags as typed. `--provenance X` and `--sbom X` are buildx's shorthands
/// for `--attest type=provenance,X` (a boolean X means `disabled=!X`).
#[derive(Clone, Debug, Default)]
pub struct AttestFlags {
    pub provenance: Option<String>,
    pub sbom: Option<String>,
    pub attest: Vec<String>,
}

/// What the flags ask for. `inline` says whether some output carries attestations in its
/// index (registry and OCI outputs); `no_default` is `BUILDX_NO_DEFAULT_ATTESTATIONS`. As in
/// buildx, provenance is on (`mode=min`) unless disabled or no output can hold it; the SBOM
/// only when asked for.
pub fn resolve(flags: &AttestFlags, inline: bool, no_default: bool) -> Result<Attestations, AttestError> {
    let mut specs = flags.attest.clone();
    for (kind, v) in [("provenance", &flags.provenance), ("sbom", &flags.sbom)] {
        if let Some(v) = v {
            specs.push(canonical(kind, v));
        }
    }
    let mut out = Attestations::default();
    let mut seen: Vec<String> = Vec::new();
    for spec in &specs {
        let fields: Vec<(String, String)> = spec
            .split(',')
            .filter(|f| !f.trim().is_empty())
            .map(|f| match f.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim().to_string()),
                None => (f.trim().to_ascii_lowercase(), String::new()),
            })
            .collect();
        let kind = fields.iter().find(|(k, _)| k == "type").map(|(_, v)| v.clone()).ok_or_else(|| AttestError::NoType(spec.clone()))?;
        if seen.contains(&kind) {
            return Err(AttestError::Duplicate(kind));
        }
        seen.push(kind.clone());
        let bad = |message: String| AttestError::Option { spec: spec.clone(), message };
        let mut disabled = false;
        let mut p = Provenance::default();
        for (k, v) in fields.iter().filter(|(k, _)| k != "type") {
            match (kind.as_str(), k.as_str()) {
                (_, "disabled") => disabled = parse_bool(v).ok_or_else(|| bad(format!("disabled={v:?} is not a boolean")))?,
                ("provenance", "mode") => {
                    p.max = match v.as_str() {
                        "min" => false,
                        "max" => true,
                        _ => return Err(bad(format!("mode={v:?}: expected min or max"))),
                    }
                }
                ("provenance", "builder-id") => p.builder_id = Some(v.clone()),
                ("provenance", "reproducible") => {
                    p.reproducible = parse_bool(v).ok_or_else(|| bad(format!("reproducible={v:?} is not a boolean")))?
                }
                ("provenance", "version") if v == "v1" => {}
                ("provenance", "version") => return Err(bad(format!("version={v:?}: kiln writes SLSA provenance v1 only (version=v1)"))),
                // buildx's default carries this; kiln attaches attestations to inline outputs only anyway.
                ("provenance", "inline-only") => {}
                ("sbom", "generator") => {
                    return Err(bad(format!("generator={v:?}: kiln has its own scanner (dpkg and apk databases), no generator image")))
                }
                _ if kind == "provenance" || kind == "sbom" => return Err(bad(format!("unknown option {k:?}"))),
                _ => return Err(AttestError::UnknownType(spec.clone(), kind.clone())),
            }
        }
        match kind.as_str() {
            "provenance" => out.provenance = (!disabled).then_some(p),
            "sbom" => out.sbom = !disabled,
            _ => return Err(AttestError::UnknownType(spec.clone(), kind.clone())),
        }
    }
    if !seen.iter().any(|k| k == "provenance") && !no_default {
        out.provenance = Some(Provenance::default());
    }
    if !inline {
        return Ok(Attestations::default());
    }
    Ok(out)
}

/// buildx's `CanonicalizeAttest`: `true`/`false` become `disabled=`, anything else is options.
fn canonical(kind: &str, v: &str) -> String {
    match parse_bool(v) {
        Some(b) => format!("type={kind},disabled={}", !b),
        None => format!("type={kind},{v}"),
    }
}

/// Go's `strconv.ParseBool`, which buildx uses.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Where an annotation goes (BuildKit's `annotation-*` exporter options).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnnotationLevel {
    /// The platform manifest itself (the default).
    Manifest,
    /// The platform manifest's descriptor in the index.
    ManifestDescriptor,
    /// The index.
    Index,
    /// The index's descriptor in an OCI layout's `index.json` (OCI outputs only).
    IndexDescriptor,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Annotation {
    pub level: AnnotationLevel,
    /// Only this platform's manifest (`manifest[linux/arm64]:K=V`); `None`: every platform.
    pub platform: Option<Platform>,
    pub key: String,
    pub value: String,
}

/// `--annotation [TYPE[PLATFORM],...:]KEY=VALUE`, as buildx parses it: TYPE is `manifest`
/// (the default), `manifest-descriptor`, `index` or `index-descriptor`; one flag may name
/// several types.
pub fn parse_annotation(spec: &str) -> Result<Vec<Annotation>, AttestError> {
    let bad = |message: &str| AttestError::Annotation { spec: spec.to_string(), message: message.to_string() };
    let (kv_start, types) = match spec.find('=') {
        // A `:` before the first `=` ends the type list (keys such as `org.x` have none).
        Some(eq) => match spec[..eq].rfind(':') {
            Some(colon) => (colon + 1, Some(&spec[..colon])),
            None => (0, None),
        },
        None => return Err(bad("expected KEY=VALUE")),
    };
    let (key, value) = spec[kv_start..].split_once('=').ok_or_else(|| bad("expected KEY=VALUE"))?;
    if key.is_empty() {
        return Err(bad("the key is empty"));
    }
    let mut out = Vec::new();
    let types = types.map(|t| t.split(',').collect::<Vec<_>>()).unwrap_or_else(|| vec!["manifest"]);
    for t in types {
        let (name, platform) = match t.split_once('[') {
            Some((name, rest)) => {
                let p = rest.strip_suffix(']').ok_or_else(|| bad("a platform is written TYPE[os/arch]"))?;
                (name, Some(p.parse::<Platform>().map_err(|e| bad(&e.to_string()))?))
            }
            None => (t, None),
        };
        let level = match name {
            "manifest" => AnnotationLevel::Manifest,
            "manifest-descriptor" => AnnotationLevel::ManifestDescriptor,
            "index" => AnnotationLevel::Index,
            "index-descriptor" => AnnotationLevel::IndexDescriptor,
            _ => return Err(bad(&format!("unknown type {name:?} (expected manifest, manifest-descriptor, index or index-descriptor)"))),
        };
        if platform.is_some() && matches!(level, AnnotationLevel::Index | AnnotationLevel::IndexDescriptor) {
            return Err(bad("an index is for every platform: only manifest annotations name one"));
        }
        out.push(Annotation { level, platform, key: key.to_string(), value: value.to_string() });
    }
    Ok(out)
}

/// The annotations of `level` that apply to `platform` (`None`: the index's), in order.
pub fn annotations_for<'a>(
    all: &'a [Annotation],
    level: AnnotationLevel,
    platform: Option<&'a Platform>,
) -> impl Iterator<Item = (&'a String, &'a String)> + 'a {
    all.iter().filter(move |a| a.level == level && (a.platform.is_none() || a.platform.as_ref() == platform)).map(|a| (&a.key, &a.value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(provenance: Option<&str>, sbom: Option<&str>, attest: &[&str]) -> AttestFlags {
        AttestFlags {
            provenance: provenance.map(str::to_string),
            sbom: sbom.map(str::to_string),
            attest: attest.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn provenance_is_on_by_default_for_inline_outputs_only() {
        let min = Some(Provenance::default());
        assert_eq!(resolve(&flags(None, None, &[]), true, false).unwrap(), Attestations { provenance: min.clone(), sbom: false });
        assert_eq!(resolve(&flags(None, None, &[]), false, false).unwrap(), Attestations::default());
        assert_eq!(resolve(&flags(None, None, &[]), true, true).unwrap(), Attestations::default());
        assert_eq!(resolve(&flags(Some("false"), None, &[]), true, false).unwrap(), Attestations::default());
        let max = resolve(&flags(Some("mode=max"), Some("true"), &[]), true, false).unwrap();
        assert_eq!(max, Attestations { provenance: Some(Provenance { max: true, ..Default::default() }), sbom: true });
        let a = resolve(&flags(None, None, &["type=sbom", "type=provenance,disabled=true"]), true, false).unwrap();
        assert_eq!(a, Attestations { provenance: None, sbom: true });
        let b = resolve(&flags(None, Some("false"), &["type=provenance,mode=min,builder-id=https://ci/1"]), true, true).unwrap();
        assert_eq!(b.provenance.and_then(|p| p.builder_id).as_deref(), Some("https://ci/1"));
        assert!(!b.sbom);
    }

    #[test]
    fn attest_errors_name_the_problem() {
        let e = |f: AttestFlags| resolve(&f, true, false).unwrap_err().to_string();
        assert!(e(flags(None, None, &["mode=max"])).contains("the type is missing"));
        assert!(e(flags(None, None, &["type=vex"])).contains("unknown attestation type \"vex\""));
        assert!(e(flags(Some("mode=max"), None, &["type=provenance"])).contains("given twice"));
        assert!(e(flags(Some("mode=huge"), None, &[])).contains("expected min or max"));
        assert!(e(flags(None, Some("generator=docker/scout"), &[])).contains("generator"));
        assert!(e(flags(Some("version=v0.2"), None, &[])).contains("v1 only"));
    }

    #[test]
    fn annotations_are_placed_as_buildx_places_them() {
        let a = parse_annotation("org.opencontainers.image.title=kiln").unwrap();
        assert_eq!(
            a,
            vec![Annotation {
                level: AnnotationLevel::Manifest,
                platform: None,
                key: "org.opencontainers.image.title".into(),
                value: "kiln".into()
            }]
        );
        let a = parse_annotation("index,manifest-descriptor:k=v=w").unwrap();
        assert_eq!(a.iter().map(|a| a.level).collect::<Vec<_>>(), vec![AnnotationLevel::Index, AnnotationLevel::ManifestDescriptor]);
        assert_eq!(a[0].value, "v=w");
        let arm: Platform = "linux/arm64".parse().unwrap();
        let a = parse_annotation("manifest[linux/arm64]:k=v").unwrap();
        assert_eq!(a[0].platform.as_ref(), Some(&arm));
        let amd: Platform = "linux/amd64".parse().unwrap();
        assert_eq!(annotations_for(&a, AnnotationLevel::Manifest, Some(&arm)).count(), 1);
        assert_eq!(annotations_for(&a, AnnotationLevel::Manifest, Some(&amd)).count(), 0);
        assert!(parse_annotation("k").is_err());
        assert!(parse_annotation("=v").is_err());
        assert!(parse_annotation("layer:k=v").unwrap_err().to_string().contains("unknown type \"layer\""));
        assert!(parse_annotation("index[linux/amd64]:k=v").is_err());
        assert!(parse_annotation("manifest[linux/sparc]:k=v").is_err());
    }
}
