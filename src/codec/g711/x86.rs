//! SSSE3 and AVX2 G.711 kernels (x86 and x86_64).
//!
//! Where it sits: behind the runtime dispatch in [`super`]; nothing else calls
//! these. Each kernel computes the STL's result lane-wise on 16-bit lanes, so
//! one 128-bit vector carries 8 samples and one 256-bit vector 16:
//!
//! - encode: the segment search and the mantissa extraction are one
//!   int-to-float conversion. A 16-bit magnitude `v = 1.m * 2^e` converts to
//!   `f32` exactly (so the MXCSR rounding mode and FTZ/DAZ, which other
//!   audio code may change, cannot matter), and its bits shifted right by 19
//!   are `(127 + e) << 4 | m4`, with `m4` the 4 bits after the leading one.
//!   For both laws the segment is
//!   `e` minus a constant and the mantissa is exactly `m4`, so one subtraction
//!   yields `segment << 4 | mantissa` (A-law also takes the linear first two
//!   segments into account, see [`alaw_encode_128`]);
//! - decode: the per-lane variable shift by the exponent is a multiply:
//!   `pshufb` maps the exponent to a power of two and `pmullw` shifts by it
//!   (operands bounded so the product fits 16 bits); the sign is applied with
//!   xor/sub.
//!
//! Slices are walked in whole vectors; the last vector is placed flush with the
//! end and may overlap the one before it. Conversion is a pure function of
//! each element, so the overlap just rewrites equal values, and no scalar tail
//! is needed unless the slice is shorter than one vector.
//!
//! The kernels are safe `#[target_feature]` functions (Rust 1.87: intrinsics
//! without pointer arguments are safe inside them), so calling one from code
//! compiled without the feature is `unsafe`: the dispatcher does so only after
//! `is_x86_feature_detected!`. The only `unsafe` in here is the pointer
//! loads and stores, in `convert_blocks!`. The two slices should have equal
//! length (the dispatcher cuts them to the common prefix); a kernel only
//! `debug_assert`s it and never touches anything past the shorter one.

#[cfg(target_arch = "x86")]
use core::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

use super::scalar;

/// Samples per SSSE3 encode/decode step: two 128-bit vectors of `i16`, one of
/// codes.
const SSE_BLOCK: usize = 16;
/// Samples per AVX2 encode/decode step: two 256-bit vectors of `i16`, one of
/// codes.
const AVX_BLOCK: usize = 32;

/// The start of the vector step after the one at `i`, over `n >= block`
/// elements: `i + block`, except that the last step is placed flush with the
/// end, `n - block`, possibly overlapping the one before. `None` after the
/// step that reaches `n`.
#[inline]
fn next_block_start(i: usize, n: usize, block: usize) -> Option<usize> {
    (i + block < n).then(|| (i + block).min(n - block))
}

// ---------------------------------------------------------------------------
// 128-bit lane math (SSSE3). Lanes are 16-bit; codes travel in the low byte.
// ---------------------------------------------------------------------------

/// `table[lane]` for lanes in 0..=15, as a 16-bit value with a zero high byte.
#[inline]
#[target_feature(enable = "ssse3")]
fn lookup16_128(table: __m128i, idx: __m128i) -> __m128i {
    // An index byte with bit 7 set makes pshufb write 0: that clears the high
    // byte of each lane.
    _mm_shuffle_epi8(table, _mm_or_si128(idx, _mm_set1_epi16(0x8000u16 as i16)))
}

/// `(f32 bits of v) >> 19` for each 16-bit lane `v` (0..=32767): the biased
/// exponent and the top 4 mantissa bits, `(127 + e) << 4 | m` where
/// `v = 1.m... * 2^e`, exactly (an integer below 2^24 converts without
/// rounding). For `v = 0` it is 0.
///
/// This is the segment search and mantissa extraction of both laws in one
/// instruction: the segment is `e` minus a constant and the mantissa is the 4
/// bits after the leading one.
#[inline]
#[target_feature(enable = "ssse3")]
fn exponent_mantissa_128(v: __m128i) -> __m128i {
    let zero = _mm_setzero_si128();
    let lo = _mm_castps_si128(_mm_cvtepi32_ps(_mm_unpacklo_epi16(v, zero)));
    let hi = _mm_castps_si128(_mm_cvtepi32_ps(_mm_unpackhi_epi16(v, zero)));
    // At most (127 + 14) << 4 | 15: the signed pack is exact.
    _mm_packs_epi32(_mm_srli_epi32::<19>(lo), _mm_srli_epi32::<19>(hi))
}

/// mu-law codes of 8 samples (STL `ulaw_compress`, closed form).
#[inline]
#[target_feature(enable = "ssse3")]
fn ulaw_encode_128(x: __m128i) -> __m128i {
    let sign = _mm_srai_epi16::<15>(x);
    // One's complement fold: 0..=32767, same as the STL's `~x` for x < 0.
    let mag = _mm_xor_si128(x, sign);
    let a = _mm_min_epi16(
        _mm_add_epi16(_mm_srli_epi16::<2>(mag), _mm_set1_epi16(33)),
        _mm_set1_epi16(0x1FFF),
    );
    // a in 33..=8191, so e >= 5: segment - 1 = e - 5 and the mantissa is
    // (a >> (e - 4)) & 15, the 4 bits after the leading one.
    let code = _mm_sub_epi16(exponent_mantissa_128(a), _mm_set1_epi16((127 + 5) << 4));
    // Invert exponent and mantissa; set the sign bit for positive samples.
    let flip = _mm_xor_si128(
        _mm_and_si128(sign, _mm_set1_epi16(0x80)),
        _mm_set1_epi16(0xFF),
    );
    _mm_xor_si128(code, flip)
}

/// A-law codes of 8 samples (STL `alaw_compress`, closed form).
#[inline]
#[target_feature(enable = "ssse3")]
fn alaw_encode_128(x: __m128i) -> __m128i {
    let sign = _mm_srai_epi16::<15>(x);
    let mag = _mm_xor_si128(x, sign);
    let ix = _mm_srli_epi16::<4>(mag);
    // For ix >= 16 the exponent is e - 3 and the mantissa (ix >> (e - 4)) & 15.
    // Below 32 the code is ix itself (segments 0 and 1 share a step), and the
    // float form is <= ix there (negative below 8), while above 31 it is
    // >= 32: the max picks the right one in every case.
    let float_code = _mm_sub_epi16(exponent_mantissa_128(ix), _mm_set1_epi16((127 + 3) << 4));
    let code = _mm_max_epi16(float_code, _mm_min_epi16(ix, _mm_set1_epi16(31)));
    // Sign bit for positive samples, then the even-bit inversion.
    let flip = _mm_xor_si128(
        _mm_and_si128(sign, _mm_set1_epi16(0x80)),
        _mm_set1_epi16(0xD5),
    );
    _mm_xor_si128(code, flip)
}

/// Linear values of 8 mu-law codes (lanes 0..=255).
#[inline]
#[target_feature(enable = "ssse3")]
fn ulaw_decode_128(c: __m128i) -> __m128i {
    let n = _mm_xor_si128(c, _mm_set1_epi16(0x7F));
    let exp = _mm_and_si128(_mm_srli_epi16::<4>(n), _mm_set1_epi16(0x07));
    let mant = _mm_and_si128(n, _mm_set1_epi16(0x0F));
    let pow = _mm_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 0, 0, 0, 0, 0, 0, 0, 0);
    // ((mant << 3) + 132) << exp, at most 252 << 7 = 32256: fits.
    let base = _mm_add_epi16(_mm_slli_epi16::<3>(mant), _mm_set1_epi16(132));
    let mag = _mm_sub_epi16(
        _mm_mullo_epi16(base, lookup16_128(pow, exp)),
        _mm_set1_epi16(132),
    );
    // Codes below 0x80 are negative: all-ones there, then negate by
    // (mag ^ -1) - (-1).
    let neg = _mm_cmpgt_epi16(_mm_set1_epi16(0x80), c);
    _mm_sub_epi16(_mm_xor_si128(mag, neg), neg)
}

/// Linear values of 8 A-law codes (lanes 0..=255).
#[inline]
#[target_feature(enable = "ssse3")]
fn alaw_decode_128(c: __m128i) -> __m128i {
    let ix = _mm_and_si128(_mm_xor_si128(c, _mm_set1_epi16(0x55)), _mm_set1_epi16(0x7F));
    let exp = _mm_srli_epi16::<4>(ix);
    let mant = _mm_and_si128(ix, _mm_set1_epi16(0x0F));
    // Leading one for exp > 0. The high byte of `exp` is zero and indexes
    // entry 0, which is 0, so no masking is needed here.
    let lead = _mm_shuffle_epi8(
        _mm_setr_epi8(0, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0),
        exp,
    );
    let pow = _mm_setr_epi8(1, 1, 2, 4, 8, 16, 32, 64, 0, 0, 0, 0, 0, 0, 0, 0);
    // ((mant | lead) << 4) + 8, at most 504, shifted by up to 6: 32256.
    let base = _mm_add_epi16(
        _mm_slli_epi16::<4>(_mm_or_si128(mant, lead)),
        _mm_set1_epi16(8),
    );
    let mag = _mm_mullo_epi16(base, lookup16_128(pow, exp));
    let neg = _mm_cmpgt_epi16(_mm_set1_epi16(0x80), c);
    _mm_sub_epi16(_mm_xor_si128(mag, neg), neg)
}

/// Converts `$input` into `$out` in steps of `$block` elements, running
/// `$step` with `$p`/`$o` bound to the step's input and output pointers; slices
/// shorter than one step go to the scalar `$tail`. A macro rather than a
/// helper taking a closure, so the step body is expanded inside the
/// `#[target_feature]` kernel and its intrinsics inline.
macro_rules! convert_blocks {
    ($input:expr, $out:expr, $block:expr, $tail:path, |$p:ident, $o:ident| $step:block) => {{
        let (input, out) = ($input, $out);
        debug_assert_eq!(input.len(), out.len());
        let n = input.len().min(out.len());
        if n < $block {
            $tail(&input[..n], &mut out[..n]);
        } else {
            let mut i = 0;
            loop {
                // SAFETY: i <= n - $block (i starts at 0 and next_block_start
                // never goes past n - $block), so the $block elements read
                // from input[i..] and written to out[i..] are in bounds of
                // both slices (each has at least n elements); the step uses
                // unaligned loads and stores only, and needs no CPU feature
                // beyond the enclosing kernel's, which its caller guarantees.
                unsafe {
                    let $p = input.as_ptr().add(i);
                    let $o = out.as_mut_ptr().add(i);
                    $step
                }
                match next_block_start(i, n, $block) {
                    Some(next) => i = next,
                    None => break,
                }
            }
        }
    }};
}

/// SSSE3 mu-law encode.
///
/// `pcm` and `out` should have equal length; only the common prefix is
/// written.
#[target_feature(enable = "ssse3")]
pub(super) fn ulaw_encode_ssse3(pcm: &[i16], out: &mut [u8]) {
    convert_blocks!(pcm, out, SSE_BLOCK, scalar::ulaw_encode, |p, o| {
        let lo = ulaw_encode_128(_mm_loadu_si128(p.cast()));
        let hi = ulaw_encode_128(_mm_loadu_si128(p.add(8).cast()));
        // Every lane holds a code in 0..=255: the saturating pack is exact.
        _mm_storeu_si128(o.cast(), _mm_packus_epi16(lo, hi));
    })
}

/// SSSE3 A-law encode.
#[target_feature(enable = "ssse3")]
pub(super) fn alaw_encode_ssse3(pcm: &[i16], out: &mut [u8]) {
    convert_blocks!(pcm, out, SSE_BLOCK, scalar::alaw_encode, |p, o| {
        let lo = alaw_encode_128(_mm_loadu_si128(p.cast()));
        let hi = alaw_encode_128(_mm_loadu_si128(p.add(8).cast()));
        _mm_storeu_si128(o.cast(), _mm_packus_epi16(lo, hi));
    })
}

/// SSSE3 mu-law decode.
#[target_feature(enable = "ssse3")]
pub(super) fn ulaw_decode_ssse3(codes: &[u8], out: &mut [i16]) {
    convert_blocks!(codes, out, SSE_BLOCK, scalar::ulaw_decode, |p, o| {
        let v = _mm_loadu_si128(p.cast());
        let zero = _mm_setzero_si128();
        _mm_storeu_si128(o.cast(), ulaw_decode_128(_mm_unpacklo_epi8(v, zero)));
        _mm_storeu_si128(o.add(8).cast(), ulaw_decode_128(_mm_unpackhi_epi8(v, zero)));
    })
}

/// SSSE3 A-law decode.
#[target_feature(enable = "ssse3")]
pub(super) fn alaw_decode_ssse3(codes: &[u8], out: &mut [i16]) {
    convert_blocks!(codes, out, SSE_BLOCK, scalar::alaw_decode, |p, o| {
        let v = _mm_loadu_si128(p.cast());
        let zero = _mm_setzero_si128();
        _mm_storeu_si128(o.cast(), alaw_decode_128(_mm_unpacklo_epi8(v, zero)));
        _mm_storeu_si128(o.add(8).cast(), alaw_decode_128(_mm_unpackhi_epi8(v, zero)));
    })
}

// ---------------------------------------------------------------------------
// 256-bit lane math (AVX2): the same formulas on 16 lanes. vpshufb looks up
// within each 128-bit half, so every table is broadcast to both halves.
// ---------------------------------------------------------------------------

/// A 16-entry byte table in both 128-bit halves.
#[inline]
#[target_feature(enable = "avx2")]
fn table256(t: __m128i) -> __m256i {
    _mm256_broadcastsi128_si256(t)
}

/// `table[lane]` for lanes in 0..=15 (see [`lookup16_128`]).
#[inline]
#[target_feature(enable = "avx2")]
fn lookup16_256(table: __m256i, idx: __m256i) -> __m256i {
    _mm256_shuffle_epi8(
        table,
        _mm256_or_si256(idx, _mm256_set1_epi16(0x8000u16 as i16)),
    )
}

/// See [`exponent_mantissa_128`]. `vpunpck*` and `vpackssdw` both work
/// within 128-bit halves, so the lane order comes back unchanged.
#[inline]
#[target_feature(enable = "avx2")]
fn exponent_mantissa_256(v: __m256i) -> __m256i {
    let zero = _mm256_setzero_si256();
    let lo = _mm256_castps_si256(_mm256_cvtepi32_ps(_mm256_unpacklo_epi16(v, zero)));
    let hi = _mm256_castps_si256(_mm256_cvtepi32_ps(_mm256_unpackhi_epi16(v, zero)));
    _mm256_packs_epi32(_mm256_srli_epi32::<19>(lo), _mm256_srli_epi32::<19>(hi))
}

/// mu-law codes of 16 samples (see [`ulaw_encode_128`]).
#[inline]
#[target_feature(enable = "avx2")]
fn ulaw_encode_256(x: __m256i) -> __m256i {
    let sign = _mm256_srai_epi16::<15>(x);
    let mag = _mm256_xor_si256(x, sign);
    let a = _mm256_min_epi16(
        _mm256_add_epi16(_mm256_srli_epi16::<2>(mag), _mm256_set1_epi16(33)),
        _mm256_set1_epi16(0x1FFF),
    );
    let code = _mm256_sub_epi16(exponent_mantissa_256(a), _mm256_set1_epi16((127 + 5) << 4));
    let flip = _mm256_xor_si256(
        _mm256_and_si256(sign, _mm256_set1_epi16(0x80)),
        _mm256_set1_epi16(0xFF),
    );
    _mm256_xor_si256(code, flip)
}

/// A-law codes of 16 samples (see [`alaw_encode_128`]).
#[inline]
#[target_feature(enable = "avx2")]
fn alaw_encode_256(x: __m256i) -> __m256i {
    let sign = _mm256_srai_epi16::<15>(x);
    let mag = _mm256_xor_si256(x, sign);
    let ix = _mm256_srli_epi16::<4>(mag);
    let float_code = _mm256_sub_epi16(exponent_mantissa_256(ix), _mm256_set1_epi16((127 + 3) << 4));
    let code = _mm256_max_epi16(float_code, _mm256_min_epi16(ix, _mm256_set1_epi16(31)));
    let flip = _mm256_xor_si256(
        _mm256_and_si256(sign, _mm256_set1_epi16(0x80)),
        _mm256_set1_epi16(0xD5),
    );
    _mm256_xor_si256(code, flip)
}

/// Linear values of 16 mu-law codes (see [`ulaw_decode_128`]).
#[inline]
#[target_feature(enable = "avx2")]
fn ulaw_decode_256(c: __m256i) -> __m256i {
    let n = _mm256_xor_si256(c, _mm256_set1_epi16(0x7F));
    let exp = _mm256_and_si256(_mm256_srli_epi16::<4>(n), _mm256_set1_epi16(0x07));
    let mant = _mm256_and_si256(n, _mm256_set1_epi16(0x0F));
    let pow = table256(_mm_setr_epi8(
        1, 2, 4, 8, 16, 32, 64, -128, 0, 0, 0, 0, 0, 0, 0, 0,
    ));
    let base = _mm256_add_epi16(_mm256_slli_epi16::<3>(mant), _mm256_set1_epi16(132));
    let mag = _mm256_sub_epi16(
        _mm256_mullo_epi16(base, lookup16_256(pow, exp)),
        _mm256_set1_epi16(132),
    );
    let neg = _mm256_cmpgt_epi16(_mm256_set1_epi16(0x80), c);
    _mm256_sub_epi16(_mm256_xor_si256(mag, neg), neg)
}

/// Linear values of 16 A-law codes (see [`alaw_decode_128`]).
#[inline]
#[target_feature(enable = "avx2")]
fn alaw_decode_256(c: __m256i) -> __m256i {
    let ix = _mm256_and_si256(
        _mm256_xor_si256(c, _mm256_set1_epi16(0x55)),
        _mm256_set1_epi16(0x7F),
    );
    let exp = _mm256_srli_epi16::<4>(ix);
    let mant = _mm256_and_si256(ix, _mm256_set1_epi16(0x0F));
    let lead = _mm256_shuffle_epi8(
        table256(_mm_setr_epi8(
            0, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0,
        )),
        exp,
    );
    let pow = table256(_mm_setr_epi8(
        1, 1, 2, 4, 8, 16, 32, 64, 0, 0, 0, 0, 0, 0, 0, 0,
    ));
    let base = _mm256_add_epi16(
        _mm256_slli_epi16::<4>(_mm256_or_si256(mant, lead)),
        _mm256_set1_epi16(8),
    );
    let mag = _mm256_mullo_epi16(base, lookup16_256(pow, exp));
    let neg = _mm256_cmpgt_epi16(_mm256_set1_epi16(0x80), c);
    _mm256_sub_epi16(_mm256_xor_si256(mag, neg), neg)
}

/// AVX2 mu-law encode. Slices shorter than one 32-sample step take the SSSE3
/// path (AVX2 implies SSSE3).
///
/// `pcm` and `out` should have equal length; only the common prefix is
/// written.
#[target_feature(enable = "avx2")]
pub(super) fn ulaw_encode_avx2(pcm: &[i16], out: &mut [u8]) {
    convert_blocks!(pcm, out, AVX_BLOCK, ulaw_encode_ssse3, |p, o| {
        let lo = ulaw_encode_256(_mm256_loadu_si256(p.cast()));
        let hi = ulaw_encode_256(_mm256_loadu_si256(p.add(16).cast()));
        // vpackuswb packs within 128-bit halves: [lo0-7 hi0-7 lo8-15 hi8-15];
        // put the 64-bit quarters back in sample order.
        let packed = _mm256_packus_epi16(lo, hi);
        _mm256_storeu_si256(o.cast(), _mm256_permute4x64_epi64::<0b11_01_10_00>(packed));
    })
}

/// AVX2 A-law encode.
#[target_feature(enable = "avx2")]
pub(super) fn alaw_encode_avx2(pcm: &[i16], out: &mut [u8]) {
    convert_blocks!(pcm, out, AVX_BLOCK, alaw_encode_ssse3, |p, o| {
        let lo = alaw_encode_256(_mm256_loadu_si256(p.cast()));
        let hi = alaw_encode_256(_mm256_loadu_si256(p.add(16).cast()));
        let packed = _mm256_packus_epi16(lo, hi);
        _mm256_storeu_si256(o.cast(), _mm256_permute4x64_epi64::<0b11_01_10_00>(packed));
    })
}

/// AVX2 mu-law decode.
#[target_feature(enable = "avx2")]
pub(super) fn ulaw_decode_avx2(codes: &[u8], out: &mut [i16]) {
    convert_blocks!(codes, out, AVX_BLOCK, ulaw_decode_ssse3, |p, o| {
        let lo = _mm256_cvtepu8_epi16(_mm_loadu_si128(p.cast()));
        let hi = _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(16).cast()));
        _mm256_storeu_si256(o.cast(), ulaw_decode_256(lo));
        _mm256_storeu_si256(o.add(16).cast(), ulaw_decode_256(hi));
    })
}

/// AVX2 A-law decode.
#[target_feature(enable = "avx2")]
pub(super) fn alaw_decode_avx2(codes: &[u8], out: &mut [i16]) {
    convert_blocks!(codes, out, AVX_BLOCK, alaw_decode_ssse3, |p, o| {
        let lo = _mm256_cvtepu8_epi16(_mm_loadu_si128(p.cast()));
        let hi = _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(16).cast()));
        _mm256_storeu_si256(o.cast(), alaw_decode_256(lo));
        _mm256_storeu_si256(o.add(16).cast(), alaw_decode_256(hi));
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every start offset the kernels visit for `n` elements.
    fn starts(n: usize, block: usize) -> Vec<usize> {
        let mut v = vec![0];
        while let Some(next) = next_block_start(*v.last().unwrap(), n, block) {
            v.push(next);
        }
        v
    }

    #[test]
    fn steps_cover_every_element_and_overlap_only_at_the_end() {
        assert_eq!(starts(16, 16), [0]);
        assert_eq!(starts(17, 16), [0, 1]);
        assert_eq!(starts(160, 32), [0, 32, 64, 96, 128]);
        assert_eq!(starts(161, 32), [0, 32, 64, 96, 128, 129]);
        for block in [16, 32] {
            for n in block..400 {
                let mut hits = vec![0u8; n];
                let starts = starts(n, block);
                for &i in &starts {
                    assert!(i + block <= n, "n={n}");
                    hits[i..i + block].iter_mut().for_each(|h| *h += 1);
                }
                assert!(hits.iter().all(|&h| h >= 1), "n={n} not covered");
                // Only the last step may overlap, and only the one before it.
                assert!(starts
                    .windows(2)
                    .rev()
                    .skip(1)
                    .all(|w| w[1] == w[0] + block));
                assert_eq!(starts.len(), n.div_ceil(block), "n={n}");
            }
        }
    }
}
