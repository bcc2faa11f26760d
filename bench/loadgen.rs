//! `sb-loadgen`: how many G.711 calls in two-party rooms one switchboard shard
//! carries at 50 packets/s each way with under 0.1% loss (issue 4).
//!
//! Where it sits: outside the server, as an independent SIP/RTP peer. It uses none
//! of switchboard's modules, so a bug shared by both sides cannot hide itself. It
//! plays a trunk: places calls over SIP/UDP in pairs to one called number (the
//! server's callee dispatch rule puts both callers in room `call-<number>`, where
//! each hears the other through the mixer), sends 50 pps of PCMU per call, and
//! measures what the server sends back.
//!
//! Threads, so that one core drives more than 1000 calls:
//! - main: the SIP UAC of every call (one UDP socket), the phases of a step, the
//!   measurements (Prometheus scrape, `/proc/<pid>/stat`, `getrusage`);
//! - sender: walks the call table every 20 ms on absolute deadlines;
//! - receiver: one epoll over every call's RTP socket, kernel receive timestamps
//!   (`SO_TIMESTAMPNS`), per-call RFC 3550 statistics.
//!
//! The call table of a step (`Slot`s) is shared with the media threads through
//! atomics: no lock and no allocation on the packet path.
//!
//! One step: place N calls at `--cps`, media starts per call as soon as it is
//! answered; settle; open the measurement window (receiver snapshot, sender count,
//! server counters, CPU times); wait `--duration`; close it; BYE every call at
//! `--bye-cps` (its media stops first) and wait for the 200s.
//!
//! Modes: `run` (one step), `ramp` (steps until loss, failures or CPU saturation),
//! `self-test` (against `responder`, an in-process stand-in server that relays the
//! two parties of a room and drops packets on purpose, to show the loss accounting
//! is exact).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rand::Rng;

/// Packetization time: 20 ms of PCMU per packet (`a=ptime:20`).
const PTIME: Duration = Duration::from_millis(20);
const PACKETS_PER_SEC: f64 = 50.0;
/// RTP clock of PCMU (RFC 3551 s4.5.14) and samples per 20 ms packet.
const CLOCK_HZ: u32 = 8000;
const SAMPLES_PER_PACKET: u32 = 160;
/// RFC 3261 s17.1.1.1: T1 (RTT estimate), T2 (cap for non-INVITE retransmits).
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
/// RFC 3261 s17.1.2.2: Timer F = 64*T1, how long a BYE transaction may take.
const TIMER_F: Duration = Duration::from_secs(32);
/// Sub-ticks per 20 ms period over which the calls' packets are spread.
const PHASES: u32 = 10;
/// A sender more than this late skips ticks rather than bursting (and says so).
const CATCH_UP_LIMIT: Duration = Duration::from_millis(100);
/// Received packets may fall short of 50 pps x window by this much (boundary
/// effects of the window) before we say the server under-sends.
const RATE_TOLERANCE_PCT: f64 = 1.0;
/// Generator CPU (all its threads, % of one core) above which its own numbers are
/// no longer trusted and a ramp stops.
const GEN_CPU_LIMIT_PCT: f64 = 90.0;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why the generator stopped. Exit code 2 for usage and an absent server, 1 else.
#[derive(Debug)]
enum LoadError {
    Usage(String),
    Io {
        what: &'static str,
        err: io::Error,
    },
    ServerSilent {
        server: SocketAddr,
        waited: Duration,
    },
    ReceiverStuck,
    TooManyFds {
        need: u64,
        hard: u64,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Usage(m) => write!(f, "{m}\n\n{USAGE}"),
            LoadError::Io { what, err } => write!(f, "{what}: {err}"),
            LoadError::ServerSilent { server, waited } => write!(
                f,
                "server {server} did not answer SIP OPTIONS within {:.1} s (is switchboard running, and is its SIP port right?)",
                waited.as_secs_f64()
            ),
            LoadError::ReceiverStuck => write!(f, "RTP receiver thread did not answer a snapshot request within 2 s"),
            LoadError::TooManyFds { need, hard } => {
                write!(f, "need {need} file descriptors but the hard limit (ulimit -Hn) is {hard}")
            }
        }
    }
}

impl LoadError {
    fn exit_code(&self) -> u8 {
        match self {
            LoadError::Usage(_) | LoadError::ServerSilent { .. } | LoadError::TooManyFds { .. } => {
                2
            }
            _ => 1,
        }
    }

    fn io(what: &'static str) -> impl FnOnce(io::Error) -> LoadError {
        move |err| LoadError::Io { what, err }
    }
}

// ---------------------------------------------------------------------------
// RTP: packets, RFC 3550 receive statistics, the tone we send
// ---------------------------------------------------------------------------

mod rtp {
    pub const HEADER_LEN: usize = 12;
    pub const PAYLOAD_LEN: usize = 160;
    pub const PACKET_LEN: usize = HEADER_LEN + PAYLOAD_LEN;
    pub const PT_PCMU: u8 = 0;
    /// RFC 3550 A.1: a forward jump below this is loss; more is a resync.
    const MAX_DROPOUT: u16 = 3000;
    /// RFC 3550 A.1: a packet this far behind the highest is late, not a restart.
    const MAX_MISORDER: u16 = 100;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Header {
        pub pt: u8,
        pub marker: bool,
        pub seq: u16,
        pub ts: u32,
        pub ssrc: u32,
    }

    pub fn write_header(buf: &mut [u8; PACKET_LEN], h: &Header) {
        buf[0] = 0x80; // V=2, no padding, no extension, no CSRC
        buf[1] = (u8::from(h.marker) << 7) | (h.pt & 0x7f);
        buf[2..4].copy_from_slice(&h.seq.to_be_bytes());
        buf[4..8].copy_from_slice(&h.ts.to_be_bytes());
        buf[8..12].copy_from_slice(&h.ssrc.to_be_bytes());
    }

    #[derive(Debug, PartialEq, Eq)]
    pub enum Kind {
        Rtp(Header),
        Rtcp,
        Other,
    }

    pub fn classify(buf: &[u8]) -> Kind {
        if buf.len() < HEADER_LEN || buf[0] >> 6 != 2 {
            return Kind::Other;
        }
        // RFC 5761 s4: with rtcp-mux, RTCP packet types 192..=223 sit where RTP
        // has marker + payload type; no RTP payload type we accept is there.
        if (192..=223).contains(&buf[1]) {
            return Kind::Rtcp;
        }
        Kind::Rtp(Header {
            pt: buf[1] & 0x7f,
            marker: buf[1] & 0x80 != 0,
            seq: u16::from_be_bytes([buf[2], buf[3]]),
            ts: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        })
    }

    /// G.711 mu-law encoder (ITU-T G.711 with the usual 0x84 bias), used once to
    /// build the tone we send; speed does not matter here.
    pub fn ulaw(sample: i16) -> u8 {
        const BIAS: i32 = 0x84;
        const CLIP: i32 = 32635;
        let mut x = i32::from(sample);
        let sign = if x < 0 {
            x = -x;
            0x80
        } else {
            0
        };
        x = x.min(CLIP) + BIAS;
        // x is in 0x84..=0x7fff: its top bit is bit 7..=14, the segment 0..=7.
        let exp = (31 - (x as u32).leading_zeros()) as i32 - 7;
        let mant = (x >> (exp + 3)) & 0x0f;
        !(sign | (exp << 4) | mant) as u8
    }

    /// 400 Hz at -12 dBFS: 20 samples per period, so 160 samples hold exactly 8
    /// periods and the same payload in every packet is a continuous tone (the
    /// mixer gets real signal, not digital silence it might skip).
    pub fn tone_payload() -> [u8; PAYLOAD_LEN] {
        let mut p = [0u8; PAYLOAD_LEN];
        for (i, b) in p.iter_mut().enumerate() {
            let phase = 2.0 * std::f64::consts::PI * (i % 20) as f64 / 20.0;
            *b = ulaw((8200.0 * phase.sin()) as i16);
        }
        p
    }

    /// What we know of one received stream (RFC 3550 A.1 sequence tracking, A.3
    /// loss, A.8 interarrival jitter in microseconds). A new SSRC or a jump of more
    /// than MAX_DROPOUT starts a new segment; expected packets of earlier segments
    /// are kept, so loss stays cumulative across a server-side restart.
    #[derive(Debug, Clone, Default)]
    pub struct RxStream {
        started: bool,
        ssrc: u32,
        base: u64,
        ext_max: u64,
        prior_expected: u64,
        pub received: u64,
        pub restarts: u32,
        last_arrival_ns: i64,
        last_ts: u32,
        /// RFC 3550 A.8 J, kept in microseconds instead of timestamp units.
        pub jitter_us: f64,
    }

    impl RxStream {
        pub fn expected(&self) -> u64 {
            if self.started {
                self.prior_expected + self.ext_max - self.base + 1
            } else {
                0
            }
        }

        /// Cumulative lost (RFC 3550 A.3): negative with duplicates.
        pub fn lost(&self) -> i64 {
            self.expected() as i64 - self.received as i64
        }

        fn start_segment(&mut self, ext: u64) {
            if self.started {
                self.prior_expected += self.ext_max - self.base + 1;
                self.restarts += 1;
            }
            self.started = true;
            self.base = ext;
            self.ext_max = ext;
        }

        /// Account one packet that arrived at `arrival_ns` (any fixed-origin clock).
        /// Returns |D(i-1, i)| in microseconds (A.8) when there was a previous packet.
        pub fn on_packet(&mut self, h: &Header, arrival_ns: i64, clock_hz: u32) -> Option<f64> {
            self.received += 1;
            if !self.started || h.ssrc != self.ssrc {
                // Extended numbers start one cycle up so that late packets from
                // before the first one cannot underflow.
                self.start_segment(65536 + u64::from(h.seq));
                self.ssrc = h.ssrc;
                self.jitter_us = 0.0;
                self.last_arrival_ns = arrival_ns;
                self.last_ts = h.ts;
                return None;
            }
            let max16 = self.ext_max as u16;
            let udelta = h.seq.wrapping_sub(max16);
            if udelta != 0 && udelta < MAX_DROPOUT {
                // In order, perhaps with a gap; a wrap of the 16-bit number is
                // handled by adding the modular distance.
                self.ext_max += u64::from(udelta);
            } else if udelta != 0 && udelta <= u16::MAX - MAX_MISORDER {
                // A jump no loss explains: the sender restarted its numbering.
                let ext = self.ext_max + u64::from(udelta);
                self.start_segment(ext);
            }
            // else: a duplicate or a late packet; received, expected unchanged.

            let d_arrival_us = (arrival_ns - self.last_arrival_ns) as f64 / 1000.0;
            let d_ts_us =
                f64::from(h.ts.wrapping_sub(self.last_ts) as i32) * 1e6 / f64::from(clock_hz);
            let d = (d_arrival_us - d_ts_us).abs();
            self.jitter_us += (d - self.jitter_us) / 16.0;
            self.last_arrival_ns = arrival_ns;
            self.last_ts = h.ts;
            Some(d)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn h(seq: u16, ts: u32) -> Header {
            Header {
                pt: 0,
                marker: false,
                seq,
                ts,
                ssrc: 7,
            }
        }

        fn feed(s: &mut RxStream, seqs: &[u16]) {
            for (i, &q) in seqs.iter().enumerate() {
                s.on_packet(&h(q, u32::from(q) * 160), i as i64 * 20_000_000, 8000);
            }
        }

        #[test]
        fn ulaw_matches_g711_anchor_points() {
            assert_eq!(ulaw(0), 0xff);
            assert_eq!(ulaw(32767), 0x80);
            assert_eq!(ulaw(-32768), 0x00);
            assert_eq!(ulaw(-1), 0x7f);
            // Segment boundary of the G.711 table: 0x7f -> 0xef ... monotone.
            let mut prev = ulaw(0);
            for s in (0..32767).step_by(97) {
                let c = ulaw(s as i16);
                assert!(
                    !c <= 0x7f && !c >= !prev,
                    "positive codes grow with the sample"
                );
                prev = c;
            }
        }

        #[test]
        fn header_round_trip_and_rtcp_demux() {
            let mut b = [0u8; PACKET_LEN];
            let hd = Header {
                pt: 0,
                marker: true,
                seq: 65535,
                ts: 0xdead_beef,
                ssrc: 42,
            };
            write_header(&mut b, &hd);
            assert_eq!(classify(&b), Kind::Rtp(hd));
            // An RTCP receiver report (PT 201) on a muxed port.
            assert_eq!(
                classify(&[0x81, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0]),
                Kind::Rtcp
            );
            assert_eq!(classify(&[0x80, 0, 0]), Kind::Other);
            assert_eq!(classify(&[0x40; 12]), Kind::Other);
        }

        #[test]
        fn gaps_are_lost_packets() {
            let mut s = RxStream::default();
            feed(&mut s, &[10, 11, 13, 14, 17]);
            assert_eq!(s.expected(), 8);
            assert_eq!(s.received, 5);
            assert_eq!(s.lost(), 3);
        }

        #[test]
        fn sequence_wrap_is_continuous() {
            let mut s = RxStream::default();
            feed(&mut s, &[65533, 65534, 65535, 0, 2, 3]);
            assert_eq!(s.expected(), 7);
            assert_eq!(s.lost(), 1);
            assert_eq!(s.restarts, 0);
        }

        #[test]
        fn duplicates_and_late_packets_do_not_move_expected() {
            let mut s = RxStream::default();
            feed(&mut s, &[100, 102, 101, 102, 103]);
            assert_eq!(s.expected(), 4);
            assert_eq!(s.received, 5);
            assert_eq!(
                s.lost(),
                -1,
                "RFC 3550 A.3: a duplicate makes loss negative"
            );
        }

        #[test]
        fn new_ssrc_or_jump_keeps_earlier_expected() {
            let mut s = RxStream::default();
            feed(&mut s, &[1, 2, 4]); // expected 4, lost 1
            s.on_packet(
                &Header {
                    ssrc: 9,
                    ..h(500, 0)
                },
                0,
                8000,
            );
            s.on_packet(
                &Header {
                    ssrc: 9,
                    ..h(501, 160)
                },
                20_000_000,
                8000,
            );
            assert_eq!(s.expected(), 6);
            assert_eq!(s.lost(), 1);
            assert_eq!(s.restarts, 1);
            s.on_packet(
                &Header {
                    ssrc: 9,
                    ..h(40_000, 320)
                },
                40_000_000,
                8000,
            );
            assert_eq!(s.restarts, 2);
            assert_eq!(s.expected(), 7);
        }

        #[test]
        fn jitter_of_a_perfect_stream_is_zero_and_a_late_packet_counts() {
            let mut s = RxStream::default();
            for i in 0..50u16 {
                s.on_packet(&h(i, u32::from(i) * 160), i64::from(i) * 20_000_000, 8000);
            }
            assert_eq!(s.jitter_us, 0.0);
            // One packet 1.6 ms late: D = 1600 us, J moves by 1/16 of it.
            let d = s.on_packet(&h(50, 50 * 160), 50 * 20_000_000 + 1_600_000, 8000);
            assert_eq!(d, Some(1600.0));
            assert!((s.jitter_us - 100.0).abs() < 1e-9);
        }
    }
}

// ---------------------------------------------------------------------------
// SIP: a small tolerant parser and SDP reading, just what a UAC needs
// ---------------------------------------------------------------------------

mod sip {
    use std::fmt;
    use std::net::{Ipv4Addr, SocketAddrV4};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum SipError {
        NotUtf8,
        BadStartLine,
        BadHeader,
    }

    impl fmt::Display for SipError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(match self {
                SipError::NotUtf8 => "not UTF-8",
                SipError::BadStartLine => "bad start line",
                SipError::BadHeader => "header line without a colon",
            })
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Start<'a> {
        Request { method: &'a str, uri: &'a str },
        Response { code: u16 },
    }

    /// A parsed message borrowing the datagram. Folded header lines (RFC 3261
    /// s7.3.1) are skipped: neither switchboard nor our responder writes them.
    #[derive(Debug)]
    pub struct Msg<'a> {
        pub start: Start<'a>,
        headers: Vec<(&'a str, &'a str)>,
        pub body: &'a str,
    }

    /// RFC 3261 s7.3.3 compact forms of the headers we read.
    fn compact(full: &str) -> Option<&'static str> {
        Some(match full.to_ascii_lowercase().as_str() {
            "call-id" => "i",
            "via" => "v",
            "from" => "f",
            "to" => "t",
            "contact" => "m",
            "content-length" => "l",
            "content-type" => "c",
            _ => return None,
        })
    }

    fn same_header(wire: &str, full: &str) -> bool {
        wire.eq_ignore_ascii_case(full)
            || compact(full).is_some_and(|c| wire.eq_ignore_ascii_case(c))
    }

    impl<'a> Msg<'a> {
        pub fn parse(data: &'a [u8]) -> Result<Msg<'a>, SipError> {
            let text = std::str::from_utf8(data).map_err(|_| SipError::NotUtf8)?;
            let (head, body) = match text.find("\r\n\r\n") {
                Some(i) => (&text[..i], &text[i + 4..]),
                None => (text.trim_end(), ""),
            };
            let mut lines = head.split("\r\n");
            let first = lines.next().unwrap_or("");
            let start = if let Some(rest) = first.strip_prefix("SIP/2.0 ") {
                let code = rest
                    .get(..3)
                    .and_then(|c| c.parse().ok())
                    .ok_or(SipError::BadStartLine)?;
                Start::Response { code }
            } else {
                let mut it = first.split(' ');
                match (it.next(), it.next(), it.next()) {
                    (Some(method), Some(uri), Some("SIP/2.0")) if !method.is_empty() => {
                        Start::Request { method, uri }
                    }
                    _ => return Err(SipError::BadStartLine),
                }
            };
            let mut headers = Vec::with_capacity(16);
            for line in lines {
                if line.starts_with([' ', '\t']) {
                    continue;
                }
                let (name, value) = line.split_once(':').ok_or(SipError::BadHeader)?;
                headers.push((name.trim(), value.trim()));
            }
            let mut msg = Msg {
                start,
                headers,
                body,
            };
            if let Some(len) = msg
                .header("Content-Length")
                .and_then(|l| l.parse::<usize>().ok())
            {
                msg.body = body.get(..len).unwrap_or(body);
            }
            Ok(msg)
        }

        pub fn header(&self, name: &str) -> Option<&'a str> {
            self.headers
                .iter()
                .find(|(n, _)| same_header(n, name))
                .map(|(_, v)| *v)
        }

        /// Every value of a header, in message order (each line once; a line may
        /// itself hold a comma-separated list).
        pub fn all<'s>(&'s self, name: &'s str) -> impl DoubleEndedIterator<Item = &'a str> + 's {
            self.headers
                .iter()
                .filter(move |(n, _)| same_header(n, name))
                .map(|(_, v)| *v)
        }

        pub fn call_id(&self) -> Option<&'a str> {
            self.header("Call-ID")
        }

        pub fn cseq(&self) -> Option<(u32, &'a str)> {
            let (n, m) = self.header("CSeq")?.split_once(' ')?;
            Some((n.trim().parse().ok()?, m.trim()))
        }
    }

    /// A header parameter (`;tag=x`) of a name-addr or addr-spec value.
    pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
        // Parameters after `>` belong to the header; without <>, everything after
        // the first `;` does (RFC 3261 s20.10).
        let params = match value.find('>') {
            Some(gt) => &value[gt + 1..],
            None => value,
        };
        params.split(';').skip(1).find_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The URI of a name-addr (`"x" <sip:a@b;p>;tag=1` -> `sip:a@b;p`) or addr-spec.
    pub fn uri_of(value: &str) -> &str {
        if let (Some(lt), Some(gt)) = (value.find('<'), value.find('>')) {
            if lt < gt {
                return &value[lt + 1..gt];
            }
        }
        value.split(';').next().unwrap_or(value).trim()
    }

    /// The user part of a SIP URI (`sip:+1555@host` -> `+1555`).
    pub fn user_of(uri: &str) -> &str {
        let rest = uri.split_once(':').map_or(uri, |(_, r)| r);
        rest.split_once('@').map_or("", |(u, _)| u)
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum SdpError {
        NoAudio,
        BadMediaLine,
        PortZero,
        NoConnection,
        NotIpv4,
    }

    impl SdpError {
        pub fn as_str(self) -> &'static str {
            match self {
                SdpError::NoAudio => "SDP without m=audio",
                SdpError::BadMediaLine => "SDP m=audio line unreadable",
                SdpError::PortZero => "SDP audio port 0 (stream refused)",
                SdpError::NoConnection => "SDP without c= for audio",
                SdpError::NotIpv4 => "SDP c= is not IN IP4 with a unicast address",
            }
        }
    }

    /// Where the first audio stream of an SDP wants RTP (RFC 4566 s5.7, s5.14:
    /// media-level c= overrides the session-level one).
    pub fn sdp_audio_dest(body: &str) -> Result<SocketAddrV4, SdpError> {
        // 0: session level, 1: the first audio section, 2: anything after it.
        let mut section = 0;
        let (mut session_ip, mut media_ip, mut port) = (None, None, None);
        for line in body.lines() {
            let line = line.trim_end();
            if let Some(m) = line.strip_prefix("m=") {
                if section == 0 && m.starts_with("audio ") {
                    section = 1;
                    let p = m
                        .split(' ')
                        .nth(1)
                        .and_then(|p| p.split('/').next())
                        .and_then(|p| p.parse::<u16>().ok());
                    port = Some(p.ok_or(SdpError::BadMediaLine)?);
                } else if section == 1 {
                    section = 2;
                }
                continue;
            }
            if let Some(c) = line.strip_prefix("c=") {
                let mut it = c.split(' ');
                let ip = match (it.next(), it.next(), it.next()) {
                    (Some("IN"), Some("IP4"), Some(a)) => {
                        a.split('/').next().and_then(|a| a.parse::<Ipv4Addr>().ok())
                    }
                    _ => None,
                };
                let ip = ip.ok_or(SdpError::NotIpv4)?;
                match section {
                    0 => session_ip = Some(ip),
                    1 => media_ip = Some(ip),
                    _ => {}
                }
            }
        }
        let port = port.ok_or(SdpError::NoAudio)?;
        if port == 0 {
            return Err(SdpError::PortZero);
        }
        let ip = media_ip.or(session_ip).ok_or(SdpError::NoConnection)?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(SdpError::NotIpv4);
        }
        Ok(SocketAddrV4::new(ip, port))
    }

    /// `200 OK` (or another final code) to a request the peer sent us: Via, From,
    /// To, Call-ID and CSeq copied (RFC 3261 s8.2.6.2). To gets `to_tag` if absent.
    pub fn response_to(
        req: &Msg<'_>,
        code: u16,
        reason: &str,
        to_tag: &str,
        extra: &str,
        body: &str,
    ) -> Vec<u8> {
        let mut s = format!("SIP/2.0 {code} {reason}\r\n");
        for via in req.all("Via") {
            s.push_str("Via: ");
            s.push_str(via);
            s.push_str("\r\n");
        }
        for name in ["From", "To", "Call-ID", "CSeq"] {
            if let Some(v) = req.header(name) {
                s.push_str(name);
                s.push_str(": ");
                s.push_str(v);
                if name == "To" && param(v, "tag").is_none() && !to_tag.is_empty() {
                    s.push_str(";tag=");
                    s.push_str(to_tag);
                }
                s.push_str("\r\n");
            }
        }
        s.push_str(extra);
        s.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        s.into_bytes()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn response_with_compact_headers() {
            let m = Msg::parse(
                b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKx\r\nf: <sip:a@b>;tag=1\r\nt: \"Room\" <sip:+1800@h>;tag=sb0-abc\r\ni: cid-1\r\nCSeq: 1 INVITE\r\nm: <sip:sb@127.0.0.1:5060;transport=udp>\r\nl: 5\r\n\r\nv=0\r\nxxx",
            )
            .unwrap();
            assert_eq!(m.start, Start::Response { code: 200 });
            assert_eq!(m.call_id(), Some("cid-1"));
            assert_eq!(m.cseq(), Some((1, "INVITE")));
            assert_eq!(param(m.header("To").unwrap(), "tag"), Some("sb0-abc"));
            assert_eq!(
                uri_of(m.header("Contact").unwrap()),
                "sip:sb@127.0.0.1:5060;transport=udp"
            );
            assert_eq!(m.body, "v=0\r\n", "Content-Length bounds the body");
        }

        #[test]
        fn params_and_uris() {
            assert_eq!(param("sip:a@b;tag=9", "tag"), Some("9"));
            assert_eq!(
                param("<sip:a@b;tag=no>", "tag"),
                None,
                "URI parameters are not header parameters"
            );
            assert_eq!(param("<sip:a@b>;x;TAG = 3", "tag"), Some("3"));
            assert_eq!(uri_of("sip:a@b;tag=1"), "sip:a@b");
            assert_eq!(user_of("sip:+15550100@127.0.0.1:5060"), "+15550100");
            assert_eq!(user_of("sip:127.0.0.1"), "");
        }

        #[test]
        fn malformed_messages_are_errors_not_panics() {
            assert_eq!(Msg::parse(b"\xff\xfe").unwrap_err(), SipError::NotUtf8);
            assert_eq!(
                Msg::parse(b"SIP/2.0 2x OK\r\n\r\n").unwrap_err(),
                SipError::BadStartLine
            );
            assert_eq!(
                Msg::parse(b"INVITE sip:x SIP/3.0\r\n\r\n").unwrap_err(),
                SipError::BadStartLine
            );
            assert_eq!(
                Msg::parse(b"BYE sip:x SIP/2.0\r\nnocolon\r\n\r\n").unwrap_err(),
                SipError::BadHeader
            );
            assert_eq!(Msg::parse(b"").unwrap_err(), SipError::BadStartLine);
            let m = Msg::parse(b"SIP/2.0 100 Trying\r\nContent-Length: 999\r\n\r\nab").unwrap();
            assert_eq!(m.body, "ab", "a lying Content-Length is clamped");
        }

        #[test]
        fn sdp_destination() {
            let s = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 20002 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n";
            assert_eq!(sdp_audio_dest(s), Ok("127.0.0.1:20002".parse().unwrap()));
            let media_level = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 127.0.0.2/127\r\nm=video 5000 RTP/AVP 96\r\nc=IN IP4 10.9.9.9\r\n";
            assert_eq!(
                sdp_audio_dest(media_level),
                Ok("127.0.0.2:4000".parse().unwrap())
            );
            assert_eq!(
                sdp_audio_dest("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 0 RTP/AVP 0\r\n"),
                Err(SdpError::PortZero)
            );
            assert_eq!(
                sdp_audio_dest("v=0\r\nm=audio 4000 RTP/AVP 0\r\n"),
                Err(SdpError::NoConnection)
            );
            assert_eq!(
                sdp_audio_dest("v=0\r\nc=IN IP6 ::1\r\nm=audio 4000 RTP/AVP 0\r\n"),
                Err(SdpError::NotIpv4)
            );
            assert_eq!(
                sdp_audio_dest("v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n"),
                Err(SdpError::NotIpv4)
            );
            assert_eq!(
                sdp_audio_dest("v=0\r\nm=video 4000 RTP/AVP 96\r\n"),
                Err(SdpError::NoAudio)
            );
            assert_eq!(
                sdp_audio_dest("m=audio x RTP/AVP 0\r\n"),
                Err(SdpError::BadMediaLine)
            );
        }

        #[test]
        fn response_copies_dialog_headers() {
            let req = Msg::parse(b"BYE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nv: SIP/2.0/UDP b;branch=z9hG4bK2\r\nFrom: <sip:s@y>;tag=s\r\nTo: <sip:x@y>;tag=me\r\nCall-ID: c\r\nCSeq: 7 BYE\r\n\r\n").unwrap();
            let r = String::from_utf8(response_to(&req, 200, "OK", "new", "", "")).unwrap();
            assert!(r.starts_with("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP b;branch=z9hG4bK2\r\n"));
            assert!(
                r.contains("To: <sip:x@y>;tag=me\r\n"),
                "an existing tag is kept: {r}"
            );
            assert!(r.contains("CSeq: 7 BYE\r\n") && r.ends_with("Content-Length: 0\r\n\r\n"));
        }
    }
}

// ---------------------------------------------------------------------------
// The UAC side of one call (sans-IO: bytes and `now` in, bytes and events out)
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Fresh,
    /// INVITE sent, retransmitted on Timer A (RFC 3261 s17.1.1.2).
    Calling,
    /// A provisional response arrived: retransmission stops.
    Proceeding,
    Established,
    /// Refused (>= 300) or answered with an unusable SDP.
    Failed,
    /// Gave up waiting for an answer; a late 2xx is ACKed and hung up at once.
    Abandoned,
    /// BYE sent, retransmitted on Timer E until a final response or Timer F.
    Hangup,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Failure {
    Status(u16),
    Timeout,
    BadAnswer(&'static str),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Status(c) => write!(f, "{c}"),
            Failure::Timeout => f.write_str("timeout"),
            Failure::BadAnswer(why) => write!(f, "bad answer ({why})"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByeOutcome {
    Ok,
    Status(u16),
    Timeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallEvent {
    Answered(SocketAddrV4),
    Failed(Failure),
    /// The server sent BYE while the call was up.
    ServerHangup,
    ByeDone(ByeOutcome),
}

/// Who we are and whom we call, for building messages.
#[derive(Debug, Clone, Copy)]
struct Ends {
    local: SocketAddr,
    server: SocketAddr,
}

#[derive(Debug)]
struct Call {
    ends: Ends,
    call_id: String,
    tag: String,
    from_user: String,
    to_user: String,
    rtp_port: u16,
    setup_timeout: Duration,
    phase: Phase,
    invite: Vec<u8>,
    ack: Option<Vec<u8>>,
    bye: Option<Vec<u8>>,
    /// The To header of the answer (with its tag): our dialog's remote end.
    to_header: Option<String>,
    /// Remote target (the answer's Contact), Request-URI of ACK and BYE.
    target: Option<String>,
    /// Route set from Record-Route, reversed (RFC 3261 s12.1.2).
    routes: Vec<String>,
    retrans_at: Option<Instant>,
    interval: Duration,
    give_up_at: Option<Instant>,
    invited_at: Option<Instant>,
    answered_at: Option<Instant>,
    server_hangup_at: Option<Instant>,
    failure: Option<Failure>,
    bye_outcome: Option<ByeOutcome>,
    invite_retransmissions: u32,
    late_answer: bool,
}

impl Call {
    fn new(
        ends: Ends,
        run_tag: u32,
        step: u32,
        idx: usize,
        rtp_port: u16,
        setup_timeout: Duration,
    ) -> Call {
        // Pairs share a called number, so the callee rule puts them in one room.
        // The run tag and step make the rooms of each step new.
        let r = run_tag % 100;
        let s = step % 1000;
        Call {
            ends,
            call_id: call_id(run_tag, step, idx),
            tag: format!("lg{idx}"),
            from_user: format!("+5{r:02}{s:03}{idx:05}"),
            to_user: format!("+9{r:02}{s:03}{:05}", idx / 2),
            rtp_port,
            setup_timeout,
            phase: Phase::Fresh,
            invite: Vec::new(),
            ack: None,
            bye: None,
            to_header: None,
            target: None,
            routes: Vec::new(),
            retrans_at: None,
            interval: T1,
            give_up_at: None,
            invited_at: None,
            answered_at: None,
            server_hangup_at: None,
            failure: None,
            bye_outcome: None,
            invite_retransmissions: 0,
            late_answer: false,
        }
    }

    fn request_uri(&self) -> String {
        format!("sip:{}@{}", self.to_user, self.ends.server)
    }

    fn our_from(&self) -> String {
        format!(
            "<sip:{}@{}>;tag={}",
            self.from_user,
            self.ends.local.ip(),
            self.tag
        )
    }

    fn offer(&self) -> String {
        let ip = self.ends.local.ip();
        format!(
            "v=0\r\no=sb-loadgen {p} 1 IN IP4 {ip}\r\ns=sb-loadgen\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
m=audio {p} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\na=ptime:20\r\na=rtcp-mux\r\na=sendrecv\r\n",
            p = self.rtp_port
        )
    }

    /// Send the INVITE: the call starts.
    fn invite(&mut self, now: Instant) -> Vec<u8> {
        let sdp = self.offer();
        let msg = format!(
            "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{cid}i;rport\r\nMax-Forwards: 70\r\n\
From: {from}\r\nTo: <{uri}>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:{user}@{local}>\r\n\
User-Agent: sb-loadgen\r\nAllow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\nContent-Type: application/sdp\r\n\
Content-Length: {len}\r\n\r\n{sdp}",
            uri = self.request_uri(),
            local = self.ends.local,
            cid = self.call_id,
            from = self.our_from(),
            user = self.from_user,
            len = sdp.len(),
        );
        self.invite = msg.into_bytes();
        self.phase = Phase::Calling;
        self.invited_at = Some(now);
        self.interval = T1;
        self.retrans_at = Some(now + T1);
        self.give_up_at = Some(now + self.setup_timeout);
        self.invite.clone()
    }

    fn route_lines(&self) -> String {
        self.routes
            .iter()
            .map(|r| format!("Route: {r}\r\n"))
            .collect()
    }

    /// An in-dialog request (ACK for 2xx, BYE), RFC 3261 s12.2.1.1.
    fn in_dialog(&self, method: &str, cseq: u32, branch_suffix: char) -> Vec<u8> {
        format!(
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{cid}{branch_suffix};rport\r\n\
Max-Forwards: 70\r\n{routes}From: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n\
Content-Length: 0\r\n\r\n",
            target = self.target.as_deref().unwrap_or(""),
            local = self.ends.local,
            cid = self.call_id,
            routes = self.route_lines(),
            from = self.our_from(),
            to = self.to_header.as_deref().unwrap_or(""),
        )
        .into_bytes()
    }

    /// ACK of a non-2xx final response: part of the INVITE transaction, so same
    /// branch and Request-URI as the INVITE (RFC 3261 s17.1.1.3).
    fn ack_non_2xx(&self, to: &str) -> Vec<u8> {
        format!(
            "ACK {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{cid}i;rport\r\nMax-Forwards: 70\r\n\
From: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            uri = self.request_uri(),
            local = self.ends.local,
            cid = self.call_id,
            from = self.our_from(),
        )
        .into_bytes()
    }

    /// Take the dialog from a 2xx and ACK it.
    fn take_dialog(&mut self, msg: &sip::Msg<'_>, out: &mut Vec<Vec<u8>>) -> Result<(), Failure> {
        let to = msg
            .header("To")
            .ok_or(Failure::BadAnswer("2xx without To"))?;
        if sip::param(to, "tag").is_none() {
            return Err(Failure::BadAnswer("2xx without To tag"));
        }
        self.to_header = Some(to.to_string());
        self.target = Some(
            msg.header("Contact")
                .map_or_else(|| self.request_uri(), |c| sip::uri_of(c).to_string()),
        );
        self.routes = msg
            .all("Record-Route")
            .flat_map(|v| v.split(','))
            .map(|r| r.trim().to_string())
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let ack = self.in_dialog("ACK", 1, 'a');
        out.push(ack.clone());
        self.ack = Some(ack);
        Ok(())
    }

    fn start_bye(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        let bye = self.in_dialog("BYE", 2, 'b');
        out.push(bye.clone());
        self.bye = Some(bye);
        self.phase = Phase::Hangup;
        self.interval = T1;
        self.retrans_at = Some(now + T1);
        self.give_up_at = Some(now + TIMER_F);
    }

    fn fail(&mut self, f: Failure) -> Option<CallEvent> {
        self.failure = Some(f);
        self.retrans_at = None;
        self.give_up_at = None;
        Some(CallEvent::Failed(f))
    }

    fn on_response(
        &mut self,
        msg: &sip::Msg<'_>,
        code: u16,
        now: Instant,
        out: &mut Vec<Vec<u8>>,
    ) -> Option<CallEvent> {
        let method = msg.cseq().map_or("", |(_, m)| m);
        if method.eq_ignore_ascii_case("BYE") {
            if self.phase == Phase::Hangup && code >= 200 {
                let outcome = if code < 300 {
                    ByeOutcome::Ok
                } else {
                    ByeOutcome::Status(code)
                };
                self.phase = Phase::Closed;
                self.bye_outcome = Some(outcome);
                self.retrans_at = None;
                self.give_up_at = None;
                return Some(CallEvent::ByeDone(outcome));
            }
            return None;
        }
        if !method.eq_ignore_ascii_case("INVITE") {
            return None;
        }
        match (code, self.phase) {
            (100..=199, Phase::Calling) => {
                self.phase = Phase::Proceeding;
                self.retrans_at = None;
                None
            }
            (100..=199, _) => None,
            (200..=299, Phase::Calling | Phase::Proceeding) => {
                if let Err(f) = self.take_dialog(msg, out) {
                    self.phase = Phase::Failed;
                    return self.fail(f);
                }
                match sip::sdp_audio_dest(msg.body) {
                    Ok(dest) => {
                        self.phase = Phase::Established;
                        self.answered_at = Some(now);
                        self.retrans_at = None;
                        self.give_up_at = None;
                        Some(CallEvent::Answered(dest))
                    }
                    Err(e) => {
                        // Answered but unusable: hang up at once.
                        let ev = self.fail(Failure::BadAnswer(e.as_str()));
                        self.start_bye(now, out);
                        ev
                    }
                }
            }
            (200..=299, Phase::Abandoned) => {
                // RFC 3261 s13.2.2.4: a 2xx must be ACKed even if we no longer
                // want the call; then it is ended with BYE.
                self.late_answer = true;
                if self.take_dialog(msg, out).is_ok() {
                    self.start_bye(now, out);
                }
                None
            }
            (200..=299, _) => {
                // A retransmitted 2xx: our ACK was lost.
                if let Some(a) = &self.ack {
                    out.push(a.clone());
                }
                None
            }
            (_, Phase::Calling | Phase::Proceeding) => {
                let ack = self.ack_non_2xx(msg.header("To").unwrap_or(""));
                out.push(ack.clone());
                self.ack = Some(ack);
                self.phase = Phase::Failed;
                self.fail(Failure::Status(code))
            }
            (_, Phase::Failed) => {
                if let Some(a) = &self.ack {
                    out.push(a.clone());
                }
                None
            }
            _ => None,
        }
    }

    /// The server sent BYE for this call (the 200 is the driver's job).
    fn on_server_bye(&mut self, now: Instant) -> Option<CallEvent> {
        match self.phase {
            Phase::Established => {
                self.phase = Phase::Closed;
                self.server_hangup_at = Some(now);
                Some(CallEvent::ServerHangup)
            }
            Phase::Hangup => {
                // Both hung up at once: ours is as good as answered.
                self.phase = Phase::Closed;
                self.bye_outcome = Some(ByeOutcome::Ok);
                self.retrans_at = None;
                self.give_up_at = None;
                Some(CallEvent::ByeDone(ByeOutcome::Ok))
            }
            _ => None,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match (self.retrans_at, self.give_up_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_timeout(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) -> Option<CallEvent> {
        if self.give_up_at.is_some_and(|t| now >= t) {
            return match self.phase {
                Phase::Calling | Phase::Proceeding => {
                    self.phase = Phase::Abandoned;
                    self.fail(Failure::Timeout)
                }
                Phase::Hangup => {
                    self.phase = Phase::Closed;
                    self.bye_outcome = Some(ByeOutcome::Timeout);
                    self.retrans_at = None;
                    self.give_up_at = None;
                    Some(CallEvent::ByeDone(ByeOutcome::Timeout))
                }
                _ => {
                    self.give_up_at = None;
                    None
                }
            };
        }
        if self.retrans_at.is_some_and(|t| now >= t) {
            match self.phase {
                Phase::Calling => {
                    // Timer A doubles without a cap (RFC 3261 s17.1.1.2).
                    out.push(self.invite.clone());
                    self.invite_retransmissions += 1;
                    self.interval *= 2;
                }
                Phase::Hangup => {
                    // Timer E doubles up to T2 (RFC 3261 s17.1.2.2).
                    if let Some(b) = &self.bye {
                        out.push(b.clone());
                    }
                    self.interval = (self.interval * 2).min(T2);
                }
                _ => {
                    self.retrans_at = None;
                    return None;
                }
            }
            self.retrans_at = Some(now + self.interval);
        }
        None
    }

    /// End an established call. Returns whether a BYE went out.
    fn hangup(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) -> bool {
        if self.phase != Phase::Established {
            return false;
        }
        self.start_bye(now, out);
        true
    }

    fn setup_time(&self) -> Option<Duration> {
        Some(self.answered_at? - self.invited_at?)
    }
}

fn call_id_prefix(run_tag: u32, step: u32) -> String {
    format!("lg{run_tag:08x}s{step}c")
}

fn call_id(run_tag: u32, step: u32, idx: usize) -> String {
    format!("{}{idx}@sb-loadgen", call_id_prefix(run_tag, step))
}

/// The call index a Call-ID of this step names, if it is one of ours.
fn call_index(call_id: &str, prefix: &str) -> Option<usize> {
    call_id
        .strip_prefix(prefix)?
        .strip_suffix("@sb-loadgen")?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// Small OS helpers (the only unsafe code; each call has its SAFETY reason)
// ---------------------------------------------------------------------------

mod os {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    /// An epoll instance, level-triggered, one token (call index) per fd.
    pub struct Epoll {
        fd: OwnedFd,
    }

    pub const EVENT_ZERO: libc::epoll_event = libc::epoll_event { events: 0, u64: 0 };

    impl Epoll {
        pub fn new() -> io::Result<Epoll> {
            // SAFETY: epoll_create1 takes no pointers; a non-negative result is a
            // new fd that nothing else owns, so OwnedFd may close it.
            let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: see above: fresh, valid, unowned.
            Ok(Epoll {
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
            })
        }

        pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: token,
            };
            // SAFETY: `ev` is a live epoll_event the kernel only reads; both fds
            // are open for the duration of the call.
            let r =
                unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }

        pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
            let max = events.len().min(i32::MAX as usize) as i32;
            // SAFETY: the kernel writes at most `max` entries into `events`,
            // which is exclusively borrowed and at least that long.
            let n = unsafe {
                libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms)
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(n as usize)
        }
    }

    /// Ask the kernel to stamp every datagram with its arrival (CLOCK_REALTIME).
    pub fn enable_rx_timestamps(fd: RawFd) -> io::Result<()> {
        let on: libc::c_int = 1;
        // SAFETY: a pointer to a live c_int and its exact size; the kernel reads it.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Control-message space for one SCM_TIMESTAMPNS, aligned like cmsghdr.
    #[repr(C, align(8))]
    pub struct CmsgBuf([u8; 64]);

    impl CmsgBuf {
        pub fn new() -> CmsgBuf {
            CmsgBuf([0; 64])
        }
    }

    /// One non-blocking recvmsg: (length, kernel arrival time in ns since the epoch).
    pub fn recv_timestamped(
        fd: RawFd,
        buf: &mut [u8],
        cmsg: &mut CmsgBuf,
    ) -> io::Result<(usize, Option<i64>)> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain C data; all-zero means no name, no iov, no control.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = cmsg.0.len() as _;
        // SAFETY: iov points into `buf` and msg_control into `cmsg`, both
        // exclusively borrowed and alive across the call; the kernel writes at
        // most iov_len and msg_controllen bytes into them.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ts = None;
        // SAFETY: msg was filled by a successful recvmsg, so msg_control and
        // msg_controllen (set by the kernel) describe valid cmsg headers inside
        // `cmsg`; CMSG_FIRSTHDR/CMSG_NXTHDR stay within them and return null at
        // the end; the timespec is read unaligned from inside the buffer.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let t: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    let (sec, nsec): (i64, i64) = (t.tv_sec, t.tv_nsec);
                    ts = Some(sec * 1_000_000_000 + nsec);
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Ok((n as usize, ts))
    }

    /// CPU time (user + system) of the calling thread, in microseconds.
    pub fn thread_cpu_us() -> u64 {
        // SAFETY: rusage is plain C data (all-zero valid); getrusage only writes it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to the rusage above.
        if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
            return 0;
        }
        let us = |t: libc::timeval| (t.tv_sec.max(0) as u64) * 1_000_000 + t.tv_usec.max(0) as u64;
        us(ru.ru_utime) + us(ru.ru_stime)
    }

    /// SCHED_FIFO at `priority` for the calling thread.
    pub fn set_thread_fifo(priority: i32) -> io::Result<()> {
        let p = libc::sched_param {
            sched_priority: priority,
        };
        // SAFETY: pid 0 names the calling thread; `p` is a live sched_param the
        // kernel only reads.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn clock_ticks_per_sec() -> u64 {
        // SAFETY: sysconf takes no pointers and only reads a constant.
        let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if v > 0 {
            v as u64
        } else {
            100
        }
    }

    /// Raise the soft fd limit to at least `need`. Returns the hard limit on failure.
    pub fn ensure_fd_limit(need: u64) -> Result<(), u64> {
        // SAFETY: rlimit is plain C data; getrlimit/setrlimit read/write only it.
        let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to the rlimit above.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
            return Ok(()); // cannot tell; let socket() report EMFILE if it comes
        }
        if rl.rlim_cur >= need {
            return Ok(());
        }
        if rl.rlim_max < need {
            return Err(rl.rlim_max);
        }
        rl.rlim_cur = need;
        // SAFETY: a valid pointer to an initialized rlimit the kernel only reads.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
            return Err(rl.rlim_max);
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::net::UdpSocket;

        #[test]
        fn kernel_timestamps_arrive_with_the_datagram() {
            let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
            enable_rx_timestamps(rx.as_raw_fd()).unwrap();
            let ep = Epoll::new().unwrap();
            ep.add(rx.as_raw_fd(), 77).unwrap();
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            let before = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as i64;
            tx.send_to(b"hello", rx.local_addr().unwrap()).unwrap();
            let mut evs = [EVENT_ZERO; 4];
            let n = ep.wait(&mut evs, 1000).unwrap();
            assert_eq!(n, 1);
            let token = evs[0].u64;
            assert_eq!(token, 77);
            let mut buf = [0u8; 64];
            let mut c = CmsgBuf::new();
            let (len, ts) = recv_timestamped(rx.as_raw_fd(), &mut buf, &mut c).unwrap();
            assert_eq!(&buf[..len], b"hello");
            let ts = ts.expect("SO_TIMESTAMPNS gives a timestamp");
            assert!(
                (ts - before).abs() < 5_000_000_000,
                "a realtime stamp near now"
            );
            let e = recv_timestamped(rx.as_raw_fd(), &mut buf, &mut c).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        }

        #[test]
        fn fifo_is_set_or_refused_cleanly() {
            // In a thread of its own, so the test runner's threads keep their policy.
            let r = std::thread::spawn(|| {
                let r = set_thread_fifo(1);
                // SAFETY: sched_getscheduler takes no pointers; 0 is this thread.
                let policy = unsafe { libc::sched_getscheduler(0) };
                (r.map_err(|e| e.kind()), policy)
            })
            .join()
            .unwrap();
            match r {
                (Ok(()), policy) => assert_eq!(policy, libc::SCHED_FIFO),
                (Err(kind), policy) => {
                    assert_eq!(kind, io::ErrorKind::PermissionDenied);
                    assert_eq!(policy, libc::SCHED_OTHER);
                }
            }
            assert!(set_thread_fifo(0).is_err(), "0 is no SCHED_FIFO priority");
        }

        #[test]
        fn thread_cpu_grows_with_work() {
            let a = thread_cpu_us();
            let mut x = 0u64;
            for i in 0..20_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
            assert!(thread_cpu_us() > a);
            assert!(clock_ticks_per_sec() >= 100);
            ensure_fd_limit(64).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------
// Server-side measurements: Prometheus counters, /proc CPU
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ServerCounters {
    /// `switchboard_rtp_packets_total{direction="in"}`, summed over shards.
    rtp_in: Option<u64>,
    /// `switchboard_rtp_lost_total`, summed.
    rtp_lost: Option<u64>,
}

fn parse_metrics(text: &str) -> ServerCounters {
    let mut c = ServerCounters::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(b) => match line[b..].find('}') {
                Some(e) => (&line[..b], &line[b + 1..b + e], &line[b + e + 1..]),
                None => continue,
            },
            None => match line.split_once(' ') {
                Some((n, r)) => (n, "", r),
                None => continue,
            },
        };
        // A sample is `value [timestamp]`; counters may be printed as floats.
        let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let v = v.max(0.0) as u64;
        match name {
            "switchboard_rtp_packets_total" if labels.contains("direction=\"in\"") => {
                *c.rtp_in.get_or_insert(0) += v;
            }
            "switchboard_rtp_lost_total" => *c.rtp_lost.get_or_insert(0) += v,
            _ => {}
        }
    }
    c
}

fn scrape(addr: SocketAddr) -> io::Result<ServerCounters> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(
        format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut data = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 8192];
    loop {
        let n = match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if data.is_empty() => return Err(e),
            Err(_) => break,
        };
        data.extend_from_slice(&chunk[..n]);
        // Stop at Content-Length when the server keeps the connection open.
        let text = String::from_utf8_lossy(&data);
        if let Some(h) = text.find("\r\n\r\n") {
            let len = text[..h]
                .lines()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                })
                .and_then(|(_, v)| v.trim().parse::<usize>().ok());
            if len.is_some_and(|len| data.len() >= h + 4 + len) {
                break;
            }
        }
        if data.len() > 16 << 20 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&data);
    if !text.starts_with("HTTP/1.") || text.split(' ').nth(1) != Some("200") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "metrics endpoint did not answer 200",
        ));
    }
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(parse_metrics(body))
}

/// utime + stime (clock ticks) from the text of `/proc/<pid>/stat`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields are
    // counted after the last ')'. utime and stime are fields 14 and 15, so the
    // 12th and 13th after it (field 3, the state, is the 1st).
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// How the server's CPU time is read.
#[derive(Clone)]
enum ServerCpu {
    Unknown,
    Process {
        pid: u32,
        ticks_per_sec: u64,
    },
    /// The in-process responder's threads publish their own times (µs).
    Threads(Arc<[AtomicU64; 3]>),
}

impl ServerCpu {
    fn read_us(&self) -> Option<u64> {
        match self {
            ServerCpu::Unknown => None,
            ServerCpu::Process { pid, ticks_per_sec } => {
                let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                Some(parse_stat_ticks(&s)? * 1_000_000 / ticks_per_sec)
            }
            ServerCpu::Threads(t) => Some(t.iter().map(|a| a.load(Ordering::Relaxed)).sum()),
        }
    }
}

// ---------------------------------------------------------------------------
// Media threads
// ---------------------------------------------------------------------------

const SLOT_IDLE: u8 = 0;
const SLOT_ACTIVE: u8 = 1;
const SLOT_STOPPED: u8 = 2;

/// One call's media as the media threads see it. The main thread writes `dest`
/// then publishes `state = ACTIVE` with Release; the sender reads with Acquire.
struct Slot {
    state: AtomicU8,
    dest: AtomicU64,
}

fn pack_addr(a: SocketAddrV4) -> u64 {
    (u64::from(u32::from(*a.ip())) << 16) | u64::from(a.port())
}

fn unpack_addr(v: u64) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from((v >> 16) as u32), v as u16)
}

/// What the receiver had counted at one instant.
struct RxSnapshot {
    at: Instant,
    /// Per call: (expected, received), RFC 3550 A.3.
    counts: Vec<(u64, u64)>,
    /// RFC 3550 J after each packet since the previous snapshot (µs).
    jitter: Histogram<u64>,
    /// |D| of each packet since the previous snapshot (µs).
    transit_delta: Histogram<u64>,
    cpu_us: u64,
}

struct RxFinal {
    streams: Vec<rtp::RxStream>,
    rtcp: u64,
    other: u64,
    errors: u64,
}

/// State shared by the main thread and the media threads of one step.
struct Media {
    slots: Vec<Slot>,
    sockets: Vec<UdpSocket>,
    stop: AtomicBool,
    sent: AtomicU64,
    send_errors: AtomicU64,
    ticks_skipped: AtomicU64,
    sender_cpu_us: AtomicU64,
    snap_req: AtomicU32,
    snap_done: AtomicU32,
    snaps: Mutex<Vec<RxSnapshot>>,
    /// SCHED_FIFO priority for the sender and receiver, and whether it was refused.
    rt_priority: Option<i32>,
    rt_denied: AtomicBool,
}

impl Media {
    /// Called first thing in each media thread: all threads of the generator
    /// share one SCHED_FIFO priority, so the receiver drains its sockets in
    /// batches while the sender sleeps (a higher receiver priority would preempt
    /// the sender at every packet). The sender yields when it is behind, since a
    /// FIFO thread that never blocks starves its equals.
    fn enter_realtime(&self) {
        if let Some(p) = self.rt_priority {
            if os::set_thread_fifo(p).is_err() {
                self.rt_denied.store(true, Ordering::Relaxed);
            }
        }
    }
}

fn new_histogram(max: u64) -> Histogram<u64> {
    Histogram::new_with_bounds(1, max, 2).expect("constant bounds 1..max with 2 digits are valid")
}

fn sender_loop(media: &Media) -> Histogram<u64> {
    #[derive(Clone, Copy, Default)]
    struct Tx {
        dest: Option<SocketAddrV4>,
        seq: u16,
        ts: u32,
        ssrc: u32,
    }
    media.enter_realtime();
    let mut tx = vec![Tx::default(); media.slots.len()];
    let mut pkt = [0u8; rtp::PACKET_LEN];
    pkt[rtp::HEADER_LEN..].copy_from_slice(&rtp::tone_payload());
    let mut lateness = new_histogram(60_000_000);
    let mut rng = rand::thread_rng();
    let (mut sent, mut errors, mut skipped) = (0u64, 0u64, 0u64);
    // Call i sends in phase i % PHASES of each 20 ms period: independent
    // trunk calls have unrelated phases, and one burst of every call's packet
    // at once would measure the server's burst queueing, not its capacity.
    let sub = PTIME / PHASES;
    let mut phase = 0usize;
    let mut next = Instant::now() + sub;
    while !media.stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if now < next {
            thread::sleep(next - now);
            continue;
        }
        let late = now - next;
        lateness.saturating_record(late.as_micros() as u64);
        if late > CATCH_UP_LIMIT {
            // Overloaded: keep the 50 pps grid, skip the sub-ticks we missed
            // (those calls miss a packet), and say so.
            let k = (late.as_nanos() / sub.as_nanos()) as u32;
            next += sub * k;
            phase = (phase + k as usize) % PHASES as usize;
            skipped += u64::from(k);
        }
        for i in (phase..media.slots.len()).step_by(PHASES as usize) {
            let (slot, t, sock) = (&media.slots[i], &mut tx[i], &media.sockets[i]);
            if slot.state.load(Ordering::Acquire) != SLOT_ACTIVE {
                continue;
            }
            let first = t.dest.is_none();
            let dest = *t
                .dest
                .get_or_insert_with(|| unpack_addr(slot.dest.load(Ordering::Relaxed)));
            if first {
                t.seq = rng.gen();
                t.ts = rng.gen();
                t.ssrc = rng.gen();
            }
            let h = rtp::Header {
                pt: rtp::PT_PCMU,
                marker: first,
                seq: t.seq,
                ts: t.ts,
                ssrc: t.ssrc,
            };
            rtp::write_header(&mut pkt, &h);
            match sock.send_to(&pkt, dest) {
                Ok(_) => sent += 1,
                Err(_) => errors += 1,
            }
            // The clock runs on even when a send fails: the server sees a gap.
            t.seq = t.seq.wrapping_add(1);
            t.ts = t.ts.wrapping_add(SAMPLES_PER_PACKET);
        }
        media.sent.store(sent, Ordering::Relaxed);
        media.send_errors.store(errors, Ordering::Relaxed);
        media.ticks_skipped.store(skipped, Ordering::Relaxed);
        media
            .sender_cpu_us
            .store(os::thread_cpu_us(), Ordering::Relaxed);
        phase = (phase + 1) % PHASES as usize;
        next += sub;
        if Instant::now() >= next {
            // Behind: let the receiver and the SIP thread run (SCHED_FIFO).
            thread::yield_now();
        }
    }
    lateness
}

fn realtime_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn receiver_loop(media: &Media, epoll: &os::Epoll) -> RxFinal {
    media.enter_realtime();
    let mut streams = vec![rtp::RxStream::default(); media.slots.len()];
    let mut jitter = new_histogram(10_000_000);
    let mut transit_delta = new_histogram(10_000_000);
    let mut events = vec![os::EVENT_ZERO; 1024];
    let mut buf = [0u8; 2048];
    let mut cmsg = os::CmsgBuf::new();
    let (mut rtcp, mut other, mut errors) = (0u64, 0u64, 0u64);
    let mut done = 0u32;
    loop {
        let ready = match epoll.wait(&mut events, 5) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(_) => {
                errors += 1;
                0
            }
        };
        for ev in &events[..ready] {
            let idx = ev.u64 as usize;
            let Some(sock) = media.sockets.get(idx) else {
                continue;
            };
            // Level-triggered: one datagram per ready socket per round; a socket
            // with more is reported again, so no EAGAIN probe per packet.
            match os::recv_timestamped(sock.as_raw_fd(), &mut buf, &mut cmsg) {
                Ok((len, ts)) => match rtp::classify(&buf[..len]) {
                    rtp::Kind::Rtp(h) => {
                        let arrival = ts.unwrap_or_else(realtime_ns);
                        if let Some(d) = streams[idx].on_packet(&h, arrival, CLOCK_HZ) {
                            transit_delta.saturating_record(d as u64);
                            jitter.saturating_record(streams[idx].jitter_us as u64);
                        }
                    }
                    rtp::Kind::Rtcp => rtcp += 1,
                    rtp::Kind::Other => other += 1,
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => errors += 1,
            }
        }
        let req = media.snap_req.load(Ordering::Acquire);
        if req != done {
            let snap = RxSnapshot {
                at: Instant::now(),
                counts: streams.iter().map(|s| (s.expected(), s.received)).collect(),
                jitter: jitter.clone(),
                transit_delta: transit_delta.clone(),
                cpu_us: os::thread_cpu_us(),
            };
            jitter.reset();
            transit_delta.reset();
            media
                .snaps
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(snap);
            done = req;
            media.snap_done.store(done, Ordering::Release);
        }
        if media.stop.load(Ordering::Acquire) {
            break;
        }
    }
    RxFinal {
        streams,
        rtcp,
        other,
        errors,
    }
}

/// The media threads of one step; stopped and joined on drop (error paths too).
struct MediaRun {
    media: Arc<Media>,
    sender: Option<JoinHandle<Histogram<u64>>>,
    receiver: Option<JoinHandle<RxFinal>>,
}

impl MediaRun {
    fn start(
        local_ip: Ipv4Addr,
        calls: usize,
        rt_priority: Option<i32>,
    ) -> Result<MediaRun, LoadError> {
        let epoll = os::Epoll::new().map_err(LoadError::io("epoll_create1"))?;
        let mut sockets = Vec::with_capacity(calls);
        for i in 0..calls {
            let s =
                UdpSocket::bind((local_ip, 0)).map_err(LoadError::io("binding an RTP socket"))?;
            s.set_nonblocking(true)
                .map_err(LoadError::io("RTP socket non-blocking"))?;
            // Without kernel stamps we fall back to the time we read the packet.
            let _ = os::enable_rx_timestamps(s.as_raw_fd());
            epoll
                .add(s.as_raw_fd(), i as u64)
                .map_err(LoadError::io("epoll_ctl"))?;
            sockets.push(s);
        }
        let slots = (0..calls)
            .map(|_| Slot {
                state: AtomicU8::new(SLOT_IDLE),
                dest: AtomicU64::new(0),
            })
            .collect();
        let media = Arc::new(Media {
            slots,
            sockets,
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            ticks_skipped: AtomicU64::new(0),
            sender_cpu_us: AtomicU64::new(0),
            snap_req: AtomicU32::new(0),
            snap_done: AtomicU32::new(0),
            snaps: Mutex::new(Vec::new()),
            rt_priority,
            rt_denied: AtomicBool::new(false),
        });
        let m = Arc::clone(&media);
        let sender = thread::Builder::new()
            .name("lg-send".into())
            .spawn(move || sender_loop(&m))
            .map_err(LoadError::io("spawning the sender"))?;
        let m = Arc::clone(&media);
        let receiver = thread::Builder::new()
            .name("lg-recv".into())
            .spawn(move || receiver_loop(&m, &epoll));
        // Built before the receiver check so that Drop stops the sender on error.
        let mut run = MediaRun {
            media,
            sender: Some(sender),
            receiver: None,
        };
        run.receiver = Some(receiver.map_err(LoadError::io("spawning the receiver"))?);
        Ok(run)
    }

    fn snapshot(&self) -> Result<RxSnapshot, LoadError> {
        let want = self.media.snap_req.fetch_add(1, Ordering::AcqRel) + 1;
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.media.snap_done.load(Ordering::Acquire) < want {
            if Instant::now() > deadline {
                return Err(LoadError::ReceiverStuck);
            }
            thread::sleep(Duration::from_micros(500));
        }
        self.media
            .snaps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .ok_or(LoadError::ReceiverStuck)
    }

    fn finish(mut self) -> (Histogram<u64>, RxFinal) {
        self.media.stop.store(true, Ordering::Release);
        let late = self
            .sender
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_else(|| new_histogram(60_000_000));
        let rx = self
            .receiver
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or(RxFinal {
                streams: Vec::new(),
                rtcp: 0,
                other: 0,
                errors: 1,
            });
        (late, rx)
    }
}

impl Drop for MediaRun {
    fn drop(&mut self) {
        self.media.stop.store(true, Ordering::Release);
        if let Some(h) = self.sender.take() {
            let _ = h.join();
        }
        if let Some(h) = self.receiver.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------
// The SIP driver of a step
// ---------------------------------------------------------------------------

/// Process-wide: the SIP socket and where the measurements come from.
struct Env {
    server: SocketAddr,
    sip: UdpSocket,
    local: SocketAddr,
    local_ip: Ipv4Addr,
    metrics: Option<SocketAddr>,
    server_cpu: ServerCpu,
    run_tag: u32,
    /// `--rt-priority`: SCHED_FIFO for the media threads, so that other load on
    /// the box does not show up as our own jitter.
    rt_priority: Option<i32>,
}

impl Env {
    fn new(
        server: SocketAddr,
        local_ip: Ipv4Addr,
        metrics: Option<SocketAddr>,
        server_cpu: ServerCpu,
    ) -> Result<Env, LoadError> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
            .map_err(LoadError::io("SIP socket"))?;
        // Bursts of 200 OKs at high CPS: room for them (capped by rmem_max).
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
        s.bind(&SocketAddr::from((local_ip, 0)).into())
            .map_err(LoadError::io("binding the SIP socket"))?;
        let sip: UdpSocket = s.into();
        let local = sip
            .local_addr()
            .map_err(LoadError::io("SIP socket address"))?;
        Ok(Env {
            server,
            sip,
            local,
            local_ip,
            metrics,
            server_cpu,
            run_tag: rand::thread_rng().gen(),
            rt_priority: None,
        })
    }

    fn send(&self, data: &[u8], to: SocketAddr) {
        // A lost send is a lost datagram: the transaction timers retransmit.
        let _ = self.sip.send_to(data, to);
    }

    fn recv(
        &self,
        buf: &mut [u8],
        wait: Duration,
    ) -> Result<Option<(usize, SocketAddr)>, LoadError> {
        let wait = wait.clamp(Duration::from_millis(1), Duration::from_millis(50));
        self.sip
            .set_read_timeout(Some(wait))
            .map_err(LoadError::io("SIP socket timeout"))?;
        match self.sip.recv_from(buf) {
            Ok(r) => Ok(Some(r)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            // ICMP port unreachable from an earlier send (server not up yet).
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(None),
            Err(e) => Err(LoadError::Io {
                what: "SIP receive",
                err: e,
            }),
        }
    }

    /// Answer a request that belongs to no call of ours (a retransmitted BYE of
    /// an earlier step, a keepalive OPTIONS).
    fn answer_stray(&self, msg: &sip::Msg<'_>, method: &str, src: SocketAddr) {
        let resp = match method {
            "ACK" => return,
            "BYE" | "OPTIONS" => sip::response_to(msg, 200, "OK", "lg", "", ""),
            _ => sip::response_to(msg, 481, "Call/Transaction Does Not Exist", "lg", "", ""),
        };
        self.send(&resp, src);
    }

    /// RFC 3261 s11: an OPTIONS ping until any response, retransmitted on T1
    /// doubling, for at most `wait`.
    fn ping(&self, wait: Duration) -> Result<u16, LoadError> {
        let start = Instant::now();
        let mut buf = vec![0u8; 65535];
        let mut n = 0u32;
        let mut interval = T1;
        let mut next = start;
        while start.elapsed() < wait {
            if Instant::now() >= next {
                n += 1;
                let m = format!(
                    "OPTIONS sip:{srv} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKlg{tag:08x}o{n};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:sb-loadgen@{ip}>;tag=lg{tag:08x}\r\nTo: <sip:{srv}>\r\n\
Call-ID: lg{tag:08x}-options@sb-loadgen\r\nCSeq: {n} OPTIONS\r\nAccept: application/sdp\r\nContent-Length: 0\r\n\r\n",
                    srv = self.server,
                    local = self.local,
                    tag = self.run_tag,
                    ip = self.local_ip,
                );
                self.send(m.as_bytes(), self.server);
                next = Instant::now() + interval;
                interval = (interval * 2).min(T2);
            }
            let left = next
                .min(start + wait)
                .saturating_duration_since(Instant::now());
            if let Some((len, _)) = self.recv(&mut buf, left)? {
                if let Ok(msg) = sip::Msg::parse(&buf[..len]) {
                    if let (sip::Start::Response { code }, Some((_, "OPTIONS"))) =
                        (msg.start, msg.cseq())
                    {
                        if code >= 200 {
                            return Ok(code);
                        }
                    }
                }
            }
        }
        Err(LoadError::ServerSilent {
            server: self.server,
            waited: wait,
        })
    }

    /// Answer stray requests for `d` (between steps).
    fn idle(&self, d: Duration) -> Result<(), LoadError> {
        let end = Instant::now() + d;
        let mut buf = vec![0u8; 65535];
        while Instant::now() < end {
            if let Some((len, src)) =
                self.recv(&mut buf, end.saturating_duration_since(Instant::now()))?
            {
                if let Ok(msg) = sip::Msg::parse(&buf[..len]) {
                    if let sip::Start::Request { method, .. } = msg.start {
                        self.answer_stray(&msg, method, src);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The UAC of every call of one step, driven by the main thread.
struct Uac<'a> {
    env: &'a Env,
    media: &'a Media,
    calls: Vec<Call>,
    prefix: String,
    buf: Vec<u8>,
    out: Vec<Vec<u8>>,
    stray: u64,
    unparsable: u64,
}

impl<'a> Uac<'a> {
    fn new(
        env: &'a Env,
        media: &'a Media,
        step: u32,
        setup_timeout: Duration,
    ) -> Result<Uac<'a>, LoadError> {
        let ends = Ends {
            local: env.local,
            server: env.server,
        };
        let mut calls = Vec::with_capacity(media.sockets.len());
        for (i, s) in media.sockets.iter().enumerate() {
            let port = s
                .local_addr()
                .map_err(LoadError::io("RTP socket address"))?
                .port();
            calls.push(Call::new(ends, env.run_tag, step, i, port, setup_timeout));
        }
        Ok(Uac {
            env,
            media,
            calls,
            prefix: call_id_prefix(env.run_tag, step),
            buf: vec![0u8; 65535],
            out: Vec::new(),
            stray: 0,
            unparsable: 0,
        })
    }

    fn flush(&mut self) {
        for m in self.out.drain(..) {
            self.env.send(&m, self.env.server);
        }
    }

    fn apply(&mut self, idx: usize, ev: Option<CallEvent>) {
        let Some(ev) = ev else { return };
        let slot = &self.media.slots[idx];
        match ev {
            CallEvent::Answered(dest) => {
                slot.dest.store(pack_addr(dest), Ordering::Relaxed);
                slot.state.store(SLOT_ACTIVE, Ordering::Release);
            }
            CallEvent::ServerHangup => slot.state.store(SLOT_STOPPED, Ordering::Release),
            CallEvent::Failed(_) | CallEvent::ByeDone(_) => {}
        }
    }

    fn place(&mut self, idx: usize) {
        let m = self.calls[idx].invite(Instant::now());
        self.env.send(&m, self.env.server);
    }

    fn hangup(&mut self, idx: usize) {
        // Media stops before the BYE, so the server sees no RTP after it.
        self.media.slots[idx]
            .state
            .store(SLOT_STOPPED, Ordering::Release);
        if self.calls[idx].hangup(Instant::now(), &mut self.out) {
            self.flush();
        }
    }

    fn on_datagram(&mut self, len: usize, src: SocketAddr) {
        let data = std::mem::take(&mut self.buf);
        let now = Instant::now();
        match sip::Msg::parse(&data[..len]) {
            Err(_) => self.unparsable += 1,
            Ok(msg) => {
                let idx = msg
                    .call_id()
                    .and_then(|c| call_index(c, &self.prefix))
                    .filter(|&i| i < self.calls.len());
                match (msg.start, idx) {
                    (sip::Start::Response { code }, Some(i)) => {
                        let ev = self.calls[i].on_response(&msg, code, now, &mut self.out);
                        self.flush();
                        self.apply(i, ev);
                    }
                    (sip::Start::Request { method: "BYE", .. }, Some(i)) => {
                        let ok = sip::response_to(&msg, 200, "OK", "", "", "");
                        self.env.send(&ok, src);
                        let ev = self.calls[i].on_server_bye(now);
                        self.apply(i, ev);
                    }
                    (sip::Start::Request { method: "ACK", .. }, _) => {}
                    (sip::Start::Request { method, .. }, Some(_)) => {
                        // re-INVITE, UPDATE, INFO...: not part of this test.
                        let r = sip::response_to(&msg, 501, "Not Implemented", "", "", "");
                        self.env.send(&r, src);
                        let _ = method;
                    }
                    (sip::Start::Request { method, .. }, None) => {
                        self.env.answer_stray(&msg, method, src)
                    }
                    (sip::Start::Response { .. }, None) => self.stray += 1,
                }
            }
        }
        self.buf = data;
    }

    /// Fire due timers; the earliest pending deadline after that.
    fn fire_timers(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for i in 0..self.calls.len() {
            if self.calls[i].deadline().is_some_and(|d| d <= now) {
                let ev = self.calls[i].on_timeout(now, &mut self.out);
                self.flush();
                self.apply(i, ev);
            }
            if let Some(d) = self.calls[i].deadline() {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        next
    }

    /// Serve SIP until `until`, or earlier once `done` holds.
    fn pump_until(
        &mut self,
        until: Instant,
        done: impl Fn(&Uac<'_>) -> bool,
    ) -> Result<(), LoadError> {
        loop {
            let now = Instant::now();
            let next = self.fire_timers(now);
            if now >= until || done(self) {
                return Ok(());
            }
            let wake = next.map_or(until, |n| n.min(until));
            if let Some((len, src)) = self
                .env
                .recv(&mut self.buf, wake.saturating_duration_since(now))?
            {
                self.on_datagram(len, src);
            }
        }
    }

    fn pump(&mut self, until: Instant) -> Result<(), LoadError> {
        self.pump_until(until, |_| false)
    }

    fn unresolved(&self) -> usize {
        self.calls
            .iter()
            .filter(|c| matches!(c.phase, Phase::Fresh | Phase::Calling | Phase::Proceeding))
            .count()
    }

    fn hanging_up(&self) -> usize {
        self.calls
            .iter()
            .filter(|c| c.phase == Phase::Hangup)
            .count()
    }
}

// ---------------------------------------------------------------------------
// A step and its result
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct StepSpec {
    step: u32,
    calls: usize,
    cps: f64,
    bye_cps: f64,
    settle: Duration,
    duration: Duration,
    setup_timeout: Duration,
}

impl StepSpec {
    /// Roughly how long the step takes (for the ramp's time budget).
    fn estimate(&self) -> Duration {
        Duration::from_secs_f64(
            self.calls as f64 / self.cps
                + self.calls as f64 / self.bye_cps
                + self.settle.as_secs_f64()
                + self.duration.as_secs_f64()
                + 3.0,
        )
    }
}

#[derive(Debug, Clone, Default)]
struct StepResult {
    calls: usize,
    established: usize,
    failures: BTreeMap<String, u32>,
    /// Calls the server hung up before we did.
    dropped: usize,
    invite_retransmissions: u64,
    late_answers: usize,
    setup_ms_p50: f64,
    setup_ms_p99: f64,
    window_s: f64,
    calls_in_window: usize,
    /// Sent by us in the window (all calls), and sends that failed.
    sent: u64,
    send_errors: u64,
    /// Received from the server in the window, calls up through the window.
    received: u64,
    /// 50 pps x call-seconds of the window.
    expected: u64,
    /// RFC 3550 A.3 over the window, per call, summed.
    seq_expected: u64,
    seq_lost: u64,
    silent_calls: usize,
    rtcp: u64,
    /// Server counters over the window: (rtp in, rtp lost).
    tx: Option<(u64, u64)>,
    jitter_p50_us: u64,
    jitter_p99_us: u64,
    transit_delta_p99_us: u64,
    server_cpu_pct: Option<f64>,
    gen_cpu_pct: f64,
    tick_late_p99_us: u64,
    ticks_skipped: u64,
    bye_ok: usize,
    bye_failed: usize,
    /// Whole step, for exact checks: packets we sent, and the receive totals.
    total_sent: u64,
    total_rx_expected: u64,
    total_rx_received: u64,
    /// Σ per call of RFC 3550 cumulative lost (expected - received).
    total_rx_lost: i64,
    rx_errors: u64,
    /// Datagrams on RTP sockets that were neither RTP nor RTCP.
    rx_other: u64,
    /// `--rt-priority` was asked for but the kernel refused it.
    rt_denied: bool,
}

impl StepResult {
    fn setup_failures(&self) -> u32 {
        self.failures.values().sum()
    }

    fn rx_loss_pct(&self) -> Option<f64> {
        (self.seq_expected > 0).then(|| self.seq_lost as f64 * 100.0 / self.seq_expected as f64)
    }

    /// How far the server's stream falls short of 50 pps x call-seconds,
    /// counting what it numbered (received + lost): a server that sends late,
    /// skips ticks or stops a stream; loss in transit is `rx_loss_pct`.
    fn shortfall_pct(&self) -> Option<f64> {
        (self.expected > 0).then(|| {
            self.expected.saturating_sub(self.seq_expected) as f64 * 100.0 / self.expected as f64
        })
    }

    fn tx_loss_pct(&self) -> Option<f64> {
        let (i, l) = self.tx?;
        (i + l > 0).then(|| l as f64 * 100.0 / (i + l) as f64)
    }
}

/// Pass or fail of one step, and whether the ramp can go on.
#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    failures: Vec<String>,
    server_saturated: bool,
    generator_bound: bool,
}

impl Verdict {
    fn pass(&self) -> bool {
        self.failures.is_empty()
    }

    fn label(&self) -> String {
        let mut s = if self.pass() {
            "PASS".to_string()
        } else {
            format!("FAIL({})", self.failures.join(","))
        };
        if self.server_saturated {
            s.push_str(" server-cpu-saturated");
        }
        if self.generator_bound {
            s.push_str(" GENERATOR-BOUND");
        }
        s
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    loss_pct: f64,
    cpu_pct: f64,
    /// Optional: fail a step whose received jitter J p99 exceeds this (µs).
    jitter_p99_us: Option<u64>,
}

fn verdict(r: &StepResult, lim: Limits) -> Verdict {
    let mut f = Vec::new();
    if r.setup_failures() > 0 || r.established < r.calls {
        f.push(format!("setup:{}", r.calls - r.established));
    }
    if r.dropped > 0 {
        f.push(format!("dropped:{}", r.dropped));
    }
    if r.rx_loss_pct().is_some_and(|l| l > lim.loss_pct) {
        f.push("rx-loss".into());
    }
    if r.shortfall_pct().is_none_or(|s| s > RATE_TOLERANCE_PCT) {
        f.push("rx-rate".into());
    }
    if r.silent_calls > 0 {
        f.push(format!("silent:{}", r.silent_calls));
    }
    if r.tx_loss_pct().is_some_and(|l| l > lim.loss_pct) {
        f.push("tx-loss".into());
    }
    if r.bye_failed > 0 {
        f.push(format!("bye:{}", r.bye_failed));
    }
    if lim.jitter_p99_us.is_some_and(|j| r.jitter_p99_us > j) {
        f.push("jitter".into());
    }
    Verdict {
        failures: f,
        server_saturated: r.server_cpu_pct.is_some_and(|c| c >= lim.cpu_pct),
        generator_bound: r.gen_cpu_pct >= GEN_CPU_LIMIT_PCT
            || r.ticks_skipped > 0
            || r.send_errors > 0,
    }
}

/// Everything read at one edge of the measurement window.
struct Mark {
    at: Instant,
    rx: RxSnapshot,
    sent: u64,
    send_errors: u64,
    server: Option<ServerCounters>,
    server_cpu_us: Option<u64>,
    gen_cpu_us: u64,
}

fn mark(env: &Env, run: &MediaRun) -> Result<Mark, LoadError> {
    let rx = run.snapshot()?;
    let m = &run.media;
    // Time and CPU counters together; the scrape (which may be slow when the
    // server is saturated) last, as its counters are not divided by time.
    let at = Instant::now();
    let server_cpu_us = env.server_cpu.read_us();
    let gen_cpu_us = os::thread_cpu_us() + m.sender_cpu_us.load(Ordering::Relaxed) + rx.cpu_us;
    let sent = m.sent.load(Ordering::Relaxed);
    let send_errors = m.send_errors.load(Ordering::Relaxed);
    Ok(Mark {
        at,
        rx,
        sent,
        send_errors,
        server: env.metrics.and_then(|a| scrape(a).ok()),
        server_cpu_us,
        gen_cpu_us,
    })
}

fn run_step(env: &Env, spec: &StepSpec) -> Result<StepResult, LoadError> {
    let n = spec.calls;
    let run = MediaRun::start(env.local_ip, n, env.rt_priority)?;
    let mut uac = Uac::new(env, &run.media, spec.step, spec.setup_timeout)?;

    // Setup, paced at `cps`; media of each call starts when it is answered.
    let t_setup = Instant::now();
    for i in 0..n {
        uac.pump(t_setup + Duration::from_secs_f64(i as f64 / spec.cps))?;
        uac.place(i);
    }
    uac.pump_until(
        Instant::now() + spec.setup_timeout + Duration::from_secs(1),
        |u| u.unresolved() == 0,
    )?;
    uac.pump(Instant::now() + spec.settle)?;

    // The measurement window.
    let w0 = mark(env, &run)?;
    uac.pump(w0.at + spec.duration)?;
    let w1 = mark(env, &run)?;

    // Teardown: BYE paced at `bye_cps`, then wait for the 200s.
    let t_bye = Instant::now();
    let live: Vec<usize> = (0..n)
        .filter(|&i| uac.calls[i].phase == Phase::Established)
        .collect();
    for (k, &i) in live.iter().enumerate() {
        uac.pump(t_bye + Duration::from_secs_f64(k as f64 / spec.bye_cps))?;
        uac.hangup(i);
    }
    uac.pump_until(Instant::now() + TIMER_F + Duration::from_secs(1), |u| {
        u.hanging_up() == 0
    })?;
    // Packets in flight (and the server's last ones) before the receiver stops.
    uac.pump(Instant::now() + Duration::from_millis(200))?;
    let calls = std::mem::take(&mut uac.calls);
    drop(uac);
    let total_sent_at_end = run.media.sent.load(Ordering::Relaxed);
    let skipped = run.media.ticks_skipped.load(Ordering::Relaxed);
    let rt_denied = run.media.rt_denied.load(Ordering::Relaxed);
    let (lateness, rx_final) = run.finish();

    // Result.
    let mut r = StepResult {
        calls: n,
        ..StepResult::default()
    };
    let mut setup = new_histogram(600_000);
    for c in &calls {
        if let Some(f) = c.failure {
            *r.failures.entry(f.to_string()).or_insert(0) += 1;
        } else if c.answered_at.is_some() {
            r.established += 1;
        }
        if c.server_hangup_at.is_some_and(|t| t < t_bye) {
            r.dropped += 1;
        }
        r.invite_retransmissions += u64::from(c.invite_retransmissions);
        r.late_answers += usize::from(c.late_answer);
        if let Some(d) = c.setup_time() {
            setup.saturating_record(d.as_micros() as u64);
        }
        match c.bye_outcome {
            Some(ByeOutcome::Ok) => r.bye_ok += 1,
            Some(_) => r.bye_failed += 1,
            None => {}
        }
    }
    r.setup_ms_p50 = setup.value_at_quantile(0.5) as f64 / 1000.0;
    r.setup_ms_p99 = setup.value_at_quantile(0.99) as f64 / 1000.0;

    let w_rx = w1.rx.at.saturating_duration_since(w0.rx.at).as_secs_f64();
    r.window_s = w_rx;
    let mut nominal = 0.0;
    for (i, c) in calls.iter().enumerate() {
        let up_through_window = c.answered_at.is_some_and(|t| t <= w0.rx.at)
            && c.server_hangup_at.is_none_or(|t| t > w1.rx.at);
        if !up_through_window {
            continue;
        }
        r.calls_in_window += 1;
        let (e0, r0) = w0.rx.counts[i];
        let (e1, r1) = w1.rx.counts[i];
        let (exp, rec) = (e1 - e0, r1 - r0);
        r.seq_expected += exp;
        r.seq_lost += exp.saturating_sub(rec);
        r.received += rec;
        if rec == 0 {
            r.silent_calls += 1;
        }
        nominal += PACKETS_PER_SEC * w_rx;
    }
    r.expected = nominal.round() as u64;
    r.sent = w1.sent - w0.sent;
    r.send_errors = w1.send_errors - w0.send_errors;
    r.rtcp = rx_final.rtcp;
    r.rx_errors = rx_final.errors;
    r.rx_other = rx_final.other;
    if let (Some(a), Some(b)) = (w0.server, w1.server) {
        if let (Some(i0), Some(i1), Some(l0), Some(l1)) =
            (a.rtp_in, b.rtp_in, a.rtp_lost, b.rtp_lost)
        {
            r.tx = Some((i1.saturating_sub(i0), l1.saturating_sub(l0)));
        }
    }
    r.jitter_p50_us = w1.rx.jitter.value_at_quantile(0.5);
    r.jitter_p99_us = w1.rx.jitter.value_at_quantile(0.99);
    r.transit_delta_p99_us = w1.rx.transit_delta.value_at_quantile(0.99);
    let wall_us = w1.at.saturating_duration_since(w0.at).as_micros().max(1) as f64;
    if let (Some(a), Some(b)) = (w0.server_cpu_us, w1.server_cpu_us) {
        r.server_cpu_pct = Some(b.saturating_sub(a) as f64 * 100.0 / wall_us);
    }
    r.gen_cpu_pct = w1.gen_cpu_us.saturating_sub(w0.gen_cpu_us) as f64 * 100.0 / wall_us;
    r.tick_late_p99_us = lateness.value_at_quantile(0.99);
    r.ticks_skipped = skipped;
    r.rt_denied = rt_denied;
    r.total_sent = total_sent_at_end;
    for s in &rx_final.streams {
        r.total_rx_expected += s.expected();
        r.total_rx_received += s.received;
        r.total_rx_lost += s.lost();
    }
    Ok(r)
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

const TABLE_HEAD: &str = "  calls  estab  fail  setup p50/p99 ms      sent      recv    expect  rx loss%  rx short%  tx loss%  jit p50/p99 us  srv cpu%  gen cpu%  verdict";

fn pct(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.3}"))
}

fn table_row(r: &StepResult, v: &Verdict) -> String {
    format!(
        "{:>7}  {:>5}  {:>4}  {:>7.1}/{:<8.1} {:>9} {:>9} {:>9}  {:>8}  {:>9}  {:>8}  {:>6}/{:<7}  {:>8}  {:>8.1}  {}",
        r.calls,
        r.established,
        r.setup_failures() + r.dropped as u32,
        r.setup_ms_p50,
        r.setup_ms_p99,
        r.sent,
        r.received,
        r.expected,
        pct(r.rx_loss_pct()),
        pct(r.shortfall_pct()),
        pct(r.tx_loss_pct()),
        r.jitter_p50_us,
        r.jitter_p99_us,
        r.server_cpu_pct.map_or("n/a".into(), |c| format!("{c:.1}")),
        r.gen_cpu_pct,
        v.label()
    )
}

fn details(r: &StepResult) -> String {
    let mut s = format!(
        "         window {:.2} s over {} calls; seq expected {} lost {}; silent calls {}; rtcp {}; |D| p99 {} us; tick late p99 {} us; skipped ticks {}; send errors {}; INVITE retransmissions {}; BYE ok {} failed {}",
        r.window_s,
        r.calls_in_window,
        r.seq_expected,
        r.seq_lost,
        r.silent_calls,
        r.rtcp,
        r.transit_delta_p99_us,
        r.tick_late_p99_us,
        r.ticks_skipped,
        r.send_errors,
        r.invite_retransmissions,
        r.bye_ok,
        r.bye_failed
    );
    if let Some((i, l)) = r.tx {
        s.push_str(&format!("; server rtp in {i} lost {l}"));
    }
    if !r.failures.is_empty() {
        let f: Vec<String> = r.failures.iter().map(|(k, v)| format!("{k}x{v}")).collect();
        s.push_str(&format!("; failures {}", f.join(" ")));
    }
    if r.rx_other > 0 || r.rx_errors > 0 {
        s.push_str(&format!(
            "; non-RTP datagrams {}; receive errors {}",
            r.rx_other, r.rx_errors
        ));
    }
    if r.rt_denied {
        s.push_str("; SCHED_FIFO refused (media threads ran at normal priority)");
    }
    if r.late_answers > 0 {
        s.push_str(&format!("; late answers {}", r.late_answers));
    }
    s
}

const CSV_HEAD: &str = "step,calls,established,setup_failures,dropped,setup_p50_ms,setup_p99_ms,window_s,sent,send_errors,received,expected,seq_expected,seq_lost,rx_loss_pct,rx_shortfall_pct,server_rtp_in,server_rtp_lost,tx_loss_pct,jitter_p50_us,jitter_p99_us,transit_delta_p99_us,server_cpu_pct,gen_cpu_pct,tick_late_p99_us,ticks_skipped,invite_retransmissions,bye_failed,verdict";

fn csv_row(step: u32, r: &StepResult, v: &Verdict) -> String {
    let o = |x: Option<f64>| x.map_or(String::new(), |x| format!("{x:.4}"));
    format!(
        "{step},{},{},{},{},{:.2},{:.2},{:.3},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.2},{},{},{},{},{}",
        r.calls,
        r.established,
        r.setup_failures(),
        r.dropped,
        r.setup_ms_p50,
        r.setup_ms_p99,
        r.window_s,
        r.sent,
        r.send_errors,
        r.received,
        r.expected,
        r.seq_expected,
        r.seq_lost,
        o(r.rx_loss_pct()),
        o(r.shortfall_pct()),
        r.tx.map_or(String::new(), |t| t.0.to_string()),
        r.tx.map_or(String::new(), |t| t.1.to_string()),
        o(r.tx_loss_pct()),
        r.jitter_p50_us,
        r.jitter_p99_us,
        r.transit_delta_p99_us,
        o(r.server_cpu_pct),
        r.gen_cpu_pct,
        r.tick_late_p99_us,
        r.ticks_skipped,
        r.invite_retransmissions,
        r.bye_failed,
        v.label().replace(',', ";")
    )
}

struct Csv(Option<std::fs::File>);

impl Csv {
    fn open(path: Option<&str>) -> Result<Csv, LoadError> {
        let Some(p) = path else { return Ok(Csv(None)) };
        let mut f = std::fs::File::create(p).map_err(LoadError::io("creating the CSV file"))?;
        writeln!(f, "{CSV_HEAD}").map_err(LoadError::io("writing the CSV file"))?;
        Ok(Csv(Some(f)))
    }

    fn row(&mut self, step: u32, r: &StepResult, v: &Verdict) -> Result<(), LoadError> {
        if let Some(f) = &mut self.0 {
            writeln!(f, "{}", csv_row(step, r, v))
                .map_err(LoadError::io("writing the CSV file"))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Self-test: a stand-in server in-process
// ---------------------------------------------------------------------------

mod responder {
    //! A stand-in for switchboard, to check the generator against itself before
    //! the server's media exists: answers INVITE with 200 + SDP (one RTP socket
    //! per call), pairs calls by called number, and relays each party's packets
    //! to the other (to itself while alone), renumbered per leg like a mixer's
    //! output. Drops are injected deterministically in both directions and
    //! counted the way a receiver can see them (a drop counts once a later packet
    //! of the same leg was sent), so the generator's loss must match exactly.
    //! Serves `/metrics` with the two counters the generator reads.

    use super::*;
    use std::net::TcpListener;
    use std::sync::OnceLock;

    #[derive(Debug, Clone, Copy)]
    pub struct Config {
        pub capacity: usize,
        /// Drop every k-th packet sent to each leg (0: none).
        pub drop_out_every: u64,
        /// Drop every k-th packet received from each leg (0: none).
        pub drop_in_every: u64,
        /// SCHED_FIFO priority for the relay thread.
        pub rt_priority: Option<i32>,
        /// Where to listen: SIP/UDP and the /metrics HTTP port (port 0: any).
        pub sip_bind: SocketAddr,
        pub metrics_bind: SocketAddr,
    }

    struct Leg {
        sock: OnceLock<UdpSocket>,
        remote: AtomicU64,
        partner: AtomicU64,
        active: AtomicBool,
    }

    const NO_PARTNER: u64 = u64::MAX;

    #[derive(Default)]
    pub struct Counters {
        pub in_total: AtomicU64,
        pub in_accepted: AtomicU64,
        pub in_dropped_seen: AtomicU64,
        pub out_sent: AtomicU64,
        pub out_dropped_seen: AtomicU64,
        pub invites: AtomicU64,
        pub byes: AtomicU64,
    }

    struct Shared {
        cfg: Config,
        stop: AtomicBool,
        legs: Vec<Leg>,
        epoll: os::Epoll,
        counters: Counters,
        cpu: Arc<[AtomicU64; 3]>,
    }

    pub struct Responder {
        pub sip_addr: SocketAddr,
        pub metrics_addr: SocketAddr,
        shared: Arc<Shared>,
        threads: Vec<JoinHandle<()>>,
    }

    impl Responder {
        pub fn start(cfg: Config) -> io::Result<Responder> {
            let sip = UdpSocket::bind(cfg.sip_bind)?;
            sip.set_read_timeout(Some(Duration::from_millis(5)))?;
            let http = TcpListener::bind(cfg.metrics_bind)?;
            http.set_nonblocking(true)?;
            let shared = Arc::new(Shared {
                cfg,
                stop: AtomicBool::new(false),
                legs: (0..cfg.capacity)
                    .map(|_| Leg {
                        sock: OnceLock::new(),
                        remote: AtomicU64::new(0),
                        partner: AtomicU64::new(NO_PARTNER),
                        active: AtomicBool::new(false),
                    })
                    .collect(),
                epoll: os::Epoll::new()?,
                counters: Counters::default(),
                cpu: Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]),
            });
            // Built first so that Drop stops what started if a spawn fails.
            let mut r = Responder {
                sip_addr: sip.local_addr()?,
                metrics_addr: http.local_addr()?,
                shared,
                threads: Vec::new(),
            };
            let s = Arc::clone(&r.shared);
            r.threads.push(
                thread::Builder::new()
                    .name("resp-sip".into())
                    .spawn(move || sip_loop(&s, &sip))?,
            );
            let s = Arc::clone(&r.shared);
            r.threads.push(
                thread::Builder::new()
                    .name("resp-relay".into())
                    .spawn(move || relay_loop(&s))?,
            );
            let s = Arc::clone(&r.shared);
            r.threads.push(
                thread::Builder::new()
                    .name("resp-http".into())
                    .spawn(move || http_loop(&s, &http))?,
            );
            Ok(r)
        }

        pub fn cpu(&self) -> Arc<[AtomicU64; 3]> {
            Arc::clone(&self.shared.cpu)
        }

        pub fn counters(&self) -> &Counters {
            &self.shared.counters
        }
    }

    impl Drop for Responder {
        fn drop(&mut self) {
            self.shared.stop.store(true, Ordering::Release);
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }

    fn sip_loop(sh: &Shared, sock: &UdpSocket) {
        let mut buf = vec![0u8; 65535];
        // Call-ID -> (leg, last response to the INVITE, for retransmissions).
        let mut calls: HashMap<String, (usize, Vec<u8>)> = HashMap::new();
        // Room (called number) -> legs waiting for a partner.
        let mut waiting: HashMap<String, usize> = HashMap::new();
        let mut next_leg = 0usize;
        let local = sock.local_addr().expect("a bound socket has an address");
        while !sh.stop.load(Ordering::Acquire) {
            sh.cpu[0].store(os::thread_cpu_us(), Ordering::Relaxed);
            let Ok((len, src)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(msg) = sip::Msg::parse(&buf[..len]) else {
                continue;
            };
            let sip::Start::Request { method, uri } = msg.start else {
                continue;
            };
            let cid = msg.call_id().unwrap_or("").to_string();
            let resp = match method {
                "INVITE" => {
                    if let Some((_, last)) = calls.get(&cid) {
                        let _ = sock.send_to(last, src);
                        continue;
                    }
                    sh.counters.invites.fetch_add(1, Ordering::Relaxed);
                    let Ok(remote) = sip::sdp_audio_dest(msg.body) else {
                        let _ = sock.send_to(
                            &sip::response_to(&msg, 488, "Not Acceptable Here", "r", "", ""),
                            src,
                        );
                        continue;
                    };
                    if next_leg >= sh.legs.len() {
                        let _ = sock.send_to(
                            &sip::response_to(&msg, 503, "Service Unavailable", "r", "", ""),
                            src,
                        );
                        continue;
                    }
                    let Ok(rtp) = UdpSocket::bind("127.0.0.1:0") else {
                        continue;
                    };
                    let _ = rtp.set_nonblocking(true);
                    let port = rtp.local_addr().map_or(0, |a| a.port());
                    let idx = next_leg;
                    next_leg += 1;
                    let leg = &sh.legs[idx];
                    leg.remote.store(pack_addr(remote), Ordering::Relaxed);
                    let fd = rtp.as_raw_fd();
                    let _ = leg.sock.set(rtp);
                    leg.active.store(true, Ordering::Release);
                    let _ = sh.epoll.add(fd, idx as u64);
                    let room = sip::user_of(uri).to_string();
                    if let Some(other) = waiting.remove(&room) {
                        sh.legs[other].partner.store(idx as u64, Ordering::Release);
                        leg.partner.store(other as u64, Ordering::Release);
                    } else {
                        waiting.insert(room, idx);
                    }
                    let _ = sock.send_to(&sip::response_to(&msg, 100, "Trying", "", "", ""), src);
                    let sdp = format!(
                        "v=0\r\no=- {idx} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n"
                    );
                    let extra = format!(
                        "Contact: <sip:responder@{local}>\r\nContent-Type: application/sdp\r\n"
                    );
                    let ok = sip::response_to(&msg, 200, "OK", &format!("r{idx}"), &extra, &sdp);
                    calls.insert(cid, (idx, ok.clone()));
                    ok
                }
                "BYE" => {
                    sh.counters.byes.fetch_add(1, Ordering::Relaxed);
                    if let Some((idx, _)) = calls.get(&cid) {
                        let leg = &sh.legs[*idx];
                        leg.active.store(false, Ordering::Release);
                        let p = leg.partner.swap(NO_PARTNER, Ordering::AcqRel);
                        if p != NO_PARTNER {
                            sh.legs[p as usize]
                                .partner
                                .store(NO_PARTNER, Ordering::Release);
                        }
                        waiting.retain(|_, l| l != idx);
                        sip::response_to(&msg, 200, "OK", "", "", "")
                    } else {
                        sip::response_to(&msg, 481, "Call/Transaction Does Not Exist", "", "", "")
                    }
                }
                "ACK" => continue,
                _ => sip::response_to(&msg, 200, "OK", "r", "", ""),
            };
            let _ = sock.send_to(&resp, src);
        }
    }

    #[derive(Clone, Copy, Default)]
    struct LegTx {
        seq: u16,
        ts: u32,
        in_count: u64,
        in_pending: u64,
        out_count: u64,
        out_pending: u64,
    }

    fn relay_loop(sh: &Shared) {
        if let Some(p) = sh.cfg.rt_priority {
            let _ = os::set_thread_fifo(p);
        }
        let mut local = vec![LegTx::default(); sh.legs.len()];
        for (i, l) in local.iter_mut().enumerate() {
            l.seq = (i as u16).wrapping_mul(7919);
            l.ts = (i as u32).wrapping_mul(104_729);
        }
        let mut events = vec![os::EVENT_ZERO; 1024];
        let mut buf = [0u8; 2048];
        let c = &sh.counters;
        let mut last_cpu = Instant::now();
        while !sh.stop.load(Ordering::Acquire) {
            if last_cpu.elapsed() >= PTIME {
                sh.cpu[1].store(os::thread_cpu_us(), Ordering::Relaxed);
                last_cpu = Instant::now();
            }
            let n = sh.epoll.wait(&mut events, 5).unwrap_or(0);
            for ev in &events[..n] {
                let from = ev.u64 as usize;
                let Some(sock) = sh.legs.get(from).and_then(|l| l.sock.get()) else {
                    continue;
                };
                let Ok((len, _)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if !matches!(rtp::classify(&buf[..len]), rtp::Kind::Rtp(_)) || len < rtp::HEADER_LEN
                {
                    continue;
                }
                c.in_total.fetch_add(1, Ordering::Relaxed);
                let lf = &mut local[from];
                lf.in_count += 1;
                if sh.cfg.drop_in_every > 0 && lf.in_count % sh.cfg.drop_in_every == 0 {
                    // Lost on the way in: the mixer still sends its 20 ms
                    // (concealment), so the relay goes on below.
                    lf.in_pending += 1;
                } else {
                    c.in_accepted.fetch_add(1, Ordering::Relaxed);
                    c.in_dropped_seen
                        .fetch_add(lf.in_pending, Ordering::Relaxed);
                    lf.in_pending = 0;
                }
                if !sh.legs[from].active.load(Ordering::Acquire) {
                    continue;
                }
                let p = sh.legs[from].partner.load(Ordering::Acquire);
                let to = if p == NO_PARTNER { from } else { p as usize };
                let leg = &sh.legs[to];
                let (Some(out_sock), true) = (leg.sock.get(), leg.active.load(Ordering::Acquire))
                else {
                    continue;
                };
                let lt = &mut local[to];
                lt.out_count += 1;
                let (seq, ts) = (lt.seq, lt.ts);
                lt.seq = lt.seq.wrapping_add(1);
                lt.ts = lt.ts.wrapping_add(SAMPLES_PER_PACKET);
                if sh.cfg.drop_out_every > 0 && lt.out_count % sh.cfg.drop_out_every == 0 {
                    lt.out_pending += 1;
                    continue;
                }
                buf[2..4].copy_from_slice(&seq.to_be_bytes());
                buf[4..8].copy_from_slice(&ts.to_be_bytes());
                buf[8..12].copy_from_slice(&(0x5b00_0000 | to as u32).to_be_bytes());
                let dest = unpack_addr(leg.remote.load(Ordering::Relaxed));
                if out_sock.send_to(&buf[..len], dest).is_ok() {
                    c.out_sent.fetch_add(1, Ordering::Relaxed);
                    c.out_dropped_seen
                        .fetch_add(lt.out_pending, Ordering::Relaxed);
                    lt.out_pending = 0;
                }
            }
        }
    }

    fn http_loop(sh: &Shared, listener: &TcpListener) {
        while !sh.stop.load(Ordering::Acquire) {
            sh.cpu[2].store(os::thread_cpu_us(), Ordering::Relaxed);
            let Ok((mut s, _)) = listener.accept() else {
                thread::sleep(Duration::from_millis(5));
                continue;
            };
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&b[..n]),
                }
            }
            let c = &sh.counters;
            let body = format!(
                "# TYPE switchboard_rtp_packets_total counter\nswitchboard_rtp_packets_total{{shard=\"0\",direction=\"in\"}} {}\nswitchboard_rtp_packets_total{{shard=\"0\",direction=\"out\"}} {}\n# TYPE switchboard_rtp_lost_total counter\nswitchboard_rtp_lost_total {}\n",
                c.in_accepted.load(Ordering::Relaxed),
                c.out_sent.load(Ordering::Relaxed),
                c.in_dropped_seen.load(Ordering::Relaxed),
            );
            let _ = write!(s, "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        }
    }
}

/// What the self-test checked, one line each.
struct Check {
    name: String,
    ok: bool,
}

fn self_test(
    calls: usize,
    duration: Duration,
    drop_out_every: u64,
    drop_in_every: u64,
    rt_priority: Option<i32>,
    print: bool,
) -> Result<Vec<Check>, LoadError> {
    os::ensure_fd_limit(2 * calls as u64 + 256).map_err(|hard| LoadError::TooManyFds {
        need: 2 * calls as u64 + 256,
        hard,
    })?;
    let resp = responder::Responder::start(responder::Config {
        capacity: calls,
        drop_out_every,
        drop_in_every,
        rt_priority,
        sip_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
    })
    .map_err(LoadError::io("starting the responder"))?;
    let mut env = Env::new(
        resp.sip_addr,
        Ipv4Addr::LOCALHOST,
        Some(resp.metrics_addr),
        ServerCpu::Threads(resp.cpu()),
    )?;
    env.rt_priority = rt_priority;
    env.ping(Duration::from_secs(2))?;
    let spec = StepSpec {
        step: 1,
        calls,
        cps: 500.0,
        bye_cps: 1000.0,
        settle: Duration::from_millis(300),
        duration,
        setup_timeout: Duration::from_secs(5),
    };
    let r = run_step(&env, &spec)?;
    let v = verdict(
        &r,
        Limits {
            loss_pct: 100.0,
            cpu_pct: 1000.0,
            jitter_p99_us: None,
        },
    );
    if print {
        println!("{TABLE_HEAD}");
        println!("{}", table_row(&r, &v));
        println!("{}", details(&r));
    }
    drop(env);
    let c = resp.counters();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut checks = Vec::new();
    let mut check = |name: String, ok: bool| checks.push(Check { name, ok });
    check(
        format!("all {calls} calls established ({})", r.established),
        r.established == calls && r.setup_failures() == 0,
    );
    check(
        format!(
            "all {calls} calls hung up with 200 ({} ok, {} failed)",
            r.bye_ok, r.bye_failed
        ),
        r.bye_ok == calls,
    );
    check(
        format!(
            "packets sent == packets the responder received ({} vs {})",
            r.total_sent,
            load(&c.in_total)
        ),
        r.total_sent == load(&c.in_total),
    );
    let rx_lost = r.total_rx_lost;
    check(
        format!(
            "server->us loss by sequence gaps == drops injected and visible ({rx_lost} vs {})",
            load(&c.out_dropped_seen)
        ),
        rx_lost == load(&c.out_dropped_seen) as i64,
    );
    check(
        format!(
            "received == responder sent ({} vs {})",
            r.total_rx_received,
            load(&c.out_sent)
        ),
        r.total_rx_received == load(&c.out_sent),
    );
    let near = |got: Option<f64>, every: u64| {
        let want = if every == 0 {
            0.0
        } else {
            100.0 / every as f64
        };
        // The window cuts each call's stream at two random points: at most one
        // packet per call per edge off the exact ratio.
        let slack = 2.0 * calls as f64 * 100.0 / (r.seq_expected.max(1) as f64);
        (
            got.unwrap_or(f64::NAN),
            want,
            got.is_some_and(|g| (g - want).abs() <= slack + 1e-9),
        )
    };
    let (got, want, ok) = near(r.rx_loss_pct(), drop_out_every);
    check(
        format!("window rx loss {got:.3}% ~ injected {want:.3}%"),
        ok,
    );
    let (got, want, ok) = near(r.tx_loss_pct(), drop_in_every);
    check(
        format!("window tx loss from /metrics {got:.3}% ~ injected {want:.3}%"),
        ok,
    );
    check(
        format!("window rate: received+lost within {RATE_TOLERANCE_PCT}% of 50 pps x call-seconds ({} + {} vs {})", r.received, r.seq_lost, r.expected),
        ((r.received + r.seq_lost) as f64 - r.expected as f64).abs() <= r.expected as f64 * RATE_TOLERANCE_PCT / 100.0,
    );
    check(
        format!("no silent calls ({})", r.silent_calls),
        r.silent_calls == 0,
    );
    Ok(checks)
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

const USAGE: &str = "usage:
  sb-loadgen run       --calls N [common options]
  sb-loadgen ramp      [--start 50] [--step 50] [--max 2000] [--max-time 540] [common options]
  sb-loadgen self-test [--calls 200] [--duration 5] [--drop-out-every 100] [--drop-in-every 200]
                       [--rt-priority N]
  sb-loadgen respond   [--sip 127.0.0.1:5060] [--metrics 127.0.0.1:6789] [--capacity 15000]
                       [--drop-out-every 0] [--drop-in-every 0] [--time-limit 900] [--rt-priority N]
                       (the self-test's stand-in server alone: relays each pair, no switchboard)
common options:
  --server 127.0.0.1:5060    switchboard's SIP address (UDP)
  --metrics 127.0.0.1:6789   its Prometheus endpoint, or 'none'
  --server-pid PID           read its CPU time from /proc/PID/stat
  --duration 20              measurement window per step (s)
  --settle 2                 wait after the last answer before measuring (s)
  --cps 50                   call setup rate; --bye-cps 200 teardown rate
  --setup-timeout 32         give up on an unanswered INVITE after (s)
  --wait-ready 10            how long to wait for the server's OPTIONS answer (s)
  --loss-limit 0.1           % loss that fails a step; --cpu-limit 95 server CPU % that stops a ramp
  --jitter-limit-us 0        also fail a step whose received jitter J p99 exceeds this (0: off)
  --local-ip 127.0.0.1       address for our SIP and RTP sockets
  --rt-priority N            run the media threads SCHED_FIFO N (1..99), so other load on
                             the box does not become our own jitter (self-test too)
  --csv PATH                 also write one CSV row per step";

/// `--name value` pairs after the subcommand.
struct Opts {
    map: HashMap<String, String>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, LoadError> {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let name = a
                .strip_prefix("--")
                .ok_or_else(|| LoadError::Usage(format!("unexpected argument '{a}'")))?;
            let v = it
                .next()
                .ok_or_else(|| LoadError::Usage(format!("--{name} needs a value")))?;
            if map.insert(name.to_string(), v.clone()).is_some() {
                return Err(LoadError::Usage(format!("--{name} given twice")));
            }
        }
        Ok(Opts { map })
    }

    fn take<T: std::str::FromStr>(&mut self, name: &str, default: T) -> Result<T, LoadError> {
        match self.map.remove(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| LoadError::Usage(format!("--{name}: cannot read '{v}'"))),
        }
    }

    fn take_opt(&mut self, name: &str) -> Option<String> {
        self.map.remove(name)
    }

    fn secs(&mut self, name: &str, default: f64) -> Result<Duration, LoadError> {
        let v: f64 = self.take(name, default)?;
        if !(0.0..=3600.0).contains(&v) {
            return Err(LoadError::Usage(format!("--{name} must be 0..3600 s")));
        }
        Ok(Duration::from_secs_f64(v))
    }

    fn finish(self) -> Result<(), LoadError> {
        match self.map.keys().next() {
            Some(k) => Err(LoadError::Usage(format!("unknown option --{k}"))),
            None => Ok(()),
        }
    }
}

struct Common {
    env: Env,
    template: StepSpec,
    limits: Limits,
    csv: Option<String>,
}

fn common(o: &mut Opts) -> Result<Common, LoadError> {
    let server: SocketAddr = o.take("server", SocketAddr::from(([127, 0, 0, 1], 5060)))?;
    let metrics = match o.take_opt("metrics").as_deref() {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 6789))),
        Some("none") => None,
        Some(m) => Some(
            m.parse()
                .map_err(|_| LoadError::Usage(format!("--metrics: cannot read '{m}'")))?,
        ),
    };
    let server_cpu = match o.take_opt("server-pid") {
        None => ServerCpu::Unknown,
        Some(p) => {
            let pid: u32 = p
                .parse()
                .map_err(|_| LoadError::Usage(format!("--server-pid: cannot read '{p}'")))?;
            if !std::path::Path::new(&format!("/proc/{pid}/stat")).exists() {
                return Err(LoadError::Usage(format!(
                    "--server-pid {pid}: no such process"
                )));
            }
            ServerCpu::Process {
                pid,
                ticks_per_sec: os::clock_ticks_per_sec(),
            }
        }
    };
    let local_ip: Ipv4Addr = o.take("local-ip", Ipv4Addr::LOCALHOST)?;
    let cps: f64 = o.take("cps", 50.0)?;
    let bye_cps: f64 = o.take("bye-cps", 200.0)?;
    if !(cps > 0.0 && cps <= 10_000.0 && bye_cps > 0.0 && bye_cps <= 10_000.0) {
        return Err(LoadError::Usage(
            "--cps and --bye-cps must be in (0, 10000]".into(),
        ));
    }
    let template = StepSpec {
        step: 0,
        calls: 0,
        cps,
        bye_cps,
        settle: o.secs("settle", 2.0)?,
        duration: o.secs("duration", 20.0)?,
        setup_timeout: o.secs("setup-timeout", 32.0)?,
    };
    if template.duration < Duration::from_secs(1) {
        return Err(LoadError::Usage("--duration must be at least 1 s".into()));
    }
    let limits = Limits {
        loss_pct: o.take("loss-limit", 0.1)?,
        cpu_pct: o.take("cpu-limit", 95.0)?,
        jitter_p99_us: match o.take::<u64>("jitter-limit-us", 0)? {
            0 => None,
            j => Some(j),
        },
    };
    let wait_ready = o.secs("wait-ready", 10.0)?;
    let csv = o.take_opt("csv");
    let rt = rt_priority(o)?;
    let mut env = Env::new(server, local_ip, metrics, server_cpu)?;
    env.rt_priority = rt;
    if let Some(p) = rt {
        // The SIP thread too (see Media::enter_realtime).
        if let Err(e) = os::set_thread_fifo(p) {
            eprintln!("sb-loadgen: SCHED_FIFO refused ({e}): media threads at normal priority");
        }
    }
    let code = env.ping(wait_ready)?;
    eprintln!("sb-loadgen: server {server} answers OPTIONS with {code}");
    if let Some(m) = env.metrics {
        match scrape(m) {
            Ok(c) if c.rtp_in.is_some() && c.rtp_lost.is_some() => {}
            // The RTP series may only appear once calls carry media; tx loss is
            // read again at each window edge.
            Ok(_) => eprintln!(
                "sb-loadgen: {m}/metrics has no switchboard_rtp_packets_total / switchboard_rtp_lost_total yet"
            ),
            Err(e) => eprintln!(
                "sb-loadgen: metrics at {m} unreachable now ({e}); tx loss is n/a while it stays so"
            ),
        }
    }
    Ok(Common {
        env,
        template,
        limits,
        csv,
    })
}

fn rt_priority(o: &mut Opts) -> Result<Option<i32>, LoadError> {
    match o.take_opt("rt-priority") {
        None => Ok(None),
        Some(v) => match v.parse::<i32>() {
            Ok(p) if (1..=99).contains(&p) => Ok(Some(p)),
            _ => Err(LoadError::Usage(format!(
                "--rt-priority: '{v}' is not a SCHED_FIFO priority 1..99"
            ))),
        },
    }
}

fn check_fds(calls: usize) -> Result<(), LoadError> {
    let need = calls as u64 + 256;
    os::ensure_fd_limit(need).map_err(|hard| LoadError::TooManyFds { need, hard })
}

fn cmd_run(mut o: Opts) -> Result<u8, LoadError> {
    let calls: usize = o.take("calls", 0)?;
    if calls == 0 || calls > 100_000 {
        return Err(LoadError::Usage("run needs --calls N (1..100000)".into()));
    }
    check_fds(calls)?;
    let c = common(&mut o)?;
    o.finish()?;
    let mut csv = Csv::open(c.csv.as_deref())?;
    let spec = StepSpec {
        step: 1,
        calls,
        ..c.template.clone()
    };
    println!("{TABLE_HEAD}");
    let r = run_step(&c.env, &spec)?;
    let v = verdict(&r, c.limits);
    println!("{}", table_row(&r, &v));
    println!("{}", details(&r));
    csv.row(1, &r, &v)?;
    Ok(if v.pass() { 0 } else { 1 })
}

fn cmd_ramp(mut o: Opts) -> Result<u8, LoadError> {
    let start: usize = o.take("start", 50)?;
    let step: usize = o.take("step", 50)?;
    let max: usize = o.take("max", 2000)?;
    let max_time = o.secs("max-time", 540.0)?;
    if start == 0 || step == 0 || max < start || max > 100_000 {
        return Err(LoadError::Usage(
            "ramp needs 0 < --start <= --max <= 100000 and --step > 0".into(),
        ));
    }
    check_fds(max)?;
    let c = common(&mut o)?;
    o.finish()?;
    let mut csv = Csv::open(c.csv.as_deref())?;
    let began = Instant::now();
    let mut last_pass = None;
    let mut stop_reason = format!("reached --max {max}");
    println!("{TABLE_HEAD}");
    let mut n = start;
    let mut k = 1u32;
    while n <= max {
        let spec = StepSpec {
            step: k,
            calls: n,
            ..c.template.clone()
        };
        if began.elapsed() + spec.estimate() > max_time {
            stop_reason = format!(
                "time budget: a {n}-call step (~{:.0} s) would pass --max-time {:.0} s",
                spec.estimate().as_secs_f64(),
                max_time.as_secs_f64()
            );
            break;
        }
        let r = match run_step(&c.env, &spec) {
            Ok(r) => r,
            Err(LoadError::ReceiverStuck) => {
                stop_reason = format!(
                    "the generator itself is the limit at {n} calls (its receiver stalled)"
                );
                break;
            }
            Err(e) => return Err(e),
        };
        let v = verdict(&r, c.limits);
        println!("{}", table_row(&r, &v));
        println!("{}", details(&r));
        csv.row(k, &r, &v)?;
        if v.pass() {
            last_pass = Some(n);
        }
        if !v.pass() {
            stop_reason = format!("{n} calls failed: {}", v.failures.join(", "));
            break;
        }
        if v.server_saturated {
            stop_reason = format!(
                "server CPU saturated at {n} calls (>= {}%)",
                c.limits.cpu_pct
            );
            break;
        }
        if v.generator_bound {
            stop_reason = format!("the generator itself is the limit at {n} calls (CPU {:.0}%, skipped ticks {}, send errors {})", r.gen_cpu_pct, r.ticks_skipped, r.send_errors);
            break;
        }
        // Let the server finish tearing down before the next step.
        c.env.idle(Duration::from_secs(2))?;
        n += step;
        k += 1;
    }
    println!("stop: {stop_reason}");
    match last_pass {
        Some(p) => {
            let jitter = c
                .limits
                .jitter_p99_us
                .map_or(String::new(), |j| format!(", jitter p99 <= {j} us"));
            println!(
                "max calls passing (loss <= {}%{jitter}, no failures): {p}",
                c.limits.loss_pct
            );
            Ok(0)
        }
        None => {
            println!("max calls passing: none");
            Ok(1)
        }
    }
}

/// The self-test's stand-in server on fixed ports, for a bounded time: to try
/// scripts/loadtest.sh without switchboard, and to find the generator's own
/// ceiling on one core.
fn cmd_respond(mut o: Opts) -> Result<u8, LoadError> {
    let sip_bind: SocketAddr = o.take("sip", SocketAddr::from(([127, 0, 0, 1], 5060)))?;
    let metrics_bind: SocketAddr = o.take("metrics", SocketAddr::from(([127, 0, 0, 1], 6789)))?;
    let capacity: usize = o.take("capacity", 15_000)?;
    let out: u64 = o.take("drop-out-every", 0)?;
    let inn: u64 = o.take("drop-in-every", 0)?;
    let limit = o.secs("time-limit", 900.0)?;
    let rt = rt_priority(&mut o)?;
    o.finish()?;
    if capacity == 0 || capacity > 100_000 || out == 1 || inn == 1 {
        return Err(LoadError::Usage(
            "respond needs --capacity 1..100000 and drop periods of 0 (none) or >= 2".into(),
        ));
    }
    check_fds(capacity)?;
    let resp = responder::Responder::start(responder::Config {
        capacity,
        drop_out_every: out,
        drop_in_every: inn,
        rt_priority: rt,
        sip_bind,
        metrics_bind,
    })
    .map_err(LoadError::io("starting the responder"))?;
    eprintln!(
        "sb-loadgen respond: SIP {} metrics {} for at most {:.0} s",
        resp.sip_addr,
        resp.metrics_addr,
        limit.as_secs_f64()
    );
    thread::sleep(limit);
    Ok(0)
}

fn cmd_self_test(mut o: Opts) -> Result<u8, LoadError> {
    let calls: usize = o.take("calls", 200)?;
    let duration = o.secs("duration", 5.0)?;
    let out: u64 = o.take("drop-out-every", 100)?;
    let inn: u64 = o.take("drop-in-every", 200)?;
    let rt = rt_priority(&mut o)?;
    o.finish()?;
    if calls == 0 || calls > 20_000 || out == 1 || inn == 1 || duration < Duration::from_secs(1) {
        return Err(LoadError::Usage("self-test needs 1..20000 calls, a duration >= 1 s, and drop periods of 0 (none) or >= 2".into()));
    }
    let checks = self_test(calls, duration, out, inn, rt, true)?;
    let mut ok = true;
    for c in &checks {
        println!("{} {}", if c.ok { "ok  " } else { "FAIL" }, c.name);
        ok &= c.ok;
    }
    println!("self-test {}", if ok { "passed" } else { "FAILED" });
    Ok(if ok { 0 } else { 1 })
}

fn real_main(args: &[String]) -> Result<u8, LoadError> {
    let Some((cmd, rest)) = args.split_first() else {
        return Err(LoadError::Usage("no command".into()));
    };
    let o = Opts::parse(rest)?;
    match cmd.as_str() {
        "run" => cmd_run(o),
        "ramp" => cmd_ramp(o),
        "self-test" => cmd_self_test(o),
        "respond" => cmd_respond(o),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(0)
        }
        other => Err(LoadError::Usage(format!("unknown command '{other}'"))),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match real_main(&args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("sb-loadgen: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends() -> Ends {
        Ends {
            local: "127.0.0.1:5062".parse().unwrap(),
            server: "127.0.0.1:5060".parse().unwrap(),
        }
    }

    fn resp(text: &str) -> Vec<u8> {
        text.as_bytes().to_vec()
    }

    fn answer(c: &Call, code: u16, body: &str) -> Vec<u8> {
        resp(&format!(
            "SIP/2.0 {code} X\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK{cid}i\r\nFrom: {from}\r\nTo: <sip:{to}@127.0.0.1:5060>;tag=sb0-t\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:sb@127.0.0.1:5060>\r\nRecord-Route: <sip:p1;lr>, <sip:p2;lr>\r\nContent-Length: {}\r\n\r\n{body}",
            body.len(),
            cid = c.call_id,
            from = c.our_from(),
            to = c.to_user,
        ))
    }

    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 20000 RTP/AVP 0\r\n";

    #[test]
    fn pairs_share_a_called_number_and_call_ids_map_back() {
        let a = Call::new(ends(), 0x1234, 3, 4, 4000, T1);
        let b = Call::new(ends(), 0x1234, 3, 5, 4002, T1);
        let c = Call::new(ends(), 0x1234, 3, 6, 4004, T1);
        assert_eq!(a.to_user, b.to_user);
        assert_ne!(b.to_user, c.to_user);
        assert_ne!(a.from_user, b.from_user);
        assert_eq!(call_index(&a.call_id, &call_id_prefix(0x1234, 3)), Some(4));
        assert_eq!(
            call_index(&a.call_id, &call_id_prefix(0x1234, 4)),
            None,
            "another step's call"
        );
        assert_eq!(call_index("x@y", "lg"), None);
    }

    #[test]
    fn invite_answer_ack_bye() {
        let t0 = Instant::now();
        let mut c = Call::new(ends(), 1, 1, 0, 4000, Duration::from_secs(32));
        let inv = String::from_utf8(c.invite(t0)).unwrap();
        let m = sip::Msg::parse(inv.as_bytes()).unwrap();
        assert!(matches!(
            m.start,
            sip::Start::Request {
                method: "INVITE",
                ..
            }
        ));
        assert!(m.body.contains("m=audio 4000 RTP/AVP 0 101\r\n") && m.body.contains("a=ptime:20"));
        assert_eq!(
            m.header("Content-Length")
                .unwrap()
                .parse::<usize>()
                .unwrap(),
            m.body.len()
        );

        let mut out = Vec::new();
        let r = resp(&String::from_utf8(answer(&c, 180, "")).unwrap());
        let r = sip::Msg::parse(&r).unwrap();
        assert_eq!(c.on_response(&r, 180, t0, &mut out), None);
        assert_eq!(c.phase, Phase::Proceeding);
        assert_eq!(
            c.deadline(),
            Some(t0 + Duration::from_secs(32)),
            "no INVITE retransmission after 1xx"
        );

        let a = answer(&c, 200, SDP);
        let a = sip::Msg::parse(&a).unwrap();
        let ev = c.on_response(&a, 200, t0 + Duration::from_millis(30), &mut out);
        assert_eq!(
            ev,
            Some(CallEvent::Answered("127.0.0.1:20000".parse().unwrap()))
        );
        assert_eq!(c.setup_time(), Some(Duration::from_millis(30)));
        let ack = String::from_utf8(out.remove(0)).unwrap();
        assert!(
            ack.starts_with("ACK sip:sb@127.0.0.1:5060 SIP/2.0\r\n"),
            "ACK goes to the Contact: {ack}"
        );
        assert!(ack.contains(";tag=sb0-t\r\n") && ack.contains("CSeq: 1 ACK\r\n"));
        assert!(
            ack.contains("Route: <sip:p2;lr>\r\nRoute: <sip:p1;lr>\r\n"),
            "route set reversed: {ack}"
        );
        assert!(
            !ack.contains(&format!("branch=z9hG4bK{}i", c.call_id)),
            "a 2xx ACK is a new transaction"
        );

        // A retransmitted 200 gets the same ACK again.
        assert_eq!(c.on_response(&a, 200, t0, &mut out), None);
        assert_eq!(String::from_utf8(out.remove(0)).unwrap(), ack);

        assert!(c.hangup(t0, &mut out));
        let bye = String::from_utf8(out.remove(0)).unwrap();
        assert!(
            bye.starts_with("BYE sip:sb@127.0.0.1:5060 SIP/2.0\r\n")
                && bye.contains("CSeq: 2 BYE\r\n")
        );
        // Timer E: T1, 2T1, 4T1, then capped at T2.
        let mut now = t0;
        for want in [1000, 2000, 4000, 4000] {
            now = c.deadline().unwrap();
            assert_eq!(c.on_timeout(now, &mut out), None);
            assert_eq!(out.pop().unwrap(), bye.as_bytes());
            assert_eq!(c.deadline().unwrap() - now, Duration::from_millis(want));
        }
        let ok = resp(&format!(
            "SIP/2.0 200 OK\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\n\r\n",
            c.call_id
        ));
        let ok = sip::Msg::parse(&ok).unwrap();
        assert_eq!(
            c.on_response(&ok, 200, now, &mut out),
            Some(CallEvent::ByeDone(ByeOutcome::Ok))
        );
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn invite_retransmits_then_times_out_and_a_late_answer_is_hung_up() {
        let t0 = Instant::now();
        let mut c = Call::new(ends(), 1, 1, 1, 4000, Duration::from_secs(4));
        let inv = c.invite(t0);
        let mut out = Vec::new();
        let mut fired = Vec::new();
        let mut now = t0;
        let mut ev = None;
        while ev.is_none() {
            now = c.deadline().unwrap();
            ev = c.on_timeout(now, &mut out);
            fired.push((now - t0).as_millis());
        }
        assert_eq!(
            fired,
            [500, 1500, 3500, 4000],
            "Timer A doubles; give up at the setup timeout"
        );
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|m| *m == inv));
        assert_eq!(ev, Some(CallEvent::Failed(Failure::Timeout)));
        assert_eq!(c.phase, Phase::Abandoned);
        out.clear();
        let a = answer(&c, 200, SDP);
        let a = sip::Msg::parse(&a).unwrap();
        assert_eq!(c.on_response(&a, 200, now, &mut out), None);
        assert!(
            out[0].starts_with(b"ACK ") && out[1].starts_with(b"BYE "),
            "late 2xx: ACK then BYE"
        );
        assert!(c.late_answer);
    }

    #[test]
    fn refusal_is_acked_in_the_invite_transaction() {
        let t0 = Instant::now();
        let mut c = Call::new(ends(), 1, 1, 2, 4000, Duration::from_secs(4));
        c.invite(t0);
        let mut out = Vec::new();
        let r = answer(&c, 486, "");
        let r = sip::Msg::parse(&r).unwrap();
        assert_eq!(
            c.on_response(&r, 486, t0, &mut out),
            Some(CallEvent::Failed(Failure::Status(486)))
        );
        let ack = String::from_utf8(out.remove(0)).unwrap();
        assert!(
            ack.contains(&format!("branch=z9hG4bK{}i;", c.call_id)),
            "same branch as the INVITE: {ack}"
        );
        assert!(ack.starts_with(&format!("ACK sip:{}@127.0.0.1:5060 SIP/2.0", c.to_user)));
        assert_eq!(c.deadline(), None);
        // Retransmitted 486: ACK again, no second event.
        assert_eq!(c.on_response(&r, 486, t0, &mut out), None);
        assert_eq!(String::from_utf8(out.remove(0)).unwrap(), ack);
    }

    #[test]
    fn unusable_answer_fails_and_hangs_up() {
        let t0 = Instant::now();
        let mut c = Call::new(ends(), 1, 1, 3, 4000, Duration::from_secs(4));
        c.invite(t0);
        let mut out = Vec::new();
        let a = answer(
            &c,
            200,
            "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 0 RTP/AVP 0\r\n",
        );
        let a = sip::Msg::parse(&a).unwrap();
        assert_eq!(
            c.on_response(&a, 200, t0, &mut out),
            Some(CallEvent::Failed(Failure::BadAnswer(
                "SDP audio port 0 (stream refused)"
            )))
        );
        assert_eq!(out.len(), 2);
        assert_eq!(c.phase, Phase::Hangup);
    }

    #[test]
    fn server_bye_ends_the_call() {
        let t0 = Instant::now();
        let mut c = Call::new(ends(), 1, 1, 3, 4000, Duration::from_secs(4));
        c.invite(t0);
        let a = answer(&c, 200, SDP);
        let a = sip::Msg::parse(&a).unwrap();
        c.on_response(&a, 200, t0, &mut Vec::new());
        assert_eq!(c.on_server_bye(t0), Some(CallEvent::ServerHangup));
        assert!(!c.hangup(t0, &mut Vec::new()), "nothing to hang up");
    }

    #[test]
    fn metrics_text_from_switchboard() {
        let t = "# HELP switchboard_rtp_packets_total RTP packets by shard and direction.\n# TYPE switchboard_rtp_packets_total counter\nswitchboard_rtp_packets_total{shard=\"0\",direction=\"in\"} 100\nswitchboard_rtp_packets_total{shard=\"0\",direction=\"out\"} 7\nswitchboard_rtp_packets_total{shard=\"1\",direction=\"in\"} 23\nswitchboard_rtp_packets_per_second{shard=\"0\",direction=\"in\"} 50.0\nswitchboard_rtp_lost_total 4\nswitchboard_rtp_lost_totalx 9\nbroken{ 1\n";
        assert_eq!(
            parse_metrics(t),
            ServerCounters {
                rtp_in: Some(123),
                rtp_lost: Some(4)
            }
        );
        assert_eq!(
            parse_metrics("switchboard_calls_active 3\n"),
            ServerCounters::default()
        );
    }

    #[test]
    fn proc_stat_fields_after_the_command_name() {
        let s = "4242 (switch board (1)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 6 0 100 0 0";
        assert_eq!(parse_stat_ticks(s), Some(325));
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
        let me = std::fs::read_to_string(format!("/proc/{}/stat", std::process::id())).unwrap();
        assert!(parse_stat_ticks(&me).is_some());
    }

    #[test]
    fn verdict_rules() {
        let lim = Limits {
            loss_pct: 0.1,
            cpu_pct: 95.0,
            jitter_p99_us: None,
        };
        let good = StepResult {
            calls: 100,
            established: 100,
            expected: 100_000,
            received: 99_950,
            seq_expected: 100_000,
            seq_lost: 100,
            tx: Some((99_950, 50)),
            server_cpu_pct: Some(40.0),
            gen_cpu_pct: 20.0,
            ..StepResult::default()
        };
        assert!(verdict(&good, lim).pass());
        let lossy = StepResult {
            seq_lost: 101,
            ..good.clone()
        };
        assert_eq!(verdict(&lossy, lim).failures, ["rx-loss"]);
        let silent = StepResult {
            received: 0,
            silent_calls: 100,
            seq_expected: 0,
            seq_lost: 0,
            ..good.clone()
        };
        assert_eq!(verdict(&silent, lim).failures, ["rx-rate", "silent:100"]);
        // The server numbered 2% fewer packets than 50 pps: it under-sends.
        let slow = StepResult {
            seq_expected: 98_000,
            seq_lost: 0,
            received: 98_000,
            ..good.clone()
        };
        assert_eq!(verdict(&slow, lim).failures, ["rx-rate"]);
        let jittery = StepResult {
            jitter_p99_us: 12_000,
            ..good.clone()
        };
        assert!(
            verdict(&jittery, lim).pass(),
            "jitter is no criterion by default"
        );
        let strict = Limits {
            jitter_p99_us: Some(10_000),
            ..lim
        };
        assert_eq!(verdict(&jittery, strict).failures, ["jitter"]);
        let refused = StepResult {
            established: 98,
            failures: BTreeMap::from([("503".into(), 2)]),
            ..good.clone()
        };
        assert_eq!(verdict(&refused, lim).failures, ["setup:2"]);
        let hot = StepResult {
            server_cpu_pct: Some(97.0),
            gen_cpu_pct: 95.0,
            ..good
        };
        let v = verdict(&hot, lim);
        assert!(v.pass() && v.server_saturated && v.generator_bound);
    }

    /// The whole generator against the in-process responder: SIP, media threads,
    /// /metrics scrape; loss injected both ways must be reported exactly.
    #[test]
    fn self_test_reports_injected_loss_exactly() {
        let checks = self_test(8, Duration::from_secs(2), 7, 11, None, false).unwrap();
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect();
        assert!(failed.is_empty(), "failed checks: {failed:?}");
    }

    #[test]
    fn self_test_without_drops_reports_zero_loss() {
        let checks = self_test(4, Duration::from_secs(1), 0, 0, None, false).unwrap();
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect();
        assert!(failed.is_empty(), "failed checks: {failed:?}");
    }

    #[test]
    fn silent_server_is_a_clear_error() {
        let dead = UdpSocket::bind("127.0.0.1:0").unwrap();
        let env = Env::new(
            dead.local_addr().unwrap(),
            Ipv4Addr::LOCALHOST,
            None,
            ServerCpu::Unknown,
        )
        .unwrap();
        let e = env.ping(Duration::from_millis(700)).unwrap_err();
        assert!(matches!(e, LoadError::ServerSilent { .. }));
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn options_parsing() {
        let args: Vec<String> = ["--calls", "10", "--cps", "x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut o = Opts::parse(&args).unwrap();
        assert_eq!(o.take::<usize>("calls", 0).unwrap(), 10);
        assert!(o.take::<f64>("cps", 50.0).is_err());
        let o = Opts::parse(&["--bogus".to_string(), "1".to_string()]).unwrap();
        assert!(o.finish().is_err());
        assert!(Opts::parse(&["--calls".to_string()]).is_err());
        assert!(Opts::parse(&["calls".to_string()]).is_err());
    }
}
