//! The CoAP message format (RFC 7252 §3): one datagram in, one [`Message`] out, and back.
//!
//! Decoding is strict where the RFC says a message is malformed (version, token length,
//! reserved option nibbles, a payload marker with no payload, options running past the end)
//! and says how far it got, so that the caller can still reset a malformed confirmable message
//! by its id. It never panics and never allocates more than the datagram's size.

use std::fmt;

/// The message type (RFC 7252 §3, `T`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Type {
    Confirmable,
    NonConfirmable,
    Acknowledgement,
    Reset,
}

impl Type {
    fn from_bits(bits: u8) -> Type {
        match bits & 3 {
            0 => Type::Confirmable,
            1 => Type::NonConfirmable,
            2 => Type::Acknowledgement,
            _ => Type::Reset,
        }
    }

    fn bits(self) -> u8 {
        match self {
            Type::Confirmable => 0,
            Type::NonConfirmable => 1,
            Type::Acknowledgement => 2,
            Type::Reset => 3,
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Type::Confirmable => "CON",
            Type::NonConfirmable => "NON",
            Type::Acknowledgement => "ACK",
            Type::Reset => "RST",
        }
    }
}

/// A method or response code, `class.detail` packed as on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code(pub u8);

impl Code {
    pub const EMPTY: Code = Code(0x00);
    pub const GET: Code = Code(0x01);
    pub const POST: Code = Code(0x02);
    pub const PUT: Code = Code(0x03);
    pub const DELETE: Code = Code(0x04);
    pub const CREATED: Code = Code(0x41);
    pub const CHANGED: Code = Code(0x44);
    pub const CONTENT: Code = Code(0x45);
    pub const BAD_REQUEST: Code = Code(0x80);
    pub const FORBIDDEN: Code = Code(0x83);
    pub const BAD_OPTION: Code = Code(0x82);
    pub const NOT_FOUND: Code = Code(0x84);
    pub const METHOD_NOT_ALLOWED: Code = Code(0x85);
    pub const REQUEST_ENTITY_TOO_LARGE: Code = Code(0x8d);
    pub const INTERNAL_SERVER_ERROR: Code = Code(0xa0);
    pub const SERVICE_UNAVAILABLE: Code = Code(0xa3);

    pub fn class(self) -> u8 {
        self.0 >> 5
    }

    pub fn detail(self) -> u8 {
        self.0 & 0x1f
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn is_request(self) -> bool {
        self.class() == 0 && self.detail() != 0
    }

    pub fn is_response(self) -> bool {
        matches!(self.class(), 2 | 4 | 5)
    }

    pub fn is_success(self) -> bool {
        self.class() == 2
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.class(), self.detail())
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Option numbers this crate reads or writes (RFC 7252 §5.10, RFC 7959).
pub mod option {
    pub const IF_MATCH: u16 = 1;
    pub const URI_HOST: u16 = 3;
    pub const ETAG: u16 = 4;
    pub const IF_NONE_MATCH: u16 = 5;
    pub const OBSERVE: u16 = 6;
    pub const URI_PORT: u16 = 7;
    pub const URI_PATH: u16 = 11;
    pub const CONTENT_FORMAT: u16 = 12;
    pub const MAX_AGE: u16 = 14;
    pub const URI_QUERY: u16 = 15;
    pub const ACCEPT: u16 = 17;
    pub const BLOCK2: u16 = 23;
    pub const BLOCK1: u16 = 27;
    pub const SIZE2: u16 = 28;

    /// Odd option numbers are critical: a recipient that does not understand one must reject
    /// the message (RFC 7252 §5.4.1).
    pub fn is_critical(number: u16) -> bool {
        number & 1 == 1
    }
}

/// Content-Format of link-format documents (RFC 6690).
pub const LINK_FORMAT: u16 = 40;
/// Content-Format `text/plain; charset=utf-8`.
pub const TEXT_PLAIN: u16 = 0;

/// A token: 0 to 8 opaque bytes chosen by the requester to match responses to requests.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Token {
    len: u8,
    bytes: [u8; 8],
}

impl Token {
    pub const MAX_LEN: usize = 8;

    pub fn new(bytes: &[u8]) -> Option<Token> {
        if bytes.len() > Self::MAX_LEN {
            return None;
        }
        let mut token = Token {
            len: bytes.len() as u8,
            bytes: [0; 8],
        };
        token.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(token)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("0x")?;
        for byte in self.as_bytes() {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// One option instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoapOption {
    pub number: u16,
    pub value: Vec<u8>,
}

/// A whole CoAP message. Options are kept in wire order (sorted by number, repeats in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: Type,
    pub code: Code,
    pub mid: u16,
    pub token: Token,
    pub options: Vec<CoapOption>,
    pub payload: Vec<u8>,
}

/// What could be read of a malformed message's fixed header: enough to reject it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Type,
    pub mid: u16,
}

/// Why a datagram is not a CoAP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed CoAP message: {reason}")]
pub struct FormatError {
    pub reason: &'static str,
    /// The fixed header, when the datagram had one with version 1.
    pub header: Option<Header>,
}

/// A Block option whose value is too long or uses the reserved size exponent 7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid Block option")]
pub struct InvalidBlock;

/// Block option value (RFC 7959 §2.2): block number, more flag, size exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub num: u32,
    pub more: bool,
    /// Size exponent: the block holds `16 << szx` bytes (0..=6; 7 is reserved).
    pub szx: u8,
}

impl Block {
    /// Largest block number that fits the option's 20 bits.
    pub const MAX_NUM: u32 = (1 << 20) - 1;

    pub fn size(self) -> usize {
        16 << self.szx.min(6)
    }

    pub fn decode(value: &[u8]) -> Option<Block> {
        if value.len() > 3 {
            return None;
        }
        let raw = uint(value)? as u32;
        let szx = (raw & 7) as u8;
        if szx == 7 {
            return None;
        }
        Some(Block {
            num: raw >> 4,
            more: raw & 8 != 0,
            szx,
        })
    }

    pub fn encode(self) -> Vec<u8> {
        encode_uint(u64::from(
            (self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx),
        ))
    }
}

/// An unsigned-integer option value: big-endian, leading zeros dropped, at most 8 bytes.
pub fn uint(value: &[u8]) -> Option<u64> {
    if value.len() > 8 {
        return None;
    }
    Some(value.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

pub fn encode_uint(value: u64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

const VERSION: u8 = 1;
const PAYLOAD_MARKER: u8 = 0xff;

impl Message {
    /// A message with no options and no payload.
    pub fn new(kind: Type, code: Code, mid: u16, token: Token) -> Message {
        Message {
            kind,
            code,
            mid,
            token,
            options: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// An empty message (ACK or RST) for message id `mid`.
    pub fn empty(kind: Type, mid: u16) -> Message {
        Message::new(kind, Code::EMPTY, mid, Token::default())
    }

    /// Adds an option, keeping wire order.
    pub fn add_option(&mut self, number: u16, value: Vec<u8>) {
        let at = self.options.partition_point(|o| o.number <= number);
        self.options.insert(at, CoapOption { number, value });
    }

    /// Sets `Uri-Path` from a path like `/a/b` (empty segments are dropped).
    pub fn set_path(&mut self, path: &str) {
        self.options.retain(|o| o.number != option::URI_PATH);
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            self.add_option(option::URI_PATH, segment.as_bytes().to_vec());
        }
    }

    pub fn first_option(&self, number: u16) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|o| o.number == number)
            .map(|o| o.value.as_slice())
    }

    /// The `Uri-Path` as `/a/b` (`/` for none); `None` if a segment is not UTF-8 or holds a `/`.
    pub fn path(&self) -> Option<String> {
        let mut path = String::new();
        for o in self.options.iter().filter(|o| o.number == option::URI_PATH) {
            let segment = std::str::from_utf8(&o.value).ok()?;
            if segment.contains('/') {
                return None;
            }
            path.push('/');
            path.push_str(segment);
        }
        if path.is_empty() {
            path.push('/');
        }
        Some(path)
    }

    pub fn content_format(&self) -> Option<u64> {
        self.first_option(option::CONTENT_FORMAT).and_then(uint)
    }

    /// The Block2 option: `Ok(None)` when absent, `Err` when present but invalid.
    pub fn block2(&self) -> Result<Option<Block>, InvalidBlock> {
        match self.first_option(option::BLOCK2) {
            None => Ok(None),
            Some(value) => Block::decode(value).map(Some).ok_or(InvalidBlock),
        }
    }

    /// Reads one datagram.
    pub fn decode(bytes: &[u8]) -> Result<Message, FormatError> {
        let fail = |reason, header| Err(FormatError { reason, header });
        if bytes.len() < 4 {
            return fail("shorter than the 4-byte header", None);
        }
        if bytes[0] >> 6 != VERSION {
            return fail("unknown version", None);
        }
        let kind = Type::from_bits(bytes[0] >> 4);
        let mid = u16::from_be_bytes([bytes[2], bytes[3]]);
        let header = Some(Header { kind, mid });
        let code = Code(bytes[1]);
        let token_len = usize::from(bytes[0] & 0x0f);
        if token_len > Token::MAX_LEN {
            return fail("token length over 8", header);
        }
        if matches!(code.class(), 1 | 6 | 7) {
            return fail("reserved code class", header);
        }
        let Some(token_bytes) = bytes.get(4..4 + token_len) else {
            return fail("token runs past the end", header);
        };
        let token = Token::new(token_bytes).expect("token length checked above");
        if code.is_empty() && (token_len != 0 || bytes.len() != 4) {
            return fail("empty message with content", header);
        }
        let mut options = Vec::new();
        let mut at = 4 + token_len;
        let mut number: u32 = 0;
        let mut payload = Vec::new();
        while at < bytes.len() {
            let byte = bytes[at];
            at += 1;
            if byte == PAYLOAD_MARKER {
                if at == bytes.len() {
                    return fail("payload marker without payload", header);
                }
                payload = bytes[at..].to_vec();
                break;
            }
            let Some(delta) = extended(byte >> 4, bytes, &mut at) else {
                return fail("bad option delta", header);
            };
            let Some(length) = extended(byte & 0x0f, bytes, &mut at) else {
                return fail("bad option length", header);
            };
            number += delta;
            let Ok(option_number) = u16::try_from(number) else {
                return fail("option number over 65535", header);
            };
            let Some(value) = bytes.get(at..at + length as usize) else {
                return fail("option value runs past the end", header);
            };
            at += length as usize;
            options.push(CoapOption {
                number: option_number,
                value: value.to_vec(),
            });
        }
        Ok(Message {
            kind,
            code,
            mid,
            token,
            options,
            payload,
        })
    }

    /// Writes the datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.payload.len());
        let token = self.token.as_bytes();
        out.push((VERSION << 6) | (self.kind.bits() << 4) | token.len() as u8);
        out.push(self.code.0);
        out.extend_from_slice(&self.mid.to_be_bytes());
        out.extend_from_slice(token);
        let mut options: Vec<&CoapOption> = self.options.iter().collect();
        options.sort_by_key(|o| o.number);
        let mut previous = 0u16;
        for o in options {
            let delta = u32::from(o.number - previous);
            previous = o.number;
            let length = o.value.len() as u32;
            let (delta_nibble, delta_ext) = nibble(delta);
            let (length_nibble, length_ext) = nibble(length);
            out.push((delta_nibble << 4) | length_nibble);
            out.extend_from_slice(&delta_ext);
            out.extend_from_slice(&length_ext);
            out.extend_from_slice(&o.value);
        }
        if !self.payload.is_empty() {
            out.push(PAYLOAD_MARKER);
            out.extend_from_slice(&self.payload);
        }
        out
    }
}

/// Reads an option delta or length nibble and its extension bytes.
fn extended(nibble: u8, bytes: &[u8], at: &mut usize) -> Option<u32> {
    match nibble {
        0..=12 => Some(u32::from(nibble)),
        13 => {
            let value = *bytes.get(*at)?;
            *at += 1;
            Some(u32::from(value) + 13)
        }
        14 => {
            let high = *bytes.get(*at)?;
            let low = *bytes.get(*at + 1)?;
            *at += 2;
            Some(u32::from(u16::from_be_bytes([high, low])) + 269)
        }
        _ => None,
    }
}

fn nibble(value: u32) -> (u8, Vec<u8>) {
    match value {
        0..=12 => (value as u8, Vec::new()),
        13..=268 => (13, vec![(value - 13) as u8]),
        _ => (14, ((value - 269) as u16).to_be_bytes().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn decodes_a_riot_alive_post_from_the_fixture() {
        // NON POST /alive, token 2 bytes, empty Content-Format, payload "reset:…".
        let bytes = hex("520233dee838b5616c69766510ff72657365743a323332333233323332333233323332");
        let message = Message::decode(&bytes).expect("decodes");
        assert_eq!(message.kind, Type::NonConfirmable);
        assert_eq!(message.code, Code::POST);
        assert_eq!(message.mid, 0x33de);
        assert_eq!(message.token.as_bytes(), [0xe8, 0x38]);
        assert_eq!(message.path().as_deref(), Some("/alive"));
        assert_eq!(message.content_format(), Some(0));
        assert_eq!(message.payload, b"reset:232323232323232");
        assert_eq!(message.encode(), bytes, "re-encodes byte for byte");
    }

    #[test]
    fn round_trips_long_options_and_payloads() {
        let mut message = Message::new(
            Type::Confirmable,
            Code::GET,
            7,
            Token::new(&[1, 2, 3, 4, 5, 6, 7, 8]).expect("token"),
        );
        message.set_path("/.well-known/core");
        message.add_option(
            option::BLOCK2,
            Block {
                num: 1000,
                more: true,
                szx: 6,
            }
            .encode(),
        );
        message.add_option(300, vec![9; 300]);
        message.add_option(option::URI_QUERY, b"x".repeat(20));
        message.payload = b"hello".to_vec();
        let decoded = Message::decode(&message.encode()).expect("decodes");
        assert_eq!(decoded, message);
        assert_eq!(
            decoded.block2(),
            Ok(Some(Block {
                num: 1000,
                more: true,
                szx: 6
            }))
        );
    }

    #[test]
    fn refuses_what_the_rfc_calls_malformed_and_keeps_the_header() {
        let header = Some(Header {
            kind: Type::Confirmable,
            mid: 0x1234,
        });
        for (bytes, reason, with_header) in [
            (hex("40"), "shorter than the 4-byte header", None),
            (hex("80011234"), "unknown version", None),
            (hex("49011234"), "token length over 8", header),
            (hex("42011234aa"), "token runs past the end", header),
            (hex("40011234ff"), "payload marker without payload", header),
            (hex("40011234f0"), "bad option delta", header),
            (hex("400112340f"), "bad option length", header),
            (hex("40011234d0"), "bad option delta", header),
            (
                hex("40011234b5616c"),
                "option value runs past the end",
                header,
            ),
            (hex("40201234"), "reserved code class", header),
            (hex("40001234ff00"), "empty message with content", header),
            (hex("40011234e0ffff"), "option number over 65535", header),
        ] {
            let error = Message::decode(&bytes).expect_err(reason);
            assert_eq!(error.reason, reason, "{bytes:02x?}");
            assert_eq!(error.header, with_header, "{bytes:02x?}");
        }
    }

    #[test]
    fn codes_and_blocks_read_as_humans_write_them() {
        assert_eq!(Code::CHANGED.to_string(), "2.04");
        assert_eq!(Code::BAD_OPTION.to_string(), "4.02");
        assert!(Code::GET.is_request() && !Code::GET.is_response());
        assert!(Code::NOT_FOUND.is_response() && !Code::NOT_FOUND.is_success());
        assert_eq!(
            Block::decode(&[0x0e]),
            Some(Block {
                num: 0,
                more: true,
                szx: 6
            })
        );
        assert_eq!(Block::decode(&[0x07]), None, "szx 7 is reserved");
        assert_eq!(Block::decode(&[1, 2, 3, 4]), None);
        assert_eq!(
            Block {
                num: 0,
                more: false,
                szx: 2
            }
            .encode(),
            vec![2]
        );
        assert_eq!(
            Block {
                num: 0,
                more: false,
                szx: 0
            }
            .encode(),
            Vec::<u8>::new()
        );
        assert_eq!(uint(&[]), Some(0));
        assert_eq!(encode_uint(0x0100), vec![1, 0]);
    }
}
