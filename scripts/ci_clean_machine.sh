#!/usr/bin/env bash
# Run `.ci/run` the way CI does on a NEW machine: in a clean Debian bookworm root filesystem made with
# debootstrap from Debian's packages, holding only what a new machine of this project's kind has
# (Python 3.11 with pip and venv, gcc and the Python headers, make, git, CA certificates, the PyTorch CPU
# wheel lying on disk in /opt/wheels with the pip settings that point at it) and none of what a developer
# installed by hand (no podman, no .venv, no caches, no converted model).
#   scripts/ci_clean_machine.sh [REF]      (root; REF defaults to main; ~2-3 min for the root filesystem, then .ci/run)
# The root filesystem is made once under $GLITCHES_CLEAN_ROOT (default /var/tmp/glitches-clean-root) and
# reused pristine: each run works on a fresh copy of it, so nothing from one run reaches the next.
# Redis: the chroot shares this machine's network, so the tests reach the Redis at 127.0.0.1:6379 that a new
# machine of this kind starts before CI, exactly as CI does.
set -euo pipefail
REF=${1:-main}
REPO=$(cd "$(dirname "$0")/.." && pwd)
BASE=${GLITCHES_CLEAN_ROOT:-/var/tmp/glitches-clean-root}
RUN=$(mktemp -d /var/tmp/glitches-clean-run.XXXXXX)
MIRROR=${DEBIAN_MIRROR:-$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

if [ ! -x "$BASE/usr/bin/python3" ]; then
  command -v debootstrap >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap; }
  rm -rf "$BASE"
  echo "debootstrap bookworm from $MIRROR into $BASE"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python3-dev,gcc,g++,make,git,ca-certificates,procps \
    bookworm "$BASE" "$MIRROR" >"$BASE.log" 2>&1 || { tail -n 30 "$BASE.log"; exit 1; }
fi

cleanup() {
  for m in opt/wheels opt/pypi opt/pypi-more dev/shm dev/pts dev sys proc; do
    mountpoint -q "$RUN/$m" 2>/dev/null && umount -l "$RUN/$m"
  done
  rm -rf "$RUN"
}
trap cleanup EXIT

echo "copying the pristine root filesystem to $RUN"
cp -a "$BASE/." "$RUN/"
# What a new machine of this kind has beside Python: the torch wheel and package indexes on disk, the pip
# settings pointing at them, and the CA bundle that pip needs behind this workplace's TLS proxy.
for d in /opt/wheels /opt/pypi /opt/pypi-more; do
  [ -d "$d" ] && mkdir -p "$RUN$d" && mount --bind -o ro "$d" "$RUN$d"
done
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$RUN/etc/pip.conf"
[ -d /etc/xdg/pip ] && mkdir -p "$RUN/etc/xdg" && cp -r /etc/xdg/pip "$RUN/etc/xdg/"
cp /etc/ssl/certs/ca-certificates.crt "$RUN/etc/ssl/certs/ca-certificates.crt"
cp /etc/resolv.conf "$RUN/etc/resolv.conf"
mount -t proc proc "$RUN/proc"
mount --rbind /sys "$RUN/sys"
mount --bind /dev "$RUN/dev"
mount --bind /dev/pts "$RUN/dev/pts"
mount -t tmpfs -o mode=1777 tmpfs "$RUN/dev/shm"

# A clean clone of REF, with shared/ beside it as CI lays it out.
mkdir -p "$RUN/work"
git clone -q --no-hardlinks "$REPO" "$RUN/work/main"
git -C "$RUN/work/main" checkout -q "$REF"
[ -d "$REPO/../shared" ] && cp -r "$REPO/../shared" "$RUN/work/shared"

echo "running .ci/run in the clean root filesystem (commit $(git -C "$RUN/work/main" rev-parse --short HEAD))"
start=$(date +%s)
set +e
chroot "$RUN" /usr/bin/env -i HOME=/root CI=true LANG=C.UTF-8 \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_FIND_LINKS=/opt/wheels PIP_DEFAULT_TIMEOUT=180 \
  PIP_DISABLE_PIP_VERSION_CHECK=1 \
  bash -c 'cd /work/main && bash .ci/run' </dev/null
rc=$?
set -e
echo "clean-machine .ci/run exited $rc after $(( $(date +%s) - start )) s"
exit $rc
