#!/usr/bin/env bash
# Make the local base image the CPU image builds FROM, without pulling anything from a registry:
# debootstrap Debian bookworm (python3 3.11, venv, pip, CA certificates) from this host's apt mirror,
# add this host's own extra CA certificates (/usr/local/share/ca-certificates: a TLS-intercepting
# proxy's CA, so pip inside a build trusts what the host trusts), and `podman import` the tree.
#   scripts/container/base_image.sh [IMAGE]      (root; default localhost/debian-bookworm-python:base)
# Does nothing when the image exists already. ~2-3 min on 2 cores, ~150 MB image.
set -euo pipefail
IMAGE=${1:-${GLITCHES_BASE_IMAGE:-localhost/debian-bookworm-python:base}}
SUITE=bookworm
# the host's own Debian mirror (a deb822 `URIs:` line or a one-line `deb URL bookworm main`), else deb.debian.org
host_mirror() {
  { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
    grep -hs "^deb .* $SUITE " /etc/apt/sources.list | awk '{print $2}'; } | grep -v security | head -n1 || true
}
MIRROR=${DEBIAN_MIRROR:-$(host_mirror)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

if podman image exists "$IMAGE"; then
  echo "base image $IMAGE exists"
  exit 0
fi
command -v debootstrap >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap; }

ROOTFS=$(mktemp -d /var/tmp/glitches-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
echo "debootstrap $SUITE from $MIRROR into $ROOTFS"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || { tail -n 30 "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
  chroot "$ROOTFS" update-ca-certificates >/dev/null
fi
# a venv must work (python3-venv): the image's builder stage makes one
chroot "$ROOTFS" python3 -m venv /tmp/venv-check
chroot "$ROOTFS" /tmp/venv-check/bin/python -c "import ssl, sys; assert sys.version_info[:2] == (3, 11)"
rm -rf "$ROOTFS/tmp/venv-check" "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb
# pip (venvs included) reads the system bundle, which now holds the host's extra CAs
tar -C "$ROOTFS" -c . | podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$IMAGE"
echo "made base image $IMAGE"
