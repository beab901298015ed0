#!/usr/bin/env bash
# End-to-end test of the microcontainer pattern in a real Docker engine (no registry: every image FROM scratch).
#
#   scripts/e2e-docker.sh        exit 0 when every assertion held; skips LOUDLY (exit 0) without a working
#                                `docker info`, unless MICROINIT_E2E_REQUIRED=1 (then exit 1)
#
# Story: build the images (base, filebox, node-hello, consul); on a user network start two Consul agents standing
# for two hosts (a dev-mode server with DNS on 8600, and a client agent joined to it: "the app's host"); create the
# filebox volume container; run the app with --volumes-from. Then assert, through the SERVER agent, that the app
# registered with its own host's (client) agent is passing with the container's address (HTTP catalog and DNS
# SRV); that PID 1 is microinit supervising node (ps, and `microinit status` over its control socket); that orphans of a `docker exec` session are reaped; that SIGHUP
# reaches the app; that `docker stop` deregisters before the app sees SIGTERM, exits 0 (the app exits 0 on SIGTERM)
# well under Docker's 10 s, and that an app killed by SIGTERM gives 143; and that the app image without the volume
# exits 127 naming /opt/files and --volumes-from. Prints `image-size NAME BYTES` per image.
# nginx front (service discovery): a second host (client agent on its own network); examples/nginx-front (Debian's
# nginx from its own runtime volume, microinit as PID 1 watching the service with `--on-change signal:HUP` and a
# `server {address}:{port};` watch file) proxies to node-hello instances started and stopped on both hosts: curl
# through nginx reaches every new instance (time from `docker run` printed as a `figure` line), every answer comes
# from a running instance, nginx's include lists exactly the running ones, none gives 502 (its `down` line); an
# instance crash-looping is dropped and Docker's HEALTHCHECK (`microinit health`) turns unhealthy, then healthy.
# Everything it creates carries a unique run id and is removed on exit, pass or fail.
# Needs: docker, curl, jq, node (also boxed into the filebox), nginx (boxed into its own), and what
# scripts/build-images.sh needs.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
started=$SECONDS
run=${E2E_PREFIX:-mie2e}-$$-$RANDOM  # E2E_PREFIX: names of everything created start with it
label="microinit-e2e=$run"
net=$run-net
svc=hello-$run
failures=0

say() { echo "e2e: $*"; }
pass() { echo "e2e: PASS $*"; }
fail() { echo "e2e: FAIL $*"; failures=$((failures + 1)); }
die() { echo "e2e: FATAL $*" >&2; exit 1; }
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"

if ! docker info >/dev/null 2>&1; then
    echo "################################################################################"
    echo "e2e: SKIPPED: \`docker info\` fails: no usable Docker engine on this machine."
    echo "e2e: The Docker end-to-end test did NOT run. (scripts/demo.sh runs the story with unshare instead.)"
    echo "################################################################################"
    [ "${MICROINIT_E2E_REQUIRED:-0}" = 1 ] && exit 1
    exit 0
fi
for tool in curl jq node; do command -v $tool >/dev/null || die "$tool not found (apt-get install $tool)"; done

build=$(mktemp -d "${TMPDIR:-/tmp}/$run.XXXXXX")
prefix=microinit-$run
base=$prefix/base:e2e filebox=$prefix/filebox:e2e app=$prefix/node-hello:e2e consul=$prefix/consul:e2e
base_https=$prefix/base-https:e2e
nginx_box=$prefix/nginx-filebox:e2e front=$prefix/nginx-front:e2e
h2=$run-h2 # the second host's network

cleanup() {
    remove_labelled "$label"
    docker network rm "$net" "$h2" >/dev/null 2>&1
    docker rmi "$app" "$front" "$nginx_box" "$base" "$base_https" "$filebox" "$consul" >/dev/null 2>&1
    rm -rf "$build"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "run id $run: building images"
NGINX=1 IMAGE_PREFIX=$prefix IMAGE_TAG=e2e BUILD_DIR=$build "$repo/scripts/build-images.sh" >"$build/images.txt" \
    || die "scripts/build-images.sh failed"
size() { docker image inspect -f '{{.Size}}' "$1"; }
echo "image-size base $(size "$base")"
echo "image-size base-https $(size "$base_https")"
echo "image-size app $(size "$app")"
echo "image-size filebox $(size "$filebox")"
echo "image-size consul $(size "$consul")"
echo "image-size nginx-front $(size "$front")"
echo "image-size nginx-filebox $(size "$nginx_box")"
# The seeds' app image was 5.774 MB (Docker's MB: 10^6 bytes).
if [ "$(size "$app")" -lt 5774000 ]; then pass "app image below 5.774 MB"; else fail "app image not below 5.774 MB"; fi
if [ "$(size "$base")" -lt 2000000 ]; then
    pass "base image below 2 MB"
else
    say "NOTE base image $(size "$base") bytes, not below the 2 MB target (Debian's busybox-static alone is ~1.98 MB)"
fi

ip_of() { docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$1"; }
run_bg() { docker run -d --label "$label" --network "$net" "$@" >/dev/null || die "docker run $* failed"; }

docker network create --label "$label" "$net" >/dev/null || die "docker network create $net failed"

say "starting Consul: server $run-server (dev mode) and client $run-agent joined to it"
run_bg --name "$run-server" "$consul" agent -dev -client 0.0.0.0 -bind 0.0.0.0 -node "server-$run"
server_ip=$(ip_of "$run-server")
poll 30 has_leader "$server_ip:8500" || die "consul server at $server_ip:8500 elected no leader: $(docker logs "$run-server" 2>&1 | tail -5)"
run_bg --name "$run-agent" "$consul" agent -data-dir /tmp/consul -client 0.0.0.0 -bind 0.0.0.0 \
    -node "agent-$run" -retry-join "$server_ip"
agent_ip=$(ip_of "$run-agent")
joined() { has_leader "$agent_ip:8500" && curl -fsS -m 2 "http://$server_ip:8500/v1/catalog/nodes" | grep -q "agent-$run"; }
poll 30 joined || die "consul client agent did not join the server: $(docker logs "$run-agent" 2>&1 | tail -5)"
pass "two Consul agents (server + client) joined"

say "creating the filebox volume container and starting the app"
docker create --label "$label" --name "$run-filebox" "$filebox" >/dev/null || die "docker create filebox failed"
run_bg --name "$run-app" --hostname app --volumes-from "$run-filebox:ro" \
    -e "CONSUL_HTTP_ADDR=$run-agent:8500" -e "MICROINIT_SERVICE_NAME=$svc" "$app"
app_ip=$(ip_of "$run-app")
logs() { docker logs "$1" 2>&1; }

hello() { curl -fsS -m 2 "http://$app_ip:8080/" | grep -q '^hello from app'; }
if poll 30 hello; then pass "HTTP answer from the app at $app_ip:8080"; else fail "no HTTP answer from $app_ip:8080"; fi

# Through the SERVER: the catalog is global, the app registered with its own host's (client) agent.
health() { curl -fsS -m 2 "http://$server_ip:8500/v1/health/service/$svc?passing"; }
passing() { [ "$(instances "$server_ip:8500" "$svc" passing)" = 1 ]; }
if poll 30 passing; then
    entry=$(health)
    if jq -e --arg ip "$app_ip" --arg node "agent-$run" \
        '.[0].Service.Address == $ip and .[0].Service.Port == 8080 and .[0].Node.Node == $node' <<<"$entry" >/dev/null; then
        pass "passing in Consul (server catalog) at $app_ip:8080, registered on the client agent"
    else
        fail "Consul entry has the wrong address/port/node: $(jq -c '.[0] | {Node: .Node.Node, Address: .Service.Address, Port: .Service.Port}' <<<"$entry")"
    fi
else
    fail "service $svc never passing in Consul: $(health) / app logs: $(logs "$run-app" | tail -5)"
fi

# DNS SRV + A on the server's DNS port (8600 in dev mode), asked with node's resolver from the host.
dns=$(node -e '
const { Resolver } = require("dns").promises;
const r = new Resolver(); r.setServers([process.argv[1]]);
Promise.all([r.resolveSrv(process.argv[2]), r.resolve4(process.argv[2])])
  .then(([srv, a]) => console.log(JSON.stringify({ srv, a })))
  .catch((e) => { console.error(e.message); process.exit(1); });' "$server_ip:8600" "$svc.service.consul" 2>&1)
if jq -e --arg ip "$app_ip" '.srv[0].port == 8080 and .a == [$ip]' <<<"$dns" >/dev/null 2>&1; then
    pass "DNS SRV $svc.service.consul on the server's port 8600: port 8080, A $app_ip"
else
    fail "DNS SRV/A lookup on $server_ip:8600 gave: $dns"
fi

# PID 1 is microinit and node is its child (no `docker run --init` anywhere in this test).
procs() { docker exec "$run-app" ps -o pid,ppid,stat,comm; }
if procs | awk '$1 == 1 && $4 == "microinit" {m=1} $2 == 1 && $4 == "node" {n=1} END {exit !(m && n)}'; then
    pass "PID 1 is microinit, node is its child"
else
    fail "process table does not show microinit supervising node: $(procs | tr '\n' ';')"
fi
[ "$(docker inspect -f '{{.HostConfig.Init}}' "$run-app")" != true ] || fail "the app container runs with --init"
# What PID 1 knows, through its control socket (the `docker exec` debugging path).
status() { docker exec "$run-app" microinit status --json; }
node_pid=$(procs | awk '$4 == "node" {print $1; exit}')
if status | jq -e --argjson pid "${node_pid:-0}" '.microinit.pid == 1 and .app.pid == $pid and .app.state == "running"
        and .runtime_check.ok and .consul.state == "registered"' >/dev/null; then
    pass "docker exec app microinit status: node (pid $node_pid) running, runtime check ok, registered"
else
    fail "microinit status --json does not show node $node_pid running and registered: $(status 2>&1 | head -c 600)"
fi

# Orphans of a `docker exec` session: the exec'd shell's children outlive it, are re-parented to PID 1 (the
# kernel skips docker's shim, which is outside the container's PID namespace) and must be reaped when they exit.
docker exec "$run-app" sh -c 'for i in 1 2 3 4 5 6 7 8 9 10; do (sleep 3 </dev/null >/dev/null 2>&1 &); done'
orphans_on_pid1() { procs | awk '$2 == 1 && $4 == "sleep" {n++} END {exit !(n > 0)}'; }
no_sleep_no_zombie() { ! procs | awk '$4 == "sleep" || $3 ~ /^Z/ {found=1} END {exit !found}'; }
if poll 10 orphans_on_pid1; then
    if poll 20 no_sleep_no_zombie; then
        pass "orphans of a docker exec session re-parented to PID 1 and reaped (no zombies)"
        reaped=$(status | jq .zombies_reaped)
        if [ "${reaped:-0}" -ge 10 ]; then
            pass "microinit status counts them: zombies_reaped=$reaped"
        else
            fail "microinit status says zombies_reaped=$reaped after 10 orphans"
        fi
    else
        fail "orphans left behind: $(procs | tr '\n' ';')"
    fi
else
    fail "no orphaned sleep seen under PID 1: $(procs | tr '\n' ';')"
fi

docker kill -s HUP "$run-app" >/dev/null
sighup() { logs "$run-app" | grep -q 'SIGHUP received'; }
if poll 10 sighup; then pass "docker kill -s HUP reached the app"; else fail "SIGHUP never reached the app"; fi

# docker stop: microinit deregisters, then forwards SIGTERM; the app asks its agent on SIGTERM and logs the answer.
[ "$(docker inspect -f '{{.State.Running}}' "$run-app")" = true ] || fail "the app container is not running before docker stop"
# "Gone at SIGTERM" only means something if it was there just before.
passing && registered_before_stop=1 || registered_before_stop=0
t0=$(now_ms)
docker stop -t 10 "$run-app" >/dev/null
stop_ms=$(($(now_ms) - t0))
code=$(docker inspect -f '{{.State.ExitCode}}' "$run-app")
if [ "$code" = 0 ]; then pass "docker stop: exit code 0 (the app exits 0 on SIGTERM)"; else fail "docker stop: exit code $code, expected 0"; fi
# The issue's bound: "well under Docker's 10 s" (generous on purpose; the bench measures latency).
if [ "$stop_ms" -lt 5000 ]; then pass "docker stop took $stop_ms ms"; else fail "docker stop took $stop_ms ms (not well under 10 s)"; fi
if [ "$registered_before_stop" = 0 ]; then
    fail "service was not passing in Consul right before docker stop: cannot check the deregistration order"
elif logs "$run-app" | grep -q "consul instance \"[^\"]*\" of \"$svc\": gone"; then
    pass "deregistered before the app received SIGTERM"
else
    fail "app did not see itself deregistered at SIGTERM: $(logs "$run-app" | grep -i sigterm)"
fi
gone() { [ "$(instances "$server_ip:8500" "$svc")" = 0 ] && [ "$(curl -fsS -m 2 "http://$server_ip:8500/v1/catalog/service/$svc" | jq length)" = 0 ]; }
if poll 10 gone; then pass "gone from the server's catalog after docker stop"; else fail "still in the catalog: $(health)"; fi

# An app that does not handle SIGTERM is killed by it: 128+15.
run_bg --name "$run-sleeper" "$base" sleep 600
running() { docker exec "$run-sleeper" ps -o comm | grep -qx sleep; }
poll 20 running || fail "sleeper container did not start sleep"
t0=$(now_ms)
docker stop -t 10 "$run-sleeper" >/dev/null
stop_ms=$(($(now_ms) - t0))
code=$(docker inspect -f '{{.State.ExitCode}}' "$run-sleeper")
if [ "$code" = 143 ] && [ "$stop_ms" -lt 5000 ]; then
    pass "docker stop of an app killed by SIGTERM: exit 143 in $stop_ms ms"
else
    fail "docker stop of sleep: exit $code in $stop_ms ms (expected 143, well under 10 s)"
fi

# The same app image without its runtime volume: microinit's report instead of the loader's riddle.
out=$(docker run --rm --label "$label" --network none "$app" 2>&1)
code=$?
if [ "$code" = 127 ] && grep -q /opt/files <<<"$out" && grep -q -- --volumes-from <<<"$out"; then
    pass "without --volumes-from: exit 127, report names /opt/files and --volumes-from"
else
    fail "without --volumes-from: exit $code, output: $out"
fi

# TLS: the agent's standard certificate (server.dc1.consul, made by `consul tls`) reached by container name,
# with verify_incoming (mTLS), from the base-https image; the plain image says it has no TLS.
say "TLS: an agent with verify_incoming, reached by container name from $base_https"
tls=$build/tls
consul_bin=${CONSUL_BIN:-$("$repo/scripts/install-consul.sh" | tail -n1)}
mkdir -p "$tls"
(cd "$tls" && "$consul_bin" tls ca create && "$consul_bin" tls cert create -server &&
    "$consul_bin" tls cert create -client) >/dev/null || die "consul tls ca/cert create failed"
run_bg --name "$run-tls" -v "$tls:/tls:ro" "$consul" agent -dev -client 0.0.0.0 -bind 0.0.0.0 -node "tls-$run" \
    -hcl 'ports { https = 8501 } ca_file = "/tls/consul-agent-ca.pem" verify_incoming = true
          cert_file = "/tls/dc1-server-consul-0.pem" key_file = "/tls/dc1-server-consul-0-key.pem"'
tls_ip=$(ip_of "$run-tls")
poll 30 has_leader "$tls_ip:8500" || die "TLS consul agent elected no leader: $(docker logs "$run-tls" 2>&1 | tail -5)"
tls_env=(-e "CONSUL_HTTP_ADDR=https://$run-tls:8501" -e CONSUL_CACERT=/tls/consul-agent-ca.pem
    -e CONSUL_CLIENT_CERT=/tls/dc1-client-consul-0.pem -e CONSUL_CLIENT_KEY=/tls/dc1-client-consul-0-key.pem
    -e CONSUL_TLS_SERVER_NAME=server.dc1.consul -e "MICROINIT_SERVICE_NAME=tls-$run")
run_bg --name "$run-tlsapp" -v "$tls:/tls:ro" "${tls_env[@]}" "$base_https" sleep 600
tls_passing() { [ "$(instances "$tls_ip:8500" "tls-$run" passing)" = 1 ]; }
if poll 30 tls_passing; then
    pass "base-https: registered and passing over mTLS at https://$run-tls:8501 (server name server.dc1.consul)"
else
    fail "base-https never passing over TLS: $(logs "$run-tlsapp" | tail -5)"
fi
docker stop -t 10 "$run-tlsapp" >/dev/null
tls_gone() { [ "$(instances "$tls_ip:8500" "tls-$run")" = 0 ]; }
if poll 10 tls_gone; then pass "base-https: deregistered over mTLS on docker stop"; else fail "TLS service still registered"; fi
out=$(docker run --rm --label "$label" --network "$net" -v "$tls:/tls:ro" "${tls_env[@]}" "$base" true 2>&1)
code=$?
if [ "$code" = 2 ] && grep -q "plain build, without TLS" <<<"$out"; then
    pass "plain base image with an https:// agent: exit 2, one line naming the TLS build"
else
    fail "plain base image with an https:// agent: exit $code, output: $out"
fi

# --- nginx front: service discovery across two hosts -----------------------------------------------------------
# Host 1 is $net with $run-agent; host 2 is network $h2 with its own client agent (joined over $net, as the
# servers' network). The front lives on host 1 and is attached to both networks (it must reach both hosts' apps).
say "nginx front: a second host ($h2, agent $run-agent2) and examples/nginx-front watching web-$run"
web=web-$run
front_started=$SECONDS
docker network create --label "$label" "$h2" >/dev/null || die "docker network create $h2 failed"
# eth0 is $net (the network it starts on): bound there before $h2 makes its address ambiguous.
run_bg --name "$run-agent2" "$consul" agent -data-dir /tmp/consul -client 0.0.0.0 \
    -bind '{{ GetInterfaceIP "eth0" }}' -node "agent2-$run" -retry-join "$server_ip"
docker network connect "$h2" "$run-agent2" || die "docker network connect $h2 $run-agent2 failed"
joined2() { curl -fsS -m 2 "http://$server_ip:8500/v1/catalog/nodes" | grep -q "agent2-$run"; }
poll 30 joined2 || die "second client agent did not join: $(docker logs "$run-agent2" 2>&1 | tail -5)"
docker create --label "$label" --name "$run-nginxbox" "$nginx_box" >/dev/null || die "docker create nginx-filebox failed"
# The image's HEALTHCHECK (`microinit health`), checked every second here instead of every 5 s.
docker create --label "$label" --name "$run-front" --network "$net" --volumes-from "$run-nginxbox:ro" \
    --health-interval 1s -e "CONSUL_HTTP_ADDR=$run-agent:8500" -e "MICROINIT_WATCH=$web" "$front" >/dev/null \
    || die "docker create $front failed"
docker network connect "$h2" "$run-front" || die "docker network connect $h2 $run-front failed"
docker start "$run-front" >/dev/null || die "docker start $run-front failed"
front_ip=$(ip_of "$run-front")
code_of_front() { curl -sS -m 5 -o /dev/null -w '%{http_code}' "http://$front_ip/"; }
is_502() { [ "$(code_of_front)" = 502 ]; }
if poll 30 is_502; then
    pass "nginx front up with no instance: 502 (the watch file's \`down\` line keeps the upstream valid)"
else
    fail "nginx front with no instance: HTTP $(code_of_front 2>&1); logs: $(logs "$run-front" | tail -5)"
fi
state_of() { docker inspect -f '{{.State.Health.Status}}' "$1"; }
health_is() { [ "$(state_of "$1")" = "$2" ]; }
# await_health CONTAINER STATE WHAT: Docker's health status of CONTAINER becomes STATE (healthy, unhealthy).
await_health() {
    if poll 60 health_is "$1" "$2"; then
        pass "$3: $2"
    else
        fail "$3: $(state_of "$1"), not $2; microinit health: $(docker exec "$1" microinit health 2>&1)"
    fi
}
await_health "$run-front" healthy "nginx front, the image's HEALTHCHECK (microinit health)"

declare -A running=() # instance (hostname) -> its address, for every app container that should answer
# The id in an answer: "hello from w1 (pid 7)" -> w1; empty when the request failed.
answer() { curl -fsS -m 5 "http://$front_ip/" | sed -n 's/^hello from \([^ ]*\) .*/\1/p'; }
reaches() { [ "$(answer)" = "$1" ]; }
# Every line of nginx's include: exactly one `server IP:8080;` per running instance.
upstreams() { docker exec "$run-front" cat /run/upstreams.conf; }
expected_upstreams() { for i in "${!running[@]}"; do echo "server ${running[$i]}:8080;"; done | sort; }
include_current() { [ "$(upstreams | sort)" = "$(expected_upstreams)" ]; }
# nginx's reload is graceful: the old worker serves (with the old upstreams) until it has taken the QUIT that
# follows the new worker's start. Settled: the include is current and its old worker is gone.
one_worker() { [ "$(docker exec "$run-front" ps -o args | grep -c '^nginx: worker')" = 1 ]; }
settled() { include_current && one_worker; }
await_include() {
    if poll 15 settled; then
        pass "$1"
    else
        fail "$1: include is $(upstreams | tr '\n' ' '), nginx: $(docker exec "$run-front" ps -o args | grep -c '^nginx: worker') worker(s)"
    fi
}
# check_answers N: N requests through nginx, each answered (200) by a running instance, and every running one
# seen (nginx's round robin over its upstream).
check_answers() {
    local n=$1 id k bad=() seen=()
    for k in $(seq "$n"); do
        id=$(answer)
        if [ -z "$id" ] || [ -z "${running[$id]:-}" ]; then bad+=("${id:-(failed)}"); else seen+=("$id"); fi
    done
    local distinct
    distinct=$(printf '%s\n' "${seen[@]}" | sort -u | grep -c .)
    if [ "${#bad[@]}" = 0 ] && [ "$distinct" = "${#running[@]}" ]; then
        pass "$n requests through nginx: all answered by running instances (${!running[*]}), each of them seen"
    else
        fail "$n requests through nginx: ${#bad[@]} bad answers (${bad[*]:0:5}), $distinct of ${#running[@]} instances seen"
    fi
}
reach_ms=()
# start_web NAME HOST-NUMBER [docker run args...]: a node-hello instance on host 1 or 2; waits until nginx
# sends requests to it.
start_web() {
    local name=$1 h=$2 t0 ip
    shift 2
    local netw=$net agent=$run-agent
    [ "$h" = 2 ] && netw=$h2 agent=$run-agent2
    t0=$(now_ms)
    docker run -d --label "$label" --name "$run-$name" --hostname "$name" --network "$netw" \
        --volumes-from "$run-filebox:ro" -e "CONSUL_HTTP_ADDR=$agent:8500" -e "MICROINIT_SERVICE_NAME=$web" \
        "$@" "$app" "${cmd[@]}" >/dev/null || die "docker run $name failed"
    if poll 30 reaches "$name"; then
        reach_ms+=($(($(now_ms) - t0)))
        pass "curl through nginx reaches $name (host $h) ${reach_ms[-1]} ms after docker run"
    else
        fail "nginx never sent a request to $name (host $h): include $(upstreams | tr '\n' ' ')"
    fi
    ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$netw\").IPAddress}}" "$run-$name")
    running[$name]=$ip
    poll 10 settled || fail "nginx did not settle after $name started"
}
stop_web() {
    docker stop -t 10 "$run-$1" >/dev/null
    unset "running[$1]"
    await_include "$1 stopped: gone from nginx's include"
}

# w1 can be made to crash-loop: while /tmp/down exists its command fails at once (microinit restarts it with
# backoff); Docker asks `microinit health` every second.
cmd=(sh -c '[ -e /tmp/down ] && exit 1; exec node /app/app.js')
start_web w1 1 -e MICROINIT_RESTART=on-failure --health-cmd 'microinit health' --health-interval 1s \
    --health-retries 1
cmd=()
check_answers 10
start_web w2 2
check_answers 20
start_web w3 1
check_answers 30
await_include "nginx's include lists exactly the 3 running instances"
# Requests keep coming while w2 stops (deregistered first, then SIGTERM; nginx reloads once the watch saw it):
# an instance gone before the reload refuses the connection and nginx moves on to the next (proxy_next_upstream),
# so every request is answered. A figure, not an assertion: how many were not.
load=$build/load
( while [ ! -e "$load.stop" ]; do
    curl -sS -m 5 -o /dev/null -w '%{http_code} %{time_total}\n' "http://$front_ip/" 2>/dev/null || echo 000 5
done >"$load" ) &
load_pid=$!
stop_web w2
touch "$load.stop"
wait "$load_pid"
echo "figure requests_not_200_while_an_instance_stops $(grep -vc '^200 ' "$load") of $(grep -c . "$load")," \
    "slowest $(sort -k2 -n "$load" | tail -1 | cut -d' ' -f2) s"
check_answers 30
start_web w4 2
check_answers 30

say "crash loop: w1's app fails until /tmp/down is removed"
await_health "$run-w1" healthy "w1 before the crash loop (docker run --health-cmd 'microinit health')"
docker exec "$run-w1" sh -c 'touch /tmp/down && kill -KILL "$(pidof node)"'
w1_ip=${running[w1]}
unset "running[w1]"
await_health "$run-w1" unhealthy "w1 while its app crash-loops"
await_include "crash-looping w1 dropped from nginx's include"
check_answers 20
docker exec "$run-w1" rm /tmp/down
running[w1]=$w1_ip
# Healthy again once the app has run 10 s after its last crash (microinit's crash-loop rule) and is passing.
await_health "$run-w1" healthy "w1 after the crash loop"
await_include "w1 back in nginx's include"
check_answers 30

for w in w1 w3 w4; do docker stop -t 10 "$run-$w" >/dev/null & done
wait
running=()
if poll 10 is_502; then
    pass "every instance stopped: nginx answers 502 again, include is \`$(upstreams)\`"
else
    fail "after stopping every instance: HTTP $(code_of_front), include $(upstreams | tr '\n' ' ')"
fi
say "nginx front's microinit: $(docker exec "$run-front" microinit status --json |
    jq -c '{watch_changes: .discovery.changes, signals_forwarded}')"
figure_median=$(printf '%s\n' "${reach_ms[@]}" | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')
echo "figure docker_run_to_reached_through_nginx_ms median $figure_median of ${#reach_ms[@]}: ${reach_ms[*]}"
say "nginx front part took $((SECONDS - front_started)) s"

say "took $((SECONDS - started)) s"
if [ "$failures" -gt 0 ]; then
    say "$failures assertion(s) FAILED"
    exit 1
fi
say "all assertions held"
