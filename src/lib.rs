//! aiot: pyaiot's broker, gateways and simulated nodes as one binary.
//!
//! # Layout
//! - [`proto`]: sans-IO wire formats (broker JSON, websocket nodes), limits, readings.
//! - [`hub`]: the node table actor: snapshot + live events, routing writes to owners.
//! - [`adapters`]: the only code that talks to devices (websocket nodes so far).
//! - [`broker`]: `aiot broker`, gateways on `/gw` and web clients on `/ws`.
//! - [`gateway`]: `aiot gateway`, adapters + hub + local `/ws` + uplink.
//! - [`dashboard`]: `aiot dashboard`, the web UI alone for a broker elsewhere.
//! - [`uplink`]: the gateway's robust connection to a central broker.
//! - [`web`]: listeners, serving, the shared `/ws` client endpoint, the dashboard's files and
//!   JSON endpoints (`/api/*`, `/healthz`, `/metrics`), socket helpers; who may write (web
//!   password, login, sessions) and from which origins (docs/security.md).
//! - [`runtime`]: the supervisor: named tasks, one shutdown token, drain deadline, signals.
//! - [`sim`]: simulated nodes for demos, tests and load.
//! - [`keys`]: pyaiot key files and Fernet tokens.
//! - [`tls`]: rustls for our listeners and the uplink; PEM files, reload on SIGHUP.
//! - [`metrics`]: a role's counters, rendered for Prometheus.
//! - [`bench`]: `aiot bench`, the load test of gateway and broker as child processes.
//! - [`config`], [`cli`], [`app`]: configuration, flags, and wiring them to the roles.

pub mod adapters;
pub mod app;
#[cfg(feature = "bench")]
pub mod bench;
pub mod broker;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod gateway;
pub mod hub;
pub mod keys;
pub mod metrics;
pub mod proto;
pub mod runtime;
pub mod sim;
pub mod tls;
pub mod uplink;
pub mod web;
