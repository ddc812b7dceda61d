//! OCI image types (image-spec 1.1): descriptors, manifests, indexes and image configs, with
//! the Docker schema 2 media types accepted on the way in.

use crate::digest::Digest;
use crate::platform::Platform;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// A descriptor's platform. Serialized as image-spec JSON for JSON, with every field for the
/// wire (see [`binary`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciPlatform {
    pub architecture: String,
    pub os: String,
    pub variant: Option<String>,
}

impl From<&Platform> for OciPlatform {
    fn from(p: &Platform) -> Self {
        OciPlatform { architecture: p.arch().to_string(), os: p.os().to_string(), variant: p.variant().map(str::to_string) }
    }
}

impl OciPlatform {
    /// The kiln platform, if the descriptor names one kiln knows.
    pub fn to_platform(&self) -> Option<Platform> {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref()).ok()
    }
}

/// A content descriptor. Serialized as image-spec JSON (empty fields left out) for JSON, with
/// every field for the wire (see [`binary`]): descriptors travel typed in kiln's messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub platform: Option<OciPlatform>,
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor { media_type: media_type.to_string(), digest, size, platform: None, annotations: BTreeMap::new() }
    }
}

/// A descriptor and its platform, serialized by format: image-spec JSON (with empty fields left
/// out, as registries and digests expect) for human-readable formats, and every field in order
/// for binary ones (bincode, kiln's wire, cannot skip fields: it has no field names).
mod binary {
    use super::{Descriptor, Digest, OciPlatform};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    #[derive(Serialize, Deserialize)]
    #[serde(rename = "OciPlatform")]
    struct JsonPlatform {
        architecture: String,
        os: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        variant: Option<String>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename = "OciPlatform")]
    struct WirePlatform {
        architecture: String,
        os: String,
        variant: Option<String>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename = "Descriptor", rename_all = "camelCase")]
    struct JsonDescriptor {
        media_type: String,
        digest: Digest,
        size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        platform: Option<OciPlatform>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        annotations: BTreeMap<String, String>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename = "Descriptor")]
    struct WireDescriptor {
        media_type: String,
        digest: Digest,
        size: u64,
        platform: Option<OciPlatform>,
        annotations: BTreeMap<String, String>,
    }

    impl Serialize for OciPlatform {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let OciPlatform { architecture, os, variant } = self.clone();
            if s.is_human_readable() {
                JsonPlatform { architecture, os, variant }.serialize(s)
            } else {
                WirePlatform { architecture, os, variant }.serialize(s)
            }
        }
    }

    impl<'de> Deserialize<'de> for OciPlatform {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            if d.is_human_readable() {
                let JsonPlatform { architecture, os, variant } = JsonPlatform::deserialize(d)?;
                Ok(OciPlatform { architecture, os, variant })
            } else {
                let WirePlatform { architecture, os, variant } = WirePlatform::deserialize(d)?;
                Ok(OciPlatform { architecture, os, variant })
            }
        }
    }

    impl Serialize for Descriptor {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let Descriptor { media_type, digest, size, platform, annotations } = self.clone();
            if s.is_human_readable() {
                JsonDescriptor { media_type, digest, size, platform, annotations }.serialize(s)
            } else {
                WireDescriptor { media_type, digest, size, platform, annotations }.serialize(s)
            }
        }
    }

    impl<'de> Deserialize<'de> for Descriptor {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            if d.is_human_readable() {
                let JsonDescriptor { media_type, digest, size, platform, annotations } = JsonDescriptor::deserialize(d)?;
                Ok(Descriptor { media_type, digest, size, platform, annotations })
            } else {
                let WireDescriptor { media_type, digest, size, platform, annotations } = WireDescriptor::deserialize(d)?;
                Ok(Descriptor { media_type, digest, size, platform, annotations })
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Index {
    pub fn new(manifests: Vec<Descriptor>) -> Index {
        Index { schema_version: 2, media_type: Some(MEDIA_INDEX.into()), manifests, annotations: BTreeMap::new() }
    }
}

/// The runtime part of an image config (`config` in the JSON), Docker-compatible field names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "User", default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(rename = "ExposedPorts", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    #[serde(rename = "Env", default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(rename = "Entrypoint", default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Volumes", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, serde_json::Value>,
    #[serde(rename = "WorkingDir", default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(rename = "Labels", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "StopSignal", default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    #[serde(rename = "Shell", default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    #[serde(rename = "OnBuild", default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    #[serde(rename = "Healthcheck", default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<serde_json::Value>,
    /// Docker's image spec: set by BuildKit on every CMD (deprecated in OCI, kept for Docker).
    #[serde(rename = "ArgsEscaped", default, skip_serializing_if = "std::ops::Not::not")]
    pub args_escaped: bool,
}

impl RunConfig {
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|e| e.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).unwrap_or((e.clone(), String::new())))
            .collect()
    }

    /// Sets a variable, replacing it where it is (as BuildKit does) or appending it.
    pub fn set_env(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        match self.env.iter_mut().find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key) {
            Some(e) => *e = entry,
            None => self.env.push(entry),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: RunConfig,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

impl ImageConfig {
    pub fn empty(platform: &Platform) -> ImageConfig {
        ImageConfig {
            architecture: platform.arch().to_string(),
            os: platform.os().to_string(),
            variant: platform.variant().map(str::to_string),
            rootfs: RootFs { kind: "layers".into(), diff_ids: vec![] },
            // BuildKit's empty image starts in `/`.
            config: RunConfig { working_dir: "/".into(), ..Default::default() },
            ..Default::default()
        }
    }
}

/// JSON bytes as the registry and the layout store them (compact, stable field order).
pub fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(platform: Option<OciPlatform>, annotations: &[(&str, &str)]) -> Descriptor {
        let mut d = Descriptor::new(MEDIA_MANIFEST, Digest::of(b"m"), 7);
        d.platform = platform;
        d.annotations = annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        d
    }

    #[test]
    fn descriptors_are_image_spec_json_and_whole_on_the_wire() {
        let bare = descriptor(None, &[]);
        let json = String::from_utf8(to_json(&bare)).unwrap();
        assert_eq!(json, format!(r#"{{"mediaType":"{MEDIA_MANIFEST}","digest":"{}","size":7}}"#, Digest::of(b"m")));
        let arm = OciPlatform { architecture: "arm64".into(), os: "linux".into(), variant: None };
        let json = String::from_utf8(to_json(&descriptor(Some(arm.clone()), &[]))).unwrap();
        assert!(json.ends_with(r#""platform":{"architecture":"arm64","os":"linux"}}"#), "{json}");
        let v7 = OciPlatform { architecture: "arm".into(), os: "linux".into(), variant: Some("v7".into()) };
        for d in [bare, descriptor(Some(arm), &[]), descriptor(Some(v7), &[("a", "b")]), descriptor(None, &[("a", "b")])] {
            assert_eq!(serde_json::from_slice::<Descriptor>(&to_json(&d)).unwrap(), d);
            assert_eq!(crate::wire::decode::<Descriptor>(&crate::wire::encode(&d).unwrap()).unwrap(), d);
            let listed = Index::new(vec![d.clone(), d]);
            assert_eq!(serde_json::from_slice::<Index>(&to_json(&listed)).unwrap(), listed);
        }
    }
}
