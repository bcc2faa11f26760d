//! SIP digest authentication, server side (RFC 3261 s22.4, RFC 2617 s3).
//!
//! Where it sits: when a trunk is configured with a username and password, the
//! call core checks each new INVITE here before it routes the call. No
//! `Authorization`/`Proxy-Authorization` header, or one with an expired nonce,
//! gets a 401 whose `WWW-Authenticate` value comes from [`challenge`]; a header
//! is read with [`parse_credentials`] and checked with [`NonceSource::check`] and
//! [`verify`].
//!
//! What it owns: the digest arithmetic (MD5 and MD5-sess, with and without
//! `qop=auth`), the `auth-param` syntax of credentials and challenges, and
//! nonces. The client side ([`parse_challenge`], [`authorization`]) is here too,
//! for outbound calls through trunks that challenge us.
//!
//! Nonces are stateless so that any shard can check a nonce another shard issued
//! (the retried INVITE has a new Via branch and may land anywhere): a nonce is
//! the issue time and a keyed MD5 of that time and the realm, so only our secret
//! could have made it and its age can be read back. The price of statelessness is
//! that a nonce can be replayed until it is `max_age_s` old; we do not track `nc`
//! (RFC 2617 s3.2.2). For INVITE that is bounded by the caller also needing a
//! matching SIP dialog and by the short nonce lifetime.
//!
//! Sans-IO and allocation-free on the check path: time is passed in as Unix
//! seconds, parsing borrows the header value, hashing streams into MD5.

use md5::{Digest as _, Md5};
use std::borrow::Cow;
use std::fmt;

/// How far ahead of `now` an issue time may be and still count as ours in time:
/// shards derive wall-clock seconds separately, so they can disagree slightly.
const MAX_FUTURE_SKEW_S: u64 = 10;
/// Nonce = 16 hex digits of issue time + 32 hex digits of MAC.
const NONCE_LEN: usize = 16 + 32;

/// Issues and checks stateless nonces. Every shard holds a copy with the same
/// secret (made once at startup from a CSPRNG).
#[derive(Clone)]
pub struct NonceSource {
    secret: [u8; 16],
}

/// The verdict on a nonce from a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceCheck {
    /// Ours, for this realm, and fresh.
    Valid,
    /// Ours and for this realm, but too old (or from the future after a clock
    /// step): challenge again with `stale=true` (RFC 2617 s3.2.1) so the client
    /// retries with the same password without asking anyone.
    Stale,
    /// Not one we made, or for another realm: challenge afresh.
    Invalid,
}

impl fmt::Debug for NonceSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.write_str("NonceSource { .. }")
    }
}

impl NonceSource {
    pub fn new(secret: [u8; 16]) -> NonceSource {
        NonceSource { secret }
    }

    /// A fresh nonce for `realm`, issued at `now_unix` (seconds since the epoch).
    pub fn issue(&self, now_unix: u64, realm: &str) -> String {
        let mut out = String::with_capacity(NONCE_LEN);
        out.push_str(&format!("{now_unix:016x}"));
        out.push_str(std::str::from_utf8(&hex(&self.mac(now_unix, realm))).unwrap_or_default());
        out
    }

    /// Is `nonce` one we issued for `realm`, no more than `max_age_s` ago?
    pub fn check(&self, nonce: &str, now_unix: u64, realm: &str, max_age_s: u64) -> NonceCheck {
        let b = nonce.as_bytes();
        // All-hex and the exact length, checked first, also makes the slicing
        // below safe for any input.
        if b.len() != NONCE_LEN || !b.iter().all(u8::is_ascii_hexdigit) {
            return NonceCheck::Invalid;
        }
        let Ok(issued) = u64::from_str_radix(&nonce[..16], 16) else {
            return NonceCheck::Invalid;
        };
        let want = hex(&self.mac(issued, realm));
        if !ct_eq_hex(&b[16..], &want) {
            return NonceCheck::Invalid;
        }
        let too_old = now_unix.saturating_sub(issued) > max_age_s;
        let from_future = issued > now_unix.saturating_add(MAX_FUTURE_SKEW_S);
        if too_old || from_future {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }

    /// MD5(secret ":" time ":" realm ":" secret). The secret on both ends keeps
    /// MD5's length extension from producing a MAC for a longer message.
    fn mac(&self, issued: u64, realm: &str) -> [u8; 16] {
        let mut h = Md5::new();
        h.update(self.secret);
        h.update(format!(":{issued:016x}:").as_bytes());
        h.update(realm.as_bytes());
        h.update(b":");
        h.update(self.secret);
        h.finalize().into()
    }
}

/// The value of a `WWW-Authenticate` (or `Proxy-Authenticate`) header
/// (RFC 3261 s22.4, s25.1 `digest-cln`). We offer MD5 with `qop="auth"`, which
/// every SIP UA speaks; RFC 2617 s3.2.2 clients that ignore qop still work.
pub fn challenge(realm: &str, nonce: &str, stale: bool) -> String {
    let mut s = String::with_capacity(80 + realm.len() + nonce.len());
    s.push_str("Digest realm=\"");
    push_quoted(&mut s, realm);
    s.push_str("\", nonce=\"");
    push_quoted(&mut s, nonce);
    s.push_str("\", algorithm=MD5, qop=\"auth\"");
    if stale {
        s.push_str(", stale=true");
    }
    s
}

/// Quoted-string content (RFC 3261 s25.1): `"` and `\` escaped; control
/// characters dropped, so configuration text can never break the header line.
fn push_quoted(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
}

/// Parsed `Authorization` / `Proxy-Authorization` value (RFC 3261 s25.1
/// `dig-resp`). Fields borrow the header. Quoted values are given without their
/// quotes but with any backslash escapes still in them (`a\"b`): that is the
/// same text as the unescaped value in every real header, and [`verify`]
/// unescapes when it hashes. Use [`unquote`] for the exact value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credentials<'a> {
    pub username: &'a str,
    pub realm: &'a str,
    pub nonce: &'a str,
    /// The `digest-uri`; RFC 2617 s3.2.2.5 wants it to name the Request-URI.
    pub uri: &'a str,
    pub response: &'a str,
    pub algorithm: Option<&'a str>,
    pub qop: Option<&'a str>,
    pub nc: Option<&'a str>,
    pub cnonce: Option<&'a str>,
    pub opaque: Option<&'a str>,
}

impl Credentials<'_> {
    /// The username with escapes resolved.
    pub fn username_unescaped(&self) -> Cow<'_, str> {
        unquote(self.username)
    }
}

/// Why a credentials header could not be read. Maps to 400 or a fresh 401.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("authorization scheme is not Digest")]
    NotDigest,
    #[error("malformed auth-param at byte {at}")]
    Syntax { at: usize },
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    #[error("auth-param {0} given twice")]
    Duplicate(&'static str),
    #[error("auth-param {0} missing")]
    Missing(&'static str),
    #[error("unsupported {0}")]
    Unsupported(&'static str),
}

/// Resolve quoted-pair escapes (`\x` -> `x`, RFC 3261 s25.1). Borrows when there
/// are none, which is always in practice.
pub fn unquote(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The auth-params we read, by index into the parser's slots; the first five are
/// required (RFC 3261 s25.1 `dig-resp`).
const PARAMS: [&str; 10] = [
    "username",
    "realm",
    "nonce",
    "uri",
    "response",
    "algorithm",
    "qop",
    "nc",
    "cnonce",
    "opaque",
];

fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// RFC 3261 s25.1 `token` characters.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Parse a credentials header value: `Digest` then comma-separated
/// `name=value` pairs, in any order, names case-insensitive, values tokens or
/// quoted strings, linear white space (folded lines too) anywhere between.
/// Unknown parameters are skipped (RFC 2617 s3.2.2 `auth-param`).
pub fn parse_credentials(value: &str) -> Result<Credentials<'_>, DigestError> {
    let slots = parse_auth_params(value, &PARAMS)?;
    let required = |k: usize| slots[k].ok_or(DigestError::Missing(PARAMS[k]));
    Ok(Credentials {
        username: required(0)?,
        realm: required(1)?,
        nonce: required(2)?,
        uri: required(3)?,
        response: required(4)?,
        algorithm: slots[5],
        qop: slots[6],
        nc: slots[7],
        cnonce: slots[8],
        opaque: slots[9],
    })
}

/// `Digest` followed by auth-params; returns the values of `names`, by index.
/// Shared by credentials and challenges, which have the same syntax.
fn parse_auth_params<'a, const N: usize>(
    value: &'a str,
    names: &[&'static str; N],
) -> Result<[Option<&'a str>; N], DigestError> {
    let b = value.as_bytes();
    let mut i = 0;
    let skip_lws = |mut i: usize| {
        while i < b.len() && is_lws(b[i]) {
            i += 1;
        }
        i
    };
    i = skip_lws(i);
    let scheme_start = i;
    while i < b.len() && is_token(b[i]) {
        i += 1;
    }
    if !value[scheme_start..i].eq_ignore_ascii_case("Digest") || (i < b.len() && !is_lws(b[i])) {
        return Err(DigestError::NotDigest);
    }

    let mut slots: [Option<&str>; N] = [None; N];

    loop {
        // Empty list elements (",,") are allowed (RFC 3261 s7.3.1 `#rule`).
        while i < b.len() && (is_lws(b[i]) || b[i] == b',') {
            i += 1;
        }
        if i == b.len() {
            break;
        }
        let name_start = i;
        while i < b.len() && is_token(b[i]) {
            i += 1;
        }
        if i == name_start {
            return Err(DigestError::Syntax { at: i });
        }
        let name = &value[name_start..i];
        i = skip_lws(i);
        if i == b.len() || b[i] != b'=' {
            return Err(DigestError::Syntax { at: i });
        }
        i = skip_lws(i + 1);
        let val = if i < b.len() && b[i] == b'"' {
            let start = i + 1;
            let mut j = start;
            loop {
                match b.get(j) {
                    None => return Err(DigestError::UnterminatedQuote),
                    Some(b'"') => break,
                    // quoted-pair: the next byte is taken literally. It may be
                    // the first byte of a UTF-8 sequence; the only positions we
                    // slice at are ASCII quotes, so boundaries stay valid.
                    Some(b'\\') => j += 2,
                    Some(_) => j += 1,
                }
            }
            i = j + 1;
            &value[start..j]
        } else {
            let start = i;
            while i < b.len() && is_token(b[i]) {
                i += 1;
            }
            if i == start {
                return Err(DigestError::Syntax { at: i });
            }
            &value[start..i]
        };
        i = skip_lws(i);
        if i < b.len() && b[i] != b',' {
            return Err(DigestError::Syntax { at: i });
        }

        if let Some(k) = names.iter().position(|p| p.eq_ignore_ascii_case(name)) {
            // RFC 7616 s3.4: a repeated parameter makes the header invalid; taking
            // either copy would let a proxy and us disagree on what was signed.
            if slots[k].replace(val).is_some() {
                return Err(DigestError::Duplicate(names[k]));
            }
        }
    }
    Ok(slots)
}

/// Does `c.response` prove knowledge of `password` for this request? `method`
/// is the request's method (for ACK and CANCEL, RFC 3261 s22.1: INVITE's
/// credentials with their own method). Checks only the arithmetic: the caller
/// checks the nonce ([`NonceSource::check`]), the realm and the username.
///
/// RFC 2617 s3.2.2.1-3:
/// `HA1 = MD5(user:realm:password)` (MD5-sess: `MD5(HA1:nonce:cnonce)`),
/// `HA2 = MD5(method:uri)`, and the response is `MD5(HA1:nonce:HA2)` without
/// qop or `MD5(HA1:nonce:nc:cnonce:qop:HA2)` with `qop=auth`. `auth-int` and the
/// RFC 7616 SHA-256 algorithms are not offered and so not accepted.
pub fn verify(c: &Credentials<'_>, method: &str, password: &str) -> bool {
    let inputs = ResponseInputs {
        username: c.username,
        realm: c.realm,
        nonce: c.nonce,
        uri: c.uri,
        algorithm: c.algorithm,
        qop: c.qop,
        nc: c.nc,
        cnonce: c.cnonce,
    };
    match expected_response(&inputs, method, password) {
        Some(expected) => ct_eq_hex(c.response.as_bytes(), &expected),
        None => false,
    }
}

/// What goes into a digest response, every text in its quoted-string form
/// (escapes not yet resolved) as it appears in the header.
struct ResponseInputs<'a> {
    username: &'a str,
    realm: &'a str,
    nonce: &'a str,
    uri: &'a str,
    algorithm: Option<&'a str>,
    qop: Option<&'a str>,
    nc: Option<&'a str>,
    cnonce: Option<&'a str>,
}

/// The response digest (lower-case hex), or `None` for an algorithm or qop we do
/// not support or a qop/MD5-sess request without its `nc`/`cnonce`.
fn expected_response(c: &ResponseInputs<'_>, method: &str, password: &str) -> Option<[u8; 32]> {
    let sess = match c.algorithm {
        None => false,
        Some(a) if a.eq_ignore_ascii_case("MD5") => false,
        Some(a) if a.eq_ignore_ascii_case("MD5-sess") => true,
        Some(_) => return None,
    };
    let mut h = Md5::new();
    update_unq(&mut h, c.username);
    h.update(b":");
    update_unq(&mut h, c.realm);
    h.update(b":");
    h.update(password.as_bytes());
    let mut ha1 = hex(&h.finalize().into());
    if sess {
        // MD5-sess needs the client nonce; without it the header is not well formed.
        let cnonce = c.cnonce?;
        let mut h = Md5::new();
        h.update(ha1);
        h.update(b":");
        update_unq(&mut h, c.nonce);
        h.update(b":");
        update_unq(&mut h, cnonce);
        ha1 = hex(&h.finalize().into());
    }

    let mut h = Md5::new();
    h.update(method.as_bytes());
    h.update(b":");
    update_unq(&mut h, c.uri);
    let ha2 = hex(&h.finalize().into());

    let mut h = Md5::new();
    h.update(ha1);
    h.update(b":");
    update_unq(&mut h, c.nonce);
    h.update(b":");
    match c.qop {
        None => {}
        Some(q) if q.eq_ignore_ascii_case("auth") => {
            update_unq(&mut h, c.nc?);
            h.update(b":");
            update_unq(&mut h, c.cnonce?);
            h.update(b":");
            update_unq(&mut h, q);
            h.update(b":");
        }
        Some(_) => return None,
    }
    h.update(ha2);
    Some(hex(&h.finalize().into()))
}

/// A parsed `WWW-Authenticate` / `Proxy-Authenticate` value (RFC 3261 s25.1
/// `digest-cln`), for when we are the client: outbound calls through a trunk
/// that challenges. Quoted values keep their escapes, as in [`Credentials`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Challenge<'a> {
    pub realm: &'a str,
    pub nonce: &'a str,
    pub opaque: Option<&'a str>,
    pub algorithm: Option<&'a str>,
    /// The offered qop list, e.g. `auth` or `auth,auth-int`.
    pub qop: Option<&'a str>,
    /// RFC 2617 s3.2.1: the previous nonce expired; retry without asking anyone.
    pub stale: bool,
}

const CHALLENGE_PARAMS: [&str; 6] = ["realm", "nonce", "opaque", "algorithm", "qop", "stale"];

/// Parse a challenge header value (same syntax as credentials).
pub fn parse_challenge(value: &str) -> Result<Challenge<'_>, DigestError> {
    let slots = parse_auth_params(value, &CHALLENGE_PARAMS)?;
    Ok(Challenge {
        realm: slots[0].ok_or(DigestError::Missing("realm"))?,
        nonce: slots[1].ok_or(DigestError::Missing("nonce"))?,
        opaque: slots[2],
        algorithm: slots[3],
        qop: slots[4],
        stale: slots[5].is_some_and(|v| v.eq_ignore_ascii_case("true")),
    })
}

/// Who we are and what we ask, for [`authorization`].
#[derive(Clone, Copy, Debug)]
pub struct ClientRequest<'a> {
    pub username: &'a str,
    pub password: &'a str,
    pub method: &'a str,
    /// The Request-URI of the request being authorized.
    pub uri: &'a str,
    /// A fresh random client nonce (the caller's RNG: this module has none).
    pub cnonce: &'a str,
    /// How many requests this nonce has authorized, including this one (from 1).
    pub nc: u32,
}

/// The `Authorization` / `Proxy-Authorization` value answering `ch`
/// (RFC 2617 s3.2.2). Uses `qop=auth` when offered, else the RFC 2069 form.
pub fn authorization(ch: &Challenge<'_>, req: &ClientRequest<'_>) -> Result<String, DigestError> {
    let qop = match ch.qop {
        None => None,
        Some(list)
            if list
                .split(',')
                .any(|q| q.trim().eq_ignore_ascii_case("auth")) =>
        {
            Some("auth")
        }
        Some(_) => return Err(DigestError::Unsupported("qop")),
    };
    let mut username = String::new();
    push_quoted(&mut username, req.username);
    let mut uri = String::new();
    push_quoted(&mut uri, req.uri);
    let mut cnonce = String::new();
    push_quoted(&mut cnonce, req.cnonce);
    let nc = format!("{:08x}", req.nc);
    let inputs = ResponseInputs {
        username: &username,
        realm: ch.realm,
        nonce: ch.nonce,
        uri: &uri,
        algorithm: ch.algorithm,
        qop,
        nc: Some(&nc),
        cnonce: Some(&cnonce),
    };
    let response = expected_response(&inputs, req.method, req.password)
        .ok_or(DigestError::Unsupported("algorithm"))?;
    let response = std::str::from_utf8(&response).unwrap_or_default();
    let mut out = format!(
        "Digest username=\"{username}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{response}\"",
        ch.realm, ch.nonce
    );
    if let Some(alg) = ch.algorithm {
        out.push_str(", algorithm=");
        out.push_str(if alg.eq_ignore_ascii_case("MD5-sess") {
            "MD5-sess"
        } else {
            "MD5"
        });
    }
    if let Some(qop) = qop {
        out.push_str(&format!(", qop={qop}, nc={nc}, cnonce=\"{cnonce}\""));
    } else if ch
        .algorithm
        .is_some_and(|a| a.eq_ignore_ascii_case("MD5-sess"))
    {
        // MD5-sess hashes the cnonce into HA1 even without qop.
        out.push_str(&format!(", cnonce=\"{cnonce}\""));
    }
    if let Some(opaque) = ch.opaque {
        out.push_str(&format!(", opaque=\"{opaque}\""));
    }
    Ok(out)
}

/// Feed a possibly escaped quoted-string body into the hash, unescaped, without
/// allocating.
fn update_unq(h: &mut Md5, raw: &str) {
    let mut rest = raw.as_bytes();
    while let Some(pos) = rest.iter().position(|b| *b == b'\\') {
        h.update(&rest[..pos]);
        // The escaped byte, if the string does not end in a lone backslash.
        if let Some(next) = rest.get(pos + 1) {
            h.update([*next]);
        }
        rest = rest.get(pos + 2..).unwrap_or_default();
    }
    h.update(rest);
}

/// Lower-case hex of an MD5 digest (RFC 2617 s3.1.3 `LHEX`).
fn hex(d: &[u8; 16]) -> [u8; 32] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, byte) in d.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(byte >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(byte & 0x0f)];
    }
    out
}

/// Compare client hex against our lower-case hex in time independent of where
/// they differ, so response timing does not leak how many leading digits were
/// right. Upper-case client hex is accepted (some UAs send it).
fn ct_eq_hex(theirs: &[u8], ours: &[u8; 32]) -> bool {
    if theirs.len() != ours.len() {
        return false;
    }
    let diff = theirs
        .iter()
        .zip(ours)
        .fold(0u8, |acc, (a, b)| acc | (a.to_ascii_lowercase() ^ b));
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 16] = *b"0123456789abcdef";
    const T0: u64 = 1_700_000_000;

    /// Our SIP vector: alice / s3cret in realm "switchboard", INVITE to this URI.
    /// Expected responses computed independently with coreutils:
    /// `m(){ printf '%s' "$1" | md5sum | cut -d' ' -f1; }`
    /// `HA1=$(m alice:switchboard:s3cret); HA2=$(m INVITE:sip:+15551234567@gw.example.com)`
    /// `m "$HA1:$N:$HA2"` and `m "$HA1:$N:0000002a:f00dcafe:auth:$HA2"`,
    /// MD5-sess: `S=$(m "$HA1:$N:f00dcafe"); m "$S:$N:0000002a:f00dcafe:auth:$HA2"`.
    const N: &str = "0000000065f1a2b3abcdefabcdefabcdefabcdefabcdefab";
    const URI: &str = "sip:+15551234567@gw.example.com";
    const NO_QOP: &str = "75693c24be21fea46b7d90f2ed0f130e";
    const WITH_QOP: &str = "191d466eb4d8a332d86948af61a4029b";
    const SESS: &str = "1dd8b1e6e8fdd2a0f89af7956178ac29";

    fn sip_header(response: &str, extra: &str) -> String {
        format!(
            "Digest username=\"alice\", realm=\"switchboard\", nonce=\"{N}\", uri=\"{URI}\", response=\"{response}\"{extra}"
        )
    }

    #[test]
    fn rfc2617_section_3_5_example() {
        // RFC 2617 s3.5, with its HTTP method; the arithmetic is the same for SIP.
        let h = r#"Digest username="Mufasa",
                 realm="testrealm@host.com",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 uri="/dir/index.html",
                 qop=auth,
                 nc=00000001,
                 cnonce="0a4f113b",
                 response="6629fae49393a05397450978507c4ef1",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let c = parse_credentials(h).unwrap();
        assert_eq!(c.username, "Mufasa");
        assert_eq!(c.opaque, Some("5ccc069c403ebaf9f0171e9517f40e41"));
        assert!(verify(&c, "GET", "Circle Of Life"));
        assert!(!verify(&c, "GET", "circle of life"));
        assert!(!verify(&c, "POST", "Circle Of Life"));
    }

    #[test]
    fn sip_vector_without_qop() {
        let h = sip_header(NO_QOP, ", algorithm=MD5");
        let c = parse_credentials(&h).unwrap();
        assert!(verify(&c, "INVITE", "s3cret"));
        assert!(!verify(&c, "INVITE", "s3cret "));
        assert!(!verify(&c, "BYE", "s3cret"));
        // Without the algorithm parameter MD5 is implied.
        let h = sip_header(NO_QOP, "");
        assert!(verify(&parse_credentials(&h).unwrap(), "INVITE", "s3cret"));
        // Upper-case hex from the client is the same number.
        let h = sip_header(&NO_QOP.to_ascii_uppercase(), "");
        assert!(verify(&parse_credentials(&h).unwrap(), "INVITE", "s3cret"));
    }

    #[test]
    fn sip_vector_with_qop_auth() {
        let h = sip_header(
            WITH_QOP,
            ", algorithm=MD5, qop=auth, nc=0000002a, cnonce=\"f00dcafe\"",
        );
        let c = parse_credentials(&h).unwrap();
        assert!(verify(&c, "INVITE", "s3cret"));
        assert!(!verify(&c, "INVITE", "wrong"));
        // The same response claimed for another nonce count does not verify.
        let h = sip_header(WITH_QOP, ", qop=auth, nc=0000002b, cnonce=\"f00dcafe\"");
        assert!(!verify(&parse_credentials(&h).unwrap(), "INVITE", "s3cret"));
        // qop=auth without cnonce/nc is malformed and fails.
        let h = sip_header(WITH_QOP, ", qop=auth");
        assert!(!verify(&parse_credentials(&h).unwrap(), "INVITE", "s3cret"));
        // Quoted qop (a common client bug) is tolerated.
        let h = sip_header(WITH_QOP, ", qop=\"auth\", nc=0000002a, cnonce=\"f00dcafe\"");
        assert!(verify(&parse_credentials(&h).unwrap(), "INVITE", "s3cret"));
    }

    #[test]
    fn md5_sess_and_unsupported_algorithms() {
        let h = sip_header(
            SESS,
            ", algorithm=MD5-sess, qop=auth, nc=0000002a, cnonce=\"f00dcafe\"",
        );
        assert!(verify(&parse_credentials(&h).unwrap(), "INVITE", "s3cret"));
        let h = sip_header(
            SESS,
            ", algorithm=md5-SESS, qop=auth, nc=0000002a, cnonce=\"f00dcafe\"",
        );
        assert!(verify(&parse_credentials(&h).unwrap(), "INVITE", "s3cret"));
        let h = sip_header(NO_QOP, ", algorithm=SHA-256");
        assert!(!verify(&parse_credentials(&h).unwrap(), "INVITE", "s3cret"));
        let h = sip_header(WITH_QOP, ", qop=auth-int, nc=0000002a, cnonce=\"f00dcafe\"");
        assert!(!verify(&parse_credentials(&h).unwrap(), "INVITE", "s3cret"));
    }

    #[test]
    fn escaped_username_is_hashed_unescaped() {
        // `printf '%s' 'a"b:switchboard:pw' | md5sum` as HA1, then no-qop response.
        let h = format!(
            "Digest username=\"a\\\"b\", realm=\"switchboard\", nonce=\"{N}\", uri=\"{URI}\", \
             response=\"c88b72d93c2f76bb323819b3ade71319\""
        );
        let c = parse_credentials(&h).unwrap();
        assert_eq!(c.username, "a\\\"b");
        assert_eq!(c.username_unescaped(), "a\"b");
        assert!(verify(&c, "INVITE", "pw"));
        assert_eq!(unquote("x\\\\y\\"), "x\\y");
        assert!(matches!(unquote("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn parse_odd_spacing_quoting_order_and_case() {
        let h = format!(
            "  dIGEST\tcnonce = \"f00dcafe\" ,,NC=0000002a,\r\n qop= auth ,RESPONSE=\"{WITH_QOP}\",\
             uri=\"{URI}\" , Nonce=\"{N}\",x-unknown=\"a,b=c\", realm=switchboard,\r\n\tusername=\"alice\"  "
        );
        let c = parse_credentials(&h).unwrap();
        assert_eq!(
            c,
            Credentials {
                username: "alice",
                realm: "switchboard",
                nonce: N,
                uri: URI,
                response: WITH_QOP,
                algorithm: None,
                qop: Some("auth"),
                nc: Some("0000002a"),
                cnonce: Some("f00dcafe"),
                opaque: None,
            }
        );
        assert!(verify(&c, "INVITE", "s3cret"));
        // Empty quoted values are values.
        let h = sip_header(NO_QOP, ", opaque=\"\"");
        assert_eq!(parse_credentials(&h).unwrap().opaque, Some(""));
    }

    #[test]
    fn parse_errors() {
        let full = sip_header(NO_QOP, "");
        assert_eq!(
            parse_credentials("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            Err(DigestError::NotDigest)
        );
        assert_eq!(parse_credentials(""), Err(DigestError::NotDigest));
        assert_eq!(
            parse_credentials("Digestusername=\"a\""),
            Err(DigestError::NotDigest)
        );
        assert_eq!(
            parse_credentials("Digest"),
            Err(DigestError::Missing("username"))
        );
        assert_eq!(
            parse_credentials(&full.replace("uri=", "uri=\"x\", uri=")),
            Err(DigestError::Duplicate("uri"))
        );
        assert_eq!(
            parse_credentials(&full.replace(&format!(", response=\"{NO_QOP}\""), "")),
            Err(DigestError::Missing("response"))
        );
        assert_eq!(
            parse_credentials("Digest username=\"alice"),
            Err(DigestError::UnterminatedQuote)
        );
        assert_eq!(
            parse_credentials("Digest username=\"alice\\\""),
            Err(DigestError::UnterminatedQuote)
        );
        assert!(matches!(
            parse_credentials("Digest username"),
            Err(DigestError::Syntax { .. })
        ));
        assert!(matches!(
            parse_credentials("Digest username="),
            Err(DigestError::Syntax { .. })
        ));
        assert!(matches!(
            parse_credentials("Digest =x"),
            Err(DigestError::Syntax { .. })
        ));
        assert!(matches!(
            parse_credentials("Digest a=\"b\"c"),
            Err(DigestError::Syntax { .. })
        ));
        assert!(matches!(
            parse_credentials("Digest a=b c=d"),
            Err(DigestError::Syntax { .. })
        ));
        assert!(matches!(
            parse_credentials("Digest a=é"),
            Err(DigestError::Syntax { .. })
        ));
        // A mangled response never verifies, whatever its length.
        for resp in [
            "",
            "0",
            &NO_QOP[..31],
            &format!("{NO_QOP}0"),
            "zz693c24be21fea46b7d90f2ed0f130e",
        ] {
            let h = sip_header(resp, "");
            assert!(
                !verify(&parse_credentials(&h).unwrap(), "INVITE", "s3cret"),
                "{resp}"
            );
        }
    }

    #[test]
    fn nonces_fresh_stale_forged() {
        let src = NonceSource::new(SECRET);
        let n = src.issue(T0, "switchboard");
        assert_eq!(n.len(), NONCE_LEN);
        assert!(n.starts_with(&format!("{T0:016x}")));
        assert_eq!(src.check(&n, T0, "switchboard", 300), NonceCheck::Valid);
        assert_eq!(
            src.check(&n, T0 + 300, "switchboard", 300),
            NonceCheck::Valid
        );
        assert_eq!(
            src.check(&n, T0 + 301, "switchboard", 300),
            NonceCheck::Stale
        );
        // A little skew between shards is fine; a nonce from far in the future is stale.
        assert_eq!(src.check(&n, T0 - 5, "switchboard", 300), NonceCheck::Valid);
        assert_eq!(
            src.check(&n, T0 - 3600, "switchboard", 300),
            NonceCheck::Stale
        );
        // Another realm, another secret, a changed time or MAC digit: not ours.
        assert_eq!(src.check(&n, T0, "other", 300), NonceCheck::Invalid);
        assert_eq!(
            NonceSource::new([7; 16]).check(&n, T0, "switchboard", 300),
            NonceCheck::Invalid
        );
        let later = format!("{:016x}{}", T0 + 100, &n[16..]);
        assert_eq!(
            src.check(&later, T0 + 100, "switchboard", 300),
            NonceCheck::Invalid
        );
        let mut forged = n.clone().into_bytes();
        forged[40] = if forged[40] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            src.check(
                std::str::from_utf8(&forged).unwrap(),
                T0,
                "switchboard",
                300
            ),
            NonceCheck::Invalid
        );
        // Upper-case hex of a valid nonce is still the same nonce to us.
        assert_eq!(
            src.check(&n.to_ascii_uppercase(), T0, "switchboard", 300),
            NonceCheck::Valid
        );
        for junk in [
            "",
            "abc",
            &n[1..],
            &format!("{n}0"),
            &"é".repeat(24),
            &"g".repeat(48),
        ] {
            assert_eq!(
                src.check(junk, T0, "switchboard", 300),
                NonceCheck::Invalid,
                "{junk}"
            );
        }
        // Shards with the same secret agree.
        assert_eq!(
            src.clone().check(&n, T0 + 1, "switchboard", 300),
            NonceCheck::Valid
        );
        assert_eq!(format!("{src:?}"), "NonceSource { .. }");
    }

    #[test]
    fn challenge_text() {
        assert_eq!(
            challenge("switchboard", "abc", false),
            "Digest realm=\"switchboard\", nonce=\"abc\", algorithm=MD5, qop=\"auth\""
        );
        assert_eq!(
            challenge("a\"b\\c\r\nX: y", "abc", true),
            "Digest realm=\"a\\\"b\\\\cX: y\", nonce=\"abc\", algorithm=MD5, qop=\"auth\", stale=true"
        );
    }

    /// A UA's side of the exchange, written from RFC 2617 independently of
    /// `verify`, to check a full challenge -> credentials -> verify round trip.
    fn ua_response(
        realm: &str,
        nonce: &str,
        user: &str,
        pass: &str,
        method: &str,
        uri: &str,
    ) -> String {
        let m = |s: String| format!("{:x}", Md5::digest(s.as_bytes()));
        let ha1 = m(format!("{user}:{realm}:{pass}"));
        let ha2 = m(format!("{method}:{uri}"));
        let resp = m(format!("{ha1}:{nonce}:00000001:deadbeef:auth:{ha2}"));
        format!(
            "Digest username=\"{user}\",realm=\"{realm}\",nonce=\"{nonce}\",uri=\"{uri}\",\
             response=\"{resp}\",algorithm=MD5,cnonce=\"deadbeef\",qop=auth,nc=00000001"
        )
    }

    #[test]
    fn round_trip_through_challenge() {
        let src = NonceSource::new(SECRET);
        let nonce = src.issue(T0, "sip.example.net");
        let chal = challenge("sip.example.net", &nonce, false);
        // The UA picks the nonce out of the challenge.
        let quoted = chal
            .split("nonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let h = ua_response(
            "sip.example.net",
            quoted,
            "trunk1",
            "pa55",
            "INVITE",
            "sip:100@10.0.0.5",
        );
        let c = parse_credentials(&h).unwrap();
        assert_eq!(src.check(c.nonce, T0 + 2, c.realm, 60), NonceCheck::Valid);
        assert!(verify(&c, "INVITE", "pa55"));
        assert!(!verify(&c, "INVITE", "pa56"));
    }

    #[test]
    fn client_answers_a_challenge_with_the_known_vector() {
        let chal =
            format!("Digest realm=\"switchboard\", nonce=\"{N}\", algorithm=MD5, qop=\"auth\"");
        let ch = parse_challenge(&chal).unwrap();
        assert_eq!(
            ch,
            Challenge {
                realm: "switchboard",
                nonce: N,
                opaque: None,
                algorithm: Some("MD5"),
                qop: Some("auth"),
                stale: false
            }
        );
        let req = ClientRequest {
            username: "alice",
            password: "s3cret",
            method: "INVITE",
            uri: URI,
            cnonce: "f00dcafe",
            nc: 42,
        };
        let value = authorization(&ch, &req).unwrap();
        assert_eq!(
            value,
            format!(
                "Digest username=\"alice\", realm=\"switchboard\", nonce=\"{N}\", uri=\"{URI}\", \
                 response=\"{WITH_QOP}\", algorithm=MD5, qop=auth, nc=0000002a, cnonce=\"f00dcafe\""
            )
        );
        let c = parse_credentials(&value).unwrap();
        assert!(verify(&c, "INVITE", "s3cret"));

        // RFC 2069 style (no qop offered), MD5 implied.
        let text = format!("Digest realm=\"switchboard\",nonce=\"{N}\"");
        let ch = parse_challenge(&text).unwrap();
        let value = authorization(&ch, &req).unwrap();
        assert!(value.contains(&format!("response=\"{NO_QOP}\"")), "{value}");
        assert!(!value.contains("qop"));

        // MD5-sess.
        let text = format!(
            "Digest realm=switchboard,nonce=\"{N}\",algorithm=MD5-sess,qop=\"auth,auth-int\""
        );
        let ch = parse_challenge(&text).unwrap();
        let value = authorization(&ch, &req).unwrap();
        assert!(value.contains(&format!("response=\"{SESS}\"")), "{value}");
        assert!(verify(
            &parse_credentials(&value).unwrap(),
            "INVITE",
            "s3cret"
        ));
    }

    #[test]
    fn client_side_details() {
        // Asterisk-style challenge: opaque echoed, lower-case algorithm, stale flag.
        let ch = parse_challenge(
            "Digest  realm=\"asterisk\",nonce=\"1700000000/0123abcd\",opaque=\"5f1e\",algorithm=md5,qop=\"auth\",stale=TRUE",
        )
        .unwrap();
        assert!(ch.stale);
        let req = ClientRequest {
            username: "we\"ird",
            password: "pw",
            method: "INVITE",
            uri: "sip:100@pbx.example.com",
            cnonce: "c1",
            nc: 1,
        };
        let value = authorization(&ch, &req).unwrap();
        assert!(
            value.starts_with("Digest username=\"we\\\"ird\", realm=\"asterisk\""),
            "{value}"
        );
        assert!(value.ends_with(", opaque=\"5f1e\""), "{value}");
        let c = parse_credentials(&value).unwrap();
        assert_eq!(c.username_unescaped(), "we\"ird");
        assert!(verify(&c, "INVITE", "pw"));
        assert!(!verify(&c, "INVITE", "pW"));
        // Our own challenge parses back.
        let text = challenge("switchboard", "abc", true);
        let ours = parse_challenge(&text).unwrap();
        assert_eq!(
            (ours.realm, ours.nonce, ours.qop, ours.stale),
            ("switchboard", "abc", Some("auth"), true)
        );
        // What we cannot do, we say.
        let ch = parse_challenge("Digest realm=r, nonce=n, qop=\"auth-int\"").unwrap();
        assert_eq!(
            authorization(&ch, &req),
            Err(DigestError::Unsupported("qop"))
        );
        let ch = parse_challenge("Digest realm=r, nonce=n, algorithm=SHA-256").unwrap();
        assert_eq!(
            authorization(&ch, &req),
            Err(DigestError::Unsupported("algorithm"))
        );
        assert_eq!(
            parse_challenge("Digest nonce=n"),
            Err(DigestError::Missing("realm"))
        );
        assert_eq!(
            parse_challenge("Basic realm=\"x\""),
            Err(DigestError::NotDigest)
        );
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            #[test]
            fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
                if let Ok(c) = parse_credentials(&s) {
                    let _ = verify(&c, "INVITE", "pw");
                }
                let _ = NonceSource::new(SECRET).check(&s, T0, "r", 60);
                if let Ok(ch) = parse_challenge(&s) {
                    let req = ClientRequest { username: "u", password: "p", method: "INVITE", uri: "sip:x", cnonce: "c", nc: 1 };
                    if let Ok(v) = authorization(&ch, &req) {
                        // Whatever we were challenged with, our answer is well formed.
                        let c = parse_credentials(&v).expect("our credentials parse");
                        prop_assert!(verify(&c, "INVITE", "p"));
                    }
                }
            }

            #[test]
            fn header_like_text_never_panics(
                parts in proptest::collection::vec(
                    "(username|realm|nonce|uri|response|qop|nc|cnonce|algorithm|opaque|stale|x)[ \t]*=[ \t]*(\"([^\"\\\\]|\\\\.){0,12}\"?|[a-zA-Z0-9-]{0,10}|\\\\)",
                    0..12,
                ),
                sep in "[ ,\t\r\n]{1,3}",
            ) {
                let s = format!("Digest {}", parts.join(&sep));
                if let Ok(c) = parse_credentials(&s) {
                    let _ = verify(&c, "INVITE", "pw");
                    let _ = c.username_unescaped();
                }
                if let Ok(ch) = parse_challenge(&s) {
                    let req = ClientRequest { username: "u\"\\", password: "p", method: "INVITE", uri: "sip:x", cnonce: "c", nc: 7 };
                    if let Ok(v) = authorization(&ch, &req) {
                        let c = parse_credentials(&v).expect("our credentials parse");
                        prop_assert!(verify(&c, "INVITE", "p"));
                    }
                }
            }
        }
    }
}
