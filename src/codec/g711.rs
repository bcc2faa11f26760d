//! G.711 PCMU (mu-law) and PCMA (A-law): 8-bit log codes <-> linear 16-bit PCM.
//!
//! Where it sits: an RTP payload of PT 0 (PCMU) or 8 (PCMA) from the jitter
//! buffer is decoded here into a 20 ms frame of PCM for the Opus encoder or
//! the mixer; a mixed frame is encoded here into the payload of the next RTP
//! packet to the trunk. One frame is 160 samples at 8 kHz, but any length
//! works.
//!
//! What it owns: the four conversions, one sample at a time and over slices,
//! in three implementations that agree on every input:
//!
//! - [`reference`](mod@reference): the ITU-T G.191 STL `g711.c` algorithms
//!   transcribed as written (segment loops). The oracle and the bench
//!   baseline.
//! - [`scalar`]: one table load per sample. The fallback on CPUs and
//!   architectures without a SIMD kernel, and the single-sample functions.
//! - `x86`: SSSE3 and AVX2 kernels, chosen at run time by [`isa`].
//!
//! The free functions ([`ulaw_encode`] ...) run on the detected ISA. A call
//! leg keeps a [`Compander`]: its law and ISA fixed once, so a payload is one
//! call whatever the law, and tests or benchmarks can pin an ISA.
//!
//! ```
//! use switchboard::codec::g711::{Compander, Law, FRAME_SAMPLES};
//!
//! let leg = Compander::new(Law::Pcmu);
//! let frame = [0i16; FRAME_SAMPLES];
//! let mut payload = [0u8; FRAME_SAMPLES];
//! assert_eq!(leg.encode(&frame, &mut payload), FRAME_SAMPLES);
//! assert!(payload.iter().all(|&code| code == Law::Pcmu.silence()));
//!
//! let mut decoded = [1i16; FRAME_SAMPLES];
//! assert_eq!(leg.decode(&payload, &mut decoded), FRAME_SAMPLES);
//! assert_eq!(decoded, frame);
//! ```
//!
//! Bit-exact means "equal to the STL", which is what G.711 conformance is
//! tested against. The encoders look only at the top 14 (mu-law) or 13
//! (A-law) bits of the 16-bit sample, and fold negative samples with the one's
//! complement *before* dropping the low bits. The widespread Sun / CCITT
//! `g711.c` (`linear2ulaw`) shifts first and then negates, so it disagrees
//! with the STL at one edge of every negative interval (508 of the 65536
//! inputs): it encodes -1..=-4 as mu-law 0x7E where the STL, and this
//! module, give 0x7F. The decoders
//! return the middle of each quantisation interval, left-justified in 16 bits
//! (mu-law 0x00 -> -32124, A-law 0xD5 -> 8). Like the STL, no zero-code trap
//! (the optional `ZEROTRAP` of some mu-law encoders, a T1 ones-density
//! practice) is applied: `i16::MIN` encodes to mu-law 0x00.
//!
//! The slice functions convert `min(input.len(), out.len())` samples and
//! return that count: a short buffer never panics, and the caller sees how much
//! was written.

use std::sync::atomic::{AtomicU8, Ordering};

pub mod reference;
pub mod scalar;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod x86;

pub use scalar::{alaw_decode_sample, alaw_encode_sample, ulaw_decode_sample, ulaw_encode_sample};

/// Samples in one 20 ms frame at 8 kHz, the usual `ptime` of a SIP trunk.
pub const FRAME_SAMPLES: usize = 160;

/// Which of the two G.711 companding laws a stream uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Law {
    /// mu-law: North America and Japan.
    Pcmu,
    /// A-law: the rest of the world.
    Pcma,
}

impl Law {
    /// Static RTP payload type (RFC 3551 s6, Table 4).
    pub const fn payload_type(self) -> u8 {
        match self {
            Law::Pcmu => 0,
            Law::Pcma => 8,
        }
    }

    /// Encoding name in SDP `a=rtpmap` (RFC 3551 s4.5.14).
    pub const fn encoding_name(self) -> &'static str {
        match self {
            Law::Pcmu => "PCMU",
            Law::Pcma => "PCMA",
        }
    }

    /// The code of a zero sample, for filling silence without encoding.
    pub const fn silence(self) -> u8 {
        match self {
            Law::Pcmu => 0xFF,
            Law::Pcma => 0xD5,
        }
    }

    /// Encodes one sample.
    #[inline]
    pub fn encode_sample(self, x: i16) -> u8 {
        match self {
            Law::Pcmu => ulaw_encode_sample(x),
            Law::Pcma => alaw_encode_sample(x),
        }
    }

    /// Decodes one code.
    #[inline]
    pub fn decode_sample(self, code: u8) -> i16 {
        match self {
            Law::Pcmu => ulaw_decode_sample(code),
            Law::Pcma => alaw_decode_sample(code),
        }
    }

    /// Encodes `min(pcm.len(), out.len())` samples; returns that count.
    pub fn encode(self, pcm: &[i16], out: &mut [u8]) -> usize {
        match self {
            Law::Pcmu => ulaw_encode(pcm, out),
            Law::Pcma => alaw_encode(pcm, out),
        }
    }

    /// Decodes `min(codes.len(), out.len())` codes; returns that count.
    pub fn decode(self, codes: &[u8], out: &mut [i16]) -> usize {
        match self {
            Law::Pcmu => ulaw_decode(codes, out),
            Law::Pcma => alaw_decode(codes, out),
        }
    }
}

/// The instruction set the slice functions run on, detected once per process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Table lookups ([`scalar`]); every architecture.
    Scalar,
    /// 8 lanes per vector (x86 with SSSE3: `pshufb`).
    Ssse3,
    /// 16 lanes per vector (x86 with AVX2).
    Avx2,
}

impl Isa {
    /// Every ISA, slowest first.
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Ssse3, Isa::Avx2];

    /// Whether this CPU can run the kernels of `self` ([`Isa::Scalar`]
    /// always).
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Isa::Ssse3 => std::is_x86_feature_detected!("ssse3"),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Isa::Avx2 => std::is_x86_feature_detected!("avx2"),
            #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
            Isa::Ssse3 | Isa::Avx2 => false,
        }
    }

    const fn to_u8(self) -> u8 {
        match self {
            Isa::Scalar => 1,
            Isa::Ssse3 => 2,
            Isa::Avx2 => 3,
        }
    }

    const fn from_u8(v: u8) -> Option<Isa> {
        match v {
            1 => Some(Isa::Scalar),
            2 => Some(Isa::Ssse3),
            3 => Some(Isa::Avx2),
            _ => None,
        }
    }
}

/// 0 until the first call of [`isa`], then `Isa::to_u8` of the result.
/// Detection is idempotent, so two threads racing to fill it store the same
/// value and `Relaxed` is enough.
static DETECTED_ISA: AtomicU8 = AtomicU8::new(0);

/// The best kernel this CPU runs, detected on first use and cached: later calls
/// cost one relaxed load.
#[inline]
pub fn isa() -> Isa {
    match Isa::from_u8(DETECTED_ISA.load(Ordering::Relaxed)) {
        Some(isa) => isa,
        None => {
            let isa = detect_isa();
            DETECTED_ISA.store(isa.to_u8(), Ordering::Relaxed);
            isa
        }
    }
}

#[cold]
fn detect_isa() -> Isa {
    Isa::ALL
        .into_iter()
        .rev()
        .find(|isa| isa.is_supported())
        .unwrap_or(Isa::Scalar)
}

/// Runs the `$isa` kernel over the common prefix of `$input` and `$out`, and
/// returns its length. Expands inside the `unsafe fn *_on` below, whose
/// contract is that `$isa` is supported by this CPU.
macro_rules! run_on {
    ($isa:expr, $input:ident, $out:ident, $scalar:path, $ssse3:ident, $avx2:ident) => {{
        let n = $input.len().min($out.len());
        let ($input, $out) = (&$input[..n], &mut $out[..n]);
        match $isa {
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            // SAFETY: the caller guarantees the CPU supports $isa, here AVX2.
            Isa::Avx2 => unsafe { x86::$avx2($input, $out) },
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            // SAFETY: the caller guarantees the CPU supports $isa, here SSSE3.
            Isa::Ssse3 => unsafe { x86::$ssse3($input, $out) },
            _ => {
                $scalar($input, $out);
            }
        }
        n
    }};
}

/// # Safety
/// `isa.is_supported()`.
unsafe fn ulaw_encode_on(isa: Isa, pcm: &[i16], out: &mut [u8]) -> usize {
    run_on!(
        isa,
        pcm,
        out,
        scalar::ulaw_encode,
        ulaw_encode_ssse3,
        ulaw_encode_avx2
    )
}

/// # Safety
/// `isa.is_supported()`.
unsafe fn ulaw_decode_on(isa: Isa, codes: &[u8], out: &mut [i16]) -> usize {
    run_on!(
        isa,
        codes,
        out,
        scalar::ulaw_decode,
        ulaw_decode_ssse3,
        ulaw_decode_avx2
    )
}

/// # Safety
/// `isa.is_supported()`.
unsafe fn alaw_encode_on(isa: Isa, pcm: &[i16], out: &mut [u8]) -> usize {
    run_on!(
        isa,
        pcm,
        out,
        scalar::alaw_encode,
        alaw_encode_ssse3,
        alaw_encode_avx2
    )
}

/// # Safety
/// `isa.is_supported()`.
unsafe fn alaw_decode_on(isa: Isa, codes: &[u8], out: &mut [i16]) -> usize {
    run_on!(
        isa,
        codes,
        out,
        scalar::alaw_decode,
        alaw_decode_ssse3,
        alaw_decode_avx2
    )
}

/// Encodes linear PCM to mu-law (PCMU) on the detected [`isa`]:
/// `min(pcm.len(), out.len())` samples, returns that count.
pub fn ulaw_encode(pcm: &[i16], out: &mut [u8]) -> usize {
    // SAFETY: isa() only returns an ISA that detection found on this CPU.
    unsafe { ulaw_encode_on(isa(), pcm, out) }
}

/// Decodes mu-law (PCMU) to linear PCM on the detected [`isa`]:
/// `min(codes.len(), out.len())` codes, returns that count.
pub fn ulaw_decode(codes: &[u8], out: &mut [i16]) -> usize {
    // SAFETY: isa() only returns an ISA that detection found on this CPU.
    unsafe { ulaw_decode_on(isa(), codes, out) }
}

/// Encodes linear PCM to A-law (PCMA) on the detected [`isa`]:
/// `min(pcm.len(), out.len())` samples, returns that count.
pub fn alaw_encode(pcm: &[i16], out: &mut [u8]) -> usize {
    // SAFETY: isa() only returns an ISA that detection found on this CPU.
    unsafe { alaw_encode_on(isa(), pcm, out) }
}

/// Decodes A-law (PCMA) to linear PCM on the detected [`isa`]:
/// `min(codes.len(), out.len())` codes, returns that count.
pub fn alaw_decode(codes: &[u8], out: &mut [i16]) -> usize {
    // SAFETY: isa() only returns an ISA that detection found on this CPU.
    unsafe { alaw_decode_on(isa(), codes, out) }
}

/// One law on one instruction set: what a call leg keeps for its G.711
/// stream. [`Compander::new`] takes the detected ISA; [`Compander::with_isa`]
/// pins one (benchmarks, or ruling out a kernel in the field).
///
/// Invariant: `isa` is supported by this CPU (checked at construction).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Compander {
    law: Law,
    isa: Isa,
}

impl Compander {
    /// `law` on the best ISA this CPU has.
    pub fn new(law: Law) -> Self {
        Compander { law, isa: isa() }
    }

    /// `law` on `isa`, or `None` if this CPU cannot run it.
    pub fn with_isa(law: Law, isa: Isa) -> Option<Self> {
        isa.is_supported().then_some(Compander { law, isa })
    }

    pub fn law(&self) -> Law {
        self.law
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Encodes `min(pcm.len(), out.len())` samples; returns that count.
    pub fn encode(&self, pcm: &[i16], out: &mut [u8]) -> usize {
        // SAFETY: self.isa is supported (invariant, checked at construction).
        unsafe {
            match self.law {
                Law::Pcmu => ulaw_encode_on(self.isa, pcm, out),
                Law::Pcma => alaw_encode_on(self.isa, pcm, out),
            }
        }
    }

    /// Decodes `min(codes.len(), out.len())` codes; returns that count.
    pub fn decode(&self, codes: &[u8], out: &mut [i16]) -> usize {
        // SAFETY: self.isa is supported (invariant, checked at construction).
        unsafe {
            match self.law {
                Law::Pcmu => ulaw_decode_on(self.isa, codes, out),
                Law::Pcma => alaw_decode_on(self.isa, codes, out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reference::*;
    use super::*;

    /// A SIMD kernel as a plain fn, for CPUs that have `$feature`.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    macro_rules! kernel {
        ($feature:tt, $kernel:path) => {
            |input, out| {
                assert!(std::is_x86_feature_detected!($feature));
                // SAFETY: the CPU has the kernel's target feature, asserted
                // just above.
                unsafe { $kernel(input, out) }
            }
        };
    }

    /// `Compander::encode` of one (law, ISA) as a plain fn.
    macro_rules! compander_encode {
        ($law:ident, $isa:ident) => {
            |pcm, out| {
                let c = Compander::with_isa(Law::$law, Isa::$isa).expect("checked by the caller");
                c.encode(pcm, out);
            }
        };
    }

    /// `Compander::decode` of one (law, ISA) as a plain fn.
    macro_rules! compander_decode {
        ($law:ident, $isa:ident) => {
            |codes, out| {
                let c = Compander::with_isa(Law::$law, Isa::$isa).expect("checked by the caller");
                c.decode(codes, out);
            }
        };
    }

    type EncodeFn = fn(&[i16], &mut [u8]);
    type DecodeFn = fn(&[u8], &mut [i16]);

    /// Every encoder of one law this machine can run, by name.
    fn encoders(law: Law) -> Vec<(&'static str, EncodeFn)> {
        // SIMD entries are pushed on x86 only.
        #[allow(unused_mut)]
        let mut v: Vec<(&'static str, EncodeFn)> = match law {
            Law::Pcmu => vec![
                ("scalar", |p, o| {
                    scalar::ulaw_encode(p, o);
                }),
                ("dispatch", |p, o| {
                    ulaw_encode(p, o);
                }),
            ],
            Law::Pcma => vec![
                ("scalar", |p, o| {
                    scalar::alaw_encode(p, o);
                }),
                ("dispatch", |p, o| {
                    alaw_encode(p, o);
                }),
            ],
        };
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            if std::is_x86_feature_detected!("ssse3") {
                v.push(match law {
                    Law::Pcmu => ("ssse3", kernel!("ssse3", x86::ulaw_encode_ssse3)),
                    Law::Pcma => ("ssse3", kernel!("ssse3", x86::alaw_encode_ssse3)),
                });
            }
            if std::is_x86_feature_detected!("avx2") {
                v.push(match law {
                    Law::Pcmu => ("avx2", kernel!("avx2", x86::ulaw_encode_avx2)),
                    Law::Pcma => ("avx2", kernel!("avx2", x86::alaw_encode_avx2)),
                });
            }
        }
        for isa in Isa::ALL {
            if Compander::with_isa(law, isa).is_some() {
                v.push(match (law, isa) {
                    (Law::Pcmu, Isa::Scalar) => {
                        ("compander-scalar", compander_encode!(Pcmu, Scalar))
                    }
                    (Law::Pcmu, Isa::Ssse3) => ("compander-ssse3", compander_encode!(Pcmu, Ssse3)),
                    (Law::Pcmu, Isa::Avx2) => ("compander-avx2", compander_encode!(Pcmu, Avx2)),
                    (Law::Pcma, Isa::Scalar) => {
                        ("compander-scalar", compander_encode!(Pcma, Scalar))
                    }
                    (Law::Pcma, Isa::Ssse3) => ("compander-ssse3", compander_encode!(Pcma, Ssse3)),
                    (Law::Pcma, Isa::Avx2) => ("compander-avx2", compander_encode!(Pcma, Avx2)),
                });
            }
        }
        v
    }

    /// Every decoder of one law this machine can run, by name.
    fn decoders(law: Law) -> Vec<(&'static str, DecodeFn)> {
        // SIMD entries are pushed on x86 only.
        #[allow(unused_mut)]
        let mut v: Vec<(&'static str, DecodeFn)> = match law {
            Law::Pcmu => vec![
                ("scalar", |c, o| {
                    scalar::ulaw_decode(c, o);
                }),
                ("dispatch", |c, o| {
                    ulaw_decode(c, o);
                }),
            ],
            Law::Pcma => vec![
                ("scalar", |c, o| {
                    scalar::alaw_decode(c, o);
                }),
                ("dispatch", |c, o| {
                    alaw_decode(c, o);
                }),
            ],
        };
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            if std::is_x86_feature_detected!("ssse3") {
                v.push(match law {
                    Law::Pcmu => ("ssse3", kernel!("ssse3", x86::ulaw_decode_ssse3)),
                    Law::Pcma => ("ssse3", kernel!("ssse3", x86::alaw_decode_ssse3)),
                });
            }
            if std::is_x86_feature_detected!("avx2") {
                v.push(match law {
                    Law::Pcmu => ("avx2", kernel!("avx2", x86::ulaw_decode_avx2)),
                    Law::Pcma => ("avx2", kernel!("avx2", x86::alaw_decode_avx2)),
                });
            }
        }
        for isa in Isa::ALL {
            if Compander::with_isa(law, isa).is_some() {
                v.push(match (law, isa) {
                    (Law::Pcmu, Isa::Scalar) => {
                        ("compander-scalar", compander_decode!(Pcmu, Scalar))
                    }
                    (Law::Pcmu, Isa::Ssse3) => ("compander-ssse3", compander_decode!(Pcmu, Ssse3)),
                    (Law::Pcmu, Isa::Avx2) => ("compander-avx2", compander_decode!(Pcmu, Avx2)),
                    (Law::Pcma, Isa::Scalar) => {
                        ("compander-scalar", compander_decode!(Pcma, Scalar))
                    }
                    (Law::Pcma, Isa::Ssse3) => ("compander-ssse3", compander_decode!(Pcma, Ssse3)),
                    (Law::Pcma, Isa::Avx2) => ("compander-avx2", compander_decode!(Pcma, Avx2)),
                });
            }
        }
        v
    }

    fn reference_encoder(law: Law) -> fn(i16) -> u8 {
        match law {
            Law::Pcmu => reference_ulaw_encode,
            Law::Pcma => reference_alaw_encode,
        }
    }

    fn reference_decoder(law: Law) -> fn(u8) -> i16 {
        match law {
            Law::Pcmu => reference_ulaw_decode,
            Law::Pcma => reference_alaw_decode,
        }
    }

    const LAWS: [Law; 2] = [Law::Pcmu, Law::Pcma];
    const ODD_LENGTHS: [usize; 13] = [0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 159, 160, 161];

    fn all_samples() -> Vec<i16> {
        (i16::MIN..=i16::MAX).collect()
    }

    #[test]
    fn every_encoder_matches_the_stl_for_every_sample() {
        let pcm = all_samples();
        for law in LAWS {
            let want: Vec<u8> = pcm.iter().map(|&x| reference_encoder(law)(x)).collect();
            for (name, encode) in encoders(law) {
                let mut got = vec![0u8; pcm.len()];
                encode(&pcm, &mut got);
                if let Some(i) = (0..pcm.len()).find(|&i| got[i] != want[i]) {
                    panic!(
                        "{law:?} {name}: x={} -> {:#04x}, STL says {:#04x}",
                        pcm[i], got[i], want[i]
                    );
                }
            }
            for &x in &pcm {
                assert_eq!(
                    law.encode_sample(x),
                    reference_encoder(law)(x),
                    "{law:?} x={x}"
                );
            }
        }
    }

    /// Outputs of the STL's own `g711.c` (see tests/data/g711/README.md).
    const STL_ULAW_COMPRESS: &[u8; 65536] =
        include_bytes!("../../tests/data/g711/stl_ulaw_compress.u8");
    const STL_ALAW_COMPRESS: &[u8; 65536] =
        include_bytes!("../../tests/data/g711/stl_alaw_compress.u8");
    const STL_ULAW_EXPAND: &[u8; 512] =
        include_bytes!("../../tests/data/g711/stl_ulaw_expand.i16le");
    const STL_ALAW_EXPAND: &[u8; 512] =
        include_bytes!("../../tests/data/g711/stl_alaw_expand.i16le");

    #[test]
    fn every_path_matches_the_stl_golden_outputs() {
        let pcm = all_samples();
        for (law, compress, expand) in [
            (Law::Pcmu, STL_ULAW_COMPRESS, STL_ULAW_EXPAND),
            (Law::Pcma, STL_ALAW_COMPRESS, STL_ALAW_EXPAND),
        ] {
            // The transcription first: it is the oracle of the other tests.
            let reference: Vec<u8> = pcm.iter().map(|&x| reference_encoder(law)(x)).collect();
            assert!(
                reference[..] == compress[..],
                "{law:?} reference_*_encode vs STL"
            );
            for (name, encode) in encoders(law) {
                let mut got = vec![0u8; pcm.len()];
                encode(&pcm, &mut got);
                assert!(got[..] == compress[..], "{law:?} {name} vs STL");
            }
            let expand: Vec<i16> = expand
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
            let codes: Vec<u8> = (0..=u8::MAX).collect();
            let reference: Vec<i16> = codes.iter().map(|&c| reference_decoder(law)(c)).collect();
            assert_eq!(reference, expand, "{law:?} reference_*_decode vs STL");
            for (name, decode) in decoders(law) {
                let mut got = vec![0i16; 256];
                decode(&codes, &mut got);
                assert_eq!(got, expand, "{law:?} {name} vs STL");
            }
        }
    }

    #[test]
    fn every_decoder_matches_the_stl_for_every_code() {
        // Every code several times over, in an order that is not a ramp, so
        // each SIMD lane position sees each code.
        let codes: Vec<u8> = (0..256 * 33)
            .map(|i: u32| (i * 97 + i / 256) as u8)
            .collect();
        for law in LAWS {
            for c in 0..=u8::MAX {
                assert_eq!(
                    law.decode_sample(c),
                    reference_decoder(law)(c),
                    "{law:?} {c:#04x}"
                );
            }
            let want: Vec<i16> = codes.iter().map(|&c| reference_decoder(law)(c)).collect();
            for (name, decode) in decoders(law) {
                let mut got = vec![0i16; codes.len()];
                decode(&codes, &mut got);
                if let Some(i) = (0..codes.len()).find(|&i| got[i] != want[i]) {
                    panic!(
                        "{law:?} {name}: code {:#04x} -> {}, STL says {}",
                        codes[i], got[i], want[i]
                    );
                }
            }
        }
    }

    #[test]
    fn every_sample_reaches_every_lane() {
        // The exhaustive ramp puts x at lane x % 16 only; shift it through all
        // 32 positions of the widest step.
        let pcm = all_samples();
        for law in LAWS {
            let want: Vec<u8> = pcm.iter().map(|&x| reference_encoder(law)(x)).collect();
            for (name, encode) in encoders(law) {
                for shift in 1..32 {
                    let mut got = vec![0u8; pcm.len() - shift];
                    encode(&pcm[shift..], &mut got);
                    assert!(got == want[shift..], "{law:?} {name} shift {shift}");
                }
            }
        }
    }

    #[test]
    fn odd_lengths_and_offsets_match_sample_by_sample() {
        // Pseudo-random audio, full scale, from a fixed LCG seed.
        let mut state = 0x2545_F491_u32;
        let pcm: Vec<i16> = (0..200)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 16) as i16
            })
            .collect();
        let codes: Vec<u8> = pcm.iter().map(|&x| x as u8).collect();
        for law in LAWS {
            for &len in &ODD_LENGTHS {
                // Offset 0 and an odd offset, so no load is ever aligned.
                for offset in [0, 3] {
                    let input = &pcm[offset..offset + len];
                    let want: Vec<u8> = input.iter().map(|&x| law.encode_sample(x)).collect();
                    for (name, encode) in encoders(law) {
                        // One guard byte past the end must stay untouched.
                        let mut got = vec![0xA5u8; len + 1];
                        encode(input, &mut got[..len]);
                        assert_eq!(&got[..len], &want[..], "{law:?} {name} len {len}");
                        assert_eq!(got[len], 0xA5, "{law:?} {name} len {len} wrote past end");
                    }
                    let input = &codes[offset..offset + len];
                    let want: Vec<i16> = input.iter().map(|&c| law.decode_sample(c)).collect();
                    for (name, decode) in decoders(law) {
                        let mut got = vec![0x5A5A_i16; len + 1];
                        decode(input, &mut got[..len]);
                        assert_eq!(&got[..len], &want[..], "{law:?} {name} len {len}");
                        assert_eq!(got[len], 0x5A5A, "{law:?} {name} len {len} wrote past end");
                    }
                }
            }
        }
    }

    #[test]
    fn mismatched_lengths_convert_the_common_prefix() {
        let pcm = [
            0i16, -1, 1000, -1000, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
        ];
        let mut short = [0u8; 3];
        assert_eq!(ulaw_encode(&pcm, &mut short), 3);
        assert_eq!(short, [0xFF, 0x7F, ulaw_encode_sample(1000)]);
        let mut long = [0xEEu8; 40];
        assert_eq!(alaw_encode(&pcm, &mut long), pcm.len());
        assert!(long[pcm.len()..].iter().all(|&b| b == 0xEE));
        let mut pcm_out = [0i16; 2];
        assert_eq!(ulaw_decode(&[0x00, 0x80, 0xFF], &mut pcm_out), 2);
        assert_eq!(pcm_out, [-32124, 32124]);
        assert_eq!(alaw_decode(&[], &mut pcm_out), 0);
    }

    /// Known values, checked by hand against the STL text and G.711 Tables
    /// 1a/2a (see also `reference::tests`).
    #[test]
    fn known_values() {
        assert_eq!(ulaw_encode_sample(0), 0xFF);
        assert_eq!(ulaw_encode_sample(-1), 0x7F);
        assert_eq!(ulaw_encode_sample(i16::MIN), 0x00);
        assert_eq!(ulaw_encode_sample(i16::MAX), 0x80);
        assert_eq!(ulaw_decode_sample(0x00), -32124);
        assert_eq!(ulaw_decode_sample(0x80), 32124);
        assert_eq!(ulaw_decode_sample(0xFF), 0);
        assert_eq!(ulaw_decode_sample(0x7F), 0);
        assert_eq!(alaw_encode_sample(0), 0xD5);
        assert_eq!(alaw_encode_sample(-1), 0x55);
        assert_eq!(alaw_encode_sample(i16::MAX), 0xAA);
        assert_eq!(alaw_encode_sample(i16::MIN), 0x2A);
        assert_eq!(alaw_decode_sample(0xD5), 8);
        assert_eq!(alaw_decode_sample(0x55), -8);
        assert_eq!(alaw_decode_sample(0xAA), 32256);
        assert_eq!(alaw_decode_sample(0x2A), -32256);
        // Where Sun's linear2ulaw (x >> 2, then negate) differs from the STL:
        // it maps -1..=-4 to 0x7E; the one's complement fold keeps them with
        // zero's interval, 0x7F. -5 is 0x7E in both.
        assert_eq!(ulaw_encode_sample(-4), 0x7F);
        assert_eq!(ulaw_encode_sample(-5), 0x7E);
        for law in LAWS {
            assert_eq!(law.encode_sample(0), law.silence());
        }
    }

    #[test]
    fn decode_then_encode_is_the_identity_on_codes() {
        // Each reconstruction value lies inside its own interval, so the
        // round trip returns the code (mu-law 0x7F and 0xFF both decode to 0,
        // which encodes as the positive zero 0xFF).
        for law in LAWS {
            for c in 0..=u8::MAX {
                let back = law.encode_sample(law.decode_sample(c));
                let expect = if law == Law::Pcmu && c == 0x7F {
                    0xFF
                } else {
                    c
                };
                assert_eq!(back, expect, "{law:?} {c:#04x}");
            }
        }
    }

    #[test]
    fn law_metadata() {
        assert_eq!(Law::Pcmu.payload_type(), 0);
        assert_eq!(Law::Pcma.payload_type(), 8);
        assert_eq!(Law::Pcmu.encoding_name(), "PCMU");
        assert_eq!(Law::Pcma.encoding_name(), "PCMA");
        let frame = [1000i16; FRAME_SAMPLES];
        let mut codes = [0u8; FRAME_SAMPLES];
        let mut back = [0i16; FRAME_SAMPLES];
        for law in LAWS {
            assert_eq!(law.encode(&frame, &mut codes), FRAME_SAMPLES);
            assert_eq!(law.decode(&codes, &mut back), FRAME_SAMPLES);
            assert!(back.iter().all(|&y| (y - 1000).abs() <= 32), "{law:?}");
        }
    }

    #[test]
    fn isa_is_detected_once_and_is_the_best_available() {
        let first = isa();
        assert_eq!(isa(), first);
        assert!(first.is_supported());
        assert!(Isa::Scalar.is_supported());
        // Nothing better than the detected one is supported.
        for better in Isa::ALL.iter().filter(|&&i| i.to_u8() > first.to_u8()) {
            assert!(
                !better.is_supported(),
                "{better:?} supported but {first:?} chosen"
            );
        }
        assert_eq!(Compander::new(Law::Pcma).isa(), first);
        assert_eq!(Compander::new(Law::Pcma).law(), Law::Pcma);
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        if std::is_x86_feature_detected!("avx2") {
            assert_eq!(first, Isa::Avx2);
        }
    }
}
