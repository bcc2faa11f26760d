//! SDP offer/answer for the SIP leg (RFC 4566 syntax, RFC 3264 negotiation).
//!
//! Where it sits: the SIP call core hands the body of an INVITE (or re-INVITE,
//! UPDATE, or the ACK of a late-offer call) here. [`parse_offer`] turns it into a
//! [`SessionDescription`]; [`answer`] picks the one audio stream and codec we will
//! run and writes the SDP answer that goes into the 200 OK. The resulting
//! [`Negotiated`] tells the media side (RTP socket, G.711 codec, RFC 4733 DTMF)
//! where to send, which payload types to expect and how to packetize. For calls
//! where we make the offer (late offer in the 200 OK, later outbound calls),
//! [`offer`] writes ours and [`parse_answer`] + [`accept_answer`] read the reply.
//!
//! What it owns: SDP text in and out, and the negotiation rules. It is sans-IO and
//! never reads the clock: session ids and versions come from the caller.
//!
//! Parsing is zero-copy: a [`SessionDescription`] borrows the body and keeps
//! `&str` slices of it. It is lenient where real trunks are sloppy (CRLF or bare
//! LF, unknown lines and attributes ignored as RFC 4566 s5 asks, malformed
//! attributes treated as unknown) and strict where a mistake would send media to
//! the wrong place (`v=`, `o=`, `c=`, `m=` lines). Every stored list is bounded
//! ([`MAX_MEDIA`], [`MAX_FORMATS`]) so hostile input cannot make us allocate
//! without bound, and no input panics.
//!
//! We only terminate narrowband G.711 (PCMU/PCMA, RFC 3551 s4.5.14) plus
//! telephone-event (RFC 4733) on plain RTP/AVP or RTP/AVPF; SRTP (RTP/SAVP,
//! DTLS) and video are declined per stream, as RFC 3264 s6 allows.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// More `m=` lines than this is not a phone call. Real offers carry 1-3.
pub const MAX_MEDIA: usize = 16;
/// Most formats (payload types) kept per `m=` line, and most `a=rtpmap`/`a=fmtp`
/// kept per media section. 128 would cover every RTP payload type twice over.
pub const MAX_FORMATS: usize = 64;

/// Packetization we send and ask for unless the peer asks otherwise (RFC 3551 s4.5: 20 ms).
pub const DEFAULT_PTIME_MS: u16 = 20;
/// Payload type we use for telephone-event in our own offers (the de facto choice).
pub const OUR_TELEPHONE_EVENT_PT: u8 = 101;
/// RFC 4733 s2.4.1: default events when the peer's fmtp is absent — DTMF 0-9,*,#,A-D and flash.
const DEFAULT_EVENTS: &str = "0-16";

/// The audio codecs we terminate. Both are 8 kHz mono with static payload types
/// (RFC 3551 s6), but an offer may still map them to a dynamic type with `a=rtpmap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 mu-law, static payload type 0.
    Pcmu,
    /// G.711 A-law, static payload type 8.
    Pcma,
}

impl Codec {
    /// Every codec we support, in our default preference order.
    pub const ALL: [Codec; 2] = [Codec::Pcmu, Codec::Pcma];

    /// The static payload type from RFC 3551 table 4.
    pub const fn static_payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    /// The encoding name as written in `a=rtpmap` (RFC 3551 s6).
    pub const fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    /// RTP clock rate; both G.711 variants run at 8 kHz.
    pub const fn clock_rate(self) -> u32 {
        8000
    }

    /// Parse an encoding name (case-insensitive, RFC 4855 s3: media subtype
    /// names are case-insensitive). Used for `a=rtpmap` and for trunk config.
    pub fn from_name(name: &str) -> Option<Codec> {
        Codec::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
    }

    /// The codec a static payload type stands for when no `a=rtpmap` says otherwise.
    fn from_static(pt: u8) -> Option<Codec> {
        Codec::ALL
            .into_iter()
            .find(|c| c.static_payload_type() == pt)
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Codec {
    type Err = UnknownCodec;
    fn from_str(s: &str) -> Result<Codec, UnknownCodec> {
        Codec::from_name(s).ok_or(UnknownCodec)
    }
}

/// A codec name in configuration that we do not support.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown codec (supported: PCMU, PCMA)")]
pub struct UnknownCodec;

/// A trunk's codec preference, most preferred first. When answering we pick the
/// first of these that the offer carries, whatever the offer's own order: the
/// trunk operator knows which law their network speaks (A-law in most of the
/// world outside North America and Japan).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodecPrefs(Vec<Codec>);

impl CodecPrefs {
    /// Duplicates are dropped (first one wins). An empty list means "no
    /// preference" and becomes the default, so a trunk can never be configured
    /// into refusing every call by accident.
    pub fn new(codecs: impl IntoIterator<Item = Codec>) -> CodecPrefs {
        let mut v: Vec<Codec> = Vec::with_capacity(Codec::ALL.len());
        for c in codecs {
            if !v.contains(&c) {
                v.push(c);
            }
        }
        if v.is_empty() {
            return CodecPrefs::default();
        }
        CodecPrefs(v)
    }

    /// Parse configuration names such as `["PCMA", "PCMU"]`.
    pub fn from_names<'a>(
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<CodecPrefs, UnknownCodec> {
        let mut v = Vec::new();
        for n in names {
            v.push(n.trim().parse::<Codec>()?);
        }
        Ok(CodecPrefs::new(v))
    }

    pub fn as_slice(&self) -> &[Codec] {
        &self.0
    }
}

impl Default for CodecPrefs {
    fn default() -> CodecPrefs {
        CodecPrefs(Codec::ALL.to_vec())
    }
}

/// Media direction attribute (RFC 3264 s5.1, s6.1). Absent means sendrecv.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The direction to answer with (RFC 3264 s6.1): the mirror image of the offer's.
    pub const fn reverse(self) -> Direction {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }

    /// The attribute name, without `a=`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// True when we may send media in this direction (ours).
    pub const fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// True when we expect to receive media in this direction (ours).
    pub const fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    fn from_attr(name: &str) -> Option<Direction> {
        match name {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
}

/// Why an SDP body could not be read. The `Display` text is short ASCII, fit for
/// a SIP reason phrase ("400 Malformed SDP: ..."). Line numbers count from 1.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("empty body")]
    Empty,
    #[error("first line is not v=0")]
    MissingVersion,
    #[error("line {line}: not of the form <type>=<value>")]
    Syntax { line: usize },
    #[error("line {line}: text of a required line is not UTF-8")]
    NotUtf8 { line: usize },
    #[error("line {line}: malformed o= line")]
    BadOrigin { line: usize },
    #[error("line {line}: malformed c= line")]
    BadConnection { line: usize },
    #[error("line {line}: malformed m= line")]
    BadMedia { line: usize },
    #[error("more than {MAX_MEDIA} m= lines")]
    TooManyMedia,
    #[error("line {line}: more than {MAX_FORMATS} formats or rtpmap/fmtp attributes")]
    TooManyFormats { line: usize },
    #[error("m= line {media} has no c= line")]
    NoConnection { media: usize },
}

/// Why no media session can be set up from an otherwise valid description.
/// Maps to SIP 488 Not Acceptable Here (RFC 3261 s13.3.1.1, RFC 3264 s6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// No active RTP/AVP(F) audio stream carries a codec we and the trunk accept.
    #[error("no common codec on an RTP/AVP audio stream")]
    NoCommonCodec,
}

/// The `o=` line (RFC 4566 s5.2). Session id and version are kept as text: they
/// are "numeric strings" that some stacks make longer than 64 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin<'a> {
    pub username: &'a str,
    pub session_id: &'a str,
    pub session_version: &'a str,
    pub address: &'a str,
}

/// One `a=rtpmap:<pt> <encoding>/<clock>[/<channels>]` (RFC 4566 s6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpMap<'a> {
    pub payload_type: u8,
    pub encoding: &'a str,
    pub clock_rate: u32,
    pub channels: Option<u8>,
}

/// One media section: the `m=` line and what follows it up to the next `m=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Media<'a> {
    /// `audio`, `video`, `application`, ...
    pub kind: &'a str,
    pub port: u16,
    /// `RTP/AVP`, `RTP/AVPF`, `RTP/SAVP`, `UDP/TLS/RTP/SAVPF`, ...
    pub proto: &'a str,
    /// The format list as written; payload type numbers for RTP profiles.
    pub formats: Vec<&'a str>,
    pub rtpmaps: Vec<RtpMap<'a>>,
    /// `a=fmtp:<pt> <params>`.
    pub fmtps: Vec<(u8, &'a str)>,
    /// Media-level `c=`; `None` means the session-level one applies.
    pub connection: Option<IpAddr>,
    pub direction: Option<Direction>,
    pub ptime: Option<u16>,
    pub maxptime: Option<u16>,
    /// `a=rtcp:<port> [IN IP4|IP6 <addr>]` (RFC 3605), for peers behind NAT or
    /// with RTCP not on RTP port + 1.
    pub rtcp: Option<(u16, Option<IpAddr>)>,
    /// `a=rtcp-mux` (RFC 5761) was offered. We do not accept it (trunks do not
    /// use it); the offerer must then use separate ports (RFC 5761 s5.1.1).
    pub rtcp_mux: bool,
}

impl Media<'_> {
    /// RTP profiles we can run without SRTP: RFC 3551 AVP and RFC 4585 AVPF (an
    /// AVPF receiver that gets no feedback behaves as AVP, RFC 4585 s3.4).
    /// Proto names are compared case-insensitively; some stacks write `rtp/avp`.
    pub fn is_plain_rtp(&self) -> bool {
        self.proto.eq_ignore_ascii_case("RTP/AVP") || self.proto.eq_ignore_ascii_case("RTP/AVPF")
    }

    pub fn is_audio(&self) -> bool {
        self.kind.eq_ignore_ascii_case("audio")
    }

    /// The `a=rtpmap` for a payload type, if any.
    pub fn rtpmap(&self, pt: u8) -> Option<&RtpMap<'_>> {
        self.rtpmaps.iter().find(|m| m.payload_type == pt)
    }

    /// The `a=fmtp` parameters for a payload type, if any.
    pub fn fmtp(&self, pt: u8) -> Option<&str> {
        self.fmtps.iter().find(|(p, _)| *p == pt).map(|(_, v)| *v)
    }

    /// Payload type numbers of the format list, in offer order; non-numeric
    /// formats (which only non-RTP protos use) are skipped.
    pub fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats
            .iter()
            .filter_map(|f| f.parse::<u8>().ok())
            .filter(|pt| *pt < 128)
    }

    /// Which of our codecs a payload type of this section stands for. An
    /// `a=rtpmap` wins over the static table (RFC 3264 s5.1 lets an offer remap
    /// static types; some do), and must say 8000 Hz mono.
    pub fn codec_of(&self, pt: u8) -> Option<Codec> {
        match self.rtpmap(pt) {
            Some(m) => {
                let c = Codec::from_name(m.encoding)?;
                (m.clock_rate == c.clock_rate() && m.channels.unwrap_or(1) == 1).then_some(c)
            }
            None => Codec::from_static(pt),
        }
    }

    /// The payload type of `telephone-event/8000` (RFC 4733 s7.1.1), if offered.
    pub fn telephone_event(&self) -> Option<u8> {
        self.payload_types().find(|pt| {
            self.rtpmap(*pt).is_some_and(|m| {
                m.encoding.eq_ignore_ascii_case("telephone-event") && m.clock_rate == 8000
            })
        })
    }
}

/// A parsed SDP body (offer or answer). Borrows the body it was parsed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionDescription<'a> {
    /// `None` only if the peer left out the (mandatory) `o=` line; we tolerate that.
    pub origin: Option<Origin<'a>>,
    pub session_name: &'a str,
    /// Session-level `c=`.
    pub connection: Option<IpAddr>,
    /// Session-level direction attribute, the default for every media section.
    pub direction: Option<Direction>,
    /// Session-level `a=ptime`: not in RFC 4566's list, but some gateways put it there.
    pub ptime: Option<u16>,
    pub media: Vec<Media<'a>>,
}

/// What we parse an offer into. Same type as an answer; the name says the role.
pub type Offer<'a> = SessionDescription<'a>;

impl SessionDescription<'_> {
    /// The address a media section's RTP goes to: media-level `c=` first, then
    /// session level (RFC 4566 s5.7). `0.0.0.0` is the RFC 2543 hold idiom
    /// (RFC 3264 s8.4) and is returned as is.
    pub fn connection_of(&self, media: &Media<'_>) -> Option<IpAddr> {
        media.connection.or(self.connection)
    }

    /// Effective direction of a media section: its own attribute, else the
    /// session's, else sendrecv (RFC 3264 s5.1).
    pub fn direction_of(&self, media: &Media<'_>) -> Direction {
        media.direction.or(self.direction).unwrap_or_default()
    }
}

/// Parse an SDP offer. See the module docs for what is lenient and what is strict.
pub fn parse_offer(body: &[u8]) -> Result<SessionDescription<'_>, SdpError> {
    parse(body)
}

/// Parse an SDP answer to one of our offers: the same grammar as an offer.
pub fn parse_answer(body: &[u8]) -> Result<SessionDescription<'_>, SdpError> {
    parse(body)
}

fn parse(body: &[u8]) -> Result<SessionDescription<'_>, SdpError> {
    let mut sd = SessionDescription {
        origin: None,
        session_name: "",
        connection: None,
        direction: None,
        ptime: None,
        media: Vec::new(),
    };
    let mut seen_version = false;
    for (idx, raw) in body.split(|b| *b == b'\n').enumerate() {
        let line_no = idx + 1;
        // RFC 4566 s5 says CRLF, but also that parsers should accept bare LF.
        // Trailing blanks are a common sloppiness and never significant here.
        let line = trim_end(raw);
        if line.is_empty() {
            continue;
        }
        if line.len() < 2 || line[1] != b'=' || !line[0].is_ascii_alphabetic() {
            return Err(SdpError::Syntax { line: line_no });
        }
        let kind = line[0];
        let value = &line[2..];
        if !seen_version {
            // RFC 4566 s5.1: "v=0" comes first. This is also what tells SDP from garbage.
            if kind != b'v' || trim(value) != b"0" {
                return Err(SdpError::MissingVersion);
            }
            seen_version = true;
            continue;
        }
        match kind {
            b'o' => {
                let v = utf8(value, line_no)?;
                sd.origin = Some(parse_origin(v).ok_or(SdpError::BadOrigin { line: line_no })?);
            }
            b's' => {
                // Free text, possibly in another charset (RFC 4566 s5.3): not fatal.
                sd.session_name = std::str::from_utf8(value).unwrap_or("");
            }
            b'c' => {
                let v = utf8(value, line_no)?;
                let addr = parse_connection(v).ok_or(SdpError::BadConnection { line: line_no })?;
                match sd.media.last_mut() {
                    Some(m) => m.connection = Some(addr),
                    None => sd.connection = Some(addr),
                }
            }
            b'm' => {
                if sd.media.len() == MAX_MEDIA {
                    return Err(SdpError::TooManyMedia);
                }
                let v = utf8(value, line_no)?;
                sd.media.push(parse_media_line(v, line_no)?);
            }
            b'a' => {
                // A non-UTF-8 attribute cannot be one we understand: ignore it.
                if let Ok(v) = std::str::from_utf8(value) {
                    parse_attribute(&mut sd, v, line_no)?;
                }
            }
            // v= again, i=, u=, e=, p=, b=, t=, r=, z=, k= and unknown types: nothing
            // we need (RFC 4566 s5: unknown types are ignored).
            _ => {}
        }
    }
    if !seen_version {
        return Err(SdpError::Empty);
    }
    // RFC 4566 s5.7: every media section needs an address, from either level. A
    // disabled stream (port 0) sends nothing, so it may do without.
    for (i, m) in sd.media.iter().enumerate() {
        if m.port != 0 && sd.connection_of(m).is_none() {
            return Err(SdpError::NoConnection { media: i + 1 });
        }
    }
    Ok(sd)
}

fn utf8(value: &[u8], line: usize) -> Result<&str, SdpError> {
    std::str::from_utf8(value).map_err(|_| SdpError::NotUtf8 { line })
}

fn trim_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., last] = s {
        if matches!(last, b'\r' | b' ' | b'\t') {
            s = rest;
        } else {
            break;
        }
    }
    s
}

fn trim(s: &[u8]) -> &[u8] {
    let s = trim_end(s);
    let start = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(s.len());
    &s[start..]
}

/// Split on runs of spaces (RFC 4566 says single spaces; tolerating more is free).
fn fields(s: &str) -> impl Iterator<Item = &str> {
    s.split([' ', '\t']).filter(|f| !f.is_empty())
}

/// `o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>`
fn parse_origin(v: &str) -> Option<Origin<'_>> {
    let mut f = fields(v);
    let username = f.next()?;
    let session_id = f.next()?;
    let session_version = f.next()?;
    let _nettype = f.next()?;
    let _addrtype = f.next()?;
    let address = f.next()?;
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !numeric(session_id) || !numeric(session_version) {
        return None;
    }
    Some(Origin {
        username,
        session_id,
        session_version,
        address,
    })
}

/// `c=IN IP4 <addr>[/<ttl>[/<n>]]` or `c=IN IP6 <addr>[/<n>]` (RFC 4566 s5.7).
/// Only IP literals: a host name here would need a DNS lookup we will not do on the
/// call path, and trunks do not send them.
fn parse_connection(v: &str) -> Option<IpAddr> {
    let mut f = fields(v);
    let nettype = f.next()?;
    let addrtype = f.next()?;
    let addr = f.next()?;
    if !nettype.eq_ignore_ascii_case("IN") {
        return None;
    }
    // Multicast suffixes: TTL and/or address count.
    let addr = addr.split('/').next()?;
    let ip: IpAddr = addr.parse().ok()?;
    let family_ok = if addrtype.eq_ignore_ascii_case("IP4") {
        ip.is_ipv4()
    } else if addrtype.eq_ignore_ascii_case("IP6") {
        ip.is_ipv6()
    } else {
        false
    };
    family_ok.then_some(ip)
}

/// `m=<media> <port>[/<number of ports>] <proto> <fmt> ...` (RFC 4566 s5.14).
fn parse_media_line(v: &str, line: usize) -> Result<Media<'_>, SdpError> {
    let bad = SdpError::BadMedia { line };
    let mut f = fields(v);
    let kind = f.next().ok_or(bad.clone())?;
    let port_field = f.next().ok_or(bad.clone())?;
    let proto = f.next().ok_or(bad.clone())?;
    let port_text = port_field.split('/').next().unwrap_or(port_field);
    let port: u16 = port_text.parse().map_err(|_| bad.clone())?;
    let mut formats = Vec::new();
    for fmt in f {
        if formats.len() == MAX_FORMATS {
            return Err(SdpError::TooManyFormats { line });
        }
        formats.push(fmt);
    }
    // RFC 4566 grammar wants at least one format, but a declined stream written
    // as `m=video 0 RTP/AVP` does occur; we answer it with port 0 anyway.
    if formats.is_empty() && port != 0 {
        return Err(bad);
    }
    Ok(Media {
        kind,
        port,
        proto,
        formats,
        rtpmaps: Vec::new(),
        fmtps: Vec::new(),
        connection: None,
        direction: None,
        ptime: None,
        maxptime: None,
        rtcp: None,
        rtcp_mux: false,
    })
}

/// One `a=` line, at session level (before any `m=`) or for the last media section.
/// Malformed values of attributes we know are ignored like unknown attributes
/// (RFC 4566 s5.13): a broken `a=rtpmap` then just makes its payload type unusable.
fn parse_attribute<'a>(
    sd: &mut SessionDescription<'a>,
    v: &'a str,
    line: usize,
) -> Result<(), SdpError> {
    let (name, value) = match v.split_once(':') {
        Some((n, val)) => (n.trim(), Some(val.trim())),
        None => (v.trim(), None),
    };
    if name == "rtcp-mux" {
        if let Some(m) = sd.media.last_mut() {
            m.rtcp_mux = true;
        }
        return Ok(());
    }
    if let Some(dir) = Direction::from_attr(name) {
        match sd.media.last_mut() {
            Some(m) => m.direction = Some(dir),
            None => sd.direction = Some(dir),
        }
        return Ok(());
    }
    let Some(value) = value else { return Ok(()) };
    match name {
        "ptime" | "maxptime" => {
            let Some(ms) = parse_ms(value) else {
                return Ok(());
            };
            match (sd.media.last_mut(), name) {
                (Some(m), "ptime") => m.ptime = Some(ms),
                (Some(m), _) => m.maxptime = Some(ms),
                (None, "ptime") => sd.ptime = Some(ms),
                (None, _) => {}
            }
        }
        "rtcp" => {
            let Some(m) = sd.media.last_mut() else {
                return Ok(());
            };
            let (port, addr) = match value.split_once([' ', '\t']) {
                Some((port, conn)) => match parse_connection(conn) {
                    Some(ip) => (port, Some(ip)),
                    None => return Ok(()),
                },
                None => (value, None),
            };
            if let Ok(port) = port.parse::<u16>() {
                m.rtcp = Some((port, addr));
            }
        }
        "rtpmap" => {
            let Some(m) = sd.media.last_mut() else {
                return Ok(());
            };
            let Some(map) = parse_rtpmap(value) else {
                return Ok(());
            };
            if m.rtpmaps.iter().any(|r| r.payload_type == map.payload_type) {
                // Duplicate: the first one stands.
                return Ok(());
            }
            if m.rtpmaps.len() == MAX_FORMATS {
                return Err(SdpError::TooManyFormats { line });
            }
            m.rtpmaps.push(map);
        }
        "fmtp" => {
            let Some(m) = sd.media.last_mut() else {
                return Ok(());
            };
            let Some((pt, params)) = value.split_once([' ', '\t']) else {
                return Ok(());
            };
            let Ok(pt) = pt.parse::<u8>() else {
                return Ok(());
            };
            if m.fmtps.iter().any(|(p, _)| *p == pt) {
                return Ok(());
            }
            if m.fmtps.len() == MAX_FORMATS {
                return Err(SdpError::TooManyFormats { line });
            }
            m.fmtps.push((pt, params.trim()));
        }
        _ => {}
    }
    Ok(())
}

/// `<pt> <encoding>/<clock>[/<channels>]`
fn parse_rtpmap(v: &str) -> Option<RtpMap<'_>> {
    let (pt, rest) = v.split_once([' ', '\t'])?;
    let payload_type: u8 = pt.parse().ok()?;
    if payload_type > 127 {
        return None;
    }
    let mut parts = rest.trim().split('/');
    let encoding = parts.next()?.trim();
    let clock_rate: u32 = parts.next()?.trim().parse().ok()?;
    let channels = match parts.next() {
        Some(c) => Some(c.trim().parse::<u8>().ok()?),
        None => None,
    };
    if encoding.is_empty() || parts.next().is_some() {
        return None;
    }
    Some(RtpMap {
        payload_type,
        encoding,
        clock_rate,
        channels,
    })
}

/// Milliseconds for ptime/maxptime. RFC 4566 allows a fraction ("20.0" is seen
/// in the wild); we keep the integer part. Zero is meaningless and dropped.
fn parse_ms(v: &str) -> Option<u16> {
    let int = v.split('.').next()?;
    let ms: u16 = int.trim().parse().ok()?;
    (ms > 0).then_some(ms)
}

/// What we settled on for one call's audio, from an offer we answered or an
/// answer to our offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub codec: Codec,
    /// The payload type number the offer used for `codec`; we send and receive with it.
    pub payload_type: u8,
    /// The offer's payload type for telephone-event/8000, when it offered one.
    pub telephone_event: Option<u8>,
    /// Where to send RTP: the chosen stream's address and port. The address is
    /// `0.0.0.0` (unspecified) when the peer put the call on hold the RFC 2543
    /// way (RFC 3264 s8.4): send nothing then.
    pub remote_rtp: SocketAddr,
    /// Where to send RTCP: `a=rtcp` if given (RFC 3605), else RTP port + 1
    /// on the same address (RFC 3550 s11).
    pub remote_rtcp: SocketAddr,
    /// Packetization to send with: the peer's `a=ptime` when it is one we can
    /// produce, else 20 ms.
    pub ptime_ms: u16,
    /// Our direction (already reversed from the peer's).
    pub direction: Direction,
    /// Index of the chosen stream among the description's `m=` lines.
    pub media_index: usize,
    /// The full SDP answer text (CRLF line ends). Empty from [`accept_answer`],
    /// where the answer came from the peer.
    pub answer: String,
}

impl Negotiated {
    /// True when we should not send media now: the peer holds the call
    /// (sendonly/inactive from their side, or the `0.0.0.0` idiom).
    pub fn on_hold(&self) -> bool {
        !self.direction.sends() || self.remote_rtp.ip().is_unspecified()
    }
}

/// What [`answer`] needs besides the offer.
#[derive(Clone, Copy, Debug)]
pub struct AnswerParams<'p> {
    /// Address we receive RTP on (goes into `o=` and `c=`).
    pub local_ip: IpAddr,
    pub rtp_port: u16,
    /// `o=` session id and version (RFC 4566 s5.2); the version must grow with
    /// every changed description we send in the same dialog (RFC 3264 s8).
    pub session_id: u64,
    pub session_version: u64,
    pub prefs: &'p CodecPrefs,
    /// Our User-Agent; its first token becomes the `o=` username.
    pub user_agent: &'p str,
}

/// The stream and codec chosen from a description, before any text is written.
struct Choice {
    index: usize,
    codec: Codec,
    payload_type: u8,
    telephone_event: Option<u8>,
    remote_rtp: SocketAddr,
    remote_rtcp: SocketAddr,
    ptime_ms: u16,
    peer_direction: Direction,
}

/// Pick the first active plain-RTP audio stream with a codec we take, choosing the
/// codec with `pick` (which sees the stream).
fn choose(
    sd: &SessionDescription<'_>,
    pick: impl Fn(&Media<'_>) -> Option<(Codec, u8)>,
) -> Option<Choice> {
    sd.media.iter().enumerate().find_map(|(index, m)| {
        if !m.is_audio() || !m.is_plain_rtp() || m.port == 0 {
            return None;
        }
        let (codec, payload_type) = pick(m)?;
        let ip = sd
            .connection_of(m)
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let remote_rtcp = match m.rtcp {
            Some((port, addr)) => SocketAddr::new(addr.unwrap_or(ip), port),
            None => SocketAddr::new(ip, m.port.saturating_add(1)),
        };
        Some(Choice {
            index,
            codec,
            payload_type,
            telephone_event: m.telephone_event(),
            remote_rtp: SocketAddr::new(ip, m.port),
            remote_rtcp,
            ptime_ms: ptime_for(m, sd.ptime),
            peer_direction: sd.direction_of(m),
        })
    })
}

/// RFC 4566 s6: ptime is what the peer wants to receive. We honour 10-60 ms in
/// 10 ms steps (what a G.711 packetizer fed 10 ms frames can make), capped by
/// maxptime; anything else gets the 20 ms default that every trunk accepts.
fn ptime_for(m: &Media<'_>, session_ptime: Option<u16>) -> u16 {
    let ok = |ms: u16| (10..=60).contains(&ms) && ms.is_multiple_of(10);
    let mut ptime = m
        .ptime
        .or(session_ptime)
        .filter(|ms| ok(*ms))
        .unwrap_or(DEFAULT_PTIME_MS);
    if let Some(max) = m.maxptime {
        if max < ptime && max >= 10 {
            ptime = max - max % 10;
        }
    }
    ptime
}

/// Answer an offer (RFC 3264 s6). The answer has one `m=` line per offered one, in
/// order. The first active RTP/AVP(F) audio stream with a codec from `prefs`
/// is accepted with exactly one codec — the trunk's most preferred one that the
/// offer carries, under the offer's payload type number — plus telephone-event if
/// offered. Every other stream is declined with port 0.
pub fn answer(
    offer: &SessionDescription<'_>,
    p: &AnswerParams<'_>,
) -> Result<Negotiated, NegotiationError> {
    let choice = choose(offer, |m| {
        p.prefs.as_slice().iter().find_map(|want| {
            m.payload_types()
                .find(|pt| m.codec_of(*pt) == Some(*want))
                .map(|pt| (*want, pt))
        })
    })
    .ok_or(NegotiationError::NoCommonCodec)?;
    let direction = choice.peer_direction.reverse();

    let mut sdp = String::with_capacity(320);
    write_session(
        &mut sdp,
        p.local_ip,
        p.session_id,
        p.session_version,
        p.user_agent,
    );
    for (i, m) in offer.media.iter().enumerate() {
        if i == choice.index {
            let te = choice
                .telephone_event
                .map(|pt| (pt, events_or_default(m.fmtp(pt))));
            let codecs = [(choice.codec, choice.payload_type)];
            write_audio(&mut sdp, p.rtp_port, m.proto, &codecs, te, direction);
        } else {
            // RFC 3264 s6: a declined stream keeps its media type, proto and
            // (at least one of) its formats, with port zero.
            let _ = write!(sdp, "m={} 0 {}", m.kind, m.proto);
            if m.formats.is_empty() {
                sdp.push_str(" 0");
            }
            for f in &m.formats {
                sdp.push(' ');
                sdp.push_str(f);
            }
            sdp.push_str("\r\n");
        }
    }
    Ok(Negotiated {
        codec: choice.codec,
        payload_type: choice.payload_type,
        telephone_event: choice.telephone_event,
        remote_rtp: choice.remote_rtp,
        remote_rtcp: choice.remote_rtcp,
        ptime_ms: choice.ptime_ms,
        direction,
        media_index: choice.index,
        answer: sdp,
    })
}

/// Our own SDP offer (RFC 3264 s5): one sendrecv audio stream with every codec we
/// support in the trunk's order (static payload types), telephone-event on 101
/// with the RFC 4733 default events, 20 ms packets. Used for the 200 OK of a
/// late-offer INVITE and for outbound calls.
pub fn offer(
    local_ip: IpAddr,
    rtp_port: u16,
    session_id: u64,
    prefs: &CodecPrefs,
    user_agent: &str,
) -> String {
    let mut sdp = String::with_capacity(320);
    write_session(&mut sdp, local_ip, session_id, session_id, user_agent);
    let pts: Vec<(Codec, u8)> = prefs
        .as_slice()
        .iter()
        .map(|c| (*c, c.static_payload_type()))
        .collect();
    write_audio(
        &mut sdp,
        rtp_port,
        "RTP/AVP",
        &pts,
        Some((OUR_TELEPHONE_EVENT_PT, DEFAULT_EVENTS)),
        Direction::SendRecv,
    );
    sdp
}

/// Read the answer to one of our [`offer`]s (RFC 3264 s7). The answerer lists the
/// codecs it accepts, most preferred first, and will send the first; we take the
/// first one we support, whatever our preference was. `answer` of the result is
/// empty: there is nothing for us to send.
pub fn accept_answer(
    answer: &SessionDescription<'_>,
    prefs: &CodecPrefs,
) -> Result<Negotiated, NegotiationError> {
    let choice = choose(answer, |m| {
        m.payload_types().find_map(|pt| {
            m.codec_of(pt)
                .filter(|c| prefs.as_slice().contains(c))
                .map(|c| (c, pt))
        })
    })
    .ok_or(NegotiationError::NoCommonCodec)?;
    Ok(Negotiated {
        codec: choice.codec,
        payload_type: choice.payload_type,
        telephone_event: choice.telephone_event,
        remote_rtp: choice.remote_rtp,
        remote_rtcp: choice.remote_rtcp,
        ptime_ms: choice.ptime_ms,
        direction: choice.peer_direction.reverse(),
        media_index: choice.index,
        answer: String::new(),
    })
}

/// The peer's telephone-event fmtp if it is a plain event list ("0-15", "0-16,32"),
/// else the RFC 4733 default. Echoing arbitrary peer text into our SDP is not
/// worth the risk; a valid list is all that may appear there.
fn events_or_default(fmtp: Option<&str>) -> &str {
    match fmtp {
        Some(v)
            if !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_digit() || b == b'-' || b == b',') =>
        {
            v
        }
        _ => DEFAULT_EVENTS,
    }
}

/// `o=` username from a User-Agent: its first product token without version
/// ("switchboard/0.1" -> "switchboard"), limited to characters safe in SDP.
fn origin_username(user_agent: &str) -> &str {
    let product = user_agent.split([' ', '/', '\t']).next().unwrap_or("");
    let safe = product
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if product.is_empty() || !safe || product.len() > 64 {
        "-"
    } else {
        product
    }
}

fn addr_type(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

/// `v=` through `t=` (RFC 4566 s5 order: v, o, s, c, t).
fn write_session(sdp: &mut String, ip: IpAddr, session_id: u64, version: u64, user_agent: &str) {
    let at = addr_type(ip);
    // Writing into a String cannot fail.
    let _ = write!(
        sdp,
        "v=0\r\no={} {session_id} {version} IN {at} {ip}\r\ns=switchboard\r\nc=IN {at} {ip}\r\nt=0 0\r\n",
        origin_username(user_agent)
    );
}

/// One active audio section.
fn write_audio(
    sdp: &mut String,
    port: u16,
    proto: &str,
    codecs: &[(Codec, u8)],
    telephone_event: Option<(u8, &str)>,
    direction: Direction,
) {
    let _ = write!(sdp, "m=audio {port} {proto}");
    for (_, pt) in codecs {
        let _ = write!(sdp, " {pt}");
    }
    if let Some((pt, _)) = telephone_event {
        let _ = write!(sdp, " {pt}");
    }
    sdp.push_str("\r\n");
    for (codec, pt) in codecs {
        let _ = write!(
            sdp,
            "a=rtpmap:{pt} {}/{}\r\n",
            codec.name(),
            codec.clock_rate()
        );
    }
    if let Some((pt, events)) = telephone_event {
        let _ = write!(
            sdp,
            "a=rtpmap:{pt} telephone-event/8000\r\na=fmtp:{pt} {events}\r\n"
        );
    }
    let _ = write!(
        sdp,
        "a=ptime:{DEFAULT_PTIME_MS}\r\na={}\r\n",
        direction.as_str()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    const SIPP: &str = include_str!("../tests/data/sdp/sipp_uac.sdp");
    const TWILIO: &str = include_str!("../tests/data/sdp/twilio.sdp");
    const TELNYX: &str = include_str!("../tests/data/sdp/telnyx.sdp");
    const ASTERISK: &str = include_str!("../tests/data/sdp/asterisk.sdp");
    const FREESWITCH: &str = include_str!("../tests/data/sdp/freeswitch.sdp");
    const LINPHONE_VIDEO: &str = include_str!("../tests/data/sdp/linphone_video.sdp");
    const VIDEO_FIRST: &str = include_str!("../tests/data/sdp/video_first.sdp");
    const SAVP_ONLY: &str = include_str!("../tests/data/sdp/savp_only.sdp");
    const SAVP_THEN_AVP: &str = include_str!("../tests/data/sdp/savp_then_avp.sdp");
    const WEBRTC: &str = include_str!("../tests/data/sdp/webrtc.sdp");
    const G729_ONLY: &str = include_str!("../tests/data/sdp/g729_only.sdp");
    const IPV6: &str = include_str!("../tests/data/sdp/ipv6.sdp");
    const DYNAMIC_PCMU: &str = include_str!("../tests/data/sdp/dynamic_pcmu.sdp");
    const HOLD: &str = include_str!("../tests/data/sdp/hold_rfc2543.sdp");

    const ALL: &[&str] = &[
        SIPP,
        TWILIO,
        TELNYX,
        ASTERISK,
        FREESWITCH,
        LINPHONE_VIDEO,
        VIDEO_FIRST,
        SAVP_ONLY,
        SAVP_THEN_AVP,
        WEBRTC,
        G729_ONLY,
        IPV6,
        DYNAMIC_PCMU,
        HOLD,
    ];

    fn params(prefs: &CodecPrefs) -> AnswerParams<'_> {
        AnswerParams {
            local_ip: "10.0.0.5".parse().unwrap(),
            rtp_port: 20000,
            session_id: 42,
            session_version: 43,
            prefs,
            user_agent: "switchboard/0.1.0",
        }
    }

    fn negotiate(sdp: &str, prefs: &CodecPrefs) -> Result<Negotiated, NegotiationError> {
        let offer = parse_offer(sdp.as_bytes()).expect("test offer parses");
        answer(&offer, &params(prefs))
    }

    fn pcma_first() -> CodecPrefs {
        CodecPrefs::new([Codec::Pcma, Codec::Pcmu])
    }

    #[test]
    fn golden_sipp_answer() {
        let n = negotiate(SIPP, &CodecPrefs::default()).unwrap();
        assert_eq!(
            n.answer,
            "v=0\r\n\
             o=switchboard 42 43 IN IP4 10.0.0.5\r\n\
             s=switchboard\r\n\
             c=IN IP4 10.0.0.5\r\n\
             t=0 0\r\n\
             m=audio 20000 RTP/AVP 0\r\n\
             a=rtpmap:0 PCMU/8000\r\n\
             a=ptime:20\r\n\
             a=sendrecv\r\n"
        );
        assert_eq!(n.codec, Codec::Pcmu);
        assert_eq!(n.payload_type, 0);
        assert_eq!(n.telephone_event, None);
        assert_eq!(n.remote_rtp, "127.0.0.1:6000".parse().unwrap());
        assert_eq!(n.ptime_ms, 20);
        assert_eq!(n.direction, Direction::SendRecv);
        assert!(!n.on_hold());
    }

    #[test]
    fn golden_twilio_answer_with_telephone_event() {
        let n = negotiate(TWILIO, &CodecPrefs::default()).unwrap();
        assert_eq!(
            n.answer,
            "v=0\r\n\
             o=switchboard 42 43 IN IP4 10.0.0.5\r\n\
             s=switchboard\r\n\
             c=IN IP4 10.0.0.5\r\n\
             t=0 0\r\n\
             m=audio 20000 RTP/AVP 0 101\r\n\
             a=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-16\r\n\
             a=ptime:20\r\n\
             a=sendrecv\r\n"
        );
        assert_eq!(n.telephone_event, Some(101));
        assert_eq!(n.remote_rtp, "192.0.2.11:13254".parse().unwrap());
        assert_eq!(n.remote_rtcp, "192.0.2.11:13255".parse().unwrap());
    }

    #[test]
    fn rtcp_address() {
        // Telnyx-style a=rtcp with port only; FreeSWITCH with an address (RFC 3605).
        let n = negotiate(TELNYX, &CodecPrefs::default()).unwrap();
        assert_eq!(n.remote_rtcp, "192.0.2.10:31235".parse().unwrap());
        let sdp = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:5001 IN IP4 198.51.100.1\r\n";
        let n = negotiate(sdp, &CodecPrefs::default()).unwrap();
        assert_eq!(n.remote_rtcp, "198.51.100.1:5001".parse().unwrap());
        // Malformed a=rtcp is ignored: RTP + 1.
        let sdp = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:x\r\na=rtcp:5001 IN IP9 1\r\n";
        let n = negotiate(sdp, &CodecPrefs::default()).unwrap();
        assert_eq!(n.remote_rtcp, "192.0.2.1:4001".parse().unwrap());
        // rtcp-mux is recorded, not accepted.
        let o = parse_offer(WEBRTC.as_bytes()).unwrap();
        assert!(o.media[0].rtcp_mux);
        assert_eq!(
            o.media[0].rtcp,
            Some((9, Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED))))
        );
    }

    #[test]
    fn trunk_preference_beats_offer_order() {
        // Telnyx offers PCMU first; a PCMA-first trunk gets PCMA.
        let n = negotiate(TELNYX, &pcma_first()).unwrap();
        assert_eq!((n.codec, n.payload_type), (Codec::Pcma, 8));
        assert!(n.answer.contains("m=audio 20000 RTP/AVP 8 101\r\n"));
        assert!(n.answer.contains("a=rtpmap:8 PCMA/8000\r\n"));
        assert!(!n.answer.contains("PCMU"));
        // Asterisk offers PCMA first; the default (PCMU-first) trunk gets PCMU.
        let n = negotiate(ASTERISK, &CodecPrefs::default()).unwrap();
        assert_eq!((n.codec, n.payload_type), (Codec::Pcmu, 0));
        // A PCMA-only trunk against a PCMU-only offer: nothing in common.
        let only_a = CodecPrefs::new([Codec::Pcma]);
        assert_eq!(
            negotiate(SIPP, &only_a),
            Err(NegotiationError::NoCommonCodec)
        );
    }

    #[test]
    fn freeswitch_skips_opus_and_picks_8k_telephone_event() {
        let n = negotiate(FREESWITCH, &CodecPrefs::default()).unwrap();
        assert_eq!((n.codec, n.payload_type), (Codec::Pcmu, 0));
        // 103 is telephone-event/48000, listed first; 101 is the 8 kHz one.
        assert_eq!(n.telephone_event, Some(101));
        assert!(n.answer.contains("m=audio 20000 RTP/AVP 0 101\r\n"));
        assert!(!n.answer.contains("opus"));
    }

    #[test]
    fn dynamic_payload_type_for_pcmu_via_rtpmap() {
        let n = negotiate(DYNAMIC_PCMU, &pcma_first()).unwrap();
        assert_eq!((n.codec, n.payload_type), (Codec::Pcmu, 112));
        assert_eq!(n.telephone_event, Some(113));
        // Media-level c=.
        assert_eq!(n.remote_rtp, "192.0.2.70:16384".parse().unwrap());
        // The offer is sendonly, so we only receive.
        assert_eq!(n.direction, Direction::RecvOnly);
        assert!(n.on_hold());
        assert!(n.answer.contains("m=audio 20000 RTP/AVP 112 113\r\n"));
        assert!(n.answer.contains("a=rtpmap:112 PCMU/8000\r\n"));
        assert!(
            n.answer.contains("a=fmtp:113 0-16\r\n"),
            "default events when fmtp absent"
        );
        assert!(n.answer.ends_with("a=recvonly\r\n"));
    }

    #[test]
    fn rtpmap_overrides_static_meaning() {
        let sdp =
            "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0 8\r\na=rtpmap:0 G729/8000\r\n";
        let n = negotiate(sdp, &CodecPrefs::default()).unwrap();
        assert_eq!((n.codec, n.payload_type), (Codec::Pcma, 8));
        // Wrong clock rate or stereo is not our G.711.
        let sdp = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 96 97\r\na=rtpmap:96 PCMU/16000\r\na=rtpmap:97 pcma/8000/2\r\n";
        assert_eq!(
            negotiate(sdp, &CodecPrefs::default()),
            Err(NegotiationError::NoCommonCodec)
        );
        // Encoding names are case-insensitive.
        let sdp =
            "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 96\r\na=rtpmap:96 pcmu/8000/1\r\n";
        let n = negotiate(sdp, &CodecPrefs::default()).unwrap();
        assert_eq!((n.codec, n.payload_type), (Codec::Pcmu, 96));
    }

    #[test]
    fn telephone_event_only_when_offered() {
        let n = negotiate(SIPP, &CodecPrefs::default()).unwrap();
        assert!(!n.answer.contains("telephone-event"));
        assert!(!n.answer.contains("fmtp"));
        // Offered with 0-15: echoed as offered.
        let n = negotiate(
            G729_ONLY.replace("18 101", "18 0 101").as_str(),
            &CodecPrefs::default(),
        )
        .unwrap();
        assert_eq!(n.telephone_event, Some(101));
        assert!(n.answer.contains("a=fmtp:101 0-15\r\n"));
        // Junk in the fmtp is not echoed.
        let sdp = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16;x=<script>\r\n";
        let n = negotiate(sdp, &CodecPrefs::default()).unwrap();
        assert!(n.answer.contains("a=fmtp:101 0-16\r\n"));
    }

    #[test]
    fn video_and_audio_one_answer_line_each() {
        let n = negotiate(LINPHONE_VIDEO, &CodecPrefs::default()).unwrap();
        assert_eq!((n.codec, n.payload_type), (Codec::Pcmu, 0));
        assert_eq!(n.telephone_event, Some(100));
        assert_eq!(n.media_index, 0);
        let m_lines: Vec<&str> = n.answer.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m_lines,
            ["m=audio 20000 RTP/AVP 0 100", "m=video 0 RTP/AVP 96 97"]
        );

        // Video first, audio second, then a BFCP stream with a non-numeric format.
        let n = negotiate(VIDEO_FIRST, &CodecPrefs::default()).unwrap();
        assert_eq!(n.media_index, 1);
        assert_eq!(n.remote_rtp, "192.0.2.90:2226".parse().unwrap());
        let m_lines: Vec<&str> = n.answer.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m_lines,
            [
                "m=video 0 RTP/AVP 109 34",
                "m=audio 20000 RTP/AVP 0 101",
                "m=application 0 UDP/BFCP *"
            ]
        );
        // The accepted section's attributes follow its own m= line.
        let after_audio = n.answer.split("m=audio").nth(1).unwrap();
        let audio_section = after_audio.split("m=application").next().unwrap();
        assert!(audio_section.contains("a=fmtp:101 0-15\r\n"));
    }

    #[test]
    fn srtp_and_non_audio_are_declined() {
        assert_eq!(
            negotiate(SAVP_ONLY, &CodecPrefs::default()),
            Err(NegotiationError::NoCommonCodec)
        );
        assert_eq!(
            negotiate(WEBRTC, &CodecPrefs::default()),
            Err(NegotiationError::NoCommonCodec)
        );
        assert_eq!(
            negotiate(G729_ONLY, &CodecPrefs::default()),
            Err(NegotiationError::NoCommonCodec)
        );
        // Best-effort SRTP style: SAVP declined, the plain AVP copy accepted.
        let n = negotiate(SAVP_THEN_AVP, &CodecPrefs::default()).unwrap();
        assert_eq!(
            (n.codec, n.payload_type, n.media_index),
            (Codec::Pcma, 8, 1)
        );
        assert_eq!(n.remote_rtp, "192.0.2.61:40004".parse().unwrap());
        let m_lines: Vec<&str> = n.answer.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m_lines,
            ["m=audio 0 RTP/SAVP 8 101", "m=audio 20000 RTP/AVP 8 101"]
        );
        assert!(!n.answer.contains("crypto"));
    }

    #[test]
    fn only_the_first_acceptable_audio_stream_is_taken() {
        let sdp = "v=0\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
                   m=audio 0 RTP/AVP 0\r\n\
                   m=audio 4000 RTP/AVP 18\r\n\
                   m=audio 4002 RTP/AVPF 8\r\n\
                   m=audio 4004 RTP/AVP 0\r\n";
        let n = negotiate(sdp, &CodecPrefs::default()).unwrap();
        assert_eq!((n.media_index, n.codec), (2, Codec::Pcma));
        let m_lines: Vec<&str> = n.answer.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m_lines,
            [
                "m=audio 0 RTP/AVP 0",
                "m=audio 0 RTP/AVP 18",
                "m=audio 20000 RTP/AVPF 8",
                "m=audio 0 RTP/AVP 0"
            ]
        );
    }

    #[test]
    fn hold_with_zero_address() {
        let n = negotiate(HOLD, &CodecPrefs::default()).unwrap();
        assert_eq!(
            n.remote_rtp,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 20000)
        );
        assert!(n.on_hold());
        assert_eq!(n.direction, Direction::SendRecv);
    }

    #[test]
    fn directions_are_mirrored() {
        for (offered, answered) in [
            ("sendrecv", "sendrecv"),
            ("sendonly", "recvonly"),
            ("recvonly", "sendonly"),
            ("inactive", "inactive"),
        ] {
            // At media level...
            let sdp =
                format!("v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\na={offered}\r\n");
            let n = negotiate(&sdp, &CodecPrefs::default()).unwrap();
            assert!(
                n.answer.ends_with(&format!("a={answered}\r\n")),
                "{offered}"
            );
            // ...and at session level.
            let sdp =
                format!("v=0\r\nc=IN IP4 192.0.2.1\r\na={offered}\r\nm=audio 4000 RTP/AVP 0\r\n");
            let n = negotiate(&sdp, &CodecPrefs::default()).unwrap();
            assert_eq!(n.direction.as_str(), answered);
        }
        // Media level beats session level.
        let sdp =
            "v=0\r\nc=IN IP4 192.0.2.1\r\na=inactive\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n";
        assert_eq!(
            negotiate(sdp, &CodecPrefs::default()).unwrap().direction,
            Direction::SendRecv
        );
    }

    #[test]
    fn ipv6_offer_and_ipv6_answer() {
        let offer = parse_offer(IPV6.as_bytes()).unwrap();
        assert_eq!(
            offer.connection,
            Some(IpAddr::V6("2001:db8::10".parse().unwrap()))
        );
        let prefs = CodecPrefs::default();
        let p = AnswerParams {
            local_ip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5)),
            ..params(&prefs)
        };
        let n = answer(&offer, &p).unwrap();
        assert_eq!(n.remote_rtp, "[2001:db8::10]:5004".parse().unwrap());
        // Static 8 and 0 without rtpmap; PCMU preferred by the trunk.
        assert_eq!((n.codec, n.payload_type), (Codec::Pcmu, 0));
        assert_eq!(n.ptime_ms, 30);
        assert!(n
            .answer
            .contains("o=switchboard 42 43 IN IP6 2001:db8::5\r\n"));
        assert!(n.answer.contains("c=IN IP6 2001:db8::5\r\n"));
        // An IP6 address tagged IP4 (or the reverse) is malformed.
        assert_eq!(
            parse_offer(b"v=0\nc=IN IP4 2001:db8::1\n"),
            Err(SdpError::BadConnection { line: 2 })
        );
        assert_eq!(
            parse_offer(b"v=0\nc=IN IP6 192.0.2.1\n"),
            Err(SdpError::BadConnection { line: 2 })
        );
    }

    #[test]
    fn ptime_choice() {
        let with = |attrs: &str| {
            let sdp = format!("v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\n{attrs}");
            negotiate(&sdp, &CodecPrefs::default()).unwrap().ptime_ms
        };
        assert_eq!(with(""), 20);
        assert_eq!(with("a=ptime:30\r\n"), 30);
        assert_eq!(with("a=ptime:20.0\r\n"), 20);
        assert_eq!(with("a=ptime:25\r\n"), 20);
        assert_eq!(with("a=ptime:1000\r\n"), 20);
        assert_eq!(with("a=ptime:0\r\n"), 20);
        assert_eq!(with("a=ptime:40\r\na=maxptime:30\r\n"), 30);
        assert_eq!(with("a=maxptime:150\r\n"), 20);
        // Whatever the peer wants, our answer asks for 20 ms.
        let sdp = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\na=ptime:30\r\n";
        assert!(negotiate(sdp, &CodecPrefs::default())
            .unwrap()
            .answer
            .contains("a=ptime:20\r\n"));
    }

    #[test]
    fn every_sample_parses_and_answers_consistently() {
        for (i, sdp) in ALL.iter().enumerate() {
            let offer = parse_offer(sdp.as_bytes()).unwrap_or_else(|e| panic!("sample {i}: {e}"));
            let Ok(n) = answer(&offer, &params(&CodecPrefs::default())) else {
                continue;
            };
            // RFC 3264 s6: one answer m= line per offer m= line, same media types.
            let back = parse_answer(n.answer.as_bytes()).unwrap();
            assert_eq!(back.media.len(), offer.media.len(), "sample {i}");
            for (a, o) in back.media.iter().zip(&offer.media) {
                assert_eq!((a.kind, a.proto), (o.kind, o.proto), "sample {i}");
            }
            // Our answer, read back as an answer, selects the same thing.
            let ours = accept_answer(&back, &CodecPrefs::default()).unwrap();
            assert_eq!(
                (ours.codec, ours.payload_type, ours.telephone_event),
                (n.codec, n.payload_type, n.telephone_event)
            );
            assert_eq!(ours.remote_rtp, "10.0.0.5:20000".parse().unwrap());
            assert_eq!(ours.direction, n.direction.reverse());
        }
    }

    #[test]
    fn our_offer_round_trips() {
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let text = offer(ip, 20002, 7, &pcma_first(), "switchboard/0.1.0");
        assert_eq!(
            text,
            "v=0\r\n\
             o=switchboard 7 7 IN IP4 10.0.0.5\r\n\
             s=switchboard\r\n\
             c=IN IP4 10.0.0.5\r\n\
             t=0 0\r\n\
             m=audio 20002 RTP/AVP 8 0 101\r\n\
             a=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-16\r\n\
             a=ptime:20\r\n\
             a=sendrecv\r\n"
        );
        // Another switchboard answering it with a PCMU-first trunk picks PCMU.
        let parsed = parse_offer(text.as_bytes()).unwrap();
        let n = answer(&parsed, &params(&CodecPrefs::default())).unwrap();
        assert_eq!(
            (n.codec, n.payload_type, n.telephone_event),
            (Codec::Pcmu, 0, Some(101))
        );
    }

    #[test]
    fn accept_answer_takes_answerers_first_supported() {
        let ans = "v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
                   m=audio 30000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=recvonly\r\n";
        let sd = parse_answer(ans.as_bytes()).unwrap();
        let n = accept_answer(&sd, &CodecPrefs::default()).unwrap();
        assert_eq!(
            (n.codec, n.payload_type, n.telephone_event),
            (Codec::Pcma, 8, Some(101))
        );
        assert_eq!(n.direction, Direction::SendOnly);
        assert_eq!(n.remote_rtp, "192.0.2.9:30000".parse().unwrap());
        assert!(n.answer.is_empty());
        let rejected = "v=0\r\nc=IN IP4 192.0.2.9\r\nm=audio 0 RTP/AVP 0\r\n";
        let sd = parse_answer(rejected.as_bytes()).unwrap();
        assert_eq!(
            accept_answer(&sd, &CodecPrefs::default()),
            Err(NegotiationError::NoCommonCodec)
        );
    }

    #[test]
    fn parse_details() {
        let o = parse_offer(FREESWITCH.as_bytes()).unwrap();
        assert_eq!(
            o.origin,
            Some(Origin {
                username: "FreeSWITCH",
                session_id: "1712000000",
                session_version: "1712000001",
                address: "203.0.113.20",
            })
        );
        assert_eq!(o.session_name, "FreeSWITCH");
        let m = &o.media[0];
        assert_eq!(m.formats, ["102", "9", "0", "8", "103", "101"]);
        assert_eq!(
            m.rtpmap(102),
            Some(&RtpMap {
                payload_type: 102,
                encoding: "opus",
                clock_rate: 48000,
                channels: Some(2)
            })
        );
        assert!(m.fmtp(102).unwrap().starts_with("useinbandfec=1;"));
        assert_eq!(m.ptime, Some(20));
        // Session id longer than 64 bits (WebRTC stacks do this).
        let o = parse_offer(WEBRTC.as_bytes()).unwrap();
        assert_eq!(o.origin.unwrap().session_id, "4611731400430051336");
        assert_eq!(
            o.media[0].connection,
            Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        );
    }

    #[test]
    fn lenient_where_harmless() {
        // Bare LF, trailing blanks, blank lines, unknown line types and attributes,
        // a malformed rtpmap (ignored), multicast TTL suffix, port count, o= missing.
        // (A line that is not `<letter>=` at all stays an error: see below.)
        let sdp = "v=0  \n\ns=x\nc=IN IP4 192.0.2.1/127\nt=0 0\nz=whatever\n\
                   m=audio 4000/2 RTP/AVP 0\na=rtpmap:banana\na=rtpmap:0 PCMU\na=x-unknown:1\na=rtpmap:300 PCMU/8000\n";
        let n = negotiate(sdp, &CodecPrefs::default()).unwrap();
        assert_eq!(n.remote_rtp, "192.0.2.1:4000".parse().unwrap());
        assert_eq!(n.codec, Codec::Pcmu);
        // A declined stream without formats is tolerated and answered with one.
        let sdp = "v=0\nc=IN IP4 192.0.2.1\nm=video 0 RTP/AVP\nm=audio 4000 RTP/AVP 0\n";
        let n = negotiate(sdp, &CodecPrefs::default()).unwrap();
        assert!(n.answer.contains("m=video 0 RTP/AVP 0\r\n"));
        // A non-UTF-8 session name or attribute is not fatal.
        let mut bytes =
            b"v=0\ns=\xff\xfe\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 0\na=\xc3\x28\n".to_vec();
        assert!(parse_offer(&bytes).is_ok());
        // ...but in a c= line it is.
        bytes.extend_from_slice(b"c=IN IP4 \xff\n");
        assert_eq!(parse_offer(&bytes), Err(SdpError::NotUtf8 { line: 6 }));
    }

    #[test]
    fn malformed_input_is_an_error_with_a_reason() {
        let cases: &[(&[u8], SdpError)] = &[
            (b"", SdpError::Empty),
            (b"\r\n\r\n", SdpError::Empty),
            (b"hello world", SdpError::Syntax { line: 1 }),
            (
                b"o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\n",
                SdpError::MissingVersion,
            ),
            (b"v=1\r\n", SdpError::MissingVersion),
            (b"v=0\r\n=oops\r\n", SdpError::Syntax { line: 2 }),
            (
                b"v=0\r\no=- x 1 IN IP4 1.2.3.4\r\n",
                SdpError::BadOrigin { line: 2 },
            ),
            (b"v=0\r\no=- 1 1 IN\r\n", SdpError::BadOrigin { line: 2 }),
            (
                b"v=0\r\nc=IN IP4 host.example.com\r\n",
                SdpError::BadConnection { line: 2 },
            ),
            (
                b"v=0\r\nc=ATM NSAP 47.0005\r\n",
                SdpError::BadConnection { line: 2 },
            ),
            (
                b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio\r\n",
                SdpError::BadMedia { line: 3 },
            ),
            (
                b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 70000 RTP/AVP 0\r\n",
                SdpError::BadMedia { line: 3 },
            ),
            (
                b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP\r\n",
                SdpError::BadMedia { line: 3 },
            ),
            (
                b"v=0\r\nm=audio 4000 RTP/AVP 0\r\n",
                SdpError::NoConnection { media: 1 },
            ),
            (b"SIP/2.0 200 OK\r\n", SdpError::Syntax { line: 1 }),
        ];
        for (input, want) in cases {
            let got = parse_offer(input);
            assert_eq!(
                got.as_ref().err(),
                Some(want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            // Reasons are printable ASCII on one line: fit for a SIP reason phrase.
            let reason = want.to_string();
            assert!(
                reason.bytes().all(|b| (0x20..0x7f).contains(&b)),
                "{reason}"
            );
        }
    }

    #[test]
    fn hostile_sizes_are_bounded() {
        let mut many_m = String::from("v=0\r\nc=IN IP4 192.0.2.1\r\n");
        for _ in 0..=MAX_MEDIA {
            many_m.push_str("m=audio 4000 RTP/AVP 0\r\n");
        }
        assert_eq!(parse_offer(many_m.as_bytes()), Err(SdpError::TooManyMedia));

        let mut many_fmts = String::from("v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP");
        for i in 0..=MAX_FORMATS {
            many_fmts.push_str(&format!(" {}", i % 128));
        }
        assert_eq!(
            parse_offer(many_fmts.as_bytes()),
            Err(SdpError::TooManyFormats { line: 3 })
        );

        let mut many_maps = String::from("v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\n");
        for pt in 0..=MAX_FORMATS {
            many_maps.push_str(&format!("a=rtpmap:{pt} X/8000\r\n"));
        }
        assert!(matches!(
            parse_offer(many_maps.as_bytes()),
            Err(SdpError::TooManyFormats { .. })
        ));

        // Repeated rtpmaps for one payload type do not grow anything: first wins.
        let mut dup = String::from("v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\n");
        for _ in 0..1000 {
            dup.push_str("a=rtpmap:0 PCMU/8000\r\na=fmtp:0 x\r\n");
        }
        let o = parse_offer(dup.as_bytes()).unwrap();
        assert_eq!((o.media[0].rtpmaps.len(), o.media[0].fmtps.len()), (1, 1));
    }

    #[test]
    fn codec_prefs_and_names() {
        assert_eq!(CodecPrefs::default().as_slice(), [Codec::Pcmu, Codec::Pcma]);
        assert_eq!(
            CodecPrefs::new([Codec::Pcma, Codec::Pcma]).as_slice(),
            [Codec::Pcma]
        );
        assert_eq!(CodecPrefs::new([]), CodecPrefs::default());
        assert_eq!(
            CodecPrefs::from_names(["pcma", " PCMU "])
                .unwrap()
                .as_slice(),
            [Codec::Pcma, Codec::Pcmu]
        );
        assert_eq!(CodecPrefs::from_names(["G729"]), Err(UnknownCodec));
        assert_eq!("PCMA".parse::<Codec>(), Ok(Codec::Pcma));
        assert_eq!(Codec::Pcmu.to_string(), "PCMU");
        assert_eq!(origin_username("Foo Bar/2"), "Foo");
        assert_eq!(origin_username(""), "-");
        assert_eq!(origin_username("we\"ird"), "-");
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn run(bytes: &[u8]) {
            if let Ok(o) = parse_offer(bytes) {
                for prefs in [CodecPrefs::default(), pcma_first()] {
                    if let Ok(n) = answer(&o, &params(&prefs)) {
                        // Whatever we accepted, our answer is SDP we can read back.
                        let back = parse_answer(n.answer.as_bytes()).expect("our answer parses");
                        assert_eq!(back.media.len(), o.media.len());
                    }
                    let _ = accept_answer(&o, &prefs);
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                run(&bytes);
            }

            #[test]
            fn sdp_like_lines_never_panic(lines in proptest::collection::vec(
                "(v=0|[vosctma]=[ -~]{0,40}|a=(rtpmap|fmtp|ptime|maxptime|sendonly|inactive):[ -~]{0,30}|m=audio [0-9]{1,6} RTP/AVPF? [0-9 ]{0,20}|c=IN IP[46] [0-9a-f:.]{0,20})",
                0..20,
            )) {
                let mut text = String::from("v=0\r\n");
                for l in lines {
                    text.push_str(&l);
                    text.push_str("\r\n");
                }
                run(text.as_bytes());
            }

            #[test]
            fn mutated_samples_never_panic(
                which in 0..ALL.len(),
                edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
            ) {
                let mut bytes = ALL[which].as_bytes().to_vec();
                for (at, byte, op) in edits {
                    if bytes.is_empty() {
                        break;
                    }
                    let i = at.index(bytes.len());
                    match op {
                        0 => bytes[i] = byte,
                        1 => { bytes.remove(i); }
                        _ => bytes.insert(i, byte),
                    }
                }
                run(&bytes);
            }
        }
    }
}
