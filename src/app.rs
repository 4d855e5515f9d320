//! Wiring: the config file and flags turned into running roles, and the one-shot commands.

use std::io::IsTerminal as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use crate::broker::{self, BrokerSettings};
use crate::cli::{
    BrokerArgs, Cli, Command, ConfigCommand, DashboardArgs, DemoArgs, GatewayArgs, KeysCommand,
    LookArgs, NodeCommand, WsNodeArgs,
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
        Command::Keys(KeysCommand::Generate { key_file, force }) => {
            let path = key_file.unwrap_or_else(|| config.key_file());
            Keys::generate().write(&path, force)?;
            println!("wrote {}", path.display());
            return Ok(ExitCode::SUCCESS);
        }
        // The bench runs the roles as child processes and its own runtime for the load.
        Command::Bench(args) => return crate::bench::run(args, cli.config.as_deref()),
        _ => {}
    }
    init_tracing(config.log.debug);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let clean = runtime.block_on(async move {
        let supervisor = Supervisor::new();
        match cli.command {
            Command::Broker(args) => start_broker(&supervisor, config, args).await?,
            Command::Gateway(args) => start_gateway(&supervisor, config, args).await?,
            Command::Node(NodeCommand::Ws(args)) => start_ws_nodes(&supervisor, args)?,
            Command::Dashboard(args) => start_dashboard(&supervisor, config, args).await?,
            Command::Demo(args) => start_demo(&supervisor, config, args).await?,
            Command::Config(_) | Command::Keys(_) | Command::Bench(_) => {
                unreachable!("handled above")
            }
        }
        supervisor.run_until_signal().await
    })?;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn init_tracing(debug: bool) {
    let default = if debug {
        "aiot=debug,warn"
    } else {
        "aiot=info,warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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
    config.check().map_err(anyhow::Error::msg)?;
    let keys = load_keys(&config)?;
    let listener = web::bind(config.broker.bind, config.broker.port).await?;
    broker::start(
        supervisor,
        listener,
        BrokerSettings {
            keys,
            limits: config.ws_limits(),
            hub: config.hub(),
            dashboard: config.dashboard_config(),
        },
    );
    Ok(())
}

fn uplink_settings(config: &Config, url: &str, keys: Keys) -> anyhow::Result<UplinkSettings> {
    Ok(UplinkSettings {
        target: Target::parse(url)?,
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
    config.check().map_err(anyhow::Error::msg)?;
    let uplink = match config.broker_url() {
        Some(url) => Some(uplink_settings(&config, &url, load_keys(&config)?)?),
        None => None,
    };
    let listeners = GatewayListeners {
        node: web::bind(config.gateway.bind, config.gateway.gateway_port).await?,
        web: web::bind(config.gateway.bind, config.gateway.web_port).await?,
    };
    gateway::start(
        supervisor,
        listeners,
        GatewaySettings {
            limits: config.ws_limits(),
            hub: config.hub(),
            uplink,
            dashboard: config.dashboard_config(),
        },
    );
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

async fn start_demo(
    supervisor: &Supervisor,
    mut config: Config,
    args: DemoArgs,
) -> anyhow::Result<()> {
    apply_look(&mut config, args.look);
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // The demo's broker and gateway share keys that live only in this process.
    let keys = Keys::generate();
    let broker_listener = web::bind(loopback, args.broker_port).await?;
    let broker_addr = broker_listener.local_addr()?;
    broker::start(
        supervisor,
        broker_listener,
        BrokerSettings {
            keys: keys.clone(),
            limits: config.ws_limits(),
            hub: config.hub(),
            dashboard: config.dashboard_config(),
        },
    );
    let listeners = GatewayListeners {
        node: web::bind(loopback, args.gateway_port).await?,
        web: web::bind(loopback, args.web_port).await?,
    };
    let node_addr = listeners.node.local_addr()?;
    let web_addr = listeners.web.local_addr()?;
    let uplink = uplink_settings(&config, &format!("ws://{broker_addr}/gw"), keys)?;
    gateway::start(
        supervisor,
        listeners,
        GatewaySettings {
            limits: config.ws_limits(),
            hub: config.hub(),
            uplink: Some(uplink),
            dashboard: config.dashboard_config(),
        },
    );
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
         Open a dashboard in a browser; press Ctrl-C to stop.",
        args.nodes
    );
    Ok(())
}
