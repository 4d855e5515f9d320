//! The MQTT gateway's state, sans-IO: which nodes exist (by their own id and by uid), when
//! each was last heard of, and what the client must do next (subscribe, publish, unsubscribe)
//! and what the hub must hear. The socket side feeds it messages and time.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::proto::broker::{Dst, NodeMessage, Write};
use crate::proto::mqtt::{self, FromNode};

/// The `protocol` resource of every MQTT node.
pub const PROTOCOL: &str = "MQTT";

#[derive(Debug, Clone)]
pub struct Settings {
    pub max_nodes: usize,
    pub max_resources: usize,
    pub max_time: Duration,
    pub subscriptions: Subscriptions,
}

/// How the gateway subscribes to its nodes' topics. Either way, what a node not in the table
/// says (bar its `node/check`) and the values of resources it did not list are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscriptions {
    /// pyaiot's flow (protocol.md §3): a node's `resources` topic when it first checks in,
    /// each resource's topic once listed, all of them dropped when the node goes. For an
    /// external broker, which may be pyaiot's and may restrict topics by ACL.
    PerTopic,
    /// None: the embedded broker hands the gateway every publish on `node/...` as its
    /// listeners read it (`listener.rs`). rumqttd keeps a log per filter: per-topic filters
    /// made the gateway's memory grow with every node and resource for as long as their logs
    /// took to fill, and a burst of nodes could overrun a shared filter's log before the
    /// gateway had read it.
    Direct,
}

/// What the MQTT client must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
    Publish { topic: String, payload: Vec<u8> },
}

struct Node {
    uid: String,
    resources: Vec<String>,
    last_seen: Instant,
}

pub struct Nodes {
    settings: Settings,
    by_id: HashMap<String, Node>,
    by_uid: HashMap<String, String>,
    actions: VecDeque<Action>,
    publish: VecDeque<NodeMessage>,
    refused_reported: bool,
    /// Resources past `max_resources` ignored since the socket loop last asked.
    resources_refused: u64,
}

fn update(uid: &str, endpoint: &str, data: impl Into<Value>) -> NodeMessage {
    NodeMessage::Update {
        uid: uid.to_owned(),
        endpoint: endpoint.to_owned(),
        data: data.into(),
        dst: Dst::All,
    }
}

impl Nodes {
    pub fn new(settings: Settings) -> Self {
        Nodes {
            settings,
            by_id: HashMap::new(),
            by_uid: HashMap::new(),
            actions: VecDeque::new(),
            publish: VecDeque::new(),
            refused_reported: false,
            resources_refused: 0,
        }
    }

    /// Resources ignored for `max_resources` since the last call, for `/metrics`.
    pub fn take_resources_refused(&mut self) -> u64 {
        std::mem::take(&mut self.resources_refused)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every filter the gateway needs, for a fresh (clean) session after a ConnAck.
    pub fn filters(&self) -> Vec<String> {
        if self.settings.subscriptions == Subscriptions::Direct {
            return Vec::new();
        }
        let mut filters = vec![mqtt::NODE_CHECK.to_owned()];
        for (id, node) in &self.by_id {
            filters.push(mqtt::resources_topic(id));
            filters.extend(node.resources.iter().map(|r| mqtt::value_topic(id, r)));
        }
        filters
    }

    /// One message from the broker. `accept_new` is false while the hub is far behind: a
    /// new node is then ignored (it checks again in 30 s). Errors are for the log.
    pub fn handle(
        &mut self,
        topic: &str,
        payload: &[u8],
        now: Instant,
        accept_new: bool,
    ) -> Result<(), mqtt::MqttError> {
        match mqtt::parse(topic, payload)? {
            FromNode::Check { id } => self.check(id, now, accept_new),
            FromNode::Resources { id, resources } => {
                let Some(node) = self.by_id.get_mut(&id) else {
                    return Ok(());
                };
                node.last_seen = now;
                let mut new = Vec::new();
                let listed = resources.len();
                for (index, resource) in resources.into_iter().enumerate() {
                    if node.resources.len() >= self.settings.max_resources {
                        // Nodes send their list once per discovery: one line per list.
                        let ignored = (listed - index) as u64;
                        self.resources_refused += ignored;
                        tracing::warn!(%id, uid = %node.uid, ignored, max = self.settings.max_resources, "MQTT node lists too many resources, the rest ignored (limits.max_resources_per_node)");
                        break;
                    }
                    if !node.resources.contains(&resource) {
                        new.push(mqtt::value_topic(&id, &resource));
                        node.resources.push(resource);
                    }
                }
                self.subscribe(new);
                self.actions.push_back(Action::Publish {
                    topic: mqtt::discover_topic(&id),
                    payload: b"values".to_vec(),
                });
            }
            FromNode::Value {
                id,
                resource,
                value,
            } => {
                let Some(node) = self.by_id.get_mut(&id) else {
                    return Ok(());
                };
                node.last_seen = now;
                if !node.resources.contains(&resource) {
                    return Ok(());
                }
                self.publish.push_back(update(&node.uid, &resource, value));
            }
        }
        Ok(())
    }

    /// Topics a node of ours now uses; under [`Subscriptions::Direct`] nothing to subscribe.
    fn subscribe(&mut self, filters: Vec<String>) {
        if self.settings.subscriptions == Subscriptions::PerTopic && !filters.is_empty() {
            self.actions.push_back(Action::Subscribe(filters));
        }
    }

    fn check(&mut self, id: String, now: Instant, accept_new: bool) {
        if let Some(node) = self.by_id.get_mut(&id) {
            node.last_seen = now;
            return;
        }
        if !accept_new || self.by_id.len() >= self.settings.max_nodes {
            if !self.refused_reported {
                tracing::warn!(%id, "MQTT node refused: too many nodes or the hub is behind");
                self.refused_reported = true;
            } else {
                tracing::debug!(%id, "MQTT node refused");
            }
            return;
        }
        let uid = uuid::Uuid::new_v4().to_string();
        tracing::debug!(%id, %uid, "new MQTT node");
        self.publish.push_back(NodeMessage::New {
            uid: uid.clone(),
            dst: Dst::All,
        });
        self.publish.push_back(update(&uid, "id", id.clone()));
        self.publish.push_back(update(&uid, "protocol", PROTOCOL));
        self.subscribe(vec![mqtt::resources_topic(&id)]);
        self.actions.push_back(Action::Publish {
            topic: mqtt::discover_topic(&id),
            payload: b"resources".to_vec(),
        });
        self.by_uid.insert(uid.clone(), id.clone());
        self.by_id.insert(
            id,
            Node {
                uid,
                resources: Vec::new(),
                last_seen: now,
            },
        );
    }

    /// A client's write to a node of ours.
    pub fn write(&mut self, write: &Write) {
        let Some(id) = self.by_uid.get(&write.uid) else {
            tracing::debug!(uid = %write.uid, "write for an unknown MQTT node");
            return;
        };
        if !mqtt::valid_name(&write.endpoint) {
            tracing::debug!(uid = %write.uid, "write to an invalid MQTT resource name");
            return;
        }
        self.actions.push_back(Action::Publish {
            topic: mqtt::set_topic(id, &write.endpoint),
            payload: mqtt::set_payload(&write.payload),
        });
    }

    /// Removes the nodes not heard of for `max_time`.
    pub fn expire(&mut self, now: Instant) {
        let max_time = self.settings.max_time;
        let dead: Vec<String> = self
            .by_id
            .iter()
            .filter(|(_, node)| now.saturating_duration_since(node.last_seen) > max_time)
            .map(|(id, _)| id.clone())
            .collect();
        for id in dead {
            if let Some(node) = self.by_id.remove(&id) {
                tracing::info!(%id, uid = %node.uid, "MQTT node is gone (no news)");
                self.by_uid.remove(&node.uid);
                if self.settings.subscriptions == Subscriptions::PerTopic {
                    let mut filters = vec![mqtt::resources_topic(&id)];
                    filters.extend(node.resources.iter().map(|r| mqtt::value_topic(&id, r)));
                    self.actions.push_back(Action::Unsubscribe(filters));
                }
                self.publish.push_back(NodeMessage::Out { uid: node.uid });
            }
        }
        if self.by_id.len() < self.settings.max_nodes {
            self.refused_reported = false;
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_publish(&mut self) -> Option<NodeMessage> {
        self.publish.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nodes() -> Nodes {
        nodes_subscribing(Subscriptions::PerTopic)
    }

    fn nodes_subscribing(subscriptions: Subscriptions) -> Nodes {
        Nodes::new(Settings {
            max_nodes: 2,
            max_resources: 8,
            max_time: Duration::from_secs(120),
            subscriptions,
        })
    }

    fn drain(nodes: &mut Nodes) -> (Vec<Action>, Vec<NodeMessage>) {
        let mut actions = Vec::new();
        while let Some(a) = nodes.poll_action() {
            actions.push(a);
        }
        let mut published = Vec::new();
        while let Some(m) = nodes.poll_publish() {
            published.push(m);
        }
        (actions, published)
    }

    #[test]
    fn check_then_resources_then_values_then_write_then_expiry() {
        let mut n = nodes();
        let t0 = Instant::now();
        n.handle("node/check", br#"{"id":"n1"}"#, t0, true)
            .expect("check");
        let (actions, published) = drain(&mut n);
        assert_eq!(
            actions,
            vec![
                Action::Subscribe(vec!["node/n1/resources".into()]),
                Action::Publish {
                    topic: "gateway/n1/discover".into(),
                    payload: b"resources".to_vec()
                }
            ]
        );
        let NodeMessage::New { uid, .. } = &published[0] else {
            panic!("no new: {published:?}");
        };
        let uid = uid.clone();
        assert!(published.contains(&update(&uid, "protocol", "MQTT")));
        // A second check only refreshes.
        n.handle("node/check", br#"{"id":"n1"}"#, t0, true)
            .expect("check");
        assert_eq!(drain(&mut n), (vec![], vec![]));

        n.handle("node/n1/resources", br#"["led","temperature"]"#, t0, true)
            .expect("resources");
        let (actions, _) = drain(&mut n);
        assert_eq!(
            actions,
            vec![
                Action::Subscribe(vec!["node/n1/led".into(), "node/n1/temperature".into()]),
                Action::Publish {
                    topic: "gateway/n1/discover".into(),
                    payload: b"values".to_vec()
                }
            ]
        );
        n.handle("node/n1/led", br#"{"value":"1"}"#, t0, true)
            .expect("value");
        assert_eq!(drain(&mut n).1, vec![update(&uid, "led", json!("1"))]);
        // Values of unknown nodes or resources are ignored.
        n.handle("node/n2/led", br#"{"value":"1"}"#, t0, true)
            .expect("value");
        n.handle("node/n1/other", br#"{"value":"1"}"#, t0, true)
            .expect("value");
        assert_eq!(drain(&mut n), (vec![], vec![]));

        n.write(&Write {
            uid: uid.clone(),
            endpoint: "led".into(),
            payload: json!("0"),
        });
        assert_eq!(
            drain(&mut n).0,
            vec![Action::Publish {
                topic: "gateway/n1/led/set".into(),
                payload: b"0".to_vec()
            }]
        );
        assert_eq!(n.filters().len(), 4);

        n.expire(t0 + Duration::from_secs(121));
        let (actions, published) = drain(&mut n);
        assert_eq!(published, vec![NodeMessage::Out { uid }]);
        assert!(matches!(&actions[0], Action::Unsubscribe(f) if f.len() == 3));
        assert!(n.is_empty());
    }

    /// The same flow as pyaiot's, minus every subscribe and unsubscribe: the broker hands
    /// over everything, and the table alone decides what counts.
    #[test]
    fn with_every_node_topic_handed_over_only_the_table_filters() {
        let mut n = nodes_subscribing(Subscriptions::Direct);
        let t0 = Instant::now();
        assert!(n.filters().is_empty());
        // A node that never checked in: its list and values are ignored, nothing is asked.
        n.handle("node/n2/resources", br#"["led"]"#, t0, true)
            .expect("resources");
        n.handle("node/n2/led", br#"{"value":"1"}"#, t0, true)
            .expect("value");
        assert_eq!(drain(&mut n), (vec![], vec![]));

        n.handle("node/check", br#"{"id":"n1"}"#, t0, true)
            .expect("check");
        let (actions, published) = drain(&mut n);
        assert_eq!(
            actions,
            vec![Action::Publish {
                topic: "gateway/n1/discover".into(),
                payload: b"resources".to_vec()
            }]
        );
        let NodeMessage::New { uid, .. } = &published[0] else {
            panic!("no new: {published:?}");
        };
        let uid = uid.clone();
        // A value before the node listed its resources is not one of ours yet.
        n.handle("node/n1/led", br#"{"value":"1"}"#, t0, true)
            .expect("value");
        assert_eq!(drain(&mut n), (vec![], vec![]));
        n.handle("node/n1/resources", br#"["led"]"#, t0, true)
            .expect("resources");
        assert_eq!(
            drain(&mut n).0,
            vec![Action::Publish {
                topic: "gateway/n1/discover".into(),
                payload: b"values".to_vec()
            }]
        );
        n.handle("node/n1/led", br#"{"value":"1"}"#, t0, true)
            .expect("value");
        n.handle("node/n1/other", br#"{"value":"1"}"#, t0, true)
            .expect("value");
        assert_eq!(drain(&mut n).1, vec![update(&uid, "led", json!("1"))]);
        assert!(
            n.filters().is_empty(),
            "nothing to subscribe, however many nodes"
        );

        n.expire(t0 + Duration::from_secs(121));
        assert_eq!(drain(&mut n), (vec![], vec![NodeMessage::Out { uid }]));
        // Gone means gone: its values are ignored again.
        n.handle("node/n1/led", br#"{"value":"0"}"#, t0, true)
            .expect("value");
        assert_eq!(drain(&mut n), (vec![], vec![]));
    }

    #[test]
    fn refuses_nodes_past_the_limit_or_under_backpressure() {
        let mut n = nodes();
        let t0 = Instant::now();
        n.handle("node/check", br#"{"id":"a"}"#, t0, false)
            .expect("check");
        assert!(n.is_empty());
        for id in ["a", "b", "c"] {
            n.handle(
                "node/check",
                format!(r#"{{"id":"{id}"}}"#).as_bytes(),
                t0,
                true,
            )
            .expect("check");
        }
        assert_eq!(n.len(), 2);
    }
}
