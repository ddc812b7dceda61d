//! deploy/Dockerfile: kiln builds its own images, and they run. The test does what
//! docs/operations.md tells a user to do — the binary in a directory given as the named context
//! `bin`, deploy/Dockerfile, a Debian bookworm base — with this build's `kiln` as the binary,
//! the cached mmdebstrap root as the base (pushed to a test registry), and runc and
//! qemu-user-static from Debian's .deb files (no network in the build). Each image is exported
//! as an OCI archive, its layers are unpacked in order (whiteouts applied), and its entrypoint
//! runs from the unpacked root under chroot, as the image's user.

use kiln_tests::{agent_debs, debian_tar, kiln, kiln_bin, ok, repo_root, stderr, stdout, Bounded, Registry, TempDir};
use serde_json::Value;
use std::io::Read;
use std::path::Path;
use std::process::Command;

/// The Debian root as a one-layer image in `registry`.
fn debian_base(registry: &Registry, home: &Path) -> String {
    let ctx = TempDir::new("image-base");
    std::fs::copy(debian_tar("amd64"), ctx.path().join("debian.tar")).expect("copy the Debian tar");
    ctx.write("Dockerfile", "FROM scratch\nADD debian.tar /\nCMD [\"bash\"]\n");
    let reference = format!("{}/base/debian:bookworm", registry.addr);
    ok(kiln(home, &["build", "--progress", "plain", "--platform", "linux/amd64", "-t", &reference, "--push", "."], ctx.path()));
    reference
}

/// An OCI archive's one manifest for linux/amd64, and a reader of its blobs.
struct Archive(std::collections::HashMap<String, Vec<u8>>);

impl Archive {
    fn open(path: &Path) -> Archive {
        let mut files = std::collections::HashMap::new();
        let mut tar = tar::Archive::new(std::fs::File::open(path).expect("open the archive"));
        for e in tar.entries().expect("entries") {
            let mut e = e.expect("entry");
            let name = e.path().expect("path").to_string_lossy().trim_start_matches("./").to_string();
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).expect("read");
            files.insert(name, bytes);
        }
        Archive(files)
    }

    fn json(&self, name: &str) -> Value {
        serde_json::from_slice(self.0.get(name).unwrap_or_else(|| panic!("{name} is not in the archive"))).expect("json")
    }

    fn blob(&self, digest: &str) -> &[u8] {
        let name = format!("blobs/{}", digest.replace(':', "/"));
        self.0.get(&name).unwrap_or_else(|| panic!("{name} is not in the archive"))
    }

    /// The image manifest: index.json may point at it or at an index holding it.
    fn manifest(&self) -> Value {
        let mut m = self.json("index.json");
        loop {
            let desc = m["manifests"]
                .as_array()
                .and_then(|ms| {
                    ms.iter().find(|d| {
                        d["platform"]["architecture"].as_str().is_none_or(|a| a == "amd64")
                            && d["annotations"]["vnd.docker.reference.type"].as_str() != Some("attestation-manifest")
                    })
                })
                .unwrap_or_else(|| panic!("no amd64 manifest in {m}"))
                .clone();
            let next: Value = serde_json::from_slice(self.blob(desc["digest"].as_str().expect("digest"))).expect("json");
            if next["layers"].is_array() {
                return next;
            }
            m = next;
        }
    }
}

/// Unpacks the image's layers in order into `root` with whiteouts applied; returns its config.
fn unpack(archive: &Archive, root: &Path) -> Value {
    let manifest = archive.manifest();
    for layer in manifest["layers"].as_array().expect("layers") {
        let bytes = archive.blob(layer["digest"].as_str().expect("digest"));
        let reader: Box<dyn Read> = match layer["mediaType"].as_str().unwrap_or_default() {
            t if t.ends_with("gzip") => Box::new(flate2::read::GzDecoder::new(bytes)),
            t if t.ends_with("zstd") => Box::new(zstd::stream::read::Decoder::new(bytes).expect("zstd")),
            _ => Box::new(bytes),
        };
        let mut tar = tar::Archive::new(reader);
        tar.set_preserve_permissions(true);
        tar.set_preserve_ownerships(true);
        tar.set_unpack_xattrs(true);
        for e in tar.entries().expect("layer entries") {
            let mut e = e.expect("layer entry");
            let path = e.path().expect("path").into_owned();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name == ".wh..wh..opq" {
                let dir = root.join(path.parent().unwrap_or(Path::new("")));
                for child in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let _ = std::fs::remove_dir_all(child.path()).or_else(|_| std::fs::remove_file(child.path()));
                }
            } else if let Some(gone) = name.strip_prefix(".wh.") {
                let target = root.join(path.parent().unwrap_or(Path::new(""))).join(gone);
                let _ = std::fs::remove_dir_all(&target).or_else(|_| std::fs::remove_file(&target));
            } else {
                e.unpack_in(root).unwrap_or_else(|err| panic!("unpacking {}: {err}", path.display()));
            }
        }
    }
    serde_json::from_slice(archive.blob(manifest["config"]["digest"].as_str().expect("config digest"))).expect("config")
}

/// Runs the image's entrypoint with `args` from the unpacked `root`, as its user.
fn run_image(root: &Path, config: &Value, args: &[&str]) -> std::process::Output {
    let entrypoint: Vec<String> =
        config["config"]["Entrypoint"].as_array().expect("an entrypoint").iter().map(|v| v.as_str().expect("str").to_string()).collect();
    let user = config["config"]["User"].as_str().unwrap_or("");
    let mut cmd = Command::new("chroot");
    if !user.is_empty() {
        cmd.arg(format!("--userspec={user}"));
    }
    cmd.arg(root).args(&entrypoint).args(args).env_clear().env("PATH", "/usr/local/bin:/usr/bin:/bin");
    for kv in config["config"]["Env"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.bounded().expect("chroot")
}

#[test]
fn deploy_dockerfile_builds_images_that_run_kiln() {
    let registry = Registry::start();
    let home = TempDir::new("image-home");
    let base = debian_base(&registry, home.path());

    let bin = TempDir::new("image-bin");
    std::fs::copy(kiln_bin(), bin.path().join("kiln")).expect("copy kiln");
    let ctx = TempDir::new("image-ctx");
    std::fs::create_dir_all(ctx.path().join("debs")).expect("debs");
    for deb in std::fs::read_dir(agent_debs("amd64")).expect("the .deb fixtures").flatten() {
        std::fs::copy(deb.path(), ctx.path().join("debs").join(deb.file_name())).expect("copy a .deb");
    }
    let dockerfile = repo_root().join("deploy/Dockerfile");
    let out = TempDir::new("image-out");
    let version = stdout(&ok(Command::new(kiln_bin()).arg("version").bounded().expect("kiln version"))).trim().to_string();
    assert!(version.starts_with("kiln "), "{version}");

    for target in ["agent", "coordinator"] {
        let archive = out.path().join(format!("{target}.tar"));
        let args = [
            "build",
            "--progress",
            "plain",
            "-f",
            &dockerfile.display().to_string(),
            "--build-context",
            &format!("bin={}", bin.path().display()),
            "--build-arg",
            &format!("BASE={base}"),
            "--platform",
            "linux/amd64",
            "--target",
            target,
            "--provenance=false",
            "-o",
            &format!("type=oci,dest={}", archive.display()),
            ".",
        ]
        .map(String::from);
        let built = kiln(home.path(), &args.iter().map(String::as_str).collect::<Vec<_>>(), ctx.path());
        assert!(built.status.success(), "kiln build --target {target}:\n{}", stderr(&built));

        let root = out.path().join(target);
        std::fs::create_dir_all(&root).expect("root");
        let config = unpack(&Archive::open(&archive), &root);
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/usr/local/bin/kiln"]), "{target}");
        let ran = run_image(&root, &config, &["version"]);
        assert!(ran.status.success(), "{target}: kiln version in the image:\n{}", stderr(&ran));
        assert_eq!(stdout(&ran).trim(), version, "{target}");

        let user = config["config"]["User"].as_str().unwrap_or("").to_string();
        if target == "coordinator" {
            assert_eq!(user, "65532:65532", "the coordinator runs as the StatefulSet's user");
            let data = std::fs::metadata(root.join("var/lib/kiln")).expect("/var/lib/kiln");
            assert_eq!(std::os::unix::fs::MetadataExt::uid(&data), 65532, "its data directory is its own");
            assert!(!root.join("usr/sbin/runc").exists(), "the coordinator carries no runc");
        } else {
            assert_eq!(user, "", "the agent runs as root");
            let chroot = |args: &[&str]| Command::new("chroot").arg(&root).args(args).bounded().expect("chroot");
            let runc = chroot(&["runc", "--version"]);
            assert!(runc.status.success() && stdout(&runc).starts_with("runc version"), "{}{}", stdout(&runc), stderr(&runc));
            let qemu = chroot(&["qemu-aarch64-static", "--version"]);
            assert!(qemu.status.success() && stdout(&qemu).contains("qemu-aarch64 version"), "{}{}", stdout(&qemu), stderr(&qemu));
            // The agent image's kiln finds its own qemu for --install-binfmt (the init container).
            let found = kiln_agent::binfmt::find_interpreter(&root, "aarch64").expect("qemu-aarch64 in the agent image");
            assert_eq!(found.path, Path::new("/usr/bin/qemu-aarch64-static"));
        }
    }
}
