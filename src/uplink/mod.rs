//! The gateway's uplink to a central broker (pyaiot's `create_broker_connection`, made
//! robust): it sends the whole node cache on every (re)connect, then every node event, the
//! 30 s keep-alive, and carries clients' hellos and writes back to the hub. Any failure —
//! refused, reset, DNS, 401, timeout, a half-open connection found by ping/pong — ends in a
//! reconnect after an exponential backoff with jitter. The gateway never exits because the
//! broker is away.

mod handshake;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{
    CloseFrame, WebSocketConfig, frame::coding::CloseCode,
};
use tokio_util::sync::CancellationToken;

use crate::hub::{Event, Hub, Snapshot};
use crate::keys::Keys;
use crate::metrics::Channel;
use crate::proto::broker::{BrokerRequest, Dst, NodeMessage};
use crate::runtime::Supervisor;
use crate::runtime::heartbeat::Heartbeat;
use crate::web::socket::{self, Ending, WsLimits};

pub use handshake::{HandshakeError, Stream, Target};

/// Events sent to the broker per flush.
const EVENT_BATCH: usize = 256;
/// First retry delay; doubled per failed attempt up to `backoff_max`.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// How much longer than a send's timeout the uplink may be silent before its probe fails.
const HEARTBEAT_SLACK: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct UplinkSettings {
    pub target: Target,
    pub keys: Keys,
    /// pyaiot's `ALIVE_PERIOD`.
    pub keepalive: Duration,
    /// How often we ping the broker; silence for two of these means the link is dead.
    pub ping_interval: Duration,
    pub connect_timeout: Duration,
    pub backoff_max: Duration,
    pub limits: WsLimits,
    /// CA and client certificate for a `wss://` broker (read at every attempt).
    pub tls: crate::tls::ClientFiles,
}

/// What the uplink is doing, for status lines and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkState {
    Connecting,
    Connected,
    /// Waiting to retry; the text says why the last attempt failed.
    Retrying(String),
    Stopped,
}

/// Starts the uplink; the returned receiver follows its state.
pub fn start(
    supervisor: &Supervisor,
    hub: Hub,
    settings: UplinkSettings,
) -> watch::Receiver<UplinkState> {
    let (state, state_rx) = watch::channel(UplinkState::Connecting);
    let shutdown = supervisor.shutdown_token();
    // A send may take up to send_timeout before the link is given up; longer silence is a hang.
    let heartbeat = Heartbeat::new();
    supervisor.add_probe(heartbeat.probe("uplink", settings.limits.send_timeout + HEARTBEAT_SLACK));
    supervisor.spawn(async move {
        run(hub, settings, shutdown, &state, &heartbeat).await;
        state.send_replace(UplinkState::Stopped);
    });
    state_rx
}

/// The delay before retry number `attempt` (1-based): exponential, capped, and with half of it
/// random so that many gateways restarted together do not knock on the broker in step.
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let exponential = BACKOFF_BASE.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let ceiling = exponential.min(max);
    let half = ceiling / 2;
    half + half.mul_f64(fastrand::f64())
}

async fn run(
    hub: Hub,
    settings: UplinkSettings,
    shutdown: CancellationToken,
    state: &watch::Sender<UplinkState>,
    heartbeat: &Heartbeat,
) {
    let config = WebSocketConfig::default()
        .max_frame_size(Some(settings.limits.max_frame_bytes))
        .max_message_size(Some(settings.limits.max_frame_bytes));
    let target = &settings.target;
    let mut attempt = 0u32;
    loop {
        state.send_replace(UplinkState::Connecting);
        let subprotocols = format!(
            "{}, {}",
            crate::broker::TOKEN_PROTOCOL,
            settings.keys.token()
        );
        // Read at every attempt: a renewed certificate or CA is picked up by the next one.
        let tls = if target.tls {
            match crate::tls::client_config(&settings.tls) {
                Ok(tls) => Some(tls),
                Err(error) => {
                    tracing::error!(broker = %target, "TLS configuration: {error:#}");
                    None
                }
            }
        } else {
            None
        };
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            result = heartbeat.beat_while(handshake::connect(target, tls, &subprotocols, config, settings.connect_timeout)) => result,
        };
        let why = match connected {
            Ok((ws, abort)) => {
                tracing::info!(broker = %target, "connected to broker");
                state.send_replace(UplinkState::Connected);
                hub.metrics().uplink_connected(true);
                let since = Instant::now();
                match session(ws, &hub, &settings, &shutdown, heartbeat).await {
                    None => return,
                    Some(why) => {
                        abort.reset();
                        // A link that held for a while was healthy: start the backoff over.
                        if since.elapsed() > settings.backoff_max {
                            attempt = 0;
                        }
                        format!("connection lost: {why}")
                    }
                }
            }
            Err(error) => format!("{error}"),
        };
        hub.metrics().uplink_connected(false);
        hub.metrics().uplink_reconnect();
        attempt = attempt.saturating_add(1);
        let delay = backoff(attempt, settings.backoff_max);
        tracing::warn!(broker = %target, "{why}; retrying in {:.1} s", delay.as_secs_f64());
        state.send_replace(UplinkState::Retrying(why));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = heartbeat.beat_while(tokio::time::sleep(delay)) => {}
        }
    }
}

/// One connection's life. `None` means we are shutting down; otherwise why the link ended.
async fn session(
    mut ws: WebSocketStream<Stream>,
    hub: &Hub,
    settings: &UplinkSettings,
    shutdown: &CancellationToken,
    heartbeat: &Heartbeat,
) -> Option<String> {
    let timeout = settings.limits.send_timeout;
    let metrics = hub.metrics();
    let subscription = hub.subscribe().await?;
    let mut events = subscription.events;
    // pyaiot's `fetch_nodes_cache('all')`: the broker forgot our nodes when we went away.
    match send_snapshot(&mut ws, &subscription.snapshot, &Dst::All, timeout).await {
        Ok(count) => metrics.sent(Channel::Uplink, count),
        Err(ending) => return Some(describe(&ending)),
    }
    let mut keepalive =
        tokio::time::interval_at(Instant::now() + settings.keepalive, settings.keepalive);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ping = tokio::time::interval_at(
        Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut beat = tokio::time::interval(crate::runtime::heartbeat::EVERY);
    beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        heartbeat.beat();
        let sent = tokio::select! {
            () = shutdown.cancelled() => {
                let goodbye = Message::Close(Some(CloseFrame {
                    code: CloseCode::Away,
                    reason: "gateway shutting down".into(),
                }));
                let _ = socket::send_batch(&mut ws, [goodbye], timeout).await;
                return None;
            }
            event = events.recv() => match event {
                Ok(event) => send_events(&mut ws, event, &mut events, timeout).await,
                Err(RecvError::Lagged(missed)) => {
                    // We fell behind the hub; resending everything is idempotent for the broker.
                    tracing::info!(missed, "uplink fell behind, resending the node cache");
                    let fresh = hub.subscribe().await?;
                    events = fresh.events;
                    send_snapshot(&mut ws, &fresh.snapshot, &Dst::All, timeout).await
                }
                Err(RecvError::Closed) => return None,
            },
            incoming = ws.next() => {
                last_heard = Instant::now();
                if matches!(incoming, Some(Ok(Message::Text(_)))) {
                    metrics.received(Channel::Uplink, 1);
                }
                match incoming {
                    Some(Ok(Message::Text(text))) => match BrokerRequest::parse(&text) {
                        Ok(Some(BrokerRequest::ClientHello { src })) => {
                            let snapshot = hub.snapshot().await?;
                            send_snapshot(&mut ws, &snapshot, &Dst::Client(src), timeout).await
                        }
                        Ok(Some(BrokerRequest::Write { write, src })) => {
                            hub.write(write, src).await;
                            Ok(0)
                        }
                        Ok(None) => Ok(0),
                        Err(why) => {
                            tracing::debug!("ignored a message from the broker: {why}");
                            Ok(0)
                        }
                    },
                    Some(Ok(Message::Close(frame))) => {
                        return Some(match frame {
                            Some(frame) => format!("broker closed the connection ({}: {})", u16::from(frame.code), frame.reason),
                            None => "broker closed the connection".into(),
                        });
                    }
                    Some(Ok(_)) => Ok(0),
                    Some(Err(error)) => return Some(error.to_string()),
                    None => return Some("broker closed the connection".into()),
                }
            }
            _ = beat.tick() => Ok(0),
            _ = keepalive.tick() => {
                let alive = Message::text(NodeMessage::Alive.to_json());
                socket::send_batch(&mut ws, [alive], timeout).await
            }
            _ = ping.tick() => {
                let silent = last_heard.elapsed();
                if silent > settings.ping_interval * 2 {
                    return Some(format!("no answer from the broker for {:.0} s", silent.as_secs_f64()));
                }
                // A ping is not a message of the protocol: not counted.
                socket::send_batch(&mut ws, [Message::Ping(Default::default())], timeout)
                    .await
                    .map(|_| 0)
            }
        };
        match sent {
            Ok(count) => metrics.sent(Channel::Uplink, count),
            Err(ending) => return Some(describe(&ending)),
        }
    }
}

fn describe(ending: &Ending) -> String {
    match ending {
        Ending::Stalled => "the broker stopped taking our messages".into(),
        _ => "the connection broke while sending".into(),
    }
}

async fn send_snapshot(
    ws: &mut WebSocketStream<Stream>,
    snapshot: &Snapshot,
    dst: &Dst,
    timeout: Duration,
) -> Result<u64, Ending> {
    let messages = snapshot
        .messages(dst)
        .map(|message| Message::text(message.to_json()));
    socket::send_batch(ws, messages, timeout).await
}

/// Sends `first` and whatever else is waiting, as one batch.
async fn send_events(
    ws: &mut WebSocketStream<Stream>,
    first: Arc<Event>,
    events: &mut tokio::sync::broadcast::Receiver<Arc<Event>>,
    timeout: Duration,
) -> Result<u64, Ending> {
    let mut batch = Vec::with_capacity(EVENT_BATCH);
    batch.push(first);
    while batch.len() < EVENT_BATCH {
        match events.try_recv() {
            Ok(event) => batch.push(event),
            // A lag shows up at the next `recv`, which resynchronises.
            Err(_) => break,
        }
    }
    let messages = batch.into_iter().map(|event| {
        Message::Text(
            tokio_tungstenite::tungstenite::Utf8Bytes::try_from(event.json.clone())
                .expect("serde_json writes UTF-8"),
        )
    });
    socket::send_batch(ws, messages, timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let max = Duration::from_secs(30);
        for attempt in 1..40 {
            let delay = backoff(attempt, max);
            let ceiling = BACKOFF_BASE
                .saturating_mul(1u32 << (attempt - 1).min(16))
                .min(max);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "attempt {attempt}: {delay:?}"
            );
        }
        assert!(backoff(1, max) <= Duration::from_millis(500));
        assert!(backoff(30, max) >= Duration::from_secs(15));
        let spread: std::collections::HashSet<Duration> =
            (0..20).map(|_| backoff(10, max)).collect();
        assert!(spread.len() > 1, "jittered");
    }
}
