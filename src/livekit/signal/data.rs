//! Data packets: who gets a `DataPacket` a participant sent, and how a
//! caller's DTMF digit reaches the room.
//!
//! Where it sits: LiveKit carries data over the WebRTC data channels
//! (`_reliable` ordered, `_lossy` unordered; `docs/livekit.md` section 6),
//! not over the signal socket. The media layer receives a message on a
//! participant's channel, asks [`RoomSignal::route_data`] what to do with it,
//! and writes [`DataRoute::packet`] on the same kind of channel of each
//! participant in [`DataRoute::to`]; SIP participants have no data channel,
//! so a `sip_dtmf` packet addressed to them comes back as digits to play as
//! RFC 4733 events ([`DataRoute::dtmf_to_sip`]). The room's membership is the
//! only state read: routing changes nothing.
//!
//! What it owns: livekit-server's rules (`rtc/room.go`, data forwarding):
//! the sender's identity and sid are overwritten (never trust the client's),
//! `canPublishData` is required, destinations are identities (the deprecated
//! `UserPacket.destination_identities` / `destination_sids` still read), none
//! means everyone else, the sender never gets its own packet back.

use livekit_protocol as lk;
use prost::Message as _;

use super::{Link, ParticipantSid, RoomSignal};
use crate::livekit::sip_participant::{dtmf_code, dtmf_from_packet};

/// Largest data packet routed (an SCTP user message of the SDKs' reliable
/// channel is at most 64 KiB; livekit-client chunks bigger payloads into
/// data streams).
pub const MAX_DATA_PACKET: usize = 64 * 1024;

/// What to do with one data packet.
#[derive(Clone, Debug, PartialEq)]
pub struct DataRoute {
    /// WebRTC participants to send [`DataRoute::packet`] to.
    pub to: Vec<ParticipantSid>,
    /// The packet to send (the sender's identity filled in by us).
    pub packet: Vec<u8>,
    /// Send on `_reliable` (else `_lossy`): the channel it came on.
    pub reliable: bool,
    /// SIP participants that must play a DTMF digit (the packet was a
    /// `sip_dtmf` addressed to them, or to everyone).
    pub dtmf_to_sip: Vec<(ParticipantSid, char)>,
}

/// Why a data packet is dropped.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("no participant {0} in this room")]
    UnknownParticipant(ParticipantSid),
    #[error("{0} may not publish data")]
    NotAllowed(ParticipantSid),
    #[error("data packet of {0} bytes, more than {MAX_DATA_PACKET}")]
    TooLarge(usize),
    #[error("cannot decode DataPacket: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("not a DTMF digit: {0:?}")]
    NotDtmf(char),
}

impl RoomSignal {
    /// Route `packet`, a `DataPacket` that `from` sent on its reliable
    /// (`reliable`) or lossy data channel.
    pub fn route_data(
        &self,
        from: &ParticipantSid,
        packet: &[u8],
        reliable: bool,
    ) -> Result<DataRoute, DataError> {
        if packet.len() > MAX_DATA_PACKET {
            return Err(DataError::TooLarge(packet.len()));
        }
        let sender = self
            .participants
            .get(from)
            .ok_or_else(|| DataError::UnknownParticipant(from.clone()))?;
        if !sender.permission().can_publish_data {
            return Err(DataError::NotAllowed(from.clone()));
        }
        let mut dp = lk::DataPacket::decode(packet)?;
        dp.participant_identity = sender.info.identity.clone();
        dp.participant_sid = from.0.clone();
        let mut identities = std::mem::take(&mut dp.destination_identities);
        let mut sids: Vec<String> = Vec::new();
        #[allow(deprecated)]
        if let Some(lk::data_packet::Value::User(user)) = &mut dp.value {
            user.participant_identity = sender.info.identity.clone();
            user.participant_sid = from.0.clone();
            if identities.is_empty() {
                identities = user.destination_identities.clone();
                sids = user.destination_sids.clone();
            }
        }
        let dtmf = match &dp.value {
            Some(lk::data_packet::Value::SipDtmf(d)) => dtmf_from_packet(d.code, &d.digit),
            _ => None,
        };
        let everyone = identities.is_empty() && sids.is_empty();
        let mut route = DataRoute {
            to: Vec::new(),
            packet: Vec::new(),
            reliable,
            dtmf_to_sip: Vec::new(),
        };
        for (sid, p) in &self.participants {
            if sid == from {
                continue;
            }
            let addressed =
                everyone || identities.contains(&p.info.identity) || sids.contains(&sid.0);
            if !addressed {
                continue;
            }
            match &p.link {
                Link::Signal { .. } => route.to.push(sid.clone()),
                Link::Sip(_) => {
                    if let Some(digit) = dtmf {
                        route.dtmf_to_sip.push((sid.clone(), digit));
                    }
                }
            }
        }
        dp.destination_identities = identities;
        route.packet = dp.encode_to_vec();
        Ok(route)
    }

    /// The SIP caller `from` pressed `digit` (an RFC 4733 event the RTP side
    /// decoded): a `sip_dtmf` packet to every other participant, on the
    /// reliable channel (the Python SDK raises `sip_dtmf_received`).
    pub fn sip_dtmf(&self, from: &ParticipantSid, digit: char) -> Result<DataRoute, DataError> {
        let code = dtmf_code(digit).ok_or(DataError::NotDtmf(digit))?;
        let sender = self
            .participants
            .get(from)
            .ok_or_else(|| DataError::UnknownParticipant(from.clone()))?;
        #[allow(deprecated)]
        let dp = lk::DataPacket {
            kind: lk::data_packet::Kind::Reliable as i32,
            participant_identity: sender.info.identity.clone(),
            participant_sid: from.0.clone(),
            value: Some(lk::data_packet::Value::SipDtmf(lk::SipDtmf {
                code,
                digit: digit.to_ascii_uppercase().to_string(),
            })),
            ..Default::default()
        };
        let to = self
            .participants
            .iter()
            .filter(|(sid, p)| *sid != from && matches!(p.link, Link::Signal { .. }))
            .map(|(sid, _)| sid.clone())
            .collect();
        Ok(DataRoute {
            to,
            packet: dp.encode_to_vec(),
            reliable: true,
            dtmf_to_sip: Vec::new(),
        })
    }
}
