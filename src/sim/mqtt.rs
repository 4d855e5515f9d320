//! Simulated MQTT nodes, like pyaiot's `mqtt-test-node.py`: each is an MQTT client that
//! publishes `node/check` (at connect, every 30 s and when asked by `gateway/check`), answers
//! `discover` with its resources (name, os, ip, board, led, temperature, pressure) or their
//! values, obeys `led/set` and reports the new value, and publishes readings periodically.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::RESOURCES;
use crate::proto::mqtt;
use crate::runtime::Supervisor;

#[derive(Debug, Clone)]
pub struct MqttNodes {
    pub host: String,
    pub port: u16,
    pub count: usize,
    /// Time between temperature readings; pressure every other one.
    pub interval: Duration,
}

const CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Starts `count` nodes under the supervisor; they run until shutdown.
pub fn start(supervisor: &Supervisor, nodes: MqttNodes) {
    tracing::info!(count = nodes.count, host = %nodes.host, port = nodes.port, "starting simulated MQTT nodes");
    // Ids unique across processes, so two `aiot node mqtt` on one broker do not collide.
    let prefix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    for index in 0..nodes.count {
        let nodes = nodes.clone();
        let id = format!("aiot-mqtt-{prefix}-{}", index + 1);
        let shutdown = supervisor.shutdown_token();
        supervisor.spawn(async move { run_node(id, &nodes, shutdown).await });
    }
}

struct SimNode {
    id: String,
    led: String,
    client: AsyncClient,
}

impl SimNode {
    fn value(&self, resource: &str) -> Value {
        match resource {
            "name" => json!("MQTT test node"),
            "os" => json!("riot"),
            "ip" => json!("127.0.0.1"),
            "board" => json!("aiot"),
            "led" => json!(self.led),
            "temperature" => json!(format!("{}°C", fastrand::u32(20..30))),
            "pressure" => json!(format!("{}hPa", fastrand::u32(990..1015))),
            _ => Value::Null,
        }
    }

    fn publish(&self, topic: String, payload: Vec<u8>) {
        if let Err(error) = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
        {
            tracing::debug!(id = %self.id, %error, "simulated MQTT node: publish dropped");
        }
    }

    fn publish_value(&self, resource: &str) {
        let payload = json!({ "value": self.value(resource) }).to_string();
        self.publish(mqtt::value_topic(&self.id, resource), payload.into_bytes());
    }

    fn check(&self) {
        let payload = json!({ "id": self.id }).to_string();
        self.publish(mqtt::NODE_CHECK.to_owned(), payload.into_bytes());
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) {
        if topic == mqtt::GATEWAY_CHECK {
            self.check();
        } else if topic == mqtt::discover_topic(&self.id) {
            if payload == b"resources" {
                let list = json!(RESOURCES).to_string();
                self.publish(mqtt::resources_topic(&self.id), list.into_bytes());
            } else {
                for resource in RESOURCES {
                    self.publish_value(resource);
                }
            }
        } else if topic == mqtt::set_topic(&self.id, "led") {
            self.led = String::from_utf8_lossy(payload).into_owned();
            self.publish_value("led");
        }
    }
}

async fn run_node(id: String, nodes: &MqttNodes, shutdown: CancellationToken) {
    let mut options = MqttOptions::new(id.clone(), nodes.host.clone(), nodes.port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let mut node = SimNode {
        id,
        led: "0".into(),
        client,
    };
    let mut check = tokio::time::interval(CHECK_INTERVAL);
    let mut readings = tokio::time::interval(nodes.interval);
    let mut count = 0u64;
    let mut connected = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    let filters = [
                        mqtt::discover_topic(&node.id),
                        mqtt::set_topic(&node.id, "led"),
                        mqtt::GATEWAY_CHECK.to_owned(),
                    ];
                    for filter in filters {
                        let _ = node.client.try_subscribe(filter, QoS::AtLeastOnce);
                    }
                    node.check();
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    node.on_message(&publish.topic, &publish.payload);
                }
                Ok(_) => {}
                Err(error) => {
                    connected = false;
                    tracing::debug!(id = %node.id, %error, "simulated MQTT node: reconnecting");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(500 + fastrand::u64(0..500))) => {}
                    }
                }
            },
            _ = check.tick(), if connected => node.check(),
            _ = readings.tick(), if connected => {
                count += 1;
                node.publish_value("temperature");
                if count % 2 == 0 {
                    node.publish_value("pressure");
                }
            }
        }
    }
    let _ = node.client.try_disconnect();
}
