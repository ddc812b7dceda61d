//! The path from `kiln build` uploading its context to the farm accepting the build: a context
//! of 300,000 files (its entries too many for one frame: they travel as a manifest blob), a
//! submit after the coordinator that received the upload died (the CLI uploads again to the
//! one it now talks to and submits again), and `kiln prune --coordinators` between the upload
//! and the submit (the blobs are in their grace period and stay).

use kiln_tests::cluster::Cluster;
use kiln_tests::target::{farm, Target};
use kiln_tests::{kiln_bin, stderr, wait_for, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FILES: usize = 300_000;

/// Regular files under `dir`, counted.
fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let t = e.file_type().expect("file type");
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                n += 1;
            }
        }
    }
    n
}

/// A context of [`FILES`] small files in 300 directories: most empty, every thousandth with a
/// line naming it (so the uploads dedupe to a few hundred blobs).
fn many_files(ctx: &TempDir) {
    for d in 0..300 {
        let dir = ctx.path().join(format!("many/d{d:03}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..FILES / 300 {
            let text = if f == 0 { format!("d{d:03}\n") } else { String::new() };
            std::fs::write(dir.join(format!("f{f:04}")), text).expect("write");
        }
    }
}

fn huge_context(t: &Target, ctx: &TempDir) {
    let name = t.name();
    let out = TempDir::new("upload-300k-out");
    let dest = format!("type=local,dest={}", out.path().display());
    let started = Instant::now();
    let o = t.kiln(&["build", "--progress", "plain", "-o", &dest, "."], ctx.path());
    assert!(o.status.success(), "{name}: the 300,000-file build failed:\n{}", stderr(&o));
    eprintln!("{name}: a {FILES}-file context built in {:.1} s", started.elapsed().as_secs_f64());
    // The first and the last directory of the manifest, every file of them.
    assert_eq!(count_files(&out.path().join("many")), 2 * FILES / 300, "{name}: the copied directories are whole in the image");
    assert_eq!(std::fs::read_to_string(out.path().join("many/d000/f0000")).expect("read"), "d000\n", "{name}");
    assert_eq!(std::fs::read_to_string(out.path().join("many/d299/f0000")).expect("read"), "d299\n", "{name}");
    assert_eq!(std::fs::metadata(out.path().join("many/d299/f0999")).expect("stat").len(), 0, "{name}");
}

/// The entries of 300,000 files are far more than one frame holds (16 MiB): the build works
/// all the same, on the embedded farm and on a farm.
#[test]
fn a_context_of_300000_files_builds() {
    let ctx = TempDir::new("upload-300k");
    many_files(&ctx);
    // Every entry reaches the agent (it recreates the whole context); the image takes two of
    // its directories, so that the test's time goes to the context, not to the image.
    ctx.write("Dockerfile", "FROM scratch\nCOPY many/d000 /many/d000\nCOPY many/d299 /many/d299\n");
    huge_context(&Target::Embedded(TempDir::new("upload-300k-home")), &ctx);
    huge_context(&farm(), &ctx);
}

/// `kiln build` on the farm, holding between its upload and its submit until `hold` exists
/// (`KILN_TEST_HOLD_SUBMIT`).
fn held_build(c: &Cluster, ctx: &Path, hold: &Path) -> Child {
    Command::new(kiln_bin())
        .args(["build", "--progress", "plain", "-o", "type=local,dest=out", "."])
        .current_dir(ctx)
        .env("KILN_HOME", c.home())
        .env("KILN_HOST", c.hosts())
        .env("KILN_TOKEN", &c.admin_token)
        .env("KILN_TEST_HOLD_SUBMIT", hold)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln build")
}

/// The coordinator the held build uploaded to, once it has.
fn uploaded_to(hold: &Path) -> String {
    let marker = PathBuf::from(format!("{}.uploaded", hold.display()));
    wait_for("the upload", Duration::from_secs(120), || marker.exists());
    std::fs::read_to_string(&marker).expect("marker").trim().to_string()
}

/// Waits for the build to end (bounded); kills it if it does not.
fn finish(mut child: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(180);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("the build ends")
}

/// A context with one file no other test has, and a Dockerfile copying it.
fn unique_context(name: &str) -> (TempDir, Vec<u8>) {
    let ctx = TempDir::new(name);
    let bytes: Vec<u8> = format!("{name} {:?} {}\n", Instant::now(), std::process::id()).into_bytes();
    std::fs::write(ctx.path().join("data.txt"), &bytes).expect("write");
    ctx.write("Dockerfile", "FROM scratch\nCOPY data.txt /data.txt\n");
    (ctx, bytes)
}

/// The coordinator that received the upload dies before the submit: the CLI is refused by the
/// one it talks to next (it lacks the blobs), uploads them there and submits again.
#[test]
fn a_submit_after_the_upload_coordinator_died_uploads_again() {
    let mut c = Cluster::start(3);
    c.add_agent("a1", &[], 4);
    let (ctx, bytes) = unique_context("upload-failover");
    let hold = ctx.path().join("hold");
    let child = held_build(&c, ctx.path(), &hold);
    let addr = uploaded_to(&hold);
    let i = c.addrs.iter().position(|a| *a == addr).unwrap_or_else(|| panic!("uploaded to {addr:?}, not one of {:?}", c.addrs));
    c.coordinators[i].kill();
    std::fs::write(&hold, "").expect("release");
    let o = finish(child);
    assert!(o.status.success(), "the build after a failover between upload and submit failed:\n{}", stderr(&o));
    assert!(stderr(&o).contains("lacks the build's blobs"), "the CLI uploaded again: {}", stderr(&o));
    assert_eq!(std::fs::read(ctx.path().join("out/data.txt")).expect("the output"), bytes);
}

/// Every coordinator blob file under the farm's state named `hex`.
fn held_anywhere(root: &Path, hex: &str) -> bool {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.ends_with("blobs/blobs/sha256") && p.join(hex).exists() {
                return true;
            }
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    false
}

/// `kiln prune --coordinators` between the upload and the submit leaves the just uploaded
/// blobs (their grace period): the build goes on without uploading again. (On the embedded
/// farm no prune can come between them: one process at a time serves its `$KILN_HOME`.)
#[test]
fn a_prune_between_upload_and_submit_keeps_the_blobs() {
    let Target::Farm(c) = farm() else { unreachable!("farm() is a farm") };
    let (ctx, bytes) = unique_context("upload-prune");
    let hex = kiln_shared::Digest::of(&bytes).hex().to_string();
    let hold = ctx.path().join("hold");
    let child = held_build(&c, ctx.path(), &hold);
    uploaded_to(&hold);
    assert!(held_anywhere(c.dir.path(), &hex), "the upload is on a coordinator");
    let o = c.ok(c.kiln(&["prune", "--coordinators", "-f"], ctx.path()));
    assert!(held_anywhere(c.dir.path(), &hex), "the prune took a blob uploaded a moment ago:\n{}", kiln_tests::stdout(&o));
    std::fs::write(&hold, "").expect("release");
    let o = finish(child);
    assert!(o.status.success(), "the build after a prune between upload and submit failed:\n{}", stderr(&o));
    assert!(!stderr(&o).contains("lacks the build's blobs"), "nothing was uploaded again: {}", stderr(&o));
    assert_eq!(std::fs::read(ctx.path().join("out/data.txt")).expect("the output"), bytes);
}
