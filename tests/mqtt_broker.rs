//! The gateway's embedded MQTT broker as hostile or unlucky clients meet it, over raw TCP:
//! the byte-level packets are written here so that a test can reset a connection at the
//! worst moment, send garbage, or leave without a DISCONNECT.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Aiot, Peer, TIMEOUT};

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { byte | 0x80 } else { byte });
        if n == 0 {
            return;
        }
    }
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    remaining_length(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

fn string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// MQTT 3.1.1 CONNECT, clean session, keep-alive 60 s, with an optional will (QoS 0).
fn connect_packet(client_id: &str, will: Option<(&str, &str)>) -> Vec<u8> {
    let mut body = Vec::new();
    string("MQTT", &mut body);
    body.push(4);
    body.push(if will.is_some() { 0x02 | 0x04 } else { 0x02 });
    body.extend_from_slice(&60u16.to_be_bytes());
    string(client_id, &mut body);
    if let Some((topic, message)) = will {
        string(topic, &mut body);
        string(message, &mut body);
    }
    packet(0x10, &body)
}

fn subscribe_packet(filter: &str) -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    string(filter, &mut body);
    body.push(0);
    packet(0x82, &body)
}

fn publish_packet(topic: &str, payload: &str) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic, &mut body);
    body.extend_from_slice(payload.as_bytes());
    packet(0x30, &body)
}

struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    fn open(broker: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(broker).expect("connect to the embedded broker");
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        RawClient { stream }
    }

    /// CONNECT, and the CONNACK's return code.
    fn connect(broker: SocketAddr, client_id: &str, will: Option<(&str, &str)>) -> (RawClient, u8) {
        let mut client = RawClient::open(broker);
        client.send(&connect_packet(client_id, will));
        let (kind, body) = client.read_packet().expect("a CONNACK");
        assert_eq!(kind >> 4, 2, "not a CONNACK: {kind:#x} {body:?}");
        (client, body[1])
    }

    fn subscribe(&mut self, filter: &str) {
        self.send(&subscribe_packet(filter));
        let kind = self.read_packet().map(|(kind, _)| kind >> 4);
        assert_eq!(kind, Some(9), "no SUBACK for {filter}");
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the broker");
    }

    /// The next packet's first byte and body; `None` when the broker closed the connection.
    fn read_packet(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut first = [0u8; 1];
        if self.stream.read_exact(&mut first).is_err() {
            return None;
        }
        let (mut length, mut shift) = (0usize, 0);
        loop {
            let mut byte = [0u8; 1];
            self.stream.read_exact(&mut byte).ok()?;
            length |= usize::from(byte[0] & 0x7f) << shift;
            shift += 7;
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).ok()?;
        Some((first[0], body))
    }

    /// The next PUBLISH's topic and payload (QoS 0), skipping other packets.
    fn next_publish(&mut self) -> Option<(String, String)> {
        loop {
            let (kind, body) = self.read_packet()?;
            if kind >> 4 == 3 {
                let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let topic = String::from_utf8_lossy(&body[2..2 + len]).into_owned();
                let payload = String::from_utf8_lossy(&body[2 + len..]).into_owned();
                return Some((topic, payload));
            }
        }
    }

    /// Gone without DISCONNECT, with a reset rather than a FIN.
    fn reset(self) {
        socket2::SockRef::from(&self.stream)
            .set_linger(Some(Duration::ZERO))
            .expect("linger 0");
    }
}

fn gateway(extra: &[&str]) -> (Aiot, SocketAddr, SocketAddr) {
    let (gateway, _, web) = common::gateway(None, extra);
    let broker = gateway.listening("MQTT clients");
    (gateway, broker, web)
}

async fn limit_hits(web: SocketAddr, limit: &str) -> u64 {
    let metrics = common::http_get(web, "/metrics", &[]).await.text();
    let needle = format!("aiot_limit_hits_total{{limit=\"{limit}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&needle))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {needle} in /metrics"))
}

/// A node reaches the gateway through the broker: it is the proof that the broker still
/// serves, not only that the process is alive.
async fn a_node_still_gets_through(broker: SocketAddr, web: SocketAddr, id: &str) {
    let mut client = Peer::client(&format!("ws://{web}/ws")).await;
    let (mut node, code) = RawClient::connect(broker, id, None);
    assert_eq!(code, 0);
    node.send(&publish_packet(
        "node/check",
        &format!(r#"{{"id":"{id}"}}"#),
    ));
    client
        .wait_for(TIMEOUT, |m| m["endpoint"] == "id" && m["data"] == id)
        .await;
}

#[tokio::test]
async fn a_client_reset_right_after_connect_takes_nothing_down() {
    let (gateway, broker, web) = gateway(&[]);
    // rumqttd's own listener aborted the process on the second of these: the first left a
    // will handler without a receiver behind, and the next CONNECT with that id unwrapped
    // the failed send.
    for _ in 0..5 {
        let mut client = RawClient::open(broker);
        client.send(&connect_packet("victim", None));
        client.reset();
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_client, code) = RawClient::connect(broker, "victim", None);
    assert_eq!(code, 0, "the id is usable again");
    a_node_still_gets_through(broker, web, "after-resets").await;
    assert!(
        !gateway.log_text().contains("panicked"),
        "{}",
        gateway.log_text()
    );
}

#[tokio::test]
async fn garbage_instead_of_mqtt_is_dropped_and_the_broker_serves_on() {
    let (gateway, broker, web) = gateway(&[]);
    let oversize = {
        // A PUBLISH announcing 200 MB after a valid CONNECT.
        let mut bytes = connect_packet("big", None);
        bytes.push(0x30);
        remaining_length(200_000_000, &mut bytes);
        bytes
    };
    let hostile: [&[u8]; 5] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0xff; 64],
        &[0x10, 0xff, 0xff, 0xff, 0xff, 0x7f],
        &[0x10, 0x02, 0x00],
        &oversize,
    ];
    for bytes in hostile {
        let mut client = RawClient::open(broker);
        client.send(bytes);
        // The broker may answer a CONNACK to the valid CONNECT first; then it must close.
        let deadline = Instant::now() + TIMEOUT;
        while client.read_packet().is_some() {
            assert!(Instant::now() < deadline, "not closed after {bytes:?}");
        }
    }
    a_node_still_gets_through(broker, web, "after-garbage").await;
    assert!(!gateway.log_text().contains("panicked"));
}

/// MQTT 5 CONNECT, clean start, keep-alive 60 s, no properties.
fn connect_v5_packet(client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    string("MQTT", &mut body);
    body.extend_from_slice(&[5, 0x02, 0, 60, 0]);
    string(client_id, &mut body);
    packet(0x10, &body)
}

#[tokio::test]
async fn server_packets_from_a_client_are_refused_on_both_ports() {
    let (gateway, broker, web) = gateway(&[]);
    let broker_v5 = gateway.listening("MQTT 5 clients");
    // rumqttd's MQTT 5 decoder reaches `unreachable!()` on a CONNACK or an UNSUBACK: one
    // such packet from a client aborted the gateway.
    for (addr, connect) in [
        (broker_v5, connect_v5_packet("v5")),
        (broker, connect_packet("v311", None)),
    ] {
        for server_packet in [
            &[0x20, 0x03, 0x00, 0x00, 0x00][..],
            &[0xb0, 0x03, 0x00, 0x01, 0x00],
        ] {
            let mut client = RawClient::open(addr);
            client.send(&connect);
            assert_eq!(
                client.read_packet().map(|(k, _)| k >> 4),
                Some(2),
                "CONNACK"
            );
            client.send(server_packet);
            assert_eq!(client.read_packet(), None, "closed after {server_packet:?}");
        }
    }
    a_node_still_gets_through(broker, web, "after-server-packets").await;
    assert!(!gateway.log_text().contains("panicked"));
}

#[tokio::test]
async fn clients_past_max_connections_get_connack_3_are_counted_and_others_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::config_file(&dir, "[mqtt]\nmax_connections = 4\n");
    let (gateway, broker, web) = gateway(&["--config", &config]);
    // The MQTT-SN gateway holds one connection of its own; fill the rest.
    let mut admitted = Vec::new();
    let refused = loop {
        let (client, code) = RawClient::connect(broker, &format!("c{}", admitted.len()), None);
        if code != 0 {
            break code;
        }
        admitted.push(client);
        assert!(admitted.len() <= 4, "the limit is not enforced");
    };
    assert_eq!(refused, 3, "CONNACK 3: server unavailable");
    assert_eq!(admitted.len(), 3);
    let (_, again) = RawClient::connect(broker, "extra", None);
    assert_eq!(again, 3);
    assert_eq!(limit_hits(web, "mqtt_max_connections").await, 2);
    assert_eq!(gateway.count_log("MQTT clients refused"), 1, "logged once");

    // The admitted ones still publish and receive.
    let (first, rest) = admitted.split_at_mut(1);
    first[0].subscribe("t/x");
    rest[0].send(&publish_packet("t/x", "hello"));
    assert_eq!(
        first[0].next_publish(),
        Some(("t/x".to_owned(), "hello".to_owned()))
    );

    // One leaves; a newcomer takes its place.
    drop(admitted.pop());
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (_client, code) = RawClient::connect(broker, "newcomer", None);
        if code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place is not given again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_will_goes_out_when_a_client_vanishes_and_not_after_disconnect() {
    let (_gateway, broker, _web) = gateway(&[]);
    let (mut watcher, code) = RawClient::connect(broker, "watcher", None);
    assert_eq!(code, 0);
    watcher.subscribe("will/#");

    let (mut polite, _) = RawClient::connect(broker, "polite", Some(("will/polite", "bye")));
    polite.send(&[0xe0, 0x00]);
    let (vanishing, _) = RawClient::connect(broker, "vanishing", Some(("will/vanishing", "lost")));
    vanishing.reset();

    assert_eq!(
        watcher.next_publish(),
        Some(("will/vanishing".to_owned(), "lost".to_owned())),
        "the first will is the vanished client's: the polite one has none"
    );
    // Nothing else comes (the polite client's will would).
    watcher
        .stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    assert_eq!(watcher.next_publish(), None);
}
