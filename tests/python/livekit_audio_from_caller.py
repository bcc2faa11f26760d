#!/usr/bin/env python3
"""Join a switchboard room with the real Python LiveKit SDK (`livekit` 1.2.1),
subscribe to the phone caller's audio track and measure what it carries: the
Goertzel power at TONE_HZ and at OFF_HZ, the total power and the RMS of
LISTEN_S seconds of the decoded audio (48 kHz mono, as the SDK delivers it).

    python3 tests/python/livekit_audio_from_caller.py ws://127.0.0.1:7880 TOKEN [TONE_HZ [OFF_HZ]]

Prints `ready` once connected (the caller may join or start talking), then one
JSON line: {"error": str, "from": identity, "frames": n, "samples": n,
"sample_rate": hz, "tone_db", "off_db", "total_db": dB of the powers
(normalised as tests/ua's `tone_power`: a pure tone of amplitude A gives A^2/4
at its own frequency, so tone_db ~= total_db when the tone is all there is),
"rms", "peak", "tone_blocks": 100 ms blocks where the tone dominates,
"blocks", "participants": what the room held when no track came}.
Every wait is bounded; a timeout is an "error". Exit 3 without the SDK.
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
# From `ready`: the caller may still have to dial in (the SDK-first order).
TRACK_TIMEOUT_S = 15.0
LISTEN_S = 2.5
# One frame every 10 ms is the norm; a stall this long ends the listening.
FRAME_TIMEOUT_S = 3.0
SAMPLE_RATE = 48000
# 100 ms blocks: 10 Hz bins, whole periods for any multiple of 10 Hz, and a
# lost or concealed packet only disturbs its own block (no long-window phase).
BLOCK = SAMPLE_RATE // 10


def goertzel(samples, start: int, n: int, hz: float) -> float:
    """Power of `hz` in samples[start:start+n], normalised by n^2 (A^2/4 for a tone)."""
    k = 2.0 * math.cos(2.0 * math.pi * hz / SAMPLE_RATE)
    s1 = s2 = 0.0
    for i in range(start, start + n):
        s0 = samples[i] + k * s1 - s2
        s2 = s1
        s1 = s0
    return (s1 * s1 + s2 * s2 - k * s1 * s2) / (n * n)


def db(p: float) -> float:
    # JSON has no -Infinity: digital silence reads as -200 dB.
    return round(10.0 * math.log10(max(p, 1e-20)), 2)


def measure(samples, tone_hz: float, off_hz: float) -> dict:
    blocks = len(samples) // BLOCK
    tone = off = 0.0
    tone_blocks = 0
    for b in range(blocks):
        t = goertzel(samples, b * BLOCK, BLOCK, tone_hz)
        o = goertzel(samples, b * BLOCK, BLOCK, off_hz)
        tone += t
        off += o
        tone_blocks += t > 10.0 * o and t > 1e4
    n = max(blocks, 1)
    energy = sum(float(x) * x for x in samples)
    return {
        "tone_db": db(tone / n),
        "off_db": db(off / n),
        # Mean square / 2: a pure tone's A^2/4, like its Goertzel power.
        "total_db": db(energy / max(len(samples), 1) / 2.0),
        "rms": round(math.sqrt(energy / max(len(samples), 1)), 1),
        "peak": max((abs(x) for x in samples), default=0),
        "tone_blocks": tone_blocks,
        "blocks": blocks,
    }


def room_snapshot(room: rtc.Room) -> list:
    """The remote participants and their publications, for a timeout report."""
    out = []
    for p in room.remote_participants.values():
        out.append(
            {
                "identity": p.identity,
                "kind": int(p.kind),
                "tracks": [
                    {
                        "sid": pub.sid,
                        "kind": int(pub.kind),
                        "subscribed": pub.subscribed,
                        "has_track": pub.track is not None,
                    }
                    for pub in p.track_publications.values()
                ],
            }
        )
    return out


async def main(url: str, token: str, tone_hz: float, off_hz: float) -> None:
    room = rtc.Room()
    out = {"error": "", "from": "", "frames": 0, "samples": 0, "speakers": []}
    got_track: asyncio.Future = asyncio.get_running_loop().create_future()

    def is_callers(track, participant) -> bool:
        return (
            track.kind == rtc.TrackKind.KIND_AUDIO
            and participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP
        )

    # Registered before connect: a caller already in the room is subscribed
    # (auto-subscribe) while connect() runs.
    @room.on("track_subscribed")
    def _on_track(track, _publication, participant) -> None:
        if is_callers(track, participant) and not got_track.done():
            got_track.set_result((track, participant.identity))

    # Every identity the room reported as an active speaker (speakers_changed).
    @room.on("active_speakers_changed")
    def _on_speakers(speakers) -> None:
        for p in speakers:
            if p.identity not in out["speakers"]:
                out["speakers"].append(p.identity)

    ready = False
    try:
        await asyncio.wait_for(room.connect(url, token), CONNECT_TIMEOUT_S)
        print("ready", flush=True)
        ready = True
        try:
            track, identity = await asyncio.wait_for(got_track, TRACK_TIMEOUT_S)
        except asyncio.TimeoutError:
            out["error"] = (
                f"no audio track of a SIP participant subscribed within {TRACK_TIMEOUT_S} s"
            )
            out["participants"] = room_snapshot(room)
            return
        out["from"] = identity
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        samples = []
        want = int(LISTEN_S * SAMPLE_RATE)
        deadline = time.monotonic() + LISTEN_S + 2 * FRAME_TIMEOUT_S
        it = stream.__aiter__()
        try:
            while len(samples) < want and time.monotonic() < deadline:
                try:
                    ev = await asyncio.wait_for(it.__anext__(), FRAME_TIMEOUT_S)
                except (asyncio.TimeoutError, StopAsyncIteration) as e:
                    out["error"] = (
                        f"audio stream stalled after {out['frames']} frames: "
                        f"{type(e).__name__}"
                    )
                    break
                f = ev.frame
                out["frames"] += 1
                out["sample_rate"] = f.sample_rate
                samples.extend(f.data)
        finally:
            try:
                await asyncio.wait_for(stream.aclose(), 5)
            except Exception:
                pass
        out["samples"] = len(samples)
        out.update(measure(samples, tone_hz, off_hz))
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
    tone = float(sys.argv[3]) if len(sys.argv) > 3 else 1000.0
    off = float(sys.argv[4]) if len(sys.argv) > 4 else 1400.0
    asyncio.run(main(sys.argv[1], sys.argv[2], tone, off))
