//! Simulated MQTT-SN nodes: pyaiot's `mqtt-test-node.py` (see [`super::mqtt`]) speaking
//! MQTT-SN over UDP the way RIOT's `emcute` does: CONNECT, SUBSCRIBE to exact topics (the
//! topic id comes in SUBACK), REGISTER of every topic it publishes, PUBLISH QoS 0 (the LED's
//! new value at QoS 1), PINGREQ at a third of the keep-alive. It answers a gateway's
//! REGISTER and PINGREQ too, and starts over when the gateway says DISCONNECT or goes silent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::RESOURCES;
use crate::proto::mqtt;
use crate::proto::mqttsn::{Flags, Message, QoS, ReturnCode, Topic};
use crate::runtime::Supervisor;

#[derive(Debug, Clone)]
pub struct MqttSnNodes {
    pub gateway: SocketAddr,
    pub count: usize,
    /// Time between temperature readings; pressure every other one.
    pub interval: Duration,
    pub keep_alive: u16,
}

const CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// emcute's defaults: a request is retried every second... up to 3 times here.
const RETRY: Duration = Duration::from_secs(1);
const RETRIES: u32 = 3;

/// Starts `count` nodes under the supervisor; they run until shutdown.
pub fn start(supervisor: &Supervisor, nodes: MqttSnNodes) {
    tracing::info!(count = nodes.count, gateway = %nodes.gateway, "starting simulated MQTT-SN nodes");
    let prefix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    for index in 0..nodes.count {
        let nodes = nodes.clone();
        let id = format!("aiot-sn-{prefix}-{}", index + 1);
        let shutdown = supervisor.shutdown_token();
        supervisor.spawn(async move {
            loop {
                match run_node(&id, &nodes, &shutdown).await {
                    Ok(()) => return,
                    Err(error) => {
                        tracing::debug!(%id, %error, "simulated MQTT-SN node: starting over");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_millis(500 + fastrand::u64(0..500))) => {}
                        }
                    }
                }
            }
        });
    }
}

struct Node {
    id: String,
    socket: UdpSocket,
    led: String,
    msg_id: u16,
    /// Topic ids of what the node publishes, by resource (and `check`).
    publish_ids: HashMap<String, u16>,
    /// Topics the gateway sends, by topic id.
    incoming: HashMap<u16, String>,
}

fn value(led: &str, resource: &str) -> Value {
    match resource {
        "name" => json!("MQTT-SN test node"),
        "os" => json!("riot"),
        "ip" => json!("127.0.0.1"),
        "board" => json!("aiot"),
        "led" => json!(led),
        "temperature" => json!(format!("{}°C", fastrand::u32(20..30))),
        "pressure" => json!(format!("{}hPa", fastrand::u32(990..1015))),
        _ => Value::Null,
    }
}

impl Node {
    fn next_msg_id(&mut self) -> u16 {
        self.msg_id = self.msg_id.checked_add(1).unwrap_or(1);
        self.msg_id
    }

    async fn send(&self, message: &Message) -> anyhow::Result<()> {
        self.socket.send(&message.encode()).await?;
        Ok(())
    }

    /// Sends `message` until an answer `wanted` picks arrives; other messages are handled.
    async fn request<T>(
        &mut self,
        message: Message,
        wanted: impl Fn(&Message) -> Option<T>,
    ) -> anyhow::Result<T> {
        let mut buffer = vec![0u8; 2048];
        for _ in 0..=RETRIES {
            self.send(&message).await?;
            let deadline = tokio::time::Instant::now() + RETRY;
            while let Ok(received) =
                tokio::time::timeout_at(deadline, self.socket.recv(&mut buffer)).await
            {
                let Ok(answer) = Message::decode(&buffer[..received?]) else {
                    continue;
                };
                if let Some(found) = wanted(&answer) {
                    return Ok(found);
                }
                self.on_message(answer).await?;
            }
        }
        anyhow::bail!("no answer to {}", message.name())
    }

    async fn publish(&mut self, resource: &str, qos: QoS) -> anyhow::Result<()> {
        let Some(&topic_id) = self.publish_ids.get(resource) else {
            return Ok(());
        };
        let data = if resource == "check" {
            json!({ "id": self.id }).to_string()
        } else if resource == "resources" {
            json!(RESOURCES).to_string()
        } else {
            json!({ "value": value(&self.led, resource) }).to_string()
        };
        let msg_id = if qos == QoS::One {
            self.next_msg_id()
        } else {
            0
        };
        let publish = Message::Publish {
            flags: Flags {
                qos,
                ..Flags::default()
            },
            topic_id,
            msg_id,
            data: data.into_bytes(),
        };
        if qos == QoS::One {
            // Boxed: `request` handles messages, which may publish again.
            Box::pin(self.request(publish, |m| match m {
                Message::PubAck { msg_id: id, .. } if *id == msg_id => Some(()),
                _ => None,
            }))
            .await
        } else {
            self.send(&publish).await
        }
    }

    async fn on_message(&mut self, message: Message) -> anyhow::Result<()> {
        match message {
            Message::Publish {
                flags,
                topic_id,
                msg_id,
                data,
            } => {
                if flags.qos == QoS::One {
                    self.send(&Message::PubAck {
                        topic_id,
                        msg_id,
                        code: ReturnCode::Accepted,
                    })
                    .await?;
                }
                let topic = match flags.topic_id_type {
                    0 => self.incoming.get(&topic_id).cloned(),
                    _ => None,
                };
                match topic {
                    Some(topic) => self.on_publish(&topic, &data).await?,
                    None => {
                        tracing::debug!(id = %self.id, topic_id, "simulated MQTT-SN node: unknown topic id")
                    }
                }
            }
            Message::Register {
                topic_id,
                msg_id,
                topic_name,
            } => {
                self.incoming.insert(topic_id, topic_name);
                self.send(&Message::RegAck {
                    topic_id,
                    msg_id,
                    code: ReturnCode::Accepted,
                })
                .await?;
            }
            Message::PingReq { .. } => self.send(&Message::PingResp).await?,
            Message::Disconnect { .. } => anyhow::bail!("the gateway disconnected us"),
            _ => {}
        }
        Ok(())
    }

    async fn on_publish(&mut self, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
        if topic == mqtt::GATEWAY_CHECK {
            self.publish("check", QoS::Zero).await
        } else if topic == mqtt::discover_topic(&self.id) {
            if payload == b"resources" {
                self.publish("resources", QoS::Zero).await
            } else {
                for resource in RESOURCES {
                    self.publish(resource, QoS::Zero).await?;
                }
                Ok(())
            }
        } else if topic == mqtt::set_topic(&self.id, "led") {
            self.led = String::from_utf8_lossy(payload).into_owned();
            self.publish("led", QoS::One).await
        } else {
            Ok(())
        }
    }
}

async fn run_node(
    id: &str,
    nodes: &MqttSnNodes,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let local: SocketAddr = if nodes.gateway.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(nodes.gateway).await?;
    let mut node = Node {
        id: id.to_owned(),
        socket,
        led: "0".into(),
        msg_id: 0,
        publish_ids: HashMap::new(),
        incoming: HashMap::new(),
    };
    let connect = Message::Connect {
        flags: Flags {
            clean_session: true,
            ..Flags::default()
        },
        duration: nodes.keep_alive,
        client_id: id.chars().take(23).collect(),
    };
    let code = node
        .request(connect, |m| match m {
            Message::ConnAck { code } => Some(*code),
            _ => None,
        })
        .await?;
    anyhow::ensure!(code == ReturnCode::Accepted, "CONNACK {code:?}");
    for topic in [
        mqtt::GATEWAY_CHECK.to_owned(),
        mqtt::discover_topic(id),
        mqtt::set_topic(id, "led"),
    ] {
        let msg_id = node.next_msg_id();
        let subscribe = Message::Subscribe {
            flags: Flags {
                qos: QoS::One,
                ..Flags::default()
            },
            msg_id,
            topic: Topic::Name(topic.clone()),
        };
        let (topic_id, code) = node
            .request(subscribe, |m| match m {
                Message::SubAck {
                    msg_id: got,
                    topic_id,
                    code,
                    ..
                } if *got == msg_id => Some((*topic_id, *code)),
                _ => None,
            })
            .await?;
        anyhow::ensure!(code == ReturnCode::Accepted, "SUBACK {code:?} for {topic}");
        node.incoming.insert(topic_id, topic);
    }
    let mut topics = vec![
        ("check".to_owned(), mqtt::NODE_CHECK.to_owned()),
        ("resources".to_owned(), mqtt::resources_topic(id)),
    ];
    topics.extend(
        RESOURCES
            .iter()
            .map(|r| (r.to_string(), mqtt::value_topic(id, r))),
    );
    for (resource, topic) in topics {
        let msg_id = node.next_msg_id();
        let register = Message::Register {
            topic_id: 0,
            msg_id,
            topic_name: topic.clone(),
        };
        let (topic_id, code) = node
            .request(register, |m| match m {
                Message::RegAck {
                    msg_id: got,
                    topic_id,
                    code,
                } if *got == msg_id => Some((*topic_id, *code)),
                _ => None,
            })
            .await?;
        anyhow::ensure!(code == ReturnCode::Accepted, "REGACK {code:?} for {topic}");
        node.publish_ids.insert(resource, topic_id);
    }
    tracing::debug!(%id, "simulated MQTT-SN node connected");
    node.publish("check", QoS::Zero).await?;

    let mut check = tokio::time::interval(CHECK_INTERVAL);
    check.tick().await;
    let mut readings = tokio::time::interval(nodes.interval);
    readings.tick().await;
    let ping_every = Duration::from_secs(u64::from(nodes.keep_alive.max(3)) / 3);
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let silence = Duration::from_secs(u64::from(nodes.keep_alive.max(3)) * 2);
    let mut count = 0u64;
    let mut buffer = vec![0u8; 2048];
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = node.send(&Message::Disconnect { duration: None }).await;
                return Ok(());
            }
            received = node.socket.recv(&mut buffer) => {
                let len = received?;
                last_heard = tokio::time::Instant::now();
                if let Ok(message) = Message::decode(&buffer[..len]) {
                    node.on_message(message).await?;
                }
            }
            _ = check.tick() => node.publish("check", QoS::Zero).await?,
            _ = readings.tick() => {
                count += 1;
                node.publish("temperature", QoS::Zero).await?;
                if count % 2 == 0 {
                    node.publish("pressure", QoS::Zero).await?;
                }
            }
            _ = ping.tick() => {
                anyhow::ensure!(last_heard.elapsed() < silence, "the gateway is silent");
                node.send(&Message::PingReq { client_id: None }).await?;
            }
        }
    }
}
