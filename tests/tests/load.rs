//! `--load` and `-o type=docker`: the image goes into a real Docker daemon (Debian's docker.io,
//! a private dockerd on its own socket and data root, no bridge, no iptables), and `docker run`
//! runs it; a multi-platform load is refused as buildx refuses it. Embedded and on a farm.

use kiln_tests::target::{farm, Target};
use kiln_tests::{base_image, stderr, stdout, Bounded, Registry, TempDir};
use std::process::{Command, Stdio};
use std::time::Duration;

struct Dockerd {
    child: std::process::Child,
    dir: TempDir,
}

impl Dockerd {
    fn start() -> Option<Dockerd> {
        if !std::path::Path::new("/usr/sbin/dockerd").exists() {
            eprintln!("SKIPPED: /usr/sbin/dockerd is missing (apt-get install docker.io; scripts/setup-host.sh does)");
            return None;
        }
        let dir = TempDir::new("load-dockerd");
        let d = dir.path();
        let log = std::fs::File::create(d.join("dockerd.log")).expect("log");
        let child = Command::new("/usr/sbin/dockerd")
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("dockerd");
        let dockerd = Dockerd { child, dir };
        kiln_tests::wait_for("dockerd", Duration::from_secs(60), || dockerd.docker(&["version"]).status.success());
        Some(dockerd)
    }

    fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("/usr/bin/docker").arg("-H").arg(self.host()).args(args).stdin(Stdio::null()).bounded().expect("docker")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn load(t: &Target, base: &str, docker: &Dockerd) {
    let name = t.name();
    let ctx = TempDir::new("load-ctx");
    ctx.write("Dockerfile", &format!("FROM {base}\nRUN echo loaded-by-{name} > /hello\nCMD [\"cat\", \"/hello\"]\n"));
    let tag = format!("kiln-load/{name}:1");
    let env = [("DOCKER_HOST", docker.host())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = t.kiln_env(&["build", "--progress", "plain", "--load", "-t", &tag, "."], ctx.path(), &env);
    assert!(o.status.success(), "{name}: --load: {}", stderr(&o));
    let run = docker.docker(&["run", "--rm", "--network", "none", &tag]);
    assert_eq!(stdout(&run).trim(), format!("loaded-by-{name}"), "{name}: docker run: {}", stderr(&run));
    // An archive for `docker load`, to a file.
    let out = TempDir::new("load-out");
    let file = out.path().join("image.tar");
    let tag2 = format!("kiln-load/{name}-file:2");
    let o = t.kiln_env(&["build", "-o", &format!("type=docker,dest={}", file.display()), "-t", &tag2, "."], ctx.path(), &env);
    assert!(o.status.success(), "{name}: -o type=docker,dest=: {}", stderr(&o));
    let l = docker.docker(&["load", "-i", &file.display().to_string()]);
    assert!(l.status.success() && stdout(&l).contains(&tag2), "{name}: docker load: {} {}", stdout(&l), stderr(&l));
    // Several platforms cannot go into Docker's image store, and the daemon must be reachable.
    let o = t.kiln_env(&["build", "--load", "--platform", "linux/amd64,linux/arm64", "."], ctx.path(), &env);
    assert!(
        !o.status.success() && stderr(&o).contains("docker exporter does not currently support exporting manifest lists"),
        "{name}: {}",
        stderr(&o)
    );
    let o = t.kiln_env(&["build", "--load", "."], ctx.path(), &[("DOCKER_HOST", "unix:///kiln/no/such.sock")]);
    assert!(!o.status.success() && stderr(&o).contains("cannot reach the Docker daemon"), "{name}: {}", stderr(&o));
}

#[test]
fn load_puts_the_image_into_dockerd() {
    let Some(docker) = Dockerd::start() else { return };
    let registry = Registry::start();
    let home = TempDir::new("load-home");
    let base = base_image(&registry, home.path());
    load(&Target::Embedded(home), &base, &docker);
    load(&farm(), &base, &docker);
}
