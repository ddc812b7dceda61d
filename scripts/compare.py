#!/usr/bin/env python3
"""The judge: builds every case of examples/compare with kiln and with Docker's own BuildKit
(Debian's docker.io 20.10, a private dockerd), pushes both to a loopback registry, reads them
back over HTTP exactly as pushed and compares them per platform (linux/amd64, linux/arm64):

- the filesystem: the layers applied in order (OCI whiteouts, overlay semantics) into a tree of
  path -> type, mode, uid, gid, content digest, symlink target, device numbers, xattrs and
  hard-link groups; mtimes are ignored;
- the image config: every field of `config` (Env in order), the platform fields, any other
  top-level field, and the history (created_by, empty_layer, comment); `created` is ignored.
  A missing field, JSON null and an empty value are the same (Go's `omitempty` cannot tell
  them apart), nothing else is normalised.

Both images are also checked on their own: every blob matches its digest, rootfs.diff_ids
match the uncompressed layers and the non-empty history entries match the layer count.

Differences listed in examples/compare/expectations.json are accepted (with the reason quoted
there). A case Docker 20.10 cannot build carries examples/compare/NAME/expect.json: the error
Docker must fail with (docker_error) and the values kiln must produce, checked when Docker fails.

Usage (as root): python3 scripts/compare.py [--only NAME[,NAME..]] [--keep] [--farm] [-j N]
Environment: KILN_BIN (the kiln binary), KILN_FIXTURES (the fixture cache directory).
Exit status 1 on any unexpected difference.
"""
import argparse
import concurrent.futures
import difflib
import fnmatch
import gzip
import hashlib
import io
import json
import os
import queue
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kilnlab  # noqa: E402

CASES = os.path.join(kilnlab.ROOT, "examples/compare")
ARCHES = ["amd64", "arm64"]
BUILD_SECS = 900
PUSH_SECS = 300
LOG_LOCK = threading.Lock()

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")


def say(*lines):
    with LOG_LOCK:
        for line in lines:
            print(line, flush=True)


def run(cmd, timeout, log=None, **kw):
    """A subprocess with a deadline; output goes to `log` (a path) when given. Returns
    (returncode, last lines of output). A timeout kills the process group it started."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.wait()
            rc = f"timeout after {timeout}s"
    finally:
        if log:
            out.close()
    tail = ""
    if log and rc != 0:
        with open(log, "rb") as f:
            lines = [line for line in f.read().decode(errors="replace").splitlines() if line.strip()]
        tail = "\n".join(lines[-6:])
    return rc, tail


# ---------------------------------------------------------------- fixtures and base images


def debian_tar(arch):
    """A merged-/usr Debian bookworm minbase rootfs tar for `arch`, made once by mmdebstrap
    (arm64 runs under qemu) and cached in the fixtures directory."""
    d = os.path.join(kilnlab.fixtures_dir(), "debian")
    os.makedirs(d, exist_ok=True)
    out = os.path.join(d, f"debian-{arch}.tar")
    if os.path.exists(out):
        return out
    if not shutil.which("mmdebstrap"):
        raise RuntimeError("mmdebstrap is missing: apt-get install -y mmdebstrap")
    tmp = os.path.join(d, f"debian-{arch}.tmp.tar")
    say(f"making the Debian fixture for {arch} with mmdebstrap (cached in {d})")
    rc, tail = run(["mmdebstrap", "--variant=minbase", "--format=tar", f"--architectures={arch}", "bookworm", tmp, "http://deb.debian.org/debian"],
                   2400, log=os.path.join(d, f"mmdebstrap-{arch}.log"))
    if rc != 0:
        raise RuntimeError(f"mmdebstrap {arch} failed ({rc}):\n{tail}")
    os.rename(tmp, out)
    return out


def build_debian_base(kiln, env, registry, work):
    """The two-platform Debian image, built by kiln from the mmdebstrap tars; returns its reference."""
    ctx = os.path.join(work, "debian-base")
    os.makedirs(ctx, exist_ok=True)
    for arch in ARCHES:
        src, dst = debian_tar(arch), os.path.join(ctx, f"debian-{arch}.tar")
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy(src, dst)
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write('FROM scratch\nARG TARGETARCH\nADD debian-${TARGETARCH}.tar /\nCMD ["bash"]\n')
    ref = f"{registry.addr}/base/debian:bookworm"
    rc, tail = run([kiln, "build", "--progress", "plain", "--platform", ",".join(kilnlab.PLATFORMS), "-t", ref, "--push", ctx], BUILD_SECS,
                   log=os.path.join(work, "debian-base.log"), env=env)
    if rc != 0:
        raise RuntimeError(f"kiln could not build the Debian base ({rc}):\n{tail}")
    return ref


# ---------------------------------------------------------------- a real farm (--farm)


class Farm:
    """One `kiln coordinator` and one `kiln agent` on loopback, as tests/src/cluster.rs starts
    them; `env()` points the CLI at them. Stops only the processes it started."""

    def __init__(self, kiln, work):
        self.kiln, self.dir, self.procs = kiln, os.path.join(work, "farm"), []

    def _start(self, name, args, env=None):
        log = open(os.path.join(self.dir, f"{name}.log"), "ab")
        p = subprocess.Popen([self.kiln, *args], stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.procs.append((p, log))
        return p

    def __enter__(self):
        os.makedirs(self.dir, exist_ok=True)
        self.addr = f"127.0.0.1:{kilnlab.free_port()}"
        c1 = os.path.join(self.dir, "c1")
        self._start("coordinator", ["coordinator", "--id", "1", "--listen", self.addr, "--data-dir", c1, "--peers", f"1={self.addr}"])
        deadline = time.time() + 60
        while not (os.path.exists(os.path.join(c1, "admin.token")) and os.path.exists(os.path.join(c1, "agent.token"))):
            if time.time() > deadline:
                raise RuntimeError(f"the coordinator wrote no tokens; see {self.dir}/coordinator.log")
            time.sleep(0.2)
        time.sleep(0.2)
        self.admin = open(os.path.join(c1, "admin.token")).read().strip()
        agent_token = open(os.path.join(c1, "agent.token")).read().strip()
        self._start("agent", ["agent", "--host", self.addr, "--token", agent_token, "--name", "judge", "--data-dir", os.path.join(self.dir, "agent"),
                              "--slots", "2"], env=dict(os.environ, KILN_HOME=os.path.join(self.dir, "agent-home")))
        deadline = time.time() + 90
        while True:
            out = subprocess.run([self.kiln, "context", "ls", "--format", "json"], env=self.env(), capture_output=True, timeout=30)
            try:
                if any(c.get("name") == "judge" and c.get("status") == "ready" for c in json.loads(out.stdout or b"[]")):
                    break
            except ValueError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"the agent did not become ready; see {self.dir}/agent.log")
            time.sleep(0.5)
        return self

    def env(self, home=None):
        return dict(os.environ, KILN_HOME=home or os.path.join(self.dir, "cli"), KILN_HOST=self.addr, KILN_TOKEN=self.admin)

    def __exit__(self, *exc):
        for p, log in reversed(self.procs):
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            log.close()
        mounts = open("/proc/mounts").read().split("\n")
        points = sorted((m.split()[1] for m in mounts if m and m.split()[1].startswith(self.dir)), key=len, reverse=True)
        for m in points:
            subprocess.run(["umount", "-l", m], timeout=60)


# ---------------------------------------------------------------- reading an image from the registry


class Image:
    def __init__(self):
        self.config, self.layers, self.problems, self.notes = {}, [], [], []


def http_get(url, accept=None):
    req = urllib.request.Request(url, headers={"Accept": ", ".join(accept)} if accept else {})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.headers.get("Content-Type", "").split(";")[0], r.read()


def fetch(registry, repo, tag, arch):
    """The image of linux/`arch` under repo:tag, exactly as pushed: config blob and the
    uncompressed layers."""
    img = Image()
    base = f"http://{registry}/v2/{repo}"
    ctype, body = http_get(f"{base}/manifests/{tag}", INDEX_TYPES + MANIFEST_TYPES)
    doc = json.loads(body)
    mtype = doc.get("mediaType") or ctype
    if mtype in INDEX_TYPES or "manifests" in doc:
        picks = [m for m in doc["manifests"] if m.get("platform", {}).get("os") == "linux" and m.get("platform", {}).get("architecture") == arch]
        if len(picks) != 1:
            raise RuntimeError(f"{repo}:{tag}: {len(picks)} manifests for linux/{arch} in the index")
        img.notes.append(f"index {mtype}; platform {picks[0]['platform']}")
        ctype, body = http_get(f"{base}/manifests/{picks[0]['digest']}", MANIFEST_TYPES)
        if "sha256:" + hashlib.sha256(body).hexdigest() != picks[0]["digest"]:
            img.problems.append(("image.manifest", f"manifest of {arch} does not match its digest in the index"))
        doc = json.loads(body)
        mtype = doc.get("mediaType") or ctype
    img.notes.append(f"manifest {mtype}")
    cfg_blob = blob(base, doc["config"]["digest"], img)
    img.config = json.loads(cfg_blob)
    diff_ids = img.config.get("rootfs", {}).get("diff_ids", [])
    if len(diff_ids) != len(doc["layers"]):
        img.problems.append(("image.rootfs", f"{len(doc['layers'])} layers but {len(diff_ids)} diff_ids"))
    for i, layer in enumerate(doc["layers"]):
        data = blob(base, layer["digest"], img)
        raw = decompress(data, layer.get("mediaType", ""), img)
        did = "sha256:" + hashlib.sha256(raw).hexdigest()
        if i < len(diff_ids) and diff_ids[i] != did:
            img.problems.append(("image.rootfs", f"layer {i}: diff_id {diff_ids[i][:19]} but the layer is {did[:19]}"))
        img.layers.append((did, raw))
    nonempty = sum(1 for h in img.config.get("history", []) if not h.get("empty_layer"))
    if img.config.get("history") and nonempty != len(doc["layers"]):
        img.problems.append(("image.history", f"{nonempty} non-empty history entries but {len(doc['layers'])} layers"))
    return img


def blob(base, digest, img):
    _, data = http_get(f"{base}/blobs/{digest}")
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        img.problems.append(("image.blob", f"blob {digest[:19]} does not match its digest"))
    return data


def decompress(data, media_type, img):
    if data[:2] == b"\x1f\x8b":
        if "zstd" in media_type:
            img.problems.append(("image.layer", f"gzip data under media type {media_type}"))
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        img.notes.append("zstd layer: Python has no zstd, decompressed with the zstd binary")
        return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True, timeout=120).stdout
    if "gzip" in media_type or "zstd" in media_type:
        img.problems.append(("image.layer", f"uncompressed data under media type {media_type}"))
    return data


# ---------------------------------------------------------------- applying layers


def norm(name):
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/" + "/".join(parts)


def parent(p):
    return p.rsplit("/", 1)[0] or "/"


KINDS = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.CONTTYPE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
         tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo", tarfile.LNKTYPE: "hardlink"}
PARSED = {}
PARSED_LOCK = threading.Lock()


def parse_layer(did, raw):
    """The members of one layer as (path, fields, linkname) in tar order, cached by diff_id."""
    with PARSED_LOCK:
        if did in PARSED:
            return PARSED[did]
    members = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        for m in tf:
            kind = KINDS.get(m.type)
            if kind is None:
                members.append((norm(m.name), {"type": f"unknown tar type {m.type!r}"}, None))
                continue
            e = {"type": kind, "mode": oct(m.mode & 0o7777), "uid": m.uid, "gid": m.gid}
            xattrs = {k[len("SCHILY.xattr."):]: hashlib.sha256(v.encode("utf-8", "surrogateescape")).hexdigest()[:16] if len(v) > 40 else v
                      for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
            if xattrs:
                e["xattrs"] = xattrs
            if kind == "file":
                data = tf.extractfile(m).read()
                e["sha256"] = hashlib.sha256(data).hexdigest()
                e["size"] = m.size
                if 0 < m.size <= 200:  # shown in differences; redundant with sha256 for the comparison
                    e["text"] = data.decode(errors="replace")
            elif kind == "symlink":
                e["target"] = m.linkname
            elif kind in ("char", "block"):
                e["dev"] = f"{m.devmajor},{m.devminor}"
            members.append((norm(m.name), e, norm(m.linkname) if kind == "hardlink" else None))
    with PARSED_LOCK:
        PARSED[did] = members
    return members


def apply_layers(layers):
    """path -> entry after applying every layer; a list of notes about odd layer entries."""
    tree = {"/": {"type": "dir", "mode": "0o755", "uid": 0, "gid": 0}}
    notes = []
    inode = [0]

    def remove(p, with_self=True):
        pre = p.rstrip("/") + "/"
        for k in [k for k in tree if k.startswith(pre)]:
            del tree[k]
        if with_self and p != "/":
            tree.pop(p, None)

    def ensure_dirs(p):
        """Parents of p as directories, as an overlay/naive untar would leave them: a symlink or
        file standing where a parent is needed is replaced by a new directory."""
        chain = []
        q = parent(p)
        while q != "/":
            chain.append(q)
            q = parent(q)
        for q in reversed(chain):
            e = tree.get(q)
            if e is None:
                tree[q] = {"type": "dir", "mode": "0o755", "uid": 0, "gid": 0}
            elif e["type"] != "dir":
                notes.append(f"{p}: its parent {q} is a {e['type']} in the lower layers; the layer replaces it with a directory")
                remove(q)
                tree[q] = {"type": "dir", "mode": "0o755", "uid": 0, "gid": 0}

    for n, (did, raw) in enumerate(layers):
        members = parse_layer(did, raw)
        # Whiteouts act on the lower layers only, so they go first.
        for path, e, _ in members:
            base = path.rsplit("/", 1)[1]
            if base == ".wh..wh..opq":
                remove(parent(path), with_self=False)
            elif base.startswith(".wh."):
                target = parent(path).rstrip("/") + "/" + base[4:]
                if target not in tree:
                    notes.append(f"layer {n}: whiteout {path} for a path that does not exist")
                remove(target)
        seen = set()
        for path, e, link in members:
            base = path.rsplit("/", 1)[-1]
            if base.startswith(".wh."):
                continue
            if path in seen and e["type"] != "dir":
                notes.append(f"layer {n}: {path} appears twice")
            seen.add(path)
            if path == "/":
                tree["/"] = {k: v for k, v in e.items()}
                continue
            ensure_dirs(path)
            old = tree.get(path)
            if e["type"] == "hardlink":
                src = tree.get(link)
                if src is None:
                    notes.append(f"layer {n}: hard link {path} -> {link}, which does not exist")
                    tree[path] = {"type": "broken hard link", "to": link}
                    continue
                if "inode" not in src:
                    inode[0] += 1
                    src["inode"] = inode[0]
                if old is not None and old["type"] == "dir":
                    remove(path)
                tree[path] = src  # the same object: one inode
                continue
            if old is not None and old["type"] == "dir" and e["type"] == "dir":
                tree[path] = dict(e)  # metadata replaced, children kept
                continue
            if old is not None and old["type"] == "dir":
                remove(path)
            tree[path] = dict(e)
    # Hard-link groups, by shared inode.
    groups = {}
    for p, e in tree.items():
        if "inode" in e:
            groups.setdefault(e["inode"], []).append(p)
    out = {}
    for p, e in tree.items():
        v = {k: x for k, x in e.items() if k != "inode"}
        if "inode" in e and len(groups[e["inode"]]) > 1:
            v["hardlinks"] = len(groups[e["inode"]])
            v["linked_with"] = ",".join(sorted(q for q in groups[e["inode"]] if q != p))
        out[p] = v
    return out, notes


def show(e):
    if e is None:
        return "absent"
    bits = [e.get("type", "?"), e.get("mode", "").replace("0o", "0"), f"{e.get('uid')}:{e.get('gid')}"]
    if "text" in e:
        bits.append(f"{e['size']}B {json.dumps(e['text'][:60])}")
    elif "size" in e:
        bits.append(f"{e['size']}B sha256:{e['sha256'][:12]}")
    if "target" in e:
        bits.append(f"-> {e['target']}")
    if "dev" in e:
        bits.append(f"dev {e['dev']}")
    if "xattrs" in e:
        bits.append(f"xattrs {e['xattrs']}")
    if "linked_with" in e:
        bits.append(f"hardlinked with {e['linked_with']}")
    return " ".join(str(b) for b in bits)


def diff_trees(k, d):
    """(key, message) per differing path; paths under a directory present on one side only are
    summarised under that directory."""
    out = []
    only_k = {p for p in k if p not in d}
    only_d = {p for p in d if p not in k}
    for p in sorted(set(k) | set(d)):
        if p in only_k and parent(p) in only_k and p != "/":
            continue
        if p in only_d and parent(p) in only_d and p != "/":
            continue
        a, b = k.get(p), d.get(p)
        if a == b:
            continue
        if a is None or b is None:
            side, e, tree, other = ("kiln", a, k, "docker") if b is None else ("docker", b, d, "kiln")
            under = sum(1 for q in tree if q.startswith(p.rstrip("/") + "/"))
            extra = f" (+{under} below)" if under else ""
            out.append((f"fs:{p}", f"{p}: only in {side}: {show(e)}{extra}"))
            continue
        fields = [f for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]
        if set(fields) <= {"mode", "uid", "gid", "xattrs", "linked_with", "hardlinks"}:
            detail = "; ".join(f"{f} kiln={a.get(f)} docker={b.get(f)}" for f in fields if f != "hardlinks")
            out.append((f"fs:{p}", f"{p}: {detail}"))
        else:
            out.append((f"fs:{p}", f"{p}: kiln={show(a)} | docker={show(b)}"))
    return out


# ---------------------------------------------------------------- comparing configs


def empty(v):
    return v is None or v == [] or v == {} or v == ""


def j(v):
    return json.dumps(v, separators=(",", ":"))


def diff_configs(k, d):
    out = []
    for f in ["architecture", "os", "variant", "os.version", "os.features"]:
        if not (empty(k.get(f)) and empty(d.get(f))) and k.get(f) != d.get(f):
            out.append((f"platform.{f}", f"{f}: kiln={j(k.get(f))} docker={j(d.get(f))}"))
    for f in sorted((set(k) | set(d)) - {"architecture", "os", "variant", "os.version", "os.features", "config", "rootfs", "history", "created"}):
        if not (empty(k.get(f)) and empty(d.get(f))) and k.get(f) != d.get(f):
            out.append((f"top.{f}", f"top-level {f}: kiln={j(k.get(f))} docker={j(d.get(f))}"))
    kc, dc = k.get("config") or {}, d.get("config") or {}
    for f in sorted(set(kc) | set(dc)):
        a, b = kc.get(f), dc.get(f)
        if (empty(a) and empty(b)) or a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and f != "Healthcheck":
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    out.append((f"config.{f}", f"{f}[{key}]: kiln={j(a.get(key))} docker={j(b.get(key))}"))
        elif f == "Env" and isinstance(a, list) and isinstance(b, list) and sorted(a) == sorted(b):
            out.append((f"config.Env", f"Env order: kiln={j(a)} docker={j(b)}"))
        else:
            out.append((f"config.{f}", f"{f}: kiln={j(a)} docker={j(b)}"))
    kh = [(h.get("created_by", ""), bool(h.get("empty_layer")), h.get("comment", "")) for h in k.get("history") or []]
    dh = [(h.get("created_by", ""), bool(h.get("empty_layer")), h.get("comment", "")) for h in d.get("history") or []]
    if kh != dh:
        sm = difflib.SequenceMatcher(a=kh, b=dh, autojunk=False)
        for op, i1, i2, j1, j2 in sm.get_opcodes():
            if op == "equal":
                continue
            for i in range(max(i2 - i1, j2 - j1)):
                a = kh[i1 + i] if i1 + i < i2 else None
                b = dh[j1 + i] if j1 + i < j2 else None
                out.append(("history", f"history[{i1 + i if a else '-'}/{j1 + i if b else '-'}]: kiln={hist(a)} docker={hist(b)}"))
    return out


def hist(h):
    if h is None:
        return "(none)"
    created_by, empty_layer, comment = h
    return j(created_by) + (" empty_layer" if empty_layer else "") + (f" comment={j(comment)}" if comment else "")


# ---------------------------------------------------------------- expectations


def load_expectations():
    path = os.path.join(CASES, "expectations.json")
    if not os.path.exists(path):
        return []
    return json.load(open(path))["accepted"]


def accepted(expectations, case, platform, key, message):
    """The expectations entry accepting this difference: case, platform, key and (when the entry
    has one) the whole message must match its globs."""
    for x in expectations:
        if (fnmatch.fnmatchcase(case, x["case"]) and fnmatch.fnmatchcase(platform, x.get("platform", "*")) and fnmatch.fnmatchcase(key, x["key"])
                and fnmatch.fnmatchcase(message, x.get("message", "*"))):
            return x
    return None


def check_expect(spec, tree, cfg):
    """Differences between kiln's image and a case's expect.json."""
    out = []
    for p, want in spec.get("paths", {}).items():
        got = tree.get(p)
        if want is None:
            if got is not None:
                out.append((f"fs:{p}", f"{p}: expected absent, kiln has {show(got)}"))
            continue
        if got is None:
            out.append((f"fs:{p}", f"{p}: expected {want}, absent in kiln"))
            continue
        for f, v in want.items():
            if f == "content":
                have = got.get("sha256")
                if have != hashlib.sha256(v.encode()).hexdigest():
                    out.append((f"fs:{p}", f"{p}: content differs from {v!r} (kiln: {show(got)})"))
            elif f == "mode":
                if got.get("mode") != oct(int(v, 8)):
                    out.append((f"fs:{p}", f"{p}: mode expected {v}, kiln {got.get('mode')}"))
            elif got.get(f) != v:
                out.append((f"fs:{p}", f"{p}: {f} expected {j(v)}, kiln {j(got.get(f))}"))
    for f, v in spec.get("config", {}).items():
        have = (cfg.get("config") or {}).get(f)
        if not (empty(have) and empty(v)) and have != v:
            out.append((f"config.{f}", f"{f}: expected {j(v)}, kiln {j(have)}"))
    if "history" in spec:
        have = [h.get("created_by", "") for h in cfg.get("history") or []][-len(spec["history"]):]
        if have != spec["history"]:
            out.append(("history", f"history (last {len(spec['history'])} created_by): expected {j(spec['history'])}, kiln {j(have)}"))
    return out


# ---------------------------------------------------------------- one case


def compare_case(ctx, case, home):
    name = os.path.basename(case)
    logs = os.path.join(ctx.work, "logs")
    reg = ctx.registry
    args = ["--build-arg", f"BASE={ctx.base}", "--build-arg", f"DEBIAN={ctx.debian}"]
    spec_path = os.path.join(case, "expect.json")
    spec = json.load(open(spec_path)) if os.path.exists(spec_path) else None
    results = []
    t0 = time.time()
    env = ctx.farm.env(home) if ctx.farm else dict(os.environ, KILN_HOME=home)
    rc, tail = run([ctx.kiln, "build", "--progress", "plain", "--platform", ",".join(kilnlab.PLATFORMS), *args, "-t", f"{reg}/kiln/{name}:1", "--push", case],
                   BUILD_SECS, log=os.path.join(logs, f"{name}-kiln.log"), env=env)
    kiln_ok = rc == 0
    kiln_err = f"kiln build failed ({rc}): {tail}" if not kiln_ok else None
    t_kiln = time.time() - t0
    for arch in ARCHES:
        platform = f"linux/{arch}"
        t1 = time.time()
        dlog = os.path.join(logs, f"{name}-docker-{arch}.log")
        drc, dtail = run(ctx.dockerd.cli("build", "--progress", "plain", "--network=host", "--platform", platform, *args, "-t", f"{reg}/docker/{name}:{arch}", case),
                         BUILD_SECS, log=dlog, env=ctx.dockerd.env())
        if drc == 0:
            drc, dtail = run(ctx.dockerd.cli("push", f"{reg}/docker/{name}:{arch}"), PUSH_SECS, log=dlog, env=ctx.dockerd.env())
        problems, notes = [], []
        k_img = None
        if kiln_ok:
            try:
                k_img = fetch(reg, f"kiln/{name}", "1", arch)
                k_tree, k_notes = apply_layers(k_img.layers)
                if ctx.keep:
                    dump(ctx, name, arch, "kiln", k_tree, k_img.config)
                problems += [(key, f"kiln image: {m}") for key, m in k_img.problems]
                notes += [f"kiln: {n}" for n in k_notes]
            except Exception as e:  # noqa: BLE001 - a broken image is a finding, not a crash
                problems.append(("image", f"kiln image unreadable: {e!r}"))
                k_img = None
        else:
            problems.append(("build", kiln_err))
        mode = "docker"
        if drc != 0:
            if spec is None:
                problems.append(("docker", f"docker build failed ({drc}): {dtail}"))
            else:
                mode = "expect"
                notes.append(f"docker 20.10 cannot build it (expected: {spec.get('why', '?')}); last line: {dtail.splitlines()[-1] if dtail else '?'}")
                with open(dlog, errors="replace") as f:
                    dlog_text = f.read()
                if spec.get("docker_error") and spec["docker_error"] not in dlog_text:
                    problems.append(("docker", f"docker failed, but not with the expected {spec['docker_error']!r}: {dtail}"))
                if k_img is not None:
                    problems += check_expect(spec, k_tree, k_img.config)
        else:
            try:
                d_img = fetch(reg, f"docker/{name}", arch, arch)
                d_tree, d_notes = apply_layers(d_img.layers)
                problems += [(key, f"docker image: {m}") for key, m in d_img.problems]
                notes += [f"docker: {n}" for n in d_notes]
                if ctx.keep:
                    dump(ctx, name, arch, "docker", d_tree, d_img.config)
                if k_img is not None:
                    problems += diff_trees(k_tree, d_tree) + diff_configs(k_img.config, d_img.config)
                    if spec is not None:
                        notes.append("docker 20.10 built a case marked expect.json; compared in full and against expect.json")
                        problems += check_expect(spec, k_tree, k_img.config)
            except Exception as e:  # noqa: BLE001
                problems.append(("image", f"docker image unreadable: {e!r}"))
        unexpected = [(key, m) for key, m in problems if not accepted(ctx.expectations, name, platform, key, m)]
        allowed = [(key, m, accepted(ctx.expectations, name, platform, key, m)) for key, m in problems if accepted(ctx.expectations, name, platform, key, m)]
        verdict = "MATCH" if not unexpected else "MISMATCH"
        label = " (by expect.json)" if mode == "expect" else ""
        lines = [f"{verdict:8} {name} {platform}{label}  [kiln {t_kiln:.0f}s, docker {time.time() - t1:.0f}s]"]
        for key, m in unexpected[: ctx.max_lines]:
            lines.append(f"    {m}")
        if len(unexpected) > ctx.max_lines:
            lines.append(f"    ... and {len(unexpected) - ctx.max_lines} more")
        for key, m, x in allowed:
            lines.append(f"    accepted: {m}  ({x['why'][:90]}...; expectations.json)")
        if ctx.verbose:
            lines += [f"    note: {n}" for n in notes]
        elif unexpected:
            lines += [f"    note: {n}" for n in notes if "replaces it with a directory" in n or "twice" in n or "does not exist" in n][:5]
        say(*lines)
        results.append({"case": name, "platform": platform, "match": not unexpected, "mode": mode,
                        "differences": [m for _, m in unexpected], "accepted": [m for _, m, _ in allowed], "notes": notes})
    return results


class Ctx:
    pass


def dump(ctx, name, arch, side, tree, config):
    """With --keep: the applied tree and the config, for looking at a difference afterwards."""
    d = os.path.join(ctx.work, "trees")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{name}-{arch}-{side}.json"), "w") as f:
        json.dump({"config": config, "tree": tree}, f, indent=1, sort_keys=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated case names (or globs)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory: build logs, and each image's applied tree and config under trees/")
    ap.add_argument("--farm", action="store_true", help="build through a real farm (a coordinator and an agent) instead of the embedded one")
    ap.add_argument("-j", type=int, default=2, help="cases in parallel (default 2)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print notes (media types, odd layer entries) too")
    ap.add_argument("--max-lines", type=int, default=25, help="differences printed per (case, platform)")
    ap.add_argument("--json", help="write the results as JSON to this file")
    opts = ap.parse_args()

    cases = kilnlab.cases()
    if opts.only:
        pats = opts.only.split(",")
        cases = [c for c in cases if any(fnmatch.fnmatchcase(os.path.basename(c), p) for p in pats)]
        if not cases:
            sys.exit(f"no case matches {opts.only}")
    ctx = Ctx()
    ctx.kiln = kilnlab.kiln_bin()
    ctx.work = tempfile.mkdtemp(prefix="kiln-judge-")
    ctx.expectations = load_expectations()
    ctx.max_lines, ctx.verbose, ctx.keep = opts.max_lines, opts.verbose, opts.keep
    os.makedirs(os.path.join(ctx.work, "logs"))
    say(f"kiln {ctx.kiln}; work dir {ctx.work}; {len(cases)} cases x {len(ARCHES)} platforms")
    start = time.time()
    results = []
    try:
        for arch in ARCHES:  # before anything is started: the first run makes them (minutes)
            debian_tar(arch)
        with kilnlab.Registry() as reg:
            ctx.registry = reg.addr
            with Farm(ctx.kiln, ctx.work) if opts.farm else NullCtx() as farm:
                ctx.farm = farm if opts.farm else None
                base_home = os.path.join(ctx.work, "home-base")
                base_env = ctx.farm.env(base_home) if ctx.farm else dict(os.environ, KILN_HOME=base_home)
                ctx.base = build_base(ctx.kiln, base_env, reg)
                ctx.debian = build_debian_base(ctx.kiln, base_env, reg, ctx.work)
                say(f"bases: BASE={ctx.base} DEBIAN={ctx.debian} ({time.time() - start:.0f}s)")
                with kilnlab.Dockerd(insecure_registry=reg.addr) as d:
                    ctx.dockerd = d
                    homes = queue.Queue()
                    for i in range(max(1, opts.j)):
                        homes.put(os.path.join(ctx.work, f"home-{i}"))

                    def one(case):
                        home = homes.get()
                        try:
                            return compare_case(ctx, case, home)
                        except Exception as e:  # noqa: BLE001
                            name = os.path.basename(case)
                            say(f"MISMATCH {name} (harness error: {e!r})")
                            return [{"case": name, "platform": f"linux/{a}", "match": False, "differences": [f"harness error: {e!r}"]} for a in ARCHES]
                        finally:
                            homes.put(home)

                    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, opts.j)) as pool:
                        for r in pool.map(one, cases):
                            results += r
                    # A case that differed is built once more, alone, both sides: a difference
                    # that holds is a finding; one that goes away is reported as a flake with what
                    # the first try said (the summary lists it), never hidden.
                    for case in [c for c in cases if any(not r["match"] for r in results if r["case"] == os.path.basename(c))]:
                        name = os.path.basename(case)
                        first = {r["platform"]: r for r in results if r["case"] == name}
                        say(f"RETRY    {name}: built again, alone")
                        again = one(case)
                        for r in again:
                            if r["match"] and not first[r["platform"]]["match"]:
                                r["first_try"] = first[r["platform"]]["differences"]
                        results = [r for r in results if r["case"] != name] + again
    finally:
        if opts.keep:
            say(f"kept {ctx.work}")
        else:
            shutil.rmtree(ctx.work, ignore_errors=True)
    matched = sum(1 for r in results if r["match"])
    by_expect = sum(1 for r in results if r["match"] and r.get("mode") == "expect")
    with_accepted = sum(1 for r in results if r["match"] and r.get("accepted"))
    say("", f"{matched} of {len(results)} (case, platform) pairs match ({by_expect} of them checked by expect.json because Docker 20.10 cannot build "
            f"them, {with_accepted} with accepted differences); {time.time() - start:.0f}s")
    for r in results:
        if r.get("first_try"):
            say(f"  FLAKE    {r['case']} {r['platform']}: matched on the second try; the first said:", *[f"      {m[:400]}" for m in r["first_try"][:3]])
    for r in results:
        if not r["match"]:
            say(f"  MISMATCH {r['case']} {r['platform']}", *[f"      {m[:400]}" for m in r["differences"][:3]])
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0 if matched == len(results) else 1


class NullCtx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def build_base(kiln, env, registry):
    """kilnlab.build_base, with the farm's environment when --farm."""
    bb = os.path.join(kilnlab.fixtures_dir(), "busybox")
    rc, tail = run(["bash", os.path.join(kilnlab.ROOT, "scripts/fetch-busybox.sh"), bb], 600)
    if rc != 0:
        raise RuntimeError(f"fetch-busybox.sh failed ({rc})")
    ctx = tempfile.mkdtemp(prefix="kiln-base-")
    try:
        for arch in ARCHES:
            shutil.copy(os.path.join(bb, f"busybox-{arch}"), ctx)
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write('FROM scratch\nARG TARGETARCH\nCOPY busybox-${TARGETARCH} /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nCMD ["sh"]\n')
        ref = f"{registry.addr}/base/busybox:1"
        log = os.path.join(tempfile.gettempdir(), f"kiln-judge-base-{os.getpid()}.log")
        rc, tail = run([kiln, "build", "--progress", "plain", "--platform", ",".join(kilnlab.PLATFORMS), "-t", ref, "--push", ctx], BUILD_SECS, log=log, env=env)
        if rc != 0:
            raise RuntimeError(f"kiln could not build the busybox base ({rc}):\n{tail}")
        os.unlink(log)
        return ref
    finally:
        shutil.rmtree(ctx, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
