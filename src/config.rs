//! Configuration: the TOML file given with `--config FILE`, and the embedded
//! defaults of `--dev`.
//!
//! Where it sits: read once at start-up, before any shard runs; the resolved
//! [`Config`] is shared read-only (`Arc`) by every shard. It owns the file
//! format, the defaults and validation; trunk matching and dispatch rules
//! themselves live in [`crate::routing`].
//!
//! Every refusal names the file, the line and the key, e.g.
//! `config.toml:14: dispatch_rules[1].type: unknown rule type "calle" (expected
//! direct, individual or callee)`, so an operator can fix the file without
//! guessing. Unknown keys are refused (a typo must not silently become a
//! default). Things that are suspicious but legal (an id without LiveKit's
//! `ST_`/`SDR_` prefix, trunks that overlap) become [`ConfigWarning`]s.
//!
//! The parse keeps `toml::Spanned` positions in private "raw" structs; the
//! public result is plain data. To add a section (`[livekit]`, ...): a raw
//! struct, a field in `RawConfig`, a resolved struct and a `resolve_*` step.
//! `docs/configuration.md` is the operator's reference: keep it in step.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::livekit::token::KeyStore;
use crate::routing::dispatch::MAX_PIN_LEN;
use crate::routing::trunk::normalize_number;
use crate::routing::{
    AddressRange, AddressRangeError, AuthChallenge, DispatchRule, RuleKind, Trunk, TrunkAuth,
};
use crate::sdp::{Codec, CodecPrefs};

/// The configuration `switchboard --dev` runs with: SIP on 127.0.0.1:5060 (UDP
/// and TCP), one trunk taking any number from any address without
/// authentication, and one callee rule, so two callers of the same number
/// share the room `call_<number>`.
pub const DEV_CONFIG: &str = r#"# switchboard --dev
[sip]
bind = "127.0.0.1"
port = 5060

[[trunks]]
id = "ST_dev"
name = "dev"

[[dispatch_rules]]
id = "SDR_dev"
name = "dev"
type = "callee"
room_prefix = "call-"

[livekit]
port = 7880

[[livekit.keys]]
key = "devkey"
secret = "secret"
"#;

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub sip: SipConfig,
    pub rtp: RtpConfig,
    pub shutdown: ShutdownConfig,
    pub metrics: MetricsConfig,
    pub livekit: LiveKitConfig,
    /// In file order (the order breaks ties between overlapping trunks).
    pub trunks: Vec<Trunk>,
    /// In file order (the order breaks the last ties between rules).
    pub dispatch_rules: Vec<DispatchRule>,
    /// Legal but suspicious settings; [`Config::load`] logs them.
    pub warnings: Vec<ConfigWarning>,
}

/// `[server]`
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ServerConfig {
    /// Executor threads; `None` = the number of cores the process may use
    /// (resolved by the runtime).
    pub shards: Option<usize>,
}

/// `[sip]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipConfig {
    /// Address of the SIP UDP and TCP sockets.
    pub bind: IpAddr,
    pub port: u16,
    pub udp: bool,
    pub tcp: bool,
    /// Address advertised in Contact and SDP. `None`: `bind` if it is a
    /// specific address, else resolved by the runtime (first non-loopback
    /// IPv4 of the host, else 127.0.0.1).
    pub external_ip: Option<IpAddr>,
    /// Value of our `User-Agent` and `Server` headers.
    pub user_agent: String,
    /// Digest authentication realm (RFC 3261 s22.1).
    pub realm: String,
    /// How long to ring (180) before answering (200); 0 = answer at once.
    pub answer_delay_ms: u64,
}

/// `[rtp]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpConfig {
    /// First RTP port, inclusive; the range is split between shards.
    pub port_min: u16,
    /// Last RTP port, inclusive.
    pub port_max: u16,
    /// A call with no RTP from the caller for this long is ended.
    pub media_timeout_secs: u64,
    /// The same while the call is on hold (RFC 3264 s8.4): a held phone may
    /// send nothing, so `media_timeout_secs` does not apply then.
    pub hold_timeout_secs: u64,
}

impl RtpConfig {
    pub fn media_timeout(&self) -> Duration {
        Duration::from_secs(self.media_timeout_secs)
    }

    pub fn hold_timeout(&self) -> Duration {
        Duration::from_secs(self.hold_timeout_secs)
    }
}

/// `[shutdown]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShutdownConfig {
    /// At SIGTERM, how long to wait for the BYEs to complete.
    pub grace_secs: u64,
}

impl ShutdownConfig {
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_secs)
    }
}

/// `[metrics]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Port of the Prometheus `/metrics` endpoint; 0 = no endpoint.
    pub port: u16,
}

/// `[livekit]`: the port LiveKit SDKs connect to (HTTP validate and the
/// signaling WebSocket, `src/runtime/livekit_http.rs`) and the API keys their
/// access tokens are signed with.
#[derive(Clone, Debug)]
pub struct LiveKitConfig {
    /// TCP port of `/rtc`, `/rtc/v1` and their `validate` endpoints, on
    /// `sip.bind`; 0 = off.
    pub port: u16,
    /// API key -> secret (`Debug` never shows the secrets). Empty: the LiveKit
    /// port stays closed, since no token could ever be accepted.
    pub keys: KeyStore,
    /// First UDP port of WebRTC media (ICE-lite host candidates): shard `i`
    /// listens on `rtc_port + i`. 0: each shard takes an ephemeral port.
    pub rtc_port: u16,
}

impl LiveKitConfig {
    /// Whether the runtime opens the LiveKit port.
    pub fn enabled(&self) -> bool {
        self.port != 0 && !self.keys.is_empty()
    }
}

pub const DEFAULT_LIVEKIT_PORT: u16 = 7880;
/// `[livekit] rtc_port`: livekit-server's default UDP port is 7882.
pub const DEFAULT_RTC_PORT: u16 = 7882;
pub const DEFAULT_SIP_PORT: u16 = 5060;
pub const DEFAULT_RTP_PORT_MIN: u16 = 10000;
pub const DEFAULT_RTP_PORT_MAX: u16 = 20000;
pub const DEFAULT_MEDIA_TIMEOUT_SECS: u64 = 30;
/// `rtp.hold_timeout_secs`: an hour of silence on hold, then the call is ended.
pub const DEFAULT_HOLD_TIMEOUT_SECS: u64 = 3600;
pub const DEFAULT_GRACE_SECS: u64 = 5;
pub const DEFAULT_METRICS_PORT: u16 = 6789;
pub const DEFAULT_USER_AGENT: &str = "switchboard";
pub const DEFAULT_REALM: &str = "switchboard";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// A syntax error or a refused value, at `line` (1-based) of `file`.
    /// `key` is the dotted path (`trunks[0].allowed_addresses[2]`), empty when
    /// the error is not about one key.
    #[error("{file}:{line}: {}{problem}", key_prefix(key))]
    Invalid {
        file: String,
        line: usize,
        key: String,
        problem: Problem,
    },
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

impl ConfigError {
    /// The line an [`ConfigError::Invalid`] points at.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => Some(*line),
            ConfigError::Read { .. } => None,
        }
    }

    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ConfigError::Invalid { problem, .. } => Some(problem),
            ConfigError::Read { .. } => None,
        }
    }
}

/// What is wrong at a key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// TOML syntax, an unknown key or a value of the wrong type (toml's words).
    #[error("{0}")]
    Syntax(String),
    #[error("required key is missing")]
    Missing,
    #[error("must not be empty")]
    Empty,
    #[error("\"{0}\" is not an IP address")]
    NotAnIp(String),
    #[error("must be a specific address, not {0}")]
    Unspecified(IpAddr),
    #[error("must be at least 1")]
    Zero,
    #[error("at least one of sip.udp and sip.tcp must be true")]
    NoTransport,
    #[error("port_min {min} is greater than port_max {max}")]
    PortRange { min: u16, max: u16 },
    #[error("must not contain control characters")]
    ControlCharacters,
    #[error("must not contain '\"' or '\\' (it is sent inside a quoted string)")]
    Unquotable,
    #[error("duplicate id \"{id}\" (first used on line {first_line})")]
    DuplicateId { id: String, first_line: usize },
    #[error("invalid address range \"{text}\": {error}")]
    AddressRange {
        text: String,
        error: AddressRangeError,
    },
    #[error("{present} is set but {missing} is not (give both or neither)")]
    AuthIncomplete {
        present: &'static str,
        missing: &'static str,
    },
    #[error("{0} is not a digest challenge status (expected 401 or 407)")]
    ChallengeStatus(i64),
    #[error("applies only to a trunk with auth_username and auth_password")]
    ChallengeWithoutAuth,
    #[error("unknown codec \"{0}\" (supported: PCMU, PCMA)")]
    UnknownCodec(String),
    #[error("unknown rule type \"{0}\" (expected direct, individual or callee)")]
    UnknownRuleType(String),
    #[error("a direct rule needs room_name")]
    DirectWithoutRoom,
    #[error("applies to {applies} rules only, this rule is {kind}")]
    NotForType {
        applies: &'static str,
        kind: &'static str,
    },
    #[error("PIN must be digits only (0-9)")]
    PinNotDigits,
    #[error("PIN is longer than {MAX_PIN_LEN} digits")]
    PinTooLong,
    #[error("no trunk has id \"{0}\"")]
    UnknownTrunk(String),
    #[error(
        "conflicts with {other_key} (\"{other_id}\", line {other_line}): same trunk, numbers, \
         inbound_numbers and PIN, so neither would be chosen predictably"
    )]
    ConflictingRules {
        other_key: String,
        other_id: String,
        other_line: usize,
    },
}

/// A legal but suspicious setting, reported with its place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    pub file: String,
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}{}",
            self.file,
            self.line,
            key_prefix(&self.key),
            self.message
        )
    }
}

impl Config {
    /// Read and validate a configuration file; warnings are logged.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let config = Config::from_str(&text, &file)?;
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        Ok(config)
    }

    /// Parse and validate configuration text; `file` names it in messages.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str, file: &str) -> Result<Config, ConfigError> {
        let src = Source::new(text, file);
        let raw: RawConfig = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
        Resolver {
            src: &src,
            warnings: Vec::new(),
        }
        .resolve(raw)
    }

    /// The `--dev` configuration ([`DEV_CONFIG`]).
    pub fn dev() -> Config {
        Config::from_str(DEV_CONFIG, "<dev>")
            .expect("the embedded dev configuration is valid (tested)")
    }
}

// ---------------------------------------------------------------------------
// Raw file structure, with positions.

type Field<T> = Option<Spanned<T>>;
type List = Field<Vec<Spanned<String>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: Option<RawServer>,
    sip: Option<RawSip>,
    rtp: Option<RawRtp>,
    shutdown: Option<RawShutdown>,
    metrics: Option<RawMetrics>,
    livekit: Option<RawLiveKit>,
    trunks: Option<Vec<Spanned<RawTrunk>>>,
    dispatch_rules: Option<Vec<Spanned<RawRule>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    shards: Field<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSip {
    bind: Field<String>,
    port: Field<u16>,
    udp: Field<bool>,
    tcp: Field<bool>,
    external_ip: Field<String>,
    user_agent: Field<String>,
    realm: Field<String>,
    answer_delay_ms: Field<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRtp {
    port_min: Field<u16>,
    port_max: Field<u16>,
    media_timeout_secs: Field<u64>,
    hold_timeout_secs: Field<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    grace_secs: Field<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    port: Field<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLiveKit {
    port: Field<u16>,
    rtc_port: Field<u16>,
    keys: Option<Vec<Spanned<RawApiKey>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    key: Field<String>,
    secret: Field<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrunk {
    id: Field<String>,
    name: Field<String>,
    numbers: List,
    allowed_addresses: List,
    allowed_numbers: List,
    auth_username: Field<String>,
    auth_password: Field<String>,
    auth_challenge: Field<i64>,
    codecs: List,
    metadata: Field<String>,
    attributes: Field<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Field<String>,
    name: Field<String>,
    #[serde(rename = "type")]
    kind: Field<String>,
    room_name: Field<String>,
    room_prefix: Field<String>,
    pin: Field<String>,
    randomize: Field<bool>,
    no_randomness: Field<bool>,
    trunk_ids: List,
    numbers: List,
    inbound_numbers: List,
    hide_phone_number: Field<bool>,
    metadata: Field<String>,
    attributes: Field<BTreeMap<String, String>>,
}

// ---------------------------------------------------------------------------
// Positions: byte offsets to lines, and toml errors to keys.

struct Source<'a> {
    text: &'a str,
    file: &'a str,
    /// Byte offset where each line starts.
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    fn new(text: &'a str, file: &'a str) -> Source<'a> {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source {
            text,
            file,
            line_starts,
        }
    }

    /// 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset).max(1)
    }

    fn error(&self, span: Range<usize>, key: impl Into<String>, problem: Problem) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_string(),
            line: self.line(span.start),
            key: key.into(),
            problem,
        }
    }

    fn warning(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: String,
    ) -> ConfigWarning {
        ConfigWarning {
            file: self.file.to_string(),
            line: self.line(span.start),
            key: key.into(),
            message,
        }
    }

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let offset = e.span().map_or(0, |s| s.start).min(self.text.len());
        // toml's messages may span lines ("invalid string\nexpected `\"`").
        let message = e.message().trim().replace('\n', "; ");
        ConfigError::Invalid {
            file: self.file.to_string(),
            line: self.line(offset),
            key: key_at(self.text, offset),
            problem: Problem::Syntax(message),
        }
    }
}

/// The dotted key path at a byte offset, found by reading the table headers
/// and `key =` lines before it (`trunks[1].numbers`). Best effort: used only
/// to name the place of a toml error; empty when nothing fits.
fn key_at(text: &str, offset: usize) -> String {
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut table = String::new();
    let mut last_key: Option<String> = None;
    let mut pos = 0;
    for raw_line in text.split_inclusive('\n') {
        pos += raw_line.len();
        let line = strip_comment(raw_line).trim();
        let is_error_line = offset < pos || pos == text.len();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
            last_key = None;
            if is_error_line {
                return table;
            }
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = indexed_table(name.trim(), &counts);
            last_key = None;
            if is_error_line {
                // An unknown top-level table (`[livekit]`): the table is the key.
                return table;
            }
        } else if let Some(k) = line.split_once('=').and_then(|(k, _)| key_name(k.trim())) {
            last_key = Some(k.to_string());
        }
        if is_error_line {
            return match (&last_key, table.is_empty()) {
                (Some(k), true) => k.clone(),
                (Some(k), false) => format!("{table}.{k}"),
                (None, _) => table,
            };
        }
    }
    table
}

/// `trunks.attributes` after two `[[trunks]]` is `trunks[1].attributes`.
fn indexed_table(name: &str, counts: &HashMap<String, usize>) -> String {
    match name.split_once('.') {
        Some((head, rest)) => match counts.get(head.trim()) {
            Some(n) if *n > 0 => format!("{}[{}].{}", head.trim(), n - 1, rest.trim()),
            _ => name.to_string(),
        },
        None => name.to_string(),
    }
}

/// The key of a `key = value` line: a bare key, or a quoted one without its
/// quotes. `None` for text that cannot be a key (the inside of a multi-line
/// array such as `"a=b",`).
fn key_name(k: &str) -> Option<&str> {
    let quoted = |q: char| {
        k.strip_prefix(q)
            .and_then(|r| r.strip_suffix(q))
            .filter(|r| !r.contains(q))
    };
    if let Some(inner) = quoted('"').or_else(|| quoted('\'')) {
        return Some(inner);
    }
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    bare.then_some(k)
}

/// A line without its `#` comment (a `#` inside a quoted string is kept).
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '#') => return &line[..i],
            (None, '"' | '\'') => quote = Some(c),
            // Basic strings ("...") have backslash escapes; literal ones do not.
            (Some('"'), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(q), c) if c == q && !escaped => quote = None,
            _ => {}
        }
        escaped = false;
    }
    line
}

// ---------------------------------------------------------------------------
// Validation and resolution.

struct Resolver<'s, 'a> {
    src: &'s Source<'a>,
    warnings: Vec<ConfigWarning>,
}

/// The value of an optional field, or a default.
fn value_or<T: Clone>(f: &Field<T>, default: T) -> T {
    f.as_ref().map_or(default, |s| s.get_ref().clone())
}

impl Resolver<'_, '_> {
    fn resolve(mut self, raw: RawConfig) -> Result<Config, ConfigError> {
        let server = self.server(raw.server)?;
        let sip = self.sip(raw.sip)?;
        let rtp = self.rtp(raw.rtp)?;
        let shutdown = ShutdownConfig {
            grace_secs: raw.shutdown.map_or(DEFAULT_GRACE_SECS, |s| {
                value_or(&s.grace_secs, DEFAULT_GRACE_SECS)
            }),
        };
        let metrics = MetricsConfig {
            port: raw.metrics.map_or(DEFAULT_METRICS_PORT, |m| {
                value_or(&m.port, DEFAULT_METRICS_PORT)
            }),
        };
        let livekit = self.livekit(raw.livekit)?;
        let raw_trunks = raw.trunks.unwrap_or_default();
        let trunks = self.trunks(&raw_trunks)?;
        let raw_rules = raw.dispatch_rules.unwrap_or_default();
        let dispatch_rules = self.rules(&raw_rules, &trunks)?;
        self.trunk_overlaps(&raw_trunks, &trunks);
        Ok(Config {
            server,
            sip,
            rtp,
            shutdown,
            metrics,
            livekit,
            trunks,
            dispatch_rules,
            warnings: self.warnings,
        })
    }

    /// `[livekit]`: keys must be non-empty, printable and unique; a secret
    /// shorter than livekit-server's minimum is legal (`--dev` uses `secret`)
    /// but warned about.
    fn livekit(&mut self, raw: Option<RawLiveKit>) -> Result<LiveKitConfig, ConfigError> {
        let Some(raw) = raw else {
            return Ok(LiveKitConfig {
                port: DEFAULT_LIVEKIT_PORT,
                keys: KeyStore::new(),
                rtc_port: DEFAULT_RTC_PORT,
            });
        };
        let mut keys = KeyStore::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        for (i, entry) in raw.keys.iter().flatten().enumerate() {
            let at = |field: &str| format!("livekit.keys[{i}].{field}");
            let present = |f: &Field<String>, field: &str| match f {
                Some(v) if v.get_ref().is_empty() => {
                    Err(self.src.error(v.span(), at(field), Problem::Empty))
                }
                Some(v) => Ok(v.clone()),
                None => Err(self.src.error(entry.span(), at(field), Problem::Missing)),
            };
            let key = present(&entry.get_ref().key, "key")?;
            let secret = present(&entry.get_ref().secret, "secret")?;
            // The key travels as the token's `iss` and in log lines.
            if key.get_ref().chars().any(|c| c.is_control()) {
                return Err(self
                    .src
                    .error(key.span(), at("key"), Problem::ControlCharacters));
            }
            let line = self.src.line(key.span().start);
            if let Some(&first) = first_line.get(key.get_ref()) {
                return Err(self.src.error(
                    key.span(),
                    at("key"),
                    Problem::DuplicateId {
                        id: key.get_ref().clone(),
                        first_line: first,
                    },
                ));
            }
            first_line.insert(key.get_ref().clone(), line);
            if secret.get_ref().len() < KeyStore::MIN_SECRET_LEN {
                let w = self.src.warning(
                    secret.span(),
                    at("secret"),
                    format!(
                        "shorter than {} characters: fine for development, guessable in production",
                        KeyStore::MIN_SECRET_LEN
                    ),
                );
                self.warnings.push(w);
            }
            keys.insert(key.into_inner(), secret.get_ref().as_bytes());
        }
        Ok(LiveKitConfig {
            port: value_or(&raw.port, DEFAULT_LIVEKIT_PORT),
            keys,
            rtc_port: value_or(&raw.rtc_port, DEFAULT_RTC_PORT),
        })
    }

    fn server(&self, raw: Option<RawServer>) -> Result<ServerConfig, ConfigError> {
        let shards = raw.and_then(|s| s.shards);
        if let Some(s) = &shards {
            if *s.get_ref() == 0 {
                return Err(self.src.error(s.span(), "server.shards", Problem::Zero));
            }
        }
        Ok(ServerConfig {
            shards: shards.map(Spanned::into_inner),
        })
    }

    fn sip(&self, raw: Option<RawSip>) -> Result<SipConfig, ConfigError> {
        let Some(raw) = raw else {
            return Ok(SipConfig {
                bind: IpAddr::from([0, 0, 0, 0]),
                port: DEFAULT_SIP_PORT,
                udp: true,
                tcp: true,
                external_ip: None,
                user_agent: DEFAULT_USER_AGENT.into(),
                realm: DEFAULT_REALM.into(),
                answer_delay_ms: 0,
            });
        };
        let bind = match &raw.bind {
            Some(b) => self.ip(b, "sip.bind")?,
            None => IpAddr::from([0, 0, 0, 0]),
        };
        let external_ip = match &raw.external_ip {
            Some(e) => {
                let ip = self.ip(e, "sip.external_ip")?;
                if ip.is_unspecified() {
                    return Err(self.src.error(
                        e.span(),
                        "sip.external_ip",
                        Problem::Unspecified(ip),
                    ));
                }
                Some(ip)
            }
            None => None,
        };
        let udp = value_or(&raw.udp, true);
        let tcp = value_or(&raw.tcp, true);
        if !udp && !tcp {
            let span = raw
                .udp
                .as_ref()
                .or(raw.tcp.as_ref())
                .map_or(0..0, Spanned::span);
            return Err(self.src.error(span, "sip.udp", Problem::NoTransport));
        }
        // Both go into header values (RFC 3261 s25.1): no CR/LF injection; the
        // realm also sits inside a quoted-string (s25.1 quoted-pair rules).
        let user_agent =
            self.header_text(&raw.user_agent, "sip.user_agent", DEFAULT_USER_AGENT, false)?;
        let realm = self.header_text(&raw.realm, "sip.realm", DEFAULT_REALM, true)?;
        Ok(SipConfig {
            bind,
            port: value_or(&raw.port, DEFAULT_SIP_PORT),
            udp,
            tcp,
            external_ip,
            user_agent,
            realm,
            answer_delay_ms: value_or(&raw.answer_delay_ms, 0),
        })
    }

    fn ip(&self, f: &Spanned<String>, key: &str) -> Result<IpAddr, ConfigError> {
        f.get_ref().trim().parse().map_err(|_| {
            self.src
                .error(f.span(), key, Problem::NotAnIp(f.get_ref().clone()))
        })
    }

    fn header_text(
        &self,
        f: &Field<String>,
        key: &str,
        default: &str,
        quoted: bool,
    ) -> Result<String, ConfigError> {
        let Some(f) = f else {
            return Ok(default.to_string());
        };
        let v = f.get_ref();
        if v.trim().is_empty() {
            return Err(self.src.error(f.span(), key, Problem::Empty));
        }
        if v.chars().any(char::is_control) {
            return Err(self.src.error(f.span(), key, Problem::ControlCharacters));
        }
        if quoted && v.contains(['"', '\\']) {
            return Err(self.src.error(f.span(), key, Problem::Unquotable));
        }
        Ok(v.clone())
    }

    fn rtp(&self, raw: Option<RawRtp>) -> Result<RtpConfig, ConfigError> {
        let Some(raw) = raw else {
            return Ok(RtpConfig {
                port_min: DEFAULT_RTP_PORT_MIN,
                port_max: DEFAULT_RTP_PORT_MAX,
                media_timeout_secs: DEFAULT_MEDIA_TIMEOUT_SECS,
                hold_timeout_secs: DEFAULT_HOLD_TIMEOUT_SECS,
            });
        };
        if let Some(p) = &raw.port_min {
            if *p.get_ref() == 0 {
                return Err(self.src.error(p.span(), "rtp.port_min", Problem::Zero));
            }
        }
        let port_min = value_or(&raw.port_min, DEFAULT_RTP_PORT_MIN);
        let port_max = value_or(&raw.port_max, DEFAULT_RTP_PORT_MAX);
        if port_min > port_max {
            // Point at whichever of the two the file sets (port_max first:
            // lowering only port_max is the common slip).
            let (span, key) = match (&raw.port_max, &raw.port_min) {
                (Some(p), _) => (p.span(), "rtp.port_max"),
                (None, Some(p)) => (p.span(), "rtp.port_min"),
                (None, None) => (0..0, "rtp.port_max"),
            };
            return Err(self.src.error(
                span,
                key,
                Problem::PortRange {
                    min: port_min,
                    max: port_max,
                },
            ));
        }
        for (t, key) in [
            (&raw.media_timeout_secs, "rtp.media_timeout_secs"),
            (&raw.hold_timeout_secs, "rtp.hold_timeout_secs"),
        ] {
            if let Some(t) = t {
                if *t.get_ref() == 0 {
                    return Err(self.src.error(t.span(), key, Problem::Zero));
                }
            }
        }
        Ok(RtpConfig {
            port_min,
            port_max,
            media_timeout_secs: value_or(&raw.media_timeout_secs, DEFAULT_MEDIA_TIMEOUT_SECS),
            hold_timeout_secs: value_or(&raw.hold_timeout_secs, DEFAULT_HOLD_TIMEOUT_SECS),
        })
    }

    /// A required, non-empty string.
    fn required(
        &self,
        f: &Field<String>,
        table: Range<usize>,
        key: &str,
    ) -> Result<String, ConfigError> {
        match f {
            None => Err(self.src.error(table, key, Problem::Missing)),
            Some(v) if v.get_ref().trim().is_empty() => {
                Err(self.src.error(v.span(), key, Problem::Empty))
            }
            Some(v) => Ok(v.get_ref().clone()),
        }
    }

    /// A list of non-empty strings (an absent list is empty).
    fn strings(&self, f: &List, key: &str) -> Result<Vec<String>, ConfigError> {
        let Some(list) = f else {
            return Ok(Vec::new());
        };
        list.get_ref()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if s.get_ref().trim().is_empty() {
                    Err(self
                        .src
                        .error(s.span(), format!("{key}[{i}]"), Problem::Empty))
                } else {
                    Ok(s.get_ref().trim().to_string())
                }
            })
            .collect()
    }

    fn attributes(
        &mut self,
        f: &Field<BTreeMap<String, String>>,
        key: &str,
    ) -> BTreeMap<String, String> {
        let Some(attrs) = f else {
            return BTreeMap::new();
        };
        for name in attrs.get_ref().keys() {
            if name.starts_with("sip.") {
                let w = self.src.warning(
                    attrs.span(),
                    format!("{key}.{name}"),
                    "the sip. prefix is LiveKit's own; the gateway may overwrite this attribute"
                        .into(),
                );
                self.warnings.push(w);
            }
        }
        attrs.get_ref().clone()
    }

    fn check_id_unique(
        &self,
        seen: &mut HashMap<String, usize>,
        id: &str,
        span: Range<usize>,
        key: String,
    ) -> Result<(), ConfigError> {
        let line = self.src.line(span.start);
        if let Some(first_line) = seen.get(id) {
            return Err(self.src.error(
                span,
                key,
                Problem::DuplicateId {
                    id: id.to_string(),
                    first_line: *first_line,
                },
            ));
        }
        seen.insert(id.to_string(), line);
        Ok(())
    }

    fn trunks(&mut self, raw: &[Spanned<RawTrunk>]) -> Result<Vec<Trunk>, ConfigError> {
        let mut seen = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, st) in raw.iter().enumerate() {
            let t = st.get_ref();
            let key = |k: &str| format!("trunks[{i}].{k}");
            let id = self.required(&t.id, st.span(), &key("id"))?;
            let id_span = t.id.as_ref().map_or(st.span(), Spanned::span);
            self.check_id_unique(&mut seen, &id, id_span.clone(), key("id"))?;
            if !id.starts_with("ST_") {
                let w = self.src.warning(
                    id_span,
                    key("id"),
                    format!("\"{id}\" does not start with ST_ like LiveKit trunk ids"),
                );
                self.warnings.push(w);
            }
            let numbers = self.strings(&t.numbers, &key("numbers"))?;
            let allowed_numbers = self.strings(&t.allowed_numbers, &key("allowed_numbers"))?;
            let mut allowed_addresses = Vec::new();
            if let Some(list) = &t.allowed_addresses {
                for (j, a) in list.get_ref().iter().enumerate() {
                    let range = AddressRange::parse(a.get_ref()).map_err(|error| {
                        self.src.error(
                            a.span(),
                            key(&format!("allowed_addresses[{j}]")),
                            Problem::AddressRange {
                                text: a.get_ref().clone(),
                                error,
                            },
                        )
                    })?;
                    allowed_addresses.push(range);
                }
            }
            let auth = match (&t.auth_username, &t.auth_password) {
                (None, None) => None,
                (Some(u), None) => {
                    return Err(self.src.error(
                        u.span(),
                        key("auth_username"),
                        Problem::AuthIncomplete {
                            present: "auth_username",
                            missing: "auth_password",
                        },
                    ))
                }
                (None, Some(p)) => {
                    return Err(self.src.error(
                        p.span(),
                        key("auth_password"),
                        Problem::AuthIncomplete {
                            present: "auth_password",
                            missing: "auth_username",
                        },
                    ))
                }
                (Some(u), Some(p)) => {
                    for (f, k) in [(u, "auth_username"), (p, "auth_password")] {
                        if f.get_ref().is_empty() {
                            return Err(self.src.error(f.span(), key(k), Problem::Empty));
                        }
                    }
                    let challenge = match &t.auth_challenge {
                        None => AuthChallenge::default(),
                        Some(c) => AuthChallenge::from_status(*c.get_ref()).ok_or_else(|| {
                            self.src.error(
                                c.span(),
                                key("auth_challenge"),
                                Problem::ChallengeStatus(*c.get_ref()),
                            )
                        })?,
                    };
                    Some(TrunkAuth {
                        username: u.get_ref().clone(),
                        password: p.get_ref().clone(),
                        challenge,
                    })
                }
            };
            if let (None, Some(c)) = (&auth, &t.auth_challenge) {
                return Err(self.src.error(
                    c.span(),
                    key("auth_challenge"),
                    Problem::ChallengeWithoutAuth,
                ));
            }
            let mut codecs = Vec::new();
            if let Some(list) = &t.codecs {
                for (j, c) in list.get_ref().iter().enumerate() {
                    let codec = Codec::from_name(c.get_ref().trim()).ok_or_else(|| {
                        self.src.error(
                            c.span(),
                            key(&format!("codecs[{j}]")),
                            Problem::UnknownCodec(c.get_ref().clone()),
                        )
                    })?;
                    codecs.push(codec);
                }
            }
            let attributes = self.attributes(&t.attributes, &key("attributes"));
            out.push(Trunk {
                id,
                name: value_or(&t.name, String::new()),
                numbers,
                allowed_addresses,
                allowed_numbers,
                auth,
                codecs: CodecPrefs::new(codecs),
                metadata: value_or(&t.metadata, String::new()),
                attributes,
            });
        }
        Ok(out)
    }

    /// Warn about two trunks that can take the same call: same called numbers
    /// (or both wildcards), overlapping caller lists and address ranges. The
    /// first in file order takes such calls (LiveKit would refuse them).
    fn trunk_overlaps(&mut self, raw: &[Spanned<RawTrunk>], trunks: &[Trunk]) {
        fn lists_overlap(a: &[String], b: &[String]) -> bool {
            a.is_empty()
                || b.is_empty()
                || a.iter()
                    .any(|x| b.iter().any(|y| crate::routing::numbers_match(x, y)))
        }
        for (j, b) in trunks.iter().enumerate() {
            for (i, a) in trunks[..j].iter().enumerate() {
                let same_numbers = match (a.is_wildcard(), b.is_wildcard()) {
                    (true, true) => true,
                    (false, false) => lists_overlap(&a.numbers, &b.numbers),
                    // A trunk listing the number always beats a wildcard one.
                    _ => false,
                };
                let callers = lists_overlap(&a.allowed_numbers, &b.allowed_numbers);
                let addresses = a.allowed_addresses.is_empty()
                    || b.allowed_addresses.is_empty()
                    || a.allowed_addresses
                        .iter()
                        .any(|x| b.allowed_addresses.iter().any(|y| x.overlaps(y)));
                if same_numbers && callers && addresses {
                    let w = self.src.warning(
                        raw[j].span(),
                        format!("trunks[{j}]"),
                        format!(
                            "can take the same calls as trunks[{i}] (\"{}\"): same numbers, callers and addresses; \
                             trunks[{i}] comes first and takes them",
                            a.id
                        ),
                    );
                    self.warnings.push(w);
                    break;
                }
            }
        }
    }

    fn rules(
        &mut self,
        raw: &[Spanned<RawRule>],
        trunks: &[Trunk],
    ) -> Result<Vec<DispatchRule>, ConfigError> {
        let mut seen = HashMap::new();
        // (pin, trunk id, caller, callee) -> rule index: LiveKit's conflict key
        // (`ValidateDispatchRules`), with the called numbers added.
        let mut conflicts: HashMap<(String, String, String, String), usize> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, sr) in raw.iter().enumerate() {
            let r = sr.get_ref();
            let key = |k: &str| format!("dispatch_rules[{i}].{k}");
            let id = self.required(&r.id, sr.span(), &key("id"))?;
            let id_span = r.id.as_ref().map_or(sr.span(), Spanned::span);
            self.check_id_unique(&mut seen, &id, id_span.clone(), key("id"))?;
            if !id.starts_with("SDR_") {
                let w = self.src.warning(
                    id_span.clone(),
                    key("id"),
                    format!("\"{id}\" does not start with SDR_ like LiveKit dispatch rule ids"),
                );
                self.warnings.push(w);
            }
            let kind = self.rule_kind(r, sr.span(), &key)?;
            let pin = match &r.pin {
                None => None,
                Some(p) if p.get_ref().is_empty() => None,
                Some(p) => {
                    let v = p.get_ref();
                    if !v.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(self.src.error(p.span(), key("pin"), Problem::PinNotDigits));
                    }
                    if v.len() > MAX_PIN_LEN {
                        return Err(self.src.error(p.span(), key("pin"), Problem::PinTooLong));
                    }
                    Some(v.clone())
                }
            };
            let trunk_ids = self.strings(&r.trunk_ids, &key("trunk_ids"))?;
            if let Some(list) = &r.trunk_ids {
                for (j, t) in list.get_ref().iter().enumerate() {
                    if !trunks.iter().any(|tr| tr.id == t.get_ref().trim()) {
                        return Err(self.src.error(
                            t.span(),
                            key(&format!("trunk_ids[{j}]")),
                            Problem::UnknownTrunk(t.get_ref().clone()),
                        ));
                    }
                }
            }
            let numbers = self.strings(&r.numbers, &key("numbers"))?;
            let inbound_numbers = self.strings(&r.inbound_numbers, &key("inbound_numbers"))?;
            let attributes = self.attributes(&r.attributes, &key("attributes"));

            let any = [String::new()];
            let or_any = |v: &[String]| -> Vec<String> {
                if v.is_empty() {
                    any.to_vec()
                } else {
                    v.iter().map(|n| normalize_number(n)).collect()
                }
            };
            let pin_key = pin.clone().unwrap_or_default();
            let trunk_keys = if trunk_ids.is_empty() {
                any.to_vec()
            } else {
                trunk_ids.clone()
            };
            for t in &trunk_keys {
                for caller in or_any(&inbound_numbers) {
                    for callee in or_any(&numbers) {
                        let k = (pin_key.clone(), t.clone(), caller.clone(), callee);
                        if let Some(&other) = conflicts.get(&k) {
                            let other_rule: &DispatchRule = &out[other];
                            return Err(self.src.error(
                                id_span,
                                format!("dispatch_rules[{i}]"),
                                Problem::ConflictingRules {
                                    other_key: format!("dispatch_rules[{other}]"),
                                    other_id: other_rule.id.clone(),
                                    other_line: self.src.line(raw[other].span().start),
                                },
                            ));
                        }
                        conflicts.insert(k, i);
                    }
                }
            }
            out.push(DispatchRule {
                id,
                name: value_or(&r.name, String::new()),
                kind,
                pin,
                trunk_ids,
                numbers,
                inbound_numbers,
                hide_phone_number: value_or(&r.hide_phone_number, false),
                metadata: value_or(&r.metadata, String::new()),
                attributes,
            });
        }
        Ok(out)
    }

    fn rule_kind(
        &self,
        r: &RawRule,
        table: Range<usize>,
        key: &dyn Fn(&str) -> String,
    ) -> Result<RuleKind, ConfigError> {
        let Some(t) = &r.kind else {
            return Err(self.src.error(table, key("type"), Problem::Missing));
        };
        let type_name = t.get_ref().as_str();
        // Keys that belong to other types are refused rather than ignored: a
        // `randomize` on an individual rule would otherwise do nothing, silently.
        let refuse = |f: Option<Range<usize>>,
                      k: &str,
                      applies: &'static str,
                      kind: &'static str| match f {
            Some(span) => Err(self
                .src
                .error(span, key(k), Problem::NotForType { applies, kind })),
            None => Ok(()),
        };
        let span_of_s = |f: &Field<String>| f.as_ref().map(Spanned::span);
        let span_of_b = |f: &Field<bool>| f.as_ref().map(Spanned::span);
        match type_name {
            "direct" => {
                refuse(
                    span_of_s(&r.room_prefix),
                    "room_prefix",
                    "individual and callee",
                    "direct",
                )?;
                refuse(span_of_b(&r.randomize), "randomize", "callee", "direct")?;
                refuse(
                    span_of_b(&r.no_randomness),
                    "no_randomness",
                    "individual",
                    "direct",
                )?;
                let room_name = match &r.room_name {
                    None => {
                        return Err(self.src.error(
                            t.span(),
                            key("room_name"),
                            Problem::DirectWithoutRoom,
                        ))
                    }
                    Some(n) if n.get_ref().trim().is_empty() => {
                        return Err(self.src.error(n.span(), key("room_name"), Problem::Empty))
                    }
                    Some(n) => n.get_ref().clone(),
                };
                Ok(RuleKind::Direct { room_name })
            }
            "individual" => {
                refuse(span_of_s(&r.room_name), "room_name", "direct", "individual")?;
                refuse(span_of_b(&r.randomize), "randomize", "callee", "individual")?;
                Ok(RuleKind::Individual {
                    room_prefix: value_or(&r.room_prefix, String::new()),
                    no_randomness: value_or(&r.no_randomness, false),
                })
            }
            "callee" => {
                refuse(span_of_s(&r.room_name), "room_name", "direct", "callee")?;
                refuse(
                    span_of_b(&r.no_randomness),
                    "no_randomness",
                    "individual",
                    "callee",
                )?;
                Ok(RuleKind::Callee {
                    room_prefix: value_or(&r.room_prefix, String::new()),
                    randomize: value_or(&r.randomize, false),
                })
            }
            other => Err(self.src.error(
                t.span(),
                key("type"),
                Problem::UnknownRuleType(other.to_string()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use crate::routing::{self, InboundCall, Refusal};

    /// `tests/data/config`, found from this file so the tests run from any
    /// crate that includes it.
    fn data_dir() -> PathBuf {
        Path::new(file!())
            .parent()
            .expect("src/ has a parent")
            .join("../tests/data/config")
    }

    fn load_data(name: &str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(data_dir().join(name)).expect(name);
        Config::from_str(&text, name)
    }

    #[test]
    fn full_example_parses() {
        let c = load_data("full.toml").unwrap();
        assert_eq!(c.server.shards, Some(2));
        assert_eq!(c.sip.bind, IpAddr::from([0, 0, 0, 0]));
        assert_eq!((c.sip.port, c.sip.udp, c.sip.tcp), (5060, true, true));
        assert_eq!(c.sip.external_ip, Some(IpAddr::from([203, 0, 113, 7])));
        assert_eq!(c.sip.user_agent, "switchboard");
        assert_eq!(c.sip.realm, "switchboard");
        assert_eq!(c.sip.answer_delay_ms, 0);
        assert_eq!((c.rtp.port_min, c.rtp.port_max), (10000, 20000));
        assert_eq!(c.rtp.media_timeout(), Duration::from_secs(30));
        assert_eq!(c.rtp.hold_timeout(), Duration::from_secs(3600));
        assert_eq!(c.shutdown.grace(), Duration::from_secs(5));
        assert_eq!(c.metrics.port, 6789);

        assert_eq!(c.trunks.len(), 2);
        let t = &c.trunks[0];
        assert_eq!((t.id.as_str(), t.name.as_str()), ("ST_carrier", "carrier"));
        assert_eq!(t.numbers, ["+15550100", "+15550101"]);
        let addrs: Vec<String> = t.allowed_addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            addrs,
            ["203.0.113.0/24", "2001:db8::/32", "198.51.100.7/32"]
        );
        assert!(t.allowed_numbers.is_empty());
        assert_eq!(t.auth(), Some(("user", "pass")));
        assert_eq!(
            t.auth.as_ref().map(|a| a.challenge),
            Some(AuthChallenge::Proxy)
        );
        assert_eq!(t.codec_prefs().as_slice(), [Codec::Pcma, Codec::Pcmu]);
        assert_eq!(t.metadata, "carrier trunk");
        assert_eq!(
            t.attributes.get("carrier").map(String::as_str),
            Some("acme")
        );
        let pbx = &c.trunks[1];
        assert!(pbx.is_wildcard() && pbx.auth().is_none());
        assert_eq!(pbx.codec_prefs(), CodecPrefs::default());

        assert_eq!(c.dispatch_rules.len(), 3);
        let r = &c.dispatch_rules[0];
        assert_eq!(
            r.kind,
            RuleKind::Callee {
                room_prefix: "call-".into(),
                randomize: false
            }
        );
        assert_eq!(r.trunk_ids, ["ST_carrier"]);
        assert_eq!(r.metadata, "{\"team\":\"support\"}");
        assert_eq!(
            r.attributes.get("department").map(String::as_str),
            Some("support")
        );
        let conf = &c.dispatch_rules[1];
        assert_eq!(
            conf.kind,
            RuleKind::Direct {
                room_name: "conference".into()
            }
        );
        assert_eq!(conf.pin.as_deref(), Some("1234"));
        assert_eq!(conf.numbers, ["+15550101"]);
        let private = &c.dispatch_rules[2];
        assert_eq!(
            private.kind,
            RuleKind::Individual {
                room_prefix: "private".into(),
                no_randomness: false
            }
        );
        assert_eq!(private.inbound_numbers, ["+15550123"]);
        assert!(private.hide_phone_number);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn full_example_routes() {
        let c = load_data("full.toml").unwrap();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
        let call = InboundCall {
            source: "203.0.113.50".parse().unwrap(),
            caller: "+15559999",
            callee: "+15550100",
            call_id: "a@b",
        };
        let trunk = routing::match_trunk(&c.trunks, &call).unwrap();
        assert_eq!(trunk.id, "ST_carrier");
        let d = routing::dispatch(&c.dispatch_rules, trunk, &call, &mut rng).unwrap();
        assert_eq!(
            (d.rule_id.as_str(), d.room.as_str()),
            ("SDR_main", "call-+15550100")
        );
        // The conference number: the PIN rule ranks first and asks for its PIN.
        let conf_call = InboundCall {
            callee: "+15550101",
            ..call
        };
        let d = routing::dispatch(&c.dispatch_rules, trunk, &conf_call, &mut rng).unwrap();
        assert_eq!(
            (d.rule_id.as_str(), d.pin.as_deref()),
            ("SDR_conference", Some("1234"))
        );
        // The PBX, from its one address.
        let pbx_call = InboundCall {
            source: "192.0.2.10".parse().unwrap(),
            caller: "+15550123",
            callee: "100",
            call_id: "c@d",
        };
        let trunk = routing::match_trunk(&c.trunks, &pbx_call).unwrap();
        assert_eq!(trunk.id, "ST_pbx");
        let d = routing::dispatch(&c.dispatch_rules, trunk, &pbx_call, &mut rng).unwrap();
        assert_eq!(d.rule_id, "SDR_private");
        assert!(d.room.starts_with("private_0123_"), "{}", d.room);
        let stranger = InboundCall {
            source: "192.0.2.11".parse().unwrap(),
            ..pbx_call
        };
        assert_eq!(
            routing::match_trunk(&c.trunks, &stranger).unwrap_err(),
            Refusal::AddressNotAllowed
        );
    }

    #[test]
    fn minimal_file_takes_defaults() {
        let c = load_data("minimal.toml").unwrap();
        assert_eq!(c.server, ServerConfig::default());
        assert_eq!(c.sip.bind, IpAddr::from([0, 0, 0, 0]));
        assert_eq!((c.sip.port, c.sip.udp, c.sip.tcp), (5060, true, true));
        assert_eq!(c.sip.external_ip, None);
        assert_eq!(
            (c.sip.user_agent.as_str(), c.sip.realm.as_str()),
            ("switchboard", "switchboard")
        );
        assert_eq!(
            (c.rtp.port_min, c.rtp.port_max, c.rtp.media_timeout_secs),
            (10000, 20000, 30)
        );
        assert_eq!(c.shutdown.grace_secs, 5);
        assert_eq!(c.metrics.port, 6789);
        assert_eq!(c.trunks[0].name, "");
        assert_eq!(
            c.dispatch_rules[0].kind,
            RuleKind::Individual {
                room_prefix: String::new(),
                no_randomness: false
            }
        );
    }

    #[test]
    fn empty_file_is_valid_and_routes_nothing() {
        let c = Config::from_str("", "empty.toml").unwrap();
        assert!(c.trunks.is_empty() && c.dispatch_rules.is_empty());
        // Port 0: the system picks a free port (tests); metrics off.
        let c = Config::from_str("[sip]\nport = 0\n[metrics]\nport = 0\n", "zero.toml").unwrap();
        assert_eq!((c.sip.port, c.metrics.port), (0, 0));
    }

    #[test]
    fn livekit_section_keys_port_and_defaults() {
        // No section: the port default, but no keys, so the port stays closed.
        let c = Config::from_str("", "empty.toml").unwrap();
        assert_eq!(c.livekit.port, DEFAULT_LIVEKIT_PORT);
        assert!(c.livekit.keys.is_empty() && !c.livekit.enabled());
        let long = "s".repeat(KeyStore::MIN_SECRET_LEN);
        let text = format!(
            "[livekit]\nport = 17880\n[[livekit.keys]]\nkey = \"APIa\"\nsecret = \"{long}\"\n\
             [[livekit.keys]]\nkey = \"APIb\"\nsecret = \"short\"\n"
        );
        let c = Config::from_str(&text, "lk.toml").unwrap();
        assert_eq!(c.livekit.port, 17880);
        assert_eq!(c.livekit.rtc_port, DEFAULT_RTC_PORT);
        assert!(c.livekit.enabled());
        assert!(c.livekit.keys.contains("APIa") && c.livekit.keys.contains("APIb"));
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert_eq!(
            c.warnings[0].to_string(),
            "lk.toml:8: livekit.keys[1].secret: shorter than 32 characters: \
             fine for development, guessable in production"
        );
        // The secret never shows in Debug output.
        assert!(!format!("{c:?}").contains(&long));
        // Port 0 turns it off even with keys.
        let c = Config::from_str(&text.replace("17880", "0"), "lk.toml").unwrap();
        assert!(!c.livekit.enabled());
        for (text, want) in [
            (
                "[livekit]\n[[livekit.keys]]\nsecret = \"x\"\n",
                "k.toml:2: livekit.keys[0].key: required key is missing",
            ),
            (
                "[livekit]\n[[livekit.keys]]\nkey = \"a\"\nsecret = \"\"\n",
                "k.toml:4: livekit.keys[0].secret: must not be empty",
            ),
            (
                "[livekit]\n[[livekit.keys]]\nkey = \"a\\tb\"\nsecret = \"x\"\n",
                "k.toml:3: livekit.keys[0].key: must not contain control characters",
            ),
        ] {
            let e = Config::from_str(text, "k.toml").unwrap_err();
            assert_eq!(e.to_string(), want);
        }
    }

    #[test]
    fn dev_config() {
        let c = Config::dev();
        assert_eq!(c.sip.bind, IpAddr::from([127, 0, 0, 1]));
        assert_eq!((c.sip.port, c.sip.udp, c.sip.tcp), (5060, true, true));
        // livekit-server --dev's key pair; its short secret is the one warning.
        assert_eq!(c.livekit.port, 7880);
        assert!(c.livekit.enabled() && c.livekit.keys.contains("devkey"));
        assert_eq!(c.livekit.keys.len(), 1);
        let keys: Vec<&str> = c.warnings.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(keys, ["livekit.keys[0].secret"], "{:?}", c.warnings);
        assert_eq!(c.trunks.len(), 1);
        let t = &c.trunks[0];
        assert_eq!((t.id.as_str(), t.name.as_str()), ("ST_dev", "dev"));
        assert!(
            t.numbers.is_empty() && t.allowed_addresses.is_empty() && t.allowed_numbers.is_empty()
        );
        assert_eq!(t.auth(), None);
        assert_eq!(c.dispatch_rules.len(), 1);
        let r = &c.dispatch_rules[0];
        assert_eq!(r.id, "SDR_dev");
        assert_eq!(
            r.kind,
            RuleKind::Callee {
                room_prefix: "call-".into(),
                randomize: false
            }
        );
        // Two callers of the same number share a room; any source, any number.
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
        let mut rooms = Vec::new();
        for (src, caller) in [("127.0.0.1", "+15550001"), ("2001:db8::1", "alice")] {
            let call = InboundCall {
                source: src.parse().unwrap(),
                caller,
                callee: "+15550100",
                call_id: "x",
            };
            let trunk = routing::match_trunk(&c.trunks, &call).unwrap();
            rooms.push(
                routing::dispatch(&c.dispatch_rules, trunk, &call, &mut rng)
                    .unwrap()
                    .room,
            );
        }
        assert_eq!(rooms, ["call-+15550100", "call-+15550100"]);
    }

    /// Every `bad_*.toml` starts with `# expect: <the exact message>`.
    #[test]
    fn bad_configs_name_file_line_and_key() {
        let mut checked = 0;
        let mut entries: Vec<_> = std::fs::read_dir(data_dir())
            .expect("tests/data/config")
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if !(name.starts_with("bad_") && name.ends_with(".toml")) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let want = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{name}: first line must be `# expect: ...`"));
            match Config::from_str(&text, &name) {
                Ok(_) => panic!("{name}: accepted, expected {want}"),
                Err(e) => assert_eq!(e.to_string(), want, "{name}"),
            }
            checked += 1;
        }
        assert!(checked >= 20, "only {checked} bad configs found");
    }

    #[test]
    fn load_reads_files_and_reports_missing_ones() {
        let c = Config::load(data_dir().join("full.toml")).unwrap();
        assert_eq!(c.trunks.len(), 2);
        let e = Config::load(data_dir().join("does-not-exist.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
        assert!(
            e.to_string().contains("does-not-exist.toml: cannot read"),
            "{e}"
        );
        let e = Config::load(data_dir().join("bad_pin.toml")).unwrap_err();
        assert_eq!(e.line(), Some(9));
        assert_eq!(e.problem(), Some(&Problem::PinNotDigits));
        assert!(
            e.to_string()
                .contains("bad_pin.toml:9: dispatch_rules[0].pin:"),
            "{e}"
        );
    }

    #[test]
    fn warnings_for_ids_overlaps_and_reserved_attributes() {
        let text = r#"
[[trunks]]
id = "carrier"

[[trunks]]
id = "ST_b"
allowed_addresses = ["192.0.2.0/24"]

[[trunks]]
id = "ST_c"
allowed_addresses = ["198.51.100.0/24"]
numbers = ["+1555"]

[[trunks]]
id = "ST_d"
allowed_addresses = ["198.51.100.128/25"]
numbers = ["1555"]

[[trunks]]
id = "ST_e"
allowed_addresses = ["203.0.113.0/24"]
numbers = ["+1555"]

[[dispatch_rules]]
id = "main"
type = "callee"
[dispatch_rules.attributes]
"sip.trunkID" = "mine"
"#;
        let c = Config::from_str(text, "w.toml").unwrap();
        let got: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "w.toml:3: trunks[0].id: \"carrier\" does not start with ST_ like LiveKit trunk ids",
                "w.toml:25: dispatch_rules[0].id: \"main\" does not start with SDR_ like LiveKit dispatch rule ids",
                "w.toml:27: dispatch_rules[0].attributes.sip.trunkID: the sip. prefix is LiveKit's own; the gateway may overwrite this attribute",
                "w.toml:5: trunks[1]: can take the same calls as trunks[0] (\"carrier\"): same numbers, callers and addresses; trunks[0] comes first and takes them",
                "w.toml:14: trunks[3]: can take the same calls as trunks[2] (\"ST_c\"): same numbers, callers and addresses; trunks[2] comes first and takes them",
            ]
        );
    }

    #[test]
    fn rules_differing_in_numbers_or_pin_do_not_conflict() {
        let text = r#"
[[trunks]]
id = "ST_a"
[[dispatch_rules]]
id = "SDR_1"
type = "callee"
[[dispatch_rules]]
id = "SDR_2"
type = "direct"
room_name = "vip"
inbound_numbers = ["+1555"]
[[dispatch_rules]]
id = "SDR_3"
type = "direct"
room_name = "conf"
pin = "42"
[[dispatch_rules]]
id = "SDR_4"
type = "direct"
room_name = "sales"
numbers = ["+1666"]
[[dispatch_rules]]
id = "SDR_5"
type = "callee"
trunk_ids = ["ST_a"]
"#;
        let c = Config::from_str(text, "r.toml").unwrap();
        assert_eq!(c.dispatch_rules.len(), 5);
        // ... but the same caller written with or without '+' does.
        let clash = format!("{text}[[dispatch_rules]]\nid = \"SDR_6\"\ntype = \"callee\"\ninbound_numbers = [\"1555\"]\n");
        let e = Config::from_str(&clash, "r.toml").unwrap_err();
        assert!(
            matches!(e.problem(), Some(Problem::ConflictingRules { other_id, .. }) if other_id == "SDR_2"),
            "{e}"
        );
    }

    #[test]
    fn key_paths_of_toml_errors() {
        let text = "a = 1\n[sip]\nport = 2\n[[trunks]]\nid = \"x\"\n[[trunks]]\nnumbers = [\n  \"+1\",\n  3,\n]\n[trunks.attributes]\nk = 1\n";
        let at = |needle: &str| key_at(text, text.find(needle).unwrap());
        assert_eq!(at("a ="), "a");
        assert_eq!(at("port"), "sip.port");
        assert_eq!(at("id ="), "trunks[0].id");
        assert_eq!(at("3,"), "trunks[1].numbers");
        assert_eq!(at("k ="), "trunks[1].attributes.k");
        assert_eq!(strip_comment("a = \"#x\" # c"), "a = \"#x\" ");
        assert_eq!(strip_comment(r#"a = "q\" #x" # c"#), r#"a = "q\" #x" "#);
        assert_eq!(strip_comment("a = '\\' # c"), "a = '\\' ");
        let multi = "[[trunks]]\nnumbers = [\n  \"a=b\",\n  3,\n]\n";
        assert_eq!(
            key_at(multi, multi.find("3,").unwrap()),
            "trunks[0].numbers"
        );
        assert_eq!(key_name("\"sip.x\""), Some("sip.x"));
        assert_eq!(key_name("\"a"), None);
    }

    #[test]
    fn lines_from_offsets() {
        let src = Source::new("a\nbb\n\nc", "f");
        assert_eq!([0, 1, 2, 4, 5, 6].map(|o| src.line(o)), [1, 1, 2, 2, 3, 4]);
    }

    #[test]
    fn example_in_docs_parses() {
        // docs/configuration.md's complete example is the full.toml test file;
        // keep them the same.
        let doc =
            std::fs::read_to_string(data_dir().join("../../../docs/configuration.md")).unwrap();
        let full = std::fs::read_to_string(data_dir().join("full.toml")).unwrap();
        assert!(
            doc.contains(full.trim()),
            "docs/configuration.md must embed tests/data/config/full.toml"
        );
        assert!(
            doc.contains(DEV_CONFIG.trim()),
            "docs/configuration.md must show DEV_CONFIG"
        );
    }
}
