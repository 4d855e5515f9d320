//! Who may write through the web: the password file (`aiot password hash`), `/api/login`
//! with its rate limit and cookie, writes on `/ws` refused without a session (on a gateway and
//! on the broker) and reaching a real websocket node with one, the Origin check of `/ws` and
//! `/node`, and the per-client limits. Real processes, real sockets.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    Aiot, HttpResponse, Peer, TIMEOUT, broker_with_keys_args, config_file, gateway, key_file,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

const PASSWORD: &str = "correct horse battery";

/// Runs `aiot password hash` with `stdin` as its input.
fn hash_command(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aiot"))
        .args(["password", "hash"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("aiot runs");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stdin.as_bytes())
        .expect("password written");
    child.wait_with_output().expect("aiot exits")
}

/// A password file for [`PASSWORD`] in `dir`.
fn password_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("web-password");
    let path = path.to_str().expect("utf-8").to_owned();
    let output = hash_command(&["--file", &path], &format!("{PASSWORD}\n"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    path
}

/// One HTTP/1.1 request with a body; the answer read to the end.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
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
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

async fn login(addr: SocketAddr, password: &str) -> HttpResponse {
    http(
        addr,
        "POST",
        "/api/login",
        &[("Content-Type", "application/json")],
        &json!({ "password": password }).to_string(),
    )
    .await
}

/// The `name=value` part of a response's `Set-Cookie`.
fn cookie_of(response: &HttpResponse) -> String {
    let set = response.header("set-cookie").expect("a Set-Cookie header");
    set.split(';').next().expect("name=value").to_owned()
}

/// Opens `/ws` (or `/node`) with extra request headers; the handshake's status, and the
/// socket when it opened.
async fn open(url: &str, headers: &[(&str, &str)]) -> (u16, Option<Peer>) {
    let mut request = url.into_client_request().expect("request");
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            value.parse().expect("header value"),
        );
    }
    match tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake in time")
    {
        Ok((ws, response)) => (response.status().as_u16(), Some(Peer { ws })),
        Err(tungstenite::Error::Http(response)) => (response.status().as_u16(), None),
        Err(other) => panic!("unexpected handshake error: {other}"),
    }
}

/// A web client as aiot's dashboard is one: its hello says `"aiot": 1`.
async fn aiot_client(web: SocketAddr, headers: &[(&str, &str)]) -> Peer {
    let (status, peer) = open(&format!("ws://{web}/ws"), headers).await;
    assert_eq!(status, 101);
    let mut peer = peer.expect("open");
    peer.send_json(&json!({"type": "new", "data": "client", "aiot": 1}))
        .await;
    peer
}

/// Waits until the client knows a node with an `led`, and returns the node's uid.
async fn led_node(client: &mut Peer) -> String {
    let update = client
        .wait_for(TIMEOUT, |m| m["type"] == "update" && m["endpoint"] == "led")
        .await;
    update["uid"].as_str().expect("uid").to_owned()
}

fn led_write(uid: &str, payload: &str) -> Value {
    json!({"type": "update", "data": {"uid": uid, "endpoint": "led", "payload": payload}})
}

/// Asserts that the node is sent nothing for a while: the write had no effect.
async fn node_gets_nothing(node: &mut Peer) {
    assert_eq!(
        node.next_json(Duration::from_millis(700)).await,
        None,
        "the node must not be written to"
    );
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
}

#[tokio::test]
async fn on_a_gateway_writes_need_a_login_and_reach_the_node_with_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = password_file(&dir);
    let (gateway, node_addr, web) = gateway(None, &["--web-password-file", &file]);
    gateway.wait_for_log(&["web writes need a login"], TIMEOUT);
    let mut node = Peer::node(node_addr).await;
    node.send_json(&json!({"type": "update", "data": {"led": "0"}}))
        .await;

    // Anonymous: reading works, writing does not, and aiot's dashboard is told why.
    let mut anonymous = aiot_client(web, &[]).await;
    let uid = led_node(&mut anonymous).await;
    for _ in 0..2 {
        anonymous.send_json(&led_write(&uid, "1")).await;
        let denied = anonymous.wait_for(TIMEOUT, |m| m["type"] == "denied").await;
        assert_eq!(denied["uid"], uid.as_str());
        assert_eq!(denied["endpoint"], "led");
        assert_eq!(denied["reason"], "unauthorized");
        assert!(denied["message"].as_str().expect("text").contains("Log in"));
    }
    node_gets_nothing(&mut node).await;

    // A pyaiot dashboard (no "aiot" in its hello) is told nothing: the write has no effect.
    let mut pyaiot = Peer::client(&format!("ws://{web}/ws")).await;
    led_node(&mut pyaiot).await;
    pyaiot.send_json(&led_write(&uid, "1")).await;
    node_gets_nothing(&mut node).await;
    assert_eq!(
        pyaiot.next_json(Duration::from_millis(300)).await,
        None,
        "no message of a type pyaiot does not know"
    );

    let session = http(web, "GET", "/api/session", &[], "").await.json();
    assert_eq!(session["password_required"], true);
    assert_eq!(session["authenticated"], false);
    assert_eq!(session["can_write"], false);

    let wrong = login(web, "not the password").await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"], "wrong password");
    assert!(wrong.header("set-cookie").is_none());

    let right = login(web, PASSWORD).await;
    assert_eq!(right.status, 200, "{}", right.text());
    let set_cookie = right.header("set-cookie").expect("a cookie").to_owned();
    let attributes: Vec<&str> = set_cookie.split("; ").skip(1).collect();
    assert_eq!(
        attributes,
        ["Max-Age=43200", "Path=/", "HttpOnly", "SameSite=Strict"],
        "no Secure over plain HTTP: {set_cookie}"
    );
    let cookie = cookie_of(&right);
    assert!(
        cookie.starts_with(&format!("aiot_session_{}=", web.port())),
        "{cookie}"
    );
    assert_eq!(right.header("cache-control"), Some("no-store"));
    let session = http(web, "GET", "/api/session", &[("Cookie", &cookie)], "")
        .await
        .json();
    assert_eq!(session["authenticated"], true);
    assert_eq!(session["can_write"], true);
    assert!(session["expires_in"].as_u64().expect("seconds") > 43000);

    // With the cookie the same write reaches the node.
    let mut member = aiot_client(web, &[("Cookie", &cookie)]).await;
    led_node(&mut member).await;
    member.send_json(&led_write(&uid, "1")).await;
    assert_eq!(
        node.next_json(TIMEOUT).await,
        Some(json!({"endpoint": "led", "payload": "1"}))
    );

    // After a logout the open connection cannot write any more.
    let out = http(
        web,
        "POST",
        "/api/logout",
        &[("Cookie", &cookie), ("Content-Type", "application/json")],
        "{}",
    )
    .await;
    assert_eq!(out.status, 200);
    assert!(
        out.header("set-cookie")
            .expect("the cookie is cleared")
            .contains("Max-Age=0")
    );
    member.send_json(&led_write(&uid, "0")).await;
    let denied = member.wait_for(TIMEOUT, |m| m["type"] == "denied").await;
    assert_eq!(denied["reason"], "unauthorized");
    node_gets_nothing(&mut node).await;
    let session = http(web, "GET", "/api/session", &[("Cookie", &cookie)], "")
        .await
        .json();
    assert_eq!(session["authenticated"], false);

    let metrics = http(web, "GET", "/metrics", &[], "").await.text();
    assert_eq!(
        metric(
            &metrics,
            "aiot_web_writes_refused_total{reason=\"unauthorized\"}"
        ),
        4
    );
    assert_eq!(metric(&metrics, "aiot_web_logins_total{result=\"ok\"}"), 1);
    assert_eq!(
        metric(&metrics, "aiot_web_logins_total{result=\"wrong_password\"}"),
        1
    );
    // Logged once per connection, not once per write.
    assert_eq!(gateway.count_log("write refused: not logged in"), 3);
}

#[tokio::test]
async fn on_the_broker_writes_need_a_login_too() {
    let (broker, broker_addr, keys) = broker_with_keys_args(&["--web-password", PASSWORD]);
    broker.wait_for_log(&["web writes need a login"], TIMEOUT);
    let (gateway, node_addr, _web) = gateway(Some((broker_addr, &key_file(&keys))), &[]);
    gateway.wait_for_log(&["connected to broker"], TIMEOUT);
    // The gateway itself has no password: it says so.
    gateway.wait_for_log(&["no web password set"], TIMEOUT);
    let mut node = Peer::node(node_addr).await;
    node.send_json(&json!({"type": "update", "data": {"led": "0"}}))
        .await;

    let mut anonymous = aiot_client(broker_addr, &[]).await;
    let uid = led_node(&mut anonymous).await;
    anonymous.send_json(&led_write(&uid, "1")).await;
    anonymous
        .wait_for(TIMEOUT, |m| {
            m["type"] == "denied" && m["reason"] == "unauthorized"
        })
        .await;
    node_gets_nothing(&mut node).await;

    let right = login(broker_addr, PASSWORD).await;
    assert_eq!(right.status, 200, "{}", right.text());
    let cookie = cookie_of(&right);
    let mut member = aiot_client(broker_addr, &[("Cookie", &cookie)]).await;
    led_node(&mut member).await;
    member.send_json(&led_write(&uid, "1")).await;
    assert_eq!(
        node.next_json(TIMEOUT).await,
        Some(json!({"endpoint": "led", "payload": "1"}))
    );
}

#[tokio::test]
async fn login_attempts_are_rate_limited_with_a_clear_429() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = password_file(&dir);
    let config = config_file(&dir, "[web]\nlogin_attempts_per_minute = 3\n");
    let (gateway, _, web) = gateway(None, &["--config", &config, "--web-password-file", &file]);
    for _ in 0..3 {
        assert_eq!(login(web, "wrong password!").await.status, 401);
    }
    // Even the right password waits now.
    for _ in 0..3 {
        let limited = login(web, PASSWORD).await;
        assert_eq!(limited.status, 429);
        let retry: u64 = limited
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("seconds");
        assert!((1..=20).contains(&retry), "{retry}");
        let error = limited.json()["error"].as_str().expect("text").to_owned();
        assert!(error.contains("too many login attempts"), "{error}");
        assert!(limited.header("set-cookie").is_none());
    }
    assert_eq!(
        gateway.count_log("too many login attempts"),
        1,
        "logged once"
    );
    let metrics = http(web, "GET", "/metrics", &[], "").await.text();
    assert_eq!(
        metric(&metrics, "aiot_web_logins_total{result=\"rate_limited\"}"),
        3
    );
    assert_eq!(
        metric(&metrics, "aiot_web_logins_total{result=\"wrong_password\"}"),
        3
    );
}

#[tokio::test]
async fn sessions_expire() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_file(&dir, "[web]\nsession_secs = 1\n");
    let (_gateway, node_addr, web) =
        gateway(None, &["--config", &config, "--web-password", PASSWORD]);
    let mut node = Peer::node(node_addr).await;
    node.send_json(&json!({"type": "update", "data": {"led": "0"}}))
        .await;
    let right = login(web, PASSWORD).await;
    assert!(
        right
            .header("set-cookie")
            .expect("cookie")
            .contains("Max-Age=1;")
    );
    let cookie = cookie_of(&right);
    let mut client = aiot_client(web, &[("Cookie", &cookie)]).await;
    let uid = led_node(&mut client).await;
    client.send_json(&led_write(&uid, "1")).await;
    assert_eq!(
        node.next_json(TIMEOUT).await,
        Some(json!({"endpoint": "led", "payload": "1"}))
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    client.send_json(&led_write(&uid, "0")).await;
    client
        .wait_for(TIMEOUT, |m| {
            m["type"] == "denied" && m["reason"] == "unauthorized"
        })
        .await;
    node_gets_nothing(&mut node).await;
}

#[tokio::test]
async fn cross_origin_websockets_are_refused_before_the_upgrade() {
    let (gateway, node_addr, web) =
        gateway(None, &["--allowed-origin", "http://dash.example:8080"]);
    let ws = format!("ws://{web}/ws");
    let evil = [("Origin", "http://evil.example")];
    for _ in 0..2 {
        assert_eq!(open(&ws, &evil).await.0, 403);
    }
    // Another port of the same host is another origin.
    let other_port = format!("http://127.0.0.1:{}", node_addr.port());
    assert_eq!(open(&ws, &[("Origin", &other_port)]).await.0, 403);
    assert_eq!(open(&ws, &[("Origin", "null")]).await.0, 403);

    let same = format!("http://{web}");
    assert_eq!(open(&ws, &[("Origin", &same)]).await.0, 101);
    assert_eq!(open(&ws, &[]).await.0, 101, "no Origin: not a browser");
    assert_eq!(
        open(&ws, &[("Origin", "http://dash.example:8080")]).await.0,
        101
    );

    // The nodes' endpoint: browsers from elsewhere are refused, nodes (no Origin) are not.
    let node_url = format!("ws://{node_addr}/node");
    assert_eq!(open(&node_url, &evil).await.0, 403);
    Peer::node(node_addr).await;

    // A login from another site is refused too.
    let cross_login = http(
        web,
        "POST",
        "/api/login",
        &[
            ("Content-Type", "application/json"),
            ("Origin", "http://evil.example"),
        ],
        "{\"password\":\"x\"}",
    )
    .await;
    assert_eq!(
        cross_login.status, 404,
        "no password here: nothing to log in to"
    );

    assert_eq!(
        gateway.count_log("origin=http://evil.example"),
        1,
        "each refused origin is logged once"
    );
    let metrics = http(web, "GET", "/metrics", &[], "").await.text();
    assert_eq!(metric(&metrics, "aiot_web_origins_refused_total"), 5);
}

#[tokio::test]
async fn the_broker_checks_origins_and_logins_check_them_too() {
    let (_broker, broker_addr, _keys) = broker_with_keys_args(&["--web-password", PASSWORD]);
    let ws = format!("ws://{broker_addr}/ws");
    assert_eq!(open(&ws, &[("Origin", "http://evil.example")]).await.0, 403);
    assert_eq!(
        open(&ws, &[("Origin", &format!("http://{broker_addr}"))])
            .await
            .0,
        101
    );
    let cross_login = http(
        broker_addr,
        "POST",
        "/api/login",
        &[
            ("Content-Type", "application/json"),
            ("Origin", "http://evil.example"),
        ],
        &json!({ "password": PASSWORD }).to_string(),
    )
    .await;
    assert_eq!(cross_login.status, 403);
    assert!(cross_login.header("set-cookie").is_none());
    // A form cannot log in: only JSON is taken.
    let form = http(
        broker_addr,
        "POST",
        "/api/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &format!("password={PASSWORD}"),
    )
    .await;
    assert_eq!(form.status, 415);
}

#[tokio::test]
async fn without_a_password_writes_are_open_and_a_warning_says_so() {
    let (gateway, node_addr, web) = gateway(None, &[]);
    gateway.wait_for_log(&["WARN", "no web password set"], TIMEOUT);
    let mut node = Peer::node(node_addr).await;
    node.send_json(&json!({"type": "update", "data": {"led": "0"}}))
        .await;
    let mut client = Peer::client(&format!("ws://{web}/ws")).await;
    let uid = led_node(&mut client).await;
    client.send_json(&led_write(&uid, "1")).await;
    assert_eq!(
        node.next_json(TIMEOUT).await,
        Some(json!({"endpoint": "led", "payload": "1"}))
    );
    let session = http(web, "GET", "/api/session", &[], "").await.json();
    assert_eq!(session["password_required"], false);
    assert_eq!(session["can_write"], true);
    assert_eq!(login(web, PASSWORD).await.status, 404);
}

#[tokio::test]
async fn web_clients_are_limited_in_number_rate_and_write_size() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_file(
        &dir,
        "[web]\nmax_clients = 2\nclient_messages_per_sec = 5\nmax_write_bytes = 64\n",
    );
    let (gateway, node_addr, web) = gateway(None, &["--config", &config]);
    let mut node = Peer::node(node_addr).await;
    node.send_json(&json!({"type": "update", "data": {"led": "0", "text": "hi"}}))
        .await;
    let mut client = aiot_client(web, &[]).await;
    let uid = led_node(&mut client).await;
    let _second = aiot_client(web, &[]).await;
    let ws = format!("ws://{web}/ws");
    assert_eq!(
        open(&ws, &[]).await.0,
        503,
        "a third client is one too many"
    );

    // A value over the size limit is refused, and the aiot client is told.
    let big = "x".repeat(100);
    client
        .send_json(
            &json!({"type": "update", "data": {"uid": uid, "endpoint": "text", "payload": big}}),
        )
        .await;
    let denied = client.wait_for(TIMEOUT, |m| m["type"] == "denied").await;
    assert_eq!(denied["reason"], "too_big");
    node_gets_nothing(&mut node).await;

    // 5 messages a second with a burst of 10: of 40 at once, the node gets at most the burst.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in 0..40 {
        client
            .send_json(&led_write(&uid, &(n % 2).to_string()))
            .await;
    }
    let mut written = 0;
    while node.next_json(Duration::from_millis(500)).await.is_some() {
        written += 1;
    }
    assert!(
        (10..=12).contains(&written),
        "{written} writes reached the node"
    );
    gateway.wait_for_log(&["sends too fast"], TIMEOUT);
    assert_eq!(gateway.count_log("sends too fast"), 1);

    let metrics = http(web, "GET", "/metrics", &[], "").await.text();
    assert_eq!(metric(&metrics, "aiot_web_clients_refused_total"), 1);
    assert_eq!(
        metric(
            &metrics,
            "aiot_web_writes_refused_total{reason=\"too_big\"}"
        ),
        1
    );
    let dropped = metric(&metrics, "aiot_web_messages_rate_limited_total");
    assert!((28..=30).contains(&dropped), "{dropped}");

    // When a client leaves, its place is free again.
    drop(client);
    let mut admitted = false;
    for _ in 0..50 {
        if open(&ws, &[]).await.0 == 101 {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted);
}

#[tokio::test]
async fn password_files_are_made_by_aiot_password_hash() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("pw");
    let path_text = path.to_str().expect("utf-8");

    let short = hash_command(&["--file", path_text], "short\n");
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 8 characters"));
    assert!(!path.exists());

    let made = hash_command(&["--file", path_text], &format!("{PASSWORD}\n"));
    assert!(made.status.success());
    let text = std::fs::read_to_string(&path).expect("written");
    assert!(text.starts_with("$argon2id$v=19$"), "{text}");
    assert!(!text.contains(PASSWORD));
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
        0o600
    );

    let again = hash_command(&["--file", path_text], &format!("{PASSWORD}\n"));
    assert!(!again.status.success(), "an existing file is kept");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let printed = hash_command(&[], &format!("{PASSWORD}\n"));
    assert!(printed.status.success());
    let printed = String::from_utf8(printed.stdout).expect("utf-8");
    assert!(printed.starts_with("$argon2id$"));
    assert_ne!(printed.trim(), text.trim(), "a fresh salt each time");

    // A file holding the password itself, not a hash, is refused with a hint.
    let plain = dir.path().join("plain");
    std::fs::write(&plain, PASSWORD).expect("written");
    let mut args = vec!["gateway"];
    args.extend_from_slice(common::GATEWAY_ON_LOOPBACK);
    args.extend(["--web-password-file", plain.to_str().expect("utf-8")]);
    let mut gateway = Aiot::spawn(&args);
    let status = gateway.wait_exit(TIMEOUT).expect("it exits");
    assert!(!status.success());
    assert!(
        gateway.log_text().contains("aiot password hash"),
        "{}",
        gateway.log_text()
    );
}
