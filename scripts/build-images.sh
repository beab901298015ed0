#!/usr/bin/env bash
# Build the static microinit and the microcontainer images, all FROM scratch (the engine needs no registry):
#   PREFIX/base        busybox + microinit (Dockerfile at the repository root)
#   PREFIX/base-https  the same with the TLS build of microinit (`--features https`: rustls, for an https://
#                      Consul agent with CONSUL_CACERT, client certificates and CONSUL_TLS_SERVER_NAME)
#   PREFIX/filebox     the runtime volume with node and the libraries it needs (scripts/filebox.sh)
#   PREFIX/node-hello  the example app: app.js + symlinks into the volume, FROM PREFIX/base
#   PREFIX/consul      a Consul agent (examples/consul/Dockerfile)
#   with NGINX=1 also:
#   PREFIX/nginx-filebox  the runtime volume with Debian's nginx (/usr/sbin/nginx) and its libraries
#   PREFIX/nginx-front    examples/nginx-front: nginx proxying to a watched service's instances, FROM PREFIX/base
#
#   scripts/build-images.sh            (prints `image NAME BYTES` for each image on stdout)
#   STAGE_ONLY=1 scripts/build-images.sh   only build microinit and stage the contexts in BUILD_DIR (base/,
#                                          filebox/, node-hello/): no Docker needed (scripts/demo.sh uses this)
# Env: IMAGE_PREFIX (default microinit), IMAGE_TAG (default latest), BUILD_DIR (staging, default <repo>/.build),
#      MICROINIT_BIN / MICROINIT_HTTPS_BIN (already built binaries; default: scripts/build.sh builds them),
#      NODE_BIN (default: node in PATH), NGINX_BIN (default: nginx in PATH or /usr/sbin), CONSUL_BIN (default: what scripts/install-consul.sh installs),
#      MICROINIT_CACHE (download cache, default <repo>/.cache).
# Needs: docker, cargo + rustup, apt-get + dpkg (busybox-static is downloaded, not installed), jq.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
prefix=${IMAGE_PREFIX:-microinit}
tag=${IMAGE_TAG:-latest}
build=${BUILD_DIR:-$repo/.build}
cache=${MICROINIT_CACHE:-$repo/.cache}
stage_only=${STAGE_ONLY:-}
[ "$stage_only" != 0 ] || stage_only=""
die() { echo "build-images: $*" >&2; exit 1; }
step() { echo "build-images: $*" >&2; }

# docker build, quiet unless it fails (the legacy builder's deprecation notice is noise here).
docker_build() { # docker_build IMAGE CONTEXT [docker build args...]
    local image=$1 context=$2 log
    shift 2
    [ -z "$stage_only" ] || return 0
    log=$(docker build -t "$image" "$@" "$context" 2>&1) || { echo "$log" >&2; die "docker build of $image failed"; }
    echo "image $image $(docker image inspect -f '{{.Size}}' "$image")"
}

# Debian's busybox-static, downloaded and unpacked into the cache (the system's packages are not touched).
fetch_busybox() {
    local dir=$cache/busybox tmp
    if [ -x "$dir/bin/busybox" ]; then echo "$dir/bin/busybox"; return; fi
    command -v apt-get >/dev/null || die "apt-get not found: busybox-static comes from Debian"
    tmp=$(mktemp -d "$cache/busybox.XXXXXX")
    (cd "$tmp" && apt-get -q -o APT::Sandbox::User=root download busybox-static >&2) \
        || die "apt-get download busybox-static failed (run apt-get update first?)"
    dpkg -x "$tmp"/busybox-static_*.deb "$tmp/root"
    # Parallel builds race here; whoever renames first wins and the others use its copy.
    mv -T "$tmp/root" "$dir" 2>/dev/null || true
    rm -rf "$tmp"
    [ -x "$dir/bin/busybox" ] || die "busybox-static did not contain bin/busybox"
    echo "$dir/bin/busybox"
}

mkdir -p "$build" "$cache"
[ -n "$stage_only" ] || command -v docker >/dev/null || die "docker not found"

step "building the static microinit (musl)"
# MICROINIT_BIN: an already built binary (scripts/test.sh passes the one it tested).
microinit=${MICROINIT_BIN:-$("$repo/scripts/build.sh" | tail -1)} || die "scripts/build.sh failed"
[ -x "$microinit" ] || die "$microinit missing after cargo build"

if [ -z "$stage_only" ]; then
    step "building the TLS build of microinit (--features https)"
    microinit_https=${MICROINIT_HTTPS_BIN:-$(MICROINIT_FEATURES=https "$repo/scripts/build.sh" | tail -1)} \
        || die "MICROINIT_FEATURES=https scripts/build.sh failed"
    [ -x "$microinit_https" ] || die "$microinit_https missing after cargo build"
fi

# stage_base DIR BINARY: the base image context (rootfs, busybox, the given microinit).
stage_base() {
    rm -rf "$1"
    mkdir -p "$1"
    cp -a "$repo/rootfs" "$1/rootfs"
    find "$1/rootfs" -name .keep -delete
    cp "$busybox" "$1/busybox"
    cp "$2" "$1/microinit"
}
step "staging the base image contexts (plain and https)"
busybox=$(fetch_busybox)
stage_base "$build/base" "$microinit"
docker_build "$prefix/base:$tag" "$build/base" -f "$repo/Dockerfile"
if [ -z "$stage_only" ]; then
    stage_base "$build/base-https" "$microinit_https"
    docker_build "$prefix/base-https:$tag" "$build/base-https" -f "$repo/Dockerfile"
fi

step "building the runtime volume (filebox) from node"
node=$(command -v "${NODE_BIN:-node}") || die "node not found (set NODE_BIN): the example app's runtime"
"$repo/scripts/filebox.sh" --microinit "$microinit" "$build/filebox" "$node" >&2
docker_build "$prefix/filebox:$tag" "$build/filebox"

step "building the example app image"
rm -rf "$build/node-hello"
cp -a "$repo/examples/node-hello" "$build/node-hello"
cp -a "$build/filebox/links" "$build/node-hello/links"
docker_build "$prefix/node-hello:$tag" "$build/node-hello" --build-arg "BASE=$prefix/base:$tag"

[ -z "$stage_only" ] || exit 0
if [ -n "${NGINX:-}" ]; then
    step "building the nginx front: its runtime volume (nginx-filebox) and image"
    nginx=$(PATH=$PATH:/usr/sbin command -v "${NGINX_BIN:-nginx}") || die "nginx not found (apt-get install nginx)"
    "$repo/scripts/filebox.sh" --microinit "$microinit" --bin-dir /usr/sbin "$build/nginx-filebox" "$nginx" >&2
    docker_build "$prefix/nginx-filebox:$tag" "$build/nginx-filebox"
    rm -rf "$build/nginx-front"
    cp -a "$repo/examples/nginx-front" "$build/nginx-front"
    cp -a "$build/nginx-filebox/links" "$build/nginx-front/links"
    docker_build "$prefix/nginx-front:$tag" "$build/nginx-front" --build-arg "BASE=$prefix/base:$tag"
fi
step "building the consul image"
consul=${CONSUL_BIN:-$("$repo/scripts/install-consul.sh" | tail -n1)}
[ -x "$consul" ] || die "consul binary $consul not executable"
rm -rf "$build/consul"
"$repo/scripts/filebox.sh" --microinit "$microinit" "$build/consul" "$consul" >&2
cp "$repo/examples/consul/Dockerfile" "$build/consul/Dockerfile"
mkdir -p "$build/consul/tmp"
chmod 1777 "$build/consul/tmp"
docker_build "$prefix/consul:$tag" "$build/consul"
