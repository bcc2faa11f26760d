//! SIP signaling (RFC 3261, RFC 3581): wire syntax, transactions, the UAS call core.
//!
//! Data flow: a shard's socket hands bytes to [`endpoint::Endpoint`], which parses
//! them ([`message`]), routes them to the shard that owns the call, runs the server
//! and client transactions ([`transaction`]) and the inbound call state machine.
//! Responses and requests we originate are written by [`builder`]; digest
//! authentication is [`digest`]. Everything here is sans-IO: bytes and `Instant`s
//! in, bytes, events and the next deadline out.

pub mod builder;
pub mod digest;
pub mod endpoint;
pub mod message;
pub mod transaction;
