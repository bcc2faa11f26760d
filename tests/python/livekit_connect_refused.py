#!/usr/bin/env python3
"""Connect the real Python LiveKit SDK (`livekit` 1.2.1) to switchboard's LiveKit
port with tokens that must be refused, and report what the SDK raised.

Run by tests/livekit_http.rs, which mints the tokens (switchboard::livekit::token)
and checks the report; usable by hand too:

    python3 tests/python/livekit_connect_refused.py ws://127.0.0.1:7880 \
        expired=eyJ... forged=eyJ...

Each NAME=TOKEN argument is one `rtc.Room().connect(url, token)`. For each, one
JSON line on stdout: {"name": NAME, "connected": bool, "error": str, "seconds": f}.
Exit status 0 when every attempt ran (refused or not: the Rust test judges), 3 when
the SDK is not installed (the caller decides whether that is a skip or a failure).
"""

import asyncio
import json
import sys
import time

try:
    from livekit import rtc
except ImportError as e:  # the caller maps this to skip (dev) or failure (CI)
    print(f"livekit SDK not importable: {e}", file=sys.stderr)
    sys.exit(3)

# One connect attempt may not take longer than this (the SDK retries a refused
# connection a few times before it raises).
ATTEMPT_TIMEOUT_S = 30.0


async def attempt(url: str, name: str, token: str) -> dict:
    room = rtc.Room()
    t0 = time.monotonic()
    result = {"name": name, "connected": False, "error": ""}
    try:
        await asyncio.wait_for(room.connect(url, token), ATTEMPT_TIMEOUT_S)
        result["connected"] = True
    except asyncio.TimeoutError:
        result["error"] = f"timeout after {ATTEMPT_TIMEOUT_S} s"
    except Exception as e:  # the SDK raises ConnectError; report any exception
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        try:
            await room.disconnect()
        except Exception:
            pass
    result["seconds"] = round(time.monotonic() - t0, 3)
    return result


async def main(url: str, pairs: list) -> None:
    for name, token in pairs:
        print(json.dumps(await attempt(url, name, token)), flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    pairs = [a.split("=", 1) for a in sys.argv[2:]]
    if any(len(p) != 2 for p in pairs):
        print("arguments after the URL are NAME=TOKEN", file=sys.stderr)
        sys.exit(2)
    asyncio.run(main(sys.argv[1], pairs))
