//! Interop with pyaiot's side of the broker protocol as a tornado server speaks it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::{Peer, TIMEOUT, gateway};
use serde_json::{Value, json};

struct Python(std::process::Child);

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_uplink_works_with_a_tornado_broker_that_selects_no_subprotocol() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    aiot::keys::Keys::generate()
        .write(&keys, false)
        .expect("keys written");
    let mut child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/tornado_gw.py"
        ))
        .arg(&keys)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs (ci/test installs tornado and cryptography)");
    let stdout = child.stdout.take().expect("piped");
    let _python = Python(child);
    let (lines_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = lines
        .recv_timeout(TIMEOUT)
        .expect("the tornado server starts");
    let port: u16 = first
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {first}"));

    let broker: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let (gateway, node_addr, _) = gateway(Some((broker, keys.to_str().expect("utf-8"))), &[]);
    gateway.wait_for_log(&["connected to broker"], TIMEOUT);

    let mut node = Peer::connect(&format!("ws://{node_addr}/node")).await;
    node.next_json(TIMEOUT).await.expect("discover");
    node.send_json(&json!({"type": "update", "data": {"led": "0"}}))
        .await;

    // The tornado server asks for a replay and an LED write after the node's `new`.
    assert_eq!(
        node.next_json(TIMEOUT).await,
        Some(json!({"endpoint": "led", "payload": "1"})),
        "the write from the tornado side reaches the node"
    );
    let mut received: Vec<Value> = Vec::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !received
        .iter()
        .any(|m| m["dst"] == "tornado-client" && m["endpoint"] == "led")
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no replay for the client; got {received:#?}"));
        received.push(serde_json::from_str(&line).expect("JSON line"));
    }
    let uid = received[0]["uid"].clone();
    assert_eq!(
        received[0],
        json!({"type": "new", "uid": uid, "dst": "all"})
    );
    assert!(received.contains(&json!({"type": "update", "uid": uid, "endpoint": "protocol", "data": "WebSocket", "dst": "all"})));
    assert!(received.contains(&json!({"type": "new", "uid": uid, "dst": "tornado-client"})));
}
