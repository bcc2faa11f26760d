//! The room driven in memory on virtual time: SDK sessions are frames in and
//! frames out, decoded with livekit-protocol's own types.

use std::collections::BTreeMap;

use super::*;
use crate::livekit::sip_participant::InboundCall;
use crate::livekit::token::{Claims, VideoGrant};

const T0_MS: i64 = 1_800_000_000_000;

struct Harness {
    room: RoomSignal,
    t0: Instant,
    now: Instant,
}

fn grant() -> VideoGrant {
    VideoGrant {
        room_join: true,
        room: "call-1".into(),
        ..VideoGrant::default()
    }
}

fn admission(identity: &str, video: VideoGrant) -> Admission {
    let mut claims = Claims::new("devkey", identity, T0_MS / 1000, 3600);
    claims.name = format!("{identity} name");
    claims.video = Some(video);
    Admission {
        room: "call-1".into(),
        identity: identity.into(),
        claims,
    }
}

fn v0(query: &str) -> ConnectRequest {
    ConnectRequest::parse(&format!("/rtc?{query}"), None).unwrap()
}

fn v1(req: &lk::JoinRequest) -> ConnectRequest {
    let value = join_request::encode(req, true);
    ConnectRequest::parse(&format!("/rtc/v1?join_request={value}"), None).unwrap()
}

fn decode_frame(frame: &[u8]) -> Resp {
    lk::SignalResponse::decode(frame)
        .expect("the room sends valid SignalResponses")
        .message
        .expect("never an empty SignalResponse")
}

fn request(message: Req) -> Vec<u8> {
    lk::SignalRequest {
        message: Some(message),
    }
    .encode_to_vec()
}

impl Harness {
    fn new() -> Harness {
        let t0 = Instant::now();
        Harness {
            room: RoomSignal::new("call-1", SignalConfig::default(), 42, T0_MS, t0),
            t0,
            now: t0,
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    fn drain(&mut self) -> Vec<SignalOutput> {
        std::iter::from_fn(|| self.room.poll_output()).collect()
    }

    fn join(&mut self, identity: &str, video: VideoGrant, query: &str) -> ParticipantSid {
        self.room
            .join(&admission(identity, video), &v0(query), self.now)
            .unwrap()
    }

    /// Join and drop what the join produced.
    fn joined(&mut self, identity: &str) -> ParticipantSid {
        let pid = self.join(identity, grant(), "");
        self.drain();
        pid
    }

    fn req(&mut self, pid: &ParticipantSid, message: Req) -> Vec<SignalOutput> {
        self.room
            .handle_request(pid, &request(message), self.now)
            .unwrap();
        self.drain()
    }

    fn sip(&mut self, hidden: bool) -> (ParticipantSid, TrackSid) {
        let none = BTreeMap::new();
        let call = InboundCall {
            from_user: "+15550100",
            from_host: "trunk.example.net",
            to_user: "+15550199",
            call_id: "SCL_abcdefghijkm",
            sip_call_id: "a84b4c76e66710@pc33",
            call_tag: "sb0-1f2e",
            trunk_id: "ST_trunk",
            rule_id: "SDR_rule",
            rule_attributes: &none,
            header_attributes: &none,
            hide_phone_number: false,
        };
        let sip = SipParticipant::inbound(&call, CallStatus::Ringing);
        self.room.join_sip(sip, hidden, self.now).unwrap()
    }
}

/// The messages sent to `to`, decoded, in order.
fn sent_to(outputs: &[SignalOutput], to: &ParticipantSid) -> Vec<Resp> {
    outputs
        .iter()
        .filter_map(|o| match o {
            SignalOutput::Send { to: t, frame } if t == to => Some(decode_frame(frame)),
            _ => None,
        })
        .collect()
}

fn updates_to(outputs: &[SignalOutput], to: &ParticipantSid) -> Vec<lk::ParticipantInfo> {
    sent_to(outputs, to)
        .into_iter()
        .filter_map(|m| match m {
            Resp::Update(u) => Some(u.participants),
            _ => None,
        })
        .flatten()
        .collect()
}

fn join_response(outputs: &[SignalOutput], to: &ParticipantSid) -> lk::JoinResponse {
    match sent_to(outputs, to).into_iter().next() {
        Some(Resp::Join(j)) => j,
        other => panic!("first message is not a JoinResponse: {other:?}"),
    }
}

fn media(outputs: &[SignalOutput]) -> Vec<MediaRequest> {
    outputs
        .iter()
        .filter_map(|o| match o {
            SignalOutput::Media(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn audio_track(cid: &str) -> Req {
    Req::AddTrack(lk::AddTrackRequest {
        cid: cid.into(),
        name: "mic".into(),
        r#type: lk::TrackType::Audio as i32,
        source: lk::TrackSource::Microphone as i32,
        ..Default::default()
    })
}

#[test]
fn two_participants_join_and_each_sees_the_other() {
    let mut h = Harness::new();
    h.advance(Duration::from_millis(1500));
    let alice = h.join("alice", grant(), "sdk=js&version=2.23.0&protocol=16");
    let out = h.drain();
    let j = join_response(&out, &alice);
    let room = j.room.as_ref().unwrap();
    assert!(ids::is_id(ids::ROOM, &room.sid), "{}", room.sid);
    assert_eq!(room.name, "call-1");
    assert_eq!(room.creation_time_ms, T0_MS);
    assert_eq!(room.creation_time, T0_MS / 1000);
    assert_eq!(room.num_participants, 1);
    let me = j.participant.as_ref().unwrap();
    assert_eq!(me.sid, alice.as_str());
    assert!(ids::is_id(ids::PARTICIPANT, &me.sid));
    assert_eq!(me.identity, "alice");
    assert_eq!(me.name, "alice name");
    assert_eq!(me.kind(), lk::participant_info::Kind::Standard);
    assert_eq!(me.state(), lk::participant_info::State::Joined);
    assert_eq!(me.version, 1);
    assert_eq!(me.joined_at_ms, T0_MS + 1500);
    let perm = me.permission.as_ref().unwrap();
    assert!(perm.can_publish && perm.can_subscribe && perm.can_publish_data);
    assert!(!perm.can_update_metadata && !perm.hidden);
    assert!(j.other_participants.is_empty());
    let si = j.server_info.as_ref().unwrap();
    assert!(!si.version.is_empty() && si.version == j.server_version);
    assert_eq!(si.protocol, 16);
    assert_eq!((j.ping_interval, j.ping_timeout), (5, 15));
    assert!(!j.subscriber_primary, "v0: the client offers first too");
    assert_eq!(h.room.generation(&alice), Some(Generation::V0));

    // Bob on v1 (the Python SDK's way) sees alice; alice sees bob.
    let bob = h
        .room
        .join(
            &admission("bob", grant()),
            &v1(&lk::JoinRequest {
                connection_settings: Some(lk::ConnectionSettings {
                    auto_subscribe: true,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            h.now,
        )
        .unwrap();
    let out = h.drain();
    let j = join_response(&out, &bob);
    assert!(!j.subscriber_primary, "v1: one PC, the client offers");
    assert_eq!(h.room.generation(&bob), Some(Generation::V1));
    assert_eq!(j.room.as_ref().unwrap().num_participants, 2);
    assert_eq!(j.other_participants.len(), 1);
    assert_eq!(j.other_participants[0].identity, "alice");
    let seen = updates_to(&out, &alice);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].identity, "bob");
    assert_eq!(seen[0].sid, bob.as_str());
    assert_eq!(
        sent_to(&out, &bob).len(),
        1,
        "bob gets only his JoinResponse"
    );
}

#[test]
fn v0_subscriber_primary_when_configured() {
    let mut h = Harness::new();
    h.room.config.v0_subscriber_primary = true;
    let alice = h.join("alice", grant(), "");
    let bob = h.join(
        "bob",
        VideoGrant {
            can_subscribe: Some(false),
            ..grant()
        },
        "",
    );
    let out = h.drain();
    assert!(join_response(&out, &alice).subscriber_primary);
    assert!(
        !join_response(&out, &bob).subscriber_primary,
        "nothing to subscribe"
    );
}

#[test]
fn sip_participant_appears_with_kind_sip_and_attributes() {
    let mut h = Harness::new();
    let alice = h.joined("alice");
    assert!(!h.room.has_sip_participant(), "only alice");
    let (caller, track) = h.sip(false);
    assert!(h.room.has_sip_participant());
    let out = h.drain();
    let seen = updates_to(&out, &alice);
    let last = seen.last().unwrap();
    assert_eq!(last.sid, caller.as_str());
    assert_eq!(last.identity, "sip_+15550100");
    assert_eq!(last.name, "Phone +15550100");
    assert_eq!(last.kind(), lk::participant_info::Kind::Sip);
    assert_eq!(last.attributes["sip.callStatus"], "ringing");
    assert_eq!(last.attributes["sip.phoneNumber"], "+15550100");
    assert_eq!(last.attributes["sip.trunkID"], "ST_trunk");
    assert_eq!(last.tracks.len(), 1);
    assert_eq!(last.tracks[0].sid, track.as_str());
    assert_eq!(last.tracks[0].mime_type, "audio/opus");
    // Alice auto-subscribes to the caller's audio.
    assert!(media(&out).contains(&MediaRequest::Subscribe {
        subscriber: alice.clone(),
        publisher: caller.clone(),
        track: track.clone(),
    }));
    assert_eq!(h.room.subscribers(&track).collect::<Vec<_>>(), [&alice]);

    // ringing -> active: a new version with the new status.
    assert!(h.room.set_call_status(&caller, CallStatus::Active));
    assert!(!h.room.set_call_status(&caller, CallStatus::Active));
    let out = h.drain();
    let up = updates_to(&out, &alice);
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].attributes["sip.callStatus"], "active");
    assert!(up[0].version > last.version);

    // A later joiner finds the caller among the others.
    let bob = h.join("bob", grant(), "");
    let out = h.drain();
    let j = join_response(&out, &bob);
    let phone = j
        .other_participants
        .iter()
        .find(|p| p.sid == caller.as_str())
        .unwrap();
    assert_eq!(phone.kind(), lk::participant_info::Kind::Sip);
    assert_eq!(phone.attributes["sip.callStatus"], "active");
    // The caller hears the room: it subscribes to what others publish.
    let out = h.req(&bob, audio_track("c1"));
    let bob_track = TrackSid(match &sent_to(&out, &bob)[0] {
        Resp::TrackPublished(p) => p.track.as_ref().unwrap().sid.clone(),
        other => panic!("{other:?}"),
    });
    assert!(h.room.subscribers(&bob_track).any(|s| s == &caller));
}

#[test]
fn add_track_publishes_and_announces_a_higher_version() {
    let mut h = Harness::new();
    let alice = h.joined("alice");
    let bob = h.joined("bob");
    let before = h.room.participant(&alice).unwrap().version;
    let out = h.req(&alice, audio_track("cid-1"));
    let to_alice = sent_to(&out, &alice);
    let Resp::TrackPublished(published) = &to_alice[0] else {
        panic!("{to_alice:?}");
    };
    assert_eq!(published.cid, "cid-1");
    let track = published.track.as_ref().unwrap();
    assert!(ids::is_id(ids::TRACK, &track.sid), "{}", track.sid);
    assert_eq!(track.r#type(), lk::TrackType::Audio);
    assert_eq!(track.source(), lk::TrackSource::Microphone);
    assert_eq!(track.mime_type, "audio/opus");
    assert_eq!(track.name, "mic");
    // The publisher's own update comes after its answer (livekit-server
    // sends updates to the publisher too).
    assert!(matches!(&to_alice[1..], [Resp::Update(u)] if u.participants[0].tracks.len() == 1));
    let up = updates_to(&out, &bob);
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].sid, alice.as_str());
    assert!(up[0].version > before);
    assert_eq!(up[0].tracks.len(), 1);
    assert_eq!(up[0].tracks[0].sid, track.sid);
    let sid = TrackSid(track.sid.clone());
    assert_eq!(
        media(&out),
        [MediaRequest::Subscribe {
            subscriber: bob.clone(),
            publisher: alice.clone(),
            track: sid.clone(),
        }]
    );
    assert_eq!(h.room.publisher(&sid), Some(&alice));
    assert_eq!(h.room.subscriptions(&bob).collect::<Vec<_>>(), [&sid]);

    // A retry with the same cid gets the same track, nothing new.
    let out = h.req(&alice, audio_track("cid-1"));
    match &sent_to(&out, &alice)[..] {
        [Resp::TrackPublished(p)] => assert_eq!(p.track.as_ref().unwrap().sid, track.sid),
        other => panic!("{other:?}"),
    }
    assert!(updates_to(&out, &bob).is_empty());
}

#[test]
fn video_add_track_is_refused_clearly() {
    let mut h = Harness::new();
    let alice = h.joined("alice");
    let bob = h.joined("bob");
    let out = h.req(
        &alice,
        Req::AddTrack(lk::AddTrackRequest {
            cid: "cam".into(),
            r#type: lk::TrackType::Video as i32,
            source: lk::TrackSource::Camera as i32,
            ..Default::default()
        }),
    );
    match &sent_to(&out, &alice)[..] {
        [Resp::RequestResponse(r)] => {
            assert_eq!(r.reason(), lk::request_response::Reason::UnsupportedType);
            assert!(r.message.contains("audio"), "{}", r.message);
            assert!(matches!(
                &r.request,
                Some(lk::request_response::Request::AddTrack(a)) if a.cid == "cam"
            ));
        }
        other => panic!("{other:?}"),
    }
    assert!(sent_to(&out, &bob).is_empty());
    assert!(h.room.participant(&alice).unwrap().tracks.is_empty());
    assert!(media(&out).is_empty());
}

#[test]
fn publishing_needs_permission() {
    let mut h = Harness::new();
    let alice = h.join(
        "alice",
        VideoGrant {
            can_publish: Some(false),
            ..grant()
        },
        "",
    );
    h.drain();
    let out = h.req(&alice, audio_track("c"));
    match &sent_to(&out, &alice)[..] {
        [Resp::RequestResponse(r)] => {
            assert_eq!(r.reason(), lk::request_response::Reason::NotAllowed)
        }
        other => panic!("{other:?}"),
    }
    // Sources: microphone only, so screen-share audio is refused.
    let bob = h.join(
        "bob",
        VideoGrant {
            can_publish_sources: vec!["microphone".into()],
            ..grant()
        },
        "",
    );
    h.drain();
    let out = h.req(
        &bob,
        Req::AddTrack(lk::AddTrackRequest {
            cid: "s".into(),
            source: lk::TrackSource::ScreenShareAudio as i32,
            ..Default::default()
        }),
    );
    assert!(matches!(
        &sent_to(&out, &bob)[..],
        [Resp::RequestResponse(_)]
    ));
    let out = h.req(&bob, audio_track("m"));
    assert!(matches!(&sent_to(&out, &bob)[0], Resp::TrackPublished(_)));
}

#[test]
fn leave_sends_disconnected_and_the_last_one_empties_the_room() {
    let mut h = Harness::new();
    let alice = h.joined("alice");
    let bob = h.joined("bob");
    h.req(&bob, audio_track("b"));
    let out = h.req(&bob, Req::Leave(lk::LeaveRequest::default()));
    let up = updates_to(&out, &alice);
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].sid, bob.as_str());
    assert_eq!(up[0].state(), lk::participant_info::State::Disconnected);
    assert_eq!(
        up[0].disconnect_reason(),
        lk::DisconnectReason::ClientInitiated
    );
    assert!(out.contains(&SignalOutput::Close {
        pid: bob.clone(),
        reason: lk::DisconnectReason::ClientInitiated,
    }));
    let m = media(&out);
    assert!(m.iter().any(
        |r| matches!(r, MediaRequest::Unsubscribe { subscriber, .. } if subscriber == &alice)
    ));
    assert!(m.contains(&MediaRequest::ParticipantLeft {
        pid: bob.clone(),
        reason: lk::DisconnectReason::ClientInitiated,
    }));
    assert!(!out.contains(&SignalOutput::RoomEmpty));
    assert!(h.room.participant(&bob).is_none());
    assert!(matches!(
        h.room.handle_request(&bob, &request(Req::Ping(1)), h.now),
        Err(SignalError::UnknownParticipant(_))
    ));
    // A client cannot choose the reason the others are told.
    let out = h.req(
        &alice,
        Req::Leave(lk::LeaveRequest {
            reason: lk::DisconnectReason::DuplicateIdentity as i32,
            ..Default::default()
        }),
    );
    assert!(out.contains(&SignalOutput::Close {
        pid: alice.clone(),
        reason: lk::DisconnectReason::ClientInitiated,
    }));
    assert_eq!(out.last(), Some(&SignalOutput::RoomEmpty));
}

#[test]
fn ping_and_ping_req_are_answered_with_our_time() {
    let mut h = Harness::new();
    let alice = h.joined("alice");
    h.advance(Duration::from_millis(2345));
    let out = h.req(&alice, Req::Ping(77));
    assert_eq!(sent_to(&out, &alice), [Resp::Pong(T0_MS + 2345)]);
    let out = h.req(
        &alice,
        Req::PingReq(lk::Ping {
            timestamp: 1234,
            rtt: 20,
        }),
    );
    assert_eq!(
        sent_to(&out, &alice),
        [Resp::PongResp(lk::Pong {
            last_ping_timestamp: 1234,
            timestamp: T0_MS + 2345,
        })]
    );
}

#[test]
fn a_silent_client_is_closed_after_the_ping_timeout() {
    let mut h = Harness::new();
    let alice = h.joined("alice");
    let bob = h.joined("bob");
    assert_eq!(h.room.poll_timeout(), Some(h.t0 + Duration::from_secs(15)));
    // Alice pings every 5 s; bob says nothing.
    for _ in 0..3 {
        h.advance(Duration::from_secs(5));
        h.req(&alice, Req::Ping(0));
        let due = h.room.poll_timeout().unwrap();
        if due <= h.now {
            h.room.handle_timeout(h.now);
        }
    }
    let out = h.drain();
    assert!(out.contains(&SignalOutput::Close {
        pid: bob.clone(),
        reason: lk::DisconnectReason::ConnectionTimeout,
    }));
    let up = updates_to(&out, &alice);
    assert_eq!(up[0].state(), lk::participant_info::State::Disconnected);
    assert!(h.room.participant(&alice).is_some());
    assert_eq!(
        h.room.poll_timeout(),
        Some(h.now + Duration::from_secs(15)),
        "alice's timer, re-armed by her last ping"
    );
    // Not a moment early: 1 ms before her deadline she is still there.
    h.advance(Duration::from_millis(14_999));
    h.room.handle_timeout(h.now);
    assert!(h.drain().is_empty());
    h.advance(Duration::from_millis(1));
    h.room.handle_timeout(h.now);
    assert!(h.room.participant(&alice).is_none());
    assert_eq!(h.drain().last(), Some(&SignalOutput::RoomEmpty));
    assert_eq!(h.room.poll_timeout(), None);
}

#[test]
fn duplicate_identity_replaces_the_old_session() {
    let mut h = Harness::new();
    let bob = h.joined("bob");
    let old = h.joined("alice");
    let new = h.join("alice", grant(), "");
    let out = h.drain();
    assert_ne!(old, new);
    let to_old = sent_to(&out, &old);
    match &to_old[..] {
        [Resp::Leave(l)] => {
            assert_eq!(l.reason(), lk::DisconnectReason::DuplicateIdentity);
            assert!(!l.can_reconnect);
        }
        other => panic!("{other:?}"),
    }
    assert!(out.contains(&SignalOutput::Close {
        pid: old.clone(),
        reason: lk::DisconnectReason::DuplicateIdentity,
    }));
    let up = updates_to(&out, &bob);
    assert_eq!(up.len(), 2);
    assert_eq!(
        (up[0].sid.as_str(), up[0].state()),
        (old.as_str(), lk::participant_info::State::Disconnected)
    );
    assert_eq!(
        (up[1].sid.as_str(), up[1].state()),
        (new.as_str(), lk::participant_info::State::Joined)
    );
    let j = join_response(&out, &new);
    assert_eq!(j.other_participants.len(), 1, "only bob, not the old alice");
    assert_eq!(h.room.find_identity("alice"), Some(&new));
    assert!(!out.contains(&SignalOutput::RoomEmpty));
    // Alone in the room and replaced: the room never looks empty.
    let mut h = Harness::new();
    let first = h.joined("solo");
    let second = h.join("solo", grant(), "");
    let out = h.drain();
    assert_ne!(first, second);
    assert!(out.contains(&SignalOutput::Close {
        pid: first,
        reason: lk::DisconnectReason::DuplicateIdentity,
    }));
    assert!(!out.contains(&SignalOutput::RoomEmpty), "{out:?}");
}

#[test]
fn hidden_participant_is_not_announced() {
    let mut h = Harness::new();
    let alice = h.joined("alice");
    let rec = h.join(
        "recorder",
        VideoGrant {
            hidden: true,
            ..grant()
        },
        "",
    );
    let out = h.drain();
    assert!(sent_to(&out, &alice).is_empty());
    let j = join_response(&out, &rec);
    assert_eq!(j.other_participants.len(), 1, "the hidden one sees alice");
    assert!(j.participant.unwrap().permission.unwrap().hidden);
    assert_eq!(j.room.unwrap().num_participants, 1, "not counted");
    // It publishes: still nobody hears of it, though it gets its answer.
    let out = h.req(&rec, audio_track("r"));
    assert!(sent_to(&out, &alice).is_empty());
    assert!(matches!(&sent_to(&out, &rec)[0], Resp::TrackPublished(_)));
    // A later joiner does not see it; its leaving is silent too.
    let bob = h.join("bob", grant(), "");
    let out = h.drain();
    let j = join_response(&out, &bob);
    assert!(j
        .other_participants
        .iter()
        .all(|p| p.identity != "recorder"));
    let out = h.req(&rec, Req::Leave(lk::LeaveRequest::default()));
    assert!(sent_to(&out, &alice).is_empty() && sent_to(&out, &bob).is_empty());
    // A hidden SIP participant likewise.
    h.sip(true);
    let out = h.drain();
    assert!(sent_to(&out, &alice).is_empty());
}

#[test]
fn a_bad_frame_closes_that_session_only() {
    let mut h = Harness::new();
    let alice = h.joined("alice");
    let bob = h.joined("bob");
    let err = h
        .room
        .handle_request(&bob, &[0x0a, 0xff, 0xff, 0xff], h.now)
        .unwrap_err();
    assert!(matches!(err, SignalError::Decode(_)), "{err}");
    let out = h.drain();
    assert!(out
        .iter()
        .any(|o| matches!(o, SignalOutput::Close { pid, .. } if pid == &bob)));
    assert_eq!(
        updates_to(&out, &alice)[0].state(),
        lk::participant_info::State::Disconnected
    );
    // Alice is undisturbed.
    let out = h.req(&alice, Req::Ping(1));
    assert_eq!(sent_to(&out, &alice).len(), 1);
    // An oversized frame is refused before decoding.
    let big = vec![0u8; SignalConfig::default().max_frame + 1];
    assert!(matches!(
        h.room.handle_request(&alice, &big, h.now),
        Err(SignalError::FrameTooLarge { .. })
    ));
    assert!(h.room.participant(&alice).is_none());
}

/// The Python SDK 1.2.1's real join request, through `join`.
#[test]
fn golden_python_v1_join_request_joins_and_offers() {
    let mut h = Harness::new();
    let value = include_str!("../testdata/python-sdk-1.2.1-join-request.txt").trim();
    let req = ConnectRequest::parse(
        &format!("/rtc/v1?join_request={value}"),
        Some("Bearer a.b.c"),
    )
    .unwrap();
    let pid = h
        .room
        .join(&admission("agent", grant()), &req, h.now)
        .unwrap();
    let out = h.drain();
    let j = join_response(&out, &pid);
    let me = j.participant.unwrap();
    assert_eq!(me.client_protocol, 2);
    assert!(me
        .capabilities
        .contains(&(lk::client_info::Capability::CapCompressionDeflateRaw as i32)));
    match &media(&out)[..] {
        [MediaRequest::AcceptOffer { pid: p, sdp, id }] => {
            assert_eq!(p, &pid);
            assert_eq!(*id, 0);
            assert_eq!(sdp.matches("m=audio").count(), 3);
            assert!(sdp.contains("m=application"));
        }
        other => panic!("{other:?}"),
    }
    // The str0m peer answers: same id, mids mapped.
    let mids = HashMap::from([("0".to_owned(), "TR_x".to_owned())]);
    h.room
        .send_answer(&pid, "v=0\r\n".into(), 0, mids.clone())
        .unwrap();
    let out = h.drain();
    match &sent_to(&out, &pid)[..] {
        [Resp::Answer(a)] => {
            assert_eq!((a.r#type.as_str(), a.id), ("answer", 0));
            assert_eq!(a.mid_to_track_id, mids);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn gzip_bomb_join_request_is_refused() {
    use std::io::Write as _;
    let mut h = Harness::new();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&vec![0u8; 50_000_000]).unwrap();
    let wrapped = lk::WrappedJoinRequest {
        compression: lk::wrapped_join_request::Compression::Gzip as i32,
        join_request: enc.finish().unwrap(),
    };
    let value = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE,
        wrapped.encode_to_vec(),
    );
    let req = ConnectRequest::parse(&format!("/rtc/v1?join_request={value}"), None).unwrap();
    let err = h
        .room
        .join(&admission("alice", grant()), &req, h.now)
        .unwrap_err();
    assert!(
        matches!(
            err,
            JoinRefusal::JoinRequest(JoinRequestError::InflatedTooLarge)
        ),
        "{err}"
    );
    assert_eq!(err.http_status(), 400);
    assert_eq!(h.room.participants().count(), 0);
    assert!(h.drain().is_empty());
    // And a v1 connection without join_request.
    let req = ConnectRequest::parse("/rtc/v1", None).unwrap();
    assert!(matches!(
        h.room.join(&admission("alice", grant()), &req, h.now),
        Err(JoinRefusal::MissingJoinRequest)
    ));
}

#[test]
fn mute_is_announced_and_told_to_the_media_layer() {
    let mut h = Harness::new();
    let alice = h.joined("alice");
    let bob = h.joined("bob");
    let out = h.req(&alice, audio_track("a"));
    let v = updates_to(&out, &bob)[0].version;
    let track = h.room.participant(&alice).unwrap().tracks[0].sid.clone();
    let out = h.req(
        &alice,
        Req::Mute(lk::MuteTrackRequest {
            sid: track.clone(),
            muted: true,
        }),
    );
    let up = updates_to(&out, &bob);
    assert!(up[0].tracks[0].muted && up[0].version > v);
    assert_eq!(
        media(&out),
        [MediaRequest::TrackMuted {
            pid: alice.clone(),
            track: TrackSid(track.clone()),
            muted: true,
        }]
    );
    // Unknown track: refused, nothing announced.
    let out = h.req(
        &alice,
        Req::Mute(lk::MuteTrackRequest {
            sid: "TR_nope".into(),
            muted: true,
        }),
    );
    assert!(updates_to(&out, &bob).is_empty());
    assert!(
        matches!(&sent_to(&out, &alice)[..], [Resp::RequestResponse(r)]
        if r.reason() == lk::request_response::Reason::NotFound)
    );
}

#[test]
fn the_server_can_mute_a_published_track() {
    let mut h = Harness::new();
    let alice = h.joined("alice");
    let bob = h.joined("bob");
    h.req(&alice, audio_track("a"));
    let track = TrackSid(h.room.participant(&alice).unwrap().tracks[0].sid.clone());
    assert!(
        !h.room.mute_published_track(&bob, &track, true),
        "not bob's"
    );
    assert!(h.room.mute_published_track(&alice, &track, true));
    assert!(
        !h.room.mute_published_track(&alice, &track, true),
        "no change"
    );
    let out = h.drain();
    match &sent_to(&out, &alice)[..] {
        [Resp::Mute(m), Resp::Update(_)] => assert!(m.muted && m.sid == track.as_str()),
        other => panic!("{other:?}"),
    }
    assert!(updates_to(&out, &bob)[0].tracks[0].muted);
    assert!(media(&out).contains(&MediaRequest::TrackMuted {
        pid: alice.clone(),
        track,
        muted: true,
    }));
}

#[test]
fn metadata_and_attributes_need_permission() {
    let mut h = Harness::new();
    let bob = h.joined("bob");
    let alice = h.joined("alice");
    let update = |request_id| {
        Req::UpdateMetadata(lk::UpdateParticipantMetadata {
            metadata: "{\"mood\":1}".into(),
            name: "Alice A.".into(),
            attributes: HashMap::from([("team".to_owned(), "blue".to_owned())]),
            request_id,
        })
    };
    let out = h.req(&alice, update(9));
    match &sent_to(&out, &alice)[..] {
        [Resp::RequestResponse(r)] => {
            assert_eq!(r.request_id, 9);
            assert_eq!(r.reason(), lk::request_response::Reason::NotAllowed);
        }
        other => panic!("{other:?}"),
    }
    assert!(sent_to(&out, &bob).is_empty());

    let carol = h.join(
        "carol",
        VideoGrant {
            can_update_own_metadata: Some(true),
            ..grant()
        },
        "",
    );
    h.drain();
    let v = h.room.participant(&carol).unwrap().version;
    let out = h.req(&carol, update(10));
    for to in [&bob, &alice, &carol] {
        let up = updates_to(&out, to);
        assert_eq!(up.len(), 1, "{to}");
        assert_eq!(up[0].metadata, "{\"mood\":1}");
        assert_eq!(up[0].name, "Alice A.");
        assert_eq!(up[0].attributes["team"], "blue");
        assert_eq!(up[0].version, v + 1);
    }
    // An empty value deletes the attribute; the same again changes nothing.
    let clear = Req::UpdateMetadata(lk::UpdateParticipantMetadata {
        attributes: HashMap::from([("team".to_owned(), String::new())]),
        ..Default::default()
    });
    let out = h.req(&carol, clear.clone());
    assert!(updates_to(&out, &bob)[0].attributes.is_empty());
    assert!(h.req(&carol, clear).is_empty());
    // Too large.
    let out = h.req(
        &carol,
        Req::UpdateMetadata(lk::UpdateParticipantMetadata {
            metadata: "x".repeat(SignalConfig::default().max_metadata + 1),
            ..Default::default()
        }),
    );
    assert!(
        matches!(&sent_to(&out, &carol)[..], [Resp::RequestResponse(r)]
        if r.reason() == lk::request_response::Reason::LimitExceeded)
    );
}

#[test]
fn explicit_subscriptions_without_auto_subscribe() {
    let mut h = Harness::new();
    let alice = h.joined("alice");
    let bob = h.join("bob", grant(), "auto_subscribe=0");
    h.drain();
    let out = h.req(&alice, audio_track("a"));
    let track = TrackSid(h.room.participant(&alice).unwrap().tracks[0].sid.clone());
    assert!(media(&out).is_empty(), "bob did not ask");
    let sub = |subscribe, sid: &str| {
        Req::Subscription(lk::UpdateSubscription {
            track_sids: vec![sid.to_owned()],
            subscribe,
            participant_tracks: vec![],
        })
    };
    let out = h.req(&bob, sub(true, track.as_str()));
    assert_eq!(
        media(&out),
        [MediaRequest::Subscribe {
            subscriber: bob.clone(),
            publisher: alice.clone(),
            track: track.clone(),
        }]
    );
    assert!(
        h.req(&bob, sub(true, track.as_str())).is_empty(),
        "idempotent"
    );
    let out = h.req(&bob, sub(false, track.as_str()));
    assert_eq!(
        media(&out),
        [MediaRequest::Unsubscribe {
            subscriber: bob.clone(),
            track: track.clone(),
        }]
    );
    assert_eq!(h.room.subscribers(&track).count(), 0);
    let out = h.req(&bob, sub(true, "TR_unknown"));
    match &sent_to(&out, &bob)[..] {
        [Resp::SubscriptionResponse(r)] => {
            assert_eq!(r.track_sid, "TR_unknown");
            assert_eq!(r.err(), lk::SubscriptionError::SeTrackNotfound);
        }
        other => panic!("{other:?}"),
    }
    // A participant that may not subscribe is never subscribed.
    let carol = h.join(
        "carol",
        VideoGrant {
            can_subscribe: Some(false),
            ..grant()
        },
        "",
    );
    let out = h.drain();
    assert!(media(&out).is_empty());
    assert!(media(&h.req(&carol, sub(true, track.as_str()))).is_empty());
}

#[test]
fn sdp_and_candidates_pass_through_to_the_webrtc_layer() {
    let mut h = Harness::new();
    let alice = h.joined("alice");
    let sd = |t: &str, id| lk::SessionDescription {
        r#type: t.into(),
        sdp: format!("v=0 {t}"),
        id,
        mid_to_track_id: HashMap::new(),
    };
    let out = h.req(&alice, Req::Offer(sd("offer", 3)));
    assert_eq!(
        media(&out),
        [MediaRequest::AcceptOffer {
            pid: alice.clone(),
            sdp: "v=0 offer".into(),
            id: 3,
        }]
    );
    let out = h.req(&alice, Req::Answer(sd("answer", 4)));
    assert_eq!(
        media(&out),
        [MediaRequest::AcceptAnswer {
            pid: alice.clone(),
            sdp: "v=0 answer".into(),
            id: 4,
        }]
    );
    let out = h.req(
        &alice,
        Req::Trickle(lk::TrickleRequest {
            candidate_init: "{\"candidate\":\"candidate:1 1 udp 1 1.2.3.4 5 typ host\"}".into(),
            target: lk::SignalTarget::Subscriber as i32,
            r#final: false,
        }),
    );
    assert!(
        matches!(&media(&out)[..], [MediaRequest::RemoteCandidate { target, last: false, candidate_init, .. }]
        if *target == lk::SignalTarget::Subscriber && candidate_init.contains("typ host"))
    );
    h.room
        .send_candidate(&alice, "{}".into(), lk::SignalTarget::Publisher)
        .unwrap();
    h.room
        .send_offer(&alice, "v=0".into(), 1, HashMap::new())
        .unwrap();
    h.room.require_media_sections(&alice, 4).unwrap();
    let out = h.drain();
    match &sent_to(&out, &alice)[..] {
        [Resp::Trickle(t), Resp::Offer(o), Resp::MediaSectionsRequirement(m)] => {
            assert_eq!(t.target(), lk::SignalTarget::Publisher);
            assert_eq!((o.r#type.as_str(), o.id), ("offer", 1));
            assert_eq!(m.num_audios, 4);
        }
        other => panic!("{other:?}"),
    }
    let ghost = ParticipantSid("PA_ghost".into());
    assert!(h
        .room
        .send_answer(&ghost, String::new(), 0, HashMap::new())
        .is_err());
}

#[test]
fn participant_versions_only_grow() {
    let mut h = Harness::new();
    let watcher = h.joined("watcher");
    let alice = h.join(
        "alice",
        VideoGrant {
            can_update_own_metadata: Some(true),
            ..grant()
        },
        "",
    );
    let mut outputs = h.drain();
    outputs.extend(h.req(&alice, audio_track("a")));
    let track = h.room.participant(&alice).unwrap().tracks[0].sid.clone();
    for (i, muted) in [true, false, true].into_iter().enumerate() {
        outputs.extend(h.req(
            &alice,
            Req::Mute(lk::MuteTrackRequest {
                sid: track.clone(),
                muted,
            }),
        ));
        outputs.extend(h.req(
            &alice,
            Req::UpdateMetadata(lk::UpdateParticipantMetadata {
                metadata: format!("m{i}"),
                ..Default::default()
            }),
        ));
    }
    h.room.set_active(&alice);
    outputs.extend(h.drain());
    outputs.extend(h.req(&alice, Req::Leave(lk::LeaveRequest::default())));
    let versions: Vec<u32> = updates_to(&outputs, &watcher)
        .iter()
        .filter(|p| p.sid == alice.as_str())
        .map(|p| p.version)
        .collect();
    assert_eq!(versions.len(), 10, "{versions:?}");
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
}

#[test]
fn speakers_changed_when_who_speaks_changes() {
    let mut h = Harness::new();
    let alice = h.joined("alice");
    let bob = h.joined("bob");
    h.room
        .report_levels(&[(alice.clone(), 0.5), (bob.clone(), 0.0)]);
    let out = h.drain();
    match &sent_to(&out, &bob)[..] {
        [Resp::SpeakersChanged(s)] => {
            assert_eq!(s.speakers.len(), 1);
            assert_eq!(s.speakers[0].sid, alice.as_str());
            assert!(s.speakers[0].active && s.speakers[0].level == 0.5);
        }
        other => panic!("{other:?}"),
    }
    h.room.report_levels(&[(alice.clone(), 0.6)]);
    assert!(h.drain().is_empty(), "same speakers: nothing");
    h.room.report_levels(&[(bob.clone(), 0.3)]);
    let out = h.drain();
    match &sent_to(&out, &alice)[..] {
        [Resp::SpeakersChanged(s)] => {
            let v: Vec<(&str, bool)> = s
                .speakers
                .iter()
                .map(|s| (s.sid.as_str(), s.active))
                .collect();
            assert_eq!(v, [(bob.as_str(), true), (alice.as_str(), false)]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn room_metadata_goes_out_as_room_update() {
    let mut h = Harness::new();
    let alice = h.joined("alice");
    h.room.set_room_metadata("{\"topic\":\"support\"}");
    let out = h.drain();
    match &sent_to(&out, &alice)[..] {
        [Resp::RoomUpdate(u)] => {
            let room = u.room.as_ref().unwrap();
            assert_eq!(room.metadata, "{\"topic\":\"support\"}");
            assert_eq!(room.sid, h.room.room().sid);
        }
        other => panic!("{other:?}"),
    }
    h.room.set_room_metadata("{\"topic\":\"support\"}");
    assert!(h.drain().is_empty());
}

#[test]
fn resume_with_the_sid_gets_a_reconnect_response() {
    let mut h = Harness::new();
    let alice = h.joined("alice");
    let again = h
        .room
        .join(
            &admission("alice", grant()),
            &v0(&format!("reconnect=1&sid={alice}")),
            h.now,
        )
        .unwrap();
    assert_eq!(again, alice);
    let out = h.drain();
    assert!(
        matches!(&sent_to(&out, &alice)[..], [Resp::Reconnect(r), Resp::Update(_)] if r.server_info.is_some())
    );
    let err = h
        .room
        .join(
            &admission("alice", grant()),
            &v0("reconnect=1&sid=PA_unknown"),
            h.now,
        )
        .unwrap_err();
    assert!(matches!(err, JoinRefusal::StateMismatch(_)));
    match decode_frame(&err.leave_frame()) {
        Resp::Leave(l) => {
            assert_eq!(l.reason(), lk::DisconnectReason::StateMismatch);
            assert_eq!(l.action(), lk::leave_request::Action::Reconnect);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_dropped_socket_may_resume_within_the_grace_period() {
    let mut h = Harness::new();
    let alice = h.joined("alice");
    let bob = h.joined("bob");
    h.room.connection_lost(&bob, h.now);
    assert!(h.drain().is_empty(), "nobody is told yet");
    assert_eq!(h.room.poll_timeout(), Some(h.now + Duration::from_secs(10)));
    // While away, frames for bob are dropped and his requests refused.
    h.req(&alice, audio_track("a"));
    assert!(matches!(
        h.room.handle_request(&bob, &request(Req::Ping(1)), h.now),
        Err(SignalError::UnknownParticipant(_))
    ));
    h.advance(Duration::from_secs(9));
    let again = h
        .room
        .join(
            &admission("bob", grant()),
            &v0(&format!("reconnect=1&sid={bob}")),
            h.now,
        )
        .unwrap();
    assert_eq!(again, bob);
    let out = h.drain();
    match &sent_to(&out, &bob)[..] {
        [Resp::Reconnect(_), Resp::Update(u)] => {
            let alice_now = u
                .participants
                .iter()
                .find(|p| p.sid == alice.as_str())
                .unwrap();
            assert_eq!(alice_now.tracks.len(), 1, "what he missed");
        }
        other => panic!("{other:?}"),
    }
    assert!(sent_to(&out, &alice).is_empty());
    // The grace timer is gone; the ping timer is back.
    h.advance(Duration::from_secs(2));
    h.room.handle_timeout(h.now);
    assert!(h.room.participant(&bob).is_some());
    // Dropped again, and this time it does not come back (alice keeps
    // pinging).
    h.req(&alice, Req::Ping(0));
    h.room.connection_lost(&bob, h.now);
    h.advance(Duration::from_secs(10));
    h.room.handle_timeout(h.now);
    assert!(h.room.participant(&alice).is_some());
    let out = h.drain();
    let up = updates_to(&out, &alice);
    assert_eq!(up[0].sid, bob.as_str());
    assert_eq!(up[0].disconnect_reason(), lk::DisconnectReason::SignalClose);
    assert!(
        !out.iter().any(|o| matches!(o, SignalOutput::Close { .. })),
        "the socket is already gone"
    );
}

#[test]
fn connection_lost_and_removal() {
    let mut h = Harness::new();
    h.room.config.reconnect_grace = Duration::ZERO;
    let alice = h.joined("alice");
    let bob = h.joined("bob");
    h.room.connection_lost(&bob, h.now);
    let out = h.drain();
    assert!(
        !out.iter().any(|o| matches!(o, SignalOutput::Close { .. })),
        "the socket is already gone"
    );
    assert_eq!(
        updates_to(&out, &alice)[0].disconnect_reason(),
        lk::DisconnectReason::SignalClose
    );
    let (caller, _) = h.sip(false);
    h.drain();
    assert!(h.room.has_sip_participant());
    h.room
        .remove_participant(&caller, lk::DisconnectReason::ParticipantRemoved);
    assert!(!h.room.has_sip_participant(), "the caller left");
    let out = h.drain();
    assert!(media(&out).contains(&MediaRequest::ParticipantLeft {
        pid: caller.clone(),
        reason: lk::DisconnectReason::ParticipantRemoved,
    }));
    h.room
        .remove_participant(&alice, lk::DisconnectReason::RoomDeleted);
    let out = h.drain();
    assert!(matches!(&sent_to(&out, &alice)[..], [Resp::Leave(l)]
        if l.reason() == lk::DisconnectReason::RoomDeleted));
    assert_eq!(out.last(), Some(&SignalOutput::RoomEmpty));
}

#[test]
fn unpublish_drops_subscriptions_and_is_announced() {
    let mut h = Harness::new();
    let alice = h.joined("alice");
    let bob = h.joined("bob");
    h.req(&alice, audio_track("a"));
    assert_eq!(h.room.room().num_publishers, 1);
    let track = TrackSid(h.room.participant(&alice).unwrap().tracks[0].sid.clone());
    assert!(!h.room.unpublish_track(&bob, &track), "not bob's");
    assert!(h.room.unpublish_track(&alice, &track));
    let out = h.drain();
    assert!(
        matches!(&sent_to(&out, &alice)[..], [Resp::TrackUnpublished(t), Resp::Update(_)] if t.track_sid == track.as_str())
    );
    let up = updates_to(&out, &bob);
    assert!(up[0].tracks.is_empty() && !up[0].is_publisher);
    assert_eq!(
        media(&out),
        [MediaRequest::Unsubscribe {
            subscriber: bob.clone(),
            track: track.clone(),
        }]
    );
    assert_eq!(h.room.publisher(&track), None);
    assert_eq!(h.room.room().num_publishers, 0);
}

#[test]
fn a_hidden_publishers_tracks_reach_nobody() {
    let mut h = Harness::new();
    let alice = h.joined("alice");
    let rec = h.join(
        "recorder",
        VideoGrant {
            hidden: true,
            ..grant()
        },
        "",
    );
    h.drain();
    let out = h.req(&rec, audio_track("r"));
    assert!(media(&out).is_empty(), "alice is not auto-subscribed");
    let track = h.room.participant(&rec).unwrap().tracks[0].sid.clone();
    let out = h.req(
        &alice,
        Req::Subscription(lk::UpdateSubscription {
            track_sids: vec![track],
            subscribe: true,
            participant_tracks: vec![],
        }),
    );
    assert!(media(&out).is_empty());
    assert!(matches!(
        &sent_to(&out, &alice)[..],
        [Resp::SubscriptionResponse(_)]
    ));
    // A later joiner is not subscribed either; the hidden one hears alice.
    h.req(&alice, audio_track("a"));
    let alice_track = TrackSid(h.room.participant(&alice).unwrap().tracks[0].sid.clone());
    assert!(h.room.subscribers(&alice_track).any(|s| s == &rec));
    let bob = h.join("bob", grant(), "");
    let out = h.drain();
    assert_eq!(
        media(&out),
        [MediaRequest::Subscribe {
            subscriber: bob.clone(),
            publisher: alice.clone(),
            track: alice_track,
        }]
    );
}

/// Peer input never panics the room, whatever the bytes.
mod props {
    use super::*;
    use proptest::prelude::*;

    fn valid_request() -> impl Strategy<Value = Req> {
        prop_oneof![
            any::<i64>().prop_map(Req::Ping),
            (any::<i64>(), any::<i64>())
                .prop_map(|(timestamp, rtt)| Req::PingReq(lk::Ping { timestamp, rtt })),
            ("[a-z]{0,4}", 0i32..4, 0i32..6, any::<bool>()).prop_map(|(cid, t, source, muted)| {
                Req::AddTrack(lk::AddTrackRequest {
                    cid,
                    r#type: t,
                    source,
                    muted,
                    ..Default::default()
                })
            }),
            ("TR_[a-zA-Z0-9]{0,12}", any::<bool>())
                .prop_map(|(sid, muted)| Req::Mute(lk::MuteTrackRequest { sid, muted })),
            (
                "[a-z]{0,8}",
                proptest::collection::hash_map("[a-z]{0,3}", "[a-z]{0,3}", 0..4)
            )
                .prop_map(|(metadata, attributes)| Req::UpdateMetadata(
                    lk::UpdateParticipantMetadata {
                        metadata,
                        attributes,
                        ..Default::default()
                    }
                )),
            ("TR_[a-zA-Z0-9]{0,12}", any::<bool>()).prop_map(|(sid, subscribe)| {
                Req::Subscription(lk::UpdateSubscription {
                    track_sids: vec![sid],
                    subscribe,
                    participant_tracks: vec![],
                })
            }),
            Just(Req::Leave(lk::LeaveRequest::default())),
        ]
    }

    proptest! {
        #[test]
        fn any_frame_never_panics(frame in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut h = Harness::new();
            let alice = h.joined("alice");
            let bob = h.joined("bob");
            let result = h.room.handle_request(&bob, &frame, h.now);
            let out = h.drain();
            // Whatever happened to bob, alice only ever hears of bob.
            for p in updates_to(&out, &alice) {
                prop_assert_eq!(p.sid.as_str(), bob.as_str());
            }
            if result.is_err() {
                prop_assert!(h.room.participant(&bob).is_none());
                prop_assert!(h.room.participant(&alice).is_some());
            }
        }

        #[test]
        fn any_join_request_value_never_panics(value in "[A-Za-z0-9_=%-]{0,200}") {
            let mut h = Harness::new();
            let req = ConnectRequest::parse(&format!("/rtc/v1?join_request={value}"), None).unwrap();
            let _ = h.room.join(&admission("alice", grant()), &req, h.now);
        }

        #[test]
        fn any_data_packet_never_panics(packet in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut h = Harness::new();
            let alice = h.joined("alice");
            h.joined("bob");
            let _ = h.room.route_data(&alice, &packet, true);
        }

        /// Random request sequences: every version alice's watcher sees of
        /// her grows strictly.
        #[test]
        fn versions_grow_under_any_request_sequence(
            requests in proptest::collection::vec(valid_request(), 1..30)
        ) {
            let mut h = Harness::new();
            let watcher = h.joined("watcher");
            let alice = h.join("alice", VideoGrant { can_update_own_metadata: Some(true), ..grant() }, "");
            let mut out = h.drain();
            for r in requests {
                if h.room.participant(&alice).is_none() {
                    break;
                }
                h.room.handle_request(&alice, &request(r), h.now).unwrap();
                out.extend(h.drain());
            }
            let versions: Vec<u32> = updates_to(&out, &watcher)
                .iter()
                .filter(|p| p.sid == alice.as_str())
                .map(|p| p.version)
                .collect();
            prop_assert!(versions.windows(2).all(|w| w[0] < w[1]), "{:?}", versions);
        }
    }
}

mod data_routing {
    use super::*;

    fn user_packet(to: &[&str], topic: &str) -> Vec<u8> {
        lk::DataPacket {
            participant_identity: "spoofed".into(),
            destination_identities: to.iter().map(|s| s.to_string()).collect(),
            value: Some(lk::data_packet::Value::User(lk::UserPacket {
                payload: b"hello".to_vec(),
                topic: Some(topic.into()),
                ..Default::default()
            })),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn user_packets_go_to_the_named_identities_or_everyone_else() {
        let mut h = Harness::new();
        let alice = h.joined("alice");
        let bob = h.joined("bob");
        let carol = h.joined("carol");
        let r = h
            .room
            .route_data(&alice, &user_packet(&["carol"], "chat"), true)
            .unwrap();
        assert_eq!(r.to, std::slice::from_ref(&carol));
        assert!(r.reliable);
        let dp = lk::DataPacket::decode(r.packet.as_slice()).unwrap();
        assert_eq!(dp.participant_identity, "alice", "never the client's claim");
        assert_eq!(dp.participant_sid, alice.as_str());
        match dp.value {
            Some(lk::data_packet::Value::User(u)) => {
                assert_eq!(u.payload, b"hello");
                assert_eq!(u.topic.as_deref(), Some("chat"));
            }
            other => panic!("{other:?}"),
        }
        let r = h
            .room
            .route_data(&alice, &user_packet(&[], "t"), false)
            .unwrap();
        let mut to = r.to.clone();
        to.sort();
        let mut expected = vec![bob.clone(), carol.clone()];
        expected.sort();
        assert_eq!(to, expected, "everyone but the sender");
        assert!(!r.reliable);
        let r = h
            .room
            .route_data(&alice, &user_packet(&["nobody"], "t"), true)
            .unwrap();
        assert!(r.to.is_empty());
        // Older SDKs address the deprecated UserPacket fields.
        #[allow(deprecated)]
        let old_style = lk::DataPacket {
            value: Some(lk::data_packet::Value::User(lk::UserPacket {
                payload: b"x".to_vec(),
                destination_sids: vec![bob.as_str().to_owned()],
                ..Default::default()
            })),
            ..Default::default()
        }
        .encode_to_vec();
        let r = h.room.route_data(&carol, &old_style, true).unwrap();
        assert_eq!(r.to, std::slice::from_ref(&bob));
        let dp = lk::DataPacket::decode(r.packet.as_slice()).unwrap();
        #[allow(deprecated)]
        let sender = match dp.value {
            Some(lk::data_packet::Value::User(u)) => u.participant_identity,
            other => panic!("{other:?}"),
        };
        assert_eq!(sender, "carol");
    }

    #[test]
    fn data_needs_permission_and_bounded_valid_input() {
        let mut h = Harness::new();
        let mute = h.join(
            "mute",
            VideoGrant {
                can_publish_data: Some(false),
                ..grant()
            },
            "",
        );
        h.drain();
        assert!(matches!(
            h.room.route_data(&mute, &user_packet(&[], "t"), true),
            Err(DataError::NotAllowed(_))
        ));
        let alice = h.joined("alice");
        assert!(matches!(
            h.room.route_data(&alice, &[0x0a, 0xff], true),
            Err(DataError::Decode(_))
        ));
        assert!(matches!(
            h.room
                .route_data(&alice, &vec![0; data::MAX_DATA_PACKET + 1], true),
            Err(DataError::TooLarge(_))
        ));
        let ghost = ParticipantSid("PA_ghost".into());
        assert!(matches!(
            h.room.route_data(&ghost, &user_packet(&[], "t"), true),
            Err(DataError::UnknownParticipant(_))
        ));
    }

    #[test]
    fn dtmf_between_the_caller_and_the_room() {
        let mut h = Harness::new();
        let alice = h.joined("alice");
        let (caller, _) = h.sip(false);
        h.drain();
        // Caller pressed 5: a sip_dtmf packet to alice.
        let r = h.room.sip_dtmf(&caller, '5').unwrap();
        assert_eq!(r.to, std::slice::from_ref(&alice));
        let dp = lk::DataPacket::decode(r.packet.as_slice()).unwrap();
        assert_eq!(dp.participant_identity, "sip_+15550100");
        assert_eq!(
            dp.value,
            Some(lk::data_packet::Value::SipDtmf(lk::SipDtmf {
                code: 5,
                digit: "5".into(),
            }))
        );
        assert!(matches!(
            h.room.sip_dtmf(&caller, 'x'),
            Err(DataError::NotDtmf('x'))
        ));
        // Alice sends '#' to the caller: played on the call, not sent.
        let packet = lk::DataPacket {
            destination_identities: vec!["sip_+15550100".into()],
            value: Some(lk::data_packet::Value::SipDtmf(lk::SipDtmf {
                code: 11,
                digit: "#".into(),
            })),
            ..Default::default()
        }
        .encode_to_vec();
        let r = h.room.route_data(&alice, &packet, true).unwrap();
        assert!(r.to.is_empty());
        assert_eq!(r.dtmf_to_sip, [(caller.clone(), '#')]);
        // A user packet to the caller reaches nobody (no data channel).
        let r = h
            .room
            .route_data(&alice, &user_packet(&["sip_+15550100"], "t"), true)
            .unwrap();
        assert!(r.to.is_empty() && r.dtmf_to_sip.is_empty());
    }
}
