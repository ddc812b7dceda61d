//! The coordinators' blob stores shrink: `kiln prune --coordinators` removes the uploaded
//! context blobs no running build names, on the embedded farm and on every coordinator of a
//! farm, once past their upload grace period; the next build uploads again and works; a
//! running build keeps its blobs; only admins may prune.

use kiln_tests::target::{farm, Target};
use kiln_tests::{base_image, kiln_bin, stderr, stdout, Registry, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every coordinator blob directory under the farm's state (`.../blobs/blobs/sha256`).
fn blob_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.ends_with("blobs/blobs/sha256") {
                    out.push(p);
                } else {
                    stack.push(p);
                }
            }
        }
    }
    out
}

/// Every coordinator blob as if last used an hour ago: past `blob_upload_grace_secs`, whose
/// blobs no prune takes (a build may be about to name them).
fn age_blobs(root: &Path) {
    let then = std::time::SystemTime::now() - Duration::from_secs(3_600);
    for d in blob_dirs(root) {
        for e in std::fs::read_dir(&d).expect("blob dir").flatten() {
            let f = std::fs::File::options().append(true).open(e.path()).expect("blob");
            f.set_modified(then).expect("set mtime");
        }
    }
}

fn held(root: &Path, digest: &str) -> bool {
    blob_dirs(root).iter().any(|d| d.join(digest).exists())
}

fn gc(t: &Target, base: &str) {
    let name = t.name();
    let ctx = TempDir::new("blob-gc");
    // 1 MiB that no other test has: its digest names the blob.
    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ name.len() as u8).collect();
    std::fs::write(ctx.path().join("big.bin"), &big).expect("write");
    let digest = kiln_shared::Digest::of(&big).hex().to_string();
    ctx.write("Dockerfile", &format!("FROM {base}\nCOPY big.bin /big.bin\n"));
    let build = || t.kiln(&["build", "--progress", "plain", "-o", "type=cacheonly", "."], ctx.path());
    let o = build();
    assert!(o.status.success(), "{name}: {}", stderr(&o));
    assert!(held(&t.state_dir(), &digest), "{name}: the upload is kept by the coordinator that received it");
    // Within its grace period a prune keeps it.
    let o = t.ok(&["prune", "--coordinators", "-f"], ctx.path());
    assert!(held(&t.state_dir(), &digest), "{name}: a blob uploaded a moment ago was pruned:\n{}", stdout(&o));

    age_blobs(&t.state_dir());
    let o = t.ok(&["prune", "--coordinators", "-f"], ctx.path());
    let text = stdout(&o);
    assert!(text.contains("removed") && text.contains("Farm total reclaimed"), "{name}: {text}");
    assert!(!held(&t.state_dir(), &digest), "{name}: the context blob is gone:\n{text}");
    // The next build sends it again and works.
    let o = build();
    assert!(o.status.success(), "{name}: {}", stderr(&o));
    assert!(stderr(&o).contains(" sent (10486"), "{name}: the blob is uploaded again: {}", stderr(&o));
}

#[test]
fn coordinators_prune_the_blobs_no_running_build_names() {
    let registry = Registry::start();
    let home = TempDir::new("blob-gc-home");
    let base = base_image(&registry, home.path());
    gc(&Target::Embedded(home), &base);
    let f = farm();
    gc(&f, &base);
    let Target::Farm(c) = &f else { unreachable!("farm() is a farm") };

    // A running build keeps what it names.
    let ctx = TempDir::new("blob-gc-running");
    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(40_503) >> 7) as u8).collect();
    std::fs::write(ctx.path().join("big.bin"), &big).expect("write");
    let digest = kiln_shared::Digest::of(&big).hex().to_string();
    ctx.write("Dockerfile", &format!("FROM {base}\nRUN sleep 4\nCOPY big.bin /big.bin\n"));
    let child = Command::new(kiln_bin())
        .args(["build", "--progress", "plain", "--no-cache", "-o", "type=cacheonly", "."])
        .current_dir(ctx.path())
        .env("KILN_HOME", c.home())
        .env("KILN_HOST", c.hosts())
        .env("KILN_TOKEN", &c.admin_token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln build");
    let deadline = Instant::now() + Duration::from_secs(60);
    // Accepted, and its blobs past their upload grace period: what keeps them is the build.
    let running = || {
        let o = c.kiln(&["history", "ls", "--format", "json", "--filter", "status=running"], ctx.path());
        stdout(&o).contains("\"id\"")
    };
    while !(held(c.dir.path(), &digest) && running()) {
        assert!(Instant::now() < deadline, "the build was never accepted");
        std::thread::sleep(Duration::from_millis(100));
    }
    age_blobs(c.dir.path());
    let o = c.ok(c.kiln(&["prune", "--coordinators"], ctx.path()));
    assert!(held(c.dir.path(), &digest), "a running build's blob was pruned: {}", stdout(&o));
    let out = child.wait_with_output().expect("the build ends");
    assert!(out.status.success(), "the build whose blob was kept succeeds: {}", stderr(&out));

    // Users may not.
    let token = stdout(&c.ok(c.kiln(&["coordinator", "token", "--role", "user", "--tenant", "t"], ctx.path()))).trim().to_string();
    let o = c.kiln_with_token(&["prune", "--coordinators"], ctx.path(), &token);
    assert!(!o.status.success() || stdout(&o).contains("unreachable"), "a user pruned the coordinators: {}", stdout(&o));
    assert!(format!("{}{}", stdout(&o), stderr(&o)).contains("may not"), "{}{}", stdout(&o), stderr(&o));
}
