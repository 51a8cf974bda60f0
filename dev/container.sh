#!/usr/bin/env bash
# Build the broker image without a Docker engine, then smoke-test what it contains (as root).
#   dev/container.sh build    # base image (debootstrapped Debian with python3) + the Dockerfile, via podman
#   dev/container.sh smoke    # export the image, run its entry point in a chroot on 127.0.0.1, GET /healthz
# No registry is reachable here, so the public base image of the Dockerfile is replaced by a local one
# (../shared/docs/CONTAINERS.md); `podman run` does not work on these machines, hence the chroot.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=localhost/conveyor:dev
BASE=localhost/conveyor-base:bookworm
WORK=${CONVEYOR_CONTAINER_DIR:-/var/lib/conveyor-lab/container}
PODMAN=(podman --storage-driver vfs)

need() { dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed; }

build_base() {
    "${PODMAN[@]}" image exists "$BASE" && return 0
    need debootstrap || apt-get install -y -qq --no-install-recommends debootstrap
    local root="$WORK/base-rootfs"
    rm -rf "$root" && mkdir -p "$root"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" \
        http://deb.debian.org/debian
    # This network re-signs TLS: pip inside the build needs the host's CA bundle.
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | "${PODMAN[@]}" import - "$BASE"
    rm -rf "$root"
}

build() {
    for pkg in podman buildah uidmap; do
        need "$pkg" || { apt-get update -qq; apt-get install -y -qq --no-install-recommends podman buildah uidmap; break; }
    done
    mkdir -p "$WORK"
    build_base
    "${PODMAN[@]}" build --isolation chroot --build-arg BASE_IMAGE="$BASE" -t "$IMAGE" .
}

smoke() {
    local root="$WORK/smoke-rootfs" port=${1:-18080} cid pid
    rm -rf "$root" && mkdir -p "$root"
    cid=$("${PODMAN[@]}" create "$IMAGE")
    "${PODMAN[@]}" export "$cid" | tar -x -C "$root"
    "${PODMAN[@]}" rm "$cid" >/dev/null
    cp /etc/hosts "$root/etc/hosts"
    mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
    # The image's own entry point, as its own non-root user, with one Factory it cannot reach (no key in
    # the image): the service must come up and answer anyway, and report that Factory as unhealthy.
    cat > "$root/var/lib/conveyor/factories.yaml" <<'YAML'
factories:
  - id: smoke
    name: Smoke-test Factory
    country: LU
    site: nowhere
    adapter: {kind: rest, cluster: smoke, slurm_user: slurm, url: "http://127.0.0.1:9", jwt_key_file: /nonexistent.key, operator_user: slurm, user_lookup: none, allowed_users: "conveyor-smoke"}
    mapping: {default_user: conveyor-smoke}
    partitions:
      - {name: cpu, default: true, max_time_min: 60, default_time_min: 10, nodes: 1, cpus_per_node: 4, memory_mb_per_node: 4000}
YAML
    chown -R 10001:10001 "$root/var/lib/conveyor"
    # The image's own environment (its ENV lines), then what the smoke test changes.
    local -a image_env
    mapfile -t image_env < <("${PODMAN[@]}" image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | grep .)
    chroot --userspec=10001:10001 "$root" /usr/bin/env -i "${image_env[@]}" HOME=/var/lib/conveyor \
        CONVEYOR_HOST=127.0.0.1 CONVEYOR_PORT="$port" \
        CONVEYOR_FACTORIES_FILE=/var/lib/conveyor/factories.yaml CONVEYOR_DEV_MODE=true \
        CONVEYOR_DEV_TOKEN=smoke-test-token-0123456789 /app/entrypoint.sh > "$WORK/smoke.log" 2>&1 &
    pid=$!
    local ok=1
    for _ in $(seq 1 300); do
        if curl -fsS "http://127.0.0.1:$port/healthz" > "$WORK/smoke.healthz" 2>/dev/null; then ok=0; break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    umount "$root/proc"
    if [ "$ok" -ne 0 ]; then
        echo "smoke test FAILED; the entry point said:" >&2
        tail -30 "$WORK/smoke.log" >&2
        return 1
    fi
    echo "smoke test passed: /healthz answered $(cat "$WORK/smoke.healthz")"
    grep -q "Running upgrade\|Will assume" "$WORK/smoke.log" && echo "migrations ran before uvicorn"
    echo "image user: $("${PODMAN[@]}" image inspect --format '{{.Config.User}}' "$IMAGE")"
}

case "${1:-}" in
    build) build ;;
    smoke) shift; smoke "$@" ;;
    *) echo "usage: dev/container.sh build|smoke [port]" >&2; exit 2 ;;
esac
