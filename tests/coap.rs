//! CoAP nodes against the real gateway binary: raw datagrams from loopback sockets, a web
//! client on `/ws` watching what they become. Each test has its own 127.N.0.0/16 addresses
//! and node port, so they run in parallel.

mod coap_support;
mod common;

use std::time::{Duration, Instant};

use aiot::proto::coap::message::{Block, Code, Message, Token, Type, option};
use coap_support::{Node, Served, about, gateway};
use common::{Peer, TIMEOUT, is_update};
use serde_json::{Value, json};

#[tokio::test]
async fn alive_registers_a_node_once_in_order_and_is_answered_at_once() {
    let gw = gateway(20101, "", &[]);
    let mut client = Peer::client(&format!("ws://{}/ws", gw.web)).await;

    // NON, as RIOT posts: a NON 2.04 with the token, at once.
    let mut riot = Node::bind("127.31.0.1:0", gw.coap).await;
    let started = Instant::now();
    let answer = riot
        .answer_to(Type::NonConfirmable, "/alive", "alive:232323")
        .await;
    assert_eq!(
        (answer.kind, answer.code),
        (Type::NonConfirmable, Code::CHANGED)
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let seen = about(&mut client, "232323", |m| m["endpoint"] == "protocol").await;
    let kinds: Vec<(Value, Value, Value)> = seen
        .iter()
        .map(|m| (m["type"].clone(), m["endpoint"].clone(), m["data"].clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            (json!("new"), Value::Null, Value::Null),
            (json!("update"), json!("ip"), json!("127.31.0.1")),
            (json!("update"), json!("protocol"), json!("CoAP")),
        ]
    );

    // CON, as pyaiot's test node: piggybacked ACK; the uid after the last ':'.
    let mut pyaiot = Node::bind("127.31.0.2:0", gw.coap).await;
    let sent_mid = pyaiot.mid.wrapping_add(1);
    let answer = pyaiot
        .answer_to(Type::Confirmable, "/alive", "Alive:x:1234")
        .await;
    assert_eq!(
        (answer.kind, answer.code, answer.mid),
        (Type::Acknowledgement, Code::CHANGED, sent_mid)
    );
    client
        .wait_for(TIMEOUT, |m| m["type"] == "new" && m["uid"] == "1234")
        .await;

    // Repeated alives do not announce the node again; readings arrive as updates.
    riot.answer_to(Type::NonConfirmable, "/alive", "alive:232323")
        .await;
    pyaiot
        .answer_to(Type::Confirmable, "/alive", "Alive:1234")
        .await;
    riot.answer_to(Type::NonConfirmable, "/server", "temperature:21°C")
        .await;
    let seen = about(&mut client, "232323", |m| m["endpoint"] == "temperature").await;
    assert!(seen.iter().all(|m| m["type"] != "new"), "{seen:?}");
    assert_eq!(seen.last().expect("one")["data"], "21°C");
    gw.aiot
        .wait_for_log(&["CoAP node registered", "232323"], TIMEOUT);
    assert_eq!(gw.aiot.count_log("CoAP node registered"), 2);

    // Five posts in, at least their five answers out (discovery requests come on top), as
    // /metrics counts them.
    let metrics = common::http_get(gw.web, "/metrics", &[]).await.text();
    let count = |name: &str| -> u64 {
        let prefix = format!("{name}{{channel=\"coap\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
    };
    assert_eq!(count("aiot_messages_received_total"), 5);
    assert!(count("aiot_messages_sent_total") >= 5);
}

#[tokio::test]
async fn a_node_that_moves_keeps_its_uid_and_a_silent_one_goes_out() {
    let gw = gateway(20102, "", &["--max-time", "2"]);
    let mut client = Peer::client(&format!("ws://{}/ws", gw.web)).await;
    let mut here = Node::bind("127.32.0.1:0", gw.coap).await;
    let mut there = Node::bind("127.32.0.2:0", gw.coap).await;
    here.answer_to(Type::Confirmable, "/alive", "alive:mover")
        .await;
    client
        .wait_for(TIMEOUT, |m| {
            is_update(m, Some("mover"), "ip", &json!("127.32.0.1"))
        })
        .await;
    there
        .answer_to(Type::Confirmable, "/alive", "alive:mover")
        .await;
    client
        .wait_for(TIMEOUT, |m| {
            is_update(m, Some("mover"), "ip", &json!("127.32.0.2"))
        })
        .await;
    // Values now come from the new address; the old one is nobody.
    // The node's last news: the gateway's clock for it starts after this instant.
    let silent_since = Instant::now();
    let answer = there.answer_to(Type::Confirmable, "/server", "led:1").await;
    assert_eq!(answer.code, Code::CHANGED);
    client
        .wait_for(TIMEOUT, |m| is_update(m, Some("mover"), "led", &json!("1")))
        .await;
    let answer = here.answer_to(Type::Confirmable, "/server", "led:0").await;
    assert_eq!(answer.code, Code::FORBIDDEN);
    // A server post counts as news (a refused one does not); then silence: out after
    // --max-time.
    client
        .wait_for(Duration::from_secs(6), |m| {
            m["type"] == "out" && m["uid"] == "mover"
        })
        .await;
    let waited = silent_since.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    gw.aiot.wait_for_log(&["silent too long", "mover"], TIMEOUT);
    // It may come back.
    here.answer_to(Type::NonConfirmable, "/alive", "alive:mover")
        .await;
    client
        .wait_for(TIMEOUT, |m| m["type"] == "new" && m["uid"] == "mover")
        .await;
}

#[tokio::test]
async fn a_duplicate_con_post_is_processed_once_and_acknowledged_twice() {
    let gw = gateway(20103, "", &[]);
    let mut client = Peer::client(&format!("ws://{}/ws", gw.web)).await;
    let mut node = Node::bind("127.33.0.1:0", gw.coap).await;
    node.answer_to(Type::Confirmable, "/alive", "alive:dup")
        .await;
    client
        .wait_for(TIMEOUT, |m| m["endpoint"] == "protocol")
        .await;

    let post = node.message(Type::Confirmable, Code::POST, "/server", b"count:1");
    node.send(&post.encode()).await;
    let (first, _) = node.recv(TIMEOUT).await.expect("ACK");
    node.send(&post.encode()).await; // as if our ACK had been lost
    let (second, _) = node.recv(TIMEOUT).await.expect("ACK again");
    assert_eq!(first, second);
    assert_eq!(
        (first.kind, first.code, first.mid),
        (Type::Acknowledgement, Code::CHANGED, post.mid)
    );
    node.answer_to(Type::Confirmable, "/server", "count:2")
        .await;
    let seen = about(&mut client, "dup", |m| m["data"] == "2").await;
    let ones = seen.iter().filter(|m| m["data"] == "1").count();
    assert_eq!(ones, 1, "processed once: {seen:?}");
    gw.aiot.wait_for_log(&["duplicate message id"], TIMEOUT);
}

#[tokio::test]
async fn hostile_datagrams_are_dropped_or_answered_and_disturb_nothing() {
    let gw = gateway(20104, "", &[]);
    let mut client = Peer::client(&format!("ws://{}/ws", gw.web)).await;
    let mut node = Node::bind("127.34.0.1:0", gw.coap).await;
    node.answer_to(Type::Confirmable, "/alive", "alive:victim")
        .await;
    client
        .wait_for(TIMEOUT, |m| m["endpoint"] == "protocol")
        .await;

    // Not CoAP at all, or cut short: nothing comes back for these.
    let mut attacker = Node::bind("127.34.0.2:0", gw.coap).await;
    for garbage in [
        &b""[..],
        b"\x01",
        b"\x17\x03 not CoAP, version 0",
        b"\x80\x01\x00\x01",     // version 2
        b"\x52\x02\x00\x01\xaa", // NON, token cut short
        b"\x50\x02\x00\x02\xf0", // NON, reserved option delta 15
    ] {
        attacker.send(garbage).await;
    }
    assert!(attacker.recv(Duration::from_millis(300)).await.is_none());
    // Text that happens to look like a CON (0x47 = version 1, CON, token length 7): reset.
    attacker.send(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(
        attacker.recv(TIMEOUT).await.expect("RST").0.kind,
        Type::Reset
    );

    // Malformed CONs are reset.
    attacker.send(b"\x40\x02\x00\x03\xf0").await; // bad option delta
    let (reset, _) = attacker.recv(TIMEOUT).await.expect("RST");
    assert_eq!((reset.kind, reset.mid), (Type::Reset, 3));
    attacker.send(b"\x40\x02\x00\x04\xb5ali").await; // option past the end
    assert_eq!(
        attacker.recv(TIMEOUT).await.expect("RST").0.kind,
        Type::Reset
    );

    // Requests that parse but make no sense get the right error.
    let mut critical = attacker.message(Type::Confirmable, Code::POST, "/alive", b"alive:evil");
    critical.add_option(9, b"x".to_vec());
    attacker.send(&critical.encode()).await;
    assert_eq!(
        attacker.recv(TIMEOUT).await.expect("4.02").0.code,
        Code::BAD_OPTION
    );
    let huge = format!("alive:{}", "x".repeat(1400));
    assert_eq!(
        attacker
            .answer_to(Type::Confirmable, "/alive", &huge)
            .await
            .code,
        Code::REQUEST_ENTITY_TOO_LARGE
    );
    for (path, payload, code) in [
        ("/alive", "no colon", Code::BAD_REQUEST),
        ("/alive", "alive:", Code::BAD_REQUEST),
        ("/server", "temperature:1", Code::FORBIDDEN), // not registered
        ("/nothing", "a:b", Code::NOT_FOUND),
    ] {
        let answer = attacker.answer_to(Type::Confirmable, path, payload).await;
        assert_eq!(answer.code, code, "{path} {payload}");
    }
    let mut bad_utf8 =
        attacker.message(Type::Confirmable, Code::POST, "/alive", &[b'a', b':', 0xff]);
    bad_utf8.token = Token::new(&[9]).expect("token");
    attacker.send(&bad_utf8.encode()).await;
    assert_eq!(
        attacker.recv(TIMEOUT).await.expect("4.00").0.code,
        Code::BAD_REQUEST
    );
    let get = attacker.message(Type::Confirmable, Code::GET, "/alive", b"");
    attacker.send(&get.encode()).await;
    assert_eq!(
        attacker.recv(TIMEOUT).await.expect("4.05").0.code,
        Code::METHOD_NOT_ALLOWED
    );
    // The registered node's own bad posts change nothing either.
    for payload in ["nocolon", ":empty", "ip:1.2.3.4"] {
        let answer = node.answer_to(Type::Confirmable, "/server", payload).await;
        assert_eq!(answer.code, Code::BAD_REQUEST, "{payload}");
    }
    // A CoAP ping is answered with a reset.
    attacker.send(b"\x40\x00\x00\x05").await;
    assert_eq!(
        attacker.recv(TIMEOUT).await.expect("RST").0.kind,
        Type::Reset
    );

    // Everything still works, and nobody else heard of any of it.
    node.answer_to(Type::NonConfirmable, "/server", "temperature:22°C")
        .await;
    let seen = about(&mut client, "victim", |m| m["endpoint"] == "temperature").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(gw.aiot.count_log("CoAP node registered"), 1);
    for needle in [
        "bad option delta",
        "unknown critical option",
        "too long",
        "unknown node",
        "not UTF-8",
    ] {
        gw.aiot.wait_for_log(&["DEBUG", needle], TIMEOUT);
    }
    let log = gw.aiot.log_text();
    assert!(!log.contains("ERROR") && !log.contains("panicked"), "{log}");
}

const FAST: &str = "[coap]\nack_timeout_ms = 300\nmax_retransmit = 2\n";

#[tokio::test]
async fn discovery_reads_each_resource_one_at_a_time_and_writes_round_trip() {
    let node_port = 20105;
    let gw = gateway(node_port, FAST, &[]);
    let mut client = Peer::client(&format!("ws://{}/ws", gw.web)).await;
    let served = Served::bind("127.35.0.1", node_port, gw.coap).await;
    let mut poster = Node::bind("127.35.0.1:0", gw.coap).await;
    poster
        .answer_to(Type::NonConfirmable, "/alive", "alive:disco")
        .await;

    // Unanswered, the discovery request is retransmitted: same id, same token.
    let first = served.expect(Code::GET, "/.well-known/core").await;
    let again = served.expect(Code::GET, "/.well-known/core").await;
    assert_eq!((again.0.mid, again.0.token), (first.0.mid, first.0.token));
    // An answer with the wrong token is no answer.
    let wrong = (
        Message::new(
            Type::Confirmable,
            Code::GET,
            first.0.mid,
            Token::new(&[0xee]).expect("t"),
        ),
        first.1,
    );
    served.reply(&wrong, Code::CONTENT, b"</nope>", &[]).await;
    served
        .reply(
            &first,
            Code::CONTENT,
            b"</name>;rt=\"x\",</led>, </big>,</.well-known/core>",
            &[(option::CONTENT_FORMAT, vec![40])],
        )
        .await;
    // Then each resource, never two at a time.
    let name = served.expect(Code::GET, "/name").await;
    assert!(
        served.node.recv(Duration::from_millis(150)).await.is_none(),
        "NSTART = 1"
    );
    // A separate response: empty ACK now, the answer later as CON (which the gateway ACKs).
    let empty = Message::empty(Type::Acknowledgement, name.0.mid);
    served
        .node
        .socket
        .send_to(&empty.encode(), name.1)
        .await
        .expect("send");
    assert!(
        served.node.recv(Duration::from_millis(700)).await.is_none(),
        "acknowledged: no retransmission"
    );
    let mut separate = Message::new(Type::Confirmable, Code::CONTENT, 0x7777, name.0.token);
    separate.payload = b"Test node".to_vec();
    served
        .node
        .socket
        .send_to(&separate.encode(), name.1)
        .await
        .expect("send");
    let (ack, _) = served
        .node
        .recv(TIMEOUT)
        .await
        .expect("the gateway ACKs our CON");
    assert_eq!((ack.kind, ack.mid), (Type::Acknowledgement, 0x7777));
    let led = served.expect(Code::GET, "/led").await;
    served.reply(&led, Code::CONTENT, b"0", &[]).await;
    // A value in three 16-byte blocks.
    let text = b"0123456789abcdef0123456789ABCDEF-end";
    for num in 0..3u32 {
        let big = served.expect(Code::GET, "/big").await;
        let asked = big.0.block2().expect("valid");
        assert_eq!(asked.map(|b| b.num), (num > 0).then_some(num));
        let start = num as usize * 16;
        let end = (start + 16).min(text.len());
        let block = Block {
            num,
            more: end < text.len(),
            szx: 0,
        };
        served
            .reply(
                &big,
                Code::CONTENT,
                &text[start..end],
                &[(option::BLOCK2, block.encode())],
            )
            .await;
    }
    let seen = about(&mut client, "disco", |m| m["endpoint"] == "big").await;
    let resources: Vec<(&str, &str)> = seen
        .iter()
        .filter(|m| m["type"] == "update")
        .map(|m| {
            (
                m["endpoint"].as_str().expect("e"),
                m["data"].as_str().expect("d"),
            )
        })
        .collect();
    assert_eq!(
        resources,
        [
            ("ip", "127.35.0.1"),
            ("protocol", "CoAP"),
            ("name", "Test node"),
            ("led", "0"),
            ("big", "0123456789abcdef0123456789ABCDEF-end")
        ]
    );

    // A write: PUT, 2.04, published.
    let write = |payload: &str| json!({"type": "update", "data": {"uid": "disco", "endpoint": "led", "payload": payload}});
    client.send_json(&write("1")).await;
    let put = served.expect(Code::PUT, "/led").await;
    assert_eq!(put.0.payload, b"1");
    served.reply(&put, Code::CHANGED, b"led:1", &[]).await;
    client
        .wait_for(TIMEOUT, |m| is_update(m, Some("disco"), "led", &json!("1")))
        .await;
    // Refused: logged, not published.
    client.send_json(&write("on")).await;
    let put = served.expect(Code::PUT, "/led").await;
    served.reply(&put, Code::BAD_REQUEST, b"", &[]).await;
    gw.aiot.wait_for_log(
        &["WARN", "CoAP write refused by the node", "disco", "4.00"],
        TIMEOUT,
    );
    // Unanswered: retransmitted, then given up, logged.
    client.send_json(&write("0")).await;
    let first = served.expect(Code::PUT, "/led").await;
    for _ in 0..2 {
        let again = served.expect(Code::PUT, "/led").await;
        assert_eq!(again.0.mid, first.0.mid);
    }
    gw.aiot.wait_for_log(
        &[
            "WARN",
            "CoAP write failed",
            "disco",
            "no answer after 3 transmissions",
        ],
        TIMEOUT,
    );
    // Nothing but "1" was ever published for the LED after discovery.
    client.send_json(&write("1")).await;
    let put = served.expect(Code::PUT, "/led").await;
    served.reply(&put, Code::CHANGED, b"", &[]).await;
    let seen = about(&mut client, "disco", |m| m["endpoint"] == "led").await;
    assert!(seen.iter().all(|m| m["data"] == "1"), "{seen:?}");
}
