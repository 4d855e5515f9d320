//! SIGTERM and SIGINT stop every role cleanly: close frames sent, exit code 0, in time.

mod common;

use std::time::{Duration, Instant};

use common::{Aiot, Peer, TIMEOUT, broker_with_keys, gateway, key_file};
use nix::sys::signal::Signal;
use serde_json::json;

/// Within the drain deadline (5 s) plus process start-up slack.
const EXIT_DEADLINE: Duration = Duration::from_secs(7);

fn assert_clean_exit(process: &mut Aiot) -> Duration {
    let asked = Instant::now();
    let status = process
        .wait_exit(EXIT_DEADLINE)
        .unwrap_or_else(|| panic!("no exit within {EXIT_DEADLINE:?}:\n{}", process.log_text()));
    assert_eq!(status.code(), Some(0), "{}", process.log_text());
    asked.elapsed()
}

#[tokio::test]
async fn sigterm_stops_broker_and_gateway_cleanly_with_peers_connected() {
    let (mut broker, broker_addr, keys) = broker_with_keys();
    let (mut gateway, node_addr, web_addr) = gateway(Some((broker_addr, &key_file(&keys))), &[]);
    gateway.wait_for_log(&["connected to broker"], TIMEOUT);
    let mut node = Peer::connect(&format!("ws://{node_addr}/node")).await;
    node.next_json(TIMEOUT).await.expect("discover");
    node.send_json(&json!({"type": "update", "data": {"led": "0"}}))
        .await;
    let mut local = Peer::client(&format!("ws://{web_addr}/ws")).await;
    local.wait_for(TIMEOUT, |m| m["endpoint"] == "led").await;
    let mut central = Peer::client(&format!("ws://{broker_addr}/ws")).await;
    central.wait_for(TIMEOUT, |m| m["endpoint"] == "led").await;

    gateway.signal(Signal::SIGTERM);
    let took = assert_clean_exit(&mut gateway);
    println!("gateway exited in {took:?}");
    for peer in [&mut node, &mut local] {
        let frame = peer.closed(TIMEOUT).await.expect("a close frame");
        assert_eq!(u16::from(frame.code), 1001, "going away");
    }
    // The broker saw the gateway go and told its client.
    central.wait_for(TIMEOUT, |m| m["type"] == "out").await;

    broker.signal(Signal::SIGTERM);
    assert_clean_exit(&mut broker);
    let frame = central.closed(TIMEOUT).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1001);
}

#[tokio::test]
async fn sigint_stops_the_demo_cleanly() {
    let mut demo = Aiot::spawn(&[
        "demo",
        "--broker-port",
        "0",
        "--gateway-port",
        "0",
        "--web-port",
        "0",
        "--mqtt-port",
        "0",
        "--interval",
        "0.2",
    ]);
    let broker = demo.listening("broker");
    demo.wait_for_log(&["connected to broker"], TIMEOUT);
    let mut client = Peer::client(&format!("ws://{broker}/ws")).await;
    client
        .wait_for(TIMEOUT, |m| m["endpoint"] == "temperature")
        .await;
    demo.signal(Signal::SIGINT);
    assert_clean_exit(&mut demo);
}
