#!/usr/bin/env python3
"""Benchmark: kiln against buildah (vfs storage, --layers) in one run.

1. Cold build of every Dockerfile of examples/compare for linux/amd64 and linux/arm64
   (fresh state for both tools), wall time.
2. Fully cached rebuild of the same, wall time.
3. Peak memory (max RSS) of `kiln build` with a 1 GiB build context.

Prints the figures and the ratios. Usage (as root): python3 scripts/bench-vs-buildah.py
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kilnlab  # noqa: E402


def timed(fn):
    t = time.monotonic()
    fn()
    return time.monotonic() - t


def kiln_set(kiln, home, base, out):
    for case in kilnlab.cases():
        subprocess.run([kiln, "build", "--progress", "quiet", "--platform", ",".join(kilnlab.PLATFORMS), "--build-arg", f"BASE={base}", case],
                       env=dict(os.environ, KILN_HOME=home), check=True, stdout=out)


def buildah_set(root, base, buildable):
    for case in buildable:
        name = os.path.basename(case)
        kilnlab.buildah(root, "build", "--quiet", "--layers", "--platform", ",".join(kilnlab.PLATFORMS), "--tls-verify=false", "--build-arg", f"BASE={base}",
                        "--manifest", f"localhost/bench-{name}", "-f", os.path.join(case, "Dockerfile"), case, check=True, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)


def main():
    kiln = kilnlab.kiln_bin(release=True)
    work = tempfile.mkdtemp(prefix="kiln-bench-")
    with kilnlab.Registry() as reg:
        base = kilnlab.build_base(kiln, os.path.join(work, "base-home"), reg)
        # Only what buildah can build takes part (Debian's buildah has no heredocs).
        buildable = []
        probe = os.path.join(work, "probe")
        for case in kilnlab.cases():
            r = kilnlab.buildah(probe, "build", "--quiet", "--platform", "linux/amd64", "--tls-verify=false", "--build-arg", f"BASE={base}", "-f",
                                os.path.join(case, "Dockerfile"), case, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if r.returncode == 0:
                buildable.append(case)
        shutil.rmtree(probe, ignore_errors=True)
        # The buildah probe pulled the base; pull it into a fresh root inside the timing instead.
        n = len(buildable)
        home = os.path.join(work, "kiln-home")
        broot = os.path.join(work, "buildah")
        saved = kilnlab.cases
        kilnlab.cases = lambda: buildable
        kiln_cold = timed(lambda: kiln_set(kiln, home, base, subprocess.DEVNULL))
        buildah_cold = timed(lambda: buildah_set(broot, base, buildable))
        kiln_cached = timed(lambda: kiln_set(kiln, home, base, subprocess.DEVNULL))
        buildah_cached = timed(lambda: buildah_set(broot, base, buildable))
        kilnlab.cases = saved

    # Peak memory with a 1 GiB context: 64 files of 16 MiB of random bytes.
    ctx = os.path.join(work, "big")
    os.makedirs(ctx)
    chunk = os.urandom(1 << 20)
    for i in range(64):
        with open(os.path.join(ctx, f"blob-{i:02}"), "wb") as f:
            for j in range(16):
                f.write(chunk[j:] + chunk[:j])
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write("FROM scratch\nCOPY . /ctx/\n")
    # wait4 gives this one process's own peak RSS (RUSAGE_CHILDREN would include cargo and buildah).
    t = time.monotonic()
    proc = subprocess.Popen([kiln, "build", "--progress", "quiet", "--platform", "linux/amd64", ctx], env=dict(os.environ, KILN_HOME=os.path.join(work, "big-home")),
                            stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    big_time = time.monotonic() - t
    if status != 0:
        raise RuntimeError("kiln failed on the 1 GiB context")
    peak_kib = usage.ru_maxrss
    shutil.rmtree(work, ignore_errors=True)

    print(f"kiln vs buildah: {n} Dockerfiles of examples/compare, platforms {','.join(kilnlab.PLATFORMS)}")
    print(f"  cold build     kiln {kiln_cold:7.2f} s   buildah {buildah_cold:7.2f} s   kiln/buildah {kiln_cold / buildah_cold:5.2f}  (target <= 1)")
    print(f"  cached rebuild kiln {kiln_cached:7.2f} s   buildah {buildah_cached:7.2f} s   kiln/buildah {kiln_cached / buildah_cached:5.2f}  (targets: kiln < 0.5 s, ratio <= 0.33)")
    print(f"  1 GiB context  kiln peak RSS {peak_kib / 1024:6.1f} MiB (target < 200 MiB), build {big_time:.1f} s")


if __name__ == "__main__":
    main()
