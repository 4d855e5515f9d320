//! Hostile peers on every endpoint: `/ws` (broker and gateway), `/node` and `/gw`. Invalid
//! messages close with 1003 and a reason, oversize frames with 1009, useless but well-formed
//! client messages are ignored, a flood is absorbed; and after each of them everyone else
//! (web clients, nodes, the gateway's uplink) keeps working.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Aiot, Peer, TIMEOUT, broker_with_keys_args, gateway, is_update, key_file};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

const UNSUPPORTED: u16 = 1003;
const TOO_BIG: u16 = 1009;

/// A broker, a gateway connected to it, a well-behaved node on the gateway, and a web client
/// on each of them that said `new`: the bystanders that must not notice any hostile peer.
struct World {
    broker: Aiot,
    broker_addr: SocketAddr,
    gateway: Aiot,
    node_addr: SocketAddr,
    web_addr: SocketAddr,
    key_file: String,
    _keys: tempfile::TempDir,
    _config: tempfile::TempDir,
    /// The steady node and its uid.
    node: Peer,
    uid: String,
    /// Web clients of the broker and of the gateway.
    central: Peer,
    local: Peer,
    probes: u32,
}

impl World {
    async fn new() -> World {
        // The steady clients write after every attack, faster than the per-connection
        // message limit allows a browser: that limit has its own tests (tests/web_auth.rs).
        let config = tempfile::tempdir().expect("temp dir");
        let config_file = config.path().join("aiot.toml");
        std::fs::write(&config_file, "[web]\nclient_messages_per_sec = 100000\n")
            .expect("write config");
        let config_arg = config_file.to_str().expect("utf-8 path");
        let (broker, broker_addr, keys) = broker_with_keys_args(&["--config", config_arg]);
        let key_file = key_file(&keys);
        let (gateway, node_addr, web_addr) =
            gateway(Some((broker_addr, &key_file)), &["--config", config_arg]);
        gateway.wait_for_log(&["connected to broker"], TIMEOUT);
        let mut central = Peer::client(&format!("ws://{broker_addr}/ws")).await;
        let mut local = Peer::client(&format!("ws://{web_addr}/ws")).await;
        let mut node = Peer::node(node_addr).await;
        node.send_json(&json!({"type": "update", "data": {"name": "steady", "led": "0"}}))
            .await;
        let uid = uid_of(&mut central, "name", &json!("steady")).await;
        assert_eq!(uid_of(&mut local, "name", &json!("steady")).await, uid);
        World {
            broker,
            broker_addr,
            gateway,
            node_addr,
            web_addr,
            key_file,
            _keys: keys,
            _config: config,
            node,
            uid,
            central,
            local,
            probes: 0,
        }
    }

    fn broker_ws(&self) -> String {
        format!("ws://{}/ws", self.broker_addr)
    }

    fn gateway_ws(&self) -> String {
        format!("ws://{}/ws", self.web_addr)
    }

    /// Everyone else still works after `after`: both processes run, a new reading of the steady
    /// node reaches both web clients (through the uplink for the broker's), the steady node was
    /// never reported gone, and a write from the broker's client reaches the node.
    async fn check(&mut self, after: &str) {
        assert!(
            self.broker.wait_exit(Duration::ZERO).is_none(),
            "the broker exited after {after}"
        );
        assert!(
            self.gateway.wait_exit(Duration::ZERO).is_none(),
            "the gateway exited after {after}"
        );
        assert_eq!(
            self.gateway.count_log("connected to broker"),
            1,
            "the uplink reconnected after {after}"
        );
        self.probes += 1;
        let value = json!(format!("after {after} #{}", self.probes));
        self.node
            .send_json(&json!({"type": "update", "data": {"probe": value}}))
            .await;
        let uid = self.uid.clone();
        for (name, client) in [("central", &mut self.central), ("local", &mut self.local)] {
            client
                .wait_for(TIMEOUT, |m| {
                    assert!(
                        !(m["type"] == "out" && m["uid"] == uid.as_str()),
                        "{name}: the steady node went out after {after}"
                    );
                    is_update(m, Some(&uid), "probe", &value)
                })
                .await;
        }
        self.central
            .send_json(&json!({"type": "update", "data": {"uid": uid, "endpoint": "led", "payload": value}}))
            .await;
        assert_eq!(
            self.node.next_json(TIMEOUT).await,
            Some(json!({"endpoint": "led", "payload": value})),
            "a write after {after}"
        );
    }

    /// A fresh node that announced itself with `name`; returns it with its uid.
    async fn extra_node(&mut self, name: &str) -> (Peer, String) {
        let mut node = Peer::node(self.node_addr).await;
        node.send_json(&json!({"type": "update", "data": {"name": name}}))
            .await;
        let uid = uid_of(&mut self.local, "name", &json!(name)).await;
        assert_eq!(uid_of(&mut self.central, "name", &json!(name)).await, uid);
        (node, uid)
    }

    /// A fake gateway on `/gw` that announced two nodes; returns it with their uids.
    async fn fake_gateway(&mut self, tag: &str) -> (Peer, [String; 2]) {
        let mut gw = Peer::gateway(self.broker_addr, &self.key_file).await;
        let uids = [format!("{tag}-a"), format!("{tag}-b")];
        for uid in &uids {
            gw.send_json(&json!({"type": "new", "uid": uid, "dst": "all"}))
                .await;
            gw.send_json(&json!({"type": "update", "uid": uid, "endpoint": "name", "data": uid, "dst": "all"}))
                .await;
        }
        for uid in &uids {
            self.central
                .wait_for(TIMEOUT, |m| is_update(m, Some(uid), "name", &json!(uid)))
                .await;
        }
        (gw, uids)
    }
}

/// The four websocket endpoints a hostile peer can reach.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    BrokerClients,
    GatewayClients,
    Nodes,
    Gateways,
}

const ENDPOINTS: [Endpoint; 4] = [
    Endpoint::BrokerClients,
    Endpoint::GatewayClients,
    Endpoint::Nodes,
    Endpoint::Gateways,
];

impl World {
    /// A peer on `endpoint` (a client that said `new`, a node or a gateway that announced
    /// nodes), and the uids of the nodes that must go `out` when it is closed.
    async fn open(&mut self, endpoint: Endpoint, tag: &str) -> (Peer, Vec<String>) {
        match endpoint {
            Endpoint::BrokerClients => (Peer::client(&self.broker_ws()).await, vec![]),
            Endpoint::GatewayClients => (Peer::client(&self.gateway_ws()).await, vec![]),
            Endpoint::Nodes => {
                let (node, uid) = self.extra_node(tag).await;
                (node, vec![uid])
            }
            Endpoint::Gateways => {
                let (gw, uids) = self.fake_gateway(tag).await;
                (gw, uids.to_vec())
            }
        }
    }

    /// The web clients that should know the nodes of a peer on `endpoint` hear them go `out`.
    async fn expect_gone(&mut self, endpoint: Endpoint, uids: &[String], what: &str) {
        expect_out(&mut self.central, uids, what).await;
        if let Endpoint::Nodes = endpoint {
            expect_out(&mut self.local, uids, what).await;
        }
    }
}

/// `client` hears `out` for every one of `uids`.
async fn expect_out(client: &mut Peer, uids: &[String], what: &str) {
    for uid in uids {
        let out = client
            .wait_for(TIMEOUT, |m| m["type"] == "out" && m["uid"] == uid.as_str())
            .await;
        assert_eq!(out, json!({"type": "out", "uid": uid}), "{what}");
    }
}

async fn uid_of(client: &mut Peer, endpoint: &str, data: &Value) -> String {
    let update = client
        .wait_for(TIMEOUT, |m| is_update(m, None, endpoint, data))
        .await;
    update["uid"].as_str().expect("uid is a string").to_owned()
}

/// What a hostile peer sends.
#[derive(Clone)]
enum Bad {
    Text(String),
    Binary,
    /// A text frame whose payload is not UTF-8.
    InvalidUtf8,
}

impl Bad {
    fn text(text: impl Into<String>) -> Bad {
        Bad::Text(text.into())
    }

    fn describe(&self) -> String {
        match self {
            Bad::Text(text) if text.len() > 60 => {
                format!("{}… ({} bytes)", &text[..40], text.len())
            }
            Bad::Text(text) => format!("{text:?}"),
            Bad::Binary => "a binary frame".into(),
            Bad::InvalidUtf8 => "a text frame of invalid UTF-8".into(),
        }
    }

    async fn send(&self, peer: &mut Peer) {
        match self {
            Bad::Text(text) => peer.send_text(text).await,
            Bad::Binary => peer
                .ws
                .send(Message::binary(b"{\"type\":\"new\"}".to_vec()))
                .await
                .expect("send"),
            Bad::InvalidUtf8 => peer
                .ws
                .send(raw_frame(b"{\"type\": \"new\xff\"}", Data::Text, true))
                .await
                .expect("send"),
        }
    }
}

/// A frame as tungstenite sends it without checking it: for fragments and invalid text.
fn raw_frame(payload: &[u8], opcode: Data, is_final: bool) -> Message {
    Message::Frame(Frame::message(
        payload.to_vec(),
        OpCode::Data(opcode),
        is_final,
    ))
}

/// What is invalid on every endpoint: not JSON, not an object, no or an unknown `type`, and
/// binary frames. Some are long, to check that reasons are cut to fit a close frame.
fn invalid_everywhere() -> Vec<Bad> {
    let long = "x".repeat(10_000);
    vec![
        Bad::text("hello"),
        Bad::text(""),
        Bad::text(format!("{{\"type\": \"new\", {long}")),
        Bad::text("[1, 2, 3]"),
        Bad::text(r#"[{"type": "new", "data": "client"}]"#),
        Bad::text("42"),
        Bad::text("-1.5e300"),
        Bad::text(r#""new""#),
        Bad::text("null"),
        Bad::text("true"),
        Bad::text("{}"),
        Bad::text(r#"{"data": "client"}"#),
        Bad::text(r#"{"type": "subscribe", "data": "client"}"#),
        Bad::text(format!(r#"{{"type": "{long}"}}"#)),
        Bad::text(r#"{"type": 1}"#),
        Bad::text(r#"{"type": ["new"]}"#),
        Bad::text(r#"{"type": null}"#),
        // Deeper than any parser should recurse (and within the frame limit).
        Bad::text("[".repeat(30_000)),
        Bad::text(format!(
            r#"{{"type": "update", "data": {}{}}}"#,
            "{\"a\":".repeat(5_000),
            "}".repeat(5_000)
        )),
        Bad::Binary,
        Bad::InvalidUtf8,
    ]
}

/// Reads until the server closes, and checks the close frame: `code`, and a reason that is
/// there and fits a close frame (RFC 6455 §5.5: at most 123 bytes).
async fn expect_close(peer: &mut Peer, code: u16, what: &str) -> String {
    let frame = peer
        .closed(TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("{what}: closed without a close frame"));
    check_frame(&frame, code, what)
}

fn check_frame(frame: &CloseFrame, code: u16, what: &str) -> String {
    assert_eq!(u16::from(frame.code), code, "{what}: closed with {frame:?}");
    assert!(!frame.reason.is_empty(), "{what}: an empty close reason");
    assert!(
        frame.reason.len() <= 123,
        "{what}: a close reason of {} bytes",
        frame.reason.len()
    );
    frame.reason.to_string()
}

/// Sends a 10 MB text frame (a well-formed update, were it not for its size) while reading
/// what the server says; returns the close frame the server sent.
async fn send_oversize(peer: Peer, what: &str) -> CloseFrame {
    let big = format!(
        r#"{{"type": "update", "data": {{"big": "{}"}}}}"#,
        "x".repeat(10 << 20)
    );
    let (mut sink, mut stream) = peer.ws.split();
    let sender = tokio::spawn(async move {
        // The server stops reading in the middle: the send may well fail.
        let _ = sink.send(Message::text(big)).await;
        sink
    });
    let frame = loop {
        match tokio::time::timeout(TIMEOUT, stream.next()).await {
            Err(_) => panic!("{what}: the server did not close within {TIMEOUT:?}"),
            Ok(Some(Ok(Message::Close(Some(frame))))) => break frame,
            Ok(Some(Ok(Message::Close(None)))) => panic!("{what}: closed without a close frame"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(error))) => {
                panic!("{what}: connection broken without a close frame: {error}")
            }
            Ok(None) => panic!("{what}: connection ended without a close frame"),
        }
    };
    sender.abort();
    frame
}

#[tokio::test]
async fn web_clients_sending_invalid_messages_are_closed_with_1003() {
    let mut world = World::new().await;
    for url in [world.broker_ws(), world.gateway_ws()] {
        for bad in invalid_everywhere() {
            let what = format!("{url} after {}", bad.describe());
            // Once before saying `new`, once after (then it is registered for events).
            for hello in [false, true] {
                let mut client = if hello {
                    Peer::client(&url).await
                } else {
                    Peer::connect(&url).await
                };
                bad.send(&mut client).await;
                let reason = expect_close(&mut client, UNSUPPORTED, &what).await;
                if let Bad::Text(text) = &bad {
                    if text.len() > 1000 {
                        assert!(
                            !reason.contains(&"x".repeat(100)),
                            "{what}: the reason echoes the input: {reason}"
                        );
                    }
                }
            }
            world.check(&what).await;
        }
    }
}

#[tokio::test]
async fn web_clients_sending_useless_messages_are_ignored_and_keep_working() {
    let mut world = World::new().await;
    let uid = world.uid.clone();
    let useless = [
        json!({"type": "update"}),
        json!({"type": "update", "data": "led"}),
        json!({"type": "update", "data": null}),
        json!({"type": "update", "data": [uid, "led", "1"]}),
        json!({"type": "update", "data": {}}),
        json!({"type": "update", "data": {"uid": uid, "endpoint": "led"}}),
        json!({"type": "update", "data": {"uid": uid, "payload": "useless"}}),
        json!({"type": "update", "data": {"endpoint": "led", "payload": "useless"}}),
        json!({"type": "update", "data": {"uid": uid, "endpoint": "led", "payload": "useless", "extra": 1}}),
        json!({"type": "update", "data": {"uid": uid, "endpoint": "led", "value": "useless"}}),
        json!({"type": "update", "data": {"uid": 7, "endpoint": "led", "payload": "useless"}}),
        json!({"type": "update", "data": {"uid": uid, "endpoint": ["led"], "payload": "useless"}}),
        json!({"type": "update", "data": {"uid": "no-such-node", "endpoint": "led", "payload": "useless"}}),
        json!({"type": "out", "uid": uid}),
        json!({"type": "out"}),
        json!({"type": "reset", "uid": uid}),
        json!({"type": "new", "data": "client", "extra": [1, 2]}),
        json!({"type": "new"}),
    ];
    for url in [world.broker_ws(), world.gateway_ws()] {
        let mut client = Peer::client(&url).await;
        uid_of(&mut client, "name", &json!("steady")).await;
        for message in &useless {
            client.send_json(message).await;
        }
        // Pings are answered, not taken for messages.
        client
            .ws
            .send(Message::Ping(b"still there?".to_vec().into()))
            .await
            .expect("ping sent");
        // None of them reached the node: the next thing it hears is this valid write.
        let payload = json!(format!("valid from {url}"));
        client
            .send_json(&json!({"type": "update", "data": {"uid": uid, "endpoint": "led", "payload": payload}}))
            .await;
        assert_eq!(
            world.node.next_json(TIMEOUT).await,
            Some(json!({"endpoint": "led", "payload": payload})),
            "{url}: only the valid write reaches the node"
        );
        // The client still hears the node, and the node was never taken for gone.
        world
            .node
            .send_json(&json!({"type": "update", "data": {"temperature": url}}))
            .await;
        client
            .wait_for(TIMEOUT, |m| {
                assert!(
                    !(m["type"] == "out" && m["uid"] == uid.as_str()),
                    "{url}: a client's out removed the node"
                );
                is_update(m, Some(&uid), "temperature", &json!(url))
            })
            .await;
        world.check(&format!("useless messages on {url}")).await;
    }
}

#[tokio::test]
async fn nodes_sending_invalid_messages_are_closed_with_1003_and_go_out() {
    let mut world = World::new().await;
    let mut bad_messages = invalid_everywhere();
    bad_messages.extend(
        [
            r#"{"type": "update"}"#,
            r#"{"type": "update", "data": null}"#,
            r#"{"type": "update", "data": [1, 2]}"#,
            r#"{"type": "update", "data": "led:1"}"#,
            r#"{"type": "update", "data": 1}"#,
        ]
        .map(Bad::text),
    );
    for (i, bad) in bad_messages.iter().enumerate() {
        let what = format!("a node sending {}", bad.describe());
        let (mut node, uid) = world.extra_node(&format!("hostile-{i}")).await;
        bad.send(&mut node).await;
        expect_close(&mut node, UNSUPPORTED, &what).await;
        let uids = [uid];
        expect_out(&mut world.central, &uids, &what).await;
        expect_out(&mut world.local, &uids, &what).await;
        world.check(&what).await;
    }
    // Well-formed messages a node has no business sending are ignored, as pyaiot does.
    let (mut node, uid) = world.extra_node("odd").await;
    for odd in [
        json!({"type": "new", "data": "client"}),
        json!({"type": "out", "uid": uid}),
        json!({"type": "reset"}),
        json!({"type": "update", "data": {}}),
    ] {
        node.send_json(&odd).await;
    }
    node.send_json(&json!({"type": "update", "data": {"led": "1"}}))
        .await;
    world
        .central
        .wait_for(TIMEOUT, |m| {
            assert!(
                !(m["type"] == "out" && m["uid"] == uid.as_str()),
                "a node's own out removed it"
            );
            is_update(m, Some(&uid), "led", &json!("1"))
        })
        .await;
    world.check("odd node messages").await;
}

#[tokio::test]
async fn gateways_sending_invalid_messages_are_closed_with_1003_and_their_nodes_go_out() {
    let mut world = World::new().await;
    let mut bad_messages = invalid_everywhere();
    bad_messages.extend(
        [
            r#"{"type": "new"}"#,
            r#"{"type": "new", "uid": 7, "dst": "all"}"#,
            r#"{"type": "new", "uid": null}"#,
            r#"{"type": "new", "uid": "u", "dst": ["all"]}"#,
            r#"{"type": "new", "uid": "u", "dst": 1}"#,
            r#"{"type": "update", "uid": "u", "data": "1", "dst": "all"}"#,
            r#"{"type": "update", "uid": "u", "endpoint": "led", "dst": "all"}"#,
            r#"{"type": "update", "uid": "u", "endpoint": 5, "data": "1", "dst": "all"}"#,
            r#"{"type": "update", "endpoint": "led", "data": "1", "dst": "all"}"#,
            r#"{"type": "out"}"#,
            r#"{"type": "out", "uid": {"a": 1}}"#,
            r#"{"type": "reset"}"#,
        ]
        .map(Bad::text),
    );
    for (i, bad) in bad_messages.iter().enumerate() {
        let what = format!("a gateway sending {}", bad.describe());
        let (mut gw, uids) = world.fake_gateway(&format!("gw{i}")).await;
        bad.send(&mut gw).await;
        expect_close(&mut gw, UNSUPPORTED, &what).await;
        expect_out(&mut world.central, &uids, &what).await;
        assert_eq!(
            world
                .broker
                .wait_for_count("gateway closed", i + 1, TIMEOUT),
            i + 1,
            "{what}"
        );
        world.check(&what).await;
        // A late client is not told about the closed gateway's nodes.
        let mut late = Peer::client(&world.broker_ws()).await;
        while let Some(message) = late.next_json(Duration::from_millis(200)).await {
            assert!(
                !uids.iter().any(|uid| message["uid"] == uid.as_str()),
                "{what}: a late client hears of a closed gateway's node: {message}"
            );
        }
    }
    // A gateway cannot touch another gateway's nodes: an update, out or reset of a node it
    // does not own is ignored (and not worth closing it for).
    let (mut gw, uids) = world.fake_gateway("hijacker").await;
    let steady = world.uid.clone();
    for hijack in [
        json!({"type": "update", "uid": steady, "endpoint": "led", "data": "hijacked", "dst": "all"}),
        json!({"type": "out", "uid": steady}),
        json!({"type": "reset", "uid": steady}),
        json!({"type": "update", "uid": "nobody", "endpoint": "led", "data": "hijacked", "dst": "all"}),
    ] {
        gw.send_json(&hijack).await;
    }
    gw.send_json(&json!({"type": "update", "uid": uids[0], "endpoint": "name", "data": "still mine", "dst": "all"}))
        .await;
    world
        .central
        .wait_for(TIMEOUT, |m| {
            assert!(
                m["data"] != "hijacked" && m["uid"] != steady.as_str(),
                "a gateway changed another's node: {m}"
            );
            is_update(m, Some(&uids[0]), "name", &json!("still mine"))
        })
        .await;
    world.check("a hijack attempt").await;
    // The real gateway's uplink was never disturbed.
    assert_eq!(world.gateway.count_log("connected to broker"), 1);
}

#[tokio::test]
async fn oversize_messages_close_with_1009_everywhere() {
    let mut world = World::new().await;

    // Just under the limit (64 KiB by default) is fine, through the uplink too.
    let (mut node, uid) = world.extra_node("big but fine").await;
    let fine = json!("y".repeat(60_000));
    node.send_json(&json!({"type": "update", "data": {"blob": fine}}))
        .await;
    world
        .central
        .wait_for(TIMEOUT, |m| is_update(m, Some(&uid), "blob", &fine))
        .await;
    world.check("a 60 kB update").await;

    for endpoint in ENDPOINTS {
        let what = format!("a 10 MB frame on {endpoint:?}");
        let (peer, uids) = world.open(endpoint, &format!("big-{endpoint:?}")).await;
        let frame = send_oversize(peer, &what).await;
        check_frame(&frame, TOO_BIG, &what);
        world.expect_gone(endpoint, &uids, &what).await;
        world.check(&what).await;

        // A message over the limit in small fragments is just as big.
        let what = format!("a 100 kB message in 1 kB fragments on {endpoint:?}");
        let (mut peer, uids) = world.open(endpoint, &format!("frag-{endpoint:?}")).await;
        let fragment = [b'x'; 1024];
        let mut fragments = std::iter::once(raw_frame(&fragment, Data::Text, false))
            .chain((1..100).map(|i| raw_frame(&fragment, Data::Continue, i == 99)));
        // The server may close before the last fragment.
        for frame in fragments.by_ref() {
            if peer.ws.send(frame).await.is_err() {
                break;
            }
        }
        expect_close(&mut peer, TOO_BIG, &what).await;
        world.expect_gone(endpoint, &uids, &what).await;
        world.check(&what).await;
    }
}

#[tokio::test]
async fn protocol_violations_end_only_that_connection() {
    let mut world = World::new().await;
    for endpoint in ENDPOINTS {
        for (i, (violation, frames)) in [
            (
                "a continuation with nothing to continue",
                vec![raw_frame(b"{}", Data::Continue, true)],
            ),
            (
                "a new message inside a fragmented one",
                vec![
                    raw_frame(b"{\"type\":", Data::Text, false),
                    raw_frame(b"{}", Data::Text, true),
                ],
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let what = format!("{violation} on {endpoint:?}");
            let (mut peer, uids) = world.open(endpoint, &format!("{endpoint:?}-{i}")).await;
            for frame in frames {
                peer.ws.send(frame).await.expect("sent");
            }
            // RFC 6455 §7.1.7: the connection fails; a close frame is optional.
            if let Some(frame) = peer.closed(TIMEOUT).await {
                assert_ne!(
                    u16::from(frame.code),
                    1000,
                    "{what}: closed as if all was well"
                );
            }
            world.expect_gone(endpoint, &uids, &what).await;
            world.check(&what).await;
        }
    }
}

#[tokio::test]
async fn a_flood_from_one_node_does_not_stop_the_others() {
    const FLOOD: u64 = 20_000;
    let mut world = World::new().await;
    let (flooder, uid) = world.extra_node("flooder").await;
    let started = std::time::Instant::now();
    let flood = tokio::spawn(async move {
        let mut flooder = flooder;
        for i in 0..FLOOD {
            let text = json!({"type": "update", "data": {"count": i}}).to_string();
            flooder
                .ws
                .feed(Message::text(text))
                .await
                .expect("the gateway takes the flood");
        }
        flooder.ws.flush().await.expect("flushed");
        flooder
    });
    // While the flood goes on, the others keep working.
    let mut rounds = 0;
    while !flood.is_finished() {
        rounds += 1;
        world.check(&format!("flood round {rounds}")).await;
    }
    let mut flooder = flood.await.expect("the flood task");
    println!(
        "{FLOOD} updates sent in {:?}, {rounds} checks meanwhile",
        started.elapsed()
    );
    // The last value wins everywhere, whether a client kept up or was resynchronised.
    let last = json!(FLOOD - 1);
    let World { central, local, .. } = &mut world;
    for client in [central, local] {
        client
            .wait_for(Duration::from_secs(30), |m| {
                is_update(m, Some(&uid), "count", &last)
            })
            .await;
    }
    println!(
        "the last update arrived {:?} after the first",
        started.elapsed()
    );
    world.check("the flood").await;
    // The flooder itself is still connected and heard.
    flooder
        .send_json(&json!({"type": "update", "data": {"count": "done"}}))
        .await;
    world
        .central
        .wait_for(TIMEOUT, |m| {
            is_update(m, Some(&uid), "count", &json!("done"))
        })
        .await;
    assert_eq!(world.gateway.count_log("connected to broker"), 1);
    assert_eq!(world.broker.count_log("panicked"), 0);
    assert_eq!(world.gateway.count_log("panicked"), 0);
}

#[tokio::test]
async fn a_flood_of_hellos_from_one_web_client_does_not_stop_the_others() {
    const FLOOD: usize = 20_000;
    let mut world = World::new().await;
    for url in [world.broker_ws(), world.gateway_ws()] {
        let started = std::time::Instant::now();
        let client = Peer::connect(&url).await;
        let (mut sink, mut stream) = client.ws.split();
        // It reads what it is sent, so that it is not dropped for stalling.
        let reader = tokio::spawn(async move {
            let mut count = 0usize;
            while let Some(Ok(_)) = stream.next().await {
                count += 1;
            }
            count
        });
        for i in 0..FLOOD {
            let text = if i % 2 == 0 {
                r#"{"type": "new", "data": "client"}"#
            } else {
                r#"{"type": "update", "data": {"uid": "nobody", "endpoint": "led", "payload": "1"}}"#
            };
            sink.feed(Message::text(text)).await.expect("sent");
        }
        sink.flush().await.expect("flushed");
        world.check(&format!("a flood of hellos on {url}")).await;
        println!(
            "{url}: {FLOOD} messages sent and checked in {:?}",
            started.elapsed()
        );
        sink.close().await.ok();
        let received = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .expect("the flooder is closed")
            .expect("reader");
        println!("{url}: the flooder received {received} messages");
    }
}

#[tokio::test]
async fn a_node_inventing_resources_is_capped_and_logged_once() {
    let mut world = World::new().await;
    let mut greedy = Peer::node(world.node_addr).await;
    let names: serde_json::Map<String, Value> =
        (0..1_000).map(|i| (format!("r{i}"), json!(i))).collect();
    greedy
        .send_json(&json!({"type": "update", "data": names}))
        .await;
    greedy
        .send_json(&json!({"type": "update", "data": {"r0": "still updated"}}))
        .await;
    let mut late = Peer::client(&world.gateway_ws()).await;
    late.wait_for(TIMEOUT, |m| {
        is_update(m, None, "r0", &json!("still updated"))
    })
    .await;
    let mut resources = 0;
    while let Some(message) = late.next_json(Duration::from_millis(300)).await {
        resources += usize::from(message["type"] == "update" && message["endpoint"] != "name");
    }
    assert!(resources < 300, "the snapshot holds {resources} resources");
    world
        .gateway
        .wait_for_log(&["refused a new resource", "it has 128 already"], TIMEOUT);
    let warnings = world
        .gateway
        .log_text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("refused a new resource"))
        .count();
    assert_eq!(warnings, 1, "one warning per offending node");
    world.check("a resource flood").await;
}
