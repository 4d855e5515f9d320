//! The CoAP message layer of one UDP endpoint (RFC 7252 §4, RFC 7959 Block2), sans-IO:
//! datagrams and the current time in, datagrams to send and events out.
//!
//! It owns what the RFC makes an endpoint remember: message ids and tokens of its own
//! requests, the retransmission schedule of confirmable ones, and the recently seen message
//! ids of each peer with the answer given (so a duplicate is answered again from the cache,
//! never processed twice). A request the caller makes is one logical exchange: a Block2
//! response is fetched block by block and delivered whole.
//!
//! Driving it: [`Endpoint::handle`] for each datagram, [`Endpoint::handle_timeout`] when
//! [`Endpoint::poll_timeout`] says, then drain [`Endpoint::poll_transmit`] and
//! [`Endpoint::poll_event`]. Time is whatever `Instant` the caller passes, so tests run
//! years of retransmissions in microseconds.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::message::{Block, Code, Header, Message, Token, Type, option};

/// Transmission parameters (RFC 7252 §4.8) and the endpoint's own bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub ack_timeout: Duration,
    pub ack_random_factor: f64,
    pub max_retransmit: u32,
    /// Largest body reassembled from Block2 responses.
    pub max_body: usize,
    /// Message ids remembered for duplicate detection; the oldest are forgotten first.
    pub dedup_capacity: usize,
    /// Block size asked for when a response comes in blocks (size exponent, 16 << szx bytes).
    pub block_szx: u8,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            max_body: 64 * 1024,
            dedup_capacity: 65_536,
            block_szx: 6,
        }
    }
}

/// RFC 7252 §4.8.2: how long a datagram may take across the network.
const MAX_LATENCY: Duration = Duration::from_secs(100);

impl Params {
    fn factor(&self) -> f64 {
        self.ack_random_factor.max(1.0)
    }

    /// From the first transmission of a CON to the last retransmission.
    pub fn max_transmit_span(&self) -> Duration {
        let tries = (1u64 << self.max_retransmit.min(20)) - 1;
        self.ack_timeout.mul_f64(tries as f64 * self.factor())
    }

    /// From the first transmission to giving up on an acknowledgement.
    pub fn max_transmit_wait(&self) -> Duration {
        let tries = (1u64 << (self.max_retransmit.min(20) + 1)) - 1;
        self.ack_timeout.mul_f64(tries as f64 * self.factor())
    }

    /// How long a message id is remembered (RFC 7252's EXCHANGE_LIFETIME, 247 s by default).
    pub fn exchange_lifetime(&self) -> Duration {
        self.max_transmit_span() + 2 * MAX_LATENCY + self.ack_timeout
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub datagram: Vec<u8>,
}

/// Names one logical request of ours, across retransmissions and blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// A request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Code,
    /// `/a/b`.
    pub path: String,
    pub payload: Vec<u8>,
    pub content_format: Option<u16>,
}

impl Request {
    pub fn get(path: &str) -> Request {
        Request {
            method: Code::GET,
            path: path.to_owned(),
            payload: Vec::new(),
            content_format: None,
        }
    }
}

/// A response, with a Block2 body already put together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub code: Code,
    pub payload: Vec<u8>,
}

/// Why a request of ours got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("no answer after {0} transmissions")]
    Timeout(u32),
    #[error("the node reset the exchange")]
    Reset,
    #[error("the response body is over {0} bytes")]
    TooLarge(usize),
    #[error("invalid block-wise response: {0}")]
    Block(&'static str),
    #[error("cancelled")]
    Cancelled,
}

/// A request from a peer, to be answered with [`Endpoint::respond`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingRequest {
    pub peer: SocketAddr,
    pub message: Message,
}

/// What happened, for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Request(IncomingRequest),
    Response {
        id: RequestId,
        peer: SocketAddr,
        outcome: Result<Response, Failure>,
    },
    /// A datagram that needed no more than the endpoint's own answer, if any: worth a debug
    /// log line, nothing else.
    Ignored {
        peer: SocketAddr,
        reason: &'static str,
    },
}

/// One of our requests in flight.
struct Outstanding {
    peer: SocketAddr,
    request: Request,
    /// The current transmission (a new one for each block).
    mid: u16,
    token: Token,
    datagram: Vec<u8>,
    transmissions: u32,
    timeout: Duration,
    deadline: Instant,
    acknowledged: bool,
    body: Vec<u8>,
    next_block: u32,
    szx: u8,
}

struct Seen {
    expires: Instant,
    /// The answer given, sent again for a duplicate; `None` while it is being worked out.
    reply: Option<Vec<u8>>,
}

pub struct Endpoint {
    params: Params,
    rng: fastrand::Rng,
    next_mid: u16,
    next_id: u64,
    outstanding: HashMap<RequestId, Outstanding>,
    by_mid: HashMap<(SocketAddr, u16), RequestId>,
    by_token: HashMap<Token, RequestId>,
    timers: BinaryHeap<Reverse<(Instant, RequestId)>>,
    seen: HashMap<(SocketAddr, u16), Seen>,
    seen_order: VecDeque<(Instant, SocketAddr, u16)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

/// Options a request to us may carry that we understand; any other critical option makes it
/// a 4.02 Bad Option (RFC 7252 §5.4.1).
const UNDERSTOOD: [u16; 6] = [
    option::URI_HOST,
    option::URI_PORT,
    option::URI_PATH,
    option::URI_QUERY,
    option::ACCEPT,
    option::BLOCK2,
];

impl Endpoint {
    /// `seed` makes message ids, tokens and retransmission jitter reproducible in tests.
    pub fn new(params: Params, seed: u64) -> Endpoint {
        let mut rng = fastrand::Rng::with_seed(seed);
        Endpoint {
            next_mid: rng.u16(..),
            rng,
            params,
            next_id: 1,
            outstanding: HashMap::new(),
            by_mid: HashMap::new(),
            by_token: HashMap::new(),
            timers: BinaryHeap::new(),
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Requests of ours still waiting for an answer.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] wants to run next (possibly early; never late).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    fn send(&mut self, to: SocketAddr, datagram: Vec<u8>) {
        self.transmits.push_back(Transmit { to, datagram });
    }

    fn ignore(&mut self, peer: SocketAddr, reason: &'static str) {
        self.events.push_back(Event::Ignored { peer, reason });
    }

    fn mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }

    fn token(&mut self) -> Token {
        loop {
            let token = Token::new(&self.rng.u32(..).to_be_bytes()).expect("4 bytes fit");
            if !self.by_token.contains_key(&token) {
                return token;
            }
        }
    }

    /// Sends `request` to `peer` as a confirmable message; its outcome comes as an
    /// [`Event::Response`] with the returned id.
    pub fn request(&mut self, peer: SocketAddr, request: Request, now: Instant) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let outstanding = Outstanding {
            peer,
            request,
            mid: 0,
            token: Token::default(),
            datagram: Vec::new(),
            transmissions: 0,
            timeout: Duration::ZERO,
            deadline: now,
            acknowledged: false,
            body: Vec::new(),
            next_block: 0,
            szx: self.params.block_szx.min(6),
        };
        self.outstanding.insert(id, outstanding);
        self.transmit_new(id, now);
        id
    }

    /// Forgets a request: no more retransmissions, and no event for it.
    pub fn cancel(&mut self, id: RequestId) {
        if let Some(o) = self.outstanding.remove(&id) {
            self.by_mid.remove(&(o.peer, o.mid));
            self.by_token.remove(&o.token);
        }
    }

    /// Sends the current step of request `id` (the first block, or the next one) with a fresh
    /// message id and token, and arms its retransmission timer.
    fn transmit_new(&mut self, id: RequestId, now: Instant) {
        let mid = self.mid();
        let token = self.token();
        let jitter = 1.0 + self.rng.f64() * (self.params.factor() - 1.0);
        let timeout = self.params.ack_timeout.mul_f64(jitter);
        let Some(o) = self.outstanding.get_mut(&id) else {
            return;
        };
        let mut message = Message::new(Type::Confirmable, o.request.method, mid, token);
        message.set_path(&o.request.path);
        if let Some(format) = o.request.content_format {
            message.add_option(
                option::CONTENT_FORMAT,
                super::message::encode_uint(u64::from(format)),
            );
        }
        if o.next_block > 0 {
            let block = Block {
                num: o.next_block,
                more: false,
                szx: o.szx,
            };
            message.add_option(option::BLOCK2, block.encode());
        }
        message.payload = o.request.payload.clone();
        o.mid = mid;
        o.token = token;
        o.datagram = message.encode();
        o.transmissions = 1;
        o.timeout = timeout;
        o.deadline = now + timeout;
        o.acknowledged = false;
        let (peer, datagram, deadline) = (o.peer, o.datagram.clone(), o.deadline);
        self.by_mid.insert((peer, mid), id);
        self.by_token.insert(token, id);
        self.timers.push(Reverse((deadline, id)));
        self.send(peer, datagram);
    }

    /// Retransmits what is due and gives up on what has run out of tries.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let max_retransmit = self.params.max_retransmit;
            let Some(o) = self.outstanding.get_mut(&id) else {
                continue;
            };
            if o.deadline != at {
                continue; // a stale timer: the request moved on since
            }
            if !o.acknowledged && o.transmissions <= max_retransmit {
                o.transmissions += 1;
                o.timeout *= 2;
                o.deadline = now + o.timeout;
                let (peer, datagram, deadline) = (o.peer, o.datagram.clone(), o.deadline);
                self.timers.push(Reverse((deadline, id)));
                self.send(peer, datagram);
            } else {
                let tries = o.transmissions;
                self.finish(id, Err(Failure::Timeout(tries)));
            }
        }
        self.expire_seen(now);
    }

    fn finish(&mut self, id: RequestId, outcome: Result<Response, Failure>) {
        if let Some(o) = self.outstanding.remove(&id) {
            self.by_mid.remove(&(o.peer, o.mid));
            self.by_token.remove(&o.token);
            self.events.push_back(Event::Response {
                id,
                peer: o.peer,
                outcome,
            });
        }
    }

    fn expire_seen(&mut self, now: Instant) {
        while let Some(&(expires, peer, mid)) = self.seen_order.front() {
            let over = self.seen_order.len() > self.params.dedup_capacity;
            if expires > now && !over {
                break;
            }
            self.seen_order.pop_front();
            if self
                .seen
                .get(&(peer, mid))
                .is_some_and(|s| s.expires == expires)
            {
                self.seen.remove(&(peer, mid));
            }
        }
    }

    fn remember(&mut self, peer: SocketAddr, mid: u16, reply: Option<Vec<u8>>, now: Instant) {
        let expires = now + self.params.exchange_lifetime();
        self.seen.insert((peer, mid), Seen { expires, reply });
        self.seen_order.push_back((expires, peer, mid));
        self.expire_seen(now);
    }

    /// Answers a request received as [`Event::Request`]: a piggybacked ACK for a CON, a NON
    /// for a NON. The answer is remembered, so a duplicate of the request gets it again.
    pub fn respond(&mut self, request: &IncomingRequest, code: Code, payload: Vec<u8>) {
        self.respond_with(request, code, payload, &[]);
    }

    /// Like [`Endpoint::respond`], with options (e.g. Content-Format, Block2).
    pub fn respond_with(
        &mut self,
        request: &IncomingRequest,
        code: Code,
        payload: Vec<u8>,
        options: &[(u16, Vec<u8>)],
    ) {
        let (peer, asked) = (request.peer, &request.message);
        let mut response = match asked.kind {
            Type::Confirmable => Message::new(Type::Acknowledgement, code, asked.mid, asked.token),
            _ => {
                let mid = self.mid();
                Message::new(Type::NonConfirmable, code, mid, asked.token)
            }
        };
        for (number, value) in options {
            response.add_option(*number, value.clone());
        }
        response.payload = payload;
        let datagram = response.encode();
        if let Some(seen) = self.seen.get_mut(&(peer, asked.mid)) {
            seen.reply = Some(datagram.clone());
        }
        self.send(peer, datagram);
    }

    /// Takes one datagram from `peer`.
    pub fn handle(&mut self, peer: SocketAddr, datagram: &[u8], now: Instant) {
        self.expire_seen(now);
        let message = match Message::decode(datagram) {
            Ok(message) => message,
            Err(error) => {
                // Rejecting a malformed CON means resetting it (RFC 7252 §4.2).
                if let Some(Header {
                    kind: Type::Confirmable,
                    mid,
                }) = error.header
                {
                    self.send(peer, Message::empty(Type::Reset, mid).encode());
                }
                self.ignore(peer, error.reason);
                return;
            }
        };
        match message.kind {
            Type::Confirmable | Type::NonConfirmable => self.handle_message(peer, message, now),
            Type::Acknowledgement => self.handle_ack(peer, message, now),
            Type::Reset => match self.by_mid.get(&(peer, message.mid)).copied() {
                Some(id) => self.finish(id, Err(Failure::Reset)),
                None => self.ignore(peer, "unmatched reset"),
            },
        }
    }

    fn handle_message(&mut self, peer: SocketAddr, message: Message, now: Instant) {
        let con = message.kind == Type::Confirmable;
        if message.code.is_empty() {
            if con {
                // A CoAP ping: the answer is a reset (RFC 7252 §4.3).
                self.send(peer, Message::empty(Type::Reset, message.mid).encode());
            }
            self.ignore(peer, "empty message (ping)");
            return;
        }
        if let Some(seen) = self.seen.get(&(peer, message.mid)) {
            if let Some(reply) = seen.reply.clone() {
                self.send(peer, reply);
            }
            self.ignore(peer, "duplicate message id, answered from the cache");
            return;
        }
        if message.code.is_request() {
            self.remember(peer, message.mid, None, now);
            let unknown = message
                .options
                .iter()
                .any(|o| option::is_critical(o.number) && !UNDERSTOOD.contains(&o.number));
            let request = IncomingRequest { peer, message };
            if unknown {
                self.respond(
                    &request,
                    Code::BAD_OPTION,
                    b"unknown critical option".to_vec(),
                );
                self.ignore(peer, "unknown critical option, answered 4.02");
                return;
            }
            self.events.push_back(Event::Request(request));
            return;
        }
        // A separate response (CON or NON) to one of our requests.
        let matched = self
            .by_token
            .get(&message.token)
            .copied()
            .filter(|id| self.outstanding.get(id).is_some_and(|o| o.peer == peer));
        let reply = con.then(|| {
            let kind = if matched.is_some() {
                Type::Acknowledgement
            } else {
                Type::Reset
            };
            Message::empty(kind, message.mid).encode()
        });
        self.remember(peer, message.mid, reply.clone(), now);
        if let Some(reply) = reply {
            self.send(peer, reply);
        }
        match matched {
            Some(id) => self.handle_response(id, message, now),
            None => self.ignore(peer, "response to no request of ours"),
        }
    }

    fn handle_ack(&mut self, peer: SocketAddr, message: Message, now: Instant) {
        let Some(id) = self.by_mid.get(&(peer, message.mid)).copied() else {
            self.ignore(peer, "unmatched acknowledgement");
            return;
        };
        if message.code.is_empty() {
            // The answer comes later, as a separate response.
            let wait = self.params.max_transmit_wait();
            if let Some(o) = self.outstanding.get_mut(&id) {
                if !o.acknowledged {
                    o.acknowledged = true;
                    o.deadline = now + wait;
                    self.timers.push(Reverse((o.deadline, id)));
                }
            }
            return;
        }
        let token_matches = self
            .outstanding
            .get(&id)
            .is_some_and(|o| o.token == message.token);
        if !message.code.is_response() || !token_matches {
            self.ignore(peer, "acknowledgement that answers nothing");
            return;
        }
        self.handle_response(id, message, now);
    }

    /// A response to the current step of request `id`: done, or on to the next block.
    fn handle_response(&mut self, id: RequestId, message: Message, now: Instant) {
        let max_body = self.params.max_body;
        let Some(o) = self.outstanding.get_mut(&id) else {
            return;
        };
        let block = match message.block2() {
            Ok(block) => block.filter(|_| message.code.is_success()),
            Err(_) => return self.finish(id, Err(Failure::Block("invalid Block2 option"))),
        };
        let Some(block) = block else {
            if o.next_block > 0 {
                return self.finish(id, Err(Failure::Block("a later block without Block2")));
            }
            let response = Response {
                code: message.code,
                payload: message.payload,
            };
            return self.finish(id, Ok(response));
        };
        if block.num != o.next_block {
            return self.finish(id, Err(Failure::Block("unexpected block number")));
        }
        if block.more && message.payload.len() != block.size() {
            return self.finish(id, Err(Failure::Block("a middle block of the wrong size")));
        }
        if o.body.len() + message.payload.len() > max_body {
            return self.finish(id, Err(Failure::TooLarge(max_body)));
        }
        o.body.extend_from_slice(&message.payload);
        if !block.more {
            let response = Response {
                code: message.code,
                payload: std::mem::take(&mut o.body),
            };
            return self.finish(id, Ok(response));
        }
        if block.num >= Block::MAX_NUM {
            return self.finish(id, Err(Failure::Block("too many blocks")));
        }
        // The server may pick a smaller block size than asked; keep to its choice. The next
        // block number counts in the chosen size's units.
        let (peer, old_mid, old_token) = (o.peer, o.mid, o.token);
        o.szx = block.szx.min(o.szx);
        o.next_block = (o.body.len() / (16 << o.szx)) as u32;
        self.by_mid.remove(&(peer, old_mid));
        self.by_token.remove(&old_token);
        self.transmit_new(id, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    fn endpoint() -> Endpoint {
        Endpoint::new(Params::default(), 7)
    }

    fn transmits(endpoint: &mut Endpoint) -> Vec<Message> {
        std::iter::from_fn(|| endpoint.poll_transmit())
            .map(|t| Message::decode(&t.datagram).expect("we send valid messages"))
            .collect()
    }

    fn events(endpoint: &mut Endpoint) -> Vec<Event> {
        std::iter::from_fn(|| endpoint.poll_event()).collect()
    }

    fn post(kind: Type, mid: u16, payload: &str) -> Vec<u8> {
        let mut message = Message::new(kind, Code::POST, mid, Token::new(&[1, 2]).expect("token"));
        message.set_path("/alive");
        message.payload = payload.as_bytes().to_vec();
        message.encode()
    }

    #[test]
    fn a_duplicate_con_is_processed_once_and_answered_twice() {
        let mut e = endpoint();
        let node = addr("127.0.0.2:49152");
        let now = Instant::now();
        e.handle(node, &post(Type::Confirmable, 9, "alive:1"), now);
        let [Event::Request(request)] = &events(&mut e)[..] else {
            panic!("one request")
        };
        e.respond(request, Code::CHANGED, Vec::new());
        let first = transmits(&mut e);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].kind, Type::Acknowledgement);
        assert_eq!((first[0].code, first[0].mid), (Code::CHANGED, 9));
        assert_eq!(first[0].token.as_bytes(), [1, 2]);

        e.handle(
            node,
            &post(Type::Confirmable, 9, "alive:1"),
            now + Duration::from_secs(3),
        );
        assert!(matches!(&events(&mut e)[..], [Event::Ignored { .. }]));
        assert_eq!(transmits(&mut e), first, "the same answer again");

        // Another peer may use the same id, and the id is forgotten after EXCHANGE_LIFETIME.
        e.handle(
            addr("127.0.0.3:5683"),
            &post(Type::Confirmable, 9, "alive:2"),
            now,
        );
        assert!(matches!(&events(&mut e)[..], [Event::Request(_)]));
        let later = now + Params::default().exchange_lifetime() + Duration::from_secs(1);
        e.handle(node, &post(Type::Confirmable, 9, "alive:1"), later);
        assert!(matches!(&events(&mut e)[..], [Event::Request(_)]));
    }

    #[test]
    fn non_requests_get_non_answers_and_duplicates_too() {
        let mut e = endpoint();
        let node = addr("[::1]:49152");
        let now = Instant::now();
        e.handle(node, &post(Type::NonConfirmable, 1, "alive:1"), now);
        let [Event::Request(request)] = &events(&mut e)[..] else {
            panic!("one request")
        };
        e.respond(request, Code::CHANGED, Vec::new());
        let answer = transmits(&mut e);
        assert_eq!(answer[0].kind, Type::NonConfirmable);
        assert_eq!(answer[0].token.as_bytes(), [1, 2]);
        e.handle(node, &post(Type::NonConfirmable, 1, "alive:1"), now);
        assert_eq!(transmits(&mut e), answer);
    }

    #[test]
    fn malformed_cons_are_reset_pings_too_and_unknown_critical_options_get_4_02() {
        let mut e = endpoint();
        let node = addr("127.0.0.2:1");
        let now = Instant::now();
        e.handle(node, &[0x40, 0x01, 0x12, 0x34, 0xf0], now);
        let reset = transmits(&mut e);
        assert_eq!((reset[0].kind, reset[0].mid), (Type::Reset, 0x1234));
        e.handle(node, &[0x50, 0x01, 0x12, 0x35, 0xf0], now);
        assert!(transmits(&mut e).is_empty(), "a malformed NON is dropped");
        e.handle(node, &[1, 2, 3], now);
        assert!(transmits(&mut e).is_empty());
        e.handle(node, &[0x40, 0x00, 0x00, 0x07], now);
        assert_eq!(transmits(&mut e)[0].kind, Type::Reset, "ping answered");

        let mut message = Message::new(Type::Confirmable, Code::POST, 8, Token::default());
        message.set_path("/alive");
        message.add_option(9, vec![1]);
        e.handle(node, &message.encode(), now);
        let answer = transmits(&mut e);
        assert_eq!(
            (answer[0].kind, answer[0].code),
            (Type::Acknowledgement, Code::BAD_OPTION)
        );
        let evs = events(&mut e);
        assert!(
            evs.iter().all(|e| matches!(e, Event::Ignored { .. })),
            "{evs:?}"
        );
        // An unknown elective option is fine.
        let mut message = Message::new(Type::Confirmable, Code::POST, 10, Token::default());
        message.add_option(258, vec![]);
        e.handle(node, &message.encode(), now);
        assert!(matches!(&events(&mut e)[..], [Event::Request(_)]));
    }

    fn answer(to: &Message, kind: Type, code: Code, payload: &[u8]) -> Vec<u8> {
        let mut message = Message::new(kind, code, to.mid, to.token);
        message.payload = payload.to_vec();
        message.encode()
    }

    #[test]
    fn requests_are_retransmitted_with_backoff_then_given_up() {
        let mut e = endpoint();
        let node = addr("127.0.0.2:5683");
        let start = Instant::now();
        let id = e.request(node, Request::get("/.well-known/core"), start);
        let first = transmits(&mut e);
        assert_eq!(first[0].kind, Type::Confirmable);
        assert_eq!(first[0].path().as_deref(), Some("/.well-known/core"));
        let mut sends = vec![Duration::ZERO];
        let mut now = start;
        while e.outstanding() > 0 {
            now = e.poll_timeout().expect("a timer");
            e.handle_timeout(now);
            let again = transmits(&mut e);
            if !again.is_empty() {
                assert_eq!(again, first, "the same datagram, same id and token");
                sends.push(now - start);
            }
        }
        assert_eq!(sends.len(), 5, "one transmission and 4 retransmissions");
        // First timeout within [2 s, 3 s], then doubling.
        let t1 = sends[1];
        assert!(
            t1 >= Duration::from_secs(2) && t1 <= Duration::from_secs(3),
            "{t1:?}"
        );
        for pair in sends.windows(3) {
            let (a, b) = (pair[1] - pair[0], pair[2] - pair[1]);
            assert_eq!(b, a * 2, "{sends:?}");
        }
        assert!(now - start <= Params::default().max_transmit_wait());
        assert_eq!(
            events(&mut e),
            [Event::Response {
                id,
                peer: node,
                outcome: Err(Failure::Timeout(5))
            }]
        );
    }

    #[test]
    fn piggybacked_and_separate_responses_are_matched_by_token() {
        let mut e = endpoint();
        let node = addr("127.0.0.2:5683");
        let now = Instant::now();
        let a = e.request(node, Request::get("/a"), now);
        let sent_a = transmits(&mut e).remove(0);
        // Wrong token in the ACK: not an answer.
        let mut wrong = Message::new(
            Type::Acknowledgement,
            Code::CONTENT,
            sent_a.mid,
            Token::default(),
        );
        wrong.payload = b"x".to_vec();
        e.handle(node, &wrong.encode(), now);
        assert!(matches!(&events(&mut e)[..], [Event::Ignored { .. }]));
        // From another address: not an answer either.
        e.handle(
            addr("127.0.0.9:5683"),
            &answer(&sent_a, Type::Acknowledgement, Code::CONTENT, b"1"),
            now,
        );
        assert!(matches!(&events(&mut e)[..], [Event::Ignored { .. }]));
        e.handle(
            node,
            &answer(&sent_a, Type::Acknowledgement, Code::CONTENT, b"1"),
            now,
        );
        assert_eq!(
            events(&mut e),
            [Event::Response {
                id: a,
                peer: node,
                outcome: Ok(Response {
                    code: Code::CONTENT,
                    payload: b"1".to_vec()
                })
            }]
        );

        // Empty ACK, then a CON separate response with its own id: we ACK it.
        let b = e.request(node, Request::get("/b"), now);
        let sent_b = transmits(&mut e).remove(0);
        e.handle(
            node,
            &Message::empty(Type::Acknowledgement, sent_b.mid).encode(),
            now,
        );
        e.handle_timeout(now + Duration::from_secs(10));
        assert!(
            transmits(&mut e).is_empty(),
            "no retransmission once acknowledged"
        );
        let mut separate = Message::new(Type::Confirmable, Code::CONTENT, 0x4242, sent_b.token);
        separate.payload = b"2".to_vec();
        e.handle(node, &separate.encode(), now);
        let ack = transmits(&mut e);
        assert_eq!((ack[0].kind, ack[0].mid), (Type::Acknowledgement, 0x4242));
        assert!(
            matches!(&events(&mut e)[..], [Event::Response { id, outcome: Ok(_), .. }] if *id == b)
        );
        // Its retransmission (our ACK was lost) is acknowledged again, not reset.
        e.handle(node, &separate.encode(), now);
        assert_eq!(transmits(&mut e), ack);
        assert!(matches!(&events(&mut e)[..], [Event::Ignored { .. }]));

        // A reset ends the exchange.
        let c = e.request(node, Request::get("/c"), now);
        let sent_c = transmits(&mut e).remove(0);
        e.handle(node, &Message::empty(Type::Reset, sent_c.mid).encode(), now);
        assert!(
            matches!(&events(&mut e)[..], [Event::Response { id, outcome: Err(Failure::Reset), .. }] if *id == c)
        );
        // A stray CON response is reset.
        e.handle(
            node,
            &answer(&sent_c, Type::Confirmable, Code::CONTENT, b"late"),
            now,
        );
        assert_eq!(transmits(&mut e)[0].kind, Type::Reset);
    }

    #[test]
    fn block2_responses_are_fetched_block_by_block() {
        let mut e = endpoint();
        let node = addr("127.0.0.2:5683");
        let now = Instant::now();
        let body: Vec<u8> = (0..100u8).collect();
        let id = e.request(node, Request::get("/js"), now);
        let mut asked = transmits(&mut e).remove(0);
        for num in 0.. {
            let chunk: Vec<u8> = body.iter().skip(num * 32).take(32).copied().collect();
            let more = (num + 1) * 32 < body.len();
            let expected = (num > 0).then_some(Block {
                num: num as u32,
                more: false,
                szx: 1,
            });
            assert_eq!(asked.block2(), Ok(expected), "block {num}");
            let mut response =
                Message::new(Type::Acknowledgement, Code::CONTENT, asked.mid, asked.token);
            response.add_option(
                option::BLOCK2,
                Block {
                    num: num as u32,
                    more,
                    szx: 1,
                }
                .encode(),
            );
            response.payload = chunk;
            e.handle(node, &response.encode(), now);
            if !more {
                break;
            }
            asked = transmits(&mut e).remove(0);
        }
        assert_eq!(
            events(&mut e),
            [Event::Response {
                id,
                peer: node,
                outcome: Ok(Response {
                    code: Code::CONTENT,
                    payload: body
                })
            }]
        );

        // A body past the limit is refused.
        let mut small = Endpoint::new(
            Params {
                max_body: 40,
                ..Params::default()
            },
            1,
        );
        small.request(node, Request::get("/js"), now);
        for num in 0..3u32 {
            let asked = transmits(&mut small).remove(0);
            let mut response =
                Message::new(Type::Acknowledgement, Code::CONTENT, asked.mid, asked.token);
            response.add_option(
                option::BLOCK2,
                Block {
                    num,
                    more: true,
                    szx: 0,
                }
                .encode(),
            );
            response.payload = vec![0; 16];
            small.handle(node, &response.encode(), now);
        }
        assert!(matches!(
            &events(&mut small)[..],
            [Event::Response {
                outcome: Err(Failure::TooLarge(40)),
                ..
            }]
        ));
    }
}
