#!/usr/bin/env bash
# Make a base image from Debian packages alone (for machines that cannot pull from a registry):
# debootstrap's minbase of bookworm + python3 (3.11), its venv module and ca-certificates,
# imported with podman. deploy/image-smoke.sh uses it through the Dockerfile's BASE_IMAGE.
#
#   deploy/debian-base.sh [TAG]        (default localhost/truckllm-base:bookworm; needs root)
#
# The mirror is the one apt uses here (/etc/apt/sources.list*), else deb.debian.org. The CA
# certificates this machine adds to Debian's (/usr/local/share/ca-certificates, e.g. a
# TLS-inspecting proxy's) go into the base too, so that pip in the build stage trusts what the
# host trusts; PIP_CERT points pip at that bundle.
set -euo pipefail
TAG=${1:-localhost/truckllm-base:bookworm}
ENGINE=${ENGINE:-podman}
command -v debootstrap >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}
mirror=$(grep -rhE '^(URIs:|deb)\s' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
  | grep -oE 'https?://[^ ]+/debian/?( |$)' | tr -d ' ' | head -1 || true)
mirror=${mirror:-http://deb.debian.org/debian}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "== debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log"
  exit 1
}
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$work/rootfs/usr/local/share/ca-certificates/"
  chroot "$work/rootfs" update-ca-certificates >/dev/null 2>&1
fi
# What a container never needs: package lists and caches, documentation, locales.
rm -rf "$work"/rootfs/var/lib/apt/lists/* "$work"/rootfs/var/cache/apt/* \
  "$work"/rootfs/usr/share/doc/* "$work"/rootfs/usr/share/man/* "$work"/rootfs/usr/share/locale/*
tar -C "$work/rootfs" -c . | "$ENGINE" import --quiet \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' --change 'CMD ["python3"]' - "$TAG" >/dev/null
echo "== $TAG: $("$ENGINE" image inspect --format '{{.Size}}' "$TAG") bytes"
