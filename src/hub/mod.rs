//! The hub: one actor that owns the node table, fans node events out to subscribers and
//! routes clients' writes to the source that owns the node. It does no I/O and never waits on
//! a subscriber: events go out on a broadcast ring, and a subscriber that falls behind is told
//! so and resynchronises from a snapshot.
//!
//! On a gateway the sources are the device adapters (each websocket node connection is one);
//! on the broker each connected gateway is one. Subscribers are the `/ws` client endpoints and
//! the gateway's uplink.

mod table;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Limit, Metrics};
use crate::proto::broker::{Dst, NodeMessage, Write};
pub use table::{AllHistory, NodeState, Point, Refusal, Snapshot, SourceId};

/// A web client's id: pyaiot gives each `/ws` connection a uuid4 and addresses replays to it.
pub type ClientId = String;

/// What the hub asks of a source.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceCommand {
    /// Write a resource of a node this source owns; `src` is the asking client, if known.
    Write { write: Write, src: Option<ClientId> },
    /// A web client connected to the broker: a gateway replays its cache to it.
    ClientHello { client: ClientId },
}

/// One event as subscribers receive it: the message, and its JSON text made once for all.
#[derive(Debug)]
pub struct Event {
    pub message: NodeMessage,
    pub json: Bytes,
}

impl Event {
    fn new(message: NodeMessage) -> Arc<Self> {
        let json = Bytes::from(message.to_json());
        Arc::new(Event { message, json })
    }

    /// Whether a client should see this event: broadcasts, and replays addressed to it.
    pub fn is_for(&self, client: &str) -> bool {
        match &self.message {
            NodeMessage::New { dst, .. } | NodeMessage::Update { dst, .. } => match dst {
                Dst::All => true,
                Dst::Client(c) => c == client,
            },
            _ => true,
        }
    }
}

/// A snapshot, and the live events that follow it with none missed and none repeated.
pub struct Subscription {
    pub snapshot: Snapshot,
    pub events: broadcast::Receiver<Arc<Event>>,
}

enum Request {
    FromSource {
        source: SourceId,
        message: NodeMessage,
    },
    Register {
        name: String,
        commands: mpsc::Sender<SourceCommand>,
        reply: oneshot::Sender<SourceId>,
    },
    Unregister {
        source: SourceId,
    },
    Subscribe {
        reply: oneshot::Sender<Subscription>,
    },
    Snapshot {
        reply: oneshot::Sender<Snapshot>,
    },
    Ping {
        reply: oneshot::Sender<()>,
    },
    History {
        uid: String,
        endpoint: String,
        reply: oneshot::Sender<Option<Vec<Point>>>,
    },
    AllHistory {
        uid: Option<String>,
        reply: oneshot::Sender<AllHistory>,
    },
    Write {
        write: Write,
        src: Option<ClientId>,
    },
    ClientHello {
        client: ClientId,
    },
}

/// Settings of one hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub max_nodes: usize,
    pub max_resources: usize,
    pub history_points: usize,
    pub event_backlog: usize,
    /// Nodes one source may own: the broker's `limits.max_nodes_per_gateway`; unlimited on a
    /// gateway, whose sources are its own adapters.
    pub max_nodes_per_source: usize,
    /// Largest value of a node's resource (`limits.max_value_bytes`).
    pub max_value_bytes: usize,
    /// Updates per second per node, 0 for no limit (`limits.node_messages_per_sec`).
    pub node_messages_per_sec: u32,
}

impl Default for HubConfig {
    fn default() -> Self {
        use crate::proto::limits;
        HubConfig {
            max_nodes: limits::MAX_NODES,
            max_resources: limits::MAX_RESOURCES,
            history_points: limits::HISTORY_POINTS,
            event_backlog: limits::EVENT_BACKLOG,
            max_nodes_per_source: usize::MAX,
            max_value_bytes: limits::MAX_VALUE_BYTES,
            node_messages_per_sec: limits::NODE_MESSAGES_PER_SEC,
        }
    }
}

/// The handle everyone holds; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    requests: mpsc::Sender<Request>,
    /// Unregistrations from `Drop`, which cannot wait for room in `requests`; rare and at most
    /// one per source, so unbounded is bounded by the number of sources.
    dropped_sources: mpsc::UnboundedSender<SourceId>,
    metrics: Arc<Metrics>,
}

/// Requests waiting for the actor. Sources wait for room here, which is how a burst from
/// devices is slowed down instead of growing memory.
const INBOX: usize = 4096;
/// Requests handled per wake-up, so a busy hub pays one wake-up for many messages.
const BATCH: usize = 256;

impl Hub {
    /// Makes the handle and the actor; the caller runs `actor.run()` on its supervisor. The
    /// actor stops when `shutdown` is cancelled.
    pub fn new(
        config: HubConfig,
        shutdown: CancellationToken,
    ) -> (Hub, impl Future<Output = ()> + Send + 'static) {
        let (requests, inbox) = mpsc::channel(INBOX);
        let (dropped_sources, dropped) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(config.event_backlog);
        let metrics = Arc::new(Metrics::default());
        let actor = Actor {
            table: table::Table::new(
                config.max_nodes,
                config.max_resources,
                config.history_points,
            )
            .with_limits(
                config.max_nodes_per_source,
                config.max_value_bytes,
                config.node_messages_per_sec,
            ),
            logged: std::collections::HashSet::new(),
            sources: Vec::new(),
            next_source: 1,
            events,
            metrics: metrics.clone(),
        };
        (
            Hub {
                requests,
                dropped_sources,
                metrics,
            },
            actor.run(inbox, dropped, shutdown),
        )
    }

    /// The role's counters: the hub's own, and every endpoint's that holds this handle.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    async fn request(&self, request: Request) {
        // The actor only goes away at shutdown, when nobody cares about answers any more.
        let _ = self.requests.send(request).await;
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.request(make(reply)).await;
        answer.await.ok()
    }

    /// Registers a source of node events. `commands` is where the hub sends writes for the
    /// source's nodes; it is bounded by its creator, and the hub drops (and counts) commands
    /// that find it full rather than wait.
    pub async fn register(
        &self,
        name: impl Into<String>,
        commands: mpsc::Sender<SourceCommand>,
    ) -> Option<Source> {
        let name = name.into();
        let id = self
            .ask(|reply| Request::Register {
                name,
                commands,
                reply,
            })
            .await?;
        Some(Source {
            id,
            hub: self.clone(),
            closed: false,
        })
    }

    /// The current state and the live events after it, atomically.
    pub async fn subscribe(&self) -> Option<Subscription> {
        self.ask(|reply| Request::Subscribe { reply }).await
    }

    /// Whether the actor answers: the watchdog's probe of the hub.
    pub async fn ping(&self) -> bool {
        self.ask(|reply| Request::Ping { reply }).await.is_some()
    }

    pub async fn snapshot(&self) -> Option<Snapshot> {
        self.ask(|reply| Request::Snapshot { reply }).await
    }

    pub async fn history(&self, uid: &str, endpoint: &str) -> Option<Vec<Point>> {
        self.ask(|reply| Request::History {
            uid: uid.to_owned(),
            endpoint: endpoint.to_owned(),
            reply,
        })
        .await
        .flatten()
    }

    /// Every numeric history, or one node's: uid → endpoint → points, oldest first.
    pub async fn all_history(&self, uid: Option<String>) -> AllHistory {
        self.ask(|reply| Request::AllHistory { uid, reply })
            .await
            .unwrap_or_default()
    }

    /// Routes a client's write to the source owning the node.
    pub async fn write(&self, write: Write, src: Option<ClientId>) {
        self.request(Request::Write { write, src }).await;
    }

    /// Tells every source that a client connected (the broker forwards it to its gateways).
    pub async fn client_hello(&self, client: ClientId) {
        self.request(Request::ClientHello { client }).await;
    }
}

/// A registered source. Messages sent through it are attributed to it; closing it (or
/// dropping it) sends `out` for every node it still owns.
pub struct Source {
    id: SourceId,
    hub: Hub,
    closed: bool,
}

impl Source {
    pub fn id(&self) -> SourceId {
        self.id
    }

    pub async fn send(&self, message: NodeMessage) {
        self.hub
            .request(Request::FromSource {
                source: self.id,
                message,
            })
            .await;
    }

    /// Unregisters in order with the messages sent before, so none of them arrives after the
    /// node's `out`.
    pub async fn close(mut self) {
        self.closed = true;
        self.hub
            .request(Request::Unregister { source: self.id })
            .await;
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.hub.dropped_sources.send(self.id);
        }
    }
}

struct RegisteredSource {
    id: SourceId,
    name: String,
    commands: mpsc::Sender<SourceCommand>,
}

struct Actor {
    table: table::Table,
    sources: Vec<RegisteredSource>,
    next_source: u64,
    events: broadcast::Sender<Arc<Event>>,
    metrics: Arc<Metrics>,
    /// Sources whose refusal for a full table (or a full share of it) was logged: once per
    /// source and limit, forgotten when the source goes.
    logged: std::collections::HashSet<(SourceId, Limit)>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Actor {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Request>,
        mut dropped: mpsc::UnboundedReceiver<SourceId>,
        shutdown: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(BATCH);
        let flush_every = std::time::Duration::from_millis(self.table.token_interval_ms());
        let mut next_flush = tokio::time::Instant::now();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                received = inbox.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        break;
                    }
                    for request in batch.drain(..) {
                        self.handle(request);
                    }
                }
                Some(source) = dropped.recv() => self.unregister(source),
                // Only while a throttled node has values waiting: an idle hub never wakes.
                () = tokio::time::sleep_until(next_flush), if self.table.has_deferred() => {}
            }
            // Here rather than in the branch above, so that a busy inbox cannot starve it.
            let now = tokio::time::Instant::now();
            if now >= next_flush && self.table.has_deferred() {
                self.flush_deferred();
                next_flush = now + flush_every;
            }
        }
    }

    fn publish(&self, message: NodeMessage) {
        // No receivers is normal (a gateway with nobody watching).
        let _ = self.events.send(Event::new(message));
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::FromSource { source, message } => {
                match self.table.apply(source, message, now_ms()) {
                    Ok(Some(message)) => self.publish(message),
                    Ok(None) => {}
                    Err(refusal) => self.refused(source, &refusal),
                }
                self.metrics.set_nodes(self.table.len());
            }
            Request::Register {
                name,
                commands,
                reply,
            } => {
                let id = SourceId(self.next_source);
                self.next_source += 1;
                tracing::debug!(source = ?id, %name, "source registered");
                self.sources.push(RegisteredSource { id, name, commands });
                let _ = reply.send(id);
            }
            Request::Unregister { source } => self.unregister(source),
            Request::Subscribe { reply } => {
                let events = self.events.subscribe();
                let _ = reply.send(Subscription {
                    snapshot: self.table.snapshot(),
                    events,
                });
            }
            Request::Snapshot { reply } => {
                let _ = reply.send(self.table.snapshot());
            }
            Request::Ping { reply } => {
                let _ = reply.send(());
            }
            Request::History {
                uid,
                endpoint,
                reply,
            } => {
                let _ = reply.send(self.table.history(&uid, &endpoint));
            }
            Request::AllHistory { uid, reply } => {
                let _ = reply.send(self.table.all_history(uid.as_deref()));
            }
            Request::Write { write, src } => match self.table.owner(&write.uid) {
                Some(owner) => {
                    let uid = write.uid.clone();
                    self.command(owner, SourceCommand::Write { write, src }, &uid);
                }
                None => tracing::debug!(uid = %write.uid, "write for an unknown node dropped"),
            },
            Request::ClientHello { client } => {
                let ids: Vec<SourceId> = self.sources.iter().map(|s| s.id).collect();
                for id in ids {
                    self.command(
                        id,
                        SourceCommand::ClientHello {
                            client: client.clone(),
                        },
                        "",
                    );
                }
            }
        }
    }

    /// Counts a refusal, and logs it once per offender: per node for a node's own limits, per
    /// source for the table's.
    fn refused(&mut self, source: SourceId, refusal: &Refusal) {
        let (limit, first) = match *refusal {
            Refusal::Full { .. } => (Limit::Nodes, self.logged.insert((source, Limit::Nodes))),
            Refusal::SourceFull { .. } => (
                Limit::NodesPerGateway,
                self.logged.insert((source, Limit::NodesPerGateway)),
            ),
            Refusal::TooManyResources { first, .. } => (Limit::ResourcesPerNode, first),
            Refusal::ValueTooBig { first, .. } => (Limit::ValueBytes, first),
            // Deferred, not lost: only a value replaced by a newer one is dropped and counted.
            Refusal::TooFast {
                first, replaced, ..
            } => {
                if replaced {
                    self.metrics.refused();
                    self.metrics.limit_hit(Limit::NodeMessagesPerSec);
                }
                if first {
                    self.warn(source, refusal);
                }
                return;
            }
            Refusal::UnknownNode(_) | Refusal::NotOwner(_) | Refusal::KeepAlive => {
                self.metrics.refused();
                tracing::debug!(source = ?source, "{refusal}");
                return;
            }
        };
        self.metrics.refused();
        self.metrics.limit_hit(limit);
        if first {
            self.warn(source, refusal);
        } else {
            tracing::debug!(source = ?source, "{refusal}");
        }
    }

    /// The one log line of an offender, naming its source (on the broker: the gateway).
    fn warn(&self, source: SourceId, refusal: &Refusal) {
        let name = self
            .sources
            .iter()
            .find(|s| s.id == source)
            .map_or("", |s| s.name.as_str());
        tracing::warn!(source = %name, "limit hit: {refusal} (further hits are counted in aiot_limit_hits_total, not logged)");
    }

    /// Sends the throttled values whose nodes' rate allows them now.
    fn flush_deferred(&mut self) {
        for message in self.table.flush_deferred(now_ms()) {
            self.publish(message);
        }
    }

    fn command(&self, target: SourceId, command: SourceCommand, uid: &str) {
        let Some(source) = self.sources.iter().find(|s| s.id == target) else {
            return;
        };
        if source.commands.try_send(command).is_err() {
            self.metrics.command_dropped();
            tracing::warn!(source = %source.name, %uid, "command dropped: the source is not keeping up");
        }
    }

    fn unregister(&mut self, source: SourceId) {
        let Some(index) = self.sources.iter().position(|s| s.id == source) else {
            return;
        };
        let gone = self.sources.swap_remove(index);
        self.logged.retain(|(id, _)| *id != source);
        tracing::debug!(source = ?gone.id, name = %gone.name, "source unregistered");
        for out in self.table.remove_source(source) {
            self.publish(out);
        }
        self.metrics.set_nodes(self.table.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn new(uid: &str) -> NodeMessage {
        NodeMessage::New {
            uid: uid.into(),
            dst: Dst::All,
        }
    }

    fn update(uid: &str, value: &str) -> NodeMessage {
        NodeMessage::Update {
            uid: uid.into(),
            endpoint: "led".into(),
            data: json!(value),
            dst: Dst::All,
        }
    }

    async fn next(events: &mut broadcast::Receiver<Arc<Event>>) -> NodeMessage {
        events.recv().await.expect("an event").message.clone()
    }

    fn start() -> Hub {
        let (hub, actor) = Hub::new(HubConfig::default(), CancellationToken::new());
        tokio::spawn(actor);
        hub
    }

    #[tokio::test]
    async fn subscribers_get_snapshot_then_live_events_without_gaps() {
        let hub = start();
        let (commands, _rx) = mpsc::channel(8);
        let source = hub.register("test", commands).await.expect("registered");
        source.send(new("n")).await;
        source.send(update("n", "0")).await;
        let mut subscription = hub.subscribe().await.expect("subscribed");
        source.send(update("n", "1")).await;
        assert_eq!(subscription.snapshot.nodes.len(), 1);
        assert_eq!(
            subscription.snapshot.nodes[0].resources,
            [("led".into(), json!("0"))]
        );
        assert_eq!(next(&mut subscription.events).await, update("n", "1"));
    }

    #[tokio::test]
    async fn writes_reach_only_the_owner_and_hello_reaches_all() {
        let hub = start();
        let (a_tx, mut a_rx) = mpsc::channel(8);
        let (b_tx, mut b_rx) = mpsc::channel(8);
        let a = hub.register("a", a_tx).await.expect("registered");
        let _b = hub.register("b", b_tx).await.expect("registered");
        a.send(new("n")).await;
        let write = Write {
            uid: "n".into(),
            endpoint: "led".into(),
            payload: json!("1"),
        };
        hub.write(write.clone(), Some("c".into())).await;
        hub.write(
            Write {
                uid: "unknown".into(),
                ..write.clone()
            },
            None,
        )
        .await;
        hub.client_hello("c2".into()).await;
        assert_eq!(
            a_rx.recv().await,
            Some(SourceCommand::Write {
                write,
                src: Some("c".into())
            })
        );
        let hello = SourceCommand::ClientHello {
            client: "c2".into(),
        };
        assert_eq!(a_rx.recv().await, Some(hello.clone()));
        assert_eq!(b_rx.recv().await, Some(hello));
    }

    #[tokio::test]
    async fn a_source_that_goes_away_outs_its_nodes_after_its_last_message() {
        let hub = start();
        let mut subscription = hub.subscribe().await.expect("subscribed");
        let (commands, _rx) = mpsc::channel(8);
        let source = hub
            .register("a", commands.clone())
            .await
            .expect("registered");
        source.send(new("n")).await;
        source.send(update("n", "1")).await;
        source.close().await;
        assert_eq!(next(&mut subscription.events).await, new("n"));
        assert_eq!(next(&mut subscription.events).await, update("n", "1"));
        assert_eq!(
            next(&mut subscription.events).await,
            NodeMessage::Out { uid: "n".into() }
        );

        let dropped = hub.register("b", commands).await.expect("registered");
        dropped.send(new("m")).await;
        drop(dropped);
        assert_eq!(next(&mut subscription.events).await, new("m"));
        assert_eq!(
            next(&mut subscription.events).await,
            NodeMessage::Out { uid: "m".into() }
        );
        assert!(hub.snapshot().await.expect("snapshot").nodes.is_empty());
    }

    #[tokio::test]
    async fn events_carry_their_json_and_know_their_audience() {
        let event = Event::new(NodeMessage::New {
            uid: "n".into(),
            dst: Dst::Client("c1".into()),
        });
        assert_eq!(&event.json[..], br#"{"type":"new","uid":"n","dst":"c1"}"#);
        assert!(event.is_for("c1"));
        assert!(!event.is_for("c2"));
        assert!(Event::new(NodeMessage::Out { uid: "n".into() }).is_for("c2"));
    }

    #[tokio::test]
    async fn commands_to_a_full_source_are_dropped_not_awaited() {
        let hub = start();
        let (commands, _rx) = mpsc::channel(1);
        let source = hub.register("slow", commands).await.expect("registered");
        source.send(new("n")).await;
        let write = Write {
            uid: "n".into(),
            endpoint: "led".into(),
            payload: json!(1),
        };
        for _ in 0..3 {
            hub.write(write.clone(), None).await;
        }
        hub.snapshot().await.expect("the hub is still answering");
        assert_eq!(hub.metrics().commands_dropped(), 2);
    }
}
