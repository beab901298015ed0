#!/bin/sh
# Install Debian's consul (bullseye, 1.8.x) into a private cache directory, without touching the system's apt
# state: the sources list, package lists, apt caches and lock all live under the cache dir, and the package is
# unpacked with `dpkg -x` (never installed). The mirror is the machine's own Debian mirror, read from
# /etc/apt/sources.list.d/debian.sources (or /etc/apt/sources.list), so no host name is written into the repo.
#
# Usage: scripts/install-consul.sh        (idempotent; the last stdout line is the consul binary's absolute path)
# Env:   MICROINIT_CACHE  cache root (default <repo>/.cache); consul goes to $MICROINIT_CACHE/consul
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${MICROINIT_CACHE:-$repo/.cache}/consul
bin=$cache/root/usr/bin/consul
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

die() { echo "install-consul: $*" >&2; exit 1; }

if [ -x "$bin" ] && "$bin" version >/dev/null 2>&1; then
    echo "$bin"
    exit 0
fi

command -v apt-get >/dev/null || die "apt-get not found: this script needs a Debian-based machine"
command -v dpkg >/dev/null || die "dpkg not found: this script needs a Debian-based machine"

# The machine's main Debian mirror: the first URI that is not the security archive.
mirror=""
if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources \
        | tr ' ' '\n' | grep -v -e '-security' -e '^$' | head -n1 || true)
fi
if [ -z "$mirror" ] && [ -r /etc/apt/sources.list ]; then
    mirror=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
        /etc/apt/sources.list | grep -v -e '-security' | head -n1 || true)
fi
[ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
# bullseye's Release file is signed by keys that debian-archive-keyring still ships.
[ -r "$keyring" ] || die "$keyring missing: apt-get install debian-archive-keyring"

mkdir -p "$cache/lists/partial" "$cache/apt-cache/archives/partial" "$cache/deb"
echo "deb [signed-by=$keyring] $mirror bullseye main" >"$cache/sources.list"

# Every path apt would write to is redirected into the cache; the system's dpkg status is only read.
set -- -q \
    -o Dir::Etc::SourceList="$cache/sources.list" \
    -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$cache/lists" \
    -o Dir::Cache="$cache/apt-cache" \
    -o Dir::Cache::pkgcache= \
    -o Dir::Cache::srcpkgcache= \
    -o APT::Sandbox::User=root \
    -o Acquire::Languages=none \
    -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false \
    -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false \
    -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false

echo "install-consul: fetching bullseye package lists from $mirror" >&2
apt-get "$@" update >&2 || die "apt-get update of bullseye lists failed (see above)"
(cd "$cache/deb" && rm -f consul_*.deb && apt-get "$@" download consul >&2) \
    || die "apt-get download consul failed (see above)"
deb=""
for f in "$cache"/deb/consul_*.deb; do [ -e "$f" ] && deb=$f; done
[ -n "$deb" ] || die "no consul .deb downloaded into $cache/deb"

rm -rf "$cache/root"
dpkg -x "$deb" "$cache/root"
[ -x "$bin" ] || die "$deb did not contain usr/bin/consul"
"$bin" version >&2 || die "$bin does not run"
echo "$bin"
