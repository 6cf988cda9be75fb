#!/usr/bin/env bash
# Builds the `ordkv:dev` image: a static `ordkv` (glibc, crt-static) in a FROM scratch image.
# No downloads: uses the installed toolchain and the vendored/cached crates (--locked).
#
#   deploy/docker/build.sh            # from any directory
#   IMAGE=ordkv:test deploy/docker/build.sh
#
# Respects CARGO_TARGET_DIR (and any target-dir in cargo config). The docker build context
# is a temp dir holding only the binary, the Dockerfile and an empty data dir, so it is tiny.
set -euo pipefail

IMAGE="${IMAGE:-ordkv:dev}"
MAX_MB="${MAX_MB:-40}"
TARGET=x86_64-unknown-linux-gnu

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found"
command -v docker >/dev/null || die "docker not found"

# --- static binary ---------------------------------------------------------------------------
# With --target, RUSTFLAGS apply to the target artifacts only: build scripts and proc-macros
# stay dynamic (they run on the host), the `ordkv` binary is fully static. RUSTFLAGS replaces
# .cargo/config.toml's flags, so its `--cfg tokio_unstable` is repeated here.
say "cargo build --release (static, $TARGET)"
start=$SECONDS
RUSTFLAGS='-C target-feature=+crt-static --cfg tokio_unstable' \
    cargo build --release --locked --quiet -p ordkv-cli --bin ordkv --target "$TARGET"
say "cargo build took $((SECONDS - start))s"

target_dir="$(cargo metadata --format-version 1 --no-deps --locked 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
target_dir="${target_dir:-${CARGO_TARGET_DIR:-$repo/target}}"
bin="$target_dir/$TARGET/release/ordkv"
[[ -x "$bin" ]] || die "built binary not found at $bin"

# `file` says "statically linked" or "static-pie linked"; `ldd` says "not a dynamic
# executable" or "statically linked". Either tool must agree it is not dynamic.
if command -v file >/dev/null; then
    desc="$(file -b "$bin")"
    case "$desc" in
        *"statically linked"* | *"static-pie linked"*) ;;
        *) die "$bin is not static: $desc" ;;
    esac
elif command -v ldd >/dev/null; then
    if out="$(ldd "$bin" 2>&1)"; then
        case "$out" in
            *"statically linked"* | *"not a dynamic executable"*) ;;
            *) die "$bin is not static: $out" ;;
        esac
    fi
else
    die "need \`file\` or \`ldd\` to check that $bin is static"
fi
say "static binary: $bin ($(du -h "$bin" | cut -f1))"

# Release builds carry no fault-injection hooks (the `fault-injection` feature is the tests'):
# none of their strings or symbols may be in the binary.
for marker in ORDKV_CRASH_AT /debug/partition set_partitioned_from; do
    if grep -a -F -q -- "$marker" "$bin"; then
        die "$bin contains the fault-injection marker '$marker': was it built with --features fault-injection?"
    fi
done
say "no fault-injection hooks in the binary"

# --- image -----------------------------------------------------------------------------------
ctx="$(mktemp -d "${TMPDIR:-/tmp}/ordkv-image.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
# The release profile keeps line tables (debug = "line-tables-only"), which makes the binary
# ~75 MB; the image gets a copy without debug info (~20 MB) but with its symbol table, so
# panic backtraces still name functions. The cargo artifact itself is left untouched.
if command -v strip >/dev/null; then
    strip --strip-debug -o "$ctx/ordkv" "$bin"
else
    say "strip not found: the image gets the binary with its debug info"
    cp "$bin" "$ctx/ordkv"
fi
chmod 0755 "$ctx/ordkv"
cp "$here/Dockerfile" "$ctx/Dockerfile"
mkdir "$ctx/data" # copied to /data with --chown=65532:65532

# Without the buildx plugin, newer docker CLIs need to be told to use the classic builder.
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi

old_id="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
say "docker build -t $IMAGE"
if ! log="$(docker build --pull=false -t "$IMAGE" "$ctx" 2>&1)"; then
    printf '%s\n' "$log" >&2
    die "docker build failed"
fi

# A rebuild with a changed binary leaves the previous image untagged: drop it (quietly; it
# stays if a container still uses it).
new_id="$(docker image inspect -f '{{.Id}}' "$IMAGE")"
if [[ -n "$old_id" && "$old_id" != "$new_id" ]] &&
    [[ "$(docker image inspect -f '{{len .RepoTags}}' "$old_id" 2>/dev/null)" == 0 ]]; then
    docker rmi "$old_id" >/dev/null 2>&1 || true
fi

bytes="$(docker image inspect -f '{{.Size}}' "$IMAGE")"
mb=$(( (bytes + 1048575) / 1048576 ))
say "$IMAGE: $(docker image inspect -f '{{.Id}}' "$IMAGE" | cut -c1-19), ${mb} MB ($bytes bytes)"
if (( bytes > MAX_MB * 1024 * 1024 )); then
    die "$IMAGE is ${mb} MB, over the ${MAX_MB} MB limit"
fi
