//! The CoAP side of the load: simulated nodes, each a UDP socket on its own loopback address
//! (the gateway reaches a node at its source IP on the node port, so all share one port), as
//! RIOT nodes behave: `POST /alive` (NON) with `alive:<uid>` until the gateway answers, serve
//! `GET /.well-known/core` and their resources to the gateway's discovery, then post NON
//! `POST /server` with `bench:<seq>:<send-time-ns>` on the plan's schedule. The gateway turns
//! each post into an `update` of endpoint `bench`, which the clients read as in the websocket
//! mode.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::load::{ENDPOINT, NodeReport, Plan, Shared, until};
use crate::proto::coap::MAX_DATAGRAM;
use crate::proto::coap::message::{
    Code, LINK_FORMAT, Message, TEXT_PLAIN, Token, Type, encode_uint, option,
};
use crate::sim::coap::{addresses, uid_for};

/// The first node's address; the others count on from it (127.77.0.1, 127.77.0.2, …, host
/// parts 0 and 255 skipped). Away from the 127.0.x.y ranges of `aiot node coap`, `aiot demo`
/// and the tests, so a bench can run beside them.
pub const FIRST_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 1);

/// The resources a node serves besides `bench`, which it only posts.
const RESOURCES: [&str; 3] = ["name", "board", "os"];

/// What a client must have heard of a node for it to count as registered and discovered:
/// what the gateway publishes for a new CoAP node (`ip`, `protocol`) and each resource read.
pub const DISCOVERED: &[&str] = &["ip", "protocol", "name", "board", "os"];

/// Time between `alive` posts while the gateway has not answered one (a NON may be lost).
const ALIVE_RETRY: Duration = Duration::from_secs(1);

/// The token of `alive` posts, to recognise the gateway's answer.
const ALIVE_TOKEN: &[u8] = b"al";

/// Attempts at finding a node port that is free on every node address.
const BIND_ATTEMPTS: usize = 8;

/// Raises the soft limit on open files to the hard limit when `sockets` more are needed.
pub fn allow_sockets(sockets: usize) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("cannot read RLIMIT_NOFILE")?;
    let wanted = (sockets as u64).saturating_add(256);
    if soft < wanted && soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("cannot raise RLIMIT_NOFILE")?;
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).context("cannot read RLIMIT_NOFILE")?;
    if soft < wanted {
        bail!(
            "{sockets} nodes need about {wanted} open files, and the limit is {soft} \
             (ulimit -n)"
        );
    }
    Ok(())
}

/// Binds `count` node sockets, one per loopback address from [`FIRST_ADDRESS`], all on one
/// port, which the first one picks; returns them and that port.
pub fn bind(count: usize) -> anyhow::Result<(Vec<std::net::UdpSocket>, u16)> {
    allow_sockets(count)?;
    let ips = addresses(IpAddr::V4(FIRST_ADDRESS), count)?;
    let mut last_error = None;
    for _ in 0..BIND_ATTEMPTS {
        let first = std::net::UdpSocket::bind(SocketAddr::new(ips[0], 0))
            .with_context(|| format!("cannot bind a CoAP node to {}", ips[0]))?;
        let port = first.local_addr()?.port();
        let mut sockets = Vec::with_capacity(count);
        sockets.push(first);
        for &ip in &ips[1..] {
            match std::net::UdpSocket::bind(SocketAddr::new(ip, port)) {
                Ok(socket) => sockets.push(socket),
                Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
                    last_error = Some(format!("{ip}:{port} is taken"));
                    break;
                }
                Err(error) => {
                    return Err(error).with_context(|| format!("cannot bind a CoAP node to {ip}"));
                }
            }
        }
        if sockets.len() == count {
            for socket in &sockets {
                socket.set_nonblocking(true)?;
            }
            return Ok((sockets, port));
        }
    }
    bail!(
        "no port free on all {count} node addresses from {FIRST_ADDRESS}: {}",
        last_error.unwrap_or_default()
    )
}

/// A NON `POST` of `payload` to `path`, content format text/plain.
fn post(mid: u16, token: Token, path: &str, payload: String) -> Vec<u8> {
    let mut message = Message::new(Type::NonConfirmable, Code::POST, mid, token);
    message.set_path(path);
    message.add_option(option::CONTENT_FORMAT, encode_uint(u64::from(TEXT_PLAIN)));
    message.payload = payload.into_bytes();
    message.encode()
}

/// `POST /alive` with `alive:<uid>`.
pub fn alive_post(mid: u16, uid: &str) -> Vec<u8> {
    let token = Token::new(ALIVE_TOKEN).expect("a short token");
    post(mid, token, "/alive", format!("alive:{uid}"))
}

/// `POST /server` with `bench:<seq>:<sent_ns>`.
pub fn update_post(mid: u16, seq: u64, sent_ns: u64) -> Vec<u8> {
    let token = Token::new(&mid.to_be_bytes()).expect("2 bytes fit");
    post(mid, token, "/server", format!("{ENDPOINT}:{seq}:{sent_ns}"))
}

/// The value of resource `name` of node `index`.
fn value(index: usize, name: &str) -> Option<String> {
    match name {
        "name" => Some(format!("bench node {index}")),
        "board" => Some("aiot-bench".into()),
        "os" => Some("aiot".into()),
        _ => None,
    }
}

/// What node `index` says to a message from the gateway: an answer to a request (piggybacked
/// on the ACK of a CON, a NON for a NON, `mid` then being the node's next own id), nothing for
/// the rest. Discovery asks once per resource, so nothing is cached: a retransmitted GET is
/// simply answered again.
pub fn answer(index: usize, request: &Message, mid: u16) -> Option<Message> {
    if !request.code.is_request() || request.kind == Type::Acknowledgement {
        return None;
    }
    let mut response = match request.kind {
        Type::Confirmable => Message::new(
            Type::Acknowledgement,
            Code::EMPTY,
            request.mid,
            request.token,
        ),
        Type::NonConfirmable => Message::new(Type::NonConfirmable, Code::EMPTY, mid, request.token),
        _ => return None,
    };
    let path = request.path().unwrap_or_default();
    let found = match path.as_str() {
        "/.well-known/core" => Some((RESOURCES.map(|r| format!("</{r}>")).join(","), LINK_FORMAT)),
        _ => value(index, path.trim_start_matches('/')).map(|v| (v, TEXT_PLAIN)),
    };
    match (request.code, found) {
        (Code::GET, Some((body, format))) => {
            response.code = Code::CONTENT;
            response.add_option(option::CONTENT_FORMAT, encode_uint(u64::from(format)));
            response.payload = body.into_bytes();
        }
        (_, Some(_)) => response.code = Code::METHOD_NOT_ALLOWED,
        (_, None) => response.code = Code::NOT_FOUND,
    }
    Some(response)
}

/// Whether `message` is the gateway's answer to an `alive` post.
fn answers_alive(message: &Message) -> bool {
    message.code.is_response() && message.token.as_bytes() == ALIVE_TOKEN
}

/// Node `index` of `nodes` on `socket`: says `alive` until answered, serves discovery, waits
/// for the plan, posts its share of the updates, and keeps serving until `stop`. Sequence
/// numbers as for websocket nodes: `index`, `index + nodes`, ...
pub async fn node(
    index: usize,
    nodes: usize,
    socket: std::net::UdpSocket,
    gateway: SocketAddr,
    shared: Arc<Shared>,
    mut plan_rx: watch::Receiver<Option<Plan>>,
    stop: CancellationToken,
) -> NodeReport {
    let mut report = NodeReport::default();
    let result: anyhow::Result<()> = async {
        let socket = UdpSocket::from_std(socket)?;
        let uid = uid_for(socket.local_addr()?.ip());
        let mut mid = (index as u16).wrapping_mul(4099);
        let mut next_mid = move || {
            mid = mid.wrapping_add(1);
            mid
        };
        let mut answered = false;
        let mut next_alive = tokio::time::Instant::now();
        let mut plan: Option<Plan> = None;
        let mut sending = true;
        let mut buffer = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            let alive_at = (!answered).then_some(next_alive);
            let update_at = report.next_due(plan, &mut sending, index, nodes, &shared);
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                readable = socket.readable() => {
                    readable?;
                    loop {
                        let (n, from) = match socket.try_recv_from(&mut buffer) {
                            Ok(received) => received,
                            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(error) => return Err(error.into()),
                        };
                        let Ok(message) = Message::decode(&buffer[..n.min(MAX_DATAGRAM)]) else {
                            continue;
                        };
                        if answers_alive(&message) {
                            answered = true;
                        } else if let Some(response) = answer(index, &message, next_mid()) {
                            if socket.send_to(&response.encode(), from).await.is_err() {
                                report.send_failures += 1;
                            }
                        }
                    }
                }
                changed = plan_rx.changed(), if plan.is_none() => {
                    if changed.is_err() {
                        bail!("the controller went away");
                    }
                    plan = *plan_rx.borrow_and_update();
                }
                () = until(alive_at) => {
                    shared.hello();
                    if socket.send_to(&alive_post(next_mid(), &uid), gateway).await.is_err() {
                        report.send_failures += 1;
                    }
                    next_alive = tokio::time::Instant::now() + ALIVE_RETRY;
                }
                () = until(update_at) => {
                    let Some(plan) = plan else { continue };
                    let sent_ns = shared.now_ns();
                    // As for websocket nodes: on a schedule every update due before the end
                    // is sent, flat out the clock decides.
                    if plan.period.is_none() && sent_ns >= plan.end_ns {
                        sending = false;
                        continue;
                    }
                    let seq = report.sent * nodes as u64 + index as u64;
                    let datagram = update_post(next_mid(), seq, sent_ns);
                    if socket.send_to(&datagram, gateway).await.is_err() {
                        report.send_failures += 1;
                    }
                    report.count_sent(&plan, sent_ns, &shared);
                    if plan.period.is_none() {
                        // UDP never pushes back: let the other nodes and the clients run.
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
    }
    .await;
    if let Err(error) = result {
        report.error = Some(format!("CoAP node {index}: {error:#}"));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::coap::payload;

    #[test]
    fn posts_are_non_and_carry_the_payloads_the_gateway_reads() {
        let alive = Message::decode(&alive_post(7, "a10700007f4d0001")).expect("valid");
        assert_eq!(
            (alive.kind, alive.code, alive.mid),
            (Type::NonConfirmable, Code::POST, 7)
        );
        assert_eq!(alive.path().as_deref(), Some("/alive"));
        let read = payload::alive(&alive.payload).expect("the gateway reads it");
        assert_eq!((read.uid, read.reset), ("a10700007f4d0001", false));
        let update = Message::decode(&update_post(8, 42, 1_234_567)).expect("valid");
        assert_eq!(update.kind, Type::NonConfirmable);
        assert_eq!(update.path().as_deref(), Some("/server"));
        let (endpoint, value) = payload::server(&update.payload).expect("the gateway reads it");
        assert_eq!(endpoint, ENDPOINT);
        assert_eq!(
            super::super::load::parse_value(value),
            Some((42, 1_234_567))
        );
    }

    #[test]
    fn serves_discovery_and_recognises_the_alive_answer() {
        let get = |kind, path: &str| {
            let mut m = Message::new(kind, Code::GET, 99, Token::new(b"tk").expect("token"));
            m.set_path(path);
            m
        };
        let core = answer(3, &get(Type::Confirmable, "/.well-known/core"), 1).expect("answer");
        assert_eq!(
            (core.kind, core.code, core.mid),
            (Type::Acknowledgement, Code::CONTENT, 99)
        );
        assert_eq!(core.token.as_bytes(), b"tk");
        assert_eq!(core.payload, b"</name>,</board>,</os>");
        let name = answer(3, &get(Type::NonConfirmable, "/name"), 5).expect("answer");
        assert_eq!(
            (name.kind, name.code, name.mid),
            (Type::NonConfirmable, Code::CONTENT, 5)
        );
        assert_eq!(name.payload, b"bench node 3");
        assert_eq!(
            answer(3, &get(Type::Confirmable, "/bench"), 1).map(|m| m.code),
            Some(Code::NOT_FOUND)
        );
        let mut put = get(Type::Confirmable, "/os");
        put.code = Code::PUT;
        assert_eq!(
            answer(3, &put, 1).map(|m| m.code),
            Some(Code::METHOD_NOT_ALLOWED)
        );
        // Responses are not requests: no answer, and the alive answer is told apart.
        let mut ack = Message::new(
            Type::NonConfirmable,
            Code::CHANGED,
            1,
            Token::new(ALIVE_TOKEN).expect("token"),
        );
        assert!(answer(3, &ack, 1).is_none());
        assert!(answers_alive(&ack));
        ack.token = Token::new(b"xy").expect("token");
        assert!(!answers_alive(&ack));
        // Every resource discovered is one a client waits for.
        for resource in RESOURCES {
            assert!(DISCOVERED.contains(&resource));
        }
    }
}
