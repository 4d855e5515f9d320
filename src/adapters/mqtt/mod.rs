//! MQTT nodes (protocol.md §3): the gateway is an MQTT client (rumqttc) of its own embedded
//! broker (rumqttd, on by default) or of an external one. One hub source owns every MQTT node.
//!
//! The client loop only moves messages and time in and out of [`nodes::Nodes`]; it never
//! waits on the hub (a forwarder task does, behind a bounded queue and backlog) and never
//! waits on the client's request queue (`try_*`: what does not fit is dropped and logged).
//! It reconnects with backoff and subscribes again after every ConnAck (clean sessions).

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
/// Bytes (topics and payloads) per segment of the embedded broker's logs for `node/check` and
/// `node/+/+`: about 370 checks, or 300 readings, per segment; two segments are kept.
const NODE_LOG_SEGMENT: usize = 16 * 1024;
/// How often the gateway asks every node to check in (pyaiot: 30 s).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The client loop never waits (its tick is 1 s): a few seconds of silence is a hang.
const HEARTBEAT_SILENCE: Duration = Duration::from_secs(5);

/// Where the MQTT broker is, and how to log in.
#[derive(Debug, Clone)]
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

/// Starts the embedded MQTT broker: rumqttd's router on its own thread, its listeners (MQTT
/// 3.1.1, and MQTT 5 if configured) as essential tasks on our runtime.
pub fn start_broker(supervisor: &Supervisor, settings: BrokerSettings) {
    // rumqttd keeps every publish in a log per subscription filter until the log is full,
    // whether or not its subscribers have read it, and each log segment allocates room for
    // 1024 publishes (218 B each) up front. The gateway subscribes to its nodes through two
    // wildcard filters (`nodes::Subscriptions::Wildcard`), so two logs hold every node's
    // traffic: sized for a burst of every node answering `gateway/check` at once, they fill
    // within minutes and then stay the same size. Other filters (the nodes' own, on their
    // `gateway/<id>/...` topics) get rumqttd's smallest log: only the gateway publishes there,
    // and a node reads at once.
    let node_log = rumqttd::SegmentConfig {
        max_segment_size: NODE_LOG_SEGMENT,
        max_segment_count: 2,
    };
    let router = rumqttd::RouterConfig {
        max_connections: settings.max_connections,
        max_outgoing_packet_count: 200,
        max_segment_size: 1024,
        max_segment_count: 2,
        custom_segment: Some(
            [mqtt::NODE_CHECK, mqtt::NODE_TOPICS]
                .into_iter()
                .map(|filter| (filter.to_owned(), node_log.clone()))
                .collect(),
        ),
        ..Default::default()
    };
    let router_tx = rumqttd::Router::new(0, router).spawn();
    let server = |name: &str, listen: SocketAddr| rumqttd::ServerSettings {
        name: name.into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: settings.max_payload,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    tracing::info!(role = "gateway", addr = %settings.listen, "listening for MQTT clients (embedded broker, MQTT 3.1.1)");
    let v4 = rumqttd::Server::new(
        server("aiot-mqtt", settings.listen),
        router_tx.clone(),
        rumqttd::protocol::v4::V4,
    );
    serve(supervisor, "mqtt broker", v4);
    if let Some(listen) = settings.listen_v5 {
        // Not "MQTT clients": tests and the bench find the 3.1.1 listener by those words.
        tracing::info!(role = "gateway", addr = %listen, "listening for MQTT 5 clients (embedded broker)");
        let v5 = rumqttd::Server::new(
            server("aiot-mqtt5", listen),
            router_tx,
            rumqttd::protocol::v5::V5,
        );
        serve(supervisor, "mqtt 5 broker", v5);
    }
}

/// Runs one rumqttd listener until shutdown; its failure stops the gateway.
fn serve<P>(supervisor: &Supervisor, name: &'static str, mut server: rumqttd::Server<P>)
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

struct Loop {
    client: AsyncClient,
    nodes: Nodes,
    dropped: u64,
    metrics: Arc<Metrics>,
}

impl Loop {
    fn qos() -> QoS {
        QoS::AtLeastOnce
    }

    fn subscribe(&mut self, filters: Vec<String>) {
        for chunk in filters.chunks(FILTERS_PER_PACKET) {
            let many = chunk
                .iter()
                .map(|f| rumqttc::SubscribeFilter::new(f.clone(), Self::qos()));
            if let Err(error) = self.client.try_subscribe_many(many) {
                self.drop_request("subscribe", &error);
            }
        }
    }

    fn drop_request(&mut self, what: &str, error: &rumqttc::ClientError) {
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
                        if let Err(error) = self.client.try_unsubscribe(filter) {
                            self.drop_request("unsubscribe", &error);
                        }
                    }
                }
                Action::Publish { topic, payload } => {
                    match self.client.try_publish(topic, Self::qos(), false, payload) {
                        Ok(()) => self.metrics.sent(Channel::Mqtt, 1),
                        Err(error) => self.drop_request("publish", &error),
                    }
                }
            }
        }
    }
}

async fn run(
    supervisor: &Supervisor,
    settings: Settings,
    mut commands: mpsc::Receiver<SourceCommand>,
    mut to_hub: ToHub,
    shutdown: tokio_util::sync::CancellationToken,
    metrics: Arc<Metrics>,
    heartbeat: &Heartbeat,
) {
    let id = client_id();
    let mut options = MqttOptions::new(id.clone(), settings.host.clone(), settings.port);
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
    let (client, eventloop) = AsyncClient::new(options, REQUESTS);
    tracing::info!(
        broker = %format!("{}:{}", settings.host, settings.port),
        client_id = %id,
        tls = settings.tls.is_some(),
        user = settings.credentials.as_ref().map_or("-", |(user, _)| user.as_str()),
        "MQTT adapter started"
    );
    let mut state = Loop {
        client,
        nodes: Nodes::new(settings.nodes.clone()),
        dropped: 0,
        metrics: metrics.clone(),
    };
    // The event loop runs in its own task: `poll` is never cancelled half-way through a
    // connect, and it waits only for this loop (which never waits), so TCP pushes back.
    let (links_tx, mut links) = mpsc::channel(LINK_QUEUE);
    supervisor.spawn(drive(eventloop, links_tx, shutdown.clone()));
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
                    if let Err(error) = state.client.try_publish(mqtt::GATEWAY_CHECK, Loop::qos(), false, Vec::new()) {
                        state.drop_request("publish", &error);
                    }
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
                    if let Err(error) = state.client.try_publish(mqtt::GATEWAY_CHECK, Loop::qos(), false, Vec::new()) {
                        state.drop_request("publish", &error);
                    }
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
    let _ = state.client.try_disconnect();
    tracing::debug!(nodes = state.nodes.len(), "MQTT adapter stopped");
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
