//! The CoAP gateway with real peers: a real RIOT node's datagrams replayed from its capture,
//! libcoap's `coap-client` and `coap-server`, and a node served by Python's aiocoap.
//! ci/test installs them (Debian `libcoap3-bin`, pip `aiocoap`).

mod coap_support;
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv6Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aiot::proto::coap::message::{Code, Message, Type};
use coap_support::{Node, Served, about, gateway};
use common::{Peer, TIMEOUT, is_update};
use serde_json::json;

/// One UDP datagram of the capture.
struct Datagram {
    src: (Ipv6Addr, u16),
    dst: (Ipv6Addr, u16),
    payload: Vec<u8>,
}

/// Reads a pcap file (Ethernet, IPv6, UDP) into its UDP datagrams.
fn read_pcap(bytes: &[u8]) -> Vec<Datagram> {
    let u32le = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!(
        u32le(0),
        0xa1b2_c3d4,
        "a little-endian pcap with microseconds"
    );
    assert_eq!(u32le(20), 1, "link type Ethernet");
    let mut datagrams = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let captured = u32le(at + 8) as usize;
        let frame = &bytes[at + 16..at + 16 + captured];
        at += 16 + captured;
        // Ethernet: 14 bytes, EtherType 0x86dd; IPv6: 40 bytes, next header 17 (UDP).
        if frame.len() < 14 + 40 + 8 || frame[12..14] != [0x86, 0xdd] || frame[14 + 6] != 17 {
            continue;
        }
        let ip = &frame[14..];
        let address =
            |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&ip[at..at + 16]).expect("16"));
        let udp = &ip[40..];
        let port = |at: usize| u16::from_be_bytes([udp[at], udp[at + 1]]);
        let length = port(4) as usize;
        datagrams.push(Datagram {
            src: (address(8), port(0)),
            dst: (address(24), port(2)),
            payload: udp[8..length].to_vec(),
        });
    }
    datagrams
}

fn fixture() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/fixtures/riot-2019.07-node_leds-coap.pcap"
    );
    std::fs::read(path).unwrap_or_else(|e| panic!("the fixture {path}: {e}"))
}

/// What the RIOT node answered, by request: (method, path, payload) → its response.
type Answers = HashMap<(Code, String, Vec<u8>), Message>;

#[tokio::test]
async fn a_real_riot_node_replayed_from_its_capture_is_registered_discovered_and_written() {
    let datagrams = read_pcap(&fixture());
    let alive = datagrams
        .iter()
        .find(|d| d.dst.1 == 5683 && d.payload.ends_with(b"232323232323232"))
        .expect("the node's first post");
    let node_ip = alive.src.0;
    assert_eq!(alive.src.1, 49152, "RIOT posts from an ephemeral port");
    // The node's posts, exactly as sent (node → listener port 5683, from the ephemeral port).
    let posts: Vec<&Datagram> = datagrams
        .iter()
        .filter(|d| d.src == (node_ip, 49152) && d.dst.1 == 5683)
        .collect();
    assert_eq!(posts.len(), 3, "reset, alive, alive");
    // What the node answered to the listener's requests, matched by message id.
    let mut answers = Answers::new();
    for request in datagrams.iter().filter(|d| d.dst == (node_ip, 5683)) {
        let request = Message::decode(&request.payload).expect("a CoAP request");
        let response = datagrams
            .iter()
            .filter(|d| d.src == (node_ip, 5683))
            .map(|d| Message::decode(&d.payload).expect("a CoAP response"))
            .find(|r| r.mid == request.mid && r.kind == Type::Acknowledgement)
            .expect("a piggybacked answer");
        answers.insert(
            (
                request.code,
                request.path().expect("path"),
                request.payload.clone(),
            ),
            response,
        );
    }
    assert!(
        answers.len() >= 8,
        "discovery, 6 reads, 2 writes: {}",
        answers.len()
    );

    let node_port = 20201;
    let gw = gateway(node_port, "", &[]);
    let mut client = Peer::client(&format!("ws://{}/ws", gw.web)).await;
    // The node, on loopback instead of fd00:dead:beef::: its server side answers the
    // gateway's requests with the captured answers (under the gateway's message id and token).
    let served = Served::bind("127.41.0.1", node_port, gw.coap).await;
    let responder = tokio::spawn(async move {
        let mut asked = Vec::new();
        while let Some((request, from)) = served.node.recv(Duration::from_secs(30)).await {
            let key = (
                request.code,
                request.path().expect("path"),
                request.payload.clone(),
            );
            asked.push(format!("{} {}", request.code, key.1));
            let Some(captured) = answers.get(&key) else {
                panic!("the RIOT node was never asked {key:?}");
            };
            let mut answer = captured.clone();
            answer.mid = request.mid;
            answer.token = request.token;
            served
                .node
                .socket
                .send_to(&answer.encode(), from)
                .await
                .expect("send");
            if asked.len() == 7 {
                return asked;
            }
        }
        asked
    });
    let poster = Node::bind("127.41.0.1:0", gw.coap).await;
    for post in &posts {
        poster.send(&post.payload).await;
        let (answer, _) = poster.recv(TIMEOUT).await.expect("an answer");
        assert_eq!(
            (answer.kind, answer.code),
            (Type::NonConfirmable, Code::CHANGED)
        );
    }

    let uid = "232323232323232";
    let seen = about(&mut client, uid, |m| m["endpoint"] == "os").await;
    assert_eq!(seen[0]["type"], "new");
    let resources: Vec<(String, String)> = seen
        .iter()
        .filter(|m| m["type"] == "update")
        .map(|m| {
            (
                m["endpoint"].as_str().expect("e").into(),
                m["data"].as_str().expect("d").into(),
            )
        })
        .collect();
    let expected = [
        ("ip", "127.41.0.1"),
        ("protocol", "CoAP"),
        ("board", "native"),
        ("led", "1"),
        ("mcu", "native"),
        ("name", "Node LED"),
        ("os", "riot"),
    ];
    assert_eq!(
        resources,
        expected.map(|(e, d)| (e.to_owned(), d.to_owned())),
        "the reset after the first alive may repeat the announcement, never reorder it"
    );
    assert_eq!(gw.aiot.count_log("CoAP node registered"), 1);

    client
        .send_json(
            &json!({"type": "update", "data": {"uid": uid, "endpoint": "led", "payload": "0"}}),
        )
        .await;
    client
        .wait_for(TIMEOUT, |m| is_update(m, Some(uid), "led", &json!("0")))
        .await;
    let asked = responder.await.expect("the responder ran");
    assert_eq!(
        asked,
        [
            "0.01 /.well-known/core",
            "0.01 /board",
            "0.01 /led",
            "0.01 /mcu",
            "0.01 /name",
            "0.01 /os",
            "0.03 /led"
        ]
    );
}

/// A child process killed when the test ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn coap_client(args: &[&str]) -> std::process::Output {
    Command::new("coap-client-notls")
        .args(args)
        .output()
        .expect("coap-client-notls runs (ci/test installs Debian's libcoap3-bin)")
}

#[tokio::test]
async fn libcoap_coap_client_posts_alive_and_readings() {
    let gw = gateway(20202, "", &[]);
    let mut client = Peer::client(&format!("ws://{}/ws", gw.web)).await;
    let port = gw.coap.port().to_string();
    let url = |path: &str| format!("coap://127.0.0.1:{port}/{path}");
    for (extra, payload, path) in [
        (None, "alive:libcoap-con", "alive"),
        (Some("-N"), "alive:libcoap-non", "alive"),
        (None, "temperature:19C", "server"),
    ] {
        let mut args = vec!["-m", "post", "-B", "5", "-e", payload];
        args.extend(extra);
        let target = url(path);
        args.push(&target);
        let output = coap_client(&args);
        assert!(
            output.status.success(),
            "{payload}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    client
        .wait_for(TIMEOUT, |m| {
            is_update(m, Some("libcoap-con"), "ip", &json!("127.0.0.1"))
        })
        .await;
    client
        .wait_for(TIMEOUT, |m| m["type"] == "new" && m["uid"] == "libcoap-non")
        .await;
    // Both posted from 127.0.0.1: the address belongs to the latest uid.
    client
        .wait_for(TIMEOUT, |m| {
            is_update(m, Some("libcoap-non"), "temperature", &json!("19C"))
        })
        .await;
    // A GET of /alive is refused with 4.05, which coap-client prints.
    let output = coap_client(&["-B", "3", &url("alive")]);
    let text = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("4.05"), "{text}");
}

#[tokio::test]
async fn a_libcoap_coap_server_is_discovered_read_block_wise_and_written() {
    let node_port = 20203;
    let gw = gateway(node_port, "[coap]\nack_timeout_ms = 500\n", &[]);
    let mut client = Peer::client(&format!("ws://{}/ws", gw.web)).await;
    let _server = Process(
        Command::new("coap-server-notls")
            .args(["-A", "127.42.0.1", "-p", &node_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("coap-server-notls runs (ci/test installs Debian's libcoap3-bin)"),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut poster = Node::bind("127.42.0.1:0", gw.coap).await;
    poster
        .answer_to(Type::Confirmable, "/alive", "alive:libcoap-server")
        .await;
    let uid = "libcoap-server";
    // Its links carry parameters and quoted titles; /async answers separately (empty ACK,
    // then a CON response); /example_data is longer than a block (Block2).
    let seen = about(&mut client, uid, |m| m["endpoint"] == "example_data").await;
    let value = |endpoint: &str| {
        seen.iter()
            .find(|m| m["endpoint"] == endpoint)
            .and_then(|m| m["data"].as_str())
            .unwrap_or_else(|| panic!("no {endpoint} in {seen:?}"))
            .to_owned()
    };
    let data = value("example_data");
    assert!(
        data.len() > 1024 && data.starts_with("a123456789b123456789"),
        "{} bytes",
        data.len()
    );
    assert_eq!(value("async"), "done");
    assert!(!value("time").is_empty());
    client
        .send_json(&json!({"type": "update", "data": {"uid": uid, "endpoint": "example_data", "payload": "written by aiot"}}))
        .await;
    client
        .wait_for(TIMEOUT, |m| {
            is_update(m, Some(uid), "example_data", &json!("written by aiot"))
        })
        .await;
    let output = coap_client(&[
        "-B",
        "3",
        &format!("coap://127.42.0.1:{node_port}/example_data"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "written by aiot"
    );
}

#[tokio::test]
async fn an_aiocoap_node_is_discovered_read_block_wise_and_written() {
    let node_port = 20204;
    let gw = gateway(node_port, "", &[]);
    let mut client = Peer::client(&format!("ws://{}/ws", gw.web)).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/coap_node.py");
    let mut child = Command::new("python3")
        .args([
            script,
            "--bind",
            "127.43.0.1",
            "--port",
            &node_port.to_string(),
            "--gateway",
            &format!("coap://127.0.0.1:{}", gw.coap.port()),
            "--uid",
            "aiocoap-1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs (ci/test installs aiocoap)");
    let stdout = child.stdout.take().expect("piped");
    let _node = Process(child);
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let uid = "aiocoap-1";
    let seen = about(&mut client, uid, |m| m["endpoint"] == "js").await;
    let endpoints: Vec<&str> = seen.iter().filter_map(|m| m["endpoint"].as_str()).collect();
    for wanted in ["ip", "protocol", "name", "board", "led", "js"] {
        assert!(endpoints.contains(&wanted), "{wanted} in {endpoints:?}");
    }
    let js = seen.last().expect("js")["data"]
        .as_str()
        .expect("text")
        .to_owned();
    assert_eq!(js.lines().count(), 120, "all blocks, in order");
    assert!(js.len() > 2048);
    assert!(js.ends_with("line 0119 of the script\n"));

    client
        .send_json(
            &json!({"type": "update", "data": {"uid": uid, "endpoint": "led", "payload": "1"}}),
        )
        .await;
    client
        .wait_for(TIMEOUT, |m| is_update(m, Some(uid), "led", &json!("1")))
        .await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let line = tokio::time::timeout_at(deadline, lines.recv())
            .await
            .expect("the node reports the PUT");
        if line.as_deref() == Some("PUT 1") {
            break;
        }
    }
    let _: SocketAddr = gw.coap;
}
