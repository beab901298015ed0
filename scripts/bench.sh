#!/usr/bin/env bash
# microinit side by side with tini, tini-static, dumb-init and catatonit (Debian's), in ONE run.
#
#   scripts/bench.sh [--quick] [--only LIST] [--skip LIST] [--out FILE] [--no-build] [--no-install]
#   env MICROINIT_BIN: measure this binary instead of building one; CARGO_TARGET_DIR: where cargo builds.
#
# Sections (LIST is comma-separated): size startup rss idle signal orphans check consul discovery
#   size     binary size (and linkage)                 startup  wall time of `INIT -- true` vs bare `true`
#   rss      the init's RSS supervising a sleeping app  idle     CPU ticks + wakeups of the init in 10 s idle
#   signal   SIGTERM forwarding latency, init as PID 1  orphans  time to reap 2000 orphans, zombies left
#   check    runtime check cost (microinit only)        consul   Consul registration figures (microinit only)
#   discovery  Consul change → app signal, idle wakeups with 3 watches (microinit only; issue #11)
# Samples of different inits are interleaved one by one (orphan rounds: init by init), rotating the order, so a
# noisy machine hits them all alike; medians (and p99 where asked) are reported, with ratios to the best anchor.
# Prints a markdown table and writes it to --out (default: bench-results.md at the repository root).
# Needs root (unshare --pid, apt-get). A section microinit cannot run yet prints "n/a (not built)".
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "bench: $*" >&2; exit 1; }
note() { echo "bench: $*" >&2; }

all_sections="size startup rss idle signal orphans check consul discovery"
quick=0 only="" skip="" out="$repo/bench-results.md" build=1 install=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --only) only=${2:?--only needs a list}; shift ;;
        --skip) skip=${2:?--skip needs a list}; shift ;;
        --out) out=${2:?--out needs a file}; shift ;;
        --no-build) build=0 ;;
        --no-install) install=0 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
for s in ${only//,/ } ${skip//,/ }; do
    [[ " $all_sections " == *" $s "* ]] || die "unknown section '$s' (sections: $all_sections)"
done
want() { # want SECTION: selected by --only/--skip?
    { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; } && [[ ",$skip," != *",$1,"* ]]
}
[ "$(id -u)" -eq 0 ] || die "run as root (PID namespaces via unshare, apt-get for the anchors)"

# Sample counts. Default: >= 200 runs per init for startup and signal latency; --quick: a smoke run.
if [ "$quick" -eq 1 ]; then
    start_runs=50 sig_runs=40 orphan_rounds=1 idle_secs=2 check_runs=50 consul_n=5
else
    start_runs=200 sig_runs=400 orphan_rounds=5 idle_secs=10 check_runs=200 consul_n=20
fi
# discovery: changes measured, and the idle window with 3 watches (the issue asks for >= 100 and 10 s).
if [ "$quick" -eq 1 ]; then disc_n=20 disc_idle=2; else disc_n=100 disc_idle=10; fi
orphans=2000

work=$(mktemp -d /tmp/microinit-bench.XXXXXX)
# `unshare --mount-proc` keeps this machine's /run: microinit's default control socket there is shared with any
# other microinit on the machine (tests, other runs), whose clients would wake the one measured. Ours is private.
export MICROINIT_SOCKET="$work/control.sock"
cleanup() {
    if [ -n "${consul_dir:-}" ]; then "$repo/scripts/consul-dev.sh" stop "$consul_dir" >/dev/null 2>&1 || true; fi
    if [ -n "${disc_dir:-}" ]; then "$repo/scripts/consul-dev.sh" stop "$disc_dir" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# ---------------------------------------------------------------- set-up: anchors, helper, microinit
if [ "$install" -eq 1 ]; then
    need=()
    for p in tini dumb-init catatonit; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
    command -v cc >/dev/null || need+=(gcc libc6-dev)
    command -v unshare >/dev/null || need+=(util-linux)
    if want check && [ ! -x /usr/bin/node ]; then need+=(nodejs); fi
    if want signal && ! command -v perf >/dev/null; then need+=(linux-perf); fi
    # `--features https` pulls in ring, whose C parts need a musl C compiler for the musl target.
    if want consul && [ "$build" -eq 1 ] && ! command -v x86_64-linux-musl-gcc >/dev/null; then need+=(musl-tools); fi
    if [ ${#need[@]} -gt 0 ]; then
        note "installing ${need[*]} from Debian"
        apt-get update -qq >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; die "apt-get update failed"; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >>"$work/apt.log" 2>&1 ||
            { tail -n 20 "$work/apt.log" >&2; die "apt-get install ${need[*]} failed"; }
    fi
fi

helper="$work/benchhelper"
cc -O2 -Wall -o "$helper" "$repo/scripts/bench/benchhelper.c" || die "cannot compile scripts/bench/benchhelper.c"

target_dir=${CARGO_TARGET_DIR:-$repo/target}
# build_mi TARGET_DIR [FEATURES]: the static release binary, built into TARGET_DIR; prints its path. The binary
# that ships comes from scripts/build.sh (size-optimised) when the repository has it; plain cargo otherwise.
build_mi() {
    local dir=$1 features=${2:-}
    rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1 || note "rustup target add failed (offline?)"
    if [ -x "$repo/scripts/build.sh" ]; then
        CARGO_TARGET_DIR=$dir MICROINIT_FEATURES=$features "$repo/scripts/build.sh" 2>"$work/cargo.log" | tail -n1 ||
            { tail -n 15 "$work/cargo.log" >&2; return 1; }
    else
        (cd "$repo" && cargo build --release --target x86_64-unknown-linux-musl --target-dir "$dir" \
            ${features:+--features "$features"}) >"$work/cargo.log" 2>&1 || { tail -n 15 "$work/cargo.log" >&2; return 1; }
        echo "$dir/x86_64-unknown-linux-musl/release/microinit"
    fi
}
# How the measured binary was made, for the table's header.
mi_origin() {
    if [ -n "${MICROINIT_BIN:-}" ]; then echo "MICROINIT_BIN=$MICROINIT_BIN"
    elif [ "$build" -eq 0 ]; then echo "$mi (--no-build)"
    elif [ -x "$repo/scripts/build.sh" ]; then echo "scripts/build.sh ($(sed -n 's/^build.sh: \([a-z].*\)/\1/p' "$work/build-origin.log" | head -n1))"
    else echo "cargo build --release --target x86_64-unknown-linux-musl"; fi
}
mi_why="not built"
if [ -n "${MICROINIT_BIN:-}" ]; then
    # MICROINIT_BIN (as for the tests) names a binary to measure instead of the one built here.
    mi=$MICROINIT_BIN
elif [ "$build" -eq 1 ]; then
    note "building microinit (static, musl, release)"
    # A binary left over from an earlier build must not be measured in place of source that does not build.
    mi=$(build_mi "$target_dir") || { mi_why="build failed" mi=""; }
    cp "$work/cargo.log" "$work/build-origin.log"
elif [ -x "$target_dir/dist/microinit" ]; then
    mi=$target_dir/dist/microinit
else
    mi=$target_dir/x86_64-unknown-linux-musl/release/microinit
fi

# ---------------------------------------------------------------- the inits under test
inits=(microinit tini tini-static dumb-init catatonit)
anchors=(tini tini-static dumb-init catatonit)
declare -A bin host pid1 # the binary; its command prefix outside a PID namespace; as PID 1
bin[microinit]=$mi bin[tini]=/usr/bin/tini bin[tini-static]=/usr/bin/tini-static
bin[dumb-init]=/usr/bin/dumb-init bin[catatonit]=/usr/bin/catatonit
for i in "${inits[@]}"; do host[$i]="${bin[$i]} --" pid1[$i]="${bin[$i]} --"; done
# tini warns when it is neither PID 1 nor a subreaper; -s makes it a subreaper, as microinit always is.
host[tini]="${bin[tini]} -s --" host[tini-static]="${bin[tini-static]} -s --"
# dumb-init takes no `--`: its first non-option argument is the command.
host[dumb-init]=${bin[dumb-init]} pid1[dumb-init]=${bin[dumb-init]}
ns=(unshare --pid --fork --mount-proc)

# An init that cannot run a command here is left out of a section with a reason, never measured wrongly
# (an unfinished microinit that exits 0 without running anything would look fastest).
declare -A ok_host ok_pid1 why
for i in "${inits[@]}"; do
    why[$i]="not installed"
    [ -x "${bin[$i]}" ] || { [ "$i" = microinit ] && why[$i]=$mi_why; continue; }
    why[$i]="does not run a command here"
    rc=0
    # shellcheck disable=SC2086 # prefixes are word lists by design (no path here has spaces)
    ${host[$i]} sh -c 'exit 7' </dev/null >/dev/null 2>&1 || rc=$?
    if [ "$rc" -eq 7 ]; then ok_host[$i]=1; else note "$i: \`${host[$i]} sh -c 'exit 7'\` gave $rc: left out"; fi
    rc=0
    # shellcheck disable=SC2086
    "${ns[@]}" ${pid1[$i]} sh -c 'exit 7' </dev/null >/dev/null 2>&1 || rc=$?
    if [ "$rc" -eq 7 ]; then ok_pid1[$i]=1; else note "$i as PID 1: gave $rc instead of 7: left out"; fi
done
# Rotating order per round: round r starts at init r mod n.
rotated() { # rotated ROUND NAME… -> the names, rotated
    local r=$1; shift
    local a=("$@") n=$# k
    for ((k = 0; k < n; k++)); do echo "${a[(k + r) % n]}"; done
}

# ---------------------------------------------------------------- results and statistics
declare -A val bare # val[row|init] = number; bare[mode] = baseline
rows=()        # "id|label|unit|target" in display order
row() { rows+=("$1|$2|$3|$4"); }
problems=() # printed under the table: a measurement that failed part-way keeps the samples taken before
problem() { problems+=("$*"); note "$*"; }
# measure WHAT OUT CMD…: run a measuring command into OUT; a failure is a problem, not the end of the bench.
measure() {
    local what=$1 out=$2; shift 2
    "$@" >"$out" 2>"$work/measure.err" || problem "$what: $(tail -n1 "$work/measure.err") (samples before it kept)"
}
# fmt UNIT VALUE
fmt() {
    case $1 in
        us) awk -v v="$2" 'BEGIN { printf "%.1f µs", v / 1000 }' ;;
        ms) awk -v v="$2" 'BEGIN { printf "%.1f ms", v / 1e6 }' ;;
        B) awk -v v="$2" 'BEGIN { printf "%d B", v }' ;;
        KiB) echo "$2 KiB" ;;
        *) echo "$2" ;;
    esac
}
# split_samples FILE PREFIX NAME…: the helper's "K NS" lines into PREFIX.NAME[K], one number a line.
split_samples() {
    local file=$1 prefix=$2 k; shift 2
    for ((k = 1; k <= $#; k++)); do awk -v k=$((k - 1)) '$1 == k { print $2 }' "$file" >"$prefix.${!k}"; done
}
# pct FILE Q: nearest-rank percentile (Q in 0..100) of the numbers in FILE; empty when FILE has none.
pct() {
    sort -n "$1" | awk -v q="$2" '{ v[NR] = $1 } END { if (NR) { k = int((q * NR + 99) / 100); if (k < 1) k = 1; print v[k] } }'
}

# ---------------------------------------------------------------- size
if want size; then
    note "size"
    row size "binary size" B "le:tini-static"
    row link "linkage" text none
    for i in "${inits[@]}"; do
        # The size of a microinit that cannot run a command yet (a skeleton) would mean nothing.
        [ -n "${ok_host[$i]:-}${ok_pid1[$i]:-}" ] || continue
        val[size|$i]=$(stat -L -c %s "${bin[$i]}")
        # ldd lists "lib => path" lines only for a dynamic executable (`file` may not be installed).
        if [[ "$(ldd "${bin[$i]}" 2>/dev/null || true)" == *"=>"* ]]; then
            val[link|$i]="dynamic (+libc)"
        else val[link|$i]="static"; fi
    done
fi

# ---------------------------------------------------------------- startup
if want startup; then
    # Twice: as a child of this shell (a subreaper), and as PID 1 of a fresh namespace (docker's case), where the
    # bare baseline is `unshare … true`. All commands interleave run by run.
    note "startup: $start_runs runs of INIT -- true per init and mode, interleaved with bare true"
    names=(h-bare p-bare) cmds=(true ::: "${ns[@]}" true)
    for i in "${inits[@]}"; do
        # shellcheck disable=SC2206 # prefixes are word lists by design (no path here has spaces)
        [ -z "${ok_host[$i]:-}" ] || { names+=("h-$i"); cmds+=(::: ${host[$i]} true); }
        # shellcheck disable=SC2206
        [ -z "${ok_pid1[$i]:-}" ] || { names+=("p-$i"); cmds+=(::: "${ns[@]}" ${pid1[$i]} true); }
    done
    # microinit's runtime check (on by default) checks what `true` needs in this machine's full root; it is also
    # measured without the check, to show what the check costs.
    nocheck=0
    if [ -n "${ok_pid1[microinit]:-}" ] && "$mi" --no-runtime-check -- true >/dev/null 2>&1; then
        nocheck=1
        names+=(h-nocheck p-nocheck)
        cmds+=(::: "$mi" --no-runtime-check -- true ::: "${ns[@]}" "$mi" --no-runtime-check -- true)
    fi
    measure startup "$work/start.all" "$helper" run "$start_runs" "${cmds[@]}"
    split_samples "$work/start.all" "$work/start" "${names[@]}"
    for m in h p; do
        bare[$m]=$(pct "$work/start.$m-bare" 50)
        for i in "${inits[@]}"; do
            [ -s "$work/start.$m-$i" ] || continue
            val[${m}start|$i]=$(pct "$work/start.$m-$i" 50)
            val[${m}start99|$i]=$(pct "$work/start.$m-$i" 99)
            val[${m}over|$i]=$((val[${m}start|$i] - bare[$m]))
        done
    done
    row hstart "\`INIT -- true\` wall, median" us "none"
    row hstart99 "\`INIT -- true\` wall, p99" us "none"
    row hover "startup overhead over bare \`true\` ($(fmt us "${bare[h]}")), median; microinit's check on" us "factor:1.0"
    row pstart "as PID 1: \`unshare --pid --fork --mount-proc INIT -- true\` wall, median" us "none"
    row pover "as PID 1: overhead over \`unshare … true\` ($(fmt us "${bare[p]}")), median; microinit's check on" us "factor:1.0"
    if [ "$nocheck" -eq 1 ]; then
        # Same anchors as the row above; only microinit's figure differs.
        for m in h p; do
            for i in "${anchors[@]}"; do val[${m}overnc|$i]=${val[${m}over|$i]:-}; done
            [ ! -s "$work/start.$m-nocheck" ] ||
                val[${m}overnc|microinit]=$(($(pct "$work/start.$m-nocheck" 50) - bare[$m]))
        done
        row hovernc "startup overhead, microinit with \`--no-runtime-check\`, median" us "factor:1.0"
        row povernc "as PID 1: overhead, microinit with \`--no-runtime-check\`, median" us "factor:1.0"
    fi
fi

# ---------------------------------------------------------------- rss + idle (one launch, all inits at once)
# Idle inits do nothing, so running them side by side in one window is fair and saves n-1 windows.
proc_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; } # utime+stime, all threads
proc_wakeups() { # context switches summed over the init's threads
    cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s + 0 }'
}
if want rss || want idle; then
    window=$idle_secs
    want idle || window=0
    note "rss/idle: every init as PID 1 supervising a sleeping app, ${window} s window"
    declare -A top initp t0 w0
    for i in "${inits[@]}"; do
        [ -n "${ok_pid1[$i]:-}" ] || continue
        # shellcheck disable=SC2086
        "${ns[@]}" ${pid1[$i]} "$helper" pause </dev/null >/dev/null 2>&1 &
        top[$i]=$!
    done
    # exec_done PID: PID runs the helper (its exec is over, and with it the init's part in starting it).
    exec_done() { [ "$(readlink "/proc/$1/exe" 2>/dev/null)" = "$helper" ]; }
    for i in "${!top[@]}"; do
        # Measured once the app has exec'd, so the init's own start-up is behind it.
        if initp[$i]=$("$helper" initpid "${top[$i]}" 1) && app=$("$helper" initpid "${initp[$i]}" 1); then
            deadline=$((SECONDS + 5))
            while ! exec_done "$app" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.01; done
            t0[$i]=$(proc_ticks "${initp[$i]}") w0[$i]=$(proc_wakeups "${initp[$i]}")
        else
            problem "rss/idle: $i did not start its app within 5 s"
        fi
    done
    sleep "$window"
    for i in "${!t0[@]}"; do
        val[rss|$i]=$(awk '/^VmRSS:/ { print $2 }' "/proc/${initp[$i]}/status")
        val[ticks|$i]=$(($(proc_ticks "${initp[$i]}") - t0[$i]))
        val[wakeups|$i]=$(($(proc_wakeups "${initp[$i]}") - w0[$i]))
    done
    # SIGTERM goes to the app through the init; whatever is still there after 5 s is SIGKILLed, namespace and all.
    for i in "${!top[@]}"; do [ -z "${initp[$i]:-}" ] || kill -TERM "${initp[$i]}" 2>/dev/null || true; done
    deadline=$((SECONDS + 5))
    for i in "${!top[@]}"; do
        while kill -0 "${top[$i]}" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.05; done
        if kill -0 "${top[$i]}" 2>/dev/null; then
            problem "rss/idle: $i did not exit within 5 s of SIGTERM (SIGKILLed)"
            kill -KILL "${initp[$i]:-${top[$i]}}" "${top[$i]}" 2>/dev/null || true
        fi
        wait "${top[$i]}" || true
    done
    if want rss; then row rss "RSS of the init supervising a sleeping app" KiB "le:best"; fi
    if want idle; then
        row ticks "CPU ticks (utime+stime) in ${window} s idle" ticks "zero"
        row wakeups "wakeups (context switches) in ${window} s idle" n "le:best"
    fi
fi

# ---------------------------------------------------------------- signal
if want signal; then
    note "signal: $sig_runs SIGTERMs per init, each to a fresh init as PID 1, interleaved"
    names=() cmds=()
    for i in "${inits[@]}"; do
        [ -n "${ok_pid1[$i]:-}" ] || continue
        [ ${#names[@]} -eq 0 ] || cmds+=(:::)
        # shellcheck disable=SC2206
        names+=("$i") cmds+=("${ns[@]}" ${pid1[$i]} "$helper" sigapp)
    done
    if [ ${#names[@]} -gt 0 ]; then
        measure signal "$work/sig.all" "$helper" fwd "$sig_runs" 1 "${cmds[@]}"
        split_samples "$work/sig.all" "$work/sig" "${names[@]}"
    fi
    row sig50 "SIGTERM forwarding latency (PID 1), median" us "le:best"
    row sig99 "SIGTERM forwarding latency (PID 1), p99" us "le:best"
    for i in "${inits[@]}"; do
        [ -s "$work/sig.$i" ] || continue
        val[sig50|$i]=$(pct "$work/sig.$i" 50)
        val[sig99|$i]=$(pct "$work/sig.$i" 99)
    done
    # Where that time goes: mostly two wakeups of idle CPUs (the init's, then the app's), which no init controls.
    # The init's own part, from the end of the syscall it slept in to its kill(2), under perf's syscall
    # tracepoints, in a second run of its own (tracing slows every syscall a little). Skipped without perf.
    row sigown "SIGTERM: the init's own time, wakeup → kill(2) (perf syscall tracepoints), median" us "le:best"
    [ -d /sys/kernel/tracing/events/syscalls ] || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
    if [ ${#names[@]} -gt 0 ] && command -v perf >/dev/null &&
        perf record -q -e syscalls:sys_enter_kill -e syscalls:sys_exit_read -e syscalls:sys_exit_rt_sigtimedwait \
            -o "$work/sig.perf" -- "$helper" fwd "$sig_runs" 1 "${cmds[@]}" >/dev/null 2>"$work/perf.err"; then
        perf script -i "$work/sig.perf" -F comm,pid,time,event,trace --ns 2>/dev/null |
            awk -f "$repo/scripts/bench/sigpath.awk" >"$work/sigown.all"
        for i in "${inits[@]}"; do
            # The kernel names a process after its file's first 15 bytes.
            awk -v c="$(basename "${bin[$i]}" | cut -c1-15)" '$1 == c { print $2 }' "$work/sigown.all" >"$work/sigown.$i"
            if [ -s "$work/sigown.$i" ]; then val[sigown|$i]=$(pct "$work/sigown.$i" 50); fi
        done
    else
        note "signal: no perf syscall tracepoints here ($(tail -n1 "$work/perf.err" 2>/dev/null)): own-time row left empty"
    fi
fi

# ---------------------------------------------------------------- orphans
if want orphans; then
    note "orphans: $orphan_rounds x $orphans double-forked orphans per init"
    for ((r = 0; r < orphan_rounds; r++)); do
        for i in $(rotated "$r" "${inits[@]}"); do
            [ -n "${ok_pid1[$i]:-}" ] || continue
            # shellcheck disable=SC2086
            measure "orphans ($i)" "$work/orph.out" "${ns[@]}" ${pid1[$i]} "$helper" orphans "$orphans"
            cat "$work/orph.out" >>"$work/orph.$i"
        done
    done
    row orph "reap $orphans orphans: fork storm until none left, median" ms "le:best"
    row orphtail "… of which after the last fork (reap tail), median" us "none"
    row zomb "zombies left afterwards (worst round)" n "zero"
    for i in "${inits[@]}"; do
        [ -s "$work/orph.$i" ] || continue
        awk '{print $1}' "$work/orph.$i" >"$work/orph1.$i"
        awk '{print $2}' "$work/orph.$i" >"$work/orph2.$i"
        val[orph|$i]=$(pct "$work/orph1.$i" 50)
        val[orphtail|$i]=$(pct "$work/orph2.$i" 50)
        val[zomb|$i]=$(awk '$3 > m { m = $3 } END { print m + 0 }' "$work/orph.$i")
    done
fi

# ---------------------------------------------------------------- extensions (microinit only)
xrows=() # "label|value|target|verdict"
xrow() { xrows+=("$1|$2|$3|$4"); }
xnotes=() # explanations printed under the extension table
xnote() { xnotes+=("$*"); }
fmt_ms() { awk -v v="$1" 'BEGIN { printf "%.3f ms", v / 1e6 }'; }
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v + 0 <= t + 0) ? "✔" : "✘" }'; }

# make_microcontainer DIR: a root shaped like the seeds' images: /usr/bin/node and every library it needs are
# symlinks into /opt/files, where this machine's files are bind-mounted (nothing copied; the mounts are made by
# in_microcontainer, in a private mount namespace), plus a static /bin/true and /sbin/microinit.
make_microcontainer() {
    local d=$1 name path
    mkdir -p "$d/opt/files" "$d/usr/bin" "$d/lib" "$d/lib64" "$d/bin" "$d/sbin"
    cp "$mi" "$d/sbin/microinit"
    cc -static -s -Os -o "$d/bin/true" -x c - <<<'int main(void) { return 0; }' || return 1
    : >"$d/binds"
    # `ldd` lines: "libx.so.N => /path (addr)" and the interpreter "/lib64/ld-linux-x86-64.so.2 (addr)".
    while read -r name path; do
        [ -e "$path" ] || return 1
        case $name in
            node) ln -s /opt/files/node "$d/usr/bin/node" ;;
            ld-*) ln -s "/opt/files/$name" "$d/lib64/$name" ;;
            *) ln -s "/opt/files/$name" "$d/lib/$name" ;;
        esac
        : >"$d/opt/files/$name"
        echo "$(readlink -f "$path") $d/opt/files/$name" >>"$d/binds"
    done < <(echo "node $node"; ldd "$node" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 } $1 ~ /^\/.*ld-/ { n = $1; sub(/.*\//, "", n); print n, $1 }')
}
# in_microcontainer DIR CMD…: CMD in a private mount namespace where DIR's bind mounts are in place.
in_microcontainer() {
    local d=$1; shift
    # shellcheck disable=SC2016 # expanded by the inner bash
    unshare --mount --propagation private bash -c \
        'while read -r src dst; do mount --bind "$src" "$dst" || exit 1; done <"$0/binds"; exec "$@"' "$d" "$@"
}
# check_rows WHERE OUTER… -- WRAP… -- MI TRUE: interleaved runs of `check node`, `check <static binary>`,
# `-- true` and `--no-runtime-check -- true` (each prefixed with WRAP; the helper itself runs under OUTER), and the
# rows derived from them. A target applies only to the microcontainer: on a full machine the scan of the standard
# directories measures the machine.
check_rows() {
    local where=$1 outer=() wrap=() m_node m_static m_plain m_nocheck target=""
    shift
    while [ "$1" != -- ]; do outer+=("$1"); shift; done
    shift
    while [ "$1" != -- ]; do wrap+=("$1"); shift; done
    local m=$2 t=$3
    [ "$where" != microcontainer ] || target="< 1 ms"
    measure "check ($where)" "$work/check.all" "${outer[@]}" "$helper" run "$check_runs" \
        "${wrap[@]}" "$m" check "$node" ::: "${wrap[@]}" "$m" check "$m" ::: \
        "${wrap[@]}" "$m" -- "$t" ::: "${wrap[@]}" "$m" --no-runtime-check -- "$t"
    split_samples "$work/check.all" "$work/check" node static plain nocheck
    m_node=$(pct "$work/check.node" 50) m_static=$(pct "$work/check.static" 50)
    m_plain=$(pct "$work/check.plain" 50) m_nocheck=$(pct "$work/check.nocheck" 50)
    [ -n "$m_nocheck" ] || { xrow "runtime check ($where)" "n/a (no samples)" "$target" ""; return; }
    xrow "$where: \`microinit check $node\` wall, median" "$(fmt_ms "$m_node")" "" ""
    xrow "$where: check of node + its libraries (minus \`check <static binary>\`, $(fmt_ms "$m_static"))" \
        "$(fmt_ms $((m_node - m_static)))" "$target" "$([ -z "$target" ] || verdict $((m_node - m_static)) 1000000)"
    xrow "$where: runtime check in \`microinit -- true\` ($(fmt_ms "$m_plain") − $(fmt_ms "$m_nocheck") with --no-runtime-check)" \
        "$(fmt_ms $((m_plain - m_nocheck)))" "$target" "$([ -z "$target" ] || verdict $((m_plain - m_nocheck)) 1000000)"
}
if want check; then
    node=/usr/bin/node
    if [ -z "${ok_host[microinit]:-}" ]; then
        xrow "runtime check of $node" "n/a (${why[microinit]})" "< 1 ms" ""
    elif ! "$mi" check "$node" >/dev/null 2>&1 || ! "$mi" check "$mi" >/dev/null 2>&1 ||
        "$mi" check "$work/no-such-runtime" >/dev/null 2>&1; then
        # A placeholder check passes everything: it must also fail on a missing command to count as built.
        xrow "runtime check of $node" "n/a (not built: \`microinit check\` does not tell present from missing)" "< 1 ms" ""
    elif ! "$mi" --no-runtime-check -- true >/dev/null 2>&1; then
        xrow "runtime check of $node" "n/a (not built: --no-runtime-check refused)" "< 1 ms" ""
    else
        mc="$work/microcontainer"
        nlibs=$(ldd "$node" | grep -c '=> /' || true)
        if make_microcontainer "$mc" && in_microcontainer "$mc" chroot "$mc" /sbin/microinit check "$node" >/dev/null &&
            in_microcontainer "$mc" chroot "$mc" /sbin/microinit -- /bin/true; then
            note "check: microcontainer root, $check_runs runs per command, interleaved"
            xnote "microcontainer: a chroot shaped like the seeds' images: /usr/bin/node and its $nlibs libraries (and" \
                "ld.so) are symlinks into /opt/files; a static /bin/true. Targets apply here."
            check_rows "microcontainer" \
                in_microcontainer "$mc" -- chroot "$mc" -- /sbin/microinit /bin/true
            # shellcheck source=scripts/bench/microcontainer.sh
            . "$repo/scripts/bench/microcontainer.sh"
            mc_startup "$mc"
            check_scaling "$mc"
        else
            problem "check: the microcontainer root in $mc did not pass \`microinit check $node\`"
        fi
        nlinks=$(find /bin/ /sbin/ /usr/bin/ /usr/sbin/ /lib/ /lib64/ /usr/lib/ /usr/local/bin/ -maxdepth 1 -type l 2>/dev/null | wc -l)
        note "check: this machine's root, $check_runs runs per command, interleaved"
        xnote "host root: this machine's / (the runtime-dir scan reads the standard directories: $nlinks symlinks there)" \
            "— shows how the check scales with them; no target."
        check_rows "host root" -- -- "$mi" true
    fi
fi

if want consul; then
    consul_dir=""
    if [ -z "${ok_pid1[microinit]:-}" ]; then
        xrow "Consul: app ready → passing" "n/a (${why[microinit]})" "< 50 ms" ""
    elif [ ! -x "$repo/scripts/consul-dev.sh" ]; then
        xrow "Consul: app ready → passing" "n/a (not built: scripts/consul-dev.sh missing)" "< 50 ms" ""
    else
        note "consul: starting a dev agent"
        consul_dir="$work/consul"
        if ! addr=$("$repo/scripts/consul-dev.sh" start "$consul_dir" 2>"$work/consul-start.log" | tail -n1); then
            tail -n 5 "$work/consul-start.log" >&2
            consul_dir=""
            xrow "Consul: app ready → passing" "n/a (consul dev agent did not start)" "< 50 ms" ""
        else
            note "consul: $consul_n register/deregister cycles against $addr"
            # The drain pause would only add a configured sleep to "SIGTERM → app"; measure microinit's own cost.
            CONSUL_HTTP_ADDR=$addr MICROINIT_DRAIN=0 "$helper" consul "$consul_n" 1 "$addr" bench \
                "${ns[@]}" "$mi" -- "$helper" sigapp >"$work/consul.out" 2>"$work/consul.err" || true
            if [ ! -s "$work/consul.out" ]; then
                # Not one cycle: registration is not in this build (or never reaches the agent).
                why_c=$(tail -n1 "$work/consul.err")
                [[ "$why_c" != *"never showed"* ]] || why_c="no passing registration within 10 s"
                xrow "Consul: app ready → passing" "n/a (not built: $why_c)" "< 50 ms" ""
            else
                [ ! -s "$work/consul.err" ] || problem "consul: $(tail -n1 "$work/consul.err") (cycles before it kept)"
                for k in 1 2 3 4; do awk -v k=$k '{ print $k }' "$work/consul.out" >"$work/consul.$k"; done
                m=$(pct "$work/consul.1" 50) p=$(pct "$work/consul.1" 99)
                xrow "Consul: app ready → passing, median / p99" "$(fmt_ms "$m") / $(fmt_ms "$p")" "< 50 ms" "$(verdict "$m" 50000000)"
                xrow "Consul: SIGTERM → deregistered (as seen polling every 0.2 ms), median" "$(fmt_ms "$(pct "$work/consul.2" 50)")" "" ""
                xrow "Consul: SIGTERM → app receives it (deregistration first, drain 0), median" "$(fmt_ms "$(pct "$work/consul.3" 50)")" "" ""
                rss=$(pct "$work/consul.4" 50)
                xrow "Consul: PID-1 RSS with registration on, median" "$rss KiB" "≤ 2048 KiB" "$(verdict "$rss" 2048)"
            fi
        fi
    fi
    if [ -n "${ok_host[microinit]:-}" ]; then
        xrow "binary size, default features" "$(stat -L -c %s "$mi") B" "" ""
        # Only a pair built here from the same source compares; a binary left over from another run would not.
        if [ "$build" -eq 0 ] || [ -n "${MICROINIT_BIN:-}" ]; then
            xrow "binary size, \`--features https\`" "n/a (measured only when bench.sh builds)" "" ""
        else
            note "consul: building microinit --features https (own target dir, so neither build relinks the other)"
            if mi_https=$(build_mi "$target_dir/bench-https" https) && [ -x "$mi_https" ]; then
                xrow "binary size, \`--features https\`" "$(stat -L -c %s "$mi_https") B" "" ""
            else
                xrow "binary size, \`--features https\`" "n/a (build failed)" "" ""
            fi
        fi
    fi
fi

# ---------------------------------------------------------------- discovery (issue #11, microinit only)
# A watch: Consul change (a new instance passing) → the app's SIGHUP, timed on one monotonic clock by
# scripts/bench/watchbench.c (it registers, the app side timestamps the signal). Then PID 1's main-thread
# wakeups while 3 watches sit in their blocking queries.
if want discovery; then
    disc_dir=""
    if [ -z "${ok_pid1[microinit]:-}" ]; then
        xrow "discovery: Consul change → app signal" "n/a (${why[microinit]})" "median < 100 ms" ""
    elif ! cc -O2 -Wall -o "$work/watchbench" "$repo/scripts/bench/watchbench.c"; then
        problem "discovery: cannot compile scripts/bench/watchbench.c"
    else
        disc_dir="$work/consul-discovery"
        if ! daddr=$("$repo/scripts/consul-dev.sh" start "$disc_dir" 2>"$work/disc-start.log" | tail -n1); then
            tail -n 5 "$work/disc-start.log" >&2
            disc_dir=""
            xrow "discovery: Consul change → app signal" "n/a (consul dev agent did not start)" "median < 100 ms" ""
        else
            note "discovery: $disc_n changes (register + deregister) against $daddr"
            fifo="$work/watch.fifo"
            mkfifo "$fifo"
            CONSUL_HTTP_ADDR=$daddr "${ns[@]}" "$mi" --watch bw --on-change signal:HUP -- \
                "$work/watchbench" app "$fifo" 2>"$work/disc-mi.err" &
            disc_pid=$!
            # unshare --fork ignores SIGTERM while it waits: stop microinit itself (its child) instead.
            stop_ns() { kill "$(awk '{ print $1 }' /proc/"$1"/task/"$1"/children 2>/dev/null)" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
            for _ in $(seq 500); do [ -e "$fifo.ready" ] && break; sleep 0.01; done
            # The watch's first answer is its baseline; give it a moment to arrive before the first change.
            sleep 0.5
            "$work/watchbench" drive "${daddr##*:}" bw "$disc_n" "$fifo" >"$work/disc.out" 2>"$work/disc.err" ||
                problem "discovery: $(tail -n1 "$work/disc.err") (changes before it kept)"
            stop_ns "$disc_pid"
            if [ -s "$work/disc.out" ]; then
                m=$(pct "$work/disc.out" 50) p=$(pct "$work/disc.out" 99)
                xrow "discovery: Consul change (new instance passing) → app receives SIGHUP, median / p99 ($(wc -l <"$work/disc.out") changes, debounce 50 ms)" \
                    "$(fmt_ms "$m") / $(fmt_ms "$p")" "median < 100 ms" "$(verdict "$m" 100000000)"
            else
                xrow "discovery: Consul change → app signal" "n/a (no signal arrived: $(tail -n1 "$work/disc.err"))" "median < 100 ms" ""
            fi

            note "discovery: ${disc_idle} s idle with 3 watches"
            CONSUL_HTTP_ADDR=$daddr "${ns[@]}" "$mi" --watch w1 --watch w2 --watch w3 --on-change signal:HUP -- \
                sleep 600 2>"$work/disc-idle.err" &
            idle_ns=$!
            mi_pid=""
            for _ in $(seq 500); do
                mi_pid=$(cat /proc/"$idle_ns"/task/"$idle_ns"/children 2>/dev/null | awk '{ print $1 }')
                [ -n "$mi_pid" ] && break
                sleep 0.01
            done
            sleep 1 # first answers of the three watches
            main_ctx() { awk '/ctxt_switches/ { s += $2 } END { print s + 0 }' /proc/"$mi_pid"/task/"$mi_pid"/status; }
            w0=$(main_ctx) a0=$(proc_wakeups "$mi_pid")
            sleep "$disc_idle"
            w1=$(main_ctx) a1=$(proc_wakeups "$mi_pid")
            stop_ns "$idle_ns"
            xrow "discovery: PID 1 main-loop wakeups in ${disc_idle} s idle with 3 watches" "$((w1 - w0))" "0" "$(verdict "$((w1 - w0))" 0)"
            xrow "discovery: … all threads (the watches' blocking queries are held up to 2 min)" "$((a1 - a0))" "" ""
            "$repo/scripts/consul-dev.sh" stop "$disc_dir" >/dev/null 2>&1 || true
            disc_dir=""
        fi
    fi
    if [ -n "${ok_host[microinit]:-}" ]; then
        xrow "discovery: binary size with wait-for, watches, health and metrics (every build has them)" "$(stat -L -c %s "$mi") B" "" ""
    fi
fi

# ---------------------------------------------------------------- the table
render() {
    local cpu
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    echo "## microinit benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Machine: $(nproc) cores ($cpu), kernel $(uname -r); run: $([ "$quick" -eq 1 ] && echo "--quick" || echo default)."
    echo "microinit: $(mi_origin)."
    echo "Anchors from Debian: tini $(dpkg-query -W -f '${Version}' tini 2>/dev/null), dumb-init" \
        "$(dpkg-query -W -f '${Version}' dumb-init 2>/dev/null), catatonit $(dpkg-query -W -f '${Version}' catatonit 2>/dev/null)."
    local samples=""
    if want startup; then samples+=" startup $start_runs per mode,"; fi
    if want signal; then samples+=" signal $sig_runs,"; fi
    if want orphans; then samples+=" orphans $orphan_rounds × $orphans,"; fi
    if want consul; then samples+=" consul $consul_n,"; fi
    if want discovery; then samples+=" discovery $disc_n changes,"; fi
    [ -z "$samples" ] || echo "Samples per init:${samples%,}; samples of different inits interleave one by one" \
        "(orphan rounds: init by init, rotating)."
    echo "Lower is better everywhere; ratio and verdict compare microinit with the best anchor of each row."
    echo
    if [ ${#rows[@]} -gt 0 ]; then
        printf '| measure |'; printf ' %s |' "${inits[@]}"; echo " best anchor | microinit ÷ best | target |"
        printf '|---|'; printf -- '---:|%.0s' "${inits[@]}"; echo "---|---:|---|"
        local r id label unit target i best bestv ratio tv verdict cell
        for r in "${rows[@]}"; do
            IFS='|' read -r id label unit target <<<"$r"
            printf '| %s |' "$label"
            for i in "${inits[@]}"; do
                cell=${val[$id|$i]:-}
                if [ -n "$cell" ]; then cell=$(fmt "$unit" "$cell")
                elif [ "$i" = microinit ]; then cell="n/a (${why[microinit]})"
                else cell="n/a"; fi
                printf ' %s |' "$cell"
            done
            best="" bestv=""
            if [ "$unit" != text ]; then
                for i in "${anchors[@]}"; do
                    cell=${val[$id|$i]:-}
                    [ -n "$cell" ] || continue
                    if [ -z "$bestv" ] || awk -v a="$cell" -v b="$bestv" 'BEGIN { exit !(a < b) }'; then best=$i bestv=$cell; fi
                done
            fi
            cell=${val[$id|microinit]:-}
            ratio="—"
            if [ -n "$cell" ] && [ -n "$bestv" ]; then
                ratio=$(awk -v a="$cell" -v b="$bestv" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print (a == 0 ? "=" : "—") }')
            fi
            verdict=""
            if [ -n "$cell" ]; then
                case $target in
                    le:best) [ -z "$bestv" ] || verdict=$(verdict "$cell" "$bestv") ;;
                    factor:*) [ -z "$bestv" ] || verdict=$(awk -v a="$cell" -v b="$bestv" -v f="${target#factor:}" \
                        'BEGIN { print (a <= b * f) ? "✔" : "✘" }') ;;
                    le:*) tv=${val[$id|${target#le:}]:-}; [ -z "$tv" ] || verdict=$(verdict "$cell" "$tv") ;;
                    zero) verdict=$(verdict "$cell" 0) ;;
                esac
            fi
            case $target in
                le:best) tv="≤ best" ;;
                factor:*) tv="≤ ${target#factor:}× best" ;;
                le:*) tv="≤ ${target#le:}" ;;
                zero) tv="0" ;;
                *) tv="" ;;
            esac
            [ -n "$bestv" ] && best="$best ($(fmt "$unit" "$bestv"))"
            echo " ${best:-—} | $ratio | $tv $verdict |"
        done
        echo
    fi
    if [ ${#xrows[@]} -gt 0 ]; then
        echo "| microinit extension | value | target |"
        echo "|---|---:|---|"
        local label value target verdict
        for r in "${xrows[@]}"; do
            IFS='|' read -r label value target verdict <<<"$r"
            echo "| $label | $value | $target $verdict |"
        done
        echo
        [ ${#xnotes[@]} -eq 0 ] || { printf -- '- %s\n' "${xnotes[@]}"; echo; }
    fi
    if [ ${#problems[@]} -gt 0 ]; then
        echo "Problems in this run:"
        printf -- '- %s\n' "${problems[@]}"
        echo
    fi
}
render | tee "$out"
note "written to $out"
