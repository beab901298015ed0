#!/usr/bin/env bash
# The README's demo: the whole microcontainer story, step by step, on a fresh machine.
#
#   scripts/demo.sh
#
# With a working Docker engine: build the images (all FROM scratch), start a Consul agent, create the runtime
# volume container, show the app image failing clearly without it, run it with --volumes-from, show it answering
# and registered in Consul, `docker stop` it, show it deregistered (before it got SIGTERM) and the exit code.
# Without one (`docker info` fails) it says so loudly and tells the same story with Linux namespaces: the image
# becomes a chroot directory, the volume a bind mount, `docker run` becomes `unshare --pid --fork --mount` with
# microinit as PID 1, `docker exec` becomes `nsenter`, and Consul is a dev agent on loopback.
# DEMO_MODE=unshare forces the namespace story.
# Leaves the images (and, with DEMO_KEEP=1, the containers) behind; removes everything else.
# Needs: root, curl, jq, node, plus what scripts/build-images.sh needs (docker only for the Docker story).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
bold=$'\e[1m' off=$'\e[0m'
[ -t 1 ] || bold="" off=""
n=0
step() { n=$((n + 1)); printf '\n%s== %d. %s%s\n' "$bold" "$n" "$*" "$off"; }
show() { printf '%s$ %s%s\n' "$bold" "$*" "$off" >&2; "$@"; } # the command line on stderr: callers may silence stdout
die() { echo "demo: $*" >&2; exit 1; }
for tool in curl jq node; do command -v $tool >/dev/null || die "$tool not found (apt-get install $tool)"; done
summary() { jq -c '[.[] | {Node: .Node.Node, ID: .Service.ID, Address: .Service.Address, Port: .Service.Port,
    Checks: [.Checks[] | {(.CheckID): .Status}] | add}]'; }

docker_story() {
    # Globals, not locals: the EXIT trap runs after this function has returned.
    net=microinit-demo consul=microinit-demo-consul filebox=microinit-demo-filebox app=microinit-demo-app
    local consul_ip app_ip t0 code
    cleanup() {
        [ "${DEMO_KEEP:-0}" = 1 ] && return
        docker rm -f -v "$app" "$filebox" "$consul" >/dev/null 2>&1 || true
        docker network rm "$net" >/dev/null 2>&1 || true
    }
    cleanup # leftovers of an earlier run
    trap cleanup EXIT

    step "Build the static microinit and the images, all FROM scratch (no registry needed)"
    show "$repo/scripts/build-images.sh"

    step "A user network and this host's Consul agent"
    show docker network create "$net" >/dev/null
    show docker run -d --name "$consul" --network "$net" microinit/consul >/dev/null
    consul_ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$consul")
    poll 30 has_leader "$consul_ip:8500" || die "consul did not start: $(docker logs "$consul" 2>&1 | tail -5)"
    echo "consul agent at $consul_ip:8500"

    step "The runtime volume: node and exactly the files it needs (microinit check --json), and the app's symlinks"
    show cat "$repo/.build/filebox/symlinks.txt"
    show docker create --name "$filebox" microinit/filebox >/dev/null

    step "The app image alone is $(docker image inspect -f '{{.Size}}' microinit/node-hello) bytes; without the volume microinit says what is missing"
    show docker run --rm microinit/node-hello || echo "(exit code $?)"

    step "Run the app with the runtime volume; microinit is PID 1 and registers it in Consul"
    show docker run -d --name "$app" --network "$net" --volumes-from "$filebox:ro" \
        -e "CONSUL_HTTP_ADDR=$consul:8500" microinit/node-hello >/dev/null
    app_ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$app")
    poll 30 curl -fsS -m 2 "http://$app_ip:8080/" || die "the app did not answer: $(docker logs "$app" 2>&1 | tail -5)"
    show curl -sS "http://$app_ip:8080/"
    show docker exec "$app" ps -o pid,ppid,stat,comm,args
    show docker exec "$app" microinit status

    step "Registered and passing in Consul, with the container's address"
    poll 30 test "$(instances "$consul_ip:8500" node-hello passing)" = 1 || echo "(not passing yet)"
    curl -sS "http://$consul_ip:8500/v1/health/service/node-hello" | summary

    step "docker stop: microinit deregisters first, then forwards SIGTERM to the app"
    t0=$(now_ms)
    show docker stop "$app" >/dev/null
    code=$(docker inspect -f '{{.State.ExitCode}}' "$app")
    echo "stopped in $(($(now_ms) - t0)) ms, exit code $code (the app exits 0 on SIGTERM; 143 if SIGTERM kills it)"
    show docker logs "$app"

    step "Deregistered"
    poll 10 test "$(instances "$consul_ip:8500" node-hello)" = 0 || true
    curl -sS "http://$consul_ip:8500/v1/health/service/node-hello" | summary
}

unshare_story() {
    local consul_addr port code
    # Globals, not locals: the EXIT trap runs after this function has returned.
    pid="" init="" work=$(mktemp -d "${TMPDIR:-/tmp}/microinit-demo.XXXXXX")
    build=$work/build root=$work/root consul_dir=$work/consul
    cleanup() {
        # Killing PID 1 of the namespace kills everything in it.
        [ -z "$init" ] || kill -KILL "$init" 2>/dev/null || true
        "$repo/scripts/consul-dev.sh" stop "$consul_dir" || true
        rm -rf "$work"
    }
    trap cleanup EXIT
    [ "$(id -u)" = 0 ] || die "the namespace story needs root (unshare --pid --mount, chroot)"

    step "Build the static microinit; stage the base image, the runtime volume and the app as directories"
    show env STAGE_ONLY=1 BUILD_DIR="$build" "$repo/scripts/build-images.sh"
    # The "image": base rootfs + busybox applets + microinit + the app's symlinks + the app.
    mkdir -p "$root"
    cp -a "$build/base/rootfs/." "$root/"
    cp "$build/base/busybox" "$root/bin/busybox"
    cp "$build/base/microinit" "$root/sbin/microinit"
    chroot "$root" /bin/busybox --install -s
    cp -a "$build/node-hello/links/." "$root/"
    mkdir -p "$root/app" "$root/proc" "$root/dev"
    cp "$build/node-hello/app.js" "$root/app/app.js"
    echo "image directory: $root ($(du -sb "$root" | cut -f1) bytes); volume directory: $build/filebox/files"

    step "This host's Consul agent, on loopback"
    echo "\$ scripts/consul-dev.sh start $consul_dir"
    consul_addr=$("$repo/scripts/consul-dev.sh" start "$consul_dir")
    echo "consul agent at $consul_addr"
    port=$((20000 + RANDOM % 20000))

    # docker run, by hand: new PID + mount namespaces, the volume bind-mounted at /opt/files (unless "novolume"),
    # /proc of the new namespace, the image directory as root, microinit as PID 1 (sh and chroot exec into it).
    # shellcheck disable=SC2016 # $1..$3 in the single quotes are the inner sh's arguments
    launch() { # launch volume|novolume
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PORT="$port" CONSUL_HTTP_ADDR="$consul_addr" \
            MICROINIT_SERVICE_NAME=node-hello MICROINIT_SERVICE_PORT="$port" MICROINIT_SERVICE_ADDRESS=127.0.0.1 \
            MICROINIT_READY="tcp:$port" \
            unshare --pid --fork --mount --propagation private sh -c '
                set -e
                [ "$2" = novolume ] || mount --bind "$3" "$1/opt/files"
                mount --rbind /dev "$1/dev"
                mount -t proc proc "$1/proc"
                exec chroot "$1" /sbin/microinit -- node /app/app.js' sh "$root" "$1" "$build/filebox/files"
    }

    step "The app \"image\" without the volume: microinit says what is missing"
    echo "\$ unshare --pid --fork --mount ... chroot $root /sbin/microinit -- node /app/app.js"
    launch novolume || echo "(exit code $?)"

    step "Run it with the volume bind-mounted at /opt/files: microinit is PID 1 of a new PID namespace"
    echo "\$ unshare --pid --fork --mount ... (mount --bind $build/filebox/files $root/opt/files) ... &"
    launch volume &
    pid=$!
    poll 30 curl -fsS -m 2 "http://127.0.0.1:$port/" || die "the app did not answer on 127.0.0.1:$port"
    show curl -sS "http://127.0.0.1:$port/"
    # $pid is the subshell running launch; below it unshare, below that microinit (sh and chroot exec'ed into it).
    init=$(pgrep -P "$(pgrep -P "$pid" -x unshare)") || die "microinit not found under the background job $pid"
    echo "microinit is PID 1 inside, pid $init outside; the docker exec analogue is nsenter:"
    show nsenter -t "$init" -p -m -r -w ps -o pid,ppid,stat,comm,args
    show nsenter -t "$init" -p -m -r -w microinit status

    step "Registered and passing in Consul"
    poll 30 test "$(instances "$consul_addr" node-hello passing)" = 1 || echo "(not passing yet)"
    curl -sS "http://$consul_addr/v1/health/service/node-hello" | summary

    step "The docker stop analogue: SIGTERM to PID 1; microinit deregisters first, then forwards it"
    show kill -TERM "$init"
    code=0
    wait "$pid" || code=$?
    init=""
    echo "exit code $code (the app exits 0 on SIGTERM; 143 if SIGTERM kills it)"

    step "Deregistered"
    poll 10 test "$(instances "$consul_addr" node-hello)" = 0 || true
    curl -sS "http://$consul_addr/v1/health/service/node-hello" | summary
}

if [ "${DEMO_MODE:-}" = unshare ]; then
    echo "demo: DEMO_MODE=unshare: telling the story with Linux namespaces instead of Docker"
    unshare_story
elif docker info >/dev/null 2>&1; then
    docker_story
else
    echo "################################################################################"
    echo "demo: NO DOCKER ENGINE: \`docker info\` fails on this machine."
    echo "demo: Running the same story with Linux namespaces (unshare, chroot, nsenter) and a Consul"
    echo "demo: agent on loopback instead of containers."
    echo "################################################################################"
    unshare_story
fi
printf '\n%sdemo: done%s\n' "$bold" "$off"
