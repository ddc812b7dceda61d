//! A store that heals, on the embedded farm and on a farm: a layer in the agent's content store
//! is corrupted on disk; the next build that pushes it finds it corrupt (every blob is verified
//! before it is pushed), removes it, runs the slice again and pushes a good image. The registry
//! never receives the bad bytes.

use kiln_tests::target::{farm, Target};
use kiln_tests::{base_image, stderr, stdout, Bounded, Registry, TempDir};
use std::process::Command;

fn skopeo_raw(reference: &str) -> serde_json::Value {
    let out = Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", reference]).bounded().expect("skopeo");
    assert!(out.status.success(), "skopeo inspect {reference}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("manifest JSON")
}

/// The last layer of `repo:tag`'s amd64 image.
fn last_layer(registry: &Registry, repo: &str, tag: &str) -> String {
    let index = skopeo_raw(&format!("docker://{}/{repo}:{tag}", registry.addr));
    let amd64 = index["manifests"]
        .as_array()
        .expect("an index")
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .and_then(|m| m["digest"].as_str())
        .expect("an amd64 manifest")
        .to_string();
    let manifest = skopeo_raw(&format!("docker://{}/{repo}@{amd64}", registry.addr));
    manifest["layers"].as_array().and_then(|l| l.last()).and_then(|l| l["digest"].as_str()).expect("a layer").to_string()
}

fn heal(t: &Target, base: &str, registry: &Registry) {
    let name = t.name();
    let ctx = TempDir::new("heal-ctx");
    ctx.write("Dockerfile", &format!("FROM {base}\nRUN echo healed-{name} > /h\n"));
    let push = |tag: &str| {
        let reference = format!("{}/heal/{name}:{tag}", registry.addr);
        t.kiln(&["build", "--progress", "plain", "--platform", "linux/amd64,linux/arm64", "-t", &reference, "--push", "."], ctx.path())
    };
    let first = push("1");
    assert!(first.status.success(), "{name}: {}", stderr(&first));
    let layer = last_layer(registry, &format!("heal/{name}"), "1");
    let hex = layer.trim_start_matches("sha256:");
    let blob = t.agent_dir().join("content/blobs/sha256").join(hex);
    let mut bytes = std::fs::read(&blob).unwrap_or_else(|e| panic!("{name}: the layer {} is in the agent's store: {e}", blob.display()));
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, &bytes).expect("corrupt the layer");

    // The same build, pushed under another tag: every step is cached, but the RUN layer's blob
    // is corrupt; it is found out before it leaves, and the slice runs again.
    let second = push("2");
    let log = stderr(&second);
    assert!(second.status.success(), "{name}: the build heals instead of failing:\n{log}");
    assert!(log.contains("the corrupt blob was removed; building the slice again"), "{name}: the healing is said:\n{log}");
    // The new image is whole: skopeo verifies every blob it copies.
    let out = TempDir::new("heal-oci");
    let dest = format!("oci:{}:img", out.path().display());
    let copied = Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false", "--override-arch", "amd64"])
        .arg(format!("docker://{}/heal/{name}:2", registry.addr))
        .arg(&dest)
        .bounded()
        .expect("skopeo copy");
    assert!(copied.status.success(), "{name}: the pushed image verifies: {}", stderr(&copied));
    // The corrupt bytes are gone from the store: what is there under the name is the name.
    if let Ok(now) = std::fs::read(&blob) {
        assert_eq!(kiln_shared::Digest::of(&now).hex(), hex, "{name}: a blob under its digest is that digest");
    }
    let _ = stdout(&second);
}

#[test]
fn a_corrupt_blob_in_the_store_is_removed_and_the_build_heals() {
    let registry = Registry::start();
    let home = TempDir::new("heal-home");
    let base = base_image(&registry, home.path());
    heal(&Target::Embedded(home), &base, &registry);
    heal(&farm(), &base, &registry);
}
