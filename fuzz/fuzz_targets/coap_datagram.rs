//! The CoAP gateway's whole datagram path: decoding, the message layer (duplicates, matching,
//! resets), and the gateway's handling of `/alive` and `/server`. Whatever arrives, nothing
//! panics, what decodes re-encodes to the same message, and every answer is valid CoAP.
//!
//! The input is a series of datagrams, each preceded by one byte: its length (low 7 bits) and
//! which of two peers sends it (high bit).

#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aiot::adapters::coap::nodes::{Nodes, Settings};
use aiot::proto::coap::message::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        let again = Message::decode(&message.encode()).expect("what we encode decodes");
        assert_eq!(again, message);
    }
    let peers: [SocketAddr; 2] = [
        "127.0.0.2:49152".parse().expect("address"),
        "[::1]:5683".parse().expect("address"),
    ];
    let mut nodes = Nodes::new(
        Settings {
            max_nodes: 4,
            ..Settings::default()
        },
        1,
    );
    let mut now = Instant::now();
    let mut rest = data;
    while let Some((&head, tail)) = rest.split_first() {
        let len = usize::from(head & 0x7f).min(tail.len());
        let (datagram, tail) = tail.split_at(len);
        rest = tail;
        nodes.handle_datagram(peers[usize::from(head >> 7)], datagram, now);
        now += Duration::from_millis(700);
        nodes.handle_timeout(now);
        while let Some(transmit) = nodes.poll_transmit() {
            Message::decode(&transmit.datagram).expect("we send valid CoAP");
        }
        while nodes.poll_publish().is_some() {}
    }
    nodes.handle_oversize(peers[0], data, now);
    assert!(nodes.len() <= 4);
});
