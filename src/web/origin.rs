//! The `Origin` check of websocket upgrades (`/ws`, `/node`): a browser page from another
//! site must not drive our nodes or read them through the visitor's browser (cross-site
//! websocket hijacking). Browsers always send `Origin`; nodes, gateways and scripts do not,
//! and are let through.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::security::{Counters, Guard};

/// Refused origins remembered for logging once each; later ones are counted, not logged.
const MAX_LOGGED: usize = 256;

#[derive(Debug)]
pub struct OriginPolicy {
    any: bool,
    allowed: HashSet<(String, String, u16)>,
    logged: Mutex<HashSet<String>>,
}

impl OriginPolicy {
    /// `allowed`: origins like `https://dash.example` or `http://10.0.0.5:8080`, or `*`.
    /// Entries that do not parse are ignored here; the config check refuses them earlier.
    pub fn new(allowed: &[String]) -> OriginPolicy {
        OriginPolicy {
            any: allowed.iter().any(|o| o.trim() == "*"),
            allowed: allowed.iter().filter_map(|o| parse_origin(o)).collect(),
            logged: Mutex::new(HashSet::new()),
        }
    }

    /// `Ok` when the request has no `Origin`, its origin is the page's own (same host and
    /// port as `Host`), or allowed; otherwise the refused origin.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        if self.any {
            return Ok(());
        }
        let text = String::from_utf8_lossy(origin.as_bytes()).into_owned();
        let Some(parsed) = parse_origin(&text) else {
            return Err(text);
        };
        if self.allowed.contains(&parsed) {
            return Ok(());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(split_host_port);
        match host {
            Some((host, port)) if host.eq_ignore_ascii_case(&parsed.1) => {
                if port.unwrap_or(default_port(&parsed.0)) == parsed.2 {
                    Ok(())
                } else {
                    Err(text)
                }
            }
            _ => Err(text),
        }
    }

    /// Logs a refused origin the first time it is seen.
    pub fn log_refusal(&self, origin: &str, peer: SocketAddr, what: &str) {
        let mut logged = self.logged.lock().expect("no panics under the logged lock");
        if logged.len() >= MAX_LOGGED || logged.contains(origin) {
            return;
        }
        logged.insert(origin.to_owned());
        tracing::warn!(
            %peer,
            %origin,
            "refused {what} from another origin (allow it with --allowed-origin); further refusals of this origin are counted, not logged"
        );
    }
}

fn default_port(scheme: &str) -> u16 {
    match scheme {
        "https" | "wss" => 443,
        _ => 80,
    }
}

/// `(scheme, host, port)` of an origin like `http://[::1]:8080`, lowercase, with the
/// scheme's default port filled in. `null` and anything with a path do not parse.
pub fn parse_origin(text: &str) -> Option<(String, String, u16)> {
    let text = text.trim().to_ascii_lowercase();
    let (scheme, rest) = text.split_once("://")?;
    if !matches!(scheme, "http" | "https" | "ws" | "wss") || rest.is_empty() {
        return None;
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    let (host, port) = split_host_port(rest);
    let valid_host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => {
            !v6.is_empty()
                && v6
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        }
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
        }
    };
    // Whatever follows the host must be exactly `:port` (no junk, no leading zeros).
    let port_len = port.map_or(0, |p| 1 + p.to_string().len());
    if !valid_host || rest.len() != host.len() + port_len {
        return None;
    }
    let scheme = match scheme {
        "ws" => "http",
        "wss" => "https",
        other => other,
    };
    Some((
        scheme.to_owned(),
        host.to_owned(),
        port.unwrap_or(default_port(scheme)),
    ))
}

/// `host[:port]` or `[v6][:port]` split; the host keeps an IPv6 address's brackets.
pub fn split_host_port(text: &str) -> (&str, Option<u16>) {
    if text.starts_with('[') {
        return match text.find(']') {
            Some(end) => {
                let port = text[end + 1..]
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok());
                (&text[..=end], port)
            }
            None => (text, None),
        };
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (text, None),
        },
        _ => (text, None),
    }
}

/// `router` with the origin check on each of its routes (its websocket routes, `/ws` or
/// `/node`).
pub fn guarded(router: axum::Router, guard: Arc<Guard>) -> axum::Router {
    router.route_layer(axum::middleware::from_fn_with_state(guard, require_allowed))
}

/// Middleware for websocket routes: a cross-origin upgrade gets 403 before any upgrade.
pub async fn require_allowed(
    State(guard): State<Arc<Guard>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if let Err(origin) = guard.origins.check(request.headers()) {
        Counters::add(&guard.counters.origins_refused);
        guard.origins.log_refusal(
            &origin,
            peer,
            &format!("a websocket on {}", request.uri().path()),
        );
        return (
            StatusCode::FORBIDDEN,
            format!("websocket refused: origin {origin} is not allowed here"),
        )
            .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn request(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).expect("ascii"));
        if let Some(origin) = origin {
            headers.insert(
                header::ORIGIN,
                HeaderValue::from_str(origin).expect("ascii"),
            );
        }
        headers
    }

    #[test]
    fn same_origin_and_no_origin_pass_other_origins_do_not() {
        let policy = OriginPolicy::new(&[]);
        for (origin, host) in [
            (None, "127.0.0.1:8080"),
            (Some("http://127.0.0.1:8080"), "127.0.0.1:8080"),
            (Some("http://LOCALHOST:8080"), "localhost:8080"),
            (Some("http://[::1]:8000"), "[::1]:8000"),
            (Some("http://example.org"), "example.org"),
            (Some("http://example.org"), "example.org:80"),
            (Some("https://example.org"), "example.org"),
        ] {
            assert_eq!(
                policy.check(&request(origin, host)),
                Ok(()),
                "{origin:?} {host}"
            );
        }
        for (origin, host) in [
            ("http://evil.example", "127.0.0.1:8080"),
            ("http://127.0.0.1:8000", "127.0.0.1:8080"),
            ("https://example.org", "example.org:80"),
            ("null", "127.0.0.1:8080"),
            ("http://127.0.0.1:8080.evil.example", "127.0.0.1:8080"),
        ] {
            assert_eq!(
                policy.check(&request(Some(origin), host)),
                Err(origin.to_owned()),
                "{origin} {host}"
            );
        }
    }

    #[test]
    fn allowlisted_origins_pass() {
        let policy = OriginPolicy::new(&[
            "http://dash.example:8080".into(),
            "https://ops.example/".into(),
        ]);
        let host = "gateway.local:8080";
        assert_eq!(
            policy.check(&request(Some("http://dash.example:8080"), host)),
            Ok(())
        );
        assert_eq!(
            policy.check(&request(Some("https://ops.example"), host)),
            Ok(())
        );
        assert!(
            policy
                .check(&request(Some("http://ops.example"), host))
                .is_err()
        );
        let any = OriginPolicy::new(&["*".into()]);
        assert_eq!(any.check(&request(Some("http://x.example"), host)), Ok(()));
    }

    #[test]
    fn origins_parse_strictly() {
        assert_eq!(
            parse_origin("HTTP://Example.org:8080"),
            Some(("http".into(), "example.org".into(), 8080))
        );
        assert_eq!(
            parse_origin("wss://[::1]"),
            Some(("https".into(), "[::1]".into(), 443))
        );
        for bad in [
            "null",
            "example.org",
            "ftp://x",
            "http://",
            "http://x/path",
            "http://u@x",
            // Found by the web_headers fuzz target: junk after the host's colon.
            "wss://8~:\t,",
            "http://x:80:80",
            "http://[::1]x",
            "http://[zz]",
            "http://x:0080",
        ] {
            assert_eq!(parse_origin(bad), None, "{bad}");
        }
    }
}
