//! The MQTT-SN gateway with real peers: a Python MQTT-SN client written from the spec's byte
//! layouts (tests/python/mqttsn_client.py, no code shared with aiot) as a node, probe and
//! attacker; `aiot node mqttsn`; a web client on the gateway's `/ws`; `mosquitto_sub` on the
//! embedded broker for the will. Every port is ephemeral, every address loopback.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Aiot, Peer, TIMEOUT};
use serde_json::{Value, json};

/// The Python client running one scenario; its stdout's JSON lines are collected.
struct Python {
    child: Child,
    lines: common::Lines,
}

impl Python {
    fn start(scenario: &str, gateway: SocketAddr, extra: &[&str]) -> Python {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/mqttsn_client.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(scenario)
            .args(["--host", &gateway.ip().to_string()])
            .args(["--port", &gateway.port().to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let lines = common::collect_lines(child.stdout.take().expect("piped"));
        Python { child, lines }
    }

    /// Waits for a JSON line that `wanted` accepts.
    fn wait_for(&self, timeout: Duration, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let (lines, changed) = &*self.lines;
        let mut seen = lines.lock().expect("lock");
        loop {
            if let Some(found) = seen
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| wanted(v))
            {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "not seen from the Python client; saw {seen:?}"
            );
            seen = changed.wait_timeout(seen, left).expect("lock").0;
        }
    }

    fn event(&self, name: &str) -> Value {
        self.wait_for(TIMEOUT, |v| v["event"] == name)
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mqttsn_addr(gateway: &Aiot) -> SocketAddr {
    gateway.listening("MQTT-SN clients")
}

async fn uid_of(client: &mut Peer, id: &str) -> String {
    let message = client
        .wait_for(TIMEOUT, |m| {
            m["type"] == "update" && m["endpoint"] == "id" && m["data"] == id
        })
        .await;
    message["uid"].as_str().expect("uid").to_owned()
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn a_python_mqttsn_node_is_discovered_and_its_led_follows_sets() {
    let (gateway, _, web) = common::gateway(None, &[]);
    let sn = mqttsn_addr(&gateway);
    gateway.wait_for_log(&["MQTT connected"], TIMEOUT);
    let mut client = Peer::client(&format!("ws://{web}/ws")).await;

    let node = Python::start("node", sn, &["--id", "py1"]);
    assert_eq!(node.event("connack")["code"], 0);
    assert_eq!(node.event("puback")["code"], 0);
    let uid = uid_of(&mut client, "py1").await;
    client
        .wait_for(TIMEOUT, |m| {
            common::is_update(m, Some(&uid), "protocol", &json!("MQTT"))
        })
        .await;
    // Both values, in whichever order the periodic reading and the discovery bring them.
    let mut values = std::collections::BTreeMap::new();
    while values.len() < 2 {
        let m = client
            .wait_for(TIMEOUT, |m| {
                m["type"] == "update"
                    && m["uid"] == uid.as_str()
                    && ["led", "temperature"].contains(&m["endpoint"].as_str().unwrap_or_default())
            })
            .await;
        values.insert(m["endpoint"].to_string(), m["data"].clone());
    }
    assert_eq!(values["\"led\""], "0");
    assert_eq!(values["\"temperature\""], "21°C");

    // The node subscribed `gateway/py1/+/set`: the gateway REGISTERs the topic, then
    // publishes; the node's QoS 1 answer is acknowledged and reaches the client.
    client.write(&uid, "led", "1").await;
    let register = node.event("register");
    assert_eq!(register["topic"], "gateway/py1/led/set");
    assert_eq!(node.event("led")["value"], "1");
    node.wait_for(TIMEOUT, |v| v["event"] == "puback" && v["topic"] == "led");
    client
        .wait_for(TIMEOUT, |m| {
            common::is_update(m, Some(&uid), "led", &json!("1"))
        })
        .await;
    // A second set needs no REGISTER: the id is known.
    client
        .send_json(
            &json!({"type": "update", "data": {"uid": uid, "endpoint": "led", "payload": "0"}}),
        )
        .await;
    client
        .wait_for(TIMEOUT, |m| {
            common::is_update(m, Some(&uid), "led", &json!("0"))
        })
        .await;
    let registers = node
        .lines
        .0
        .lock()
        .expect("lock")
        .iter()
        .filter(|l| l.contains(r#""event": "register""#))
        .count();
    assert_eq!(registers, 1);
}

#[tokio::test]
async fn qos_minus_one_short_ids_searchgw_pings_and_retransmits() {
    let (gateway, _, web) = common::gateway(None, &[]);
    let sn = mqttsn_addr(&gateway);
    gateway.wait_for_log(&["MQTT connected"], TIMEOUT);
    let mut client = Peer::client(&format!("ws://{web}/ws")).await;

    let probe = Python::start("probe", sn, &["--id", "qm1"]);
    let results = probe.wait_for(Duration::from_secs(30), |v| v.get("gwinfo").is_some());
    assert_eq!(results["gwinfo"], 1, "{results}");
    assert_eq!(results["connack"], 0, "{results}");
    assert_eq!(results["short_suback"], 0, "{results}");
    assert_eq!(results["short_puback"], 0, "{results}");
    assert_eq!(results["short_back"], json!(["sn", "hi"]), "{results}");
    assert_eq!(results["unknown_id"], 2, "{results}");
    assert_eq!(results["dup_pubacks"], json!([0, 0]), "{results}");
    assert_eq!(results["dup_copies"], 1, "published once: {results}");
    for key in ["pingresp", "unsuback", "disconnect", "told_to_connect"] {
        assert_eq!(results[key], true, "{key}: {results}");
    }
    assert_eq!(results["willtopicresp"], 0, "{results}");
    assert_eq!(results["willmsgresp"], 0, "{results}");
    // The QoS -1 `node/check` (predefined id 1, no connection) made a node.
    uid_of(&mut client, "qm1").await;
}

#[tokio::test]
async fn a_node_that_stops_pinging_is_dropped_its_will_published_and_it_goes_out() {
    let (gateway, _, web) = common::gateway(None, &["--max-time", "4"]);
    let sn = mqttsn_addr(&gateway);
    let broker = gateway.listening("MQTT clients");
    gateway.wait_for_log(&["MQTT connected"], TIMEOUT);
    let mut client = Peer::client(&format!("ws://{web}/ws")).await;
    let mut sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(["-v", "-t", "node/quiet/will"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub runs (ci/test installs mosquitto-clients)");
    let wills = common::collect_lines(sub.stdout.take().expect("piped"));
    std::thread::sleep(Duration::from_millis(300));

    let node = Python::start(
        "node",
        sn,
        &[
            "--id",
            "quiet",
            "--keep-alive",
            "2",
            "--stop-pinging-after",
            "3",
        ],
    );
    let uid = uid_of(&mut client, "quiet").await;
    node.event("silent");
    let silent_at = Instant::now();
    gateway.wait_for_log(&["MQTT-SN client gone", "keep-alive expired"], TIMEOUT);
    let dropped_after = silent_at.elapsed();
    client
        .wait_for(TIMEOUT, |m| m["type"] == "out" && m["uid"] == uid.as_str())
        .await;
    let deadline = Instant::now() + TIMEOUT;
    while !wills
        .0
        .lock()
        .expect("lock")
        .iter()
        .any(|l| l == "node/quiet/will gone")
    {
        assert!(Instant::now() < deadline, "the will was not published");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = sub.kill();
    let _ = sub.wait();
    println!("dropped {dropped_after:?} after the node went silent (keep-alive 2 s)");
}

#[tokio::test]
async fn hostile_datagrams_floods_and_fake_clients_disturb_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = common::config_file(
        &dir,
        "[mqttsn]\nmax_clients = 12\nmax_topics_per_client = 16\nmax_datagram_bytes = 512\n",
    );
    let (gateway, _, web) = common::gateway(None, &["--config", &config]);
    let sn = mqttsn_addr(&gateway);
    gateway.wait_for_log(&["MQTT connected"], TIMEOUT);
    let mut client = Peer::client(&format!("ws://{web}/ws")).await;
    let node = Python::start("node", sn, &["--id", "good"]);
    let uid = uid_of(&mut client, "good").await;
    node.event("puback");
    let rss_before = rss_kib(gateway.pid());

    // Rounds of garbage and REGISTER floods, then fake clients past the limit of 12.
    let mut attackers = Vec::new();
    for round in 0..3 {
        let fake = if round == 2 { "20" } else { "0" };
        let hostile = Python::start(
            "hostile",
            sn,
            &["--flood", "300", "--fake-clients", fake, "--hold", "60"],
        );
        let report = hostile.wait_for(Duration::from_secs(60), |v| v.get("fake").is_some());
        assert_eq!(report["garbage_answers"], 0, "{report}");
        assert_eq!(report["connack"], 0, "{report}");
        assert_eq!(report["flood_accepted"], 16, "{report}");
        assert_eq!(report["flood_refused"], 284, "{report}");
        if round == 2 {
            // The flooder disconnected; the good node holds one place.
            assert_eq!(report["fake"]["accepted"], 11, "{report}");
            assert_eq!(report["fake"]["congestion"], 9, "{report}");
        }
        attackers.push(hostile);
    }

    // The good node still works both ways.
    client.write(&uid, "led", "1").await;
    assert_eq!(node.event("led")["value"], "1");
    client
        .wait_for(TIMEOUT, |m| {
            common::is_update(m, Some(&uid), "led", &json!("1"))
        })
        .await;
    let rss_after = rss_kib(gateway.pid());
    println!("gateway RSS {rss_before} KiB before the attack, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    // Bad datagrams are logged at warn once per peer, then at debug.
    let log = gateway.log_text();
    let warned = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("MQTT-SN datagram dropped"))
        .count();
    assert!((1..=3).contains(&warned), "{warned} warnings");
    assert!(log.contains("max_clients reached"), "no refusal logged");
    let metrics = common::http_get(web, "/metrics", &[]).await.text();
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("aiot_messages_dropped_total{channel=\"mqttsn\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no MQTT-SN drop counter:\n{metrics}"));
    assert!(dropped > 0, "{metrics}");
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("aiot_limit_hits_total{limit=\"mqttsn_max_clients\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no MQTT-SN client limit counter:\n{metrics}"));
    assert!(refused > 0, "the refused clients are counted: {metrics}");
}

#[tokio::test]
async fn aiot_node_mqttsn_shows_up_with_its_seven_resources() {
    let (gateway, _, web) = common::gateway(None, &[]);
    let sn = mqttsn_addr(&gateway);
    gateway.wait_for_log(&["MQTT connected"], TIMEOUT);
    let mut client = Peer::client(&format!("ws://{web}/ws")).await;
    let _nodes = Aiot::spawn(&[
        "node",
        "mqttsn",
        "--gateway-port",
        &sn.port().to_string(),
        "--interval",
        "1",
    ]);
    let new = client
        .wait_for(TIMEOUT, |m| {
            m["type"] == "update"
                && m["endpoint"] == "id"
                && m["data"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("aiot-sn-"))
        })
        .await;
    let uid = new["uid"].as_str().expect("uid").to_owned();
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + TIMEOUT;
    while seen.len() < aiot::sim::RESOURCES.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "only {seen:?}");
        if let Some(m) = client.next_json(left).await
            && m["type"] == "update"
            && m["uid"] == uid.as_str()
        {
            let endpoint = m["endpoint"].as_str().unwrap_or_default().to_owned();
            if aiot::sim::RESOURCES.contains(&endpoint.as_str()) {
                seen.insert(endpoint);
            }
        }
    }
    client.write(&uid, "led", "1").await;
    client
        .wait_for(TIMEOUT, |m| {
            common::is_update(m, Some(&uid), "led", &json!("1"))
        })
        .await;
}

#[tokio::test]
async fn the_default_bind_serves_ipv6_and_ipv4_clients() {
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
        "--mqtt-bind",
        "127.0.0.1",
        "--mqtt-port",
        "0",
        "--mqttsn-bind",
        "::",
        "--mqttsn-port",
        "0",
    ]);
    let sn = mqttsn_addr(&gateway);
    assert!(sn.is_ipv6() && sn.ip().is_unspecified(), "{sn}");
    gateway.wait_for_log(&["MQTT connected"], TIMEOUT);
    for (host, id) in [("::1", "v6"), ("127.0.0.1", "v4")] {
        let probe = Python::start(
            "probe",
            SocketAddr::new(host.parse().expect("address"), sn.port()),
            &["--id", id],
        );
        let results = probe.wait_for(Duration::from_secs(30), |v| v.get("gwinfo").is_some());
        assert_eq!(results["connack"], 0, "{host}: {results}");
        assert_eq!(
            results["short_back"],
            json!(["sn", "hi"]),
            "{host}: {results}"
        );
    }
}

#[tokio::test]
async fn advertise_goes_where_configured() {
    let listener = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    listener.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = common::config_file(
        &dir,
        &format!(
            "[mqttsn]\ngateway_id = 7\nadvertise_to = \"{}\"\nadvertise_interval_secs = 60\n",
            listener.local_addr().expect("addr")
        ),
    );
    let (gateway, _, _) = common::gateway(None, &["--config", &config]);
    let sn = mqttsn_addr(&gateway);
    let mut datagram = [0u8; 64];
    let (n, from) = listener.recv_from(&mut datagram).expect("an ADVERTISE");
    assert_eq!(from.port(), sn.port());
    // Length 5, ADVERTISE, gateway id 7, duration 60 s (MQTT-SN 1.2 §5.4.1).
    assert_eq!(&datagram[..n], &[5, 0x00, 7, 0, 60]);
}
