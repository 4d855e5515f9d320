//! Simulated CoAP nodes, like pyaiot's `coap-test-node.py` and RIOT's `node_leds`, many per
//! process. Each node has its own UDP socket on its own address (127.x.y.z, one per node,
//! since the gateway reaches a node at its source IP on the node port); it posts
//! `reset:<uid>` then `alive:<uid>` to the gateway's `/alive`, `alive:<uid>` every
//! `alive_interval`, readings to `/server` every `interval`, and serves `/.well-known/core`,
//! its resources (Block2 for long ones) and `PUT /led`.
//!
//! It speaks through the same message layer as the gateway ([`Endpoint`]): confirmable posts
//! are retransmitted, duplicate requests are answered from the cache.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use indexmap::IndexMap;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::proto::coap::MAX_DATAGRAM;
use crate::proto::coap::exchange::{Endpoint, Event, IncomingRequest, Params, Request};
use crate::proto::coap::message::{
    Block, Code, LINK_FORMAT, Message, TEXT_PLAIN, Token, Type, encode_uint, option,
};
use crate::runtime::Supervisor;

/// Which resources the nodes have, besides `name`, `board` and `os`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resources {
    pub led: bool,
    pub temperature: bool,
    pub pressure: bool,
    pub imu: bool,
    /// A long text resource (a script, as pyaiot's `js`), read with Block2.
    pub js: bool,
    /// pyaiot's robot: an action letter, read and written with PUT.
    pub robot: bool,
    /// A firmware version, served and posted (pyaiot's test node posts random ones).
    pub version: bool,
}

#[derive(Debug, Clone)]
pub struct CoapNodes {
    /// The gateway's CoAP socket.
    pub gateway: SocketAddr,
    pub count: usize,
    /// The first node's address; the others follow (127.0.1.1, 127.0.1.2, …).
    pub first_address: IpAddr,
    /// The port every node serves on (the gateway's `coap.node_port`).
    pub node_port: u16,
    pub resources: Resources,
    /// Time between readings posted to `/server`.
    pub interval: Duration,
    /// Time between `alive` posts (RIOT: 30 s).
    pub alive_interval: Duration,
    /// Post as confirmable messages (retransmitted until acknowledged); RIOT posts NON.
    pub confirmable: bool,
    /// Largest block served (16..=1024, a power of two); longer values go in Block2.
    pub block_size: usize,
}

/// The addresses of `count` nodes from `first`: IPv4 counts on, skipping host parts 0 and
/// 255; IPv6 has only `::1` on loopback, so one node.
pub fn addresses(first: IpAddr, count: usize) -> anyhow::Result<Vec<IpAddr>> {
    match first {
        IpAddr::V4(v4) => {
            let mut next = u32::from(v4);
            let mut all = Vec::with_capacity(count);
            while all.len() < count {
                let ip = Ipv4Addr::from(next);
                if !matches!(ip.octets()[3], 0 | 255) {
                    all.push(IpAddr::V4(ip));
                }
                next = next
                    .checked_add(1)
                    .context("too many nodes for the address range")?;
            }
            Ok(all)
        }
        IpAddr::V6(_) if count <= 1 => Ok(vec![first; count]),
        IpAddr::V6(_) => anyhow::bail!("IPv6 simulated nodes: one per address, so --count 1"),
    }
}

/// The node's uid: 16 hex digits, like a RIOT link-layer id, derived from its address.
pub fn uid_for(ip: IpAddr) -> String {
    let low = match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) as u64) & 0xffff_ffff_ffff,
    };
    format!("{:016x}", 0xa107_0000_0000_0000u64 | low)
}

/// Raises the soft open-files limit to the hard one when thousands of sockets are wanted.
fn allow_sockets(count: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let wanted = (count as u64).saturating_add(256);
    if soft < wanted && soft < hard {
        let raised = hard.min(wanted.max(soft));
        if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, raised, hard) {
            tracing::warn!(%error, soft, hard, "cannot raise the open-files limit");
        }
    }
}

/// Binds every node's socket, so that a taken address fails before anything starts.
pub fn bind(nodes: &CoapNodes) -> anyhow::Result<Vec<UdpSocket>> {
    allow_sockets(nodes.count);
    addresses(nodes.first_address, nodes.count)?
        .into_iter()
        .map(|ip| {
            let addr = SocketAddr::new(ip, nodes.node_port);
            let socket = std::net::UdpSocket::bind(addr)
                .with_context(|| format!("cannot bind a simulated CoAP node to {addr}"))?;
            socket.set_nonblocking(true)?;
            Ok(UdpSocket::from_std(socket)?)
        })
        .collect()
}

/// Starts one task per node; they run until shutdown.
pub fn start(supervisor: &Supervisor, nodes: CoapNodes, sockets: Vec<UdpSocket>) {
    tracing::info!(
        count = sockets.len(),
        gateway = %nodes.gateway,
        first = %nodes.first_address,
        node_port = nodes.node_port,
        "starting simulated CoAP nodes"
    );
    let nodes = Arc::new(nodes);
    // Nodes booting at once would all post in the same millisecond; spread them a little.
    let spread_ms = (sockets.len() as u64).min(1000);
    for (index, socket) in sockets.into_iter().enumerate() {
        let nodes = nodes.clone();
        let shutdown = supervisor.shutdown_token();
        let delay = Duration::from_millis(fastrand::u64(0..=spread_ms));
        supervisor.spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            if let Err(error) = run_node(index, socket, &nodes, shutdown).await {
                tracing::warn!(index, "simulated CoAP node stopped: {error:#}");
            }
        });
    }
}

/// The script pyaiot's test node serves as `js`: long enough for several blocks.
const SCRIPT: &str = "this.ledorange = saul.get_by_name(\"led\");\n\
value = 0;\ncount = 10;\n\n\
this.blink = function () {\n    if (count > 0) {\n        value = (value + 1) % 2;\n        \
this.ledorange.write(value);\n        t = timer.setTimeout(this.blink, 1000000);\n        \
count = count -1;\n    }\n}\n\nthis.blink();\n";

/// An answer: code, payload, options.
type Answer = (Code, Vec<u8>, Vec<(u16, Vec<u8>)>);

/// One node's resources and what it does with requests.
struct SimNode {
    uid: String,
    values: IndexMap<String, String>,
    which: Resources,
    block_szx: u8,
}

fn imu() -> String {
    let v = || fastrand::i32(-500..500);
    format!(
        r#"[{{"type": "acc", "values": [{}, {}, {}]}}, {{"type": "mag", "values": [{}, {}, {}]}}, {{"type": "gyro", "values": [{}, {}, {}]}}]"#,
        v(),
        v(),
        v(),
        v(),
        v(),
        v(),
        v(),
        v(),
        v()
    )
}

impl SimNode {
    fn new(index: usize, uid: String, which: Resources, block_size: usize) -> SimNode {
        let mut values = IndexMap::new();
        values.insert("name".into(), format!("aiot-coap-{}", index + 1));
        values.insert("board".into(), "simulated".into());
        values.insert("os".into(), "aiot".into());
        if which.led {
            values.insert("led".into(), "0".into());
        }
        if which.js {
            values.insert("js".into(), SCRIPT.repeat(4));
        }
        if which.robot {
            values.insert("robot".into(), "s".into());
        }
        if which.version {
            values.insert("version".into(), "1.0.0".into());
        }
        let block_szx = (block_size.clamp(16, 1024) / 16).ilog2() as u8;
        let mut node = SimNode {
            uid,
            values,
            which,
            block_szx,
        };
        node.read_sensors();
        node
    }

    /// New readings in pyaiot's test-node formats; returns the `/server` payloads.
    fn read_sensors(&mut self) -> Vec<String> {
        let mut readings = Vec::new();
        if self.which.temperature {
            readings.push(("temperature", format!("{}°C", fastrand::i32(20..30))));
        }
        if self.which.pressure {
            readings.push(("pressure", format!("{}hPa", fastrand::i32(990..1015))));
        }
        if self.which.imu {
            readings.push(("imu", imu()));
        }
        if self.which.version {
            let digit = || fastrand::u8(1..9);
            readings.push(("version", format!("{}.{}.{}", digit(), digit(), digit())));
        }
        readings
            .into_iter()
            .map(|(name, value)| {
                let post = format!("{name}:{value}");
                self.values.insert(name.into(), value);
                post
            })
            .collect()
    }

    fn link_format(&self) -> String {
        self.values
            .keys()
            .map(|name| format!("</{name}>"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Answers a request.
    fn serve(&mut self, request: &Message) -> Answer {
        let Some(path) = request.path() else {
            return (Code::BAD_REQUEST, Vec::new(), Vec::new());
        };
        let name = path.trim_start_matches('/');
        let (body, format) = match (request.code, path.as_str()) {
            (Code::GET, "/.well-known/core") => (self.link_format(), LINK_FORMAT),
            (Code::GET, _) if self.values.contains_key(name) => {
                (self.values[name].clone(), TEXT_PLAIN)
            }
            (Code::PUT, "/led") if self.which.led => {
                return match &request.payload[..] {
                    b"0" | b"1" => {
                        let value = String::from_utf8_lossy(&request.payload).into_owned();
                        tracing::debug!(uid = %self.uid, %value, "simulated CoAP node: LED switched");
                        self.values.insert("led".into(), value.clone());
                        (
                            Code::CHANGED,
                            format!("led:{value}").into_bytes(),
                            Vec::new(),
                        )
                    }
                    _ => (Code::BAD_REQUEST, Vec::new(), Vec::new()),
                };
            }
            (Code::PUT, "/robot") if self.which.robot => {
                return match std::str::from_utf8(&request.payload) {
                    Ok(action) if !action.is_empty() && action.len() <= 16 => {
                        self.values.insert("robot".into(), action.to_owned());
                        (Code::CHANGED, Vec::new(), Vec::new())
                    }
                    _ => (Code::BAD_REQUEST, Vec::new(), Vec::new()),
                };
            }
            (_, _) if self.values.contains_key(name) || path == "/.well-known/core" => {
                return (Code::METHOD_NOT_ALLOWED, Vec::new(), Vec::new());
            }
            _ => return (Code::NOT_FOUND, Vec::new(), Vec::new()),
        };
        let mut options = vec![(option::CONTENT_FORMAT, encode_uint(u64::from(format)))];
        let asked = request.block2().ok().flatten();
        match block(body.as_bytes(), asked, self.block_szx) {
            Some((payload, block)) => {
                if let Some(block) = block {
                    options.push((option::BLOCK2, block.encode()));
                }
                (Code::CONTENT, payload, options)
            }
            None => (Code::BAD_OPTION, Vec::new(), Vec::new()),
        }
    }
}

/// The part of `body` a (Block2) request asks for, at most `16 << max_szx` bytes; `None` for
/// a block past the end.
fn block(body: &[u8], asked: Option<Block>, max_szx: u8) -> Option<(Vec<u8>, Option<Block>)> {
    let max = 16usize << max_szx;
    if asked.is_none() && body.len() <= max {
        return Some((body.to_vec(), None));
    }
    let (start, szx) = match asked {
        Some(b) => (b.num as usize * b.size(), b.szx.min(max_szx)),
        None => (0, max_szx),
    };
    let size = 16usize << szx;
    if start > body.len() || (start == body.len() && start > 0) {
        return None;
    }
    let end = (start + size).min(body.len());
    let block = Block {
        num: (start / size) as u32,
        more: end < body.len(),
        szx,
    };
    Some((body[start..end].to_vec(), Some(block)))
}

/// Posts waiting to go out; readings are dropped first when a gateway does not answer.
const POST_QUEUE: usize = 8;

async fn run_node(
    index: usize,
    socket: UdpSocket,
    config: &CoapNodes,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let local = socket.local_addr()?;
    let uid = uid_for(local.ip());
    let mut node = SimNode::new(index, uid.clone(), config.resources, config.block_size);
    let mut endpoint = Endpoint::new(Params::default(), fastrand::u64(..));
    let mut posts: VecDeque<(&'static str, String)> = VecDeque::new();
    posts.push_back(("/alive", format!("reset:{uid}")));
    posts.push_back(("/alive", format!("alive:{uid}")));
    let mut in_flight = None;
    let mut non_mid = fastrand::u16(..);
    let start = tokio::time::Instant::now();
    let mut alive = tokio::time::interval_at(start + config.alive_interval, config.alive_interval);
    let mut readings = tokio::time::interval_at(start + config.interval, config.interval);
    let sensors = config.resources.temperature || config.resources.pressure || config.resources.imu;
    let mut buffer = vec![0u8; MAX_DATAGRAM + 1];
    let far = Duration::from_secs(3600);
    loop {
        while let Some(event) = endpoint.poll_event() {
            match event {
                Event::Request(request) => answer(&mut endpoint, &mut node, &request),
                Event::Response { id, outcome, .. } => {
                    if in_flight == Some(id) {
                        in_flight = None;
                    }
                    if let Err(failure) = outcome {
                        tracing::debug!(%uid, "simulated CoAP node: post failed: {failure}");
                    }
                }
                Event::Ignored { .. } => {}
            }
        }
        while posts.len() > POST_QUEUE {
            // Keep the alive posts; drop the oldest reading.
            match posts.iter().position(|(path, _)| *path == "/server") {
                Some(at) => posts.remove(at),
                None => posts.pop_front(),
            };
        }
        let now = tokio::time::Instant::now().into_std();
        if config.confirmable {
            if in_flight.is_none() {
                if let Some((path, payload)) = posts.pop_front() {
                    let request = Request {
                        method: Code::POST,
                        path: path.into(),
                        payload: payload.into_bytes(),
                        content_format: Some(TEXT_PLAIN),
                    };
                    in_flight = Some(endpoint.request(config.gateway, request, now));
                }
            }
        } else {
            // As RIOT does: NON posts, a fresh id and token each, replies ignored.
            while let Some((path, payload)) = posts.pop_front() {
                non_mid = non_mid.wrapping_add(1);
                let token = Token::new(&non_mid.to_be_bytes()).expect("2 bytes fit");
                let mut message = Message::new(Type::NonConfirmable, Code::POST, non_mid, token);
                message.set_path(path);
                message.add_option(option::CONTENT_FORMAT, Vec::new());
                message.payload = payload.into_bytes();
                send(&socket, config.gateway, &message.encode()).await;
            }
        }
        while let Some(transmit) = endpoint.poll_transmit() {
            send(&socket, transmit.to, &transmit.datagram).await;
        }
        let now = tokio::time::Instant::now();
        let deadline = endpoint
            .poll_timeout()
            .map_or(now + far, tokio::time::Instant::from_std);
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            received = socket.recv_from(&mut buffer) => {
                let (n, from) = received?;
                if n <= MAX_DATAGRAM {
                    endpoint.handle(from, &buffer[..n], tokio::time::Instant::now().into_std());
                }
            }
            _ = alive.tick() => posts.push_back(("/alive", format!("alive:{uid}"))),
            _ = readings.tick(), if sensors => {
                for reading in node.read_sensors() {
                    posts.push_back(("/server", reading));
                }
            }
            () = tokio::time::sleep_until(deadline) => endpoint.handle_timeout(deadline.into_std()),
        }
    }
}

fn answer(endpoint: &mut Endpoint, node: &mut SimNode, request: &IncomingRequest) {
    let (code, payload, options) = node.serve(&request.message);
    endpoint.respond_with(request, code, payload, &options);
}

async fn send(socket: &UdpSocket, to: SocketAddr, datagram: &[u8]) {
    if let Err(error) = socket.send_to(datagram, to).await {
        tracing::debug!(%to, %error, "simulated CoAP node: send failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_skip_network_and_broadcast_parts() {
        let all = addresses("127.0.1.254".parse().expect("ip"), 3).expect("addresses");
        assert_eq!(
            all,
            ["127.0.1.254", "127.0.2.1", "127.0.2.2"].map(|a| a.parse::<IpAddr>().expect("ip"))
        );
        assert!(addresses("::1".parse().expect("ip"), 2).is_err());
        assert_eq!(
            uid_for("127.0.1.1".parse().expect("ip")),
            "a10700007f000101"
        );
    }

    fn get(path: &str, block: Option<Block>) -> Message {
        let mut message = Message::new(Type::Confirmable, Code::GET, 1, Token::default());
        message.set_path(path);
        if let Some(block) = block {
            message.add_option(option::BLOCK2, block.encode());
        }
        message
    }

    #[test]
    fn serves_discovery_values_blocks_and_the_led() {
        let which = Resources {
            led: true,
            js: true,
            ..Resources::default()
        };
        let mut node = SimNode::new(0, "u".into(), which, 64);
        let (code, payload, _) = node.serve(&get("/.well-known/core", None));
        assert_eq!(code, Code::CONTENT);
        assert_eq!(payload, b"</name>,</board>,</os>,</led>,</js>");
        let script = node.values["js"].clone();
        let mut body = Vec::new();
        for num in 0.. {
            let (code, payload, options) = node.serve(&get(
                "/js",
                (num > 0).then_some(Block {
                    num,
                    more: false,
                    szx: 2,
                }),
            ));
            assert_eq!(code, Code::CONTENT);
            body.extend(payload);
            let block = options
                .iter()
                .find(|(n, _)| *n == option::BLOCK2)
                .and_then(|(_, v)| Block::decode(v))
                .expect("Block2");
            assert_eq!((block.num, block.szx), (num, 2));
            if !block.more {
                break;
            }
        }
        assert_eq!(body, script.as_bytes());
        let mut put = get("/led", None);
        put.code = Code::PUT;
        put.payload = b"1".to_vec();
        assert_eq!(node.serve(&put).0, Code::CHANGED);
        assert_eq!(node.values["led"], "1");
        put.payload = b"on".to_vec();
        assert_eq!(node.serve(&put).0, Code::BAD_REQUEST);
        assert_eq!(node.serve(&get("/nothing", None)).0, Code::NOT_FOUND);
    }

    #[test]
    fn the_robot_takes_actions_and_versions_are_served_and_posted() {
        let which = Resources {
            robot: true,
            version: true,
            ..Resources::default()
        };
        let mut node = SimNode::new(0, "u".into(), which, 1024);
        let (_, payload, _) = node.serve(&get("/.well-known/core", None));
        assert_eq!(payload, b"</name>,</board>,</os>,</robot>,</version>");
        assert_eq!(node.serve(&get("/robot", None)).1, b"s");
        let mut put = get("/robot", None);
        put.code = Code::PUT;
        put.payload = b"f".to_vec();
        assert_eq!(node.serve(&put).0, Code::CHANGED);
        assert_eq!(node.serve(&get("/robot", None)).1, b"f");
        put.payload = Vec::new();
        assert_eq!(node.serve(&put).0, Code::BAD_REQUEST);
        let posts = node.read_sensors();
        assert!(
            posts
                .iter()
                .any(|p| p.starts_with("version:") && p.matches('.').count() == 2),
            "{posts:?}"
        );
    }
}
