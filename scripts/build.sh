#!/usr/bin/env bash
# Build the static (musl) microinit that ships in the images. Prints its path as the last stdout line.
#
#   scripts/build.sh                      smallest build: nightly with -Z build-std (see README, "Size")
#   MICROINIT_BUILD=stable scripts/build.sh     plain stable build (larger, same behaviour)
#   MICROINIT_FEATURES=https scripts/build.sh   with HTTPS to the Consul agent
#
# The nightly build recompiles std for size and makes a panic an immediate abort (PID 1 has no panics to
# report anyway). When the machine has no nightly toolchain it falls back to stable and says so.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
target=x86_64-unknown-linux-musl
tdir=${CARGO_TARGET_DIR:-$repo/target}
mode=${MICROINIT_BUILD:-auto}
features=()
[ -n "${MICROINIT_FEATURES:-}" ] && features=(--features "$MICROINIT_FEATURES")
out=$tdir/dist/microinit${MICROINIT_FEATURES:+-$MICROINIT_FEATURES}

cd "$repo"
# The steady state's code first in the code segment (the file says why; no effect on behaviour).
steady="-Clink-arg=-Wl,-T,$repo/scripts/steady-state.ld"
rustup target add "$target" >&2
have_nightly() {
    rustup toolchain list | grep -q '^nightly' &&
        rustup component add rust-src --toolchain nightly >&2 &&
        rustup target add "$target" --toolchain nightly >&2
}
if [ "$mode" != stable ] && have_nightly; then
    echo "build.sh: nightly + build-std (size-optimised)" >&2
    # panic=immediate-abort: a panic is an abort, so no unwind tables are needed (force-unwind-tables=no drops
    # .eh_frame: -104 KB) and no panic location is ever printed (location-detail=none drops their strings);
    # optimize_for_size selects std's smaller implementations. Non-PIE: no relocations to process at start.
    CARGO_TARGET_DIR=$tdir/size \
        RUSTFLAGS="-Zunstable-options -Cpanic=immediate-abort -Crelocation-model=static -Cforce-unwind-tables=no -Zlocation-detail=none $steady" \
        cargo +nightly build --release --locked --target "$target" -Z build-std=std,panic_abort \
        -Z build-std-features=optimize_for_size "${features[@]}" >&2
    built=$tdir/size/$target/release/microinit
else
    [ "$mode" = nightly ] && { echo "build.sh: MICROINIT_BUILD=nightly but no nightly toolchain" >&2; exit 1; }
    echo "build.sh: stable build (no nightly toolchain: the binary is larger)" >&2
    RUSTFLAGS="$steady" cargo build --release --locked --target "$target" "${features[@]}" >&2
    built=$tdir/$target/release/microinit
fi
mkdir -p "$(dirname "$out")"
cp "$built" "$out"
echo "build.sh: $out $(stat -c %s "$out") bytes" >&2
echo "$out"
