//! The ITU-T G.191 STL `g711.c` algorithms (v3.01), transcribed one sample at
//! a time: segment search by loop, exactly as the STL describes them.
//!
//! Where it sits: nowhere on the media path. This is the oracle the fast
//! implementations are tested against (exhaustively, every `i16` and every code)
//! and the "naive segment loop" baseline of `bench/g711.rs`.
//!
//! What the STL does that other well-known `g711.c` files (Sun's, CCITT's
//! `linear2ulaw`) do not: a negative input is folded with the one's complement
//! (`!x`, not `-x`) *before* the shift to 13 (A-law) or 14 (mu-law) bits, so
//! `-1` encodes like `0` apart from the sign bit, and `i16::MIN` needs no
//! special case. The decoders return the reconstruction value in the middle of
//! the quantisation interval (G.711 Tables 1a/2a), left-justified in 16 bits.
//!
//! All arithmetic is in `i32`, as C promotes `short` operands to `int`.

/// `ulaw_compress` of the STL for one sample: 14 MSBs of `x` to a mu-law code.
pub fn reference_ulaw_encode(x: i16) -> u8 {
    let x = i32::from(x);
    // 14-bit right-justified magnitude, one's complement for negatives; 33 is
    // the offset between the A-law and mu-law decision thresholds.
    let mut absno = if x < 0 {
        ((!x) >> 2) + 33
    } else {
        (x >> 2) + 33
    };
    if absno > 0x1FFF {
        absno = 0x1FFF;
    }
    // Segment (G.711 Table 2a, column 1), counted from 1.
    let mut i = absno >> 6;
    let mut segno = 1;
    while i != 0 {
        segno += 1;
        i >>= 1;
    }
    let high_nibble = 0x08 - segno;
    let low_nibble = 0x0F - ((absno >> segno) & 0x0F);
    let mut code = (high_nibble << 4) | low_nibble;
    if x >= 0 {
        code |= 0x80;
    }
    code as u8
}

/// `ulaw_expand` of the STL for one code: 14 bits, left-justified in 16.
pub fn reference_ulaw_decode(code: u8) -> i16 {
    let code = i32::from(code);
    // Sign bit set means a positive sample.
    let sign = if code < 0x80 { -1 } else { 1 };
    let mut mantissa = !code;
    let exponent = (mantissa >> 4) & 0x07;
    let segment = exponent + 1;
    mantissa &= 0x0F;
    let step = 4 << segment;
    let magnitude = (0x80 << exponent) + step * mantissa + step / 2 - 4 * 33;
    (sign * magnitude) as i16
}

/// `alaw_compress` of the STL for one sample: 13 MSBs of `x` to an A-law code.
pub fn reference_alaw_encode(x: i16) -> u8 {
    let x = i32::from(x);
    // 0 <= ix < 2048; one's complement for negatives.
    let mut ix = if x < 0 { (!x) >> 4 } else { x >> 4 };
    if ix > 15 {
        let mut iexp = 1;
        while ix > 16 + 15 {
            ix >>= 1;
            iexp += 1;
        }
        // Remove the leading 1 of the mantissa, put the exponent on top.
        ix -= 16;
        ix += iexp << 4;
    }
    if x >= 0 {
        ix |= 0x80;
    }
    // G.711 s2: the even bits are inverted on the line.
    (ix ^ 0x55) as u8
}

/// `alaw_expand` of the STL for one code: 13 bits, left-justified in 16.
pub fn reference_alaw_decode(code: u8) -> i16 {
    let code = i32::from(code);
    let ix = (code ^ 0x55) & 0x7F;
    let iexp = ix >> 4;
    let mut mant = ix & 0x0F;
    if iexp > 0 {
        mant += 16;
    }
    // Mantissa left-justified plus half a quantisation step.
    mant = (mant << 4) + 0x08;
    if iexp > 1 {
        mant <<= iexp - 1;
    }
    (if code > 127 { mant } else { -mant }) as i16
}

/// [`reference_ulaw_encode`] over a slice (the STL's `lseg` loop).
pub fn reference_ulaw_encode_slice(pcm: &[i16], out: &mut [u8]) {
    for (o, &x) in out.iter_mut().zip(pcm) {
        *o = reference_ulaw_encode(x);
    }
}

/// [`reference_ulaw_decode`] over a slice.
pub fn reference_ulaw_decode_slice(codes: &[u8], out: &mut [i16]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = reference_ulaw_decode(c);
    }
}

/// [`reference_alaw_encode`] over a slice.
pub fn reference_alaw_encode_slice(pcm: &[i16], out: &mut [u8]) {
    for (o, &x) in out.iter_mut().zip(pcm) {
        *o = reference_alaw_encode(x);
    }
}

/// [`reference_alaw_decode`] over a slice.
pub fn reference_alaw_decode_slice(codes: &[u8], out: &mut [i16]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = reference_alaw_decode(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values worked out by hand from the STL text (and G.711 Tables 1a/2a),
    /// so the oracle itself is pinned down, not just compared with copies.
    #[test]
    fn ulaw_known_values() {
        assert_eq!(reference_ulaw_encode(0), 0xFF);
        // One's complement fold: -1 lands in the same interval as 0.
        assert_eq!(reference_ulaw_encode(-1), 0x7F);
        assert_eq!(reference_ulaw_encode(i16::MAX), 0x80);
        assert_eq!(reference_ulaw_encode(i16::MIN), 0x00);
        // absno = 125 + 33 = 158: segment 3, mantissa (158 >> 3) & 15 = 3.
        assert_eq!(reference_ulaw_encode(500), 0xDC);
        assert_eq!(reference_ulaw_encode(-501), 0x5C);
        assert_eq!(reference_ulaw_decode(0x00), -32124);
        assert_eq!(reference_ulaw_decode(0x80), 32124);
        assert_eq!(reference_ulaw_decode(0xFF), 0);
        assert_eq!(reference_ulaw_decode(0x7F), 0);
        // 0xDC is the interval x in 476..=507 (x >> 2 in 119..=126); its
        // reconstruction value is the middle, 491.5 rounded up.
        assert_eq!(reference_ulaw_decode(0xDC), 492);
        assert_eq!(reference_ulaw_decode(0x5C), -492);
    }

    #[test]
    fn alaw_known_values() {
        assert_eq!(reference_alaw_encode(0), 0xD5);
        assert_eq!(reference_alaw_encode(-1), 0x55);
        assert_eq!(reference_alaw_encode(i16::MAX), 0xAA);
        assert_eq!(reference_alaw_encode(i16::MIN), 0x2A);
        // x >> 4 = 31: segment 1, mantissa 15 -> 0x9F, even bits inverted.
        assert_eq!(reference_alaw_encode(500), 0xCA);
        assert_eq!(reference_alaw_encode(-501), 0x4A);
        // 0xCA is the interval 496..=511; the middle is 503.5 -> 504.
        assert_eq!(reference_alaw_decode(0xCA), 504);
        assert_eq!(reference_alaw_decode(0x4A), -504);
        assert_eq!(reference_alaw_decode(0xD5), 8);
        assert_eq!(reference_alaw_decode(0x55), -8);
        assert_eq!(reference_alaw_decode(0xAA), 32256);
        assert_eq!(reference_alaw_decode(0x2A), -32256);
    }
}
