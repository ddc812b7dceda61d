//! Re-uploading a build context: a farm keeps what it was sent, so `kiln build` sends only the
//! files it lacks. A 200 MB context (200 files of 1 MB) is built three times on a farm: the
//! first time, unchanged, and with one file changed. Prints the bytes sent each time (blob
//! bytes plus the manifest that travels with the build request). Run with `make bench`.

use kiln_tests::cluster::Cluster;
use kiln_tests::TempDir;

const FILES: usize = 200;
const FILE_BYTES: usize = 1_000_000;

fn fill(path: &std::path::Path, seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; FILE_BYTES];
    for c in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    std::fs::write(path, buf).expect("context file");
}

/// (blob bytes, manifest bytes) from the plain progress line `#0 context: ...`.
fn sent(c: &Cluster, ctx: &std::path::Path) -> (u64, u64) {
    let out = c.ok(c.kiln(&["build", "--progress", "plain", "--platform", "linux/amd64", "."], ctx));
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = log.lines().find(|l| l.starts_with("#0 context:")).expect("context line");
    let numbers: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect();
    // `#0 context: N files, K sent (B bytes) + manifest (M bytes)`
    (numbers[3], numbers[4])
}

fn main() {
    let mut c = Cluster::start(1);
    c.add_agent("u1", &["linux/amd64"], 1);
    let ctx = TempDir::new("upload-bench");
    for i in 0..FILES {
        fill(&ctx.path().join(format!("f{i:03}.bin")), i as u64 + 1);
    }
    ctx.write("Dockerfile", "FROM scratch\nLABEL bench=upload\n");
    let total = (FILES * FILE_BYTES) as f64;
    let (b, m) = sent(&c, ctx.path());
    println!("first upload of a {:.0} MB context:        {:>11} bytes", total / 1e6, b + m);
    let (b, m) = sent(&c, ctx.path());
    println!(
        "re-upload, unchanged:                    {:>11} bytes ({:.3}% of the context; target < 1%)",
        b + m,
        100.0 * (b + m) as f64 / total
    );
    fill(&ctx.path().join("f100.bin"), 999);
    let (b, m) = sent(&c, ctx.path());
    println!("re-upload, one 1 MB file changed:        {:>11} bytes ({:.2} MB; target < 3 MB)", b + m, (b + m) as f64 / 1e6);
}
