//! Simulated websocket nodes (pyaiot's `ws_test_client.py`, grown up): they connect to a
//! gateway's `/node`, answer `discover`, publish readings periodically, obey LED writes and
//! report the new value, and reconnect when the gateway goes away.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::proto::node_ws::{FromNode, ToNode};
use crate::runtime::Supervisor;

/// Which resources the simulated nodes have, besides `name`, `os` and `board`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resources {
    pub led: bool,
    pub temperature: bool,
    pub pressure: bool,
}

#[derive(Debug, Clone)]
pub struct WsNodes {
    /// The gateway's node endpoint, `ws://host:port/node`.
    pub url: String,
    pub count: usize,
    pub resources: Resources,
    /// Time between readings.
    pub interval: Duration,
}

const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Starts `count` nodes under the supervisor; they run until shutdown.
pub fn start(supervisor: &Supervisor, nodes: WsNodes) {
    tracing::info!(count = nodes.count, url = %nodes.url, "starting simulated websocket nodes");
    for index in 0..nodes.count {
        let nodes = nodes.clone();
        let shutdown = supervisor.shutdown_token();
        supervisor.spawn(async move { run_node(index, &nodes, shutdown).await });
    }
}

/// One simulated node's state: what it reports.
struct SimNode {
    resources: Map<String, Value>,
    which: Resources,
}

impl SimNode {
    fn new(index: usize, which: Resources) -> Self {
        let mut resources = Map::new();
        resources.insert("name".into(), json!(format!("aiot-ws-{}", index + 1)));
        resources.insert("os".into(), json!("aiot"));
        resources.insert("board".into(), json!("simulated"));
        let mut node = SimNode { resources, which };
        if which.led {
            node.resources.insert("led".into(), json!("0"));
        }
        node.read_sensors();
        node
    }

    /// New readings, in the formats of pyaiot's test nodes (`23°C`, `1002hPa`).
    fn read_sensors(&mut self) -> Map<String, Value> {
        let mut changed = Map::new();
        if self.which.temperature {
            changed.insert(
                "temperature".into(),
                json!(format!("{}°C", fastrand::i32(20..30))),
            );
        }
        if self.which.pressure {
            changed.insert(
                "pressure".into(),
                json!(format!("{}hPa", fastrand::i32(990..1015))),
            );
        }
        for (key, value) in &changed {
            self.resources.insert(key.clone(), value.clone());
        }
        changed
    }

    /// A write from the gateway: the node takes the value and reports it back. An LED keeps
    /// pyaiot's text form, `"1"` or `"0"`.
    fn write(&mut self, endpoint: String, payload: Value) -> Map<String, Value> {
        let value = match (&*endpoint, payload) {
            ("led", Value::String(text)) => json!(if text.trim() == "1" { "1" } else { "0" }),
            ("led", Value::Number(n)) => json!(if n.as_f64() == Some(1.0) { "1" } else { "0" }),
            ("led", Value::Bool(on)) => json!(if on { "1" } else { "0" }),
            (_, other) => other,
        };
        self.resources.insert(endpoint.clone(), value.clone());
        let mut changed = Map::new();
        changed.insert(endpoint, value);
        changed
    }
}

async fn run_node(index: usize, nodes: &WsNodes, shutdown: CancellationToken) {
    let mut node = SimNode::new(index, nodes.resources);
    let mut delay = RECONNECT_MIN;
    loop {
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            result = tokio_tungstenite::connect_async(nodes.url.as_str()) => result,
        };
        match connected {
            Ok((ws, _)) => {
                delay = RECONNECT_MIN;
                match session(ws, &mut node, nodes.interval, &shutdown).await {
                    Ok(()) => return,
                    Err(why) => {
                        tracing::info!(node = index + 1, "simulated node lost its gateway: {why}")
                    }
                }
            }
            Err(error) => {
                tracing::debug!(node = index + 1, "simulated node cannot connect: {error}")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Runs until shutdown (`Ok`) or until the connection fails (`Err` with the reason).
async fn session(
    mut ws: Ws,
    node: &mut SimNode,
    interval: Duration,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let send = |changed: &Map<String, Value>| Message::text(FromNode::update_json(changed));
    ws.send(send(&node.resources))
        .await
        .map_err(|e| e.to_string())?;
    // Spread the nodes' readings over the interval instead of sending them in step.
    let first = interval.mul_f64(fastrand::f64());
    let mut readings = tokio::time::interval_at(tokio::time::Instant::now() + first, interval);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            _ = readings.tick() => {
                let changed = node.read_sensors();
                if !changed.is_empty() {
                    ws.send(send(&changed)).await.map_err(|e| e.to_string())?;
                }
            }
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Text(text))) => match ToNode::parse(&text) {
                    Ok(ToNode::Discover) => ws.send(send(&node.resources)).await.map_err(|e| e.to_string())?,
                    Ok(ToNode::Write { endpoint, payload }) => {
                        let changed = node.write(endpoint, payload);
                        ws.send(send(&changed)).await.map_err(|e| e.to_string())?;
                    }
                    Err(why) => tracing::debug!("simulated node ignored a message: {why}"),
                },
                Some(Ok(Message::Close(frame))) => {
                    return Err(frame.map_or_else(|| "closed".into(), |f| format!("closed: {}", f.reason)));
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.to_string()),
                None => return Err("connection ended".into()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_nodes_follow_led_writes_in_pyaiot_form() {
        let mut node = SimNode::new(
            0,
            Resources {
                led: true,
                temperature: true,
                pressure: false,
            },
        );
        assert_eq!(node.resources["led"], json!("0"));
        assert!(
            node.resources["temperature"]
                .as_str()
                .expect("text")
                .ends_with("°C")
        );
        for (payload, expected) in [
            (json!("1"), "1"),
            (json!(0), "0"),
            (json!(true), "1"),
            (json!("0"), "0"),
        ] {
            let changed = node.write("led".into(), payload);
            assert_eq!(changed["led"], json!(expected));
        }
        assert_eq!(node.write("text".into(), json!("hi"))["text"], json!("hi"));
    }
}
