//! Who may do what on the web endpoints: the operator's settings ([`WebSecurity`]), and the
//! running state built from them ([`Guard`]): sessions and login limits ([`super::auth`]),
//! the origin allowlist ([`super::origin`]), per-client limits, and their counters.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::auth::Auth;
use super::origin::OriginPolicy;
use super::password::Verifier;

/// What the operator configured (`[web]` and the `--web-password*`, `--allowed-origin` flags).
#[derive(Debug, Clone)]
pub struct WebSecurity {
    /// `None`: anyone may write, as with pyaiot.
    pub password: Option<Verifier>,
    /// Origins allowed besides the page's own (`*` allows every origin).
    pub allowed_origins: Vec<String>,
    pub session_ttl: Duration,
    /// Login attempts per client address per minute; ten times this for everyone together.
    pub login_attempts_per_minute: u32,
    /// Web clients connected to `/ws` at once.
    pub max_clients: usize,
    /// Messages a web client may send per second (with a burst of twice that).
    pub client_messages_per_sec: u32,
    /// Largest payload of a write, as JSON.
    pub max_write_bytes: usize,
    /// Set by the serving path when the listener speaks TLS: the session cookie gets `Secure`.
    pub tls: bool,
}

impl Default for WebSecurity {
    fn default() -> Self {
        WebSecurity {
            password: None,
            allowed_origins: Vec::new(),
            session_ttl: Duration::from_secs(DEFAULT_SESSION_SECS),
            login_attempts_per_minute: DEFAULT_LOGIN_ATTEMPTS_PER_MINUTE,
            max_clients: DEFAULT_MAX_CLIENTS,
            client_messages_per_sec: DEFAULT_CLIENT_MESSAGES_PER_SEC,
            max_write_bytes: DEFAULT_MAX_WRITE_BYTES,
            tls: false,
        }
    }
}

pub const DEFAULT_SESSION_SECS: u64 = 12 * 3600;
pub const DEFAULT_LOGIN_ATTEMPTS_PER_MINUTE: u32 = 5;
pub const DEFAULT_MAX_CLIENTS: usize = 1000;
pub const DEFAULT_CLIENT_MESSAGES_PER_SEC: u32 = 20;
pub const DEFAULT_MAX_WRITE_BYTES: usize = 16 * 1024;

/// Counted refusals, shown on `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub logins_ok: AtomicU64,
    pub logins_wrong: AtomicU64,
    pub logins_limited: AtomicU64,
    pub writes_unauthorized: AtomicU64,
    pub writes_too_big: AtomicU64,
    pub messages_rate_limited: AtomicU64,
    pub origins_refused: AtomicU64,
    pub clients_refused: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text, appended to the role's own metrics.
    pub fn render(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP aiot_web_logins_total Login attempts on /api/login, by result.\n\
             # TYPE aiot_web_logins_total counter\n\
             aiot_web_logins_total{{result=\"ok\"}} {}\n\
             aiot_web_logins_total{{result=\"wrong_password\"}} {}\n\
             aiot_web_logins_total{{result=\"rate_limited\"}} {}",
            get(&self.logins_ok),
            get(&self.logins_wrong),
            get(&self.logins_limited),
        );
        let _ = writeln!(
            out,
            "# HELP aiot_web_writes_refused_total Writes from web clients refused, by reason.\n\
             # TYPE aiot_web_writes_refused_total counter\n\
             aiot_web_writes_refused_total{{reason=\"unauthorized\"}} {}\n\
             aiot_web_writes_refused_total{{reason=\"too_big\"}} {}",
            get(&self.writes_unauthorized),
            get(&self.writes_too_big),
        );
        for (name, help, counter) in [
            (
                "aiot_web_messages_rate_limited_total",
                "Messages from web clients dropped for exceeding the per-connection rate.",
                &self.messages_rate_limited,
            ),
            (
                "aiot_web_origins_refused_total",
                "Websocket upgrades refused for a cross-origin Origin header.",
                &self.origins_refused,
            ),
            (
                "aiot_web_clients_refused_total",
                "Web clients refused because the maximum was connected.",
                &self.clients_refused,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                get(counter)
            );
        }
    }
}

/// The running state of one listener's web security.
#[derive(Debug)]
pub struct Guard {
    pub settings: WebSecurity,
    pub auth: Auth,
    pub origins: OriginPolicy,
    pub counters: Counters,
    clients: AtomicUsize,
    /// Whether reaching the maximum of clients was logged (once until a place frees up).
    full_logged: AtomicBool,
}

impl Guard {
    pub fn new(settings: WebSecurity) -> Arc<Guard> {
        Arc::new(Guard {
            auth: Auth::new(
                settings.password.clone(),
                settings.session_ttl,
                settings.login_attempts_per_minute,
            ),
            origins: OriginPolicy::new(&settings.allowed_origins),
            counters: Counters::default(),
            clients: AtomicUsize::new(0),
            full_logged: AtomicBool::new(false),
            settings,
        })
    }

    /// A place for one more web client, or `None` at the maximum.
    pub fn admit(self: &Arc<Self>) -> Option<ClientSlot> {
        let taken = self.clients.fetch_add(1, Ordering::AcqRel);
        if taken >= self.settings.max_clients {
            self.clients.fetch_sub(1, Ordering::AcqRel);
            Counters::add(&self.counters.clients_refused);
            if !self.full_logged.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    max = self.settings.max_clients,
                    "web clients refused: the maximum is connected (web.max_clients)"
                );
            }
            return None;
        }
        if taken + 1 < self.settings.max_clients {
            self.full_logged.store(false, Ordering::Release);
        }
        Some(ClientSlot(self.clone()))
    }
}

/// Held while a web client is connected.
pub struct ClientSlot(Arc<Guard>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Logs "writes are open" once at start when no password is set; says what protects writes
/// otherwise.
pub fn announce(role: &str, settings: &WebSecurity) {
    if settings.password.is_none() {
        tracing::warn!(
            role,
            "no web password set: any web client can write to nodes (create one with `aiot password hash --file FILE`, then pass --web-password-file FILE)"
        );
    } else {
        tracing::info!(
            role,
            "web writes need a login (session {} s)",
            settings.session_ttl.as_secs()
        );
    }
}
