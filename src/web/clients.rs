//! The `/ws` endpoint for web clients, the same on the broker and on a gateway: a client's
//! `new` gets it the hub's snapshot at once and registers it for live events; its `update`
//! becomes a write routed to the node's owner.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

use super::socket::{self, Ending, READ_BUFFER_BYTES, WsLimits};
use crate::hub::{ClientId, Event, Hub, Snapshot};
use crate::metrics::Channel;
use crate::proto::broker::{ClientMessage, Dst, NodeMessage};
use crate::runtime::Supervisor;

/// Events sent in one batch before flushing, so a burst costs few syscalls but a single event
/// still goes out at once.
const EVENT_BATCH: usize = 64;

#[derive(Clone)]
pub struct ClientEndpoint {
    pub hub: Hub,
    pub limits: WsLimits,
    pub supervisor: Supervisor,
}

pub async fn upgrade(
    ws: WebSocketUpgrade,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(endpoint): State<ClientEndpoint>,
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

/// What one client has been told, so a resync can take back nodes that vanished meanwhile.
struct ClientView {
    id: ClientId,
    known: HashSet<String>,
}

impl ClientView {
    fn note(&mut self, message: &NodeMessage) {
        match message {
            NodeMessage::New { uid, .. } => {
                self.known.insert(uid.clone());
            }
            NodeMessage::Out { uid } => {
                self.known.remove(uid);
            }
            _ => {}
        }
    }

    /// Adds `event` to `batch` if it is meant for this client.
    fn take(&mut self, event: &Event, batch: &mut Vec<Utf8Bytes>) {
        if event.is_for(&self.id) {
            self.note(&event.message);
            batch.push(socket::text(event.json.clone()));
        }
    }

    /// The messages that turn what the client saw into `snapshot`: `out` for every node it
    /// knows that is gone, then the snapshot addressed to it.
    fn resync(&mut self, snapshot: &Snapshot) -> Vec<NodeMessage> {
        let present: HashSet<&str> = snapshot.nodes.iter().map(|n| n.uid.as_str()).collect();
        let mut messages: Vec<NodeMessage> = self
            .known
            .iter()
            .filter(|uid| !present.contains(uid.as_str()))
            .map(|uid| NodeMessage::Out { uid: uid.clone() })
            .collect();
        messages.extend(snapshot.messages(&Dst::Client(self.id.clone())));
        for message in &messages {
            self.note(message);
        }
        messages
    }
}

async fn session(mut socket: WebSocket, endpoint: ClientEndpoint, peer: SocketAddr) {
    let shutdown = endpoint.supervisor.shutdown_token();
    let mut view = ClientView {
        id: uuid::Uuid::new_v4().to_string(),
        known: HashSet::new(),
    };
    tracing::info!(client = %view.id, %peer, "web client connected");
    let metrics = endpoint.hub.metrics().clone();
    let _open = metrics.connection(Channel::WebClient);
    // pyaiot registers a client for events only once it said `new`; so do we.
    let mut events: Option<broadcast::Receiver<Arc<Event>>> = None;
    let ending = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ending::Shutdown,
            incoming = socket.recv() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => {
                        metrics.received(Channel::WebClient, 1);
                        text
                    }
                    Some(Ok(Message::Binary(_))) => {
                        break Ending::Invalid("Invalid message: binary frames are not supported".into())
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => break Ending::PeerGone,
                    Some(Err(error)) => break Ending::from_receive_error(error),
                };
                match ClientMessage::parse(&text) {
                    Ok(ClientMessage::Hello) => {
                        let Some(subscription) = endpoint.hub.subscribe().await else {
                            break Ending::Shutdown;
                        };
                        events = Some(subscription.events);
                        view.known.clear();
                        let replay = view.resync(&subscription.snapshot);
                        if let Err(ending) = send_messages(&mut socket, &replay, &endpoint).await {
                            break ending;
                        }
                        endpoint.hub.client_hello(view.id.clone()).await;
                    }
                    Ok(ClientMessage::Write(write)) => {
                        tracing::debug!(client = %view.id, uid = %write.uid, endpoint = %write.endpoint, "write");
                        endpoint.hub.write(write, Some(view.id.clone())).await;
                    }
                    Ok(ClientMessage::Ignored(why)) => {
                        tracing::debug!(client = %view.id, "ignored: {why}");
                    }
                    Err(why) => break Ending::Invalid(format!("{why}.")),
                }
            }
            event = next_event(&mut events) => {
                let result = match event {
                    Ok(event) => {
                        let Some(receiver) = events.as_mut() else { continue };
                        match forward(&mut socket, event, receiver, &mut view, &endpoint).await {
                            Ok(None) => Ok(()),
                            Ok(Some(missed)) => {
                                resync(&mut socket, &mut events, &mut view, &endpoint, missed).await
                            }
                            Err(ending) => Err(ending),
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        resync(&mut socket, &mut events, &mut view, &endpoint, missed).await
                    }
                    Err(RecvError::Closed) => Err(Ending::Shutdown),
                };
                if let Err(ending) = result {
                    break ending;
                }
            }
        }
    };
    ending.record(
        "web client",
        &format_args!("{} at {peer}", view.id),
        &metrics,
        Channel::WebClient,
    );
    socket::finish(&mut socket, &ending, &endpoint.limits).await;
}

async fn next_event(
    events: &mut Option<broadcast::Receiver<Arc<Event>>>,
) -> Result<Arc<Event>, RecvError> {
    match events {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// Sends `first` and whatever else is already waiting, as one batch. Returns how many events
/// were missed if the client turned out to be behind the hub's ring.
async fn forward(
    socket: &mut WebSocket,
    first: Arc<Event>,
    receiver: &mut broadcast::Receiver<Arc<Event>>,
    view: &mut ClientView,
    endpoint: &ClientEndpoint,
) -> Result<Option<u64>, Ending> {
    let mut batch = Vec::with_capacity(EVENT_BATCH);
    let mut lagged = None;
    view.take(&first, &mut batch);
    for _ in 1..EVENT_BATCH {
        match receiver.try_recv() {
            Ok(event) => view.take(&event, &mut batch),
            Err(TryRecvError::Lagged(missed)) => {
                lagged = Some(missed);
                break;
            }
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        }
    }
    let sent =
        socket::send_batch(socket, socket::texts(batch), endpoint.limits.send_timeout).await?;
    endpoint.hub.metrics().sent(Channel::WebClient, sent);
    Ok(lagged)
}

/// The client fell behind the hub's event ring: rather than drop it, bring it up to date from
/// a fresh snapshot (a burst of thousands of events is not the client's fault).
async fn resync(
    socket: &mut WebSocket,
    events: &mut Option<broadcast::Receiver<Arc<Event>>>,
    view: &mut ClientView,
    endpoint: &ClientEndpoint,
    missed: u64,
) -> Result<(), Ending> {
    tracing::info!(client = %view.id, missed, "web client fell behind, resynchronising");
    let Some(subscription) = endpoint.hub.subscribe().await else {
        return Err(Ending::Shutdown);
    };
    *events = Some(subscription.events);
    let messages = view.resync(&subscription.snapshot);
    send_messages(socket, &messages, endpoint).await
}

async fn send_messages(
    socket: &mut WebSocket,
    messages: &[NodeMessage],
    endpoint: &ClientEndpoint,
) -> Result<(), Ending> {
    // Collected first: a borrowing iterator held across the await would not be `Send`.
    let texts: Vec<Utf8Bytes> = messages
        .iter()
        .map(|m| Utf8Bytes::from(m.to_json()))
        .collect();
    let sent =
        socket::send_batch(socket, socket::texts(texts), endpoint.limits.send_timeout).await?;
    endpoint.hub.metrics().sent(Channel::WebClient, sent);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::NodeState;
    use serde_json::json;

    #[test]
    fn resync_takes_back_vanished_nodes_and_replays_the_rest() {
        let mut view = ClientView {
            id: "c".into(),
            known: ["gone".to_string(), "kept".to_string()].into(),
        };
        let snapshot = Snapshot {
            nodes: vec![NodeState {
                uid: "kept".into(),
                resources: vec![("led".into(), json!("1"))],
            }],
        };
        let dst = Dst::Client("c".into());
        assert_eq!(
            view.resync(&snapshot),
            [
                NodeMessage::Out { uid: "gone".into() },
                NodeMessage::New {
                    uid: "kept".into(),
                    dst: dst.clone()
                },
                NodeMessage::Update {
                    uid: "kept".into(),
                    endpoint: "led".into(),
                    data: json!("1"),
                    dst
                },
            ]
        );
        assert_eq!(view.known, ["kept".to_string()].into());
    }
}
