//! The CoAP gateway's state, without sockets: which nodes exist, where they are, when they were
//! last heard of, what is being asked of each, and what the hub must hear (protocol.md §2).
//!
//! It owns the endpoint's message layer ([`Endpoint`]) and decides everything above it:
//! `/alive` and `/server` are answered at once; a new (or reset) node is announced (`new`,
//! `ip`, `protocol`) and then discovered (`/.well-known/core`, then each resource) by at most
//! `discovery_concurrency` nodes at a time; each node has one request in flight at a time
//! (NSTART = 1) and a short queue behind it; a node silent for `max_time` goes `out`.
//! The socket loop in [`super`] feeds it datagrams, writes and the time, and carries out
//! what it queues: datagrams to send and messages for the hub.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::proto::broker::{Dst, NodeMessage, Write};
use crate::proto::coap::exchange::{
    Endpoint, Event, Failure, IncomingRequest, Params, Request, RequestId, Response, Transmit,
};
use crate::proto::coap::message::{Code, Message, Token, Type};
use crate::proto::coap::{link_format, payload};

/// The `protocol` resource of every CoAP node.
pub const PROTOCOL: &str = "CoAP";

/// How often silent nodes are looked for. Removal is at most this late.
const SWEEP: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Settings {
    /// Where nodes serve their resources (RIOT: 5683), whatever port they post from.
    pub node_port: u16,
    /// Scope for link-local IPv6 nodes whose address came without one (the `--interface`).
    pub scope_id: Option<u32>,
    pub max_nodes: usize,
    pub max_time: Duration,
    /// Nodes being discovered at once; the others wait their turn.
    pub discovery_concurrency: usize,
    /// Nodes waiting for their turn at most; a new node past this is refused with 5.03, so a
    /// flood of new addresses cannot queue unbounded work (it registers at a later alive).
    pub max_pending_discoveries: usize,
    /// Resources read from one node's discovery at most.
    pub max_resources: usize,
    /// Writes waiting behind a node's request in flight; more are dropped and logged.
    pub node_queue: usize,
    pub exchange: Params,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            node_port: crate::proto::coap::DEFAULT_PORT,
            scope_id: None,
            max_nodes: crate::proto::limits::MAX_NODES,
            max_time: Duration::from_secs(120),
            discovery_concurrency: 16,
            max_pending_discoveries: crate::proto::limits::MAX_PENDING_DISCOVERIES,
            max_resources: crate::proto::limits::MAX_RESOURCES,
            node_queue: 16,
            exchange: Params::default(),
        }
    }
}

/// The same address whether it came over IPv4 or as IPv4-mapped IPv6 on a dual-stack socket.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

#[derive(Debug, Clone)]
enum Job {
    Discover,
    Read(String),
    Write { endpoint: String, value: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Discovery {
    /// Never done, or the last one failed: the next alive tries again.
    Due,
    Waiting,
    Running {
        ok: bool,
        /// A reset came while running: start over when done.
        again: bool,
    },
    Done,
}

#[derive(Debug)]
struct Node {
    /// Where its posts come from; its resources are at this IP on the node port.
    addr: SocketAddr,
    last_seen: Instant,
    current: Option<(RequestId, Job)>,
    jobs: VecDeque<Job>,
    discovery: Discovery,
}

/// Counts of what happened, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub registered: u64,
    pub refused: u64,
    /// New nodes refused with 5.03 because `max_pending_discoveries` were waiting.
    pub pending_refused: u64,
    /// Resources past `max_resources` ignored in discoveries.
    pub resources_refused: u64,
    /// Requests refused with 5.03 because the hub was not keeping up: readings lost unless
    /// the node retries (RIOT's NON posts are never retried).
    pub busy: u64,
    pub timed_out: u64,
    pub ignored: u64,
}

pub struct Nodes {
    settings: Settings,
    endpoint: Endpoint,
    nodes: HashMap<String, Node>,
    by_ip: HashMap<IpAddr, String>,
    in_flight: HashMap<RequestId, String>,
    discovering: usize,
    waiting: VecDeque<String>,
    publish: VecDeque<NodeMessage>,
    next_sweep: Option<Instant>,
    /// Set by the socket loop while the hub falls behind: new work is refused with 5.03.
    backpressure: bool,
    /// Whether the refusal of a node for a full table was logged since the table last had room.
    full_logged: bool,
    /// The same for a full discovery queue: a flood of new addresses has no single offender,
    /// so it is logged once per flood (until the queue has room again).
    pending_logged: bool,
    stats: Stats,
}

fn update(uid: &str, endpoint: &str, value: impl Into<Value>) -> NodeMessage {
    NodeMessage::Update {
        uid: uid.to_owned(),
        endpoint: endpoint.to_owned(),
        data: value.into(),
        dst: Dst::All,
    }
}

impl Nodes {
    pub fn new(settings: Settings, seed: u64) -> Nodes {
        Nodes {
            endpoint: Endpoint::new(settings.exchange.clone(), seed),
            settings,
            nodes: HashMap::new(),
            by_ip: HashMap::new(),
            in_flight: HashMap::new(),
            discovering: 0,
            waiting: VecDeque::new(),
            publish: VecDeque::new(),
            next_sweep: None,
            backpressure: false,
            full_logged: false,
            pending_logged: false,
            stats: Stats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn set_backpressure(&mut self, on: bool) {
        if on != self.backpressure {
            tracing::debug!(on, "CoAP backpressure from the hub");
        }
        self.backpressure = on;
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.endpoint.poll_transmit()
    }

    pub fn poll_publish(&mut self) -> Option<NodeMessage> {
        self.publish.pop_front()
    }

    pub fn poll_timeout(&self) -> Instant {
        let sweep = self.next_sweep.unwrap_or_else(Instant::now);
        match self.endpoint.poll_timeout() {
            Some(at) => at.min(sweep),
            None => sweep,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.endpoint.handle_timeout(now);
        self.drain(now);
        match self.next_sweep {
            Some(at) if at > now => {}
            _ => {
                self.sweep(now);
                self.next_sweep = Some(now + SWEEP);
            }
        }
    }

    /// A datagram from `peer` (canonical, see [`canonical`]).
    pub fn handle_datagram(&mut self, peer: SocketAddr, datagram: &[u8], now: Instant) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + SWEEP);
        }
        self.endpoint.handle(peer, datagram, now);
        self.drain(now);
    }

    /// A datagram longer than [`crate::proto::coap::MAX_DATAGRAM`]: `head` is what was read.
    /// A confirmable request is answered 4.13; anything else is dropped.
    pub fn handle_oversize(&mut self, peer: SocketAddr, head: &[u8], now: Instant) {
        self.stats.ignored += 1;
        tracing::debug!(%peer, bytes = head.len(), "CoAP datagram too long, refused");
        let Some(&[first, code, high, low]) = head.get(..4) else {
            return;
        };
        let token_len = usize::from(first & 0x0f);
        let con = first >> 4 == 0b0100;
        let Some(token) = head.get(4..4 + token_len).and_then(Token::new) else {
            return;
        };
        if con && Code(code).is_request() {
            let message = Message::new(
                Type::Confirmable,
                Code(code),
                u16::from_be_bytes([high, low]),
                token,
            );
            let request = IncomingRequest { peer, message };
            self.endpoint
                .respond(&request, Code::REQUEST_ENTITY_TOO_LARGE, Vec::new());
        }
        let _ = now;
    }

    /// A client's write for one of our nodes: `PUT /<endpoint>` with the payload, queued
    /// behind the node's request in flight.
    pub fn write(&mut self, write: Write, now: Instant) {
        let Write {
            uid,
            endpoint,
            payload,
        } = write;
        let Some(node) = self.nodes.get_mut(&uid) else {
            tracing::debug!(%uid, "write for a CoAP node that is gone");
            return;
        };
        let endpoint = endpoint.trim_start_matches('/').to_owned();
        if endpoint.is_empty() || endpoint.chars().any(char::is_control) {
            tracing::debug!(%uid, %endpoint, "write to an invalid endpoint dropped");
            return;
        }
        let value = match payload {
            Value::String(text) => text,
            other => other.to_string(),
        };
        if node.jobs.len() >= self.settings.node_queue {
            tracing::warn!(%uid, %endpoint, "write dropped: the node has {} requests waiting", node.jobs.len());
            return;
        }
        node.jobs.push_back(Job::Write { endpoint, value });
        self.pump(&uid, now);
    }

    fn drain(&mut self, now: Instant) {
        while let Some(event) = self.endpoint.poll_event() {
            match event {
                Event::Request(request) => self.on_request(request, now),
                Event::Response { id, outcome, .. } => self.on_response(id, outcome, now),
                Event::Ignored { peer, reason } => {
                    self.stats.ignored += 1;
                    tracing::debug!(%peer, "CoAP datagram ignored: {reason}");
                }
            }
        }
    }

    fn refuse(&mut self, request: &IncomingRequest, code: Code, why: &str) {
        self.stats.ignored += 1;
        tracing::debug!(peer = %request.peer, %code, "CoAP request refused: {why}");
        self.endpoint
            .respond(request, code, why.as_bytes().to_vec());
    }

    fn on_request(&mut self, request: IncomingRequest, now: Instant) {
        let path = request.message.path();
        let method = request.message.code;
        match path.as_deref() {
            Some("/alive" | "/server") if method != Code::POST => {
                self.refuse(&request, Code::METHOD_NOT_ALLOWED, "POST only");
            }
            Some("/alive") => match payload::alive(&request.message.payload) {
                Err(why) => self.refuse(&request, Code::BAD_REQUEST, &why.to_string()),
                Ok(alive) => {
                    let uid = alive.uid.to_owned();
                    let known = self.nodes.contains_key(&uid);
                    if !known && self.nodes.len() >= self.settings.max_nodes {
                        self.stats.refused += 1;
                        if !self.full_logged {
                            self.full_logged = true;
                            tracing::warn!(%uid, max = self.settings.max_nodes, "CoAP node refused: the node table is full (further refusals are logged at debug)");
                        }
                        return self.refuse(&request, Code::SERVICE_UNAVAILABLE, "too many nodes");
                    }
                    if !known && self.discovery_queue_full() {
                        self.stats.pending_refused += 1;
                        if !std::mem::replace(&mut self.pending_logged, true) {
                            tracing::warn!(%uid, peer = %request.peer, max = self.settings.max_pending_discoveries, "CoAP node refused: too many nodes wait for their discovery (coap.max_pending_discoveries); further refusals are counted, logged again once the queue had room");
                        }
                        return self.refuse(
                            &request,
                            Code::SERVICE_UNAVAILABLE,
                            "busy: too many discoveries pending",
                        );
                    }
                    if !known && self.backpressure {
                        self.stats.busy += 1;
                        return self.refuse(&request, Code::SERVICE_UNAVAILABLE, "busy");
                    }
                    // Answer first: discovery never delays the node's answer.
                    self.endpoint.respond(&request, Code::CHANGED, Vec::new());
                    self.alive(&uid, alive.reset, request.peer, now);
                }
            },
            Some("/server") => {
                let Some(uid) = self.by_ip.get(&request.peer.ip()).cloned() else {
                    return self.refuse(
                        &request,
                        Code::FORBIDDEN,
                        "unknown node: POST /alive first",
                    );
                };
                if self.backpressure {
                    self.stats.busy += 1;
                    return self.refuse(&request, Code::SERVICE_UNAVAILABLE, "busy");
                }
                match payload::server(&request.message.payload) {
                    Err(why) => self.refuse(&request, Code::BAD_REQUEST, &why.to_string()),
                    Ok((endpoint, value)) => {
                        let message = update(&uid, endpoint, value);
                        self.endpoint.respond(&request, Code::CHANGED, Vec::new());
                        if let Some(node) = self.nodes.get_mut(&uid) {
                            node.last_seen = now;
                        }
                        self.publish.push_back(message);
                    }
                }
            }
            Some(_) => self.refuse(&request, Code::NOT_FOUND, "no such resource"),
            None => self.refuse(&request, Code::BAD_REQUEST, "invalid Uri-Path"),
        }
    }

    fn alive(&mut self, uid: &str, reset: bool, peer: SocketAddr, now: Instant) {
        let ip = peer.ip();
        let announce = |publish: &mut VecDeque<NodeMessage>| {
            publish.push_back(update(uid, "ip", ip.to_string()));
            publish.push_back(update(uid, "protocol", PROTOCOL));
        };
        match self.nodes.get_mut(uid) {
            Some(node) => {
                node.last_seen = now;
                let moved = node.addr.ip() != ip;
                let old = node.addr.ip();
                node.addr = peer;
                if moved {
                    tracing::info!(%uid, from = %old, to = %ip, "CoAP node moved");
                    if self.by_ip.get(&old).is_some_and(|owner| owner == uid) {
                        self.by_ip.remove(&old);
                    }
                    self.by_ip.insert(ip, uid.to_owned());
                    if !reset {
                        self.publish.push_back(update(uid, "ip", ip.to_string()));
                    }
                }
                if reset {
                    tracing::info!(%uid, %ip, "CoAP node reset");
                    self.publish.push_back(NodeMessage::Reset {
                        uid: uid.to_owned(),
                    });
                    announce(&mut self.publish);
                    self.discover(uid, true, now);
                } else if node.discovery == Discovery::Due {
                    self.discover(uid, false, now);
                }
            }
            None => {
                self.stats.registered += 1;
                tracing::info!(%uid, %ip, "CoAP node registered");
                if let Some(previous) = self.by_ip.insert(ip, uid.to_owned()) {
                    tracing::debug!(%uid, %previous, %ip, "the address now belongs to another node");
                }
                self.nodes.insert(
                    uid.to_owned(),
                    Node {
                        addr: peer,
                        last_seen: now,
                        current: None,
                        jobs: VecDeque::new(),
                        discovery: Discovery::Due,
                    },
                );
                self.publish.push_back(NodeMessage::New {
                    uid: uid.to_owned(),
                    dst: Dst::All,
                });
                announce(&mut self.publish);
                self.discover(uid, false, now);
            }
        }
    }

    /// Starts discovering `uid`, or queues it for a free slot. `again`: a reset, so a
    /// discovery already running starts over when it ends.
    fn discover(&mut self, uid: &str, again: bool, now: Instant) {
        let free = self.discovering < self.settings.discovery_concurrency.max(1);
        let Some(node) = self.nodes.get_mut(uid) else {
            return;
        };
        match &mut node.discovery {
            Discovery::Running { again: flag, .. } => *flag |= again,
            Discovery::Waiting => {}
            _ if free => {
                node.discovery = Discovery::Running {
                    ok: true,
                    again: false,
                };
                node.jobs.push_front(Job::Discover);
                self.discovering += 1;
                self.pump(uid, now);
            }
            _ => {
                node.discovery = Discovery::Waiting;
                self.waiting.push_back(uid.to_owned());
            }
        }
    }

    /// Whether a new node would have to wait behind `max_pending_discoveries` others.
    fn discovery_queue_full(&mut self) -> bool {
        let slot_free = self.discovering < self.settings.discovery_concurrency.max(1);
        let full = !slot_free && self.waiting.len() >= self.settings.max_pending_discoveries;
        if !full {
            self.pending_logged = false;
        }
        full
    }

    fn finish_discovery(&mut self, uid: &str, now: Instant) {
        if let Some(node) = self.nodes.get_mut(uid) {
            if let Discovery::Running { ok, again } = node.discovery {
                self.discovering -= 1;
                node.discovery = if ok { Discovery::Done } else { Discovery::Due };
                if ok {
                    tracing::debug!(%uid, "CoAP node discovered");
                } else {
                    tracing::info!(%uid, "CoAP node discovery incomplete; it is tried again at the node's next alive");
                }
                if again {
                    self.discover(uid, false, now);
                }
            }
        }
        self.next_discovery(now);
    }

    fn next_discovery(&mut self, now: Instant) {
        while self.discovering < self.settings.discovery_concurrency.max(1) {
            let Some(uid) = self.waiting.pop_front() else {
                return;
            };
            if let Some(node) = self.nodes.get_mut(&uid) {
                if node.discovery == Discovery::Waiting {
                    node.discovery = Discovery::Due;
                    self.discover(&uid, false, now);
                }
            }
        }
    }

    fn target(&self, addr: SocketAddr) -> SocketAddr {
        match addr {
            SocketAddr::V6(v6) => {
                let link_local = v6.ip().segments()[0] & 0xffc0 == 0xfe80;
                let scope = match (v6.scope_id(), self.settings.scope_id) {
                    (0, Some(configured)) if link_local => configured,
                    (scope, _) => scope,
                };
                SocketAddr::V6(SocketAddrV6::new(
                    *v6.ip(),
                    self.settings.node_port,
                    0,
                    scope,
                ))
            }
            SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V4(*v4.ip()), self.settings.node_port),
        }
    }

    /// Sends the node's next request if none is in flight (NSTART = 1).
    fn pump(&mut self, uid: &str, now: Instant) {
        let Some(node) = self.nodes.get(uid) else {
            return;
        };
        if node.current.is_some() {
            return;
        }
        let target = self.target(node.addr);
        let Some(node) = self.nodes.get_mut(uid) else {
            return;
        };
        let Some(job) = node.jobs.pop_front() else {
            return;
        };
        let request = match &job {
            Job::Discover => Request::get(link_format::WELL_KNOWN_CORE),
            Job::Read(path) => Request::get(path),
            Job::Write { endpoint, value } => Request {
                method: Code::PUT,
                path: format!("/{endpoint}"),
                payload: value.as_bytes().to_vec(),
                content_format: Some(crate::proto::coap::message::TEXT_PLAIN),
            },
        };
        let id = self.endpoint.request(target, request, now);
        node.current = Some((id, job));
        self.in_flight.insert(id, uid.to_owned());
    }

    fn on_response(&mut self, id: RequestId, outcome: Result<Response, Failure>, now: Instant) {
        let Some(uid) = self.in_flight.remove(&id) else {
            return;
        };
        let Some(node) = self.nodes.get_mut(&uid) else {
            return;
        };
        let job = match node.current.take() {
            Some((current, job)) if current == id => job,
            other => {
                node.current = other;
                return;
            }
        };
        let failed = |node: &mut Node| {
            if let Discovery::Running { ok, .. } = &mut node.discovery {
                *ok = false;
            }
        };
        match job {
            Job::Discover => match links(&outcome, self.settings.max_resources) {
                Ok((paths, ignored)) => {
                    if ignored > 0 {
                        // Once per discovery, which a node only repeats when it resets.
                        self.stats.resources_refused += ignored as u64;
                        tracing::warn!(%uid, ip = %node.addr.ip(), ignored, max = self.settings.max_resources, "CoAP node has too many resources, the rest ignored (limits.max_resources_per_node)");
                    }
                    tracing::debug!(%uid, ?paths, "CoAP node resources");
                    for path in paths.into_iter().rev() {
                        node.jobs.push_front(Job::Read(path));
                    }
                    if !node.jobs.iter().any(|j| matches!(j, Job::Read(_))) {
                        self.finish_discovery(&uid, now);
                    }
                }
                Err(why) => {
                    failed(node);
                    tracing::warn!(%uid, ip = %node.addr.ip(), "CoAP discovery failed: {why}");
                    self.finish_discovery(&uid, now);
                }
            },
            Job::Read(path) => {
                match text(&outcome, Code::CONTENT) {
                    Ok(value) => self.publish.push_back(update(&uid, &path[1..], value)),
                    Err(why) => {
                        failed(node);
                        tracing::debug!(%uid, %path, "CoAP resource not read: {why}");
                    }
                }
                if !node.jobs.iter().any(|j| matches!(j, Job::Read(_))) {
                    self.finish_discovery(&uid, now);
                }
            }
            Job::Write { endpoint, value } => match &outcome {
                Ok(response) if response.code == Code::CHANGED => {
                    tracing::debug!(%uid, %endpoint, %value, "CoAP write done");
                    self.publish.push_back(update(&uid, &endpoint, value));
                }
                Ok(response) => {
                    tracing::warn!(%uid, %endpoint, %value, code = %response.code, "CoAP write refused by the node");
                }
                Err(failure) => {
                    tracing::warn!(%uid, %endpoint, %value, "CoAP write failed: {failure}");
                }
            },
        }
        self.pump(&uid, now);
    }

    fn sweep(&mut self, now: Instant) {
        let max_time = self.settings.max_time;
        let silent: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, node)| now.saturating_duration_since(node.last_seen) > max_time)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in silent {
            tracing::info!(%uid, max_time = max_time.as_secs(), "CoAP node silent too long: out");
            self.stats.timed_out += 1;
            self.remove(&uid, now);
        }
    }

    fn remove(&mut self, uid: &str, now: Instant) {
        let Some(node) = self.nodes.remove(uid) else {
            return;
        };
        if let Some((id, _)) = node.current {
            self.endpoint.cancel(id);
            self.in_flight.remove(&id);
        }
        if self
            .by_ip
            .get(&node.addr.ip())
            .is_some_and(|owner| owner == uid)
        {
            self.by_ip.remove(&node.addr.ip());
        }
        if matches!(node.discovery, Discovery::Running { .. }) {
            self.discovering -= 1;
        }
        if self.nodes.len() < self.settings.max_nodes {
            self.full_logged = false;
        }
        self.publish.push_back(NodeMessage::Out {
            uid: uid.to_owned(),
        });
        self.next_discovery(now);
    }
}

/// A successful response's payload as text.
fn text(outcome: &Result<Response, Failure>, expected: Code) -> Result<String, String> {
    match outcome {
        Err(failure) => Err(failure.to_string()),
        Ok(response) if response.code != expected => Err(format!("answered {}", response.code)),
        Ok(response) => String::from_utf8(response.payload.clone())
            .map_err(|_| "the payload is not UTF-8".to_owned()),
    }
}

/// The first `max` resource paths of a discovery, and how many more there were.
fn links(outcome: &Result<Response, Failure>, max: usize) -> Result<(Vec<String>, usize), String> {
    let document = text(outcome, Code::CONTENT)?;
    let links = link_format::parse(&document).map_err(|e| e.to_string())?;
    let mut paths = link_format::resource_paths(&links);
    let ignored = paths.len().saturating_sub(max);
    paths.truncate(max);
    Ok((paths, ignored))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::coap::message::option;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    fn settings() -> Settings {
        Settings {
            discovery_concurrency: 1,
            max_nodes: 3,
            max_time: Duration::from_secs(120),
            ..Settings::default()
        }
    }

    struct Harness {
        nodes: Nodes,
        now: Instant,
        next_mid: u16,
    }

    impl Harness {
        fn new(settings: Settings) -> Harness {
            Harness {
                nodes: Nodes::new(settings, 1),
                now: Instant::now(),
                next_mid: 100,
            }
        }

        fn post(&mut self, from: &str, kind: Type, path: &str, payload: &str) -> Vec<Message> {
            self.next_mid += 1;
            let mut message = Message::new(
                kind,
                Code::POST,
                self.next_mid,
                Token::new(&[7]).expect("token"),
            );
            message.set_path(path);
            message.payload = payload.as_bytes().to_vec();
            self.nodes
                .handle_datagram(addr(from), &message.encode(), self.now);
            self.sent()
        }

        fn sent(&mut self) -> Vec<Message> {
            std::iter::from_fn(|| self.nodes.poll_transmit())
                .map(|t| Message::decode(&t.datagram).expect("valid"))
                .collect()
        }

        fn published(&mut self) -> Vec<NodeMessage> {
            std::iter::from_fn(|| self.nodes.poll_publish()).collect()
        }

        fn answer(&mut self, from: &str, to: &Message, code: Code, payload: &str) -> Vec<Message> {
            let mut message = Message::new(Type::Acknowledgement, code, to.mid, to.token);
            message.payload = payload.as_bytes().to_vec();
            self.nodes
                .handle_datagram(addr(from), &message.encode(), self.now);
            self.sent()
        }
    }

    fn new(uid: &str) -> NodeMessage {
        NodeMessage::New {
            uid: uid.into(),
            dst: Dst::All,
        }
    }

    #[test]
    fn a_node_is_answered_announced_then_discovered_one_request_at_a_time() {
        let mut h = Harness::new(settings());
        let sent = h.post(
            "127.0.0.2:49152",
            Type::NonConfirmable,
            "/alive",
            "alive:n1",
        );
        assert_eq!(sent.len(), 2, "the answer, then discovery: {sent:?}");
        assert_eq!(
            (sent[0].kind, sent[0].code),
            (Type::NonConfirmable, Code::CHANGED)
        );
        assert_eq!(sent[1].path().as_deref(), Some("/.well-known/core"));
        assert_eq!(
            h.published(),
            [
                new("n1"),
                update("n1", "ip", "127.0.0.2"),
                update("n1", "protocol", "CoAP")
            ]
        );
        // Repeated alive: answered, nothing announced.
        let again = h.post("127.0.0.2:49152", Type::Confirmable, "/alive", "alive:n1");
        assert_eq!((again.len(), again[0].kind), (1, Type::Acknowledgement));
        assert!(h.published().is_empty());

        let node = "127.0.0.2:5683";
        let sent = h.answer(node, &sent[1], Code::CONTENT, "</name>,</led>");
        assert_eq!(sent.len(), 1, "NSTART = 1: one read at a time");
        assert_eq!(sent[0].path().as_deref(), Some("/name"));
        // A write waits behind discovery.
        h.nodes.write(
            Write {
                uid: "n1".into(),
                endpoint: "led".into(),
                payload: Value::from("1"),
            },
            h.now,
        );
        assert!(h.sent().is_empty());
        let sent = h.answer(node, &sent[0], Code::CONTENT, "Node LED");
        assert_eq!(sent[0].path().as_deref(), Some("/led"));
        let sent = h.answer(node, &sent[0], Code::CONTENT, "0");
        assert_eq!(
            (sent[0].code, sent[0].path().as_deref()),
            (Code::PUT, Some("/led"))
        );
        assert_eq!(sent[0].payload, b"1");
        assert_eq!(sent[0].first_option(option::CONTENT_FORMAT), Some(&[][..]));
        assert!(h.answer(node, &sent[0], Code::CHANGED, "led:1").is_empty());
        assert_eq!(
            h.published(),
            [
                update("n1", "name", "Node LED"),
                update("n1", "led", "0"),
                update("n1", "led", "1")
            ]
        );
    }

    #[test]
    fn server_posts_move_and_reset_and_silence() {
        let mut h = Harness::new(settings());
        let refused = h.post(
            "127.0.0.2:1",
            Type::Confirmable,
            "/server",
            "temperature:21°C",
        );
        assert_eq!(refused[0].code, Code::FORBIDDEN, "unknown node");
        h.post("127.0.0.2:1", Type::NonConfirmable, "/alive", "Alive:1234");
        h.published();
        let ok = h.post(
            "127.0.0.2:1",
            Type::NonConfirmable,
            "/server",
            "temperature:21°C",
        );
        assert_eq!(ok[0].code, Code::CHANGED);
        for (payload, code) in [("nocolon", Code::BAD_REQUEST), ("ip:1", Code::BAD_REQUEST)] {
            assert_eq!(
                h.post("127.0.0.2:1", Type::Confirmable, "/server", payload)[0].code,
                code
            );
        }
        assert_eq!(h.published(), [update("1234", "temperature", "21°C")]);

        // The node comes back from another address: same uid, new ip.
        h.post("[::1]:1", Type::NonConfirmable, "/alive", "alive:1234");
        assert_eq!(h.published(), [update("1234", "ip", "::1")]);
        assert_eq!(
            h.post("127.0.0.2:1", Type::Confirmable, "/server", "a:1")[0].code,
            Code::FORBIDDEN
        );

        // A reset: forget, announce again, discover again.
        let sent = h.post("[::1]:1", Type::NonConfirmable, "/alive", "reset:1234");
        assert_eq!(
            h.published(),
            [
                NodeMessage::Reset { uid: "1234".into() },
                update("1234", "ip", "::1"),
                update("1234", "protocol", "CoAP")
            ]
        );
        assert_eq!(
            sent.len(),
            1,
            "discovery is already running; it starts over when done"
        );

        // Silence: out after max_time.
        h.now += Duration::from_secs(121);
        h.nodes.handle_timeout(h.now);
        assert!(
            h.published()
                .contains(&NodeMessage::Out { uid: "1234".into() })
        );
        assert!(h.nodes.is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_discovery_takes_turns() {
        let mut h = Harness::new(Settings {
            max_time: Duration::from_secs(3600),
            ..settings()
        });
        for i in 1..=3 {
            h.post(
                &format!("127.0.0.{i}:1"),
                Type::NonConfirmable,
                "/alive",
                &format!("alive:n{i}"),
            );
        }
        let refused = h.post("127.0.0.9:1", Type::Confirmable, "/alive", "alive:n9");
        assert_eq!(refused[0].code, Code::SERVICE_UNAVAILABLE);
        assert_eq!(h.nodes.len(), 3);
        assert_eq!(h.nodes.stats().refused, 1);
        // Only the first node was asked; after its discovery fails (timeout), the next one is.
        let mut asked = Vec::new();
        for _ in 0..2000 {
            h.now = h.nodes.poll_timeout();
            h.nodes.handle_timeout(h.now);
            for m in h.sent() {
                if m.path().as_deref() == Some("/.well-known/core") {
                    asked.push(m.mid);
                }
            }
            if h.nodes.discovering == 0 {
                break;
            }
        }
        // Node 1's 4 retransmissions, then 5 transmissions each for nodes 2 and 3, in turn.
        assert_eq!(asked.len(), 14);
        assert_eq!(h.nodes.discovering, 0);
    }

    #[test]
    fn a_flood_of_new_nodes_waits_in_a_bounded_queue() {
        let mut h = Harness::new(Settings {
            max_nodes: 100,
            max_pending_discoveries: 2,
            ..settings()
        });
        let mut codes = Vec::new();
        for i in 1..=6 {
            let sent = h.post(
                &format!("127.0.0.{i}:1"),
                Type::Confirmable,
                "/alive",
                &format!("alive:n{i}"),
            );
            codes.push(sent[0].code);
        }
        // One being discovered, two waiting, the rest refused until the queue has room.
        assert_eq!(
            codes,
            [Code::CHANGED, Code::CHANGED, Code::CHANGED]
                .into_iter()
                .chain([Code::SERVICE_UNAVAILABLE; 3])
                .collect::<Vec<_>>()
        );
        assert_eq!(h.nodes.len(), 3);
        assert_eq!(h.nodes.stats().pending_refused, 3);
        // A known node's alive is still answered.
        let known = h.post("127.0.0.2:1", Type::Confirmable, "/alive", "alive:n2");
        assert_eq!(known[0].code, Code::CHANGED);
        // Once node 1's discovery ends (it times out), a place frees up.
        while h.nodes.discovering > 0 && h.nodes.waiting.len() == 2 {
            h.now = h.nodes.poll_timeout();
            h.nodes.handle_timeout(h.now);
            h.sent();
        }
        let late = h.post("127.0.0.7:1", Type::Confirmable, "/alive", "alive:n7");
        assert_eq!(late[0].code, Code::CHANGED);
    }

    #[test]
    fn hostile_requests_get_errors_and_change_nothing() {
        let mut h = Harness::new(settings());
        for (path, payload, code) in [
            ("/alive", "alive", Code::BAD_REQUEST),
            ("/alive", "alive:", Code::BAD_REQUEST),
            ("/nothing", "x:1", Code::NOT_FOUND),
        ] {
            assert_eq!(
                h.post("127.0.0.2:1", Type::Confirmable, path, payload)[0].code,
                code
            );
        }
        let mut get = Message::new(Type::Confirmable, Code::GET, 1, Token::default());
        get.set_path("/alive");
        h.nodes
            .handle_datagram(addr("127.0.0.2:1"), &get.encode(), h.now);
        assert_eq!(h.sent()[0].code, Code::METHOD_NOT_ALLOWED);
        let mut bad = Message::new(Type::Confirmable, Code::POST, 2, Token::default());
        bad.set_path("/alive");
        bad.payload = vec![b'a', b':', 0xff, 0xfe];
        h.nodes
            .handle_datagram(addr("127.0.0.2:1"), &bad.encode(), h.now);
        assert_eq!(h.sent()[0].code, Code::BAD_REQUEST);
        h.nodes
            .handle_oversize(addr("127.0.0.2:1"), &[0x41, 0x02, 0, 9, 0xaa], h.now);
        let answer = h.sent();
        assert_eq!(
            (answer[0].code, answer[0].mid),
            (Code::REQUEST_ENTITY_TOO_LARGE, 9)
        );
        assert!(h.nodes.is_empty());
        assert!(h.published().is_empty());
    }
}
