//! MQTT nodes against the gateway with real peers: Debian's `mosquitto_pub`/`mosquitto_sub`
//! as a node on the gateway's embedded broker (MQTT 3.1.1 and MQTT 5), and a real `mosquitto`
//! as an external broker (restarted mid-test, shared by two gateways, with a password file,
//! with a TLS listener whose CA the test makes). Every port is ephemeral.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aiot::sim::RESOURCES as SIM_RESOURCES;
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
    publish_with(broker, &[], topic, payload);
}

/// `mosquitto_pub` with `extra` options (`-V mqttv5`, a login).
fn publish_with(broker: SocketAddr, extra: &[&str], topic: &str, payload: &str) {
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            &broker.ip().to_string(),
            "-p",
            &broker.port().to_string(),
        ])
        .args(extra)
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
    extra: Vec<String>,
}

impl Sub {
    fn start(broker: SocketAddr, filter: &str) -> Sub {
        Sub::start_with(broker, &[], filter)
    }

    /// A `mosquitto_sub` with `extra` options; `ready` publishes with them too.
    fn start_with(broker: SocketAddr, extra: &[&str], filter: &str) -> Sub {
        let mut child = Command::new("mosquitto_sub")
            .args([
                "-h",
                &broker.ip().to_string(),
                "-p",
                &broker.port().to_string(),
            ])
            .args(extra)
            .args(["-q", "1", "-v", "-t", filter])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub runs");
        let stdout = child.stdout.take().expect("piped");
        let lines = common::collect_lines(stdout);
        let extra = extra.iter().map(|s| s.to_string()).collect();
        Sub {
            child,
            lines,
            extra,
        }
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
            let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
            publish_with(broker, &extra, topic, "ready");
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
        Mosquitto::start_in(
            dir,
            port,
            &format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
        )
    }

    /// A mosquitto whose config is `listeners` (and whatever goes with them), with its files
    /// in `dir`; `port` is the one that must listen before it counts as started.
    fn start_in(dir: tempfile::TempDir, port: u16, listeners: &str) -> Mosquitto {
        let config = dir.path().join("mosquitto.conf");
        // As root, mosquitto drops to user `mosquitto`, who cannot read the test's files.
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt as _;
            m.uid() == 0
        });
        let user = if root { "user root\n" } else { "" };
        std::fs::write(
            &config,
            format!("{user}persistence false\nlog_dest stderr\n{listeners}"),
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
    let gateway = external_gateway(mqtt, &[], &[]);
    let web = gateway.listening("web clients");
    gateway.wait_for_log(&["MQTT connected"], TIMEOUT);
    (gateway, web)
}

/// A gateway on ephemeral ports, client of the external broker at `mqtt` with `extra` flags
/// and environment, not yet known to be connected.
fn external_gateway(mqtt: SocketAddr, extra: &[&str], env: &[(&str, &str)]) -> Aiot {
    let port = mqtt.port().to_string();
    let mut args = vec![
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
    ];
    args.extend_from_slice(extra);
    Aiot::spawn_env(&args, env)
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

    client.write(&uid, "led", "1").await;
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
    // The gateway subscribes to every node topic of its embedded broker at once: what the
    // ghost (which never checked in) said reached it and must have been ignored. A new
    // client is sent every node the gateway has.
    let mut late = Peer::client(&format!("ws://{web}/ws")).await;
    let mut news = 0;
    while let Some(message) = late.next_json(Duration::from_secs(2)).await {
        news += usize::from(message["type"] == "new");
        assert_ne!(message["data"], "ghost", "{message}");
    }
    assert_eq!(news, 1, "only the good node exists");
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
    client.write(&uid, "led", "1").await;
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
    for resource in SIM_RESOURCES {
        client
            .wait_for(TIMEOUT, |m| {
                m["uid"] == uid.as_str() && m["endpoint"] == resource
            })
            .await;
    }
    client.write(&uid, "led", "1").await;
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

#[tokio::test]
async fn an_mqtt5_node_on_the_embedded_broker_is_discovered_and_its_led_switched() {
    require("mosquitto_pub");
    let (gateway, _, web) = common::gateway(None, &["--mqtt5-port", "0"]);
    let broker = gateway.listening("MQTT 5 clients");
    assert_ne!(
        broker,
        mqtt_addr(&gateway),
        "one listener per protocol version"
    );
    gateway.wait_for_log(&["MQTT connected"], TIMEOUT);
    let mut client = Peer::client(&format!("ws://{web}/ws")).await;
    let v5 = ["-V", "mqttv5"];

    let sub = Sub::start_with(broker, &v5, "gateway/#");
    sub.ready(broker, "gateway/v5node/hello");
    // The gateway is an MQTT 3.1.1 client; the v5 node's messages reach it through the one
    // router both listeners share, and the gateway's reach the node.
    publish_with(broker, &v5, "node/check", r#"{"id":"v5node"}"#);
    sub.wait_for("gateway/v5node/discover resources", TIMEOUT);
    let uid = uid_of(&mut client, "v5node").await;
    publish_with(
        broker,
        &v5,
        "node/v5node/resources",
        r#"["led","pressure"]"#,
    );
    sub.wait_for("gateway/v5node/discover values", TIMEOUT);
    publish_with(
        broker,
        &v5,
        "node/v5node/pressure",
        r#"{"value":"1013hPa"}"#,
    );
    client
        .wait_for(TIMEOUT, |m| {
            common::is_update(m, Some(&uid), "pressure", &json!("1013hPa"))
        })
        .await;
    client.write(&uid, "led", "1").await;
    sub.wait_for("gateway/v5node/led/set 1", TIMEOUT);
    let log = gateway.log_text();
    assert!(!log.contains("MQTT connection lost"), "{log}");
}

/// A mosquitto that wants a login: `aiot` with password `right`, from a real password file
/// (mosquitto_passwd).
fn mosquitto_with_password() -> Mosquitto {
    require("mosquitto_passwd");
    let dir = tempfile::tempdir().expect("temp dir");
    let passwords = dir.path().join("passwords");
    let status = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["aiot", "right"])
        .stdin(Stdio::null())
        .status()
        .expect("mosquitto_passwd runs");
    assert!(status.success(), "mosquitto_passwd failed");
    let port = free_port();
    let config = format!(
        "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n",
        passwords.display()
    );
    Mosquitto::start_in(dir, port, &config)
}

#[tokio::test]
async fn mosquitto_with_a_password_file_refuses_a_wrong_password_and_takes_the_right_one() {
    require(mosquitto_bin());
    let mosquitto = mosquitto_with_password();
    let dir = tempfile::tempdir().expect("temp dir");
    let wrong = dir.path().join("pw-bad");
    std::fs::write(&wrong, "wrong\n").expect("write");
    let right = dir.path().join("pw-good");
    std::fs::write(&right, "right\n").expect("write");

    let refused = external_gateway(
        mosquitto.addr,
        &[
            "--mqtt-username",
            "aiot",
            "--mqtt-password-file",
            wrong.to_str().expect("utf-8"),
        ],
        &[],
    );
    let line = refused.wait_for_log(&["refused the login"], TIMEOUT);
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("user name and password"), "{line}");
    // It keeps trying (the password may be fixed on the broker), and says so only once.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(refused.count_log("refused the login"), 1);
    assert_eq!(refused.count_log("MQTT connected"), 0);
    // The password is on no command line.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", refused.pid())).expect("cmdline");
    assert!(!String::from_utf8_lossy(&cmdline).contains("wrong"));

    // No login at all is refused too.
    let anonymous = external_gateway(mosquitto.addr, &[], &[]);
    anonymous.wait_for_log(&["refused the login"], TIMEOUT);

    // The right password, from the file and from the environment: connected, and nodes work.
    let accepted = external_gateway(
        mosquitto.addr,
        &[
            "--mqtt-username",
            "aiot",
            "--mqtt-password-file",
            right.to_str().expect("utf-8"),
        ],
        &[],
    );
    accepted.wait_for_log(&["MQTT connected"], TIMEOUT);
    let from_env = external_gateway(
        mosquitto.addr,
        &["--mqtt-username", "aiot"],
        &[("AIOT_MQTT_PASSWORD", "right")],
    );
    from_env.wait_for_log(&["MQTT connected"], TIMEOUT);
    let web = accepted.listening("web clients");
    let mut client = Peer::client(&format!("ws://{web}/ws")).await;
    let login = ["-u", "aiot", "-P", "right"];
    publish_with(mosquitto.addr, &login, "node/check", r#"{"id":"locked"}"#);
    uid_of(&mut client, "locked").await;
    assert!(accepted.log_text().lines().all(|l| !l.contains("refused")));
}

/// A test CA and a server certificate it signed for 127.0.0.1 and localhost, as PEM files in
/// `dir`: `<name>-ca.pem`, `<name>-cert.pem`, `<name>-key.pem`.
fn make_ca(dir: &std::path::Path, name: &str) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("aiot test CA {name}"));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server certificate");
    std::fs::write(dir.join(format!("{name}-ca.pem")), ca.pem()).expect("write");
    std::fs::write(dir.join(format!("{name}-cert.pem")), server.pem()).expect("write");
    std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).expect("write");
}

#[tokio::test]
async fn the_gateway_talks_tls_to_mosquitto_with_the_right_ca_and_refuses_another_ca() {
    require(mosquitto_bin());
    let dir = tempfile::tempdir().expect("temp dir");
    make_ca(dir.path(), "good");
    make_ca(dir.path(), "other");
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_owned();
    // The gateway on the TLS listener, nodes (mosquitto_pub) on a plain one of the same broker.
    let (tls_port, plain_port) = (free_port(), free_port());
    let config = format!(
        "listener {plain_port} 127.0.0.1\nallow_anonymous true\n\
         listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
        path("good-ca.pem"),
        path("good-cert.pem"),
        path("good-key.pem"),
    );
    let files = tempfile::tempdir().expect("temp dir");
    let mosquitto = Mosquitto::start_in(files, tls_port, &config);
    let tls_addr: SocketAddr = ([127, 0, 0, 1], tls_port).into();
    let plain_addr: SocketAddr = ([127, 0, 0, 1], plain_port).into();

    let untrusting = external_gateway(tls_addr, &["--mqtt-ca", &path("other-ca.pem")], &[]);
    let line = untrusting.wait_for_log(&["TLS certificate is not trusted"], TIMEOUT);
    assert!(
        line.contains("ERROR") && line.contains("--mqtt-ca"),
        "{line}"
    );
    // TLS with the system's roots: the test CA is not among them.
    let system = external_gateway(tls_addr, &["--mqtt-tls"], &[]);
    system.wait_for_log(&["TLS certificate is not trusted"], TIMEOUT);
    // Plain MQTT to a TLS listener never gets a ConnAck.
    let plain = external_gateway(tls_addr, &[], &[]);

    let trusting = external_gateway(tls_addr, &["--mqtt-ca", &path("good-ca.pem")], &[]);
    trusting.wait_for_log(&["MQTT connected"], TIMEOUT);
    assert!(trusting.log_text().contains("tls=true"));
    let web = trusting.listening("web clients");
    let mut client = Peer::client(&format!("ws://{web}/ws")).await;
    publish(plain_addr, "node/check", r#"{"id":"secure"}"#);
    let uid = uid_of(&mut client, "secure").await;
    let sub = Sub::start(plain_addr, "gateway/secure/#");
    sub.ready(plain_addr, "gateway/secure/hello");
    client
        .send_json(
            &json!({"type": "update", "data": {"uid": uid, "endpoint": "led", "payload": "0"}}),
        )
        .await;
    sub.wait_for("gateway/secure/led/set 0", TIMEOUT);
    for gateway in [&untrusting, &system, &plain] {
        assert_eq!(
            gateway.count_log("MQTT connected"),
            0,
            "{}",
            gateway.log_text()
        );
    }
    drop(mosquitto);
}

/// Hundreds of MQTT nodes starting at once: every check, resource list and value of the
/// discovery burst goes through the embedded broker's two shared logs (`node/check`,
/// `node/+/+`), which drop their oldest publishes when the gateway falls too far behind. Every
/// node must arrive whole: `id`, `protocol` and all seven resources of `aiot node mqtt`.
#[tokio::test]
async fn three_hundred_mqtt_nodes_starting_at_once_all_arrive_whole() {
    const NODES: usize = 300;
    let wanted: Vec<&str> = ["id", "protocol"]
        .into_iter()
        .chain(SIM_RESOURCES)
        .collect();
    let (gateway, _, web) = common::gateway(None, &[]);
    let broker = mqtt_addr(&gateway);
    gateway.wait_for_log(&["MQTT connected"], TIMEOUT);
    let mut client = Peer::client(&format!("ws://{web}/ws")).await;
    let _nodes = Aiot::spawn(&[
        "node",
        "mqtt",
        "--mqtt-host",
        "127.0.0.1",
        "--mqtt-port",
        &broker.port().to_string(),
        "--count",
        &NODES.to_string(),
        "--interval",
        "3600",
    ]);
    type Seen = std::collections::HashMap<String, std::collections::HashSet<String>>;
    let mut seen = Seen::new();
    let whole = |seen: &Seen| seen.values().filter(|e| e.len() == wanted.len()).count();
    let deadline = Instant::now() + Duration::from_secs(120);
    while whole(&seen) < NODES && Instant::now() < deadline {
        let Some(message) = client.next_json(Duration::from_secs(5)).await else {
            continue;
        };
        let endpoint = message["endpoint"].as_str().unwrap_or_default();
        if message["type"] == "update" && wanted.contains(&endpoint) {
            let uid = message["uid"].as_str().expect("uid").to_owned();
            seen.entry(uid).or_default().insert(endpoint.to_owned());
        }
    }
    let partial: Vec<_> = seen
        .values()
        .filter(|e| e.len() < wanted.len())
        .take(5)
        .collect();
    assert_eq!(
        (seen.len(), whole(&seen)),
        (NODES, NODES),
        "nodes seen, and seen whole; some partial ones: {partial:?}"
    );
    let log = gateway.log_text();
    assert!(!log.contains("MQTT connection lost"), "{log}");
}
