//! `kiln imagetools inspect REF --format TEMPLATE`: the values buildx gives its Go template
//! (`.Name`, `.Manifest`, `.Image`, `.Provenance`, `.SBOM`), read from the registry, and the
//! small part of Go's template language such formats use: `{{json PATH}}` and `{{PATH}}`, a
//! PATH being `.` or `.Field.key...`.

use anyhow::{bail, Context as _};
use kiln_shared::attest;
use kiln_shared::oci::{self, Index, Manifest};
use kiln_shared::registry::{Fetched, Reference, RegistryClient};
use kiln_shared::store::ContentStore;
use serde_json::{json, Map, Value};

/// What the template sees. With one platform, `image`, `Provenance` and `SBOM` are that
/// platform's; with several, maps from platform to each (as buildx does).
pub fn inputs(client: &RegistryClient, store: &ContentStore, r: &Reference, f: &Fetched) -> anyhow::Result<Value> {
    let manifest: Value = serde_json::from_slice(&f.bytes).context("parsing the manifest")?;
    let mut images = Map::new();
    let mut provenance = Map::new();
    let mut sbom = Map::new();
    let is_index = f.media_type == oci::MEDIA_INDEX || f.media_type == oci::DOCKER_MANIFEST_LIST;
    if is_index {
        let index: Index = serde_json::from_slice(&f.bytes).context("parsing the index")?;
        let platform_of = |digest: &str| {
            index
                .manifests
                .iter()
                .find(|m| m.digest.as_str() == digest)
                .and_then(|m| m.platform.as_ref())
                .map(|p| format!("{}/{}{}", p.os, p.architecture, p.variant.as_ref().map(|v| format!("/{v}")).unwrap_or_default()))
        };
        for m in &index.manifests {
            let fetched = client.get_manifest(&r.with_digest(m.digest.clone()))?;
            let body: Manifest = serde_json::from_slice(&fetched.bytes).context("parsing a manifest of the index")?;
            if attest::is_attestation(m) {
                let Some(platform) = m.annotations.get(attest::REFERENCE_DIGEST).and_then(|d| platform_of(d)) else { continue };
                for l in &body.layers {
                    let statement = blob_json(client, store, r, &l.digest)?;
                    match l.annotations.get(attest::PREDICATE_TYPE).map(String::as_str) {
                        Some(attest::SLSA_V1) | Some("https://slsa.dev/provenance/v0.2") => {
                            provenance.insert(platform.clone(), json!({ "SLSA": statement["predicate"] }));
                        }
                        Some(attest::SPDX_DOCUMENT) => {
                            sbom.insert(platform.clone(), json!({ "SPDX": statement["predicate"] }));
                        }
                        _ => {}
                    }
                }
            } else if let Some(p) = platform_of(m.digest.as_str()) {
                images.insert(p, blob_json(client, store, r, &body.config.digest)?);
            }
        }
    } else {
        let body: Manifest = serde_json::from_slice(&f.bytes).context("parsing the manifest")?;
        let config = blob_json(client, store, r, &body.config.digest)?;
        let p = format!("{}/{}", config["os"].as_str().unwrap_or_default(), config["architecture"].as_str().unwrap_or_default());
        images.insert(p, config);
    }
    let flatten = |m: Map<String, Value>| {
        if images.len() == 1 {
            m.into_iter().next().map(|(_, v)| v).unwrap_or(Value::Null)
        } else {
            Value::Object(m)
        }
    };
    let single = images.len() == 1;
    let image = if single { images.values().next().cloned().unwrap_or(Value::Null) } else { Value::Object(images.clone()) };
    Ok(json!({
        "name": r.to_string(),
        "manifest": manifest,
        "image": image,
        "Provenance": flatten(provenance),
        "SBOM": flatten(sbom),
    }))
}

fn blob_json(client: &RegistryClient, store: &ContentStore, r: &Reference, d: &kiln_shared::Digest) -> anyhow::Result<Value> {
    client.fetch_blob(r, d, store)?;
    serde_json::from_slice(&store.read(d)?).with_context(|| format!("parsing blob {d} as JSON"))
}

/// Renders `template` against `root`: `{{json PATH}}` prints JSON, `{{PATH}}` a string as it
/// is and anything else as JSON. Other actions are refused, naming them.
pub fn render(template: &str, root: &Value) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").with_context(|| format!("--format {template:?}: an action is not closed with }}}}"))?;
        let action = after[..end].trim().trim_start_matches('-').trim_end_matches('-').trim();
        let (json_fn, path) = match action.strip_prefix("json ") {
            Some(p) => (true, p.trim()),
            None => (false, action),
        };
        let v = lookup(root, path).with_context(|| format!("--format: {{{{{action}}}}} is not supported (kiln knows {{{{json .PATH}}}} and {{{{.PATH}}}} with .Name, .Manifest, .Image, .Provenance, .SBOM)"))?;
        match (json_fn, &v) {
            (false, Value::String(s)) => out.push_str(s),
            (false, Value::Null) => out.push_str("<no value>"),
            _ => out.push_str(&serde_json::to_string(&v)?),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `.` or `.Field.key...`: the first field by buildx's names, then JSON keys as written.
fn lookup(root: &Value, path: &str) -> Option<Value> {
    if path == "." {
        return Some(root.clone());
    }
    let mut parts = path.strip_prefix('.')?.split('.');
    let first = match parts.next()? {
        "Name" => "name",
        "Manifest" => "manifest",
        "Image" => "image",
        "Provenance" => "Provenance",
        "SBOM" => "SBOM",
        _ => return None,
    };
    let mut v = root.get(first)?.clone();
    for p in parts {
        if p.is_empty() || !p.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
        // Go templates give the zero value for a missing map key.
        v = v.get(p).cloned().unwrap_or(Value::Null);
    }
    Some(v)
}

/// Checks a template before anything is fetched.
pub fn check(template: &str) -> anyhow::Result<()> {
    if render(template, &json!({ "name": "", "manifest": {}, "image": {}, "Provenance": {}, "SBOM": {} })).is_err() {
        bail!("--format {template:?}: kiln supports {{{{json .PATH}}}} and {{{{.PATH}}}} with .Name, .Manifest, .Image, .Provenance, .SBOM (and `.` for all)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_json_and_fields() {
        let root =
            json!({ "name": "r", "manifest": { "schemaVersion": 2 }, "image": {}, "Provenance": { "SLSA": { "a": 1 } }, "SBOM": {} });
        assert_eq!(render("{{json .Provenance}}", &root).unwrap(), r#"{"SLSA":{"a":1}}"#);
        assert_eq!(render("n={{.Name}} v={{ json .Manifest.schemaVersion }}", &root).unwrap(), "n=r v=2");
        assert_eq!(render("{{json .SBOM.SPDX}}", &root).unwrap(), "null");
        assert!(render("{{range .SBOM}}", &root).is_err());
        assert!(render("{{json .Nope}}", &root).is_err());
        assert!(check("{{json .}}").is_ok());
        assert!(check("{{ .Foo }}").is_err());
    }
}
