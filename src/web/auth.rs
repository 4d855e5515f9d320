//! Write authorization for web clients: `/api/login` checks the password (rate-limited per
//! client address and overall) and hands out a session cookie; `/ws` looks the cookie up at
//! the upgrade and again before every write, so a logout or an expiry takes effect at once.
//! Reading stays open to everyone.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq as _;

use super::password::Verifier;
use super::security::{Counters, Guard};

/// The session cookie's name; a port is appended (`aiot_session_8080`) because cookies are
/// shared by every port of a host, and a broker and a gateway on one host must not overwrite
/// each other's.
pub const COOKIE: &str = "aiot_session";

/// Sessions kept at most; past this the one closest to expiry goes.
const MAX_SESSIONS: usize = 1024;

/// Client addresses whose login attempts are remembered at most.
const MAX_TRACKED_ADDRESSES: usize = 4096;

/// Password checks running at once: each takes 19 MiB and a core for tens of milliseconds.
const CONCURRENT_CHECKS: usize = 2;

/// Largest login request body.
const MAX_LOGIN_BODY: usize = 4096;

struct Session {
    secret: [u8; 32],
    expires: Instant,
}

/// A session's public half: names the session without proving anything.
pub type SessionId = String;

pub struct Auth {
    password: Option<Verifier>,
    ttl: Duration,
    sessions: Mutex<HashMap<SessionId, Session>>,
    limiter: Mutex<Limiter>,
    checks: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("password", &self.password.is_some())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// What `/ws` knows about a connection's right to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// No password is configured: everyone may write.
    Open,
    /// Logged in with this session (checked again at each write).
    Session(SessionId),
    /// Read-only.
    Anonymous,
}

impl Access {
    /// For logs: which kind, without the session's id.
    pub fn label(&self) -> &'static str {
        match self {
            Access::Open => "open",
            Access::Session(_) => "logged in",
            Access::Anonymous => "read-only",
        }
    }
}

impl Auth {
    pub fn new(password: Option<Verifier>, ttl: Duration, attempts_per_minute: u32) -> Auth {
        Auth {
            password,
            ttl,
            sessions: Mutex::new(HashMap::new()),
            limiter: Mutex::new(Limiter::new(attempts_per_minute)),
            checks: tokio::sync::Semaphore::new(CONCURRENT_CHECKS),
        }
    }

    pub fn required(&self) -> bool {
        self.password.is_some()
    }

    /// The access of a request with these headers.
    pub fn access(&self, headers: &HeaderMap) -> Access {
        if !self.required() {
            return Access::Open;
        }
        match self.session_of(headers) {
            Some((id, _)) => Access::Session(id),
            None => Access::Anonymous,
        }
    }

    /// Whether `access` may write now.
    pub fn may_write(&self, access: &Access) -> bool {
        match access {
            Access::Open => true,
            Access::Anonymous => false,
            Access::Session(id) => self.expires_in(id).is_some(),
        }
    }

    fn expires_in(&self, id: &str) -> Option<Duration> {
        let sessions = self
            .sessions
            .lock()
            .expect("no panics under the sessions lock");
        let left = sessions
            .get(id)?
            .expires
            .checked_duration_since(Instant::now())?;
        (!left.is_zero()).then_some(left)
    }

    /// A live session named by one of the request's cookies, with the time it has left.
    fn session_of(&self, headers: &HeaderMap) -> Option<(SessionId, Duration)> {
        let now = Instant::now();
        let sessions = self
            .sessions
            .lock()
            .expect("no panics under the sessions lock");
        for (id, secret) in session_cookies(headers) {
            let Some(session) = sessions.get(id) else {
                continue;
            };
            let matches: bool = session.secret.ct_eq(&secret).into();
            if matches && session.expires > now {
                return Some((id.to_owned(), session.expires - now));
            }
        }
        None
    }

    /// A new session: its cookie value (`id.secret`).
    fn open_session(&self) -> anyhow::Result<String> {
        let mut id = [0u8; 16];
        let mut secret = [0u8; 32];
        getrandom::fill(&mut id).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let id = encode(&id);
        let now = Instant::now();
        let mut sessions = self
            .sessions
            .lock()
            .expect("no panics under the sessions lock");
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                secret,
                expires: now + self.ttl,
            },
        );
        Ok(format!("{id}.{}", encode(&secret)))
    }

    fn close_session(&self, headers: &HeaderMap) {
        if let Some((id, _)) = self.session_of(headers) {
            self.sessions
                .lock()
                .expect("no panics under the sessions lock")
                .remove(&id);
        }
    }
}

/// Every `aiot_session*` cookie of the request, as (id, secret bytes).
fn session_cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, Vec<u8>)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| name.starts_with(COOKIE))
        .filter_map(|(_, value)| {
            let (id, secret) = value.trim_matches('"').split_once('.')?;
            let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(secret)
                .ok()?;
            Some((id, secret))
        })
}

/// The cookie name for the port the browser used (from `Host`).
fn cookie_name(headers: &HeaderMap) -> String {
    let port = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|host| super::origin::split_host_port(host).1);
    match port {
        Some(port) => format!("{COOKIE}_{port}"),
        None => COOKIE.to_owned(),
    }
}

fn cookie(name: &str, value: &str, max_age: Duration, tls: bool) -> HeaderValue {
    let secure = if tls { "; Secure" } else { "" };
    let text = format!(
        "{name}={value}; Max-Age={}; Path=/; HttpOnly; SameSite=Strict{secure}",
        max_age.as_secs()
    );
    HeaderValue::from_str(&text).expect("cookie values are base64url")
}

/// Token buckets of login attempts: one per client address (an IPv6 client's whole /64,
/// which one host usually has), and one for everyone.
struct Limiter {
    per_minute: f64,
    buckets: HashMap<IpAddr, Bucket>,
    global: Bucket,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    /// Whether this bucket's running dry was logged (once per episode).
    logged: bool,
}

impl Bucket {
    fn full(capacity: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: capacity,
            at: now,
            logged: false,
        }
    }

    fn refill(&mut self, capacity: f64, per_sec: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.logged = false;
        }
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, per_sec: f64) -> Result<(), Duration> {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / per_sec))
        }
    }
}

/// Why a login attempt was not even tried.
#[derive(Debug, PartialEq)]
enum Limited {
    Client { retry_after: Duration, first: bool },
    Everyone { retry_after: Duration, first: bool },
}

/// Global attempts per minute, as a multiple of one client's.
const GLOBAL_FACTOR: f64 = 10.0;

impl Limiter {
    fn new(per_minute: u32) -> Limiter {
        let per_minute = f64::from(per_minute.max(1));
        Limiter {
            per_minute,
            buckets: HashMap::new(),
            global: Bucket::full(per_minute * GLOBAL_FACTOR, Instant::now()),
        }
    }

    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    IpAddr::V6(prefix.into())
                }
            },
            v4 => v4,
        }
    }

    fn try_take(&mut self, ip: IpAddr, now: Instant) -> Result<(), Limited> {
        let capacity = self.per_minute;
        let per_sec = capacity / 60.0;
        let global_capacity = capacity * GLOBAL_FACTOR;
        self.global
            .refill(global_capacity, per_sec * GLOBAL_FACTOR, now);
        if self.buckets.len() >= MAX_TRACKED_ADDRESSES {
            self.buckets.retain(|_, b| {
                b.refill(capacity, per_sec, now);
                b.tokens < capacity
            });
        }
        let key = Self::key(ip);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_TRACKED_ADDRESSES {
            // Too many addresses trying at once: only the global bucket decides, harder.
            return Err(Limited::Everyone {
                retry_after: Duration::from_secs(60),
                first: false,
            });
        }
        let bucket = self
            .buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(capacity, now));
        bucket.refill(capacity, per_sec, now);
        if let Err(retry_after) = bucket.take(per_sec) {
            let first = !std::mem::replace(&mut bucket.logged, true);
            return Err(Limited::Client { retry_after, first });
        }
        if let Err(retry_after) = self.global.take(per_sec * GLOBAL_FACTOR) {
            // The client's own attempt was not made: give its token back.
            bucket.tokens += 1.0;
            let first = !std::mem::replace(&mut self.global.logged, true);
            return Err(Limited::Everyone { retry_after, first });
        }
        Ok(())
    }
}

pub fn routes(guard: Arc<Guard>) -> Router {
    Router::new()
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/session", get(session))
        .with_state(guard)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// A form posted from another site must not log anyone in or out: browsers send `Origin` on
/// every POST, and only JSON bodies are taken (a cross-site form cannot send them without a
/// CORS preflight, which we never answer).
fn refuse_cross_site(guard: &Guard, headers: &HeaderMap, peer: SocketAddr) -> Option<Response> {
    if let Err(origin) = guard.origins.check(headers) {
        guard
            .origins
            .log_refusal(&origin, peer, "a login or logout");
        return Some(error(
            StatusCode::FORBIDDEN,
            "cross-origin requests are refused",
        ));
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return Some(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the password as JSON: {\"password\": \"…\"}",
        ));
    }
    None
}

#[derive(Deserialize)]
struct LoginRequest {
    password: String,
}

async fn login(
    State(guard): State<Arc<Guard>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let auth = &guard.auth;
    let Some(password) = auth.password.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "no web password is set here: writes are open to everyone",
        );
    };
    if let Some(refusal) = refuse_cross_site(&guard, &headers, peer) {
        return refusal;
    }
    if body.len() > MAX_LOGIN_BODY {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the login request is too big",
        );
    }
    let limited = auth
        .limiter
        .lock()
        .expect("no panics under the limiter lock")
        .try_take(peer.ip(), Instant::now());
    if let Err(limited) = limited {
        Counters::add(&guard.counters.logins_limited);
        let (retry_after, first, whose) = match limited {
            Limited::Client { retry_after, first } => (retry_after, first, "from this address"),
            Limited::Everyone { retry_after, first } => (retry_after, first, "on this server"),
        };
        let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        if first {
            tracing::warn!(%peer, "too many login attempts {whose}: refusing for {seconds} s");
        }
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("too many login attempts {whose}; try again in {seconds} s"),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        return response;
    }
    let Ok(request) = serde_json::from_slice::<LoginRequest>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "send the password as JSON: {\"password\": \"…\"}",
        );
    };
    let Ok(_permit) = auth.checks.acquire().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let right = matches!(
        tokio::task::spawn_blocking(move || password.verify(&request.password)).await,
        Ok(true)
    );
    if !right {
        Counters::add(&guard.counters.logins_wrong);
        tracing::warn!(%peer, "web login refused: wrong password");
        return error(StatusCode::UNAUTHORIZED, "wrong password");
    }
    let value = match auth.open_session() {
        Ok(value) => value,
        Err(why) => {
            tracing::error!("cannot open a session: {why:#}");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot open a session");
        }
    };
    Counters::add(&guard.counters.logins_ok);
    tracing::info!(%peer, "web client logged in");
    let mut response = Json(json!({
        "password_required": true,
        "authenticated": true,
        "expires_in": auth.ttl.as_secs(),
    }))
    .into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&cookie_name(&headers), &value, auth.ttl, guard.settings.tls),
    );
    no_store(response)
}

async fn logout(
    State(guard): State<Arc<Guard>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = refuse_cross_site(&guard, &headers, peer) {
        return refusal;
    }
    guard.auth.close_session(&headers);
    tracing::info!(%peer, "web client logged out");
    let mut response = Json(json!({
        "password_required": guard.auth.required(),
        "authenticated": false,
    }))
    .into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie(
            &cookie_name(&headers),
            "",
            Duration::ZERO,
            guard.settings.tls,
        ),
    );
    no_store(response)
}

/// Whether this browser may write: what the dashboard asks before enabling its controls.
async fn session(State(guard): State<Arc<Guard>>, headers: HeaderMap) -> Response {
    let auth = &guard.auth;
    let session = auth.session_of(&headers);
    no_store(
        Json(json!({
            "password_required": auth.required(),
            "authenticated": session.is_some(),
            "can_write": !auth.required() || session.is_some(),
            "expires_in": session.map(|(_, left)| left.as_secs()),
        }))
        .into_response(),
    )
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("ascii"));
        }
        map
    }

    #[test]
    fn a_client_gets_its_attempts_then_waits_and_everyone_shares_a_larger_budget() {
        let mut limiter = Limiter::new(3);
        let now = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        for _ in 0..3 {
            assert_eq!(limiter.try_take(a, now), Ok(()));
        }
        let Err(Limited::Client { retry_after, first }) = limiter.try_take(a, now) else {
            panic!("the fourth attempt is limited");
        };
        assert!(first);
        assert!(retry_after > Duration::from_secs(19) && retry_after <= Duration::from_secs(20));
        assert!(matches!(
            limiter.try_take(a, now),
            Err(Limited::Client { first: false, .. })
        ));
        // One token comes back every 20 s.
        assert_eq!(limiter.try_take(a, now + Duration::from_secs(21)), Ok(()));

        // 30 attempts a minute for everyone, shared by all addresses.
        let later = now + Duration::from_secs(21);
        let mut others = (1..=255u8).map(|n| IpAddr::from([198, 51, 100, n]));
        let mut allowed = 0;
        loop {
            let ip = others.next().expect("addresses left");
            match limiter.try_take(ip, later) {
                Ok(()) => allowed += 1,
                Err(Limited::Everyone { first, .. }) => {
                    assert!(first);
                    break;
                }
                Err(other) => panic!("{other:?}"),
            }
        }
        // The global bucket was full again (30) after the 21 s, less the one attempt then.
        assert_eq!(allowed, 29);
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(Limiter::key(a), Limiter::key(b));
        assert_ne!(Limiter::key(a), Limiter::key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(
            Limiter::key(mapped),
            "192.0.2.7".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn sessions_are_found_by_cookie_and_only_with_the_right_secret() {
        let auth = Auth::new(
            Some(Verifier::from_phc("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g").expect("phc")),
            Duration::from_secs(60),
            5,
        );
        let value = auth.open_session().expect("a session");
        let good = headers(&[("cookie", &format!("other=1; aiot_session_8080={value}"))]);
        let Access::Session(id) = auth.access(&good) else {
            panic!("logged in");
        };
        assert!(auth.may_write(&Access::Session(id.clone())));
        let (id_part, _) = value.split_once('.').expect("id.secret");
        let forged = headers(&[("cookie", &format!("aiot_session={id_part}.AAAA"))]);
        assert_eq!(auth.access(&forged), Access::Anonymous);
        assert_eq!(auth.access(&HeaderMap::new()), Access::Anonymous);
        auth.close_session(&good);
        assert!(!auth.may_write(&Access::Session(id)));
        assert_eq!(auth.access(&good), Access::Anonymous);
    }

    #[test]
    fn cookies_are_named_by_port_and_flagged() {
        assert_eq!(
            cookie_name(&headers(&[("host", "127.0.0.1:8080")])),
            "aiot_session_8080"
        );
        assert_eq!(
            cookie_name(&headers(&[("host", "[::1]:8000")])),
            "aiot_session_8000"
        );
        assert_eq!(
            cookie_name(&headers(&[("host", "example.org")])),
            "aiot_session"
        );
        let plain = cookie("aiot_session", "v", Duration::from_secs(5), false);
        assert_eq!(
            plain,
            "aiot_session=v; Max-Age=5; Path=/; HttpOnly; SameSite=Strict"
        );
        let tls = cookie("aiot_session", "v", Duration::from_secs(5), true);
        assert!(tls.to_str().expect("ascii").ends_with("; Secure"));
    }
}
