//! Wiring: the config file and flags turned into running roles, and the one-shot commands.

use std::io::IsTerminal as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use crate::adapters::coap;
use crate::broker::{self, BrokerSettings};
use crate::cli::{
    BrokerArgs, Cli, CoapNodeArgs, Command, ConfigCommand, DashboardArgs, DemoArgs, GatewayArgs,
    KeysCommand, LookArgs, MqttNodeArgs, MqttSnNodeArgs, NodeCommand, PasswordCommand, WebAuthArgs,
    WsNodeArgs,
};
use crate::config::{Config, DEFAULT_TOML};
use crate::gateway::{self, GatewayListeners, GatewaySettings};
use crate::keys::Keys;
use crate::runtime::Supervisor;
use crate::sim;
use crate::uplink::{Target, UplinkSettings};
use crate::web;

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    config.log.debug |= cli.debug;
    let server_role = match &cli.command {
        Command::Broker(_) => Some("broker"),
        Command::Gateway(_) => Some("gateway"),
        Command::Dashboard(_) => Some("dashboard"),
        _ => None,
    };
    if let Some(role) = server_role {
        crate::runtime::root::refuse_unless_allowed(role, cli.allow_root)?;
    }
    match cli.command {
        Command::Config(ConfigCommand::Default) => {
            print!("{DEFAULT_TOML}");
            return Ok(ExitCode::SUCCESS);
        }
        Command::Config(ConfigCommand::Check { file }) => {
            Config::load(&file)?;
            println!("{}: OK", file.display());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Keys(KeysCommand::Generate {
            key_file,
            force,
            gateway: Some(name),
            gateways_file,
        }) => {
            if gateways_file.is_some() {
                config.keys.gateways_file = gateways_file;
            }
            let file = config.gateways_file().context(
                "--gateway adds to the broker's gateways file: give --gateways-file (or keys.gateways_file)",
            )?;
            let keys = broker::gateways::add(&file, &name)?;
            eprintln!("added gateway {name:?} to {}", file.display());
            match key_file {
                Some(path) => {
                    keys.write(&path, force)?;
                    eprintln!(
                        "wrote its key file {} (copy it to the gateway)",
                        path.display()
                    );
                }
                None => print!("{}", keys.file_text()),
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Keys(KeysCommand::Generate {
            key_file, force, ..
        }) => {
            let path = key_file.unwrap_or_else(|| config.key_file());
            Keys::generate().write(&path, force)?;
            println!("wrote {}", path.display());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Password(PasswordCommand::Hash { file, force }) => {
            web::password::hash_command(file.as_deref(), force)?;
            return Ok(ExitCode::SUCCESS);
        }
        // The bench runs the roles as child processes and its own runtime for the load.
        #[cfg(feature = "bench")]
        Command::Bench(args) => return crate::bench::run(args, cli.config.as_deref()),
        _ => {}
    }
    init_tracing(config.log.debug);
    let runtime = match config.runtime.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        threads => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build(),
    }
    .context("cannot start the async runtime")?;
    let clean = runtime.block_on(async move {
        let supervisor = Supervisor::new();
        match cli.command {
            Command::Broker(args) => start_broker(&supervisor, config, args).await?,
            Command::Gateway(args) => start_gateway(&supervisor, config, args).await?,
            Command::Node(NodeCommand::Ws(args)) => start_ws_nodes(&supervisor, args)?,
            Command::Node(NodeCommand::Coap(args)) => start_coap_nodes(&supervisor, args).await?,
            Command::Node(NodeCommand::Mqtt(args)) => start_mqtt_nodes(&supervisor, args)?,
            Command::Node(NodeCommand::Mqttsn(args)) => {
                start_mqttsn_nodes(&supervisor, args).await?
            }
            Command::Dashboard(args) => start_dashboard(&supervisor, config, args).await?,
            Command::Demo(args) => start_demo(&supervisor, config, args).await?,
            Command::Config(_) | Command::Keys(_) | Command::Password(_) => {
                unreachable!("handled above")
            }
            #[cfg(feature = "bench")]
            Command::Bench(_) => unreachable!("handled above"),
        }
        // Every listener is bound by now: the roles bind before they start.
        crate::runtime::notify::start(&supervisor);
        supervisor.run_until_signal().await
    })?;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn init_tracing(debug: bool) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // rumqttd (the embedded MQTT broker) logs an ERROR for every ordinary disconnect; its
    // real failures reach us as the broker task's error.
    let default = if debug {
        "aiot=debug,warn,rumqttd=off"
    } else {
        "aiot=info,warn,rumqttd=off"
    };
    // `Targets` takes RUST_LOG's `target=level,...,level` lists without EnvFilter's span and
    // field matching, whose regex engine cost the board binary ~0.3 MB (docs/benchmarks.md).
    let mut bad_env = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => value.parse().unwrap_or_else(|error| {
            bad_env = Some(format!("ignoring RUST_LOG={value:?} ({error})"));
            default.parse().expect("the default filter parses")
        }),
        _ => default
            .parse::<tracing_subscriber::filter::Targets>()
            .expect("the default filter parses"),
    };
    // The filter decides alone: `fmt()`'s subscriber would also cap everything at INFO.
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(filter)
        .init();
    if let Some(warning) = bad_env {
        tracing::warn!("{warning}");
    }
}

/// Applies the look flags shared by every role that serves the web UI.
fn apply_look(config: &mut Config, look: LookArgs) {
    let section = &mut config.dashboard;
    section.title = look.title.unwrap_or(std::mem::take(&mut section.title));
    for (flag, slot) in [
        (look.logo, &mut section.logo),
        (look.favicon, &mut section.favicon),
        (look.camera_url, &mut section.camera_url),
    ] {
        if flag.is_some() {
            *slot = flag;
        }
    }
}

/// Applies the web security flags; returns the plain password, if one was given.
fn apply_web(config: &mut Config, web: WebAuthArgs) -> Option<String> {
    if web.web_password_file.is_some() {
        config.web.password_file = web.web_password_file;
    }
    config.web.allowed_origins.extend(web.allowed_origins);
    web.web_password
}

fn load_keys(config: &Config) -> anyhow::Result<Keys> {
    let path = config.key_file();
    Keys::load(&path).with_context(|| {
        format!(
            "the broker and its gateways share a key file; create one with `aiot keys generate --key-file {}`",
            path.display()
        )
    })
}

async fn start_broker(
    supervisor: &Supervisor,
    mut config: Config,
    args: BrokerArgs,
) -> anyhow::Result<()> {
    config.broker.bind = args.bind.unwrap_or(config.broker.bind);
    config.broker.port = args.broker_port.unwrap_or(config.broker.port);
    if args.key_file.is_some() {
        config.keys.file = args.key_file;
    }
    apply_look(&mut config, args.look);
    if args.gateways_file.is_some() {
        config.keys.gateways_file = args.gateways_file;
    }
    apply_server_tls(&mut config, args.tls);
    if args.tls_client_ca.is_some() {
        config.tls.client_ca = args.tls_client_ca;
    }
    let password = apply_web(&mut config, args.web);
    config.check().map_err(anyhow::Error::msg)?;
    let gateways_file = config.gateways_file();
    // With a gateways file the shared key is optional: leaving it out means every gateway can
    // be revoked on its own. A key file named explicitly must load.
    let keys =
        if gateways_file.is_some() && config.keys.file.is_none() && !config.key_file().exists() {
            tracing::info!("no shared key file: only the gateways file admits gateways");
            None
        } else {
            Some(load_keys(&config)?)
        };
    let tls = server_tls(&config)?;
    let mut web_security = config.web.security(password.as_deref())?;
    // Session cookies get `Secure` where the page itself came over TLS.
    web_security.tls = tls.is_some();
    let listener = web::bind(config.broker.bind, config.broker.port).await?;
    broker::start(
        supervisor,
        listener,
        BrokerSettings {
            keys,
            gateways_file,
            tls,
            limits: config.ws_limits(),
            gateway_messages_per_sec: config.limits.gateway_messages_per_sec,
            hub: config.broker_hub(),
            dashboard: config.dashboard_config(),
            web: web_security,
        },
    )?;
    Ok(())
}

fn apply_server_tls(config: &mut Config, args: crate::cli::ServerTlsArgs) {
    if args.tls_cert.is_some() {
        config.tls.cert = args.tls_cert;
    }
    if args.tls_key.is_some() {
        config.tls.key = args.tls_key;
    }
}

/// The listener's TLS, if `tls.cert` and `tls.key` are configured.
fn server_tls(config: &Config) -> anyhow::Result<Option<std::sync::Arc<crate::tls::ServerTls>>> {
    let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else {
        return Ok(None);
    };
    let tls = crate::tls::ServerTls::load(crate::tls::ServerFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: config.tls.client_ca.clone(),
    })?;
    Ok(Some(tls))
}

fn uplink_settings(config: &Config, url: &str, keys: Keys) -> anyhow::Result<UplinkSettings> {
    let target = Target::parse(url)?;
    let tls = crate::tls::ClientFiles {
        ca: config.tls.broker_ca.clone(),
        cert: config.tls.client_cert.clone(),
        key: config.tls.client_key.clone(),
    };
    if target.tls {
        // Read once now so that a wrong path stops the start, not every attempt later.
        crate::tls::client_config(&tls)?;
    }
    Ok(UplinkSettings {
        target,
        tls,
        keys,
        keepalive: Duration::from_secs(config.uplink.keepalive_secs),
        ping_interval: Duration::from_secs(config.uplink.ping_interval_secs),
        connect_timeout: Duration::from_secs(config.uplink.connect_timeout_secs),
        backoff_max: Duration::from_secs(config.uplink.backoff_max_secs),
        limits: config.ws_limits(),
    })
}

async fn start_gateway(
    supervisor: &Supervisor,
    mut config: Config,
    args: GatewayArgs,
) -> anyhow::Result<()> {
    config.gateway.bind = args.bind.unwrap_or(config.gateway.bind);
    config.gateway.gateway_port = args.gateway_port.unwrap_or(config.gateway.gateway_port);
    config.gateway.web_port = args.web_port.unwrap_or(config.gateway.web_port);
    config.gateway.max_time = args.max_time.unwrap_or(config.gateway.max_time);
    config.coap.bind = args.coap_bind.unwrap_or(config.coap.bind);
    config.coap.port = args.coap_port.unwrap_or(config.coap.port);
    config.coap.node_port = args.coap_node_port.unwrap_or(config.coap.node_port);
    if args.interface.is_some() {
        config.coap.interface = args.interface;
    }
    config.mqtt.port = args.mqtt_port.unwrap_or(config.mqtt.port);
    config.mqtt.bind = args.mqtt_bind.unwrap_or(config.mqtt.bind);
    if args.mqtt_host.is_some() {
        config.mqtt.host = args.mqtt_host;
    }
    if args.mqtt_username.is_some() {
        config.mqtt.username = args.mqtt_username;
    }
    if args.mqtt_password.is_some() {
        config.mqtt.password = args.mqtt_password;
        config.mqtt.password_file = None;
    }
    if args.mqtt_password_file.is_some() {
        config.mqtt.password = None;
        config.mqtt.password_file = args.mqtt_password_file;
    }
    if args.mqtt_ca.is_some() {
        config.mqtt.ca_file = args.mqtt_ca;
        config.mqtt.tls = true;
    }
    config.mqtt.tls |= args.mqtt_tls;
    if args.mqtt5_port.is_some() {
        config.mqtt.v5_port = args.mqtt5_port;
    }
    config.mqttsn.port = args.mqttsn_port.unwrap_or(config.mqttsn.port);
    config.mqttsn.bind = args.mqttsn_bind.unwrap_or(config.mqttsn.bind);
    config.uplink.broker_port = args.broker_port.unwrap_or(config.uplink.broker_port);
    if args.broker_host.is_some() {
        config.uplink.broker_host = args.broker_host;
    }
    if args.broker_url.is_some() {
        config.uplink.broker_url = args.broker_url;
    }
    if args.key_file.is_some() {
        config.keys.file = args.key_file;
    }
    apply_look(&mut config, args.look);
    config.uplink.tls |= args.broker_tls;
    if args.broker_ca.is_some() {
        config.tls.broker_ca = args.broker_ca;
    }
    if args.tls_client_cert.is_some() {
        config.tls.client_cert = args.tls_client_cert;
    }
    if args.tls_client_key.is_some() {
        config.tls.client_key = args.tls_client_key;
    }
    apply_server_tls(&mut config, args.tls);
    let password = apply_web(&mut config, args.web);
    config.check().map_err(anyhow::Error::msg)?;
    let web_tls = server_tls(&config)?;
    let mut web_security = config.web.security(password.as_deref())?;
    // Session cookies get `Secure` where the page itself came over TLS.
    web_security.tls = web_tls.is_some();
    let uplink = match config.broker_url() {
        Some(url) => Some(uplink_settings(&config, &url, load_keys(&config)?)?),
        None => None,
    };
    let coap = coap_settings(&config)?;
    let mqtt = mqtt_settings(&config)?;
    let mqtt_connected = mqtt
        .as_ref()
        .filter(|m| m.broker.is_some())
        .map(|m| m.adapter.connected.clone());
    let mqttsn = mqttsn_settings(&config, mqtt.as_ref())?;
    let listeners = GatewayListeners {
        node: web::bind(config.gateway.bind, config.gateway.gateway_port).await?,
        web: web::bind(config.gateway.bind, config.gateway.web_port).await?,
        coap: match coap {
            Some(_) => Some(bind_coap(&config, config.coap.bind, config.coap.port)?),
            None => None,
        },
    };
    let gateway = gateway::start(
        supervisor,
        listeners,
        GatewaySettings {
            limits: config.ws_limits(),
            hub: config.hub(),
            uplink,
            dashboard: config.dashboard_config(),
            coap,
            mqtt,
            web_tls,
            web: web_security,
        },
    )?;
    if let Some((socket, settings)) = mqttsn {
        crate::adapters::mqttsn::start(supervisor, socket, settings, gateway.hub.metrics().clone());
    }
    if let Some(connected) = mqtt_connected {
        // The embedded broker listens once the adapter got in: only then is the gateway up.
        tokio::time::timeout(Duration::from_secs(10), connected.notified())
            .await
            .context("the gateway's MQTT adapter cannot reach its embedded broker")?;
    }
    Ok(())
}

/// The MQTT adapter's settings, `None` if it is disabled. Without `mqtt.host` the embedded
/// broker's address is reserved here (port 0 picks a free one), so a taken port fails the
/// start like any other listener.
fn mqtt_settings(config: &Config) -> anyhow::Result<Option<gateway::GatewayMqtt>> {
    use crate::adapters::mqtt;
    let section = &config.mqtt;
    if !section.enabled {
        return Ok(None);
    }
    let nodes = mqtt::nodes::Settings {
        max_nodes: config.limits.max_nodes,
        max_resources: config.limits.max_resources_per_node,
        max_time: Duration::from_secs(config.gateway.max_time),
        subscriptions: match section.host {
            Some(_) => mqtt::nodes::Subscriptions::PerTopic,
            None => mqtt::nodes::Subscriptions::Direct,
        },
    };
    let password = match &section.password_file {
        Some(path) => Some(mqtt::tls::password_from_file(path)?),
        None => section.password.clone(),
    };
    let credentials = section
        .username
        .clone()
        .map(|user| (user, password.unwrap_or_default()));
    let tls = match section.tls {
        true => Some(mqtt::tls::client_config(section.ca_file.as_deref())?),
        false => None,
    };
    let reserve = |port: u16| match mqtt::reserve(SocketAddr::new(section.bind, port)) {
        // No IPv6 here: the embedded broker on IPv4 only.
        Err(error)
            if section.bind == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                && error.downcast_ref::<std::io::Error>().is_some_and(|e| {
                    e.kind() == std::io::ErrorKind::AddrNotAvailable
                        || e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT)
                }) =>
        {
            mqtt::reserve(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
        }
        result => result,
    };
    let (host, port, broker) = match &section.host {
        Some(host) => (host.clone(), section.port, None),
        None => {
            let listen = reserve(section.port)?;
            let listen_v5 = match section.v5 {
                true => Some(reserve(section.v5_port())?),
                false => None,
            };
            let host = if listen.ip().is_unspecified() {
                Ipv4Addr::LOCALHOST.to_string()
            } else {
                listen.ip().to_string()
            };
            let broker = mqtt::BrokerSettings {
                listen,
                listen_v5,
                max_connections: section.max_connections,
                max_payload: crate::proto::mqtt::MAX_PAYLOAD,
            };
            (host, listen.port(), Some(broker))
        }
    };
    Ok(Some(gateway::GatewayMqtt {
        adapter: mqtt::Settings {
            host,
            port,
            credentials,
            tls,
            nodes,
            check_interval: mqtt::CHECK_INTERVAL,
            connected: Default::default(),
            embedded: None,
        },
        broker,
    }))
}

/// The MQTT-SN gateway's bound socket and settings, `None` if it is disabled. It bridges into
/// the broker the MQTT adapter uses (config.check refuses MQTT-SN without MQTT).
fn mqttsn_settings(
    config: &Config,
    mqtt: Option<&gateway::GatewayMqtt>,
) -> anyhow::Result<Option<(tokio::net::UdpSocket, crate::adapters::mqttsn::Settings)>> {
    use crate::adapters::mqttsn;
    let section = &config.mqttsn;
    let Some(mqtt) = mqtt.filter(|_| section.enabled) else {
        return Ok(None);
    };
    let socket = mqttsn::bind(section.bind, section.port)?;
    let predefined = section
        .predefined
        .iter()
        .map(|p| (p.id, p.topic.clone()))
        .collect();
    let settings = mqttsn::Settings {
        clients: mqttsn::clients::Settings {
            gateway_id: section.gateway_id,
            max_clients: section.max_clients,
            max_datagram: section.max_datagram_bytes,
            limits: mqttsn::session::Limits {
                max_topics: section.max_topics_per_client,
                max_keep_alive: Duration::from_secs(section.max_keep_alive_secs),
                retry: Duration::from_secs(section.retry_secs),
                retries: section.retries,
                ..Default::default()
            },
            predefined: std::sync::Arc::new(predefined),
        },
        broker_host: mqtt.adapter.host.clone(),
        broker_port: mqtt.adapter.port,
        credentials: mqtt.adapter.credentials.clone(),
        advertise: section
            .advertise_to
            .map(|to| (to, Duration::from_secs(section.advertise_interval_secs))),
    };
    Ok(Some((socket, settings)))
}

/// The CoAP adapter's settings, `None` if it is disabled. Resolves the interface name.
fn coap_settings(config: &Config) -> anyhow::Result<Option<coap::Settings>> {
    let section = &config.coap;
    if !section.enabled {
        return Ok(None);
    }
    let scope_id = match &section.interface {
        Some(name) => Some(interface_index(name)?),
        None => None,
    };
    Ok(Some(coap::Settings {
        node_port: section.node_port,
        scope_id,
        max_nodes: section.max_nodes,
        max_time: Duration::from_secs(config.gateway.max_time),
        discovery_concurrency: section.discovery_concurrency,
        max_pending_discoveries: section.max_pending_discoveries,
        max_resources: config.limits.max_resources_per_node,
        exchange: crate::proto::coap::exchange::Params {
            ack_timeout: Duration::from_millis(section.ack_timeout_ms),
            ack_random_factor: section.ack_random_factor,
            max_retransmit: section.max_retransmit,
            max_body: section.max_body_bytes,
            ..Default::default()
        },
        ..Default::default()
    }))
}

/// The index of a network interface, the scope of its link-local addresses.
fn interface_index(name: &str) -> anyhow::Result<u32> {
    let path = format!("/sys/class/net/{name}/ifindex");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no network interface {name:?} ({path})"))?;
    text.trim()
        .parse()
        .with_context(|| format!("unreadable interface index in {path}"))
}

fn bind_coap(config: &Config, ip: IpAddr, port: u16) -> anyhow::Result<tokio::net::UdpSocket> {
    coap::bind(ip, port, config.coap.receive_buffer_bytes)
}

fn seconds(flag: &str, seconds: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} must be a positive number of seconds"))
}

async fn start_coap_nodes(supervisor: &Supervisor, args: CoapNodeArgs) -> anyhow::Result<()> {
    let gateway = tokio::net::lookup_host((args.gateway_host.as_str(), args.gateway_port))
        .await
        .with_context(|| format!("cannot resolve the gateway {}", args.gateway_host))?
        .find(|addr| addr.is_ipv4() == args.first_address.is_ipv4())
        .with_context(|| {
            format!(
                "the gateway {} has no address of the nodes' family ({})",
                args.gateway_host, args.first_address
            )
        })?;
    if !(16..=1024).contains(&args.block_size) || !args.block_size.is_power_of_two() {
        anyhow::bail!("--block-size must be a power of two from 16 to 1024");
    }
    let nodes = sim::coap::CoapNodes {
        gateway,
        count: args.count,
        first_address: args.first_address,
        node_port: args.node_port,
        resources: sim::coap::Resources {
            led: args.led,
            temperature: args.temperature,
            pressure: args.pressure,
            imu: args.imu,
            js: args.js,
            robot: args.robot,
            version: args.version,
        },
        interval: seconds("--interval", args.interval)?,
        alive_interval: seconds("--alive-interval", args.alive_interval)?,
        confirmable: args.confirmable,
        block_size: args.block_size,
    };
    let sockets = sim::coap::bind(&nodes)?;
    sim::coap::start(supervisor, nodes, sockets);
    Ok(())
}

async fn start_dashboard(
    supervisor: &Supervisor,
    mut config: Config,
    args: DashboardArgs,
) -> anyhow::Result<()> {
    let section = &mut config.dashboard;
    section.bind = args.bind.unwrap_or(section.bind);
    section.port = args.web_port.unwrap_or(section.port);
    section.broker_host = args
        .broker_host
        .unwrap_or(std::mem::take(&mut section.broker_host));
    section.broker_port = args.broker_port.unwrap_or(section.broker_port);
    section.broker_ssl |= args.broker_ssl;
    apply_look(&mut config, args.look);
    config.check().map_err(anyhow::Error::msg)?;
    let section = &config.dashboard;
    let mut dashboard = config.dashboard_config();
    dashboard.ws_url = Some(crate::dashboard::broker_ws_url(
        &section.broker_host,
        section.broker_port,
        section.broker_ssl,
    ));
    let listener = web::bind(section.bind, section.port).await?;
    crate::dashboard::start(supervisor, listener, dashboard);
    Ok(())
}

fn interval(seconds: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--interval must be a positive number of seconds")
}

fn start_ws_nodes(supervisor: &Supervisor, args: WsNodeArgs) -> anyhow::Result<()> {
    let host = if args.gateway_host.contains(':') {
        format!("[{}]", args.gateway_host)
    } else {
        args.gateway_host
    };
    sim::ws::start(
        supervisor,
        sim::ws::WsNodes {
            url: format!("ws://{host}:{}/node", args.gateway_port),
            count: args.count,
            resources: sim::ws::Resources {
                led: args.led,
                temperature: args.temperature,
                pressure: args.pressure,
            },
            interval: interval(args.interval)?,
        },
    );
    Ok(())
}

fn start_mqtt_nodes(supervisor: &Supervisor, args: MqttNodeArgs) -> anyhow::Result<()> {
    sim::mqtt::start(
        supervisor,
        sim::mqtt::MqttNodes {
            host: args.mqtt_host,
            port: args.mqtt_port,
            count: args.count,
            interval: interval(args.interval)?,
        },
    );
    Ok(())
}

async fn start_mqttsn_nodes(supervisor: &Supervisor, args: MqttSnNodeArgs) -> anyhow::Result<()> {
    let gateway = tokio::net::lookup_host((args.gateway_host.as_str(), args.gateway_port))
        .await
        .with_context(|| format!("cannot resolve the gateway {}", args.gateway_host))?
        .next()
        .with_context(|| format!("the gateway {} has no address", args.gateway_host))?;
    if args.keep_alive < 3 {
        anyhow::bail!("--keep-alive must be at least 3 seconds");
    }
    sim::mqttsn::start(
        supervisor,
        sim::mqttsn::MqttSnNodes {
            gateway,
            count: args.count,
            interval: interval(args.interval)?,
            keep_alive: args.keep_alive,
        },
    );
    Ok(())
}

async fn start_demo(
    supervisor: &Supervisor,
    mut config: Config,
    args: DemoArgs,
) -> anyhow::Result<()> {
    apply_look(&mut config, args.look);
    let password = apply_web(&mut config, args.web);
    config.check().map_err(anyhow::Error::msg)?;
    // One password for the demo's broker and gateway, hashed once.
    let web_security = config.web.security(password.as_deref())?;
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // The demo's broker and gateway share keys that live only in this process.
    let keys = Keys::generate();
    let broker_listener = web::bind(loopback, args.broker_port).await?;
    let broker_addr = broker_listener.local_addr()?;
    broker::start(
        supervisor,
        broker_listener,
        BrokerSettings {
            keys: Some(keys.clone()),
            gateways_file: None,
            tls: None,
            limits: config.ws_limits(),
            gateway_messages_per_sec: config.limits.gateway_messages_per_sec,
            hub: config.broker_hub(),
            dashboard: config.dashboard_config(),
            web: web_security.clone(),
        },
    )?;
    let coap = coap_settings(&config)?;
    // The demo's embedded MQTT broker, on loopback like everything else.
    config.mqtt.host = None;
    config.mqtt.bind = loopback;
    config.mqtt.port = args.mqtt_port;
    let mqtt = mqtt_settings(&config)?;
    let mqtt_addr = mqtt
        .as_ref()
        .and_then(|m| m.broker.as_ref())
        .map(|b| b.listen);
    config.mqttsn.bind = loopback;
    config.mqttsn.port = args.mqttsn_port;
    let mqttsn = mqttsn_settings(&config, mqtt.as_ref())?;
    let mqttsn_addr = match &mqttsn {
        Some((socket, _)) => Some(socket.local_addr()?),
        None => None,
    };
    let listeners = GatewayListeners {
        node: web::bind(loopback, args.gateway_port).await?,
        web: web::bind(loopback, args.web_port).await?,
        coap: match coap {
            Some(_) => Some(bind_coap(&config, loopback, args.coap_port)?),
            None => None,
        },
    };
    let node_addr = listeners.node.local_addr()?;
    let web_addr = listeners.web.local_addr()?;
    let coap_addr = match &listeners.coap {
        Some(socket) => Some(socket.local_addr()?),
        None => None,
    };
    let coap_nodes = match coap_addr {
        Some(gateway) if args.coap_nodes > 0 => {
            let nodes = sim::coap::CoapNodes {
                gateway,
                count: args.coap_nodes,
                first_address: IpAddr::V4(Ipv4Addr::new(127, 0, 100, 1)),
                node_port: config.coap.node_port,
                resources: sim::coap::Resources {
                    led: true,
                    temperature: true,
                    pressure: true,
                    ..Default::default()
                },
                interval: interval(args.interval)?,
                alive_interval: Duration::from_secs(30),
                confirmable: false,
                block_size: 1024,
            };
            let sockets = sim::coap::bind(&nodes)?;
            Some((nodes, sockets))
        }
        _ => None,
    };
    let uplink = uplink_settings(&config, &format!("ws://{broker_addr}/gw"), keys)?;
    let gateway = gateway::start(
        supervisor,
        listeners,
        GatewaySettings {
            limits: config.ws_limits(),
            hub: config.hub(),
            uplink: Some(uplink),
            dashboard: config.dashboard_config(),
            coap,
            mqtt,
            web_tls: None,
            web: web_security,
        },
    )?;
    if let Some((nodes, sockets)) = coap_nodes {
        sim::coap::start(supervisor, nodes, sockets);
    }
    if let Some((socket, settings)) = mqttsn {
        crate::adapters::mqttsn::start(supervisor, socket, settings, gateway.hub.metrics().clone());
    }
    if let Some(gateway) = mqttsn_addr.filter(|_| args.mqttsn_nodes > 0) {
        sim::mqttsn::start(
            supervisor,
            sim::mqttsn::MqttSnNodes {
                gateway,
                count: args.mqttsn_nodes,
                interval: interval(args.interval)?,
                keep_alive: 60,
            },
        );
    }
    if let Some(addr) = mqtt_addr.filter(|_| args.mqtt_nodes > 0) {
        sim::mqtt::start(
            supervisor,
            sim::mqtt::MqttNodes {
                host: addr.ip().to_string(),
                port: addr.port(),
                count: args.mqtt_nodes,
                interval: interval(args.interval)?,
            },
        );
    }
    sim::ws::start(
        supervisor,
        sim::ws::WsNodes {
            url: format!("ws://{node_addr}/node"),
            count: args.nodes,
            resources: sim::ws::Resources {
                led: true,
                temperature: true,
                pressure: true,
            },
            interval: interval(args.interval)?,
        },
    );
    println!(
        "aiot demo is running on loopback:\n\
         \x20 central dashboard  http://{broker_addr}/   (broker: web clients on /ws, gateways on /gw)\n\
         \x20 gateway dashboard  http://{web_addr}/   (the on-device UI; web clients on /ws)\n\
         \x20 websocket nodes    ws://{node_addr}/node  ({} simulated nodes with LED, temperature, pressure)\n\
         \x20 CoAP nodes         {}  ({} simulated nodes on 127.0.100.x)\n\
         \x20 MQTT nodes         {}  ({} simulated nodes, embedded broker)\n\
         \x20 MQTT-SN nodes      {}  ({} simulated nodes, UDP)\n\
         Open a dashboard in a browser; press Ctrl-C to stop.",
        args.nodes,
        coap_addr.map_or_else(|| "disabled".to_owned(), |a| format!("coap://{a}")),
        if coap_addr.is_some() {
            args.coap_nodes
        } else {
            0
        },
        mqtt_addr.map_or_else(|| "disabled".to_owned(), |a| format!("mqtt://{a}")),
        if mqtt_addr.is_some() {
            args.mqtt_nodes
        } else {
            0
        },
        mqttsn_addr.map_or_else(|| "disabled".to_owned(), |a| format!("mqttsn://{a}")),
        if mqttsn_addr.is_some() {
            args.mqttsn_nodes
        } else {
            0
        },
    );
    Ok(())
}
