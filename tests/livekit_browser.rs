//! The browser check: `livekit-client` (npm) in Debian's headless
//! Chromium joins the phone caller's room, hears the caller, and the caller
//! hears the browser.
//!
//! A SIP caller (our test UA, `tests/ua`) calls +15550100 (callee rule: room
//! `call-+15550100`) and streams a 1000 Hz tone in G.711 mu-law. Chromium opens
//! `tests/browser/index.html` (`page.js`, run by `tests/browser/mod.rs`), which
//! connects with livekit-client to the real binary's LiveKit port, finds the
//! participant of kind SIP, publishes a 600 Hz WebAudio oscillator as its
//! microphone, and measures the SIP participant's audio through an
//! `AnalyserNode`. The test then checks both directions: the page found energy
//! peaking at 1000 Hz, and the caller's received PCMU holds 600 Hz.
//!
//! Without Chromium or the npm package the test says loudly that it was
//! skipped; with `CI` set it fails instead (`scripts/install-deps.sh --browser`
//! installs both; `scripts/test.sh` asks for them under CI).

mod browser;
mod common;
mod ua;

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use common::livekit::{token_for, wait_for_log, CONFIG, TRUNK_AND_RULE};
use common::{alloc_ports, Ports, Scratch, Server};

/// The tone the caller sends, and the one the browser publishes.
const CALLER_HZ: f64 = 1000.0;
const BROWSER_HZ: f64 = 600.0;

/// How long the page measures the caller's audio, and stays after that.
const LISTEN_MS: u64 = 5000;
const HOLD_MS: u64 = 1500;

/// Per half second of what the caller received (8 kHz PCMU, arrival order):
/// (total power, share of `hz` in it).
fn windows(pcm: &[i16], hz: f64) -> Vec<(f64, f64)> {
    pcm.chunks_exact(4000)
        .map(|w| {
            let total = ua::total_power(w);
            (total, ua::tone_power(w, hz) / total.max(1.0))
        })
        .collect()
}

#[test]
fn browser_hears_the_phone_caller_and_the_caller_hears_the_browser() {
    browser_call(
        "browser_hears_the_phone_caller_and_the_caller_hears_the_browser",
        false,
    );
}

/// The same over the older signal path (`/rtc`: a publisher PeerConnection
/// the browser offers on, and a subscriber one we offer the caller's track
/// on), which livekit-client takes with `singlePeerConnection: false` and
/// SDKs without single-PC support always take.
#[test]
fn browser_on_the_v0_signal_path_hears_the_caller_and_is_heard() {
    browser_call(
        "browser_on_the_v0_signal_path_hears_the_caller_and_is_heard",
        true,
    );
}

fn browser_call(test: &str, v0: bool) {
    let Some(tools) = browser::tools_or_skip(test) else {
        return;
    };
    if !browser::private_network() {
        let _ = writeln!(
            std::io::stderr().lock(),
            "{test}: no network namespace of its own (needs root): running in the host's"
        );
    }
    let scratch = Scratch::new(if v0 { "lk_browser_v0" } else { "lk_browser" });
    let ports = Ports::alloc(8);
    let lk_port = alloc_ports(1, true);
    let server = Server::start(
        &scratch,
        &format!(
            "{}{TRUNK_AND_RULE}",
            CONFIG.replace("@LK_PORT@", &lk_port.to_string())
        ),
        &ports,
    );
    let url = format!("ws://{}", SocketAddr::from(([127, 0, 0, 1], lk_port)));

    let mut caller = ua::Ua::new(ports.server_addr(), "+15550009", "+15550100", "lkbrowser");
    assert_eq!(caller.call(), 200, "the call into call-+15550100");
    wait_for_log(&server, "SIP caller joined the LiveKit room");
    // The caller's tone for 20 s: Chromium's start, the connect, the page's
    // listening and holding fit in it with room to spare.
    let run = ua::MediaRun::start(
        &caller.rtp,
        caller.remote_rtp.expect("the answer's RTP address"),
        ua::StreamPlan::tone(CALLER_HZ, 1000),
    );

    let token = token_for("call-+15550100", "browser");
    let (tone, want) = (BROWSER_HZ.to_string(), CALLER_HZ.to_string());
    let (listen, hold) = (LISTEN_MS.to_string(), HOLD_MS.to_string());
    let page = browser::run_page(
        &tools,
        &scratch.dir,
        &[
            ("url", &url),
            ("token", &token),
            ("tone", &tone),
            ("want", &want),
            ("listen", &listen),
            ("hold", &hold),
            ("v0", if v0 { "1" } else { "0" }),
        ],
        Duration::from_secs(60),
    );
    let received = run.stop();
    let _ = caller.bye();

    // Which signal path livekit-client took, and what the server saw of it.
    let seen: Vec<String> = server
        .log_text()
        .lines()
        .filter(|l| {
            [
                "signal connection",
                "participant",
                "LiveKit HTTP",
                "WebRTC",
                "peer",
            ]
            .iter()
            .any(|n| l.contains(n))
        })
        .map(str::to_owned)
        .collect();
    let _ = writeln!(
        std::io::stderr().lock(),
        "{test}: page run {:.1} s; server lines about the browser:\n{}",
        page.seconds,
        seen.join("\n")
    );
    let got = &page.result;
    let fail = |what: &str| -> ! { server.fail(&format!("{what}\n{}", page.report())) };

    // The browser's side: connected, the caller is a participant of kind SIP,
    // its audio peaks at the caller's tone.
    if got["connected"] != true {
        fail("livekit-client did not connect");
    }
    let sip = &got["sip"];
    if sip["identity"] != "sip_+15550009" || sip["kind"] != 3 {
        fail("no participant of kind SIP (ParticipantKind.SIP = 3) with the caller's identity");
    }
    if got["published"] != true {
        fail(&format!(
            "livekit-client could not publish its tone (its recoveries: {})",
            got["reconnects"]
        ));
    }
    if got["subscribed"] != true {
        fail("the SIP participant's audio track never reached the page");
    }
    let heard = &got["heard"];
    let frames = heard["frames"].as_u64().unwrap_or(0);
    let tone_frames = heard["tone_frames"].as_u64().unwrap_or(0);
    let max_rms = heard["max_rms"].as_f64().unwrap_or(0.0);
    if tone_frames * 2 < frames || frames < 10 || max_rms < 0.01 {
        fail(&format!(
            "the page did not hear the caller's {CALLER_HZ} Hz: {tone_frames} of {frames} \
             100 ms frames peak there, max RMS {max_rms}"
        ));
    }

    // The caller's side: half-second windows in which the browser's tone
    // dominates, and loud enough to be a tone, not noise; the page publishes
    // for about LISTEN_MS + HOLD_MS, so 2 s of it is a safe floor.
    let pcm = ua::decode_pcmu(&received);
    let w = windows(&pcm, BROWSER_HZ);
    let toned = w
        .iter()
        .filter(|(p, share)| *p > 1e5 && *share > 0.5)
        .count();
    // Chromium's own WebRTC complaints, for the record (a pass can have them).
    let webrtc_errors: Vec<&str> = page
        .chromium_log
        .lines()
        .filter(|l| l.contains("ERROR:third_party/webrtc"))
        .collect();
    let _ = writeln!(
        std::io::stderr().lock(),
        "{test}: Chromium logged {} WebRTC errors{}{}",
        webrtc_errors.len(),
        if webrtc_errors.is_empty() { "" } else { ":\n" },
        webrtc_errors.join("\n")
    );
    let _ = writeln!(
        std::io::stderr().lock(),
        "{test}: page heard {tone_frames} of {frames} frames at {CALLER_HZ} Hz (max RMS {}), \
         inbound {}, outbound {}; caller: {} packets, {toned} half-second windows of {BROWSER_HZ} Hz",
        max_rms,
        got["inbound"],
        got["outbound"],
        received.len()
    );
    if toned < 4 {
        let shown: Vec<String> = w.iter().map(|(p, s)| format!("{p:.0}/{s:.2}")).collect();
        fail(&format!(
            "the caller did not hear the browser's {BROWSER_HZ} Hz: {} packets, windows \
             (power/share of {BROWSER_HZ} Hz): {}",
            received.len(),
            shown.join(" ")
        ));
    }
    server.stop();
}
