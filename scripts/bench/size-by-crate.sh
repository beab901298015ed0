#!/usr/bin/env bash
# Size of a NON-stripped microinit by crate: the sizes of its text and data symbols (nm), grouped by the first
# path segment of the demangled name (`<nix::… as …>` counts for nix; generic code counts for the crate whose
# function it is, wherever it was instantiated). Symbols without a Rust path are musl's libc (C) or the linker's.
#
#   scripts/bench/size-by-crate.sh BINARY      prints a markdown table, largest first
#
# A stripped binary has no symbols: build one with CARGO_PROFILE_RELEASE_STRIP=false (same flags otherwise).
set -euo pipefail
bin=${1:?usage: size-by-crate.sh NON-STRIPPED-BINARY}
nm --size-sort -S -C "$bin" >/dev/null 2>&1 || { echo "size-by-crate: nm cannot read $bin" >&2; exit 1; }
[ "$(nm "$bin" 2>/dev/null | wc -l)" -gt 100 ] || { echo "size-by-crate: $bin is stripped" >&2; exit 1; }
nm --size-sort -S -C "$bin" | awk '
    $3 ~ /^[tTdDrRbB]$/ {
        size = strtonum("0x" $2)
        name = $0; sub(/^[^ ]+ [^ ]+ [^ ]+ /, "", name)
        gsub(/^(<|&|\*const |\*mut |dyn )+/, "", name)
        crate = (name ~ /^[A-Za-z_][A-Za-z0-9_]*::/) ? name : "(C: musl libc, linker)"
        sub(/::.*/, "", crate)
        if (crate ~ /^(core|alloc|std|std_detect|compiler_builtins|panic_abort|rustc_demangle|hashbrown|adler2|miniz_oxide|addr2line|gimli|object|memchr)$/ && crate != "(C: musl libc, linker)")
            crate = crate " (std)"
        total[crate] += size; all += size
    }
    END {
        printf "| crate | bytes | share |\n|---|---:|---:|\n"
        n = asorti(total, keys)
        for (k in total) order[sprintf("%012d %s", total[k], k)] = k
        m = asorti(order, sorted)
        for (i = m; i >= 1; i--) { c = order[sorted[i]]; printf "| %s | %d | %.1f%% |\n", c, total[c], 100 * total[c] / all }
        printf "| **all symbols** | %d | |\n", all
    }'
