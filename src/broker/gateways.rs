//! Per-gateway keys: besides pyaiot's one shared key file, the broker may hold a gateways file
//! in which each gateway has its own pyaiot key pair:
//!
//! ```toml
//! [[gateway]]
//! name = "kitchen"
//! secret = "…32 letters and digits…"
//! private = "…Fernet key…"
//! ```
//!
//! The gateway side keeps an ordinary pyaiot key file with that pair, so even a pyaiot gateway
//! can use one. Deleting an entry revokes that gateway alone: the file is read again on SIGHUP
//! and whenever it changes, a connected gateway whose entry went is disconnected, and its
//! reconnection gets 401.

use std::collections::BTreeSet;
use std::fmt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde::Deserialize;
use tokio::sync::watch;

use crate::keys::Keys;

/// How often the file's modification time and size are looked at.
const POLL: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    name: String,
    secret: String,
    private: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    gateway: Vec<FileEntry>,
}

/// The gateways a file allows, each with its keys.
#[derive(Debug, Default)]
pub struct GatewayList {
    entries: Vec<(String, Keys)>,
}

impl GatewayList {
    /// Parses the file's text; errors name the entry.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: File = toml::from_str(text)?;
        let mut names = BTreeSet::new();
        let mut entries = Vec::with_capacity(file.gateway.len());
        for entry in file.gateway {
            anyhow::ensure!(
                !entry.name.trim().is_empty(),
                "a [[gateway]] entry has an empty name"
            );
            anyhow::ensure!(
                !reserved(&entry.name),
                "gateway {:?}: names starting with '(' are kept for labels such as {:?}",
                entry.name,
                super::origins::SHARED_KEY_LABEL
            );
            anyhow::ensure!(
                names.insert(entry.name.clone()),
                "gateway {:?} is listed twice",
                entry.name
            );
            let keys = Keys::new(entry.secret, entry.private)
                .map_err(|why| anyhow::anyhow!("gateway {:?}: {why}", entry.name))?;
            entries.push((entry.name, keys));
        }
        Ok(GatewayList { entries })
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the gateways file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid gateways file {}", path.display()))
    }

    pub fn names(&self) -> BTreeSet<&str> {
        self.entries.iter().map(|(name, _)| name.as_str()).collect()
    }

    /// Whether `name` is still allowed with exactly `keys`.
    pub fn allows(&self, name: &str, keys: &Keys) -> bool {
        self.entries.iter().any(|(n, k)| n == name && k == keys)
    }

    /// The gateway whose keys `token` was made with. Every entry is tried: a token only
    /// decrypts under its own key (the HMAC fails first under any other).
    fn verify(&self, token: &str) -> Option<(&str, &Keys)> {
        self.entries
            .iter()
            .find(|(_, keys)| keys.verify(token))
            .map(|(name, keys)| (name.as_str(), keys))
    }
}

/// Whether `name` could be taken for a label of aiot's own (the shared key's, shown to
/// dashboards) rather than a gateway's.
fn reserved(name: &str) -> bool {
    name.trim_start().starts_with('(')
}

/// Who a gateway proved to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// pyaiot's shared key file.
    Shared,
    /// An entry of the gateways file, with the keys it was admitted with.
    Named { name: String, keys: Keys },
}

impl Identity {
    pub fn name(&self) -> Option<&str> {
        match self {
            Identity::Shared => None,
            Identity::Named { name, .. } => Some(name),
        }
    }

    /// Whether `list` still admits this gateway (the shared key is never revoked here).
    pub fn still_allowed(&self, list: &GatewayList) -> bool {
        match self {
            Identity::Shared => true,
            Identity::Named { name, keys } => list.allows(name, keys),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Shared => f.write_str("(shared key)"),
            Identity::Named { name, .. } => f.write_str(name),
        }
    }
}

/// The keys the broker admits gateways with: the shared key, the gateways file, or both.
pub struct Authenticator {
    shared: Option<Keys>,
    file: Option<PathBuf>,
    list: watch::Sender<Arc<GatewayList>>,
}

impl Authenticator {
    pub fn new(shared: Option<Keys>, file: Option<PathBuf>) -> anyhow::Result<Self> {
        let list = match &file {
            Some(path) => GatewayList::load(path)?,
            None => GatewayList::default(),
        };
        anyhow::ensure!(
            shared.is_some() || file.is_some(),
            "no key file and no gateways file: no gateway could connect"
        );
        Ok(Authenticator {
            shared,
            file,
            list: watch::Sender::new(Arc::new(list)),
        })
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    pub fn gateway_count(&self) -> usize {
        self.list.borrow().entries.len()
    }

    pub fn verify(&self, token: &str) -> Option<Identity> {
        if let Some((name, keys)) = self.list.borrow().verify(token) {
            return Some(Identity::Named {
                name: name.to_owned(),
                keys: keys.clone(),
            });
        }
        match &self.shared {
            Some(shared) if shared.verify(token) => Some(Identity::Shared),
            _ => None,
        }
    }

    /// Follows the list, for sessions to notice their revocation.
    pub fn subscribe(&self) -> watch::Receiver<Arc<GatewayList>> {
        self.list.subscribe()
    }

    /// Reads the gateways file again; on error the list in use stays.
    pub fn reload(&self) {
        let Some(path) = &self.file else { return };
        match GatewayList::load(path) {
            Ok(list) => {
                let old: BTreeSet<String> = (self.list.borrow().names().into_iter())
                    .map(String::from)
                    .collect();
                let new: BTreeSet<String> = list.names().into_iter().map(String::from).collect();
                let added: Vec<_> = new.difference(&old).collect();
                let removed: Vec<_> = old.difference(&new).collect();
                tracing::info!(
                    file = %path.display(),
                    gateways = new.len(),
                    "gateways file reloaded (added {added:?}, removed {removed:?})"
                );
                self.list.send_replace(Arc::new(list));
            }
            Err(error) => tracing::error!(
                "gateways file not reloaded, keeping the {} gateways in use: {error:#}",
                self.gateway_count()
            ),
        }
    }

    /// Reloads whenever the file's modification time or size changes, until `shutdown`.
    pub fn watch(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let Some(path) = self.file.clone() else {
            return;
        };
        tokio::spawn(async move {
            let stamp = |path: &Path| -> Option<(SystemTime, u64)> {
                let meta = std::fs::metadata(path).ok()?;
                Some((meta.modified().ok()?, meta.len()))
            };
            let mut seen = stamp(&path);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(POLL) => {}
                }
                let now = stamp(&path);
                if now != seen {
                    seen = now;
                    self.reload();
                }
            }
        });
    }
}

/// Adds a gateway with fresh keys to the gateways file (created 0600 if missing) and returns
/// its keys, for the gateway's own key file. The file is replaced in one rename, so a broker
/// watching it never reads half of it.
pub fn add(path: &Path, name: &str) -> anyhow::Result<Keys> {
    anyhow::ensure!(
        !name.trim().is_empty() && !name.contains(['"', '\\', '\n', '\r']) && !reserved(name),
        "invalid gateway name {name:?}"
    );
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            "# Gateways admitted by the broker, each with its own key (`aiot keys generate --gateway NAME`).\n\
             # Delete an entry to revoke that gateway; the broker rereads this file when it changes.\n"
                .to_owned()
        }
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", path.display()));
        }
    };
    let list = GatewayList::parse(&existing)
        .with_context(|| format!("invalid gateways file {}", path.display()))?;
    anyhow::ensure!(
        !list.names().contains(name),
        "gateway {name:?} is already in {} (delete its entry first to give it a new key)",
        path.display()
    );
    let keys = Keys::generate();
    let mut text = existing;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "\n[[gateway]]\nname = \"{name}\"\nsecret = \"{}\"\nprivate = \"{}\"\n",
        keys.secret(),
        keys.private()
    ));
    let temp = path.with_extension("tmp");
    {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .with_context(|| format!("cannot write {}", temp.display()))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", temp.display()))?;
    }
    std::fs::rename(&temp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_then_verify_then_revoke() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("gateways.toml");
        let kitchen = add(&path, "kitchen").expect("added");
        let garage = add(&path, "garage").expect("added");
        assert!(add(&path, "kitchen").is_err(), "names are unique");
        assert!(add(&path, "(shared key)").is_err(), "labels are not names");
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let auth = Authenticator::new(None, Some(path.clone())).expect("loads");
        assert_eq!(
            auth.verify(&kitchen.token())
                .and_then(|i| i.name().map(String::from))
                .as_deref(),
            Some("kitchen")
        );
        let garage_identity = auth.verify(&garage.token()).expect("garage admitted");
        assert_eq!(auth.verify(&Keys::generate().token()), None);

        let text = std::fs::read_to_string(&path).expect("read");
        let without_garage = text
            .split("\n[[gateway]]")
            .filter(|e| !e.contains("\"garage\""))
            .collect::<Vec<_>>()
            .join("\n[[gateway]]");
        std::fs::write(&path, without_garage).expect("write");
        auth.reload();
        assert_eq!(auth.verify(&garage.token()), None, "revoked");
        assert!(!garage_identity.still_allowed(&auth.subscribe().borrow()));
        assert!(auth.verify(&kitchen.token()).is_some(), "the other stays");

        std::fs::write(&path, "[[gateway]]\nname = \"x\"\n").expect("write");
        auth.reload();
        assert!(
            auth.verify(&kitchen.token()).is_some(),
            "a broken file keeps the old list"
        );
    }

    #[test]
    fn the_shared_key_works_beside_the_file() {
        let shared = Keys::generate();
        let auth = Authenticator::new(Some(shared.clone()), None).expect("shared only");
        assert_eq!(auth.verify(&shared.token()), Some(Identity::Shared));
        assert!(Authenticator::new(None, None).is_err());
    }

    #[test]
    fn bad_files_name_the_problem() {
        for (text, needle) in [
            (
                "[[gateway]]\nname = \"a\"\nsecret = \"s\"\nprivate = \"p\"\n",
                "Fernet",
            ),
            (
                "[[gateway]]\nname = \"\"\nsecret = \"s\"\nprivate = \"p\"\n",
                "empty name",
            ),
            ("[[gateways]]\n", "unknown field"),
            (
                "[[gateway]]\nname = \"(shared key)\"\nsecret = \"s\"\nprivate = \"p\"\n",
                "kept for labels",
            ),
        ] {
            let error = format!("{:#}", GatewayList::parse(text).expect_err(text));
            assert!(error.contains(needle), "{text}: {error}");
        }
        let keys = Keys::generate();
        let entry = format!(
            "[[gateway]]\nname = \"a\"\nsecret = \"{}\"\nprivate = \"{}\"\n",
            keys.secret(),
            keys.private()
        );
        let error = format!(
            "{:#}",
            GatewayList::parse(&format!("{entry}{entry}")).expect_err("twice")
        );
        assert!(error.contains("twice"), "{error}");
    }
}
