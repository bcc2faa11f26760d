//! RTP packet wire format (RFC 3550 s5.1, header extensions s5.3.1).
//!
//! Where it sits: the first thing an RTP datagram meets after the socket. The
//! parsed [`RtpPacket`] feeds [`super::stats::ReceiveStats`] (sequence, timestamp,
//! SSRC), the [`super::dtmf::DtmfReceiver`] (telephone-event payload type) and the
//! [`super::jitter_buffer::JitterBuffer`] (payload, by range, so the `Bytes` of the
//! datagram can be sliced without a copy). On the way out [`RtpHeader::write`]
//! writes header and payload into a buffer the caller owns.
//!
//! What it owns: the syntax only. A parse never allocates and never panics on peer
//! input; every length the packet claims (CSRC count, extension length, padding
//! count) is checked against the datagram before it is used.

use std::ops::Range;

/// The only RTP version there is (RFC 3550 s5.1).
pub const RTP_VERSION: u8 = 2;
/// Fixed header: V/P/X/CC, M/PT, sequence, timestamp, SSRC.
pub const FIXED_HEADER_LEN: usize = 12;

/// Why a datagram is not a usable RTP packet. Each variant names the field that lied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("RTP packet shorter than the 12-byte fixed header ({len} bytes)")]
    TooShort { len: usize },
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    #[error("CSRC count {count} runs past the end of the packet")]
    CsrcBeyondLength { count: u8 },
    #[error("header extension runs past the end of the packet")]
    ExtensionBeyondLength,
    #[error("padding count {count} is zero or exceeds the payload")]
    BadPadding { count: u8 },
    #[error("output buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall { need: usize, have: usize },
}

/// A header extension (RFC 3550 s5.3.1): the profile-defined 16 bits and the
/// extension body (a whole number of 32-bit words), borrowed from the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extension<'a> {
    pub profile: u16,
    pub data: &'a [u8],
}

/// A validated view over one RTP datagram. Accessors read the bytes in place.
#[derive(Clone, Copy, Debug)]
pub struct RtpPacket<'a> {
    buf: &'a [u8],
    /// Start of the payload: after CSRCs and extension.
    payload_start: usize,
    /// End of the payload: before padding.
    payload_end: usize,
    /// Start of the extension body, 0 if there is none.
    ext_start: usize,
}

impl<'a> RtpPacket<'a> {
    /// Parse and validate `buf` (one whole datagram). Never allocates.
    pub fn parse(buf: &'a [u8]) -> Result<RtpPacket<'a>, RtpError> {
        let len = buf.len();
        if len < FIXED_HEADER_LEN {
            return Err(RtpError::TooShort { len });
        }
        let b0 = buf[0];
        let version = b0 >> 6;
        if version != RTP_VERSION {
            return Err(RtpError::BadVersion(version));
        }
        let cc = b0 & 0x0f;
        let mut pos = FIXED_HEADER_LEN + 4 * cc as usize;
        if pos > len {
            return Err(RtpError::CsrcBeyondLength { count: cc });
        }
        let mut ext_start = 0;
        if b0 & 0x10 != 0 {
            // s5.3.1: 16-bit profile, 16-bit length in 32-bit words, excluding
            // the 4-byte extension header itself.
            if pos + 4 > len {
                return Err(RtpError::ExtensionBeyondLength);
            }
            let words = u16::from_be_bytes([buf[pos + 2], buf[pos + 3]]) as usize;
            ext_start = pos + 4;
            pos = ext_start + 4 * words;
            if pos > len {
                return Err(RtpError::ExtensionBeyondLength);
            }
        }
        let mut end = len;
        if b0 & 0x20 != 0 {
            // s5.1: the last octet counts the padding octets including itself, so
            // zero is malformed, and padding may not eat into the header.
            let count = buf[len - 1];
            if count == 0 || count as usize > len - pos {
                return Err(RtpError::BadPadding { count });
            }
            end = len - count as usize;
        }
        Ok(RtpPacket {
            buf,
            payload_start: pos,
            payload_end: end,
            ext_start,
        })
    }

    pub fn version(&self) -> u8 {
        self.buf[0] >> 6
    }
    pub fn has_padding(&self) -> bool {
        self.buf[0] & 0x20 != 0
    }
    pub fn marker(&self) -> bool {
        self.buf[1] & 0x80 != 0
    }
    pub fn payload_type(&self) -> u8 {
        self.buf[1] & 0x7f
    }
    pub fn sequence(&self) -> u16 {
        u16::from_be_bytes([self.buf[2], self.buf[3]])
    }
    pub fn timestamp(&self) -> u32 {
        u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]])
    }
    pub fn ssrc(&self) -> u32 {
        u32::from_be_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]])
    }
    pub fn csrc_count(&self) -> u8 {
        self.buf[0] & 0x0f
    }
    /// The contributing sources (s5.1), in packet order.
    pub fn csrcs(&self) -> impl Iterator<Item = u32> + 'a {
        let n = self.csrc_count() as usize;
        self.buf[FIXED_HEADER_LEN..FIXED_HEADER_LEN + 4 * n]
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
    pub fn extension(&self) -> Option<Extension<'a>> {
        if self.ext_start == 0 {
            return None;
        }
        let s = self.ext_start;
        Some(Extension {
            profile: u16::from_be_bytes([self.buf[s - 4], self.buf[s - 3]]),
            data: &self.buf[s..self.payload_start],
        })
    }
    /// The payload without padding.
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[self.payload_range()]
    }
    /// Where the payload sits in the datagram: the driver uses it with
    /// `Bytes::slice` to hand the payload on without copying.
    pub fn payload_range(&self) -> Range<usize> {
        self.payload_start..self.payload_end
    }
    /// The header fields we act on, detached from the buffer.
    pub fn header(&self) -> RtpHeader {
        RtpHeader {
            marker: self.marker(),
            payload_type: self.payload_type(),
            sequence: self.sequence(),
            timestamp: self.timestamp(),
            ssrc: self.ssrc(),
        }
    }
}

/// The fixed-header fields of a packet we send, or of one we received.
///
/// We never send CSRCs or header extensions (a gateway leg is a single source), so
/// [`RtpHeader::write`] always writes the 12-byte fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeader {
    /// Write header and `payload` into `out`; returns the packet length.
    /// The payload type is masked to 7 bits: a wider value is a bug of ours, and
    /// the mask keeps it from flipping the marker bit on the wire.
    pub fn write(&self, payload: &[u8], out: &mut [u8]) -> Result<usize, RtpError> {
        let need = FIXED_HEADER_LEN + payload.len();
        if out.len() < need {
            return Err(RtpError::BufferTooSmall {
                need,
                have: out.len(),
            });
        }
        self.write_header(out)?;
        out[FIXED_HEADER_LEN..need].copy_from_slice(payload);
        Ok(need)
    }

    /// Write only the 12-byte header, for callers that encode the payload in
    /// place right after it (the G.711 encoder writes into `out[12..]`).
    pub fn write_header(&self, out: &mut [u8]) -> Result<usize, RtpError> {
        if out.len() < FIXED_HEADER_LEN {
            return Err(RtpError::BufferTooSmall {
                need: FIXED_HEADER_LEN,
                have: out.len(),
            });
        }
        out[0] = RTP_VERSION << 6;
        out[1] = (u8::from(self.marker) << 7) | (self.payload_type & 0x7f);
        out[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        Ok(FIXED_HEADER_LEN)
    }
}

/// RTP/RTCP demultiplexing on one port (RFC 5761 s4): RTCP packet types 200-204
/// (and the feedback types up to 207) put the second octet in 192..=223, a range
/// RTP payload types with the marker bit must avoid. Version is checked too.
pub fn is_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 2 && buf[0] >> 6 == RTP_VERSION && (192..=223).contains(&buf[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let h = RtpHeader {
            marker: true,
            payload_type: 0,
            sequence: 0xfffe,
            timestamp: 0xdead_beef,
            ssrc: 0x0102_0304,
        };
        let mut out = vec![0u8; 200];
        let n = h.write(&[0xff; 160], &mut out).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        assert_eq!(bytes.len(), 172);
        let p = RtpPacket::parse(&bytes).unwrap();
        assert_eq!(p.version(), 2);
        assert!(p.marker());
        assert_eq!(p.payload_type(), 0);
        assert_eq!(p.sequence(), 0xfffe);
        assert_eq!(p.timestamp(), 0xdead_beef);
        assert_eq!(p.ssrc(), 0x0102_0304);
        assert_eq!(p.payload(), &[0xff; 160][..]);
        assert_eq!(p.payload_range(), 12..172);
        assert!(p.extension().is_none());
        assert_eq!(p.csrcs().count(), 0);
        let mut again = vec![0u8; 172];
        p.header().write(p.payload(), &mut again).unwrap();
        assert_eq!(again, bytes);
    }

    #[test]
    fn exact_header_bytes() {
        let h = RtpHeader {
            marker: false,
            payload_type: 101,
            sequence: 1,
            timestamp: 160,
            ssrc: 7,
        };
        let mut out = [0u8; 12];
        assert_eq!(h.write_header(&mut out), Ok(12));
        assert_eq!(out, [0x80, 101, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7]);
    }

    #[test]
    fn csrc_extension_padding() {
        // V=2 P=1 X=1 CC=2
        let mut b = vec![0xb2, 0x08, 0, 5, 0, 0, 0, 10, 0, 0, 0, 1];
        b.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 3]); // CSRCs
        b.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]); // one-byte ext, 1 word
        b.extend_from_slice(&[1, 2, 3]); // payload
        b.extend_from_slice(&[0, 0, 3]); // 3 bytes padding
        let p = RtpPacket::parse(&b).unwrap();
        assert_eq!(p.csrcs().collect::<Vec<_>>(), vec![2, 3]);
        let e = p.extension().unwrap();
        assert_eq!(e.profile, 0xbede);
        assert_eq!(e.data, &[0x10, 0xaa, 0, 0]);
        assert_eq!(p.payload(), &[1, 2, 3]);
        assert!(p.has_padding());
        assert_eq!(p.payload_type(), 8);
    }

    #[test]
    fn malformed() {
        assert_eq!(
            RtpPacket::parse(&[0x80; 11]).unwrap_err(),
            RtpError::TooShort { len: 11 }
        );
        let mut b = sample();
        b[0] = 0x40;
        assert_eq!(RtpPacket::parse(&b).unwrap_err(), RtpError::BadVersion(1));
        // CC=15 needs 72 bytes of header.
        let mut b = vec![0x8f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        b.extend_from_slice(&[0; 20]);
        assert_eq!(
            RtpPacket::parse(&b).unwrap_err(),
            RtpError::CsrcBeyondLength { count: 15 }
        );
        // X set but no room for the extension header.
        let b = [0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbe, 0xde];
        assert_eq!(
            RtpPacket::parse(&b).unwrap_err(),
            RtpError::ExtensionBeyondLength
        );
        // Extension claims 4 words, carries 1.
        let b = [
            0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbe, 0xde, 0, 4, 1, 2, 3, 4,
        ];
        assert_eq!(
            RtpPacket::parse(&b).unwrap_err(),
            RtpError::ExtensionBeyondLength
        );
        // Padding count larger than the payload.
        let mut b = sample();
        b[0] |= 0x20;
        *b.last_mut().unwrap() = 200;
        assert_eq!(
            RtpPacket::parse(&b).unwrap_err(),
            RtpError::BadPadding { count: 200 }
        );
        // Padding count zero.
        *b.last_mut().unwrap() = 0;
        assert_eq!(
            RtpPacket::parse(&b).unwrap_err(),
            RtpError::BadPadding { count: 0 }
        );
        // Padding exactly the whole payload is fine: empty payload.
        *b.last_mut().unwrap() = 160;
        assert_eq!(RtpPacket::parse(&b).unwrap().payload(), &[] as &[u8]);
    }

    #[test]
    fn output_buffer_too_small() {
        let h = RtpHeader::default();
        let mut out = [0u8; 20];
        assert_eq!(
            h.write(&[0; 10], &mut out),
            Err(RtpError::BufferTooSmall { need: 22, have: 20 })
        );
        assert!(h.write_header(&mut out[..11]).is_err());
    }

    #[test]
    fn demux() {
        assert!(is_rtcp(&[0x80, 200, 0, 6]));
        assert!(is_rtcp(&[0x81, 201, 0, 7]));
        assert!(!is_rtcp(&sample()));
        assert!(!is_rtcp(&[0x80, 0x80 | 96]));
        assert!(!is_rtcp(&[0x80]));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            if let Ok(p) = RtpPacket::parse(&bytes) {
                // Every accessor must stay in bounds on whatever parsed.
                let _ = (p.payload(), p.extension(), p.csrcs().count(), p.header());
                proptest::prop_assert!(p.payload_range().end <= bytes.len());
            }
        }

        #[test]
        fn parse_never_panics_rtp_shaped(mut bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 12..120)) {
            // Force version 2 so the deeper length checks get exercised.
            bytes[0] = (bytes[0] & 0x3f) | 0x80;
            if let Ok(p) = RtpPacket::parse(&bytes) {
                let _ = (p.payload(), p.extension(), p.csrcs().count());
            }
        }
    }
}
