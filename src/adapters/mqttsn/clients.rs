//! Every MQTT-SN client of the gateway, sans-IO: datagrams (with their sender), the MQTT
//! connections' events and time in; datagrams and MQTT commands out. Clients are known by
//! their UDP address; each session gets a connection number for its MQTT connection
//! (0 is the gateway's own, which carries QoS -1 publishes).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use super::session::{Limits, Output, Predefined, Session, Upstream};
use crate::proto::mqttsn::{Flags, Message, QoS, ReturnCode};

/// The connection number of the gateway's own MQTT connection.
pub const GATEWAY_CONNECTION: u64 = 0;
/// Peers remembered as already warned about (then the set starts over).
const WARNED: usize = 1024;

#[derive(Debug, Clone)]
pub struct Settings {
    pub gateway_id: u8,
    pub max_clients: usize,
    /// Largest datagram taken or sent; larger ones are dropped.
    pub max_datagram: usize,
    pub limits: Limits,
    pub predefined: Predefined,
}

/// What the socket side must do or count.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Transmit {
        peer: SocketAddr,
        datagram: Vec<u8>,
    },
    Up {
        connection: u64,
        command: Upstream,
    },
    /// A message was dropped (malformed, refused, no room).
    Dropped,
    /// A client was dropped (keep-alive, retries, CONNECT timeout).
    Lost,
    /// A CONNECT was refused: `max_clients` are connected.
    Full,
}

/// What a client's MQTT connection reports.
#[derive(Debug, Clone, PartialEq)]
pub enum UpEvent {
    Connected,
    Down,
    Refused,
    Message {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
    },
}

pub struct Clients {
    settings: Settings,
    by_peer: HashMap<SocketAddr, (u64, Session)>,
    peers: HashMap<u64, SocketAddr>,
    next_connection: u64,
    warned: HashSet<SocketAddr>,
    /// Peers told about `max_clients`, apart, so one warning does not hide the other.
    warned_full: HashSet<SocketAddr>,
    out: VecDeque<Event>,
}

impl Clients {
    pub fn new(settings: Settings) -> Clients {
        Clients {
            settings,
            by_peer: HashMap::new(),
            peers: HashMap::new(),
            next_connection: GATEWAY_CONNECTION + 1,
            warned: HashSet::new(),
            warned_full: HashSet::new(),
            out: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_peer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_peer.is_empty()
    }

    pub fn poll(&mut self) -> Option<Event> {
        self.out.pop_front()
    }

    /// Logs a bad datagram at warn the first time for each peer, at debug after.
    fn refuse(&mut self, peer: SocketAddr, why: &dyn std::fmt::Display) {
        if self.warned.len() >= WARNED {
            self.warned.clear();
        }
        if self.warned.insert(peer) {
            tracing::warn!(%peer, %why, "MQTT-SN datagram dropped (further ones from this peer are logged at debug)");
        } else {
            tracing::debug!(%peer, %why, "MQTT-SN datagram dropped");
        }
        self.out.push_back(Event::Dropped);
    }

    fn transmit(&mut self, peer: SocketAddr, message: &Message) {
        let datagram = message.encode();
        if datagram.len() > self.settings.max_datagram {
            tracing::debug!(%peer, bytes = datagram.len(), "MQTT-SN message for a client larger than max_datagram_bytes, dropped");
            self.out.push_back(Event::Dropped);
        } else {
            self.out.push_back(Event::Transmit { peer, datagram });
        }
    }

    /// A datagram larger than `max_datagram` arrived (the socket cut it).
    pub fn handle_oversize(&mut self, peer: SocketAddr) {
        let limit = self.settings.max_datagram;
        self.refuse(peer, &format_args!("larger than {limit} bytes"));
    }

    pub fn handle_datagram(&mut self, peer: SocketAddr, datagram: &[u8], now: Instant) {
        if datagram.len() > self.settings.max_datagram {
            self.handle_oversize(peer);
            return;
        }
        let message = match Message::decode(datagram) {
            Ok(message) => message,
            Err(error) => {
                self.refuse(peer, &error);
                return;
            }
        };
        match message {
            Message::SearchGw { .. } => {
                let info = Message::GwInfo {
                    gw_id: self.settings.gateway_id,
                    gw_add: Vec::new(),
                };
                self.transmit(peer, &info);
            }
            Message::Connect {
                flags,
                duration,
                client_id,
            } => self.connect(peer, flags, duration, client_id, now),
            Message::Publish {
                flags,
                topic_id,
                data,
                ..
            } if flags.qos == QoS::MinusOne => self.publish_minus_one(peer, flags, topic_id, data),
            Message::Encapsulated { .. } => {
                self.refuse(peer, &"forwarder encapsulation is not supported");
            }
            message => {
                if let Some((_, session)) = self.by_peer.get_mut(&peer) {
                    session.handle(message, now);
                    self.drain(peer);
                } else {
                    self.unknown_client(peer, message);
                }
            }
        }
    }

    /// A message that needs a session, from an address without one (the gateway restarted,
    /// or the client was dropped): DISCONNECT tells it to connect again.
    fn unknown_client(&mut self, peer: SocketAddr, message: Message) {
        match message {
            Message::Register { .. }
            | Message::Publish { .. }
            | Message::Subscribe { .. }
            | Message::Unsubscribe { .. }
            | Message::PingReq { .. } => {
                tracing::debug!(%peer, message = message.name(), "MQTT-SN message from an unconnected client");
                self.transmit(peer, &Message::Disconnect { duration: None });
                self.out.push_back(Event::Dropped);
            }
            other => {
                tracing::debug!(%peer, message = other.name(), "MQTT-SN message ignored");
                self.out.push_back(Event::Dropped);
            }
        }
    }

    /// QoS -1 (§6.8): no connection, a predefined or short topic id; nothing is answered.
    fn publish_minus_one(&mut self, peer: SocketAddr, flags: Flags, topic_id: u16, data: Vec<u8>) {
        let topic = match flags.topic_id_type {
            1 => self.settings.predefined.get(&topic_id).cloned(),
            2 => String::from_utf8(topic_id.to_be_bytes().to_vec())
                .ok()
                .filter(|t| !crate::proto::mqttsn::has_wildcards(t)),
            _ => None,
        };
        match topic {
            Some(topic) => self.out.push_back(Event::Up {
                connection: GATEWAY_CONNECTION,
                command: Upstream::Publish {
                    topic,
                    payload: data,
                    qos: 0,
                    retain: flags.retain,
                },
            }),
            None => self.refuse(
                peer,
                &"QoS -1 publish without a known predefined or short topic id",
            ),
        }
    }

    fn connect(
        &mut self,
        peer: SocketAddr,
        flags: Flags,
        duration: u16,
        client_id: String,
        now: Instant,
    ) {
        // A retransmitted CONNECT (the broker's answer is slow) is not a new session: the
        // CONNACK comes when the broker answers.
        if let Some((_, session)) = self.by_peer.get(&peer)
            && session.is_connecting()
            && session.client_id() == client_id
        {
            tracing::debug!(%peer, client = %client_id, "MQTT-SN CONNECT again while connecting, ignored");
            return;
        }
        // A new CONNECT from the same address starts over; the same client id elsewhere
        // takes over (as the broker would do with the MQTT connection).
        let same_id = self
            .by_peer
            .iter()
            .find(|(_, (_, s))| s.client_id() == client_id)
            .map(|(p, _)| *p);
        for old in [Some(peer), same_id].into_iter().flatten() {
            if let Some((_, session)) = self.by_peer.get_mut(&old) {
                session.end("replaced by a new CONNECT");
                self.drain(old);
            }
        }
        if self.by_peer.len() >= self.settings.max_clients {
            if self.warned_full.len() >= WARNED {
                self.warned_full.clear();
            }
            if self.warned_full.insert(peer) {
                tracing::warn!(%peer, max = self.settings.max_clients, "MQTT-SN client refused: max_clients reached (mqttsn.max_clients); its further attempts are counted, not logged");
            } else {
                tracing::debug!(%peer, "MQTT-SN client refused: max_clients reached");
            }
            self.out.push_back(Event::Full);
            self.transmit(
                peer,
                &Message::ConnAck {
                    code: ReturnCode::Congestion,
                },
            );
            self.out.push_back(Event::Dropped);
            return;
        }
        let connection = self.next_connection;
        self.next_connection += 1;
        tracing::debug!(%peer, client = %client_id, connection, "MQTT-SN client connecting");
        let session = Session::connect(
            flags,
            duration,
            client_id,
            now,
            self.settings.limits.clone(),
            self.settings.predefined.clone(),
        );
        self.by_peer.insert(peer, (connection, session));
        self.peers.insert(connection, peer);
        self.drain(peer);
    }

    /// Moves a session's output out; forgets the session when it closed.
    fn drain(&mut self, peer: SocketAddr) {
        let Some((connection, session)) = self.by_peer.get_mut(&peer) else {
            return;
        };
        let connection = *connection;
        let mut outputs = Vec::new();
        while let Some(output) = session.poll() {
            outputs.push(output);
        }
        for output in outputs {
            match output {
                Output::Send(message) => self.transmit(peer, &message),
                Output::Up(command) => self.out.push_back(Event::Up {
                    connection,
                    command,
                }),
                Output::Close(why) => {
                    if let Some((_, session)) = self.by_peer.remove(&peer) {
                        tracing::info!(%peer, client = %session.client_id(), %why, "MQTT-SN client gone");
                    }
                    self.peers.remove(&connection);
                    if why != "disconnected" && why != "replaced by a new CONNECT" {
                        self.out.push_back(Event::Lost);
                    }
                }
            }
        }
    }

    /// An event of connection `connection`'s MQTT side.
    pub fn upstream(&mut self, connection: u64, event: UpEvent, now: Instant) {
        let Some(&peer) = self.peers.get(&connection) else {
            return;
        };
        let Some((_, session)) = self.by_peer.get_mut(&peer) else {
            return;
        };
        match event {
            UpEvent::Connected => {
                if !session.is_active() {
                    tracing::info!(%peer, client = %session.client_id(), "MQTT-SN client connected");
                }
                session.upstream_connected();
            }
            UpEvent::Down => session.upstream_down(),
            UpEvent::Refused => session.upstream_refused(),
            UpEvent::Message {
                topic,
                payload,
                qos,
            } => {
                if !session.deliver(&topic, payload, qos, now) {
                    tracing::debug!(%peer, %topic, "MQTT-SN delivery dropped: the client's queue or topic table is full");
                    self.out.push_back(Event::Dropped);
                }
            }
        }
        self.drain(peer);
    }

    pub fn tick(&mut self, now: Instant) {
        let peers: Vec<SocketAddr> = self.by_peer.keys().copied().collect();
        for peer in peers {
            if let Some((_, session)) = self.by_peer.get_mut(&peer) {
                session.tick(now);
            }
            self.drain(peer);
        }
    }

    /// The gateway stops: every client's MQTT connection closes cleanly.
    pub fn end_all(&mut self) {
        let peers: Vec<SocketAddr> = self.by_peer.keys().copied().collect();
        for peer in peers {
            if let Some((_, session)) = self.by_peer.get_mut(&peer) {
                session.end("the gateway stops");
            }
            self.drain(peer);
        }
    }

    /// The largest topic table and queue held by one client, for bounds checks.
    pub fn held(&self) -> (usize, usize) {
        self.by_peer
            .values()
            .fold((0, 0), |(topics, queued), (_, s)| {
                let (t, q) = s.held();
                (topics.max(t), queued.max(q))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn clients(max_clients: usize) -> Clients {
        Clients::new(Settings {
            gateway_id: 5,
            max_clients,
            max_datagram: 256,
            limits: Limits::default(),
            predefined: Arc::new(HashMap::from([(1, "node/check".to_owned())])),
        })
    }

    fn drain(c: &mut Clients) -> Vec<Event> {
        std::iter::from_fn(|| c.poll()).collect()
    }

    fn peer(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 40000 + n))
    }

    fn connect(id: &str) -> Vec<u8> {
        Message::Connect {
            flags: Flags::default(),
            duration: 30,
            client_id: id.into(),
        }
        .encode()
    }

    #[test]
    fn searchgw_connect_and_the_client_limit() {
        let now = Instant::now();
        let mut c = clients(2);
        c.handle_datagram(peer(1), &[3, 0x01, 0], now);
        assert_eq!(
            drain(&mut c),
            vec![Event::Transmit {
                peer: peer(1),
                datagram: vec![3, 0x02, 5]
            }]
        );
        c.handle_datagram(peer(1), &connect("a"), now);
        let events = drain(&mut c);
        let [
            Event::Up {
                connection,
                command: Upstream::Connect { .. },
            },
        ] = events[..]
        else {
            panic!("{events:?}");
        };
        c.upstream(connection, UpEvent::Connected, now);
        assert_eq!(
            drain(&mut c),
            vec![Event::Transmit {
                peer: peer(1),
                datagram: vec![3, 0x05, 0]
            }]
        );
        c.handle_datagram(peer(2), &connect("b"), now);
        c.handle_datagram(peer(3), &connect("c"), now);
        let events = drain(&mut c);
        assert!(events.contains(&Event::Transmit {
            peer: peer(3),
            datagram: vec![3, 0x05, 1]
        }));
        assert_eq!(c.len(), 2);
        // A retransmitted CONNECT while the broker has not answered yet changes nothing.
        c.handle_datagram(peer(2), &connect("b"), now);
        assert!(drain(&mut c).is_empty());
        // Client "a" from a new address replaces the old session.
        c.handle_datagram(peer(4), &connect("a"), now);
        let events = drain(&mut c);
        assert!(events.contains(&Event::Up {
            connection,
            command: Upstream::Disconnect
        }));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn garbage_is_dropped_and_unknown_clients_told_to_connect() {
        let now = Instant::now();
        let mut c = clients(2);
        for bad in [
            &[][..],
            &[9, 9],
            &[2, 0x03],
            &[0x01, 0, 9, 0x16],
            &[0u8; 300],
        ] {
            c.handle_datagram(peer(1), bad, now);
        }
        assert!(drain(&mut c).iter().all(|e| *e == Event::Dropped));
        c.handle_datagram(peer(1), &[2, 0x16], now);
        assert_eq!(
            drain(&mut c)[0],
            Event::Transmit {
                peer: peer(1),
                datagram: vec![2, 0x18]
            }
        );
        assert!(c.is_empty());
    }

    #[test]
    fn qos_minus_one_needs_no_connection() {
        let now = Instant::now();
        let mut c = clients(2);
        let publish = Message::Publish {
            flags: Flags {
                qos: QoS::MinusOne,
                topic_id_type: 1,
                ..Flags::default()
            },
            topic_id: 1,
            msg_id: 0,
            data: br#"{"id":"x"}"#.to_vec(),
        };
        c.handle_datagram(peer(1), &publish.encode(), now);
        assert!(matches!(
            &drain(&mut c)[..],
            [Event::Up { connection: GATEWAY_CONNECTION, command: Upstream::Publish { topic, .. } }] if topic == "node/check"
        ));
    }
}
