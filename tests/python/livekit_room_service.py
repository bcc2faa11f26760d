"""RoomService over Twirp with the real server SDK (`livekit-api` from PyPI).

Usage: livekit_room_service.py <http url> <api key> <secret> <room> <action>
  action = remove  : list the room's participants, remove the SIP one,
                     then try to remove an identity that is not there
  action = delete  : delete the room, then list it (gone)
Prints one JSON line: {"error": "", "listed": [...], "removed": ..., ...}.
"""

import asyncio
import json
import sys

from livekit import api


async def main(url, key, secret, room, action):
    out = {"error": ""}
    lkapi = api.LiveKitAPI(url=url, api_key=key, api_secret=secret)
    try:
        listed = await asyncio.wait_for(
            lkapi.room.list_participants(api.ListParticipantsRequest(room=room)), 10
        )
        out["listed"] = [
            {"identity": p.identity, "kind": int(p.kind), "sid": p.sid}
            for p in listed.participants
        ]
        sip = [p for p in listed.participants if p.kind == api.ParticipantInfo.Kind.SIP]
        if action == "remove":
            if not sip:
                out["error"] = "no SIP participant listed"
            else:
                await asyncio.wait_for(
                    lkapi.room.remove_participant(
                        api.RoomParticipantIdentity(room=room, identity=sip[0].identity)
                    ),
                    10,
                )
                out["removed"] = sip[0].identity
            try:
                await asyncio.wait_for(
                    lkapi.room.remove_participant(
                        api.RoomParticipantIdentity(room=room, identity="nobody-here")
                    ),
                    10,
                )
                out["unknown"] = "accepted"
            except api.TwirpError as e:
                out["unknown"] = e.code
        elif action == "delete":
            await asyncio.wait_for(
                lkapi.room.delete_room(api.DeleteRoomRequest(room=room)), 10
            )
            out["deleted"] = room
            try:
                await asyncio.wait_for(
                    lkapi.room.list_participants(api.ListParticipantsRequest(room=room)), 10
                )
                out["after"] = "still there"
            except api.TwirpError as e:
                out["after"] = e.code
    except Exception as e:  # reported, not raised: the test reads the JSON
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        await lkapi.aclose()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
