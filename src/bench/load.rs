//! The load: simulated websocket nodes that send numbered, timestamped updates on a fixed
//! schedule, and web clients that receive them, measure their latency and count what arrived.
//! Both live in the bench process and read time from one shared clock, so a latency is
//! simply receive time minus the send time written in the update.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::proto::node_ws::ToNode;

/// The resource the nodes update; clients ignore every other one.
pub const ENDPOINT: &str = "bench";

/// Sequence numbers above this are treated as garbage rather than grow a client's bitmap
/// without bound: 2^28 updates is more than a day at 2,000/s, and the bitmap stays ≤ 32 MiB.
const MAX_SEQ: u64 = 1 << 28;

/// What every task shares: the clock and the running totals the controller watches.
#[derive(Debug)]
pub struct Shared {
    /// Time zero; every timestamp is nanoseconds since this.
    pub base: Instant,
    /// Updates sent inside the measured window, by all nodes.
    pub sent_in_window: AtomicU64,
    /// Updates of the window received, summed over clients (each client counts an update once).
    pub received_in_window: AtomicU64,
    /// Clients that have seen every node appear, so that the load can start.
    pub clients_ready: AtomicUsize,
    /// Clients connected that have asked for the nodes (sent their `new`).
    pub clients_connected: AtomicUsize,
    /// When the first node said hello (connected, or posted its first `alive`); `u64::MAX`
    /// until then.
    pub first_hello_ns: AtomicU64,
    /// When the first and the last client had heard of every node (and, for CoAP, of every
    /// node's discovered resources); `u64::MAX` and 0 until then.
    pub first_ready_ns: AtomicU64,
    pub last_ready_ns: AtomicU64,
}

impl Shared {
    pub fn new() -> Self {
        Shared {
            base: Instant::now(),
            sent_in_window: AtomicU64::new(0),
            received_in_window: AtomicU64::new(0),
            clients_ready: AtomicUsize::new(0),
            clients_connected: AtomicUsize::new(0),
            first_hello_ns: AtomicU64::new(u64::MAX),
            first_ready_ns: AtomicU64::new(u64::MAX),
            last_ready_ns: AtomicU64::new(0),
        }
    }

    pub fn now_ns(&self) -> u64 {
        nanos(self.base.elapsed())
    }

    pub fn instant(&self, ns: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.base + Duration::from_nanos(ns))
    }

    /// A node says hello now.
    pub fn hello(&self) {
        self.first_hello_ns
            .fetch_min(self.now_ns(), Ordering::Relaxed);
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// When the nodes send, in nanoseconds on the shared clock. Updates sent in
/// `[warm_ns, end_ns)` are the measured ones; sending stops at `end_ns`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub start_ns: u64,
    pub warm_ns: u64,
    pub end_ns: u64,
    /// Time between one node's updates; `None`: as fast as the gateway takes them.
    pub period: Option<Duration>,
}

impl Plan {
    pub fn in_window(&self, ns: u64) -> bool {
        (self.warm_ns..self.end_ns).contains(&ns)
    }

    /// When node `index` of `nodes` sends its update number `sent` (from 0): on a schedule,
    /// the nodes are spread evenly over one period, so the gateway sees a steady stream
    /// rather than all nodes at once; flat out, at the start. `None` once that is past the
    /// end.
    pub fn due(&self, index: usize, nodes: usize, sent: u64) -> Option<u64> {
        let offset = match self.period {
            Some(period) => period.mul_f64(index as f64 / nodes as f64 + sent as f64),
            None => Duration::ZERO,
        };
        let at = self.start_ns.saturating_add(nanos(offset));
        (at < self.end_ns).then_some(at)
    }
}

/// What one node did.
#[derive(Debug, Default)]
pub struct NodeReport {
    pub sent: u64,
    pub sent_in_window: u64,
    /// Datagrams the kernel refused to send (CoAP only).
    pub send_failures: u64,
    pub error: Option<String>,
}

impl NodeReport {
    /// When this node's next update is due, if `plan` has started; once the plan has no more
    /// updates for it, `sending` turns false for good.
    pub fn next_due(
        &self,
        plan: Option<Plan>,
        sending: &mut bool,
        index: usize,
        nodes: usize,
        shared: &Shared,
    ) -> Option<tokio::time::Instant> {
        let plan = plan.filter(|_| *sending)?;
        let due = plan.due(index, nodes, self.sent);
        *sending = due.is_some();
        due.map(|at| shared.instant(at))
    }

    /// Counts an update sent at `sent_ns`, here and (inside the window) in the shared total.
    pub fn count_sent(&mut self, plan: &Plan, sent_ns: u64, shared: &Shared) {
        self.sent += 1;
        if plan.in_window(sent_ns) {
            self.sent_in_window += 1;
            shared.sent_in_window.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// An update's text: `<seq>:<send-time-ns>` in the `bench` resource.
pub fn update_json(seq: u64, sent_ns: u64) -> String {
    format!(r#"{{"type":"update","data":{{"{ENDPOINT}":"{seq}:{sent_ns}"}}}}"#)
}

pub fn parse_value(value: &str) -> Option<(u64, u64)> {
    let (seq, sent_ns) = value.split_once(':')?;
    Some((seq.parse().ok()?, sent_ns.parse().ok()?))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> anyhow::Result<Ws> {
    // Nagle off: the nodes send small frames one at a time, and the latency under test is the
    // gateway's and the broker's, not the kernel holding our writes back.
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    Ok(ws)
}

/// Waits until `deadline`, at once if it has passed: a timer would round a past deadline up
/// to the next millisecond tick, which would cap `--rate 0` at one update per node per tick.
pub async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) if deadline > tokio::time::Instant::now() => {
            tokio::time::sleep_until(deadline).await;
        }
        Some(_) => {}
        None => std::future::pending().await,
    }
}

/// Node `index` of `nodes`: connects, answers discovery, waits for the plan, sends its share
/// of the updates, then stays connected until `stop` so that its going away is no part of the
/// measurement. Its sequence numbers are `index`, `index + nodes`, ... so that all nodes'
/// together are dense and a client can keep them in a bitmap.
pub async fn node(
    index: usize,
    nodes: usize,
    url: String,
    shared: Arc<Shared>,
    mut plan_rx: watch::Receiver<Option<Plan>>,
    stop: CancellationToken,
) -> NodeReport {
    let mut report = NodeReport::default();
    shared.hello();
    let mut ws = match connect(&url).await {
        Ok(ws) => ws,
        Err(error) => {
            report.error = Some(format!("{error:#}"));
            return report;
        }
    };
    let name = format!(r#"{{"type":"update","data":{{"name":"bench node {index}"}}}}"#);
    let mut plan: Option<Plan> = None;
    let mut sending = true;
    let result: anyhow::Result<()> = async {
        loop {
            let deadline = report.next_due(plan, &mut sending, index, nodes, &shared);
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    let _ = ws.close(None).await;
                    return Ok(());
                }
                incoming = ws.next() => match incoming {
                    Some(Ok(Message::Text(text))) => {
                        if let Ok(ToNode::Discover) = ToNode::parse(text.as_str()) {
                            ws.send(Message::text(name.clone())).await?;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => bail!("the gateway closed the connection"),
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(error.into()),
                },
                changed = plan_rx.changed(), if plan.is_none() => {
                    if changed.is_err() {
                        bail!("the controller went away");
                    }
                    plan = *plan_rx.borrow_and_update();
                }
                () = until(deadline) => {
                    let Some(plan) = plan else { continue };
                    let sent_ns = shared.now_ns();
                    // On a schedule, an update due before the end is sent even if late, as a
                    // late one due before the window counts in it: the window then holds
                    // exactly the updates due in it. Flat out, the clock decides.
                    if plan.period.is_none() && sent_ns >= plan.end_ns {
                        sending = false;
                        continue;
                    }
                    let seq = report.sent * nodes as u64 + index as u64;
                    ws.send(Message::text(update_json(seq, sent_ns))).await?;
                    report.count_sent(&plan, sent_ns, &shared);
                }
            }
        }
    }
    .await;
    if let Err(error) = result {
        report.error = Some(format!("node {index}: {error:#}"));
    }
    report
}

/// A set of sequence numbers.
#[derive(Debug, Default, Clone)]
pub struct Seen(Vec<u64>);

impl Seen {
    /// Adds `seq`; false if it was there already.
    pub fn insert(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        let fresh = self.0[word] & (1 << bit) == 0;
        self.0[word] |= 1 << bit;
        fresh
    }

    pub fn union(&mut self, other: &Seen) {
        if other.0.len() > self.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            *mine |= theirs;
        }
    }

    pub fn len(&self) -> u64 {
        self.0.iter().map(|word| u64::from(word.count_ones())).sum()
    }
}

/// What one client saw.
#[derive(Debug, Default)]
pub struct ClientReport {
    /// Distinct updates of the window received.
    pub received: u64,
    /// Updates of the window received again (a replay after a resync, say).
    pub duplicates: u64,
    /// Node send to client receive, nanoseconds, one per distinct update of the window.
    pub latencies_ns: Vec<u64>,
    pub seen: Seen,
    /// `bench` updates we could not read.
    pub garbled: u64,
    /// Nodes whose updates reached us without their `new`.
    pub unannounced: usize,
    pub error: Option<String>,
}

/// What the clients read of the broker's messages. Every resource the bench nodes have is a
/// string, so `data` is one whenever present; anything else fails to parse and is counted.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    uid: Option<&'a str>,
    endpoint: Option<&'a str>,
    data: Option<&'a str>,
}

/// What a client has heard of one node before the load: whether it got the node's `new`,
/// and which of the required resources (bit `i` for `required[i]`).
#[derive(Debug, Default, Clone, Copy)]
struct Heard {
    announced: bool,
    resources: u64,
}

/// A client's view of the nodes' arrival: it is ready once it has heard of `nodes` nodes and,
/// of each, every resource in `required` (none for websocket nodes, whose `name` may come
/// before or after their `new`; the discovered ones for CoAP nodes).
#[derive(Debug)]
pub struct Arrivals {
    nodes: usize,
    required: &'static [&'static str],
    heard: HashMap<String, Heard>,
    complete: usize,
}

impl Arrivals {
    pub fn new(nodes: usize, required: &'static [&'static str]) -> Arrivals {
        assert!(required.len() < 64, "at most 63 required resources");
        Arrivals {
            nodes,
            required,
            heard: HashMap::new(),
            complete: 0,
        }
    }

    fn all(&self) -> u64 {
        (1u64 << self.required.len()) - 1
    }

    /// Takes a `new` (`endpoint` = `None`) or an `update` of `uid`; true once every node is
    /// complete.
    pub fn note(&mut self, uid: &str, new: bool, endpoint: Option<&str>) -> bool {
        let all = self.all();
        let bit = endpoint
            .and_then(|e| self.required.iter().position(|r| *r == e))
            .map_or(0, |i| 1u64 << i);
        let (was, is) = match self.heard.get_mut(uid) {
            Some(heard) => {
                let was = heard.resources == all;
                heard.announced |= new;
                heard.resources |= bit;
                (was, heard.resources == all)
            }
            None => {
                let heard = Heard {
                    announced: new,
                    resources: bit,
                };
                self.heard.insert(uid.to_owned(), heard);
                (false, bit == all)
            }
        };
        if is && !was {
            self.complete += 1;
        }
        self.ready()
    }

    pub fn ready(&self) -> bool {
        self.complete >= self.nodes
    }

    /// Nodes heard of without a `new`.
    pub fn unannounced(&self) -> usize {
        self.heard.values().filter(|h| !h.announced).count()
    }
}

/// A web client on the broker's `/ws`: says `new`, waits until it has heard of every node
/// (see [`Arrivals`]), then records every `bench` update until `stop`.
pub async fn client(
    url: String,
    nodes: usize,
    required: &'static [&'static str],
    shared: Arc<Shared>,
    plan_rx: watch::Receiver<Option<Plan>>,
    stop: CancellationToken,
) -> ClientReport {
    let mut report = ClientReport::default();
    // A client should never get updates of a node it was not told about, so nodes heard of
    // without a `new` are worth reporting.
    let mut arrivals = Arrivals::new(nodes, required);
    let mut ready = false;
    let result: anyhow::Result<()> = async {
        let mut ws = connect(&url).await?;
        ws.send(Message::text(r#"{"type":"new","data":"client"}"#))
            .await?;
        shared.clients_connected.fetch_add(1, Ordering::Relaxed);
        loop {
            let text = tokio::select! {
                biased;
                () = stop.cancelled() => {
                    let _ = ws.close(None).await;
                    return Ok(());
                }
                incoming = ws.next() => match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | None => bail!("the broker closed the connection"),
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => return Err(error.into()),
                },
            };
            let received_ns = shared.now_ns();
            let Ok(message) = serde_json::from_str::<Incoming>(text.as_str()) else {
                if text.as_str().contains(ENDPOINT) {
                    report.garbled += 1;
                }
                continue;
            };
            match (message.kind, message.endpoint) {
                ("new" | "update", endpoint) if !ready && endpoint != Some(ENDPOINT) => {
                    if let Some(uid) = message.uid {
                        if arrivals.note(uid, message.kind == "new", endpoint) {
                            ready = true;
                            report.unannounced = arrivals.unannounced();
                            shared
                                .first_ready_ns
                                .fetch_min(received_ns, Ordering::Relaxed);
                            shared
                                .last_ready_ns
                                .fetch_max(received_ns, Ordering::Relaxed);
                            shared.clients_ready.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                ("update", Some(ENDPOINT)) => {
                    let (Some((seq, sent_ns)), Some(plan)) =
                        (message.data.and_then(parse_value), *plan_rx.borrow())
                    else {
                        report.garbled += 1;
                        continue;
                    };
                    if seq > MAX_SEQ {
                        report.garbled += 1;
                    } else if plan.in_window(sent_ns) {
                        if report.seen.insert(seq) {
                            report.received += 1;
                            report
                                .latencies_ns
                                .push(received_ns.saturating_sub(sent_ns));
                            shared.received_in_window.fetch_add(1, Ordering::Relaxed);
                        } else {
                            report.duplicates += 1;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    .await;
    if let Err(error) = result {
        report.error = Some(format!("{error:#}"));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::node_ws::FromNode;

    #[test]
    fn updates_are_valid_node_messages_and_read_back() {
        let text = update_json(42, 1_234_567);
        let FromNode::Update(resources) = FromNode::parse(&text).expect("valid") else {
            panic!("not an update");
        };
        let value = resources[ENDPOINT].as_str().expect("a string");
        assert_eq!(parse_value(value), Some((42, 1_234_567)));
        assert_eq!(parse_value("42"), None);
        assert_eq!(parse_value("x:1"), None);
    }

    #[test]
    fn seen_counts_each_sequence_number_once() {
        let mut a = Seen::default();
        assert_eq!(a.len(), 0);
        assert!(a.insert(3));
        assert!(!a.insert(3));
        assert!(a.insert(200));
        let mut b = Seen::default();
        b.insert(3);
        b.insert(1000);
        a.union(&b);
        assert_eq!(a.len(), 3);
    }

    #[test]
    fn arrivals_need_every_node_and_its_required_resources() {
        // Websocket nodes: any mention counts.
        let mut ws = Arrivals::new(2, &[]);
        assert!(!ws.note("a", false, Some("name")));
        assert!(!ws.note("a", true, None));
        assert!(ws.note("b", true, None));
        assert_eq!(ws.unannounced(), 0);
        let mut ws = Arrivals::new(1, &[]);
        assert!(ws.note("a", false, Some("name")));
        assert_eq!(ws.unannounced(), 1);
        // CoAP nodes: every discovered resource, whatever the order, each counted once.
        let mut coap = Arrivals::new(2, &["ip", "name"]);
        assert!(!coap.note("a", true, None));
        assert!(!coap.note("a", false, Some("ip")));
        assert!(!coap.note("a", false, Some("board")));
        assert!(!coap.note("a", false, Some("name")));
        assert!(!coap.note("a", false, Some("name")));
        assert!(!coap.note("b", false, Some("name")));
        assert!(coap.note("b", false, Some("ip")));
        assert_eq!(coap.unannounced(), 1);
    }

    #[test]
    fn nodes_are_spread_over_one_period_until_the_end() {
        let plan = Plan {
            start_ns: 1_000,
            warm_ns: 2_000,
            end_ns: 1_000 + 40_000,
            period: Some(Duration::from_micros(10)),
        };
        assert_eq!(plan.due(0, 4, 0), Some(1_000));
        assert_eq!(plan.due(1, 4, 0), Some(3_500));
        assert_eq!(plan.due(1, 4, 2), Some(23_500));
        assert_eq!(plan.due(3, 4, 3), Some(38_500));
        assert_eq!(plan.due(0, 4, 4), None);
        let flat_out = Plan {
            period: None,
            ..plan
        };
        assert_eq!(flat_out.due(3, 4, 1_000_000), Some(1_000));
    }

    #[test]
    fn the_window_is_half_open() {
        let plan = Plan {
            start_ns: 0,
            warm_ns: 10,
            end_ns: 20,
            period: None,
        };
        assert!(!plan.in_window(9));
        assert!(plan.in_window(10));
        assert!(plan.in_window(19));
        assert!(!plan.in_window(20));
    }
}
