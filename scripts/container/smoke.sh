#!/usr/bin/env bash
# Container smoke test: build the CPU image with podman FROM a base image made here (no registry pulls),
# bring up the CPU topology (docker-compose.cpu.yml + docker-compose.hostnet.yml: own Redis, scheduler,
# CPU prefill worker, two emulated FPGA workers) on the host network on free ports, answer one prompt
# with `glitches generate` from the host, check that an emulated FPGA worker decoded it, tear it all
# down (containers and the project's volume). Exits non-zero on any failure, with the containers' logs.
#
#   scripts/container/smoke.sh          (or `make container-smoke`; root on Debian: installs podman, runc,
#                                         debootstrap when missing; README "Deploy" has the measured times)
#
# Environment (all optional):
#   GLITCHES_BASE_IMAGE     base image to build FROM (default localhost/debian-bookworm-python:base,
#                           made by scripts/container/base_image.sh when missing)
#   GLITCHES_SMOKE_TAG      image tag, localhost/glitches-cpu:TAG (default smoke)
#   GLITCHES_SMOKE_PROJECT  compose project name (default glitches-smoke)
#   WHEELS_DIR              local wheel directory for torch (default /opt/wheels when it holds a torch wheel;
#                           then TORCH_INDEX defaults to none); otherwise the Dockerfile's PyTorch CPU index
#   GLITCHES_SMOKE_UP_TIMEOUT_S   how long the topology may take to become healthy, seconds (default 600)
#   GLITCHES_SMOKE_TIMINGS  write the phase times (seconds) there as JSON
#   GLITCHES_SMOKE_TLS      1: also docker-compose.tls.yml (fresh `glitches certs`, mTLS on every gRPC link; the
#                           host's client uses the `client` certificate and a plaintext client must be refused)
#   CONTAINERS_CONF         podman configuration; default: a private one (runc, cgroupfs, no default ulimits)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
export GLITCHES_BASE_IMAGE=${GLITCHES_BASE_IMAGE:-localhost/debian-bookworm-python:base}
export GLITCHES_TAG=${GLITCHES_SMOKE_TAG:-smoke}
# the scheduler and the FPGA workers share a fresh KV-transfer token secret (passed by compose's environment)
GLITCHES_KV_TOKEN_SECRET=${GLITCHES_KV_TOKEN_SECRET:-$(python3 -c 'import secrets; print(secrets.token_hex(32))')}
export GLITCHES_KV_TOKEN_SECRET
PROJECT=${GLITCHES_SMOKE_PROJECT:-glitches-smoke}
IMAGE=localhost/glitches-cpu:$GLITCHES_TAG
UP_TIMEOUT_S=${GLITCHES_SMOKE_UP_TIMEOUT_S:-600}
WORK=$(mktemp -d /tmp/glitches-smoke.XXXXXX)
COMPOSE=("$ROOT/.venv/bin/podman-compose" -p "$PROJECT" -f docker-compose.cpu.yml -f docker-compose.hostnet.yml)
CLIENT_ENV=()  # the host client's TLS settings (GLITCHES_SMOKE_TLS=1)
if [ "${GLITCHES_SMOKE_TLS:-0}" = 1 ]; then
  COMPOSE+=(-f docker-compose.tls.yml)
  export GLITCHES_TLS_DIR=$WORK/certs
  CLIENT_ENV=(GLITCHES_TLS_CA="$GLITCHES_TLS_DIR/ca.pem" GLITCHES_TLS_CERT="$GLITCHES_TLS_DIR/client.pem"
              GLITCHES_TLS_KEY="$GLITCHES_TLS_DIR/client-key.pem")
fi
PHASES=()   # "name seconds" per finished phase
UP_STARTED=0

log() { echo "[smoke $(date +%T)] $*" >&2; }
now() { date +%s.%N; }
phase_done() {  # NAME START: record how long the phase took, seconds
  local took; took=$(awk -v a="$2" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  PHASES+=("$1 $took"); log "phase $1: ${took} s"
}

summary() {
  echo "container smoke phases (seconds):"
  printf '%s\n' "${PHASES[@]}" | awk '{ printf "  %-8s %7.1f\n", $1, $2; total += $2 } END { printf "  %-8s %7.1f\n", "total", total }'
  if [ -n "${GLITCHES_SMOKE_TIMINGS:-}" ]; then
    printf '%s\n' "${PHASES[@]}" | awk 'BEGIN { printf "{" } { printf "%s\"%s\": %s", (NR > 1 ? ", " : ""), $1, $2 }
                                         END { print "}" }' >"$GLITCHES_SMOKE_TIMINGS"
  fi
}

teardown() {  # compose down with the project's volume; then no container of the project may be left
  "${COMPOSE[@]}" down -v -t 20 >"$WORK/down.log" 2>&1 || { tail -n 20 "$WORK/down.log" >&2; return 1; }
  local left; left=$(podman ps -a -q --filter "label=io.podman.compose.project=$PROJECT"
                     podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT")
  [ -z "$left" ] || { log "containers or volumes left after down: $left"; return 1; }
}

on_exit() {
  local rc=$?
  if [ "$UP_STARTED" = 1 ]; then
    if [ "$rc" != 0 ]; then
      log "failed (exit $rc); the containers' logs:"
      for name in $(podman ps -a --format '{{.Names}}' --filter "label=io.podman.compose.project=$PROJECT"); do
        echo "----- $name" >&2; podman logs --tail 40 "$name" >&2 2>&1 || true
      done
    fi
    teardown || rc=1
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap on_exit EXIT

# ---- install: podman + runc (Debian), the host venv (podman-compose and the glitches client)
t=$(now)
if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
  log "installing podman, runc"
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc >/dev/null
fi
if [ -z "${CONTAINERS_CONF:-}" ]; then  # runc and cgroupfs work without systemd and in nested sandboxes
  printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n' \
    >"$WORK/containers.conf"
  export CONTAINERS_CONF=$WORK/containers.conf
fi
[ -x .venv/bin/podman-compose ] && [ -x .venv/bin/glitches ] || make setup >/dev/null
phase_done install "$t"

# ---- base: Debian bookworm with python3, venv, pip, made with debootstrap (nothing pulled)
t=$(now)
scripts/container/base_image.sh "$GLITCHES_BASE_IMAGE"
phase_done base "$t"

# ---- build: the Dockerfile's cpu target; --format docker keeps its HEALTHCHECK (OCI images drop it)
t=$(now)
BUILD=(podman build --format docker --network host --target cpu -t "$IMAGE" --build-arg "PYTHON_BASE=$GLITCHES_BASE_IMAGE")
if [ -z "${WHEELS_DIR+set}" ] && compgen -G "/opt/wheels/torch-*.whl" >/dev/null; then WHEELS_DIR=/opt/wheels; fi
if [ -n "${WHEELS_DIR:-}" ]; then  # torch from this machine's disk; the PyTorch index is not needed
  BUILD+=(--volume "$WHEELS_DIR:$WHEELS_DIR:ro" --build-arg "WHEELS_DIR=$WHEELS_DIR"
          --build-arg "TORCH_INDEX=${TORCH_INDEX-}")
fi
log "building $IMAGE"
"${BUILD[@]}" . >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log" >&2; exit 1; }
phase_done build "$t"

# ---- up: free ports for Redis, the scheduler's gRPC and every daemon's HTTP side port
t=$(now)
if [ "${GLITCHES_SMOKE_TLS:-0}" = 1 ]; then  # a fresh CA and a certificate per role, keys readable by the images' uid
  .venv/bin/glitches certs --out "$GLITCHES_TLS_DIR" >/dev/null
  chown 10001 "$GLITCHES_TLS_DIR"/*-key.pem
fi
read -r GLITCHES_HOSTNET_REDIS_PORT GLITCHES_HOSTNET_PORT GLITCHES_HOSTNET_HTTP_SCHEDULER GLITCHES_HOSTNET_HTTP_GPU0 \
  GLITCHES_HOSTNET_HTTP_FPGA0 GLITCHES_HOSTNET_HTTP_FPGA1 < <(.venv/bin/python scripts/container/free_ports.py 6)
export GLITCHES_HOSTNET_REDIS_PORT GLITCHES_HOSTNET_PORT GLITCHES_HOSTNET_HTTP_SCHEDULER GLITCHES_HOSTNET_HTTP_GPU0 \
  GLITCHES_HOSTNET_HTTP_FPGA0 GLITCHES_HOSTNET_HTTP_FPGA1
log "up: redis :$GLITCHES_HOSTNET_REDIS_PORT, scheduler :$GLITCHES_HOSTNET_PORT"
UP_STARTED=1
"${COMPOSE[@]}" up -d --no-build >"$WORK/up.log" 2>&1 || { tail -n 40 "$WORK/up.log" >&2; exit 1; }
# podman < 4.6 neither runs health checks without systemd nor waits for service_healthy: run each
# container's own check (the compose file's) until every one passes
mapfile -t CONTAINERS < <(podman ps -a --format '{{.Names}}' --filter "label=io.podman.compose.project=$PROJECT")
# redis, scheduler, gpu-worker-0, fpga-worker-0, fpga-worker-1
[ "${#CONTAINERS[@]}" = 5 ] || { log "expected 5 containers, got: ${CONTAINERS[*]}"; exit 1; }
deadline=$(( $(date +%s) + UP_TIMEOUT_S ))
for name in "${CONTAINERS[@]}"; do
  until podman healthcheck run "$name" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { log "$name not healthy after ${UP_TIMEOUT_S} s"; exit 1; }
    sleep 2
  done
  log "$name healthy"
done
phase_done up "$t"

# ---- answer: one prompt through the scheduler, decoded on an emulated FPGA worker
t=$(now)
ADDRESS=127.0.0.1:$GLITCHES_HOSTNET_PORT
if [ "${GLITCHES_SMOKE_TLS:-0}" = 1 ]; then  # under mTLS a plaintext client gets no answer
  if .venv/bin/glitches status --json --address "$ADDRESS" >/dev/null 2>&1; then
    log "a plaintext client was answered by the mTLS scheduler"; exit 1
  fi
  log "plaintext client refused (mTLS)"
fi
env "${CLIENT_ENV[@]}" .venv/bin/glitches status --json --address "$ADDRESS" >"$WORK/status.json"
env "${CLIENT_ENV[@]}" .venv/bin/glitches generate --json --chat --max-tokens 24 --address "$ADDRESS" \
  "In one sentence, why do FPGAs suit LLM decoding?" >"$WORK/answer.json"
.venv/bin/python scripts/container/check_answer.py "$WORK/status.json" "$WORK/answer.json"
phase_done answer "$t"

# ---- down: containers and the model-cache volume removed, nothing of the project left
t=$(now)
UP_STARTED=0
teardown
phase_done down "$t"
summary
log "ok"
