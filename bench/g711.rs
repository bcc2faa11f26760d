//! G.711 per 20 ms frame (160 samples at 8 kHz), both laws, both directions:
//! the runtime-dispatched SIMD path vs the scalar table path vs the STL's
//! segment loop (`reference_*`).
//!
//! Run: `cargo bench --bench g711 -- --noplot`. The three variants of a group
//! run back to back, so compare them as ratios within one run: the machine is
//! shared and absolute times drift.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use switchboard::codec::g711::{self, reference, scalar, FRAME_SAMPLES};

/// One frame of speech-like audio: a 440 Hz tone with a slow envelope plus
/// noise, so the samples spread over most segments (a constant would hit one
/// table entry and flatter the table path).
fn speech_frame() -> [i16; FRAME_SAMPLES] {
    let mut state = 0x9E37_79B9_u32;
    let mut frame = [0i16; FRAME_SAMPLES];
    for (i, s) in frame.iter_mut().enumerate() {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let noise = f64::from((state >> 20) as i16 - 2048);
        let t = i as f64 / 8000.0;
        let envelope = 0.2 + 0.8 * (std::f64::consts::PI * i as f64 / FRAME_SAMPLES as f64).sin();
        let tone = 12_000.0 * envelope * (2.0 * std::f64::consts::PI * 440.0 * t).sin();
        *s = (tone + noise).clamp(-32768.0, 32767.0) as i16;
    }
    frame
}

type Encode = fn(&[i16], &mut [u8]);
type Decode = fn(&[u8], &mut [i16]);

fn bench_encode(c: &mut Criterion, name: &str, variants: [(&str, Encode); 3]) {
    let pcm = speech_frame();
    let mut out = [0u8; FRAME_SAMPLES];
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(FRAME_SAMPLES as u64));
    for (variant, encode) in variants {
        group.bench_function(variant, |b| {
            b.iter(|| {
                encode(black_box(&pcm), black_box(&mut out));
            })
        });
    }
    group.finish();
}

fn bench_decode(c: &mut Criterion, name: &str, law: g711::Law, variants: [(&str, Decode); 3]) {
    let mut codes = [0u8; FRAME_SAMPLES];
    law.encode(&speech_frame(), &mut codes);
    let mut out = [0i16; FRAME_SAMPLES];
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(FRAME_SAMPLES as u64));
    for (variant, decode) in variants {
        group.bench_function(variant, |b| {
            b.iter(|| {
                decode(black_box(&codes), black_box(&mut out));
            })
        });
    }
    group.finish();
}

fn g711(c: &mut Criterion) {
    let simd = format!("simd-{:?}", g711::isa()).to_lowercase();
    let simd = simd.as_str();
    bench_encode(
        c,
        "g711/ulaw_encode_160",
        [
            (simd, |p, o| {
                g711::ulaw_encode(p, o);
            }),
            ("scalar_table", |p, o| {
                scalar::ulaw_encode(p, o);
            }),
            ("reference_loop", reference::reference_ulaw_encode_slice),
        ],
    );
    bench_encode(
        c,
        "g711/alaw_encode_160",
        [
            (simd, |p, o| {
                g711::alaw_encode(p, o);
            }),
            ("scalar_table", |p, o| {
                scalar::alaw_encode(p, o);
            }),
            ("reference_loop", reference::reference_alaw_encode_slice),
        ],
    );
    bench_decode(
        c,
        "g711/ulaw_decode_160",
        g711::Law::Pcmu,
        [
            (simd, |c, o| {
                g711::ulaw_decode(c, o);
            }),
            ("scalar_table", |c, o| {
                scalar::ulaw_decode(c, o);
            }),
            ("reference_loop", reference::reference_ulaw_decode_slice),
        ],
    );
    bench_decode(
        c,
        "g711/alaw_decode_160",
        g711::Law::Pcma,
        [
            (simd, |c, o| {
                g711::alaw_decode(c, o);
            }),
            ("scalar_table", |c, o| {
                scalar::alaw_decode(c, o);
            }),
            ("reference_loop", reference::reference_alaw_decode_slice),
        ],
    );
}

criterion_group! {
    name = benches;
    // Short runs: 12 benchmarks x ~2.5 s stay well under a minute.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = g711
}
criterion_main!(benches);
