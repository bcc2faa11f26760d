#!/usr/bin/env python3
"""Join a switchboard room with the real Python LiveKit SDK (`livekit` 1.2.1) and
report the phone caller as the SDK sees it: the customer's own check,
`participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP`.

Run by tests/livekit_http.rs (which places the SIP call with sipp and mints the
token); by hand:

    python3 tests/python/livekit_sees_sip_caller.py ws://127.0.0.1:7880 TOKEN

Prints one JSON line: {"connected": bool, "error": str, "seconds": f,
"participants": [{"identity", "name", "kind", "is_sip", "attributes"}],
"sip_left": bool} where `sip_left` says whether the SIP participant was seen to
disconnect (the caller hung up) within LEFT_TIMEOUT_S. Exit 3 when the SDK is
not installed.
"""

import asyncio
import json
import sys
import time

try:
    from livekit import rtc
except ImportError as e:
    print(f"livekit SDK not importable: {e}", file=sys.stderr)
    sys.exit(3)

CONNECT_TIMEOUT_S = 30.0
LEFT_TIMEOUT_S = 20.0


async def main(url: str, token: str) -> None:
    room = rtc.Room()
    left = asyncio.Event()

    @room.on("participant_disconnected")
    def _on_left(p: rtc.RemoteParticipant) -> None:
        if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP:
            left.set()

    t0 = time.monotonic()
    out = {"connected": False, "error": "", "participants": [], "sip_left": False}
    try:
        await asyncio.wait_for(room.connect(url, token), CONNECT_TIMEOUT_S)
        out["connected"] = True
        out["seconds"] = round(time.monotonic() - t0, 3)
        # The customer's snippet, in substance.
        for p in room.remote_participants.values():
            out["participants"].append(
                {
                    "identity": p.identity,
                    "name": p.name,
                    "kind": int(p.kind),
                    "is_sip": p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP,
                    "attributes": dict(p.attributes),
                }
            )
        try:
            await asyncio.wait_for(left.wait(), LEFT_TIMEOUT_S)
            out["sip_left"] = True
        except asyncio.TimeoutError:
            pass
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
        out["seconds"] = round(time.monotonic() - t0, 3)
    finally:
        try:
            await room.disconnect()
        except Exception:
            pass
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    asyncio.run(main(sys.argv[1], sys.argv[2]))
