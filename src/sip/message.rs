//! SIP message parsing (RFC 3261 s7, s25) — the first thing every datagram meets.
//!
//! Where it sits: a shard's UDP socket or TCP connection hands the bytes of one
//! message here; the result feeds routing (which shard owns the call), the
//! transaction layer and the call state machine.
//!
//! What it owns: the wire syntax. A [`SipMessage`] keeps the received buffer
//! (`Bytes`, reference counted) and a table of spans into it: no header value is
//! copied. Typed views (`Via`, `NameAddr`, `CSeq`, `SipUri`) are parsed on demand
//! from those spans. Compact header forms (RFC 3261 s7.3.3), case-insensitive names,
//! folded lines (s7.3.1), comma-separated lists with quoted strings and `<...>`
//! (s7.3.1, RFC 4475 s3.1.1.1) are all understood.
//!
//! Why our own parser and not `rsip`: rsip copies every header into a `String`,
//! does not know the compact forms and is unmaintained (see docs/architecture.md and
//! `tests/rfc4475.rs`, which runs both over the RFC 4475 torture messages).

use bytes::Bytes;
use std::fmt;

/// Largest message we accept: a UDP datagram. TCP framing enforces the same bound.
pub const MAX_MESSAGE: usize = 65_535;
/// More header lines than this is an attack or a bug, not a call.
pub const MAX_HEADERS: usize = 128;

/// A byte range into the message buffer. `u32` keeps headers small.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }
    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// SIP request methods we know by name; anything else is `Other`, spelled in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Info,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    Other,
}

impl Method {
    /// Methods are case-sensitive (RFC 3261 s7.1).
    pub fn from_token(t: &[u8]) -> Method {
        match t {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"OPTIONS" => Method::Options,
            b"REGISTER" => Method::Register,
            b"INFO" => Method::Info,
            b"UPDATE" => Method::Update,
            b"PRACK" => Method::Prack,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"REFER" => Method::Refer,
            b"MESSAGE" => Method::Message,
            b"PUBLISH" => Method::Publish,
            _ => Method::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other => "OTHER",
        }
    }
}

/// Header names the core looks at, with their compact forms folded in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Contact,
    ContentLength,
    ContentType,
    MaxForwards,
    Route,
    RecordRoute,
    Authorization,
    ProxyAuthorization,
    Supported,
    Require,
    Allow,
    Expires,
    UserAgent,
    Other,
}

impl HeaderName {
    /// Case-insensitive lookup including compact forms (RFC 3261 s7.3.3, s20).
    pub fn from_bytes(n: &[u8]) -> HeaderName {
        if n.len() == 1 {
            return match n[0].to_ascii_lowercase() {
                b'v' => HeaderName::Via,
                b'f' => HeaderName::From,
                b't' => HeaderName::To,
                b'i' => HeaderName::CallId,
                b'm' => HeaderName::Contact,
                b'l' => HeaderName::ContentLength,
                b'c' => HeaderName::ContentType,
                b'k' => HeaderName::Supported,
                _ => HeaderName::Other,
            };
        }
        const NAMES: &[(&[u8], HeaderName)] = &[
            (b"via", HeaderName::Via),
            (b"from", HeaderName::From),
            (b"to", HeaderName::To),
            (b"call-id", HeaderName::CallId),
            (b"cseq", HeaderName::CSeq),
            (b"contact", HeaderName::Contact),
            (b"content-length", HeaderName::ContentLength),
            (b"content-type", HeaderName::ContentType),
            (b"max-forwards", HeaderName::MaxForwards),
            (b"route", HeaderName::Route),
            (b"record-route", HeaderName::RecordRoute),
            (b"authorization", HeaderName::Authorization),
            (b"proxy-authorization", HeaderName::ProxyAuthorization),
            (b"supported", HeaderName::Supported),
            (b"require", HeaderName::Require),
            (b"allow", HeaderName::Allow),
            (b"expires", HeaderName::Expires),
            (b"user-agent", HeaderName::UserAgent),
        ];
        for (name, h) in NAMES {
            if n.eq_ignore_ascii_case(name) {
                return *h;
            }
        }
        HeaderName::Other
    }

    /// Headers whose value is a comma-separated list (RFC 3261 s7.3.1).
    fn is_list(self) -> bool {
        matches!(
            self,
            HeaderName::Via
                | HeaderName::Contact
                | HeaderName::Route
                | HeaderName::RecordRoute
                | HeaderName::Supported
                | HeaderName::Require
                | HeaderName::Allow
        )
    }
}

/// Why a message could not be parsed or is unusable. `reason()` is what goes into
/// the `400` reason phrase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty message")]
    Empty,
    #[error("message too large")]
    TooLarge,
    #[error("malformed start line")]
    StartLine,
    #[error("unsupported SIP version")]
    Version,
    #[error("malformed Request-URI")]
    RequestUri,
    #[error("malformed status code")]
    StatusCode,
    #[error("malformed header line")]
    HeaderLine,
    #[error("too many headers")]
    TooManyHeaders,
    #[error("no end of headers")]
    Truncated,
    #[error("malformed Content-Length")]
    ContentLength,
    #[error("Content-Length exceeds message")]
    BodyTruncated,
    #[error("missing Via")]
    MissingVia,
    #[error("malformed Via")]
    BadVia,
    #[error("missing From")]
    MissingFrom,
    #[error("malformed From")]
    BadFrom,
    #[error("missing To")]
    MissingTo,
    #[error("malformed To")]
    BadTo,
    #[error("missing Call-ID")]
    MissingCallId,
    #[error("missing CSeq")]
    MissingCSeq,
    #[error("malformed CSeq")]
    BadCSeq,
    #[error("CSeq method does not match request method")]
    CSeqMethodMismatch,
    #[error("malformed Max-Forwards")]
    BadMaxForwards,
    #[error("malformed Contact")]
    BadContact,
    #[error("duplicate header")]
    DuplicateHeader,
}

impl ParseError {
    /// Text for the reason phrase of the `400` we answer with.
    pub fn reason(self) -> &'static str {
        match self {
            ParseError::Empty => "Bad Request - Empty Message",
            ParseError::TooLarge => "Bad Request - Message Too Large",
            ParseError::StartLine => "Bad Request - Malformed Start Line",
            ParseError::Version => "Version Not Supported",
            ParseError::RequestUri => "Bad Request - Malformed Request-URI",
            ParseError::StatusCode => "Bad Request - Malformed Status Code",
            ParseError::HeaderLine => "Bad Request - Malformed Header Line",
            ParseError::TooManyHeaders => "Bad Request - Too Many Headers",
            ParseError::Truncated => "Bad Request - Truncated Headers",
            ParseError::ContentLength => "Bad Request - Malformed Content-Length",
            ParseError::BodyTruncated => "Bad Request - Content-Length Exceeds Message",
            ParseError::MissingVia => "Bad Request - Missing Via",
            ParseError::BadVia => "Bad Request - Malformed Via",
            ParseError::MissingFrom => "Bad Request - Missing From",
            ParseError::BadFrom => "Bad Request - Malformed From",
            ParseError::MissingTo => "Bad Request - Missing To",
            ParseError::BadTo => "Bad Request - Malformed To",
            ParseError::MissingCallId => "Bad Request - Missing Call-ID",
            ParseError::MissingCSeq => "Bad Request - Missing CSeq",
            ParseError::BadCSeq => "Bad Request - Malformed CSeq",
            ParseError::CSeqMethodMismatch => "Bad Request - CSeq Method Mismatch",
            ParseError::BadMaxForwards => "Bad Request - Malformed Max-Forwards",
            ParseError::BadContact => "Bad Request - Malformed Contact",
            ParseError::DuplicateHeader => "Bad Request - Duplicate Header",
        }
    }

    /// The status code to answer with: 505 for a version we do not speak
    /// (RFC 3261 s8.2.2... s21.5.26), 400 otherwise.
    pub fn status(self) -> u16 {
        match self {
            ParseError::Version => 505,
            _ => 400,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StartLine {
    Request {
        method: Method,
        method_span: Span,
        uri: Span,
    },
    Response {
        status: u16,
        reason: Span,
    },
}

/// One header line: its name (classified) and the spans of name and value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: HeaderName,
    name_span: Span,
    value: Span,
}

/// A parsed SIP request or response, borrowing nothing: it owns the received
/// `Bytes` and spans into them.
#[derive(Clone)]
pub struct SipMessage {
    buf: Bytes,
    start: StartLine,
    headers: Vec<Header>,
    body: Span,
    /// An error found in a part we could read past (request line version or URI,
    /// Content-Length): the message is still addressable, so it gets a response.
    deferred: Option<ParseError>,
}

impl fmt::Debug for SipMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.start {
            StartLine::Request { .. } => write!(
                f,
                "SipMessage({} {} call-id={:?})",
                self.method_str(),
                self.request_uri().unwrap_or(""),
                self.call_id()
            ),
            StartLine::Response { status, .. } => {
                write!(f, "SipMessage({} call-id={:?})", status, self.call_id())
            }
        }
    }
}

/// Result of looking for one message at the front of a TCP stream buffer
/// (RFC 3261 s18.3: framing by Content-Length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// The first `n` bytes are one complete message.
    Complete(usize),
    /// Need more bytes.
    Partial,
    /// `n` leading CR/LF bytes are keep-alives (RFC 5626 s3.5.1) to consume.
    KeepAlive(usize),
    /// The stream cannot be framed (e.g. missing or bad Content-Length); close it.
    Invalid(&'static str),
}

/// Cut one message off the front of a stream buffer.
pub fn frame_len(buf: &[u8]) -> Framing {
    let ka = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    if ka > 0 {
        return Framing::KeepAlive(ka);
    }
    let Some(hdr_end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_MESSAGE {
            return Framing::Invalid("headers exceed 64 KiB");
        }
        return Framing::Partial;
    };
    let head = &buf[..hdr_end + 2];
    let mut content_length: Option<usize> = None;
    for line in head.split(|b| *b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = trim(&line[..colon]);
        if HeaderName::from_bytes(name) == HeaderName::ContentLength {
            let v = trim(&line[colon + 1..]);
            match parse_u32(v) {
                // Two different lengths leave the stream unframable (RFC 4475 s3.3.9).
                Some(n) if content_length.is_some_and(|c| c != n as usize) => {
                    return Framing::Invalid("conflicting Content-Length")
                }
                Some(n) if (n as usize) <= MAX_MESSAGE => content_length = Some(n as usize),
                _ => return Framing::Invalid("bad Content-Length"),
            }
        }
    }
    // RFC 3261 s18.3: Content-Length is mandatory on stream transports.
    let Some(cl) = content_length else {
        return Framing::Invalid("missing Content-Length on stream transport");
    };
    let total = hdr_end + 4 + cl;
    if total > MAX_MESSAGE {
        return Framing::Invalid("message exceeds 64 KiB");
    }
    if buf.len() >= total {
        Framing::Complete(total)
    } else {
        Framing::Partial
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if is_ws(*first) {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if is_ws(*last) {
            s = rest;
        } else {
            break;
        }
    }
    s
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn parse_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 10 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(b - b'0');
    }
    u32::try_from(v).ok()
}

/// A token char per RFC 3261 s25.1.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

impl SipMessage {
    /// Parse one complete message (a UDP datagram, or one frame off a TCP stream).
    ///
    /// Folded header lines are unfolded in a private copy (rare in practice);
    /// otherwise the buffer is used as is.
    pub fn parse(buf: Bytes) -> Result<SipMessage, ParseError> {
        if buf.len() > MAX_MESSAGE {
            return Err(ParseError::TooLarge);
        }
        // Tolerate leading CRLFs (RFC 3261 s7.5).
        let lead = buf
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        if lead == buf.len() {
            return Err(ParseError::Empty);
        }
        let hdr_end = find_header_end(&buf[lead..]).map(|(e, l)| (e + lead, l));
        let Some((hdr_end, sep_len)) = hdr_end else {
            return Err(ParseError::Truncated);
        };
        // Unfold continuation lines in place (same length, so spans stay valid):
        // CRLF followed by SP/HTAB becomes two spaces (RFC 3261 s7.3.1).
        let buf = if has_folding(&buf[lead..hdr_end]) {
            let mut v = buf.to_vec();
            unfold(&mut v[lead..hdr_end]);
            Bytes::from(v)
        } else {
            buf
        };
        let head = &buf[..hdr_end];
        let mut lines = LineIter {
            buf: head,
            pos: lead,
        };
        let (s0, s1) = lines.next().ok_or(ParseError::StartLine)?;
        let (start, mut deferred) = parse_start_line(&buf, s0, s1)?;
        let mut headers = Vec::with_capacity(16);
        for (ls, le) in lines {
            if le == ls {
                continue;
            }
            let line = &buf[ls..le];
            // A broken header line does not make the message unaddressable: skip
            // it, remember the error, answer 400 if Via & co. are readable.
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                deferred.get_or_insert(ParseError::HeaderLine);
                continue;
            };
            let name = trim(&line[..colon]);
            if name.is_empty() || !name.iter().all(|b| is_token(*b)) {
                deferred.get_or_insert(ParseError::HeaderLine);
                continue;
            }
            let kind = HeaderName::from_bytes(name);
            if headers.len() >= MAX_HEADERS {
                // Past the limit only the headers a 400 needs are kept, and
                // only a few more of those: memory stays bounded.
                deferred.get_or_insert(ParseError::TooManyHeaders);
                let core = matches!(
                    kind,
                    HeaderName::Via
                        | HeaderName::From
                        | HeaderName::To
                        | HeaderName::CallId
                        | HeaderName::CSeq
                );
                if !core || headers.len() >= MAX_HEADERS + 16 {
                    continue;
                }
            }
            let name_start = ls + (name.as_ptr() as usize - line.as_ptr() as usize);
            let mut vs = ls + colon + 1;
            let mut ve = le;
            while vs < ve && is_ws(buf[vs]) {
                vs += 1;
            }
            while ve > vs && is_ws(buf[ve - 1]) {
                ve -= 1;
            }
            headers.push(Header {
                name: kind,
                name_span: Span::new(name_start, name_start + name.len()),
                value: Span::new(vs, ve),
            });
        }
        let body_start = hdr_end + sep_len;
        let mut msg = SipMessage {
            buf,
            start,
            headers,
            body: Span::new(body_start, body_start),
            deferred: None,
        };
        let available = msg.buf.len() - body_start;
        let mut cls = msg.header_values_raw(HeaderName::ContentLength);
        let body_len = match cls.next() {
            None => Ok(available), // UDP: the rest of the datagram (RFC 3261 s18.3)
            Some(v) => match parse_u32(v.as_bytes()) {
                None => Err(ParseError::ContentLength),
                Some(_) if cls.next().is_some_and(|v2| v2 != v) => Err(ParseError::DuplicateHeader),
                Some(n) if n as usize > available => Err(ParseError::BodyTruncated),
                Some(n) => Ok(n as usize),
            },
        };
        drop(cls);
        let body_len = body_len.unwrap_or_else(|e| {
            deferred.get_or_insert(e);
            available
        });
        msg.body = Span::new(body_start, body_start + body_len);
        msg.deferred = deferred;
        Ok(msg)
    }

    /// The whole message as received (after unfolding).
    pub fn as_bytes(&self) -> &Bytes {
        &self.buf
    }

    fn str_at(&self, s: Span) -> &str {
        // Non-UTF-8 bytes in a value make that value unreadable, not the message:
        // a lossy view would allocate, so such values read as empty.
        std::str::from_utf8(&self.buf[s.range()]).unwrap_or("")
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The method as spelled on the wire (useful for `Other`).
    pub fn method_str(&self) -> &str {
        match self.start {
            StartLine::Request { method_span, .. } => self.str_at(method_span),
            StartLine::Response { .. } => "",
        }
    }

    pub fn request_uri(&self) -> Option<&str> {
        match self.start {
            StartLine::Request { uri, .. } => Some(self.str_at(uri)),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { status, .. } => Some(status),
            StartLine::Request { .. } => None,
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self.start {
            StartLine::Response { reason, .. } => Some(self.str_at(reason)),
            StartLine::Request { .. } => None,
        }
    }

    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    pub fn header_name(&self, h: &Header) -> &str {
        self.str_at(h.name_span)
    }

    pub fn header_value(&self, h: &Header) -> &str {
        self.str_at(h.value)
    }

    /// Value of the first header line with this name.
    pub fn header(&self, name: HeaderName) -> Option<&str> {
        self.header_values_raw(name).next()
    }

    /// Value of the first header line whose name matches `name` case-insensitively
    /// (for headers we do not classify).
    pub fn header_by_name(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| self.buf[h.name_span.range()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| self.str_at(h.value))
    }

    /// Every header line with this name, unsplit.
    pub fn header_values_raw(&self, name: HeaderName) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |h| h.name == name)
            .map(move |h| self.str_at(h.value))
    }

    /// Every value of a header, list headers split on top-level commas
    /// (commas inside quotes or `<...>` do not split).
    pub fn header_values(&self, name: HeaderName) -> impl Iterator<Item = &str> {
        let list = name.is_list();
        self.header_values_raw(name).flat_map(move |v| {
            if list {
                split_list(v)
            } else {
                ListItems::whole(v)
            }
        })
    }

    pub fn body(&self) -> &[u8] {
        &self.buf[self.body.range()]
    }

    /// The body as a `Bytes` sharing the message buffer.
    pub fn body_bytes(&self) -> Bytes {
        self.buf.slice(self.body.range())
    }

    pub fn call_id(&self) -> Option<&str> {
        self.header(HeaderName::CallId).filter(|v| !v.is_empty())
    }

    pub fn cseq(&self) -> Result<CSeq, ParseError> {
        let v = self
            .header(HeaderName::CSeq)
            .ok_or(ParseError::MissingCSeq)?;
        CSeq::parse(v)
    }

    pub fn top_via(&self) -> Result<Via<'_>, ParseError> {
        let v = self
            .header_values(HeaderName::Via)
            .next()
            .ok_or(ParseError::MissingVia)?;
        Via::parse(v)
    }

    pub fn from(&self) -> Result<NameAddr<'_>, ParseError> {
        let v = self
            .header(HeaderName::From)
            .ok_or(ParseError::MissingFrom)?;
        NameAddr::parse(v).ok_or(ParseError::BadFrom)
    }

    pub fn to(&self) -> Result<NameAddr<'_>, ParseError> {
        let v = self.header(HeaderName::To).ok_or(ParseError::MissingTo)?;
        NameAddr::parse(v).ok_or(ParseError::BadTo)
    }

    /// Checks a request carries what RFC 3261 s8.1.1 makes mandatory, in a usable form.
    /// After this, `call_id`, `cseq`, `top_via`, `from` and `to` succeed.
    pub fn validate_request(&self) -> Result<(), ParseError> {
        let StartLine::Request { method, .. } = self.start else {
            return Ok(());
        };
        // A version we do not speak is answered 505 before anything else (RFC 4475
        // s3.1.2.16): its Via may carry the same unknown version.
        if self.deferred == Some(ParseError::Version) {
            return Err(ParseError::Version);
        }
        // Addressability next: without a usable Via no response can be sent.
        self.top_via()?;
        if let Some(e) = self.deferred {
            return Err(e);
        }
        // s19.1.1: headers (`?...`) are not allowed in a SIP Request-URI (RFC 4475 s3.1.2.11).
        if let Some(u) = self.request_uri().and_then(SipUri::parse) {
            if !u.headers.is_empty() && !u.scheme.eq_ignore_ascii_case("tel") {
                return Err(ParseError::RequestUri);
            }
        }
        for c in self.header_values(HeaderName::Contact) {
            if c != "*" && NameAddr::parse(c).is_none() {
                return Err(ParseError::BadContact);
            }
        }
        for v in self.header_values(HeaderName::Via) {
            Via::parse(v)?;
        }
        if self.header_values_raw(HeaderName::From).count() > 1 {
            return Err(ParseError::DuplicateHeader);
        }
        if self.header_values_raw(HeaderName::To).count() > 1 {
            return Err(ParseError::DuplicateHeader);
        }
        self.from()?;
        self.to()?;
        if self.call_id().is_none() {
            return Err(ParseError::MissingCallId);
        }
        if self.header_values_raw(HeaderName::CallId).count() > 1 {
            return Err(ParseError::DuplicateHeader);
        }
        if self.header_values_raw(HeaderName::CSeq).count() > 1 {
            return Err(ParseError::DuplicateHeader);
        }
        let cseq = self.cseq()?;
        // RFC 3261 s8.1.1.5: the CSeq method matches the request method.
        if cseq.method != method
            || (method == Method::Other && cseq.method_text(self) != self.method_str())
        {
            return Err(ParseError::CSeqMethodMismatch);
        }
        if let Some(mf) = self.header(HeaderName::MaxForwards) {
            let n = parse_u32(mf.as_bytes()).ok_or(ParseError::BadMaxForwards)?;
            if n > 255 {
                return Err(ParseError::BadMaxForwards);
            }
        }
        Ok(())
    }

    /// Checks a response carries what our client transactions need.
    pub fn validate_response(&self) -> Result<(), ParseError> {
        if let Some(e) = self.deferred {
            return Err(e);
        }
        self.top_via()?;
        self.from()?;
        self.to()?;
        if self.call_id().is_none() {
            return Err(ParseError::MissingCallId);
        }
        self.cseq()?;
        Ok(())
    }
}

impl CSeq {
    fn method_text<'a>(&self, msg: &'a SipMessage) -> &'a str {
        msg.header(HeaderName::CSeq)
            .and_then(|v| v.split_ascii_whitespace().nth(1))
            .unwrap_or("")
    }
}

/// Find the end of the header block: returns (index of the empty line's start, separator length).
fn find_header_end(b: &[u8]) -> Option<(usize, usize)> {
    // RFC 3261 wants CRLF; tolerate bare LF like most stacks (RFC 4475 does not require it).
    let crlf = memchr::memmem::find(b, b"\r\n\r\n");
    let lf = memchr::memmem::find(b, b"\n\n");
    match (crlf, lf) {
        (Some(c), Some(l)) if l < c => Some((l + 1, 1)),
        (Some(c), _) => Some((c + 2, 2)),
        (None, Some(l)) => Some((l + 1, 1)),
        (None, None) => None,
    }
}

fn has_folding(b: &[u8]) -> bool {
    b.windows(2)
        .any(|w| w[0] == b'\n' && (w[1] == b' ' || w[1] == b'\t'))
}

fn unfold(b: &mut [u8]) {
    for i in 0..b.len().saturating_sub(1) {
        if b[i] == b'\n' && (b[i + 1] == b' ' || b[i + 1] == b'\t') {
            b[i] = b' ';
            if i > 0 && b[i - 1] == b'\r' {
                b[i - 1] = b' ';
            }
        }
    }
}

/// Lines of the header block, as (start, end) indexes without the line terminator.
struct LineIter<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Iterator for LineIter<'_> {
    type Item = (usize, usize);
    fn next(&mut self) -> Option<(usize, usize)> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let start = self.pos;
        let rel = memchr::memchr(b'\n', &self.buf[start..]);
        let (mut end, next) = match rel {
            Some(i) => (start + i, start + i + 1),
            None => (self.buf.len(), self.buf.len()),
        };
        if end > start && self.buf[end - 1] == b'\r' {
            end -= 1;
        }
        self.pos = next;
        Some((start, end))
    }
}

/// Parses the start line. Errors after the method is known are returned beside a
/// usable start line, so the request still gets its 400/505.
fn parse_start_line(
    buf: &[u8],
    s: usize,
    e: usize,
) -> Result<(StartLine, Option<ParseError>), ParseError> {
    let line = &buf[s..e];
    if line.starts_with(b"SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let sp1 = line
            .iter()
            .position(|b| *b == b' ')
            .ok_or(ParseError::StartLine)?;
        if !line[..sp1].eq_ignore_ascii_case(b"SIP/2.0") {
            return Err(ParseError::Version);
        }
        let rest = &line[sp1 + 1..];
        if rest.len() < 3 {
            return Err(ParseError::StatusCode);
        }
        let code = &rest[..3];
        if !code.iter().all(u8::is_ascii_digit) || (rest.len() > 3 && rest[3] != b' ') {
            return Err(ParseError::StatusCode);
        }
        let status = parse_u32(code).ok_or(ParseError::StatusCode)? as u16;
        if !(100..=699).contains(&status) {
            return Err(ParseError::StatusCode);
        }
        let rs = (s + sp1 + 1 + 4).min(e);
        return Ok((
            StartLine::Response {
                status,
                reason: Span::new(rs, e),
            },
            None,
        ));
    }
    // Request-Line = Method SP Request-URI SP SIP-Version (exactly single spaces, s25.1)
    let sp1 = line
        .iter()
        .position(|b| *b == b' ')
        .ok_or(ParseError::StartLine)?;
    let sp2 = line
        .iter()
        .rposition(|b| *b == b' ')
        .ok_or(ParseError::StartLine)?;
    if sp2 <= sp1 + 1 {
        return Err(ParseError::StartLine);
    }
    let method = &line[..sp1];
    if method.is_empty() || !method.iter().all(|b| is_token(*b)) {
        return Err(ParseError::StartLine);
    }
    let version = &line[sp2 + 1..];
    let mut deferred = None;
    if !version.starts_with(b"SIP/") && !version.starts_with(b"sip/") {
        // e.g. "INVITE sip:a@b c SIP/2.0" has spaces in the URI; "version" is garbage.
        deferred = Some(ParseError::RequestUri);
    } else if !version.eq_ignore_ascii_case(b"SIP/2.0") {
        deferred = Some(ParseError::Version);
    }
    let uri = &line[sp1 + 1..sp2];
    // RFC 4475 s3.1.2.11/12: whitespace or <...> in the Request-URI is an error.
    if uri
        .iter()
        .any(|b| b.is_ascii_whitespace() || *b == b'<' || *b == b'>')
        || !uri.contains(&b':')
        || std::str::from_utf8(uri).is_err()
    {
        deferred.get_or_insert(ParseError::RequestUri);
    }
    Ok((
        StartLine::Request {
            method: Method::from_token(method),
            method_span: Span::new(s, s + sp1),
            uri: Span::new(s + sp1 + 1, s + sp2),
        },
        deferred,
    ))
}

/// Split a list header value on commas outside quotes and angle brackets.
pub fn split_list(v: &str) -> ListItems<'_> {
    ListItems { v, pos: 0 }
}

/// Items of a comma-separated header value, split lazily without allocating.
#[derive(Clone, Debug)]
pub struct ListItems<'a> {
    v: &'a str,
    pos: usize,
}

impl<'a> ListItems<'a> {
    /// One item: the whole value, unsplit (for headers that are not lists).
    fn whole(v: &'a str) -> ListItems<'a> {
        ListItems { v, pos: usize::MAX }
    }
}

impl<'a> Iterator for ListItems<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        if self.pos == usize::MAX {
            self.pos = self.v.len() + 1;
            let w = self.v.trim();
            return (!w.is_empty()).then_some(w);
        }
        let b = self.v.as_bytes();
        while self.pos <= b.len() {
            let start = self.pos;
            let mut i = start;
            let mut quoted = false;
            let mut angle = false;
            while i < b.len() {
                match b[i] {
                    b'\\' if quoted => i += 1,
                    b'"' => quoted = !quoted,
                    b'<' if !quoted => angle = true,
                    b'>' if !quoted => angle = false,
                    b',' if !quoted && !angle => break,
                    _ => {}
                }
                i += 1;
            }
            let end = i.min(b.len());
            self.pos = end + 1;
            let part = self.v[start..end].trim();
            if !part.is_empty() {
                return Some(part);
            }
        }
        None
    }
}

/// CSeq: sequence number and method (RFC 3261 s20.16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    pub fn parse(v: &str) -> Result<CSeq, ParseError> {
        let mut it = v.split_ascii_whitespace();
        let n = it.next().ok_or(ParseError::BadCSeq)?;
        let m = it.next().ok_or(ParseError::BadCSeq)?;
        if it.next().is_some() {
            return Err(ParseError::BadCSeq);
        }
        // RFC 3261 s8.1.1.5: less than 2**31.
        let seq = parse_u32(n.as_bytes())
            .filter(|n| *n < 1 << 31)
            .ok_or(ParseError::BadCSeq)?;
        if !m.bytes().all(is_token) {
            return Err(ParseError::BadCSeq);
        }
        Ok(CSeq {
            seq,
            method: Method::from_token(m.as_bytes()),
        })
    }
}

/// Parameters after `;`, as (name, value) with value possibly empty.
pub fn params(s: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    s.split(';').skip(1).filter_map(|p| {
        let p = p.trim();
        if p.is_empty() {
            return None;
        }
        Some(match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        })
    })
}

/// Find a parameter by name, case-insensitively.
pub fn param<'a>(s: &'a str, name: &str) -> Option<Option<&'a str>> {
    params(s)
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// One Via value (RFC 3261 s20.42, RFC 3581 rport).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Via<'a> {
    pub raw: &'a str,
    pub transport: &'a str,
    pub host: &'a str,
    pub port: Option<u16>,
    pub branch: Option<&'a str>,
    /// `Some(None)` for a bare `;rport`, `Some(Some(p))` when filled in.
    pub rport: Option<Option<u16>>,
    pub received: Option<&'a str>,
}

impl<'a> Via<'a> {
    pub fn parse(v: &'a str) -> Result<Via<'a>, ParseError> {
        // sent-protocol: SIP / 2.0 / UDP, with optional LWS around slashes.
        let (proto, rest) = split_sent_protocol(v).ok_or(ParseError::BadVia)?;
        let (name, ver, transport) = proto;
        if !name.eq_ignore_ascii_case("SIP") || ver != "2.0" || transport.is_empty() {
            return Err(ParseError::BadVia);
        }
        let rest = rest.trim_start();
        let sent_by_end = rest.find([';', ' ', '\t']).unwrap_or(rest.len());
        let sent_by = &rest[..sent_by_end];
        let params_part = &rest[sent_by_end..];
        let (host, port) = split_host_port(sent_by).ok_or(ParseError::BadVia)?;
        let rport = match param(params_part, "rport") {
            None => None,
            Some(None) => Some(None),
            Some(Some(p)) => Some(Some(p.parse::<u16>().map_err(|_| ParseError::BadVia)?)),
        };
        Ok(Via {
            raw: v,
            transport,
            host,
            port,
            branch: param(params_part, "branch").flatten(),
            rport,
            received: param(params_part, "received").flatten(),
        })
    }
}

type SentProtocol<'a> = (&'a str, &'a str, &'a str);

fn split_sent_protocol(v: &str) -> Option<(SentProtocol<'_>, &str)> {
    let mut parts = [""; 3];
    let mut rest = v.trim_start();
    for (i, part) in parts.iter_mut().enumerate() {
        if i > 0 {
            rest = rest.trim_start().strip_prefix('/')?.trim_start();
        }
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c)))
            .unwrap_or(rest.len());
        *part = &rest[..end];
        rest = &rest[end..];
    }
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    // sent-by must follow after LWS.
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    Some(((parts[0], parts[1], parts[2]), rest))
}

/// Split `host[:port]`, with `[v6]` literals.
pub fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Some(rest) = s.strip_prefix('[') {
        let close = rest.find(']')?;
        let host = &s[..close + 2];
        let after = &rest[close + 1..];
        if after.is_empty() {
            return Some((host, None));
        }
        let port = after.strip_prefix(':')?.parse::<u16>().ok()?;
        return Some((host, Some(port)));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => {
            if h.is_empty() || h.contains(':') {
                return None;
            }
            Some((h, Some(p.parse::<u16>().ok()?)))
        }
        None => Some((s, None)),
    }
    .filter(|(h, _)| {
        h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    })
}

/// `name-addr` or `addr-spec` with header parameters (From, To, Contact; s20.10, s20.20, s20.39).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameAddr<'a> {
    pub display: Option<&'a str>,
    pub uri: &'a str,
    /// Header parameters (after the URI), starting with ';' or empty.
    pub params: &'a str,
}

impl<'a> NameAddr<'a> {
    pub fn parse(v: &'a str) -> Option<NameAddr<'a>> {
        let v = v.trim();
        if v.is_empty() {
            return None;
        }
        let b = v.as_bytes();
        // Display name: a quoted string, or tokens before '<'.
        let mut i = 0;
        let mut display = None;
        if b[0] == b'"' {
            i = 1;
            while i < b.len() {
                match b[i] {
                    b'\\' => i += 2,
                    b'"' => break,
                    _ => i += 1,
                }
            }
            if i >= b.len() {
                return None; // unterminated quoted string (RFC 4475 s3.1.2.7)
            }
            display = Some(&v[1..i]);
            i += 1;
        }
        let rest = &v[i..];
        if let Some(lt) = rest.find('<') {
            if display.is_none() {
                let d = rest[..lt].trim();
                if !d.is_empty() {
                    // An unquoted display name is tokens and LWS only (s25.1,
                    // RFC 4475 s3.1.2.15).
                    if !d.bytes().all(|b| is_token(b) || is_ws(b)) {
                        return None;
                    }
                    display = Some(d);
                }
            } else if !rest[..lt].trim().is_empty() {
                return None;
            }
            let after = &rest[lt + 1..];
            let gt = after.find('>')?;
            let uri = &after[..gt];
            // No whitespace inside <...> (RFC 4475 s3.1.2.14).
            if uri.trim().len() != uri.len() {
                return None;
            }
            let params = after[gt + 1..].trim();
            if uri.is_empty()
                || !uri.contains(':')
                || !(params.is_empty() || params.starts_with(';'))
            {
                return None;
            }
            Some(NameAddr {
                display,
                uri,
                params,
            })
        } else {
            if display.is_some() {
                return None;
            }
            // addr-spec: header params start at the first ';' (RFC 3261 s20.10: URI
            // params cannot appear without <>).
            let (uri, params) = match rest.find(';') {
                Some(p) => (&rest[..p], &rest[p..]),
                None => (rest, ""),
            };
            let uri = uri.trim();
            // Without <>, a URI with headers or commas is ambiguous (s20.10,
            // RFC 4475 s3.1.2.13).
            if uri.is_empty() || !uri.contains(':') || uri.contains([' ', '\t', ',', '?']) {
                return None;
            }
            Some(NameAddr {
                display: None,
                uri,
                params,
            })
        }
    }

    pub fn tag(&self) -> Option<&'a str> {
        param(self.params, "tag")
            .flatten()
            .filter(|t| !t.is_empty())
    }
}

/// A SIP or tel URI, split (RFC 3261 s19.1.1, RFC 3966).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SipUri<'a> {
    pub scheme: &'a str,
    pub user: Option<&'a str>,
    pub host: &'a str,
    pub port: Option<u16>,
    /// URI parameters, starting with ';' or empty.
    pub params: &'a str,
    /// URI headers after '?', or empty.
    pub headers: &'a str,
}

impl<'a> SipUri<'a> {
    pub fn parse(u: &'a str) -> Option<SipUri<'a>> {
        let (scheme, rest) = u.split_once(':')?;
        if scheme.eq_ignore_ascii_case("tel") {
            let end = rest.find(';').unwrap_or(rest.len());
            return Some(SipUri {
                scheme,
                user: Some(&rest[..end]),
                host: "",
                port: None,
                params: &rest[end..],
                headers: "",
            });
        }
        if !(scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")) {
            return None;
        }
        // userinfo ends at the first '@' ('@' cannot appear unescaped later, s25.1);
        // it may contain '?', ';' and ':' (user-unreserved, password).
        let (user, hostpart) = match rest.find('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let user = user.map(|u| u.split(':').next().unwrap_or(u));
        let hend = hostpart.find([';', '?']).unwrap_or(hostpart.len());
        let (host, port) = split_host_port(&hostpart[..hend])?;
        let tail = &hostpart[hend..];
        let (params, headers) = match tail.find('?') {
            Some(q) => (&tail[..q], &tail[q + 1..]),
            None => (tail, ""),
        };
        Some(SipUri {
            scheme,
            user,
            host,
            port,
            params,
            headers,
        })
    }
}

/// The telephone number in a URI's user part: visual separators removed
/// (RFC 3966 s5.1.1), user-params (`;phone-context=...`) cut, %-escapes kept out.
/// Returns the user part as is when it is not a number.
pub fn phone_number(user: &str) -> String {
    let user = user.split(';').next().unwrap_or(user);
    let decoded = percent_decode(user);
    let looks_numeric = decoded
        .chars()
        .all(|c| c.is_ascii_digit() || "+-.() ".contains(c))
        && decoded.chars().any(|c| c.is_ascii_digit());
    if looks_numeric {
        decoded
            .chars()
            .filter(|c| *c == '+' || c.is_ascii_digit())
            .collect()
    } else {
        decoded
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() && s.is_char_boundary(i + 3) {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &str) -> Result<SipMessage, ParseError> {
        SipMessage::parse(Bytes::copy_from_slice(s.as_bytes()))
    }

    const INVITE: &str = "INVITE sip:+15550100@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bK-1;rport\r\n\
From: \"Alice, A.\" <sip:+15550123@10.0.0.1>;tag=abc\r\n\
To: <sip:+15550100@127.0.0.1>\r\n\
Call-ID: 1-2@10.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@10.0.0.1:5061>\r\n\
Max-Forwards: 70\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

    #[test]
    fn parses_invite() {
        let m = msg(INVITE).unwrap();
        m.validate_request().unwrap();
        assert_eq!(m.method(), Some(Method::Invite));
        assert_eq!(m.request_uri(), Some("sip:+15550100@127.0.0.1:5060"));
        assert_eq!(m.call_id(), Some("1-2@10.0.0.1"));
        let cseq = m.cseq().unwrap();
        assert_eq!((cseq.seq, cseq.method), (1, Method::Invite));
        let via = m.top_via().unwrap();
        assert_eq!(via.transport, "UDP");
        assert_eq!(via.host, "10.0.0.1");
        assert_eq!(via.port, Some(5061));
        assert_eq!(via.branch, Some("z9hG4bK-1"));
        assert_eq!(via.rport, Some(None));
        let from = m.from().unwrap();
        assert_eq!(from.display, Some("Alice, A."));
        assert_eq!(from.tag(), Some("abc"));
        assert_eq!(m.to().unwrap().tag(), None);
        assert_eq!(m.body(), b"v=0\n");
    }

    #[test]
    fn compact_forms_and_folding() {
        let s = "OPTIONS sip:x@y SIP/2.0\r\nv: SIP/2.0/TCP h;branch=z9hG4bKa\r\nf: <sip:a@b>;tag=1\r\nt: sip:x@y\r\ni: cid\r\nCSeq: 5\r\n OPTIONS\r\nl: 0\r\n\r\n";
        let m = msg(s).unwrap();
        m.validate_request().unwrap();
        assert_eq!(m.call_id(), Some("cid"));
        assert_eq!(m.cseq().unwrap().seq, 5);
        assert_eq!(m.to().unwrap().uri, "sip:x@y");
    }

    #[test]
    fn via_list_split() {
        let s = "BYE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b:5070;branch=z9hG4bK2\r\nVia: SIP/2.0/UDP c\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>;tag=2\r\nCall-ID: c\r\nCSeq: 2 BYE\r\n\r\n";
        let m = msg(s).unwrap();
        m.validate_request().unwrap();
        let vias: Vec<_> = m.header_values(HeaderName::Via).collect();
        assert_eq!(vias.len(), 3);
        assert_eq!(Via::parse(vias[1]).unwrap().port, Some(5070));
    }

    #[test]
    fn errors() {
        const H: &str = "Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n";
        let bad = |s: String| msg(&s).unwrap().validate_request().unwrap_err();
        assert_eq!(msg("").unwrap_err(), ParseError::Empty);
        assert_eq!(
            msg("INVITE sip:a@b SIP/2.0\r\n").unwrap_err(),
            ParseError::Truncated
        );
        assert_eq!(
            bad(format!("INVITE sip:a@b SIP/7.0\r\n{H}\r\n")),
            ParseError::Version
        );
        assert_eq!(
            bad(format!("INVITE <sip:a@b> SIP/2.0\r\n{H}\r\n")),
            ParseError::RequestUri
        );
        assert_eq!(
            bad(format!(
                "INVITE sip:a@b SIP/2.0\r\n{H}Content-Length: 10\r\n\r\nabc"
            )),
            ParseError::BodyTruncated
        );
        assert_eq!(
            bad(format!(
                "INVITE sip:a@b SIP/2.0\r\n{H}Content-Length: -1\r\n\r\n"
            )),
            ParseError::ContentLength
        );
        assert_eq!(ParseError::Version.status(), 505);
        let m = msg("INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 BYE\r\n\r\n").unwrap();
        assert_eq!(m.validate_request(), Err(ParseError::CSeqMethodMismatch));
    }

    #[test]
    fn framing() {
        let one = "OPTIONS sip:x SIP/2.0\r\nContent-Length: 3\r\n\r\nabc";
        let two = format!("{one}{one}");
        assert_eq!(frame_len(two.as_bytes()), Framing::Complete(one.len()));
        assert_eq!(
            frame_len(&two.as_bytes()[..one.len() - 1]),
            Framing::Partial
        );
        assert_eq!(frame_len(b"\r\n\r\nOPT"), Framing::KeepAlive(4));
        assert!(matches!(
            frame_len(b"OPTIONS sip:x SIP/2.0\r\n\r\n"),
            Framing::Invalid(_)
        ));
    }

    #[test]
    fn uris_and_numbers() {
        let u = SipUri::parse("sip:+1-555-0100;phone-context=x@example.com:5070;transport=tcp")
            .unwrap();
        assert_eq!(u.host, "example.com");
        assert_eq!(u.port, Some(5070));
        assert_eq!(phone_number(u.user.unwrap()), "+15550100");
        let t = SipUri::parse("tel:+1(555)0100").unwrap();
        assert_eq!(phone_number(t.user.unwrap()), "+15550100");
        assert_eq!(phone_number("alice"), "alice");
        assert_eq!(phone_number("%2B15550100"), "+15550100");
    }
}
