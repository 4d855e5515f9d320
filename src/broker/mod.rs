//! `aiot broker`: the central broker. Gateways connect on `/gw` (pyaiot token), web clients
//! on `/ws`. Each gateway connection is a source of the broker's hub, so the broker keeps a
//! cache of every node and answers a client's `new` at once. Gateways prove themselves with
//! pyaiot's shared key or their own entry of a gateways file ([`gateways`]); with `tls` set,
//! everything is served over TLS (`wss://`, `https://`).

mod auth;
mod gateway_session;
pub mod gateways;
mod origins;

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
use crate::tls::ServerTls;
use crate::web::api::{DashboardConfig, Role};
use crate::web::{self, socket::WsLimits};

pub use auth::TOKEN_PROTOCOL;
pub use gateways::Authenticator;

/// What the broker needs besides its listener.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// pyaiot's shared key; `None` when only the gateways file admits gateways.
    pub keys: Option<Keys>,
    /// The gateways file: one key per gateway, reread on change and on SIGHUP.
    pub gateways_file: Option<std::path::PathBuf>,
    /// Serve TLS with this (reloaded on SIGHUP); `None`: plain HTTP.
    pub tls: Option<Arc<ServerTls>>,
    pub limits: WsLimits,
    /// Messages per second read from one gateway connection, 0 for no limit
    /// (`limits.gateway_messages_per_sec`).
    pub gateway_messages_per_sec: u32,
    pub hub: HubConfig,
    pub dashboard: DashboardConfig,
    /// Who may write through `/ws`, and from which origins.
    pub web: web::security::WebSecurity,
}

#[derive(Clone)]
struct GatewayEndpoint {
    hub: Hub,
    auth: Arc<Authenticator>,
    origins: origins::Origins,
    limits: WsLimits,
    messages_per_sec: u32,
    supervisor: Supervisor,
}

/// Starts the broker on an already-bound listener; returns its hub. Fails if the gateways file
/// cannot be read or SIGHUP cannot be handled.
pub fn start(
    supervisor: &Supervisor,
    listener: TcpListener,
    settings: BrokerSettings,
) -> anyhow::Result<Hub> {
    let auth = Arc::new(Authenticator::new(settings.keys, settings.gateways_file)?);
    if let Some(file) = auth.file() {
        tracing::info!(file = %file.display(), gateways = auth.gateway_count(), "gateways file loaded");
    }
    auth.clone().watch(supervisor.shutdown_token());
    let mut reloads: Vec<Box<dyn Fn() + Send + Sync>> = Vec::new();
    let reload_auth = auth.clone();
    reloads.push(Box::new(move || reload_auth.reload()));
    if let Some(tls) = &settings.tls {
        reloads.push(crate::tls::reload_step(tls.clone(), "broker"));
    }
    crate::tls::reload_on_sighup(supervisor, reloads)?;
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
    let origins = origins::Origins::default();
    let gateways = GatewayEndpoint {
        hub: hub.clone(),
        auth,
        origins: origins.clone(),
        limits: settings.limits.clone(),
        messages_per_sec: settings.gateway_messages_per_sec,
        supervisor: supervisor.clone(),
    };
    web::security::announce("broker", &settings.web);
    // aiot dashboards on `/ws` are told which gateway each node came from.
    let labels = web::clients::GatewayLabels(Arc::new(origins.clone()));
    let router = Router::new()
        .route("/gw", get(gateway_upgrade).with_state(gateways))
        .route("/api/gateways", get(origins::list).with_state(origins))
        .merge(web::for_browsers(
            supervisor,
            &hub,
            settings.limits,
            Role::Broker,
            settings.dashboard,
            None,
            web::security::Guard::new(settings.web),
        ))
        .layer(axum::Extension(labels));
    let scheme = if settings.tls.is_some() {
        "TLS"
    } else {
        "plain"
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(role = "broker", %addr, %scheme, "listening (gateways on /gw, web clients on /ws, dashboard on /)");
    }
    match settings.tls {
        Some(tls) => web::serve_tls(supervisor, "broker", listener, tls, router),
        None => web::serve(supervisor, "broker", listener, router),
    }
    Ok(hub)
}

async fn gateway_upgrade(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(endpoint): State<GatewayEndpoint>,
) -> Response {
    let identity = match auth::check(&headers, |token| endpoint.auth.verify(token)) {
        Ok(identity) => identity,
        Err(why) => {
            tracing::warn!(%peer, "gateway refused: {why}");
            return (StatusCode::UNAUTHORIZED, "Invalid token").into_response();
        }
    };
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
                gateway_session::Gateway {
                    identity,
                    peer,
                    revocations: endpoint.auth.subscribe(),
                    origins: endpoint.origins,
                    messages_per_sec: endpoint.messages_per_sec,
                },
            ))
        })
}
