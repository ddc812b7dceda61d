#!/usr/bin/env python3
"""Builds every Dockerfile of examples/compare with kiln and with buildah (vfs storage), for
linux/amd64 and linux/arm64, and compares per platform the final filesystem (paths, types,
modes, ownership, content, link targets) and the image config (Env, Entrypoint, Cmd,
WorkingDir, User, Labels, ExposedPorts, Volumes, StopSignal).

Usage (as root, after scripts/setup-host.sh): python3 scripts/compare-buildah.py
"""
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kilnlab  # noqa: E402

CONFIG_FIELDS = ["Env", "Entrypoint", "Cmd", "WorkingDir", "User", "Labels", "ExposedPorts", "Volumes", "StopSignal"]
# Labels buildah adds on its own; they are not part of what the Dockerfile asks for.
TOOL_LABELS = {"io.buildah.version"}
# Empty mount points buildah's runc leaves in images after RUN. Docker/BuildKit remove these
# stubs, so they are not differences kiln should copy; they are ignored when kiln lacks them.
RUNTIME_STUBS = ["dev", "proc", "sys", "run", "etc/hosts", "etc/hostname", "etc/resolv.conf"]


def drop_stubs(kiln_tree, buildah_tree):
    for p in RUNTIME_STUBS:
        e = buildah_tree.get(p)
        if p in kiln_tree or e is None:
            continue
        empty_dir = stat.S_ISDIR(e["type"]) and not any(k.startswith(p + "/") for k in buildah_tree)
        empty_file = stat.S_ISREG(e["type"]) and e.get("sha256") == hashlib.sha256(b"").hexdigest()
        if empty_dir or empty_file:
            del buildah_tree[p]
    # /etc itself, when buildah created it only to hold the stubs.
    if "etc" in buildah_tree and "etc" not in kiln_tree and not any(k.startswith("etc/") for k in buildah_tree):
        del buildah_tree["etc"]


def unpack(archive, ref, arch, dest):
    layout = dest + "-layout"
    subprocess.run(["skopeo", "copy", "-q", "--override-arch", arch, f"oci-archive:{archive}:{ref}", f"oci:{layout}:img"], check=True)
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:img", dest], check=True, stdout=subprocess.DEVNULL)
    cfg = subprocess.run(["skopeo", "inspect", "--config", "--raw", "--override-arch", arch, f"oci-archive:{archive}:{ref}"], check=True, capture_output=True).stdout
    return os.path.join(dest, "rootfs"), json.loads(cfg).get("config", {})


def tree(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            entry = {"type": kind, "mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid, "gid": st.st_gid}
            if stat.S_ISLNK(st.st_mode):
                entry["link"] = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    entry["sha256"] = hashlib.sha256(f.read()).hexdigest()
            out[rel] = entry
    return out


def config_view(cfg):
    view = {k: cfg.get(k) or None for k in CONFIG_FIELDS}
    # The environment is a set of variables; the order entries were added in is not semantic.
    if view["Env"]:
        view["Env"] = sorted(view["Env"])
    if view["Labels"]:
        view["Labels"] = {k: v for k, v in view["Labels"].items() if k not in TOOL_LABELS} or None
    return view


def diff(a, b, label_a="kiln", label_b="buildah"):
    problems = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            problems.append(f"{k}: {label_a}={a.get(k)} {label_b}={b.get(k)}")
    return problems


def main():
    kiln = kilnlab.kiln_bin()
    work = tempfile.mkdtemp(prefix="kiln-compare-")
    home = os.path.join(work, "kiln-home")
    results = []
    skipped = []
    with kilnlab.Registry() as reg:
        base = kilnlab.build_base(kiln, home, reg)
        for case in kilnlab.cases():
            name = os.path.basename(case)
            kiln_tar = os.path.join(work, f"{name}-kiln.tar")
            subprocess.run([kiln, "build", "--progress", "quiet", "--platform", ",".join(kilnlab.PLATFORMS), "--build-arg", f"BASE={base}",
                            "-t", f"cmp/{name}:1", "-o", f"type=oci,dest={kiln_tar}", case], env=dict(os.environ, KILN_HOME=home), check=True,
                           stdout=subprocess.DEVNULL)
            for platform in kilnlab.PLATFORMS:
                arch = platform.split("/")[1]
                image = f"localhost/cmp-{name}-{arch}"
                built = kilnlab.buildah(os.path.join(work, "buildah"), "build", "--quiet", "--platform", platform, "--tls-verify=false", "--build-arg",
                                        f"BASE={base}", "-f", os.path.join(case, "Dockerfile"), "-t", image, case, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
                if built.returncode != 0:
                    reason = (built.stderr.strip().splitlines() or ["?"])[-1]
                    skipped.append((name, platform, reason))
                    print(f"SKIPPED  {name} {platform}: buildah cannot build it: {reason}")
                    continue
                b_tar = os.path.join(work, f"{name}-{arch}-buildah.tar")
                kilnlab.buildah(os.path.join(work, "buildah"), "push", "--quiet", image, f"oci-archive:{b_tar}:cmp/{name}:1", check=True)
                k_root, k_cfg = unpack(kiln_tar, f"cmp/{name}:1", arch, os.path.join(work, f"{name}-{arch}-kiln"))
                b_root, b_cfg = unpack(b_tar, f"cmp/{name}:1", arch, os.path.join(work, f"{name}-{arch}-buildah"))
                k_tree, b_tree = tree(k_root), tree(b_root)
                drop_stubs(k_tree, b_tree)
                problems = diff(k_tree, b_tree) + diff(config_view(k_cfg), config_view(b_cfg))
                results.append((name, platform, problems))
                print(f"{'MATCH   ' if not problems else 'MISMATCH'} {name} {platform}")
                for p in problems[:10]:
                    print(f"    {p}")
    matched = sum(1 for r in results if not r[2])
    print(f"\n{matched} of {len(results)} (Dockerfile, platform) pairs match between kiln and buildah; {len(skipped)} skipped because buildah cannot build them")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if matched == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
