//! Every parser of `aiot::proto` against garbage: mutations of real messages (bit flips,
//! truncations, insertions, splices) and random bytes. None may panic; whatever parses must
//! serialize and parse back to the same value. Deterministic (seeded) so a failure reproduces;
//! the coverage-guided versions of these live in `fuzz/`.

use aiot::proto::broker::{BrokerRequest, ClientMessage, NodeMessage};
use aiot::proto::node_ws::{FromNode, ToNode};
use aiot::proto::{check_message, reading};

const SEEDS: &[&str] = &[
    r#"{"type": "new", "uid": "2f0a", "dst": "all"}"#,
    r#"{"type": "update", "uid": "2f0a", "endpoint": "temperature", "data": "23°C", "dst": "9b1c"}"#,
    r#"{"type": "update", "uid": "n", "endpoint": "imu", "data": {"x": [1.5, -2e3, null]}, "dst": "all"}"#,
    r#"{"type": "out", "uid": "2f0a"}"#,
    r#"{"type": "reset", "uid": "2f0a"}"#,
    r#"{"type": "update", "uid": "alive"}"#,
    r#"{"type": "new", "data": "client"}"#,
    r#"{"type": "update", "data": {"uid": "u", "endpoint": "led", "payload": "1"}}"#,
    r#"{"type":"new","data":"client","src":"c1"}"#,
    r#"{"type": "update", "data": {"node": "fd00::1", "name": "websocket", "led": "0", "os": "riot"}}"#,
    r#"{"request":"discover"}"#,
    r#"{"endpoint":"led","payload":"1"}"#,
    r#""\ud800""#,
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
];

const INTERESTING: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\\",
    b"\\u0000",
    b"null",
    b"1e999",
    b"-",
    b"\xff",
    b"\xc3",
    b"\xe2\x82",
    b"type",
    b"uid",
    b"dst",
    b"data",
    b"alive",
    b"\"update\"",
    b"\"new\"",
];

fn mutate(seed: &[u8], rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..rng.usize(1..4) {
        let at = rng.usize(0..=bytes.len());
        match rng.u8(0..5) {
            0 if !bytes.is_empty() => {
                let i = rng.usize(0..bytes.len());
                bytes[i] ^= 1 << rng.u8(0..8);
            }
            1 => bytes.truncate(at),
            2 => {
                let piece = INTERESTING[rng.usize(0..INTERESTING.len())];
                bytes.splice(at..at, piece.iter().copied());
            }
            3 if at < bytes.len() => {
                let end = rng.usize(at..bytes.len());
                bytes.drain(at..end);
            }
            _ => {
                let other = SEEDS[rng.usize(0..SEEDS.len())].as_bytes();
                let from = rng.usize(0..other.len());
                bytes.splice(at..at, other[from..].iter().copied());
            }
        }
    }
    bytes
}

fn exercise(text: &str) {
    let _ = check_message(text);
    if let Ok(message) = NodeMessage::parse(text) {
        assert_eq!(
            NodeMessage::parse(&message.to_json()),
            Ok(message.clone()),
            "{text}"
        );
    }
    if let Ok(ClientMessage::Write(write)) = ClientMessage::parse(text) {
        let request = BrokerRequest::Write { write, src: None };
        assert_eq!(
            BrokerRequest::parse(&request.to_json()),
            Ok(Some(request.clone()))
        );
    }
    if let Ok(Some(request)) = BrokerRequest::parse(text) {
        assert_eq!(
            BrokerRequest::parse(&request.to_json()),
            Ok(Some(request.clone()))
        );
    }
    if let Ok(FromNode::Update(resources)) = FromNode::parse(text) {
        let again = FromNode::parse(&FromNode::update_json(&resources));
        assert_eq!(again, Ok(FromNode::Update(resources)), "{text}");
    }
    if let Ok(to_node) = ToNode::parse(text) {
        assert_eq!(ToNode::parse(&to_node.to_json()), Ok(to_node.clone()));
    }
    let _ = reading::numeric(&serde_json::Value::String(text.to_owned()));
}

#[test]
fn mutated_real_messages_never_panic_and_round_trip() {
    let mut rng = fastrand::Rng::with_seed(0x5eed_a107);
    let mut parsed = 0usize;
    for round in 0..200_000 {
        let seed = SEEDS[round % SEEDS.len()].as_bytes();
        let bytes = mutate(seed, &mut rng);
        // Websocket text frames are UTF-8; the frame layer refuses anything else first.
        if let Ok(text) = std::str::from_utf8(&bytes) {
            exercise(text);
            parsed += usize::from(check_message(text).is_ok());
        }
    }
    println!("{parsed} of 200000 mutations were still valid messages");
    assert!(
        parsed > 1_000,
        "the mutations stay close enough to real messages to matter"
    );
}

#[test]
fn random_text_never_panics() {
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..50_000 {
        let length = rng.usize(0..64);
        let text: String = (0..length)
            .map(|_| char::from_u32(rng.u32(0..0x250)).unwrap_or('?'))
            .collect();
        exercise(&text);
    }
}

#[test]
fn deep_nesting_and_huge_numbers_are_refused_cleanly() {
    let deep = format!(
        r#"{{"type":"update","uid":"u","endpoint":"e","data":{}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(
        NodeMessage::parse(&deep).is_err(),
        "serde_json's recursion limit holds"
    );
    let big = r#"{"type":"update","uid":"u","endpoint":"e","data":1e999}"#;
    let _ = NodeMessage::parse(big);
    let long_uid = format!(
        r#"{{"type":"new","uid":"{}","dst":"all"}}"#,
        "u".repeat(1 << 20)
    );
    assert!(
        NodeMessage::parse(&long_uid).is_ok(),
        "size is the frame limit's job"
    );
}
