#!/usr/bin/env bash
# Start switchboard in development mode: SIP on 127.0.0.1:5060 (UDP and TCP), the
# embedded defaults of `switchboard --dev` (API key devkey / secret), logs on stderr.
#
# Usage: scripts/dev.sh [more switchboard args, e.g. --shards 1]
#   RUST_LOG=debug scripts/dev.sh     more logging
#   SB_SKIP_DEPS=1                    do not check system packages
# Then, in another terminal, a call:  see README.md ("A call with sipp").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/install-deps.sh
export RUST_LOG="${RUST_LOG:-info}"
exec cargo run --release -- --dev "$@"
