//! switchboard: a thread-per-core SIP-to-WebRTC media gateway.
//!
//! See `docs/architecture.md` for the data flow and where each module sits in it.

pub mod sip;
