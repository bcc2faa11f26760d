#!/usr/bin/env python3
"""Room metadata and participant attributes set from the server side with the
real server SDK (`livekit-api`), seen by a real client SDK participant
(`livekit` 1.2.1) in the room.

    python3 tests/python/livekit_room_updates.py WS_URL HTTP_URL KEY SECRET ROOM TOKEN IDENTITY

The participant joins ROOM; then `update_room_metadata` sets the room's
metadata and `update_participant` sets an attribute on IDENTITY (the phone
caller). Prints one JSON line: {"error": str, "room_metadata": what the
client saw, "attributes": the attributes the client saw change on IDENTITY,
"listed": IDENTITY's attributes as `list_participants` returns them}. Every
wait is bounded. Exit 3 without the SDKs.
"""

import asyncio
import json
import sys

try:
    from livekit import api, rtc
except ImportError as e:
    print(f"livekit SDKs not importable: {e}", file=sys.stderr)
    sys.exit(3)

TIMEOUT_S = 15.0


async def main(ws_url, http_url, key, secret, room_name, token, identity) -> None:
    out = {"error": "", "room_metadata": "", "attributes": {}, "listed": {}}
    room = rtc.Room()
    metadata_seen = asyncio.Event()
    attributes_seen = asyncio.Event()

    @room.on("room_metadata_changed")
    def _on_metadata(_old, new) -> None:
        out["room_metadata"] = new
        metadata_seen.set()

    @room.on("participant_attributes_changed")
    def _on_attributes(changed, participant) -> None:
        if participant.identity == identity:
            out["attributes"].update(changed)
            if "crm.ticket" in changed:
                attributes_seen.set()

    lkapi = api.LiveKitAPI(url=http_url, api_key=key, api_secret=secret)
    try:
        await asyncio.wait_for(room.connect(ws_url, token), TIMEOUT_S)
        await asyncio.wait_for(
            lkapi.room.update_room_metadata(
                api.UpdateRoomMetadataRequest(room=room_name, metadata="queue=support")
            ),
            TIMEOUT_S,
        )
        await asyncio.wait_for(metadata_seen.wait(), TIMEOUT_S)
        await asyncio.wait_for(
            lkapi.room.update_participant(
                api.UpdateParticipantRequest(
                    room=room_name, identity=identity, attributes={"crm.ticket": "T-42"}
                )
            ),
            TIMEOUT_S,
        )
        await asyncio.wait_for(attributes_seen.wait(), TIMEOUT_S)
        listed = await asyncio.wait_for(
            lkapi.room.list_participants(api.ListParticipantsRequest(room=room_name)),
            TIMEOUT_S,
        )
        for p in listed.participants:
            if p.identity == identity:
                out["listed"] = dict(p.attributes)
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        await lkapi.aclose()
        try:
            await asyncio.wait_for(room.disconnect(), 5)
        except Exception:
            pass
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:8]))
