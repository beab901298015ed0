# Sourced by scripts/bench.sh (check section): startup in the microcontainer root with the runtime check on, and
# the check's scaling with the size of the image. Uses bench.sh's helpers (measure, split_samples, pct, row, xrow,
# bin, ok_pid1, anchors, helper, work, start_runs, check_runs).

# mc_startup DIR: `INIT -- /bin/true` in the microcontainer root DIR, as a child and as PID 1, for microinit (check
# on, with the links manifest written the way the Dockerfile RUN step writes it) and for the static anchors copied
# into the root (the dynamic ones would need their libraries there). Rows in the main table, target ≤ 1.00× best.
mc_startup() {
    local d=$1 i
    local names=(c-bare p-bare) cmds=(chroot "$d" /bin/true ::: unshare --pid --fork chroot "$d" /bin/true)
    in_microcontainer "$d" chroot "$d" /sbin/microinit check --write-manifest >/dev/null ||
        { problem "microcontainer startup: \`microinit check --write-manifest\` failed in $d"; return; }
    for i in microinit tini-static catatonit; do
        [ -n "${ok_pid1[$i]:-}" ] || continue
        [ "$i" = microinit ] || cp "${bin[$i]}" "$d/sbin/$i"
        names+=("c-$i" "p-$i")
        cmds+=(::: chroot "$d" "/sbin/$i" -- /bin/true ::: unshare --pid --fork chroot "$d" "/sbin/$i" -- /bin/true)
    done
    note "startup in the microcontainer root: $start_runs runs per init and mode, interleaved"
    measure "startup (microcontainer)" "$work/mcstart.all" in_microcontainer "$d" "$helper" run "$start_runs" "${cmds[@]}"
    split_samples "$work/mcstart.all" "$work/mcstart" "${names[@]}"
    local m b
    for m in c p; do
        b=$(pct "$work/mcstart.$m-bare" 50)
        [ -n "$b" ] || continue
        for i in microinit tini-static catatonit; do
            [ -s "$work/mcstart.$m-$i" ] || continue
            val[mc${m}over|$i]=$(($(pct "$work/mcstart.$m-$i" 50) - b))
        done
    done
    row mccover "microcontainer root: startup overhead over bare \`true\`, median; microinit's check on (links manifest); static anchors only" us "factor:1.0"
    row mcpover "microcontainer root, as PID 1: overhead over \`unshare --pid --fork chroot … true\`, median; check on" us "factor:1.0"
}

# check_scaling DIR: the same start with 10, 1 000 and 50 000 more entries in the standard directories (half links
# in /usr/bin, half files in /lib), with the links manifest (what a start costs: flat) and with the opt-in scan
# (what it would cost without one: grows). Work counts come from `microinit check --json`.
check_scaling() {
    local d=$1 n s names=() cmds=() scan_names=() scan_cmds=() w
    for n in 10 1000 50000; do
        s="$work/scale$n"
        rm -rf "$s"
        cp -a "$d" "$s"
        perl -e 'for (0 .. $ARGV[1] / 2 - 1) { symlink("/bin/true", "$ARGV[0]/usr/bin/tool$_") or die "$!";
                 open(my $f, ">", "$ARGV[0]/lib/data$_") or die "$!"; }' "$s" "$n"
        # The placeholders in opt/files stand in for the volume: the links resolve, which is all a start checks.
        chroot "$s" /sbin/microinit check --write-manifest >/dev/null ||
            { problem "scaling: \`microinit check --write-manifest\` failed with $n entries"; return; }
        w=$(chroot "$s" /sbin/microinit check --json /bin/true | jq -r '.work | "\(.lstat + .stat) stat, \(.readlink) readlink, \(.getdents) getdents"')
        xnote "scaling, $n entries: a start with the manifest makes $w calls;" \
            "with the scan: $(chroot "$s" /sbin/microinit check --json --scan-runtime-links --links-manifest /none /bin/true |
                jq -r '.work | "\(.lstat + .stat) stat, \(.readlink) readlink, \(.getdents) getdents"')."
        names+=("m$n") scan_names+=("s$n")
        cmds+=(::: chroot "$s" /sbin/microinit -- /bin/true)
        scan_cmds+=(::: chroot "$s" /sbin/microinit --scan-runtime-links --links-manifest /none -- /bin/true)
    done
    note "check scaling: $check_runs runs per size with the manifest, 20 with the scan, interleaved"
    measure "check scaling" "$work/scale.all" "$helper" run "$check_runs" "${cmds[@]:1}"
    split_samples "$work/scale.all" "$work/scale" "${names[@]}"
    # The scan grows with the image (that is the point): fewer samples keep the run short.
    measure "check scaling (scan)" "$work/scans.all" "$helper" run 20 "${scan_cmds[@]:1}"
    split_samples "$work/scans.all" "$work/scale" "${scan_names[@]}"
    local with="" without=""
    for n in 10 1000 50000; do
        with+="$(fmt_ms "$(pct "$work/scale.m$n" 50)") / "
        without+="$(fmt_ms "$(pct "$work/scale.s$n" 50)") / "
    done
    xrow "scaling: \`microinit -- /bin/true\` with 10 / 1 000 / 50 000 entries in the standard dirs, links manifest, median" "${with% / }" "flat" ""
    xrow "scaling: the same with the opt-in scan instead (\`--scan-runtime-links\`, no manifest), median" "${without% / }" "" ""
}
