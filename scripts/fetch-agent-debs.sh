#!/usr/bin/env bash
# Downloads Debian bookworm's runc and qemu-user-static packages for ARCH into DIR (what
# deploy/Dockerfile's agent stage installs from deploy/debs/ without a network). Uses its own
# apt lists so the host's are untouched.
set -euo pipefail
dir=${1:?usage: fetch-agent-debs.sh DIR [ARCH]}
arch=${2:-amd64}
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/debs"
opts=(-oAPT::Architecture="$arch" -oDir::State::Lists="$work/lists" -oAPT::Sandbox::User=root -qq)
apt-get "${opts[@]}" update >/dev/null
(cd "$work/debs" && apt-get "${opts[@]}" download "runc:$arch" "qemu-user-static:$arch" >/dev/null)
mv "$work"/debs/*.deb "$dir/"
