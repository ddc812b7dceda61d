//! SLSA provenance v1 for one slice, with the fields BuildKit fills (its
//! docs/attestations/slsa-definitions.md): `mode=min` has the frontend, the Dockerfile's path,
//! the target, the materials with their digests and the builder's platform; `mode=max` adds
//! the build arguments and labels, the Dockerfile itself (`buildkit_metadata.source`), and
//! kiln's facts about the slice. Pure: the agent gathers the inputs.

use super::{Provenance, STATEMENT_TYPE};
use crate::digest::Digest;
use crate::platform::Platform;
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// BuildKit's `buildType` for v1 provenance.
pub const BUILD_TYPE: &str = "https://github.com/moby/buildkit/blob/master/docs/attestations/slsa-definitions.md";

/// An image the slice used (a `FROM` or a `COPY --from`), with the manifest it resolved to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Material {
    pub image: String,
    pub platform: Platform,
    pub digest: Digest,
}

pub struct Input<'a> {
    pub mode: &'a Provenance,
    pub dockerfile: &'a str,
    pub dockerfile_name: &'a str,
    /// Build arguments as given (never secrets: those are not build arguments).
    pub build_args: &'a [(String, String)],
    pub labels: &'a [(String, String)],
    pub target: Option<&'a str>,
    pub platform: &'a Platform,
    pub build_platform: &'a Platform,
    pub materials: &'a [Material],
    /// The agent that built the slice.
    pub agent: &'a str,
    pub emulated: bool,
    pub emulated_steps: &'a [String],
    /// Shared by every platform of one build (the build's submission id).
    pub invocation: &'a str,
    pub started: &'a str,
    pub finished: &'a str,
    /// No RUN step: nothing reached the network.
    pub hermetic: bool,
}

/// `pkg:docker/NAME@TAG?platform=os%2Farch` (a Package URL, as BuildKit writes materials and subjects).
pub fn purl(image: &str, platform: Option<&Platform>) -> String {
    let (name, version) = split_reference(image);
    let mut out = format!("pkg:docker/{name}");
    if let Some(v) = version {
        out.push('@');
        out.push_str(&v);
    }
    if let Some(p) = platform {
        out.push_str("?platform=");
        out.push_str(&p.to_string().replace('/', "%2F"));
    }
    out
}

/// `repo:tag` or `repo@sha256:..` → (repo, tag or digest); a `:` in a registry's port is no tag.
fn split_reference(image: &str) -> (String, Option<String>) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name.to_string(), Some(digest.to_string()));
    }
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) => (image[..slash + i].to_string(), Some(image[slash + i + 1..].to_string())),
        None => (image.to_string(), Some("latest".into())),
    }
}

fn sha256_map(d: &Digest) -> Value {
    json!({ "sha256": d.hex() })
}

/// The predicate (`https://slsa.dev/provenance/v1`).
pub fn predicate(i: &Input) -> Value {
    let mut args = Map::new();
    if let Some(t) = i.target {
        args.insert("target".into(), json!(t));
    }
    if i.dockerfile_name != "Dockerfile" && !i.dockerfile_name.ends_with("/Dockerfile") {
        args.insert("filename".into(), json!(i.dockerfile_name));
    }
    // As BuildKit: build arguments and labels are values a user chose, kept for mode=max.
    if i.mode.max {
        for (k, v) in i.build_args {
            args.insert(format!("build-arg:{k}"), json!(v));
        }
        for (k, v) in i.labels {
            args.insert(format!("label:{k}"), json!(v));
        }
    }
    let mut request = json!({
        "frontend": "dockerfile.v0",
        "args": args,
        "locals": [{ "name": "context" }, { "name": "dockerfile" }],
    });
    if i.mode.max {
        request["secrets"] = json!([]);
        request["ssh"] = json!([]);
    }
    let dependencies: Vec<Value> =
        i.materials.iter().map(|m| json!({ "uri": purl(&m.image, Some(&m.platform)), "digest": sha256_map(&m.digest) })).collect();
    let mut internal = json!({ "builderPlatform": i.build_platform.to_string() });
    let mut buildkit_metadata = json!({});
    if i.mode.max {
        let name = i.dockerfile_name.rsplit('/').next().unwrap_or("Dockerfile");
        buildkit_metadata["source"] = json!({
            "locations": {},
            "infos": [{
                "filename": name,
                "language": "Dockerfile",
                "data": base64::engine::general_purpose::STANDARD.encode(i.dockerfile.as_bytes()),
            }],
        });
        internal["buildConfig"] = json!({ "platform": i.platform.to_string() });
    }
    let mut metadata = json!({
        "invocationID": i.invocation,
        "startedOn": i.started,
        "finishedOn": i.finished,
        "buildkit_completeness": { "request": i.mode.max, "resolvedDependencies": false },
        "buildkit_hermetic": i.hermetic,
        "buildkit_reproducible": i.mode.reproducible,
        "buildkit_metadata": buildkit_metadata,
    });
    if i.mode.max {
        // kiln's extension: which agent of the farm built this platform, and how.
        metadata["kiln_slice"] = json!({
            "agent": i.agent,
            "platform": i.platform.to_string(),
            "emulated": i.emulated,
            "emulatedSteps": i.emulated_steps,
        });
    }
    json!({
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "configSource": { "path": i.dockerfile_name.rsplit('/').next().unwrap_or("Dockerfile") },
                "request": request,
            },
            "internalParameters": internal,
            "resolvedDependencies": dependencies,
        },
        "runDetails": {
            "builder": { "id": i.mode.builder_id.clone().unwrap_or_default() },
            "metadata": metadata,
        },
    })
}

/// An in-toto statement about the platform manifest `subject`, named once per tag (`_` with
/// no tag, as BuildKit names an unnamed image).
pub fn statement(predicate_type: &str, predicate: Value, tags: &[String], platform: &Platform, subject: &Digest) -> Value {
    let names: Vec<String> = if tags.is_empty() { vec!["_".into()] } else { tags.iter().map(|t| purl(t, Some(platform))).collect() };
    let subjects: Vec<Value> = names.into_iter().map(|n| json!({ "name": n, "digest": sha256_map(subject) })).collect();
    json!({
        "_type": STATEMENT_TYPE,
        "predicateType": predicate_type,
        "subject": subjects,
        "predicate": predicate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purls_split_tags_from_ports() {
        let arm: Platform = "linux/arm64".parse().unwrap();
        assert_eq!(purl("127.0.0.1:5000/base/busybox:1", Some(&arm)), "pkg:docker/127.0.0.1:5000/base/busybox@1?platform=linux%2Farm64");
        assert_eq!(purl("127.0.0.1:5000/busybox", None), "pkg:docker/127.0.0.1:5000/busybox@latest");
        let d = Digest::of(b"x");
        assert_eq!(purl(&format!("alpine@{d}"), None), format!("pkg:docker/alpine@{d}"));
    }

    #[test]
    fn max_carries_the_dockerfile_and_args_min_does_not() {
        let p: Platform = "linux/amd64".parse().unwrap();
        let materials = [Material { image: "busybox:1".into(), platform: p.clone(), digest: Digest::of(b"m") }];
        let max = Provenance { max: true, ..Default::default() };
        let min = Provenance::default();
        let args = [("A".to_string(), "1".to_string())];
        let input = |mode| Input {
            mode,
            dockerfile: "FROM busybox:1\n",
            dockerfile_name: "Dockerfile",
            build_args: &args,
            labels: &[],
            target: None,
            platform: &p,
            build_platform: &p,
            materials: &materials,
            agent: "a1",
            emulated: false,
            emulated_steps: &[],
            invocation: "x",
            started: "2024-01-01T00:00:00Z",
            finished: "2024-01-01T00:00:01Z",
            hermetic: true,
        };
        let v = predicate(&input(&max));
        assert_eq!(v["buildDefinition"]["externalParameters"]["request"]["args"]["build-arg:A"], "1");
        assert_eq!(v["runDetails"]["metadata"]["buildkit_metadata"]["source"]["infos"][0]["data"], "RlJPTSBidXN5Ym94OjEK");
        assert_eq!(v["runDetails"]["metadata"]["kiln_slice"]["agent"], "a1");
        assert_eq!(v["buildDefinition"]["resolvedDependencies"][0]["uri"], "pkg:docker/busybox@1?platform=linux%2Famd64");
        let v = predicate(&input(&min));
        assert!(v["buildDefinition"]["externalParameters"]["request"]["args"].get("build-arg:A").is_none());
        assert!(v["runDetails"]["metadata"]["buildkit_metadata"].get("source").is_none());
        assert_eq!(v["buildDefinition"]["resolvedDependencies"][0]["digest"]["sha256"], Digest::of(b"m").hex());
    }
}
