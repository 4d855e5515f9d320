//! systemd's notify protocol: `READY=1` once the role's listeners are bound, `STATUS=` with a
//! one-line summary, `STOPPING=1` at shutdown, and `WATCHDOG=1` at half the watchdog interval
//! only while every probe passes. A probe exercises a subsystem through its real path (the
//! hub answers a request, a web server answers HTTP, the CoAP socket answers a CoAP ping), so
//! a hung task withholds the ping and systemd restarts the service instead of it hiding.
//! Without `NOTIFY_SOCKET` nothing of this runs.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Supervisor;

type Check = dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync;

/// One subsystem's liveness check.
#[derive(Clone)]
pub struct Probe {
    pub name: String,
    check: Arc<Check>,
}

impl Probe {
    pub fn new<F, Fut>(name: impl Into<String>, check: F) -> Probe
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Probe {
            name: name.into(),
            check: Arc::new(move || Box::pin(check())),
        }
    }

    /// The hub actor answers a request.
    pub fn hub(hub: crate::hub::Hub) -> Probe {
        Probe::new("hub", move || {
            let hub = hub.clone();
            async move {
                if hub.ping().await {
                    Ok(())
                } else {
                    Err("the hub is gone".into())
                }
            }
        })
    }

    /// An HTTP server accepts a connection and answers a request, whatever the status.
    pub fn http(name: &str, addr: SocketAddr) -> Probe {
        let addr = reachable(addr);
        Probe::new(format!("{name} at {addr}"), move || async move {
            let mut stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                .await
                .map_err(|e| format!("write: {e}"))?;
            let mut head = [0u8; 12];
            stream
                .read_exact(&mut head)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if head.starts_with(b"HTTP/1.1 ") {
                Ok(())
            } else {
                Err("not an HTTP answer".into())
            }
        })
    }

    /// A CoAP endpoint answers an empty confirmable message (a CoAP ping) with a reset.
    pub fn coap(addr: SocketAddr) -> Probe {
        let addr = reachable(addr);
        Probe::new(format!("CoAP at {addr}"), move || async move {
            let local: SocketAddr = if addr.is_ipv6() {
                (Ipv6Addr::LOCALHOST, 0).into()
            } else {
                (Ipv4Addr::LOCALHOST, 0).into()
            };
            let socket = tokio::net::UdpSocket::bind(local)
                .await
                .map_err(|e| format!("bind: {e}"))?;
            let mid = fastrand::u16(..).to_be_bytes();
            // Version 1, CON, no token; code 0.00; message id.
            socket
                .send_to(&[0x40, 0x00, mid[0], mid[1]], addr)
                .await
                .map_err(|e| format!("send: {e}"))?;
            let mut answer = [0u8; 64];
            let (n, _) = socket
                .recv_from(&mut answer)
                .await
                .map_err(|e| format!("receive: {e}"))?;
            // RST (type 3) with our message id.
            if n >= 4 && answer[0] >> 4 == 0x7 && answer[2..4] == mid {
                Ok(())
            } else {
                Err("no reset to a CoAP ping".into())
            }
        })
    }
}

/// Where to reach a listener bound to a wildcard address: on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// Runs every probe, each within `timeout`; returns the failures.
pub async fn failures(probes: &[Probe], timeout: Duration) -> Vec<String> {
    let mut failed = Vec::new();
    for probe in probes {
        match tokio::time::timeout(timeout, (probe.check)()).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => failed.push(format!("{}: {why}", probe.name)),
            Err(_) => failed.push(format!("{}: no answer within {timeout:?}", probe.name)),
        }
    }
    failed
}

/// How often the status line is refreshed when there is no watchdog to pace it.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Tells systemd the role is ready and keeps it informed; call once every listener is bound.
pub fn start(supervisor: &Supervisor) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let status = supervisor.status_line();
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    tracing::info!("told systemd we are ready");
    let watchdog = sd_notify::watchdog_enabled();
    let period = watchdog.map_or(STATUS_EVERY, |interval| interval / 2);
    let probes = supervisor.probes();
    let shutdown = supervisor.shutdown_token();
    let supervisor = supervisor.clone();
    supervisor.clone().spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut withheld = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let status = supervisor.status_line();
            if watchdog.is_none() {
                let _ = sd_notify::notify(&[NotifyState::Status(&status)]);
                continue;
            }
            let failed = failures(&probes, period / 2).await;
            if failed.is_empty() {
                if withheld {
                    tracing::info!("every probe passes again: watchdog pings resumed");
                    withheld = false;
                }
                let _ = sd_notify::notify(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
            } else {
                // Said every time: these lines are what the journal shows before a restart.
                tracing::warn!(failed = %failed.join("; "), "watchdog ping withheld");
                withheld = true;
                let line = format!("unhealthy: {}", failed.join("; "));
                let _ = sd_notify::notify(&[NotifyState::Status(&line)]);
            }
        }
    });
}

/// Tells systemd we are stopping (shutdown has been decided).
pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failing_and_hanging_probes_are_named() {
        let probes = vec![
            Probe::new("fine", || async { Ok(()) }),
            Probe::new("broken", || async { Err("it broke".to_string()) }),
            Probe::new("hung", || async {
                std::future::pending::<()>().await;
                Ok(())
            }),
        ];
        let failed = failures(&probes, Duration::from_millis(50)).await;
        assert_eq!(failed.len(), 2);
        assert_eq!(failed[0], "broken: it broke");
        assert!(failed[1].starts_with("hung: no answer"), "{}", failed[1]);
        assert!(
            failures(&probes[..1], Duration::from_millis(50))
                .await
                .is_empty()
        );
    }

    #[test]
    fn wildcard_listeners_are_probed_on_loopback() {
        let any6: SocketAddr = "[::]:80".parse().expect("addr");
        assert_eq!(reachable(any6), "[::1]:80".parse().expect("addr"));
        let any4: SocketAddr = "0.0.0.0:80".parse().expect("addr");
        assert_eq!(reachable(any4), "127.0.0.1:80".parse().expect("addr"));
        let fixed: SocketAddr = "10.0.0.1:80".parse().expect("addr");
        assert_eq!(reachable(fixed), fixed);
    }
}
