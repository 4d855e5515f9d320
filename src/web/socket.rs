//! What every server-side websocket session does the same way: send in batches under a
//! deadline, turn receive errors into reasons, and say goodbye with the right close code.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{Sink, SinkExt};
use tokio_tungstenite::tungstenite;

use crate::metrics::{Channel, Metrics};

/// Read buffer of a server-side websocket: grows when a larger message comes in, so this only
/// sets what an idle connection costs.
pub const READ_BUFFER_BYTES: usize = 4096;

/// Limits every websocket session applies.
#[derive(Debug, Clone)]
pub struct WsLimits {
    /// Largest frame and message accepted; larger closes with 1009.
    pub max_frame_bytes: usize,
    /// How long one batch of writes to a peer may take before the peer counts as stalled.
    pub send_timeout: Duration,
    /// Messages queued for one peer (a node's writes, a gateway's requests).
    pub peer_queue: usize,
}

impl Default for WsLimits {
    fn default() -> Self {
        use crate::proto::limits;
        WsLimits {
            max_frame_bytes: limits::MAX_FRAME_BYTES,
            send_timeout: Duration::from_secs(limits::SEND_TIMEOUT_SECS),
            peer_queue: limits::PEER_QUEUE,
        }
    }
}

/// Close codes of RFC 6455 §7.4.1 that we send.
mod code {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const TOO_BIG: u16 = 1009;
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The peer closed, or the connection broke.
    PeerGone,
    /// We are shutting down.
    Shutdown,
    /// The peer sent something the protocol refuses: close 1003 with the reason.
    Invalid(String),
    /// The peer sent a frame over the limit: close 1009.
    TooBig,
    /// The peer broke the websocket framing rules: close 1002.
    ProtocolError(String),
    /// The peer did not take our messages in time; dropped without a goodbye, since it is not
    /// reading anyway.
    Stalled,
}

impl Ending {
    /// Classifies a receive error: an oversize frame is the peer's fault and gets its 1009; a
    /// text frame that is not UTF-8 is not JSON either and gets its 1003; anything else means
    /// the connection is gone.
    pub fn from_receive_error(error: axum::Error) -> Self {
        match error.into_inner().downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Capacity(_)) => Ending::TooBig,
            Some(tungstenite::Error::Utf8(_)) => {
                Ending::Invalid("Only JSON format is supported: invalid UTF-8.".into())
            }
            Some(tungstenite::Error::Protocol(violation)) => {
                Ending::ProtocolError(violation.to_string())
            }
            _ => Ending::PeerGone,
        }
    }

    fn close_frame(&self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Ending::PeerGone | Ending::Stalled => return None,
            Ending::Shutdown => (code::GOING_AWAY, "server shutting down"),
            Ending::Invalid(reason) => (code::UNSUPPORTED, reason.as_str()),
            Ending::TooBig => (code::TOO_BIG, "message too big"),
            Ending::ProtocolError(why) => (code::PROTOCOL_ERROR, why.as_str()),
        };
        Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(close_reason(reason)),
        })
    }
}

impl Ending {
    /// Logs how a session with `peer` (e.g. "web client", "gateway") ended: what the peer did
    /// wrong is a warning, a normal end is news.
    pub fn log(&self, peer: &str, who: &dyn std::fmt::Display) {
        self.log_only(peer, who);
    }

    /// Logs the end and counts a connection we closed for cause.
    pub fn record(
        &self,
        peer: &str,
        who: &dyn std::fmt::Display,
        metrics: &Metrics,
        channel: Channel,
    ) {
        if !matches!(self, Ending::PeerGone | Ending::Shutdown) {
            metrics.peer_dropped(channel);
        }
        self.log_only(peer, who);
    }

    fn log_only(&self, peer: &str, who: &dyn std::fmt::Display) {
        match self {
            Ending::Invalid(why) => tracing::warn!(%who, "{peer} closed: {why}"),
            Ending::TooBig => tracing::warn!(%who, "{peer} closed: frame too big"),
            Ending::ProtocolError(why) => {
                tracing::warn!(%who, "{peer} closed: websocket protocol error: {why}")
            }
            Ending::Stalled => tracing::warn!(%who, "{peer} dropped: not reading its messages"),
            Ending::PeerGone | Ending::Shutdown => tracing::info!(%who, "{peer} disconnected"),
        }
    }
}

/// A close frame's reason has at most 123 bytes (RFC 6455 §5.5); cut at a character boundary.
pub fn close_reason(reason: &str) -> &str {
    const MAX: usize = 123;
    if reason.len() <= MAX {
        return reason;
    }
    let mut cut = MAX;
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    &reason[..cut]
}

/// Says goodbye as `ending` calls for, without waiting long for a peer that may be gone.
pub async fn finish(socket: &mut WebSocket, ending: &Ending, limits: &WsLimits) {
    if let Some(frame) = ending.close_frame() {
        let _ = tokio::time::timeout(
            limits.send_timeout,
            socket.send(Message::Close(Some(frame))),
        )
        .await;
    }
}

/// Sends messages as one batch: queued, then flushed once, all within `timeout`; returns how
/// many went out. A peer that cannot take them in time is `Stalled`. Works for our server sockets and client sockets alike.
pub async fn send_batch<S, M, I>(
    sink: &mut S,
    messages: I,
    timeout: Duration,
) -> Result<u64, Ending>
where
    S: Sink<M> + Unpin,
    I: IntoIterator<Item = M>,
{
    let write = async {
        let mut sent = 0;
        for message in messages {
            sink.feed(message).await?;
            sent += 1;
        }
        sink.flush().await.map(|()| sent)
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(sent)) => Ok(sent),
        Ok(Err(_)) => Err(Ending::PeerGone),
        Err(_) => Err(Ending::Stalled),
    }
}

/// Text messages for a server socket.
pub fn texts<I: IntoIterator<Item = Utf8Bytes>>(texts: I) -> impl Iterator<Item = Message> {
    texts.into_iter().map(Message::Text)
}

/// Our messages are made by serde_json, which only writes UTF-8.
pub fn text(bytes: bytes::Bytes) -> Utf8Bytes {
    Utf8Bytes::try_from(bytes).expect("serde_json writes UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_cut_at_character_boundaries() {
        assert_eq!(close_reason("short"), "short");
        let long = "é".repeat(100);
        let cut = close_reason(&long);
        assert!(cut.len() <= 123);
        assert_eq!(cut.chars().count(), 61);
    }
}
