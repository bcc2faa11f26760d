//! SFU forward benches: one Opus packet from a publisher handed to N
//! subscribers' WebRTC sessions (`livekit::peer::WebRtcPeer`, str0m 0.25)
//! and the resulting SRTP datagrams polled out.
//!
//! Run: `cargo bench --bench forward -- --warm-up-time 1 --measurement-time 3
//! --noplot`. Figures in `docs/benchmarks-forward.md`.
//!
//! Each subscriber is a real, connected session: an in-memory str0m
//! "browser" (full ICE) did ICE + DTLS + SCTP with our ICE-lite peer on
//! virtual time before measuring. One measured iteration = for each of the N
//! subscribers `write_opus` (frame `Writer`, or RTP mode) + `poll` until the
//! deadline; the SRTP datagrams are counted (the bench fails if one is
//! missing) and dropped. Every 25 iterations (0.5 s of virtual time), outside
//! the measurement, the browsers' ICE checks are delivered so consent does
//! not expire (RFC 7675) and str0m keeps sending.
//!
//! Variants:
//! - `frame_shared`: frame mode, the payload `Arc<[u8]>` cloned to each
//!   subscriber (what an SFU hands on from `PeerEvent::Opus`);
//! - `frame_copy`: frame mode, a fresh `Vec<u8>` per subscriber (the copy and
//!   `Arc` allocation `Writer::write(.., impl Into<Arc<[u8]>>)` costs when
//!   given owned bytes);
//! - `rtp_shared`: RTP mode (`set_rtp_mode(true)`, `StreamTx::write_rtp`),
//!   shared `Arc`.
//!
//! Plus the creation of a peer with the shard's shared DTLS certificate or
//! its own, and answering the Python SDK 1.2.1 offer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input, Output, Rtc, RtcConfig};
use switchboard::livekit::peer::{
    Datagram, PeerConfig, PeerKey, PeerOutput, PeerSet, ShardDtls, WebRtcPeer,
};

const TICK: Duration = Duration::from_millis(20);
const PYTHON_OFFER: &str = include_str!("../src/livekit/testdata/python-sdk-1.2.1-offer.sdp");

fn server_addr() -> SocketAddr {
    "10.0.0.1:7882".parse().expect("literal")
}

/// N subscribers on one shard port, each connected to its own browser.
struct Room {
    now: Instant,
    set: PeerSet,
    keys: Vec<PeerKey>,
    mids: Vec<Mid>,
    browsers: Vec<(Rtc, SocketAddr)>,
}

impl Room {
    fn new(n: usize, rtp_mode: bool) -> Room {
        let now = Instant::now();
        let dtls = ShardDtls::generate().expect("certificate");
        let provider = Arc::new(str0m::crypto::from_feature_flags());
        let config = PeerConfig {
            host: server_addr(),
            rtp_mode,
        };
        let mut room = Room {
            now,
            set: PeerSet::new(),
            keys: Vec::new(),
            mids: Vec::new(),
            browsers: Vec::new(),
        };
        for i in 0..n {
            let addr: SocketAddr = format!("10.1.{}.{}:5000", i / 200, 1 + i % 200)
                .parse()
                .expect("address");
            let mut rtc = RtcConfig::new()
                .clear_codecs()
                .enable_opus(true, false)
                .set_crypto_provider(provider.clone())
                .build(now);
            rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
            let mut api = rtc.sdp_api();
            let mid = api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
            api.add_channel("_reliable".into());
            let (offer, pending) = api.apply().expect("offer");
            let mut peer = WebRtcPeer::new(&config, &dtls, now).expect("peer");
            let answer = peer.accept_offer(&offer.to_sdp_string()).expect("answer");
            let answer = SdpAnswer::from_sdp_string(&answer).expect("answer parses");
            rtc.sdp_api()
                .accept_answer(pending, answer)
                .expect("accepted");
            room.keys.push(room.set.insert(peer));
            room.mids.push(mid);
            room.browsers.push((rtc, addr));
        }
        let limit = room.now + Duration::from_secs(10);
        while !room
            .keys
            .iter()
            .all(|&k| room.set.get_mut(k).expect("present").is_connected())
        {
            assert!(room.now < limit, "subscribers did not connect");
            room.pump();
        }
        // Let SCTP and the first RTCP settle.
        for _ in 0..20 {
            room.pump();
        }
        room
    }

    /// One unmeasured network step with zero latency: everything every
    /// endpoint wants to send is delivered, then time moves 1 ms.
    fn pump(&mut self) {
        let mut in_flight: Vec<Datagram> = Vec::new();
        for (rtc, _) in &mut self.browsers {
            while !matches!(poll_browser(rtc, &mut in_flight), Output::Timeout(_)) {}
        }
        for &key in &self.keys {
            let peer = self.set.get_mut(key).expect("present");
            while !matches!(poll_peer(peer, &mut in_flight), PeerOutput::Timeout(_)) {}
        }
        let now = self.now;
        for d in in_flight {
            if d.to == server_addr() {
                let _ = self.set.handle_datagram(d.from, d.to, &d.bytes, now);
            } else if let Some((rtc, _)) = self.browsers.iter_mut().find(|(_, a)| *a == d.to) {
                if let Ok(r) = Receive::new(Protocol::Udp, d.from, d.to, &d.bytes) {
                    let _ = rtc.handle_input(Input::Receive(now, r));
                }
            }
        }
        self.now += Duration::from_millis(1);
        let now = self.now;
        for (rtc, _) in &mut self.browsers {
            let _ = rtc.handle_input(Input::Timeout(now));
        }
        for &key in &self.keys {
            let _ = self.set.get_mut(key).expect("present").handle_timeout(now);
        }
    }
}

/// Poll a browser once; datagrams go to `out`. Returns what it returned.
fn poll_browser(rtc: &mut Rtc, out: &mut Vec<Datagram>) -> Output {
    let o = rtc.poll_output().expect("browser poll");
    if let Output::Transmit(t) = &o {
        out.push(Datagram {
            from: t.source,
            to: t.destination,
            bytes: t.contents.to_vec(),
        });
    }
    o
}

fn poll_peer(peer: &mut WebRtcPeer, out: &mut Vec<Datagram>) -> PeerOutput {
    let o = peer.poll().expect("peer poll");
    if let PeerOutput::Transmit(d) = &o {
        out.push(d.clone());
    }
    o
}

#[derive(Clone, Copy)]
enum Variant {
    FrameShared,
    FrameCopy,
    RtpShared,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::FrameShared => "frame_shared",
            Variant::FrameCopy => "frame_copy",
            Variant::RtpShared => "rtp_shared",
        }
    }
}

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward");
    // A 20 ms Opus frame at ~24 kb/s VOIP: 60 bytes.
    let payload: Arc<[u8]> = (0..60u8).collect::<Vec<u8>>().into();
    for variant in [Variant::FrameShared, Variant::FrameCopy, Variant::RtpShared] {
        for n in [1usize, 10, 100] {
            // Built on first use, so a filtered run (`-- peer/`) skips it.
            let mut room: Option<Room> = None;
            let mut ts: u32 = 0;
            let mut tick: u64 = 0;
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new(variant.name(), n), &n, |b, &n| {
                let room =
                    room.get_or_insert_with(|| Room::new(n, matches!(variant, Variant::RtpShared)));
                b.iter_custom(|iters| {
                    let mut measured = Duration::ZERO;
                    for _ in 0..iters {
                        room.now += TICK;
                        ts = ts.wrapping_add(960);
                        tick += 1;
                        let now = room.now;
                        let started = Instant::now();
                        let mut sent = 0usize;
                        let mut bytes = 0usize;
                        for (i, &key) in room.keys.iter().enumerate() {
                            let peer = room.set.get_mut(key).expect("present");
                            let mid = room.mids[i];
                            match variant {
                                Variant::FrameCopy => {
                                    peer.write_opus(mid, payload.to_vec(), ts, now)
                                }
                                _ => peer.write_opus(mid, payload.clone(), ts, now),
                            }
                            .expect("write");
                            // The driver's contract: poll to the deadline;
                            // a deadline already due is handled at once
                            // (str0m sends queued media from its timeout).
                            let mut handled = false;
                            loop {
                                match peer.poll().expect("poll") {
                                    PeerOutput::Transmit(d) => {
                                        sent += 1;
                                        bytes += black_box(d.bytes).len();
                                    }
                                    PeerOutput::Event(e) => {
                                        black_box(e);
                                    }
                                    PeerOutput::Timeout(at) if at <= now && !handled => {
                                        peer.handle_timeout(now).expect("timeout");
                                        handled = true;
                                    }
                                    PeerOutput::Timeout(_) => break,
                                }
                            }
                        }
                        measured += started.elapsed();
                        // Each subscriber sent its SRTP packet (RTCP may add more).
                        assert!(sent >= n, "{} of {n} forwarded", sent);
                        black_box(bytes);
                        if tick.is_multiple_of(25) {
                            room.pump();
                        }
                    }
                    measured
                });
            });
        }
    }
    group.finish();
}

fn create(c: &mut Criterion) {
    let mut group = c.benchmark_group("peer");
    let config = PeerConfig {
        host: server_addr(),
        rtp_mode: false,
    };
    let shared = ShardDtls::generate().expect("certificate");
    let own = ShardDtls::per_peer_certificates();
    let now = Instant::now();
    group.bench_function("new_shared_cert", |b| {
        b.iter(|| black_box(WebRtcPeer::new(&config, &shared, now).expect("peer")))
    });
    group.bench_function("new_own_cert", |b| {
        b.iter(|| black_box(WebRtcPeer::new(&config, &own, now).expect("peer")))
    });
    group.bench_function("new_and_answer_python_offer", |b| {
        b.iter(|| {
            let mut peer = WebRtcPeer::new(&config, &shared, now).expect("peer");
            black_box(peer.accept_offer(PYTHON_OFFER).expect("answer"))
        })
    });
    group.finish();
}

criterion_group!(benches, forward, create);
criterion_main!(benches);
