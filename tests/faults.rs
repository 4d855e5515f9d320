//! Network faults between a gateway and its broker (issue 8): a 60 s link cut, 30 % packet loss,
//! the broker and the gateway killed (SIGKILL) and restarted, and a half-open uplink. After
//! each, a web client of the broker must see exactly the gateway's node table: nothing lost,
//! nothing stale.
//!
//! The broker and the gateway each run in a network namespace of their own, joined by a veth
//! pair (10.231.0.1 broker, 10.231.0.2 gateway). The test process stays in the root namespace
//! and reaches into the namespaces without any routing: each namespace gets a tokio runtime
//! whose threads `setns` into it when they start, so a socket a task opens there (a web client,
//! `127.0.0.1:8080` of the gateway) and a process it spawns (the broker, the gateway, the
//! simulated nodes) live in that namespace. The namespaces are isolated, so every test uses
//! the default ports and the same addresses, and tests run in parallel.
//!
//! During each fault the gateway's table changes: a node leaves, another joins, and every
//! node's LED is switched on from the gateway's dashboard, so that a stale node or a lost
//! update on the broker's side shows after recovery. Faults: the gateway's veth end down
//! (link cut); `tc netem loss 30%` on both ends (skipped, with a printed reason, where the
//! kernel has no netem); a `bfifo limit 0` qdisc on both ends, which silently drops every
//! packet while both sockets stay open (half-open); SIGKILL of each process.
//!
//! Without root or `ip` (no namespaces) the tests print why and pass without testing.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{Aiot, Peer, TIMEOUT};
use serde_json::{Value, json};

const BROKER_IP: &str = "10.231.0.1";
const GATEWAY_IP: &str = "10.231.0.2";
/// The uplink's settings for the test: a short ping so that a dead link shows within seconds.
const PING_SECS: u64 = 1;
const BACKOFF_MAX_SECS: u64 = 4;
const CONNECT_TIMEOUT_SECS: u64 = 3;
const GATEWAY_WS: &str = "ws://127.0.0.1:8080/ws";
const BROKER_WS: &str = "ws://127.0.0.1:8000/ws";

/// Runs `ip ARGS`; the error says what failed.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip cannot run: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A network namespace and a runtime whose threads live in it; deleted when dropped.
struct Netns {
    name: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Netns {
    fn new(name: String) -> Result<Netns, String> {
        ip(&["netns", "add", &name])?;
        let mut netns = Netns {
            name,
            runtime: None,
        };
        ip(&["-n", &netns.name, "link", "set", "lo", "up"])?;
        let path = format!("/run/netns/{}", netns.name);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .on_thread_start(move || {
                let file = std::fs::File::open(&path).expect("the namespace file opens");
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("setns into the test namespace");
            })
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        netns.runtime = Some(runtime);
        Ok(netns)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("a runtime")
    }

    /// Runs `future` on a thread inside the namespace.
    fn run<F>(&self, future: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self.runtime();
        runtime
            .block_on(runtime.spawn(future))
            .expect("the task ends")
    }

    /// Starts `aiot ARGS` inside the namespace (a child inherits its parent thread's namespace).
    fn spawn(&self, args: Vec<String>) -> Aiot {
        let runtime = self.runtime();
        runtime
            .block_on(runtime.spawn_blocking(move || {
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                Aiot::spawn(&refs)
            }))
            .expect("spawned")
    }

    /// `ip netns exec NS PROGRAM ARGS`.
    fn exec(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        ip(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Each node with its resources, as a web client learns them from `new`, `update` and `out`.
type View = BTreeMap<String, BTreeMap<String, Value>>;

fn apply(view: &mut View, message: &Value) {
    let Some(uid) = message["uid"].as_str() else {
        return;
    };
    match message["type"].as_str() {
        Some("new") => {
            view.entry(uid.to_owned()).or_default();
        }
        Some("update") => {
            if let Some(endpoint) = message["endpoint"].as_str() {
                view.entry(uid.to_owned())
                    .or_default()
                    .insert(endpoint.to_owned(), message["data"].clone());
            }
        }
        Some("out") => {
            view.remove(uid);
        }
        _ => {}
    }
}

/// What a client connecting now is told (the replay), read until the server falls quiet.
async fn snapshot(url: &'static str) -> View {
    let mut client = Peer::client(url).await;
    let mut view = View::new();
    while let Some(message) = client.next_json(Duration::from_millis(400)).await {
        apply(&mut view, &message);
    }
    view
}

/// A web client of the broker that stays connected through the fault.
struct Watcher {
    peer: Peer,
    view: View,
}

/// A broker and a gateway in their namespaces, simulated nodes on the gateway.
struct Testbed {
    // Fields drop in order: processes before their namespaces.
    watcher: Option<Watcher>,
    leaving: Option<Aiot>,
    nodes: Vec<Aiot>,
    gateway: Option<Aiot>,
    broker: Option<Aiot>,
    broker_ns: Netns,
    gateway_ns: Netns,
    dir: tempfile::TempDir,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Testbed {
    /// `None` (with the reason printed) where namespaces cannot be made.
    fn new(case: &str) -> Option<Testbed> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED {case}: network namespaces need root");
            return None;
        }
        let name = format!(
            "aiot-f-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let broker_ns = match Netns::new(format!("{name}-b")) {
            Ok(ns) => ns,
            Err(why) => {
                eprintln!("SKIPPED {case}: cannot create a network namespace: {why}");
                return None;
            }
        };
        let gateway_ns = Netns::new(format!("{name}-g")).expect("a second namespace");
        ip(&[
            "link",
            "add",
            "b0",
            "netns",
            &broker_ns.name,
            "type",
            "veth",
            "peer",
            "name",
            "g0",
            "netns",
            &gateway_ns.name,
        ])
        .expect("veth pair");
        for (ns, dev, addr) in [
            (&broker_ns, "b0", BROKER_IP),
            (&gateway_ns, "g0", GATEWAY_IP),
        ] {
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                dev,
            ])
            .expect("address");
            ip(&["-n", &ns.name, "link", "set", dev, "up"]).expect("link up");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Command::new(env!("CARGO_BIN_EXE_aiot"))
            .args(["keys", "generate", "--key-file"])
            .arg(dir.path().join("keys"))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("keys generate runs");
        assert!(status.success());
        std::fs::write(
            dir.path().join("gateway.toml"),
            format!(
                "[uplink]\nping_interval_secs = {PING_SECS}\nconnect_timeout_secs = \
                 {CONNECT_TIMEOUT_SECS}\nbackoff_max_secs = {BACKOFF_MAX_SECS}\n"
            ),
        )
        .expect("config written");
        let mut bed = Testbed {
            watcher: None,
            leaving: None,
            nodes: Vec::new(),
            gateway: None,
            broker: None,
            broker_ns,
            gateway_ns,
            dir,
        };
        bed.start_broker();
        bed.start_gateway();
        bed.nodes.push(bed.start_nodes(2));
        bed.leaving = Some(bed.start_nodes(1));
        bed.watch();
        let took = bed.converge(3, Duration::from_secs(30));
        eprintln!("{case}: 3 nodes at the broker after {took:.1?}");
        Some(bed)
    }

    fn path(&self, file: &str) -> String {
        self.dir
            .path()
            .join(file)
            .to_str()
            .expect("utf-8")
            .to_owned()
    }

    fn start_broker(&mut self) {
        let args = ["broker", "--bind", "0.0.0.0", "--broker-port", "8000"];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend(["--key-file".into(), self.path("keys")]);
        let broker = self.broker_ns.spawn(args);
        broker.listening("broker");
        self.broker = Some(broker);
    }

    fn start_gateway(&mut self) {
        let args = [
            "gateway",
            "--bind",
            "127.0.0.1",
            "--gateway-port",
            "8001",
            "--web-port",
            "8080",
            "--coap-bind",
            "127.0.0.1",
            "--mqtt-bind",
            "127.0.0.1",
            "--broker-host",
            BROKER_IP,
            "--broker-port",
            "8000",
        ];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend(["--key-file".into(), self.path("keys")]);
        args.extend(["--config".into(), self.path("gateway.toml")]);
        let gateway = self.gateway_ns.spawn(args);
        gateway.wait_for_log(&["connected to broker"], TIMEOUT);
        self.gateway = Some(gateway);
    }

    fn gateway(&self) -> &Aiot {
        self.gateway.as_ref().expect("a gateway")
    }

    /// `count` simulated websocket nodes with an LED; they reconnect when the gateway goes.
    fn start_nodes(&self, count: usize) -> Aiot {
        let count = count.to_string();
        let args = [
            "node",
            "ws",
            "--gateway-host",
            "127.0.0.1",
            "--gateway-port",
            "8001",
            "--led",
            "--interval",
            "3600",
            "--count",
            &count,
        ];
        self.gateway_ns
            .spawn(args.iter().map(|s| s.to_string()).collect())
    }

    /// Connects the broker's long-lived web client.
    fn watch(&mut self) {
        self.watcher = Some(self.broker_ns.run(async {
            Watcher {
                peer: Peer::client(BROKER_WS).await,
                view: View::new(),
            }
        }));
    }

    fn gateway_view(&self) -> View {
        self.gateway_ns.run(snapshot(GATEWAY_WS))
    }

    /// Waits until the watcher's view equals the gateway's table of `nodes` nodes, and a new
    /// broker client is told the same; returns how long that took.
    fn converge(&mut self, nodes: usize, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let Watcher { mut peer, mut view } = self.watcher.take().expect("a watcher");
            let (peer, view) = self.broker_ns.run(async move {
                while let Some(message) = peer.next_json(Duration::from_millis(300)).await {
                    apply(&mut view, &message);
                }
                (peer, view)
            });
            let gateway = self.gateway_view();
            let equal = gateway.len() == nodes && view == gateway;
            self.watcher = Some(Watcher { peer, view });
            if equal {
                let took = start.elapsed();
                let fresh = self.broker_ns.run(snapshot(BROKER_WS));
                assert_eq!(
                    fresh, gateway,
                    "a new broker client sees the gateway's table"
                );
                return took;
            }
            assert!(
                start.elapsed() < limit,
                "no agreement within {limit:?}\nbroker client: {:#?}\ngateway: {gateway:#?}",
                self.watcher.as_ref().map(|w| &w.view)
            );
        }
    }

    /// What happens at the gateway during a fault: a node leaves, another joins, and every
    /// node's LED is switched on from the gateway's dashboard.
    fn churn(&mut self) {
        if let Some(mut leaving) = self.leaving.take() {
            leaving.kill();
        }
        self.nodes.push(self.start_nodes(1));
        let start = Instant::now();
        loop {
            let view = self.gateway_view();
            let all_on = view.values().all(|r| r.get("led") == Some(&json!("1")));
            if view.len() == 3 && all_on {
                return;
            }
            assert!(start.elapsed() < TIMEOUT * 3, "churn: {view:#?}");
            let uids: Vec<String> = view.keys().cloned().collect();
            self.gateway_ns.run(async move {
                let mut client = Peer::client(GATEWAY_WS).await;
                for uid in uids {
                    client
                        .send_json(&json!({"type": "update", "data":
                            {"uid": uid, "endpoint": "led", "payload": "1"}}))
                        .await;
                }
                // Let the writes through before the client goes.
                while client.next_json(Duration::from_millis(300)).await.is_some() {}
            });
        }
    }

    /// Waits for the gateway to say the uplink is gone (the `connection lost` or a failed
    /// attempt's `retrying in`), the `count`th time; returns how long that took since `start`.
    fn uplink_lost(&self, start: Instant, count: usize, limit: Duration) -> Duration {
        self.gateway().wait_for_count("retrying in", count, limit);
        start.elapsed()
    }

    fn qdisc(&self, action: &str, spec: &[&str]) -> Result<(), String> {
        for (ns, dev) in [(&self.broker_ns, "b0"), (&self.gateway_ns, "g0")] {
            let mut args = vec!["qdisc", action, "dev", dev, "root"];
            args.extend_from_slice(spec);
            ns.exec("tc", &args)?;
        }
        Ok(())
    }
}

/// What the uplink may take to notice a dead link: two silent ping intervals, checked at the
/// next ping, with room for a loaded machine.
fn detection_bound() -> Duration {
    Duration::from_secs(3 * PING_SECS * 3 + 5)
}

/// How long recovery may take once the path is back: a connect attempt, the backoff cap, and
/// the resend, three times over.
fn recovery_bound() -> Duration {
    Duration::from_secs(3 * (CONNECT_TIMEOUT_SECS + BACKOFF_MAX_SECS) + 10)
}

#[test]
fn a_link_cut_for_60_s_then_restored() {
    let Some(mut bed) = Testbed::new("link cut") else {
        return;
    };
    let cut = Instant::now();
    ip(&["-n", &bed.gateway_ns.name, "link", "set", "g0", "down"]).expect("link down");
    let detected = bed.uplink_lost(cut, 1, detection_bound());
    bed.churn();
    std::thread::sleep(Duration::from_secs(60).saturating_sub(cut.elapsed()));
    ip(&["-n", &bed.gateway_ns.name, "link", "set", "g0", "up"]).expect("link up");
    let recovered = bed.converge(3, recovery_bound());
    let broker = bed.broker.as_ref().expect("a broker");
    let by_ping = broker.count_log("no answer from the gateway");
    eprintln!(
        "link cut: the gateway noticed after {detected:.1?}; the broker dropped the silent \
         gateway by ping {by_ping} time(s); after 60 s the broker agreed {recovered:.1?} after \
         the link came back"
    );
}

#[test]
fn thirty_percent_packet_loss() {
    let Some(mut bed) = Testbed::new("30 % loss") else {
        return;
    };
    if let Err(why) = bed.qdisc("add", &["netem", "loss", "30%"]) {
        eprintln!("SKIPPED 30 % loss: this kernel has no netem ({why})");
        return;
    }
    let start = Instant::now();
    bed.churn();
    // TCP carries the uplink through the loss (or the uplink reconnects): either way the
    // broker must end up agreeing while the loss lasts.
    let agreed = bed.converge(3, Duration::from_secs(90));
    let reconnects = bed.gateway().count_log("retrying in");
    bed.qdisc("del", &[]).expect("loss removed");
    eprintln!(
        "30 % loss: the broker agreed {agreed:.1?} after the churn ({:.1?} in all), \
         {reconnects} uplink reconnects",
        start.elapsed()
    );
}

#[test]
fn the_broker_killed_and_restarted() {
    let Some(mut bed) = Testbed::new("broker SIGKILL") else {
        return;
    };
    bed.watcher = None;
    let kill = Instant::now();
    bed.broker.take().expect("a broker").kill();
    let detected = bed.uplink_lost(kill, 1, detection_bound());
    bed.churn();
    let restart = Instant::now();
    bed.start_broker();
    bed.watch();
    let recovered = bed.converge(3, recovery_bound());
    eprintln!(
        "broker SIGKILL: the gateway noticed after {detected:.1?}; the restarted broker agreed \
         after {:.1?} ({recovered:.1?} of it waiting for agreement)",
        restart.elapsed()
    );
}

#[test]
fn the_gateway_killed_and_restarted_with_its_nodes_reconnecting() {
    let Some(mut bed) = Testbed::new("gateway SIGKILL") else {
        return;
    };
    let before = bed.watcher.as_ref().expect("a watcher").view.clone();
    bed.gateway.take().expect("a gateway").kill();
    // The broker hears the connection close and drops the gateway's nodes.
    let start = Instant::now();
    loop {
        let Watcher { mut peer, mut view } = bed.watcher.take().expect("a watcher");
        let (peer, view) = bed.broker_ns.run(async move {
            while let Some(message) = peer.next_json(Duration::from_millis(300)).await {
                apply(&mut view, &message);
            }
            (peer, view)
        });
        let empty = view.is_empty();
        bed.watcher = Some(Watcher { peer, view });
        if empty {
            break;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "the broker kept the dead gateway's nodes"
        );
    }
    let dropped = start.elapsed();
    // While the gateway is down a node gives up and another arrives.
    if let Some(mut leaving) = bed.leaving.take() {
        leaving.kill();
    }
    bed.nodes.push(bed.start_nodes(1));
    let restart = Instant::now();
    bed.start_gateway();
    let recovered = bed.converge(3, recovery_bound());
    let after = bed.watcher.as_ref().expect("a watcher").view.clone();
    assert!(
        after.keys().all(|uid| !before.contains_key(uid)),
        "the nodes registered again, under new uids"
    );
    eprintln!(
        "gateway SIGKILL: the broker dropped its nodes after {dropped:.1?}; after the restart \
         the nodes re-registered and the broker agreed after {:.1?} ({recovered:.1?} waiting)",
        restart.elapsed()
    );
}

#[test]
fn a_half_open_uplink_is_found_by_ping_and_reconnected() {
    let Some(mut bed) = Testbed::new("half-open") else {
        return;
    };
    // A FIFO that holds no bytes: every packet is dropped silently, no RST, no ICMP, and both
    // sockets stay open.
    let cut = Instant::now();
    bed.qdisc("add", &["bfifo", "limit", "0"])
        .expect("a dropping qdisc");
    let detected = bed.uplink_lost(cut, 1, detection_bound());
    bed.churn();
    bed.qdisc("del", &[]).expect("path restored");
    let recovered = bed.converge(3, recovery_bound());
    eprintln!(
        "half-open: ping/pong found the dead uplink after {detected:.1?} (ping every \
         {PING_SECS} s); the broker agreed {recovered:.1?} after the path came back"
    );
}
