#!/usr/bin/env python3
"""Join a switchboard room with the real Python LiveKit SDK (`livekit` 1.2.1) and
press keys toward the phone caller (`LocalParticipant.publish_dtmf`, a LiveKit
SIP DTMF data packet). Each argument is a group of digits sent back to back,
with no pause (as an agent sends "1234#"); groups are 400 ms apart.

    python3 tests/python/livekit_send_dtmf.py ws://127.0.0.1:7880 TOKEN 7 '#' 123

Prints one JSON line: {"error": str, "sent": [digits]}. Exit 3 without the SDK.
"""

import asyncio
import json
import sys

try:
    from livekit import rtc
except ImportError as e:
    print(f"livekit SDK not importable: {e}", file=sys.stderr)
    sys.exit(3)

CODES = {"*": 10, "#": 11, "A": 12, "B": 13, "C": 14, "D": 15}


async def main(url: str, token: str, groups: list) -> None:
    room = rtc.Room()
    out = {"error": "", "sent": []}
    try:
        await asyncio.wait_for(room.connect(url, token), 30)
        await asyncio.sleep(0.5)  # data channels settle
        for group in groups:
            for d in group:
                code = int(d) if d.isdigit() else CODES[d.upper()]
                await room.local_participant.publish_dtmf(code=code, digit=d)
                out["sent"].append(d)
            await asyncio.sleep(0.4)
        await asyncio.sleep(0.5)
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        try:
            await room.disconnect()
        except Exception:
            pass
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
