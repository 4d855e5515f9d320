//! Counters of one role (a gateway or a broker), rendered in Prometheus' text format for
//! `/metrics`. Plain atomics: every task bumps them without locks, readers see a consistent
//! enough picture for monitoring.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

/// Where messages come from or go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Websocket nodes on a gateway's `/node`.
    WebSocketNode,
    /// Gateways on a broker's `/gw`.
    Gateway,
    /// Web clients on `/ws`.
    WebClient,
    /// A gateway's link to its broker.
    Uplink,
    /// CoAP datagrams on a gateway's UDP socket.
    Coap,
    /// MQTT messages between a gateway and its MQTT broker.
    Mqtt,
    /// MQTT-SN datagrams on a gateway's UDP socket.
    MqttSn,
}

impl Channel {
    const COUNT: usize = 7;
    const ALL: [Channel; Channel::COUNT] = [
        Channel::WebSocketNode,
        Channel::Gateway,
        Channel::WebClient,
        Channel::Uplink,
        Channel::Coap,
        Channel::Mqtt,
        Channel::MqttSn,
    ];

    fn label(self) -> &'static str {
        match self {
            Channel::WebSocketNode => "websocket_node",
            Channel::Gateway => "gateway",
            Channel::WebClient => "web_client",
            Channel::Uplink => "uplink",
            Channel::Coap => "coap",
            Channel::Mqtt => "mqtt",
            Channel::MqttSn => "mqttsn",
        }
    }
}

/// A configured limit, for counting how often it was hit (`aiot_limit_hits_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `limits.max_nodes`: the node table is full.
    Nodes,
    /// `limits.max_nodes_per_gateway`: one gateway (on the broker) has its share of nodes.
    NodesPerGateway,
    /// `limits.max_resources_per_node`.
    ResourcesPerNode,
    /// `limits.max_value_bytes`: a node's value is too big.
    ValueBytes,
    /// `limits.node_messages_per_sec`: a node sends faster than this.
    NodeMessagesPerSec,
    /// `limits.gateway_messages_per_sec`: a gateway connection sends faster than this.
    GatewayMessagesPerSec,
    /// `coap.max_pending_discoveries`: too many CoAP nodes wait to be discovered.
    PendingDiscoveries,
    /// `coap.max_nodes`.
    CoapNodes,
    /// `web.max_clients`.
    WebClients,
    /// `web.client_messages_per_sec`.
    ClientMessagesPerSec,
    /// `mqttsn.max_clients`.
    MqttSnClients,
    /// `mqtt.max_connections`: the embedded broker's clients.
    MqttClients,
}

impl Limit {
    const COUNT: usize = 12;
    pub const ALL: [Limit; Limit::COUNT] = [
        Limit::Nodes,
        Limit::NodesPerGateway,
        Limit::ResourcesPerNode,
        Limit::ValueBytes,
        Limit::NodeMessagesPerSec,
        Limit::GatewayMessagesPerSec,
        Limit::PendingDiscoveries,
        Limit::CoapNodes,
        Limit::WebClients,
        Limit::ClientMessagesPerSec,
        Limit::MqttSnClients,
        Limit::MqttClients,
    ];

    /// The label value, which is also the config key without its section.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Nodes => "max_nodes",
            Limit::NodesPerGateway => "max_nodes_per_gateway",
            Limit::ResourcesPerNode => "max_resources_per_node",
            Limit::ValueBytes => "max_value_bytes",
            Limit::NodeMessagesPerSec => "node_messages_per_sec",
            Limit::GatewayMessagesPerSec => "gateway_messages_per_sec",
            Limit::PendingDiscoveries => "coap_max_pending_discoveries",
            Limit::CoapNodes => "coap_max_nodes",
            Limit::WebClients => "web_max_clients",
            Limit::ClientMessagesPerSec => "web_client_messages_per_sec",
            Limit::MqttSnClients => "mqttsn_max_clients",
            Limit::MqttClients => "mqtt_max_connections",
        }
    }
}

#[derive(Debug, Default)]
struct PerChannel([AtomicU64; Channel::COUNT]);

impl PerChannel {
    fn add(&self, channel: Channel, n: u64) {
        self.0[channel as usize].fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self, channel: Channel) -> u64 {
        self.0[channel as usize].load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    nodes: AtomicU64,
    refused: AtomicU64,
    commands_dropped: AtomicU64,
    messages_in: PerChannel,
    messages_out: PerChannel,
    peers_dropped: PerChannel,
    connections: [AtomicI64; Channel::COUNT],
    messages_dropped: PerChannel,
    uplink_reconnects: AtomicU64,
    uplink_connected: AtomicU64,
    limit_hits: [AtomicU64; Limit::COUNT],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            nodes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            commands_dropped: AtomicU64::new(0),
            messages_in: PerChannel::default(),
            messages_out: PerChannel::default(),
            peers_dropped: PerChannel::default(),
            connections: Default::default(),
            messages_dropped: PerChannel::default(),
            uplink_reconnects: AtomicU64::new(0),
            uplink_connected: AtomicU64::new(0),
            limit_hits: Default::default(),
        }
    }
}

impl Metrics {
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    pub fn set_nodes(&self, nodes: usize) {
        self.nodes.store(nodes as u64, Ordering::Relaxed);
    }

    pub fn nodes(&self) -> u64 {
        self.nodes.load(Ordering::Relaxed)
    }

    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn command_dropped(&self) {
        self.commands_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn commands_dropped(&self) -> u64 {
        self.commands_dropped.load(Ordering::Relaxed)
    }

    pub fn received(&self, channel: Channel, n: u64) {
        self.messages_in.add(channel, n);
    }

    pub fn sent(&self, channel: Channel, n: u64) {
        self.messages_out.add(channel, n);
    }

    /// Messages we had to drop (or refuse) because a queue was full.
    pub fn messages_dropped(&self, channel: Channel, n: u64) {
        self.messages_dropped.add(channel, n);
    }

    pub fn peer_dropped(&self, channel: Channel) {
        self.peers_dropped.add(channel, 1);
    }

    /// Counts an open connection until the returned guard is dropped.
    pub fn connection(&self, channel: Channel) -> ConnectionGuard<'_> {
        self.connections[channel as usize].fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            metrics: self,
            channel,
        }
    }

    /// Open connections of one kind.
    pub fn connections(&self, channel: Channel) -> i64 {
        self.connections[channel as usize].load(Ordering::Relaxed)
    }

    pub fn uplink_connected(&self, connected: bool) {
        self.uplink_connected
            .store(u64::from(connected), Ordering::Relaxed);
    }

    pub fn uplink_reconnect(&self) {
        self.uplink_reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Something was refused or dropped because it reached `limit`.
    pub fn limit_hit(&self, limit: Limit) {
        self.limit_hits[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_limit_hits(&self, limit: Limit, n: u64) {
        self.limit_hits[limit as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn limit_hits(&self, limit: Limit) -> u64 {
        self.limit_hits[limit as usize].load(Ordering::Relaxed)
    }

    /// Prometheus' text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut gauge = |name: &str, help: &str, value: i64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            "aiot_uptime_seconds",
            "Seconds since the process started.",
            self.uptime_secs() as i64,
        );
        gauge(
            "aiot_nodes",
            "Nodes in the node table.",
            self.nodes() as i64,
        );
        gauge(
            "aiot_uplink_connected",
            "1 while the gateway's uplink to its broker is connected.",
            self.uplink_connected.load(Ordering::Relaxed) as i64,
        );
        // Outside a runtime (unit tests) there is nothing to count.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            gauge(
                "aiot_tokio_tasks",
                "Tasks alive in the async runtime: a count that only grows means a task leak.",
                runtime.metrics().num_alive_tasks() as i64,
            );
        }
        let _ = writeln!(
            out,
            "# HELP aiot_connections Open websocket connections.\n# TYPE aiot_connections gauge"
        );
        for channel in Channel::ALL {
            let open = self.connections[channel as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "aiot_connections{{channel=\"{}\"}} {open}",
                channel.label()
            );
        }
        for (name, help, counter) in [
            (
                "aiot_messages_received_total",
                "Messages received.",
                &self.messages_in,
            ),
            (
                "aiot_messages_sent_total",
                "Messages sent.",
                &self.messages_out,
            ),
            (
                "aiot_messages_dropped_total",
                "Messages dropped because a queue was full.",
                &self.messages_dropped,
            ),
            (
                "aiot_peers_dropped_total",
                "Connections we closed: invalid input, oversize frames, stalled readers.",
                &self.peers_dropped,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for channel in Channel::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{channel=\"{}\"}} {}",
                    channel.label(),
                    counter.get(channel)
                );
            }
        }
        for (name, help, value) in [
            (
                "aiot_node_messages_refused_total",
                "Node messages refused: unknown node, not the owner, limits.",
                &self.refused,
            ),
            (
                "aiot_commands_dropped_total",
                "Writes dropped because the owning node's queue was full.",
                &self.commands_dropped,
            ),
            (
                "aiot_uplink_reconnects_total",
                "Failed or lost uplink connections, each followed by a retry.",
                &self.uplink_reconnects,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP aiot_limit_hits_total Messages, nodes or connections refused or dropped by a configured limit.\n# TYPE aiot_limit_hits_total counter"
        );
        for limit in Limit::ALL {
            let _ = writeln!(
                out,
                "aiot_limit_hits_total{{limit=\"{}\"}} {}",
                limit.label(),
                self.limit_hits(limit)
            );
        }
        out
    }
}

/// Decrements the open-connection gauge when the connection's task ends.
pub struct ConnectionGuard<'a> {
    metrics: &'a Metrics,
    channel: Channel,
}

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.metrics.connections[self.channel as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_labels() {
        let metrics = Metrics::default();
        metrics.set_nodes(3);
        metrics.received(Channel::WebSocketNode, 5);
        metrics.sent(Channel::Uplink, 2);
        let open = metrics.connection(Channel::WebClient);
        metrics.limit_hit(Limit::ValueBytes);
        let text = metrics.render();
        assert!(text.contains("aiot_nodes 3\n"), "{text}");
        assert!(text.contains("aiot_messages_received_total{channel=\"websocket_node\"} 5\n"));
        assert!(text.contains("aiot_messages_sent_total{channel=\"uplink\"} 2\n"));
        assert!(text.contains("aiot_connections{channel=\"web_client\"} 1\n"));
        assert!(text.contains("aiot_limit_hits_total{limit=\"max_value_bytes\"} 1\n"));
        assert!(text.contains("aiot_limit_hits_total{limit=\"max_nodes\"} 0\n"));
        drop(open);
        assert!(
            metrics
                .render()
                .contains("aiot_connections{channel=\"web_client\"} 0\n")
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            assert!(!name.is_empty() && value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
