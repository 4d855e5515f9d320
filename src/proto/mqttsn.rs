//! MQTT-SN 1.2 messages, sans-IO: one datagram in, one [`Message`] out, and back.
//!
//! Every message type of the specification (§5) is decoded and encoded, in the 1-byte length
//! form (up to 255 bytes) and the 3-byte form (`0x01` and two bytes). Decoding is strict: the
//! length field must match the datagram, fixed-size messages must have their exact size,
//! reserved flag values and protocol ids are refused, client ids are at most 23 bytes of UTF-8
//! and topic names UTF-8. The only leniency: the 3-byte form is accepted for short messages
//! (the encoder uses it only when needed).

/// Largest datagram the codec handles (the 3-byte length form's limit).
pub const MAX_DATAGRAM: usize = 65_535;
/// Longest client id (MQTT-SN 1.2 §5.4.4).
pub const MAX_CLIENT_ID: usize = 23;
/// The protocol id in CONNECT.
pub const PROTOCOL_ID: u8 = 0x01;

/// How a PUBLISH, SUBSCRIBE or UNSUBSCRIBE names its topic (flags bits 0–1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// A topic id the gateway or the client registered.
    Id(u16),
    /// A topic id both sides know in advance.
    Predefined(u16),
    /// A two-character topic name, sent in place of an id.
    Short([u8; 2]),
    /// A topic name or filter (SUBSCRIBE and UNSUBSCRIBE only).
    Name(String),
}

/// QoS as MQTT-SN encodes it; `MinusOne` publishes without a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QoS {
    Zero,
    One,
    Two,
    MinusOne,
}

/// The flags byte, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub will: bool,
    pub clean_session: bool,
    /// 0 normal id (or name), 1 predefined, 2 short name; 3 is reserved and refused.
    pub topic_id_type: u8,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            dup: false,
            qos: QoS::Zero,
            retain: false,
            will: false,
            clean_session: false,
            topic_id_type: 0,
        }
    }
}

impl Flags {
    fn decode(byte: u8) -> Result<Flags, DecodeError> {
        let topic_id_type = byte & 0x03;
        if topic_id_type == 3 {
            return Err(DecodeError::ReservedTopicIdType);
        }
        Ok(Flags {
            dup: byte & 0x80 != 0,
            qos: match (byte >> 5) & 0x03 {
                0 => QoS::Zero,
                1 => QoS::One,
                2 => QoS::Two,
                _ => QoS::MinusOne,
            },
            retain: byte & 0x10 != 0,
            will: byte & 0x08 != 0,
            clean_session: byte & 0x04 != 0,
            topic_id_type,
        })
    }

    fn encode(self) -> u8 {
        let qos = match self.qos {
            QoS::Zero => 0,
            QoS::One => 1,
            QoS::Two => 2,
            QoS::MinusOne => 3,
        };
        (u8::from(self.dup) << 7)
            | (qos << 5)
            | (u8::from(self.retain) << 4)
            | (u8::from(self.will) << 3)
            | (u8::from(self.clean_session) << 2)
            | (self.topic_id_type & 0x03)
    }
}

/// Return codes (§5.3.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnCode {
    Accepted,
    Congestion,
    InvalidTopicId,
    NotSupported,
    /// 0x04–0xFF are reserved; kept so that a decoded message re-encodes as it came.
    Reserved(u8),
}

impl ReturnCode {
    fn decode(byte: u8) -> ReturnCode {
        match byte {
            0 => ReturnCode::Accepted,
            1 => ReturnCode::Congestion,
            2 => ReturnCode::InvalidTopicId,
            3 => ReturnCode::NotSupported,
            other => ReturnCode::Reserved(other),
        }
    }

    fn encode(self) -> u8 {
        match self {
            ReturnCode::Accepted => 0,
            ReturnCode::Congestion => 1,
            ReturnCode::InvalidTopicId => 2,
            ReturnCode::NotSupported => 3,
            ReturnCode::Reserved(byte) => byte,
        }
    }
}

/// One MQTT-SN message. Field names follow the specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Advertise {
        gw_id: u8,
        duration: u16,
    },
    SearchGw {
        radius: u8,
    },
    GwInfo {
        gw_id: u8,
        gw_add: Vec<u8>,
    },
    Connect {
        flags: Flags,
        duration: u16,
        client_id: String,
    },
    ConnAck {
        code: ReturnCode,
    },
    WillTopicReq,
    /// `None`: the empty WILLTOPIC, which deletes the will.
    WillTopic {
        will: Option<(Flags, String)>,
    },
    WillMsgReq,
    WillMsg {
        message: Vec<u8>,
    },
    Register {
        topic_id: u16,
        msg_id: u16,
        topic_name: String,
    },
    RegAck {
        topic_id: u16,
        msg_id: u16,
        code: ReturnCode,
    },
    /// The topic id is read as [`Flags::topic_id_type`] says.
    Publish {
        flags: Flags,
        topic_id: u16,
        msg_id: u16,
        data: Vec<u8>,
    },
    PubAck {
        topic_id: u16,
        msg_id: u16,
        code: ReturnCode,
    },
    PubRec {
        msg_id: u16,
    },
    PubRel {
        msg_id: u16,
    },
    PubComp {
        msg_id: u16,
    },
    Subscribe {
        flags: Flags,
        msg_id: u16,
        topic: Topic,
    },
    SubAck {
        flags: Flags,
        topic_id: u16,
        msg_id: u16,
        code: ReturnCode,
    },
    Unsubscribe {
        flags: Flags,
        msg_id: u16,
        topic: Topic,
    },
    UnsubAck {
        msg_id: u16,
    },
    PingReq {
        client_id: Option<String>,
    },
    PingResp,
    Disconnect {
        duration: Option<u16>,
    },
    WillTopicUpd {
        will: Option<(Flags, String)>,
    },
    WillTopicResp {
        code: ReturnCode,
    },
    WillMsgUpd {
        message: Vec<u8>,
    },
    WillMsgResp {
        code: ReturnCode,
    },
    /// A forwarder's envelope (§5.5): the wireless node's id and the message it sent.
    Encapsulated {
        ctrl: u8,
        node_id: Vec<u8>,
        inner: Box<Message>,
    },
}

/// Why a datagram is not an MQTT-SN message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("datagram too short ({0} bytes)")]
    TooShort(usize),
    #[error("length field says {field} bytes, the datagram has {actual}")]
    LengthMismatch { field: usize, actual: usize },
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    #[error("{name} must be {expected} bytes, not {actual}")]
    WrongSize {
        name: &'static str,
        expected: &'static str,
        actual: usize,
    },
    #[error("reserved topic id type 3")]
    ReservedTopicIdType,
    #[error("unknown protocol id 0x{0:02x}")]
    ProtocolId(u8),
    #[error("client id is empty, longer than 23 bytes or not UTF-8")]
    ClientId,
    #[error("topic name is empty or not UTF-8")]
    TopicName,
    #[error("a forwarder envelope inside a forwarder envelope")]
    NestedEncapsulation,
}

/// Message type bytes (§5.2.2).
mod kind {
    pub const ADVERTISE: u8 = 0x00;
    pub const SEARCHGW: u8 = 0x01;
    pub const GWINFO: u8 = 0x02;
    pub const CONNECT: u8 = 0x04;
    pub const CONNACK: u8 = 0x05;
    pub const WILLTOPICREQ: u8 = 0x06;
    pub const WILLTOPIC: u8 = 0x07;
    pub const WILLMSGREQ: u8 = 0x08;
    pub const WILLMSG: u8 = 0x09;
    pub const REGISTER: u8 = 0x0A;
    pub const REGACK: u8 = 0x0B;
    pub const PUBLISH: u8 = 0x0C;
    pub const PUBACK: u8 = 0x0D;
    pub const PUBCOMP: u8 = 0x0E;
    pub const PUBREC: u8 = 0x0F;
    pub const PUBREL: u8 = 0x10;
    pub const SUBSCRIBE: u8 = 0x12;
    pub const SUBACK: u8 = 0x13;
    pub const UNSUBSCRIBE: u8 = 0x14;
    pub const UNSUBACK: u8 = 0x15;
    pub const PINGREQ: u8 = 0x16;
    pub const PINGRESP: u8 = 0x17;
    pub const DISCONNECT: u8 = 0x18;
    pub const WILLTOPICUPD: u8 = 0x1A;
    pub const WILLTOPICRESP: u8 = 0x1B;
    pub const WILLMSGUPD: u8 = 0x1C;
    pub const WILLMSGRESP: u8 = 0x1D;
    pub const ENCAPSULATED: u8 = 0xFE;
}

fn u16_at(body: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([body[at], body[at + 1]])
}

fn exact(name: &'static str, expected: usize, body: &[u8]) -> Result<(), DecodeError> {
    if body.len() == expected {
        Ok(())
    } else {
        Err(DecodeError::WrongSize {
            name,
            expected: match expected {
                0 => "2",
                1 => "3",
                2 => "4",
                3 => "5",
                4 => "6",
                5 => "7",
                _ => "?",
            },
            actual: body.len() + 2,
        })
    }
}

fn at_least(name: &'static str, minimum: usize, body: &[u8]) -> Result<(), DecodeError> {
    if body.len() >= minimum {
        Ok(())
    } else {
        Err(DecodeError::WrongSize {
            name,
            expected: match minimum {
                1 => "at least 3",
                2 => "at least 4",
                4 => "at least 6",
                5 => "at least 7",
                _ => "more than that",
            },
            actual: body.len() + 2,
        })
    }
}

fn topic_name(bytes: &[u8]) -> Result<String, DecodeError> {
    match std::str::from_utf8(bytes) {
        Ok(name) if !name.is_empty() => Ok(name.to_owned()),
        _ => Err(DecodeError::TopicName),
    }
}

fn will(body: &[u8]) -> Result<Option<(Flags, String)>, DecodeError> {
    match body.split_first() {
        None => Ok(None),
        Some((&flags, name)) => Ok(Some((Flags::decode(flags)?, topic_name(name)?))),
    }
}

/// Splits off the length header; returns the message type and the rest.
fn frame(datagram: &[u8]) -> Result<(u8, &[u8]), DecodeError> {
    let (field, header) = match datagram {
        [] | [_] => return Err(DecodeError::TooShort(datagram.len())),
        [0x01, high, low, ..] => (usize::from(u16::from_be_bytes([*high, *low])), 3),
        [0x01, ..] => return Err(DecodeError::TooShort(datagram.len())),
        [length, ..] => (usize::from(*length), 1),
    };
    if field != datagram.len() || field <= header {
        return Err(DecodeError::LengthMismatch {
            field,
            actual: datagram.len(),
        });
    }
    Ok((datagram[header], &datagram[header + 1..]))
}

impl Message {
    /// Reads one datagram.
    pub fn decode(datagram: &[u8]) -> Result<Message, DecodeError> {
        // A forwarder's envelope (§5.5): its 1-byte length covers only the envelope's header
        // (length, type, ctrl, node id); a whole message follows.
        if let [header, kind::ENCAPSULATED, ctrl, ..] = *datagram {
            let header = usize::from(header);
            if header < 3 || header > datagram.len() {
                return Err(DecodeError::LengthMismatch {
                    field: header,
                    actual: datagram.len(),
                });
            }
            let (kind, body) = frame(&datagram[header..])?;
            return Ok(Message::Encapsulated {
                ctrl,
                node_id: datagram[3..header].to_vec(),
                inner: Box::new(Self::decode_body(kind, body)?),
            });
        }
        let (kind, body) = frame(datagram)?;
        Self::decode_body(kind, body)
    }

    fn decode_body(kind: u8, body: &[u8]) -> Result<Message, DecodeError> {
        use kind::*;
        Ok(match kind {
            ADVERTISE => {
                exact("ADVERTISE", 3, body)?;
                Message::Advertise {
                    gw_id: body[0],
                    duration: u16_at(body, 1),
                }
            }
            SEARCHGW => {
                exact("SEARCHGW", 1, body)?;
                Message::SearchGw { radius: body[0] }
            }
            GWINFO => {
                at_least("GWINFO", 1, body)?;
                Message::GwInfo {
                    gw_id: body[0],
                    gw_add: body[1..].to_vec(),
                }
            }
            CONNECT => {
                at_least("CONNECT", 4, body)?;
                let flags = Flags::decode(body[0])?;
                if body[1] != PROTOCOL_ID {
                    return Err(DecodeError::ProtocolId(body[1]));
                }
                let client_id = match std::str::from_utf8(&body[4..]) {
                    Ok(id) if !id.is_empty() && id.len() <= MAX_CLIENT_ID => id.to_owned(),
                    _ => return Err(DecodeError::ClientId),
                };
                Message::Connect {
                    flags,
                    duration: u16_at(body, 2),
                    client_id,
                }
            }
            CONNACK => {
                exact("CONNACK", 1, body)?;
                Message::ConnAck {
                    code: ReturnCode::decode(body[0]),
                }
            }
            WILLTOPICREQ => {
                exact("WILLTOPICREQ", 0, body)?;
                Message::WillTopicReq
            }
            WILLTOPIC => Message::WillTopic { will: will(body)? },
            WILLMSGREQ => {
                exact("WILLMSGREQ", 0, body)?;
                Message::WillMsgReq
            }
            WILLMSG => Message::WillMsg {
                message: body.to_vec(),
            },
            REGISTER => {
                at_least("REGISTER", 5, body)?;
                Message::Register {
                    topic_id: u16_at(body, 0),
                    msg_id: u16_at(body, 2),
                    topic_name: topic_name(&body[4..])?,
                }
            }
            REGACK | PUBACK => {
                exact(if kind == REGACK { "REGACK" } else { "PUBACK" }, 5, body)?;
                let (topic_id, msg_id, code) = (
                    u16_at(body, 0),
                    u16_at(body, 2),
                    ReturnCode::decode(body[4]),
                );
                if kind == REGACK {
                    Message::RegAck {
                        topic_id,
                        msg_id,
                        code,
                    }
                } else {
                    Message::PubAck {
                        topic_id,
                        msg_id,
                        code,
                    }
                }
            }
            PUBLISH => {
                at_least("PUBLISH", 5, body)?;
                Message::Publish {
                    flags: Flags::decode(body[0])?,
                    topic_id: u16_at(body, 1),
                    msg_id: u16_at(body, 3),
                    data: body[5..].to_vec(),
                }
            }
            PUBCOMP | PUBREC | PUBREL => {
                let name = match kind {
                    PUBCOMP => "PUBCOMP",
                    PUBREC => "PUBREC",
                    _ => "PUBREL",
                };
                exact(name, 2, body)?;
                let msg_id = u16_at(body, 0);
                match kind {
                    PUBCOMP => Message::PubComp { msg_id },
                    PUBREC => Message::PubRec { msg_id },
                    _ => Message::PubRel { msg_id },
                }
            }
            SUBSCRIBE | UNSUBSCRIBE => {
                let name = if kind == SUBSCRIBE {
                    "SUBSCRIBE"
                } else {
                    "UNSUBSCRIBE"
                };
                at_least(name, 4, body)?;
                let flags = Flags::decode(body[0])?;
                let msg_id = u16_at(body, 1);
                let rest = &body[3..];
                let topic = match flags.topic_id_type {
                    0 => Topic::Name(topic_name(rest)?),
                    id_type => {
                        exact(name, 5, body)?;
                        if id_type == 1 {
                            Topic::Predefined(u16_at(rest, 0))
                        } else {
                            Topic::Short([rest[0], rest[1]])
                        }
                    }
                };
                if kind == SUBSCRIBE {
                    Message::Subscribe {
                        flags,
                        msg_id,
                        topic,
                    }
                } else {
                    Message::Unsubscribe {
                        flags,
                        msg_id,
                        topic,
                    }
                }
            }
            SUBACK => {
                exact("SUBACK", 6, body)?;
                Message::SubAck {
                    flags: Flags::decode(body[0])?,
                    topic_id: u16_at(body, 1),
                    msg_id: u16_at(body, 3),
                    code: ReturnCode::decode(body[5]),
                }
            }
            UNSUBACK => {
                exact("UNSUBACK", 2, body)?;
                Message::UnsubAck {
                    msg_id: u16_at(body, 0),
                }
            }
            PINGREQ => Message::PingReq {
                client_id: if body.is_empty() {
                    None
                } else {
                    match std::str::from_utf8(body) {
                        Ok(id) if id.len() <= MAX_CLIENT_ID => Some(id.to_owned()),
                        _ => return Err(DecodeError::ClientId),
                    }
                },
            },
            PINGRESP => {
                exact("PINGRESP", 0, body)?;
                Message::PingResp
            }
            DISCONNECT => match body.len() {
                0 => Message::Disconnect { duration: None },
                2 => Message::Disconnect {
                    duration: Some(u16_at(body, 0)),
                },
                actual => {
                    return Err(DecodeError::WrongSize {
                        name: "DISCONNECT",
                        expected: "2 or 4",
                        actual: actual + 2,
                    });
                }
            },
            WILLTOPICUPD => Message::WillTopicUpd { will: will(body)? },
            WILLTOPICRESP | WILLMSGRESP => {
                let name = if kind == WILLTOPICRESP {
                    "WILLTOPICRESP"
                } else {
                    "WILLMSGRESP"
                };
                exact(name, 1, body)?;
                let code = ReturnCode::decode(body[0]);
                if kind == WILLTOPICRESP {
                    Message::WillTopicResp { code }
                } else {
                    Message::WillMsgResp { code }
                }
            }
            WILLMSGUPD => Message::WillMsgUpd {
                message: body.to_vec(),
            },
            ENCAPSULATED => return Err(DecodeError::NestedEncapsulation),
            other => return Err(DecodeError::UnknownType(other)),
        })
    }

    /// The message's type byte and body (everything after the type).
    fn body(&self) -> (u8, Vec<u8>) {
        use kind::*;
        let mut b = Vec::new();
        let kind = match self {
            Message::Advertise { gw_id, duration } => {
                b.push(*gw_id);
                b.extend(duration.to_be_bytes());
                ADVERTISE
            }
            Message::SearchGw { radius } => {
                b.push(*radius);
                SEARCHGW
            }
            Message::GwInfo { gw_id, gw_add } => {
                b.push(*gw_id);
                b.extend(gw_add);
                GWINFO
            }
            Message::Connect {
                flags,
                duration,
                client_id,
            } => {
                b.extend([flags.encode(), PROTOCOL_ID]);
                b.extend(duration.to_be_bytes());
                b.extend(client_id.as_bytes());
                CONNECT
            }
            Message::ConnAck { code } => {
                b.push(code.encode());
                CONNACK
            }
            Message::WillTopicReq => WILLTOPICREQ,
            Message::WillTopic { will } | Message::WillTopicUpd { will } => {
                if let Some((flags, topic)) = will {
                    b.push(flags.encode());
                    b.extend(topic.as_bytes());
                }
                if matches!(self, Message::WillTopic { .. }) {
                    WILLTOPIC
                } else {
                    WILLTOPICUPD
                }
            }
            Message::WillMsgReq => WILLMSGREQ,
            Message::WillMsg { message } => {
                b.extend(message);
                WILLMSG
            }
            Message::Register {
                topic_id,
                msg_id,
                topic_name,
            } => {
                b.extend(topic_id.to_be_bytes());
                b.extend(msg_id.to_be_bytes());
                b.extend(topic_name.as_bytes());
                REGISTER
            }
            Message::RegAck {
                topic_id,
                msg_id,
                code,
            }
            | Message::PubAck {
                topic_id,
                msg_id,
                code,
            } => {
                b.extend(topic_id.to_be_bytes());
                b.extend(msg_id.to_be_bytes());
                b.push(code.encode());
                if matches!(self, Message::RegAck { .. }) {
                    REGACK
                } else {
                    PUBACK
                }
            }
            Message::Publish {
                flags,
                topic_id,
                msg_id,
                data,
            } => {
                b.push(flags.encode());
                b.extend(topic_id.to_be_bytes());
                b.extend(msg_id.to_be_bytes());
                b.extend(data);
                PUBLISH
            }
            Message::PubRec { msg_id } => {
                b.extend(msg_id.to_be_bytes());
                PUBREC
            }
            Message::PubRel { msg_id } => {
                b.extend(msg_id.to_be_bytes());
                PUBREL
            }
            Message::PubComp { msg_id } => {
                b.extend(msg_id.to_be_bytes());
                PUBCOMP
            }
            Message::Subscribe {
                flags,
                msg_id,
                topic,
            }
            | Message::Unsubscribe {
                flags,
                msg_id,
                topic,
            } => {
                let id_type = match topic {
                    Topic::Name(_) | Topic::Id(_) => 0,
                    Topic::Predefined(_) => 1,
                    Topic::Short(_) => 2,
                };
                b.push(
                    Flags {
                        topic_id_type: id_type,
                        ..*flags
                    }
                    .encode(),
                );
                b.extend(msg_id.to_be_bytes());
                match topic {
                    Topic::Name(name) => b.extend(name.as_bytes()),
                    Topic::Id(id) | Topic::Predefined(id) => b.extend(id.to_be_bytes()),
                    Topic::Short(name) => b.extend(name),
                }
                if matches!(self, Message::Subscribe { .. }) {
                    SUBSCRIBE
                } else {
                    UNSUBSCRIBE
                }
            }
            Message::SubAck {
                flags,
                topic_id,
                msg_id,
                code,
            } => {
                b.push(flags.encode());
                b.extend(topic_id.to_be_bytes());
                b.extend(msg_id.to_be_bytes());
                b.push(code.encode());
                SUBACK
            }
            Message::UnsubAck { msg_id } => {
                b.extend(msg_id.to_be_bytes());
                UNSUBACK
            }
            Message::PingReq { client_id } => {
                if let Some(id) = client_id {
                    b.extend(id.as_bytes());
                }
                PINGREQ
            }
            Message::PingResp => PINGRESP,
            Message::Disconnect { duration } => {
                if let Some(duration) = duration {
                    b.extend(duration.to_be_bytes());
                }
                DISCONNECT
            }
            Message::WillTopicResp { code } => {
                b.push(code.encode());
                WILLTOPICRESP
            }
            Message::WillMsgUpd { message } => {
                b.extend(message);
                WILLMSGUPD
            }
            Message::WillMsgResp { code } => {
                b.push(code.encode());
                WILLMSGRESP
            }
            Message::Encapsulated { .. } => ENCAPSULATED,
        };
        (kind, b)
    }

    /// Writes the datagram: the 1-byte length form when it fits, the 3-byte form otherwise.
    /// Messages longer than [`MAX_DATAGRAM`] cannot be sent; the caller keeps payloads smaller.
    pub fn encode(&self) -> Vec<u8> {
        if let Message::Encapsulated {
            ctrl,
            node_id,
            inner,
        } = self
        {
            // The header's length is one byte: node ids longer than 252 bytes are cut.
            let node_id = &node_id[..node_id.len().min(252)];
            let mut out = vec![(node_id.len() + 3) as u8, kind::ENCAPSULATED, *ctrl];
            out.extend(node_id);
            out.extend(inner.encode());
            return out;
        }
        let (kind, body) = self.body();
        let short = body.len() + 2;
        let mut out = Vec::with_capacity(short + 2);
        if short <= 255 {
            out.push(short as u8);
        } else {
            let long = (body.len() + 4).min(MAX_DATAGRAM) as u16;
            out.push(0x01);
            out.extend(long.to_be_bytes());
        }
        out.push(kind);
        out.extend(body);
        out
    }

    /// The specification's name of the message type, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Advertise { .. } => "ADVERTISE",
            Message::SearchGw { .. } => "SEARCHGW",
            Message::GwInfo { .. } => "GWINFO",
            Message::Connect { .. } => "CONNECT",
            Message::ConnAck { .. } => "CONNACK",
            Message::WillTopicReq => "WILLTOPICREQ",
            Message::WillTopic { .. } => "WILLTOPIC",
            Message::WillMsgReq => "WILLMSGREQ",
            Message::WillMsg { .. } => "WILLMSG",
            Message::Register { .. } => "REGISTER",
            Message::RegAck { .. } => "REGACK",
            Message::Publish { .. } => "PUBLISH",
            Message::PubAck { .. } => "PUBACK",
            Message::PubRec { .. } => "PUBREC",
            Message::PubRel { .. } => "PUBREL",
            Message::PubComp { .. } => "PUBCOMP",
            Message::Subscribe { .. } => "SUBSCRIBE",
            Message::SubAck { .. } => "SUBACK",
            Message::Unsubscribe { .. } => "UNSUBSCRIBE",
            Message::UnsubAck { .. } => "UNSUBACK",
            Message::PingReq { .. } => "PINGREQ",
            Message::PingResp => "PINGRESP",
            Message::Disconnect { .. } => "DISCONNECT",
            Message::WillTopicUpd { .. } => "WILLTOPICUPD",
            Message::WillTopicResp { .. } => "WILLTOPICRESP",
            Message::WillMsgUpd { .. } => "WILLMSGUPD",
            Message::WillMsgResp { .. } => "WILLMSGRESP",
            Message::Encapsulated { .. } => "ENCAPSULATED",
        }
    }
}

/// Whether an MQTT topic filter has wildcards (then SUBACK carries topic id 0 and the
/// gateway REGISTERs each matching topic before publishing it).
pub fn has_wildcards(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// MQTT topic matching (MQTT 3.1.1 §4.7): `+` one level, `#` the rest (also the parent).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return !topic.starts_with('$'),
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(qos: QoS, topic_id_type: u8) -> Flags {
        Flags {
            qos,
            topic_id_type,
            ..Flags::default()
        }
    }

    /// Byte layouts straight from MQTT-SN 1.2 §5.4, one per message type.
    #[test]
    fn decodes_the_specifications_layouts() {
        let cases: Vec<(&[u8], Message)> = vec![
            (
                &[5, 0x00, 7, 0x03, 0x84],
                Message::Advertise {
                    gw_id: 7,
                    duration: 900,
                },
            ),
            (&[3, 0x01, 1], Message::SearchGw { radius: 1 }),
            (
                &[3, 0x02, 9],
                Message::GwInfo {
                    gw_id: 9,
                    gw_add: vec![],
                },
            ),
            (
                &[9, 0x04, 0x04, 0x01, 0x00, 0x3c, b'n', b'o', b'd'],
                Message::Connect {
                    flags: Flags {
                        clean_session: true,
                        ..Flags::default()
                    },
                    duration: 60,
                    client_id: "nod".into(),
                },
            ),
            (
                &[3, 0x05, 0x00],
                Message::ConnAck {
                    code: ReturnCode::Accepted,
                },
            ),
            (&[2, 0x06], Message::WillTopicReq),
            (
                &[5, 0x07, 0x20, b'a', b'/'],
                Message::WillTopic {
                    will: Some((flags(QoS::One, 0), "a/".into())),
                },
            ),
            (&[2, 0x07], Message::WillTopic { will: None }),
            (&[2, 0x08], Message::WillMsgReq),
            (
                &[4, 0x09, b'b', b'y'],
                Message::WillMsg {
                    message: b"by".to_vec(),
                },
            ),
            (
                &[7, 0x0A, 0, 0, 0, 1, b't'],
                Message::Register {
                    topic_id: 0,
                    msg_id: 1,
                    topic_name: "t".into(),
                },
            ),
            (
                &[7, 0x0B, 0, 5, 0, 1, 0],
                Message::RegAck {
                    topic_id: 5,
                    msg_id: 1,
                    code: ReturnCode::Accepted,
                },
            ),
            (
                &[9, 0x0C, 0x20, 0, 5, 0, 2, b'h', b'i'],
                Message::Publish {
                    flags: flags(QoS::One, 0),
                    topic_id: 5,
                    msg_id: 2,
                    data: b"hi".to_vec(),
                },
            ),
            (
                &[7, 0x0D, 0, 5, 0, 2, 2],
                Message::PubAck {
                    topic_id: 5,
                    msg_id: 2,
                    code: ReturnCode::InvalidTopicId,
                },
            ),
            (&[4, 0x0E, 0, 3], Message::PubComp { msg_id: 3 }),
            (&[4, 0x0F, 0, 3], Message::PubRec { msg_id: 3 }),
            (&[4, 0x10, 0, 3], Message::PubRel { msg_id: 3 }),
            (
                &[7, 0x12, 0x20, 0, 4, b'a', b'/'],
                Message::Subscribe {
                    flags: flags(QoS::One, 0),
                    msg_id: 4,
                    topic: Topic::Name("a/".into()),
                },
            ),
            (
                &[7, 0x12, 0x01, 0, 4, 0, 9],
                Message::Subscribe {
                    flags: flags(QoS::Zero, 1),
                    msg_id: 4,
                    topic: Topic::Predefined(9),
                },
            ),
            (
                &[8, 0x13, 0x20, 0, 5, 0, 4, 0],
                Message::SubAck {
                    flags: flags(QoS::One, 0),
                    topic_id: 5,
                    msg_id: 4,
                    code: ReturnCode::Accepted,
                },
            ),
            (
                &[7, 0x14, 0x02, 0, 4, b'a', b'b'],
                Message::Unsubscribe {
                    flags: flags(QoS::Zero, 2),
                    msg_id: 4,
                    topic: Topic::Short(*b"ab"),
                },
            ),
            (&[4, 0x15, 0, 4], Message::UnsubAck { msg_id: 4 }),
            (&[2, 0x16], Message::PingReq { client_id: None }),
            (
                &[4, 0x16, b'i', b'd'],
                Message::PingReq {
                    client_id: Some("id".into()),
                },
            ),
            (&[2, 0x17], Message::PingResp),
            (&[2, 0x18], Message::Disconnect { duration: None }),
            (
                &[4, 0x18, 0, 60],
                Message::Disconnect { duration: Some(60) },
            ),
            (
                &[4, 0x1A, 0x00, b'w'],
                Message::WillTopicUpd {
                    will: Some((Flags::default(), "w".into())),
                },
            ),
            (
                &[3, 0x1B, 0],
                Message::WillTopicResp {
                    code: ReturnCode::Accepted,
                },
            ),
            (
                &[3, 0x1C, b'm'],
                Message::WillMsgUpd {
                    message: b"m".to_vec(),
                },
            ),
            (
                &[3, 0x1D, 1],
                Message::WillMsgResp {
                    code: ReturnCode::Congestion,
                },
            ),
            (
                &[5, 0xFE, 0x01, 0xAA, 0xBB, 2, 0x16],
                Message::Encapsulated {
                    ctrl: 1,
                    node_id: vec![0xAA, 0xBB],
                    inner: Box::new(Message::PingReq { client_id: None }),
                },
            ),
        ];
        for (bytes, message) in cases {
            let bytes = bytes.to_vec();
            assert_eq!(Message::decode(&bytes), Ok(message.clone()), "{bytes:?}");
            assert_eq!(message.encode(), bytes, "{message:?}");
        }
    }

    #[test]
    fn the_three_byte_length_form() {
        let data = vec![b'x'; 300];
        let message = Message::Publish {
            flags: Flags::default(),
            topic_id: 1,
            msg_id: 0,
            data,
        };
        let bytes = message.encode();
        assert_eq!(&bytes[..4], &[0x01, 0x01, 0x35, 0x0C]);
        assert_eq!(bytes.len(), 309);
        assert_eq!(Message::decode(&bytes), Ok(message));
        // Accepted for a short message too.
        assert_eq!(Message::decode(&[0x01, 0, 4, 0x17]), Ok(Message::PingResp));
    }

    #[test]
    fn refuses_what_is_not_mqtt_sn() {
        use DecodeError::*;
        assert_eq!(Message::decode(&[]), Err(TooShort(0)));
        assert_eq!(Message::decode(&[2]), Err(TooShort(1)));
        assert_eq!(Message::decode(&[0x01, 0]), Err(TooShort(2)));
        assert!(matches!(
            Message::decode(&[3, 0x17]),
            Err(LengthMismatch {
                field: 3,
                actual: 2
            })
        ));
        assert_eq!(Message::decode(&[1, 0x17]), Err(TooShort(2)));
        assert!(matches!(
            Message::decode(&[0x01, 0, 3, 0x17]),
            Err(LengthMismatch { .. })
        ));
        assert!(matches!(
            Message::decode(&[0, 0x17]),
            Err(LengthMismatch { .. })
        ));
        assert_eq!(Message::decode(&[2, 0x03]), Err(UnknownType(3)));
        assert_eq!(Message::decode(&[2, 0x11]), Err(UnknownType(0x11)));
        assert!(matches!(
            Message::decode(&[3, 0x17, 0]),
            Err(WrongSize { .. })
        ));
        assert!(matches!(
            Message::decode(&[6, 0x0B, 0, 1, 0, 1]),
            Err(WrongSize { .. })
        ));
        assert_eq!(
            Message::decode(&[7, 0x04, 0, 0x02, 0, 1, b'x']),
            Err(ProtocolId(2))
        );
        assert_eq!(Message::decode(&[6, 0x04, 0, 1, 0, 1]), Err(ClientId));
        let mut long = vec![30, 0x04, 0, 1, 0, 1];
        long.extend([b'a'; 24]);
        assert_eq!(Message::decode(&long), Err(ClientId));
        assert_eq!(
            Message::decode(&[7, 0x0A, 0, 0, 0, 1, 0xff]),
            Err(TopicName)
        );
        assert_eq!(
            Message::decode(&[7, 0x0C, 0x03, 0, 1, 0, 1]),
            Err(ReservedTopicIdType)
        );
        assert!(matches!(
            Message::decode(&[6, 0x12, 0x01, 0, 1, 5]),
            Err(WrongSize { .. })
        ));
        assert_eq!(
            Message::decode(&[3, 0xFE, 0, 3, 0xFE, 0]),
            Err(NestedEncapsulation)
        );
        assert!(matches!(
            Message::decode(&[9, 0xFE, 0, 2, 0x17]),
            Err(LengthMismatch { .. })
        ));
    }

    #[test]
    fn topic_filters() {
        assert!(filter_matches("gateway/+/led/set", "gateway/n1/led/set"));
        assert!(filter_matches("gateway/#", "gateway/n1/led/set"));
        assert!(filter_matches("gateway/#", "gateway"));
        assert!(!filter_matches("gateway/+", "gateway/n1/led"));
        assert!(filter_matches("a/b", "a/b"));
        assert!(!filter_matches("a/b", "a/c"));
        assert!(!filter_matches("#", "$SYS/x"));
        assert!(has_wildcards("a/+"));
        assert!(!has_wildcards("a/b"));
    }

    /// 1 to `max` bytes of UTF-8, some of it two-byte characters.
    fn random_string(rng: &mut fastrand::Rng, max: usize) -> String {
        let mut text = String::from(rng.alphanumeric());
        for _ in 0..rng.usize(0..max) {
            let c = if rng.u8(0..10) == 0 {
                'é'
            } else {
                rng.alphanumeric()
            };
            if text.len() + c.len_utf8() > max {
                break;
            }
            text.push(c);
        }
        text
    }

    fn random_flags(rng: &mut fastrand::Rng, topic_id_type: u8) -> Flags {
        Flags::decode((rng.u8(..) & !0x03) | topic_id_type).expect("valid flags")
    }

    fn any_flags(rng: &mut fastrand::Rng) -> Flags {
        let id_type = rng.u8(0..3);
        random_flags(rng, id_type)
    }

    fn random_bytes(rng: &mut fastrand::Rng, max: usize) -> Vec<u8> {
        (0..rng.usize(0..=max)).map(|_| rng.u8(..)).collect()
    }

    fn random_code(rng: &mut fastrand::Rng) -> ReturnCode {
        ReturnCode::decode(rng.u8(..))
    }

    fn random_topic(rng: &mut fastrand::Rng) -> (u8, Topic) {
        match rng.u8(0..3) {
            0 => (0, Topic::Name(random_string(rng, 40))),
            1 => (1, Topic::Predefined(rng.u16(..))),
            _ => (2, Topic::Short([rng.u8(..), rng.u8(..)])),
        }
    }

    fn random_will(rng: &mut fastrand::Rng) -> Option<(Flags, String)> {
        rng.bool().then(|| (any_flags(rng), random_string(rng, 30)))
    }

    fn random_message(rng: &mut fastrand::Rng, outer: bool) -> Message {
        let big = if rng.u8(0..8) == 0 { 600 } else { 40 };
        match rng.u8(0..28) {
            0 => Message::Advertise {
                gw_id: rng.u8(..),
                duration: rng.u16(..),
            },
            1 => Message::SearchGw { radius: rng.u8(..) },
            2 => Message::GwInfo {
                gw_id: rng.u8(..),
                gw_add: random_bytes(rng, 16),
            },
            3 => Message::Connect {
                flags: any_flags(rng),
                duration: rng.u16(..),
                client_id: random_string(rng, MAX_CLIENT_ID),
            },
            4 => Message::ConnAck {
                code: random_code(rng),
            },
            5 => Message::WillTopicReq,
            6 => Message::WillTopic {
                will: random_will(rng),
            },
            7 => Message::WillMsgReq,
            8 => Message::WillMsg {
                message: random_bytes(rng, big),
            },
            9 => Message::Register {
                topic_id: rng.u16(..),
                msg_id: rng.u16(..),
                topic_name: random_string(rng, 60),
            },
            10 => Message::RegAck {
                topic_id: rng.u16(..),
                msg_id: rng.u16(..),
                code: random_code(rng),
            },
            11 => Message::Publish {
                flags: any_flags(rng),
                topic_id: rng.u16(..),
                msg_id: rng.u16(..),
                data: random_bytes(rng, big),
            },
            12 => Message::PubAck {
                topic_id: rng.u16(..),
                msg_id: rng.u16(..),
                code: random_code(rng),
            },
            13 => Message::PubRec {
                msg_id: rng.u16(..),
            },
            14 => Message::PubRel {
                msg_id: rng.u16(..),
            },
            15 => Message::PubComp {
                msg_id: rng.u16(..),
            },
            16 | 17 => {
                let (id_type, topic) = random_topic(rng);
                let flags = random_flags(rng, id_type);
                let msg_id = rng.u16(..);
                if rng.bool() {
                    Message::Subscribe {
                        flags,
                        msg_id,
                        topic,
                    }
                } else {
                    Message::Unsubscribe {
                        flags,
                        msg_id,
                        topic,
                    }
                }
            }
            18 => Message::SubAck {
                flags: any_flags(rng),
                topic_id: rng.u16(..),
                msg_id: rng.u16(..),
                code: random_code(rng),
            },
            19 => Message::UnsubAck {
                msg_id: rng.u16(..),
            },
            20 => Message::PingReq {
                client_id: rng.bool().then(|| random_string(rng, MAX_CLIENT_ID)),
            },
            21 => Message::PingResp,
            22 => Message::Disconnect {
                duration: rng.bool().then(|| rng.u16(..)),
            },
            23 => Message::WillTopicUpd {
                will: random_will(rng),
            },
            24 => Message::WillTopicResp {
                code: random_code(rng),
            },
            25 => Message::WillMsgUpd {
                message: random_bytes(rng, big),
            },
            26 => Message::WillMsgResp {
                code: random_code(rng),
            },
            _ if outer => Message::Encapsulated {
                ctrl: rng.u8(..),
                node_id: random_bytes(rng, 8),
                inner: Box::new(random_message(rng, false)),
            },
            _ => Message::PingResp,
        }
    }

    /// A property test without a framework: many random messages of every type encode and
    /// decode back to themselves, and what decodes re-encodes to the same bytes.
    #[test]
    fn random_messages_round_trip() {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        for _ in 0..20_000 {
            let message = random_message(&mut rng, true);
            let bytes = message.encode();
            assert_eq!(
                Message::decode(&bytes).as_ref(),
                Ok(&message),
                "{bytes:02x?}"
            );
        }
        // Random bytes: decoding never panics, and what decodes round-trips.
        for _ in 0..50_000 {
            let mut bytes = random_bytes(&mut rng, 12);
            if !bytes.is_empty() && rng.bool() {
                bytes[0] = bytes.len() as u8;
            }
            if let Ok(message) = Message::decode(&bytes) {
                assert_eq!(Message::decode(&message.encode()), Ok(message));
            }
        }
    }
}
