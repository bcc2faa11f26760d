//! RTCP (RFC 3550 s6): sender and receiver reports, SDES CNAME, BYE, and the
//! report schedule of one call leg.
//!
//! Where it sits: RTCP datagrams from the trunk (on port+1, or muxed on the RTP
//! port per RFC 5761, see [`super::packet::is_rtcp`]) go to
//! [`RtcpSession::handle_rtcp`], which remembers the peer's last SR (for our
//! LSR/DLSR) and computes the round-trip time from the peer's report about our
//! stream. When [`RtcpSession::poll_timeout`] passes, the driver calls
//! [`RtcpSession::poll_transmit`] with the leg's [`ReceiveStats`], and sends the
//! compound packet (SR or RR, then SDES CNAME) it writes into the driver's buffer.
//!
//! What it owns: the RTCP wire format (zero-copy views for parsing, writers into
//! caller buffers) and the little per-leg state reports need. Sans-IO: the
//! session never reads a clock. Wallclock (NTP) time is supplied once by the
//! caller as an anchor pair (`Instant`, [`NtpTime`]) and advanced with the
//! `Instant`s passed in; since both the LSR we hand out and the arrival time `A`
//! of the peer's report come from that same anchor, the RTT is exact even if the
//! anchor's wallclock is off.
//!
//! The report interval is fixed (5 s by default) rather than the randomized
//! s6.3.1 computation: a two-party unicast leg has no RTCP bandwidth to share,
//! and the driver can add jitter by choosing the first deadline.

use std::time::{Duration, Instant};

use super::stats::ReceiveStats;

pub const PT_SR: u8 = 200;
pub const PT_RR: u8 = 201;
pub const PT_SDES: u8 = 202;
pub const PT_BYE: u8 = 203;
pub const PT_APP: u8 = 204;
/// SDES item type CNAME (s6.5.1).
pub const SDES_CNAME: u8 = 1;
/// A 5-bit count field: at most 31 report blocks or BYE sources per packet.
pub const MAX_COUNT: usize = 31;
/// The report interval we use unless told otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

const HEADER_LEN: usize = 4;
const REPORT_BLOCK_LEN: usize = 24;
const SENDER_INFO_LEN: usize = 20;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// Why an RTCP datagram (or what we were asked to write) is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    #[error("RTCP packet shorter than its 4-byte header")]
    TooShort,
    #[error("RTCP version {0}, expected 2")]
    BadVersion(u8),
    #[error("RTCP length field runs past the datagram")]
    LengthBeyondBuffer,
    #[error("RTCP padding count is zero or exceeds the packet")]
    BadPadding,
    #[error("RTCP packet type {packet_type} too short for its count of {count}")]
    Truncated { packet_type: u8, count: u8 },
    #[error("SDES chunk is malformed")]
    BadSdes,
    #[error("more than 31 report blocks or sources")]
    TooMany,
    #[error("SDES item longer than 255 bytes")]
    ItemTooLong,
    #[error("output buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall { need: usize, have: usize },
}

/// A 64-bit NTP timestamp (RFC 5905 s6): seconds since 1900 in the high 32 bits,
/// fraction in the low 32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct NtpTime(pub u64);

impl NtpTime {
    /// From a duration since the Unix epoch (what `SystemTime` gives the driver).
    pub fn from_unix(since_epoch: Duration) -> NtpTime {
        let secs = since_epoch.as_secs() + NTP_UNIX_OFFSET_SECS;
        let frac = (u64::from(since_epoch.subsec_nanos()) << 32) / 1_000_000_000;
        NtpTime((secs << 32) | frac)
    }

    /// The middle 32 bits: the "compact" form used by LSR and RTT (s6.4.1).
    pub fn middle32(self) -> u32 {
        (self.0 >> 16) as u32
    }
}

impl std::ops::Add<Duration> for NtpTime {
    type Output = NtpTime;
    /// Wraps like the wire format does (in 2036).
    fn add(self, d: Duration) -> NtpTime {
        NtpTime(self.0.wrapping_add(duration_to_ntp(d)))
    }
}

/// A duration in 1/2^32 s units.
fn duration_to_ntp(d: Duration) -> u64 {
    (d.as_secs() << 32) + ((u64::from(d.subsec_nanos()) << 32) / 1_000_000_000)
}

/// A duration in the 1/65536 s units of DLSR, saturating.
fn duration_to_compact(d: Duration) -> u32 {
    let units = d.as_nanos() * 65_536 / 1_000_000_000;
    units.min(u128::from(u32::MAX)) as u32
}

/// RFC 3550 s6.4.1: RTT = A - LSR - DLSR, all in 1/65536 s, where `A` is the
/// middle 32 bits of the NTP time the report arrived. `None` when the peer has
/// not received an SR from us yet (LSR = 0) or the result is negative (clock
/// error or a stale block).
pub fn round_trip_time(arrival_middle32: u32, lsr: u32, dlsr: u32) -> Option<Duration> {
    if lsr == 0 {
        return None;
    }
    let rtt = arrival_middle32.wrapping_sub(lsr).wrapping_sub(dlsr);
    if rtt >= 0x8000_0000 {
        return None;
    }
    Some(Duration::from_nanos(
        u64::from(rtt) * 1_000_000_000 / 65_536,
    ))
}

/// One reception report block (s6.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// The source this block is about.
    pub ssrc: u32,
    /// Lost / expected since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative lost, a signed 24-bit value on the wire.
    pub cumulative_lost: i32,
    pub ext_highest_seq: u32,
    /// Interarrival jitter, RTP timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of the last SR from that source, 0 if none.
    pub lsr: u32,
    /// Delay since that SR, 1/65536 s.
    pub dlsr: u32,
}

impl ReportBlock {
    fn parse(b: &[u8]) -> ReportBlock {
        let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let lost24 = word(4) & 0x00ff_ffff;
        // Sign-extend the 24-bit two's complement value.
        let cumulative_lost = ((lost24 << 8) as i32) >> 8;
        ReportBlock {
            ssrc: word(0),
            fraction_lost: b[4],
            cumulative_lost,
            ext_highest_seq: word(8),
            jitter: word(12),
            lsr: word(16),
            dlsr: word(20),
        }
    }

    fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.ssrc.to_be_bytes());
        let lost = (self.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff) as u32) & 0x00ff_ffff;
        out[4..8].copy_from_slice(&((u32::from(self.fraction_lost) << 24) | lost).to_be_bytes());
        out[8..12].copy_from_slice(&self.ext_highest_seq.to_be_bytes());
        out[12..16].copy_from_slice(&self.jitter.to_be_bytes());
        out[16..20].copy_from_slice(&self.lsr.to_be_bytes());
        out[20..24].copy_from_slice(&self.dlsr.to_be_bytes());
    }
}

/// The sender-info section of an SR (s6.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SenderInfo {
    pub ntp: NtpTime,
    /// The same instant as `ntp`, in the sender's RTP clock.
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

/// Iterate over the report blocks of an SR or RR.
#[derive(Clone, Debug)]
pub struct ReportBlocks<'a>(std::slice::ChunksExact<'a, u8>);

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;
    fn next(&mut self) -> Option<ReportBlock> {
        self.0.next().map(ReportBlock::parse)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderReport<'a> {
    pub ssrc: u32,
    pub info: SenderInfo,
    blocks: &'a [u8],
}

impl<'a> SenderReport<'a> {
    pub fn report_blocks(&self) -> ReportBlocks<'a> {
        ReportBlocks(self.blocks.chunks_exact(REPORT_BLOCK_LEN))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiverReport<'a> {
    pub ssrc: u32,
    blocks: &'a [u8],
}

impl<'a> ReceiverReport<'a> {
    pub fn report_blocks(&self) -> ReportBlocks<'a> {
        ReportBlocks(self.blocks.chunks_exact(REPORT_BLOCK_LEN))
    }
}

/// One SDES chunk: a source and its CNAME, if the chunk carries one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SdesChunk<'a> {
    pub ssrc: u32,
    pub cname: Option<&'a [u8]>,
}

/// A source description packet, validated at parse time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceDescription<'a> {
    count: u8,
    body: &'a [u8],
}

impl<'a> SourceDescription<'a> {
    pub fn chunks(&self) -> SdesChunks<'a> {
        SdesChunks {
            left: self.count,
            rest: self.body,
        }
    }

    fn validate(&self) -> Result<(), RtcpError> {
        let mut it = self.chunks();
        for _ in 0..self.count {
            it.next_chunk()?;
        }
        Ok(())
    }
}

/// Iterator over SDES chunks; other items than CNAME are skipped.
#[derive(Clone, Debug)]
pub struct SdesChunks<'a> {
    left: u8,
    rest: &'a [u8],
}

impl<'a> SdesChunks<'a> {
    fn next_chunk(&mut self) -> Result<SdesChunk<'a>, RtcpError> {
        let b = self.rest;
        if b.len() < 4 {
            return Err(RtcpError::BadSdes);
        }
        let ssrc = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let mut pos = 4;
        let mut cname = None;
        // s6.5: items until a null octet, then pad to the next 32-bit boundary.
        loop {
            let item_type = *b.get(pos).ok_or(RtcpError::BadSdes)?;
            if item_type == 0 {
                pos += 1;
                break;
            }
            let len = *b.get(pos + 1).ok_or(RtcpError::BadSdes)? as usize;
            let text = b.get(pos + 2..pos + 2 + len).ok_or(RtcpError::BadSdes)?;
            if item_type == SDES_CNAME && cname.is_none() {
                cname = Some(text);
            }
            pos += 2 + len;
        }
        let end = pos.next_multiple_of(4).min(b.len());
        self.rest = &b[end..];
        self.left -= 1;
        Ok(SdesChunk { ssrc, cname })
    }
}

impl<'a> Iterator for SdesChunks<'a> {
    type Item = SdesChunk<'a>;
    fn next(&mut self) -> Option<SdesChunk<'a>> {
        if self.left == 0 {
            return None;
        }
        // Validated when the packet was parsed; an error here cannot happen, and
        // ending the iteration is the harmless answer if it did.
        self.next_chunk().ok()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Goodbye<'a> {
    sources: &'a [u8],
    pub reason: Option<&'a [u8]>,
}

impl<'a> Goodbye<'a> {
    pub fn sources(&self) -> impl Iterator<Item = u32> + 'a {
        self.sources
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// One packet of a compound RTCP datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtcpPacket<'a> {
    SenderReport(SenderReport<'a>),
    ReceiverReport(ReceiverReport<'a>),
    SourceDescription(SourceDescription<'a>),
    Goodbye(Goodbye<'a>),
    /// APP, feedback (RFC 4585) and anything newer: type, count and body.
    Other {
        packet_type: u8,
        count: u8,
        body: &'a [u8],
    },
}

/// Iterate over the packets of a compound RTCP datagram (s6.1). Yields an error
/// once and then stops: after a bad length nothing that follows can be framed.
pub fn parse_compound(buf: &[u8]) -> RtcpPackets<'_> {
    RtcpPackets { rest: buf }
}

#[derive(Clone, Debug)]
pub struct RtcpPackets<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for RtcpPackets<'a> {
    type Item = Result<RtcpPacket<'a>, RtcpError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let r = parse_one(self.rest);
        match r {
            Ok((pkt, used)) => {
                self.rest = &self.rest[used..];
                Some(Ok(pkt))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

fn parse_one(buf: &[u8]) -> Result<(RtcpPacket<'_>, usize), RtcpError> {
    if buf.len() < HEADER_LEN {
        return Err(RtcpError::TooShort);
    }
    let version = buf[0] >> 6;
    if version != 2 {
        return Err(RtcpError::BadVersion(version));
    }
    let count = buf[0] & 0x1f;
    let packet_type = buf[1];
    // s6.4.1: length in 32-bit words minus one, header included.
    let len = (usize::from(u16::from_be_bytes([buf[2], buf[3]])) + 1) * 4;
    if len > buf.len() {
        return Err(RtcpError::LengthBeyondBuffer);
    }
    let mut body = &buf[HEADER_LEN..len];
    if buf[0] & 0x20 != 0 {
        let pad = usize::from(*body.last().ok_or(RtcpError::BadPadding)?);
        if pad == 0 || pad > body.len() {
            return Err(RtcpError::BadPadding);
        }
        body = &body[..body.len() - pad];
    }
    let truncated = RtcpError::Truncated { packet_type, count };
    let word = |b: &[u8], i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let blocks_len = usize::from(count) * REPORT_BLOCK_LEN;
    let pkt = match packet_type {
        PT_SR => {
            if body.len() < 4 + SENDER_INFO_LEN + blocks_len {
                return Err(truncated);
            }
            let ntp = (u64::from(word(body, 4)) << 32) | u64::from(word(body, 8));
            RtcpPacket::SenderReport(SenderReport {
                ssrc: word(body, 0),
                info: SenderInfo {
                    ntp: NtpTime(ntp),
                    rtp_timestamp: word(body, 12),
                    packet_count: word(body, 16),
                    octet_count: word(body, 20),
                },
                // Profile-specific extensions after the blocks are ignored.
                blocks: &body[24..24 + blocks_len],
            })
        }
        PT_RR => {
            if body.len() < 4 + blocks_len {
                return Err(truncated);
            }
            RtcpPacket::ReceiverReport(ReceiverReport {
                ssrc: word(body, 0),
                blocks: &body[4..4 + blocks_len],
            })
        }
        PT_SDES => {
            let sdes = SourceDescription { count, body };
            sdes.validate()?;
            RtcpPacket::SourceDescription(sdes)
        }
        PT_BYE => {
            let n = usize::from(count) * 4;
            if body.len() < n {
                return Err(truncated);
            }
            // s6.6: optional length-prefixed reason after the sources.
            let reason = match body.get(n) {
                Some(&rlen) => Some(
                    body.get(n + 1..n + 1 + usize::from(rlen))
                        .ok_or(truncated)?,
                ),
                None => None,
            };
            RtcpPacket::Goodbye(Goodbye {
                sources: &body[..n],
                reason,
            })
        }
        _ => RtcpPacket::Other {
            packet_type,
            count,
            body,
        },
    };
    Ok((pkt, len))
}

fn check_room(out: &[u8], need: usize) -> Result<(), RtcpError> {
    if out.len() < need {
        Err(RtcpError::BufferTooSmall {
            need,
            have: out.len(),
        })
    } else {
        Ok(())
    }
}

fn write_header(out: &mut [u8], count: usize, packet_type: u8, len: usize) {
    debug_assert!(len.is_multiple_of(4) && count <= MAX_COUNT);
    out[0] = 0x80 | count as u8;
    out[1] = packet_type;
    out[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
}

/// Write a sender report (s6.4.1); returns its length.
pub fn write_sr(
    out: &mut [u8],
    ssrc: u32,
    info: &SenderInfo,
    blocks: &[ReportBlock],
) -> Result<usize, RtcpError> {
    if blocks.len() > MAX_COUNT {
        return Err(RtcpError::TooMany);
    }
    let len = HEADER_LEN + 4 + SENDER_INFO_LEN + blocks.len() * REPORT_BLOCK_LEN;
    check_room(out, len)?;
    write_header(out, blocks.len(), PT_SR, len);
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    out[8..16].copy_from_slice(&info.ntp.0.to_be_bytes());
    out[16..20].copy_from_slice(&info.rtp_timestamp.to_be_bytes());
    out[20..24].copy_from_slice(&info.packet_count.to_be_bytes());
    out[24..28].copy_from_slice(&info.octet_count.to_be_bytes());
    for (i, b) in blocks.iter().enumerate() {
        b.write(&mut out[28 + i * REPORT_BLOCK_LEN..]);
    }
    Ok(len)
}

/// Write a receiver report (s6.4.2); returns its length.
pub fn write_rr(out: &mut [u8], ssrc: u32, blocks: &[ReportBlock]) -> Result<usize, RtcpError> {
    if blocks.len() > MAX_COUNT {
        return Err(RtcpError::TooMany);
    }
    let len = HEADER_LEN + 4 + blocks.len() * REPORT_BLOCK_LEN;
    check_room(out, len)?;
    write_header(out, blocks.len(), PT_RR, len);
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    for (i, b) in blocks.iter().enumerate() {
        b.write(&mut out[8 + i * REPORT_BLOCK_LEN..]);
    }
    Ok(len)
}

/// Write an SDES packet with one chunk carrying only a CNAME (s6.5.1).
pub fn write_sdes_cname(out: &mut [u8], ssrc: u32, cname: &[u8]) -> Result<usize, RtcpError> {
    if cname.len() > 255 {
        return Err(RtcpError::ItemTooLong);
    }
    // SSRC, type, length, text, then at least one null octet up to a word boundary.
    let chunk = (4 + 2 + cname.len() + 1).next_multiple_of(4);
    let len = HEADER_LEN + chunk;
    check_room(out, len)?;
    write_header(out, 1, PT_SDES, len);
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    out[8] = SDES_CNAME;
    out[9] = cname.len() as u8;
    out[10..10 + cname.len()].copy_from_slice(cname);
    out[10 + cname.len()..len].fill(0);
    Ok(len)
}

/// Write a BYE (s6.6) for `sources`, with an optional reason.
pub fn write_bye(
    out: &mut [u8],
    sources: &[u32],
    reason: Option<&[u8]>,
) -> Result<usize, RtcpError> {
    if sources.len() > MAX_COUNT {
        return Err(RtcpError::TooMany);
    }
    let reason_len = match reason {
        Some(r) if r.len() > 255 => return Err(RtcpError::ItemTooLong),
        Some(r) => (1 + r.len()).next_multiple_of(4),
        None => 0,
    };
    let len = HEADER_LEN + sources.len() * 4 + reason_len;
    check_room(out, len)?;
    write_header(out, sources.len(), PT_BYE, len);
    for (i, s) in sources.iter().enumerate() {
        out[4 + i * 4..8 + i * 4].copy_from_slice(&s.to_be_bytes());
    }
    if let Some(r) = reason {
        let at = HEADER_LEN + sources.len() * 4;
        out[at] = r.len() as u8;
        out[at + 1..at + 1 + r.len()].copy_from_slice(r);
        out[at + 1 + r.len()..len].fill(0);
    }
    Ok(len)
}

/// What one incoming RTCP datagram told us.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RtcpInfo {
    /// The peer's sender report, if the datagram had one.
    pub sender_report: Option<(u32, SenderInfo)>,
    /// The peer's report block about our stream.
    pub report_about_us: Option<ReportBlock>,
    /// The RTT that block gave.
    pub rtt: Option<Duration>,
    /// The peer said goodbye.
    pub bye: bool,
}

/// RTCP state of one call leg: what reports need, and when the next one is due.
///
/// Poll contract: after [`handle_rtcp`](Self::handle_rtcp) or when the
/// deadline from [`poll_timeout`](Self::poll_timeout) passes, call
/// [`poll_transmit`](Self::poll_transmit) until it returns `Ok(None)`.
#[derive(Debug)]
pub struct RtcpSession {
    local_ssrc: u32,
    cname: Box<[u8]>,
    clock_rate: u32,
    interval: Duration,
    anchor: Instant,
    anchor_ntp: NtpTime,
    next_report: Instant,
    sent_packets: u32,
    sent_octets: u32,
    /// When we sent the last RTP packet and its timestamp: the SR's RTP time is
    /// extrapolated from it.
    last_sent: Option<(Instant, u32)>,
    sent_since_report: bool,
    /// The peer's last SR: its SSRC, the middle 32 bits of its NTP time, and
    /// when it arrived (for DLSR).
    last_sr: Option<(u32, u32, Instant)>,
    remote_report: Option<ReportBlock>,
    rtt: Option<Duration>,
}

impl RtcpSession {
    /// `now`/`ntp_now`: the same moment on the monotonic and the wall clock.
    /// The first report is due one interval after `now`.
    pub fn new(
        local_ssrc: u32,
        cname: &str,
        clock_rate: u32,
        now: Instant,
        ntp_now: NtpTime,
    ) -> RtcpSession {
        // A CNAME over 255 bytes cannot be sent; cut it rather than fail a call.
        let cname = &cname.as_bytes()[..cname.len().min(255)];
        RtcpSession {
            local_ssrc,
            cname: cname.into(),
            clock_rate: clock_rate.max(1),
            interval: DEFAULT_INTERVAL,
            anchor: now,
            anchor_ntp: ntp_now,
            next_report: now + DEFAULT_INTERVAL,
            sent_packets: 0,
            sent_octets: 0,
            last_sent: None,
            sent_since_report: false,
            last_sr: None,
            remote_report: None,
            rtt: None,
        }
    }

    /// Change the report interval; the next deadline moves with it.
    pub fn set_interval(&mut self, interval: Duration, now: Instant) {
        self.interval = interval;
        self.next_report = self.next_report.min(now + interval);
    }

    /// Wallclock time at `now`, from the anchor.
    pub fn ntp_at(&self, now: Instant) -> NtpTime {
        self.anchor_ntp + now.saturating_duration_since(self.anchor)
    }

    /// Account for one RTP packet we sent (for the SR counts, s6.4.1).
    pub fn on_rtp_sent(&mut self, now: Instant, rtp_timestamp: u32, payload_len: usize) {
        self.sent_packets = self.sent_packets.wrapping_add(1);
        self.sent_octets = self.sent_octets.wrapping_add(payload_len as u32);
        self.last_sent = Some((now, rtp_timestamp));
        self.sent_since_report = true;
    }

    /// Take in one RTCP datagram from the peer.
    pub fn handle_rtcp(&mut self, buf: &[u8], now: Instant) -> Result<RtcpInfo, RtcpError> {
        let mut info = RtcpInfo::default();
        for pkt in parse_compound(buf) {
            match pkt? {
                RtcpPacket::SenderReport(sr) => {
                    self.last_sr = Some((sr.ssrc, sr.info.ntp.middle32(), now));
                    info.sender_report = Some((sr.ssrc, sr.info));
                    self.take_blocks(sr.report_blocks(), now, &mut info);
                }
                RtcpPacket::ReceiverReport(rr) => {
                    self.take_blocks(rr.report_blocks(), now, &mut info);
                }
                RtcpPacket::Goodbye(_) => info.bye = true,
                RtcpPacket::SourceDescription(_) | RtcpPacket::Other { .. } => {}
            }
        }
        Ok(info)
    }

    fn take_blocks(&mut self, blocks: ReportBlocks<'_>, now: Instant, info: &mut RtcpInfo) {
        for b in blocks.filter(|b| b.ssrc == self.local_ssrc) {
            info.report_about_us = Some(b);
            self.remote_report = Some(b);
            let arrival = self.ntp_at(now).middle32();
            if let Some(rtt) = round_trip_time(arrival, b.lsr, b.dlsr) {
                self.rtt = Some(rtt);
                info.rtt = Some(rtt);
            }
        }
    }

    /// When the next report is due.
    pub fn poll_timeout(&self) -> Instant {
        self.next_report
    }

    /// If a report is due at `now`, write the compound packet (SR if we sent
    /// media since the last report, else RR; then SDES CNAME) into `out` and
    /// return its length. `stats` supplies the report block about the peer.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        stats: Option<&mut ReceiveStats>,
        out: &mut [u8],
    ) -> Result<Option<usize>, RtcpError> {
        if now < self.next_report {
            return Ok(None);
        }
        let n = self.write_report(now, stats, out)?;
        // Catch up without a burst if the driver was late by several intervals.
        self.next_report += self.interval;
        if self.next_report <= now {
            self.next_report = now + self.interval;
        }
        Ok(Some(n))
    }

    /// Write a report now, whatever the schedule (e.g. right before a BYE).
    pub fn write_report(
        &mut self,
        now: Instant,
        stats: Option<&mut ReceiveStats>,
        out: &mut [u8],
    ) -> Result<usize, RtcpError> {
        let mut block = stats.and_then(|s| s.take_report_block());
        if let (Some(b), Some((ssrc, lsr, at))) = (block.as_mut(), self.last_sr) {
            if b.ssrc == ssrc {
                b.lsr = lsr;
                b.dlsr = duration_to_compact(now.saturating_duration_since(at));
            }
        }
        let blocks = block.as_slice();
        let n = if self.sent_since_report {
            let ntp = self.ntp_at(now);
            let rtp_timestamp = match self.last_sent {
                Some((at, ts)) => {
                    let elapsed = now.saturating_duration_since(at);
                    let ticks = elapsed.as_nanos() * u128::from(self.clock_rate) / 1_000_000_000;
                    ts.wrapping_add(ticks as u32)
                }
                None => 0,
            };
            let info = SenderInfo {
                ntp,
                rtp_timestamp,
                packet_count: self.sent_packets,
                octet_count: self.sent_octets,
            };
            write_sr(out, self.local_ssrc, &info, blocks)?
        } else {
            write_rr(out, self.local_ssrc, blocks)?
        };
        let m = write_sdes_cname(&mut out[n..], self.local_ssrc, &self.cname)?;
        self.sent_since_report = false;
        Ok(n + m)
    }

    /// Write our BYE (after a final report, as s6.1 asks of a compound packet).
    pub fn write_bye(
        &mut self,
        now: Instant,
        stats: Option<&mut ReceiveStats>,
        out: &mut [u8],
    ) -> Result<usize, RtcpError> {
        let n = self.write_report(now, stats, out)?;
        Ok(n + write_bye(&mut out[n..], &[self.local_ssrc], None)?)
    }

    /// The last RTT measured from the peer's reports.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// The peer's last report block about our stream.
    pub fn remote_report(&self) -> Option<ReportBlock> {
        self.remote_report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block() -> ReportBlock {
        ReportBlock {
            ssrc: 0x1111_2222,
            fraction_lost: 25,
            cumulative_lost: -3,
            ext_highest_seq: 0x0001_0005,
            jitter: 77,
            lsr: 0xabcd_0123,
            dlsr: 0x0002_8000,
        }
    }

    #[test]
    fn rr_round_trip() {
        let mut out = [0u8; 64];
        let n = write_rr(&mut out, 42, &[block()]).unwrap();
        assert_eq!(n, 32);
        assert_eq!(&out[..4], &[0x81, 201, 0, 7]);
        let pkts: Vec<_> = parse_compound(&out[..n]).collect();
        assert_eq!(pkts.len(), 1);
        let RtcpPacket::ReceiverReport(rr) = pkts[0].unwrap() else {
            panic!("not an RR: {:?}", pkts[0]);
        };
        assert_eq!(rr.ssrc, 42);
        assert_eq!(rr.report_blocks().collect::<Vec<_>>(), vec![block()]);
    }

    #[test]
    fn sr_round_trip_with_sdes() {
        let info = SenderInfo {
            ntp: NtpTime(0x0123_4567_89ab_cdef),
            rtp_timestamp: 8000,
            packet_count: 50,
            octet_count: 8000,
        };
        let mut out = [0u8; 128];
        let n = write_sr(&mut out, 7, &info, &[block(), block()]).unwrap();
        assert_eq!(n, 28 + 48);
        let m = write_sdes_cname(&mut out[n..], 7, b"sb@host").unwrap();
        assert_eq!(m, 20); // 4 + 4 + 2 + 7 + 1 null, padded to 20
        let k = write_bye(&mut out[n + m..], &[7], Some(b"hangup")).unwrap();
        let mut it = parse_compound(&out[..n + m + k]);
        let Some(Ok(RtcpPacket::SenderReport(sr))) = it.next() else {
            panic!("expected SR");
        };
        assert_eq!((sr.ssrc, sr.info), (7, info));
        assert_eq!(sr.report_blocks().count(), 2);
        let Some(Ok(RtcpPacket::SourceDescription(sdes))) = it.next() else {
            panic!("expected SDES");
        };
        let chunks: Vec<_> = sdes.chunks().collect();
        assert_eq!(
            chunks,
            vec![SdesChunk {
                ssrc: 7,
                cname: Some(&b"sb@host"[..])
            }]
        );
        let Some(Ok(RtcpPacket::Goodbye(bye))) = it.next() else {
            panic!("expected BYE");
        };
        assert_eq!(bye.sources().collect::<Vec<_>>(), vec![7]);
        assert_eq!(bye.reason, Some(&b"hangup"[..]));
        assert!(it.next().is_none());
    }

    #[test]
    fn cumulative_lost_sign_and_clamp() {
        let mut out = [0u8; 32];
        for (v, want) in [
            (-1, -1),
            (0x7f_ffff, 0x7f_ffff),
            (0x100_0000, 0x7f_ffff),
            (-0x90_0000, -0x80_0000),
        ] {
            let b = ReportBlock {
                cumulative_lost: v,
                ..block()
            };
            write_rr(&mut out, 1, &[b]).unwrap();
            let Some(Ok(RtcpPacket::ReceiverReport(rr))) = parse_compound(&out).next() else {
                panic!()
            };
            assert_eq!(rr.report_blocks().next().unwrap().cumulative_lost, want);
        }
    }

    #[test]
    fn malformed() {
        let mut out = [0u8; 64];
        let n = write_rr(&mut out, 42, &[block()]).unwrap();
        // Truncated datagram: length claims more than we have.
        assert_eq!(
            parse_compound(&out[..n - 4]).next(),
            Some(Err(RtcpError::LengthBeyondBuffer))
        );
        // Count claims two blocks, length carries one.
        let mut b = out;
        b[0] = 0x82;
        assert!(matches!(
            parse_compound(&b[..n]).next(),
            Some(Err(RtcpError::Truncated {
                packet_type: 201,
                count: 2
            }))
        ));
        let mut b = out;
        b[0] = 0x41;
        assert_eq!(
            parse_compound(&b[..n]).next(),
            Some(Err(RtcpError::BadVersion(1)))
        );
        assert_eq!(
            parse_compound(&[0x80, 201]).next(),
            Some(Err(RtcpError::TooShort))
        );
        // Padding bigger than the packet.
        let mut b = out;
        b[0] |= 0x20;
        b[n - 1] = 200;
        assert_eq!(
            parse_compound(&b[..n]).next(),
            Some(Err(RtcpError::BadPadding))
        );
        // SDES item running past the packet.
        let bad_sdes = [0x81, 202, 0, 2, 0, 0, 0, 1, 1, 9, b'x', 0];
        assert_eq!(
            parse_compound(&bad_sdes).next(),
            Some(Err(RtcpError::BadSdes))
        );
        // After an error, the iterator stops.
        let mut two = [0u8; 40];
        two[..n].copy_from_slice(&out[..n]);
        two[n] = 0x00;
        let v: Vec<_> = parse_compound(&two[..n + 4]).collect();
        assert_eq!(v.len(), 2);
        assert!(v[1].is_err());
    }

    #[test]
    fn other_packet_types_pass_through() {
        // RFC 4585 PLI: PT 206, FMT 1.
        let pli = [0x81, 206, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        let Some(Ok(RtcpPacket::Other {
            packet_type,
            count,
            body,
        })) = parse_compound(&pli).next()
        else {
            panic!()
        };
        assert_eq!((packet_type, count, body.len()), (206, 1, 8));
    }

    #[test]
    fn write_errors() {
        let mut out = [0u8; 16];
        assert!(matches!(
            write_rr(&mut out, 1, &[block()]),
            Err(RtcpError::BufferTooSmall { need: 32, have: 16 })
        ));
        let many = [block(); 32];
        let mut big = [0u8; 2048];
        assert_eq!(write_rr(&mut big, 1, &many), Err(RtcpError::TooMany));
        assert_eq!(
            write_sdes_cname(&mut big, 1, &[b'a'; 256]),
            Err(RtcpError::ItemTooLong)
        );
    }

    #[test]
    fn rtt_formula() {
        // RFC 3550 s6.4.1 worked example: A = 0xb710:8000 (46864.5 s),
        // LSR = 0xb705:2000 (46853.125 s), DLSR = 0x0005:4000 (5.25 s):
        // RTT = 6.125 s.
        let rtt = round_trip_time(0xb710_8000, 0xb705_2000, 0x0005_4000).unwrap();
        assert_eq!(rtt, Duration::from_millis(6125));
        assert_eq!(round_trip_time(0xb710_8000, 0, 0x0005_4000), None);
        // DLSR larger than A - LSR: negative, rejected.
        assert_eq!(round_trip_time(0x0001_0000, 0x0000_8000, 0x0001_0000), None);
        // Across the 16-bit-seconds wrap.
        let rtt = round_trip_time(0x0000_1000, 0xffff_f000, 0).unwrap();
        assert_eq!(rtt, Duration::from_nanos(0x2000 * 1_000_000_000 / 65_536));
    }

    #[test]
    fn ntp_conversion() {
        let t = NtpTime::from_unix(Duration::new(1, 500_000_000));
        assert_eq!(t.0 >> 32, NTP_UNIX_OFFSET_SECS + 1);
        assert_eq!(t.0 as u32, 0x8000_0000);
        assert_eq!(
            (t + Duration::from_millis(500)).0 >> 32,
            NTP_UNIX_OFFSET_SECS + 2
        );
        assert_eq!(NtpTime(0x0000_1234_5678_0000).middle32(), 0x1234_5678);
    }

    /// Two sessions talk through an in-memory link with a fixed one-way delay;
    /// each measures the RTT of the other from the LSR/DLSR it echoes.
    #[test]
    fn session_pair_measures_rtt() {
        let t0 = Instant::now();
        // Wall clocks deliberately disagree by an hour: RTT must not care.
        let mut a = RtcpSession::new(
            0xaaaa,
            "a@sb",
            8000,
            t0,
            NtpTime::from_unix(Duration::from_secs(1_700_000_000)),
        );
        let mut b = RtcpSession::new(
            0xbbbb,
            "b@sb",
            8000,
            t0,
            NtpTime::from_unix(Duration::from_secs(1_700_003_600)),
        );
        let mut a_stats = ReceiveStats::new(8000);
        let mut b_stats = ReceiveStats::new(8000);
        let one_way = Duration::from_millis(40);
        // Both send 5 s of media to each other.
        for i in 0..250u32 {
            let now = t0 + Duration::from_millis(20 * u64::from(i));
            a.on_rtp_sent(now, i * 160, 160);
            b.on_rtp_sent(now, i * 160, 160);
            let us = (now + one_way - t0).as_micros() as u64;
            b_stats.on_packet(0xaaaa, i as u16, i * 160, 172, us);
            a_stats.on_packet(0xbbbb, i as u16, i * 160, 172, us);
        }
        assert_eq!(a.poll_timeout(), t0 + DEFAULT_INTERVAL);
        let mut buf = [0u8; 1500];
        // a's SR at 5 s reaches b at 5.04 s.
        let t = t0 + DEFAULT_INTERVAL;
        assert_eq!(
            a.poll_transmit(t - Duration::from_millis(1), Some(&mut a_stats), &mut buf),
            Ok(None)
        );
        let n = a
            .poll_transmit(t, Some(&mut a_stats), &mut buf)
            .unwrap()
            .unwrap();
        assert_eq!(a.poll_timeout(), t + DEFAULT_INTERVAL);
        let info = b.handle_rtcp(&buf[..n], t + one_way).unwrap();
        let (ssrc, sr) = info.sender_report.unwrap();
        assert_eq!(ssrc, 0xaaaa);
        assert_eq!(sr.packet_count, 250);
        assert_eq!(sr.octet_count, 250 * 160);
        // 5 s after the first packet at ts 0 is ts 40000.
        assert_eq!(sr.rtp_timestamp, 40_000);
        // a's SR carried a block about b's stream, but b has not sent an SR yet.
        assert_eq!(info.report_about_us.unwrap().lsr, 0);
        assert_eq!(info.rtt, None);
        // b reports 300 ms after the SR arrived: its block echoes a's SR with
        // DLSR = 300 ms, and a sees it 40 ms later: RTT = 380 - 300 = 80 ms.
        let t_b = t + Duration::from_millis(340);
        let n = b.write_report(t_b, Some(&mut b_stats), &mut buf).unwrap();
        let info = a.handle_rtcp(&buf[..n], t_b + one_way).unwrap();
        let rb = info.report_about_us.unwrap();
        assert_eq!(rb.ssrc, 0xaaaa);
        assert_eq!(rb.ext_highest_seq, 249);
        assert_eq!(rb.cumulative_lost, 0);
        assert_eq!(rb.dlsr, 300 * 65_536 / 1000);
        let rtt = info.rtt.unwrap();
        let err = rtt.as_secs_f64() - 0.080;
        assert!(err.abs() < 0.0001, "rtt {rtt:?}");
        assert_eq!(a.rtt(), Some(rtt));
        // No media from a since its last report: the next one is an RR.
        let n = a.write_report(t_b, Some(&mut a_stats), &mut buf).unwrap();
        assert_eq!(buf[1], PT_RR);
        assert_eq!(&buf[n - 16..n - 12], &[0x81, PT_SDES, 0, 3][..]);
        // BYE rides after a report.
        let n = a.write_bye(t_b, None, &mut buf).unwrap();
        assert!(b.handle_rtcp(&buf[..n], t_b).unwrap().bye);
    }

    #[test]
    fn late_driver_does_not_burst() {
        let t0 = Instant::now();
        let mut s = RtcpSession::new(1, "x", 8000, t0, NtpTime(0));
        let mut buf = [0u8; 200];
        let late = t0 + Duration::from_secs(23);
        assert!(s.poll_transmit(late, None, &mut buf).unwrap().is_some());
        assert_eq!(s.poll_timeout(), late + DEFAULT_INTERVAL);
        assert!(s.poll_transmit(late, None, &mut buf).unwrap().is_none());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            for p in parse_compound(&bytes) {
                if let Ok(RtcpPacket::SourceDescription(s)) = p {
                    let _ = s.chunks().count();
                }
                if let Ok(RtcpPacket::SenderReport(s)) = p {
                    let _ = s.report_blocks().count();
                }
            }
        }

        #[test]
        fn parse_never_panics_rtcp_shaped(mut bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 4..200), pt in 200u8..=204) {
            bytes[0] = (bytes[0] & 0x3f) | 0x80;
            bytes[1] = pt;
            let words = (bytes.len() / 4 - 1) as u16;
            bytes[2..4].copy_from_slice(&words.to_be_bytes());
            for p in parse_compound(&bytes) {
                if let Ok(RtcpPacket::SourceDescription(s)) = p {
                    let _ = s.chunks().count();
                }
            }
        }
    }
}
