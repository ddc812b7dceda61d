//! Attestations and annotations end to end, on the embedded farm and on a three-coordinator
//! farm: `--provenance=mode=max --sbom=true --annotation ...` pushed to a real registry and
//! read back by independent readers (skopeo, the registry's HTTP API, pyspdxtools validating
//! the SPDX document), an OCI archive with attestations, `--provenance=false`, buildx's
//! default (provenance `mode=min` for registry and OCI outputs), the metadata file and
//! `kiln imagetools inspect --format`.

use kiln_tests::cluster::Cluster;
use kiln_tests::{base_image, busybox, kiln_bin, stderr, stdout, Bounded, Registry, TempDir};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where pyspdxtools is: scripts/setup-host.sh installs spdx-tools into this venv.
const SPDX_VENV: &str = "/opt/kiln-ci-venv/bin/pyspdxtools";

enum Target {
    Embedded(TempDir),
    Farm(Cluster),
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Embedded(_) => "embedded",
            Target::Farm(_) => "farm",
        }
    }

    fn kiln_env(&self, args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(kiln_bin());
        cmd.args(args).current_dir(cwd).env_remove("BUILDX_NO_DEFAULT_ATTESTATIONS");
        match self {
            Target::Embedded(home) => cmd.env("KILN_HOME", home.path()).env_remove("KILN_HOST"),
            Target::Farm(c) => cmd.env("KILN_HOME", c.home()).env("KILN_HOST", c.hosts()).env("KILN_TOKEN", &c.admin_token),
        };
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.bounded().expect("run kiln")
    }

    fn ok(&self, args: &[&str], cwd: &Path) -> Output {
        let out = self.kiln_env(args, cwd, &[]);
        assert!(out.status.success(), "{}: kiln {args:?} failed:\n{}", self.name(), stderr(&out));
        out
    }
}

fn skopeo_raw(what: &str) -> Value {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--raw"]);
    if what.starts_with("docker://") {
        cmd.arg("--tls-verify=false");
    }
    let out = cmd.arg(what).bounded().expect("skopeo");
    assert!(out.status.success(), "skopeo inspect --raw {what}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("skopeo printed JSON")
}

/// A blob straight from the registry's HTTP API.
fn blob(registry: &str, repo: &str, digest: &str) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sSf", "--max-time", "60", &format!("http://{registry}/v2/{repo}/blobs/{digest}")])
        .bounded()
        .expect("curl");
    assert!(out.status.success(), "GET blob {digest}: {}", stderr(&out));
    out.stdout
}

fn sha1sum(path: &Path) -> String {
    let out = Command::new("sha1sum").arg(path).bounded().expect("sha1sum");
    stdout(&out).split_whitespace().next().unwrap_or_default().to_string()
}

fn platform_of(d: &Value) -> String {
    format!("{}/{}", d["platform"]["os"].as_str().unwrap_or(""), d["platform"]["architecture"].as_str().unwrap_or(""))
}

/// The context: a dpkg database (one installed package owning /usr/bin/hello, one removed
/// package), an apk database owning the base's /bin/busybox, a RUN step (emulated for arm64
/// on this amd64 host unless an agent runs arm64 natively).
fn context(dir: &Path, base: &str) {
    let w = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    w(
        "dpkg/status",
        "Package: hello\nStatus: install ok installed\nPriority: optional\nArchitecture: all\nVersion: 2.10-3\nMaintainer: Kiln Tests <tests@example.invalid>\nDescription: says hello\n a longer description\n\nPackage: oldlib\nStatus: deinstall ok config-files\nArchitecture: all\nVersion: 0.9\n",
    );
    w("dpkg/hello.list", "/.\n/usr\n/usr/bin\n/usr/bin/hello\n/usr/share/doc/hello/missing\n");
    w("hello", "#!/bin/sh\necho hello\n");
    w("apk/installed", "C:Q1nopenope=\nP:busybox\nV:1.36.1-r0\nA:noarch\nF:bin\nR:busybox\n");
    w(
        "Dockerfile",
        &format!(
            "FROM {base}\n\
             ARG GREETING=unset\n\
             COPY dpkg/status /var/lib/dpkg/status\n\
             COPY dpkg/hello.list /var/lib/dpkg/info/hello.list\n\
             COPY hello /usr/bin/hello\n\
             COPY apk/installed /lib/apk/db/installed\n\
             RUN echo \"$GREETING\" > /greeting\n"
        ),
    );
}

/// Fetches every in-toto statement of the attestation manifest `digest` in `repo`: predicate type → statement.
fn statements(registry: &str, repo: &str, digest: &str) -> BTreeMap<String, Value> {
    let manifest = skopeo_raw(&format!("docker://{registry}/{repo}@{digest}"));
    let mut out = BTreeMap::new();
    for l in manifest["layers"].as_array().expect("layers") {
        assert_eq!(l["mediaType"], "application/vnd.in-toto+json", "{manifest}");
        let kind = l["annotations"]["in-toto.io/predicate-type"].as_str().expect("predicate-type annotation").to_string();
        let s: Value = serde_json::from_slice(&blob(registry, repo, l["digest"].as_str().unwrap_or_default())).expect("a statement");
        assert_eq!(s["predicateType"], kind.as_str(), "the layer's annotation names its predicate");
        out.insert(kind, s);
    }
    out
}

fn check(t: &Target, base: &str, registry: &Registry, agents: &BTreeMap<&str, &str>) {
    let name = t.name();
    let work = TempDir::new(&format!("attest-{name}"));
    let ctx = work.path().join("ctx");
    context(&ctx, base);
    let repo = format!("attest/{name}");
    let tag = format!("{}/{repo}:1", registry.addr);
    let meta = work.path().join("meta.json");
    let m = meta.display().to_string();
    let dockerfile = std::fs::read_to_string(ctx.join("Dockerfile")).expect("Dockerfile");
    let build = [
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64,linux/arm64",
        "--build-arg",
        "GREETING=hi",
        "-t",
        &tag,
        "--push",
        "--provenance=mode=max",
        "--sbom=true",
        "--annotation",
        "org.example.title=kiln",
        "--annotation",
        "index,manifest-descriptor:org.example.where=both",
        "--annotation",
        "manifest[linux/arm64]:org.example.arm=only",
        "--metadata-file",
        &m,
        ".",
    ];
    t.ok(&build, &ctx);
    let md: Value = serde_json::from_slice(&std::fs::read(&meta).expect("metadata")).expect("metadata JSON");

    // The index, as skopeo reads it: the two images first, then one attestation manifest each.
    let index = skopeo_raw(&format!("docker://{tag}"));
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 4, "{name}: {index}");
    let images: BTreeMap<String, &Value> = manifests[..2].iter().map(|d| (platform_of(d), d)).collect();
    assert_eq!(images.keys().collect::<Vec<_>>(), ["linux/amd64", "linux/arm64"], "{name}: {index}");
    assert_eq!(index["annotations"]["org.example.where"], "both", "{name}: index annotation: {index}");
    for d in images.values() {
        assert_eq!(d["annotations"]["org.example.where"], "both", "{name}: manifest-descriptor annotation: {d}");
    }
    let slices: BTreeMap<String, &Value> =
        md["kiln.slices"].as_array().expect("slices").iter().map(|s| (s["platform"].as_str().unwrap_or("").to_string(), s)).collect();
    let base_index = skopeo_raw(&format!("docker://{base}"));
    for att in &manifests[2..] {
        assert_eq!(platform_of(att), "unknown/unknown", "{name}: {att}");
        assert_eq!(att["annotations"]["vnd.docker.reference.type"], "attestation-manifest", "{name}: {att}");
        let subject = att["annotations"]["vnd.docker.reference.digest"].as_str().expect("reference digest");
        let (platform, image) = images.iter().find(|(_, d)| d["digest"] == subject).expect("the attestation names an image of the index");
        let arch = platform.trim_start_matches("linux/");
        let slice = slices[platform.as_str()];
        assert_eq!(slice["manifest_digest"], subject, "{name}: metadata and index agree");
        assert_eq!(slice["attestation_digest"], att["digest"], "{name}: {slice}");

        // The image manifest carries its annotations (the arm64-only one on arm64 only).
        let manifest = skopeo_raw(&format!("docker://{}/{repo}@{subject}", registry.addr));
        assert_eq!(manifest["annotations"]["org.example.title"], "kiln", "{name}: {manifest}");
        assert_eq!(manifest["annotations"].get("org.example.arm").is_some(), arch == "arm64", "{name} {platform}: {manifest}");
        assert!(image["annotations"].get("org.example.title").is_none(), "manifest annotations stay off the descriptor");

        let st = statements(&registry.addr, &repo, att["digest"].as_str().unwrap_or_default());
        assert_eq!(st.keys().collect::<Vec<_>>(), ["https://slsa.dev/provenance/v1", "https://spdx.dev/Document"], "{name}");
        let hex = subject.trim_start_matches("sha256:");
        for s in st.values() {
            assert_eq!(s["_type"], "https://in-toto.io/Statement/v0.1");
            assert_eq!(s["subject"][0]["digest"]["sha256"], hex, "{name}: the statement is about the platform manifest");
        }

        // Provenance, mode=max: the Dockerfile, the build argument, the base image with the
        // digest of its manifest for this platform, the agent and whether it emulated.
        let p = &st["https://slsa.dev/provenance/v1"]["predicate"];
        let def = &p["buildDefinition"];
        assert_eq!(def["buildType"], "https://github.com/moby/buildkit/blob/master/docs/attestations/slsa-definitions.md");
        assert_eq!(def["externalParameters"]["request"]["args"]["build-arg:GREETING"], "hi", "{name}: {p}");
        assert_eq!(def["externalParameters"]["request"]["frontend"], "dockerfile.v0");
        use base64::Engine as _;
        let source = p["runDetails"]["metadata"]["buildkit_metadata"]["source"]["infos"][0]["data"].as_str().expect("the Dockerfile");
        let source = base64::engine::general_purpose::STANDARD.decode(source).expect("base64");
        assert_eq!(String::from_utf8_lossy(&source), dockerfile, "{name}: the Dockerfile in the provenance");
        let base_manifest = base_index["manifests"]
            .as_array()
            .expect("base manifests")
            .iter()
            .find(|d| platform_of(d) == *platform)
            .and_then(|d| d["digest"].as_str())
            .expect("the base has this platform")
            .trim_start_matches("sha256:")
            .to_string();
        let deps = def["resolvedDependencies"].as_array().expect("resolvedDependencies");
        let base_uri = format!("pkg:docker/{}@1?platform=linux%2F{arch}", base.rsplit_once(':').map(|(r, _)| r).unwrap_or(base));
        assert!(
            deps.iter().any(|d| d["uri"] == base_uri.as_str() && d["digest"]["sha256"] == base_manifest.as_str()),
            "{name}: {base_uri} {base_manifest} not in {deps:?}"
        );
        let k = &p["runDetails"]["metadata"]["kiln_slice"];
        assert_eq!(k["agent"], agents[platform.as_str()], "{name}: {k}");
        assert_eq!(k["agent"], slice["agent"], "{name}: provenance and metadata name the same agent");
        assert_eq!(k["emulated"], slice["emulated"], "{name}: {k} vs {slice}");
        assert_eq!(p["runDetails"]["metadata"]["buildkit_hermetic"], false, "a RUN step could reach the network");
        assert_eq!(md[format!("buildx.build.provenance/{platform}")], *p, "{name}: the metadata file carries the provenance");

        // The SBOM: SPDX 2.3, valid to spdx-tools, listing the dpkg and apk packages and the
        // files they own with their real checksums.
        let doc = &st["https://spdx.dev/Document"]["predicate"];
        assert_eq!(doc["spdxVersion"], "SPDX-2.3");
        let spdx_file = work.path().join(format!("sbom-{arch}.spdx.json"));
        std::fs::write(&spdx_file, serde_json::to_vec_pretty(doc).expect("json")).expect("write sbom");
        validate_spdx(&spdx_file);
        let packages: BTreeMap<&str, &Value> =
            doc["packages"].as_array().expect("packages").iter().map(|p| (p["name"].as_str().unwrap_or(""), p)).collect();
        assert_eq!(packages.keys().collect::<Vec<_>>(), [&"busybox", &"hello"], "{name}: removed packages are not listed: {doc}");
        assert_eq!(packages["hello"]["versionInfo"], "2.10-3");
        assert_eq!(packages["hello"]["externalRefs"][0]["referenceLocator"], "pkg:deb/debian/hello@2.10-3?arch=all");
        assert_eq!(packages["busybox"]["externalRefs"][0]["referenceLocator"], "pkg:apk/alpine/busybox@1.36.1-r0?arch=noarch");
        let files: BTreeMap<&str, &Value> =
            doc["files"].as_array().expect("files").iter().map(|f| (f["fileName"].as_str().unwrap_or(""), f)).collect();
        assert_eq!(files.keys().collect::<Vec<_>>(), [&"./bin/busybox", &"./usr/bin/hello"], "{name}: owned regular files only");
        let sha1 = |f: &Value| {
            f["checksums"].as_array().and_then(|c| c.iter().find(|c| c["algorithm"] == "SHA1")).map(|c| c["checksumValue"].clone())
        };
        assert_eq!(sha1(files["./usr/bin/hello"]), Some(Value::from(sha1sum(&ctx.join("hello")))), "{name}");
        let bb = busybox().join(format!("busybox-{arch}"));
        assert_eq!(sha1(files["./bin/busybox"]), Some(Value::from(sha1sum(&bb))), "{name}: {platform}'s own busybox");
    }

    // imagetools inspect --format: buildx's .Provenance and .SBOM, per platform; --raw unchanged.
    let it = |format: &str| -> Value {
        let out = t.ok(&["imagetools", "inspect", &tag, "--format", format], &ctx);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{name}: --format {format}: {e}: {}", stdout(&out)))
    };
    let prov = it("{{json .Provenance}}");
    let sbom = it("{{json .SBOM}}");
    for platform in ["linux/amd64", "linux/arm64"] {
        assert_eq!(
            prov[platform]["SLSA"]["buildDefinition"]["externalParameters"]["request"]["args"]["build-arg:GREETING"], "hi",
            "{prov}"
        );
        assert_eq!(sbom[platform]["SPDX"]["spdxVersion"], "SPDX-2.3", "{name}");
    }
    let all = it("{{json .}}");
    assert_eq!(all["manifest"], index, "{name}");
    assert_eq!(all["image"]["linux/arm64"]["architecture"], "arm64", "{name}: attestations are not taken for images");
    let raw = t.ok(&["imagetools", "inspect", &tag, "--raw"], &ctx);
    assert_eq!(serde_json::from_slice::<Value>(&raw.stdout).expect("--raw"), index);
    let human = stdout(&t.ok(&["imagetools", "inspect", &tag], &ctx));
    assert_eq!(human.matches("Platform:    unknown/unknown").count(), 2, "{name}: {human}");

    // An OCI archive: default provenance (mode=min) and the SBOM, read back by skopeo and umoci.
    let oci = work.path().join("image.tar");
    t.ok(
        &[
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            "GREETING=hi",
            "--sbom",
            "--annotation",
            "index-descriptor:org.example.archive=yes",
            "-o",
            &format!("type=oci,dest={}", oci.display()),
            "-t",
            "example/attest:1",
            ".",
        ],
        &ctx,
    );
    let index = skopeo_raw(&format!("oci-archive:{}", oci.display()));
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.iter().filter(|d| platform_of(d) == "unknown/unknown").count(), 2, "{name}: {index}");
    let unpacked = work.path().join("oci");
    std::fs::create_dir_all(&unpacked).expect("mkdir");
    let untar = Command::new("tar").arg("-xf").arg(&oci).arg("-C").arg(&unpacked).bounded().expect("tar");
    assert!(untar.status.success());
    let top: Value = serde_json::from_slice(&std::fs::read(unpacked.join("index.json")).expect("index.json")).expect("json");
    assert_eq!(top["manifests"][0]["annotations"]["org.example.archive"], "yes", "{name}: index-descriptor annotation: {top}");
    let read_blob = |d: &str| -> Value {
        serde_json::from_slice(&std::fs::read(unpacked.join("blobs/sha256").join(d.trim_start_matches("sha256:"))).expect("blob"))
            .expect("json")
    };
    for att in manifests.iter().filter(|d| platform_of(d) == "unknown/unknown") {
        let m = read_blob(att["digest"].as_str().unwrap_or_default());
        let kinds: Vec<&str> =
            m["layers"].as_array().expect("layers").iter().filter_map(|l| l["annotations"]["in-toto.io/predicate-type"].as_str()).collect();
        assert_eq!(kinds, ["https://slsa.dev/provenance/v1", "https://spdx.dev/Document"], "{name}");
        let prov = read_blob(m["layers"][0]["digest"].as_str().unwrap_or_default());
        let request = &prov["predicate"]["buildDefinition"]["externalParameters"]["request"];
        assert!(request["args"].get("build-arg:GREETING").is_none(), "{name}: mode=min keeps build arguments out: {request}");
        assert!(prov["predicate"]["runDetails"]["metadata"]["buildkit_metadata"].get("source").is_none());
    }
    // umoci reads the archive's images (it picks by platform, past the attestations).
    let layout = work.path().join("layout");
    let bundle = work.path().join("bundle");
    let copy = Command::new("skopeo")
        .args(["copy", &format!("oci-archive:{}:example/attest:1", oci.display()), &format!("oci:{}:x", layout.display())])
        .bounded()
        .expect("skopeo copy");
    assert!(copy.status.success(), "{name}: {}", stderr(&copy));
    let umoci = Command::new("umoci")
        .args(["raw", "unpack", "--rootless", "--image", &format!("{}:x", layout.display())])
        .arg(&bundle)
        .bounded()
        .expect("umoci");
    assert!(umoci.status.success(), "{name}: umoci: {}", stderr(&umoci));
    assert_eq!(std::fs::read_to_string(bundle.join("greeting")).expect("greeting"), "hi\n");

    // --provenance=false: no attestation manifest at all; without flags buildx's default
    // (provenance, mode=min, no SBOM); BUILDX_NO_DEFAULT_ATTESTATIONS turns the default off.
    let count = |extra: &[&str], env: &[(&str, &str)], tag: &str| -> (usize, Vec<String>) {
        let mut args = vec!["build", "--platform", "linux/amd64,linux/arm64", "-t", tag, "--push"];
        args.extend_from_slice(extra);
        args.push(".");
        let out = t.kiln_env(&args, &ctx, env);
        assert!(out.status.success(), "{name}: {args:?}: {}", stderr(&out));
        let index = skopeo_raw(&format!("docker://{tag}"));
        let atts: Vec<&Value> =
            index["manifests"].as_array().expect("manifests").iter().filter(|d| platform_of(d) == "unknown/unknown").collect();
        let kinds = atts
            .first()
            .map(|a| {
                let m = skopeo_raw(&format!(
                    "docker://{}/{}@{}",
                    registry.addr,
                    tag.split_once('/').map(|(_, r)| r).unwrap_or("").trim_end_matches(":1"),
                    a["digest"].as_str().unwrap_or("")
                ));
                m["layers"]
                    .as_array()
                    .map(|l| l.iter().filter_map(|l| l["annotations"]["in-toto.io/predicate-type"].as_str().map(str::to_string)).collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        (atts.len(), kinds)
    };
    let off = format!("{}/attest/{name}-off:1", registry.addr);
    assert_eq!(count(&["--provenance=false"], &[], &off), (0, vec![]), "{name}: --provenance=false");
    let default = format!("{}/attest/{name}-default:1", registry.addr);
    assert_eq!(count(&[], &[], &default), (2, vec!["https://slsa.dev/provenance/v1".to_string()]), "{name}: buildx's default");
    let none = format!("{}/attest/{name}-none:1", registry.addr);
    assert_eq!(count(&[], &[("BUILDX_NO_DEFAULT_ATTESTATIONS", "1")], &none), (0, vec![]), "{name}");
    let sbom_only = format!("{}/attest/{name}-sbom:1", registry.addr);
    assert_eq!(
        count(&["--attest", "type=provenance,disabled=true", "--attest", "type=sbom"], &[], &sbom_only),
        (2, vec!["https://spdx.dev/Document".to_string()]),
        "{name}"
    );

    // Wrong flags are one-line errors naming the problem, before anything is built.
    let bad = t.kiln_env(&["build", "--provenance=mode=huge", "-t", &off, "--push", "."], &ctx, &[]);
    assert!(!bad.status.success());
    assert_eq!(stderr(&bad).trim().lines().count(), 1, "{}", stderr(&bad));
    assert!(stderr(&bad).contains("mode=\"huge\": expected min or max"), "{}", stderr(&bad));
    let bad = t.kiln_env(&["build", "--annotation", "layer:k=v", "-t", &off, "--push", "."], &ctx, &[]);
    assert!(!bad.status.success() && stderr(&bad).contains("unknown type \"layer\""), "{}", stderr(&bad));
}

/// Runs pyspdxtools on `file`; skips (loudly) only when spdx-tools is not installed here.
fn validate_spdx(file: &Path) {
    let tool = [PathBuf::from(SPDX_VENV), PathBuf::from("pyspdxtools")]
        .into_iter()
        .find(|t| Command::new(t).arg("--help").bounded().is_ok_and(|o| o.status.success()));
    let Some(tool) = tool else {
        eprintln!("\n!!!!!! SKIPPING SPDX VALIDATION: pyspdxtools is not installed (run scripts/setup-host.sh: it installs spdx-tools into /opt/kiln-ci-venv) !!!!!!\n");
        return;
    };
    let out = Command::new(&tool).arg("-i").arg(file).bounded().expect("pyspdxtools");
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success() && !said.contains("is invalid"), "pyspdxtools rejects {}:\n{said}", file.display());
}

#[test]
fn attestations_and_annotations_embedded() {
    let registry = Registry::start();
    let home = TempDir::new("attest-home");
    let base = base_image(&registry, home.path());
    let agents = BTreeMap::from([("linux/amd64", "embedded"), ("linux/arm64", "embedded")]);
    check(&Target::Embedded(home), &base, &registry, &agents);
}

#[test]
fn attestations_and_annotations_on_a_farm() {
    let registry = Registry::start();
    let home = TempDir::new("attest-farm-base");
    let base = base_image(&registry, home.path());
    let mut c = Cluster::start(3);
    c.add_agent("a1", &["linux/amd64"], 2);
    c.add_agent("a2", &["linux/arm64"], 2);
    let agents = BTreeMap::from([("linux/amd64", "a1"), ("linux/arm64", "a2")]);
    check(&Target::Farm(c), &base, &registry, &agents);
}
