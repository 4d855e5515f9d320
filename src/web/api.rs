//! The dashboard's JSON endpoints and the operator's: `/api/config` (title, logo, where to
//! connect), `/api/history` (numeric readings for charts), `/healthz` and `/metrics`; and,
//! where web clients connect, the login endpoints of [`super::auth`].

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::uplink::UplinkState;

/// What the page shows about itself, pyaiot's `--title`, `--logo`, `--favicon`,
/// `--camera-url`; `ws_url` points a standalone dashboard at another broker.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DashboardConfig {
    pub title: String,
    pub logo: Option<String>,
    pub favicon: Option<String>,
    pub camera_url: Option<String>,
    pub ws_url: Option<String>,
}

/// Which process serves the page.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Gateway,
    Broker,
    Dashboard,
}

#[derive(Clone)]
pub struct Api {
    pub role: Role,
    pub dashboard: Arc<DashboardConfig>,
    /// The role's hub; a standalone dashboard has none.
    pub hub: Option<Hub>,
    pub uplink: Option<watch::Receiver<UplinkState>>,
    pub metrics: Arc<Metrics>,
    /// Who may write through this listener's `/ws`; `None` where there is no `/ws`.
    pub guard: Option<Arc<super::security::Guard>>,
}

pub fn routes(api: Api) -> Router {
    let login = match &api.guard {
        Some(guard) => super::auth::routes(guard.clone()),
        None => Router::new(),
    };
    Router::new()
        .route("/api/config", get(config))
        .route("/api/history", get(history))
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .with_state(api)
        .merge(login)
}

#[derive(Serialize)]
struct ConfigAnswer<'a> {
    #[serde(flatten)]
    dashboard: &'a DashboardConfig,
    role: Role,
}

async fn config(State(api): State<Api>) -> Response {
    Json(ConfigAnswer {
        dashboard: &api.dashboard,
        role: api.role,
    })
    .into_response()
}

#[derive(Deserialize)]
struct HistoryQuery {
    uid: Option<String>,
}

async fn history(State(api): State<Api>, Query(query): Query<HistoryQuery>) -> Response {
    match &api.hub {
        Some(hub) => Json(hub.all_history(query.uid).await).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "no history here: this dashboard has no hub",
        )
            .into_response(),
    }
}

/// The uplink's state in one word or line, as `/healthz` and the status bar show it.
pub fn uplink_text(uplink: Option<&watch::Receiver<UplinkState>>, role: Role) -> Option<String> {
    match (uplink, role) {
        (Some(state), _) => Some(match &*state.borrow() {
            UplinkState::Connecting => "connecting".into(),
            UplinkState::Connected => "connected".into(),
            UplinkState::Retrying(why) => format!("retrying: {why}"),
            UplinkState::Stopped => "stopped".into(),
        }),
        (None, Role::Gateway) => Some("disabled".into()),
        (None, _) => None,
    }
}

#[derive(Serialize)]
struct Health {
    role: Role,
    version: &'static str,
    uptime_secs: u64,
    nodes: Option<u64>,
    uplink: Option<String>,
}

async fn health(State(api): State<Api>) -> Response {
    Json(Health {
        role: api.role,
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: api.metrics.uptime_secs(),
        nodes: api.hub.as_ref().map(|_| api.metrics.nodes()),
        uplink: uplink_text(api.uplink.as_ref(), api.role),
    })
    .into_response()
}

async fn metrics(State(api): State<Api>) -> Response {
    let mut text = api.metrics.render();
    if let Some(guard) = &api.guard {
        guard.counters.render(&mut text);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
