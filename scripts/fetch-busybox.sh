#!/usr/bin/env bash
# Downloads busybox-static for amd64 and arm64 from Debian's packages into DIR as
# DIR/busybox-amd64 and DIR/busybox-arm64. Uses its own apt lists so the host's are untouched.
set -euo pipefail
dir=${1:?usage: fetch-busybox.sh DIR}
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for arch in amd64 arm64; do
  [ -x "$dir/busybox-$arch" ] && continue
  mkdir -p "$work/lists-$arch/partial" "$work/deb-$arch"
  opts=(-oAPT::Architecture="$arch" -oDir::State::Lists="$work/lists-$arch" -oAPT::Sandbox::User=root -qq)
  apt-get "${opts[@]}" update >/dev/null
  (cd "$work/deb-$arch" && apt-get "${opts[@]}" download "busybox-static:$arch" >/dev/null)
  dpkg-deb -x "$work"/deb-"$arch"/busybox-static_*.deb "$work/x-$arch"
  install -m 0755 "$work/x-$arch/bin/busybox" "$dir/busybox-$arch.tmp"
  mv "$dir/busybox-$arch.tmp" "$dir/busybox-$arch"
done
