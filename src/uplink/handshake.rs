//! The gateway's websocket handshake with a broker, done by hand.
//!
//! tungstenite fails a client handshake when it offered subprotocols and the server selected
//! none (RFC 6455 lets a client do that, it does not make it). pyaiot's broker (tornado) never
//! selects one, so a tungstenite handshake could not reach it. We write the upgrade request,
//! check the answer ourselves, and hand the socket to tokio-tungstenite for framing.

use std::time::Duration;

use axum::http::Uri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// Largest HTTP answer to an upgrade request we read; a broker's is a few hundred bytes.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("invalid broker URL '{0}': expected ws://host[:port]/path")]
    Url(String),
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("connection failed during the handshake: {0}")]
    Io(std::io::Error),
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
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, HandshakeError> {
        let invalid = || HandshakeError::Url(url.to_owned());
        let uri: Uri = url.parse().map_err(|_| invalid())?;
        if uri.scheme_str() != Some("ws") {
            return Err(invalid());
        }
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
            port: authority.port_u16().unwrap_or(80),
            path,
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ws://{}{}", self.host_header, self.path)
    }
}

/// Connects and upgrades, offering `subprotocols` (pyaiot: `token, <T>`), all within `timeout`.
pub async fn connect(
    target: &Target,
    subprotocols: &str,
    config: WebSocketConfig,
    timeout: Duration,
) -> Result<WebSocketStream<TcpStream>, HandshakeError> {
    tokio::time::timeout(timeout, connect_inner(target, subprotocols, config))
        .await
        .map_err(|_| HandshakeError::Timeout(timeout))?
}

async fn connect_inner(
    target: &Target,
    subprotocols: &str,
    config: WebSocketConfig,
) -> Result<WebSocketStream<TcpStream>, HandshakeError> {
    let mut stream = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(HandshakeError::Connect)?;
    // Updates are small and latency matters more than packet count.
    stream.set_nodelay(true).map_err(HandshakeError::Io)?;
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
        .map_err(HandshakeError::Io)?;

    let mut buffer = Vec::with_capacity(1024);
    let (head_len, status, accept) = loop {
        let mut chunk = [0u8; 1024];
        let read = stream.read(&mut chunk).await.map_err(HandshakeError::Io)?;
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
    Ok(WebSocketStream::from_partially_read(stream, leftover, Role::Client, Some(config)).await)
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
