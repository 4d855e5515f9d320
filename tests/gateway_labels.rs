//! Which gateway each node came from, as the broker tells aiot dashboards: real broker and
//! gateway processes with per-gateway keys, a pyaiot-style gateway (Python, tornado) with the
//! shared key, and web clients that say they are aiot's dashboard (`"aiot": 1` in the hello)
//! or do not (pyaiot's dashboard), live and from the broker's replay.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aiot::proto::broker::NodeMessage;
use common::{Peer, PyaiotGateway, TIMEOUT, broker_with_keys_args, gateway, key_file};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// A gateway-side key file for `name`, added to the broker's gateways file `file`.
fn gateway_key(dir: &Path, file: &Path, name: &str) -> PathBuf {
    let key = dir.join(format!("{name}.keys"));
    let output = Command::new(env!("CARGO_BIN_EXE_aiot"))
        .args(["keys", "generate", "--gateway", name, "--gateways-file"])
        .arg(file)
        .arg("--key-file")
        .arg(&key)
        .output()
        .expect("aiot runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    key
}

/// A web client as aiot's dashboard is one.
async fn aiot_client(url: &str) -> Peer {
    let mut peer = Peer::connect(url).await;
    peer.send_json(&json!({"type": "new", "data": "client", "aiot": 1}))
        .await;
    peer
}

/// The next text message exactly as the server sent it; `None` at close or timeout.
async fn next_raw(peer: &mut Peer, timeout: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, peer.ws.next())
            .await
            .ok()??
        {
            Ok(Message::Text(text)) => return Some(text.to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

fn parse(raw: &str) -> Value {
    serde_json::from_str(raw).expect("the server sends JSON")
}

/// Raw messages until one matches `wanted` for each of `uids`' `temperature` (in any order);
/// returns all of them.
async fn until_temperatures(peer: &mut Peer, temperatures: &[&str]) -> Vec<String> {
    let mut seen = Vec::new();
    let mut missing: Vec<&str> = temperatures.to_vec();
    while !missing.is_empty() {
        let raw = next_raw(peer, TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("{missing:?} not seen; saw {seen:#?}"));
        let message = parse(&raw);
        if message["endpoint"] == "temperature" {
            missing.retain(|t| message["data"] != *t);
        }
        seen.push(raw);
    }
    seen
}

/// Every raw message until none came for `quiet`.
async fn drain(peer: &mut Peer, quiet: Duration) -> Vec<String> {
    let mut seen = Vec::new();
    while let Some(raw) = next_raw(peer, quiet).await {
        seen.push(raw);
    }
    seen
}

/// The uid of the node whose `temperature` was `value`.
fn uid_with(seen: &[String], value: &str) -> String {
    seen.iter()
        .map(|raw| parse(raw))
        .find(|m| m["endpoint"] == "temperature" && m["data"] == value)
        .and_then(|m| m["uid"].as_str().map(String::from))
        .unwrap_or_else(|| panic!("no temperature {value} in {seen:#?}"))
}

/// Asserts that every `new` for `uid` among `seen` names `gateway` (and that there is one).
fn assert_labelled(seen: &[String], uid: &str, gateway: &str) {
    let news: Vec<Value> = seen
        .iter()
        .map(|raw| parse(raw))
        .filter(|m| m["type"] == "new" && m["uid"] == uid)
        .collect();
    assert!(!news.is_empty(), "no new for {uid} in {seen:#?}");
    for new in news {
        assert_eq!(new["gateway"], gateway, "{new}");
        let keys: Vec<&str> = new
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["type", "uid", "dst", "gateway"],
            "pyaiot's, plus one"
        );
    }
    for raw in seen {
        let message = parse(raw);
        if message["type"] != "new" {
            assert_eq!(message.get("gateway"), None, "only `new` carries it: {raw}");
        }
    }
}

/// Asserts that every message is pyaiot's byte for byte: what aiot's parser reads from it and
/// writes back in pyaiot's key order is the same text, so no field was added or moved.
fn assert_pyaiot(seen: &[String]) {
    assert!(!seen.is_empty());
    for raw in seen {
        let message = NodeMessage::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        assert_eq!(&message.to_json(), raw);
        assert!(!raw.contains("gateway"), "{raw}");
    }
}

#[tokio::test]
async fn aiot_dashboards_learn_each_nodes_gateway_and_pyaiot_dashboards_get_pyaiot_bytes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("gateways.toml");
    let kitchen_key = gateway_key(dir.path(), &file, "kitchen");
    let garage_key = gateway_key(dir.path(), &file, "garage");
    // The shared key file and the gateways file, both admitting gateways.
    let (broker, addr, shared_dir) =
        broker_with_keys_args(&["--gateways-file", file.to_str().expect("utf-8")]);
    let ws = format!("ws://{addr}/ws");
    let mut aiot_early = aiot_client(&ws).await;
    let mut plain_early = Peer::client(&ws).await;

    let (kitchen, kitchen_nodes, kitchen_web) =
        gateway(Some((addr, kitchen_key.to_str().expect("utf-8"))), &[]);
    let (garage, garage_nodes, _) = gateway(Some((addr, garage_key.to_str().expect("utf-8"))), &[]);
    kitchen.wait_for_log(&["connected to broker"], TIMEOUT);
    garage.wait_for_log(&["connected to broker"], TIMEOUT);
    let mut kitchen_node = Peer::node(kitchen_nodes).await;
    kitchen_node
        .send_json(&json!({"type": "update", "data": {"name": "stove", "temperature": "40°C"}}))
        .await;
    let mut garage_node = Peer::node(garage_nodes).await;
    garage_node
        .send_json(&json!({"type": "update", "data": {"name": "door", "temperature": "5°C"}}))
        .await;

    // Live: the broker's broadcast `new` of each node names its gateway for the aiot client...
    let live = until_temperatures(&mut aiot_early, &["40°C", "5°C"]).await;
    let kitchen_uid = uid_with(&live, "40°C");
    let garage_uid = uid_with(&live, "5°C");
    assert_labelled(&live, &kitchen_uid, "kitchen");
    assert_labelled(&live, &garage_uid, "garage");
    assert!(
        live.contains(&format!(
            r#"{{"type":"new","uid":"{kitchen_uid}","dst":"all","gateway":"kitchen"}}"#
        )),
        "{live:#?}"
    );
    // ...and not for the pyaiot client, connected all the same time.
    let plain = until_temperatures(&mut plain_early, &["40°C", "5°C"]).await;
    assert_pyaiot(&plain);
    for uid in [&kitchen_uid, &garage_uid] {
        assert!(
            plain.contains(&format!(r#"{{"type":"new","uid":"{uid}","dst":"all"}}"#)),
            "{plain:#?}"
        );
    }

    // Replays to clients that come later: the broker's own from its cache, then the gateways'
    // answers to the hello, all addressed to the client.
    let mut aiot_late = aiot_client(&ws).await;
    let mut plain_late = Peer::client(&ws).await;
    let replay = drain(&mut aiot_late, Duration::from_millis(700)).await;
    assert_labelled(&replay, &kitchen_uid, "kitchen");
    assert_labelled(&replay, &garage_uid, "garage");
    assert!(
        replay
            .iter()
            .map(|raw| parse(raw))
            .filter(|m| m["type"] == "new")
            .all(|m| m["dst"] != "all"),
        "{replay:#?}"
    );
    let plain_replay = drain(&mut plain_late, Duration::from_millis(700)).await;
    assert_pyaiot(&plain_replay);
    assert!(
        plain_replay
            .iter()
            .any(|raw| parse(raw)["type"] == "new" && parse(raw)["uid"] == kitchen_uid.as_str())
    );

    // A pyaiot gateway with the shared key has no name: aiot dashboards get a fixed label.
    let shared = PyaiotGateway::start(
        &format!("ws://{addr}/gw"),
        &key_file(&shared_dir),
        "py-node",
    );
    assert_eq!(shared.first_line(), "connected");
    let live = until_temperatures(&mut aiot_early, &["23°C"]).await;
    assert_labelled(&live, "py-node", "(shared key)");
    let plain = until_temperatures(&mut plain_early, &["23°C"]).await;
    assert_pyaiot(&plain);
    assert!(plain.contains(&r#"{"type":"new","uid":"py-node","dst":"all"}"#.to_owned()));
    broker.wait_for_log(&["node from gateway", "py-node", "(shared key)"], TIMEOUT);

    // A gateway's own dashboard has no gateways to tell of: an aiot client there gets pyaiot's
    // messages.
    let mut local = aiot_client(&format!("ws://{kitchen_web}/ws")).await;
    let local_replay = drain(&mut local, Duration::from_millis(700)).await;
    assert_pyaiot(&local_replay);
    assert!(
        local_replay
            .iter()
            .any(|raw| parse(raw)["type"] == "new" && parse(raw)["uid"] == kitchen_uid.as_str())
    );

    // `out` stays pyaiot's for everyone.
    drop(garage_node);
    let out = json!({"type": "out", "uid": garage_uid});
    aiot_early.wait_for(TIMEOUT, |m| m == &out).await;
    plain_early.wait_for(TIMEOUT, |m| m == &out).await;
}
