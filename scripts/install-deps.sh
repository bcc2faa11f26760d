#!/usr/bin/env bash
# Install what building and testing switchboard needs, from Debian's packages only,
# and only what is missing. Safe to run again and again (CI runs it every time).
#
# Usage: scripts/install-deps.sh [--check] [--browser]
#   --check     list what is missing and exit 1 if anything is; install nothing
#   --browser   also the browser-test tools (chromium, chromium-driver)
#   SB_SKIP_DEPS=1  do nothing (for machines set up by other means)
#
# What and why:
#   sip-tester   sipp, the SIP peer of tests/sip_calls.rs (scenarios in tests/sipp/)
#   pkg-config, cmake, libopus-dev   to build libopus bindings (Opus for WebRTC legs)
#   ca-certificates   so cargo reaches crates.io on a fresh machine
#
# Runs `apt-get update` at most once, and only when something has to be installed.
# As root (CI) it calls apt-get directly; otherwise through sudo. Nothing is downloaded
# outside the package manager: no prebuilt binaries.
set -euo pipefail

check_only=0
browser=0
for arg in "$@"; do
    case "$arg" in
        --check) check_only=1 ;;
        --browser) browser=1 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install-deps: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

if [[ "${SB_SKIP_DEPS:-0}" == "1" ]]; then
    echo "install-deps: SB_SKIP_DEPS=1, not checking system packages"
    exit 0
fi

packages=(sip-tester pkg-config cmake libopus-dev ca-certificates)
if [[ "$browser" == "1" ]]; then
    packages+=(chromium chromium-driver)
fi

installed() {
    # dpkg's view, not PATH: a package is there when dpkg says "install ok installed".
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

missing=()
for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-deps: all present (${packages[*]})"
    exit 0
fi

echo "install-deps: missing: ${missing[*]}"
if [[ "$check_only" == "1" ]]; then
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: no apt-get here; install by hand: ${missing[*]}" >&2
    echo "install-deps: (sipp is the 'sip-tester' package on Debian/Ubuntu)" >&2
    exit 1
fi

as_root=()
if [[ "$(id -u)" != "0" ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-deps: not root and no sudo; as root run: apt-get install ${missing[*]}" >&2
        exit 1
    fi
    as_root=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-y -q -o Dpkg::Use-Pty=0 --no-install-recommends)
# A stale or empty package list makes `apt-get install` fail to find packages on a
# fresh machine: refresh it, once, now that something is to be installed.
"${as_root[@]}" apt-get update -q -o Dpkg::Use-Pty=0
"${as_root[@]}" apt-get install "${apt_opts[@]}" "${missing[@]}"

still=()
for p in "${missing[@]}"; do
    installed "$p" || still+=("$p")
done
if [[ ${#still[@]} -ne 0 ]]; then
    echo "install-deps: still missing after apt-get: ${still[*]}" >&2
    exit 1
fi
echo "install-deps: installed ${missing[*]}"
