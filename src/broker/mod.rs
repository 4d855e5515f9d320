//! `aiot broker`: the central broker. Gateways connect on `/gw` (pyaiot token), web clients
//! on `/ws`. Each gateway connection is a source of the broker's hub, so the broker keeps a
//! cache of every node and answers a client's `new` at once.

mod auth;
mod gateway_session;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::hub::{Hub, HubConfig};
use crate::keys::Keys;
use crate::runtime::Supervisor;
use crate::web::api::{DashboardConfig, Role};
use crate::web::{self, socket::WsLimits};

pub use auth::TOKEN_PROTOCOL;

/// What the broker needs besides its listener.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub keys: Keys,
    pub limits: WsLimits,
    pub hub: HubConfig,
    pub dashboard: DashboardConfig,
    /// Who may write through `/ws`, and from which origins.
    pub web: web::security::WebSecurity,
}

#[derive(Clone)]
struct GatewayEndpoint {
    hub: Hub,
    keys: Arc<Keys>,
    limits: WsLimits,
    supervisor: Supervisor,
}

/// Starts the broker on an already-bound listener; returns its hub.
pub fn start(supervisor: &Supervisor, listener: TcpListener, settings: BrokerSettings) -> Hub {
    let (hub, actor) = Hub::new(settings.hub, supervisor.shutdown_token());
    supervisor.spawn(actor);
    supervisor.add_probe(crate::runtime::notify::Probe::hub(hub.clone()));
    let metrics = hub.metrics().clone();
    supervisor.set_status(move || {
        use crate::metrics::Channel;
        format!(
            "{} nodes; {} gateways; {} web clients",
            metrics.nodes(),
            metrics.connections(Channel::Gateway),
            metrics.connections(Channel::WebClient)
        )
    });
    let gateways = GatewayEndpoint {
        hub: hub.clone(),
        keys: Arc::new(settings.keys),
        limits: settings.limits.clone(),
        supervisor: supervisor.clone(),
    };
    web::security::announce("broker", &settings.web);
    let router = Router::new()
        .route("/gw", get(gateway_upgrade).with_state(gateways))
        .merge(web::for_browsers(
            supervisor,
            &hub,
            settings.limits,
            Role::Broker,
            settings.dashboard,
            None,
            web::security::Guard::new(settings.web),
        ));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(role = "broker", %addr, "listening (gateways on /gw, web clients on /ws, dashboard on /)");
    }
    web::serve(supervisor, "broker", listener, router);
    hub
}

async fn gateway_upgrade(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(endpoint): State<GatewayEndpoint>,
) -> Response {
    if let Err(why) = auth::check(&headers, &endpoint.keys) {
        tracing::warn!(%peer, "gateway refused: {why}");
        return (StatusCode::UNAUTHORIZED, "Invalid token").into_response();
    }
    let limits = endpoint.limits.clone();
    ws.protocols([TOKEN_PROTOCOL])
        .read_buffer_size(web::socket::READ_BUFFER_BYTES)
        .max_frame_size(limits.max_frame_bytes)
        .max_message_size(limits.max_frame_bytes)
        .on_upgrade(move |socket| {
            let tracker = endpoint.supervisor.tracker().clone();
            tracker.track_future(gateway_session::run(
                socket,
                endpoint.hub,
                endpoint.limits,
                endpoint.supervisor.shutdown_token(),
                peer,
            ))
        })
}
