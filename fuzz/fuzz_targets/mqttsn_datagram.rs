//! The MQTT-SN gateway's datagram path: decoding, and the client table with its sessions
//! (CONNECT, WILL*, REGISTER, PUBLISH, SUBSCRIBE, pings, keep-alive, retransmissions).
//! Whatever arrives, nothing panics, what decodes re-encodes to the same message, every
//! answer is valid MQTT-SN, and the bounds hold.
//!
//! The input is a series of datagrams, each preceded by one byte: its length (low 6 bits),
//! which of two peers sends it (bit 6) and whether the broker delivers a message to the
//! sender's session first (bit 7).

#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aiot::adapters::mqttsn::clients::{Clients, Event, Settings, UpEvent};
use aiot::adapters::mqttsn::session::{Limits, Upstream};
use aiot::proto::mqttsn::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        let again = Message::decode(&message.encode()).expect("what we encode decodes");
        assert_eq!(again, message);
    }
    let peers: [SocketAddr; 2] = [
        "127.0.0.2:49152".parse().expect("address"),
        "[::1]:1885".parse().expect("address"),
    ];
    let mut clients = Clients::new(Settings {
        gateway_id: 1,
        max_clients: 1,
        max_datagram: 512,
        limits: Limits {
            max_topics: 4,
            max_inflight: 2,
            retry: Duration::from_secs(1),
            retries: 2,
            ..Limits::default()
        },
        predefined: Arc::new(HashMap::from([(1, "node/check".to_owned())])),
    });
    let mut connections: HashMap<u64, SocketAddr> = HashMap::new();
    let mut now = Instant::now();
    let mut rest = data;
    while let Some((&head, tail)) = rest.split_first() {
        let len = usize::from(head & 0x3f).min(tail.len());
        let (datagram, tail) = tail.split_at(len);
        rest = tail;
        let peer = peers[usize::from((head >> 6) & 1)];
        if head & 0x80 != 0 {
            for (&connection, &to) in &connections {
                if to == peer {
                    clients.upstream(connection, UpEvent::Connected, now);
                    let topic = String::from_utf8_lossy(datagram).into_owned();
                    clients.upstream(
                        connection,
                        UpEvent::Message {
                            topic,
                            payload: datagram.to_vec(),
                            qos: head & 1,
                        },
                        now,
                    );
                }
            }
        }
        clients.handle_datagram(peer, datagram, now);
        now += Duration::from_millis(700);
        clients.tick(now);
        while let Some(event) = clients.poll() {
            match event {
                Event::Transmit { datagram, .. } => {
                    assert!(datagram.len() <= 512);
                    Message::decode(&datagram).expect("we send valid MQTT-SN");
                }
                Event::Up {
                    connection,
                    command: Upstream::Connect { .. },
                } => {
                    connections.insert(connection, peer);
                }
                _ => {}
            }
        }
        let (topics, queued) = clients.held();
        assert!(topics <= 4 && queued <= 2, "{topics} topics, {queued} queued");
    }
    assert!(clients.len() <= 1);
});
