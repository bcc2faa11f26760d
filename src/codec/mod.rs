//! Codec math: sample-format conversions between the wire payloads of a call
//! leg and the linear PCM the room works in.
//!
//! Where it sits in the data flow of one call:
//!
//! ```text
//! RTP in (PCMU/PCMA payload, 8 kHz) --g711::*_decode--> PCM 8k --> Opus encode / mixer
//! mixer / Opus decode @8k --> PCM 8k --g711::*_encode--> RTP out (PCMU/PCMA payload)
//! ```
//!
//! What it owns: pure functions and per-call codec state only. Nothing here
//! touches a socket, a clock or an RTP header; the caller hands in a payload
//! slice and a caller-owned output buffer, so no per-packet path allocates.

pub mod g711;
pub mod opus;
