//! The node table: which source owns which node, each node's resources in arrival order, and
//! a bounded history of numeric readings. Pure state: messages in, messages to broadcast out.

use std::collections::{HashMap, VecDeque};

use indexmap::IndexMap;
use serde_json::Value;

use crate::proto::broker::{Dst, NodeMessage};
use crate::proto::reading;

/// Who sent a node message: an adapter on a gateway, a gateway connection on the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u64);

/// One numeric reading: milliseconds since the Unix epoch, and the value.
pub type Point = (u64, f64);

/// Readings a new history ring takes before it is given its whole bound at once. Doubling up
/// to the bound would reallocate until the 65th reading (11 minutes at one reading per 10 s,
/// hours for slow sensors), so a gateway's memory would creep long after start; a resource
/// that reported only once or twice (an LED's state) keeps a small ring.
const FIRST_RING: usize = 4;

#[derive(Debug)]
struct Node {
    owner: SourceId,
    resources: IndexMap<String, Value>,
    history: HashMap<String, VecDeque<Point>>,
    /// Whether this node was already refused a resource, so the log says it once.
    over_resource_limit: bool,
    /// Its share of `node_messages_per_sec`.
    rate: Bucket,
    /// Whether it was already refused for a value too big, or for sending too fast: the log
    /// says each once per node.
    over_value_limit: bool,
    over_rate_limit: bool,
    /// The newest value of each resource that came while the node was over its rate, sent
    /// when its bucket refills: excess updates are dropped, but never the last word.
    deferred: IndexMap<String, Value>,
}

/// A token bucket refilled at `rate` per second up to `capacity`, on the hub's clock.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
}

impl Bucket {
    fn full(capacity: f64, now_ms: u64) -> Self {
        Bucket {
            tokens: capacity,
            last_ms: now_ms,
        }
    }

    fn take(&mut self, rate: f64, capacity: f64, now_ms: u64) -> bool {
        // A clock stepped back refills nothing rather than everything.
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed as f64 * rate / 1000.0).min(capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Makes `data` the current value of `endpoint`, and a point of its history if it is a fresh
/// number (a replay for one client repeats a value already recorded).
fn record(
    node: &mut Node,
    endpoint: &str,
    data: &Value,
    fresh: bool,
    history_points: usize,
    now_ms: u64,
) {
    if let Some(number) = reading::numeric(data).filter(|_| fresh) {
        // Looked up before inserting, so the hot path copies no endpoint name.
        let ring = match node.history.get_mut(endpoint) {
            Some(ring) => ring,
            None => node.history.entry(endpoint.to_owned()).or_default(),
        };
        if ring.len() == history_points {
            ring.pop_front();
        } else if ring.len() == ring.capacity() && ring.len() >= FIRST_RING {
            ring.reserve_exact(history_points - ring.len());
        }
        if history_points > 0 {
            ring.push_back((now_ms, number));
        }
    }
    match node.resources.get_mut(endpoint) {
        Some(slot) => *slot = data.clone(),
        None => {
            node.resources.insert(endpoint.to_owned(), data.clone());
        }
    }
}

/// A value's size as the limit counts it: a string's bytes, anything else's JSON text.
pub fn value_bytes(value: &Value) -> usize {
    match value {
        Value::String(text) => text.len(),
        other => serde_json::to_vec(other).map_or(0, |json| json.len()),
    }
}

/// Numeric histories: uid → endpoint → points, oldest first.
pub type AllHistory =
    std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<Point>>>;

/// A node as a snapshot shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeState {
    pub uid: String,
    pub resources: Vec<(String, Value)>,
}

/// Every node and its current values, at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub nodes: Vec<NodeState>,
}

impl Snapshot {
    /// The messages that bring a client that knows nothing up to date: per node a `new`, then
    /// one `update` per resource, all addressed to `dst` (pyaiot's `fetch_nodes_cache`).
    pub fn messages<'a>(&'a self, dst: &'a Dst) -> impl Iterator<Item = NodeMessage> + 'a {
        self.nodes.iter().flat_map(move |node| {
            std::iter::once(NodeMessage::New {
                uid: node.uid.clone(),
                dst: dst.clone(),
            })
            .chain(node.resources.iter().map(move |(endpoint, data)| {
                NodeMessage::Update {
                    uid: node.uid.clone(),
                    endpoint: endpoint.clone(),
                    data: data.clone(),
                    dst: dst.clone(),
                }
            }))
        })
    }
}

/// Why a message changed nothing. Each is worth a log line, none is an error of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("node {0} is not known")]
    UnknownNode(String),
    #[error("node {0} belongs to another source")]
    NotOwner(String),
    #[error("node {uid} refused: the table is full ({max} nodes, limits.max_nodes)")]
    Full { uid: String, max: usize },
    #[error(
        "node {uid} refused: its source has {max} nodes already (limits.max_nodes_per_gateway)"
    )]
    SourceFull { uid: String, max: usize },
    #[error(
        "node {uid}: value of {endpoint} refused, {size} bytes (limits.max_value_bytes is {max})"
    )]
    ValueTooBig {
        uid: String,
        endpoint: String,
        size: usize,
        max: usize,
        first: bool,
    },
    #[error(
        "node {uid} sends more than {rate} messages/s: its excess updates are dropped, the newest of each resource is sent when the rate allows (limits.node_messages_per_sec)"
    )]
    TooFast {
        uid: String,
        rate: u32,
        first: bool,
        /// Whether an older deferred value of the same resource was dropped for this one.
        replaced: bool,
    },
    #[error("node {uid} refused a new resource: it has {max} already")]
    TooManyResources {
        uid: String,
        max: usize,
        first: bool,
    },
    #[error("keep-alive is not a node message")]
    KeepAlive,
}

#[derive(Debug)]
pub struct Table {
    nodes: IndexMap<String, Node>,
    max_nodes: usize,
    max_resources: usize,
    history_points: usize,
    /// Nodes one source may own; `usize::MAX` on a gateway, whose sources are its own adapters.
    max_nodes_per_source: usize,
    max_value_bytes: usize,
    /// Updates per second per node (0: unlimited), and the burst a node may save up.
    node_rate: u32,
    node_burst: f64,
    /// Nodes owned by each source.
    owned: HashMap<SourceId, usize>,
    /// Nodes with deferred values, in the order they were throttled.
    deferred: indexmap::IndexSet<String>,
}

impl Table {
    pub fn new(max_nodes: usize, max_resources: usize, history_points: usize) -> Self {
        Table {
            nodes: IndexMap::new(),
            max_nodes,
            max_resources,
            history_points,
            max_nodes_per_source: usize::MAX,
            max_value_bytes: usize::MAX,
            node_rate: 0,
            node_burst: 0.0,
            owned: HashMap::new(),
            deferred: indexmap::IndexSet::new(),
        }
    }

    /// The limits that protect sources from each other. The burst is a node's whole set of
    /// resources plus twice the rate, so a node (or a gateway replaying one after a reconnect)
    /// can announce every value at once and still change some right after.
    pub fn with_limits(
        mut self,
        max_nodes_per_source: usize,
        max_value_bytes: usize,
        node_messages_per_sec: u32,
    ) -> Self {
        self.max_nodes_per_source = max_nodes_per_source;
        self.max_value_bytes = max_value_bytes;
        self.node_rate = node_messages_per_sec;
        self.node_burst = 2.0 * f64::from(node_messages_per_sec) + self.max_resources as f64;
        self
    }

    fn owned_by(&self, source: SourceId) -> usize {
        self.owned.get(&source).copied().unwrap_or(0)
    }

    fn count(&mut self, source: SourceId, delta: isize) {
        let count = self.owned.entry(source).or_insert(0);
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            self.owned.remove(&source);
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn owner(&self, uid: &str) -> Option<SourceId> {
        self.nodes.get(uid).map(|node| node.owner)
    }

    /// Applies what `source` says about a node, with the broker's routing rules: `update` and
    /// `out` only for a node the source owns; a `new` claims the node. Returns what to pass on
    /// to subscribers (`None`: nothing changed that they need to hear).
    pub fn apply(
        &mut self,
        source: SourceId,
        message: NodeMessage,
        now_ms: u64,
    ) -> Result<Option<NodeMessage>, Refusal> {
        match message {
            NodeMessage::New { ref uid, ref dst } => {
                let at_source_limit = self.owned_by(source) >= self.max_nodes_per_source;
                if let Some(node) = self.nodes.get_mut(uid) {
                    // A node that moved to another gateway, or a gateway's reconnect replay.
                    let moved = node.owner != source;
                    if moved && at_source_limit {
                        return Err(Refusal::SourceFull {
                            uid: uid.clone(),
                            max: self.max_nodes_per_source,
                        });
                    }
                    let previous = std::mem::replace(&mut node.owner, source);
                    if moved {
                        // The old owner's throttled values are not the new owner's word.
                        node.deferred.clear();
                        self.count(previous, -1);
                        self.count(source, 1);
                    }
                    return Ok(match dst {
                        Dst::Client(_) => Some(message),
                        Dst::All if moved => Some(message),
                        Dst::All => None,
                    });
                }
                if self.nodes.len() >= self.max_nodes {
                    return Err(Refusal::Full {
                        uid: uid.clone(),
                        max: self.max_nodes,
                    });
                }
                if at_source_limit {
                    return Err(Refusal::SourceFull {
                        uid: uid.clone(),
                        max: self.max_nodes_per_source,
                    });
                }
                // A node is new to everyone, even when the first word of it is a replay for one
                // client: a gateway's replay can overtake its own broadcast `new`, which would
                // then look like a repeat and reach nobody else.
                let announce = NodeMessage::New {
                    uid: uid.clone(),
                    dst: Dst::All,
                };
                self.nodes.insert(
                    uid.clone(),
                    Node {
                        owner: source,
                        resources: IndexMap::new(),
                        history: HashMap::new(),
                        over_resource_limit: false,
                        rate: Bucket::full(self.node_burst, now_ms),
                        over_value_limit: false,
                        over_rate_limit: false,
                        deferred: IndexMap::new(),
                    },
                );
                self.count(source, 1);
                Ok(Some(announce))
            }
            NodeMessage::Update {
                ref uid,
                ref endpoint,
                ref data,
                ref dst,
            } => {
                let (history_points, max_resources) = (self.history_points, self.max_resources);
                let (max_value_bytes, rate, burst) =
                    (self.max_value_bytes, self.node_rate, self.node_burst);
                let node = self.owned(source, uid)?;
                let size = value_bytes(data);
                if size > max_value_bytes {
                    let first = !std::mem::replace(&mut node.over_value_limit, true);
                    return Err(Refusal::ValueTooBig {
                        uid: uid.clone(),
                        endpoint: endpoint.clone(),
                        size,
                        max: max_value_bytes,
                        first,
                    });
                }
                // Deferred values count too, so that a throttled node cannot park more names
                // than it may have.
                if node.resources.len() + node.deferred.len() >= max_resources
                    && !node.resources.contains_key(endpoint)
                    && !node.deferred.contains_key(endpoint)
                {
                    let first = !node.over_resource_limit;
                    node.over_resource_limit = true;
                    return Err(Refusal::TooManyResources {
                        uid: uid.clone(),
                        max: max_resources,
                        first,
                    });
                }
                // A replay for one client repeats a value already recorded.
                let fresh = *dst == Dst::All;
                // Replays answer a client's arrival, not the node's chatter: they are free.
                // Values wait behind those deferred before them, so none overtakes another.
                if fresh
                    && rate > 0
                    && (!node.deferred.is_empty()
                        || !node.rate.take(f64::from(rate), burst, now_ms))
                {
                    let first = !std::mem::replace(&mut node.over_rate_limit, true);
                    let replaced = node
                        .deferred
                        .insert(endpoint.clone(), data.clone())
                        .is_some();
                    self.deferred.insert(uid.clone());
                    return Err(Refusal::TooFast {
                        uid: uid.clone(),
                        rate,
                        first,
                        replaced,
                    });
                }
                record(node, endpoint, data, fresh, history_points, now_ms);
                Ok(Some(message))
            }
            NodeMessage::Out { ref uid } => {
                self.owned(source, uid)?;
                self.nodes.shift_remove(uid);
                self.deferred.shift_remove(uid);
                self.count(source, -1);
                Ok(Some(message))
            }
            NodeMessage::Reset { ref uid } => {
                let node = self.owned(source, uid)?;
                node.resources.clear();
                node.history.clear();
                node.deferred.clear();
                node.over_resource_limit = false;
                Ok(Some(message))
            }
            NodeMessage::Alive => Err(Refusal::KeepAlive),
        }
    }

    /// Whether some node has values waiting for its rate to allow them.
    pub fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// How long a node waits for one more message, the pace of [`Table::flush_deferred`].
    pub fn token_interval_ms(&self) -> u64 {
        (1000 / u64::from(self.node_rate.max(1))).clamp(5, 1000)
    }

    /// The deferred values whose nodes' rate allows them now, oldest first, recorded as if
    /// they had just arrived.
    pub fn flush_deferred(&mut self, now_ms: u64) -> Vec<NodeMessage> {
        let (rate, burst, history_points) = (
            f64::from(self.node_rate),
            self.node_burst,
            self.history_points,
        );
        let nodes = &mut self.nodes;
        let mut out = Vec::new();
        self.deferred.retain(|uid| {
            let Some(node) = nodes.get_mut(uid) else {
                return false;
            };
            while !node.deferred.is_empty() && node.rate.take(rate, burst, now_ms) {
                let Some((endpoint, data)) = node.deferred.shift_remove_index(0) else {
                    break;
                };
                record(node, &endpoint, &data, true, history_points, now_ms);
                out.push(NodeMessage::Update {
                    uid: uid.clone(),
                    endpoint,
                    data,
                    dst: Dst::All,
                });
            }
            !node.deferred.is_empty()
        });
        out
    }

    fn owned(&mut self, source: SourceId, uid: &str) -> Result<&mut Node, Refusal> {
        match self.nodes.get_mut(uid) {
            Some(node) if node.owner == source => Ok(node),
            Some(_) => Err(Refusal::NotOwner(uid.to_owned())),
            None => Err(Refusal::UnknownNode(uid.to_owned())),
        }
    }

    /// Forgets every node of a source that went away, returning an `out` for each.
    pub fn remove_source(&mut self, source: SourceId) -> Vec<NodeMessage> {
        self.owned.remove(&source);
        let nodes = &self.nodes;
        self.deferred
            .retain(|uid| nodes.get(uid).is_some_and(|node| node.owner != source));
        let mut outs = Vec::new();
        self.nodes.retain(|uid, node| {
            let keep = node.owner != source;
            if !keep {
                outs.push(NodeMessage::Out { uid: uid.clone() });
            }
            keep
        });
        outs
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            nodes: self
                .nodes
                .iter()
                .map(|(uid, node)| NodeState {
                    uid: uid.clone(),
                    resources: node
                        .resources
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                })
                .collect(),
        }
    }

    /// The numeric readings of one resource, oldest first.
    pub fn history(&self, uid: &str, endpoint: &str) -> Option<Vec<Point>> {
        let ring = self.nodes.get(uid)?.history.get(endpoint)?;
        Some(ring.iter().copied().collect())
    }
}

impl Table {
    /// Every history, or only `only`'s.
    pub fn all_history(&self, only: Option<&str>) -> AllHistory {
        self.nodes
            .iter()
            .filter(|(uid, _)| only.is_none_or(|only| only == uid.as_str()))
            .filter(|(_, node)| !node.history.is_empty())
            .map(|(uid, node)| {
                let per_endpoint = node
                    .history
                    .iter()
                    .map(|(endpoint, ring)| (endpoint.clone(), ring.iter().copied().collect()))
                    .collect();
                (uid.clone(), per_endpoint)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: SourceId = SourceId(1);
    const B: SourceId = SourceId(2);

    fn new(uid: &str) -> NodeMessage {
        NodeMessage::New {
            uid: uid.into(),
            dst: Dst::All,
        }
    }

    fn update(uid: &str, endpoint: &str, data: Value) -> NodeMessage {
        NodeMessage::Update {
            uid: uid.into(),
            endpoint: endpoint.into(),
            data,
            dst: Dst::All,
        }
    }

    #[test]
    fn updates_need_the_owner() {
        let mut table = Table::new(10, 8, 4);
        assert_eq!(table.apply(A, new("n"), 0), Ok(Some(new("n"))));
        assert!(table.apply(A, update("n", "led", json!("1")), 0).is_ok());
        assert_eq!(
            table.apply(B, update("n", "led", json!("0")), 0),
            Err(Refusal::NotOwner("n".into()))
        );
        assert_eq!(
            table.apply(B, update("x", "led", json!("0")), 0),
            Err(Refusal::UnknownNode("x".into()))
        );
        assert_eq!(
            table.apply(B, NodeMessage::Out { uid: "n".into() }, 0),
            Err(Refusal::NotOwner("n".into()))
        );
        assert_eq!(
            table.snapshot().nodes[0].resources,
            [("led".into(), json!("1"))]
        );
    }

    #[test]
    fn a_repeated_new_is_quiet_but_a_move_is_announced() {
        let mut table = Table::new(10, 8, 4);
        table.apply(A, new("n"), 0).expect("new");
        assert_eq!(table.apply(A, new("n"), 0), Ok(None));
        assert_eq!(table.apply(B, new("n"), 0), Ok(Some(new("n"))));
        assert_eq!(table.owner("n"), Some(B));
        let replay = NodeMessage::New {
            uid: "n".into(),
            dst: Dst::Client("c".into()),
        };
        assert_eq!(table.apply(B, replay.clone(), 0), Ok(Some(replay)));
    }

    #[test]
    fn a_replay_that_overtakes_the_broadcast_still_announces_the_node_to_all() {
        let mut table = Table::new(10, 8, 4);
        let replay = NodeMessage::New {
            uid: "n".into(),
            dst: Dst::Client("c".into()),
        };
        assert_eq!(table.apply(A, replay, 0), Ok(Some(new("n"))));
        assert_eq!(table.apply(A, new("n"), 0), Ok(None));
    }

    #[test]
    fn snapshot_replays_in_arrival_order() {
        let mut table = Table::new(10, 8, 4);
        for message in [
            new("a"),
            update("a", "protocol", json!("WebSocket")),
            update("a", "led", json!("0")),
            new("b"),
            update("a", "protocol", json!("CoAP")),
        ] {
            table.apply(A, message, 0).expect("applies");
        }
        let dst = Dst::Client("c".into());
        let replay: Vec<NodeMessage> = table.snapshot().messages(&dst).collect();
        let expected = [
            NodeMessage::New {
                uid: "a".into(),
                dst: dst.clone(),
            },
            NodeMessage::Update {
                uid: "a".into(),
                endpoint: "protocol".into(),
                data: json!("CoAP"),
                dst: dst.clone(),
            },
            NodeMessage::Update {
                uid: "a".into(),
                endpoint: "led".into(),
                data: json!("0"),
                dst: dst.clone(),
            },
            NodeMessage::New {
                uid: "b".into(),
                dst: dst.clone(),
            },
        ];
        assert_eq!(replay, expected);
    }

    #[test]
    fn history_is_bounded_and_numeric_only() {
        let mut table = Table::new(10, 8, 3);
        table.apply(A, new("n"), 0).expect("new");
        for (t, value) in ["20°C", "21°C", "riot", "22°C", "23°C"].iter().enumerate() {
            table
                .apply(A, update("n", "temperature", json!(value)), t as u64)
                .expect("update");
        }
        assert_eq!(
            table.history("n", "temperature"),
            Some(vec![(1, 21.0), (3, 22.0), (4, 23.0)])
        );
        assert_eq!(table.history("n", "name"), None);
        let all = table.all_history(None);
        assert_eq!(all["n"]["temperature"].len(), 3);
        assert!(table.all_history(Some("other")).is_empty());
        let replay = NodeMessage::Update {
            uid: "n".into(),
            endpoint: "temperature".into(),
            data: json!("23°C"),
            dst: Dst::Client("c".into()),
        };
        table.apply(A, replay, 9).expect("replay");
        assert_eq!(table.history("n", "temperature").map(|h| h.len()), Some(3));
    }

    #[test]
    fn a_reporting_resource_gets_its_whole_history_early_and_keeps_it() {
        let mut table = Table::new(10, 8, 120);
        table.apply(A, new("n"), 0).expect("new");
        let capacity =
            |table: &Table, endpoint: &str| table.nodes["n"].history[endpoint].capacity();
        table
            .apply(A, update("n", "led", json!("1")), 0)
            .expect("update");
        assert!(capacity(&table, "led") < 120, "one reading, a small ring");
        for t in 0..=FIRST_RING as u64 {
            table
                .apply(A, update("n", "temperature", json!(t)), t)
                .expect("update");
        }
        let full = capacity(&table, "temperature");
        assert!(full >= 120, "{full}");
        for t in 10..1000 {
            table
                .apply(A, update("n", "temperature", json!(t)), t)
                .expect("update");
        }
        assert_eq!(capacity(&table, "temperature"), full, "no reallocation");
        let points = table.history("n", "temperature").expect("history");
        assert_eq!(points.len(), 120);
        assert_eq!(points.last(), Some(&(999, 999.0)));
    }

    #[test]
    fn reset_clears_values_and_removing_a_source_outs_its_nodes() {
        let mut table = Table::new(10, 8, 3);
        table.apply(A, new("a1"), 0).expect("new");
        table
            .apply(A, update("a1", "t", json!(1)), 0)
            .expect("update");
        table.apply(B, new("b1"), 0).expect("new");
        table.apply(A, new("a2"), 0).expect("new");
        let reset = NodeMessage::Reset { uid: "a1".into() };
        assert_eq!(table.apply(A, reset.clone(), 0), Ok(Some(reset)));
        assert!(table.snapshot().nodes[0].resources.is_empty());
        assert_eq!(table.history("a1", "t"), None);
        assert_eq!(
            table.remove_source(A),
            [
                NodeMessage::Out { uid: "a1".into() },
                NodeMessage::Out { uid: "a2".into() }
            ]
        );
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_node_cannot_grow_past_its_resource_limit_but_can_update() {
        let mut table = Table::new(10, 2, 3);
        table.apply(A, new("n"), 0).expect("new");
        table.apply(A, update("n", "a", json!(1)), 0).expect("a");
        table.apply(A, update("n", "b", json!(1)), 0).expect("b");
        let refused = |first| Refusal::TooManyResources {
            uid: "n".into(),
            max: 2,
            first,
        };
        assert_eq!(
            table.apply(A, update("n", "c", json!(1)), 0),
            Err(refused(true))
        );
        assert_eq!(
            table.apply(A, update("n", "d", json!(1)), 0),
            Err(refused(false))
        );
        assert!(table.apply(A, update("n", "a", json!(2)), 0).is_ok());
    }

    #[test]
    fn a_full_table_refuses_new_nodes_only() {
        let mut table = Table::new(1, 8, 3);
        table.apply(A, new("a"), 0).expect("new");
        assert_eq!(
            table.apply(A, new("b"), 0),
            Err(Refusal::Full {
                uid: "b".into(),
                max: 1
            })
        );
        assert!(table.apply(A, update("a", "t", json!(1)), 0).is_ok());
    }

    #[test]
    fn one_source_cannot_take_more_than_its_share_of_nodes() {
        let mut table = Table::new(10, 8, 3).with_limits(2, usize::MAX, 0);
        table.apply(A, new("a1"), 0).expect("new");
        table.apply(A, new("a2"), 0).expect("new");
        let refused = |uid: &str| {
            Err(Refusal::SourceFull {
                uid: uid.into(),
                max: 2,
            })
        };
        assert_eq!(table.apply(A, new("a3"), 0), refused("a3"));
        assert_eq!(table.apply(B, new("b1"), 0), Ok(Some(new("b1"))));
        table.apply(B, new("b2"), 0).expect("new");
        // Taking over a node counts too, and a node that leaves frees its place.
        assert_eq!(table.apply(B, new("a1"), 0), refused("a1"));
        table
            .apply(A, NodeMessage::Out { uid: "a1".into() }, 0)
            .expect("out");
        assert!(table.apply(A, new("a3"), 0).is_ok());
        table.remove_source(A);
        table
            .apply(B, NodeMessage::Out { uid: "b2".into() }, 0)
            .expect("out");
        assert_eq!(table.apply(B, new("a3"), 0), Ok(Some(new("a3"))));
        assert_eq!(table.owned_by(A), 0);
        assert_eq!(table.owned_by(B), 2);
    }

    #[test]
    fn a_value_too_big_is_refused_and_the_old_one_kept() {
        let mut table = Table::new(10, 8, 3).with_limits(usize::MAX, 4, 0);
        table.apply(A, new("n"), 0).expect("new");
        table
            .apply(A, update("n", "t", json!("abcd")), 0)
            .expect("fits");
        table
            .apply(A, update("n", "o", json!([1])), 0)
            .expect("fits");
        let refused = |endpoint: &str, size, first| {
            Err(Refusal::ValueTooBig {
                uid: "n".into(),
                endpoint: endpoint.into(),
                size,
                max: 4,
                first,
            })
        };
        assert_eq!(
            table.apply(A, update("n", "t", json!("abcde")), 0),
            refused("t", 5, true)
        );
        assert_eq!(
            table.apply(A, update("n", "o", json!([1, 2, 3])), 0),
            refused("o", 7, false)
        );
        assert_eq!(
            table.snapshot().nodes[0].resources,
            [("t".into(), json!("abcd")), ("o".into(), json!([1]))]
        );
    }

    #[test]
    fn a_chatty_node_is_throttled_alone_and_its_newest_values_follow() {
        // 2 per second, burst 8 resources + 4 = 12.
        let mut table = Table::new(10, 8, 3).with_limits(usize::MAX, usize::MAX, 2);
        table.apply(A, new("chatty"), 0).expect("new");
        table.apply(A, new("calm"), 0).expect("new");
        let results: Vec<_> = (0..20)
            .map(|i| table.apply(A, update("chatty", "t", json!(i)), 0))
            .collect();
        assert!(results[..12].iter().all(Result::is_ok));
        let too_fast = |first, replaced| {
            Err(Refusal::TooFast {
                uid: "chatty".into(),
                rate: 2,
                first,
                replaced,
            })
        };
        assert_eq!(results[12], too_fast(true, false));
        assert!(results[13..].iter().all(|r| *r == too_fast(false, true)));
        assert!(table.apply(A, update("calm", "t", json!(1)), 0).is_ok());
        let replay = NodeMessage::Update {
            uid: "chatty".into(),
            endpoint: "t".into(),
            data: json!(1),
            dst: Dst::Client("c".into()),
        };
        assert!(table.apply(A, replay, 0).is_ok());
        // A value of another resource waits behind the deferred one.
        assert_eq!(
            table.apply(A, update("chatty", "u", json!("x")), 0),
            too_fast(false, false)
        );
        assert!(table.flush_deferred(100).is_empty(), "no token yet");
        // Half a second later one token has come: the newest value goes out, then the next.
        assert_eq!(
            table.flush_deferred(500),
            [update("chatty", "t", json!(19))]
        );
        assert_eq!(
            table.flush_deferred(1000),
            [update("chatty", "u", json!("x"))]
        );
        assert!(!table.has_deferred());
        assert_eq!(
            table.snapshot().nodes[0].resources[0],
            ("t".into(), json!(19))
        );
    }
}
