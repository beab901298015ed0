#!/usr/bin/env bash
# Consul registration at cluster scale, in a real Docker engine (images FROM scratch, no registry): 3 Consul servers,
# 3 "hosts" (a client agent each, on its own docker network, joined to the servers' network), apps on every host.
#
#   scripts/cluster-e2e.sh          short form (scripts/test.sh runs it; a few minutes): 200 instances + a 300-
#                                   registration burst, a leader kill, a 20 s partition, 20 stop/start cycles
#   scripts/cluster-e2e.sh long     the issue's full figures: 60 s partition, 200 stop/start cycles, and then
#                                   the heartbeat-rate ladder (TTL 2 s, 1 s, 500 ms on 200 instances; figures),
#                                   each rung ending in a mass stop right after its overload (ghosts after 5 s,
#                                   and all reaped within Consul's own bound)
# Env: CLUSTER_INSTANCES (200), CLUSTER_BURST (300), CLUSTER_PARTITION_S, CLUSTER_CYCLES, MICROINIT_BIN, and what
#      scripts/build-images.sh reads. Skips loudly (exit 0) without `docker info`, unless MICROINIT_E2E_REQUIRED=1.
#
# The apps: on host 1, CLUSTER_INSTANCES microinit processes in one container (many instances behind one address,
# like host networking), each `microinit --service-name NAME --service-port P -- sleep`, with the default service
# ID; 20 more on each of hosts 2 and 3; and on host 3 one app container stopped and started over and over (its app
# asks the agent, on SIGTERM, whether its own ID is still registered). Scenarios, with what must hold:
#   storm      all instances passing, then a burst of registrations by another client at host 1's agent: all
#              instances passing again within 30 s of the burst's start
#   leader     the leader server is killed; instances stopped and started during the election: 0 ghosts (stopped
#              instances still in the catalog) once a new leader is there, every running instance passing
#   partition  host 2's agent loses the servers' network; instances stopped and started meanwhile: 0 ghosts and
#              every running instance passing after healing
#   cycles     docker stop / docker start: deregistered before the app got SIGTERM in 100% of the cycles, one ID
#   mass stop  SIGTERM to all of host 1's instances at once: how many deregistrations the agent confirmed within
#              the 2 s bound (figure), and 0 ghosts once Consul reaped what it never executed
# Figures go to stdout as `figure NAME VALUE` lines. Every docker name starts with `registration-cl`; all is
# removed on exit, pass or fail.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
started=$SECONDS
mode=${1:-short}
case $mode in
    short) part_s=${CLUSTER_PARTITION_S:-20} cycles=${CLUSTER_CYCLES:-20} ;;
    long) part_s=${CLUSTER_PARTITION_S:-60} cycles=${CLUSTER_CYCLES:-200} ;;
    *) echo "usage: scripts/cluster-e2e.sh [short|long]" >&2; exit 2 ;;
esac
n=${CLUSTER_INSTANCES:-200}
burst=${CLUSTER_BURST:-300}
small=20 # instances on hosts 2 and 3
# Unique per run: a network Docker fails to remove (a stale endpoint) must not break the next run.
p=registration-cl-$$
label="registration-cluster=$$"
svc=$p-app
failures=0

say() { echo "cluster: $*"; }
pass() { echo "cluster: PASS $*"; }
fail() { echo "cluster: FAIL $*"; failures=$((failures + 1)); }
die() { echo "cluster: FATAL $*" >&2; exit 1; }
figure() { echo "figure $1 $2"; }
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"

if ! docker info >/dev/null 2>&1; then
    echo "cluster: SKIPPED: \`docker info\` fails: no usable Docker engine; the cluster test did NOT run."
    [ "${MICROINIT_E2E_REQUIRED:-0}" = 1 ] && exit 1
    exit 0
fi
for tool in curl jq; do command -v $tool >/dev/null || die "$tool not found (apt-get install $tool)"; done

build=$(mktemp -d "${TMPDIR:-/tmp}/$p.XXXXXX")
base=$p/base:e2e consul=$p/consul:e2e
cleanup() {
    remove_labelled "$label"
    for net in servers h1 h2 h3; do docker network rm "$p-$net" >/dev/null 2>&1; done
    docker rmi "$base" "$p/base-https:e2e" "$consul" "$p/filebox:e2e" "$p/node-hello:e2e" >/dev/null 2>&1
    rm -rf "$build"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "building images ($mode form: $n instances + $burst burst, ${part_s}s partition, $cycles cycles)"
IMAGE_PREFIX=$p IMAGE_TAG=e2e BUILD_DIR=$build "$repo/scripts/build-images.sh" >"$build/images.txt" \
    || die "scripts/build-images.sh failed"

# The servers' network gets a subnet of our choosing, so a partitioned agent comes back with its own address.
for _ in 1 2 3 4 5 6 7 8; do
    sub=10.$((200 + RANDOM % 50)).$((RANDOM % 250)).0/24
    docker network create --label "$label" --subnet "$sub" "$p-servers" >/dev/null 2>&1 && break
    sub=
done
[ -n "$sub" ] || die "could not create network $p-servers (no free 10.200-249.x.0/24 subnet?)"
prefix3=${sub%.0/24}
for h in h1 h2 h3; do docker network create --label "$label" "$p-$h" >/dev/null || die "network $p-$h"; done

ip_on() { docker inspect -f "{{(index .NetworkSettings.Networks \"$2\").IPAddress}}" "$1"; }
run_bg() { docker run -d --label "$label" "$@" >/dev/null || die "docker run $* failed"; }

say "starting 3 Consul servers and 3 client agents"
joins=()
for i in 1 2 3; do joins+=(-retry-join "$prefix3.1$i"); done
fast='performance { raft_multiplier = 1 }'
for i in 1 2 3; do
    run_bg --name "$p-s$i" --network "$p-servers" --ip "$prefix3.1$i" "$consul" agent -server -bootstrap-expect 3 \
        -data-dir /tmp/consul -client 0.0.0.0 -bind "$prefix3.1$i" -node "$p-s$i" -hcl "$fast" "${joins[@]}"
done
for i in 1 2 3; do
    run_bg --name "$p-c$i" --network "$p-servers" --ip "$prefix3.2$i" "$consul" agent -data-dir /tmp/consul \
        -client 0.0.0.0 -bind "$prefix3.2$i" -node "$p-c$i" "${joins[@]}"
    docker network connect "$p-h$i" "$p-c$i" || die "connect $p-c$i to $p-h$i"
done
server_ips=("$prefix3.11" "$prefix3.12" "$prefix3.13")
# Ask any live server (one may be down on purpose).
srv() {
    local ip
    for ip in "${server_ips[@]}"; do curl -fsS -m 2 "http://$ip:8500$1" 2>/dev/null && return 0; done
    return 1
}
agent_ip() { ip_on "$p-c$1" "$p-h$1"; }
all_joined() { [ "$(srv /v1/catalog/nodes | jq length)" = 6 ]; }
poll 90 all_joined || die "the cluster did not form: $(srv /v1/catalog/nodes | jq -c 'map(.Node)')"
pass "3 servers + 3 client agents joined, leader $(srv /v1/status/leader)"

# --- the apps -------------------------------------------------------------------------------------------------
# One container per host holds many instances (microinit processes, not PID 1: one address for all of them).
ttl=10s
for i in 1 2 3; do
    run_bg --name "$p-apps$i" --network "$p-h$i" -e "CONSUL_HTTP_ADDR=$p-c$i:8500" "$base" sleep 1000000000
done
hostname_of() { docker inspect -f '{{.Config.Hostname}}' "$1"; }
declare -A expected=() # service ID -> 1 for every instance that should be registered
# start_instances HOST FIRST LAST: instance i listens (nominally) on port 10000+i.
start_instances() {
    local h=$1 a=$2 b=$3 host i
    host=$(hostname_of "$p-apps$h")
    # shellcheck disable=SC2016 # expanded inside the container
    docker exec "$p-apps$h" sh -c '
        ttl=$1 svc=$2; shift 2
        for i in $(seq "$1" "$2"); do
            microinit --no-runtime-check --socket "/tmp/ctl-$i" --service-name "$svc" --service-port $((10000 + i)) \
                --check-ttl "$ttl" --ready immediate -- sleep 1000000000 </dev/null >/dev/null 2>>"/tmp/log-$i" &
            echo $! >"/tmp/pid-$i"
        done' sh "$ttl" "$svc" "$a" "$b" || fail "starting instances $a-$b on host $h"
    for i in $(seq "$a" "$b"); do expected["$svc-$host-$((10000 + i))"]=1; done
}
# stop_instances HOST FIRST LAST: SIGTERM, as docker stop would send.
stop_instances() {
    local h=$1 a=$2 b=$3 host i
    host=$(hostname_of "$p-apps$h")
    # shellcheck disable=SC2016
    docker exec "$p-apps$h" sh -c 'for i in $(seq "$1" "$2"); do kill -TERM "$(cat "/tmp/pid-$i")"; done' sh "$a" "$b"
    for i in $(seq "$a" "$b"); do unset "expected[$svc-$host-$((10000 + i))]"; done
}
catalog_ids() { srv "/v1/catalog/service/$svc" | jq -r '.[].ServiceID' | sort; }
passing_ids() { srv "/v1/health/service/$svc?passing" | jq -r '.[].Service.ID' | sort; }
expected_ids() { printf '%s\n' "${!expected[@]}" | grep . | sort; }
ghosts() { comm -13 <(expected_ids) <(catalog_ids) | grep -c .; }
missing() { comm -23 <(expected_ids) <(passing_ids) | grep -c .; }
# Passing instances of one host (its agent's own view is what its apps' clients would use via DNS/health).
host_passing() { curl -fsS -m 5 "http://$(agent_ip "$1"):8500/v1/health/service/$svc?passing" | jq --arg n "$p-c$1" '[.[] | select(.Node.Node == $n)] | length'; }
converged() { [ "$(ghosts)" = 0 ] && [ "$(missing)" = 0 ]; }
# explain_missing: on stderr, each expected instance that is not passing, with its host agent's own view of its
# check and the end of its microinit log (a failed convergence should say whose side it is on).
explain_missing() {
    local id h host port
    for id in $(comm -23 <(expected_ids) <(passing_ids)); do
        port=${id##*-}
        for h in 1 2 3; do
            host=$(hostname_of "$p-apps$h")
            [ "$id" = "$svc-$host-$port" ] || continue
            echo "cluster: missing $id: host $h agent says $(curl -fsS -m 5 "http://$(agent_ip "$h"):8500/v1/agent/checks" |
                jq -c --arg id "$id" '[.[] | select(.ServiceID == $id) | {Status, Output}]')" >&2
            docker exec "$p-apps$h" tail -n 5 "/tmp/log-$((port - 10000))" >&2 || true
        done
    done
}
# wait_converged DEADLINE: seconds it took, or fails with the counts (and explains the missing on stderr).
wait_converged() {
    local t0=$SECONDS
    if poll "$1" converged; then echo $((SECONDS - t0)); else
        echo "never (ghosts $(ghosts), missing $(missing))"
        explain_missing
        return 1
    fi
}

# --- storm ----------------------------------------------------------------------------------------------------
say "storm: $n instances on host 1 (one address), $small on hosts 2 and 3"
t0=$(now_ms)
start_instances 1 1 "$n"
start_instances 2 1 "$small"
start_instances 3 1 "$small"
h1_all() { [ "$(host_passing 1)" = "$n" ]; }
if poll 120 h1_all; then
    reg_ms=$(($(now_ms) - t0))
    pass "$n instances behind one address all passing after $reg_ms ms"
    figure registrations_per_s_microinit_pattern "$(echo "$n $reg_ms" | awk '{printf "%.1f", $1 * 1000 / $2}')"
else
    fail "only $(host_passing 1) of $n instances on host 1 passing after 120 s"
fi
if t=$(wait_converged 60); then pass "catalog converged (all $((n + 2 * small)) passing, 0 ghosts) ${t}s later"; else fail "catalog: $t"; fi

# CPU of the microinit processes in steady state (heartbeats only).
cpu_ticks() { # sum of utime+stime (clock ticks) of host 1's instances
    # shellcheck disable=SC2016
    docker exec "$p-apps1" sh -c 'for f in /tmp/pid-*; do cat "/proc/$(cat "$f")/stat" 2>/dev/null; done' |
        awk '{s += $14 + $15} END {print s + 0}'
}
c0=$(cpu_ticks) w0=$(now_ms)
sleep 20
c1=$(cpu_ticks) w1=$(now_ms)
# ticks are 1/100 s: share of one core = ticks/100 / seconds; scaled to 1000 instances.
cpu=$(echo "$c0 $c1 $w0 $w1 $n" | awk '{printf "%.3f", ($2 - $1) / 100 / (($4 - $3) / 1000) * 100 * 1000 / $5}')
figure cpu_percent_of_one_core_per_1000_instances_ttl_$ttl "$cpu"

say "storm: a burst of $burst registrations from another client (this machine) at host 1's agent"
a1=$(agent_ip 1)
burst_reg() {
    curl -fsS -m 60 -X PUT "http://$a1:8500/v1/agent/service/register" -d "{\"ID\":\"$p-burst-$1\",\"Name\":\"$p-burst\",\"Port\":$((20000 + $1)),\"Check\":{\"TTL\":\"30s\",\"DeregisterCriticalServiceAfter\":\"1m\"}}" >/dev/null
}
export -f burst_reg
export a1 p
# Sampled every ~0.2 s through the agent: the lowest count seen, and when all were last seen passing again
# after a dip (recovery: 0 when they never dipped). Watched until the burst is answered and 10 s more.
min_passing=$n last_below=
tb=$(now_ms)
seq "$burst" | xargs -P "$burst" -I{} bash -c 'burst_reg {}' >/dev/null 2>&1 &
burst_pid=$!
burst_ms=
while :; do
    k=$(host_passing 1 2>/dev/null || echo 0)
    now=$(($(now_ms) - tb))
    [ "${k:-0}" -lt "$min_passing" ] && min_passing=${k:-0}
    [ "${k:-0}" = "$n" ] || last_below=$now
    if [ -z "$burst_ms" ] && ! kill -0 "$burst_pid" 2>/dev/null; then burst_ms=$now; fi
    if [ -n "$burst_ms" ] && [ "$now" -gt $((burst_ms + 10000)) ] && [ "$k" = "$n" ]; then break; fi
    [ "$now" -lt 120000 ] || break
    sleep 0.2
done
wait "$burst_pid"
burst_done=$(srv "/v1/catalog/service/$p-burst" | jq length)
figure burst_registrations_accepted "$burst_done/$burst in ${burst_ms:-?} ms"
figure agent_registrations_per_s_burst "$(echo "$burst_done ${burst_ms:-0}" | awk '$2 > 0 {printf "%.1f", $1 * 1000 / $2}')"
figure storm_min_passing "$min_passing/$n"
recovered=$([ -n "$last_below" ] && echo $((last_below + 200)) || echo 0)
if [ "$k" = "$n" ] && [ "$recovered" -le 30000 ]; then
    pass "storm: all $n passing within $recovered ms of the burst's start (lowest seen: $min_passing)"
else
    fail "storm: not all $n passing within 30 s of the burst (now $k, lowest $min_passing, last dip at ${last_below:-never} ms)"
fi
figure storm_recovery_ms "$recovered"
rereg=$(docker exec "$p-apps1" sh -c 'cat /tmp/log-*' | grep -c "registering .* again" || true)
figure storm_reregistrations "$rereg"
# shellcheck disable=SC2016
seq "$burst" | xargs -P 50 -I{} curl -fsS -m 30 -X PUT "http://$a1:8500/v1/agent/service/deregister/$p-burst-{}" >/dev/null 2>&1

# --- leader kill ----------------------------------------------------------------------------------------------
leader=$(srv /v1/status/leader | tr -d '"')
leader_ip=${leader%:*}
for i in 1 2 3; do [ "${server_ips[$((i - 1))]}" = "$leader_ip" ] && leader_c=$p-s$i; done
say "leader: killing $leader_c ($leader); stopping 10 and starting 10 instances on host 1 during the election"
tk=$SECONDS
docker kill "$leader_c" >/dev/null
stop_instances 1 1 10
start_instances 1 $((n + 1)) $((n + 10))
new_leader() { l=$(srv /v1/status/leader | tr -d '"'); [ -n "$l" ] && [ "$l" != "$leader" ]; }
poll 60 new_leader && say "new leader $(srv /v1/status/leader) after $((SECONDS - tk)) s"
if t=$(wait_converged 90); then
    pass "leader kill: 0 ghosts, every running instance passing (${t}s after the new leader)"
else
    fail "leader kill: $t"
fi
figure leader_kill_ghosts "$(ghosts)"
docker start "$leader_c" >/dev/null
poll 60 all_joined || fail "$leader_c did not rejoin"

# --- partition ------------------------------------------------------------------------------------------------
say "partition: host 2's agent cut from the servers for ${part_s}s; 5 instances stopped and 5 started meanwhile"
docker network disconnect "$p-servers" "$p-c2" || die "disconnect $p-c2"
tp=$SECONDS
stop_instances 2 1 5
start_instances 2 $((small + 1)) $((small + 5))
sleep $((part_s - (SECONDS - tp) > 0 ? part_s - (SECONDS - tp) : 0))
docker network connect --ip "$prefix3.22" "$p-servers" "$p-c2" || die "reconnect $p-c2"
if t=$(wait_converged 120); then
    pass "partition of ${part_s}s: 0 ghosts, every running instance passing ${t}s after healing"
    figure partition_convergence_s "$t"
else
    fail "partition: $t"
fi
figure partition_ghosts "$(ghosts)"

# --- stop/start cycles ----------------------------------------------------------------------------------------
say "cycles: $cycles x docker stop / docker start of one app container on host 3"
# shellcheck disable=SC2016 # the app's own shell expands these
cycle_app='trap '\''out=$(wget -q -O /dev/null "http://$CONSUL_HTTP_ADDR/v1/agent/service/$MICROINIT_SERVICE_ID" 2>&1)
    case $?:$out in 0:*) v=STILL ;; *404*) v=GONE ;; *) v="UNKNOWN $out" ;; esac
    echo "cycle: $v $MICROINIT_SERVICE_ID"; exit 0'\'' TERM
while :; do sleep 1 & wait $!; done'
run_bg --name "$p-cycle" --network "$p-h3" -e "CONSUL_HTTP_ADDR=$p-c3:8500" -e "MICROINIT_SERVICE_NAME=$p-cycle" \
    -e MICROINIT_SERVICE_PORT=8080 -e MICROINIT_READY=immediate "$base" sh -c "$cycle_app"
a3=$(agent_ip 3)
cycle_passing() { [ "$(curl -fsS -m 2 "http://$a3:8500/v1/health/service/$p-cycle?passing" | jq length)" = 1 ]; }
stops=() not_ready=0
for c in $(seq "$cycles"); do
    poll 30 cycle_passing || not_ready=$((not_ready + 1))
    t0=$(now_ms)
    docker stop -t 10 "$p-cycle" >/dev/null
    stops+=($(($(now_ms) - t0)))
    docker start "$p-cycle" >/dev/null
done
log=$(docker logs "$p-cycle" 2>&1 | grep '^cycle: ')
gone=$(grep -c '^cycle: GONE ' <<<"$log")
ids=$(awk '{print $3}' <<<"$log" | sort -u | grep -c .)
figure cycles_deregistered_before_sigterm "$gone/$cycles"
figure docker_stop_ms_median "$(printf '%s\n' "${stops[@]}" | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')"
if [ "$gone" = "$cycles" ] && [ "$not_ready" = 0 ] && [ "$ids" = 1 ]; then
    pass "cycles: deregistered before SIGTERM in $gone/$cycles, one service ID across restarts"
else
    fail "cycles: deregistered first in $gone/$cycles (not passing before stop: $not_ready; IDs seen: $ids): $(grep -v GONE <<<"$log" | head -3)"
fi

# --- mass stop ------------------------------------------------------------------------------------------------
say "mass stop: SIGTERM to all of host 1's instances at once"
# shellcheck disable=SC2016
h1_running=$(docker exec "$p-apps1" sh -c 'n=0; for f in /tmp/pid-*; do kill -0 "$(cat "$f")" 2>/dev/null && n=$((n + 1)); done; echo $n')
missed0=$(docker exec "$p-apps1" sh -c 'cat /tmp/log-*' | grep -c "did not answer within the deregistration bound" || true)
stop_instances 1 1 $((n + 10))
# shellcheck disable=SC2016
all_exited() { docker exec "$p-apps1" sh -c 'for f in /tmp/pid-*; do kill -0 "$(cat "$f")" 2>/dev/null && exit 1; done; exit 0'; }
poll 30 all_exited || fail "mass stop: instances still running after 30 s"
missed=$(($(docker exec "$p-apps1" sh -c 'cat /tmp/log-*' | grep -c "did not answer within the deregistration bound" || true) - missed0))
figure mass_stop_deregistered_within_2s "$((h1_running - missed))/$h1_running"
# What the agent never executed, Consul reaps: the check turns critical within the TTL, the service is removed
# --deregister-after (1m) later, by a reaper that runs every 30 s: up to 100 s, and the catalog follows.
figure mass_stop_ghosts_after_5s "$(sleep 5; ghosts)"
if t=$(wait_converged 130); then
    pass "mass stop of $h1_running: $missed missed the 2 s bound (each said so), 0 ghosts ${t}s later"
else
    fail "mass stop: $t"
fi
figure mass_stop_ghosts "$(ghosts)"

# --- heartbeat ladder (long form) -----------------------------------------------------------------------------
if [ "$mode" = long ]; then
    # Each rung ends with a mass stop right after its overload: how many deregistrations never reached the
    # agent shows as ghosts 5 s later (an unanswered one still executes late, in order).
    all_exited_from() { # FIRST: host 1's instances from FIRST on have all exited
        # shellcheck disable=SC2016
        docker exec "$p-apps1" sh -c 'for i in $(seq "$1" "$2"); do kill -0 "$(cat "/tmp/pid-$i")" 2>/dev/null && exit 1; done; exit 0' sh "$1" $((n + 10))
    }
    for ttl in 2s 1s 500ms; do
        say "heartbeats: host 1's instances restarted with --check-ttl $ttl"
        start_instances 1 11 $((n + 10))
        poll 120 h1_all || true
        sleep 20
        k=$(host_passing 1)
        errs=$(docker exec "$p-apps1" sh -c 'cat /tmp/log-*' | grep -c "check/update" || true)
        ms=${ttl%ms}
        [ "$ms" = "$ttl" ] && ms=$((${ttl%s} * 1000))
        figure "heartbeats_per_s_ttl_$ttl" "$(echo "$n $ms" | awk '{printf "%.0f", $1 / ($2 * 0.45 / 1000)}') (passing $k/$n, heartbeat errors logged so far $errs)"
        stop_instances 1 11 $((n + 10))
        poll 30 all_exited_from 11 || fail "mass stop at TTL $ttl: instances still running after 30 s"
        sleep 5
        figure "mass_stop_after_ttl_${ttl}_ghosts_after_5s" "$(ghosts)"
        if t=$(wait_converged 130); then
            figure "mass_stop_after_ttl_${ttl}_converged_s" "$t"
        else
            fail "mass stop right after the TTL $ttl overload: $t"
        fi
    done
fi

say "took $((SECONDS - started)) s"
if [ "$failures" -gt 0 ]; then
    say "$failures assertion(s) FAILED"
    exit 1
fi
say "all assertions held"
