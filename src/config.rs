//! The configuration: one strict TOML file, defaults in one place (here, and shown in
//! `config/default.toml`, which a test keeps equal to them), flags applied on top by the CLI.

use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::hub::HubConfig;
use crate::web::api::DashboardConfig;
use crate::web::security::WebSecurity;
use crate::web::socket::WsLimits;

/// The commented default configuration, as `aiot config default` prints it.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config file {path}: {message}")]
    Check { path: PathBuf, message: String },
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub runtime: RuntimeConfig,
    pub keys: KeysConfig,
    pub broker: BrokerConfig,
    pub gateway: GatewayConfig,
    pub uplink: UplinkConfig,
    pub dashboard: DashboardSection,
    pub limits: LimitsConfig,
    pub coap: CoapConfig,
    pub mqtt: MqttConfig,
    pub tls: TlsConfig,
    pub web: WebConfig,
    pub mqttsn: MqttSnConfig,
}

/// The gateway's MQTT-SN gateway (docs/mqttsn.md): UDP, bridged into the MQTT broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSnConfig {
    pub enabled: bool,
    pub bind: IpAddr,
    pub port: u16,
    pub gateway_id: u8,
    pub max_clients: usize,
    pub max_topics_per_client: usize,
    pub max_datagram_bytes: usize,
    pub max_keep_alive_secs: u64,
    pub retry_secs: u64,
    pub retries: u32,
    pub advertise_to: Option<std::net::SocketAddr>,
    pub advertise_interval_secs: u64,
    pub predefined: Vec<PredefinedTopic>,
}

/// A topic id every MQTT-SN client may use without registering it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredefinedTopic {
    pub id: u16,
    pub topic: String,
}

impl Default for MqttSnConfig {
    fn default() -> Self {
        MqttSnConfig {
            enabled: true,
            bind: ANY,
            port: 1885,
            gateway_id: 1,
            max_clients: 1000,
            max_topics_per_client: 64,
            max_datagram_bytes: 1280,
            max_keep_alive_secs: 3600,
            retry_secs: 10,
            retries: 3,
            advertise_to: None,
            advertise_interval_secs: 900,
            predefined: vec![
                PredefinedTopic {
                    id: 1,
                    topic: crate::proto::mqtt::NODE_CHECK.into(),
                },
                PredefinedTopic {
                    id: 2,
                    topic: crate::proto::mqtt::GATEWAY_CHECK.into(),
                },
            ],
        }
    }
}

/// Who may use the web endpoints (`/ws`, `/node`, the login): docs/security.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// A file holding the web password's hash (`aiot password hash`); unset: writes are open.
    pub password_file: Option<PathBuf>,
    /// Origins allowed to open `/ws` and `/node` besides the page's own; `"*"` allows any.
    pub allowed_origins: Vec<String>,
    pub session_secs: u64,
    pub login_attempts_per_minute: u32,
    pub max_clients: usize,
    pub client_messages_per_sec: u32,
    pub max_write_bytes: usize,
}

impl Default for WebConfig {
    fn default() -> Self {
        use crate::web::security as s;
        WebConfig {
            password_file: None,
            allowed_origins: Vec::new(),
            session_secs: s::DEFAULT_SESSION_SECS,
            login_attempts_per_minute: s::DEFAULT_LOGIN_ATTEMPTS_PER_MINUTE,
            max_clients: s::DEFAULT_MAX_CLIENTS,
            client_messages_per_sec: s::DEFAULT_CLIENT_MESSAGES_PER_SEC,
            max_write_bytes: s::DEFAULT_MAX_WRITE_BYTES,
        }
    }
}

impl WebConfig {
    /// The settings the roles run with; `password` (a flag) wins over `password_file`.
    pub fn security(&self, password: Option<&str>) -> anyhow::Result<WebSecurity> {
        use anyhow::Context as _;
        let verifier = match (password, &self.password_file) {
            (Some(password), _) => {
                Some(crate::web::password::Verifier::hash(password).context("--web-password")?)
            }
            (None, Some(path)) => Some(crate::web::password::Verifier::load(&expand_home(path))?),
            (None, None) => None,
        };
        Ok(WebSecurity {
            password: verifier,
            allowed_origins: self.allowed_origins.clone(),
            session_ttl: Duration::from_secs(self.session_secs),
            login_attempts_per_minute: self.login_attempts_per_minute,
            max_clients: self.max_clients,
            client_messages_per_sec: self.client_messages_per_sec,
            max_write_bytes: self.max_write_bytes,
            tls: false,
        })
    }

    fn check(&self) -> Result<(), String> {
        for origin in &self.allowed_origins {
            if origin.trim() != "*" && crate::web::origin::parse_origin(origin).is_none() {
                return Err(format!(
                    "web.allowed_origins: {origin:?} is not an origin like https://host or http://host:port"
                ));
            }
        }
        if self
            .password_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err("web.password_file must not be empty".into());
        }
        Ok(())
    }
}

/// TLS of the broker's (and a gateway's web) listener, and of the gateway's uplink. PEM files.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Serve https:// and wss:// with this certificate chain and key (both or neither).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// The uplink trusts only this CA for a wss:// broker (default: compiled-in public roots).
    pub broker_ca: Option<PathBuf>,
    /// The uplink's client certificate and key, for a broker that requires one.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// The gateway's MQTT nodes (protocol.md §3) and its embedded MQTT broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    pub enabled: bool,
    /// An external broker; `None` runs the embedded one on `bind`:`port`.
    pub host: Option<String>,
    pub port: u16,
    pub bind: IpAddr,
    pub username: Option<String>,
    pub password: Option<String>,
    /// A file holding the password (first line), so that it is on no command line.
    pub password_file: Option<PathBuf>,
    /// TLS to the external broker; the server is checked against `ca_file`, or the system's
    /// roots without it.
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub max_connections: usize,
    /// The embedded broker's MQTT 5 listener (rumqttd serves one protocol version per
    /// listener), on `bind`:`v5_port`.
    pub v5: bool,
    /// `None`: `port` + 1 (1884), or a free port when `port` is 0.
    pub v5_port: Option<u16>,
}

impl MqttConfig {
    /// The embedded broker's MQTT 5 port: `v5_port`, or `port` + 1, or 0 (a free one) when
    /// `port` is 0.
    pub fn v5_port(&self) -> u16 {
        match (self.v5_port, self.port) {
            (Some(port), _) => port,
            (None, 0) => 0,
            (None, port) => port.saturating_add(1),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            enabled: true,
            host: None,
            port: 1883,
            bind: ANY,
            username: None,
            password: None,
            password_file: None,
            tls: false,
            ca_file: None,
            max_connections: crate::proto::limits::MAX_NODES,
            v5: true,
            v5_port: None,
        }
    }
}

/// The gateway's CoAP nodes (protocol.md §2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoapConfig {
    pub enabled: bool,
    pub bind: IpAddr,
    pub port: u16,
    pub interface: Option<String>,
    pub node_port: u16,
    pub ack_timeout_ms: u64,
    pub ack_random_factor: f64,
    pub max_retransmit: u32,
    pub max_nodes: usize,
    pub discovery_concurrency: usize,
    pub max_body_bytes: usize,
    pub max_pending_discoveries: usize,
    pub receive_buffer_bytes: usize,
}

impl Default for CoapConfig {
    fn default() -> Self {
        CoapConfig {
            enabled: true,
            bind: ANY,
            port: 5683,
            interface: None,
            node_port: 5683,
            ack_timeout_ms: 2000,
            ack_random_factor: 1.5,
            max_retransmit: 4,
            max_nodes: crate::proto::limits::MAX_NODES,
            discovery_concurrency: 16,
            max_body_bytes: 64 * 1024,
            receive_buffer_bytes: 4 * 1024 * 1024,
            max_pending_discoveries: crate::proto::limits::MAX_PENDING_DISCOVERIES,
        }
    }
}

/// The web UI's looks (every role serves it) and, for `aiot dashboard`, where it listens and
/// which broker the browser talks to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardSection {
    pub title: String,
    pub logo: Option<String>,
    pub favicon: Option<String>,
    pub camera_url: Option<String>,
    pub bind: IpAddr,
    pub port: u16,
    pub broker_host: String,
    pub broker_port: u16,
    pub broker_ssl: bool,
}

impl Default for DashboardSection {
    fn default() -> Self {
        DashboardSection {
            title: "aiot".into(),
            logo: None,
            favicon: None,
            camera_url: None,
            bind: ANY,
            port: 8080,
            broker_host: "localhost".into(),
            broker_port: 8000,
            broker_ssl: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub debug: bool,
}

/// How many threads run the role's tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// 1 runs everything on one thread, which measured cheaper per update at every load on a
    /// 2-core machine (no cross-thread wake-ups); 0 means one per core.
    pub worker_threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { worker_threads: 1 }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    pub file: Option<PathBuf>,
    /// The broker's per-gateway keys (`[[gateway]]` entries), beside or instead of `file`.
    pub gateways_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    pub bind: IpAddr,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub bind: IpAddr,
    pub gateway_port: u16,
    pub web_port: u16,
    pub max_time: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UplinkConfig {
    pub broker_host: Option<String>,
    pub broker_port: u16,
    pub broker_url: Option<String>,
    /// wss:// for a broker given by host and port.
    pub tls: bool,
    pub keepalive_secs: u64,
    pub ping_interval_secs: u64,
    pub connect_timeout_secs: u64,
    pub backoff_max_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_frame_bytes: usize,
    pub send_timeout_secs: u64,
    pub peer_queue: usize,
    pub max_nodes: usize,
    pub max_resources_per_node: usize,
    pub history_points: usize,
    pub event_backlog: usize,
    pub max_nodes_per_gateway: usize,
    pub max_value_bytes: usize,
    pub node_messages_per_sec: u32,
    pub gateway_messages_per_sec: u32,
}

const ANY: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            bind: ANY,
            port: 8000,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            bind: ANY,
            gateway_port: 8001,
            web_port: 8080,
            max_time: 120,
        }
    }
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            broker_host: None,
            broker_port: 8000,
            broker_url: None,
            tls: false,
            keepalive_secs: 30,
            ping_interval_secs: 15,
            connect_timeout_secs: 10,
            backoff_max_secs: 30,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        use crate::proto::limits;
        LimitsConfig {
            max_frame_bytes: limits::MAX_FRAME_BYTES,
            send_timeout_secs: limits::SEND_TIMEOUT_SECS,
            peer_queue: limits::PEER_QUEUE,
            max_nodes: limits::MAX_NODES,
            max_resources_per_node: limits::MAX_RESOURCES,
            history_points: limits::HISTORY_POINTS,
            event_backlog: limits::EVENT_BACKLOG,
            max_nodes_per_gateway: limits::MAX_NODES_PER_GATEWAY,
            max_value_bytes: limits::MAX_VALUE_BYTES,
            node_messages_per_sec: limits::NODE_MESSAGES_PER_SEC,
            gateway_messages_per_sec: limits::GATEWAY_MESSAGES_PER_SEC,
        }
    }
}

impl Config {
    /// Reads and checks a config file; errors name the file and, for TOML, the key and line.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.check().map_err(|message| ConfigError::Check {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// What serde cannot say: values that parse but make no sense.
    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("limits.max_frame_bytes", self.limits.max_frame_bytes as u64),
            ("limits.send_timeout_secs", self.limits.send_timeout_secs),
            ("limits.peer_queue", self.limits.peer_queue as u64),
            ("limits.max_nodes", self.limits.max_nodes as u64),
            (
                "limits.max_resources_per_node",
                self.limits.max_resources_per_node as u64,
            ),
            ("limits.event_backlog", self.limits.event_backlog as u64),
            (
                "limits.max_nodes_per_gateway",
                self.limits.max_nodes_per_gateway as u64,
            ),
            ("limits.max_value_bytes", self.limits.max_value_bytes as u64),
            ("uplink.keepalive_secs", self.uplink.keepalive_secs),
            ("uplink.ping_interval_secs", self.uplink.ping_interval_secs),
            (
                "uplink.connect_timeout_secs",
                self.uplink.connect_timeout_secs,
            ),
            ("uplink.backoff_max_secs", self.uplink.backoff_max_secs),
            ("gateway.max_time", self.gateway.max_time),
            ("coap.node_port", u64::from(self.coap.node_port)),
            ("coap.ack_timeout_ms", self.coap.ack_timeout_ms),
            ("coap.max_nodes", self.coap.max_nodes as u64),
            (
                "coap.discovery_concurrency",
                self.coap.discovery_concurrency as u64,
            ),
            ("coap.max_body_bytes", self.coap.max_body_bytes as u64),
            ("mqtt.max_connections", self.mqtt.max_connections as u64),
            ("web.session_secs", self.web.session_secs),
            (
                "web.login_attempts_per_minute",
                u64::from(self.web.login_attempts_per_minute),
            ),
            ("web.max_clients", self.web.max_clients as u64),
            (
                "web.client_messages_per_sec",
                u64::from(self.web.client_messages_per_sec),
            ),
            ("web.max_write_bytes", self.web.max_write_bytes as u64),
            ("mqttsn.max_clients", self.mqttsn.max_clients as u64),
            (
                "mqttsn.max_topics_per_client",
                self.mqttsn.max_topics_per_client as u64,
            ),
            (
                "mqttsn.max_keep_alive_secs",
                self.mqttsn.max_keep_alive_secs,
            ),
            ("mqttsn.retry_secs", self.mqttsn.retry_secs),
            (
                "mqttsn.advertise_interval_secs",
                self.mqttsn.advertise_interval_secs,
            ),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{key} must be greater than 0"));
        }
        if self.dashboard.title.trim().is_empty() {
            return Err("dashboard.title must not be empty".into());
        }
        if !(1.0..=10.0).contains(&self.coap.ack_random_factor) {
            return Err("coap.ack_random_factor must be between 1.0 and 10.0".into());
        }
        if self.coap.max_retransmit > 10 {
            return Err("coap.max_retransmit must be at most 10".into());
        }
        if self.coap.interface.as_deref().is_some_and(str::is_empty) {
            return Err("coap.interface must not be empty".into());
        }
        if self.mqtt.host.as_deref().is_some_and(str::is_empty) {
            return Err("mqtt.host must not be empty".into());
        }
        if self.mqtt.password.is_some() && self.mqtt.username.is_none() {
            return Err("mqtt.password needs mqtt.username".into());
        }
        if self.mqtt.password_file.is_some() && self.mqtt.username.is_none() {
            return Err("mqtt.password_file needs mqtt.username".into());
        }
        if self.mqtt.password_file.is_some() && self.mqtt.password.is_some() {
            return Err("mqtt.password and mqtt.password_file exclude each other".into());
        }
        if self.mqtt.ca_file.is_some() && !self.mqtt.tls {
            return Err("mqtt.ca_file needs mqtt.tls = true".into());
        }
        if self.mqtt.tls && self.mqtt.host.is_none() {
            return Err(
                "mqtt.tls is for an external broker (mqtt.host); the embedded one has no TLS"
                    .into(),
            );
        }
        if self.mqtt.v5
            && self.mqtt.host.is_none()
            && self.mqtt.port != 0
            && self.mqtt.v5_port() == self.mqtt.port
        {
            return Err("mqtt.v5_port must differ from mqtt.port".into());
        }
        self.check_mqttsn()?;
        if self.limits.max_frame_bytes < 1024 {
            return Err("limits.max_frame_bytes must be at least 1024".into());
        }
        if let Some(url) = &self.uplink.broker_url {
            crate::uplink::Target::parse(url).map_err(|e| format!("uplink.broker_url: {e}"))?;
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err("tls.cert and tls.key go together (--tls-cert, --tls-key)".into());
        }
        if self.tls.client_cert.is_some() != self.tls.client_key.is_some() {
            return Err(
                "tls.client_cert and tls.client_key go together (--tls-client-cert, --tls-client-key)"
                    .into(),
            );
        }
        if self.tls.client_ca.is_some() && self.tls.cert.is_none() {
            return Err("tls.client_ca needs tls.cert and tls.key (--tls-cert, --tls-key)".into());
        }
        self.web.check()?;
        Ok(())
    }

    fn check_mqttsn(&self) -> Result<(), String> {
        let section = &self.mqttsn;
        if !section.enabled {
            return Ok(());
        }
        if !self.mqtt.enabled {
            return Err(
                "mqttsn needs the MQTT side (it bridges into the MQTT broker): set mqtt.enabled = true or mqttsn.enabled = false"
                    .into(),
            );
        }
        if !(64..=65_535).contains(&section.max_datagram_bytes) {
            return Err("mqttsn.max_datagram_bytes must be between 64 and 65535".into());
        }
        let mut seen = std::collections::HashSet::new();
        for predefined in &section.predefined {
            if predefined.id == 0 || predefined.id == 0xFFFF || !seen.insert(predefined.id) {
                return Err(format!(
                    "mqttsn.predefined: topic id {} is reserved or used twice",
                    predefined.id
                ));
            }
            if predefined.topic.is_empty() || predefined.topic.contains(['+', '#']) {
                return Err(format!(
                    "mqttsn.predefined: {:?} is not a topic name",
                    predefined.topic
                ));
            }
        }
        Ok(())
    }

    /// The key file: configured, or pyaiot's default.
    pub fn key_file(&self) -> PathBuf {
        match &self.keys.file {
            Some(path) => expand_home(path),
            None => crate::keys::default_key_file(),
        }
    }

    /// The broker's gateways file, if configured (a leading ~/ is the user's home).
    pub fn gateways_file(&self) -> Option<PathBuf> {
        self.keys.gateways_file.as_deref().map(expand_home)
    }

    /// The broker URL the uplink uses, if a broker is configured.
    pub fn broker_url(&self) -> Option<String> {
        if let Some(url) = &self.uplink.broker_url {
            return Some(url.clone());
        }
        let host = self.uplink.broker_host.as_ref()?;
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let scheme = if self.uplink.tls { "wss" } else { "ws" };
        Some(format!("{scheme}://{host}:{}/gw", self.uplink.broker_port))
    }

    /// What the page shows; `ws_url` is only set by the standalone dashboard.
    pub fn dashboard_config(&self) -> DashboardConfig {
        // Without a configured logo or icon the page shows aiot's own.
        DashboardConfig {
            title: self.dashboard.title.clone(),
            logo: Some(
                self.dashboard
                    .logo
                    .clone()
                    .unwrap_or_else(|| "/static/logo.svg".into()),
            ),
            favicon: Some(
                self.dashboard
                    .favicon
                    .clone()
                    .unwrap_or_else(|| "/static/favicon.svg".into()),
            ),
            camera_url: self.dashboard.camera_url.clone(),
            ws_url: None,
        }
    }

    pub fn ws_limits(&self) -> WsLimits {
        WsLimits {
            max_frame_bytes: self.limits.max_frame_bytes,
            send_timeout: Duration::from_secs(self.limits.send_timeout_secs),
            peer_queue: self.limits.peer_queue,
        }
    }

    pub fn hub(&self) -> HubConfig {
        HubConfig {
            max_nodes: self.limits.max_nodes,
            max_resources: self.limits.max_resources_per_node,
            history_points: self.limits.history_points,
            event_backlog: self.limits.event_backlog,
            max_nodes_per_source: usize::MAX,
            max_value_bytes: self.limits.max_value_bytes,
            node_messages_per_sec: self.limits.node_messages_per_sec,
        }
    }

    /// The broker's hub: each of its sources is a gateway, held to its share of nodes.
    pub fn broker_hub(&self) -> HubConfig {
        HubConfig {
            max_nodes_per_source: self.limits.max_nodes_per_gateway,
            ..self.hub()
        }
    }
}

fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_default_file_is_the_default() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).expect("default.toml parses");
        assert_eq!(parsed, Config::default());
        assert_eq!(Config::default().check(), Ok(()));
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key_and_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("aiot.toml");
        std::fs::write(&path, "[gateway]\nweb_prot = 80\n").expect("write");
        let error = Config::load(&path).expect_err("unknown key").to_string();
        assert!(error.contains("web_prot"), "{error}");
        assert!(error.contains("aiot.toml"), "{error}");
        std::fs::write(&path, "[gatway]\n").expect("write");
        let error = Config::load(&path)
            .expect_err("unknown section")
            .to_string();
        assert!(error.contains("gatway"), "{error}");
    }

    #[test]
    fn nonsense_values_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("aiot.toml");
        for (text, needle) in [
            ("[limits]\npeer_queue = 0\n", "limits.peer_queue"),
            ("[broker]\nport = 70000\n", "port"),
            ("[broker]\nbind = \"nowhere\"\n", "bind"),
            ("[uplink]\nbroker_url = \"http://x/gw\"\n", "broker_url"),
            ("[limits]\nmax_frame_bytes = 10\n", "max_frame_bytes"),
            ("[tls]\ncert = \"c.pem\"\n", "tls.cert and tls.key"),
            ("[tls]\nclient_key = \"k.pem\"\n", "tls.client_cert"),
            (
                "[tls]\nclient_ca = \"ca.pem\"\n",
                "tls.client_ca needs tls.cert",
            ),
            ("[mqtt]\ntls = true\n", "mqtt.tls"),
            (
                "[mqtt]\nhost = \"x\"\nca_file = \"/ca.pem\"\n",
                "mqtt.ca_file",
            ),
            ("[mqtt]\npassword_file = \"/pw\"\n", "mqtt.password_file"),
            ("[mqtt]\nv5_port = 1883\n", "mqtt.v5_port"),
        ] {
            std::fs::write(&path, text).expect("write");
            let error = Config::load(&path).expect_err(text).to_string();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }

    #[test]
    fn the_mqtt5_port_follows_the_mqtt_port() {
        let mut mqtt = MqttConfig::default();
        assert_eq!(mqtt.v5_port(), 1884);
        mqtt.port = 0;
        assert_eq!(mqtt.v5_port(), 0);
        mqtt.port = 2883;
        assert_eq!(mqtt.v5_port(), 2884);
        mqtt.v5_port = Some(9000);
        assert_eq!(mqtt.v5_port(), 9000);
    }

    #[test]
    fn broker_url_from_host_and_port() {
        let mut config = Config::default();
        assert_eq!(config.broker_url(), None);
        config.uplink.broker_host = Some("::1".into());
        assert_eq!(config.broker_url().as_deref(), Some("ws://[::1]:8000/gw"));
        config.uplink.broker_host = Some("example.org".into());
        config.uplink.broker_port = 9000;
        assert_eq!(
            config.broker_url().as_deref(),
            Some("ws://example.org:9000/gw")
        );
        config.uplink.tls = true;
        assert_eq!(
            config.broker_url().as_deref(),
            Some("wss://example.org:9000/gw")
        );
        config.uplink.broker_url = Some("ws://other/gw".into());
        assert_eq!(config.broker_url().as_deref(), Some("ws://other/gw"));
    }
}
