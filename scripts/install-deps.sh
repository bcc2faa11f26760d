#!/usr/bin/env bash
# Install what building and testing switchboard needs, from Debian's packages only,
# and only what is missing. Safe to run again and again (CI runs it every time).
#
# Usage: scripts/install-deps.sh [--check] [--browser]
#   --check     list what is missing and exit 1 if anything is; install nothing
#   --browser   also the browser-test tools (chromium, chromium-driver, and
#               livekit-client from npm; scripts/test.sh asks for them under CI)
#   SB_SKIP_DEPS=1  do nothing (for machines set up by other means)
#
# What and why:
#   sip-tester   sipp, the SIP peer of tests/sip_calls.rs (scenarios in tests/sipp/)
#   pkg-config, cmake, libopus-dev   to build libopus bindings (Opus for WebRTC legs)
#   ca-certificates   so cargo reaches crates.io on a fresh machine
#   python3, python3-venv   for the Python LiveKit SDK below
#   livekit==1.2.1 (PyPI, in a venv)   the real SDK of tests/livekit_http.rs
#       (tests/python/); venv: $SB_PYTHON_VENV, default ~/.cache/switchboard/python
#   livekit-api==1.2.2 (PyPI, same venv)   the real server SDK (Twirp RoomService)
#   chromium (--browser)   the headless browser of tests/livekit_browser.rs
#   livekit-client@2.23.0 (npm, --browser)   the real JS SDK that page runs (its
#       UMD build, tests/browser/); into $SB_NODE_DIR, default
#       ~/.cache/switchboard/node; needs npm (Debian's npm when none is there)
#
# Runs `apt-get update` at most once, and only when something has to be installed.
# As root (CI) it calls apt-get directly; otherwise through sudo. Nothing is downloaded
# outside the package managers (apt; pip from PyPI for the SDK, whose wheel carries
# its own compiled FFI library; npm for livekit-client, plain JavaScript): no other
# prebuilt binaries, no browser builds (Chromium is Debian's).
set -euo pipefail

check_only=0
browser=0
for arg in "$@"; do
    case "$arg" in
        --check) check_only=1 ;;
        --browser) browser=1 ;;
        -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install-deps: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

if [[ "${SB_SKIP_DEPS:-0}" == "1" ]]; then
    echo "install-deps: SB_SKIP_DEPS=1, not checking system packages"
    exit 0
fi

packages=(sip-tester pkg-config cmake libopus-dev ca-certificates python3 python3-venv)
if [[ "$browser" == "1" ]]; then
    packages+=(chromium chromium-driver)
    # npm for livekit-client; a node/npm already on PATH (the image's) is kept.
    command -v npm >/dev/null 2>&1 || packages+=(npm)
fi

installed() {
    # dpkg's view, not PATH: a package is there when dpkg says "install ok installed".
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

missing=()
for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
done

# The Python LiveKit SDK, pinned to the version docs/livekit.md probed, from PyPI
# into a venv of its own (Debian's python3 is externally managed, PEP 668). The
# version check makes a second run a no-op.
LIVEKIT_PY_VERSION="1.2.1"
LIVEKIT_API_PY_VERSION="1.2.2"
venv="${SB_PYTHON_VENV:-${HOME:?set HOME or SB_PYTHON_VENV}/.cache/switchboard/python}"
python_sdk_present() {
    [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c \
        "import importlib.metadata as m, sys; from livekit import rtc, api; sys.exit(m.version('livekit') != '$LIVEKIT_PY_VERSION' or m.version('livekit-api') != '$LIVEKIT_API_PY_VERSION')" \
        >/dev/null 2>&1
}
python_sdk() {
    if python_sdk_present; then
        echo "install-deps: python livekit==$LIVEKIT_PY_VERSION present ($venv)"
        return 0
    fi
    if [[ "$check_only" == "1" ]]; then
        echo "install-deps: missing: python livekit==$LIVEKIT_PY_VERSION in $venv"
        return 1
    fi
    local py=python3
    [[ -x /usr/bin/python3 ]] && py=/usr/bin/python3
    [[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "livekit==$LIVEKIT_PY_VERSION" "livekit-api==$LIVEKIT_API_PY_VERSION"
    if ! python_sdk_present; then
        echo "install-deps: python livekit==$LIVEKIT_PY_VERSION still not importable from $venv" >&2
        return 1
    fi
    echo "install-deps: installed python livekit==$LIVEKIT_PY_VERSION ($venv)"
}

# livekit-client (npm), pinned; the UMD build is what the test page loads. Its
# package.json asks for a newer node than Debian's, but node never runs it (the
# browser does), so npm's engine warning is only noise.
LIVEKIT_CLIENT_VERSION="2.23.0"
node_dir="${SB_NODE_DIR:-${HOME:?set HOME or SB_NODE_DIR}/.cache/switchboard/node}"
livekit_client_present() {
    local pkg="$node_dir/node_modules/livekit-client/package.json"
    [[ -f "$node_dir/node_modules/livekit-client/dist/livekit-client.umd.js" ]] &&
        grep -q "\"version\": \"$LIVEKIT_CLIENT_VERSION\"" "$pkg" 2>/dev/null
}
livekit_client() {
    if livekit_client_present; then
        echo "install-deps: livekit-client@$LIVEKIT_CLIENT_VERSION present ($node_dir)"
        return 0
    fi
    if [[ "$check_only" == "1" ]]; then
        echo "install-deps: missing: livekit-client@$LIVEKIT_CLIENT_VERSION (npm) in $node_dir"
        return 1
    fi
    mkdir -p "$node_dir"
    npm install --prefix "$node_dir" --no-save --no-audit --no-fund --ignore-scripts \
        --omit=dev --loglevel=error "livekit-client@$LIVEKIT_CLIENT_VERSION"
    if ! livekit_client_present; then
        echo "install-deps: livekit-client@$LIVEKIT_CLIENT_VERSION still missing from $node_dir" >&2
        return 1
    fi
    echo "install-deps: installed livekit-client@$LIVEKIT_CLIENT_VERSION ($node_dir)"
}

# What comes from the language registries, after the system packages.
registries() {
    python_sdk || return 1
    if [[ "$browser" == "1" ]]; then
        livekit_client || return 1
    fi
}

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-deps: all present (${packages[*]})"
    registries
    exit $?
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
registries
