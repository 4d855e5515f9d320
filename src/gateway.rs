//! `aiot gateway`: the device adapters, the hub, the local `/ws` endpoint for the on-device
//! dashboard, and the optional uplink to a central broker.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::adapters::ws_node;
use crate::hub::{Hub, HubConfig};
use crate::runtime::Supervisor;
use crate::uplink::{self, UplinkSettings, UplinkState};
use crate::web::api::{Api, DashboardConfig, Role};
use crate::web::{self, clients::ClientEndpoint, socket::WsLimits};

#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub limits: WsLimits,
    pub hub: HubConfig,
    /// `None`: standalone, local dashboard only.
    pub uplink: Option<UplinkSettings>,
    pub dashboard: DashboardConfig,
}

/// The gateway's listeners, bound by the caller (tests bind port 0).
pub struct GatewayListeners {
    /// Websocket nodes (`/node`), pyaiot's `--gateway-port`.
    pub node: TcpListener,
    /// Web clients (`/ws`), the local dashboard.
    pub web: TcpListener,
}

pub struct Gateway {
    pub hub: Hub,
    pub uplink: Option<watch::Receiver<UplinkState>>,
}

pub fn start(
    supervisor: &Supervisor,
    listeners: GatewayListeners,
    settings: GatewaySettings,
) -> Gateway {
    let (hub, actor) = Hub::new(settings.hub, supervisor.shutdown_token());
    supervisor.spawn(actor);

    let nodes = ws_node::routes(supervisor, hub.clone(), settings.limits.clone());
    if let Ok(addr) = listeners.node.local_addr() {
        tracing::info!(role = "gateway", %addr, "listening for websocket nodes on /node");
    }
    web::serve(supervisor, "websocket nodes", listeners.node, nodes);

    let uplink = match settings.uplink {
        Some(uplink) => {
            tracing::info!(broker = %uplink.target, "uplink enabled");
            Some(uplink::start(supervisor, hub.clone(), uplink))
        }
        None => {
            tracing::info!("no broker configured: running standalone");
            None
        }
    };

    let clients = ClientEndpoint {
        hub: hub.clone(),
        limits: settings.limits,
        supervisor: supervisor.clone(),
    };
    let api = Api {
        role: Role::Gateway,
        dashboard: Arc::new(settings.dashboard),
        hub: Some(hub.clone()),
        uplink: uplink.clone(),
        metrics: hub.metrics().clone(),
    };
    let router = Router::new()
        .route("/ws", get(web::clients::upgrade).with_state(clients))
        .merge(web::dashboard(api));
    if let Ok(addr) = listeners.web.local_addr() {
        tracing::info!(role = "gateway", %addr, "listening for web clients on /ws (dashboard on /)");
    }
    web::serve(supervisor, "gateway web", listeners.web, router);
    Gateway { hub, uplink }
}
