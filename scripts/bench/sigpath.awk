# scripts/bench.sh, section signal: reads `perf script -F comm,pid,time,event,trace --ns` of a `benchhelper fwd` run
# traced at the syscall tracepoints sys_enter_kill, sys_exit_read and sys_exit_rt_sigtimedwait. For each SIGTERM
# the helper sends to an init: the init's own time, from the end of the syscall it slept in (read(2) on a signalfd,
# sigtimedwait(2)) to the start of its kill(2). Prints "COMM NS" per sample.
function hex(s,    i, v) {
    v = 0; s = tolower(s); sub(/^0x/, "", s)
    for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
    return v
}
{
    comm = $1; pid = $2; t = $3; sub(/:$/, "", t); ev = $4
    if (ev == "syscalls:sys_enter_kill:") {
        target = $6; sub(/,$/, "", target); sig = hex($8)
        if (comm == "benchhelper" && sig == 15) { armed[hex(target)] = 1; delete woke[hex(target)] }
        else if (pid in woke) { printf "%s %d\n", comm, (t - woke[pid]) * 1e9; delete woke[pid]; delete armed[pid] }
    } else if ((ev == "syscalls:sys_exit_read:" || ev == "syscalls:sys_exit_rt_sigtimedwait:") && (pid in armed) && !(pid in woke)) {
        woke[pid] = t
    }
}
