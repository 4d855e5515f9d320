//! The gateway's websocket handshake with a broker, done by hand.
//!
//! tungstenite fails a client handshake when it offered subprotocols and the server selected
//! none (RFC 6455 lets a client do that, it does not make it). pyaiot's broker (tornado) never
//! selects one, so a tungstenite handshake could not reach it. We write the upgrade request,
//! check the answer ourselves, and hand the socket to tokio-tungstenite for framing.
//! `wss://` runs the same handshake inside TLS (see [`crate::tls`]).

use std::time::Duration;

use axum::http::Uri;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// Largest HTTP answer to an upgrade request we read; a broker's is a few hundred bytes.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// The uplink's byte stream: plain TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Stream = Box<dyn Io>;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("invalid broker URL '{0}': expected ws://host[:port]/path or wss://host[:port]/path")]
    Url(String),
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("connection failed during the handshake: {0}")]
    Io(std::io::Error),
    /// A TLS failure, in words (see [`crate::tls::explain_client`]).
    #[error("{0}")]
    Tls(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("the broker refused our key (HTTP 401): check that --key-file holds the broker's keys")]
    Unauthorized,
    #[error("the broker answered HTTP {0} instead of switching to websocket")]
    Status(u16),
    #[error("the broker's answer is not a valid websocket handshake: {0}")]
    Invalid(&'static str),
}

/// Where to connect, taken apart once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host as it goes in the `Host` header (IPv6 literals keep their brackets).
    host_header: String,
    /// Host as it goes to the resolver (no brackets).
    host: String,
    port: u16,
    path: String,
    /// `wss://`.
    pub tls: bool,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, HandshakeError> {
        let invalid = || HandshakeError::Url(url.to_owned());
        let uri: Uri = url.parse().map_err(|_| invalid())?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(invalid()),
        };
        let authority = uri.authority().ok_or_else(invalid)?;
        let host_header = authority.as_str().to_owned();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() || host_header.contains('@') {
            return Err(invalid());
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        Ok(Target {
            host_header,
            host,
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            path,
            tls,
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "wss" } else { "ws" };
        write!(f, "{scheme}://{}{}", self.host_header, self.path)
    }
}

/// A second handle on an uplink's TCP socket, to end a connection given up on with a reset.
///
/// Closed the ordinary way, a connection whose peer went silent keeps its unacknowledged
/// messages queued in the kernel, which retransmits them and its FIN for minutes. Should its
/// path come back after the gateway's next connection has replayed the table, the broker gets
/// those stale messages last: a queued `new` takes the node back to the dead connection, whose
/// end then drops the node (found by `tests/faults.rs`). A reset discards the queue.
pub struct Abort(socket2::Socket);

impl Abort {
    /// Makes the socket's last close a reset (`SO_LINGER` 0), whichever handle closes last.
    pub fn reset(self) {
        if let Err(error) = self.0.set_linger(Some(Duration::ZERO)) {
            tracing::debug!(%error, "cannot make the dead uplink's close a reset");
        }
    }
}

/// Connects and upgrades, offering `subprotocols` (pyaiot: `token, <T>`), all within `timeout`.
/// `tls` is used for a `wss://` target.
pub async fn connect(
    target: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    subprotocols: &str,
    config: WebSocketConfig,
    timeout: Duration,
) -> Result<(WebSocketStream<Stream>, Abort), HandshakeError> {
    tokio::time::timeout(timeout, connect_inner(target, tls, subprotocols, config))
        .await
        .map_err(|_| HandshakeError::Timeout(timeout))?
}

/// An I/O error during the handshake; a TLS one said in words.
fn io_error(error: std::io::Error) -> HandshakeError {
    match crate::tls::explain_client(&error) {
        Some(words) => HandshakeError::Tls(words),
        None => HandshakeError::Io(error),
    }
}

async fn connect_inner(
    target: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    subprotocols: &str,
    config: WebSocketConfig,
) -> Result<(WebSocketStream<Stream>, Abort), HandshakeError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(HandshakeError::Connect)?;
    // Updates are small and latency matters more than packet count.
    tcp.set_nodelay(true).map_err(HandshakeError::Io)?;
    let abort = Abort(
        socket2::SockRef::from(&tcp)
            .try_clone()
            .map_err(HandshakeError::Io)?,
    );
    let mut stream: Stream = match (target.tls, tls) {
        (false, _) => Box::new(tcp),
        (true, Some(tls)) => Box::new(
            crate::tls::connect(tls, &target.host, tcp)
                .await
                .map_err(io_error)?,
        ),
        (true, None) => {
            return Err(HandshakeError::Tls(
                "TLS: a wss:// broker but no TLS configuration".into(),
            ));
        }
    };
    let key = generate_key();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {subprotocols}\r\n\r\n",
        path = target.path,
        host = target.host_header,
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(io_error)?;

    let mut buffer = Vec::with_capacity(1024);
    let (head_len, status, accept) = loop {
        let mut chunk = [0u8; 1024];
        // With TLS 1.3 a broker that wants a client certificate says so only now.
        let read = stream.read(&mut chunk).await.map_err(io_error)?;
        if read == 0 {
            return Err(HandshakeError::Invalid(
                "connection closed before the answer ended",
            ));
        }
        buffer.extend_from_slice(&chunk[..read]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buffer) {
            Ok(httparse::Status::Complete(len)) => {
                let accept = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
                    .map(|h| h.value.to_vec());
                break (len, response.code.unwrap_or(0), accept);
            }
            Ok(httparse::Status::Partial) if buffer.len() < MAX_RESPONSE_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(HandshakeError::Invalid("answer too long"));
            }
            Err(_) => return Err(HandshakeError::Invalid("not an HTTP answer")),
        }
    };
    match status {
        101 => {}
        401 => return Err(HandshakeError::Unauthorized),
        other => return Err(HandshakeError::Status(other)),
    }
    let expected = derive_accept_key(key.as_bytes());
    if accept.as_deref() != Some(expected.as_bytes()) {
        return Err(HandshakeError::Invalid("wrong Sec-WebSocket-Accept"));
    }
    // Frames the broker sent right behind its answer are already in our buffer.
    let leftover = buffer.split_off(head_len);
    let ws =
        WebSocketStream::from_partially_read(stream, leftover, Role::Client, Some(config)).await;
    Ok((ws, abort))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_broker_urls() {
        let target = Target::parse("ws://broker.example:8000/gw").expect("valid");
        assert_eq!(target.host, "broker.example");
        assert_eq!(target.host_header, "broker.example:8000");
        assert_eq!(target.port, 8000);
        assert_eq!(target.path, "/gw");
        let v6 = Target::parse("ws://[::1]:9000/gw").expect("valid");
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.host_header, "[::1]:9000");
        assert_eq!(Target::parse("ws://host").expect("valid").port, 80);
        assert_eq!(Target::parse("ws://host").expect("valid").path, "/");
        let secure = Target::parse("wss://host/gw").expect("valid");
        assert!(secure.tls);
        assert_eq!(secure.port, 443);
        assert_eq!(secure.to_string(), "wss://host/gw");
        assert!(!Target::parse("ws://host").expect("valid").tls);
        for bad in [
            "http://host/gw",
            "host:8000",
            "ws://",
            "",
            "ws://user@host/gw",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
