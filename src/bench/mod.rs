//! `aiot bench`: a load test of the whole path a reading takes. The broker and a gateway run
//! as child processes of this binary; simulated nodes (in this process; websocket nodes, or
//! CoAP nodes with `--protocol coap`) send timestamped updates to the gateway, which forwards
//! them to the broker, which sends them to web clients (also in this process). Prints
//! throughput, loss, latency, how long the nodes took to be registered and discovered, and
//! what each child costs in CPU time per update and in memory.

mod coap;
mod load;
mod mqtt;
mod mqttsn;
mod procs;
mod stats;

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::keys::Keys;
use load::{ClientReport, NodeReport, Plan, Seen, Shared};
use procs::{Lab, Proc, Sample};
use stats::{Latencies, count, mib, ms};

/// How the simulated nodes talk to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Websocket nodes on the gateway's /node.
    #[value(alias = "ws")]
    Websocket,
    /// CoAP nodes (UDP), each on its own loopback address 127.77.x.y, posting NON to the
    /// gateway's /alive and /server and answering its discovery.
    Coap,
    /// MQTT nodes (TCP), clients of the gateway's embedded broker, publishing QoS 1 as
    /// pyaiot's MQTT nodes.
    Mqtt,
    /// MQTT-SN nodes (UDP) publishing through the gateway's MQTT-SN gateway and its broker.
    Mqttsn,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Websocket => "websocket",
            Protocol::Coap => "CoAP",
            Protocol::Mqtt => "MQTT",
            Protocol::Mqttsn => "MQTT-SN",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// How the nodes talk to the gateway.
    #[arg(long, value_enum, default_value_t = Protocol::Websocket)]
    pub protocol: Protocol,
    /// Simulated nodes connected to the gateway.
    #[arg(long, default_value_t = 50)]
    pub nodes: usize,
    /// Web clients connected to the broker's /ws.
    #[arg(long, default_value_t = 2)]
    pub clients: usize,
    /// Total updates per second, all nodes together; 0 sends as fast as the gateway takes them
    /// (CoAP: as fast as the nodes can send, since UDP never pushes back; expect loss).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub duration: f64,
    /// Seconds of load before the measurement starts, to fill caches, buffers and pools.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub warmup: f64,
}

/// How long a child may take to listen, and the uplink to connect; generous, since a loaded
/// CI machine is slow, and a healthy start takes milliseconds.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between the gateway's uplink connecting and the idle memory sample, so that the
/// sample does not catch the handshake's transient buffers.
const IDLE_SETTLE: Duration = Duration::from_millis(200);
/// Time for every node and client to connect and every client to see every node.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Time between the plan being sent and the first update, so every node has it in hand.
const START_DELAY: Duration = Duration::from_millis(100);
/// How long after sending stops the clients may still receive the window's updates; the
/// wait ends as soon as they have them all.
const DRAIN: Duration = Duration::from_secs(5);
/// How often the controller looks at the shared counters while it waits.
const POLL: Duration = Duration::from_millis(5);

pub fn run(args: BenchArgs, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    ensure!(args.nodes > 0, "--nodes must be at least 1");
    ensure!(args.clients > 0, "--clients must be at least 1");
    let duration = Duration::try_from_secs_f64(args.duration)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--duration must be a positive number of seconds")?;
    let warmup = Duration::try_from_secs_f64(args.warmup)
        .context("--warmup must be zero or a positive number of seconds")?;

    let lab = Lab::new()?;
    // CoAP nodes are bound first: the gateway is told their port.
    let coap_nodes = match args.protocol {
        Protocol::Websocket | Protocol::Mqtt | Protocol::Mqttsn => None,
        Protocol::Coap => Some(coap::bind(args.nodes)?),
    };
    let Started {
        gateway,
        broker,
        node_addr,
        coap_addr,
        broker_addr,
        startup,
        idle,
    } = start_roles(&lab, config, coap_nodes.as_ref().map(|(_, port)| *port))?;

    let plan = match args.rate {
        0 => "as fast as possible".to_owned(),
        rate => format!("{} updates/s", count(rate)),
    };
    let load = match (coap_nodes, coap_addr) {
        _ if args.protocol == Protocol::Mqtt => {
            let (broker, _) = gateway.listening("MQTT clients", STARTUP_TIMEOUT)?;
            eprintln!(
                "aiot bench: {} MQTT nodes -> gateway mqtt://{broker} (embedded broker) -> broker \
                 ws://{broker_addr}/ws -> {} clients; {plan}, {:.1} s warm-up, {:.1} s measured",
                args.nodes,
                args.clients,
                warmup.as_secs_f64(),
                duration.as_secs_f64(),
            );
            Load::Mqtt { broker }
        }
        _ if args.protocol == Protocol::Mqttsn => {
            mqttsn_load(&args, &gateway, &plan, warmup, duration, broker_addr)?
        }
        (Some((sockets, port)), Some(gateway)) => {
            eprintln!(
                "aiot bench: {} CoAP nodes on {}…:{port} -> gateway coap://{gateway} -> broker \
                 ws://{broker_addr}/ws -> {} clients; {plan}, {:.1} s warm-up, {:.1} s measured",
                args.nodes,
                coap::FIRST_ADDRESS,
                args.clients,
                warmup.as_secs_f64(),
                duration.as_secs_f64(),
            );
            Load::Coap { sockets, gateway }
        }
        (Some(_), None) => bail!("the gateway did not start its CoAP adapter"),
        (None, _) => {
            eprintln!(
                "aiot bench: {} nodes -> gateway ws://{node_addr}/node -> broker ws://{broker_addr}/ws -> {} clients; \
                 {plan}, {:.1} s warm-up, {:.1} s measured",
                args.nodes,
                args.clients,
                warmup.as_secs_f64(),
                duration.as_secs_f64(),
            );
            Load::Websocket {
                url: format!("ws://{node_addr}/node"),
            }
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let client_url = format!("ws://{broker_addr}/ws");
    let measured = runtime.block_on(async {
        tokio::select! {
            measured = drive(&args, load, &client_url, warmup, duration, [&gateway, &broker]) => measured,
            // Returning (rather than dying of the signal) lets `lab` kill the children: a
            // `kill` or `timeout` reaches only this process, not its process group.
            signal = interrupted() => bail!("stopped by {signal}"),
        }
    })?;
    let report = Report::new(
        &args,
        startup,
        idle,
        measured,
        procs::clock_ticks_per_second(),
    );
    report.print(&args, [&gateway, &broker]);
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Waits for SIGINT or SIGTERM and names it; never returns if they cannot be watched.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}

/// The broker and the gateway, running and connected, with what their start cost.
struct Started {
    gateway: Proc,
    broker: Proc,
    node_addr: SocketAddr,
    /// The gateway's CoAP socket, if its CoAP adapter runs.
    coap_addr: Option<SocketAddr>,
    broker_addr: SocketAddr,
    startup: Startup,
    /// `[gateway, broker]`, before any node or client connects.
    idle: [Sample; 2],
}

/// The configuration the children run with: the caller's (or the defaults), with the
/// gateway's CoAP socket on loopback, as everything else (the file's `coap.bind` defaults to
/// `::`, and no flag sets it), and no per-node rate limit.
fn children_config(config: Option<&Path>) -> anyhow::Result<Config> {
    let mut settings = match config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    settings.coap.bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // The bench drives a few nodes as fast as they go to measure the pipeline; the per-node
    // throttle would measure itself instead.
    settings.limits.node_messages_per_sec = 0;
    settings.limits.gateway_messages_per_sec = 0;
    Ok(settings)
}

/// Starts the broker and the gateway; `coap_node_port`: the port of the bench's CoAP nodes,
/// `None` for websocket nodes.
fn start_roles(
    lab: &Lab,
    config: Option<&Path>,
    coap_node_port: Option<u16>,
) -> anyhow::Result<Started> {
    let key_file = lab.dir().join("keys");
    Keys::generate().write(&key_file, false)?;
    let settings = children_config(config)?;
    ensure!(
        settings.coap.enabled || coap_node_port.is_none(),
        "CoAP is disabled in the configuration (coap.enabled = false)"
    );
    let config_file = lab.dir().join("config.toml");
    let text = toml::to_string(&settings).context("cannot write the children's configuration")?;
    std::fs::write(&config_file, text)
        .with_context(|| format!("cannot write {}", config_file.display()))?;
    let command = |words: &[&str]| {
        let mut list: Vec<OsString> = words.iter().map(OsString::from).collect();
        list.extend(["--key-file".into(), key_file.clone().into_os_string()]);
        list.extend(["--config".into(), config_file.clone().into_os_string()]);
        list
    };
    let on_loopback = ["--bind", "127.0.0.1"];
    let broker = lab.spawn(
        "broker",
        &command(&[&["broker", "--broker-port", "0"][..], &on_loopback].concat()),
    )?;
    let (broker_addr, broker_listening) = broker.listening("broker", STARTUP_TIMEOUT)?;
    let broker_url = format!("ws://{broker_addr}/gw");
    let node_port = coap_node_port.map(|port| port.to_string());
    let coap_flags: &[&str] = match &node_port {
        // The embedded MQTT broker too stays on loopback and off 1883, which may be taken.
        Some(port) => &[
            "--coap-port",
            "0",
            "--coap-node-port",
            port,
            "--mqtt-bind",
            "127.0.0.1",
            "--mqtt-port",
            "0",
            "--mqttsn-bind",
            "127.0.0.1",
            "--mqttsn-port",
            "0",
        ],
        None => &[
            "--coap-port",
            "0",
            "--mqtt-bind",
            "127.0.0.1",
            "--mqtt-port",
            "0",
            "--mqttsn-bind",
            "127.0.0.1",
            "--mqttsn-port",
            "0",
        ],
    };
    let gateway = lab.spawn(
        "gateway",
        &command(
            &[
                &["gateway", "--gateway-port", "0", "--web-port", "0"][..],
                &on_loopback,
                coap_flags,
                &["--broker-url", &broker_url],
            ]
            .concat(),
        ),
    )?;
    let (node_addr, nodes_listening) = gateway.listening("websocket nodes", STARTUP_TIMEOUT)?;
    let (_, web_listening) = gateway.listening("web clients", STARTUP_TIMEOUT)?;
    let (coap_addr, coap_listening) = if settings.coap.enabled {
        let (addr, at) = gateway.listening("CoAP nodes", STARTUP_TIMEOUT)?;
        (Some(addr), at)
    } else {
        (None, Duration::ZERO)
    };
    let (uplinked, _) = gateway.wait_for_log(&["connected to broker"], STARTUP_TIMEOUT)?;
    std::thread::sleep(IDLE_SETTLE);
    let idle = [gateway.sample()?, broker.sample()?];
    let startup = Startup {
        listening: [
            nodes_listening.max(web_listening).max(coap_listening),
            broker_listening,
        ],
        uplinked: uplinked.duration_since(gateway.spawned),
    };
    Ok(Started {
        gateway,
        broker,
        node_addr,
        coap_addr,
        broker_addr,
        startup,
        idle,
    })
}

/// The nodes to run.
enum Load {
    Websocket {
        url: String,
    },
    Coap {
        sockets: Vec<std::net::UdpSocket>,
        gateway: SocketAddr,
    },
    Mqtt {
        broker: SocketAddr,
    },
    Mqttsn {
        sockets: Vec<std::net::UdpSocket>,
        gateway: SocketAddr,
    },
}

/// The MQTT-SN nodes' load, aimed at the gateway's MQTT-SN socket.
fn mqttsn_load(
    args: &BenchArgs,
    gateway: &Proc,
    plan: &str,
    warmup: Duration,
    duration: Duration,
    broker_addr: SocketAddr,
) -> anyhow::Result<Load> {
    let (to, _) = gateway.listening("MQTT-SN clients", STARTUP_TIMEOUT)?;
    eprintln!(
        "aiot bench: {} MQTT-SN nodes -> gateway mqttsn://{to} -> embedded MQTT broker -> gateway -> broker \
         ws://{broker_addr}/ws -> {} clients; {plan}, {:.1} s warm-up, {:.1} s measured",
        args.nodes,
        args.clients,
        warmup.as_secs_f64(),
        duration.as_secs_f64(),
    );
    Ok(Load::Mqttsn {
        sockets: mqttsn::bind(args.nodes)?,
        gateway: to,
    })
}

/// From spawn to the log line, as this process read it; `[gateway, broker]`.
struct Startup {
    listening: [Duration; 2],
    uplinked: Duration,
}

/// The raw results of one run.
struct Measured {
    plan: Plan,
    nodes: Vec<NodeReport>,
    clients: Vec<ClientReport>,
    /// `[gateway, broker, bench]` at the start and the end of the measured window.
    before: [Sample; 3],
    after: [Sample; 3],
    /// Wall time between the two samples.
    sampled: Duration,
    /// From the end of sending until every client had everything, or `DRAIN`.
    drained: Duration,
    /// From the first node's hello to the first and to the last client having heard of every
    /// node (and, for CoAP, of its discovered resources).
    registration: Option<[Duration; 2]>,
    /// `[gateway, broker]` once every client had every node, before the load.
    registered: [Sample; 2],
    /// The machine's UDP receive-buffer overflows and receive errors in the window.
    udp_drops: Option<(u64, u64)>,
}

async fn drive(
    args: &BenchArgs,
    load: Load,
    client_url: &str,
    warmup: Duration,
    duration: Duration,
    [gateway, broker]: [&Proc; 2],
) -> anyhow::Result<Measured> {
    let shared = Arc::new(Shared::new());
    let (plan_tx, plan_rx) = watch::channel(None);
    let stop = CancellationToken::new();
    // Cancelled on every way out, so no task outlives the run.
    let _stop_guard = stop.clone().drop_guard();
    let required = match load {
        Load::Websocket { .. } => &[][..],
        Load::Coap { .. } => coap::DISCOVERED,
        Load::Mqtt { .. } => mqtt::DISCOVERED,
        Load::Mqttsn { .. } => mqttsn::DISCOVERED,
    };

    let mut clients = JoinSet::new();
    for _ in 0..args.clients {
        clients.spawn(load::client(
            client_url.to_owned(),
            args.nodes,
            required,
            shared.clone(),
            plan_rx.clone(),
            stop.clone(),
        ));
    }
    let mut nodes = JoinSet::new();
    let ready_by = Instant::now() + SETUP_TIMEOUT;
    // The clients first, so that the registration time is the nodes' alone.
    while shared.clients_connected.load(Ordering::Relaxed) < args.clients {
        check_running(&mut nodes, &mut clients)?;
        ensure!(
            Instant::now() < ready_by,
            "after {SETUP_TIMEOUT:?}, only {} of {} clients had connected",
            shared.clients_connected.load(Ordering::Relaxed),
            args.clients,
        );
        tokio::time::sleep(POLL).await;
    }
    match load {
        Load::Websocket { url } => {
            for index in 0..args.nodes {
                nodes.spawn(load::node(
                    index,
                    args.nodes,
                    url.clone(),
                    shared.clone(),
                    plan_rx.clone(),
                    stop.clone(),
                ));
            }
        }
        Load::Coap {
            sockets,
            gateway: to,
        } => {
            for (index, socket) in sockets.into_iter().enumerate() {
                nodes.spawn(coap::node(
                    index,
                    args.nodes,
                    socket,
                    to,
                    shared.clone(),
                    plan_rx.clone(),
                    stop.clone(),
                ));
            }
        }
        Load::Mqtt { broker: to } => {
            coap::allow_sockets(args.nodes)?;
            for index in 0..args.nodes {
                nodes.spawn(mqtt::node(
                    index,
                    args.nodes,
                    to,
                    shared.clone(),
                    plan_rx.clone(),
                    stop.clone(),
                ));
            }
        }
        Load::Mqttsn {
            sockets,
            gateway: to,
        } => {
            let prefix = format!("bsn{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
            for (index, socket) in sockets.into_iter().enumerate() {
                nodes.spawn(mqttsn::node(
                    index,
                    args.nodes,
                    prefix.clone(),
                    socket,
                    to,
                    shared.clone(),
                    plan_rx.clone(),
                    stop.clone(),
                ));
            }
        }
    }

    while shared.clients_ready.load(Ordering::Relaxed) < args.clients {
        check_running(&mut nodes, &mut clients)?;
        ensure!(
            Instant::now() < ready_by,
            "after {SETUP_TIMEOUT:?}, only {} of {} clients had heard of all {} nodes{}",
            shared.clients_ready.load(Ordering::Relaxed),
            args.clients,
            args.nodes,
            if required.is_empty() {
                String::new()
            } else {
                format!(" and their resources {required:?}")
            }
        );
        tokio::time::sleep(POLL).await;
    }
    let hello = shared.first_hello_ns.load(Ordering::Relaxed);
    let registration = [
        shared.first_ready_ns.load(Ordering::Relaxed),
        shared.last_ready_ns.load(Ordering::Relaxed),
    ]
    .map(|ready| Duration::from_nanos(ready.saturating_sub(hello)));
    let registration = (hello != u64::MAX).then_some(registration);
    let registered = [gateway.sample()?, broker.sample()?];

    let start_ns = shared.now_ns() + nanos(START_DELAY);
    let plan = Plan {
        start_ns,
        warm_ns: start_ns + nanos(warmup),
        end_ns: start_ns + nanos(warmup) + nanos(duration),
        period: (args.rate > 0)
            .then(|| Duration::from_secs_f64(args.nodes as f64 / args.rate as f64)),
    };
    plan_tx.send_replace(Some(plan));

    let sample_all = || -> anyhow::Result<[Sample; 3]> {
        Ok([
            gateway.sample()?,
            broker.sample()?,
            procs::sample(std::process::id())?,
        ])
    };
    tokio::time::sleep_until(shared.instant(plan.warm_ns)).await;
    let before = sample_all()?;
    let udp_before = procs::udp_drops();
    let window_start = Instant::now();
    eprintln!("measuring...");
    tokio::time::sleep_until(shared.instant(plan.end_ns)).await;
    let after = sample_all()?;
    let sampled = window_start.elapsed();
    let udp_drops = match (udp_before, procs::udp_drops()) {
        (Some(before), Some(after)) => Some((
            after.0.saturating_sub(before.0),
            after.1.saturating_sub(before.1),
        )),
        _ => None,
    };

    let sent_all = Instant::now();
    let expected =
        |shared: &Shared| shared.sent_in_window.load(Ordering::Relaxed) * args.clients as u64;
    while shared.received_in_window.load(Ordering::Relaxed) < expected(&shared)
        && sent_all.elapsed() < DRAIN
    {
        tokio::time::sleep(POLL).await;
    }
    let drained = sent_all.elapsed();
    stop.cancel();

    let mut node_reports = Vec::with_capacity(args.nodes);
    while let Some(done) = nodes.join_next().await {
        node_reports.push(done.context("a node task failed")?);
    }
    let mut client_reports = Vec::with_capacity(args.clients);
    while let Some(done) = clients.join_next().await {
        client_reports.push(done.context("a client task failed")?);
    }
    Ok(Measured {
        plan,
        nodes: node_reports,
        clients: client_reports,
        before,
        after,
        sampled,
        drained,
        registration,
        registered,
        udp_drops,
    })
}

/// Fails if a node or a client stopped before the load.
fn check_running(
    nodes: &mut JoinSet<NodeReport>,
    clients: &mut JoinSet<ClientReport>,
) -> anyhow::Result<()> {
    if let Some(done) = nodes.try_join_next() {
        let report = done.context("a node task failed")?;
        bail!(
            "a node stopped before the load: {}",
            report.error.unwrap_or_default()
        );
    }
    if let Some(done) = clients.try_join_next() {
        let report = done.context("a client task failed")?;
        bail!(
            "a client stopped before the load: {}",
            report.error.unwrap_or_default()
        );
    }
    Ok(())
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The figures, computed.
struct Report {
    window: Duration,
    sent: u64,
    /// Distinct updates of the window that reached at least one client: what the broker
    /// forwarded.
    forwarded: u64,
    /// Updates of the window received, summed over clients.
    delivered: u64,
    expected: u64,
    duplicates: u64,
    garbled: u64,
    per_client: Vec<u64>,
    unannounced: Vec<usize>,
    latencies: Option<Latencies>,
    startup: Startup,
    /// `[gateway, broker]`.
    idle: [Sample; 2],
    /// `[gateway, broker, bench]`, CPU seconds in the window.
    cpu: [f64; 3],
    after: [Sample; 3],
    sampled: Duration,
    drained: Duration,
    registration: Option<[Duration; 2]>,
    registered: [Sample; 2],
    udp_drops: Option<(u64, u64)>,
    /// Datagrams the nodes could not send (CoAP).
    send_failures: u64,
    ticks_per_second: u64,
    errors: Vec<String>,
}

impl Report {
    fn new(
        args: &BenchArgs,
        startup: Startup,
        idle: [Sample; 2],
        measured: Measured,
        ticks_per_second: u64,
    ) -> Report {
        let plan = measured.plan;
        let window = Duration::from_nanos(plan.end_ns - plan.warm_ns);
        let sent: u64 = measured.nodes.iter().map(|n| n.sent_in_window).sum();
        let mut union = Seen::default();
        let mut latencies_ns = Vec::new();
        let mut errors = Vec::new();
        for client in &measured.clients {
            union.union(&client.seen);
            latencies_ns.extend_from_slice(&client.latencies_ns);
            errors.extend(client.error.iter().map(|e| format!("client: {e}")));
        }
        errors.extend(measured.nodes.iter().filter_map(|n| n.error.clone()));
        let delivered = measured.clients.iter().map(|c| c.received).sum();
        let cpu = std::array::from_fn(|i| {
            measured.after[i]
                .cpu_ticks
                .saturating_sub(measured.before[i].cpu_ticks) as f64
                / ticks_per_second as f64
        });
        Report {
            window,
            sent,
            forwarded: union.len(),
            delivered,
            expected: sent * args.clients as u64,
            duplicates: measured.clients.iter().map(|c| c.duplicates).sum(),
            garbled: measured.clients.iter().map(|c| c.garbled).sum(),
            per_client: measured.clients.iter().map(|c| c.received).collect(),
            unannounced: measured.clients.iter().map(|c| c.unannounced).collect(),
            latencies: Latencies::of(&mut latencies_ns),
            startup,
            idle,
            cpu,
            after: measured.after,
            sampled: measured.sampled,
            drained: measured.drained,
            registration: measured.registration,
            registered: measured.registered,
            udp_drops: measured.udp_drops,
            send_failures: measured.nodes.iter().map(|n| n.send_failures).sum(),
            ticks_per_second,
            errors,
        }
    }

    fn rate(&self, n: u64) -> String {
        format!("{:.1}/s", n as f64 / self.window.as_secs_f64())
    }

    fn print(&self, args: &BenchArgs, [gateway, broker]: [&Proc; 2]) {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let offered = match args.rate {
            0 => "as fast as possible".to_owned(),
            rate => format!("{} updates/s", count(rate)),
        };
        println!(
            "aiot bench: {} {} nodes -> gateway -> broker -> {} web clients",
            args.nodes,
            args.protocol.name(),
            args.clients
        );
        println!(
            "offered {offered}; {:.1} s warm-up, {:.1} s measured; {cores} CPU cores shared by \
             the gateway, the broker and this bench process",
            args.warmup,
            self.window.as_secs_f64()
        );
        println!();
        let lost = self.expected.saturating_sub(self.delivered);
        let percent = |part: u64, whole: u64| {
            if whole == 0 {
                0.0
            } else {
                part as f64 * 100.0 / whole as f64
            }
        };
        println!("throughput (updates sent in the measured window)");
        println!(
            "  sent by the nodes              {:>12}  {:>12}{}",
            count(self.sent),
            self.rate(self.sent),
            if args.rate == 0 {
                "   (the achieved rate)"
            } else {
                ""
            }
        );
        println!(
            "  delivered, distinct updates    {:>12}  {:>12}   (reached at least one client)",
            count(self.forwarded),
            self.rate(self.forwarded)
        );
        println!(
            "  delivered, client messages     {:>12}  {:>12}   ({} clients: {})",
            count(self.delivered),
            self.rate(self.delivered),
            args.clients,
            self.per_client
                .iter()
                .map(|&n| count(n))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "  lost                           {:>12}  {:>11.3}%   (of {} expected = sent x clients)",
            count(lost),
            percent(lost, self.expected),
            count(self.expected)
        );
        if self.duplicates > 0 || self.garbled > 0 {
            println!(
                "  duplicates {}, unreadable {}",
                count(self.duplicates),
                count(self.garbled)
            );
        }
        println!("  drain after sending stopped    {:>12}", ms(self.drained));
        if matches!(args.protocol, Protocol::Coap | Protocol::Mqttsn) {
            if let Some((overflows, errors)) = self.udp_drops {
                println!(
                    "  UDP receive buffer overflows   {:>12}   (machine-wide, in the window; {} receive errors)",
                    count(overflows),
                    count(errors)
                );
            }
            if self.send_failures > 0 {
                println!(
                    "  datagrams the nodes could not send: {}",
                    count(self.send_failures)
                );
            }
        }
        println!();
        if let Some([first, all]) = self.registration {
            let what = match args.protocol {
                Protocol::Websocket => "first connect -> every node heard of at the clients",
                Protocol::Coap => {
                    "first alive -> every node's new, ip, protocol, name, board, os at the clients"
                }
                Protocol::Mqtt => {
                    "first connect -> every node's new, id, protocol, name at the clients"
                }
                Protocol::Mqttsn => {
                    "first node/check -> every node's id, protocol, name at the clients"
                }
            };
            println!(
                "registration of {} nodes ({what})",
                count(args.nodes as u64)
            );
            println!(
                "  to the first client {}   to every client {}",
                ms(first),
                ms(all)
            );
            println!();
        }
        match &self.latencies {
            Some(l) => {
                println!(
                    "latency, node send -> client receive ({} samples)",
                    count(l.count as u64)
                );
                println!(
                    "  p50 {}   p90 {}   p99 {}   p99.9 {}   max {}",
                    ms(l.p50),
                    ms(l.p90),
                    ms(l.p99),
                    ms(l.p999),
                    ms(l.max)
                );
            }
            None => println!("latency: no update arrived"),
        }
        println!();
        let seconds = self.sampled.as_secs_f64();
        // Digits only as far as the tick resolution carries them.
        let per = |cpu: f64, n: u64| match cpu / n as f64 * 1e6 {
            _ if n == 0 => "-".to_owned(),
            micros if micros >= 10.0 => format!("{micros:.0} µs"),
            micros => format!("{micros:.2} µs"),
        };
        println!("{:<34}{:>16}{:>16}{:>16}", "", "gateway", "broker", "bench");
        println!(
            "{:<34}{:>16}{:>16}",
            "start to listening",
            ms(self.startup.listening[0]),
            ms(self.startup.listening[1])
        );
        println!(
            "{:<34}{:>16}",
            "start to uplink connected",
            ms(self.startup.uplinked)
        );
        println!(
            "{:<34}{:>16}{:>16}",
            "RSS idle",
            mib(self.idle[0].rss_kib),
            mib(self.idle[1].rss_kib)
        );
        println!(
            "{:<34}{:>16}{:>16}",
            "RSS with every node registered",
            mib(self.registered[0].rss_kib),
            mib(self.registered[1].rss_kib)
        );
        println!(
            "{:<34}{:>16}{:>16}{:>16}",
            "RSS after load",
            mib(self.after[0].rss_kib),
            mib(self.after[1].rss_kib),
            mib(self.after[2].rss_kib)
        );
        println!(
            "{:<34}{:>16}{:>16}{:>16}",
            "RSS peak",
            mib(self.after[0].peak_kib),
            mib(self.after[1].peak_kib),
            mib(self.after[2].peak_kib)
        );
        println!(
            "{:<34}{:>16}{:>16}{:>16}",
            "CPU time in the window",
            format!("{:.2} s", self.cpu[0]),
            format!("{:.2} s", self.cpu[1]),
            format!("{:.2} s", self.cpu[2])
        );
        println!(
            "{:<34}{:>16}{:>16}{:>16}",
            "CPU use (100% = one core)",
            format!("{:.1}%", self.cpu[0] / seconds * 100.0),
            format!("{:.1}%", self.cpu[1] / seconds * 100.0),
            format!("{:.1}%", self.cpu[2] / seconds * 100.0)
        );
        println!(
            "{:<34}{:>16}{:>16}",
            "CPU per update",
            per(self.cpu[0], self.sent),
            per(self.cpu[1], self.forwarded)
        );
        println!(
            "{:<34}{:>16}{:>16}",
            "CPU per client message",
            "",
            per(self.cpu[1], self.delivered)
        );
        println!();
        println!(
            "CPU per update: the gateway's CPU time in the window over the updates the nodes sent \
             in it\n  (each is read from a node, put through the hub and sent up the uplink); the \
             broker's over the\n  updates it forwarded (each read once from the gateway and sent \
             to every client). CPU times\n  come from /proc/PID/stat at {} ticks/s, so they are \
             good to ±{:.0} ms per process.",
            self.ticks_per_second,
            2000.0 / self.ticks_per_second as f64
        );
        let mut trouble = Vec::new();
        for proc in [gateway, broker] {
            for line in proc.warnings() {
                trouble.push(format!("{}: {line}", proc.role));
            }
        }
        let resyncs = broker.count_log("fell behind") + gateway.count_log("fell behind");
        if resyncs > 0 {
            println!("resynchronisations after falling behind: {resyncs}");
        }
        if !trouble.is_empty() {
            println!(
                "\n{} warnings from the children, the first ones:",
                trouble.len()
            );
            for line in trouble.iter().take(5) {
                println!("  {line}");
            }
        }
        if self.unannounced.iter().any(|&n| n > 0) {
            println!(
                "\nclients got updates of nodes they were never sent a `new` for: {:?} \
                 (per client); pyaiot dashboards ignore such nodes",
                self.unannounced
            );
        }
        if !self.errors.is_empty() {
            println!(
                "\n{} nodes or clients failed, the first ones:",
                self.errors.len()
            );
            for error in self.errors.iter().take(5) {
                println!("  {error}");
            }
        }
    }
}
