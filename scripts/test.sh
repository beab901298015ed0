#!/usr/bin/env bash
# The test command (README, .ci/run). On a fresh Debian machine (root) it installs what it needs, then runs
# every check: format, lint, the static build (default and https), all tests as real PID 1 against a real
# Consul agent, and the Docker end-to-end test (skipped loudly when no Docker engine answers).
#
#   scripts/test.sh            everything
#   SKIP_E2E=1 scripts/test.sh     without the Docker end-to-end test
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
step() { printf '\n==> %s\n' "$*"; }

step "packages (apt)"
# busybox-static, g++, musl-tools, nodejs: runtime-check fixtures and images; curl, jq: e2e and demo;
# util-linux: unshare/nsenter/setpriv/setsid; procps: ps in tests' debugging output.
# tini, dumb-init: the genuine tools tests/dialects.rs compares microinit's drop-in modes with.
# nginx: its binary and libraries are boxed into the nginx front's runtime volume by the e2e test (the host's
# nginx service is not used; on a machine with an init system the package's postinst may start it).
pkgs=(busybox-static g++ musl-tools nodejs curl jq util-linux procps ca-certificates tini dumb-init nginx)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

step "Rust toolchain pieces"
rustup target add x86_64-unknown-linux-musl
rustup component add rustfmt clippy

step "Consul (Debian bullseye's package, cached)"
CONSUL_BIN=$(scripts/install-consul.sh | tail -1)
export CONSUL_BIN
"$CONSUL_BIN" version | sed -n 1p

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings
cargo clippy --locked --all-targets --features https -- -D warnings

step "static builds"
MICROINIT_BIN=$(scripts/build.sh | tail -1)
export MICROINIT_BIN
MICROINIT_HTTPS_BIN=$(MICROINIT_FEATURES=https scripts/build.sh | tail -1)
ls -l "$MICROINIT_BIN" "$MICROINIT_HTTPS_BIN"

step "cargo test (the binary as real PID 1, a real Consul agent)"
cargo test --locked

step "cargo test --features https (Consul over TLS; the https binary as PID 1)"
MICROINIT_BIN=$MICROINIT_HTTPS_BIN cargo test --locked --features https --test consul
cargo test --locked --features https --lib -- consul::

if [ -z "${SKIP_E2E:-}" ]; then
    step "Docker end-to-end (scripts/e2e-docker.sh)"
    MICROINIT_BIN=$MICROINIT_BIN MICROINIT_HTTPS_BIN=$MICROINIT_HTTPS_BIN scripts/e2e-docker.sh
    step "Consul cluster end-to-end, short form (scripts/cluster-e2e.sh; \`long\` for the full figures)"
    MICROINIT_BIN=$MICROINIT_BIN MICROINIT_HTTPS_BIN=$MICROINIT_HTTPS_BIN scripts/cluster-e2e.sh
fi
step "all checks passed"
