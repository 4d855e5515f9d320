//! HTTP and websocket serving shared by every role: binding listeners, serving a router under
//! the supervisor, and the `/ws` client endpoint that the broker and gateways both expose.

pub mod api;
pub mod assets;
pub mod auth;
pub mod clients;
pub mod origin;
pub mod password;
pub mod security;
pub mod socket;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::Context as _;
use axum::Router;
use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;

use crate::runtime::Supervisor;

/// Binds a TCP listener. The default bind address `::` takes IPv4 too on a dual-stack host; on
/// a host without IPv6 it falls back to `0.0.0.0` instead of failing.
pub async fn bind(ip: IpAddr, port: u16) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(SocketAddr::new(ip, port)).await {
        Ok(listener) => Ok(listener),
        Err(error) if ip == IpAddr::from([0u16; 8]) && no_ipv6(&error) => {
            tracing::info!("IPv6 is not available here, listening on IPv4 only");
            let fallback = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
            TcpListener::bind(fallback)
                .await
                .with_context(|| format!("cannot listen on {fallback}"))
        }
        Err(error) => {
            Err(error).with_context(|| format!("cannot listen on {}", SocketAddr::new(ip, port)))
        }
    }
}

fn no_ipv6(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(code) if code == nix::libc::EAFNOSUPPORT || code == nix::libc::EADDRNOTAVAIL
    )
}

/// What a gateway and the broker both serve to browsers: `/ws` for web clients of `hub`, and
/// the dashboard with its JSON endpoints; `guard` decides who may write and from which origin.
pub fn for_browsers(
    supervisor: &Supervisor,
    hub: &crate::hub::Hub,
    limits: socket::WsLimits,
    role: api::Role,
    look: api::DashboardConfig,
    uplink: Option<tokio::sync::watch::Receiver<crate::uplink::UplinkState>>,
    guard: std::sync::Arc<security::Guard>,
) -> Router {
    let clients = clients::ClientEndpoint {
        hub: hub.clone(),
        limits,
        supervisor: supervisor.clone(),
        guard: guard.clone(),
    };
    let api = api::Api {
        role,
        dashboard: std::sync::Arc::new(look),
        hub: Some(hub.clone()),
        uplink,
        metrics: hub.metrics().clone(),
        guard: Some(guard.clone()),
    };
    let ws = Router::new().route(
        "/ws",
        axum::routing::get(clients::upgrade).with_state(clients),
    );
    origin::guarded(ws, guard).merge(dashboard(api))
}

/// The dashboard: its files and its JSON endpoints, with the security headers on every answer.
pub fn dashboard(api: api::Api) -> Router {
    assets::routes()
        .merge(api::routes(api))
        .layer(axum::middleware::map_response(with_security_headers))
}

async fn with_security_headers(mut response: axum::response::Response) -> axum::response::Response {
    assets::security_headers(response.headers_mut());
    response
}

/// Serves `router` on `listener` until shutdown, as an essential task named `name`.
pub fn serve(supervisor: &Supervisor, name: &'static str, listener: TcpListener, router: Router) {
    if let Ok(addr) = listener.local_addr() {
        supervisor.add_probe(crate::runtime::notify::Probe::http(name, addr));
    }
    let shutdown = supervisor.shutdown_token();
    supervisor.spawn_essential(name, async move {
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        // Our messages are small and latency-bound; Nagle's algorithm with delayed ACKs held
        // them for milliseconds (p99 at 10k updates/s: 12 ms with it, 0.6 ms without).
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY: {error}");
            }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .with_context(|| format!("{name} stopped serving"))
    });
}

/// Like [`serve`], over TLS: `https://` and `wss://`. The certificate in use is the one
/// `tls` holds when a connection arrives, so a reload needs no restart.
pub fn serve_tls(
    supervisor: &Supervisor,
    name: &'static str,
    listener: TcpListener,
    tls: std::sync::Arc<crate::tls::ServerTls>,
    router: Router,
) {
    if let Ok(addr) = listener.local_addr() {
        supervisor.add_probe(crate::tls::probe(name, addr));
    }
    let shutdown = supervisor.shutdown_token();
    supervisor.spawn_essential(name, async move {
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        let listener = crate::tls::TlsListener::new(listener, tls, name, shutdown.clone())
            .with_context(|| format!("{name}: no local address"))?
            // axum gives the peer address to handlers only through a listener it knows.
            .tap_io(|_| {});
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .with_context(|| format!("{name} stopped serving"))
    });
}
