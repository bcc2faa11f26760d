//! What the LiveKit tests (`tests/livekit_http.rs`, `tests/livekit_browser.rs`)
//! share: the server's configuration, token minting, waiting for a log line.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchboard::livekit::token::{encode, Claims, VideoGrant};

use super::Server;

/// Two shards, the LiveKit port (`@LK_PORT@`, filled by the test) with
/// `devkey` / `secret`, an ephemeral WebRTC port per shard.
pub const CONFIG: &str = r#"
[sip]
bind = "127.0.0.1"
port = @SIP_PORT@

[rtp]
port_min = @RTP_MIN@
port_max = @RTP_MAX@

[metrics]
port = 0

[server]
shards = 2

[livekit]
port = @LK_PORT@
rtc_port = 0

[[livekit.keys]]
key = "devkey"
secret = "secret"
"#;

/// Appended to [`CONFIG`]: a trunk taking any call, and a rule sending each
/// call to room `call-<number called>`.
pub const TRUNK_AND_RULE: &str = r#"
[[trunks]]
id = "ST_open"

[[dispatch_rules]]
id = "SDR_callee"
type = "callee"
room_prefix = "call-"
"#;

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs() as i64
}

/// A room-join token for `identity` in `room`, signed with `secret` for
/// `devkey`, issued at `iat` and valid an hour.
pub fn mint(room: &str, identity: &str, secret: &[u8], iat: i64) -> String {
    let mut c = Claims::new("devkey", identity, iat, 3600);
    c.video = Some(VideoGrant {
        room_join: true,
        room: room.into(),
        ..VideoGrant::default()
    });
    encode(&c, secret)
}

/// A valid room-join token for `identity` in `room`.
pub fn token_for(room: &str, identity: &str) -> String {
    mint(room, identity, b"secret", now_unix() - 5)
}

/// Wait (at most 10 s) until the server has logged a line containing
/// `needle`; fail the test with the server's log otherwise.
pub fn wait_for_log(server: &Server, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.log_lines_with(&[needle]).is_empty() {
        if Instant::now() > deadline {
            server.fail(&format!("never logged: {needle:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
