#!/usr/bin/env python3
"""`kiln bake --print` of a generated 200-target definition: the time to read, evaluate and
resolve a large organisation's bake file (target: under 50 ms per run, process start included).

The file is what a monorepo writes: variables (one overridden from the environment), a
function, a shared base target every service inherits, 150 services in groups of 10, and a
matrix of 5 versions x 10 variants (50 more targets); `--set` overrides every target.

    python3 scripts/bench-bake.py               # target/release/kiln (built if missing)
    ROUNDS=50 KILN_BIN=path/to/kiln python3 scripts/bench-bake.py
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kilnlab  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "20"))
TARGET_MS = 50.0


def definition():
    out = [
        'variable "REGISTRY" {\n  default = "registry.example.com"\n}\n',
        'variable "GIT_SHA" {\n  default = "dev"\n  validation {\n    condition = GIT_SHA != ""\n    error_message = "GIT_SHA is empty"\n  }\n}\n',
        'function "tag" {\n  params = [name]\n  result = ["${REGISTRY}/${name}:${GIT_SHA}", "${REGISTRY}/${name}:latest"]\n}\n',
        'target "_base" {\n  platforms = ["linux/amd64", "linux/arm64"]\n'
        '  labels = { "org.opencontainers.image.revision" = GIT_SHA }\n  args = { BASE = "debian:12" }\n}\n',
    ]
    services = [f"svc{i:03d}" for i in range(150)]
    for i, s in enumerate(services):
        out.append(
            f'target "{s}" {{\n  inherits = ["_base"]\n  context = "services/{s}"\n  tags = tag("{s}")\n'
            f'  args = {{ INDEX = "{i}", NAME = upper("{s}") }}\n}}\n'
        )
    for g in range(15):
        names = ", ".join(f'"{s}"' for s in services[g * 10:(g + 1) * 10])
        out.append(f'group "team{g:02d}" {{\n  targets = [{names}]\n}}\n')
    out.append(
        'target "lib" {\n  name = "lib-${replace(v, ".", "-")}-${variant}"\n  inherits = ["_base"]\n'
        '  matrix = {\n    v = ["1.0", "1.1", "1.2", "2.0", "2.1"]\n'
        '    variant = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]\n  }\n'
        '  args = { VERSION = v, VARIANT = variant }\n  tags = tag("lib-${v}-${variant}")\n}\n'
    )
    teams = ", ".join(f'"team{g:02d}"' for g in range(15))
    out.append(f'group "default" {{\n  targets = [{teams}, "lib"]\n}}\n')
    return "".join(out)


def main():
    # The release binary (built if missing, as the other benchmarks time it), or $KILN_BIN.
    kiln = kilnlab.kiln_bin(release=True)
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "docker-bake.hcl"), "w") as f:
            f.write(definition())
        env = dict(os.environ, GIT_SHA="4f2c9e1", KILN_HOME=os.path.join(d, "home"))
        cmd = [kiln, "bake", "--print", "--set", "*.args.CI=true"]
        first = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=60)
        if first.returncode != 0:
            sys.exit(f"kiln bake --print failed: {first.stderr}")
        printed = json.loads(first.stdout)
        n = len(printed["target"])
        if n != 200:
            sys.exit(f"expected 200 targets, got {n}")
        times = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            subprocess.run(cmd, cwd=d, env=env, capture_output=True, check=True, timeout=60)
            times.append((time.perf_counter() - start) * 1000)
    median = statistics.median(times)
    print(f"kiln bake --print, {n} targets ({os.path.relpath(kiln, kilnlab.ROOT)}): median {median:.1f} ms, "
          f"min {min(times):.1f} ms, max {max(times):.1f} ms over {ROUNDS} runs (target < {TARGET_MS:.0f} ms)")
    if median >= TARGET_MS:
        sys.exit(1)


if __name__ == "__main__":
    main()
