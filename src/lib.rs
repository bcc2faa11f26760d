//! switchboard: a thread-per-core SIP-to-WebRTC media gateway.
//!
//! See `docs/architecture.md` for the data flow and where each module sits in it.
//! Sans-IO protocol cores (`sip`, `sdp`, `rtp`, `routing`, `media`) never read the
//! clock or touch a socket; `runtime` is the IO edge that drives them on glommio.

pub mod codec;
pub mod config;
pub mod livekit;
pub mod media;
pub mod metrics;
pub mod routing;
pub mod rtp;
pub mod runtime;
pub mod sdp;
pub mod sip;
