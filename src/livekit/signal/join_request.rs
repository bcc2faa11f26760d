//! The v1 join request: `join_request=` on `/rtc/v1` is base64url of a
//! protobuf `WrappedJoinRequest` (`livekit_rtc.proto`) whose payload is a
//! `JoinRequest`, GZIP-compressed (RFC 1952) when `compression = GZIP`.
//!
//! Where it sits: [`super::RoomSignal::join`] calls [`decode`] with the value
//! `connect::ConnectRequest` already form-decoded from the query. Everything
//! here is peer input before the participant exists, so every stage is
//! bounded: the base64 text, the compressed payload and, above all, the
//! inflated size (a few KiB of gzip can inflate to gigabytes: the inflater
//! is read through `take(limit + 1)` and refused past the limit, so at most
//! `limit + 1` bytes are ever produced).

use std::io::Read as _;

use base64::Engine as _;
use livekit_protocol as lk;
use prost::Message as _;

/// Largest inflated `JoinRequest` accepted. The Python SDK 1.2.1's is
/// 14 373 bytes (an SDP offer with 7 m-lines); 64 KiB leaves room for
/// browsers' longer offers and a few `add_track_requests`.
pub const MAX_JOIN_REQUEST: usize = 64 * 1024;

/// Largest `join_request=` text accepted (base64 of at most this much
/// protobuf; an uncompressed request may be sent as is).
pub const MAX_ENCODED: usize = MAX_JOIN_REQUEST * 4 / 3 + 4;

/// Why a v1 join request is refused (livekit-server answers 400 before the
/// WebSocket upgrade for each of these).
#[derive(Debug, thiserror::Error)]
pub enum JoinRequestError {
    #[error("join_request is {0} bytes, more than {MAX_ENCODED}")]
    EncodedTooLarge(usize),
    #[error("join_request is not base64url: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("cannot decode WrappedJoinRequest: {0}")]
    Wrapper(prost::DecodeError),
    #[error("unknown join_request compression {0}")]
    UnknownCompression(i32),
    #[error("cannot inflate join_request: {0}")]
    Gzip(std::io::Error),
    #[error("join_request inflates past {MAX_JOIN_REQUEST} bytes")]
    InflatedTooLarge,
    #[error("cannot decode JoinRequest: {0}")]
    JoinRequest(prost::DecodeError),
}

/// Decode the `join_request=` value (already form-decoded). Base64url with
/// or without `=` padding: the Python SDK pads, Go's `RawURLEncoding` would
/// not.
pub fn decode(encoded: &str) -> Result<lk::JoinRequest, JoinRequestError> {
    if encoded.len() > MAX_ENCODED {
        return Err(JoinRequestError::EncodedTooLarge(encoded.len()));
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let raw = engine.decode(encoded.trim())?;
    let wrapped =
        lk::WrappedJoinRequest::decode(raw.as_slice()).map_err(JoinRequestError::Wrapper)?;
    match lk::wrapped_join_request::Compression::try_from(wrapped.compression) {
        Ok(lk::wrapped_join_request::Compression::None) => {
            lk::JoinRequest::decode(wrapped.join_request.as_slice())
                .map_err(JoinRequestError::JoinRequest)
        }
        Ok(lk::wrapped_join_request::Compression::Gzip) => {
            let inflated = inflate_bounded(&wrapped.join_request, MAX_JOIN_REQUEST)?;
            lk::JoinRequest::decode(inflated.as_slice()).map_err(JoinRequestError::JoinRequest)
        }
        Err(_) => Err(JoinRequestError::UnknownCompression(wrapped.compression)),
    }
}

/// Gunzip at most `limit` bytes; more is an error, not a truncation.
fn inflate_bounded(gz: &[u8], limit: usize) -> Result<Vec<u8>, JoinRequestError> {
    let mut out = Vec::with_capacity(gz.len().saturating_mul(4).min(limit));
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::GzDecoder::new(gz)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(JoinRequestError::Gzip)?;
    if out.len() > limit {
        return Err(JoinRequestError::InflatedTooLarge);
    }
    Ok(out)
}

/// Base64url (padded) of a `WrappedJoinRequest` around `req`, gzipped when
/// `gzip`: what an SDK puts in `join_request=`. For tests and tools.
pub fn encode(req: &lk::JoinRequest, gzip: bool) -> String {
    use std::io::Write as _;
    let payload = req.encode_to_vec();
    let (compression, join_request) = if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        // Writing into a Vec cannot fail.
        let _ = enc.write_all(&payload);
        let gz = enc.finish().unwrap_or_default();
        (lk::wrapped_join_request::Compression::Gzip, gz)
    } else {
        (lk::wrapped_join_request::Compression::None, payload)
    };
    let wrapped = lk::WrappedJoinRequest {
        compression: compression as i32,
        join_request,
    };
    base64::engine::general_purpose::URL_SAFE.encode(wrapped.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::livekit::connect::ConnectRequest;

    fn golden() -> String {
        let value = include_str!("../testdata/python-sdk-1.2.1-join-request.txt").trim();
        ConnectRequest::parse(&format!("/rtc/v1?join_request={value}"), None)
            .unwrap()
            .join_request
            .unwrap()
    }

    /// The Python SDK 1.2.1's real join request (captured on loopback).
    #[test]
    fn python_sdk_golden_join_request_decodes() {
        let req = decode(&golden()).unwrap();
        let client = req.client_info.as_ref().unwrap();
        assert_eq!(client.sdk(), lk::client_info::Sdk::Python);
        assert_eq!(client.version, "1.2.1");
        assert_eq!(client.protocol, 18);
        assert_eq!(client.client_protocol, 2);
        assert!(req.connection_settings.as_ref().unwrap().auto_subscribe);
        let offer = req.publisher_offer.as_ref().unwrap();
        assert_eq!(offer.r#type, "offer");
        assert_eq!(offer.id, 0);
        assert!(offer.sdp.starts_with("v=0\r\n"), "{}", &offer.sdp[..20]);
        assert_eq!(offer.sdp.matches("m=audio").count(), 3);
        assert_eq!(offer.sdp.matches("m=video").count(), 3);
        assert_eq!(offer.sdp.matches("m=application").count(), 1);
        assert!(req.add_track_requests.is_empty() && !req.reconnect);
    }

    #[test]
    fn round_trip_with_and_without_gzip() {
        let req = lk::JoinRequest {
            metadata: "m".repeat(100),
            participant_sid: "PA_x".into(),
            ..Default::default()
        };
        for gzip in [false, true] {
            assert_eq!(decode(&encode(&req, gzip)).unwrap(), req);
        }
        // Unpadded base64url too.
        let unpadded = encode(&req, true).trim_end_matches('=').to_owned();
        assert_eq!(decode(&unpadded).unwrap(), req);
    }

    /// 10 MB of zeros gzip to ~10 KB: inflating stops at the limit.
    #[test]
    fn gzip_bomb_is_refused_without_inflating_it_all() {
        use std::io::Write as _;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 10_000_000]).unwrap();
        let gz = enc.finish().unwrap();
        assert!(gz.len() < 20_000, "{}", gz.len());
        let wrapped = lk::WrappedJoinRequest {
            compression: lk::wrapped_join_request::Compression::Gzip as i32,
            join_request: gz,
        };
        let b64 = base64::engine::general_purpose::URL_SAFE.encode(wrapped.encode_to_vec());
        assert!(matches!(
            decode(&b64),
            Err(JoinRequestError::InflatedTooLarge)
        ));
        // Just under the limit still passes the inflate stage (then fails as
        // protobuf: zeros are field 0, invalid).
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; MAX_JOIN_REQUEST]).unwrap();
        assert_eq!(
            inflate_bounded(&enc.finish().unwrap(), MAX_JOIN_REQUEST)
                .unwrap()
                .len(),
            MAX_JOIN_REQUEST
        );
    }

    #[test]
    fn malformed_inputs_are_typed_errors() {
        assert!(matches!(decode("!!!"), Err(JoinRequestError::Base64(_))));
        assert!(matches!(
            decode(&"A".repeat(MAX_ENCODED + 1)),
            Err(JoinRequestError::EncodedTooLarge(_))
        ));
        let b64 = |w: lk::WrappedJoinRequest| {
            base64::engine::general_purpose::URL_SAFE.encode(w.encode_to_vec())
        };
        assert!(matches!(
            decode(&b64(lk::WrappedJoinRequest {
                compression: 7,
                join_request: vec![1],
            })),
            Err(JoinRequestError::UnknownCompression(7))
        ));
        assert!(matches!(
            decode(&b64(lk::WrappedJoinRequest {
                compression: 1,
                join_request: b"not gzip".to_vec(),
            })),
            Err(JoinRequestError::Gzip(_))
        ));
        assert!(matches!(
            decode(&b64(lk::WrappedJoinRequest {
                compression: 0,
                join_request: vec![0xff, 0xff, 0xff],
            })),
            Err(JoinRequestError::JoinRequest(_))
        ));
        // Not a WrappedJoinRequest at all (a truncated varint).
        let bad = base64::engine::general_purpose::URL_SAFE.encode([0x08, 0xff]);
        assert!(matches!(decode(&bad), Err(JoinRequestError::Wrapper(_))));
    }
}
