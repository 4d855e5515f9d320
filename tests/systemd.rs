//! The systemd notify protocol, with a real Unix datagram socket standing in for systemd:
//! READY once the listeners are bound, STATUS lines, WATCHDOG pings at half the interval while
//! every probe passes, none while the process is frozen, STOPPING at shutdown.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{Aiot, GATEWAY_ON_LOOPBACK, TIMEOUT, http_get};
use nix::sys::signal::Signal;

struct FakeSystemd {
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
    path: String,
}

impl FakeSystemd {
    fn new() -> FakeSystemd {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        FakeSystemd {
            socket,
            path: path.to_str().expect("utf-8").to_owned(),
            _dir: dir,
        }
    }

    /// The next datagram, or `None` after `timeout`.
    fn next(&self, timeout: Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(timeout))
            .expect("timeout");
        let mut buffer = [0u8; 4096];
        let n = self.socket.recv(&mut buffer).ok()?;
        Some(String::from_utf8_lossy(&buffer[..n]).into_owned())
    }

    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Some(message) = self.next(Duration::from_millis(200)) {
                if message.contains(needle) {
                    return message;
                }
                seen.push(message);
            }
        }
        panic!("no {needle:?} from aiot; got {seen:?}");
    }
}

#[tokio::test]
async fn ready_status_watchdog_and_stopping_reach_systemd() {
    let systemd = FakeSystemd::new();
    let args: Vec<&str> = std::iter::once("gateway")
        .chain(GATEWAY_ON_LOOPBACK.iter().copied())
        .collect();
    let mut gateway = Aiot::spawn_env(
        &args,
        &[
            ("NOTIFY_SOCKET", &systemd.path),
            ("WATCHDOG_USEC", "600000"),
        ],
    );
    let ready = systemd.wait_for("READY=1");
    assert!(ready.contains("STATUS=0 nodes"), "{ready}");
    // By READY every listener answers.
    let web = gateway.listening("web clients");
    assert_eq!(http_get(web, "/healthz", &[]).await.status, 200);

    // Pings at half of 0.6 s while every probe (hub, both web servers, CoAP) passes.
    let started = Instant::now();
    let mut pings = 0;
    while pings < 5 {
        let message = systemd.wait_for("WATCHDOG=1");
        assert!(message.contains("STATUS="), "{message}");
        pings += 1;
    }
    let per_ping = started.elapsed() / 5;
    assert!(
        per_ping < Duration::from_millis(600),
        "{per_ping:?} between pings"
    );

    // A frozen process sends nothing; thawed, it pings again.
    gateway.signal(Signal::SIGSTOP);
    while systemd.next(Duration::from_millis(100)).is_some() {}
    assert_eq!(
        systemd.next(Duration::from_millis(900)),
        None,
        "no ping while frozen"
    );
    gateway.signal(Signal::SIGCONT);
    systemd.wait_for("WATCHDOG=1");

    gateway.signal(Signal::SIGTERM);
    systemd.wait_for("STOPPING=1");
    let status = gateway.wait_exit(TIMEOUT).expect("exits");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        gateway.count_log("watchdog ping withheld"),
        0,
        "{}",
        gateway.log_text()
    );
}

#[test]
fn a_watchdog_meant_for_another_process_is_left_alone() {
    let systemd = FakeSystemd::new();
    let broker_keys = tempfile::tempdir().expect("temp dir");
    let keys = broker_keys.path().join("keys");
    aiot::keys::Keys::generate()
        .write(&keys, false)
        .expect("keys");
    let _broker = Aiot::spawn_env(
        &[
            "broker",
            "--bind",
            "127.0.0.1",
            "--broker-port",
            "0",
            "--key-file",
            keys.to_str().expect("utf-8"),
        ],
        &[
            ("NOTIFY_SOCKET", &systemd.path),
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    let ready = systemd.wait_for("READY=1");
    assert!(
        ready.contains("STATUS=0 nodes; 0 gateways; 0 web clients"),
        "{ready}"
    );
    let deadline = Instant::now() + Duration::from_millis(800);
    while Instant::now() < deadline {
        if let Some(message) = systemd.next(Duration::from_millis(100)) {
            assert!(!message.contains("WATCHDOG=1"), "{message}");
        }
    }
}

/// The uplink and the MQTT adapter beat on every turn of their loops: with an uplink that is
/// connected, then retrying after its broker died, the watchdog pings on. With a 1 s send
/// timeout the uplink may be silent 4 s at most, and by 13 s of retrying the backoff waits
/// (0.25-0.5 s, doubling) have reached 4-8 s: they must beat too.
#[test]
fn uplink_and_mqtt_heartbeats_keep_the_watchdog_fed_while_connected_and_retrying() {
    let systemd = FakeSystemd::new();
    let (mut broker, broker_addr, keys_dir) = common::broker_with_keys();
    let keys = common::key_file(&keys_dir);
    let url = format!("ws://{broker_addr}/gw");
    let config = keys_dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "[limits]\nsend_timeout_secs = 1\n[uplink]\nbackoff_max_secs = 30\n",
    )
    .expect("write the config");
    let config = config.to_str().expect("utf-8");
    let args: Vec<&str> = ["--config", config, "gateway"]
        .into_iter()
        .chain(GATEWAY_ON_LOOPBACK.iter().copied())
        .chain(["--broker-url", &url, "--key-file", &keys])
        .collect();
    let gateway = Aiot::spawn_env(
        &args,
        &[
            ("NOTIFY_SOCKET", &systemd.path),
            ("WATCHDOG_USEC", "600000"),
        ],
    );
    systemd.wait_for("READY=1");
    gateway.wait_for_log(&["connected to broker"], TIMEOUT);
    gateway.wait_for_log(&["MQTT connected"], TIMEOUT);
    // Pings sent before the link was up may still be queued: wait for the first that says so.
    let ping = systemd.wait_for("uplink connected");
    assert!(ping.contains("WATCHDOG=1"), "{ping}");
    for _ in 0..3 {
        systemd.wait_for("WATCHDOG=1");
    }

    broker.kill();
    gateway.wait_for_log(&["retrying in"], TIMEOUT);
    let until = Instant::now() + Duration::from_secs(13);
    let mut pings = 0;
    while Instant::now() < until {
        if systemd.wait_for("WATCHDOG=1").contains("uplink retrying") {
            pings += 1;
        }
    }
    assert!(pings >= 10, "{pings} pings in 13 s");
    assert!(
        gateway.count_log("retrying in") >= 5,
        "{}",
        gateway.log_text()
    );
    assert_eq!(
        gateway.count_log("watchdog ping withheld"),
        0,
        "{}",
        gateway.log_text()
    );
}
