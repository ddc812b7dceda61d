//! `kiln imagetools`, `kiln du` and `kiln prune` against real registries and stores.

use kiln_tests::{base_image, kiln, Registry, TempDir};
use std::process::Output;
use std::time::{Duration, SystemTime};

fn out(o: Output) -> String {
    assert!(o.status.success(), "kiln failed:\n{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn imagetools_create_merges_and_inspect_shows_platforms() {
    let home = TempDir::new("home");
    let reg = Registry::start();
    let base = base_image(&reg, home.path());
    let ctx = TempDir::new("ctx");
    ctx.write("Dockerfile", &format!("FROM {base}\nRUN uname -m > /arch\n"));
    for arch in ["amd64", "arm64"] {
        out(kiln(
            home.path(),
            &[
                "build",
                "--progress",
                "quiet",
                "--platform",
                &format!("linux/{arch}"),
                "-t",
                &format!("{}/single/app:{arch}", reg.addr),
                "--push",
                ".",
            ],
            ctx.path(),
        ));
    }
    let merged = format!("{}/merged/app:1", reg.addr);
    out(kiln(
        home.path(),
        &["imagetools", "create", "-t", &merged, &format!("{}/single/app:amd64", reg.addr), &format!("{}/single/app:arm64", reg.addr)],
        ctx.path(),
    ));
    let raw = out(kiln(home.path(), &["imagetools", "inspect", "--raw", &merged], ctx.path()));
    let index: serde_json::Value = serde_json::from_str(&raw).expect("index json");
    let archs: Vec<&str> =
        index["manifests"].as_array().expect("manifests").iter().map(|m| m["platform"]["architecture"].as_str().unwrap_or("")).collect();
    // Each source's attestation manifest comes along after its image (not taken for a platform).
    assert_eq!(archs, vec!["amd64", "unknown", "arm64", "unknown"]);
    let text = out(kiln(home.path(), &["imagetools", "inspect", &merged], ctx.path()));
    assert!(text.contains("MediaType: application/vnd.oci.image.index.v1+json"), "{text}");
    assert!(text.contains("Platform:    linux/arm64"), "{text}");
    // The merged image is complete in its new repository: skopeo can copy it out.
    let dir = TempDir::new("copy");
    let st = std::process::Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false", "--override-arch", "arm64", &format!("docker://{merged}")])
        .arg(format!("oci:{}:x", dir.path().join("l").display()))
        .status()
        .expect("skopeo");
    assert!(st.success());
    // Two sources for the same platform are refused.
    let o = kiln(
        home.path(),
        &["imagetools", "create", "-t", &merged, &format!("{}/single/app:amd64", reg.addr), &format!("{}/single/app:amd64", reg.addr)],
        ctx.path(),
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("two sources provide linux/amd64"));
}

fn du_count(home: &std::path::Path, what: &str) -> u64 {
    let text = out(kiln(home, &["du"], home));
    let line = text.lines().find(|l| l.starts_with(what)).unwrap_or_else(|| panic!("no {what} in {text}"));
    line[what.len()..].split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

#[test]
fn du_and_prune_with_each_filter() {
    let home = TempDir::new("home");
    let reg = Registry::start();
    let base = base_image(&reg, home.path());
    let ctx = TempDir::new("ctx");
    let build = |content: &str| {
        ctx.write("f.txt", content);
        ctx.write("Dockerfile", &format!("FROM {base}\nCOPY f.txt /f\nRUN cp /f /g\n"));
        out(kiln(home.path(), &["build", "--progress", "quiet", "--platform", "linux/amd64", "."], ctx.path()));
    };
    build("one");
    let records_after_one = du_count(home.path(), "step cache records");
    build("two");
    let records = du_count(home.path(), "step cache records");
    assert_eq!(records, records_after_one + 2, "the second build added COPY and RUN records");

    // Plain prune removes only data no record references (configs, manifests): records stay.
    let text = out(kiln(home.path(), &["prune", "-f"], ctx.path()));
    assert!(text.contains("Agent:\tembedded\nRemoved 0 step cache records"), "{text}");
    assert_eq!(du_count(home.path(), "step cache records"), records);

    // until: only records unused for longer than the filter go. Age the first build's records.
    let cache = home.path().join("agent/cache");
    let old = SystemTime::now() - Duration::from_secs(3 * 86400);
    let mut aged = 0;
    for e in std::fs::read_dir(&cache).expect("cache").flatten() {
        if aged < 2 {
            std::fs::File::options().append(true).open(e.path()).expect("record").set_modified(old).expect("mtime");
            aged += 1;
        }
    }
    let text = out(kiln(home.path(), &["prune", "--filter", "until=24h"], ctx.path()));
    assert!(text.contains("\nRemoved 2 step cache records"), "{text}");
    assert_eq!(du_count(home.path(), "step cache records"), records - 2);

    // keep-storage: the least recently used records go until what is left fits.
    let text = out(kiln(home.path(), &["prune", "--keep-storage", "1B"], ctx.path()));
    assert!(text.contains(&format!("\nRemoved {} step cache records", records - 2)), "{text}");
    assert_eq!(du_count(home.path(), "content blobs"), 0);

    // -a removes everything; a build afterwards starts cold and works.
    build("three");
    out(kiln(home.path(), &["prune", "-a", "-f"], ctx.path()));
    assert_eq!(du_count(home.path(), "step cache records"), 0);
    assert_eq!(du_count(home.path(), "snapshots"), 0);
    build("three");
}
