//! MQTT nodes against the gateway with real peers: Debian's `mosquitto_pub`/`mosquitto_sub`
//! as a node on the gateway's embedded broker, and a real `mosquitto` as an external broker
//! (restarted mid-test, shared by two gateways). Every port is ephemeral.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Aiot, Peer, TIMEOUT};
use serde_json::{Value, json};

/// Real peers are required, as for the CoAP tests: ci/test installs Debian's `mosquitto` and
/// `mosquitto-clients`.
fn require(program: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{program} is missing (ci/test installs Debian's mosquitto and mosquitto-clients)"
    );
}

/// `mosquitto_pub` one message (QoS 1), waiting for it to finish.
fn publish(broker: SocketAddr, topic: &str, payload: &str) {
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            &broker.ip().to_string(),
            "-p",
            &broker.port().to_string(),
        ])
        .args(["-q", "1", "-t", topic, "-m", payload])
        .stdin(Stdio::null())
        .status()
        .expect("mosquitto_pub runs");
    assert!(status.success(), "mosquitto_pub {topic} failed");
}

/// A `mosquitto_sub -v` whose output lines ("topic payload") are collected.
struct Sub {
    child: Child,
    lines: common::Lines,
}

impl Sub {
    fn start(broker: SocketAddr, filter: &str) -> Sub {
        let mut child = Command::new("mosquitto_sub")
            .args([
                "-h",
                &broker.ip().to_string(),
                "-p",
                &broker.port().to_string(),
            ])
            .args(["-q", "1", "-v", "-t", filter])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub runs");
        let stdout = child.stdout.take().expect("piped");
        let lines = common::collect_lines(stdout);
        Sub { child, lines }
    }

    fn has(&self, line: &str) -> bool {
        self.lines.0.lock().expect("lock").iter().any(|l| l == line)
    }

    fn wait_for(&self, line: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let (lines, changed) = &*self.lines;
        let mut seen = lines.lock().expect("lock");
        while !seen.iter().any(|l| l == line) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {line:?} from mosquitto_sub; saw {seen:?}"
            );
            seen = changed.wait_timeout(seen, left).expect("lock").0;
        }
    }

    /// Waits until the subscription is live: publishes a marker until it comes back.
    fn ready(&self, broker: SocketAddr, topic: &str) {
        let deadline = Instant::now() + TIMEOUT;
        let line = format!("{topic} ready");
        while !self.has(&line) {
            assert!(Instant::now() < deadline, "mosquitto_sub never subscribed");
            publish(broker, topic, "ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gateway's embedded broker, from its log.
fn mqtt_addr(gateway: &Aiot) -> SocketAddr {
    gateway.listening("MQTT clients")
}

/// Debian puts the broker in /usr/sbin, which a user's PATH may lack.
fn mosquitto_bin() -> &'static str {
    if std::path::Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A real mosquitto on a loopback port, with its own config file.
struct Mosquitto {
    child: Child,
    _dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Mosquitto {
    fn start(port: u16) -> Mosquitto {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .expect("write the config");
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto runs");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + TIMEOUT;
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "mosquitto does not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Mosquitto {
            child,
            _dir: dir,
            addr,
        }
    }

    fn stop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway on ephemeral ports using the external broker at `mqtt`.
fn gateway_on(mqtt: SocketAddr) -> (Aiot, SocketAddr) {
    let port = mqtt.port().to_string();
    let gateway = Aiot::spawn(&[
        "gateway",
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
        "--mqtt-host",
        "127.0.0.1",
        "--mqtt-port",
        &port,
        "--mqttsn-port",
        "0",
    ]);
    let web = gateway.listening("web clients");
    gateway.wait_for_log(&["MQTT connected"], TIMEOUT);
    (gateway, web)
}

/// The uid of the node whose `id` is `id`, from a client's stream.
async fn uid_of(client: &mut Peer, id: &str) -> String {
    let message = client
        .wait_for(TIMEOUT, |m| {
            m["type"] == "update" && m["endpoint"] == "id" && m["data"] == id
        })
        .await;
    message["uid"].as_str().expect("uid").to_owned()
}

#[tokio::test]
async fn a_mosquitto_clients_node_is_discovered_and_its_led_switched() {
    require("mosquitto_pub");
    let (gateway, _, web) = common::gateway(None, &[]);
    let broker = mqtt_addr(&gateway);
    gateway.wait_for_log(&["MQTT connected"], TIMEOUT);
    let mut client = Peer::client(&format!("ws://{web}/ws")).await;

    let sub = Sub::start(broker, "gateway/n1/#");
    sub.ready(broker, "gateway/n1/hello");
    publish(broker, "node/check", r#"{"id":"n1"}"#);
    sub.wait_for("gateway/n1/discover resources", TIMEOUT);
    let uid = uid_of(&mut client, "n1").await;

    publish(broker, "node/n1/resources", r#"["led","temperature"]"#);
    sub.wait_for("gateway/n1/discover values", TIMEOUT);
    publish(broker, "node/n1/led", r#"{"value":"0"}"#);
    publish(broker, "node/n1/temperature", r#"{"value":"23°C"}"#);
    client
        .wait_for(TIMEOUT, |m| {
            common::is_update(m, Some(&uid), "temperature", &json!("23°C"))
        })
        .await;

    client
        .send_json(
            &json!({"type": "update", "data": {"uid": uid, "endpoint": "led", "payload": "1"}}),
        )
        .await;
    sub.wait_for("gateway/n1/led/set 1", TIMEOUT);
}

#[tokio::test]
async fn bad_payloads_and_unknown_topics_are_dropped_and_disturb_nothing() {
    require("mosquitto_pub");
    let (gateway, _, web) = common::gateway(None, &[]);
    let broker = mqtt_addr(&gateway);
    gateway.wait_for_log(&["MQTT connected"], TIMEOUT);
    let mut client = Peer::client(&format!("ws://{web}/ws")).await;
    let sub = Sub::start(broker, "gateway/good/#");
    sub.ready(broker, "gateway/good/hello");

    for (topic, payload) in [
        ("node/check", "hello"),
        ("node/check", "[]"),
        ("node/check", r#"{"id":5}"#),
        ("node/check", r#"{"id":"a/b"}"#),
        ("node/check", ""),
        ("node/ghost/resources", r#"["led"]"#),
        ("node/ghost/led", r#"{"value":"1"}"#),
        ("somewhere/else", "{}"),
        ("node/a/b/c", "{}"),
    ] {
        publish(broker, topic, payload);
    }
    // Oversize: the embedded broker refuses it (mosquitto_pub may report the cut link).
    let big = format!(r#"{{"id":"{}"}}"#, "x".repeat(100 * 1024));
    let _ = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(["-q", "1", "-t", "node/check", "-m", &big])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status();

    // A good node still works, and it is the only node.
    publish(broker, "node/check", r#"{"id":"good"}"#);
    sub.wait_for("gateway/good/discover resources", TIMEOUT);
    let uid = uid_of(&mut client, "good").await;
    publish(broker, "node/good/resources", r#"["led"]"#);
    sub.wait_for("gateway/good/discover values", TIMEOUT);
    publish(broker, "node/good/led", r#"{"value":"1"}"#);
    let update = client
        .wait_for(TIMEOUT, |m| m["type"] == "update" && m["endpoint"] == "led")
        .await;
    assert_eq!(update["uid"], uid.as_str(), "{update}");
    assert_eq!(update["data"], "1", "{update}");
    let log = gateway.log_text();
    assert!(!log.contains("MQTT connection lost"), "{log}");
    assert!(log.contains("MQTT message dropped"), "{log}");
}

#[tokio::test]
async fn the_gateway_reconnects_to_a_restarted_mosquitto_and_keeps_its_node() {
    require(mosquitto_bin());
    let port = free_port();
    let mut mosquitto = Mosquitto::start(port);
    let (gateway, web) = gateway_on(mosquitto.addr);
    let mut client = Peer::client(&format!("ws://{web}/ws")).await;
    let _node = Aiot::spawn(&[
        "node",
        "mqtt",
        "--mqtt-port",
        &port.to_string(),
        "--interval",
        "0.2",
    ]);
    let first = client
        .wait_for(TIMEOUT, |m| {
            m["type"] == "update" && m["endpoint"] == "temperature"
        })
        .await;
    let uid = first["uid"].as_str().expect("uid").to_owned();

    mosquitto.stop();
    gateway.wait_for_log(&["MQTT connection lost"], TIMEOUT);
    let mosquitto = Mosquitto::start(port);
    // Connected again, subscribed again: readings of the same node flow again.
    gateway.wait_for_count("MQTT connected", 2, TIMEOUT);
    let mut seen = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message: Value = client
            .next_json(left)
            .await
            .expect("readings after the restart");
        assert_ne!(message["type"], "out", "the node went out: {message}");
        seen.push(message.clone());
        if message["type"] == "update"
            && message["uid"] == uid
            && message["endpoint"] == "temperature"
            && gateway.count_log("MQTT connected") >= 2
            && seen.len() > 5
        {
            break;
        }
    }
    // Writes still reach the node (it reports the new value).
    client
        .send_json(
            &json!({"type": "update", "data": {"uid": uid, "endpoint": "led", "payload": "1"}}),
        )
        .await;
    client
        .wait_for(TIMEOUT, |m| {
            common::is_update(m, Some(&uid), "led", &json!("1"))
        })
        .await;
    drop(mosquitto);
}

#[tokio::test]
async fn two_gateways_share_one_mosquitto_without_kicking_each_other_off() {
    require(mosquitto_bin());
    let port = free_port();
    let mosquitto = Mosquitto::start(port);
    let (first, first_web) = gateway_on(mosquitto.addr);
    let (second, second_web) = gateway_on(mosquitto.addr);
    let _node = Aiot::spawn(&[
        "node",
        "mqtt",
        "--mqtt-port",
        &port.to_string(),
        "--interval",
        "0.2",
    ]);
    for web in [first_web, second_web] {
        let mut client = Peer::client(&format!("ws://{web}/ws")).await;
        for _ in 0..5 {
            client
                .wait_for(TIMEOUT, |m| {
                    m["type"] == "update" && m["endpoint"] == "temperature"
                })
                .await;
        }
    }
    for gateway in [&first, &second] {
        let log = gateway.log_text();
        assert!(!log.contains("MQTT connection lost"), "{log}");
        assert_eq!(gateway.count_log("MQTT connected"), 1, "{log}");
    }
}

#[tokio::test]
async fn the_demo_s_simulated_mqtt_node_reaches_the_central_broker() {
    let demo = Aiot::spawn(&[
        "demo",
        "--broker-port",
        "0",
        "--gateway-port",
        "0",
        "--web-port",
        "0",
        "--coap-port",
        "0",
        "--mqtt-port",
        "0",
        "--nodes",
        "0",
        "--coap-nodes",
        "0",
        "--mqtt-nodes",
        "1",
        "--interval",
        "0.2",
    ]);
    let broker = demo.listening("broker");
    demo.wait_for_log(&["connected to broker"], TIMEOUT);
    let mut client = Peer::client(&format!("ws://{broker}/ws")).await;
    let protocol = client
        .wait_for(TIMEOUT, |m| {
            m["endpoint"] == "protocol" && m["data"] == "MQTT"
        })
        .await;
    let uid = protocol["uid"].as_str().expect("uid").to_owned();
    for resource in [
        "name",
        "os",
        "ip",
        "board",
        "led",
        "temperature",
        "pressure",
    ] {
        client
            .wait_for(TIMEOUT, |m| {
                m["uid"] == uid.as_str() && m["endpoint"] == resource
            })
            .await;
    }
    client
        .send_json(
            &json!({"type": "update", "data": {"uid": uid, "endpoint": "led", "payload": "1"}}),
        )
        .await;
    client
        .wait_for(TIMEOUT, |m| {
            common::is_update(m, Some(&uid), "led", &json!("1"))
        })
        .await;
}

#[tokio::test]
async fn a_silent_node_goes_out_after_max_time() {
    require("mosquitto_pub");
    let (gateway, _, web) = common::gateway(None, &["--max-time", "1"]);
    let broker = mqtt_addr(&gateway);
    gateway.wait_for_log(&["MQTT connected"], TIMEOUT);
    let mut client = Peer::client(&format!("ws://{web}/ws")).await;
    publish(broker, "node/check", r#"{"id":"quiet"}"#);
    let uid = uid_of(&mut client, "quiet").await;
    client
        .wait_for(TIMEOUT, |m| m["type"] == "out" && m["uid"] == uid.as_str())
        .await;
    // It comes back as a new node at its next check.
    publish(broker, "node/check", r#"{"id":"quiet"}"#);
    let again = uid_of(&mut client, "quiet").await;
    assert_ne!(again, uid);
}
