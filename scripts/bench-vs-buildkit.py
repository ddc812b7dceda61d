#!/usr/bin/env python3
"""kiln against Docker's BuildKit (Debian's docker.io), side by side in one run.

Measures the fully cached rebuild of a small two-platform Dockerfile: kiln builds both
platforms in one command on its embedded farm (a real coordinator and agent in the process);
Docker 20.10's builder takes one platform per `docker build`, so its figure is the two builds
together. Each side is warmed once, then rebuilt ROUNDS times, alternating; medians are printed.

    python3 scripts/bench-vs-buildkit.py        # as root, on a machine set up by scripts/setup-host.sh
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kilnlab  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "10"))
DOCKERFILE = """ARG BASE
FROM $BASE
COPY app.txt /app/app.txt
RUN wc -c /app/app.txt > /app/size
WORKDIR /app
ENV MODE=release
CMD ["cat", "/app/size"]
"""


def timed(cmd, **kw):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t


def main():
    kiln = kilnlab.kiln_bin(release=True)
    home = tempfile.mkdtemp(prefix="kiln-bench-home-")
    ctx = tempfile.mkdtemp(prefix="kiln-bench-ctx-")
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write(DOCKERFILE)
    with open(os.path.join(ctx, "app.txt"), "w") as f:
        f.write("hello\n" * 100)
    with kilnlab.Registry() as reg:
        base = kilnlab.build_base(kiln, home, reg)
        kenv = dict(os.environ, KILN_HOME=home)
        kiln_cmd = [kiln, "build", "--progress", "quiet", "--platform", ",".join(kilnlab.PLATFORMS), "--build-arg", f"BASE={base}", ctx]
        with kilnlab.Dockerd(insecure_registry=reg.addr) as d:
            docker_cmds = [
                d.cli("build", "--network=host", "--platform", p, "--build-arg", f"BASE={base}", "-t", f"bench:{p.split('/')[1]}", ctx)
                for p in kilnlab.PLATFORMS
            ]
            # Warm both caches (and Docker's copy of the base image).
            timed(kiln_cmd, env=kenv)
            for c in docker_cmds:
                timed(c, env=d.env())
            ks, ds = [], []
            for _ in range(ROUNDS):
                ks.append(timed(kiln_cmd, env=kenv))
                ds.append(sum(timed(c, env=d.env()) for c in docker_cmds))
    k, b = statistics.median(ks), statistics.median(ds)
    print(f"fully cached two-platform rebuild, median of {ROUNDS}:")
    print(f"  kiln (embedded farm, one command):        {k:.3f} s  (min {min(ks):.3f}, max {max(ks):.3f})")
    print(f"  Docker BuildKit (docker.io, 2 builds):    {b:.3f} s  (min {min(ds):.3f}, max {max(ds):.3f})")
    print(f"  kiln / BuildKit:                          {k / b:.2f}x")


if __name__ == "__main__":
    main()
