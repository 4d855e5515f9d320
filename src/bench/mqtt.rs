//! The MQTT side of the load: simulated nodes, each an MQTT 3.1.1 client (rumqttc) of the
//! gateway's embedded broker, behaving as pyaiot's MQTT nodes do: `node/check` at connect,
//! answer `discover resources` with `["name", "bench"]` and `discover values` with the name,
//! then publish `node/<id>/bench` `{"value":"<seq>:<send-time-ns>"}` (QoS 1, as pyaiot's
//! nodes) on the plan's schedule. The gateway turns each into an `update` of endpoint `bench`,
//! which the clients read as in the websocket mode.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::load::{ENDPOINT, NodeReport, Plan, Shared, until};
use crate::proto::mqtt;

/// What a client must have heard of a node for it to count as registered and discovered:
/// what the gateway publishes for a new MQTT node (`id`, `protocol`) and the value read after
/// discovery (`name`).
pub const DISCOVERED: &[&str] = &["id", "protocol", "name"];

/// Requests a node may queue in rumqttc before `publish` waits: the node then waits for the
/// broker, which is the push-back under test.
const QUEUE: usize = 256;

/// Node `index`'s own id (`<id>` in the topics).
pub fn node_id(index: usize) -> String {
    format!("bench-{index}")
}

/// `{"value":"<seq>:<sent_ns>"}`, a reading of resource `bench`.
pub fn update_payload(seq: u64, sent_ns: u64) -> Vec<u8> {
    format!(r#"{{"value":"{seq}:{sent_ns}"}}"#).into_bytes()
}

/// What node `id` publishes in answer to a message from the gateway.
pub fn answer(id: &str, index: usize, topic: &str, payload: &[u8]) -> Vec<(String, Vec<u8>)> {
    if topic == mqtt::GATEWAY_CHECK {
        return vec![check(id)];
    }
    if topic != mqtt::discover_topic(id) {
        return Vec::new();
    }
    match payload {
        b"resources" => vec![(
            mqtt::resources_topic(id),
            format!(r#"["name","{ENDPOINT}"]"#).into_bytes(),
        )],
        b"values" => vec![(
            mqtt::value_topic(id, "name"),
            format!(r#"{{"value":"bench node {index}"}}"#).into_bytes(),
        )],
        _ => Vec::new(),
    }
}

fn check(id: &str) -> (String, Vec<u8>) {
    (
        mqtt::NODE_CHECK.to_owned(),
        format!(r#"{{"id":"{id}"}}"#).into_bytes(),
    )
}

/// Node `index` of `nodes`: connects to `broker`, checks in, answers discovery, waits for the
/// plan, publishes its share of the updates, and stays connected until `stop`. Sequence
/// numbers as for websocket nodes: `index`, `index + nodes`, ...
pub async fn node(
    index: usize,
    nodes: usize,
    broker: SocketAddr,
    shared: Arc<Shared>,
    mut plan_rx: watch::Receiver<Option<Plan>>,
    stop: CancellationToken,
) -> NodeReport {
    let mut report = NodeReport::default();
    let id = node_id(index);
    let mut options = MqttOptions::new(
        format!("aiot-bench-{index}"),
        broker.ip().to_string(),
        broker.port(),
    );
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, QUEUE);
    shared.hello();
    let result: anyhow::Result<()> = async {
        let mut plan: Option<Plan> = None;
        let mut sending = true;
        let mut connected = false;
        loop {
            let update_at = report.next_due(plan, &mut sending, index, nodes, &shared);
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    let _ = client.try_disconnect();
                    return Ok(());
                }
                event = eventloop.poll() => match event {
                    // A thousand nodes connecting at once on a busy machine may time out:
                    // retry as a real node would, until the controller's setup deadline.
                    // Once connected, a lost connection would lose updates: the run fails.
                    Err(error) if !connected => {
                        tracing::debug!(index, %error, "bench MQTT node: connecting again");
                        tokio::time::sleep(Duration::from_millis(100 + fastrand::u64(0..400))).await;
                    }
                    Err(error) => return Err(error.into()),
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        for filter in [mqtt::discover_topic(&id), mqtt::GATEWAY_CHECK.to_owned()] {
                            client.subscribe(filter, QoS::AtLeastOnce).await?;
                        }
                        let (topic, payload) = check(&id);
                        client.publish(topic, QoS::AtLeastOnce, false, payload).await?;
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        for (topic, payload) in answer(&id, index, &publish.topic, &publish.payload) {
                            // Never wait here: the event loop must keep being polled.
                            if client.try_publish(topic, QoS::AtLeastOnce, false, payload).is_err() {
                                report.send_failures += 1;
                            }
                        }
                    }
                    _ => {}
                },
                changed = plan_rx.changed(), if plan.is_none() => {
                    if changed.is_err() {
                        bail!("the controller went away");
                    }
                    plan = *plan_rx.borrow_and_update();
                }
                () = until(update_at) => {
                    let Some(plan) = plan else { continue };
                    let sent_ns = shared.now_ns();
                    if plan.period.is_none() && sent_ns >= plan.end_ns {
                        sending = false;
                        continue;
                    }
                    let seq = report.sent * nodes as u64 + index as u64;
                    // A full request queue (the broker holding back its acks) is push-back:
                    // the update waits its turn, as a real node's would, while the event loop
                    // is polled.
                    let topic = mqtt::value_topic(&id, ENDPOINT);
                    let payload = update_payload(seq, sent_ns);
                    let mut publish = std::pin::pin!(client.publish(topic, QoS::AtLeastOnce, false, payload));
                    loop {
                        tokio::select! {
                            done = &mut publish => { done?; break; }
                            event = eventloop.poll() => { event?; }
                        }
                    }
                    report.count_sent(&plan, sent_ns, &shared);
                }
            }
        }
    }
    .await;
    if let Err(error) = result {
        report.error = Some(format!("MQTT node {index}: {error:#}"));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mqtt::FromNode;

    #[test]
    fn the_gateway_reads_what_a_bench_node_publishes() {
        let (topic, payload) = check(&node_id(3));
        assert_eq!(
            mqtt::parse(&topic, &payload),
            Ok(FromNode::Check {
                id: "bench-3".into()
            })
        );
        let answers = answer("bench-3", 3, "gateway/bench-3/discover", b"resources");
        let (topic, payload) = &answers[0];
        assert_eq!(
            mqtt::parse(topic, payload),
            Ok(FromNode::Resources {
                id: "bench-3".into(),
                resources: vec!["name".into(), ENDPOINT.into()]
            })
        );
        let answers = answer("bench-3", 3, "gateway/bench-3/discover", b"values");
        assert_eq!(answers[0].0, "node/bench-3/name");
        let Ok(FromNode::Value { value, .. }) =
            mqtt::parse("node/bench-3/bench", &update_payload(42, 1_234_567))
        else {
            panic!("the gateway cannot read an update");
        };
        assert_eq!(
            super::super::load::parse_value(value.as_str().expect("a string")),
            Some((42, 1_234_567))
        );
        assert_eq!(answer("bench-3", 3, "gateway/check", b"").len(), 1);
        assert!(answer("bench-3", 3, "gateway/bench-4/discover", b"values").is_empty());
    }
}
