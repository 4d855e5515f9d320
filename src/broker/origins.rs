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
use tokio::sync::Notify;

use super::gateways::Identity;

#[derive(Debug, Clone, Serialize)]
struct Connected {
    /// The gateways file entry; `null` for pyaiot's shared key.
    name: Option<String>,
    peer: SocketAddr,
    nodes: BTreeSet<String>,
    /// Woken when the same gateway (name and address) connects again.
    #[serde(skip)]
    again: Arc<Notify>,
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

    /// A gateway connected; returns its connection's number, and what wakes when the same
    /// gateway connects again. Its earlier connections from the same address are woken now: a
    /// gateway that gave up on one has reset it, so a ping on it meets the reset and it ends at
    /// once rather than at its next ping, with its stale nodes (tests/faults.rs).
    pub fn open(&self, identity: &Identity, peer: SocketAddr) -> (u64, Arc<Notify>) {
        let name = identity.name().map(String::from);
        self.with(|(next, map)| {
            for earlier in map.values() {
                if earlier.name == name && earlier.peer.ip() == peer.ip() {
                    earlier.again.notify_one();
                }
            }
            *next += 1;
            let again = Arc::new(Notify::new());
            map.insert(
                *next,
                Connected {
                    name,
                    peer,
                    nodes: BTreeSet::new(),
                    again: again.clone(),
                },
            );
            (*next, again)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::keys::Keys;

    async fn woken(again: &Notify) -> bool {
        tokio::time::timeout(Duration::from_millis(50), again.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_gateway_connecting_again_wakes_its_earlier_connections_only() {
        let origins = Origins::default();
        let named = |name: &str| Identity::Named {
            name: name.into(),
            keys: Keys::generate(),
        };
        let addr = |s: &str| s.parse::<SocketAddr>().expect("an address");
        let (_, first) = origins.open(&Identity::Shared, addr("10.0.0.2:40000"));
        let (_, other_host) = origins.open(&Identity::Shared, addr("10.0.0.3:40000"));
        let (_, other_name) = origins.open(&named("hall"), addr("10.0.0.2:40001"));
        assert!(!woken(&first).await, "nobody connected again yet");
        origins.open(&Identity::Shared, addr("10.0.0.2:40002"));
        assert!(
            woken(&first).await,
            "the same gateway from the same address"
        );
        assert!(!woken(&other_host).await, "another address");
        assert!(!woken(&other_name).await, "another gateway of the file");
    }
}
