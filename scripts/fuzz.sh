#!/usr/bin/env bash
# Fuzz the wire parsers for a bounded time each (cargo-fuzz + libFuzzer).
#
# Usage: scripts/fuzz.sh [TARGET...]        default: every target in fuzz/
#   FUZZ_SECONDS=60      time per target (libFuzzer -max_total_time)
#   FUZZ_SANITIZER=address|none   (default address; the code is safe Rust, so
#                        `none` finds the same panics about 2x faster)
#   CARGO_BUILD_JOBS=N   build parallelism (the box is shared: default 1)
#
# cargo-fuzz needs unstable rustc flags (-Zsanitizer, sancov). It uses a nightly
# toolchain when one is installed; otherwise it runs on stable with
# RUSTC_BOOTSTRAP=1, which unlocks -Z flags on a stable compiler (checked on
# rustc 1.95 stable: builds and runs with ASan).
#
# Seeds: tests/data/rfc4475/*.dat for sip_parse, tests/data/sdp/*.sdp for
# sdp_parse, copied into fuzz/corpus/<target>/ (git-ignored; libFuzzer adds the
# inputs it finds interesting there). Crashes land in fuzz/artifacts/<target>/;
# replay one with: cargo fuzz run <target> fuzz/artifacts/<target>/<file>
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
seconds="${FUZZ_SECONDS:-60}"
sanitizer="${FUZZ_SANITIZER:-address}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz (one-time, a few minutes)"
    cargo install cargo-fuzz --locked
fi

toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

seed() { # target, source dir, glob
    local dir="fuzz/corpus/$1"
    mkdir -p "$dir"
    if compgen -G "$2/$3" >/dev/null; then
        cp -n "$2"/$3 "$dir"/ 2>/dev/null || true
    fi
}
seed sip_parse tests/data/rfc4475 '*.dat'
seed sdp_parse tests/data/sdp '*.sdp'

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list --fuzz-dir fuzz)
fi

status=0
for t in "${targets[@]}"; do
    echo "=== $t: ${seconds}s, sanitizer=$sanitizer, toolchain=${toolchain[*]:-stable+RUSTC_BOOTSTRAP}"
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    if cargo "${toolchain[@]}" fuzz run --fuzz-dir fuzz -s "$sanitizer" "$t" \
        "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1; then
        echo "=== $t: no crash in ${seconds}s ($(find "fuzz/corpus/$t" -type f | wc -l) corpus entries)"
    else
        echo "=== $t: FAILED (crash, or the target does not build): see fuzz/artifacts/$t/"
        status=1
    fi
done
exit $status
