#!/usr/bin/env bash
# The Compose deployment run for real on a container engine (CPU profile, the toy models):
#
#   docker/smoke.sh            # or: make smoke
#
# It builds the CPU image from docker/Dockerfile, then takes docker compose through the story of
# docs/deployment.md: the models provisioned into the `models`/`cache` volumes (toy:tiny), the first
# index on an empty `index` volume, the API up and its healthcheck green, a query, the containers'
# user and read-only mounts checked, a photo added and the reindex job publishing a new version, the
# API's hot reload, `down` and `up` again with the index kept, and `down -v`. Each step is printed
# with its time; the first failure stops the run with the containers' logs and exit status 1.
# Containers and volumes are removed at the end (SMOKE_KEEP=1 keeps them after a failure); the
# images stay, so that the next run builds from the layer cache.
#
# Settings, from the environment:
#   SMOKE_PROJECT    the Compose project name (birdsearch-smoke), apart from a real deployment's
#   SMOKE_PORT       the API's port on the host (default: a free one)
#   SMOKE_NETWORK    `host` or `bridge` (default: host when the engine has no bridge network, as
#                    with `dockerd --bridge=none`; then docker/compose.hostnet.yaml is added)
#   PYTHON_IMAGE     the base image (default: python:3.11-slim-bookworm when it can be pulled, else
#                    birdsearch-base:bookworm, made here from Debian's packages with mmdebstrap)
#   BIRDSEARCH_TORCH_INDEX_URL  where the CPU image takes torch (default: PyTorch's CPU index when
#                    it answers, else empty: PyPI's torch)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROJECT=${SMOKE_PROJECT:-birdsearch-smoke}
IMAGE=birdsearch:cpu
LOCAL_BASE=birdsearch-base:bookworm
REGISTRY_BASE=python:3.11-slim-bookworm
CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu
RECORDING=$ROOT/tests/data/audio/oss_birds_10s_32k.wav
WORK=$(mktemp -d "${TMPDIR:-/tmp}/birdsearch-smoke.XXXXXX")
SUMMARY=$WORK/summary.txt
STARTED=$EPOCHREALTIME
CURRENT_STEP=preflight

export BIRDSEARCH_IMAGE=$IMAGE
export BIRDSEARCH_TEACHER=toy:tiny BIRDSEARCH_STUDENT=toy:tiny  # real weights need a download
export BIRDSEARCH_GALLERY=$WORK/gallery
export BIRDSEARCH_CPUS=${BIRDSEARCH_CPUS:-$(nproc)} BIRDSEARCH_MEMORY=${BIRDSEARCH_MEMORY:-6g}

say() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }
seconds_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

compose() {
    local files=(-f "$ROOT/docker/compose.yaml" -f "$ROOT/docker/compose.cpu.yaml")
    [ "$NETWORK" = host ] && files+=(-f "$ROOT/docker/compose.hostnet.yaml")
    docker compose -p "$PROJECT" --project-directory "$ROOT/docker" "${files[@]}" "$@"
}

# One step: its commands run in a subshell with `set -e`, its time is printed, a failure ends the run.
step() {
    local name=$1 started=$EPOCHREALTIME status
    shift
    CURRENT_STEP=$name
    set +e
    (set -e; "$@")
    status=$?
    set -e
    if [ "$status" -ne 0 ]; then
        say "FAILED  $name (exit $status, after $(seconds_since "$started") s)"
        exit 1
    fi
    say "$(printf 'ok  %6s s  %s' "$(seconds_since "$started")" "$name")"
}

on_exit() {
    local status=$?
    if [ "$status" -ne 0 ]; then
        echo "---- the containers' logs (step: $CURRENT_STEP) ----" >&2
        compose logs --no-color --timestamps --tail 200 >&2 2>&1 || true
        [ -f "$WORK/build.log" ] && [ "$CURRENT_STEP" = "build the CPU image" ] && tail -50 "$WORK/build.log" >&2
    fi
    if [ "$status" -eq 0 ] || [ -z "${SMOKE_KEEP:-}" ]; then
        compose --profile reindex --profile provision down -v --remove-orphans >/dev/null 2>&1 || true
        rm -rf "$WORK"
    else
        echo "kept: compose project $PROJECT, work folder $WORK" >&2
    fi
    exit "$status"
}
trap on_exit EXIT

fail() { echo "$*" >&2; return 1; }
json() { python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print($2)" "$1"; }

# ---- the engine, the base image, the torch source -------------------------------------------------

preflight() {
    docker info --format '{{.ServerVersion}}' >/dev/null || fail "no Docker engine answers"
    local compose_version
    compose_version=$(docker compose version --short) || fail "no Compose v2 plugin (docker compose)"
    python3 - "$compose_version" <<'EOF' || fail "Compose $compose_version: the files need v2.24+ (!reset)"
import sys
major, minor = (int(x) for x in sys.argv[1].lstrip("v").split(".")[:2])
sys.exit(0 if (major, minor) >= (2, 24) else 1)
EOF
    [ -f "$RECORDING" ] || fail "missing $RECORDING"
}

choose_network() {
    if [ -n "${SMOKE_NETWORK:-}" ]; then
        echo "$SMOKE_NETWORK"
    elif docker network inspect bridge >/dev/null 2>&1; then
        echo bridge
    else
        echo host
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A Debian bookworm base with python3, python3-venv and useradd, from Debian's packages, plus the CA
# certificates this host adds to Debian's (a site's TLS proxy), so that pip inside the build trusts
# what the host trusts.
make_local_base() {
    command -v mmdebstrap >/dev/null || fail "no registry image and no mmdebstrap (apt-get install mmdebstrap)"
    # shellcheck disable=SC2016  # "$1" is the chroot, expanded by mmdebstrap in its hooks
    mmdebstrap --variant=minbase --include=python3,python3-venv,passwd,ca-certificates \
        --customize-hook='cp -a /usr/local/share/ca-certificates/. "$1/usr/local/share/ca-certificates/"' \
        --customize-hook='chroot "$1" update-ca-certificates' \
        bookworm "$WORK/base.tar" >"$WORK/mmdebstrap.log" 2>&1 || { tail -20 "$WORK/mmdebstrap.log"; return 1; }
    local bundle=/etc/ssl/certs/ca-certificates.crt
    docker import --change "ENV SSL_CERT_FILE=$bundle PIP_CERT=$bundle REQUESTS_CA_BUNDLE=$bundle" \
        "$WORK/base.tar" "$LOCAL_BASE" >/dev/null
    rm -f "$WORK/base.tar"
}

base_image() {
    if [ -n "${PYTHON_IMAGE:-}" ]; then
        echo "given: $PYTHON_IMAGE" >"$WORK/base"
    elif timeout 120 docker pull -q "$REGISTRY_BASE" >/dev/null 2>&1; then
        echo "$REGISTRY_BASE (pulled)" >"$WORK/base"
    elif docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
        echo "$LOCAL_BASE (made earlier with mmdebstrap)" >"$WORK/base"
    else
        make_local_base
        echo "$LOCAL_BASE (made now with mmdebstrap)" >"$WORK/base"
    fi
}

torch_index() {
    if [ -n "${BIRDSEARCH_TORCH_INDEX_URL+set}" ]; then
        echo "$BIRDSEARCH_TORCH_INDEX_URL"
    elif curl -fsS --max-time 15 -o /dev/null "$CPU_TORCH_INDEX/torch/" 2>/dev/null; then
        echo "$CPU_TORCH_INDEX"
    fi
}

build() {
    local base network=()
    base=$(cut -d' ' -f1 "$WORK/base")
    [ "$NETWORK" = host ] && network=(--network host)
    docker build "${network[@]}" -f "$ROOT/docker/Dockerfile" --target runtime \
        --build-arg PYTHON_IMAGE="$base" --build-arg VARIANT=cpu --build-arg TORCH_INDEX_URL="$TORCH_INDEX" \
        -t "$IMAGE" "$ROOT" >"$WORK/build.log" 2>&1
}

# ---- the site's photos: the tiny toy world's gallery, drawn by the image itself ------------------

draw_gallery() {
    mkdir -p "$WORK/gallery" "$WORK/held"
    chmod 755 "$WORK/gallery"  # the containers read it as uid 10001
    local network=()
    [ "$NETWORK" = host ] && network=(--network host)
    docker run --rm "${network[@]}" --user "$(id -u):$(id -g)" -e BIRDSEARCH_CACHE=/tmp/world \
        -v "$WORK/gallery:/out" "$IMAGE" python -c '
import shutil
from birdsearch.toy.world import ensure_world
world = ensure_world("tiny", stages=("gallery",), progress=False)
shutil.copytree(world.gallery_dir, "/out", dirs_exist_ok=True)'
    local held
    held=$(find "$WORK/gallery" -name '*.jpg' | sort | tail -1)  # added to the gallery later
    [ -n "$held" ] || fail "the toy world drew no photos"
    mkdir -p "$WORK/held/$(basename "$(dirname "$held")")"
    mv "$held" "$WORK/held/$(basename "$(dirname "$held")")/"
    find "$WORK/gallery" -name '*.jpg' | wc -l >"$WORK/photos"
}

# ---- the story -----------------------------------------------------------------------------------

provision_models() {
    compose --profile provision run --rm models >"$WORK/models.log" 2>&1 || { tail -30 "$WORK/models.log"; return 1; }
}

reindex() {  # reindex EXPECTED_VERSION
    compose --profile reindex run --rm reindex >"$WORK/reindex.log" 2>&1 || { tail -30 "$WORK/reindex.log"; return 1; }
    grep -q "$1" "$WORK/reindex.log" || { tail -30 "$WORK/reindex.log"; fail "reindex did not publish $1"; }
}

api_container() { compose ps -q api; }

wait_healthy() {
    local cid state health deadline=$((SECONDS + 300))
    cid=$(api_container)
    [ -n "$cid" ] || fail "no api container"
    while [ $SECONDS -lt $deadline ]; do
        state=$(docker inspect -f '{{.State.Status}}' "$cid")
        health=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$cid")
        [ "$health" = healthy ] && return 0
        [ "$state" = running ] || fail "the api container is $state"
        sleep 2
    done
    fail "the api container is not healthy after 300 s (health: $health)"
}

api_up() {
    compose up -d api >>"$WORK/compose.log" 2>&1 || { tail -20 "$WORK/compose.log"; return 1; }
    wait_healthy
    curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null
}

query() {  # query EXPECTED_VERSION
    curl -fsS --max-time 120 -F "audio=@$RECORDING" "http://127.0.0.1:$PORT/query" >"$WORK/answer.json"
    local served species
    served=$(json "$WORK/answer.json" 'd["query"]["index"]["name"]')
    species=$(json "$WORK/answer.json" 'len(d["species"])')
    [ "$served" = "$1" ] || fail "the query was answered from $served, not $1"
    [ "$species" -gt 0 ] || fail "the answer names no species"
}

check_user_and_mounts() {
    local cid uid
    cid=$(api_container)
    uid=$(compose exec -T api id -u)
    [ "$uid" = 10001 ] || fail "the api runs as uid $uid, not 10001"
    docker inspect -f '{{range .Mounts}}{{.Destination}} {{.RW}}{{"\n"}}{{end}}' "$cid" | sort >"$WORK/mounts"
    for ro in /models /index /checkpoints /gallery; do
        grep -qx "$ro false" "$WORK/mounts" || fail "$ro is not mounted read-only: $(cat "$WORK/mounts")"
    done
    grep -qx "/cache true" "$WORK/mounts" || fail "/cache is not writable: $(cat "$WORK/mounts")"
    if compose exec -T api touch /index/probe 2>/dev/null; then fail "the api could write into /index"; fi
    # The jobs ran as the same user: what they wrote into the volumes is theirs.
    local owners
    owners=$(compose exec -T api find /index /cache -maxdepth 2 ! -user 10001)
    [ -z "$owners" ] || fail "files in the volumes not owned by uid 10001: $owners"
}

add_photo_and_reindex() {
    cp -a "$WORK/held/." "$WORK/gallery/"
    reindex v0002
}

hot_reload() {
    local deadline=$((SECONDS + 60))
    while [ $SECONDS -lt $deadline ]; do
        curl -fsS "http://127.0.0.1:$PORT/version" >"$WORK/version.json"
        [ "$(json "$WORK/version.json" '(d.get("index") or {}).get("name")')" = v0002 ] && return 0
        sleep 1
    done
    fail "the api still serves $(json "$WORK/version.json" '(d.get("index") or {}).get("name")') after 60 s"
}

down_keeps_the_index() {
    compose down >>"$WORK/compose.log" 2>&1 || { tail -20 "$WORK/compose.log"; return 1; }
    [ -z "$(compose ps -aq)" ] || fail "containers left after down"
    docker volume inspect "${PROJECT}_index" >/dev/null || fail "down removed the index volume"
}

served_count() {
    curl -fsS "http://127.0.0.1:$PORT/version" >"$WORK/version.json"
    local name count
    name=$(json "$WORK/version.json" 'd["index"]["name"]')
    count=$(json "$WORK/version.json" 'd["index"]["count"]')
    if [ "$name" != v0002 ] || [ "$count" -ne $(($(cat "$WORK/photos") + 1)) ]; then
        fail "after up again the api serves $name with $count photos"
    fi
}

down_removes_everything() {
    compose --profile reindex --profile provision down -v --remove-orphans >>"$WORK/compose.log" 2>&1 ||
        { tail -20 "$WORK/compose.log"; return 1; }
    [ -z "$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")" ] || fail "volumes left"
    [ -z "$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")" ] || fail "containers left"
}

NETWORK=$(choose_network)
PORT=${SMOKE_PORT:-$(free_port)}
export BIRDSEARCH_PORT=$PORT BIRDSEARCH_PUBLISH=127.0.0.1:$PORT

say "birdsearch docker/smoke.sh, $(date -u +%Y-%m-%dT%H:%MZ), project $PROJECT"
step "preflight: engine and Compose" preflight
say "engine $(docker version --format '{{.Server.Version}}'), client $(docker version --format '{{.Client.Version}}'), Compose $(docker compose version --short), network $NETWORK, API on 127.0.0.1:$PORT"
step "base image" base_image
say "    base: $(cat "$WORK/base")"
TORCH_INDEX=$(torch_index)
say "    torch for the CPU image from: ${TORCH_INDEX:-PyPI (the CUDA build, which also runs on CPU)}"
step "build the CPU image" build
say "    $IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%.2f GB", $1 / 1e9 }')"
step "draw the site's photos (tiny toy world)" draw_gallery
step "models job: toy:tiny into the volumes" provision_models
step "reindex job: the first index (v0001)" reindex v0001
step "api up, healthcheck healthy" api_up
step "query answered from v0001" query v0001
step "api runs as uid 10001, read-only mounts hold" check_user_and_mounts
step "photo added, reindex job publishes v0002" add_photo_and_reindex
step "hot reload: the api serves v0002" hot_reload
step "query answered from v0002" query v0002
step "down: containers gone, volumes kept" down_keeps_the_index
step "up again, healthy" api_up
step "the index kept: v0002 with every photo" served_count
step "down -v: nothing left" down_removes_everything
say "passed in $(seconds_since "$STARTED") s"
