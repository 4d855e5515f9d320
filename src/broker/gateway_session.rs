//! One gateway connected on `/gw`: its messages go into the hub as a source; the hub's
//! requests for it (clients' hellos and writes) go out to it. When it goes, its nodes go `out`.
//! A gateway whose entry leaves the gateways file is disconnected at once, and one that stays
//! silent (a half-open connection, or a link cut while the gateway had nothing to say) is
//! dropped after two unanswered pings, so its nodes do not linger (tests/faults.rs). When the
//! same gateway connects again its earlier connections are pinged at once: one it gave up on
//! answers with a reset and goes with its stale nodes without waiting for the next ping.
//! A gateway sending more than `limits.gateway_messages_per_sec` is read more slowly: the
//! rest waits in TCP and in its own uplink queue, and the other gateways keep the hub.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::gateways::{GatewayList, Identity};
use super::origins::Origins;
use crate::hub::{Hub, SourceCommand};
use crate::metrics::{Channel, Limit};
use crate::proto::broker::{BrokerRequest, Dst, NodeMessage};
use crate::runtime::rate::TokenBucket;
use crate::web::socket::{self, Ending, WsLimits};

/// How often the broker pings a gateway; silence for two of these means the link is dead.
const PING_INTERVAL: Duration = Duration::from_secs(15);

/// RFC 6455 §7.4.1: the peer is no longer allowed.
const POLICY_VIOLATION: u16 = 1008;

pub struct Gateway {
    pub identity: Identity,
    pub peer: SocketAddr,
    pub revocations: watch::Receiver<Arc<GatewayList>>,
    pub origins: Origins,
    /// 0: no limit.
    pub messages_per_sec: u32,
}

pub async fn run(
    mut socket: WebSocket,
    hub: Hub,
    limits: WsLimits,
    shutdown: CancellationToken,
    gateway: Gateway,
) {
    let Gateway {
        identity,
        peer,
        mut revocations,
        origins,
        messages_per_sec,
    } = gateway;
    let (commands, mut requests) = mpsc::channel(limits.peer_queue);
    let Some(source) = hub
        .register(format!("gateway {identity} at {peer}"), commands)
        .await
    else {
        return;
    };
    tracing::info!(%peer, gateway = %identity, "gateway connected");
    let (connection, again) = origins.open(&identity, peer);
    let metrics = hub.metrics().clone();
    let _open = metrics.connection(Channel::Gateway);
    let start = tokio::time::Instant::now();
    let mut ping = tokio::time::interval_at(start + PING_INTERVAL, PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = start;
    let mut rate = (messages_per_sec > 0).then(|| TokenBucket::new(messages_per_sec));
    // While over its rate, the gateway is not read until this instant.
    let mut paused_until: Option<tokio::time::Instant> = None;
    let mut rate_logged = false;
    let ending = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ending::Shutdown,
            Ok(()) = revocations.changed() => {
                if identity.still_allowed(&revocations.borrow_and_update()) {
                    continue;
                }
                tracing::warn!(%peer, gateway = %identity, "gateway key revoked: disconnecting it");
                let goodbye = Message::Close(Some(CloseFrame {
                    code: POLICY_VIOLATION,
                    reason: "gateway key revoked".into(),
                }));
                let _ = socket::send_batch(&mut socket, [goodbye], limits.send_timeout).await;
                break Ending::PeerGone;
            }
            () = again.notified() => {
                // The same gateway connected again: if it gave up on this connection, a ping
                // now meets its reset.
                let ping = Message::Ping(Default::default());
                if let Err(ending) = socket::send_batch(&mut socket, [ping], limits.send_timeout).await {
                    break ending;
                }
            }
            _ = ping.tick() => {
                let silent = last_heard.elapsed();
                if silent > PING_INTERVAL * 2 {
                    tracing::warn!(%peer, gateway = %identity, "no answer from the gateway for {:.0} s: dropping it", silent.as_secs_f64());
                    break Ending::PeerGone;
                }
                let ping = Message::Ping(Default::default());
                if let Err(ending) = socket::send_batch(&mut socket, [ping], limits.send_timeout).await {
                    break ending;
                }
            }
            () = sleep_until(paused_until), if paused_until.is_some() => paused_until = None,
            incoming = socket.recv(), if paused_until.is_none() => {
                last_heard = tokio::time::Instant::now();
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => {
                        metrics.received(Channel::Gateway, 1);
                        let wait = rate.as_mut().map_or(Duration::ZERO, TokenBucket::spend);
                        if !wait.is_zero() {
                            paused_until = Some(last_heard + wait);
                            metrics.add_limit_hits(Limit::GatewayMessagesPerSec, 1);
                            if !rate_logged {
                                rate_logged = true;
                                tracing::warn!(%peer, gateway = %identity, "gateway sends more than {messages_per_sec} messages/s: reading it more slowly (limits.gateway_messages_per_sec)");
                            }
                        }
                        text
                    }
                    Some(Ok(Message::Binary(_))) => {
                        break Ending::Invalid("Invalid message: binary frames are not supported".into())
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => break Ending::PeerGone,
                    Some(Err(error)) => break Ending::from_receive_error(error),
                };
                match NodeMessage::parse(&text) {
                    Ok(NodeMessage::Alive) => tracing::trace!(%peer, "gateway keep-alive"),
                    Ok(message) => {
                        match &message {
                            NodeMessage::New { uid, dst: Dst::All } if origins.node(connection, uid) => {
                                tracing::info!(%uid, gateway = %identity, %peer, "node from gateway");
                            }
                            NodeMessage::Out { uid } => origins.node_out(connection, uid),
                            _ => {}
                        }
                        source.send(message).await
                    }
                    Err(why) => break Ending::Invalid(format!("{why}.")),
                }
            }
            Some(command) = requests.recv() => {
                let request = match command {
                    SourceCommand::ClientHello { client } => BrokerRequest::ClientHello { src: client },
                    SourceCommand::Write { write, src } => BrokerRequest::Write { write, src },
                };
                let text = socket::text(bytes::Bytes::from(request.to_json()));
                match socket::send_batch(&mut socket, socket::texts([text]), limits.send_timeout).await {
                    Ok(sent) => metrics.sent(Channel::Gateway, sent),
                    Err(ending) => break ending,
                }
            }
        }
    };
    origins.close(connection);
    ending.record(
        "gateway",
        &format_args!("{identity} at {peer}"),
        &metrics,
        Channel::Gateway,
    );
    source.close().await;
    socket::finish(&mut socket, &ending, &limits).await;
}

/// Never, if `until` is `None` (the select branch is disabled then anyway).
async fn sleep_until(until: Option<tokio::time::Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}
