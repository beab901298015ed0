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
nm --size-sort -S -C "$bin" | perl -ne '
    my ($addr, $size, $type, $name) = split(/ /, $_, 4) or next;
    next unless defined $name && $type =~ /^[tTdDrRbB]$/;
    chomp $name;
    $name =~ s/^(<|&|\*const |\*mut |mut |dyn )+//;
    # Methods of primitive types ("<f64 as FromStr>", "<[T] as Debug>") belong to core.
    $name = "core::$name" if $name =~ /^(\[|str |bool |char |[iuf](8|16|32|64|128|size) )/;
    my $crate = $name =~ /^([A-Za-z_][A-Za-z0-9_]*)::/ ? $1 : "(C: musl libc, linker)";
    $crate .= " (std)" if $crate =~ /^(core|alloc|std|std_detect|compiler_builtins|panic_abort|hashbrown|memchr|adler2|miniz_oxide|rustc_demangle)$/;
    $total{$crate} += hex($size); $all += hex($size);
    END {
        print "| crate | bytes | share |\n|---|---:|---:|\n";
        printf "| %s | %d | %.1f%% |\n", $_, $total{$_}, 100 * $total{$_} / $all
            for sort { $total{$b} <=> $total{$a} } keys %total;
        print "| **all symbols** | $all | |\n";
    }'
