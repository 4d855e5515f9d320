//! `aiot dashboard`: the web UI alone, served for browsers that talk to another broker's
//! `/ws` (an aiot or a pyaiot broker), like pyaiot's `aiot-dashboard`.

use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::runtime::Supervisor;
use crate::web::{self, api::Api, api::DashboardConfig, api::Role};

/// Serves the dashboard on `listener`; the page connects to `dashboard.ws_url`.
pub fn start(supervisor: &Supervisor, listener: TcpListener, dashboard: DashboardConfig) {
    let api = Api {
        role: Role::Dashboard,
        dashboard: Arc::new(dashboard),
        hub: None,
        uplink: None,
        metrics: Arc::new(Metrics::default()),
        guard: None,
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(role = "dashboard", %addr, "listening for browsers on /");
    }
    let router: Router = web::dashboard(api);
    web::serve(supervisor, "dashboard", listener, router);
}

/// The broker's client endpoint as pyaiot's dashboard builds it from its flags.
pub fn broker_ws_url(host: &str, port: u16, ssl: bool) -> String {
    let scheme = if ssl { "wss" } else { "ws" };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    format!("{scheme}://{host}:{port}/ws")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_pyaiot_style_broker_urls() {
        assert_eq!(
            broker_ws_url("localhost", 8000, false),
            "ws://localhost:8000/ws"
        );
        assert_eq!(
            broker_ws_url("demo.example", 443, true),
            "wss://demo.example:443/ws"
        );
        assert_eq!(broker_ws_url("::1", 80, false), "ws://[::1]:80/ws");
    }
}
