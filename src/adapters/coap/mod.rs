//! CoAP nodes (protocol.md §2): one UDP socket, one loop, one hub source owning every CoAP
//! node. The loop only moves bytes and time in and out of [`nodes::Nodes`], the sans-IO state
//! of the gateway; it never waits on anyone:
//!
//! - datagrams are read in batches and answered at once (the answers and the gateway's own
//!   requests go out through a bounded outbox, flushed whenever the socket is writable);
//! - node messages for the hub go to a forwarder task through a bounded channel; while it
//!   is full they wait in a bounded backlog and new work from nodes is refused with 5.03
//!   (a confirmable post is retried by its node), so a slow hub slows nodes down instead of
//!   growing memory;
//! - writes from clients arrive as [`SourceCommand::Write`] on the source's command queue.

pub mod nodes;

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::to_hub::ToHub;
use crate::hub::{Hub, SourceCommand};
use crate::metrics::{Channel, Limit, Metrics};
use crate::proto::coap::MAX_DATAGRAM;
use crate::proto::coap::exchange::Transmit;
use crate::runtime::Supervisor;

pub use nodes::{PROTOCOL, Settings};

/// Datagrams waiting for room in the socket's send buffer; more are dropped (UDP may lose
/// them anyway, and confirmable ones are retransmitted).
const OUTBOX: usize = 4096;
/// Datagrams read per wake-up before looking at anything else.
const RECV_BATCH: usize = 64;
/// Writes from clients waiting for the loop; the hub drops (and counts) more.
const COMMANDS: usize = 256;

/// Receive buffer asked of the kernel by default: a burst of a few thousand small posts
/// (every simulated node starting at once) fits. Linux caps it at `net.core.rmem_max`.
pub const RECEIVE_BUFFER: usize = 4 * 1024 * 1024;

/// Binds the gateway's CoAP socket. `::` takes IPv4 too (IPv4-mapped) on a dual-stack host
/// and falls back to `0.0.0.0` without IPv6. `receive_buffer` is asked as SO_RCVBUF; the
/// size the kernel granted is logged.
pub fn bind(ip: IpAddr, port: u16, receive_buffer: usize) -> anyhow::Result<UdpSocket> {
    match bind_once(SocketAddr::new(ip, port), receive_buffer) {
        Err(error) if ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && no_ipv6(&error) => {
            tracing::info!("IPv6 is not available here, CoAP on IPv4 only");
            let fallback = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
            bind_once(fallback, receive_buffer)
                .with_context(|| format!("cannot bind the CoAP socket to {fallback}"))
        }
        result => result.with_context(|| {
            format!(
                "cannot bind the CoAP socket to {}",
                SocketAddr::new(ip, port)
            )
        }),
    }
}

fn no_ipv6(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(code) if code == nix::libc::EAFNOSUPPORT || code == nix::libc::EADDRNOTAVAIL
    )
}

fn bind_once(addr: SocketAddr, receive_buffer: usize) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    if receive_buffer > 0 {
        if let Err(error) = socket.set_recv_buffer_size(receive_buffer) {
            tracing::warn!(%error, "cannot set the CoAP receive buffer size");
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let granted = socket.recv_buffer_size().unwrap_or(0);
    // Linux reports twice the usable size (it counts its bookkeeping).
    tracing::debug!(asked = receive_buffer, granted, "CoAP receive buffer");
    UdpSocket::from_std(socket.into())
}

/// Starts the CoAP adapter on an already bound socket, as an essential task: a socket that
/// fails stops the gateway rather than leaving it deaf.
pub fn start(supervisor: &Supervisor, hub: Hub, socket: UdpSocket, settings: Settings) {
    if let Ok(addr) = socket.local_addr() {
        tracing::info!(role = "gateway", %addr, node_port = settings.node_port, "listening for CoAP nodes on /alive and /server");
        supervisor.add_probe(crate::runtime::notify::Probe::coap(addr));
    }
    let supervisor2 = supervisor.clone();
    supervisor.spawn_essential("coap", async move {
        let (commands_tx, commands) = mpsc::channel(COMMANDS);
        let Some(source) = hub.register("CoAP nodes", commands_tx).await else {
            return Ok(()); // the hub is gone: shutting down
        };
        let to_hub = ToHub::start(&supervisor2, source, hub.metrics().clone(), Channel::Coap);
        let seed = fastrand::u64(..);
        let shutdown = supervisor2.shutdown_token();
        run(
            socket,
            nodes::Nodes::new(settings, seed),
            commands,
            to_hub,
            shutdown,
            hub.metrics().clone(),
        )
        .await
    });
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// The address to hand the socket: IPv4 peers as IPv4-mapped on an IPv6 socket.
fn wire_addr(socket_is_v6: bool, to: SocketAddr) -> Option<SocketAddr> {
    match (socket_is_v6, to) {
        (true, SocketAddr::V4(v4)) => Some(SocketAddr::new(
            IpAddr::V6(v4.ip().to_ipv6_mapped()),
            v4.port(),
        )),
        (false, SocketAddr::V6(v6)) => v6
            .ip()
            .to_ipv4_mapped()
            .map(|v4| SocketAddr::new(IpAddr::V4(v4), v6.port())),
        (_, addr) => Some(addr),
    }
}

struct Outbox {
    queue: VecDeque<Transmit>,
    v6: bool,
    dropped: u64,
    metrics: Arc<Metrics>,
}

impl Outbox {
    fn push(&mut self, transmit: Transmit) {
        if self.queue.len() >= OUTBOX {
            self.dropped += 1;
            self.metrics.messages_dropped(Channel::Coap, 1);
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    "CoAP datagrams dropped: the socket's send buffer is full"
                );
            }
            return;
        }
        self.queue.push_back(transmit);
    }

    /// Sends what the socket takes without waiting.
    fn flush(&mut self, socket: &UdpSocket) {
        while let Some(transmit) = self.queue.front() {
            let Some(to) = wire_addr(self.v6, transmit.to) else {
                tracing::debug!(to = %transmit.to, "no route from this socket's family, dropped");
                self.queue.pop_front();
                continue;
            };
            match socket.try_send_to(&transmit.datagram, to) {
                Ok(_) => self.metrics.sent(Channel::Coap, 1),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => tracing::debug!(%to, %error, "CoAP send failed"),
            }
            self.queue.pop_front();
        }
    }
}

async fn run(
    socket: UdpSocket,
    mut nodes: nodes::Nodes,
    mut commands: mpsc::Receiver<SourceCommand>,
    mut to_hub: ToHub,
    shutdown: tokio_util::sync::CancellationToken,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let local = socket
        .local_addr()
        .context("the CoAP socket has no address")?;
    let mut outbox = Outbox {
        queue: VecDeque::new(),
        v6: local.is_ipv6(),
        dropped: 0,
        metrics: metrics.clone(),
    };
    let mut busy_reported = 0u64;
    let (mut refused_reported, mut pending_reported, mut resources_reported) = (0u64, 0u64, 0u64);
    // One byte more than the largest datagram accepted, to tell a longer one apart.
    let mut buffer = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let deadline = tokio::time::Instant::from_std(nodes.poll_timeout());
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            alive = to_hub.drain(), if to_hub.has_backlog() => {
                if !alive {
                    break;
                }
            }
            // While the hub is this far behind, leave datagrams to the kernel: reading them
            // only to refuse them cost the time the forwarder needed, and under overload
            // delivery collapsed (5.6k/s delivered of 300k/s offered). The kernel drops what
            // its buffer cannot hold, for free, and counts it.
            readable = socket.readable(), if !to_hub.is_behind() => {
                readable.context("the CoAP socket failed")?;
                for _ in 0..RECV_BATCH {
                    match socket.try_recv_from(&mut buffer) {
                        Ok((n, from)) => {
                            metrics.received(Channel::Coap, 1);
                            let from = nodes::canonical(from);
                            if n > MAX_DATAGRAM {
                                nodes.handle_oversize(from, &buffer[..n], now());
                            } else {
                                nodes.handle_datagram(from, &buffer[..n], now());
                            }
                        }
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                        // ICMP errors for earlier sends, on some systems: not ours to fix.
                        Err(error) => {
                            tracing::debug!(%error, "CoAP receive error");
                            break;
                        }
                    }
                }
            }
            Some(command) = commands.recv() => {
                if let SourceCommand::Write { write, .. } = command {
                    nodes.write(write, now());
                }
            }
            _ = socket.writable(), if !outbox.queue.is_empty() => {}
            () = tokio::time::sleep_until(deadline) => nodes.handle_timeout(now()),
        }
        while let Some(transmit) = nodes.poll_transmit() {
            outbox.push(transmit);
        }
        outbox.flush(&socket);
        while let Some(message) = nodes.poll_publish() {
            if !to_hub.push(message) {
                return Ok(());
            }
        }
        nodes.set_backpressure(to_hub.is_behind());
        let stats = nodes.stats();
        for (count, reported, limit) in [
            (stats.refused, &mut refused_reported, Limit::CoapNodes),
            (
                stats.pending_refused,
                &mut pending_reported,
                Limit::PendingDiscoveries,
            ),
            (
                stats.resources_refused,
                &mut resources_reported,
                Limit::ResourcesPerNode,
            ),
        ] {
            metrics.add_limit_hits(limit, count - *reported);
            *reported = count;
        }
        let busy = nodes.stats().busy;
        if busy > busy_reported {
            metrics.messages_dropped(Channel::Coap, busy - busy_reported);
            if (busy_reported + 1..=busy).any(u64::is_power_of_two) {
                tracing::warn!(
                    refused = busy,
                    "CoAP requests refused with 5.03: the hub is not keeping up"
                );
            }
            busy_reported = busy;
        }
    }
    tracing::debug!(nodes = nodes.len(), stats = ?nodes.stats(), "CoAP adapter stopped");
    Ok(())
}
