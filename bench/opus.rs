//! Opus at 8 kHz per 20 ms frame (`switchboard::codec::opus`, libopus 1.6.1):
//! encode at complexity 0/1/2/5/10 (24 kb/s) and 0/1/5/10 (32 kb/s) side by
//! side with the default, and at 48 kHz for scale; decode (our 8 kHz packets and
//! a browser's 48 kHz ones), PLC and FEC of one lost frame, and one transcode
//! step of a call in each direction (PCMU -> Opus, Opus -> PCMU), G.711
//! included.
//!
//! Run: `cargo bench --bench opus -- --warm-up-time 1 --measurement-time 3 --noplot`.
//!
//! Times are **CPU time of the benchmark thread** (`CLOCK_THREAD_CPUTIME_ID`),
//! not wall time: on the shared 2-core VM other builds preempt the bench, and
//! wall time then counts their slices too (it read 2-4x higher under load).
//! CPU time is what a call costs a shard. Cache pollution from neighbours
//! still shows, so compare variants within one run, as ratios. Results and
//! what they mean for calls per core: `docs/benchmarks-opus.md`.

use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rustix::time::{clock_gettime, ClockId};
use switchboard::codec::g711::{Compander, Law};
use switchboard::codec::opus::{
    EncoderSettings, Frame, OpusDecoder, OpusEncoder, FRAME_SAMPLES, MAX_ENCODED_BYTES,
    MAX_PACKET_SAMPLES,
};

/// CPU time consumed so far by the calling thread.
fn thread_cpu() -> Duration {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Criterion measurement of the benchmark thread's CPU time, shown in the
/// same units as wall time.
struct ThreadCpu {
    wall: WallTime,
}

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self.wall.formatter()
    }
}

/// The CPU clock must advance with work and never faster than wall time, or
/// every figure below is wrong: checked before measuring anything.
fn check_cpu_clock() {
    let (cpu, wall) = (thread_cpu(), Instant::now());
    let mut x = 1u64;
    while wall.elapsed() < Duration::from_millis(30) {
        x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
    }
    let (cpu, wall) = (thread_cpu() - cpu, wall.elapsed());
    assert!(
        cpu > Duration::from_millis(1),
        "thread CPU clock did not advance: {cpu:?}"
    );
    assert!(
        cpu <= wall + Duration::from_millis(1),
        "CPU {cpu:?} > wall {wall:?}"
    );
}

/// Frames of synthetic voiced audio cycled through by every benchmark, so the
/// codecs see a moving signal (a repeated frame would let SILK settle).
const FRAMES: usize = 50;

/// One second (50 frames) of speech-like audio at `rate`: a harmonic source
/// whose pitch glides 100..220 Hz under a 4 Hz syllable envelope, plus noise.
fn speech_like(rate: u32) -> Vec<i16> {
    let rate = f64::from(rate);
    let n = (rate as usize / 50) * FRAMES;
    let mut phase = 0.0_f64;
    let mut state = 0x9E37_79B9_u32;
    (0..n)
        .map(|i| {
            let t = i as f64 / rate;
            let f0 = 160.0 + 60.0 * (2.0 * std::f64::consts::PI * 1.3 * t).sin();
            phase += 2.0 * std::f64::consts::PI * f0 / rate;
            let v: f64 = (1..20)
                .map(|k| (f64::from(k) * phase).sin() / f64::from(k))
                .sum();
            let envelope = 0.15 + 0.85 * (0.5 - 0.5 * (2.0 * std::f64::consts::PI * 4.0 * t).cos());
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = f64::from((state >> 16) as i16) / 32768.0 * 200.0;
            (7000.0 * envelope * v + noise).clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

fn frames_8k() -> Vec<Frame> {
    speech_like(8_000)
        .chunks_exact(FRAME_SAMPLES)
        .map(|c| c.try_into().expect("whole frames"))
        .collect()
}

/// Our own 8 kHz packets (default settings), one per frame.
fn packets_8k(frames: &[Frame]) -> Vec<Vec<u8>> {
    let mut enc = OpusEncoder::new().expect("encoder");
    let mut buf = [0u8; MAX_ENCODED_BYTES];
    frames
        .iter()
        .map(|f| {
            let n = enc.encode(f, &mut buf).expect("encode");
            buf[..n].to_vec()
        })
        .collect()
}

/// What a browser sends: libwebrtc's voice defaults, 48 kHz mono VOIP at
/// 32 kb/s, 20 ms.
fn packets_48k() -> Vec<Vec<u8>> {
    let mut enc =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).expect("encoder");
    enc.set_bitrate(opus::Bitrate::Bits(32_000))
        .expect("bitrate");
    let mut buf = [0u8; 4000];
    speech_like(48_000)
        .chunks_exact(960)
        .map(|f| {
            let n = enc.encode(f, &mut buf).expect("encode");
            buf[..n].to_vec()
        })
        .collect()
}

fn encode(c: &mut Criterion<ThreadCpu>) {
    check_cpu_clock();
    let frames = frames_8k();
    let mut group = c.benchmark_group("opus/encode_20ms_8k");
    let mut out = [0u8; MAX_ENCODED_BYTES];
    // Complexity at two bit rates: at 24 kb/s libopus drops the in-band FEC
    // below complexity 2 (its equivalent-rate penalty for the cheap SILK
    // quantiser puts it under the FEC threshold), at 32 kb/s it keeps it.
    let mut variants: Vec<(String, EncoderSettings)> = Vec::new();
    for (kbps, complexities) in [(24u32, &[0u8, 1, 2, 5, 10][..]), (32, &[0, 1, 5, 10][..])] {
        for &complexity in complexities {
            let settings = EncoderSettings {
                bitrate_bps: kbps * 1000,
                complexity,
                ..EncoderSettings::default()
            };
            variants.push((format!("{kbps}k_complexity_{complexity}"), settings));
        }
    }
    variants.push(("default".to_string(), EncoderSettings::default()));
    for (name, settings) in variants {
        let mut enc = OpusEncoder::with_settings(settings).expect("encoder");
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % FRAMES;
                enc.encode(black_box(&frames[i]), black_box(&mut out))
                    .expect("encode")
            })
        });
    }
    group.finish();

    // For scale: what a transcoder that resamples to 48 kHz pays
    // (rtpengine's path), same signal, VOIP, complexity 10.
    let pcm48 = speech_like(48_000);
    let mut enc48 =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).expect("encoder");
    enc48
        .set_bitrate(opus::Bitrate::Bits(32_000))
        .expect("bitrate");
    enc48.set_complexity(10).expect("complexity");
    let mut group = c.benchmark_group("opus/encode_20ms_48k");
    let mut i = 0;
    group.bench_function("complexity_10", |b| {
        b.iter(|| {
            i = (i + 1) % FRAMES;
            enc48
                .encode(
                    black_box(&pcm48[i * 960..(i + 1) * 960]),
                    black_box(&mut out),
                )
                .expect("encode")
        })
    });
    group.finish();
}

fn decode(c: &mut Criterion<ThreadCpu>) {
    let frames = frames_8k();
    let ours = packets_8k(&frames);
    let browser = packets_48k();
    let mut out = [0i16; MAX_PACKET_SAMPLES];
    let mut group = c.benchmark_group("opus/decode_20ms_to_8k");
    for (name, packets) in [("packet_8k", &ours), ("packet_48k_browser", &browser)] {
        let mut dec = OpusDecoder::new().expect("decoder");
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % FRAMES;
                dec.decode(black_box(&packets[i]), black_box(&mut out))
                    .expect("decode")
            })
        });
    }
    group.finish();

    // Loss: one lost frame after a good one. The good packet is decoded
    // outside the timed region (`iter_custom`), so the figure is the
    // concealment (or FEC decode) alone; a run of PLC frames would only
    // measure a faded-out decoder.
    let mut group = c.benchmark_group("opus/lost_20ms_to_8k");
    for (name, packets) in [("plc_after_8k", &ours), ("plc_after_48k_browser", &browser)] {
        let mut dec = OpusDecoder::new().expect("decoder");
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    i = (i + 1) % FRAMES;
                    dec.decode(&packets[i], &mut out).expect("decode");
                    let t = thread_cpu();
                    black_box(dec.conceal(black_box(&mut out)).expect("plc"));
                    spent += thread_cpu() - t;
                }
                spent
            })
        });
    }
    let mut dec = OpusDecoder::new().expect("decoder");
    let mut i = 0;
    group.bench_function("fec_from_next_8k", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                i = (i + 1) % (FRAMES - 2);
                dec.decode(&ours[i], &mut out).expect("decode");
                let t = thread_cpu();
                black_box(dec.decode_fec(black_box(&ours[i + 2]), black_box(&mut out)))
                    .expect("fec");
                spent += thread_cpu() - t;
            }
            spent
        })
    });
    group.finish();
}

/// One 20 ms step of a transcoded call, each direction, G.711 included: what
/// the media path does 50 times a second per direction.
fn transcode(c: &mut Criterion<ThreadCpu>) {
    let frames = frames_8k();
    let pcmu = Compander::new(Law::Pcmu);
    let payloads: Vec<[u8; FRAME_SAMPLES]> = frames
        .iter()
        .map(|f| {
            let mut p = [0u8; FRAME_SAMPLES];
            pcmu.encode(f, &mut p);
            p
        })
        .collect();
    let ours = packets_8k(&frames);
    let browser = packets_48k();

    let mut group = c.benchmark_group("opus/transcode_step_20ms");
    let mut enc = OpusEncoder::new().expect("encoder");
    let mut pcm: Frame = [0; FRAME_SAMPLES];
    let mut packet = [0u8; MAX_ENCODED_BYTES];
    let mut i = 0;
    group.bench_function("pcmu_to_opus", |b| {
        b.iter(|| {
            i = (i + 1) % FRAMES;
            pcmu.decode(black_box(&payloads[i]), &mut pcm);
            enc.encode(&pcm, black_box(&mut packet)).expect("encode")
        })
    });
    let mut out = [0i16; MAX_PACKET_SAMPLES];
    let mut payload = [0u8; FRAME_SAMPLES];
    for (name, packets) in [
        ("opus_8k_to_pcmu", &ours),
        ("opus_48k_browser_to_pcmu", &browser),
    ] {
        let mut dec = OpusDecoder::new().expect("decoder");
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % FRAMES;
                let n = dec
                    .decode(black_box(&packets[i]), &mut out)
                    .expect("decode");
                pcmu.encode(&out[..n], black_box(&mut payload))
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu { wall: WallTime });
    targets = encode, decode, transcode
}
criterion_main!(benches);
