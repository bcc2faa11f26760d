//! RTP media core (RFC 3550, RFC 4733): everything a call leg does with RTP and
//! RTCP packets that is not socket IO or codec math.
//!
//! Where it sits in the data flow of one call:
//!
//! ```text
//! trunk --RTP--> socket (kernel rx timestamp) --> packet::RtpPacket::parse
//!     --> stats::ReceiveStats::on_packet (loss, reorder, duplicates, jitter in µs)
//!     --> telephone-event PT? dtmf::DtmfReceiver  (digit events for the room)
//!     --> else jitter_buffer::JitterBuffer::push ... pop every 20 ms --> G.711 decode
//! trunk <--RTP-- packet::RtpHeader::write <-- G.711 encode | dtmf::DtmfSender
//! trunk <-RTCP-> rtcp::RtcpSession (SR/RR + SDES, RTT, report deadline)
//! ```
//!
//! What it owns: the RTP/RTCP wire formats, per-leg receive statistics, the DTMF
//! event machines and the adaptive jitter buffer. All of it is sans-IO: packets,
//! `Instant`s (or kernel receive times in µs) in; bytes, events, frames and
//! deadlines out. Nothing here reads a clock, sleeps or touches a socket, and no
//! per-packet path allocates.

pub mod dtmf;
pub mod jitter_buffer;
pub mod packet;
pub mod rtcp;
pub mod stats;

pub use dtmf::{DtmfEvent, DtmfPacket, DtmfReceiver, DtmfSender};
pub use jitter_buffer::{Frame, JitterBuffer, JitterBufferConfig};
pub use packet::{is_rtcp, RtpError, RtpHeader, RtpPacket};
pub use rtcp::{NtpTime, ReportBlock, RtcpError, RtcpSession};
pub use stats::{PacketClass, ReceiveCounters, ReceiveStats};
