#!/usr/bin/env python3
"""Join a switchboard room with the real Python LiveKit SDK (`livekit` 1.2.1) and
collect the phone caller's key presses as the SDK delivers them
(`sip_dtmf_received`, from LiveKit SIP DTMF data packets).

    python3 tests/python/livekit_sip_dtmf.py ws://127.0.0.1:7880 TOKEN N

Prints `ready` once connected (the caller may start pressing keys), then one
JSON line: {"error": str, "digits": [{"digit", "code", "from"}]} after N digits
or TIMEOUT_S. Exit 3 without the SDK.
"""

import asyncio
import json
import sys

try:
    from livekit import rtc
except ImportError as e:
    print(f"livekit SDK not importable: {e}", file=sys.stderr)
    sys.exit(3)

TIMEOUT_S = 20.0


async def main(url: str, token: str, n: int) -> None:
    room = rtc.Room()
    out = {"error": "", "digits": []}
    done = asyncio.Event()

    @room.on("sip_dtmf_received")
    def _on_dtmf(d) -> None:
        out["digits"].append(
            {
                "digit": d.digit,
                "code": d.code,
                "from": d.participant.identity if d.participant else "",
            }
        )
        if len(out["digits"]) >= n:
            done.set()

    try:
        await asyncio.wait_for(room.connect(url, token), 30)
        await asyncio.sleep(0.5)  # data channels settle
        print("ready", flush=True)
        try:
            await asyncio.wait_for(done.wait(), TIMEOUT_S)
        except asyncio.TimeoutError:
            pass
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
        print("ready", flush=True)
    finally:
        try:
            await room.disconnect()
        except Exception:
            pass
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
