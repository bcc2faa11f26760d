//! The LiveKit signal session (`livekit::signal::RoomSignal`): what one
//! SDK's signaling costs the owner shard.
//!
//! - `ping_req`: one `SignalRequest { ping_req }` frame in, the `pong_resp`
//!   frame out (what every SDK sends every 5 s);
//! - `add_track_10`: a participant publishes in a room of 10 (the
//!   `track_published`, 10 participant updates, 9 auto-subscriptions);
//! - `join_leave_10`: a v0 join into a room of 10 and its leave (the
//!   JoinResponse with 9 others, 2 x 9 updates);
//! - `decode_python_join_request`: the Python SDK 1.2.1's real v1
//!   `join_request=` (base64url, gunzip 1.5 -> 14 KB, protobuf).
//!
//! Run: `cargo bench --bench signal -- --warm-up-time 1 --measurement-time 3`.

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use livekit_protocol as lk;
use prost::Message as _;
use switchboard::livekit::connect::{Admission, ConnectRequest};
use switchboard::livekit::signal::{join_request, RoomSignal, SignalConfig};
use switchboard::livekit::token::{Claims, VideoGrant};

fn admission(identity: &str) -> Admission {
    let mut claims = Claims::new("devkey", identity, 1_800_000_000, 3600);
    claims.video = Some(VideoGrant {
        room_join: true,
        room: "bench".into(),
        ..VideoGrant::default()
    });
    Admission {
        room: "bench".into(),
        identity: identity.into(),
        claims,
    }
}

fn frame(message: lk::signal_request::Message) -> Vec<u8> {
    lk::SignalRequest {
        message: Some(message),
    }
    .encode_to_vec()
}

fn room_of(
    n: usize,
    now: Instant,
) -> (
    RoomSignal,
    Vec<switchboard::livekit::signal::ParticipantSid>,
) {
    let mut room = RoomSignal::new("bench", SignalConfig::default(), 1, 1_800_000_000_000, now);
    let v0 = ConnectRequest::parse("/rtc", None).expect("a valid target");
    let pids = (0..n)
        .map(|i| {
            room.join(&admission(&format!("p{i}")), &v0, now)
                .expect("room has space")
        })
        .collect();
    while room.poll_output().is_some() {}
    (room, pids)
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    let mut g = c.benchmark_group("signal");

    let (mut room, pids) = room_of(10, now);
    let ping = frame(lk::signal_request::Message::PingReq(lk::Ping {
        timestamp: 1,
        rtt: 20,
    }));
    g.bench_function("ping_req", |b| {
        b.iter(|| {
            room.handle_request(&pids[0], black_box(&ping), now)
                .expect("a valid frame");
            black_box(room.poll_output())
        })
    });

    g.bench_function("add_track_10", |b| {
        b.iter_batched(
            || room_of(10, now),
            |(mut room, pids)| {
                let add = frame(lk::signal_request::Message::AddTrack(lk::AddTrackRequest {
                    cid: "mic".into(),
                    r#type: lk::TrackType::Audio as i32,
                    source: lk::TrackSource::Microphone as i32,
                    ..Default::default()
                }));
                room.handle_request(&pids[0], &add, now)
                    .expect("a valid frame");
                let mut n = 0;
                while room.poll_output().is_some() {
                    n += 1;
                }
                black_box(n)
            },
            criterion::BatchSize::SmallInput,
        )
    });

    let (mut room, _) = room_of(9, now);
    let v0 = ConnectRequest::parse("/rtc", None).expect("a valid target");
    let joiner = admission("joiner");
    let leave = frame(lk::signal_request::Message::Leave(
        lk::LeaveRequest::default(),
    ));
    g.bench_function("join_leave_10", |b| {
        b.iter(|| {
            let pid = room.join(&joiner, &v0, now).expect("room has space");
            room.handle_request(&pid, &leave, now)
                .expect("a valid frame");
            let mut n = 0;
            while room.poll_output().is_some() {
                n += 1;
            }
            black_box(n)
        })
    });

    let value = include_str!("../src/livekit/testdata/python-sdk-1.2.1-join-request.txt").trim();
    let encoded = ConnectRequest::parse(&format!("/rtc/v1?join_request={value}"), None)
        .expect("a valid target")
        .join_request
        .expect("the golden value");
    g.bench_function("decode_python_join_request", |b| {
        b.iter(|| join_request::decode(black_box(&encoded)).expect("the golden value decodes"))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
