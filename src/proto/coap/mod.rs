//! CoAP (RFC 7252) as aiot speaks it with nodes (protocol.md §2), sans-IO: bytes and time in,
//! bytes and events out. The gateway's UDP socket loop lives in `adapters::coap`; the
//! simulated nodes in `sim::coap` use the same layers.
//!
//! - [`message`]: the datagram format, strict decoding that never panics.
//! - [`exchange`]: one endpoint's message layer: duplicate detection with cached answers, CON
//!   retransmission, tokens and response matching, Block2 reassembly.
//! - [`link_format`]: `/.well-known/core` documents (RFC 6690).
//! - [`payload`]: the `alive:<uid>` and `<endpoint>:<value>` texts nodes post.

pub mod exchange;
pub mod link_format;
pub mod message;
pub mod payload;

/// Largest datagram read. RFC 7252 §4.6 suggests 1152 bytes as the upper bound of a message
/// when the path MTU is unknown and 1280 is IPv6's minimum MTU; a 1024-byte block with its
/// header and options fits. Longer datagrams are refused (4.13 for a request).
pub const MAX_DATAGRAM: usize = 1280;

/// The CoAP port.
pub const DEFAULT_PORT: u16 = 5683;
