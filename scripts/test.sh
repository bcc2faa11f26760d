#!/usr/bin/env bash
# Run switchboard's whole test suite: unit tests, property tests, the RFC 4475
# torture corpus, and the real-peer tests (sipp calls against the real binary,
# tests/sip_calls.rs, the real LiveKit SDKs in tests/livekit_http.rs, and livekit-client
# in headless Chromium in tests/livekit_browser.rs). Installs what the tests need first
# (scripts/install-deps.sh --browser, unless SB_BROWSER=0).
#
# Usage: scripts/test.sh [--lint] [--no-deps] [-- ARGS for the test binaries]
#   --lint      also `cargo fmt --check` and `cargo clippy --all-targets -D warnings`
#   --no-deps   do not check/install system packages (same as SB_SKIP_DEPS=1)
#   SB_NEXTEST=1         run the tests with cargo-nextest instead of cargo test
#   SB_TEST_TIMEOUT=1800 seconds the test step may take before it is killed
#   SB_TEST_LOG=debug    switchboard's RUST_LOG inside the sipp tests
#   SB_PYTHON=path       the Python with the livekit SDK (default: install-deps's venv)
#   SB_BROWSER=0         do not install the browser test's tools (Chromium, npm
#                        livekit-client): those tests then skip (loudly), or fail
#                        under CI
#   CI=true     a missing sipp (or Python livekit SDK, or Chromium / livekit-client)
#               fails its tests instead of skipping them
#
# Prints a summary at the end ("tests: N passed, N failed, N skipped") and exits
# non-zero when any step failed.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

lint=0
deps=1
test_args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --lint) lint=1 ;;
        --no-deps) deps=0 ;;
        --) shift; test_args=("$@"); break ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "test.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
[[ "${SB_SKIP_DEPS:-0}" == "1" ]] && deps=0

logdir="${SB_TEST_LOGDIR:-${CARGO_TARGET_DIR:-$root/target}/test-logs}"
mkdir -p "$logdir"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

steps=()      # "name|status|seconds"
failed=0

# step NAME CMD...: run, tee to $logdir/NAME.log, record the outcome.
step() {
    local name="$1"; shift
    local log="$logdir/$name.log"
    local t0=$SECONDS
    echo
    echo "==> $name: $*"
    "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local secs=$((SECONDS - t0))
    if [[ $rc -eq 0 ]]; then
        steps+=("$name|ok|$secs")
    else
        steps+=("$name|FAILED (exit $rc)|$secs")
        failed=1
    fi
    return $rc
}

deps_args=()
if [[ "${SB_BROWSER:-1}" == "1" ]]; then
    deps_args+=(--browser)
fi
if [[ $deps -eq 1 ]]; then
    step deps scripts/install-deps.sh "${deps_args[@]}"
fi

if [[ $lint -eq 1 ]]; then
    if cargo fmt --version >/dev/null 2>&1; then
        step fmt cargo fmt --all -- --check
    else
        echo "test.sh: rustfmt is not installed: fmt check skipped" >&2
        steps+=("fmt|skipped (no rustfmt)|0")
    fi
    if cargo clippy --version >/dev/null 2>&1; then
        step clippy cargo clippy --all-targets -- -D warnings
    else
        echo "test.sh: clippy is not installed: lint skipped" >&2
        steps+=("clippy|skipped (no clippy)|0")
    fi
fi

timeout_s="${SB_TEST_TIMEOUT:-1800}"
# Build first, so that compile errors are reported as such and the test step's time
# is the tests' own.
if step build cargo build --all-targets; then
    if [[ "${SB_NEXTEST:-0}" == "1" ]] && cargo nextest --version >/dev/null 2>&1; then
        step tests timeout "$timeout_s" cargo nextest run --lib --bins --tests --no-fail-fast "${test_args[@]}"
        step doctests timeout 600 cargo test --doc
    else
        # --all-targets runs lib, bins, integration tests, and each bench once in test
        # mode (so benches cannot rot); doctests are not part of --all-targets.
        step tests timeout "$timeout_s" cargo test --all-targets --no-fail-fast -- "${test_args[@]}"
        step doctests timeout 600 cargo test --doc
    fi
fi

# ---- summary --------------------------------------------------------------
passed=0; tfailed=0; ignored=0
for f in "$logdir/tests.log" "$logdir/doctests.log"; do
    [[ -f "$f" ]] || continue
    # cargo test: "test result: ok. 12 passed; 0 failed; 1 ignored; ..."
    while read -r p fl ig; do
        passed=$((passed + p)); tfailed=$((tfailed + fl)); ignored=$((ignored + ig))
    done < <(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$f")
    # nextest: "Summary [ 12.3s] 40 tests run: 40 passed, 2 skipped"
    while read -r line; do
        p=$(sed -n 's/.* \([0-9]*\) passed.*/\1/p' <<<"$line"); passed=$((passed + ${p:-0}))
        fl=$(sed -n 's/.* \([0-9]*\) failed.*/\1/p' <<<"$line"); tfailed=$((tfailed + ${fl:-0}))
        sk=$(sed -n 's/.* \([0-9]*\) skipped.*/\1/p' <<<"$line"); ignored=$((ignored + ${sk:-0}))
    done < <(grep -E '^ *Summary \[' "$f" || true)
done
sipp_skipped=0
sdk_skipped=0
browser_skipped=0
if [[ -f "$logdir/tests.log" ]]; then
    sipp_skipped=$(grep -c 'SKIPPED .*sipp not found' "$logdir/tests.log" || true)
    sdk_skipped=$(grep -c 'SKIPPED .*Python livekit SDK not found' "$logdir/tests.log" || true)
    browser_skipped=$(grep -c 'SKIPPED .*browser not found' "$logdir/tests.log" || true)
fi

echo
echo "================================ summary ================================"
for s in "${steps[@]}"; do
    IFS='|' read -r name status secs <<<"$s"
    printf '  %-10s %-28s %5ss\n' "$name" "$status" "$secs"
done
if [[ -f "$logdir/tests.log" ]]; then
    grep -E '^test .* \.\.\. FAILED$' "$logdir/tests.log" | sed 's/^/  /' || true
    grep -E 'KNOWN GAP' "$logdir/tests.log" | sed 's/^/  /' || true
fi
if [[ $sipp_skipped -gt 0 ]]; then
    echo "  !!! $sipp_skipped sipp test(s) SKIPPED: sipp not installed (scripts/install-deps.sh) !!!"
fi
if [[ $sdk_skipped -gt 0 ]]; then
    echo "  !!! $sdk_skipped LiveKit SDK test(s) SKIPPED: Python livekit not installed (scripts/install-deps.sh) !!!"
fi
if [[ $browser_skipped -gt 0 ]]; then
    echo "  !!! $browser_skipped browser test(s) SKIPPED: Chromium or npm livekit-client not installed (scripts/install-deps.sh --browser) !!!"
fi
echo "  logs: $logdir"
echo "tests: $passed passed, $tfailed failed, $ignored skipped"
if [[ $failed -ne 0 || $tfailed -ne 0 ]]; then
    echo "RESULT: FAILED"
    exit 1
fi
echo "RESULT: OK"
