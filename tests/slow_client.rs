//! A web client that never reads must not delay anyone else: not the other clients of the same
//! server, not the gateway's uplink. It is dropped once it has not taken its messages for
//! `limits.send_timeout_secs`.

mod common;

use std::time::{Duration, Instant};

use common::{Peer, TIMEOUT, broker_with_keys_args, config_file, gateway, is_update, key_file};
use futures_util::StreamExt;
use serde_json::json;

/// How the node sends: `BURST` updates every `PACE`, 2000 a second, each with 4 KiB of
/// padding: 8 MiB/s to every client, so that the kernel buffers between a server and a client
/// that does not read (a few MiB) fill within a second.
const BURST: u64 = 50;
const PACE: Duration = Duration::from_millis(25);
const PADDING: usize = 4096;
/// The node goes on until both stalled clients were dropped, and sends at least this many.
const MIN_UPDATES: u64 = 4_000;
/// The lowered send timeout, so that the test sees the drop quickly.
const SEND_TIMEOUT_SECS: u64 = 3;
/// The correctness bound on any update's delay to a healthy client (not a benchmark). Below the
/// send timeout: were anyone waiting for the stalled client, some update would wait that long.
const MAX_DELAY: Duration = Duration::from_secs(2);
/// What the servers log when they drop a client that does not read.
const DROPPED: &str = "web client dropped: not reading its messages";
/// The value of the node's last update.
const END: &str = "end";

/// Delays a healthy client saw, from the node's send to its receipt.
struct Delays {
    name: &'static str,
    count: u64,
    max: Duration,
    total: Duration,
}

/// Reads `client` until the node `uid` says `END`, timing every update before: the value is
/// `<seq>:<micros since base>:<padding>`.
async fn healthy_reader(
    name: &'static str,
    mut client: Peer,
    uid: String,
    base: Instant,
) -> (Delays, Peer) {
    let mut delays = Delays {
        name,
        count: 0,
        max: Duration::ZERO,
        total: Duration::ZERO,
    };
    loop {
        let message = client
            .next_json(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "{name}: the updates stopped after {} of them ({:?} max delay)",
                    delays.count, delays.max
                )
            });
        if message["type"] != "update" || message["uid"] != uid.as_str() {
            continue;
        }
        let Some(value) = message["data"].as_str() else {
            continue;
        };
        if value == END {
            return (delays, client);
        }
        let mut parts = value.splitn(3, ':');
        let (Some(seq), Some(sent), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let seq: u64 = seq.parse().expect("a sequence number");
        let sent = Duration::from_micros(sent.parse().expect("micros"));
        let delay = base.elapsed().saturating_sub(sent);
        delays.count += 1;
        delays.total += delay;
        delays.max = delays.max.max(delay);
        assert!(
            delay < MAX_DELAY,
            "{name}: update {seq} arrived after {delay:?}"
        );
    }
}

/// Drains a stalled client's socket: what the kernel buffered, then the end of the connection,
/// which proves the server let it go. Returns the number of messages that were waiting.
async fn drain_until_closed(mut stalled: Peer, what: &str) -> usize {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut waiting = 0;
    loop {
        match tokio::time::timeout_at(deadline, stalled.ws.next()).await {
            Err(_) => panic!("{what}: the server did not close the connection"),
            Ok(None | Some(Err(_))) => return waiting,
            Ok(Some(Ok(_))) => waiting += 1,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_delay_the_others() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The node is a firehose on purpose: no per-node throttle, so the clients get all of it.
    let config = config_file(
        &dir,
        &format!("[limits]\nsend_timeout_secs = {SEND_TIMEOUT_SECS}\nnode_messages_per_sec = 0\n"),
    );
    let (broker, broker_addr, keys) = broker_with_keys_args(&["--config", &config]);
    let (gateway, node_addr, web_addr) = gateway(
        Some((broker_addr, &key_file(&keys))),
        &["--config", &config],
    );
    gateway.wait_for_log(&["connected to broker"], TIMEOUT);
    let central_url = format!("ws://{broker_addr}/ws");
    let local_url = format!("ws://{web_addr}/ws");

    // A node, and healthy clients on the broker and the gateway that know it.
    let mut node = Peer::node(node_addr).await;
    node.send_json(&json!({"type": "update", "data": {"name": "chatty"}}))
        .await;
    let mut central = Peer::client(&central_url).await;
    let mut local = Peer::client(&local_url).await;
    let uid = uid_of(&mut central, "chatty").await;
    assert_eq!(uid_of(&mut local, "chatty").await, uid);

    // The stalled clients say `new` and are never read from again.
    let stalled_central = Peer::client(&central_url).await;
    let stalled_local = Peer::client(&local_url).await;

    let base = Instant::now();
    let readers = [
        tokio::spawn(healthy_reader("broker client", central, uid.clone(), base)),
        tokio::spawn(healthy_reader("gateway client", local, uid.clone(), base)),
    ];
    // The node goes on until the stalled clients were dropped, so that the healthy ones are
    // timed before, while and after the others stall.
    let padding = "z".repeat(PADDING);
    let mut pace = tokio::time::interval(PACE);
    let mut seq = 0;
    let mut dropped = [None, None];
    while seq < MIN_UPDATES || dropped.iter().any(Option::is_none) {
        assert!(
            base.elapsed() < Duration::from_secs(SEND_TIMEOUT_SECS + 15),
            "the stalled clients were not dropped (broker, gateway: {dropped:?}); broker log:\n{}\ngateway log:\n{}",
            broker.log_text(),
            gateway.log_text()
        );
        pace.tick().await;
        for _ in 0..BURST {
            let sent = base.elapsed().as_micros();
            let value = format!("{seq}:{sent}:{padding}");
            node.send_json(&json!({"type": "update", "data": {"blob": value}}))
                .await;
            seq += 1;
        }
        for (process, when) in [&broker, &gateway].into_iter().zip(&mut dropped) {
            if when.is_none() && process.count_log(DROPPED) > 0 {
                *when = Some(base.elapsed());
            }
        }
    }
    node.send_json(&json!({"type": "update", "data": {"blob": END}}))
        .await;
    println!(
        "{seq} updates of {PADDING} bytes sent in {:?}; stalled clients dropped after {:?} (broker) and {:?} (gateway)",
        base.elapsed(),
        dropped[0].expect("dropped"),
        dropped[1].expect("dropped")
    );

    for reader in readers {
        let (delays, _client) = reader.await.expect("a healthy reader");
        println!(
            "{}: {} updates timed, max delay {:?}, mean {:?}",
            delays.name,
            delays.count,
            delays.max,
            delays.total / delays.count.max(1) as u32
        );
        assert_eq!(delays.count, seq, "{}: every update arrived", delays.name);
    }

    // The stalled clients were dropped, by the server they were stalling, and only they.
    for (process, name, stalled) in [
        (&broker, "broker", stalled_central),
        (&gateway, "gateway", stalled_local),
    ] {
        assert_eq!(
            process.count_log(DROPPED),
            1,
            "{name}: only the stalled client was dropped"
        );
        let waiting = drain_until_closed(stalled, name).await;
        println!("{name}: the stalled client had {waiting} messages waiting when dropped");
    }
    // The uplink never broke, and the node still works both ways.
    assert_eq!(gateway.count_log("connected to broker"), 1);
    let mut check = Peer::client(&central_url).await;
    check
        .wait_for(TIMEOUT, |m| {
            m["type"] == "update" && m["uid"] == uid.as_str() && m["endpoint"] == "blob"
        })
        .await;
    check
        .send_json(
            &json!({"type": "update", "data": {"uid": uid, "endpoint": "led", "payload": "1"}}),
        )
        .await;
    assert_eq!(
        node.next_json(TIMEOUT).await,
        Some(json!({"endpoint": "led", "payload": "1"}))
    );
}

async fn uid_of(client: &mut Peer, name: &str) -> String {
    let update = client
        .wait_for(TIMEOUT, |m| is_update(m, None, "name", &json!(name)))
        .await;
    update["uid"].as_str().expect("uid").to_owned()
}
