//! The embedded broker's MQTT listeners: they take every client first and relay it to
//! rumqttd's own listener, which only listens on loopback.
//!
//! rumqttd 0.20's listener aborts the whole process when a client connects again under the
//! id of a connection that failed in its handshake: a CONNECT followed by a reset before the
//! CONNACK is written, or a client the router refuses at its `max_connections`, leaves a will
//! handler behind whose receiver is gone, and the next CONNECT with that id `unwrap`s the
//! failed send. It also leaves a refused client waiting for a CONNACK that never comes, and
//! counts nothing. Relayed, rumqttd only ever meets this relay, which waits for its CONNACK
//! whatever the client does, and never reaches the router's limit: the relay refuses clients
//! past `mqtt.max_connections` itself, with CONNACK 3 (server unavailable), counted in
//! `/metrics`. rumqttd's remote links are kept on purpose: rumqttd's public local links hand
//! their notifications over through ring buffers that a link consumes one at a time, so the
//! rings' memory gets touched a slot at a time for as long as their connection lives
//! (72 KiB per connection, over hours at a node's pace).
//!
//! Publishes on `node/...` also go straight to the gateway (`Tap`), which subscribes to
//! nothing on its own broker: rumqttd keeps a log per subscription filter and drops what a
//! subscriber has not read when the log is full, so a burst of nodes (hundreds answering
//! `discover` at once) overran the gateway's filters before it had read them, and filling
//! those logs made the gateway's memory grow for half an hour. A client whose publishes the
//! gateway has not taken yet is read no further, so nothing is lost however far the gateway
//! falls behind; and a publish reaches the gateway only after rumqttd has acknowledged every
//! SUBSCRIBE the client sent before it, since the gateway answers a `node/check` at once and
//! its answer must find the node subscribed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{Packet, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Limit, Metrics};

/// What the listeners hand the gateway: every publish on `node/...`, topic and payload.
pub type Tap = tokio::sync::mpsc::Sender<(Bytes, Bytes)>;

/// Time a new connection has to send its CONNECT, and rumqttd to answer it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a connection refused for `max_connections` has to send the CONNECT it is refused
/// (short: such connections are not counted against the limit).
const REFUSED_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// TCP keep-alive towards clients, so that a vanished peer is found even while rumqttd
/// waits out a long MQTT keep-alive.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Read buffer per socket; it grows for a larger packet.
const READ_BUFFER: usize = 2048;

/// Splits the first whole MQTT frame (its packet type and bytes) off `read`; `None` until
/// one has arrived (room for it is reserved). Only the fixed header is read.
pub fn split_frame(
    read: &mut BytesMut,
    max_frame: usize,
) -> Result<Option<(u8, Bytes)>, RelayError> {
    let Some(&first) = read.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    let mut header = 1;
    loop {
        let Some(&byte) = read.get(header) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7f) << (7 * (header - 1));
        header += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if header > 4 {
            return Err(RelayError::Malformed);
        }
    }
    let length = header + remaining;
    if length > max_frame {
        return Err(RelayError::TooBig(length));
    }
    if read.len() < length {
        read.reserve(length - read.len());
        return Ok(None);
    }
    Ok(Some((first >> 4, read.split_to(length).freeze())))
}

/// A whole frame's variable header and payload (after the fixed header).
fn body(frame: &[u8]) -> &[u8] {
    let length_bytes = frame[1..].iter().take_while(|&&b| b & 0x80 != 0).count() + 1;
    frame.get(1 + length_bytes..).unwrap_or_default()
}

/// Whether a PUBLISH frame's topic starts with `node/`, read without decoding the packet.
pub fn publishes_to_nodes(frame: &[u8]) -> bool {
    body(frame)
        .get(2..)
        .is_some_and(|topic| topic.starts_with(b"node/"))
}

/// What every client of one broker shares: the limit, the counters, the gateway's tap.
#[derive(Clone)]
pub struct Shared {
    pub max_payload: usize,
    pub max_connections: usize,
    pub metrics: Arc<Metrics>,
    /// Where publishes on `node/...` go besides rumqttd. A client waits while it is full,
    /// and so reads no more: nothing is lost, however far the gateway falls behind.
    pub tap: Tap,
    slots: Arc<Semaphore>,
    full_logged: Arc<AtomicBool>,
}

impl Shared {
    pub fn new(
        max_connections: usize,
        max_payload: usize,
        metrics: Arc<Metrics>,
        tap: Tap,
    ) -> Shared {
        Shared {
            max_payload,
            max_connections,
            metrics,
            tap,
            slots: Arc::new(Semaphore::new(max_connections)),
            full_logged: Arc::new(AtomicBool::new(false)),
        }
    }

    fn admit(&self) -> Option<OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                if self.slots.available_permits() > 0 {
                    self.full_logged.store(false, Ordering::Release);
                }
                Some(permit)
            }
            Err(_) => {
                self.metrics.limit_hit(Limit::MqttClients);
                if !self.full_logged.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        max = self.max_connections,
                        "MQTT clients refused: the maximum is connected (mqtt.max_connections)"
                    );
                }
                None
            }
        }
    }
}

/// The MQTT version a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

impl Version {
    /// CONNACK "server unavailable" (3.1.1: return code 3; 5: reason 0x88, no properties).
    fn server_unavailable(self) -> &'static [u8] {
        match self {
            Version::V311 => &[0x20, 0x02, 0x00, 0x03],
            Version::V5 => &[0x20, 0x03, 0x00, 0x88, 0x00],
        }
    }

    /// Parses a PUBLISH frame (for the tap); rumqttd's codec decodes every packet type a
    /// client may send.
    fn publish(self, frame: &[u8], max_payload: usize) -> Option<(Bytes, Bytes)> {
        let mut bytes = BytesMut::from(frame);
        let packet = match self {
            Version::V311 => rumqttd::protocol::v4::V4.read_mut(&mut bytes, max_payload),
            Version::V5 => rumqttd::protocol::v5::V5.read_mut(&mut bytes, max_payload),
        };
        match packet {
            Ok(Packet::Publish(publish, _)) => Some((publish.topic, publish.payload)),
            _ => None,
        }
    }
}

/// MQTT control packet types (the high nibble of a packet's first byte).
mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const DISCONNECT: u8 = 14;

    /// What a client may send after its CONNECT. rumqttd's MQTT 5 decoder reaches
    /// `unreachable!()` on a CONNACK or UNSUBACK, so anything else never gets to it.
    pub fn from_client(kind: u8) -> bool {
        matches!(kind, 3..=8 | 10 | 12 | 14)
    }
}

/// Accepts MQTT clients until shutdown and relays each to rumqttd's listener for the same
/// version at `rumqttd`.
pub async fn serve(
    listener: TcpListener,
    rumqttd: SocketAddr,
    version: Version,
    shared: Shared,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let (socket, peer) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of fds, most likely: the clients that are connected keep going.
                    tracing::warn!(%error, "cannot accept an MQTT client");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let slot = shared.admit();
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
            let _ = socket2::SockRef::from(&socket).set_tcp_keepalive(&keepalive);
            let client = Framed::new(socket, shared.max_payload);
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return,
                outcome = relay(client, rumqttd, version, slot, &shared) => outcome,
            };
            if let Err(error) = outcome {
                tracing::debug!(%peer, %error, "MQTT client gone");
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed")]
    Closed,
    #[error("no CONNECT within {0:?}")]
    ConnectTimeout(Duration),
    #[error("malformed packet")]
    Malformed,
    #[error("packet of {0} bytes, over the limit")]
    TooBig(usize),
    #[error("packet type {0} not allowed here")]
    Unexpected(u8),
    #[error("refused: {0}")]
    Refused(&'static str),
}

/// One side of a relay: a socket carrying MQTT frames, which are split but not decoded.
struct Framed {
    socket: TcpStream,
    max_frame: usize,
    read: BytesMut,
    write: BytesMut,
}

impl Framed {
    fn new(socket: TcpStream, max_payload: usize) -> Framed {
        let _ = socket.set_nodelay(true);
        Framed {
            socket,
            // A payload of the broker's limit, its topic, properties and headers.
            max_frame: max_payload + 64 * 1024,
            read: BytesMut::with_capacity(READ_BUFFER),
            write: BytesMut::new(),
        }
    }

    /// A whole frame already read (its packet type and bytes), if any.
    fn buffered(&mut self) -> Result<Option<(u8, Bytes)>, RelayError> {
        split_frame(&mut self.read, self.max_frame)
    }

    /// Reads more from the socket.
    async fn fill(&mut self) -> Result<(), RelayError> {
        if self.socket.read_buf(&mut self.read).await? == 0 {
            return Err(RelayError::Closed);
        }
        Ok(())
    }

    async fn next_frame(&mut self) -> Result<(u8, Bytes), RelayError> {
        loop {
            if let Some(frame) = self.buffered()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    async fn flush(&mut self) -> Result<(), RelayError> {
        if !self.write.is_empty() {
            self.socket.write_all(&self.write).await?;
            self.write.clear();
        }
        Ok(())
    }

    async fn send(&mut self, frame: &[u8]) -> Result<(), RelayError> {
        self.write.extend_from_slice(frame);
        self.flush().await
    }
}

async fn relay(
    mut client: Framed,
    rumqttd: SocketAddr,
    version: Version,
    slot: Option<OwnedSemaphorePermit>,
    shared: &Shared,
) -> Result<(), RelayError> {
    let wait = if slot.is_some() {
        CONNECT_TIMEOUT
    } else {
        REFUSED_CONNECT_TIMEOUT
    };
    let (first, connect) = tokio::time::timeout(wait, client.next_frame())
        .await
        .map_err(|_| RelayError::ConnectTimeout(wait))??;
    if first != kind::CONNECT {
        return Err(RelayError::Unexpected(first));
    }
    let Some(_slot) = slot else {
        client.send(version.server_unavailable()).await?;
        return Err(RelayError::Refused("mqtt.max_connections"));
    };
    let socket = match TcpStream::connect(rumqttd).await {
        Ok(socket) => socket,
        Err(error) => {
            tracing::warn!(%error, "the embedded MQTT broker is unreachable");
            client.send(version.server_unavailable()).await?;
            return Err(RelayError::Refused("rumqttd is unreachable"));
        }
    };
    let mut broker = Framed::new(socket, shared.max_payload);
    broker.send(&connect).await?;
    // Whatever the client does now, rumqttd gets to write its CONNACK: a reset of its peer
    // before that is what brought rumqttd's own listener down.
    let ack = match tokio::time::timeout(CONNECT_TIMEOUT, broker.next_frame()).await {
        Ok(Ok((kind::CONNACK, ack))) => ack,
        // rumqttd closes without a CONNACK on what it refuses (a keep-alive of 0, say).
        _ => {
            client.send(version.server_unavailable()).await?;
            return Err(RelayError::Refused("rumqttd refused the CONNECT"));
        }
    };
    // The return code (3.1.1) or reason code (5) follows the session-present flags.
    let accepted = body(&ack).get(1) == Some(&0);
    let sent = client.send(&ack).await;
    if sent.is_err() || !accepted {
        let _ = broker.socket.shutdown().await;
        return sent;
    }
    let mut session = Session {
        tap: shared.tap.clone(),
        version,
        max_payload: shared.max_payload,
        held: Vec::new(),
        subscribes_pending: 0,
    };
    let outcome = session.run(&mut client, &mut broker).await;
    // Whatever the client published, rumqttd has it too: the gateway gets it all.
    session.subscribes_pending = 0;
    session.release().await;
    // Without a DISCONNECT from the client (it went, or sent garbage), rumqttd sees its
    // peer close and publishes the will.
    let _ = broker.socket.shutdown().await;
    outcome
}

/// What the relay tracks for the gateway's tap.
struct Session {
    tap: Tap,
    version: Version,
    max_payload: usize,
    /// What the client published on `node/...`, held for the gateway until rumqttd has
    /// acknowledged every SUBSCRIBE the client sent before it.
    held: Vec<(Bytes, Bytes)>,
    /// SUBSCRIBEs relayed to rumqttd and not yet acknowledged.
    subscribes_pending: usize,
}

impl Session {
    async fn run(&mut self, client: &mut Framed, broker: &mut Framed) -> Result<(), RelayError> {
        loop {
            while let Some((kind, frame)) = client.buffered()? {
                if !kind::from_client(kind) {
                    return Err(RelayError::Unexpected(kind));
                }
                self.watch(kind, &frame);
                broker.write.extend_from_slice(&frame);
                if kind == kind::DISCONNECT {
                    broker.flush().await?;
                    return Ok(());
                }
            }
            broker.flush().await?;
            while let Some((kind, frame)) = broker.buffered()? {
                if kind == kind::SUBACK {
                    self.subscribes_pending = self.subscribes_pending.saturating_sub(1);
                }
                client.write.extend_from_slice(&frame);
            }
            client.flush().await?;
            self.release().await;
            tokio::select! {
                filled = client.fill() => filled?,
                filled = broker.fill() => filled?,
            }
        }
    }

    fn watch(&mut self, kind: u8, frame: &[u8]) {
        match kind {
            kind::PUBLISH if publishes_to_nodes(frame) => {
                if let Some(message) = self.version.publish(frame, self.max_payload) {
                    self.held.push(message);
                }
            }
            kind::SUBSCRIBE => self.subscribes_pending += 1,
            _ => {}
        }
    }

    /// Gives the gateway what the client published on `node/...`, once nothing it sent
    /// before is waiting for rumqttd.
    async fn release(&mut self) {
        if self.subscribes_pending > 0 || self.held.is_empty() {
            return;
        }
        for message in self.held.drain(..) {
            // An error means the gateway has stopped; rumqttd has it anyway.
            let _ = self.tap.send(message).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_split_whole_whatever_the_reads_cut() {
        // CONNECT-like, a 200-byte PUBLISH (two length bytes), PINGREQ.
        let mut publish = vec![0x30, 0xc8, 0x01, 0x00, 0x06];
        publish.extend_from_slice(b"node/x");
        publish.resize(3 + 200, b'v');
        let stream: Vec<u8> = [&[0x10u8, 0x02, 0xaa, 0xbb][..], &publish, &[0xc0, 0x00]].concat();
        for cut in 0..stream.len() {
            let mut read = BytesMut::from(&stream[..cut]);
            let mut frames = Vec::new();
            while let Some(frame) = split_frame(&mut read, 1024).expect("valid") {
                frames.push(frame);
            }
            read.extend_from_slice(&stream[cut..]);
            while let Some(frame) = split_frame(&mut read, 1024).expect("valid") {
                frames.push(frame);
            }
            let kinds: Vec<u8> = frames.iter().map(|(kind, _)| *kind).collect();
            assert_eq!(kinds, [1, 3, 12], "cut at {cut}");
            assert_eq!(frames[1].1.len(), publish.len());
            assert!(publishes_to_nodes(&frames[1].1));
            assert!(read.is_empty());
        }
    }

    #[test]
    fn a_length_over_four_bytes_or_the_limit_is_refused() {
        let mut endless = BytesMut::from(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert!(matches!(
            split_frame(&mut endless, usize::MAX),
            Err(RelayError::Malformed)
        ));
        let mut big = BytesMut::from(&[0x30, 0x80, 0x80, 0x01][..]);
        assert!(matches!(
            split_frame(&mut big, 1024),
            Err(RelayError::TooBig(16_388))
        ));
    }

    #[test]
    fn only_what_a_client_may_send_passes() {
        let allowed: Vec<u8> = (0..16).filter(|&k| kind::from_client(k)).collect();
        // PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT.
        assert_eq!(allowed, [3, 4, 5, 6, 7, 8, 10, 12, 14]);
    }

    #[test]
    fn a_topic_outside_node_is_not_tapped() {
        assert!(!publishes_to_nodes(&[
            0x30, 0x09, 0x00, 0x05, b'n', b'o', b'd', b'e', b'x', b'1', b'2'
        ]));
        assert!(!publishes_to_nodes(&[0x30, 0x01, 0x00]));
    }
}
