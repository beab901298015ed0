#!/usr/bin/env bash
# Soak test of Consul registration (not in CI): N cycles (default 1000) of microinit as PID 1 registering a
# service with a real dev agent, ended in turn by app exit, app crash (SIGSEGV), SIGTERM to microinit and
# SIGKILL to microinit. Then counts the registrations left behind. Target: none but the SIGKILLed ones
# (nothing can deregister after SIGKILL; Consul reaps those itself after DeregisterCriticalServiceAfter).
#
# Usage: scripts/soak-consul.sh [CYCLES]     env: MICROINIT_BIN (default: the static release build)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cycles=${1:-1000}
bin=${MICROINIT_BIN:-${CARGO_TARGET_DIR:-$repo/target}/x86_64-unknown-linux-musl/release/microinit}
[ -x "$bin" ] || { echo "soak: $bin missing: cargo build --release --target x86_64-unknown-linux-musl" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "soak: needs root (unshare --pid)" >&2; exit 1; }

work=$(mktemp -d /tmp/microinit-soak.XXXXXX)
cleanup() { "$repo/scripts/consul-dev.sh" stop "$work/agent" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
addr=$("$repo/scripts/consul-dev.sh" start "$work/agent" | tail -n1)
echo "soak: $cycles cycles against the dev agent at $addr" >&2

http_get() { # PATH → body
    exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}"
    printf 'GET %s HTTP/1.0\r\n\r\n' "$1" >&3
    sed '1,/^\r$/d' <&3
    exec 3<&-
}
known() { http_get "/v1/agent/service/$1" | grep -q '"ID"'; }
wait_for() { # DESCRIPTION COMMAND… : poll for 10 s
    local what=$1; shift
    for _ in $(seq 500); do "$@" && return 0; sleep 0.02; done
    echo "soak: timed out waiting for $what" >&2
    return 1
}
child_of() { awk '{print $1}' "/proc/$1/task/$1/children" 2>/dev/null; }

# shellcheck disable=SC2016 # expanded by the app's shell, not here
app='while [ ! -e "$1" ]; do sleep 0.02; done; if [ "$2" = crash ]; then kill -SEGV $$; fi; exit 0'
modes=(exit crash term kill)
declare -A count=()
killed=()
failures=0
start=$SECONDS
for i in $(seq "$cycles"); do
    mode=${modes[$((i % 4))]}
    id="soak-$i"
    stop="$work/stop-$i"
    unshare --pid --fork --mount-proc "$bin" --consul-addr "$addr" --service-name soak --service-id "$id" \
        --check-ttl 5s -- sh -c "$app" app "$stop" "$mode" 2>>"$work/microinit.log" &
    ushare=$!
    if ! wait_for "$id registered" known "$id"; then failures=$((failures + 1)); fi
    case $mode in
        exit | crash) touch "$stop" ;;
        term) kill -TERM "$(child_of "$ushare")" ;;
        kill) kill -KILL "$(child_of "$ushare")"; killed+=("$id") ;;
    esac
    wait "$ushare" || true
    count[$mode]=$((${count[$mode]:-0} + 1))
    if [ $((i % 100)) = 0 ]; then echo "soak: $i cycles, $((SECONDS - start)) s" >&2; fi
done

left=$(http_get /v1/agent/services | grep -o '"ID": *"soak-[0-9]*"' | grep -o 'soak-[0-9]*' | sort)
expected=$(printf '%s\n' "${killed[@]}" | sort)
leaked=$(comm -23 <(echo "$left") <(echo "$expected") | grep -c . || true)
left_n=$(echo "$left" | grep -c . || true)
echo "cycles: $cycles (exit ${count[exit]:-0}, crash ${count[crash]:-0}, sigterm ${count[term]:-0}, sigkill ${count[kill]:-0}) in $((SECONDS - start)) s"
echo "registered in time: $((cycles - failures))/$cycles"
echo "left in Consul: $left_n (SIGKILLed: ${#killed[@]}; reaped by Consul after DeregisterCriticalServiceAfter)"
echo "leaked beyond the SIGKILLed ones: $leaked"
[ "$leaked" = 0 ] && [ "$failures" = 0 ]
