#!/usr/bin/env python3
"""Join a switchboard room with the real Python LiveKit SDK (`livekit` 1.2.1),
publish a microphone track (`rtc.AudioSource(48000, 1)`) and play a sine into
it, in real time, 10 ms frames, so the phone caller hears it in the room's mix.

    python3 tests/python/livekit_audio_to_caller.py ws://127.0.0.1:7880 TOKEN [HZ [SECONDS]]

After connecting and publishing it keeps the track silent for SILENT_S (the
caller's "before" reference), then prints `ready` and plays HZ (default 600)
for SECONDS (default 4) at amplitude AMPLITUDE, then one JSON line:
{"error": str, "published": bool, "track_sid": str, "frames": n,
"seconds": wall time of the tone}. Every wait is bounded; a failure is an
"error" (and `ready` is still printed). Exit 3 without the SDK.
"""

import asyncio
import json
import math
import sys
import time

try:
    from livekit import rtc
except ImportError as e:
    print(f"livekit SDK not importable: {e}", file=sys.stderr)
    sys.exit(3)

CONNECT_TIMEOUT_S = 30.0
PUBLISH_TIMEOUT_S = 15.0
SILENT_S = 1.0
SAMPLE_RATE = 48000
FRAME = SAMPLE_RATE // 100  # 10 ms
AMPLITUDE = 10000.0


async def main(url: str, token: str, hz: float, seconds: float) -> None:
    room = rtc.Room()
    out = {"error": "", "published": False, "track_sid": "", "frames": 0}
    ready = False
    try:
        await asyncio.wait_for(room.connect(url, token), CONNECT_TIMEOUT_S)
        source = rtc.AudioSource(SAMPLE_RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track("tone", source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        pub = await asyncio.wait_for(
            room.local_participant.publish_track(track, opts), PUBLISH_TIMEOUT_S
        )
        out["published"] = True
        out["track_sid"] = pub.sid
        await asyncio.sleep(SILENT_S)
        print("ready", flush=True)
        ready = True
        # Paced by the wall clock, not by the source's queue: the tone starts
        # when `ready` says and lasts `seconds`.
        t0 = time.monotonic()
        frames = int(seconds * 100)
        w = 2.0 * math.pi * hz / SAMPLE_RATE
        for i in range(frames):
            due = t0 + i * 0.01
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            frame = rtc.AudioFrame.create(SAMPLE_RATE, 1, FRAME)
            data = frame.data
            base = i * FRAME
            for k in range(FRAME):
                data[k] = int(AMPLITUDE * math.sin(w * (base + k)))
            await asyncio.wait_for(source.capture_frame(frame), 2.0)
            out["frames"] += 1
        await asyncio.wait_for(source.wait_for_playout(), 3.0)
        out["seconds"] = round(time.monotonic() - t0, 3)
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
    if len(sys.argv) not in (3, 4, 5):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    hz = float(sys.argv[3]) if len(sys.argv) > 3 else 600.0
    secs = float(sys.argv[4]) if len(sys.argv) > 4 else 4.0
    asyncio.run(main(sys.argv[1], sys.argv[2], hz, secs))
