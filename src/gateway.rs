//! `aiot gateway`: the device adapters, the hub, the local `/ws` endpoint for the on-device
//! dashboard, and the optional uplink to a central broker.

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::adapters::{coap, mqtt, ws_node};
use crate::hub::{Hub, HubConfig};
use crate::metrics::Channel;
use crate::runtime::Supervisor;
use crate::runtime::notify::Probe;
use crate::uplink::{self, UplinkSettings, UplinkState};
use crate::web::api::{DashboardConfig, Role};
use crate::web::{self, socket::WsLimits};

#[derive(Debug)]
pub struct GatewaySettings {
    pub limits: WsLimits,
    pub hub: HubConfig,
    /// `None`: standalone, local dashboard only.
    pub uplink: Option<UplinkSettings>,
    pub dashboard: DashboardConfig,
    /// CoAP nodes; `None` when `coap.enabled` is false.
    pub coap: Option<coap::Settings>,
    /// MQTT nodes; `None` when `mqtt.enabled` is false.
    pub mqtt: Option<GatewayMqtt>,
    /// TLS for the local dashboard and web clients (reloaded on SIGHUP); `None`: plain HTTP.
    pub web_tls: Option<std::sync::Arc<crate::tls::ServerTls>>,
    /// Who may write through `/ws`, and from which origins `/ws` and `/node` are opened.
    pub web: web::security::WebSecurity,
}

/// The MQTT adapter, and the embedded broker it talks to (`None`: an external broker).
#[derive(Debug)]
pub struct GatewayMqtt {
    pub adapter: mqtt::Settings,
    pub broker: Option<mqtt::BrokerSettings>,
}

/// The gateway's listeners, bound by the caller (tests bind port 0).
pub struct GatewayListeners {
    /// Websocket nodes (`/node`), pyaiot's `--gateway-port`.
    pub node: TcpListener,
    /// Web clients (`/ws`), the local dashboard.
    pub web: TcpListener,
    /// CoAP nodes' UDP socket (`--coap-port`), if CoAP is enabled.
    pub coap: Option<tokio::net::UdpSocket>,
}

pub struct Gateway {
    pub hub: Hub,
    pub uplink: Option<watch::Receiver<UplinkState>>,
}

/// Starts the gateway; fails only if SIGHUP cannot be handled for a TLS reload.
pub fn start(
    supervisor: &Supervisor,
    listeners: GatewayListeners,
    settings: GatewaySettings,
) -> anyhow::Result<Gateway> {
    let (hub, actor) = Hub::new(settings.hub, supervisor.shutdown_token());
    supervisor.spawn(actor);
    supervisor.add_probe(Probe::hub(hub.clone()));

    web::security::announce("gateway", &settings.web);
    let guard = web::security::Guard::new(settings.web);
    let nodes = web::origin::guarded(
        ws_node::routes(supervisor, hub.clone(), settings.limits.clone()),
        guard.clone(),
    );
    if let Ok(addr) = listeners.node.local_addr() {
        tracing::info!(role = "gateway", %addr, "listening for websocket nodes on /node");
    }
    web::serve(supervisor, "websocket nodes", listeners.node, nodes);

    if let (Some(socket), Some(settings)) = (listeners.coap, settings.coap) {
        coap::start(supervisor, hub.clone(), socket, settings);
    }

    if let Some(settings) = settings.mqtt {
        let mut adapter = settings.adapter;
        if let Some(broker) = settings.broker {
            adapter.embedded = Some(mqtt::start_broker(
                supervisor,
                broker,
                hub.metrics().clone(),
            )?);
        }
        mqtt::start(supervisor, hub.clone(), adapter);
    }

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

    let metrics = hub.metrics().clone();
    let uplink_state = uplink.clone();
    supervisor.set_status(move || {
        let uplink =
            web::api::uplink_text(uplink_state.as_ref(), Role::Gateway).unwrap_or_default();
        format!(
            "{} nodes ({} websocket); uplink {uplink}",
            metrics.nodes(),
            metrics.connections(Channel::WebSocketNode)
        )
    });
    let router = web::for_browsers(
        supervisor,
        &hub,
        settings.limits,
        Role::Gateway,
        settings.dashboard,
        uplink.clone(),
        guard,
    );
    if let Ok(addr) = listeners.web.local_addr() {
        tracing::info!(role = "gateway", %addr, "listening for web clients on /ws (dashboard on /)");
    }
    match settings.web_tls {
        Some(tls) => {
            crate::tls::reload_on_sighup(
                supervisor,
                vec![crate::tls::reload_step(tls.clone(), "gateway web")],
            )?;
            web::serve_tls(supervisor, "gateway web", listeners.web, tls, router);
        }
        None => web::serve(supervisor, "gateway web", listeners.web, router),
    }
    Ok(Gateway { hub, uplink })
}
