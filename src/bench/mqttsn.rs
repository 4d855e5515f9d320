//! The MQTT-SN side of the load: simulated nodes, each a UDP socket, speaking MQTT-SN to the
//! gateway's MQTT-SN gateway as emcute does: CONNECT, SUBSCRIBE `gateway/<id>/discover` (the
//! topic id comes in SUBACK), REGISTER `node/check`, `node/<id>/resources`, `node/<id>/name`
//! and `node/<id>/bench`, PUBLISH `node/check` (the hello), answer the discovery, then PUBLISH
//! QoS 0 `{"value":"<seq>:<send-time-ns>"}` on `node/<id>/bench` on the plan's schedule. The
//! MQTT-SN gateway hands each to the broker as the node's MQTT connection; the MQTT adapter
//! turns it into an `update` of endpoint `bench`, which the clients read as in the other modes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::load::{ENDPOINT, NodeReport, Plan, Shared, until};
use crate::proto::mqtt;
use crate::proto::mqttsn::{Flags, Message, QoS, ReturnCode, Topic};

/// What a client must have heard of a node: what the MQTT adapter publishes for a new node
/// (`id`, `protocol`) and `name`, whose value comes once the adapter subscribed the node's
/// resources (`bench` among them), so no update is lost to a missing subscription.
pub const DISCOVERED: &[&str] = &["id", "protocol", "name"];

const RETRY: Duration = Duration::from_secs(1);
const RETRIES: u32 = 5;
/// Long enough that no ping is needed during a run.
const KEEP_ALIVE: u16 = 600;

/// Binds `count` node sockets on loopback (one each, ephemeral ports).
pub fn bind(count: usize) -> anyhow::Result<Vec<std::net::UdpSocket>> {
    super::coap::allow_sockets(count)?;
    (0..count)
        .map(|_| {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0")
                .context("cannot bind an MQTT-SN node socket")?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })
        .collect()
}

struct Link {
    socket: UdpSocket,
    msg_id: u16,
    buffer: Vec<u8>,
}

impl Link {
    fn next_msg_id(&mut self) -> u16 {
        self.msg_id = self.msg_id.checked_add(1).unwrap_or(1);
        self.msg_id
    }

    /// Sends `message` until an answer `wanted` picks arrives; anything else is dropped (the
    /// gateway sends nothing else before the node's first PUBLISH).
    async fn request<T>(
        &mut self,
        message: &Message,
        wanted: impl Fn(&Message) -> Option<T>,
    ) -> anyhow::Result<T> {
        let datagram = message.encode();
        for _ in 0..=RETRIES {
            self.socket.send(&datagram).await?;
            let deadline = tokio::time::Instant::now() + RETRY;
            while let Ok(received) =
                tokio::time::timeout_at(deadline, self.socket.recv(&mut self.buffer)).await
            {
                if let Ok(answer) = Message::decode(&self.buffer[..received?])
                    && let Some(found) = wanted(&answer)
                {
                    return Ok(found);
                }
            }
        }
        bail!("no answer to {}", message.name())
    }

    async fn register(&mut self, topic: String) -> anyhow::Result<u16> {
        let msg_id = self.next_msg_id();
        let register = Message::Register {
            topic_id: 0,
            msg_id,
            topic_name: topic.clone(),
        };
        let (topic_id, code) = self
            .request(&register, |m| match m {
                Message::RegAck {
                    msg_id: got,
                    topic_id,
                    code,
                } if *got == msg_id => Some((*topic_id, *code)),
                _ => None,
            })
            .await?;
        anyhow::ensure!(code == ReturnCode::Accepted, "REGACK {code:?} for {topic}");
        Ok(topic_id)
    }
}

fn publish(topic_id: u16, data: String) -> Vec<u8> {
    Message::Publish {
        flags: Flags::default(),
        topic_id,
        msg_id: 0,
        data: data.into_bytes(),
    }
    .encode()
}

/// Node `index` of `nodes`: connects and registers, says hello, serves discovery, waits for
/// the plan, publishes its share of the updates, and stays connected until `stop`. Sequence
/// numbers as for websocket nodes: `index`, `index + nodes`, ...
#[allow(clippy::too_many_arguments)]
pub async fn node(
    index: usize,
    nodes: usize,
    prefix: String,
    socket: std::net::UdpSocket,
    gateway: std::net::SocketAddr,
    shared: Arc<Shared>,
    mut plan_rx: watch::Receiver<Option<Plan>>,
    stop: CancellationToken,
) -> NodeReport {
    let mut report = NodeReport::default();
    let result: anyhow::Result<()> = async {
        let socket = UdpSocket::from_std(socket)?;
        socket.connect(gateway).await?;
        let mut link = Link {
            socket,
            msg_id: 0,
            buffer: vec![0u8; 2048],
        };
        let id = format!("{prefix}-{index}");
        let connect = Message::Connect {
            flags: Flags {
                clean_session: true,
                ..Flags::default()
            },
            duration: KEEP_ALIVE,
            client_id: id.clone(),
        };
        let code = link
            .request(&connect, |m| match m {
                Message::ConnAck { code } => Some(*code),
                _ => None,
            })
            .await?;
        anyhow::ensure!(code == ReturnCode::Accepted, "CONNACK {code:?}");
        let msg_id = link.next_msg_id();
        let subscribe = Message::Subscribe {
            flags: Flags {
                qos: QoS::Zero,
                ..Flags::default()
            },
            msg_id,
            topic: Topic::Name(mqtt::discover_topic(&id)),
        };
        let discover = link
            .request(&subscribe, |m| match m {
                Message::SubAck {
                    msg_id: got,
                    topic_id,
                    code: ReturnCode::Accepted,
                    ..
                } if *got == msg_id => Some(*topic_id),
                _ => None,
            })
            .await?;
        let check = link.register(mqtt::NODE_CHECK.to_owned()).await?;
        let resources = link.register(mqtt::resources_topic(&id)).await?;
        let name = link.register(mqtt::value_topic(&id, "name")).await?;
        let bench = link.register(mqtt::value_topic(&id, ENDPOINT)).await?;
        let Link {
            socket, mut buffer, ..
        } = link;
        shared.hello();
        socket
            .send(&publish(check, format!(r#"{{"id":"{id}"}}"#)))
            .await?;

        let mut plan: Option<Plan> = None;
        let mut sending = true;
        loop {
            let update_at = report.next_due(plan, &mut sending, index, nodes, &shared);
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    let _ = socket.send(&Message::Disconnect { duration: None }.encode()).await;
                    return Ok(());
                }
                received = socket.recv(&mut buffer) => {
                    let Ok(message) = Message::decode(&buffer[..received?]) else { continue };
                    let answer = match message {
                        Message::Publish { topic_id, data, .. } if topic_id == discover => {
                            if data == b"resources" {
                                Some(publish(resources, format!(r#"["name","{ENDPOINT}"]"#)))
                            } else {
                                Some(publish(name, format!(r#"{{"value":"bench node {index}"}}"#)))
                            }
                        }
                        Message::PingReq { .. } => Some(Message::PingResp.encode()),
                        Message::Disconnect { .. } => bail!("the gateway disconnected the node"),
                        _ => None,
                    };
                    if let Some(answer) = answer
                        && socket.send(&answer).await.is_err()
                    {
                        report.send_failures += 1;
                    }
                }
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
                    let datagram = publish(bench, format!(r#"{{"value":"{seq}:{sent_ns}"}}"#));
                    if socket.send(&datagram).await.is_err() {
                        report.send_failures += 1;
                    }
                    report.count_sent(&plan, sent_ns, &shared);
                    if plan.period.is_none() {
                        // UDP never pushes back: let the other nodes and the clients run.
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
    }
    .await;
    if let Err(error) = result {
        report.error = Some(format!("MQTT-SN node {index}: {error:#}"));
    }
    report
}
