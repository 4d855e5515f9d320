//! Helpers for tests that run the real `aiot` binary and talk to it over real sockets.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Lines read from a child's output by a thread, and a condition to wait on for new ones.
pub type Lines = Arc<(Mutex<Vec<String>>, Condvar)>;

/// Collects every line `reader` gives, until it ends.
pub fn collect_lines(reader: impl std::io::Read + Send + 'static) -> Lines {
    let lines: Lines = Arc::default();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            let (lines, changed) = &*sink;
            lines.lock().expect("lines lock").push(line);
            changed.notify_all();
        }
    });
    lines
}

/// Flags that keep a test gateway on loopback and on ephemeral ports: parallel gateways would
/// otherwise all take CoAP's 5683 and MQTT's 1883 (which a system mosquitto may hold).
pub const GATEWAY_ON_LOOPBACK: &[&str] = &[
    "--bind",
    "127.0.0.1",
    "--gateway-port",
    "0",
    "--web-port",
    "0",
    "--coap-bind",
    "127.0.0.1",
    "--coap-port",
    "0",
    "--mqtt-bind",
    "127.0.0.1",
    "--mqtt-port",
    "0",
    "--mqttsn-bind",
    "127.0.0.1",
    "--mqttsn-port",
    "0",
];

/// A running `aiot` process whose stderr (the log) is collected line by line.
pub struct Aiot {
    child: Child,
    log: Lines,
}

impl Aiot {
    pub fn spawn(args: &[&str]) -> Aiot {
        Self::spawn_env(args, &[])
    }

    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Aiot {
        let mut command = Command::new(env!("CARGO_BIN_EXE_aiot"));
        command
            .args(args)
            .env("RUST_LOG", "aiot=debug,warn")
            // CI runs as root; the server roles refuse root unless asked (tests/appliance.rs).
            .env("AIOT_ALLOW_ROOT", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("the aiot binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = collect_lines(stderr);
        Aiot { child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for a log line containing every one of `needles`, and returns it.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (lines, changed) = &*self.log;
        let mut guard = lines.lock().expect("log lock");
        loop {
            if let Some(line) = guard.iter().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no log line with {needles:?} within {timeout:?}; log:\n{}",
                guard.join("\n")
            );
            guard = changed.wait_timeout(guard, left).expect("log lock").0;
        }
    }

    pub fn count_log(&self, needle: &str) -> usize {
        let lines = self.log.0.lock().expect("log lock");
        lines.iter().filter(|l| l.contains(needle)).count()
    }

    pub fn log_text(&self) -> String {
        self.log.0.lock().expect("log lock").join("\n")
    }

    /// The address from the `listening` log line that contains `needle`.
    pub fn listening(&self, needle: &str) -> SocketAddr {
        let line = self.wait_for_log(&["listening", needle], TIMEOUT);
        let addr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in {line}"));
        addr.parse().expect("a socket address")
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal)
            .expect("signal sent");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Aiot {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A broker with a fresh key file; returns it, its address, and the key file's directory
/// (kept alive by the caller).
pub fn broker_with_keys() -> (Aiot, SocketAddr, tempfile::TempDir) {
    broker_with_keys_args(&[])
}

pub fn key_file(dir: &tempfile::TempDir) -> String {
    dir.path()
        .join("keys")
        .to_str()
        .expect("utf-8 path")
        .to_owned()
}

/// A gateway on ephemeral ports with its uplink to `broker` (if any); returns it with its
/// node and web addresses.
pub fn gateway(
    broker: Option<(SocketAddr, &str)>,
    extra: &[&str],
) -> (Aiot, SocketAddr, SocketAddr) {
    let mut args: Vec<String> = std::iter::once("gateway")
        .chain(GATEWAY_ON_LOOPBACK.iter().copied())
        .map(String::from)
        .collect();
    if let Some((addr, key_file)) = broker {
        args.extend([
            "--broker-url".into(),
            format!("ws://{addr}/gw"),
            "--key-file".into(),
            key_file.into(),
        ]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let gateway = Aiot::spawn(&refs);
    let node = gateway.listening("websocket nodes");
    let web = gateway.listening("web clients");
    (gateway, node, web)
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A websocket peer in a test: a web client, a node or a gateway.
pub struct Peer {
    pub ws: Ws,
}

impl Peer {
    pub async fn connect(url: &str) -> Peer {
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        Peer { ws }
    }

    /// A web client that has said `new`.
    pub async fn client(url: &str) -> Peer {
        let mut peer = Peer::connect(url).await;
        peer.send_json(&serde_json::json!({"type": "new", "data": "client"}))
            .await;
        peer
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// A web client's write of `payload` to `endpoint` of node `uid` (LED, text, …).
    pub async fn write(&mut self, uid: &str, endpoint: &str, payload: &str) {
        self.send_json(&serde_json::json!(
            {"type": "update", "data": {"uid": uid, "endpoint": endpoint, "payload": payload}}
        ))
        .await;
    }

    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    /// The next JSON text message, skipping pings; `None` at close or timeout.
    pub async fn next_json(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match message.ok()? {
                Message::Text(text) => {
                    return Some(serde_json::from_str(&text).expect("the server sends JSON"));
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Reads until a message matches `wanted`, and returns it; panics after `timeout` with
    /// what was seen.
    pub async fn wait_for(&mut self, timeout: Duration, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_json(left).await {
                Some(message) if wanted(&message) => return message,
                Some(message) => seen.push(message),
                None => panic!("no matching message within {timeout:?}; saw {seen:#?}"),
            }
        }
    }

    /// Reads until the server closes; returns its close frame (`None`: closed without one).
    pub async fn closed(&mut self, timeout: Duration) -> Option<CloseFrame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("the server did not close within {timeout:?}"),
                Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Close(frame)))) => return frame,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

/// Matches an `update` of `endpoint` (of node `uid`, if given) with `data`.
pub fn is_update(message: &Value, uid: Option<&str>, endpoint: &str, data: &Value) -> bool {
    message["type"] == "update"
        && message["endpoint"] == endpoint
        && &message["data"] == data
        && uid.is_none_or(|uid| message["uid"] == uid)
}

/// Like [`broker_with_keys`], with extra arguments for the broker (e.g. `--config FILE`).
pub fn broker_with_keys_args(extra: &[&str]) -> (Aiot, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    let status = Command::new(env!("CARGO_BIN_EXE_aiot"))
        .args(["keys", "generate", "--key-file"])
        .arg(&keys)
        .stdout(Stdio::null())
        .status()
        .expect("keys generate runs");
    assert!(status.success());
    let mut args = vec![
        "broker",
        "--bind",
        "127.0.0.1",
        "--broker-port",
        "0",
        "--key-file",
        keys.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    let broker = Aiot::spawn(&args);
    let addr = broker.listening("broker");
    (broker, addr, dir)
}

/// Writes `text` as a config file in `dir` and returns its path, for `--config`.
pub fn config_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("aiot.toml");
    std::fs::write(&path, text).expect("config file written");
    path.to_str().expect("utf-8 path").to_owned()
}

impl Peer {
    /// A gateway on the broker's `/gw`, authenticated with the token of `key_file`, as a pyaiot
    /// gateway does it (`Sec-WebSocket-Protocol: token, <T>`).
    pub async fn gateway(broker: SocketAddr, key_file: &str) -> Peer {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::HeaderValue;
        let token = aiot::keys::Keys::load(std::path::Path::new(key_file))
            .expect("the key file loads")
            .token();
        let mut request = format!("ws://{broker}/gw")
            .into_client_request()
            .expect("a valid request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(&format!("token, {token}")).expect("a header value"),
        );
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect in time")
            .unwrap_or_else(|e| panic!("connect to {broker}/gw as a gateway: {e}"));
        Peer { ws }
    }

    /// A websocket node on a gateway's `/node`, past the gateway's `discover` request.
    pub async fn node(gateway: SocketAddr) -> Peer {
        let mut node = Peer::connect(&format!("ws://{gateway}/node")).await;
        assert_eq!(
            node.next_json(TIMEOUT).await,
            Some(serde_json::json!({"request": "discover"})),
            "the gateway asks a new node to discover"
        );
        node
    }
}

impl Aiot {
    /// Waits until at least `count` log lines contain `needle`; returns how many do.
    pub fn wait_for_count(&self, needle: &str, count: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let (lines, changed) = &*self.log;
        let mut guard = lines.lock().expect("log lock");
        loop {
            let seen = guard.iter().filter(|l| l.contains(needle)).count();
            if seen >= count {
                return seen;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{seen} log lines with {needle:?} within {timeout:?}, not {count}; log:\n{}",
                guard.join("\n")
            );
            guard = changed.wait_timeout(guard, left).expect("log lock").0;
        }
    }
}

/// An HTTP answer as a test reads it.
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A plain HTTP/1.1 GET with extra request headers: enough for testing our own server, and
/// no client library between the test and the bytes.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..line_end])
                .split(';')
                .next()
                .unwrap_or("0")
                .trim(),
            16,
        )
        .expect("hex chunk size");
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// A pyaiot-style gateway (tests/python/pyaiot_gateway.py) announcing one node; killed when
/// dropped. Its first line says how the broker took it: `connected` or `refused <status>`.
pub struct PyaiotGateway(Child, Lines);

impl PyaiotGateway {
    pub fn start(url: &str, key: &str, uid: &str) -> PyaiotGateway {
        let mut child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/pyaiot_gateway.py"
            ))
            .args([url, key, uid])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs (ci/test installs tornado and cryptography)");
        let lines = collect_lines(child.stdout.take().expect("piped"));
        PyaiotGateway(child, lines)
    }

    pub fn first_line(&self) -> String {
        let (lines, changed) = &*self.1;
        let guard = lines.lock().expect("lock");
        let (guard, _) = changed
            .wait_timeout_while(guard, TIMEOUT, |l| l.is_empty())
            .expect("lock");
        guard
            .first()
            .cloned()
            .expect("the Python gateway says something")
    }
}

impl Drop for PyaiotGateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
