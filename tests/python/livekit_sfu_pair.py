#!/usr/bin/env python3
"""One of two real Python SDK participants (`livekit` 1.2.1) that talk through
the room as an SFU: it publishes a microphone track playing MY_HZ, subscribes
to PEER's audio track, measures what it hears (Goertzel at PEER_HZ and MY_HZ,
as livekit_audio_from_caller.py measures), then, with `unpublish`, unpublishes
its own track and stays a moment; without, it waits for PEER's track to be
unpublished (`track_unpublished`).

    python3 tests/python/livekit_sfu_pair.py URL TOKEN PEER MY_HZ PEER_HZ unpublish|wait

Prints one JSON line: {"error": str, "from": identity heard, "frames",
"samples", "tone_db" (PEER_HZ), "off_db" (MY_HZ: it must not hear itself),
"total_db", "rms", "tone_blocks", "blocks", "unpublished": [sids seen
unpublished], "track_sid": its own, "speakers": identities the room named
active speakers}. Every wait is bounded. Exit 3 without
the SDK.
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

# The measurement is the caller test's own (same directory).
from livekit_audio_from_caller import SAMPLE_RATE, measure

CONNECT_TIMEOUT_S = 30.0
TRACK_TIMEOUT_S = 20.0
LISTEN_S = 2.5
FRAME_TIMEOUT_S = 3.0
UNPUBLISH_TIMEOUT_S = 15.0
FRAME = SAMPLE_RATE // 100
AMPLITUDE = 10000.0


async def play(source, hz: float, stop: asyncio.Event) -> None:
    """The tone in real time, 10 ms frames, until `stop` (at most 60 s)."""
    w = 2.0 * math.pi * hz / SAMPLE_RATE
    t0 = time.monotonic()
    for i in range(6000):
        if stop.is_set():
            return
        delay = t0 + i * 0.01 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = rtc.AudioFrame.create(SAMPLE_RATE, 1, FRAME)
        data = frame.data
        for j in range(FRAME):
            data[j] = int(AMPLITUDE * math.sin(w * (i * FRAME + j)))
        await source.capture_frame(frame)


async def main(url, token, peer, my_hz, peer_hz, mode) -> None:
    room = rtc.Room()
    out = {
        "error": "",
        "from": "",
        "frames": 0,
        "samples": 0,
        "unpublished": [],
        "speakers": [],
    }
    got_track: asyncio.Future = asyncio.get_running_loop().create_future()
    unpublished = asyncio.Event()

    @room.on("track_subscribed")
    def _on_track(track, _pub, participant) -> None:
        if (
            participant.identity == peer
            and track.kind == rtc.TrackKind.KIND_AUDIO
            and not got_track.done()
        ):
            got_track.set_result(track)

    # Who the room said speaks (speakers_changed; in a room without phone
    # callers, from the RFC 6464 levels the SDKs put in their packets).
    @room.on("active_speakers_changed")
    def _on_speakers(speakers) -> None:
        for p in speakers:
            if p.identity not in out["speakers"]:
                out["speakers"].append(p.identity)

    @room.on("track_unpublished")
    def _on_unpublished(publication, participant) -> None:
        if participant.identity == peer:
            out["unpublished"].append(publication.sid)
            unpublished.set()

    stop = asyncio.Event()
    player = None
    try:
        await asyncio.wait_for(room.connect(url, token), CONNECT_TIMEOUT_S)
        source = rtc.AudioSource(SAMPLE_RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track("tone", source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        pub = await asyncio.wait_for(
            room.local_participant.publish_track(track, opts), CONNECT_TIMEOUT_S
        )
        out["track_sid"] = pub.sid
        player = asyncio.create_task(play(source, my_hz, stop))
        remote = await asyncio.wait_for(got_track, TRACK_TIMEOUT_S)
        out["from"] = peer
        stream = rtc.AudioStream(remote, sample_rate=SAMPLE_RATE, num_channels=1)
        samples = []
        deadline = time.monotonic() + LISTEN_S + 2 * FRAME_TIMEOUT_S
        it = stream.__aiter__()
        try:
            while len(samples) < LISTEN_S * SAMPLE_RATE and time.monotonic() < deadline:
                ev = await asyncio.wait_for(it.__anext__(), FRAME_TIMEOUT_S)
                out["frames"] += 1
                samples.extend(ev.frame.data)
        finally:
            try:
                await asyncio.wait_for(stream.aclose(), 5)
            except Exception:
                pass
        out["samples"] = len(samples)
        out.update(measure(samples, peer_hz, my_hz))
        if mode == "unpublish":
            # Let the peer finish listening first.
            await asyncio.sleep(2.0)
            await asyncio.wait_for(
                room.local_participant.unpublish_track(pub.sid), UNPUBLISH_TIMEOUT_S
            )
            await asyncio.sleep(2.0)
        else:
            await asyncio.wait_for(unpublished.wait(), UNPUBLISH_TIMEOUT_S)
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        stop.set()
        if player is not None:
            try:
                await asyncio.wait_for(player, 5)
            except Exception:
                pass
        try:
            await asyncio.wait_for(room.disconnect(), 5)
        except Exception:
            pass
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], a[1], a[2], float(a[3]), float(a[4]), a[5]))
