//! The MQTT-SN gateway (docs/mqttsn.md): RIOT's constrained nodes (`emcute`) speak MQTT-SN
//! over UDP; the gateway is transparent, so each client gets its own MQTT connection (rumqttc)
//! to the broker the MQTT adapter uses — the embedded one or an external one alike — and its
//! messages land in the same topic space as MQTT nodes'. The MQTT adapter then sees an
//! MQTT-SN node like any other.
//!
//! This module is the socket loop: it moves datagrams, the MQTT connections' events and
//! time into [`clients::Clients`] (sans-IO) and carries out what comes back. It never waits
//! on an MQTT connection (`try_*`; what does not fit is dropped and counted).

pub mod clients;
pub mod session;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Channel, Limit, Metrics};
use crate::proto::mqttsn::Message;
use crate::runtime::Supervisor;
use clients::{Clients, GATEWAY_CONNECTION, UpEvent};
use session::{Upstream, Will};

/// Events of all MQTT connections waiting for the loop.
const UP_QUEUE: usize = 4096;
/// Requests waiting in one MQTT connection's queue.
const REQUESTS: usize = 64;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a cleanly disconnecting MQTT connection may take to send its DISCONNECT.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Settings {
    pub clients: clients::Settings,
    /// The MQTT broker: the MQTT adapter's.
    pub broker_host: String,
    pub broker_port: u16,
    pub credentials: Option<(String, String)>,
    /// Where to send ADVERTISE, and how often (`None`: never).
    pub advertise: Option<(SocketAddr, Duration)>,
}

/// Binds the gateway's UDP socket; "::" takes IPv4 too, and falls back to IPv4 where IPv6 is
/// missing.
pub fn bind(ip: IpAddr, port: u16) -> anyhow::Result<UdpSocket> {
    let no_ipv6 = |e: &io::Error| {
        matches!(e.raw_os_error(),
            Some(code) if code == nix::libc::EAFNOSUPPORT || code == nix::libc::EADDRNOTAVAIL)
    };
    let addr = SocketAddr::new(ip, port);
    match bind_once(addr) {
        Err(error) if ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && no_ipv6(&error) => {
            tracing::info!("IPv6 is not available here, MQTT-SN on IPv4 only");
            let fallback = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
            bind_once(fallback)
                .with_context(|| format!("cannot bind the MQTT-SN socket to {fallback}"))
        }
        result => result.with_context(|| format!("cannot bind the MQTT-SN socket to {addr}")),
    }
}

fn bind_once(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Starts the gateway on its bound socket.
pub fn start(
    supervisor: &Supervisor,
    socket: UdpSocket,
    settings: Settings,
    metrics: Arc<Metrics>,
) {
    if let Ok(addr) = socket.local_addr() {
        tracing::info!(role = "gateway", %addr, "listening for MQTT-SN clients (UDP)");
        supervisor.add_probe(probe(addr));
    }
    let shutdown = supervisor.shutdown_token();
    supervisor.spawn(run(socket, settings, metrics, shutdown));
}

/// For systemd's watchdog: the socket loop answers SEARCHGW with GWINFO.
fn probe(addr: SocketAddr) -> crate::runtime::notify::Probe {
    let addr = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    };
    crate::runtime::notify::Probe::new(format!("MQTT-SN at {addr}"), move || async move {
        let local: SocketAddr = if addr.is_ipv6() {
            (Ipv6Addr::LOCALHOST, 0).into()
        } else {
            (Ipv4Addr::LOCALHOST, 0).into()
        };
        let socket = UdpSocket::bind(local)
            .await
            .map_err(|e| format!("bind: {e}"))?;
        socket
            .send_to(&Message::SearchGw { radius: 0 }.encode(), addr)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut answer = [0u8; 64];
        let (n, _) = socket
            .recv_from(&mut answer)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        match Message::decode(&answer[..n]) {
            Ok(Message::GwInfo { .. }) => Ok(()),
            _ => Err("no GWINFO to a SEARCHGW".into()),
        }
    })
}

/// One client's MQTT connection: its request handle, its will (changed by WILLTOPICUPD and
/// WILLMSGUPD, used at the next connect) and its driver task.
struct Connection {
    client: AsyncClient,
    will: tokio::sync::watch::Sender<Option<Will>>,
    task: JoinHandle<()>,
}

struct Loop {
    socket: Arc<UdpSocket>,
    clients: Clients,
    connections: HashMap<u64, Connection>,
    settings: Settings,
    up_tx: mpsc::Sender<(u64, UpEvent)>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    dropped_requests: u64,
}

fn mqtt_qos(qos: u8) -> QoS {
    if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn last_will(will: &Will) -> LastWill {
    LastWill::new(
        will.topic.clone(),
        will.message.clone(),
        mqtt_qos(will.qos),
        will.retain,
    )
}

impl Loop {
    fn options(&self, client_id: &str, will: Option<&Will>) -> MqttOptions {
        let mut options = MqttOptions::new(
            client_id,
            self.settings.broker_host.clone(),
            self.settings.broker_port,
        );
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(true);
        options.set_max_packet_size(
            crate::proto::mqtt::MAX_PAYLOAD + 1024,
            crate::proto::mqtt::MAX_PAYLOAD + 1024,
        );
        if let Some((user, password)) = &self.settings.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        if let Some(will) = will {
            options.set_last_will(last_will(will));
        }
        options
    }

    fn open(&mut self, connection: u64, client_id: &str, will: Option<Will>) {
        let options = self.options(client_id, will.as_ref());
        let (client, eventloop) = AsyncClient::new(options, REQUESTS);
        let (will_tx, will_rx) = tokio::sync::watch::channel(will);
        let task = tokio::spawn(drive(
            connection,
            eventloop,
            will_rx,
            self.up_tx.clone(),
            self.shutdown.clone(),
        ));
        self.connections.insert(
            connection,
            Connection {
                client,
                will: will_tx,
                task,
            },
        );
    }

    fn drop_request(&mut self, error: &rumqttc::ClientError) {
        self.dropped_requests += 1;
        self.metrics.messages_dropped(Channel::MqttSn, 1);
        if self.dropped_requests.is_power_of_two() {
            tracing::warn!(dropped = self.dropped_requests, %error, "MQTT-SN: a request to the broker was dropped (its queue is full)");
        }
    }

    fn command(&mut self, connection: u64, command: Upstream) {
        match command {
            Upstream::Connect {
                client_id, will, ..
            } => self.open(connection, &client_id, will),
            Upstream::Abort => {
                // Cut without DISCONNECT: the broker publishes the will (§6.3).
                if let Some(conn) = self.connections.remove(&connection) {
                    conn.task.abort();
                }
            }
            Upstream::Disconnect => {
                if let Some(conn) = self.connections.remove(&connection) {
                    // The driver ends once the DISCONNECT is out; a connection that never got
                    // up (or a full queue) is cut after a grace period all the same.
                    let _ = conn.client.try_disconnect();
                    let task = conn.task;
                    tokio::spawn(async move {
                        tokio::time::sleep(DISCONNECT_GRACE).await;
                        task.abort();
                    });
                }
            }
            Upstream::Will(will) => {
                if let Some(conn) = self.connections.get(&connection) {
                    conn.will.send_replace(will);
                }
            }
            Upstream::Publish {
                topic,
                payload,
                qos,
                retain,
            } => {
                let Some(conn) = self.connections.get(&connection) else {
                    return;
                };
                match conn
                    .client
                    .try_publish(topic, mqtt_qos(qos), retain, payload)
                {
                    Ok(()) => self.metrics.sent(Channel::Mqtt, 1),
                    Err(error) => self.drop_request(&error),
                }
            }
            Upstream::Subscribe { filter, qos } => {
                let Some(conn) = self.connections.get(&connection) else {
                    return;
                };
                if let Err(error) = conn.client.try_subscribe(filter, mqtt_qos(qos)) {
                    self.drop_request(&error);
                }
            }
            Upstream::Unsubscribe { filter } => {
                let Some(conn) = self.connections.get(&connection) else {
                    return;
                };
                if let Err(error) = conn.client.try_unsubscribe(filter) {
                    self.drop_request(&error);
                }
            }
        }
    }

    fn act(&mut self) {
        while let Some(event) = self.clients.poll() {
            match event {
                clients::Event::Transmit { peer, datagram } => {
                    // UDP: a full socket buffer loses the datagram, as the network might.
                    match self.socket.try_send_to(&datagram, peer) {
                        Ok(_) => self.metrics.sent(Channel::MqttSn, 1),
                        Err(error) => {
                            tracing::debug!(%peer, %error, "MQTT-SN datagram not sent");
                            self.metrics.messages_dropped(Channel::MqttSn, 1);
                        }
                    }
                }
                clients::Event::Up {
                    connection,
                    command,
                } => self.command(connection, command),
                clients::Event::Dropped => self.metrics.messages_dropped(Channel::MqttSn, 1),
                clients::Event::Lost => self.metrics.peer_dropped(Channel::MqttSn),
                clients::Event::Full => self.metrics.limit_hit(Limit::MqttSnClients),
            }
        }
    }
}

async fn run(
    socket: UdpSocket,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let (up_tx, mut up_rx) = mpsc::channel(UP_QUEUE);
    let max_datagram = settings.clients.max_datagram;
    let advertise = settings.advertise;
    let mut state = Loop {
        socket: Arc::new(socket),
        clients: Clients::new(settings.clients.clone()),
        connections: HashMap::new(),
        settings,
        up_tx,
        metrics,
        shutdown: shutdown.clone(),
        dropped_requests: 0,
    };
    // The gateway's own connection, for QoS -1 publishes.
    let gateway_id = format!(
        "aiot-sn-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    state.open(GATEWAY_CONNECTION, &gateway_id, None);
    // One byte more than allowed: a datagram that fills it was cut, so it is oversize.
    let mut buffer = vec![0u8; max_datagram + 1];
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut advertise_timer =
        tokio::time::interval(advertise.map_or(Duration::from_secs(3600), |(_, every)| every));
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            received = state.socket.recv_from(&mut buffer) => match received {
                Ok((len, peer)) => {
                    state.metrics.received(Channel::MqttSn, 1);
                    if len > max_datagram {
                        state.clients.handle_oversize(peer);
                    } else {
                        state.clients.handle_datagram(peer, &buffer[..len], Instant::now());
                    }
                }
                // ICMP errors from an earlier send surface here on Linux; nothing is lost.
                Err(error) => tracing::debug!(%error, "MQTT-SN socket error"),
            },
            Some((connection, event)) = up_rx.recv() => {
                if connection == GATEWAY_CONNECTION {
                    if event == UpEvent::Connected {
                        tracing::debug!("MQTT-SN gateway connection to the broker is up");
                    }
                } else {
                    if let UpEvent::Message { .. } = event {
                        state.metrics.received(Channel::Mqtt, 1);
                    }
                    state.clients.upstream(connection, event, Instant::now());
                }
            }
            _ = tick.tick() => state.clients.tick(Instant::now()),
            _ = advertise_timer.tick(), if advertise.is_some() => {
                if let Some((to, every)) = advertise {
                    let message = Message::Advertise {
                        gw_id: state.settings.clients.gateway_id,
                        duration: every.as_secs().min(u64::from(u16::MAX)) as u16,
                    };
                    if let Err(error) = state.socket.try_send_to(&message.encode(), to) {
                        tracing::debug!(%to, %error, "MQTT-SN ADVERTISE not sent");
                    }
                }
            }
        }
        state.act();
    }
    state.clients.end_all();
    state.act();
    for (_, conn) in state.connections.drain() {
        let _ = conn.client.try_disconnect();
    }
    tracing::debug!("MQTT-SN gateway stopped");
}

/// Keeps one MQTT connection going (rumqttc reconnects on the next poll), backing off after
/// failures, and reports to the loop. Ends after a clean DISCONNECT, at shutdown, or aborted.
async fn drive(
    connection: u64,
    mut eventloop: rumqttc::EventLoop,
    mut will: tokio::sync::watch::Receiver<Option<Will>>,
    events: mpsc::Sender<(u64, UpEvent)>,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            Ok(()) = will.changed() => {
                // Taken at the next (re)connect: MQTT 3.1.1 has no will update.
                let new = will.borrow_and_update().clone();
                let mut options = eventloop.mqtt_options.clone();
                if let Some(new) = &new {
                    options.set_last_will(last_will(new));
                    eventloop.mqtt_options = options;
                } else {
                    let (host, port) = options.broker_address();
                    let mut fresh = MqttOptions::new(options.client_id(), host, port);
                    fresh.set_keep_alive(options.keep_alive());
                    fresh.set_clean_session(true);
                    let (max_in, max_out) = (options.max_packet_size(), options.max_packet_size());
                    fresh.set_max_packet_size(max_in, max_out);
                    if let Some(login) = options.credentials() {
                        fresh.set_credentials(login.username, login.password);
                    }
                    eventloop.mqtt_options = fresh;
                }
                continue;
            }
            event = eventloop.poll() => event,
        };
        let report = match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = BACKOFF_MIN;
                if ack.code == ConnectReturnCode::Success {
                    UpEvent::Connected
                } else {
                    UpEvent::Refused
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => UpEvent::Message {
                topic: publish.topic,
                payload: publish.payload.to_vec(),
                qos: u8::from(publish.qos != QoS::AtMostOnce),
            },
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                // Give the DISCONNECT a moment to leave, then end.
                let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
                return;
            }
            Ok(_) => continue,
            Err(rumqttc::ConnectionError::ConnectionRefused(_)) => UpEvent::Refused,
            // The loop dropped the request handle: this connection is no longer wanted.
            Err(rumqttc::ConnectionError::RequestsDone) => return,
            Err(error) => {
                tracing::debug!(connection, %error, "MQTT-SN client's MQTT connection failed, retrying");
                if events.send((connection, UpEvent::Down)).await.is_err() {
                    return;
                }
                let jitter = backoff.mul_f64(fastrand::f64() * 0.5);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff + jitter) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let refused = report == UpEvent::Refused;
        if events.send((connection, report)).await.is_err() || refused {
            return;
        }
    }
}
