"""Shared helpers for kiln's comparison and benchmark scripts.

Starts a docker-registry on a free loopback port, fetches busybox-static from Debian's packages
and builds the two-platform base image with kiln, as the tests' fixtures do.
"""
import os
import shutil
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLATFORMS = ["linux/amd64", "linux/arm64"]


def kiln_bin(release=False):
    """The kiln binary: $KILN_BIN if set; else, unless `release` (benchmarks time the release
    build), ROOT/target/debug/kiln if it exists; else the release binary, built if needed (under
    /tmp/kiln-cargo.lock, so concurrent cargo runs on a shared machine take turns)."""
    if os.environ.get("KILN_BIN"):
        return os.path.abspath(os.environ["KILN_BIN"])
    debug = os.path.join(ROOT, "target/debug/kiln")
    if not release and os.path.exists(debug):
        return debug
    subprocess.run(["flock", "/tmp/kiln-cargo.lock", "cargo", "build", "--release", "--quiet", "--bin", "kiln"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target/release/kiln")


def fixtures_dir():
    """Where downloaded fixtures are cached: $KILN_FIXTURES, else ROOT/target/kiln-fixtures."""
    return os.environ.get("KILN_FIXTURES") or os.path.join(ROOT, "target/kiln-fixtures")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """A docker-registry on a free loopback port, for `with` blocks."""

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="kiln-registry-")
        self.addr = f"127.0.0.1:{free_port()}"
        cfg = os.path.join(self.dir, "config.yml")
        with open(cfg, "w") as f:
            f.write(f"version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {self.dir}/data}}}}\nhttp: {{addr: {self.addr}}}\n")
        self.proc = subprocess.Popen(["docker-registry", "serve", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(tuple(self.addr.split(":")), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("docker-registry did not start")
                time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def build_base(kiln, home, registry):
    """busybox-static for amd64 and arm64, built by kiln and pushed; returns the reference."""
    bb = os.path.join(fixtures_dir(), "busybox")
    subprocess.run(["bash", os.path.join(ROOT, "scripts/fetch-busybox.sh"), bb], check=True, timeout=600)
    ctx = tempfile.mkdtemp(prefix="kiln-base-")
    for arch in ("amd64", "arm64"):
        shutil.copy(os.path.join(bb, f"busybox-{arch}"), ctx)
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write('FROM scratch\nARG TARGETARCH\nCOPY busybox-${TARGETARCH} /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nCMD ["sh"]\n')
    ref = f"{registry.addr}/base/busybox:1"
    subprocess.run([kiln, "build", "--progress", "quiet", "--platform", ",".join(PLATFORMS), "-t", ref, "--push", ctx],
                   env=dict(os.environ, KILN_HOME=home), check=True, stdout=subprocess.DEVNULL, timeout=900)
    shutil.rmtree(ctx)
    return ref


def cases():
    d = os.path.join(ROOT, "examples/compare")
    return sorted(os.path.join(d, c) for c in os.listdir(d) if os.path.isdir(os.path.join(d, c)))


class Dockerd:
    """A private dockerd (Debian's docker.io, with its built-in BuildKit) on its own socket and
    data root, without touching the host's network (no bridge, no iptables). Stops only the
    dockerd it started. RUN steps need `--network=host`: there is no bridge."""

    def __init__(self, insecure_registry=None):
        self.insecure = insecure_registry

    def __enter__(self):
        if not os.path.exists("/usr/sbin/dockerd"):
            raise RuntimeError("dockerd is missing: apt-get install docker.io")
        self.dir = tempfile.mkdtemp(prefix="kiln-dockerd-")
        self.sock = os.path.join(self.dir, "docker.sock")
        args = ["/usr/sbin/dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none",
                "--data-root", f"{self.dir}/data", "--exec-root", f"{self.dir}/exec",
                "--pidfile", f"{self.dir}/docker.pid", "-H", f"unix://{self.sock}"]
        if self.insecure:
            args += ["--insecure-registry", self.insecure]
        self.log = open(os.path.join(self.dir, "dockerd.log"), "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        deadline = time.time() + 60
        while subprocess.run(self.cli("version"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30).returncode != 0:
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"dockerd did not start; see {self.dir}/dockerd.log")
            time.sleep(0.2)
        return self

    def cli(self, *args):
        """A /usr/bin/docker command line against this daemon (the Debian CLI, not another on PATH)."""
        return ["/usr/bin/docker", "-H", f"unix://{self.sock}", *args]

    def env(self):
        return dict(os.environ, DOCKER_BUILDKIT="1", DOCKER_CONFIG=os.path.join(self.dir, "config"))

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        subprocess.run(["umount", "-R", f"{self.dir}/exec"], stderr=subprocess.DEVNULL, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)
