//! The load: simulated websocket nodes that send numbered, timestamped updates on a fixed
//! schedule, and web clients that receive them, measure their latency and count what arrived.
//! Both live in the bench process and read time from one shared clock, so a latency is
//! simply receive time minus the send time written in the update.

use std::collections::HashSet;
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
}

impl Shared {
    pub fn new() -> Self {
        Shared {
            base: Instant::now(),
            sent_in_window: AtomicU64::new(0),
            received_in_window: AtomicU64::new(0),
            clients_ready: AtomicUsize::new(0),
        }
    }

    pub fn now_ns(&self) -> u64 {
        nanos(self.base.elapsed())
    }

    pub fn instant(&self, ns: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.base + Duration::from_nanos(ns))
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
}

/// What one node did.
#[derive(Debug, Default)]
pub struct NodeReport {
    pub sent: u64,
    pub sent_in_window: u64,
    pub error: Option<String>,
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
async fn until(deadline: Option<tokio::time::Instant>) {
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
            let deadline = match plan {
                Some(plan) if sending => {
                    let offset = match plan.period {
                        // Nodes are spread evenly over one period, so the gateway sees a steady
                        // stream rather than all nodes at once.
                        Some(period) => period
                            .mul_f64(index as f64 / nodes as f64 + report.sent as f64),
                        None => Duration::ZERO,
                    };
                    let at = plan.start_ns.saturating_add(nanos(offset));
                    if at >= plan.end_ns {
                        sending = false;
                        None
                    } else {
                        Some(shared.instant(at))
                    }
                }
                _ => None,
            };
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
                    report.sent += 1;
                    if plan.in_window(sent_ns) {
                        report.sent_in_window += 1;
                        shared.sent_in_window.fetch_add(1, Ordering::Relaxed);
                    }
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

/// A web client on the broker's `/ws`: says `new`, counts nodes until it has heard of all of
/// them, then records every `bench` update until `stop`.
pub async fn client(
    url: String,
    nodes: usize,
    shared: Arc<Shared>,
    plan_rx: watch::Receiver<Option<Plan>>,
    stop: CancellationToken,
) -> ClientReport {
    let mut report = ClientReport::default();
    // Nodes heard of in any message, and those announced with a `new`: a client should never
    // get updates of a node it was not told about, so a difference is worth reporting.
    let mut heard: HashSet<String> = HashSet::new();
    let mut announced: HashSet<String> = HashSet::new();
    let mut ready = false;
    let result: anyhow::Result<()> = async {
        let mut ws = connect(&url).await?;
        ws.send(Message::text(r#"{"type":"new","data":"client"}"#))
            .await?;
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
                        heard.insert(uid.to_owned());
                        if message.kind == "new" {
                            announced.insert(uid.to_owned());
                        }
                    }
                    if heard.len() >= nodes {
                        ready = true;
                        report.unannounced = heard.difference(&announced).count();
                        shared.clients_ready.fetch_add(1, Ordering::Relaxed);
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
