//! `kiln build`'s flags for RUN steps and the cache, as buildx takes them, on the embedded farm
//! and on a farm: `--network`, `--add-host`, `--shm-size`, `--ulimit`, `--allow`, `--pull`,
//! `--no-cache-filter`, `--cgroup-parent`.

use kiln_tests::target::{farm, Target};
use kiln_tests::{base_image, stderr, Registry, TempDir};
use std::path::Path;

fn build(t: &Target, ctx: &Path, extra: &[&str]) -> (std::process::Output, TempDir) {
    let out = TempDir::new("flags-out");
    let dest = format!("type=local,dest={}", out.path().display());
    let mut args = vec!["build", "--progress", "plain", "-o", &dest];
    args.extend_from_slice(extra);
    args.push(".");
    (t.kiln(&args, ctx), out)
}

fn read(dir: &Path, p: &str) -> String {
    std::fs::read_to_string(dir.join(p)).unwrap_or_else(|e| panic!("/{p}: {e}")).trim().to_string()
}

fn flags(t: &Target, base: &str, registry: &Registry) {
    let name = t.name();
    let ctx = TempDir::new("flags-ctx");
    ctx.write(
        "Dockerfile",
        &format!(
            "FROM {base} AS build\nRUN echo built > /b\n\
             FROM {base}\nCOPY --from=build /b /b\n\
             RUN grep db.internal /etc/hosts > /hosts; df -k /dev/shm | tail -1 | awk '{{print $2}}' > /shm; ulimit -n > /nofile; \
             ls /sys/class/net | tr '\\n' ' ' > /net\n"
        ),
    );
    let (o, out) = build(
        t,
        ctx.path(),
        &[
            "--network",
            "none",
            "--add-host",
            "db.internal:10.1.2.3",
            "--shm-size",
            "128m",
            "--ulimit",
            "nofile=1024:2048",
            "--cgroup-parent",
            "x",
        ],
    );
    assert!(o.status.success(), "{name}: {}", stderr(&o));
    assert!(stderr(&o).contains("--cgroup-parent is ignored"), "{name}");
    assert_eq!(read(out.path(), "net"), "lo", "{name}: --network none leaves only the loopback device");
    assert_eq!(read(out.path(), "shm"), "131072", "{name}: --shm-size");
    assert_eq!(read(out.path(), "nofile"), "1024", "{name}: --ulimit");
    // /etc/hosts is not mounted without a network; with one, the extra name is there.
    let (o, out) = build(t, ctx.path(), &["--add-host", "db.internal:10.1.2.3", "--no-cache"]);
    assert!(o.status.success(), "{name}: {}", stderr(&o));
    assert!(read(out.path(), "hosts").starts_with("10.1.2.3\tdb.internal"), "{name}: --add-host: {:?}", read(out.path(), "hosts"));
    assert_eq!(read(out.path(), "shm"), "65536", "{name}: /dev/shm is 64 MiB by default");

    // --no-cache-filter: the named stage runs again, the rest comes from the cache.
    let (o, _) = build(t, ctx.path(), &["--no-cache-filter", "build", "--add-host", "db.internal:10.1.2.3"]);
    let log = stderr(&o);
    assert!(o.status.success(), "{name}: {log}");
    let step = |text: &str| log.lines().skip_while(|l| !l.contains(text)).take(2).collect::<Vec<_>>().join("\n");
    assert!(!step("RUN echo built").contains("CACHED"), "{name}: the filtered stage came from the cache:\n{log}");
    assert!(step("RUN grep db.internal").contains("CACHED"), "{name}: the other stage ran again:\n{log}");

    // Entitlements and bad values: one line each, before anything runs.
    ctx.write("Dockerfile", &format!("FROM {base}\nRUN --network=host true\n"));
    let (o, _) = build(t, ctx.path(), &[]);
    assert!(!o.status.success() && stderr(&o).contains("kiln build --allow network.host"), "{name}: {}", stderr(&o));
    let (o, _) = build(t, ctx.path(), &["--allow", "network.host"]);
    assert!(o.status.success(), "{name}: --allow network.host: {}", stderr(&o));

    for (bad, says) in [
        (&["--network", "bridge"][..], "expected default, none or host"),
        (&["--add-host", "db"], "expected HOST:IP"),
        (&["--shm-size", "lots"], "is not a size"),
        (&["--ulimit", "files=1"], "unknown resource"),
        (&["--allow", "security.insecure"], "never run privileged steps"),
    ] {
        let (o, _) = build(t, ctx.path(), bad);
        assert!(!o.status.success() && stderr(&o).contains(says), "{name}: {bad:?}: {}", stderr(&o));
    }

    // --pull: a tag that moved is resolved again.
    let tag = format!("{}/flags/{name}-moving:1", registry.addr);
    for marker in ["one", "two"] {
        ctx.write("Dockerfile", &format!("FROM {base}\nRUN echo {marker} > /marker\n"));
        // The second push names the image in the output, as buildx's `-o type=registry,name=`.
        let named = format!("type=registry,name={tag}");
        let args: &[&str] = if marker == "one" { &["-t", &tag, "--push"] } else { &["-o", &named] };
        let o = t.kiln(&[&["build", "--progress", "plain"][..], args, &["."]].concat(), ctx.path());
        assert!(o.status.success(), "{name}: pushing {marker}: {}", stderr(&o));
        if marker == "one" {
            ctx.write("Dockerfile", &format!("FROM {tag}\nRUN cat /marker > /seen\n"));
            let (o, out) = build(t, ctx.path(), &[]);
            assert!(o.status.success(), "{name}: {}", stderr(&o));
            assert_eq!(read(out.path(), "seen"), "one", "{name}");
        }
    }
    ctx.write("Dockerfile", &format!("FROM {tag}\nRUN cat /marker > /seen\n"));
    let (o, out) = build(t, ctx.path(), &["--pull"]);
    assert!(o.status.success(), "{name}: {}", stderr(&o));
    assert_eq!(read(out.path(), "seen"), "two", "{name}: --pull used the tag's old digest");
}

#[test]
fn run_and_cache_flags_work_as_in_buildx() {
    let registry = Registry::start();
    let home = TempDir::new("flags-home");
    let base = base_image(&registry, home.path());
    flags(&Target::Embedded(home), &base, &registry);
    let mut f = farm();
    flags(&f, &base, &registry);
    // An entitlement is granted only where the builder permits it: an agent started without
    // network.host refuses a build that asks for it, in one line saying how to permit it.
    let Target::Farm(c) = &mut f else { unreachable!("farm() is a farm") };
    c.add_agent_with("strict", &[], 2, &["--allow-insecure-entitlement", "none"]);
    let ctx = TempDir::new("flags-strict");
    ctx.write("Dockerfile", &format!("FROM {base}\nRUN --network=host true\n"));
    let o = c.kiln(&["create", "strict", "--name", "strict-builder"], ctx.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let (o, _) = build(&f, ctx.path(), &["--builder", "strict-builder", "--allow", "network.host"]);
    assert!(
        !o.status.success()
            && stderr(&o).contains(
                "entitlement network.host is not granted by agent strict (start it with --allow-insecure-entitlement network.host)"
            ),
        "{}",
        stderr(&o)
    );
}
