//! Which gateway each node came from, for the log, for `GET /api/gateways`, and for aiot
//! dashboards on `/ws`: a client whose hello says `"aiot": 1` gets the gateway's name on every
//! `new` ([`crate::web::clients::NodeOrigins`]). pyaiot dashboards do not say it and keep
//! getting pyaiot's messages byte for byte.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// What aiot dashboards are told for a gateway with pyaiot's shared key: it has no name, and
/// the log calls it the same (`gateway=(shared key)`). Gateway names cannot start with `(`.
pub const SHARED_KEY_LABEL: &str = "(shared key)";

/// The connected gateways and their nodes.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    inner: Arc<Mutex<(u64, BTreeMap<u64, Connected>)>>,
    /// Each node's latest announcing connection and that gateway's label: when a node moves
    /// to another gateway, its `new` from there wins.
    owners: Arc<Mutex<Owners>>,
}

/// uid → (connection, the gateway's label).
type Owners = HashMap<String, (u64, Arc<str>)>;

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

    fn owners(&self) -> std::sync::MutexGuard<'_, Owners> {
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes node `uid` on connection `id`; true the first time.
    pub fn node(&self, id: u64, uid: &str) -> bool {
        let (first, label) = self.with(|(_, map)| match map.get_mut(&id) {
            Some(gateway) => (
                gateway.nodes.insert(uid.to_owned()),
                Some(gateway.name.as_deref().unwrap_or(SHARED_KEY_LABEL).into()),
            ),
            None => (false, None),
        });
        if let Some(label) = label {
            self.owners().insert(uid.to_owned(), (id, label));
        }
        first
    }

    pub fn node_out(&self, id: u64, uid: &str) {
        self.with(|(_, map)| {
            if let Some(gateway) = map.get_mut(&id) {
                gateway.nodes.remove(uid);
            }
        });
        let mut owners = self.owners();
        if owners.get(uid).is_some_and(|(owner, _)| *owner == id) {
            owners.remove(uid);
        }
    }

    pub fn close(&self, id: u64) {
        self.with(|(_, map)| map.remove(&id));
        self.owners().retain(|_, (owner, _)| *owner != id);
    }
}

impl crate::web::clients::NodeOrigins for Origins {
    fn gateway_of(&self, uid: &str) -> Option<Arc<str>> {
        self.owners().get(uid).map(|(_, label)| label.clone())
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
    use crate::web::clients::NodeOrigins as _;

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

    #[test]
    fn a_node_is_labelled_with_the_gateway_that_announced_it_last() {
        let origins = Origins::default();
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("address");
        let (kitchen, _) = origins.open(
            &Identity::Named {
                name: "kitchen".into(),
                keys: Keys::generate(),
            },
            peer,
        );
        let (shared, _) = origins.open(&Identity::Shared, peer);
        assert!(origins.node(kitchen, "n"));
        assert_eq!(origins.gateway_of("n").as_deref(), Some("kitchen"));
        assert_eq!(origins.gateway_of("other"), None);
        // The node moved: the newer gateway's label wins, and the old one's `out` or
        // disconnection does not take it away.
        assert!(origins.node(shared, "n"));
        assert_eq!(origins.gateway_of("n").as_deref(), Some(SHARED_KEY_LABEL));
        origins.node_out(kitchen, "n");
        origins.close(kitchen);
        assert_eq!(origins.gateway_of("n").as_deref(), Some(SHARED_KEY_LABEL));
        origins.close(shared);
        assert_eq!(origins.gateway_of("n"), None);
    }
}
