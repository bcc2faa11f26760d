//! Fuzz target: the SDP offer/answer code (`sdp`) on arbitrary bytes.
//!
//! Parses the input as an offer; when it parses, answers it with our default codec
//! preferences, and checks the answer we write parses back and negotiates the same
//! codec and payload type (what the trunk will do with it). Also parses the input
//! as an answer to our own offer. Seed corpus: `tests/data/sdp/*.sdp`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr};
use switchboard::sdp::{
    accept_answer, answer, parse_answer, parse_offer, AnswerParams, CodecPrefs,
};

fuzz_target!(|data: &[u8]| {
    let prefs = CodecPrefs::default();
    if let Ok(offer) = parse_offer(data) {
        for m in &offer.media {
            let _ = (m.is_plain_rtp(), m.is_audio(), m.telephone_event());
            for pt in m.payload_types() {
                let _ = (m.codec_of(pt), m.fmtp(pt), m.rtpmap(pt));
            }
            let _ = (offer.connection_of(m), offer.direction_of(m));
        }
        let p = AnswerParams {
            local_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            rtp_port: 20_000,
            session_id: 1,
            session_version: 1,
            prefs: &prefs,
            user_agent: "switchboard-fuzz",
        };
        if let Ok(n) = answer(&offer, &p) {
            assert!(n.media_index < offer.media.len());
            let ours = parse_answer(n.answer.as_bytes())
                .unwrap_or_else(|e| panic!("our answer does not parse ({e}):\n{}", n.answer));
            assert_eq!(
                ours.media.len(),
                offer.media.len(),
                "RFC 3264 s6: one m= per offered m="
            );
            let back = accept_answer(&ours, &prefs)
                .unwrap_or_else(|e| panic!("our answer negotiates nothing ({e}):\n{}", n.answer));
            assert_eq!((back.codec, back.payload_type), (n.codec, n.payload_type));
        }
    }
    if let Ok(ans) = parse_answer(data) {
        let _ = accept_answer(&ans, &prefs);
    }
});
