//! MQTT nodes (protocol.md §3): the gateway is an MQTT client (rumqttc) of its own embedded
//! broker (rumqttd, on by default) or of an external one. One hub source owns every MQTT node.
//!
//! The client loop only moves messages and time in and out of [`nodes::Nodes`]; it never
//! waits on the hub (a forwarder task does, behind a bounded queue and backlog) and never
//! waits on the client's request queue (`try_*`: what does not fit is dropped and logged).
//! It reconnects with backoff and subscribes again after every ConnAck (clean sessions).

pub mod listener;
pub mod nodes;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use super::to_hub::ToHub;
use crate::hub::{Hub, SourceCommand};
use crate::metrics::{Channel, Limit, Metrics};
use crate::proto::mqtt;
use crate::runtime::Supervisor;
use crate::runtime::heartbeat::Heartbeat;

pub use nodes::{Action, Nodes, PROTOCOL};

/// Events from the MQTT event loop task waiting for the client loop.
const LINK_QUEUE: usize = 1024;
/// Writes from clients waiting for the loop.
const COMMANDS: usize = 256;
/// The client's request queue (subscribes, publishes).
const REQUESTS: usize = 4096;
/// Topics per SUBSCRIBE packet when subscribing again.
const FILTERS_PER_PACKET: usize = 64;
/// Node publishes read by the embedded broker's listeners, waiting for the gateway.
const TAP_QUEUE: usize = 1024;
/// Connections the router takes beyond `mqtt.max_connections`.
const ROUTER_SLACK: usize = 16;
/// How often the gateway asks every node to check in (pyaiot: 30 s).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The client loop never waits (its tick is 1 s): a few seconds of silence is a hang.
const HEARTBEAT_SILENCE: Duration = Duration::from_secs(5);

/// Where the MQTT broker is, and how to log in.
#[derive(Debug)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub credentials: Option<(String, String)>,
    /// TLS to the broker (an external one), with the roots it trusts.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub nodes: nodes::Settings,
    pub check_interval: Duration,
    /// Notified at every ConnAck (a permit is kept if nobody waits): the gateway waits for the
    /// first one from its embedded broker before it counts as started.
    pub connected: Arc<tokio::sync::Notify>,
    /// The embedded broker, which the gateway joins through a local link instead of TCP.
    pub embedded: Option<Embedded>,
}

/// The embedded broker as the gateway joins it.
pub struct Embedded {
    /// The gateway's client id on it.
    pub client_id: String,
    /// The gateway's local link into the router, for what it publishes to nodes.
    pub link: (rumqttd::local::LinkTx, rumqttd::local::LinkRx),
    /// What the nodes publish, handed over by the listeners.
    pub tapped: mpsc::Receiver<(bytes::Bytes, bytes::Bytes)>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// The embedded broker's settings.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// MQTT 3.1.1 clients (the gateway itself among them).
    pub listen: SocketAddr,
    /// MQTT 5 clients: rumqttd speaks one protocol version per listener, both share the
    /// router (and so every topic).
    pub listen_v5: Option<SocketAddr>,
    pub max_connections: usize,
    pub max_payload: usize,
}

/// Binds `addr` once to learn the port (port 0 picks one), and releases it for the
/// embedded broker, which binds it itself.
pub fn reserve(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    use anyhow::Context as _;
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot bind the MQTT broker to {addr}"))?;
    Ok(listener.local_addr()?)
}

/// Starts the embedded MQTT broker: rumqttd's router on its own thread, our listeners (MQTT
/// 3.1.1, and MQTT 5 if configured) as essential tasks on the runtime (`listener.rs` says
/// why not rumqttd's).
pub fn start_broker(
    supervisor: &Supervisor,
    settings: BrokerSettings,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Embedded> {
    // rumqttd keeps every publish in a log per subscription filter, whether or not its
    // subscribers have read it, and each log segment allocates room for 1024 publishes
    // (218 B each) up front. The gateway subscribes to nothing here: the listeners hand it
    // what nodes publish (`listener::Tap`). The filters left are the nodes' own (their
    // `gateway/<id>/...` topics), where only the gateway publishes and a node reads at once:
    // rumqttd's smallest log does.
    let router = rumqttd::RouterConfig {
        // The listeners refuse clients past `max_connections` themselves; the router's own
        // limit only backs them up (a connection leaving and one arriving may overlap).
        max_connections: settings.max_connections + ROUTER_SLACK,
        max_outgoing_packet_count: 200,
        max_segment_size: 1024,
        max_segment_count: 2,
        ..Default::default()
    };
    let router_tx = rumqttd::Router::new(0, router).spawn();
    // Blocks for one round trip to the router's thread, once at start.
    let client_id = client_id();
    let (link_tx, link_rx, _ack) = rumqttd::local::LinkBuilder::new(&client_id, router_tx.clone())
        .clean_session(true)
        .dynamic_filters(true)
        .build()
        .map_err(|e| anyhow::anyhow!("the embedded MQTT broker refused the gateway: {e}"))?;
    let (tap, tapped) = mpsc::channel(TAP_QUEUE);
    let shared =
        listener::Shared::new(settings.max_connections, settings.max_payload, metrics, tap);
    let v4 = bind(settings.listen)?;
    let (config, inner_v4) = inner_settings("rumqttd 3.1.1", &settings)?;
    let inner = rumqttd::Server::new(config, router_tx.clone(), rumqttd::protocol::v4::V4);
    run_inner(supervisor, "mqtt broker (rumqttd)", inner);
    tracing::info!(role = "gateway", addr = %settings.listen, "listening for MQTT clients (embedded broker, MQTT 3.1.1)");
    serve(
        supervisor,
        "mqtt broker",
        v4,
        inner_v4,
        listener::Version::V311,
        &shared,
    );
    if let Some(listen) = settings.listen_v5 {
        let v5 = bind(listen)?;
        let (config, inner_v5) = inner_settings("rumqttd 5", &settings)?;
        let inner = rumqttd::Server::new(config, router_tx.clone(), rumqttd::protocol::v5::V5);
        run_inner(supervisor, "mqtt 5 broker (rumqttd)", inner);
        // Not "MQTT clients": tests and the bench find the 3.1.1 listener by those words.
        tracing::info!(role = "gateway", addr = %listen, "listening for MQTT 5 clients (embedded broker)");
        serve(
            supervisor,
            "mqtt 5 broker",
            v5,
            inner_v5,
            listener::Version::V5,
            &shared,
        );
    }
    Ok(Embedded {
        client_id,
        link: (link_tx, link_rx),
        tapped,
    })
}

fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context as _;
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot bind the MQTT broker to {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(listener)?)
}

/// Settings for one of rumqttd's own listeners, on a free loopback port where only the
/// relays in `listener.rs` connect, and that port.
fn inner_settings(
    name: &str,
    settings: &BrokerSettings,
) -> anyhow::Result<(rumqttd::ServerSettings, SocketAddr)> {
    let listen = reserve(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)))?;
    let config = rumqttd::ServerSettings {
        name: name.into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: listener::CONNECT_TIMEOUT.as_millis() as u16,
            max_payload_size: settings.max_payload,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    Ok((config, listen))
}

/// Runs one of rumqttd's listeners until shutdown; its failure stops the gateway.
fn run_inner<P>(supervisor: &Supervisor, name: &'static str, mut server: rumqttd::Server<P>)
where
    P: rumqttd::protocol::Protocol + Clone + Send + Sync + 'static,
{
    let shutdown = supervisor.shutdown_token();
    supervisor.spawn_essential(name, async move {
        tokio::select! {
            () = shutdown.cancelled() => Ok(()),
            result = server.start(rumqttd::LinkType::Remote) => {
                result.map_err(|e| anyhow::anyhow!("the embedded MQTT broker ({name}) failed: {e}"))
            }
        }
    });
}

/// Runs one of our listeners until shutdown; its failure stops the gateway.
fn serve(
    supervisor: &Supervisor,
    name: &'static str,
    socket: tokio::net::TcpListener,
    rumqttd: SocketAddr,
    version: listener::Version,
    shared: &listener::Shared,
) {
    let shutdown = supervisor.shutdown_token();
    let shared = shared.clone();
    supervisor.spawn_essential(name, async move {
        listener::serve(socket, rumqttd, version, shared, shutdown).await
    });
}

/// A client id no other gateway uses (pyaiot's fixed one made gateways kick each other off).
fn client_id() -> String {
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    format!("aiot-gw-{}", &uuid[..12])
}

/// Starts the MQTT adapter: the client loop and its forwarder to the hub.
pub fn start(supervisor: &Supervisor, hub: Hub, settings: Settings) {
    let supervisor2 = supervisor.clone();
    let shutdown = supervisor.shutdown_token();
    let heartbeat = Heartbeat::new();
    supervisor.add_probe(heartbeat.probe("MQTT adapter", HEARTBEAT_SILENCE));
    supervisor.spawn(async move {
        let (commands_tx, commands) = mpsc::channel(COMMANDS);
        let Some(source) = hub.register("MQTT nodes", commands_tx).await else {
            return;
        };
        let metrics = hub.metrics().clone();
        let to_hub = ToHub::start(&supervisor2, source, metrics.clone(), Channel::Mqtt);
        run(
            &supervisor2,
            settings,
            commands,
            to_hub,
            shutdown,
            metrics,
            &heartbeat,
        )
        .await;
    });
}

/// How the client loop reaches its broker.
enum Client {
    /// rumqttc, over TCP (or TLS): an external broker, QoS 1 both ways as pyaiot.
    Remote(AsyncClient),
    /// A local link into the embedded broker's router, for what the gateway publishes to its
    /// nodes (what they publish comes from the listeners, `listener::Tap`): no connection of
    /// the gateway to itself, and QoS 0, which inside one process loses nothing.
    Local(rumqttd::local::LinkTx),
}

impl Client {
    fn subscribe(&mut self, filters: &[String]) -> Result<(), String> {
        match self {
            Client::Remote(client) => client
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
                )
                .map_err(|e| e.to_string()),
            Client::Local(link) => filters.iter().try_for_each(|filter| {
                link.try_subscribe(filter.clone())
                    .map(drop)
                    .map_err(|e| e.to_string())
            }),
        }
    }

    fn unsubscribe(&mut self, filter: String) -> Result<(), String> {
        match self {
            Client::Remote(client) => client.try_unsubscribe(filter).map_err(|e| e.to_string()),
            Client::Local(link) => link
                .try_unsubscribe(filter)
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }

    fn publish(&mut self, topic: String, payload: Vec<u8>) -> Result<(), String> {
        match self {
            Client::Remote(client) => client
                .try_publish(topic, QoS::AtLeastOnce, false, payload)
                .map_err(|e| e.to_string()),
            Client::Local(link) => link
                .try_publish(topic, payload)
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }

    fn disconnect(&mut self) {
        if let Client::Remote(client) = self {
            let _ = client.try_disconnect();
        }
    }
}

struct Loop {
    client: Client,
    nodes: Nodes,
    dropped: u64,
    metrics: Arc<Metrics>,
}

impl Loop {
    fn subscribe(&mut self, filters: Vec<String>) {
        for chunk in filters.chunks(FILTERS_PER_PACKET) {
            if let Err(error) = self.client.subscribe(chunk) {
                self.drop_request("subscribe", &error);
            }
        }
    }

    fn publish(&mut self, topic: String, payload: Vec<u8>) {
        match self.client.publish(topic, payload) {
            Ok(()) => self.metrics.sent(Channel::Mqtt, 1),
            Err(error) => self.drop_request("publish", &error),
        }
    }

    fn drop_request(&mut self, what: &str, error: &str) {
        self.dropped += 1;
        self.metrics.messages_dropped(Channel::Mqtt, 1);
        if self.dropped.is_power_of_two() {
            tracing::warn!(dropped = self.dropped, %error, "MQTT {what} dropped: the client queue is full");
        }
    }

    fn act(&mut self) {
        while let Some(action) = self.nodes.poll_action() {
            match action {
                Action::Subscribe(filters) => self.subscribe(filters),
                Action::Unsubscribe(filters) => {
                    for filter in filters {
                        if let Err(error) = self.client.unsubscribe(filter) {
                            self.drop_request("unsubscribe", &error);
                        }
                    }
                }
                Action::Publish { topic, payload } => self.publish(topic, payload),
            }
        }
    }
}

async fn run(
    supervisor: &Supervisor,
    mut settings: Settings,
    mut commands: mpsc::Receiver<SourceCommand>,
    mut to_hub: ToHub,
    shutdown: tokio_util::sync::CancellationToken,
    metrics: Arc<Metrics>,
    heartbeat: &Heartbeat,
) {
    let (links_tx, mut links) = mpsc::channel(LINK_QUEUE);
    let (id, client) = match settings.embedded.take() {
        Some(Embedded {
            client_id,
            link: (link_tx, link_rx),
            tapped,
        }) => {
            tracing::info!(broker = "embedded (local link)", client_id = %client_id, "MQTT adapter started");
            supervisor.spawn(drive_local(link_rx, tapped, links_tx, shutdown.clone()));
            (client_id, Client::Local(link_tx))
        }
        None => {
            let id = client_id();
            let (client, eventloop) = remote_client(&settings, &id);
            // The event loop runs in its own task: `poll` is never cancelled half-way through
            // a connect, and it waits only for this loop (which never waits), so TCP pushes
            // back.
            supervisor.spawn(drive(eventloop, links_tx, shutdown.clone()));
            (id, Client::Remote(client))
        }
    };
    let mut state = Loop {
        client,
        nodes: Nodes::new(settings.nodes.clone()),
        dropped: 0,
        metrics: metrics.clone(),
    };
    let mut connected = false;
    // The last refusal reported, so that a broker refusing every 10 s logs it once.
    let mut refused: Option<String> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check = tokio::time::interval(settings.check_interval);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        heartbeat.beat();
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            alive = to_hub.drain(), if to_hub.has_backlog() => {
                if !alive {
                    break;
                }
            }
            Some(link) = links.recv() => match link {
                Link::Connected => {
                    tracing::info!(client_id = %id, "MQTT connected");
                    connected = true;
                    refused = None;
                    settings.connected.notify_one();
                    let filters = state.nodes.filters();
                    state.subscribe(filters);
                    state.publish(mqtt::GATEWAY_CHECK.to_owned(), Vec::new());
                }
                Link::Message { topic, payload } => {
                    metrics.received(Channel::Mqtt, 1);
                    let accept_new = !to_hub.is_behind();
                    if let Err(error) = state.nodes.handle(&topic, &payload, Instant::now(), accept_new) {
                        tracing::debug!(topic = %mqtt_shorten(&topic), %error, "MQTT message dropped");
                    }
                    metrics.add_limit_hits(Limit::ResourcesPerNode, state.nodes.take_resources_refused());
                }
                Link::Down { error, explained: Some(why) } => {
                    if refused.as_ref() != Some(&why) {
                        tracing::error!(%error, "{why}; retrying");
                        refused = Some(why);
                    } else {
                        tracing::debug!(%error, "MQTT connection refused again");
                    }
                    connected = false;
                }
                Link::Down { error, explained: None } => {
                    if connected {
                        tracing::warn!(%error, "MQTT connection lost, reconnecting");
                    } else {
                        tracing::debug!(%error, "MQTT connection failed, retrying");
                    }
                    connected = false;
                }
            },
            Some(command) = commands.recv() => {
                if let SourceCommand::Write { write, .. } = command {
                    state.nodes.write(&write);
                }
            }
            _ = tick.tick() => state.nodes.expire(Instant::now()),
            _ = check.tick() => {
                if connected {
                    tracing::debug!("asking MQTT nodes to check in");
                    state.publish(mqtt::GATEWAY_CHECK.to_owned(), Vec::new());
                }
            }
        }
        state.act();
        while let Some(message) = state.nodes.poll_publish() {
            if !to_hub.push(message) {
                return;
            }
        }
    }
    state.client.disconnect();
    tracing::debug!(nodes = state.nodes.len(), "MQTT adapter stopped");
}

/// rumqttc's client for an external broker, and its event loop.
fn remote_client(settings: &Settings, id: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let mut options = MqttOptions::new(id, settings.host.clone(), settings.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    options.set_max_packet_size(1024 * 1024, mqtt::MAX_PAYLOAD + 1024);
    if let Some((user, password)) = &settings.credentials {
        options.set_credentials(user.clone(), password.clone());
    }
    if let Some(tls) = &settings.tls {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
    }
    tracing::info!(
        broker = %format!("{}:{}", settings.host, settings.port),
        client_id = %id,
        tls = settings.tls.is_some(),
        user = settings.credentials.as_ref().map_or("-", |(user, _)| user.as_str()),
        "MQTT adapter started"
    );
    AsyncClient::new(options, REQUESTS)
}

/// Reports what nodes publish on the embedded broker (handed over by its listeners) and
/// keeps the gateway's local link drained (it receives nothing but the router's own
/// signals). The link is up from the start and stays up as long as the router runs.
async fn drive_local(
    mut link: rumqttd::local::LinkRx,
    mut tapped: mpsc::Receiver<(bytes::Bytes, bytes::Bytes)>,
    links: mpsc::Sender<Link>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    if links.send(Link::Connected).await.is_err() {
        return;
    }
    loop {
        let notification = tokio::select! {
            () = shutdown.cancelled() => return,
            Some((topic, payload)) = tapped.recv() => {
                let topic = String::from_utf8_lossy(&topic).into_owned();
                if links.send(Link::Message { topic, payload }).await.is_err() {
                    return;
                }
                continue;
            }
            notification = link.next() => notification,
        };
        let error = match notification {
            // The router waits for the link to say it has room again.
            Ok(Some(rumqttd::Notification::Unschedule)) => match link.wake().await {
                Ok(()) => continue,
                Err(error) => error,
            },
            Ok(_) => continue,
            Err(error) => error,
        };
        let down = Link::Down {
            error: error.to_string(),
            explained: Some("the embedded MQTT broker stopped".to_owned()),
        };
        let _ = links.send(down).await;
        return;
    }
}

/// What the event loop task reports.
enum Link {
    Connected,
    Message {
        topic: String,
        payload: bytes::Bytes,
    },
    Down {
        error: String,
        /// Why, for an operator, when waiting alone will not fix it.
        explained: Option<String>,
    },
}

/// Keeps polling rumqttc's event loop (it reconnects on the next poll), backing off after
/// each failure.
async fn drive(
    mut eventloop: rumqttc::EventLoop,
    links: mpsc::Sender<Link>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let link = tokio::select! {
            () = shutdown.cancelled() => return,
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = BACKOFF_MIN;
                    Link::Connected
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => Link::Message {
                    topic: publish.topic,
                    payload: publish.payload,
                },
                Ok(_) => continue,
                Err(error) => {
                    let down = Link::Down {
                        error: error.to_string(),
                        explained: tls::explain(&error),
                    };
                    if links.send(down).await.is_err() {
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
            },
        };
        if links.send(link).await.is_err() {
            return;
        }
    }
}

fn mqtt_shorten(topic: &str) -> String {
    const KEEP: usize = 80;
    match topic.char_indices().nth(KEEP) {
        Some((cut, _)) => format!("{}…", &topic[..cut]),
        None => topic.to_owned(),
    }
}
