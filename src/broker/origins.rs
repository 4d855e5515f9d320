//! Which gateway each node came from, for the log and for `GET /api/gateways`.
//!
//! aiot dashboards learn a node's gateway from that endpoint rather than from an extra field
//! on `/ws` messages: the broker cannot tell an aiot dashboard from a pyaiot one on `/ws`
//! (both send the same hello), every event's JSON is made once for all clients, and pyaiot
//! dashboards must keep getting pyaiot's messages byte for byte.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::gateways::Identity;

#[derive(Debug, Clone, Serialize)]
struct Connected {
    /// The gateways file entry; `null` for pyaiot's shared key.
    name: Option<String>,
    peer: SocketAddr,
    nodes: BTreeSet<String>,
}

/// The connected gateways and their nodes.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    inner: Arc<Mutex<(u64, BTreeMap<u64, Connected>)>>,
}

impl Origins {
    fn with<R>(&self, f: impl FnOnce(&mut (u64, BTreeMap<u64, Connected>)) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A gateway connected; returns its connection's number.
    pub fn open(&self, identity: &Identity, peer: SocketAddr) -> u64 {
        self.with(|(next, map)| {
            *next += 1;
            map.insert(
                *next,
                Connected {
                    name: identity.name().map(String::from),
                    peer,
                    nodes: BTreeSet::new(),
                },
            );
            *next
        })
    }

    /// Notes node `uid` on connection `id`; true the first time.
    pub fn node(&self, id: u64, uid: &str) -> bool {
        self.with(|(_, map)| {
            map.get_mut(&id)
                .is_some_and(|gateway| gateway.nodes.insert(uid.to_owned()))
        })
    }

    pub fn node_out(&self, id: u64, uid: &str) {
        self.with(|(_, map)| {
            if let Some(gateway) = map.get_mut(&id) {
                gateway.nodes.remove(uid);
            }
        });
    }

    pub fn close(&self, id: u64) {
        self.with(|(_, map)| map.remove(&id));
    }
}

#[derive(Serialize)]
pub struct Listing {
    gateways: Vec<Connected>,
}

/// `GET /api/gateways`: `{"gateways":[{"name":…,"peer":…,"nodes":[uid, …]}, …]}`.
pub async fn list(State(origins): State<Origins>) -> Json<Listing> {
    Json(Listing {
        gateways: origins.with(|(_, map)| map.values().cloned().collect()),
    })
}
