//! The build's session: `--secret` reaches the steps that mount it and nothing else, on the
//! embedded farm and on a three-coordinator farm alike.

use kiln_tests::target::{farm, Target};
use kiln_tests::{base_image, run_ok, stderr, Registry, Started, TempDir};
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

/// What the ssh test needs: a key in a real ssh-agent, and a loopback sshd serving a git
/// repository to that key.
struct SshFixture {
    dir: TempDir,
    port: u16,
    _sshd: Started,
    _agent: Started,
}

impl SshFixture {
    fn start() -> SshFixture {
        use std::process::Command;
        let dir = TempDir::new("session-ssh");
        let d = dir.path();
        for key in ["key", "hostkey"] {
            run_ok(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(d.join(key)));
        }
        std::fs::copy(d.join("key.pub"), d.join("authorized_keys")).expect("authorized_keys");
        // The repository: one commit on main.
        run_ok(Command::new("git").args(["init", "-q", "--bare"]).arg(d.join("repo.git")));
        run_ok(Command::new("git").args(["init", "-q"]).arg(d.join("work")));
        std::fs::write(d.join("work/README"), "hello from git over ssh\n").expect("README");
        run_ok(Command::new("git").current_dir(d.join("work")).args(["add", "README"]));
        run_ok(Command::new("git").current_dir(d.join("work")).args([
            "-c",
            "user.email=t@kiln",
            "-c",
            "user.name=t",
            "commit",
            "-qm",
            "first",
        ]));
        run_ok(Command::new("git").current_dir(d.join("work")).arg("push").arg("-q").arg(d.join("repo.git")).arg("HEAD:refs/heads/main"));
        let port = kiln_tests::free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile none\n",
            d.join("hostkey").display(),
            d.join("authorized_keys").display()
        );
        std::fs::write(d.join("sshd_config"), config).expect("sshd_config");
        let _ = std::fs::create_dir_all("/run/sshd");
        let sshd = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .stderr(std::fs::File::create(d.join("sshd.log")).expect("log"))
            .spawn()
            .expect("sshd (apt-get install openssh-server)");
        let sshd = Started(sshd);
        let agent = Command::new("ssh-agent").arg("-D").arg("-a").arg(d.join("agent.sock")).stdout(std::process::Stdio::null()).spawn();
        let agent = Started(agent.expect("ssh-agent (apt-get install openssh-client)"));
        kiln_tests::wait_for("sshd and ssh-agent", std::time::Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && d.join("agent.sock").exists()
        });
        run_ok(Command::new("ssh-add").arg("-q").arg(d.join("key")).env("SSH_AUTH_SOCK", d.join("agent.sock")));
        SshFixture { dir, port, _sshd: sshd, _agent: agent }
    }

    fn agent_socket(&self) -> String {
        self.dir.path().join("agent.sock").display().to_string()
    }

    /// This host's git and ssh with the libraries they load, for an image's root filesystem.
    fn clients_rootfs(dest: &Path) {
        for bin in ["/usr/bin/git", "/usr/bin/ssh"] {
            let out = std::process::Command::new("ldd").arg(bin).output().expect("ldd");
            let libs = String::from_utf8_lossy(&out.stdout);
            let files = std::iter::once(bin.to_string())
                .chain(libs.split_whitespace().filter(|w| w.starts_with('/')).map(str::to_string))
                .collect::<Vec<_>>();
            for f in files {
                let to = dest.join(f.trim_start_matches('/'));
                std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
                std::fs::copy(&f, &to).unwrap_or_else(|e| panic!("copying {f}: {e}"));
            }
        }
        std::fs::create_dir_all(dest.join("etc")).expect("etc");
        std::fs::write(dest.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    }
}

fn ssh(t: &Target, base: &str, fx: &SshFixture) {
    let ctx = TempDir::new("session-ssh-ctx");
    SshFixture::clients_rootfs(&ctx.path().join("clients"));
    let repo = fx.dir.path().join("repo.git");
    ctx.write(
        "Dockerfile",
        &format!(
            "FROM {base}\nCOPY clients/ /\n\
             ENV GIT_EXEC_PATH=/usr/bin GIT_SSH_COMMAND=\"ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR\"\n\
             RUN --mount=type=ssh git clone -q -b main ssh://root@127.0.0.1:{}{} /src\n",
            fx.port,
            repo.display()
        ),
    );
    let out_dir = TempDir::new("session-ssh-out");
    let local = format!("type=local,dest={}", out_dir.path().display());
    let sock = [("SSH_AUTH_SOCK", fx.agent_socket())];
    let sock: Vec<(&str, &str)> = sock.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = t.kiln_env(&["build", "--progress", "plain", "--ssh", "default", "-o", &local, "."], ctx.path(), &sock);
    assert!(out.status.success(), "{}: git clone over ssh failed:\n{}", t.name(), stderr(&out));
    let readme = std::fs::read_to_string(out_dir.path().join("src/README"))
        .unwrap_or_else(|e| panic!("{}: the clone: {e}\n{}", t.name(), stderr(&out)));
    assert_eq!(readme, "hello from git over ssh\n", "{}", t.name());

    // Key files instead of an agent: kiln starts a private agent for them.
    let key = format!("default={}", fx.dir.path().join("key").display());
    let out = t.kiln_env(&["build", "--progress", "plain", "--no-cache", "--ssh", &key, "."], ctx.path(), &[("SSH_AUTH_SOCK", "")]);
    assert!(out.status.success(), "{}: --ssh default=KEY failed:\n{}", t.name(), stderr(&out));

    // Without --ssh the mount is left out (as BuildKit: optional unless required), so the clone
    // is refused by sshd; with required=true the step fails, saying why.
    let out = t.kiln_env(&["build", "--progress", "plain", "--no-cache", "."], ctx.path(), &sock);
    assert!(!out.status.success(), "{}: a build without --ssh cloned over ssh", t.name());
    let text = std::fs::read_to_string(ctx.path().join("Dockerfile")).expect("Dockerfile");
    ctx.write("Dockerfile", &text.replace("--mount=type=ssh ", "--mount=type=ssh,required=true "));
    let out = t.kiln_env(&["build", "--progress", "plain", "--no-cache", "."], ctx.path(), &sock);
    assert!(!out.status.success(), "{}: a required ssh mount without --ssh passed", t.name());
    assert!(stderr(&out).contains("no SSH key \"default\" forwarded from the client"), "{}: {}", t.name(), stderr(&out));

    // The private key never reaches the farm.
    let key_text = std::fs::read_to_string(fx.dir.path().join("key")).expect("key");
    let body = key_text.lines().nth(2).expect("a key line");
    let hits = files_holding(&t.state_dir(), body.as_bytes());
    assert!(hits.is_empty(), "{}: the private key is stored in {hits:?}", t.name());
}

#[test]
fn ssh_agents_are_relayed_to_the_steps_that_mount_them() {
    let fx = SshFixture::start();
    let registry = Registry::start();
    let home = TempDir::new("session-ssh-home");
    let base = base_image(&registry, home.path());
    ssh(&Target::Embedded(home), &base, &fx);
    ssh(&farm(), &base, &fx);
}
