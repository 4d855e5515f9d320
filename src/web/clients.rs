//! The `/ws` endpoint for web clients, the same on the broker and on a gateway: a client's
//! `new` gets it the hub's snapshot at once and registers it for live events; its `update`
//! becomes a write routed to the node's owner, if the connection may write (see
//! [`super::auth`]) and within its rate and size limits.
//!
//! On the broker, a client that said it is aiot's dashboard (`"aiot": 1` in its hello) is also
//! told which gateway each node came from (a `gateway` field on `new`, see [`GatewayLabels`]);
//! every other client gets pyaiot's messages byte for byte.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use serde_json::Value;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

use super::auth::Access;
use super::security::{ClientSlot, Counters, Guard};
use super::socket::{self, Ending, READ_BUFFER_BYTES, WsLimits};
use crate::hub::{ClientId, Event, Hub, Snapshot};
use crate::metrics::{Channel, Limit};
use crate::proto::broker::{ClientMessage, Dst, NodeMessage, Write};
use crate::runtime::Supervisor;
use crate::runtime::rate::TokenBucket;

/// Events sent in one batch before flushing, so a burst costs few syscalls but a single event
/// still goes out at once.
const EVENT_BATCH: usize = 64;

/// Which gateway a node came from, as the broker knows it.
pub trait NodeOrigins: Send + Sync {
    /// The gateway's name (or a fixed label for gateways with pyaiot's shared key); `None`
    /// when the node is unknown or its gateway has gone.
    fn gateway_of(&self, uid: &str) -> Option<Arc<str>>;
}

/// Set as a request extension on the `/ws` route (the broker does): its aiot dashboards get
/// the node's gateway on every `new`. A gateway's own `/ws` has none.
#[derive(Clone)]
pub struct GatewayLabels(pub Arc<dyn NodeOrigins>);

#[derive(Clone)]
pub struct ClientEndpoint {
    pub hub: Hub,
    pub limits: WsLimits,
    pub supervisor: Supervisor,
    pub guard: Arc<Guard>,
}

pub async fn upgrade(
    ws: WebSocketUpgrade,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    labels: Option<Extension<GatewayLabels>>,
    State(endpoint): State<ClientEndpoint>,
) -> Response {
    let Some(slot) = endpoint.guard.admit() else {
        endpoint.hub.metrics().limit_hit(Limit::WebClients);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many web clients are connected; try again later",
        )
            .into_response();
    };
    // The cookie comes with the upgrade request only: a browser that logs in later opens a
    // new connection.
    let access = endpoint.guard.auth.access(&headers);
    let limits = endpoint.limits.clone();
    // tungstenite's default 128 KiB read buffer per connection made a thousand nodes cost
    // 140 MiB; our messages are small.
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .max_frame_size(limits.max_frame_bytes)
        .max_message_size(limits.max_frame_bytes)
        .on_upgrade(move |socket| {
            let tracker = endpoint.supervisor.tracker().clone();
            let labels = labels.map(|Extension(labels)| labels);
            tracker.track_future(session(socket, endpoint, peer, access, slot, labels))
        })
}

/// What one client has been told, so a resync can take back nodes that vanished meanwhile.
struct ClientView {
    id: ClientId,
    known: HashSet<String>,
    /// Set once an aiot dashboard said hello to the broker: its `new`s name the gateway.
    labels: Option<GatewayLabels>,
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
            let text = self
                .labelled(&event.message)
                .unwrap_or_else(|| socket::text(event.json.clone()));
            batch.push(text);
        }
    }

    /// The text of `message` for this client.
    fn text(&self, message: &NodeMessage) -> Utf8Bytes {
        self.labelled(message)
            .unwrap_or_else(|| Utf8Bytes::from(message.to_json()))
    }

    /// A `new` with its gateway, for an aiot dashboard on the broker; `None`: pyaiot's text.
    fn labelled(&self, message: &NodeMessage) -> Option<Utf8Bytes> {
        let NodeMessage::New { uid, .. } = message else {
            return None;
        };
        let gateway = self.labels.as_ref()?.0.gateway_of(uid)?;
        message.to_json_with_gateway(&gateway).map(Utf8Bytes::from)
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

/// What one connection may send, and what it was already told off for (logged once each).
struct Conduct {
    access: Access,
    /// Said it is aiot's dashboard in its hello (`"aiot": 1`): it understands `denied`.
    aiot: bool,
    rate: TokenBucket,
    logged_unauthorized: bool,
    logged_too_big: bool,
    logged_rate: bool,
}

/// Why a write was refused, as a `denied` message tells an aiot dashboard.
enum Denied {
    Unauthorized,
    TooBig(usize),
}

/// Whether `write` goes through; refusals are counted and logged once per connection.
fn allow_write(
    write: &Write,
    conduct: &mut Conduct,
    guard: &Guard,
    client: &str,
    peer: SocketAddr,
) -> Result<(), Denied> {
    if !guard.auth.may_write(&conduct.access) {
        Counters::add(&guard.counters.writes_unauthorized);
        if !std::mem::replace(&mut conduct.logged_unauthorized, true) {
            tracing::warn!(%client, %peer, "write refused: not logged in (further refusals on this connection are counted, not logged)");
        }
        return Err(Denied::Unauthorized);
    }
    let size = serde_json::to_string(&write.payload).map_or(usize::MAX, |s| s.len());
    if size > guard.settings.max_write_bytes {
        Counters::add(&guard.counters.writes_too_big);
        if !std::mem::replace(&mut conduct.logged_too_big, true) {
            tracing::warn!(%client, %peer, size, max = guard.settings.max_write_bytes, "write refused: payload too big");
        }
        return Err(Denied::TooBig(size));
    }
    Ok(())
}

fn denied_message(write: &Write, denied: &Denied, max: usize) -> String {
    let (reason, message) = match denied {
        Denied::Unauthorized => (
            "unauthorized",
            "Log in to control nodes: the command was not sent.".to_owned(),
        ),
        Denied::TooBig(size) => (
            "too_big",
            format!("The value is too big ({size} bytes, at most {max}): it was not sent."),
        ),
    };
    serde_json::json!({
        "type": "denied",
        "uid": write.uid,
        "endpoint": write.endpoint,
        "reason": reason,
        "message": message,
    })
    .to_string()
}

/// pyaiot's clients say `{"type":"new","data":"client"}`; aiot's dashboard adds `"aiot": 1`.
fn says_aiot(hello: &str) -> bool {
    serde_json::from_str::<Value>(hello)
        .ok()
        .and_then(|v| v.get("aiot").cloned())
        .is_some_and(|v| v != Value::Null && v != Value::Bool(false))
}

async fn session(
    mut socket: WebSocket,
    endpoint: ClientEndpoint,
    peer: SocketAddr,
    access: Access,
    _slot: ClientSlot,
    labels: Option<GatewayLabels>,
) {
    let shutdown = endpoint.supervisor.shutdown_token();
    let mut view = ClientView {
        id: uuid::Uuid::new_v4().to_string(),
        known: HashSet::new(),
        labels: None,
    };
    let guard = endpoint.guard.clone();
    let mut conduct = Conduct {
        access,
        aiot: false,
        rate: TokenBucket::new(guard.settings.client_messages_per_sec),
        logged_unauthorized: false,
        logged_too_big: false,
        logged_rate: false,
    };
    tracing::info!(client = %view.id, %peer, access = conduct.access.label(), "web client connected");
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
                if !conduct.rate.take() {
                    Counters::add(&guard.counters.messages_rate_limited);
                    metrics.limit_hit(Limit::ClientMessagesPerSec);
                    if !std::mem::replace(&mut conduct.logged_rate, true) {
                        tracing::warn!(client = %view.id, %peer, "web client sends too fast: dropping its excess messages (web.client_messages_per_sec)");
                    }
                    continue;
                }
                match ClientMessage::parse(&text) {
                    Ok(ClientMessage::Hello) => {
                        conduct.aiot |= says_aiot(&text);
                        if conduct.aiot {
                            view.labels.clone_from(&labels);
                        }
                        let Some(subscription) = endpoint.hub.subscribe().await else {
                            break Ending::Shutdown;
                        };
                        events = Some(subscription.events);
                        view.known.clear();
                        let replay = view.resync(&subscription.snapshot);
                        if let Err(ending) = send_messages(&mut socket, &replay, &view, &endpoint).await {
                            break ending;
                        }
                        endpoint.hub.client_hello(view.id.clone()).await;
                    }
                    Ok(ClientMessage::Write(write)) => {
                        match allow_write(&write, &mut conduct, &guard, &view.id, peer) {
                            Ok(()) => {
                                tracing::debug!(client = %view.id, uid = %write.uid, endpoint = %write.endpoint, "write");
                                endpoint.hub.write(write, Some(view.id.clone())).await;
                            }
                            // A pyaiot dashboard knows no `denied`: for it the write just has
                            // no effect.
                            Err(denied) if conduct.aiot => {
                                let text = denied_message(&write, &denied, guard.settings.max_write_bytes);
                                let sent = socket::send_batch(
                                    &mut socket,
                                    socket::texts([Utf8Bytes::from(text)]),
                                    endpoint.limits.send_timeout,
                                )
                                .await;
                                match sent {
                                    Ok(n) => metrics.sent(Channel::WebClient, n),
                                    Err(ending) => break ending,
                                }
                            }
                            Err(_) => {}
                        }
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
    send_messages(socket, &messages, view, endpoint).await
}

async fn send_messages(
    socket: &mut WebSocket,
    messages: &[NodeMessage],
    view: &ClientView,
    endpoint: &ClientEndpoint,
) -> Result<(), Ending> {
    // Collected first: a borrowing iterator held across the await would not be `Send`.
    let texts: Vec<Utf8Bytes> = messages.iter().map(|m| view.text(m)).collect();
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
            labels: None,
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
