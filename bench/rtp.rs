//! RTP media core benches: the per-packet costs of one call leg.
//!
//! Run: `cargo bench --bench rtp`. Each packet of every call pays for one parse,
//! one `ReceiveStats::on_packet`, one jitter-buffer push and one pop; each sent
//! packet for one header write.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use switchboard::rtp::{JitterBuffer, JitterBufferConfig, ReceiveStats, RtpHeader, RtpPacket};

fn packet() -> Vec<u8> {
    let h = RtpHeader {
        marker: false,
        payload_type: 0,
        sequence: 4242,
        timestamp: 123_456,
        ssrc: 0xdead_beef,
    };
    let mut out = vec![0u8; 172];
    h.write(&[0xd5; 160], &mut out)
        .expect("172 bytes hold a 160-byte payload");
    out
}

fn bench_packet(c: &mut Criterion) {
    let bytes = packet();
    c.bench_function("rtp_parse", |b| {
        b.iter(|| {
            let p = RtpPacket::parse(black_box(&bytes)).expect("valid packet");
            black_box((p.sequence(), p.timestamp(), p.ssrc(), p.payload().len()))
        })
    });
    let payload = [0xd5u8; 160];
    let mut out = [0u8; 1500];
    let mut seq = 0u16;
    c.bench_function("rtp_serialize", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let h = RtpHeader {
                marker: false,
                payload_type: 0,
                sequence: seq,
                timestamp: u32::from(seq) * 160,
                ssrc: 0xdead_beef,
            };
            black_box(h.write(black_box(&payload), &mut out).expect("fits"))
        })
    });
}

fn bench_stats(c: &mut Criterion) {
    let mut stats = ReceiveStats::new(8000);
    let mut i: u64 = 0;
    c.bench_function("rtp_stats_on_packet", |b| {
        b.iter(|| {
            i += 1;
            let seq = i as u16;
            // A little arrival jitter so the estimator does real work.
            let arrival = i * 20_000 + (i * 7919) % 3_000;
            black_box(stats.on_packet(0x1234, seq, (i as u32).wrapping_mul(160), 172, arrival))
        })
    });
}

fn bench_jitter_buffer(c: &mut Criterion) {
    let mut jb = JitterBuffer::new(JitterBufferConfig::default());
    let t0 = Instant::now();
    let payload = Bytes::from_static(&[0xd5; 160]);
    let mut i: u32 = 0;
    c.bench_function("jitter_buffer_push_pop", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let at = t0 + Duration::from_millis(20 * u64::from(i));
            jb.push(i as u16, i.wrapping_mul(160), at, payload.clone());
            black_box(jb.pop(at + Duration::from_millis(10)))
        })
    });
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_packet, bench_stats, bench_jitter_buffer
}
criterion_main!(benches);
