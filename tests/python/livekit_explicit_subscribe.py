#!/usr/bin/env python3
"""Explicit subscription with the real Python SDK (`livekit` 1.2.1): join with
`auto_subscribe=False`, check the phone caller's track is published but not
received, subscribe to it (`set_subscribed(True)`), hear the caller's tone,
then unsubscribe and see `track_unsubscribed`.

    python3 tests/python/livekit_explicit_subscribe.py URL TOKEN TONE_HZ

Prints one JSON line: {"error": str, "published": bool, "early": bool
(subscribed before asking: must be false), "tone_db", "off_db", "total_db",
..., "unsubscribed": bool}. Every wait is bounded. Exit 3 without the SDK.
"""

import asyncio
import json
import sys

try:
    from livekit import rtc
except ImportError as e:
    print(f"livekit SDK not importable: {e}", file=sys.stderr)
    sys.exit(3)

from livekit_callers_in_turn import OFF_HZ, listen
from livekit_audio_from_caller import measure

CONNECT_TIMEOUT_S = 30.0
TIMEOUT_S = 15.0


async def main(url, token, tone_hz) -> None:
    room = rtc.Room()
    out = {"error": "", "published": False, "early": False, "unsubscribed": False}
    published: asyncio.Future = asyncio.get_running_loop().create_future()
    subscribed: asyncio.Future = asyncio.get_running_loop().create_future()
    unsubscribed = asyncio.Event()

    def sip_audio(pub, participant) -> bool:
        return (
            participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP
            and pub.kind == rtc.TrackKind.KIND_AUDIO
        )

    @room.on("track_published")
    def _on_published(pub, participant) -> None:
        if sip_audio(pub, participant) and not published.done():
            published.set_result(pub)

    @room.on("track_subscribed")
    def _on_subscribed(track, pub, participant) -> None:
        if sip_audio(pub, participant) and not subscribed.done():
            subscribed.set_result(track)

    @room.on("track_unsubscribed")
    def _on_unsubscribed(_track, pub, participant) -> None:
        if sip_audio(pub, participant):
            unsubscribed.set()

    try:
        opts = rtc.RoomOptions(auto_subscribe=False)
        await asyncio.wait_for(room.connect(url, token, opts), CONNECT_TIMEOUT_S)
        # The caller may be there already (its publication came with the join).
        for p in room.remote_participants.values():
            for pub in p.track_publications.values():
                if sip_audio(pub, p) and not published.done():
                    published.set_result(pub)
        pub = await asyncio.wait_for(published, TIMEOUT_S)
        out["published"] = True
        await asyncio.sleep(1.5)
        out["early"] = subscribed.done()
        pub.set_subscribed(True)
        track = await asyncio.wait_for(subscribed, TIMEOUT_S)
        samples = await listen(track)
        out["samples"] = len(samples)
        out.update(measure(samples, tone_hz, OFF_HZ))
        pub.set_subscribed(False)
        await asyncio.wait_for(unsubscribed.wait(), TIMEOUT_S)
        out["unsubscribed"] = True
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        try:
            await asyncio.wait_for(room.disconnect(), 5)
        except Exception:
            pass
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], a[1], float(a[2])))
