//! The MQTT gateway's whole message path: pyaiot's topic scheme (`proto::mqtt::parse`) and
//! the node table behind it (`adapters::mqtt::nodes::Nodes`), fed a series of messages as a
//! broker would deliver them, with writes from clients and time moving on between them.
//! Nothing panics, the table never passes its cap, and every topic the gateway publishes or
//! subscribes to is free of wildcards and inside the scheme: a node's id or resource name can
//! never widen a subscription or aim a write elsewhere. Under wildcard subscriptions (the
//! embedded broker) the gateway subscribes to its two fixed filters and nothing else.
//!
//! The input is a series of records separated by 0xFF: the first byte says what the record is
//! (a message from the broker, a write, or time passing), a message is `topic \0 payload`.
//! The input's last byte, when odd, picks wildcard subscriptions.

#![no_main]

use std::time::{Duration, Instant};

use aiot::adapters::mqtt::nodes::{Action, Nodes, Settings, Subscriptions};
use aiot::proto::broker::Write;
use aiot::proto::mqtt::{self, FromNode};
use libfuzzer_sys::fuzz_target;

const MAX_NODES: usize = 4;

/// A topic the gateway uses: no wildcard, no empty level, and the node id at level 2.
fn check_topic(topic: &str) {
    assert!(
        !topic.contains(['+', '#', '\0']),
        "wildcard in a gateway topic: {topic:?}"
    );
    assert!(
        topic.split('/').all(|level| !level.is_empty()),
        "empty level in {topic:?}"
    );
    let levels: Vec<&str> = topic.split('/').collect();
    match levels.as_slice() {
        ["node", "check"] | ["gateway", "check"] => {}
        ["node", id, _] | ["gateway", id, "discover"] | ["gateway", id, _, "set"] => {
            assert!(mqtt::valid_name(id), "invalid id in {topic:?}");
        }
        _ => panic!("topic outside the scheme: {topic:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    // The parser alone: what it reads is valid, and the topics built from it parse back.
    if let Some(split) = data.iter().position(|&b| b == 0) {
        let topic = String::from_utf8_lossy(&data[..split]);
        match mqtt::parse(&topic, &data[split + 1..]) {
            Ok(FromNode::Check { id }) => assert!(mqtt::valid_name(&id)),
            Ok(FromNode::Resources { id, resources }) => {
                assert!(mqtt::valid_name(&id));
                for resource in &resources {
                    assert!(mqtt::valid_name(resource) && resource != "resources");
                }
            }
            Ok(FromNode::Value { id, resource, .. }) => {
                assert_eq!(mqtt::value_topic(&id, &resource), topic);
            }
            Err(_) => {}
        }
    }

    let subscriptions = match data.last() {
        Some(byte) if byte % 2 == 1 => Subscriptions::Direct,
        _ => Subscriptions::PerTopic,
    };
    let mut nodes = Nodes::new(Settings {
        max_nodes: MAX_NODES,
        max_resources: 8,
        max_time: Duration::from_secs(120),
        subscriptions,
    });
    let mut now = Instant::now();
    let mut uids: Vec<String> = Vec::new();
    for record in data.split(|&b| b == 0xff) {
        let Some((&kind, body)) = record.split_first() else {
            continue;
        };
        match kind % 8 {
            // Time passes: up to ~255 s, so nodes expire.
            0 => {
                now += Duration::from_secs(u64::from(body.first().copied().unwrap_or(0)));
                nodes.expire(now);
            }
            // A client writes to one of the nodes seen (or to a made-up uid).
            1 => {
                let text = String::from_utf8_lossy(body);
                let (endpoint, value) = text.split_once('=').unwrap_or((&text, ""));
                let uid = match body.first() {
                    Some(&i) if !uids.is_empty() => uids[usize::from(i) % uids.len()].clone(),
                    _ => "unknown".to_owned(),
                };
                nodes.write(&Write {
                    uid,
                    endpoint: endpoint.to_owned(),
                    payload: serde_json::Value::String(value.to_owned()),
                });
            }
            // A message from the broker; sometimes while the hub is behind.
            k => {
                let split = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                let topic = String::from_utf8_lossy(&body[..split]);
                let payload = body.get(split + 1..).unwrap_or_default();
                let _ = nodes.handle(&topic, payload, now, k != 7);
            }
        }
        while let Some(action) = nodes.poll_action() {
            match action {
                Action::Subscribe(filters) | Action::Unsubscribe(filters) => {
                    assert_eq!(subscriptions, Subscriptions::PerTopic, "{filters:?}");
                    filters.iter().for_each(|f| check_topic(f));
                }
                Action::Publish { topic, .. } => check_topic(&topic),
            }
        }
        while let Some(message) = nodes.poll_publish() {
            if let aiot::proto::broker::NodeMessage::New { uid, .. } = message {
                uids.push(uid);
            }
        }
        assert!(nodes.len() <= MAX_NODES);
        match subscriptions {
            Subscriptions::PerTopic => {
                assert!(nodes.filters().iter().all(|f| !f.contains(['+', '#'])));
            }
            Subscriptions::Direct => assert!(nodes.filters().is_empty()),
        }
    }
});
