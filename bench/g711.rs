//! G.711 per 20 ms frame (160 samples at 8 kHz), both laws, both directions:
//! every SIMD kernel this CPU runs (through `Compander::with_isa`) vs the
//! scalar table path vs the STL's segment loop (`reference_*`).
//!
//! Run: `cargo bench --bench g711 -- --noplot`. The variants of a group run
//! back to back, so compare them as ratios within one run: the machine is
//! shared and absolute times drift.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use switchboard::codec::g711::{reference, Compander, Isa, Law, FRAME_SAMPLES};

/// One frame of speech-like audio: a 440 Hz tone with an envelope plus noise,
/// so the samples spread over most segments (a constant would hit one table
/// entry and flatter the table path).
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

/// The companders of `law` on every ISA this CPU supports, best first.
fn companders(law: Law) -> Vec<(String, Compander)> {
    Isa::ALL
        .iter()
        .rev()
        .filter_map(|&isa| Compander::with_isa(law, isa))
        .map(|c| {
            let name = match c.isa() {
                Isa::Scalar => "scalar_table".to_string(),
                isa => format!("simd_{isa:?}").to_lowercase(),
            };
            (name, c)
        })
        .collect()
}

fn bench_law(c: &mut Criterion, law: Law, name: &str) {
    let pcm = speech_frame();
    let mut codes = [0u8; FRAME_SAMPLES];
    let mut out = [0i16; FRAME_SAMPLES];
    let reference_encode: fn(&[i16], &mut [u8]) = match law {
        Law::Pcmu => reference::reference_ulaw_encode_slice,
        Law::Pcma => reference::reference_alaw_encode_slice,
    };
    let reference_decode: fn(&[u8], &mut [i16]) = match law {
        Law::Pcmu => reference::reference_ulaw_decode_slice,
        Law::Pcma => reference::reference_alaw_decode_slice,
    };

    let mut group = c.benchmark_group(format!("g711/{name}_encode_160"));
    group.throughput(Throughput::Elements(FRAME_SAMPLES as u64));
    for (variant, compander) in companders(law) {
        group.bench_function(variant, |b| {
            b.iter(|| compander.encode(black_box(&pcm), black_box(&mut codes)))
        });
    }
    group.bench_function("reference_loop", |b| {
        b.iter(|| reference_encode(black_box(&pcm), black_box(&mut codes)))
    });
    group.finish();

    law.encode(&pcm, &mut codes);
    let mut group = c.benchmark_group(format!("g711/{name}_decode_160"));
    group.throughput(Throughput::Elements(FRAME_SAMPLES as u64));
    for (variant, compander) in companders(law) {
        group.bench_function(variant, |b| {
            b.iter(|| compander.decode(black_box(&codes), black_box(&mut out)))
        });
    }
    group.bench_function("reference_loop", |b| {
        b.iter(|| reference_decode(black_box(&codes), black_box(&mut out)))
    });
    group.finish();
}

fn g711(c: &mut Criterion) {
    bench_law(c, Law::Pcmu, "ulaw");
    bench_law(c, Law::Pcma, "alaw");
}

criterion_group! {
    name = benches;
    // Short runs: 16 benchmarks x 2.5 s stay under a minute.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = g711
}
criterion_main!(benches);
