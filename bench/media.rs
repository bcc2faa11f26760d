//! Media engine benches: one 20 ms mix tick of a room, end to end.
//!
//! Run: `cargo bench --bench media`. One iteration is what a room costs the
//! shard every 20 ms: each of the N callers' packets taken in
//! (`MediaEngine::handle_packet`: parse, latch check, receive stats, jitter
//! buffer push), then the tick (`handle_timeout`: jitter buffer pop, G.711
//! decode, mix-minus, G.711 encode, RTP serialize) and the N packets out
//! drained (`poll_output`). Virtual time: nothing sleeps.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchboard::codec::g711::{Law, FRAME_SAMPLES};
use switchboard::media::{CallKey, CallMedia, Codec, MediaEngine, MediaOutput};
use switchboard::rtp::RtpHeader;

const TICK: Duration = Duration::from_millis(20);

struct Caller {
    call: CallKey,
    src: SocketAddr,
    seq: u16,
    ts: u32,
    payload: [u8; FRAME_SAMPLES],
    packet: [u8; 12 + FRAME_SAMPLES],
}

impl Caller {
    /// Write the next packet into `self.packet`; returns its length.
    fn next_packet(&mut self) -> usize {
        let h = RtpHeader {
            marker: false,
            payload_type: 0,
            sequence: self.seq,
            timestamp: self.ts,
            ssrc: 0x1234_0000 ^ u32::from(self.src.port()),
        };
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(FRAME_SAMPLES as u32);
        h.write(&self.payload, &mut self.packet)
            .expect("172 bytes hold a 160-byte payload")
    }
}

/// A room of `n` callers, each sending a distinct tone, warmed up until every
/// jitter buffer is playing.
fn room(n: usize) -> (MediaEngine, Vec<Caller>, Instant) {
    let mut eng = MediaEngine::with_seed(0, Duration::from_secs(30), 1);
    let t0 = Instant::now();
    let mut callers: Vec<Caller> = (0..n)
        .map(|i| {
            let mut pcm = [0i16; FRAME_SAMPLES];
            for (k, s) in pcm.iter_mut().enumerate() {
                let f = 300.0 + 100.0 * i as f64;
                *s = (6000.0 * (2.0 * std::f64::consts::PI * f * k as f64 / 8000.0).sin()) as i16;
            }
            let mut payload = [0u8; FRAME_SAMPLES];
            Law::Pcmu.encode(&pcm, &mut payload);
            let src: SocketAddr = format!("192.0.2.{}:{}", i + 1, 4000 + 2 * i)
                .parse()
                .expect("literal address");
            Caller {
                call: CallKey(format!("call-{i}").into()),
                src,
                seq: 100,
                ts: 8000,
                payload,
                packet: [0; 12 + FRAME_SAMPLES],
            }
        })
        .collect();
    for c in &callers {
        eng.add_call(
            t0,
            CallMedia {
                call: c.call.clone(),
                room: "bench".into(),
                local: "10.0.0.1:10000".parse().expect("literal address"),
                remote: c.src,
                codec: Codec::Pcmu,
                payload_type: 0,
                telephone_event: Some(101),
                ptime_ms: 20,
                send: true,
                receive: true,
            },
        );
    }
    let mut now = t0;
    let mut sent = 0;
    for _ in 0..50 {
        now += TICK;
        sent = tick(&mut eng, &mut callers, now);
    }
    assert_eq!(sent, n, "warmed up: one packet out per caller per tick");
    (eng, callers, now)
}

/// One 20 ms step: every caller's packet in, the mix, every packet out.
fn tick(eng: &mut MediaEngine, callers: &mut [Caller], now: Instant) -> usize {
    for c in callers.iter_mut() {
        let n = c.next_packet();
        eng.handle_packet(now, &c.call, c.src, now, &c.packet[..n], false);
    }
    eng.handle_timeout(now);
    let mut sent = 0;
    loop {
        match eng.poll_output(now) {
            MediaOutput::Transmit { data, .. } => {
                sent += 1;
                black_box(data);
            }
            MediaOutput::Event(e) => {
                black_box(e);
            }
            MediaOutput::Idle(_) => return sent,
        }
    }
}

fn bench_mix_tick(c: &mut Criterion) {
    let mut g = c.benchmark_group("mix_tick");
    for n in [2usize, 10] {
        let (mut eng, mut callers, mut now) = room(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{n}_party")),
            &n,
            |b, _| {
                b.iter(|| {
                    now += TICK;
                    black_box(tick(&mut eng, &mut callers, now))
                })
            },
        );
    }
    g.finish();
}

/// The same 2-party room with both callers published to WebRTC subscribers
/// (each caller's voice Opus-encoded once per tick, `MediaEvent::Published`):
/// next to `mix_tick/2_party`, what a call costs more when an agent or a
/// browser listens to it.
fn bench_mix_tick_published(c: &mut Criterion) {
    let mut g = c.benchmark_group("mix_tick_published");
    let n = 2usize;
    let (mut eng, mut callers, mut now) = room(n);
    for c in &callers {
        assert!(eng.set_published(&c.call, true), "libopus makes an encoder");
    }
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::from_parameter(format!("{n}_party")), |b| {
        b.iter(|| {
            now += TICK;
            black_box(tick(&mut eng, &mut callers, now))
        })
    });
    g.finish();
}

/// The fixed cost of one wake of the media task when nothing is due: the
/// engine's `handle_timeout` (which visits every room and every call to find
/// what is due) and `next_deadline` (which visits them again for the minimum).
/// Paid on every wake, so it is what waking more often than every 4 ms costs.
fn bench_idle_wake(c: &mut Criterion) {
    let mut g = c.benchmark_group("idle_wake");
    for rooms in [10usize, 100, 1000] {
        let mut eng = MediaEngine::with_seed(0, Duration::from_secs(30), 1);
        let t0 = Instant::now();
        for i in 0..rooms * 2 {
            let src: SocketAddr = format!("10.{}.{}.{}:4000", i >> 16, (i >> 8) & 255, i & 255)
                .parse()
                .expect("literal address");
            eng.add_call(
                t0,
                CallMedia {
                    call: CallKey(format!("call-{i}").into()),
                    room: format!("room-{}", i / 2),
                    local: "10.0.0.1:10000".parse().expect("literal address"),
                    remote: src,
                    codec: Codec::Pcmu,
                    payload_type: 0,
                    telephone_event: Some(101),
                    ptime_ms: 20,
                    send: true,
                    receive: true,
                },
            );
        }
        // Run the first tick, then stand between two ticks: nothing is due.
        eng.handle_timeout(t0);
        while !matches!(eng.poll_output(t0), MediaOutput::Idle(_)) {}
        let between = t0 + Duration::from_millis(10);
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{rooms}_rooms")),
            &rooms,
            |b, _| {
                b.iter(|| {
                    eng.handle_timeout(between);
                    black_box(eng.next_deadline())
                })
            },
        );
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_mix_tick,
    bench_mix_tick_published,
    bench_idle_wake
);
criterion_main!(benches);
