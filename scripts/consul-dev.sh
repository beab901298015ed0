#!/usr/bin/env bash
# Start / stop a throw-away Consul dev agent on loopback with free ports (DNS and gRPC off).
#
#   scripts/consul-dev.sh start DIR [extra consul agent args…]   prints the HTTP address (127.0.0.1:PORT)
#   scripts/consul-dev.sh stop DIR
#
# start writes DIR/http_addr, DIR/pid and DIR/consul.log and returns once /v1/status/leader names a leader.
# The consul binary: $CONSUL_BIN, else whatever scripts/install-consul.sh installs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
die() { echo "consul-dev: $*" >&2; exit 1; }

# A TCP port nobody listens on (TCP or UDP: serf uses both), from the ephemeral-ish range.
free_port() {
    local p used
    used=$(ss -Htuan 2>/dev/null | awk '{print $5}' | sed 's/.*://' | sort -u)
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 30000))
        if ! grep -qx "$p" <<<"$used" && ! grep -qx "$p" <<<"${taken:-}"; then
            taken="${taken:-} $p"$'\n'"$p"
            echo "$p"
            return
        fi
    done
    die "no free port found"
}

# One HTTP GET over bash's /dev/tcp (no curl needed); prints the body.
http_get() {
    local hostport=$1 path=$2
    exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}" || return 1
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$hostport" >&3
    sed '1,/^\r$/d' <&3
    exec 3<&-
}

start() {
    local dir=$1; shift
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    local consul=${CONSUL_BIN:-}
    [ -n "$consul" ] || consul=$("$here/install-consul.sh" | tail -n1)
    [ -x "$consul" ] || die "consul binary $consul not executable"

    local attempt http pid leader deadline
    for attempt in 1 2 3 4 5; do
        taken=""
        http=$(free_port)
        local serf_lan serf_wan server
        serf_lan=$(free_port); serf_wan=$(free_port); server=$(free_port)
        "$consul" agent -dev -node "dev-$http" -bind 127.0.0.1 -client 127.0.0.1 \
            -http-port "$http" -serf-lan-port "$serf_lan" -serf-wan-port "$serf_wan" -server-port "$server" \
            -dns-port -1 -grpc-port -1 "$@" >"$dir/consul.log" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >"$dir/pid"
        echo "127.0.0.1:$http" >"$dir/http_addr"
        deadline=$((SECONDS + 30))
        while [ "$SECONDS" -lt "$deadline" ]; do
            if ! kill -0 "$pid" 2>/dev/null; then
                break # died (usually a port race): retry with new ports
            fi
            leader=$(http_get "127.0.0.1:$http" /v1/status/leader 2>/dev/null || true)
            if [[ "$leader" == \"*:* ]]; then
                echo "127.0.0.1:$http"
                return 0
            fi
            sleep 0.1
        done
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        echo "consul-dev: attempt $attempt failed, log tail:" >&2
        tail -n 5 "$dir/consul.log" >&2 || true
    done
    die "consul agent did not elect a leader (see $dir/consul.log)"
}

stop() {
    local dir=$1 pid
    [ -r "$dir/pid" ] || return 0
    pid=$(cat "$dir/pid")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/pid"
}

case "${1:-}" in
    start) [ $# -ge 2 ] || die "usage: $0 start DIR [consul agent args…]"; shift; start "$@" ;;
    stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) die "usage: $0 start DIR [consul agent args…] | stop DIR" ;;
esac
