#!/usr/bin/env python3
"""A real Python SDK participant (`livekit` 1.2.1) that stays in a room while
phone callers come and go, one after another: it hears each caller's track in
turn (the room reuses receive slots earlier callers freed, which must fire a
new track event in the SDK each time).

    python3 tests/python/livekit_callers_in_turn.py URL TOKEN HZ...

Prints `ready` once connected, then one JSON line: {"error": str, "calls":
[{"from": identity, "tone_db", "off_db", "total_db", "rms", "tone_blocks",
"blocks", ...}]}: the n-th caller heard measured at the n-th HZ against
OFF_HZ. Every wait is bounded. Exit 3 without the SDK.
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

from livekit_audio_from_caller import SAMPLE_RATE, measure

CONNECT_TIMEOUT_S = 30.0
TRACK_TIMEOUT_S = 20.0
LISTEN_S = 1.5
FRAME_TIMEOUT_S = 3.0
OFF_HZ = 1400.0


async def listen(track) -> list:
    stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
    samples = []
    deadline = time.monotonic() + LISTEN_S + 2 * FRAME_TIMEOUT_S
    it = stream.__aiter__()
    try:
        while len(samples) < LISTEN_S * SAMPLE_RATE and time.monotonic() < deadline:
            ev = await asyncio.wait_for(it.__anext__(), FRAME_TIMEOUT_S)
            samples.extend(ev.frame.data)
    finally:
        try:
            await asyncio.wait_for(stream.aclose(), 5)
        except Exception:
            pass
    return samples


async def main(url, token, tones) -> None:
    room = rtc.Room()
    out = {"error": "", "calls": []}
    tracks: asyncio.Queue = asyncio.Queue()

    @room.on("track_subscribed")
    def _on_track(track, _pub, participant) -> None:
        if (
            track.kind == rtc.TrackKind.KIND_AUDIO
            and participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP
        ):
            tracks.put_nowait((track, participant.identity))

    ready = False
    try:
        await asyncio.wait_for(room.connect(url, token), CONNECT_TIMEOUT_S)
        print("ready", flush=True)
        ready = True
        for want in tones:
            track, identity = await asyncio.wait_for(tracks.get(), TRACK_TIMEOUT_S)
            samples = await listen(track)
            heard = {"from": identity, "samples": len(samples)}
            heard.update(measure(samples, want, OFF_HZ))
            out["calls"].append(heard)
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        if not ready:
            print("ready", flush=True)
        try:
            await asyncio.wait_for(room.disconnect(), 5)
        except Exception:
            pass
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], a[1], [float(x) for x in a[2:]]))
