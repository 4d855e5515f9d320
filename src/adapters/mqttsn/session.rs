//! One MQTT-SN client's state machine, sans-IO: its messages, its MQTT connection's events
//! and time in; datagrams for the client and commands for its MQTT connection out.
//!
//! The gateway is transparent (MQTT-SN 1.2 §4.1): each client has its
//! own MQTT connection, so the broker sees the client's id, its will and its subscriptions.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proto::mqttsn::{self, Flags, Message, QoS, ReturnCode, Topic};

/// Predefined topic ids, shared by every client (configured).
pub type Predefined = Arc<HashMap<u16, String>>;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Topic ids (registered both ways, and subscriptions) per client.
    pub max_topics: usize,
    /// Gateway messages waiting for an acknowledgement (REGISTER, QoS 1 PUBLISH), and
    /// publishes waiting for their REGACK.
    pub max_inflight: usize,
    /// MQTT-SN's T_retry and N_retry for what the gateway sends reliably.
    pub retry: Duration,
    pub retries: u32,
    /// How long the CONNECT exchange (with its WILL* steps and the broker's answer) may take.
    pub connect_timeout: Duration,
    /// Keep-alive of a client that asks for none (duration 0): a client is never kept forever.
    pub max_keep_alive: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_topics: 64,
            max_inflight: 16,
            retry: Duration::from_secs(10),
            retries: 3,
            connect_timeout: Duration::from_secs(30),
            max_keep_alive: Duration::from_secs(3600),
        }
    }
}

/// A will, as the MQTT connection takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Will {
    pub topic: String,
    pub message: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

/// What the client's MQTT connection must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Upstream {
    Connect {
        client_id: String,
        keep_alive: Duration,
        will: Option<Will>,
    },
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
    },
    Subscribe {
        filter: String,
        qos: u8,
    },
    Unsubscribe {
        filter: String,
    },
    /// The will changed (WILLTOPICUPD/WILLMSGUPD): MQTT 3.1.1 cannot change it on a live
    /// connection, so it applies from the connection's next (re)connect.
    Will(Option<Will>),
    /// A clean DISCONNECT: the broker drops the will.
    Disconnect,
    /// The client is lost: the connection is cut and the broker publishes the will.
    Abort,
}

/// What the session produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Send(Message),
    Up(Upstream),
    /// The session is over; the caller forgets it (after sending and forwarding the rest).
    Close(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    WillTopic,
    WillMsg,
    /// CONNECT is with the broker; CONNACK waits for its answer.
    Connecting,
    Active,
    Closed,
}

struct Inflight {
    message: Message,
    sent: Instant,
    tries: u32,
}

pub struct Session {
    state: State,
    client_id: String,
    keep_alive: Duration,
    started: Instant,
    last_heard: Instant,
    pinged: bool,
    will: Option<Will>,
    names: HashMap<u16, String>,
    ids: HashMap<String, u16>,
    next_topic_id: u16,
    subscriptions: Vec<(String, u8)>,
    /// QoS 1 msg ids lately PUBACKed, so a retransmission is acknowledged again, not
    /// published again.
    recent: VecDeque<u16>,
    inflight: HashMap<u16, Inflight>,
    /// Publishes whose topic id awaits the client's REGACK, by that REGISTER's msg id.
    waiting: Vec<(u16, Message)>,
    next_msg_id: u16,
    /// Set at each upstream (re)connect: subscriptions are made again on a clean session.
    upstream_up: bool,
    out: VecDeque<Output>,
    limits: Limits,
    predefined: Predefined,
}

const RECENT: usize = 32;

fn qos_number(qos: QoS) -> u8 {
    match qos {
        QoS::One | QoS::Two => 1,
        QoS::Zero | QoS::MinusOne => 0,
    }
}

fn flags(qos: QoS, topic_id_type: u8) -> Flags {
    Flags {
        qos,
        topic_id_type,
        ..Flags::default()
    }
}

impl Session {
    /// A session from a CONNECT.
    pub fn connect(
        flags: Flags,
        duration: u16,
        client_id: String,
        now: Instant,
        limits: Limits,
        predefined: Predefined,
    ) -> Session {
        let keep_alive = match duration {
            0 => limits.max_keep_alive,
            seconds => Duration::from_secs(seconds.into()),
        };
        let mut session = Session {
            state: State::Connecting,
            client_id,
            keep_alive,
            started: now,
            last_heard: now,
            pinged: false,
            will: None,
            names: HashMap::new(),
            ids: HashMap::new(),
            next_topic_id: 1,
            subscriptions: Vec::new(),
            recent: VecDeque::new(),
            inflight: HashMap::new(),
            waiting: Vec::new(),
            next_msg_id: 1,
            upstream_up: false,
            out: VecDeque::new(),
            limits,
            predefined,
        };
        if flags.will {
            session.state = State::WillTopic;
            session.send(Message::WillTopicReq);
        } else {
            session.up_connect();
        }
        session
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn is_active(&self) -> bool {
        self.state == State::Active
    }

    /// Waiting for the broker's answer to the client's MQTT connection.
    pub fn is_connecting(&self) -> bool {
        self.state == State::Connecting
    }

    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn send(&mut self, message: Message) {
        self.out.push_back(Output::Send(message));
    }

    fn up(&mut self, upstream: Upstream) {
        self.out.push_back(Output::Up(upstream));
    }

    fn close(&mut self, why: &'static str, upstream: Upstream) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.up(upstream);
            self.out.push_back(Output::Close(why));
        }
    }

    fn up_connect(&mut self) {
        self.state = State::Connecting;
        let connect = Upstream::Connect {
            client_id: self.client_id.clone(),
            keep_alive: self.keep_alive,
            will: self.will.clone(),
        };
        self.up(connect);
    }

    fn msg_id(&mut self) -> u16 {
        let id = self.next_msg_id;
        self.next_msg_id = self.next_msg_id.checked_add(1).unwrap_or(1);
        id
    }

    /// The topic id of `name`, registering it if there is room.
    fn topic_id(&mut self, name: &str) -> Option<u16> {
        if let Some(&id) = self.ids.get(name) {
            return Some(id);
        }
        if self.names.len() >= self.limits.max_topics {
            return None;
        }
        // Ids 0x0000 and 0xFFFF are reserved; the table is far smaller than the id space.
        while self.names.contains_key(&self.next_topic_id) || self.next_topic_id == 0xFFFF {
            self.next_topic_id = self.next_topic_id.checked_add(1).unwrap_or(1);
        }
        let id = self.next_topic_id;
        self.next_topic_id = self.next_topic_id.checked_add(1).unwrap_or(1);
        self.names.insert(id, name.to_owned());
        self.ids.insert(name.to_owned(), id);
        Some(id)
    }

    fn forget_topic(&mut self, id: u16) {
        if let Some(name) = self.names.remove(&id) {
            self.ids.remove(&name);
        }
    }

    /// The topic name a PUBLISH from the client means.
    fn topic_name(&self, flags: Flags, topic_id: u16) -> Option<String> {
        match flags.topic_id_type {
            0 => self.names.get(&topic_id).cloned(),
            1 => self.predefined.get(&topic_id).cloned(),
            _ => {
                let name = String::from_utf8(topic_id.to_be_bytes().to_vec()).ok()?;
                (!mqttsn::has_wildcards(&name)).then_some(name)
            }
        }
    }

    /// A message from the client.
    pub fn handle(&mut self, message: Message, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        self.last_heard = now;
        self.pinged = false;
        match (self.state, message) {
            (State::WillTopic, Message::WillTopic { will }) => match will {
                Some((flags, topic)) => {
                    self.will = Some(Will {
                        topic,
                        message: Vec::new(),
                        qos: qos_number(flags.qos),
                        retain: flags.retain,
                    });
                    self.state = State::WillMsg;
                    self.send(Message::WillMsgReq);
                }
                None => self.up_connect(),
            },
            (State::WillMsg, Message::WillMsg { message }) => {
                if let Some(will) = &mut self.will {
                    will.message = message;
                }
                self.up_connect();
            }
            (_, Message::PingReq { .. }) => self.send(Message::PingResp),
            (_, Message::PingResp) => {}
            (_, Message::Disconnect { .. }) => {
                // Sleeping clients (a duration) are not supported: they disconnect.
                self.send(Message::Disconnect { duration: None });
                self.close("disconnected", Upstream::Disconnect);
            }
            (State::Active, message) => self.active(message, now),
            (_, other) => {
                tracing::debug!(client = %self.client_id, message = other.name(), "MQTT-SN message out of place, dropped");
            }
        }
    }

    fn active(&mut self, message: Message, now: Instant) {
        match message {
            Message::Register {
                msg_id, topic_name, ..
            } => {
                let (topic_id, code) = if mqttsn::has_wildcards(&topic_name) {
                    (0, ReturnCode::NotSupported)
                } else {
                    match self.topic_id(&topic_name) {
                        Some(id) => (id, ReturnCode::Accepted),
                        None => (0, ReturnCode::Congestion),
                    }
                };
                self.send(Message::RegAck {
                    topic_id,
                    msg_id,
                    code,
                });
            }
            Message::Publish {
                flags,
                topic_id,
                msg_id,
                data,
            } => self.publish(flags, topic_id, msg_id, data),
            Message::Subscribe {
                flags,
                msg_id,
                topic,
            } => self.subscribe(flags, msg_id, topic),
            Message::Unsubscribe { msg_id, topic, .. } => {
                let filter = match topic {
                    Topic::Name(name) => Some(name),
                    Topic::Predefined(id) => self.predefined.get(&id).cloned(),
                    Topic::Short(name) => String::from_utf8(name.to_vec()).ok(),
                    Topic::Id(id) => self.names.get(&id).cloned(),
                };
                if let Some(filter) = filter
                    && let Some(at) = self.subscriptions.iter().position(|(f, _)| *f == filter)
                {
                    self.subscriptions.remove(at);
                    self.up(Upstream::Unsubscribe { filter });
                }
                self.send(Message::UnsubAck { msg_id });
            }
            Message::RegAck { msg_id, code, .. } => {
                if let Some(Inflight {
                    message: Message::Register { topic_id, .. },
                    ..
                }) = self.inflight.remove(&msg_id)
                {
                    let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
                        .into_iter()
                        .partition(|(register, _)| *register == msg_id);
                    self.waiting = rest;
                    if code == ReturnCode::Accepted {
                        for (_, publish) in ready {
                            self.send_reliably(publish, now);
                        }
                    } else {
                        tracing::debug!(client = %self.client_id, ?code, "the client refused a topic id");
                        self.forget_topic(topic_id);
                    }
                }
            }
            Message::PubAck {
                topic_id,
                msg_id,
                code,
            } => {
                if self.inflight.remove(&msg_id).is_some() && code == ReturnCode::InvalidTopicId {
                    // The client lost the id: it is registered again with the next publish.
                    self.forget_topic(topic_id);
                }
            }
            Message::WillTopicUpd { will } => {
                let message = self.will.take().map(|w| w.message).unwrap_or_default();
                self.will = will.map(|(flags, topic)| Will {
                    topic,
                    message,
                    qos: qos_number(flags.qos),
                    retain: flags.retain,
                });
                self.up(Upstream::Will(self.will.clone()));
                self.send(Message::WillTopicResp {
                    code: ReturnCode::Accepted,
                });
            }
            Message::WillMsgUpd { message } => {
                let code = match &mut self.will {
                    Some(will) => {
                        will.message = message;
                        ReturnCode::Accepted
                    }
                    None => ReturnCode::NotSupported,
                };
                if code == ReturnCode::Accepted {
                    self.up(Upstream::Will(self.will.clone()));
                }
                self.send(Message::WillMsgResp { code });
            }
            Message::PubRec { .. } | Message::PubRel { .. } | Message::PubComp { .. } => {
                tracing::debug!(client = %self.client_id, "MQTT-SN QoS 2 is not supported");
            }
            other => {
                tracing::debug!(client = %self.client_id, message = other.name(), "unexpected MQTT-SN message, dropped");
            }
        }
    }

    fn publish(&mut self, flags: Flags, topic_id: u16, msg_id: u16, data: Vec<u8>) {
        let reject = |code| Message::PubAck {
            topic_id,
            msg_id,
            code,
        };
        if flags.qos == QoS::Two {
            self.send(reject(ReturnCode::NotSupported));
            return;
        }
        let Some(topic) = self.topic_name(flags, topic_id) else {
            // The client must learn that its id is unknown, whatever the QoS (§6.5).
            self.send(reject(ReturnCode::InvalidTopicId));
            return;
        };
        if flags.qos == QoS::One {
            if self.recent.contains(&msg_id) {
                self.send(reject(ReturnCode::Accepted));
                return;
            }
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(msg_id);
        }
        self.up(Upstream::Publish {
            topic,
            payload: data,
            qos: qos_number(flags.qos),
            retain: flags.retain,
        });
        if flags.qos == QoS::One {
            self.send(reject(ReturnCode::Accepted));
        }
    }

    fn subscribe(&mut self, flags: Flags, msg_id: u16, topic: Topic) {
        let qos = qos_number(flags.qos);
        let granted = if qos == 1 { QoS::One } else { QoS::Zero };
        let (filter, topic_id) = match topic {
            Topic::Name(name) if mqttsn::has_wildcards(&name) => (Some(name), Some(0)),
            Topic::Name(name) => {
                let id = self.topic_id(&name);
                (Some(name), id)
            }
            Topic::Predefined(id) => (self.predefined.get(&id).cloned(), Some(id)),
            Topic::Short(name) => (String::from_utf8(name.to_vec()).ok(), Some(0)),
            Topic::Id(_) => (None, None),
        };
        let code = match (&filter, topic_id) {
            (None, _) => ReturnCode::InvalidTopicId,
            (Some(_), None) => ReturnCode::Congestion,
            (Some(filter), Some(_)) => {
                let known = self.subscriptions.iter().any(|(f, _)| f == filter);
                if !known && self.subscriptions.len() >= self.limits.max_topics {
                    ReturnCode::Congestion
                } else {
                    if !known {
                        self.subscriptions.push((filter.clone(), qos));
                    }
                    // A retransmitted SUBSCRIBE is answered again; the broker takes the
                    // same subscription twice without harm.
                    self.up(Upstream::Subscribe {
                        filter: filter.clone(),
                        qos,
                    });
                    ReturnCode::Accepted
                }
            }
        };
        self.send(Message::SubAck {
            flags: flags_granted(granted),
            topic_id: if code == ReturnCode::Accepted {
                topic_id.unwrap_or(0)
            } else {
                0
            },
            msg_id,
            code,
        });
    }

    fn send_reliably(&mut self, message: Message, now: Instant) {
        let msg_id = match &message {
            Message::Register { msg_id, .. } | Message::Publish { msg_id, .. } => *msg_id,
            _ => 0,
        };
        self.inflight.insert(
            msg_id,
            Inflight {
                message: message.clone(),
                sent: now,
                tries: 0,
            },
        );
        self.send(message);
    }

    /// The broker accepted the client's MQTT connection (again).
    pub fn upstream_connected(&mut self) {
        self.upstream_up = true;
        match self.state {
            State::Connecting => {
                self.state = State::Active;
                self.send(Message::ConnAck {
                    code: ReturnCode::Accepted,
                });
            }
            State::Active => {
                for (filter, qos) in self.subscriptions.clone() {
                    self.up(Upstream::Subscribe { filter, qos });
                }
            }
            _ => {}
        }
    }

    /// The client's MQTT connection failed (it retries by itself).
    pub fn upstream_down(&mut self) {
        self.upstream_up = false;
    }

    /// The broker refused the connection for good (CONNACK with an error).
    pub fn upstream_refused(&mut self) {
        if self.state == State::Connecting {
            self.send(Message::ConnAck {
                code: ReturnCode::NotSupported,
            });
            self.close("the broker refused the client", Upstream::Abort);
        }
    }

    /// A message the broker has for the client. Returns false if it was dropped (the
    /// client's queue or topic table is full).
    pub fn deliver(&mut self, topic: &str, payload: Vec<u8>, qos: u8, now: Instant) -> bool {
        // An empty name cannot be registered (found by fuzzing; brokers never send one).
        if self.state != State::Active || topic.is_empty() {
            return false;
        }
        let qos = match self
            .subscriptions
            .iter()
            .filter(|(f, _)| mqttsn::filter_matches(f, topic))
            .map(|(_, q)| *q)
            .max()
        {
            Some(granted) => granted.min(qos),
            None => qos.min(1),
        };
        let (topic_id_type, topic_id, register) = if let Some(&id) = self.ids.get(topic) {
            (0, id, false)
        } else if let Some((&id, _)) = self.predefined.iter().find(|(_, name)| *name == topic) {
            (1, id, false)
        } else if topic.len() == 2 {
            let bytes = topic.as_bytes();
            (2, u16::from_be_bytes([bytes[0], bytes[1]]), false)
        } else {
            match self.topic_id(topic) {
                Some(id) => (0, id, true),
                None => return false,
            }
        };
        // A REGISTER takes two places (it, and the publish waiting for its REGACK).
        let needed = if register { 2 } else { usize::from(qos == 1) };
        let busy = self.inflight.len() + self.waiting.len();
        if busy + needed > self.limits.max_inflight {
            if register {
                self.forget_topic(topic_id);
            }
            return false;
        }
        let msg_id = if qos == 1 { self.msg_id() } else { 0 };
        let publish = Message::Publish {
            flags: flags(if qos == 1 { QoS::One } else { QoS::Zero }, topic_id_type),
            topic_id,
            msg_id,
            data: payload,
        };
        if register {
            let register_id = self.msg_id();
            self.send_reliably(
                Message::Register {
                    topic_id,
                    msg_id: register_id,
                    topic_name: topic.to_owned(),
                },
                now,
            );
            self.waiting.push((register_id, publish));
        } else if qos == 1 {
            self.send_reliably(publish, now);
        } else {
            self.send(publish);
        }
        true
    }

    /// Time passes: keep-alive supervision and retransmissions.
    pub fn tick(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        if self.state != State::Active {
            if now.saturating_duration_since(self.started) > self.limits.connect_timeout {
                self.close("the CONNECT exchange did not finish", Upstream::Abort);
            }
            return;
        }
        let silent = now.saturating_duration_since(self.last_heard);
        if silent > self.keep_alive.mul_f32(1.5) {
            // The client is lost (§6.14): the broker publishes its will.
            self.send(Message::Disconnect { duration: None });
            self.close("keep-alive expired", Upstream::Abort);
            return;
        }
        if silent > self.keep_alive && !self.pinged {
            self.pinged = true;
            self.send(Message::PingReq { client_id: None });
        }
        let retry = self.limits.retry;
        let mut resend = Vec::new();
        let mut lost = false;
        for pending in self.inflight.values_mut() {
            if now.saturating_duration_since(pending.sent) >= retry {
                if pending.tries >= self.limits.retries {
                    lost = true;
                    break;
                }
                pending.tries += 1;
                pending.sent = now;
                if let Message::Publish { flags, .. } = &mut pending.message {
                    flags.dup = true;
                }
                resend.push(pending.message.clone());
            }
        }
        if lost {
            self.send(Message::Disconnect { duration: None });
            self.close("no acknowledgement after retries", Upstream::Abort);
            return;
        }
        for message in resend {
            self.send(message);
        }
    }

    /// The client's CONNECT replaced this session, or the gateway stops.
    pub fn end(&mut self, why: &'static str) {
        self.close(why, Upstream::Disconnect);
    }

    /// Topic ids and queued messages held, for bounds checks in tests.
    pub fn held(&self) -> (usize, usize) {
        (self.names.len(), self.inflight.len() + self.waiting.len())
    }
}

fn flags_granted(qos: QoS) -> Flags {
    flags(qos, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn predefined() -> Predefined {
        Arc::new(HashMap::from([(1, "node/check".to_owned())]))
    }

    fn session(will: bool, now: Instant) -> Session {
        Session::connect(
            Flags {
                will,
                clean_session: true,
                ..Flags::default()
            },
            10,
            "n1".into(),
            now,
            Limits {
                max_topics: 4,
                max_inflight: 2,
                ..Limits::default()
            },
            predefined(),
        )
    }

    fn drain(session: &mut Session) -> Vec<Output> {
        std::iter::from_fn(|| session.poll()).collect()
    }

    fn active(now: Instant) -> Session {
        let mut s = session(false, now);
        assert!(matches!(
            &drain(&mut s)[..],
            [Output::Up(Upstream::Connect { will: None, .. })]
        ));
        s.upstream_connected();
        assert_eq!(
            drain(&mut s),
            vec![Output::Send(Message::ConnAck {
                code: ReturnCode::Accepted
            })]
        );
        s
    }

    #[test]
    fn the_will_exchange_precedes_the_brokers_connect() {
        let now = Instant::now();
        let mut s = session(true, now);
        assert_eq!(drain(&mut s), vec![Output::Send(Message::WillTopicReq)]);
        s.handle(
            Message::WillTopic {
                will: Some((flags(QoS::One, 0), "node/n1/gone".into())),
            },
            now,
        );
        assert_eq!(drain(&mut s), vec![Output::Send(Message::WillMsgReq)]);
        s.handle(
            Message::WillMsg {
                message: b"bye".to_vec(),
            },
            now,
        );
        let out = drain(&mut s);
        let [
            Output::Up(Upstream::Connect {
                will: Some(will), ..
            }),
        ] = &out[..]
        else {
            panic!("{out:?}");
        };
        assert_eq!(will.topic, "node/n1/gone");
        assert_eq!(will.message, b"bye");
        assert_eq!(will.qos, 1);
    }

    #[test]
    fn register_publish_and_retransmits_are_idempotent() {
        let now = Instant::now();
        let mut s = active(now);
        let register = Message::Register {
            topic_id: 0,
            msg_id: 7,
            topic_name: "node/n1/led".into(),
        };
        s.handle(register.clone(), now);
        s.handle(register, now);
        let out = drain(&mut s);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], out[1], "the same topic id twice");
        let Output::Send(Message::RegAck { topic_id, .. }) = out[0] else {
            panic!("{out:?}");
        };
        let publish = Message::Publish {
            flags: flags(QoS::One, 0),
            topic_id,
            msg_id: 8,
            data: b"{}".to_vec(),
        };
        s.handle(publish.clone(), now);
        s.handle(publish, now);
        let out = drain(&mut s);
        let ups = out.iter().filter(|o| matches!(o, Output::Up(_))).count();
        let acks = out
            .iter()
            .filter(|o| matches!(o, Output::Send(Message::PubAck { .. })))
            .count();
        assert_eq!((ups, acks), (1, 2), "{out:?}");
        // Unknown ids are refused, whatever the QoS.
        s.handle(
            Message::Publish {
                flags: flags(QoS::Zero, 0),
                topic_id: 99,
                msg_id: 0,
                data: vec![],
            },
            now,
        );
        assert!(matches!(
            &drain(&mut s)[..],
            [Output::Send(Message::PubAck {
                code: ReturnCode::InvalidTopicId,
                ..
            })]
        ));
    }

    #[test]
    fn register_floods_stop_at_the_table_size() {
        let now = Instant::now();
        let mut s = active(now);
        for i in 0..100u16 {
            s.handle(
                Message::Register {
                    topic_id: 0,
                    msg_id: i,
                    topic_name: format!("t/{i}"),
                },
                now,
            );
        }
        let refused = drain(&mut s)
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Output::Send(Message::RegAck {
                        code: ReturnCode::Congestion,
                        ..
                    })
                )
            })
            .count();
        assert_eq!(refused, 96);
        assert_eq!(s.held().0, 4);
    }

    #[test]
    fn subscribe_gives_the_topic_id_and_wildcards_get_a_register() {
        let now = Instant::now();
        let mut s = active(now);
        s.handle(
            Message::Subscribe {
                flags: flags(QoS::One, 0),
                msg_id: 1,
                topic: Topic::Name("gateway/n1/led/set".into()),
            },
            now,
        );
        let out = drain(&mut s);
        let Output::Send(Message::SubAck {
            topic_id: led,
            code: ReturnCode::Accepted,
            ..
        }) = out[1]
        else {
            panic!("{out:?}");
        };
        assert_ne!(led, 0);
        assert!(s.deliver("gateway/n1/led/set", b"1".to_vec(), 1, now));
        let out = drain(&mut s);
        assert!(
            matches!(&out[..], [Output::Send(Message::Publish { topic_id, flags, .. })] if *topic_id == led && flags.qos == QoS::One),
            "{out:?}"
        );

        s.handle(
            Message::Subscribe {
                flags: flags(QoS::Zero, 0),
                msg_id: 2,
                topic: Topic::Name("gateway/+/discover".into()),
            },
            now,
        );
        let out = drain(&mut s);
        assert!(matches!(
            out[1],
            Output::Send(Message::SubAck { topic_id: 0, .. })
        ));
        // Two places are needed (REGISTER and the publish after it): none while the LED
        // publish waits for its PUBACK.
        assert!(!s.deliver("gateway/n1/discover", b"values".to_vec(), 1, now));
        assert_eq!(s.held(), (1, 1));
        s.handle(
            Message::PubAck {
                topic_id: led,
                msg_id: 1,
                code: ReturnCode::Accepted,
            },
            now,
        );
        assert!(s.deliver("gateway/n1/discover", b"values".to_vec(), 1, now));
        let out = drain(&mut s);
        let [
            Output::Send(Message::Register {
                topic_id, msg_id, ..
            }),
        ] = out[..]
        else {
            panic!("{out:?}");
        };
        s.handle(
            Message::RegAck {
                topic_id,
                msg_id,
                code: ReturnCode::Accepted,
            },
            now,
        );
        let out = drain(&mut s);
        assert!(
            matches!(&out[..], [Output::Send(Message::Publish { topic_id: t, flags, .. })] if *t == topic_id && flags.qos == QoS::Zero),
            "{out:?}"
        );
    }

    #[test]
    fn a_silent_client_is_pinged_then_lost() {
        let now = Instant::now();
        let mut s = active(now);
        s.tick(now + Duration::from_secs(11));
        assert_eq!(
            drain(&mut s),
            vec![Output::Send(Message::PingReq { client_id: None })]
        );
        s.tick(now + Duration::from_secs(14));
        assert!(drain(&mut s).is_empty());
        s.tick(now + Duration::from_secs(16));
        let out = drain(&mut s);
        assert!(out.contains(&Output::Up(Upstream::Abort)), "{out:?}");
        assert!(matches!(out.last(), Some(Output::Close(_))));
    }

    #[test]
    fn unacknowledged_publishes_are_retried_then_the_client_is_lost() {
        let now = Instant::now();
        let mut s = active(now);
        s.handle(
            Message::Subscribe {
                flags: flags(QoS::One, 0),
                msg_id: 1,
                topic: Topic::Name("a/b".into()),
            },
            now,
        );
        drain(&mut s);
        assert!(s.deliver("a/b", b"x".to_vec(), 1, now));
        drain(&mut s);
        let mut t = now;
        for _ in 0..3 {
            t += Duration::from_secs(10);
            // The client keeps pinging, but never acknowledges.
            s.handle(Message::PingReq { client_id: None }, t);
            s.tick(t);
            let out = drain(&mut s);
            assert!(
                out.iter().any(
                    |o| matches!(o, Output::Send(Message::Publish { flags, .. }) if flags.dup)
                ),
                "{out:?}"
            );
        }
        t += Duration::from_secs(10);
        s.handle(Message::PingReq { client_id: None }, t);
        s.tick(t);
        assert!(drain(&mut s).contains(&Output::Up(Upstream::Abort)));
    }

    #[test]
    fn short_and_predefined_topics() {
        let now = Instant::now();
        let mut s = active(now);
        s.handle(
            Message::Publish {
                flags: flags(QoS::Zero, 1),
                topic_id: 1,
                msg_id: 0,
                data: b"x".to_vec(),
            },
            now,
        );
        s.handle(
            Message::Publish {
                flags: flags(QoS::Zero, 2),
                topic_id: u16::from_be_bytes(*b"ab"),
                msg_id: 0,
                data: b"y".to_vec(),
            },
            now,
        );
        let out = drain(&mut s);
        assert!(
            matches!(&out[0], Output::Up(Upstream::Publish { topic, .. }) if topic == "node/check")
        );
        assert!(matches!(&out[1], Output::Up(Upstream::Publish { topic, .. }) if topic == "ab"));
        assert!(s.deliver("ab", b"z".to_vec(), 0, now));
        // No REGISTER of an empty name (a fuzzing find).
        assert!(!s.deliver("", b"z".to_vec(), 0, now));
        assert!(matches!(
            &drain(&mut s)[..],
            [Output::Send(Message::Publish { flags, .. })] if flags.topic_id_type == 2
        ));
    }
}
