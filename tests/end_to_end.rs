//! Data end to end: websocket nodes → gateway → uplink → broker → web clients, and writes back.

mod common;

use std::time::Duration;

use common::{Aiot, Peer, TIMEOUT, broker_with_keys, gateway, is_update, key_file};
use serde_json::{Value, json};

/// A websocket node, driven by the test: it announces itself and obeys writes only when told.
async fn node(node_addr: std::net::SocketAddr, resources: Value) -> Peer {
    let mut node = Peer::connect(&format!("ws://{node_addr}/node")).await;
    assert_eq!(
        node.next_json(TIMEOUT).await,
        Some(json!({"request": "discover"})),
        "the gateway asks a new node to discover"
    );
    node.send_json(&json!({"type": "update", "data": resources}))
        .await;
    node
}

async fn uid_of(client: &mut Peer, endpoint: &str, data: &Value) -> String {
    let update = client
        .wait_for(TIMEOUT, |m| is_update(m, None, endpoint, data))
        .await;
    update["uid"].as_str().expect("uid is a string").to_owned()
}

#[tokio::test]
async fn readings_reach_broker_and_local_clients_and_led_writes_reach_the_node() {
    let (_broker, broker_addr, keys) = broker_with_keys();
    let (gateway, node_addr, web_addr) = gateway(Some((broker_addr, &key_file(&keys))), &[]);
    gateway.wait_for_log(&["connected to broker"], TIMEOUT);

    let mut central = Peer::client(&format!("ws://{broker_addr}/ws")).await;
    let mut local = Peer::client(&format!("ws://{web_addr}/ws")).await;
    let mut node = node(
        node_addr,
        json!({"name": "kitchen", "led": "0", "temperature": "21°C"}),
    )
    .await;

    // The node's appearance, in pyaiot's order: new, protocol, then its resources.
    let new = central.wait_for(TIMEOUT, |m| m["type"] == "new").await;
    let uid = new["uid"].as_str().expect("uid").to_owned();
    assert_eq!(new["dst"], "all");
    central
        .wait_for(TIMEOUT, |m| {
            is_update(m, Some(&uid), "protocol", &json!("WebSocket"))
        })
        .await;
    central
        .wait_for(TIMEOUT, |m| {
            is_update(m, Some(&uid), "temperature", &json!("21°C"))
        })
        .await;
    assert_eq!(uid_of(&mut local, "name", &json!("kitchen")).await, uid);

    // A new reading, with a non-ASCII value and a JSON object value.
    node.send_json(
        &json!({"type": "update", "data": {"temperature": "22.5°C", "imu": {"x": 1, "y": [2, 3]}}}),
    )
    .await;
    for client in [&mut central, &mut local] {
        client
            .wait_for(TIMEOUT, |m| {
                is_update(m, Some(&uid), "temperature", &json!("22.5°C"))
            })
            .await;
        client
            .wait_for(TIMEOUT, |m| {
                is_update(m, Some(&uid), "imu", &json!({"x": 1, "y": [2, 3]}))
            })
            .await;
    }

    // An LED write from the central dashboard reaches the node as pyaiot sends it...
    central
        .send_json(
            &json!({"type": "update", "data": {"uid": uid, "endpoint": "led", "payload": "1"}}),
        )
        .await;
    assert_eq!(
        node.next_json(TIMEOUT).await,
        Some(json!({"endpoint": "led", "payload": "1"}))
    );
    // ...and the node's answer comes back to both clients.
    node.send_json(&json!({"type": "update", "data": {"led": "1"}}))
        .await;
    central
        .wait_for(TIMEOUT, |m| is_update(m, Some(&uid), "led", &json!("1")))
        .await;
    local
        .wait_for(TIMEOUT, |m| is_update(m, Some(&uid), "led", &json!("1")))
        .await;

    // The same from the gateway's local dashboard.
    local
        .send_json(
            &json!({"type": "update", "data": {"uid": uid, "endpoint": "led", "payload": "0"}}),
        )
        .await;
    assert_eq!(
        node.next_json(TIMEOUT).await,
        Some(json!({"endpoint": "led", "payload": "0"}))
    );

    // The node leaves: everyone hears `out`.
    drop(node);
    for client in [&mut central, &mut local] {
        client
            .wait_for(TIMEOUT, |m| m["type"] == "out" && m["uid"] == uid)
            .await;
    }
}

#[tokio::test]
async fn a_late_client_gets_the_full_current_state() {
    let (_broker, broker_addr, keys) = broker_with_keys();
    let (gateway, node_addr, web_addr) = gateway(Some((broker_addr, &key_file(&keys))), &[]);
    gateway.wait_for_log(&["connected to broker"], TIMEOUT);
    let _a = node(node_addr, json!({"name": "a", "led": "1"})).await;
    let _b = node(node_addr, json!({"name": "b", "temperature": "19°C"})).await;
    // Let the values travel through the gateway and the broker before the client arrives.
    // Both values, in whichever order they come (a busy machine reorders the two nodes).
    let mut watcher = Peer::client(&format!("ws://{broker_addr}/ws")).await;
    let (mut temperature, mut led) = (false, false);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !(temperature && led) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = watcher
            .next_json(left)
            .await
            .unwrap_or_else(|| panic!("temperature seen: {temperature}, led seen: {led}"));
        temperature |= is_update(&message, None, "temperature", &json!("19°C"));
        led |= is_update(&message, None, "led", &json!("1"));
    }

    for url in [
        format!("ws://{broker_addr}/ws"),
        format!("ws://{web_addr}/ws"),
    ] {
        let mut late = Peer::client(&url).await;
        let mut state = std::collections::HashMap::new();
        let mut news = std::collections::HashSet::new();
        while let Some(message) = late.next_json(Duration::from_millis(500)).await {
            assert_ne!(
                message["dst"], "all",
                "a replay is addressed to the client: {message}"
            );
            match message["type"].as_str() {
                Some("new") => {
                    news.insert(message["uid"].as_str().expect("uid").to_owned());
                }
                Some("update") => {
                    state.insert(
                        message["endpoint"].as_str().expect("endpoint").to_owned(),
                        message["data"].clone(),
                    );
                }
                _ => panic!("unexpected {message}"),
            }
        }
        assert_eq!(news.len(), 2, "{url}: both nodes announced");
        assert_eq!(state["led"], json!("1"), "{url}");
        assert_eq!(state["temperature"], json!("19°C"), "{url}");
        assert_eq!(state["protocol"], json!("WebSocket"), "{url}");
    }
}

#[tokio::test]
async fn the_gateway_outlives_its_broker_and_reconnects_by_itself() {
    let (mut broker, broker_addr, keys) = broker_with_keys();
    let key_path = key_file(&keys);
    let (gateway, node_addr, web_addr) = gateway(Some((broker_addr, &key_path)), &[]);
    gateway.wait_for_log(&["connected to broker"], TIMEOUT);
    let mut node = node(node_addr, json!({"name": "survivor", "led": "0"})).await;

    broker.kill();
    gateway.wait_for_log(&["retrying in"], TIMEOUT);

    // While the broker is away the gateway keeps working locally.
    let mut local = Peer::client(&format!("ws://{web_addr}/ws")).await;
    let uid = uid_of(&mut local, "name", &json!("survivor")).await;
    node.send_json(&json!({"type": "update", "data": {"led": "1"}}))
        .await;
    local
        .wait_for(TIMEOUT, |m| is_update(m, Some(&uid), "led", &json!("1")))
        .await;

    // A new broker on the same port: the gateway finds it and resends everything.
    let port = broker_addr.port().to_string();
    let broker = Aiot::spawn(&[
        "broker",
        "--bind",
        "127.0.0.1",
        "--broker-port",
        &port,
        "--key-file",
        &key_path,
    ]);
    assert_eq!(broker.listening("broker"), broker_addr);
    let mut central = Peer::client(&format!("ws://{broker_addr}/ws")).await;
    central
        .wait_for(Duration::from_secs(40), |m| {
            is_update(m, Some(&uid), "led", &json!("1"))
        })
        .await;
    // The replay can reach the client before the gateway's log line reaches the test.
    assert_eq!(gateway.wait_for_count("connected to broker", 2, TIMEOUT), 2);
}
