//! Websocket nodes on the gateway's `/node` endpoint (protocol.md §4). Each connection is one
//! node and one hub source: its uid is a fresh uuid4, it is asked to `discover`, each key of
//! its updates becomes a resource, and it goes `out` when the connection closes.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::routing::get;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::hub::{Hub, SourceCommand};
use crate::metrics::Channel;
use crate::proto::broker::{Dst, NodeMessage};
use crate::proto::node_ws::{FromNode, ToNode};
use crate::runtime::Supervisor;
use crate::web::socket::{self, Ending, READ_BUFFER_BYTES, WsLimits};

/// The `protocol` resource every websocket node has.
pub const PROTOCOL: &str = "WebSocket";

#[derive(Clone)]
struct NodeEndpoint {
    hub: Hub,
    limits: WsLimits,
    supervisor: Supervisor,
}

pub fn routes(supervisor: &Supervisor, hub: Hub, limits: WsLimits) -> Router {
    let endpoint = NodeEndpoint {
        hub,
        limits,
        supervisor: supervisor.clone(),
    };
    Router::new().route("/node", get(upgrade).with_state(endpoint))
}

async fn upgrade(
    ws: WebSocketUpgrade,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(endpoint): State<NodeEndpoint>,
) -> Response {
    let limits = endpoint.limits.clone();
    // tungstenite's default 128 KiB read buffer per connection made a thousand nodes cost
    // 140 MiB; our messages are small.
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .max_frame_size(limits.max_frame_bytes)
        .max_message_size(limits.max_frame_bytes)
        .on_upgrade(move |socket| {
            let tracker = endpoint.supervisor.tracker().clone();
            tracker.track_future(session(socket, endpoint, peer))
        })
}

fn update(uid: &str, endpoint: String, data: Value) -> NodeMessage {
    NodeMessage::Update {
        uid: uid.to_owned(),
        endpoint,
        data,
        dst: Dst::All,
    }
}

async fn session(mut socket: WebSocket, endpoint: NodeEndpoint, peer: SocketAddr) {
    let limits = &endpoint.limits;
    let shutdown = endpoint.supervisor.shutdown_token();
    let uid = uuid::Uuid::new_v4().to_string();
    let (commands, mut writes) = mpsc::channel(limits.peer_queue);
    let Some(source) = endpoint
        .hub
        .register(format!("websocket node {uid} at {peer}"), commands)
        .await
    else {
        return;
    };
    tracing::info!(%uid, %peer, "websocket node connected");
    let metrics = endpoint.hub.metrics().clone();
    let _open = metrics.connection(Channel::WebSocketNode);
    let received = |text: &str| {
        metrics.received(Channel::WebSocketNode, 1);
        FromNode::parse(text)
    };
    let sent = |result: Result<u64, Ending>| match result {
        Ok(n) => {
            metrics.sent(Channel::WebSocketNode, n);
            None
        }
        Err(ending) => Some(ending),
    };
    source
        .send(NodeMessage::New {
            uid: uid.clone(),
            dst: Dst::All,
        })
        .await;
    source
        .send(update(&uid, "protocol".into(), Value::from(PROTOCOL)))
        .await;
    let discover = Message::Text(Utf8Bytes::from_static(crate::proto::node_ws::DISCOVER));
    let mut ending = sent(socket::send_batch(&mut socket, [discover], limits.send_timeout).await);
    while ending.is_none() {
        ending = tokio::select! {
            () = shutdown.cancelled() => Some(Ending::Shutdown),
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => match received(&text) {
                    Ok(FromNode::Update(resources)) => {
                        for (name, value) in resources {
                            source.send(update(&uid, name, value)).await;
                        }
                        None
                    }
                    Ok(FromNode::Ignored(kind)) => {
                        tracing::debug!(%uid, ?kind, "ignored a node message");
                        None
                    }
                    Err(why) => Some(Ending::Invalid(format!("{why}."))),
                },
                Some(Ok(Message::Binary(_))) => {
                    Some(Ending::Invalid("Invalid message: binary frames are not supported".into()))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                Some(Ok(Message::Close(_))) | None => Some(Ending::PeerGone),
                Some(Err(error)) => Some(Ending::from_receive_error(error)),
            },
            Some(command) = writes.recv() => match command {
                SourceCommand::Write { write, .. } => {
                    let text = ToNode::Write {
                        endpoint: write.endpoint,
                        payload: write.payload,
                    }
                    .to_json();
                    sent(socket::send_batch(&mut socket, [Message::Text(text.into())], limits.send_timeout).await)
                }
                SourceCommand::ClientHello { .. } => None,
            },
        };
    }
    let ending = ending.unwrap_or(Ending::PeerGone);
    ending.record(
        "websocket node",
        &format_args!("{uid} at {peer}"),
        &metrics,
        Channel::WebSocketNode,
    );
    source.close().await;
    socket::finish(&mut socket, &ending, limits).await;
}
