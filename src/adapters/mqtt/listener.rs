//! The embedded broker's MQTT listeners: accept clients and link each to rumqttd's router
//! through its public local links, in place of rumqttd's own listener (`Server::start`).
//!
//! rumqttd 0.20's listener aborts the whole process when a client reconnects under the id of
//! a connection that failed in its handshake: a CONNECT followed by a reset, or one the
//! router refused at `max_connections`, leaves a will handler behind whose receiver is gone,
//! and the next CONNECT with that id `unwrap`s the failed send. It also leaves a refused
//! client waiting for a CONNACK that never comes, blocks the runtime while the router
//! registers a connection, and keeps every publish as a slice of its connection's read
//! buffer, so that one small publish in a log pins kilobytes. Here a refused client gets
//! CONNACK 3 (server unavailable) and is counted in `/metrics`, the registration runs on the
//! blocking pool, and publishes are copied out of the read buffer.
//!
//! Publishes on `node/...` also go straight to the gateway (`Tap`), which subscribes to
//! nothing on its own broker: rumqttd keeps a log per subscription filter and drops what a
//! subscriber has not read when the log is full, so a burst of nodes (hundreds answering
//! `discover` at once) overran the gateway's filters before it had read them, and filling
//! those logs made the gateway's memory grow for half an hour. A client whose publishes the
//! gateway has not taken yet waits, so nothing is lost however far the gateway falls behind.
//!
//! A keep-alive of 0 means none, as MQTT says; TCP keep-alive still finds a vanished peer.
//!
//! Last wills are kept here, not in the router (rumqttd only publishes its own on an event
//! its local links cannot send): a connection that ends without DISCONNECT publishes its
//! will, then leaves the router with a DISCONNECT of its own. Will delays (MQTT 5) are not
//! honoured: the will goes out at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWill, Packet, Protocol,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Limit, Metrics};

/// Registers a connection with rumqttd's router (client id, clean session, topic alias
/// maximum) and blocks the thread until the router answers. A closure, because the router's
/// channel has a type rumqttd does not export. (A link's `send` blocks the thread too while
/// the router's event queue is full, as rumqttd's own links do.)
#[derive(Clone)]
pub struct Linker(
    #[allow(clippy::type_complexity)]
    pub  Arc<
        dyn Fn(String, bool, u16) -> anyhow::Result<(LinkTx, LinkRx, rumqttd::Notification)>
            + Send
            + Sync,
    >,
);

impl std::fmt::Debug for Linker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Linker(rumqttd router)")
    }
}

impl Linker {
    /// Registers `client_id` on the blocking pool.
    pub async fn link(
        &self,
        client_id: String,
        clean_session: bool,
        topic_alias_max: u16,
    ) -> anyhow::Result<(LinkTx, LinkRx, rumqttd::Notification)> {
        let link = self.0.clone();
        tokio::task::spawn_blocking(move || link(client_id, clean_session, topic_alias_max)).await?
    }
}

/// What the listeners hand the gateway: every publish on `node/...`, topic and payload.
pub type Tap = tokio::sync::mpsc::Sender<(Bytes, Bytes)>;

/// Time a new connection has to send its CONNECT.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a connection refused for `max_connections` has to send the CONNECT it is refused
/// (short: such connections are not counted against the limit).
const REFUSED_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Notifications from the router written in one go.
const WRITE_BATCH: usize = 256;
/// TCP keep-alive, so that a client with MQTT keep-alive 0 that vanished is found too.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// What every client of one broker shares: the router, the limit, the counters.
#[derive(Clone)]
pub struct Shared {
    pub linker: Linker,
    pub max_payload: usize,
    pub max_connections: usize,
    pub metrics: Arc<Metrics>,
    /// Where publishes on `node/...` go besides the router. A client waits while it is full,
    /// and so reads no more: nothing is lost, however far the gateway falls behind.
    pub tap: Option<Tap>,
    slots: Arc<Semaphore>,
    full_logged: Arc<AtomicBool>,
}

impl Shared {
    pub fn new(
        linker: Linker,
        max_connections: usize,
        max_payload: usize,
        metrics: Arc<Metrics>,
        tap: Option<Tap>,
    ) -> Shared {
        Shared {
            linker,
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

/// Accepts MQTT clients speaking `protocol` until shutdown.
pub async fn serve<P>(
    listener: TcpListener,
    protocol: P,
    shared: Shared,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    P: Protocol + Clone + Send + 'static,
{
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
        let protocol = protocol.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let client = Client::new(socket, protocol, shared.max_payload);
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return,
                outcome = client.run(peer, slot, &shared) => outcome,
            };
            if let Err(error) = outcome {
                tracing::debug!(%peer, %error, "MQTT client gone");
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("closed by the client")]
    Closed,
    #[error("no CONNECT within {0:?}")]
    ConnectTimeout(Duration),
    #[error("silent past its keep-alive")]
    KeepAlive,
    #[error("not MQTT, or not allowed: {0:?}")]
    Protocol(rumqttd::protocol::Error),
    #[error("first packet is not CONNECT")]
    NotConnect,
    #[error("refused: {0}")]
    Refused(&'static str),
    #[error("the broker dropped the connection")]
    Router,
}

/// One client's socket and buffers.
struct Client<P> {
    socket: TcpStream,
    protocol: P,
    max_payload: usize,
    read: BytesMut,
    write: BytesMut,
}

impl<P: Protocol> Client<P> {
    fn new(socket: TcpStream, protocol: P, max_payload: usize) -> Client<P> {
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        let _ = socket2::SockRef::from(&socket).set_tcp_keepalive(&keepalive);
        let _ = socket.set_nodelay(true);
        Client {
            socket,
            protocol,
            max_payload,
            read: BytesMut::with_capacity(4096),
            write: BytesMut::with_capacity(4096),
        }
    }

    /// A whole packet already read, if any.
    fn buffered(&mut self) -> Result<Option<Packet>, ClientError> {
        match self.protocol.read_mut(&mut self.read, self.max_payload) {
            Ok(packet) => Ok(Some(packet)),
            Err(rumqttd::protocol::Error::InsufficientBytes(required)) => {
                self.read.reserve(required);
                Ok(None)
            }
            Err(error) => Err(ClientError::Protocol(error)),
        }
    }

    /// Reads more from the socket (0 bytes: the client closed).
    async fn fill(&mut self) -> Result<(), ClientError> {
        if self.socket.read_buf(&mut self.read).await? == 0 {
            return Err(ClientError::Closed);
        }
        Ok(())
    }

    async fn next_packet(&mut self) -> Result<Packet, ClientError> {
        loop {
            if let Some(packet) = self.buffered()? {
                return Ok(packet);
            }
            self.fill().await?;
        }
    }

    async fn send(&mut self, packet: Packet) -> Result<(), ClientError> {
        self.encode(packet)?;
        self.flush().await
    }

    fn encode(&mut self, packet: Packet) -> Result<(), ClientError> {
        self.protocol
            .write(packet, &mut self.write)
            .map_err(ClientError::Protocol)?;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ClientError> {
        self.socket.write_all(&self.write).await?;
        self.write.clear();
        Ok(())
    }

    async fn refuse(&mut self, code: ConnectReturnCode) -> Result<(), ClientError> {
        let ack = ConnAck {
            session_present: false,
            code,
        };
        self.send(Packet::ConnAck(ack, None)).await
    }

    async fn run(
        mut self,
        peer: SocketAddr,
        slot: Option<OwnedSemaphorePermit>,
        shared: &Shared,
    ) -> Result<(), ClientError> {
        let wait = if slot.is_some() {
            CONNECT_TIMEOUT
        } else {
            REFUSED_CONNECT_TIMEOUT
        };
        let connect = tokio::time::timeout(wait, self.next_packet())
            .await
            .map_err(|_| ClientError::ConnectTimeout(wait))??;
        let Packet::Connect(connect, properties, will, _will_properties, _login) = connect else {
            return Err(ClientError::NotConnect);
        };
        let Some(slot) = slot else {
            self.refuse(ConnectReturnCode::ServiceUnavailable).await?;
            return Err(ClientError::Refused("mqtt.max_connections"));
        };
        let assigned_id = connect.client_id.is_empty().then(|| {
            let uuid = uuid::Uuid::new_v4().simple().to_string();
            format!("aiot-{}", &uuid[..16])
        });
        if assigned_id.is_some() && !connect.clean_session {
            // MQTT 3.1.1 §3.1.3-8: a session needs an id to be found again.
            self.refuse(ConnectReturnCode::ClientIdentifierNotValid)
                .await?;
            return Err(ClientError::Refused(
                "empty client id without a clean session",
            ));
        }
        let client_id = assigned_id.clone().unwrap_or(connect.client_id);
        let topic_alias_max = properties
            .as_ref()
            .and_then(|p| p.topic_alias_max)
            .unwrap_or(0);
        let linked = shared
            .linker
            .link(client_id.clone(), connect.clean_session, topic_alias_max)
            .await;
        let (link_tx, link_rx, ack) = match linked {
            Ok(link) => link,
            Err(error) => {
                tracing::warn!(%peer, client_id, %error, "MQTT client refused by the broker's router");
                self.refuse(ConnectReturnCode::ServiceUnavailable).await?;
                return Err(ClientError::Refused("the router refused it"));
            }
        };
        let mut session = Session {
            tap: shared.tap.clone(),
            held: Vec::new(),
            subscribes_pending: 0,
            link_tx,
            link_rx,
            will,
            keep_alive: (connect.keep_alive > 0)
                .then(|| Duration::from_secs(u64::from(connect.keep_alive)) * 3 / 2),
            clean_end: false,
            _slot: slot,
        };
        tracing::debug!(%peer, client_id, "MQTT client connected");
        let outcome = session.run(&mut self, ack, assigned_id).await;
        session.leave().await;
        outcome
    }
}

/// A connected client's link to the router.
struct Session {
    tap: Option<Tap>,
    /// What the client published on `node/...`, held for the gateway until the router has
    /// acknowledged every SUBSCRIBE sent before it: the gateway answers a `node/check` at
    /// once, and its answer must find the node subscribed.
    held: Vec<(Bytes, Bytes)>,
    /// SUBSCRIBEs handed to the router and not yet acknowledged.
    subscribes_pending: usize,
    link_tx: LinkTx,
    link_rx: LinkRx,
    will: Option<LastWill>,
    /// 1.5 × the client's keep-alive: how long it may stay silent.
    keep_alive: Option<Duration>,
    /// The client sent DISCONNECT without asking for its will (MQTT 5 may ask).
    clean_end: bool,
    _slot: OwnedSemaphorePermit,
}

impl Session {
    async fn run<P: Protocol>(
        &mut self,
        client: &mut Client<P>,
        ack: rumqttd::Notification,
        assigned_id: Option<String>,
    ) -> Result<(), ClientError> {
        let ack: Option<Packet> = ack.into();
        let Some(mut ack) = ack else {
            return Err(ClientError::Router);
        };
        if let (Packet::ConnAck(_, properties), Some(id)) = (&mut ack, assigned_id) {
            let mut with_id = properties.take().unwrap_or_default();
            with_id.assigned_client_identifier = Some(id);
            *properties = Some(with_id);
        }
        client.send(ack).await?;
        let mut deadline = self.keep_alive.map(|k| Instant::now() + k);
        loop {
            // Packets already read come first: the socket is not readable for them.
            let mut batch = Vec::new();
            while let Some(packet) = client.buffered()? {
                batch.push(packet);
            }
            if !batch.is_empty() {
                deadline = self.keep_alive.map(|k| Instant::now() + k);
                if self.pass_to_router(batch).await? {
                    return Ok(());
                }
            }
            let silent_until = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                filled = client.fill() => filled?,
                () = silent_until => return Err(ClientError::KeepAlive),
                notification = self.link_rx.next() => {
                    let notification = notification.map_err(|_| ClientError::Router)?;
                    self.write_to_client(client, notification).await?;
                }
            }
        }
    }

    /// Hands the client's packets to the router; true after a DISCONNECT.
    async fn pass_to_router(&mut self, batch: Vec<Packet>) -> Result<bool, ClientError> {
        let mut last = None;
        for mut packet in batch {
            if let Packet::Publish(publish, _) = &mut packet {
                // A slice would keep the whole read buffer alive for as long as a log
                // holds the publish.
                publish.topic = Bytes::copy_from_slice(&publish.topic);
                publish.payload = Bytes::copy_from_slice(&publish.payload);
                if self.tap.is_some() && publish.topic.starts_with(b"node/") {
                    self.held
                        .push((publish.topic.clone(), publish.payload.clone()));
                }
            }
            if matches!(packet, Packet::Subscribe(..)) {
                self.subscribes_pending += 1;
            }
            if let Packet::Disconnect(disconnect, _) = &packet {
                // The session ends here; `leave` tells the router, after the will if any.
                self.clean_end =
                    disconnect.reason_code != DisconnectReasonCode::DisconnectWithWillMessage;
                if let Some(last) = last.take() {
                    self.link_tx
                        .send(last)
                        .await
                        .map_err(|_| ClientError::Router)?;
                }
                self.release().await;
                return Ok(true);
            }
            if let Some(previous) = last.replace(packet) {
                self.link_tx.buffer().push_back(previous);
            }
        }
        if let Some(last) = last {
            // `send` queues the last packet and wakes the router once for the batch.
            self.link_tx
                .send(last)
                .await
                .map_err(|_| ClientError::Router)?;
        }
        self.release().await;
        Ok(false)
    }

    /// Gives the gateway what the client published on `node/...`, once nothing it sent
    /// before is waiting for the router.
    async fn release(&mut self) {
        if self.subscribes_pending > 0 || self.held.is_empty() {
            return;
        }
        if let Some(tap) = &self.tap {
            for message in self.held.drain(..) {
                // An error means the gateway has stopped; the router has it anyway.
                let _ = tap.send(message).await;
            }
        }
    }

    /// Writes what the router has for the client, all that is ready at once.
    async fn write_to_client<P: Protocol>(
        &mut self,
        client: &mut Client<P>,
        first: Option<rumqttd::Notification>,
    ) -> Result<(), ClientError> {
        let mut unscheduled = false;
        let mut next = first;
        for _ in 0..WRITE_BATCH {
            if let Some(notification) = next.take() {
                match self.packet_for_client(notification) {
                    Some(packet) => client.encode(packet)?,
                    // The router stopped sending until told the client keeps up.
                    None => unscheduled = true,
                }
            }
            match tokio::time::timeout(Duration::ZERO, self.link_rx.next()).await {
                Ok(Ok(Some(notification))) => next = Some(notification),
                Ok(Ok(None)) | Err(_) => break,
                Ok(Err(_)) => return Err(ClientError::Router),
            }
        }
        if let Some(notification) = next {
            match self.packet_for_client(notification) {
                Some(packet) => client.encode(packet)?,
                None => unscheduled = true,
            }
        }
        client.flush().await?;
        if unscheduled {
            self.link_rx.wake().await.map_err(|_| ClientError::Router)?;
        }
        self.release().await;
        Ok(())
    }

    /// The packet a notification becomes (`None`: the router unscheduled the client).
    fn packet_for_client(&mut self, notification: rumqttd::Notification) -> Option<Packet> {
        let packet: Option<Packet> = notification.into();
        if let Some(Packet::SubAck(..)) = packet {
            self.subscribes_pending = self.subscribes_pending.saturating_sub(1);
        }
        packet
    }

    /// Publishes the will unless the client said DISCONNECT, and leaves the router.
    async fn leave(&mut self) {
        self.subscribes_pending = 0;
        self.release().await;
        if let Some(will) = self.will.take().filter(|_| !self.clean_end) {
            match will_publish(&will) {
                Some(publish) => {
                    let _ = self.link_tx.send(publish).await;
                }
                None => tracing::debug!("MQTT will not publishable, dropped"),
            }
        }
        let disconnect = Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        };
        let _ = self
            .link_tx
            .send(Packet::Disconnect(disconnect, None))
            .await;
    }
}

/// The will as the client would have published it. rumqttd builds publishes with a QoS
/// only from the wire, so the will is encoded as an MQTT 3.1.1 PUBLISH and decoded again.
fn will_publish(will: &LastWill) -> Option<Packet> {
    let qos = will.qos as u8;
    let mut body = BytesMut::new();
    body.put_u16(u16::try_from(will.topic.len()).ok()?);
    body.put_slice(&will.topic);
    if qos > 0 {
        body.put_u16(1);
    }
    body.put_slice(&will.message);
    let mut wire = BytesMut::with_capacity(body.len() + 5);
    wire.put_u8(0x30 | (qos << 1) | u8::from(will.retain));
    let mut remaining = body.len();
    loop {
        let byte = (remaining % 128) as u8;
        remaining /= 128;
        wire.put_u8(if remaining > 0 { byte | 0x80 } else { byte });
        if remaining == 0 {
            break;
        }
    }
    wire.put_slice(&body);
    let size = wire.len();
    rumqttd::protocol::v4::V4.read_mut(&mut wire, size).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::QoS;

    fn will(qos: QoS, retain: bool, message: &[u8]) -> LastWill {
        LastWill {
            topic: Bytes::from_static(b"node/n1/status"),
            message: Bytes::copy_from_slice(message),
            qos,
            retain,
        }
    }

    #[test]
    fn a_will_becomes_the_publish_the_client_would_have_sent() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for retain in [false, true] {
                let Some(Packet::Publish(publish, None)) =
                    will_publish(&will(qos, retain, b"gone"))
                else {
                    panic!("not a publish");
                };
                assert_eq!(&publish.topic[..], b"node/n1/status");
                assert_eq!(&publish.payload[..], b"gone");
                assert_eq!(publish.retain, retain);
                // rumqttd keeps a publish's QoS to itself but for its Debug text.
                assert!(format!("{publish:?}").contains(&format!("qos: {qos:?}")));
            }
        }
    }

    #[test]
    fn a_will_of_any_size_survives_the_length_encoding() {
        for size in [0, 1, 120, 127, 128, 16_383, 16_384, 70_000] {
            let message = vec![b'x'; size];
            let Some(Packet::Publish(publish, _)) =
                will_publish(&will(QoS::AtLeastOnce, false, &message))
            else {
                panic!("no publish for a {size}-byte will");
            };
            assert_eq!(publish.payload.len(), size);
        }
    }
}
