#!/usr/bin/env bash
# Build the runtime volume ("filebox") for microcontainers from executables on this build host.
#
#   scripts/filebox.sh [--microinit BIN] [--tag IMAGE] [--runtime-dir DIR] [--bin-dir DIR] OUTDIR EXECUTABLE...
#
# For each EXECUTABLE (a path or a name looked up in PATH), `microinit check --json` resolves what it needs to
# start: its ELF interpreter and every shared library, recursively (microinit's own resolver, not ldd, so the
# volume holds exactly what microinit will check for in the container). Each of those files is copied,
# dereferenced, into OUTDIR/files/ under the name the loader asks for. Outputs:
#   OUTDIR/files/        the volume's contents, mounted at DIR (default /opt/files) in app containers
#   OUTDIR/links/        a symlink tree for app images (`COPY links/ /`):
#                          commands:     BIN-DIR/NAME -> DIR/NAME              (/usr/bin/node -> /opt/files/node)
#                          interpreter:  its PT_INTERP path -> DIR/NAME        (/lib64/ld-linux-x86-64.so.2 -> …)
#                          libraries:    the path the loader finds them at -> DIR/NAME
#                                        (/lib/x86_64-linux-gnu/libstdc++.so.6 -> /opt/files/libstdc++.so.6)
#                        and /etc/microinit/volume-links.txt: symlinks.txt, the volume's own manifest, so that
#                        `RUN ["/sbin/microinit", "check", "--write-manifest"]` in the app image's Dockerfile checks
#                        the image's links against what the volume provides (it is not mounted at `docker build`)
#                        and writes the links manifest PID 1 checks at start instead of scanning
#   OUTDIR/symlinks.txt  the same list, one `LINK -> TARGET` a line
#   OUTDIR/Dockerfile    the filebox image: FROM scratch, files/ at DIR, declared a VOLUME
# With --tag IMAGE the filebox image is built too. Use it as a volume container:
#   docker create --name filebox IMAGE && docker run --volumes-from filebox:ro APP-IMAGE
# Limits: the layout is flat (one directory), so a program that finds files relative to its own location
# ($ORIGIN/../lib RUNPATHs, data directories next to the binary) needs those added by hand.
# Needs: jq.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "filebox: $*" >&2; exit 1; }
usage() { sed -n '4p' "$0" | sed 's/^# *//' >&2; exit 2; }

microinit="${MICROINIT_BIN:-${CARGO_TARGET_DIR:-$repo/target}/x86_64-unknown-linux-musl/release/microinit}"
tag=""
runtime_dir=/opt/files
bin_dir=/usr/bin
while [ $# -gt 0 ]; do
    case "$1" in
        --microinit) microinit=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --runtime-dir) runtime_dir=${2%/}; shift 2 ;;
        --bin-dir) bin_dir=${2%/}; shift 2 ;;
        -h | --help) usage ;;
        --) shift; break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) break ;;
    esac
done
[ $# -ge 2 ] || usage
out=$1; shift
command -v jq >/dev/null || die "jq not found: apt-get install jq"
[ -x "$microinit" ] || die "microinit binary $microinit not found: run scripts/build-images.sh or pass --microinit"

rm -rf "$out/files" "$out/links"
mkdir -p "$out/files" "$out/links"
: >"$out/symlinks.txt.tmp"
declare -A source_of # NAME in the volume -> the real file copied there (two different files may not share one)

add() { # add NAME REAL-FILE LINK-PATH
    local name=$1 found=$2 link=$3 real
    real=$(readlink -f "$found")
    if [ -n "${source_of[$name]:-}" ]; then
        [ "${source_of[$name]}" = "$real" ] \
            || die "two different files want the name $name in $runtime_dir: ${source_of[$name]} and $real"
    else
        source_of[$name]=$real
        cp -L --preserve=mode "$real" "$out/files/$name"
    fi
    echo "$link -> $runtime_dir/$name" >>"$out/symlinks.txt.tmp"
}

for exe in "$@"; do
    # `check` exits non-zero when something is missing; the JSON report says what, so read it either way.
    report=$("$microinit" check --json "$exe") || true
    jq -e 'has("ok") and has("resolved")' >/dev/null 2>&1 <<<"$report" \
        || die "\`$microinit check --json $exe\` did not print a JSON report (got: ${report:0:200})"
    if [ "$(jq -r .ok <<<"$report")" != true ]; then
        jq -r '.missing[] | "filebox: \(.path) missing (needed by \(.needed_by // "-")): \(.detail // "")"' \
            <<<"$report" >&2
        die "$exe cannot start on this host, so it cannot be boxed (see above)"
    fi
    # kind TAB path TAB found, for the pieces a loader opens (symlink steps and --require entries are not files
    # the volume needs: the real file at the end of each chain is what gets copied).
    while IFS=$'\t' read -r kind path found; do
        name=${path##*/}
        case "$kind" in
            command) add "$name" "$found" "$bin_dir/$name" ;;
            interpreter) add "$name" "$found" "$path" ;;
            library)
                # An absolute path is where the loader found it; a bare soname goes next to the real file.
                if [[ "$path" == /* ]]; then link=$path; else link=$(dirname "$found")/$name; fi
                add "$name" "$found" "$link" ;;
        esac
    done < <(jq -r '.resolved[] | select(.kind == "command" or .kind == "interpreter" or .kind == "library")
                    | [.kind, .path, .found] | @tsv' <<<"$report")
done

sort -u "$out/symlinks.txt.tmp" >"$out/symlinks.txt"
rm -f "$out/symlinks.txt.tmp"
while read -r link _ target; do
    mkdir -p "$out/links$(dirname "$link")"
    ln -sfn "$target" "$out/links$link"
done <"$out/symlinks.txt"
mkdir -p "$out/links/etc/microinit"
cp "$out/symlinks.txt" "$out/links/etc/microinit/volume-links.txt"

cat >"$out/Dockerfile" <<DOCKERFILE
# The runtime volume: generated by scripts/filebox.sh from $*.
FROM scratch
COPY files/ $runtime_dir/
VOLUME $runtime_dir
# Never started: \`docker create\` only needs some command to make the volume container.
CMD ["$runtime_dir/filebox"]
DOCKERFILE

if [ -n "$tag" ]; then
    log=$(docker build -t "$tag" "$out" 2>&1) || { echo "$log" >&2; die "docker build of $tag failed"; }
fi
echo "filebox: $(find "$out/files" -type f | wc -l) files, $(du -sb "$out/files" | cut -f1) bytes in $out/files;" \
    "symlinks in $out/symlinks.txt" >&2
