#!/usr/bin/env python3
"""Two participants of the real Python LiveKit SDK (`livekit` 1.2.1) in one
switchboard room exchange data packets: `alice` publishes a reliable packet to
everyone, a lossy one, and one addressed to `bob` only; `bob` and `carol` report
what they received (payload, topic, sender identity).

    python3 tests/python/livekit_data_packets.py ws://127.0.0.1:7880 \
        ALICE_TOKEN BOB_TOKEN CAROL_TOKEN

Prints one JSON line: {"error": str, "bob": [...], "carol": [...]} where each
entry is {"data": str, "topic": str, "from": str}. Exit 3 without the SDK.
"""

import asyncio
import json
import sys

try:
    from livekit import rtc
except ImportError as e:
    print(f"livekit SDK not importable: {e}", file=sys.stderr)
    sys.exit(3)


async def join(url: str, token: str, got: list) -> rtc.Room:
    room = rtc.Room()

    @room.on("data_received")
    def _on_data(p: rtc.DataPacket) -> None:
        got.append(
            {
                "data": p.data.decode(errors="replace"),
                "topic": p.topic or "",
                "from": p.participant.identity if p.participant else "",
            }
        )

    await asyncio.wait_for(room.connect(url, token), 30)
    return room


async def main(url: str, alice_t: str, bob_t: str, carol_t: str) -> None:
    out = {"error": "", "bob": [], "carol": []}
    rooms = []
    try:
        bob = await join(url, bob_t, out["bob"])
        rooms.append(bob)
        carol = await join(url, carol_t, out["carol"])
        rooms.append(carol)
        alice = await join(url, alice_t, [])
        rooms.append(alice)
        # Let every data channel settle before publishing.
        await asyncio.sleep(1.0)
        lp = alice.local_participant
        await lp.publish_data(b"hello everyone", reliable=True, topic="chat")
        await lp.publish_data(b"lossy hello", reliable=False, topic="chat")
        await lp.publish_data(
            b"for bob only", reliable=True, topic="dm", destination_identities=["bob"]
        )
        for _ in range(50):
            if len(out["bob"]) >= 3 and len(out["carol"]) >= 2:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # anything extra (a leak to carol) shows up
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        for r in rooms:
            try:
                await r.disconnect()
            except Exception:
                pass
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    asyncio.run(main(*sys.argv[1:]))
