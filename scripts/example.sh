#!/usr/bin/env bash
# The main job: a real two-platform build of examples/hello on the embedded farm.
#
# No public registry is reachable from a build host here, so the example's base image is made
# first: busybox-static for amd64 and arm64 from Debian's packages, built by kiln into a
# two-platform image and pushed to a docker-registry on a free loopback port. Then
#   kiln build --platform linux/amd64,linux/arm64 -t example/hello:1 -o type=oci,dest=hello.tar examples/hello
# runs (the arm64 half under qemu), and skopeo checks the archive.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
cargo build --release --bin kiln
kiln=$PWD/target/release/kiln
work=$(mktemp -d)
trap 'kill $registry_pid 2>/dev/null || true; rm -rf "$work"' EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<YAML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$port}
YAML
docker-registry serve "$work/registry.yml" >/dev/null 2>&1 &
registry_pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

mkdir -p target/kiln-fixtures/busybox "$work/base"
bash scripts/fetch-busybox.sh target/kiln-fixtures/busybox
cp target/kiln-fixtures/busybox/busybox-* "$work/base/"
printf '%s\n' 'FROM scratch' 'ARG TARGETARCH' 'COPY busybox-${TARGETARCH} /bin/busybox' \
  'RUN ["/bin/busybox", "--install", "-s", "/bin"]' 'CMD ["sh"]' > "$work/base/Dockerfile"
base=127.0.0.1:$port/base/busybox:1
"$kiln" build --platform linux/amd64,linux/arm64 -t "$base" --push "$work/base"

"$kiln" build --platform linux/amd64,linux/arm64 --build-arg BASE="$base" \
  -t example/hello:1 -o type=oci,dest=hello.tar --metadata-file hello.metadata.json examples/hello
echo
echo "hello.tar:"
skopeo inspect --raw oci-archive:hello.tar
echo
for arch in amd64 arm64; do
  skopeo inspect --override-arch $arch --config oci-archive:hello.tar:example/hello:1 | python3 -c \
    'import json,sys; c=json.load(sys.stdin); print(c["architecture"], "entrypoint", c["config"]["Entrypoint"], "cmd", c["config"]["Cmd"])'
done
