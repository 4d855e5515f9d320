//! Simulated CoAP nodes (`aiot node coap`) against the gateway: a thousand at once, and one
//! behind a relay that loses 30% of the datagrams both ways.

mod coap_support;
mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use coap_support::{gateway, nodes};
use common::{Aiot, Peer, is_update};
use serde_json::json;
use tokio::net::UdpSocket;

#[tokio::test]
async fn a_thousand_simulated_nodes_all_appear_with_their_resources() {
    const COUNT: usize = 1000;
    let node_port = 20301;
    let gw = gateway(node_port, "", &[]);
    let mut client = Peer::client(&format!("ws://{}/ws", gw.web)).await;
    let started = Instant::now();
    let _nodes = nodes(
        gw.coap,
        "127.44.0.1",
        node_port,
        &["--count", "1000", "--led"],
    );
    let (mut new, mut named) = (HashSet::new(), HashSet::new());
    let mut all_new = None;
    let deadline = Duration::from_secs(90);
    while named.len() < COUNT {
        let left = deadline.saturating_sub(started.elapsed());
        let Some(message) = client.next_json(left).await else {
            panic!(
                "{} new, {} discovered after {deadline:?}",
                new.len(),
                named.len()
            );
        };
        let uid = message["uid"].as_str().unwrap_or_default().to_owned();
        if message["type"] == "new" {
            new.insert(uid);
            if new.len() == COUNT {
                all_new = Some(started.elapsed());
            }
        } else if message["endpoint"] == "led" {
            named.insert(uid);
        }
    }
    eprintln!(
        "{COUNT} CoAP nodes: all registered in {:?}, all discovered in {:?}",
        all_new.expect("all new"),
        started.elapsed()
    );
    assert_eq!(new.len(), COUNT);
    // The one expected warning: this test gateway has no web password.
    assert!(
        !gw.aiot
            .log_text()
            .lines()
            .any(|l| l.contains("WARN") && !l.contains("no web password set")),
        "{}",
        gw.aiot.log_text()
    );
}

/// Forwards datagrams between the gateway and a node, dropping `loss` of them each way.
/// The gateway sees the node at `front`; the node posts to `back`.
struct Relay {
    front: SocketAddr,
    back: SocketAddr,
    dropped: [Arc<AtomicU64>; 2],
}

async fn relay(front: &str, back: &str, gateway: SocketAddr, node: SocketAddr, loss: f64) -> Relay {
    let front_socket = Arc::new(UdpSocket::bind(front).await.expect("bind front"));
    let back_socket = Arc::new(UdpSocket::bind(back).await.expect("bind back"));
    let dropped = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let addrs = (
        front_socket.local_addr().expect("addr"),
        back_socket.local_addr().expect("addr"),
    );
    // Gateway → node: in at the front, out at the back; node → gateway the other way.
    for (from, to, target, count, seed) in [
        (
            front_socket.clone(),
            back_socket.clone(),
            node,
            dropped[0].clone(),
            1,
        ),
        (back_socket, front_socket, gateway, dropped[1].clone(), 2),
    ] {
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut buffer = vec![0u8; 2048];
            while let Ok((n, _)) = from.recv_from(&mut buffer).await {
                if rng.f64() < loss {
                    count.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let _ = to.send_to(&buffer[..n], target).await;
            }
        });
    }
    Relay {
        front: addrs.0,
        back: addrs.1,
        dropped,
    }
}

#[tokio::test]
async fn a_node_behind_a_lossy_link_converges_through_retransmission() {
    let node_port = 20302;
    let gw = gateway(node_port, "[coap]\nack_timeout_ms = 300\n", &[]);
    let mut client = Peer::client(&format!("ws://{}/ws", gw.web)).await;
    let node_addr: SocketAddr = format!("127.45.0.3:{node_port}").parse().expect("addr");
    let relay = relay(
        &format!("127.45.0.1:{node_port}"),
        "127.45.0.2:0",
        gw.coap,
        node_addr,
        0.3,
    )
    .await;
    assert_eq!(relay.front.ip().to_string(), "127.45.0.1");
    let back_port = relay.back.port().to_string();
    let _node = Aiot::spawn(&[
        "node",
        "coap",
        "--gateway-host",
        "127.45.0.2",
        "--gateway-port",
        &back_port,
        "--first-address",
        "127.45.0.3",
        "--node-port",
        &node_port.to_string(),
        "--led",
        "--confirmable",
        "--alive-interval",
        "1",
    ]);
    let uid = aiot::sim::coap::uid_for("127.45.0.3".parse().expect("ip"));
    let started = Instant::now();
    let mut missing: HashSet<&str> = ["name", "board", "os", "led"].into();
    let within = Duration::from_secs(60);
    while !missing.is_empty() {
        let message = client
            .wait_for(within.saturating_sub(started.elapsed()), |m| {
                m["uid"] == uid.as_str()
            })
            .await;
        if let Some(endpoint) = message["endpoint"].as_str() {
            missing.remove(endpoint);
        }
    }
    // A write may be lost whole (5 transmissions, each 49% likely to make it both ways);
    // the client tries again, as a person would.
    let mut written = false;
    for _ in 0..5 {
        client
            .send_json(
                &json!({"type": "update", "data": {"uid": uid, "endpoint": "led", "payload": "1"}}),
            )
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
        while let Some(message) = client
            .next_json(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            if is_update(&message, Some(&uid), "led", &json!("1")) {
                written = true;
                break;
            }
        }
        if written {
            break;
        }
    }
    assert!(written, "the LED write never got through");
    let dropped: Vec<u64> = relay
        .dropped
        .iter()
        .map(|d| d.load(Ordering::Relaxed))
        .collect();
    eprintln!(
        "lossy link: converged in {:?}, dropped {dropped:?} (to node, to gateway)",
        started.elapsed()
    );
    assert!(
        dropped.iter().all(|d| *d > 0),
        "the relay lost nothing: {dropped:?}"
    );
}
