//! Per-gateway keys with real processes: `aiot keys generate --gateway`, a broker that admits
//! gateways from its gateways file, revocation of one gateway while another stays, and
//! pyaiot-style gateways (Python, tornado) with the shared key or their own.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    Aiot, Peer, PyaiotGateway, TIMEOUT, broker_with_keys_args, gateway, http_get, is_update,
    key_file,
};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// `aiot keys generate --gateway NAME --gateways-file FILE [--key-file KEY]`.
fn generate(name: &str, file: &Path, key: Option<&Path>) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aiot"));
    command
        .args(["keys", "generate", "--gateway", name, "--gateways-file"])
        .arg(file);
    if let Some(key) = key {
        command.arg("--key-file").arg(key);
    }
    command.output().expect("aiot runs")
}

/// A gateway-side key file for `name`, added to `file`.
fn gateway_key(dir: &Path, file: &Path, name: &str) -> PathBuf {
    let key = dir.join(format!("{name}.keys"));
    let output = generate(name, file, Some(&key));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    key
}

/// A broker admitting only the gateways of `file`: HOME points to an empty directory, so there
/// is no shared key file.
fn broker_with_gateways_file(home: &Path, file: &Path) -> (Aiot, SocketAddr) {
    let broker = Aiot::spawn_env(
        &[
            "broker",
            "--bind",
            "127.0.0.1",
            "--broker-port",
            "0",
            "--gateways-file",
            file.to_str().expect("utf-8"),
        ],
        &[("HOME", home.to_str().expect("utf-8"))],
    );
    let addr = broker.listening("broker");
    (broker, addr)
}

/// The gateways file without the entry named `name`, as an operator's editor leaves it.
fn revoke(file: &Path, name: &str) {
    let text = std::fs::read_to_string(file).expect("read");
    let kept: Vec<&str> = text
        .split("\n[[gateway]]")
        .filter(|entry| !entry.contains(&format!("name = \"{name}\"")))
        .collect();
    assert_eq!(
        kept.len() + 1,
        text.split("\n[[gateway]]").count(),
        "one entry removed"
    );
    std::fs::write(file, kept.join("\n[[gateway]]")).expect("write");
}

fn uid_of(message: &Value) -> String {
    message["uid"].as_str().expect("a uid").to_owned()
}

#[tokio::test]
async fn a_revoked_gateway_gets_401_while_another_stays_connected_with_its_nodes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("gateways.toml");
    let kitchen_key = gateway_key(dir.path(), &file, "kitchen");
    let garage_key = gateway_key(dir.path(), &file, "garage");
    let mode = std::fs::metadata(&file)
        .expect("exists")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the gateways file holds secrets");
    let (broker, addr) = broker_with_gateways_file(dir.path(), &file);
    broker.wait_for_log(&["gateways file loaded", "gateways=2"], TIMEOUT);

    let (kitchen, kitchen_nodes, _) =
        gateway(Some((addr, kitchen_key.to_str().expect("utf-8"))), &[]);
    let (garage, garage_nodes, _) = gateway(Some((addr, garage_key.to_str().expect("utf-8"))), &[]);
    kitchen.wait_for_log(&["connected to broker"], TIMEOUT);
    garage.wait_for_log(&["connected to broker"], TIMEOUT);
    broker.wait_for_log(&["gateway connected", "gateway=kitchen"], TIMEOUT);
    broker.wait_for_log(&["gateway connected", "gateway=garage"], TIMEOUT);

    let mut kitchen_node = Peer::node(kitchen_nodes).await;
    kitchen_node
        .send_json(&json!({"type": "update", "data": {"temperature": "kitchen 20"}}))
        .await;
    let mut garage_node = Peer::node(garage_nodes).await;
    garage_node
        .send_json(&json!({"type": "update", "data": {"temperature": "garage 5"}}))
        .await;
    let mut client = Peer::client(&format!("ws://{addr}/ws")).await;
    let kitchen_uid = uid_of(
        &client
            .wait_for(TIMEOUT, |m| {
                is_update(m, None, "temperature", &json!("kitchen 20"))
            })
            .await,
    );
    let garage_uid = uid_of(
        &client
            .wait_for(TIMEOUT, |m| {
                is_update(m, None, "temperature", &json!("garage 5"))
            })
            .await,
    );
    broker.wait_for_log(
        &["node from gateway", &kitchen_uid, "gateway=kitchen"],
        TIMEOUT,
    );
    broker.wait_for_log(
        &["node from gateway", &garage_uid, "gateway=garage"],
        TIMEOUT,
    );
    let listing = http_get(addr, "/api/gateways", &[]).await.json();
    let nodes_of = |listing: &Value, name: &str| -> Option<Value> {
        listing["gateways"]
            .as_array()
            .expect("a list")
            .iter()
            .find(|g| g["name"] == name)
            .map(|g| g["nodes"].clone())
    };
    assert_eq!(nodes_of(&listing, "kitchen"), Some(json!([kitchen_uid])));
    assert_eq!(nodes_of(&listing, "garage"), Some(json!([garage_uid])));

    // The garage box was stolen: its entry goes, nothing is restarted.
    revoke(&file, "garage");
    broker.wait_for_log(&["gateways file reloaded", "removed [\"garage\"]"], TIMEOUT);
    broker.wait_for_log(&["gateway key revoked", "gateway=garage"], TIMEOUT);
    client
        .wait_for(TIMEOUT, |m| m == &json!({"type": "out", "uid": garage_uid}))
        .await;
    garage.wait_for_log(&["the broker refused our key (HTTP 401)"], TIMEOUT);
    broker.wait_for_log(&["gateway refused", "invalid token"], TIMEOUT);

    // The kitchen gateway never noticed: same connection, its node still live.
    kitchen_node
        .send_json(&json!({"type": "update", "data": {"temperature": "kitchen 21"}}))
        .await;
    client
        .wait_for(TIMEOUT, |m| {
            is_update(m, Some(&kitchen_uid), "temperature", &json!("kitchen 21"))
        })
        .await;
    assert_eq!(kitchen.count_log("connected to broker"), 1);
    assert_eq!(kitchen.count_log("connection lost"), 0);
    let listing = http_get(addr, "/api/gateways", &[]).await.json();
    assert_eq!(nodes_of(&listing, "kitchen"), Some(json!([kitchen_uid])));
    assert_eq!(nodes_of(&listing, "garage"), None);

    // A fresh client sees the kitchen's node and not the garage's.
    let mut fresh = Peer::client(&format!("ws://{addr}/ws")).await;
    let mut seen = Vec::new();
    while let Some(message) = fresh.next_json(std::time::Duration::from_millis(500)).await {
        seen.push(message);
    }
    assert!(seen.iter().any(|m| m["uid"] == kitchen_uid), "{seen:?}");
    assert!(!seen.iter().any(|m| m["uid"] == garage_uid), "{seen:?}");

    // SIGHUP rereads the file too.
    broker.signal(nix::sys::signal::Signal::SIGHUP);
    broker.wait_for_count("gateways file reloaded", 2, TIMEOUT);
}

/// The next text message exactly as the broker sent it.
async fn raw_text(peer: &mut Peer) -> String {
    loop {
        match tokio::time::timeout(TIMEOUT, peer.ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) => {
                return text.to_string();
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no text message: {other:?}"),
        }
    }
}

#[tokio::test]
async fn pyaiot_style_gateways_with_the_shared_key_or_their_own_and_dashboards_see_pyaiot_bytes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("gateways.toml");
    let lab_key = gateway_key(dir.path(), &file, "lab");
    let (broker, addr, shared_dir) =
        broker_with_keys_args(&["--gateways-file", file.to_str().expect("utf-8")]);
    let url = format!("ws://{addr}/gw");
    let mut client = Peer::client(&format!("ws://{addr}/ws")).await;

    let shared = PyaiotGateway::start(&url, &key_file(&shared_dir), "py-shared");
    assert_eq!(shared.first_line(), "connected");
    broker.wait_for_log(&["gateway connected", "gateway=(shared key)"], TIMEOUT);
    // What a pyaiot dashboard gets is pyaiot's message, byte for byte: no added field. (`dst`
    // is "all", or the client's id should the node have come first in a replay.)
    let new = raw_text(&mut client).await;
    let dst = serde_json::from_str::<Value>(&new).expect("JSON")["dst"].to_string();
    assert_eq!(
        new,
        format!(r#"{{"type":"new","uid":"py-shared","dst":{dst}}}"#)
    );
    assert_eq!(
        raw_text(&mut client).await,
        format!(
            r#"{{"type":"update","uid":"py-shared","endpoint":"protocol","data":"CoAP","dst":{dst}}}"#
        )
    );
    client
        .wait_for(TIMEOUT, |m| {
            is_update(m, Some("py-shared"), "temperature", &json!("23°C"))
        })
        .await;

    // A per-gateway key file is an ordinary pyaiot key file: pyaiot's gateway can use it.
    let own = PyaiotGateway::start(&url, lab_key.to_str().expect("utf-8"), "py-lab");
    assert_eq!(own.first_line(), "connected");
    broker.wait_for_log(&["node from gateway", "py-lab", "gateway=lab"], TIMEOUT);
    client
        .wait_for(TIMEOUT, |m| {
            is_update(m, Some("py-lab"), "temperature", &json!("23°C"))
        })
        .await;

    let stranger_key = dir.path().join("stranger.keys");
    aiot::keys::Keys::generate()
        .write(&stranger_key, false)
        .expect("written");
    let stranger = PyaiotGateway::start(&url, stranger_key.to_str().expect("utf-8"), "py-x");
    assert_eq!(stranger.first_line(), "refused 401");
}

#[test]
fn keys_generate_gateway_prints_the_key_file_and_refuses_a_second_entry_of_one_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("gateways.toml");
    let output = generate("porch", &file, None);
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).expect("utf-8");
    assert!(printed.starts_with("[keys]\nsecret = "), "{printed}");
    let key = dir.path().join("porch.keys");
    std::fs::write(&key, &printed).expect("write");
    let keys = aiot::keys::Keys::load(&key).expect("the printed text is a key file");
    assert!(
        std::fs::read_to_string(&file)
            .expect("read")
            .contains(keys.secret()),
        "the file holds the same key"
    );

    let again = generate("porch", &file, None);
    assert!(!again.status.success());
    let error = String::from_utf8_lossy(&again.stderr);
    assert!(error.contains("\"porch\" is already in"), "{error}");

    let missing = Command::new(env!("CARGO_BIN_EXE_aiot"))
        .args(["keys", "generate", "--gateway", "x"])
        .output()
        .expect("runs");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--gateways-file"));
}
