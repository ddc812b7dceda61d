#!/usr/bin/env bash
# Installs and enables what kiln's build engine needs on a Debian host (idempotent):
# runc, qemu-user-static registered with binfmt_misc, and for the tests and the example
# docker-registry, skopeo, umoci, apache2-utils (htpasswd); for scripts/compare.py
# (the judge against Docker's BuildKit) Debian's docker.io, mmdebstrap and zstd; for the ssh
# forwarding tests OpenSSH's client and server and git; for the metrics test Debian's
# prometheus (the test runs its own on a loopback port; the package's service is not started);
# for the deploy test systemd-analyze and, in a venv under /opt, kubernetes-validate; for the
# web console's test Debian's chromium (run headless by the test, driven over DevTools); for
# the chaos suite iproute2 (network namespaces, veths), iptables (partitions, loss) and
# util-linux's nsenter.
set -euo pipefail
need=()
for pkg_cmd in runc:runc qemu-user-static:qemu-aarch64-static docker-registry:docker-registry skopeo:skopeo umoci:umoci apache2-utils:htpasswd make:make gcc:gcc docker.io:/usr/sbin/dockerd mmdebstrap:mmdebstrap zstd:zstd openssh-client:ssh-agent openssh-server:/usr/sbin/sshd git:/usr/bin/git prometheus:/usr/bin/prometheus systemd:systemd-analyze chromium:/usr/bin/chromium iproute2:ip iptables:iptables util-linux:nsenter; do
  pkg=${pkg_cmd%%:*} cmd=${pkg_cmd##*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # Installing docker.io must not start the system's dockerd (its bridge and iptables rules
  # would change the host's network), nor prometheus a system-wide scraper: packages may not
  # start services while this runs. The judge (scripts/compare.py) starts its own private
  # dockerd, the metrics test its own prometheus.
  own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
  if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
fi
# The Kubernetes schemas for tests/tests/deploy.rs (scripts/check-kubernetes.py): the
# kubernetes-validate package ships them, so the check runs offline once this is installed.
kube_venv=/opt/kiln-kubernetes-validate
if [ ! -x "$kube_venv/bin/kubernetes-validate" ]; then
  python3 -c 'import ensurepip' 2>/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }
  python3 -m venv "$kube_venv"
  "$kube_venv/bin/pip" install -q kubernetes-validate==1.37.0
fi
# binfmt_misc: mount it if needed and register every qemu handler the package ships
# (with the F flag, so containers can use the interpreter).
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
for conf in /usr/lib/binfmt.d/qemu-*.conf; do
  [ -e "$conf" ] || continue
  name=$(cut -d: -f2 "$conf")
  [ -e "/proc/sys/fs/binfmt_misc/$name" ] || cat "$conf" > /proc/sys/fs/binfmt_misc/register || true
done
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { echo "qemu-aarch64 is not registered with binfmt_misc" >&2; exit 1; }
# The SBOM tests validate kiln's SPDX documents with an independent reader: the spdx-tools
# Python package (pyspdxtools), in its own venv so the system's Python is left alone.
venv=/opt/kiln-ci-venv
if ! "$venv/bin/pyspdxtools" --help >/dev/null 2>&1; then
  if ! python3 -m venv "$venv" 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check spdx-tools
fi
