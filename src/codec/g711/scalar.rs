//! Table-driven scalar G.711: the portable path, the tail of the SIMD kernels
//! and the single-sample functions.
//!
//! Every output depends on a few bits of the input only, so each direction is
//! one load from a table built at compile time:
//!
//! - mu-law encode depends on `x >> 2` (the STL keeps 14 bits): 16 Ki entries;
//! - A-law encode depends on `x >> 4` (13 bits, of which the sign): 4 Ki entries;
//! - decode: 256 entries per law.
//!
//! That is 21.5 KiB of tables, which fit in L1 next to a call's buffers. The
//! tables are filled at compile time by the closed forms below (a bit length
//! instead of the STL's segment loop); the tests check them, and the tables,
//! against [`super::reference`] for every input.

/// mu-law code of every `x >> 2`, indexed by `(x as u16) >> 2`.
static ULAW_ENCODE: [u8; 1 << 14] = build_ulaw_encode();
/// A-law code of every `x >> 4`, indexed by `(x as u16) >> 4`.
static ALAW_ENCODE: [u8; 1 << 12] = build_alaw_encode();
/// Linear value of every mu-law code.
static ULAW_DECODE: [i16; 256] = build_ulaw_decode();
/// Linear value of every A-law code.
static ALAW_DECODE: [i16; 256] = build_alaw_decode();

/// Number of significant bits of `v` (0 for 0).
const fn bit_len(v: u32) -> u32 {
    u32::BITS - v.leading_zeros()
}

/// mu-law code of a sample already shifted to 14 bits (`s = x >> 2`).
///
/// STL `ulaw_compress`: fold negatives with the one's complement
/// (`!x >> 2 == !(x >> 2)`), add 33 (mu-law thresholds sit 33 steps above
/// A-law's), clamp to 13 bits. The segment search `i = absno >> 6; segno = 1 +
/// bit_len(i)` is a bit length; the code is then `(segment - 1, mantissa)` with
/// both fields inverted, and the sign bit set for positive samples.
const fn ulaw_code_14(s: i32) -> u8 {
    let mag = if s < 0 { !s } else { s };
    let mut a = mag + 33;
    if a > 0x1FFF {
        a = 0x1FFF;
    }
    let exp = bit_len((a >> 6) as u32);
    let mant = (a >> (exp + 1)) & 0x0F;
    let code = ((exp as i32) << 4) | mant;
    let flip = if s < 0 { 0x7F } else { 0xFF };
    (code ^ flip) as u8
}

/// A-law code of a sample already shifted to 12 bits plus sign (`s = x >> 4`).
///
/// STL `alaw_compress`: one's complement fold, then the exponent is the bit
/// length of `ix >> 4` (0 for the first two segments, which share one step
/// size) and the mantissa the 4 bits below the leading one; the sign bit is set
/// for positive samples and the even bits are inverted (G.711 s2).
const fn alaw_code_12(s: i32) -> u8 {
    let ix = if s < 0 { !s } else { s };
    let exp = bit_len((ix >> 4) as u32);
    let mant = (ix >> exp.saturating_sub(1)) & 0x0F;
    let code = ((exp as i32) << 4) | mant;
    let flip = if s < 0 { 0x55 } else { 0xD5 };
    (code ^ flip) as u8
}

/// STL `ulaw_expand`: `((mant << 3) + 132) << exp` is the interval's lower
/// edge plus half a step plus the 132 (= 4 * 33) bias, which is then removed.
const fn ulaw_value(code: u8) -> i16 {
    let n = (code ^ 0x7F) as i32;
    let exp = (n >> 4) & 0x07;
    let mant = n & 0x0F;
    let mag = (((mant << 3) + 132) << exp) - 132;
    // Sign bit set means positive.
    (if code & 0x80 != 0 { mag } else { -mag }) as i16
}

/// STL `alaw_expand`: mantissa with its leading one (exponent > 0), half a
/// step added, shifted by the exponent (segments 0 and 1 share a step).
const fn alaw_value(code: u8) -> i16 {
    let ix = ((code ^ 0x55) & 0x7F) as i32;
    let exp = ix >> 4;
    let mut mant = ix & 0x0F;
    if exp > 0 {
        mant |= 0x10;
    }
    let shift = if exp > 1 { exp - 1 } else { 0 };
    let mag = ((mant << 4) + 8) << shift;
    (if code & 0x80 != 0 { mag } else { -mag }) as i16
}

const fn build_ulaw_encode() -> [u8; 1 << 14] {
    let mut t = [0u8; 1 << 14];
    let mut i = 0;
    while i < t.len() {
        // Sign-extend the 14-bit index back to `x >> 2`.
        let s = ((i as i32) << 18) >> 18;
        t[i] = ulaw_code_14(s);
        i += 1;
    }
    t
}

const fn build_alaw_encode() -> [u8; 1 << 12] {
    let mut t = [0u8; 1 << 12];
    let mut i = 0;
    while i < t.len() {
        let s = ((i as i32) << 20) >> 20;
        t[i] = alaw_code_12(s);
        i += 1;
    }
    t
}

const fn build_ulaw_decode() -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_value(i as u8);
        i += 1;
    }
    t
}

const fn build_alaw_decode() -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_value(i as u8);
        i += 1;
    }
    t
}

/// Encodes one linear sample to mu-law (PCMU).
#[inline]
pub fn ulaw_encode_sample(x: i16) -> u8 {
    // The index is < 2^14 by construction, so the bounds check folds away.
    ULAW_ENCODE[usize::from(x as u16 >> 2)]
}

/// Decodes one mu-law (PCMU) code to a linear sample.
#[inline]
pub fn ulaw_decode_sample(code: u8) -> i16 {
    ULAW_DECODE[usize::from(code)]
}

/// Encodes one linear sample to A-law (PCMA).
#[inline]
pub fn alaw_encode_sample(x: i16) -> u8 {
    ALAW_ENCODE[usize::from(x as u16 >> 4)]
}

/// Decodes one A-law (PCMA) code to a linear sample.
#[inline]
pub fn alaw_decode_sample(code: u8) -> i16 {
    ALAW_DECODE[usize::from(code)]
}

/// Table-driven mu-law encode of `min(pcm.len(), out.len())` samples; returns
/// that count.
pub fn ulaw_encode(pcm: &[i16], out: &mut [u8]) -> usize {
    for (o, &x) in out.iter_mut().zip(pcm) {
        *o = ulaw_encode_sample(x);
    }
    pcm.len().min(out.len())
}

/// Table-driven mu-law decode of `min(codes.len(), out.len())` samples;
/// returns that count.
pub fn ulaw_decode(codes: &[u8], out: &mut [i16]) -> usize {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = ulaw_decode_sample(c);
    }
    codes.len().min(out.len())
}

/// Table-driven A-law encode of `min(pcm.len(), out.len())` samples; returns
/// that count.
pub fn alaw_encode(pcm: &[i16], out: &mut [u8]) -> usize {
    for (o, &x) in out.iter_mut().zip(pcm) {
        *o = alaw_encode_sample(x);
    }
    pcm.len().min(out.len())
}

/// Table-driven A-law decode of `min(codes.len(), out.len())` samples;
/// returns that count.
pub fn alaw_decode(codes: &[u8], out: &mut [i16]) -> usize {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = alaw_decode_sample(c);
    }
    codes.len().min(out.len())
}

#[cfg(test)]
mod tests {
    use super::super::reference::*;
    use super::*;

    // The exhaustive comparisons of every path live in `super::tests`; these
    // pin the closed forms the tables are built from.

    #[test]
    fn closed_forms_match_reference_for_every_input() {
        for x in i16::MIN..=i16::MAX {
            let s = i32::from(x);
            assert_eq!(
                ulaw_code_14(s >> 2),
                reference_ulaw_encode(x),
                "mu-law x={x}"
            );
            assert_eq!(
                alaw_code_12(s >> 4),
                reference_alaw_encode(x),
                "A-law x={x}"
            );
        }
        for c in 0..=u8::MAX {
            assert_eq!(
                ulaw_value(c),
                reference_ulaw_decode(c),
                "mu-law code={c:#04x}"
            );
            assert_eq!(
                alaw_value(c),
                reference_alaw_decode(c),
                "A-law code={c:#04x}"
            );
        }
    }

    #[test]
    fn slice_fns_convert_the_common_prefix() {
        let pcm = [0i16, -1, 500, -501];
        let mut out = [0u8; 2];
        assert_eq!(ulaw_encode(&pcm, &mut out), 2);
        assert_eq!(out, [0xFF, 0x7F]);
        let mut pcm_out = [7i16; 6];
        assert_eq!(alaw_decode(&[0xD5, 0x55], &mut pcm_out), 2);
        assert_eq!(pcm_out, [8, -8, 7, 7, 7, 7]);
    }
}
