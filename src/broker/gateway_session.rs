//! One gateway connected on `/gw`: its messages go into the hub as a source; the hub's
//! requests for it (clients' hellos and writes) go out to it. When it goes, its nodes go `out`.

use std::net::SocketAddr;

use axum::extract::ws::{Message, WebSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::hub::{Hub, SourceCommand};
use crate::metrics::Channel;
use crate::proto::broker::{BrokerRequest, NodeMessage};
use crate::web::socket::{self, Ending, WsLimits};

pub async fn run(
    mut socket: WebSocket,
    hub: Hub,
    limits: WsLimits,
    shutdown: CancellationToken,
    peer: SocketAddr,
) {
    let (commands, mut requests) = mpsc::channel(limits.peer_queue);
    let Some(source) = hub.register(format!("gateway {peer}"), commands).await else {
        return;
    };
    tracing::info!(%peer, "gateway connected");
    let metrics = hub.metrics().clone();
    let _open = metrics.connection(Channel::Gateway);
    let ending = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ending::Shutdown,
            incoming = socket.recv() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => {
                        metrics.received(Channel::Gateway, 1);
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
                    Ok(message) => source.send(message).await,
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
    ending.record("gateway", &peer, &metrics, Channel::Gateway);
    source.close().await;
    socket::finish(&mut socket, &ending, &limits).await;
}
