//! The command line. pyaiot's flag names (`--broker-host`, `--broker-port`, `--key-file`,
//! `--gateway-port`, `--web-port`, `--max-time`, `--debug`) keep working; every flag
//! overrides the same key of the config file.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "aiot",
    version,
    about = "Connect constrained IoT devices to the web",
    propagate_version = true
)]
pub struct Cli {
    /// TOML config file (see `aiot config default`); flags override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Debug logging (RUST_LOG, when set, wins).
    #[arg(long, global = true)]
    pub debug: bool,
    /// Let the broker, gateway or dashboard run as root (they refuse otherwise; demo, node,
    /// bench, config and keys never do).
    #[arg(long, global = true, env = "AIOT_ALLOW_ROOT", value_parser = clap::builder::FalseyValueParser::new())]
    pub allow_root: bool,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The central broker: gateways on /gw, web clients on /ws.
    Broker(BrokerArgs),
    /// A gateway: websocket nodes on /node, web clients on /ws, uplink to a broker.
    Gateway(GatewayArgs),
    /// Simulated nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// pyaiot-compatible key files.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The web password that guards writes from web clients.
    #[command(subcommand)]
    Password(PasswordCommand),
    /// Print or check configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The web UI alone, for a broker elsewhere (aiot's or pyaiot's).
    Dashboard(DashboardArgs),
    /// Broker, gateway and simulated nodes in one process on loopback.
    Demo(DemoArgs),
    /// Load test: nodes through a gateway and a broker to web clients; prints figures.
    #[cfg(feature = "bench")]
    Bench(crate::bench::BenchArgs),
}

/// How the web UI looks, on every role that serves it.
#[derive(Debug, Args, Default)]
pub struct LookArgs {
    /// Page title.
    #[arg(long)]
    pub title: Option<String>,
    /// URL of a logo for the page header.
    #[arg(long, value_name = "URL")]
    pub logo: Option<String>,
    /// URL of the page's icon.
    #[arg(long, value_name = "URL")]
    pub favicon: Option<String>,
    /// URL of a camera image shown on the page.
    #[arg(long, value_name = "URL")]
    pub camera_url: Option<String>,
}

/// Who may write through the web endpoints, on every role that has `/ws`.
#[derive(Debug, Args, Default)]
pub struct WebAuthArgs {
    /// Password for writes from web clients. Visible in `ps`: prefer --web-password-file.
    #[arg(long, env = "AIOT_WEB_PASSWORD", hide_env_values = true)]
    pub web_password: Option<String>,
    /// File holding the web password's hash, made by `aiot password hash --file FILE`.
    #[arg(long, value_name = "FILE")]
    pub web_password_file: Option<PathBuf>,
    /// An origin allowed to open /ws and /node besides the page's own, e.g.
    /// https://dash.example (repeatable; `*` allows any).
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Address to listen on.
    #[arg(long)]
    pub bind: Option<IpAddr>,
    /// HTTP port of the web UI.
    #[arg(long)]
    pub web_port: Option<u16>,
    /// The broker the page talks to.
    #[arg(long)]
    pub broker_host: Option<String>,
    #[arg(long)]
    pub broker_port: Option<u16>,
    /// Talk to the broker over wss://.
    #[arg(long)]
    pub broker_ssl: bool,
    #[command(flatten)]
    pub look: LookArgs,
}

#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Address to listen on.
    #[arg(long)]
    pub bind: Option<IpAddr>,
    /// Port for gateways and web clients.
    #[arg(long)]
    pub broker_port: Option<u16>,
    /// The pyaiot key file.
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    #[command(flatten)]
    pub look: LookArgs,
    #[command(flatten)]
    pub web: WebAuthArgs,
    /// Per-gateway keys ([[gateway]] entries from `aiot keys generate --gateway NAME`);
    /// reread when it changes and on SIGHUP.
    #[arg(long, value_name = "PATH")]
    pub gateways_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    /// Require a client certificate signed by this CA (PEM) from every client: mutual TLS.
    #[arg(long, value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,
}

/// TLS of a role's listener: https:// and wss:// instead of plain HTTP.
#[derive(Debug, Args, Default)]
pub struct ServerTlsArgs {
    /// Serve TLS with this PEM certificate chain (reread on SIGHUP).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Address to listen on.
    #[arg(long)]
    pub bind: Option<IpAddr>,
    /// Port for websocket nodes (/node).
    #[arg(long)]
    pub gateway_port: Option<u16>,
    /// Port for the local dashboard and web clients (/ws).
    #[arg(long)]
    pub web_port: Option<u16>,
    /// The central broker's host; without it (or --broker-url) the gateway runs standalone.
    #[arg(long)]
    pub broker_host: Option<String>,
    /// The central broker's port.
    #[arg(long)]
    pub broker_port: Option<u16>,
    /// The central broker as a URL, e.g. ws://broker:8000/gw.
    #[arg(long, value_name = "URL")]
    pub broker_url: Option<String>,
    /// The pyaiot key file.
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Seconds without news before a node is out.
    #[arg(long, value_name = "SECONDS")]
    pub max_time: Option<u64>,
    /// Address the CoAP socket binds ("::" takes IPv4 too).
    #[arg(long)]
    pub coap_bind: Option<IpAddr>,
    /// UDP port CoAP nodes post /alive and /server to.
    #[arg(long)]
    pub coap_port: Option<u16>,
    /// UDP port CoAP nodes serve their resources on.
    #[arg(long)]
    pub coap_node_port: Option<u16>,
    /// Network interface of link-local IPv6 CoAP nodes (e.g. lowpan0).
    #[arg(long)]
    pub interface: Option<String>,
    /// An external MQTT broker's host; without it the gateway runs its embedded broker.
    #[arg(long)]
    pub mqtt_host: Option<String>,
    /// The embedded MQTT broker's port (default 1883; 0 picks a free one), or the external
    /// broker's.
    #[arg(long)]
    pub mqtt_port: Option<u16>,
    /// Address the embedded MQTT broker binds ("::" takes IPv4 too).
    #[arg(long)]
    pub mqtt_bind: Option<IpAddr>,
    /// User name at an external MQTT broker.
    #[arg(long)]
    pub mqtt_username: Option<String>,
    /// Password at an external MQTT broker.
    #[arg(long, env = "AIOT_MQTT_PASSWORD", hide_env_values = true)]
    pub mqtt_password: Option<String>,
    /// A file whose first line is the password at an external MQTT broker.
    #[arg(long, value_name = "PATH", conflicts_with = "mqtt_password")]
    pub mqtt_password_file: Option<PathBuf>,
    /// TLS to an external MQTT broker, checked against the system's root certificates.
    #[arg(long)]
    pub mqtt_tls: bool,
    /// TLS to an external MQTT broker, checked against this CA certificate (PEM).
    #[arg(long, value_name = "PATH")]
    pub mqtt_ca: Option<PathBuf>,
    /// The embedded MQTT broker's MQTT 5 port (default: the MQTT port + 1, 1884; 0 picks a
    /// free one).
    #[arg(long)]
    pub mqtt5_port: Option<u16>,
    /// UDP port of the MQTT-SN gateway (default 1885; 0 picks a free one).
    #[arg(long)]
    pub mqttsn_port: Option<u16>,
    /// Address the MQTT-SN gateway binds ("::" takes IPv4 too).
    #[arg(long)]
    pub mqttsn_bind: Option<IpAddr>,
    #[command(flatten)]
    pub look: LookArgs,
    /// Connect to --broker-host over wss:// (a wss:// --broker-url says it itself).
    #[arg(long)]
    pub broker_tls: bool,
    /// Trust only this CA (PEM) for a wss:// broker; default: the compiled-in public roots.
    #[arg(long, value_name = "PEM")]
    pub broker_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a broker that requires one.
    #[arg(long, value_name = "PEM", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,
    /// The PEM private key of --tls-client-cert.
    #[arg(long, value_name = "PEM", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
    /// TLS for the local dashboard and web clients (--web-port).
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    #[command(flatten)]
    pub web: WebAuthArgs,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Websocket nodes connecting to a gateway's /node.
    Ws(WsNodeArgs),
    /// CoAP nodes posting to a gateway, each on its own address (127.0.1.1, 127.0.1.2, …).
    // pyaiot's test node has a `--version` resource flag, so this command gives up clap's.
    #[command(disable_version_flag = true)]
    Coap(CoapNodeArgs),
    /// MQTT nodes with the resources of pyaiot's mqtt-test-node (name, os, ip, board, led,
    /// temperature, pressure), clients of a gateway's MQTT broker.
    Mqtt(MqttNodeArgs),
    /// MQTT-SN nodes (as RIOT's emcute speaks it, over UDP) with the resources of pyaiot's
    /// mqtt-test-node, clients of a gateway's MQTT-SN gateway.
    Mqttsn(MqttSnNodeArgs),
}

#[derive(Debug, Args)]
pub struct MqttSnNodeArgs {
    /// The MQTT-SN gateway's address (an IP address or a host name).
    #[arg(long, default_value = "127.0.0.1")]
    pub gateway_host: String,
    /// The MQTT-SN gateway's UDP port.
    #[arg(long, default_value_t = 1885)]
    pub gateway_port: u16,
    /// How many nodes.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Seconds between temperature readings (pressure: twice this).
    #[arg(long, default_value_t = 5.0)]
    pub interval: f64,
    /// The keep-alive the nodes ask for, in seconds (they ping at a third of it).
    #[arg(long, default_value_t = 60)]
    pub keep_alive: u16,
}

#[derive(Debug, Args)]
pub struct MqttNodeArgs {
    /// The MQTT broker's host (the gateway's embedded broker).
    #[arg(long, default_value = "127.0.0.1")]
    pub mqtt_host: String,
    /// The MQTT broker's port.
    #[arg(long, default_value_t = 1883)]
    pub mqtt_port: u16,
    /// How many nodes.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Seconds between temperature readings (pressure: twice this).
    #[arg(long, default_value_t = 5.0)]
    pub interval: f64,
}

#[derive(Debug, Args)]
pub struct CoapNodeArgs {
    /// The gateway's address (an IP address or a host name).
    #[arg(long, default_value = "127.0.0.1")]
    pub gateway_host: String,
    /// The gateway's CoAP port.
    #[arg(long, default_value_t = 5683)]
    pub gateway_port: u16,
    /// How many nodes.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// The first node's address; the others count on from it.
    #[arg(long, default_value = "127.0.1.1")]
    pub first_address: IpAddr,
    /// The port every node serves its resources on (the gateway's coap.node_port).
    #[arg(long, default_value_t = 5683)]
    pub node_port: u16,
    /// Give the nodes an LED (resource `led`, "0"/"1", PUT to switch it).
    #[arg(long)]
    pub led: bool,
    /// Post temperature readings (`23°C`).
    #[arg(long)]
    pub temperature: bool,
    /// Post pressure readings (`1002hPa`).
    #[arg(long)]
    pub pressure: bool,
    /// Post IMU readings (JSON text).
    #[arg(long)]
    pub imu: bool,
    /// Serve a long script as `js` (read with Block2).
    #[arg(long)]
    pub js: bool,
    /// Serve pyaiot's robot resource (an action letter; PUT to drive it).
    #[arg(long)]
    pub robot: bool,
    /// Serve a firmware version and post new ones (pyaiot's test node's `--version`).
    #[arg(long)]
    pub version: bool,
    /// Seconds between readings.
    #[arg(long, default_value_t = 5.0)]
    pub interval: f64,
    /// Seconds between alive posts.
    #[arg(long, default_value_t = 30.0)]
    pub alive_interval: f64,
    /// Post confirmable messages (retransmitted until acknowledged) instead of RIOT's NON.
    #[arg(long)]
    pub confirmable: bool,
    /// Largest block served, in bytes (16 to 1024); longer values go block-wise.
    #[arg(long, default_value_t = 1024)]
    pub block_size: usize,
}

#[derive(Debug, Args)]
pub struct WsNodeArgs {
    #[arg(long, default_value = "localhost")]
    pub gateway_host: String,
    #[arg(long, default_value_t = 8001)]
    pub gateway_port: u16,
    /// How many nodes.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Give the nodes an LED (resource `led`, "0"/"1").
    #[arg(long)]
    pub led: bool,
    /// Give the nodes a temperature reading (`23°C`).
    #[arg(long)]
    pub temperature: bool,
    /// Give the nodes a pressure reading (`1002hPa`).
    #[arg(long)]
    pub pressure: bool,
    /// Seconds between readings.
    #[arg(long, default_value_t = 5.0)]
    pub interval: f64,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new key file (section [keys]: secret and private).
    Generate {
        /// Where to write it.
        #[arg(long, value_name = "PATH")]
        key_file: Option<PathBuf>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
        /// Give gateway NAME its own key: add it to the broker's gateways file, and write the
        /// gateway's key file (--key-file) or print it.
        #[arg(long, value_name = "NAME")]
        gateway: Option<String>,
        /// The broker's gateways file (created if missing); default: keys.gateways_file.
        #[arg(long, value_name = "PATH")]
        gateways_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PasswordCommand {
    /// Hash a web password (typed twice at a terminal, else the first line of stdin) into a
    /// password file for --web-password-file.
    Hash {
        /// Where to write the hash (mode 0600); without it, printed.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the default configuration, with comments.
    Default,
    /// Check a configuration file: syntax, unknown keys, values.
    Check { file: PathBuf },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Broker port (gateways and web clients); 0 picks a free one.
    #[arg(long, default_value_t = 8000)]
    pub broker_port: u16,
    /// Gateway port for websocket nodes.
    #[arg(long, default_value_t = 8001)]
    pub gateway_port: u16,
    /// Gateway web port.
    #[arg(long, default_value_t = 8080)]
    pub web_port: u16,
    /// Simulated websocket nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// The gateway's CoAP port; 0 picks a free one.
    #[arg(long, default_value_t = 5683)]
    pub coap_port: u16,
    /// Simulated CoAP nodes, on 127.0.100.1 and up.
    #[arg(long, default_value_t = 3)]
    pub coap_nodes: usize,
    /// The gateway's embedded MQTT broker port; 0 picks a free one.
    #[arg(long, default_value_t = 1883)]
    pub mqtt_port: u16,
    /// Simulated MQTT nodes, clients of the gateway's embedded broker.
    #[arg(long, default_value_t = 1)]
    pub mqtt_nodes: usize,
    /// The gateway's MQTT-SN UDP port; 0 picks a free one.
    #[arg(long, default_value_t = 1885)]
    pub mqttsn_port: u16,
    /// Simulated MQTT-SN nodes, clients of the gateway's MQTT-SN gateway.
    #[arg(long, default_value_t = 1)]
    pub mqttsn_nodes: usize,
    /// Seconds between readings.
    #[arg(long, default_value_t = 2.0)]
    pub interval: f64,
    #[command(flatten)]
    pub look: LookArgs,
    #[command(flatten)]
    pub web: WebAuthArgs,
}
