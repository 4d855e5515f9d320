//! The limits of docs/security.md, each with one offender and one well-behaved peer at the same
//! time, real processes on loopback: the offender hits the limit, `/metrics` counts every hit,
//! the log names the offender exactly once, and the well-behaved peer gets everything through.
//! Counts, never timings.

mod coap_support;
mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{
    Aiot, Peer, TIMEOUT, broker_with_keys_args, config_file, gateway, http_get, is_update, key_file,
};
use serde_json::{Value, json};

/// `aiot_limit_hits_total{limit="<limit>"}` of the role serving `/metrics` at `addr`.
async fn hits(addr: SocketAddr, limit: &str) -> u64 {
    let text = http_get(addr, "/metrics", &[]).await.text();
    let prefix = format!("aiot_limit_hits_total{{limit=\"{limit}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .parse()
        .expect("a count")
}

/// Log lines that say the limit `key` was hit and name `offender`.
fn log_lines(process: &Aiot, key: &str, offender: &str) -> usize {
    process
        .log_text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(key) && l.contains(offender))
        .count()
}

/// [`log_lines`] once the first such line is in: another thread collects the log, so a line
/// the process already wrote may not have been read yet.
fn logged(process: &Aiot, key: &str, offender: &str) -> usize {
    process.wait_for_log(&["WARN", key, offender], TIMEOUT);
    log_lines(process, key, offender)
}

/// The uid of the node whose `name` is `name`, from a client's stream.
async fn uid_named(client: &mut Peer, name: &str) -> String {
    let message = client
        .wait_for(TIMEOUT, |m| is_update(m, None, "name", &json!(name)))
        .await;
    message["uid"].as_str().expect("a uid").to_owned()
}

#[tokio::test]
async fn one_gateway_cannot_fill_the_brokers_table() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_file(&dir, "[limits]\nmax_nodes_per_gateway = 3\n");
    let (broker, broker_addr, keys) = broker_with_keys_args(&["--config", &config]);
    let key_file = key_file(&keys);
    let mut central = Peer::client(&format!("ws://{broker_addr}/ws")).await;
    let mut greedy = Peer::gateway(broker_addr, &key_file).await;
    let mut polite = Peer::gateway(broker_addr, &key_file).await;
    for i in 0..10 {
        let uid = format!("greedy-{i}");
        greedy
            .send_json(&json!({"type": "new", "uid": uid, "dst": "all"}))
            .await;
        greedy.send_json(&json!({"type": "update", "uid": uid, "endpoint": "name", "data": uid, "dst": "all"})).await;
        if i < 2 {
            let uid = format!("polite-{i}");
            polite
                .send_json(&json!({"type": "new", "uid": uid, "dst": "all"}))
                .await;
            polite.send_json(&json!({"type": "update", "uid": uid, "endpoint": "name", "data": uid, "dst": "all"})).await;
        }
    }
    // A gateway's messages keep their order: once this arrives, all of the greedy ones were
    // handled.
    greedy.send_json(&json!({"type": "update", "uid": "greedy-0", "endpoint": "name", "data": "done", "dst": "all"})).await;
    let mut named = HashSet::new();
    let deadline = Instant::now() + TIMEOUT;
    while !(named.contains("polite-0") && named.contains("polite-1") && named.contains("done")) {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = central
            .next_json(left)
            .await
            .unwrap_or_else(|| panic!("only {named:?}; log:\n{}", broker.log_text()));
        if message["endpoint"] == "name" {
            named.insert(message["data"].as_str().unwrap_or_default().to_owned());
        }
    }
    let greedy_named = named.iter().filter(|n| n.starts_with("greedy-")).count();
    assert_eq!(greedy_named, 3, "the greedy gateway's nodes: {named:?}");
    assert_eq!(hits(broker_addr, "max_nodes_per_gateway").await, 7);
    assert_eq!(
        logged(&broker, "limits.max_nodes_per_gateway", "gateway"),
        1,
        "{}",
        broker.log_text()
    );
    // The polite gateway can still add nodes up to its own share.
    polite
        .send_json(&json!({"type": "new", "uid": "polite-2", "dst": "all"}))
        .await;
    polite.send_json(&json!({"type": "update", "uid": "polite-2", "endpoint": "name", "data": "polite-2", "dst": "all"})).await;
    uid_named(&mut central, "polite-2").await;
}

/// A gateway connection past `gateway_messages_per_sec` is read more slowly, and loses
/// nothing: every one of its updates arrives, in order, while another gateway's node gets
/// through in the middle of the flood instead of waiting behind it.
#[tokio::test]
async fn a_flooding_gateway_is_read_slowly_and_the_other_gets_through() {
    const FLOOD: u64 = 150;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_file(
        &dir,
        "[limits]\ngateway_messages_per_sec = 20\nnode_messages_per_sec = 0\n",
    );
    let (broker, broker_addr, keys) = broker_with_keys_args(&["--config", &config]);
    let key_file = key_file(&keys);
    let mut central = Peer::client(&format!("ws://{broker_addr}/ws")).await;
    let mut flood = Peer::gateway(broker_addr, &key_file).await;
    let mut calm = Peer::gateway(broker_addr, &key_file).await;
    flood
        .send_json(&json!({"type": "new", "uid": "flood-node", "dst": "all"}))
        .await;
    for count in 1..=FLOOD {
        flood.send_json(&json!({"type": "update", "uid": "flood-node", "endpoint": "count", "data": count, "dst": "all"})).await;
    }
    calm.send_json(&json!({"type": "new", "uid": "calm-node", "dst": "all"}))
        .await;
    calm.send_json(&json!({"type": "update", "uid": "calm-node", "endpoint": "name", "data": "calm", "dst": "all"})).await;

    let mut counts = Vec::new();
    let mut calm_after = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while counts.last() != Some(&FLOOD) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(message) = central.next_json(left).await else {
            panic!("only {counts:?}; log:\n{}", broker.log_text());
        };
        if message["uid"] == "flood-node" && message["endpoint"] == "count" {
            counts.push(message["data"].as_u64().expect("a count"));
        } else if message["uid"] == "calm-node" && message["endpoint"] == "name" {
            calm_after = Some(counts.len() as u64);
        }
    }
    assert_eq!(
        counts,
        (1..=FLOOD).collect::<Vec<_>>(),
        "every update, in order"
    );
    let calm_after = calm_after.expect("the calm gateway's node came");
    assert!(
        calm_after < FLOOD,
        "the calm node came after {calm_after} of the flood's updates"
    );
    let paused = hits(broker_addr, "gateway_messages_per_sec").await;
    // The first 40 (a burst of twice the rate) pass; nearly every later one waited.
    assert!((FLOOD / 2..=FLOOD).contains(&paused), "{paused} pauses");
    assert_eq!(
        logged(&broker, "limits.gateway_messages_per_sec", "gateway"),
        1,
        "{}",
        broker.log_text()
    );
}

#[tokio::test]
async fn a_chatty_websocket_node_is_throttled_alone() {
    const FLOOD: u64 = 300;
    let dir = tempfile::tempdir().expect("temp dir");
    // Bursts of 4 resources + 2 × 3 = 10 messages.
    let config = config_file(
        &dir,
        "[limits]\nnode_messages_per_sec = 3\nmax_resources_per_node = 4\n",
    );
    let (gw, node_addr, web) = gateway(None, &["--config", &config]);
    let mut client = Peer::client(&format!("ws://{web}/ws")).await;
    let mut chatty = Peer::node(node_addr).await;
    let mut calm = Peer::node(node_addr).await;
    chatty
        .send_json(&json!({"type": "update", "data": {"name": "chatty"}}))
        .await;
    calm.send_json(&json!({"type": "update", "data": {"name": "calm"}}))
        .await;
    // Either name may come first.
    let (mut chatty_uid, mut calm_uid) = (String::new(), String::new());
    while chatty_uid.is_empty() || calm_uid.is_empty() {
        let message = client.next_json(TIMEOUT).await.expect("the names");
        let uid = message["uid"].as_str().unwrap_or_default().to_owned();
        match message["data"].as_str() {
            Some("chatty") if message["endpoint"] == "name" => chatty_uid = uid,
            Some("calm") if message["endpoint"] == "name" => calm_uid = uid,
            _ => {}
        }
    }
    for i in 0..FLOOD {
        chatty
            .send_json(&json!({"type": "update", "data": {"count": i}}))
            .await;
    }
    // The calm node stays within its burst: name, protocol and these five.
    for i in 0..5 {
        calm.send_json(&json!({"type": "update", "data": {"temperature": i}}))
            .await;
    }
    // Every update either reaches the client (at once, or when the node's rate allows) or is
    // dropped for a newer one and counted; the newest always arrives.
    let (mut passed, mut calm_seen, mut last) = (0u64, Vec::new(), Value::Null);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let dropped = hits(web, "node_messages_per_sec").await;
        if passed + dropped == FLOOD && calm_seen.len() == 5 && last == json!(FLOOD - 1) {
            assert!(dropped > 0, "nothing was throttled");
            println!("{FLOOD} updates from the chatty node: {passed} passed, {dropped} dropped");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{passed} passed, {dropped} dropped of {FLOOD}, the last {last}; calm: {calm_seen:?}"
        );
        while let Some(message) = client.next_json(Duration::from_millis(200)).await {
            if message["uid"] == chatty_uid.as_str() && message["endpoint"] == "count" {
                passed += 1;
                last = message["data"].clone();
            } else if message["uid"] == calm_uid.as_str() && message["endpoint"] == "temperature" {
                calm_seen.push(message["data"].clone());
            }
        }
    }
    assert_eq!(calm_seen, (0..5).map(|i| json!(i)).collect::<Vec<_>>());
    assert_eq!(logged(&gw, "limits.node_messages_per_sec", &chatty_uid), 1);
    assert_eq!(log_lines(&gw, "limits.node_messages_per_sec", &calm_uid), 0);
}

/// The `blob` values a client receives for each `(uid, last)`, until every last one came.
async fn blobs(client: &mut Peer, wanted: &[(&str, &Value)]) -> Vec<Vec<Value>> {
    let mut seen = vec![Vec::new(); wanted.len()];
    let deadline = Instant::now() + TIMEOUT;
    while wanted
        .iter()
        .zip(&seen)
        .any(|((_, last), got)| got.last() != Some(*last))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(message) = client.next_json(left).await else {
            panic!("not every last blob came: {seen:?}");
        };
        for ((uid, _), got) in wanted.iter().zip(&mut seen) {
            if message["uid"] == *uid && message["endpoint"] == "blob" {
                got.push(message["data"].clone());
            }
        }
    }
    seen
}

#[tokio::test]
async fn a_value_too_big_is_refused_on_the_gateway_and_on_the_broker() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_file(&dir, "[limits]\nmax_value_bytes = 1000\n");
    let (broker, broker_addr, keys) = broker_with_keys_args(&["--config", &config]);
    let key_file = key_file(&keys);
    let (gw, node_addr, web) = gateway(Some((broker_addr, &key_file)), &["--config", &config]);
    gw.wait_for_log(&["connected to broker"], TIMEOUT);
    let mut local = Peer::client(&format!("ws://{web}/ws")).await;
    let mut central = Peer::client(&format!("ws://{broker_addr}/ws")).await;

    // On the gateway: a websocket node with two values too big among good ones.
    let mut big = Peer::node(node_addr).await;
    big.send_json(&json!({"type": "update", "data": {"name": "big"}}))
        .await;
    let big_uid = uid_named(&mut local, "big").await;
    for data in [
        json!({"blob": "x".repeat(2000)}),
        json!({"blob": "fits", "list": (0..500).collect::<Vec<_>>()}),
        json!({"blob": "small"}),
    ] {
        big.send_json(&json!({"type": "update", "data": data}))
            .await;
    }
    // On the broker: a gateway that sends one too big.
    let mut rogue = Peer::gateway(broker_addr, &key_file).await;
    rogue
        .send_json(&json!({"type": "new", "uid": "rogue-node", "dst": "all"}))
        .await;
    for data in [json!("y".repeat(1001)), json!("z".repeat(1000))] {
        rogue.send_json(&json!({"type": "update", "uid": "rogue-node", "endpoint": "blob", "data": data, "dst": "all"})).await;
    }
    let fits = json!("z".repeat(1000));
    let small = json!("small");
    let good = vec![json!("fits"), small.clone()];
    let on_gateway = blobs(&mut local, &[(&big_uid, &small)]).await;
    assert_eq!(on_gateway[0], good);
    let on_broker = blobs(&mut central, &[(&big_uid, &small), ("rogue-node", &fits)]).await;
    assert_eq!(on_broker, [good, vec![fits.clone()]]);
    // The list of 500 numbers is 1,891 bytes of JSON: refused too.
    assert_eq!(hits(web, "max_value_bytes").await, 2);
    assert_eq!(hits(broker_addr, "max_value_bytes").await, 1);
    assert_eq!(logged(&gw, "limits.max_value_bytes", &big_uid), 1);
    assert_eq!(logged(&broker, "limits.max_value_bytes", "rogue-node"), 1);
    assert_eq!(log_lines(&broker, "limits.max_value_bytes", &big_uid), 0);
}

#[tokio::test]
async fn a_flood_of_new_coap_nodes_waits_in_a_bounded_discovery_queue() {
    let node_port = 20391;
    // Discoveries of the flood never get an answer (nothing serves on their node port), so
    // they stay in flight for the whole test.
    let gw = coap_support::gateway(
        node_port,
        "[coap]\ndiscovery_concurrency = 1\nmax_pending_discoveries = 2\nack_timeout_ms = 20000\n",
        &[],
    );
    let mut client = Peer::client(&format!("ws://{}/ws", gw.web)).await;
    let spawn_nodes = |first: &str, node_port: u16, extra: &[&str]| {
        coap_support::nodes(gw.coap, first, node_port, extra)
    };
    let _good = spawn_nodes(
        "127.45.0.1",
        node_port,
        &["--temperature", "--interval", "1"],
    );
    // Discovered: its name comes from a GET, after which the single discovery slot is free.
    let good_uid = uid_named(&mut client, "aiot-coap-1").await;
    let _flood = spawn_nodes("127.46.0.1", node_port + 1, &["--count", "10"]);
    let refused = gw
        .aiot
        .wait_for_log(&["coap.max_pending_discoveries"], TIMEOUT);
    assert!(refused.contains("127.46.0."), "{refused}");
    // The good node's readings still arrive, every one of them.
    let mut readings = 0;
    let mut flood_uids = HashSet::new();
    let deadline = Instant::now() + TIMEOUT;
    while readings < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = client
            .next_json(left)
            .await
            .expect("the good node's readings");
        if message["uid"] == good_uid.as_str() && message["endpoint"] == "temperature" {
            readings += 1;
        } else if message["type"] == "new" {
            flood_uids.insert(message["uid"].clone());
        }
    }
    // One being discovered, two waiting: the other seven were refused with 5.03.
    assert_eq!(flood_uids.len(), 3, "{flood_uids:?}");
    assert!(hits(gw.web, "coap_max_pending_discoveries").await >= 7);
    assert_eq!(
        gw.aiot.count_log("coap.max_pending_discoveries"),
        1,
        "refused: {refused}"
    );
}

/// `mosquitto_pub` of every line of `lines` as one message each (`-l`), QoS 1.
fn mosquitto_pub_lines(broker: SocketAddr, topic: &str, lines: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            &broker.ip().to_string(),
            "-p",
            &broker.port().to_string(),
        ])
        .args(["-q", "1", "-t", topic, "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(lines.as_bytes()).expect("lines written");
    drop(stdin);
    assert!(child.wait().expect("mosquitto_pub ends").success());
}

/// An MQTT node `id` with the one resource `count`, past its discovery: its `count` values
/// reach `client` (the gateway subscribes to them once it has the resource list). Returns its
/// uid.
async fn mqtt_node(mqtt: SocketAddr, client: &mut Peer, id: &str) -> String {
    let check = json!({ "id": id }).to_string();
    let mut uid = None;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        assert!(
            Instant::now() < deadline,
            "MQTT node {id} never came through"
        );
        mosquitto_pub_lines(mqtt, "node/check", &check);
        mosquitto_pub_lines(mqtt, &format!("node/{id}/resources"), "[\"count\"]");
        mosquitto_pub_lines(mqtt, &format!("node/{id}/count"), "{\"value\": -1}");
        while let Some(message) = client.next_json(Duration::from_millis(300)).await {
            if message["endpoint"] == "id" && message["data"] == id {
                uid = message["uid"].as_str().map(str::to_owned);
            }
            if message["endpoint"] == "count"
                && message["data"] == -1
                && uid.as_deref().is_some_and(|uid| message["uid"] == uid)
            {
                return uid.expect("known");
            }
        }
    }
}

#[tokio::test]
async fn a_chatty_mqtt_node_is_throttled_alone() {
    const FLOOD: u64 = 300;
    let gw = coap_support::gateway(
        20392,
        "[limits]\nnode_messages_per_sec = 3\nmax_resources_per_node = 4\n",
        &[],
    );
    let mqtt = gw.aiot.listening("MQTT clients");
    let mut client = Peer::client(&format!("ws://{}/ws", gw.web)).await;
    let chatty = mqtt_node(mqtt, &mut client, "chatty").await;
    let calm = mqtt_node(mqtt, &mut client, "calm").await;
    let before = hits(gw.web, "node_messages_per_sec").await;
    let flood: String = (0..FLOOD)
        .map(|i| format!("{{\"value\": {i}}}\n"))
        .collect();
    mosquitto_pub_lines(mqtt, "node/chatty/count", &flood);
    let calm_values: String = (0..5).map(|i| format!("{{\"value\": {i}}}\n")).collect();
    mosquitto_pub_lines(mqtt, "node/calm/count", &calm_values);
    let (mut passed, mut calm_seen, mut last) = (0u64, Vec::new(), Value::Null);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let dropped = hits(gw.web, "node_messages_per_sec").await - before;
        if passed + dropped == FLOOD && calm_seen.len() == 5 && last == json!(FLOOD - 1) {
            assert!(dropped > 0, "nothing was throttled");
            println!(
                "{FLOOD} MQTT updates from the chatty node: {passed} passed, {dropped} dropped"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{passed} passed, {dropped} dropped of {FLOOD}, the last {last}; calm: {calm_seen:?}"
        );
        while let Some(message) = client.next_json(Duration::from_millis(200)).await {
            if message["endpoint"] != "count" || message["data"] == -1 {
                continue;
            }
            if message["uid"] == chatty.as_str() {
                passed += 1;
                last = message["data"].clone();
            } else if message["uid"] == calm.as_str() {
                calm_seen.push(message["data"].clone());
            }
        }
    }
    assert_eq!(calm_seen, (0..5).map(|i| json!(i)).collect::<Vec<_>>());
    assert_eq!(logged(&gw.aiot, "limits.node_messages_per_sec", &chatty), 1);
    assert_eq!(
        log_lines(&gw.aiot, "limits.node_messages_per_sec", &calm),
        0
    );
}

#[tokio::test]
async fn web_clients_past_the_maximum_are_refused_and_counted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_file(&dir, "[web]\nmax_clients = 1\n");
    let (gw, node_addr, web) = gateway(None, &["--config", &config]);
    let mut client = Peer::client(&format!("ws://{web}/ws")).await;
    for _ in 0..3 {
        let refused = tokio_tungstenite::connect_async(format!("ws://{web}/ws")).await;
        assert!(refused.is_err(), "a second client was let in");
    }
    assert_eq!(hits(web, "web_max_clients").await, 3);
    gw.wait_for_log(&["web.max_clients"], TIMEOUT);
    assert_eq!(gw.count_log("web.max_clients"), 1);
    // The client that is in still gets everything.
    let mut node = Peer::node(node_addr).await;
    node.send_json(&json!({"type": "update", "data": {"name": "seen"}}))
        .await;
    uid_named(&mut client, "seen").await;
}

/// libcoap's `coap-client` posting `payload` to the gateway's `path` from `from`, confirmable.
fn coap_post(gateway: SocketAddr, from: &str, path: &str, payload: &str) {
    let output = std::process::Command::new("coap-client-notls")
        .args(["-a", from, "-m", "post", "-B", "5", "-e", payload])
        .arg(format!("coap://{gateway}/{path}"))
        .output()
        .expect("coap-client-notls runs (ci/test installs Debian's libcoap3-bin)");
    assert!(
        output.status.success(),
        "coap-client {path} {payload}: {output:?}"
    );
}

#[tokio::test]
async fn a_chatty_coap_node_is_throttled_alone() {
    const FLOOD: u64 = 40;
    let gw = coap_support::gateway(
        20393,
        "[limits]\nnode_messages_per_sec = 3\nmax_resources_per_node = 4\n",
        &[],
    );
    let mut client = Peer::client(&format!("ws://{}/ws", gw.web)).await;
    let (chatty, calm) = ("127.47.0.1", "127.47.0.2");
    coap_post(gw.coap, chatty, "alive", "alive:coap-chatty");
    coap_post(gw.coap, calm, "alive", "alive:coap-calm");
    for i in 0..FLOOD {
        coap_post(gw.coap, chatty, "server", &format!("count:{i}"));
    }
    for i in 0..3 {
        coap_post(gw.coap, calm, "server", &format!("count:{i}"));
    }
    let (mut passed, mut calm_seen, mut last) = (0u64, Vec::new(), Value::Null);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let dropped = hits(gw.web, "node_messages_per_sec").await;
        if passed + dropped == FLOOD
            && calm_seen.len() == 3
            && last == json!((FLOOD - 1).to_string())
        {
            assert!(dropped > 0, "nothing was throttled");
            println!("{FLOOD} CoAP posts from the chatty node: {passed} passed, {dropped} dropped");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{passed} passed, {dropped} dropped of {FLOOD}, the last {last}; calm: {calm_seen:?}"
        );
        while let Some(message) = client.next_json(Duration::from_millis(200)).await {
            if message["endpoint"] != "count" {
                continue;
            }
            if message["uid"] == "coap-chatty" {
                passed += 1;
                last = message["data"].clone();
            } else if message["uid"] == "coap-calm" {
                calm_seen.push(message["data"].clone());
            }
        }
    }
    assert_eq!(calm_seen, ["0", "1", "2"].map(|v| json!(v)));
    assert_eq!(
        logged(&gw.aiot, "limits.node_messages_per_sec", "coap-chatty"),
        1
    );
    assert_eq!(
        log_lines(&gw.aiot, "limits.node_messages_per_sec", "coap-calm"),
        0
    );
}
