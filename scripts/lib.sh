# shellcheck shell=bash
# Shell helpers shared by scripts/e2e-docker.sh, scripts/cluster-e2e.sh and scripts/demo.sh (sourced, not run).

# poll DEADLINE_SECONDS CMD...: run CMD until it succeeds or the deadline passes (a real condition, not a nap).
poll() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# has_leader HOST:PORT: the Consul agent there answers and knows a leader.
has_leader() { curl -fsS -m 2 "http://$1/v1/status/leader" | grep -q ':'; }

# instances HOST:PORT SERVICE [FILTER]: how many instances of SERVICE the agent's health endpoint lists.
instances() { curl -fsS -m 2 "http://$1/v1/health/service/$2${3:+?$3}" | jq length; }

# Milliseconds since the epoch (for the durations the scripts report).
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# remove_labelled LABEL: force-remove every container carrying LABEL, with its anonymous volumes.
remove_labelled() {
    local ids
    mapfile -t ids < <(docker ps -aq --filter "label=$1")
    [ "${#ids[@]}" = 0 ] || docker rm -f -v "${ids[@]}" >/dev/null 2>&1
}
