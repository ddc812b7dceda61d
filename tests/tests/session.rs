//! The build's session: `--secret` reaches the steps that mount it and nothing else, on the
//! embedded farm and on a three-coordinator farm alike.

use kiln_tests::target::{farm, Target};
use kiln_tests::{base_image, stderr, Registry, TempDir};
use std::io::Read;
use std::path::Path;

fn sha256(bytes: &[u8]) -> String {
    kiln_shared::Digest::of(bytes).hex().to_string()
}

/// A value no file of the repository or the test holds before the test makes it.
fn fresh_secret(what: &str) -> String {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).expect("urandom");
    format!("kiln-{what}-{}", hex(&b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every file under `root` (gzip streams decompressed too) that holds `needle`.
fn files_holding(root: &Path, needle: &[u8]) -> Vec<String> {
    fn holds(bytes: &[u8], needle: &[u8]) -> bool {
        bytes.windows(needle.len()).any(|w| w == needle)
    }
    fn walk(dir: &Path, needle: &[u8], hits: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
            if m.is_dir() {
                walk(&p, needle, hits);
            } else if m.is_file() {
                let Ok(bytes) = std::fs::read(&p) else { continue };
                let mut found = holds(&bytes, needle);
                if !found && bytes.starts_with(&[0x1f, 0x8b]) {
                    let mut plain = Vec::new();
                    let _ = flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_end(&mut plain);
                    found = holds(&plain, needle);
                }
                if !found && bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                    found = zstd::decode_all(&bytes[..]).is_ok_and(|plain| holds(&plain, needle));
                }
                if found {
                    hits.push(p.display().to_string());
                }
            }
        }
    }
    let mut hits = Vec::new();
    walk(root, needle, &mut hits);
    hits
}

const DOCKERFILE: &str = "FROM BASE\n\
    RUN --mount=type=secret,id=tok sha256sum /run/secrets/tok | cut -d' ' -f1 > /tok.sha\n\
    RUN --mount=type=secret,id=envtok,env=TOKEN sh -c 'printf %s \"$TOKEN\" | sha256sum | cut -d\" \" -f1 > /env.sha'\n\
    RUN --mount=type=secret,id=tok,target=/x/t,mode=0440,uid=7,gid=8 stat -c '%a %u %g' /x/t > /stat\n\
    RUN --mount=type=secret,id=absent sh -c 'test ! -e /run/secrets/absent && echo skipped > /absent'\n\
    RUN --mount=type=secret,id=tok sh -c 'cat /run/secrets/tok > /dev/null; echo step ran'\n";

fn secrets(t: &Target, base: &str, registry: &Registry) {
    let ctx = TempDir::new("session-ctx");
    ctx.write("Dockerfile", &DOCKERFILE.replace("BASE", base));
    // The secrets' own files are outside every directory the farm or the output uses.
    let outside = TempDir::new("session-secrets");
    let (file_secret, env_secret) = (fresh_secret("file"), fresh_secret("env"));
    outside.write("tok", &file_secret);
    let src = format!("id=tok,src={}", outside.path().join("tok").display());
    let out_dir = TempDir::new("session-out");
    let (oci, local, meta) = (out_dir.path().join("image.tar"), out_dir.path().join("rootfs"), out_dir.path().join("meta.json"));
    let tag = format!("{}/session/{}:1", registry.addr, t.name());
    let args = [
        "build",
        "--progress",
        "plain",
        "--secret",
        &src,
        "--secret",
        "id=envtok,env=KILN_TEST_TOKEN",
        "-t",
        &tag,
        "--push",
        "-o",
        &format!("type=oci,dest={}", oci.display()),
        "-o",
        &format!("type=local,dest={}", local.display()),
        "--metadata-file",
        &meta.display().to_string(),
        ".",
    ];
    let out = t.kiln_env(&args, ctx.path(), &[("KILN_TEST_TOKEN", &env_secret)]);
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "{}: build with secrets failed:\n{log}", t.name());
    let read = |p: &str| std::fs::read_to_string(local.join(p)).unwrap_or_else(|e| panic!("{}: /{p}: {e}", t.name()));
    // The steps saw the secrets' bytes: their hashes are in the image, the bytes are not.
    assert_eq!(read("tok.sha").trim(), sha256(file_secret.as_bytes()), "{}", t.name());
    assert_eq!(read("env.sha").trim(), sha256(env_secret.as_bytes()), "{}", t.name());
    assert_eq!(read("stat").trim(), "440 7 8", "{}: mode and owner of the secret file", t.name());
    assert_eq!(read("absent").trim(), "skipped", "{}: a secret the client lacks is not mounted", t.name());
    assert!(log.contains("step ran"), "{}: {log}", t.name());
    // The search finds what is there (the secret's own file, a gzip stream holding it).
    assert_eq!(files_holding(outside.path(), file_secret.as_bytes()).len(), 1);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, env_secret.as_bytes()).expect("gzip");
    outside.write("probe", "");
    std::fs::write(outside.path().join("probe"), gz.finish().expect("gzip")).expect("probe");
    assert_eq!(files_holding(outside.path(), env_secret.as_bytes()).len(), 1, "the search misses gzip streams");
    for secret in [&file_secret, &env_secret] {
        assert!(!log.contains(secret.as_str()), "{}: the progress shows a secret", t.name());
        let hits = [t.state_dir(), out_dir.path().to_path_buf(), ctx.path().to_path_buf(), registry.dir()]
            .iter()
            .flat_map(|d| files_holding(d, secret.as_bytes()))
            .collect::<Vec<_>>();
        assert!(hits.is_empty(), "{}: the secret's bytes are stored in {hits:?}", t.name());
    }

    // A required secret the client did not give fails the step, in one line naming it.
    ctx.write("Dockerfile", &format!("FROM {base}\nRUN --mount=type=secret,id=npmrc,required=true true\n"));
    let out = t.kiln(&["build", "--progress", "plain", "."], ctx.path());
    let err = stderr(&out);
    assert!(!out.status.success(), "{}: a missing required secret passed", t.name());
    let line = err.lines().rev().find(|l| l.contains("npmrc")).unwrap_or_else(|| panic!("{}: no line names the secret:\n{err}", t.name()));
    assert!(line.contains("secret npmrc is required but was not provided"), "{}: {line}", t.name());

    // Bad --secret specs are refused before anything is sent.
    for (bad, says) in [("id=x,src=/kiln/no/such/file", "/kiln/no/such/file"), ("src=/etc/hostname", "the id is missing")] {
        let out = t.kiln(&["build", "--secret", bad, "."], ctx.path());
        assert!(!out.status.success() && stderr(&out).contains(says), "{}: --secret {bad}: {}", t.name(), stderr(&out));
    }
}

#[test]
fn secrets_reach_only_the_steps_that_mount_them() {
    let registry = Registry::start();
    let home = TempDir::new("session-home");
    let base = base_image(&registry, home.path());
    secrets(&Target::Embedded(home), &base, &registry);
    secrets(&farm(), &base, &registry);
}
