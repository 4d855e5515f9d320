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
//! update on the broker's side shows after recovery; under loss the LEDs are switched back
//! from the broker's side too. After recovery the test also waits for the broker to let go of
//! any dead connection of the gateway and checks again, so the end of a stale connection
//! cannot take nodes with it unseen. Faults: the gateway's veth end down (link cut); 30 % of
//! the packets leaving each veth end dropped, by `tc netem loss 30%` where the kernel has
//! netem, else by an nftables `numgen random` rule on the veth's output (counted, so the test
//! fails if nothing was dropped); a `bfifo limit 0` qdisc on both ends, which silently drops
//! every packet while both sockets stay open (half-open, which the gateway's ping must find);
//! SIGKILL of each process. Two more: the table changes on a half-open uplink before the ping
//! notices; and only the uplink's connection dies (an nftables rule on its port), with changes
//! queued on it that the gateway's kernel would deliver after the next connection's replay.
//!
//! Without root or `ip` (no namespaces), or with neither netem nor nftables for the loss, the
//! tests print why and pass without testing.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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

/// The nftables table that drops packets where the kernel has no netem.
const NFT_TABLE: &str = "aiot_loss";

/// How packets are being dropped on the link.
#[derive(Clone, Copy, Debug)]
enum Loss {
    Netem,
    Nft,
}

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
    /// The standard output of `ip netns exec NS PROGRAM ARGS`, which must succeed.
    fn output(&self, program: &str, args: &[&str]) -> String {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .expect("ip runs");
        assert!(
            output.status.success(),
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
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
            // CoAP nodes may sit behind a second veth (the CoAP loss test).
            "--coap-bind",
            "0.0.0.0",
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
                // Nodes that go on reporting (CoAP readings) may change a value between the
                // two snapshots: compare with the gateway's table as it is now, and look again
                // if a reading came in between.
                let gateway = self.gateway_view();
                if fresh == gateway {
                    return took;
                }
                assert!(
                    start.elapsed() < limit,
                    "a new broker client does not see the gateway's table within {limit:?}\n\
                     fresh: {fresh:#?}\ngateway: {gateway:#?}\n{}",
                    self.connections()
                );
                continue;
            }
            assert!(
                start.elapsed() < limit,
                "no agreement within {limit:?}\nbroker client: {:#?}\ngateway: {gateway:#?}\n{}",
                self.watcher.as_ref().map(|w| &w.view),
                self.connections()
            );
        }
    }

    /// What happens at the gateway during a fault: a node leaves, another joins, and every
    /// node's LED is switched on from the gateway's dashboard.
    fn churn(&mut self) {
        let before = self.gateway_view();
        assert_eq!(before.len(), 3, "three nodes before the churn: {before:#?}");
        if let Some(mut leaving) = self.leaving.take() {
            leaving.kill();
        }
        self.nodes.push(self.start_nodes(1));
        let start = Instant::now();
        loop {
            let view = self.gateway_view();
            let all_on = view.values().all(|r| r.get("led") == Some(&json!("1")));
            // Two nodes stayed, the leaving one is gone and a new one is there.
            let stayed = view.keys().filter(|uid| before.contains_key(*uid)).count();
            if view.len() == 3 && stayed == 2 && all_on {
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

    /// The broker's and the gateway's log lines about the uplink and the nodes it brought, for
    /// a failure message.
    fn connections(&self) -> String {
        let mut text = String::new();
        for (who, process) in [("broker", &self.broker), ("gateway", &self.gateway)] {
            let Some(process) = process else { continue };
            text.push_str(&format!("{who} log (uplink):\n"));
            for line in process.log_text().lines() {
                let wanted = ["gateway", "broker", "node from", "source", "Refus", "owner"];
                if wanted.iter().any(|w| line.contains(w)) {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        text
    }

    /// Switches every node's LED to `payload` from the broker's web client, through the
    /// uplink, until the gateway's table shows it; a write lost with a dropped connection is
    /// sent again, as a user would click again. Returns how many rounds of writes it took.
    fn write_from_broker(&mut self, payload: &'static str, limit: Duration) -> usize {
        let start = Instant::now();
        let mut rounds = 0;
        loop {
            let view = self.gateway_view();
            if view.values().all(|r| r.get("led") == Some(&json!(payload))) {
                return rounds;
            }
            assert!(
                start.elapsed() < limit,
                "writes from the broker did not reach the nodes within {limit:?}: {view:#?}"
            );
            rounds += 1;
            let Watcher { mut peer, mut view } = self.watcher.take().expect("a watcher");
            let uids: Vec<String> = self.gateway_view().into_keys().collect();
            let (peer, view) = self.broker_ns.run(async move {
                for uid in uids {
                    peer.write(&uid, "led", payload).await;
                }
                // Give the writes a few seconds to cross the lossy link, keeping the view.
                let until = tokio::time::Instant::now() + Duration::from_secs(5);
                while tokio::time::Instant::now() < until {
                    if let Some(message) = peer.next_json(Duration::from_millis(300)).await {
                        apply(&mut view, &message);
                    }
                }
                (peer, view)
            });
            self.watcher = Some(Watcher { peer, view });
        }
    }

    /// Writes `value` to the CoAP node `uid`'s LED from the broker's web client and waits
    /// until the node (its own log) and the gateway's table have it. When the gateway gives up
    /// on the write (every retransmission lost), it is written again, as a user would click
    /// again. Returns how long it took and how many writes were sent.
    fn switch_coap_led(
        &mut self,
        node: &Aiot,
        uid: &str,
        value: &'static str,
        limit: Duration,
    ) -> (Duration, usize) {
        let switched = || {
            node.log_text()
                .lines()
                .filter(|l| l.contains("LED switched") && l.contains(uid))
                .filter(|l| l.contains(&format!("value={value}")))
                .count()
        };
        let failed = |gateway: &Aiot| {
            gateway
                .log_text()
                .lines()
                .filter(|l| l.contains("CoAP write failed") && l.contains(uid))
                .count()
        };
        let (switched_before, mut failed_before) = (switched(), failed(self.gateway()));
        let start = Instant::now();
        let mut writes = 0;
        let mut write = true;
        loop {
            if write {
                writes += 1;
                let Watcher { mut peer, view } = self.watcher.take().expect("a watcher");
                let owned = uid.to_owned();
                let peer = self.broker_ns.run(async move {
                    peer.write(&owned, "led", value).await;
                    peer
                });
                self.watcher = Some(Watcher { peer, view });
                write = false;
            }
            std::thread::sleep(Duration::from_millis(300));
            if switched() > switched_before {
                let shown = self.gateway_view()[uid].get("led") == Some(&json!(value));
                if shown {
                    return (start.elapsed(), writes);
                }
            }
            if failed(self.gateway()) > failed_before {
                failed_before = failed(self.gateway());
                write = true;
            }
            assert!(
                start.elapsed() < limit,
                "LED {value} of {uid} not switched in {limit:?} ({writes} writes)"
            );
        }
    }

    /// Waits until the broker has let go of every earlier connection of the gateway (a dead
    /// one lingers until the broker's own ping drops it), then checks agreement again: the end
    /// of a stale connection must not take away the nodes the live one brought back. Returns
    /// how long the broker took to let go.
    fn settle(&mut self) -> Duration {
        let start = Instant::now();
        loop {
            let broker = self.broker.as_ref().expect("a broker");
            let opened = broker.count_log("gateway connected");
            let ended = ["gateway disconnected", "gateway closed", "gateway dropped"]
                .iter()
                .map(|needle| broker.count_log(needle))
                .sum::<usize>();
            if ended + 1 >= opened {
                break;
            }
            assert!(
                start.elapsed() < broker_drop_bound(),
                "the broker still holds {} dead gateway connection(s) after {:?}",
                opened - ended - 1,
                broker_drop_bound()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let took = start.elapsed();
        self.converge(3, recovery_bound());
        took
    }

    /// How many times the gateway has said its uplink is gone so far.
    fn uplink_losses(&self) -> usize {
        self.gateway().count_log("retrying in")
    }

    /// Waits for the gateway to say the uplink is gone (the `connection lost` or a failed
    /// attempt's `retrying in`) once more than `before` times; returns how long that took since
    /// `start`, and the line, which says why.
    fn uplink_lost(&self, before: usize, start: Instant, limit: Duration) -> (Duration, String) {
        let gateway = self.gateway();
        gateway.wait_for_count("retrying in", before + 1, limit);
        let took = start.elapsed();
        let line = gateway
            .log_text()
            .lines()
            .filter(|line| line.contains("retrying in"))
            .nth(before)
            .expect("the line just counted")
            .to_owned();
        (took, line)
    }

    /// The uplink's veth: the broker's end and the gateway's.
    fn uplink(&self) -> Link<'_> {
        [(&self.broker_ns, "b0"), (&self.gateway_ns, "g0")]
    }
}

/// Both ends of a veth pair, each with its namespace.
type Link<'a> = [(&'a Netns, &'a str); 2];

/// Drops `percent` % of the packets leaving each end of `link`, so each direction loses that
/// share: `tc netem` where the kernel has it, else an nftables rule that drops at random
/// (`numgen random`), its rules written in `dir`. Only the veth is touched; loopback inside
/// the namespaces (the nodes, the web clients) stays lossless.
fn add_loss(link: Link, percent: u32, dir: &std::path::Path) -> Result<Loss, String> {
    let netem_why = match qdisc(link, "add", &["netem", "loss", &format!("{percent}%")]) {
        Ok(()) => return Ok(Loss::Netem),
        Err(why) => why,
    };
    for (ns, dev) in link {
        // Every packet crosses one end's output and the other end's input: dropping on output
        // at both ends loses `percent` % each way (on input too would make it about 51 %).
        let rules = format!(
            "table inet {NFT_TABLE} {{\n  chain out {{\n    type filter hook output priority 0; \
             policy accept;\n    oifname \"{dev}\" counter\n    oifname \"{dev}\" numgen \
             random mod 100 < {percent} counter drop\n  }}\n}}\n"
        );
        let file = dir.join(format!("loss-{dev}.nft"));
        std::fs::write(&file, rules).expect("rules written");
        ns.exec("nft", &["-f", file.to_str().expect("utf-8")])
            .map_err(|nft_why| format!("no netem ({netem_why}) and no nftables ({nft_why})"))?;
    }
    Ok(Loss::Nft)
}

/// Packets that tried to leave both ends of `link`, and how many of them the loss dropped.
fn loss_counts(link: Link, loss: Loss) -> (u64, u64) {
    let mut counts = (0, 0);
    for (ns, dev) in link {
        let (sent, dropped) = match loss {
            Loss::Netem => {
                let stats = ns.output("tc", &["-s", "qdisc", "show", "dev", dev]);
                // ` Sent 1234 bytes 56 pkt (dropped 7, overlimits 0 requeues 0)`
                let number = |after: &str| -> u64 {
                    stats
                        .split(after)
                        .nth(1)
                        .and_then(|rest| rest.split([' ', ',']).next())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| panic!("no {after:?} in {stats}"))
                };
                let dropped = number("(dropped ");
                (number(" bytes ") + dropped, dropped)
            }
            Loss::Nft => {
                let listing = ns.output("nft", &["-j", "list", "table", "inet", NFT_TABLE]);
                let listing: Value = serde_json::from_str(&listing).expect("nft's JSON");
                let counters: Vec<u64> = listing["nftables"]
                    .as_array()
                    .expect("a list")
                    .iter()
                    .filter_map(|item| item["rule"]["expr"].as_array())
                    .filter_map(|expr| expr.iter().find_map(|e| e["counter"]["packets"].as_u64()))
                    .collect();
                assert_eq!(counters.len(), 2, "two counters in {listing}");
                (counters[0], counters[1])
            }
        };
        counts.0 += sent;
        counts.1 += dropped;
    }
    counts
}

fn remove_loss(link: Link, loss: Loss) {
    match loss {
        Loss::Netem => qdisc(link, "del", &[]).expect("netem removed"),
        Loss::Nft => {
            for (ns, _) in link {
                ns.exec("nft", &["delete", "table", "inet", NFT_TABLE])
                    .expect("nft table removed");
            }
        }
    }
}

/// `tc qdisc ACTION dev DEV root SPEC` on both ends of `link`.
fn qdisc(link: Link, action: &str, spec: &[&str]) -> Result<(), String> {
    for (ns, dev) in link {
        let mut args = vec!["qdisc", action, "dev", dev, "root"];
        args.extend_from_slice(spec);
        ns.exec("tc", &args)?;
    }
    Ok(())
}

/// What the uplink may take to notice a dead link: two silent ping intervals, checked at the
/// next ping, with room for a loaded machine.
fn detection_bound() -> Duration {
    Duration::from_secs(3 * PING_SECS * 3 + 5)
}

/// How long the broker may hold a dead gateway connection: its ping (every 15 s) drops a
/// gateway silent for two intervals, so three intervals, with room for a loaded machine.
fn broker_drop_bound() -> Duration {
    Duration::from_secs(3 * 15 * 2)
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
    let before = bed.uplink_losses();
    let cut = Instant::now();
    ip(&["-n", &bed.gateway_ns.name, "link", "set", "g0", "down"]).expect("link down");
    let (detected, _) = bed.uplink_lost(before, cut, detection_bound());
    bed.churn();
    std::thread::sleep(Duration::from_secs(60).saturating_sub(cut.elapsed()));
    ip(&["-n", &bed.gateway_ns.name, "link", "set", "g0", "up"]).expect("link up");
    let recovered = bed.converge(3, recovery_bound());
    bed.settle();
    let broker = bed.broker.as_ref().expect("a broker");
    let by_ping = broker.count_log("no answer from the gateway");
    eprintln!(
        "link cut: the gateway noticed after {detected:.1?}; the broker dropped the silent \
         gateway by ping {by_ping} time(s); after 60 s the broker agreed {recovered:.1?} after \
         the link came back"
    );
}

/// How long the link stays lossy: many pings, and time for the uplink to reconnect through the
/// loss should it give up.
const LOSS_SECS: u64 = 40;

#[test]
fn thirty_percent_packet_loss() {
    let Some(mut bed) = Testbed::new("30 % loss") else {
        return;
    };
    let reconnects_before = bed.uplink_losses();
    let loss = match add_loss(bed.uplink(), 30, bed.dir.path()) {
        Ok(loss) => loss,
        Err(why) => {
            eprintln!("SKIPPED 30 % loss: {why}");
            return;
        }
    };
    let start = Instant::now();
    bed.churn();
    // The LEDs go off again from the broker's side: writes cross the lossy link the other way.
    let rounds = bed.write_from_broker("0", Duration::from_secs(120));
    // TCP carries the uplink through the loss (or the uplink reconnects): either way the
    // broker must agree while the loss lasts, and still agree at its end.
    let agreed = bed.converge(3, Duration::from_secs(120));
    let agreed_at = start.elapsed();
    std::thread::sleep(Duration::from_secs(LOSS_SECS).saturating_sub(start.elapsed()));
    bed.converge(3, Duration::from_secs(120));
    let lossy_for = start.elapsed();
    let (packets, dropped) = loss_counts(bed.uplink(), loss);
    let reconnects = bed.uplink_losses() - reconnects_before;
    remove_loss(bed.uplink(), loss);
    let share = dropped as f64 / packets.max(1) as f64;
    // Not a timing: the loss must have been real, or the test tested nothing.
    assert!(
        packets >= 100 && (0.1..0.5).contains(&share),
        "{dropped} of {packets} packets dropped"
    );
    let recovered = bed.converge(3, recovery_bound());
    let let_go = bed.settle();
    eprintln!(
        "30 % loss ({loss:?}): {dropped} of {packets} packets dropped ({:.0} %) over \
         {lossy_for:.1?}; {reconnects} uplink reconnect(s); broker writes needed {rounds} \
         round(s); the broker agreed {agreed:.1?} after the writes ({agreed_at:.1?} into the \
         loss), {recovered:.1?} after the loss ended; stale connections gone after {let_go:.1?}",
        share * 100.0
    );
}

#[test]
fn the_broker_killed_and_restarted() {
    let Some(mut bed) = Testbed::new("broker SIGKILL") else {
        return;
    };
    bed.watcher = None;
    let before = bed.uplink_losses();
    let kill = Instant::now();
    bed.broker.take().expect("a broker").kill();
    let (detected, _) = bed.uplink_lost(before, kill, detection_bound());
    bed.churn();
    let restart = Instant::now();
    bed.start_broker();
    bed.watch();
    let recovered = bed.converge(3, recovery_bound());
    bed.settle();
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
    bed.settle();
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
    let before = bed.uplink_losses();
    let cut = Instant::now();
    qdisc(bed.uplink(), "add", &["bfifo", "limit", "0"]).expect("a dropping qdisc");
    let (detected, why) = bed.uplink_lost(before, cut, detection_bound());
    assert!(
        why.contains("no answer from the broker"),
        "the dead uplink was found by its ping going unanswered, not otherwise: {why}"
    );
    bed.churn();
    qdisc(bed.uplink(), "del", &[]).expect("path restored");
    let recovered = bed.converge(3, recovery_bound());
    // The broker's side of the dead connection ends by the broker's own ping or the gateway's
    // retransmitted FIN; either way it must not take the nodes back with it.
    let let_go = bed.settle();
    eprintln!(
        "half-open: ping/pong found the dead uplink after {detected:.1?} ({:.1} ping intervals \
         of {PING_SECS} s, bound {:?}); the broker agreed {recovered:.1?} after the path came \
         back and let go of the dead connection {let_go:.1?} later",
        detected.as_secs_f64() / PING_SECS as f64,
        detection_bound()
    );
}

/// Counts the `update`s of `endpoint` per node a web client of `url` is told until `stop`,
/// after the replay a new client gets.
async fn count_updates(
    url: &'static str,
    endpoint: &'static str,
    stop: Arc<AtomicBool>,
) -> BTreeMap<String, usize> {
    let mut client = Peer::client(url).await;
    while client.next_json(Duration::from_millis(400)).await.is_some() {}
    let mut counts = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let Some(message) = client.next_json(Duration::from_millis(200)).await else {
            continue;
        };
        if message["type"] == "update" && message["endpoint"] == endpoint {
            let uid = message["uid"].as_str().expect("a uid").to_owned();
            *counts.entry(uid).or_default() += 1;
        }
    }
    counts
}

/// How often the simulated CoAP nodes post a temperature.
const COAP_INTERVAL_SECS: u64 = 3;

/// CoAP nodes in a third namespace behind a second veth (10.231.1.0/24), like nodes behind a
/// 6LoWPAN radio, with 30 % of the packets lost each way. A web client of the broker switches
/// their LEDs: the gateway's confirmable PUT is retransmitted until the node has it. The
/// nodes' non-confirmable temperature posts lose some readings but keep arriving.
#[test]
fn thirty_percent_loss_between_coap_nodes_and_the_gateway() {
    let Some(mut bed) = Testbed::new("CoAP 30 % loss") else {
        return;
    };
    let name = format!("{}-n", bed.gateway_ns.name.trim_end_matches("-g"));
    let nodes_ns = Netns::new(name).expect("a third namespace");
    ip(&[
        "link",
        "add",
        "c0",
        "netns",
        &bed.gateway_ns.name,
        "type",
        "veth",
        "peer",
        "name",
        "c1",
        "netns",
        &nodes_ns.name,
    ])
    .expect("veth pair");
    let addresses = [
        (&bed.gateway_ns, "c0", "10.231.1.1/24"),
        (&nodes_ns, "c1", "10.231.1.2/24"),
        (&nodes_ns, "c1", "10.231.1.3/24"),
    ];
    for (ns, dev, addr) in addresses {
        ip(&["-n", &ns.name, "addr", "add", addr, "dev", dev]).expect("address");
        ip(&["-n", &ns.name, "link", "set", dev, "up"]).expect("link up");
    }
    let interval = COAP_INTERVAL_SECS.to_string();
    let args = [
        "node",
        "coap",
        "--gateway-host",
        "10.231.1.1",
        "--first-address",
        "10.231.1.2",
        "--count",
        "2",
        "--led",
        "--temperature",
        "--interval",
        &interval,
    ];
    let coap = nodes_ns.spawn(args.iter().map(|s| s.to_string()).collect());
    let start = Instant::now();
    let uids = loop {
        let view = bed.gateway_view();
        let uids: Vec<String> = view
            .iter()
            .filter(|(_, r)| r.contains_key("temperature") && r.contains_key("led"))
            .map(|(uid, _)| uid.clone())
            .collect();
        if uids.len() == 2 {
            break uids;
        }
        assert!(start.elapsed() < TIMEOUT * 6, "CoAP nodes: {view:#?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    bed.converge(5, Duration::from_secs(120));
    let loss = match add_loss(
        [(&bed.gateway_ns, "c0"), (&nodes_ns, "c1")],
        30,
        bed.dir.path(),
    ) {
        Ok(loss) => loss,
        Err(why) => {
            eprintln!("SKIPPED CoAP 30 % loss: {why}");
            return;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let counting =
        bed.broker_ns
            .runtime()
            .spawn(count_updates(BROKER_WS, "temperature", stop.clone()));
    let lossy = Instant::now();
    let mut took = Vec::new();
    let mut resent = 0;
    for value in ["1", "0", "1"] {
        for uid in &uids {
            // A PUT whose every transmission or answer is lost (about 3.5 % of them at 30 %
            // each way) is given up after up to 93 s and written again: room for three.
            let (time, writes) = bed.switch_coap_led(&coap, uid, value, Duration::from_secs(300));
            took.push(time);
            resent += writes - 1;
        }
    }
    // Readings for a while longer, then the broker must agree with the gateway while the
    // nodes go on posting through the loss.
    std::thread::sleep(Duration::from_secs(30).saturating_sub(lossy.elapsed()));
    bed.converge(5, Duration::from_secs(120));
    stop.store(true, Ordering::Relaxed);
    let counts = bed
        .broker_ns
        .runtime()
        .block_on(counting)
        .expect("the counter ends");
    let lossy_for = lossy.elapsed();
    let (packets, dropped) = loss_counts([(&bed.gateway_ns, "c0"), (&nodes_ns, "c1")], loss);
    remove_loss([(&bed.gateway_ns, "c0"), (&nodes_ns, "c1")], loss);
    bed.converge(5, recovery_bound());
    assert!(dropped > 0, "the loss was real: {dropped} of {packets}");
    for uid in &uids {
        assert!(
            counts.get(uid).copied().unwrap_or(0) > 0,
            "no temperature from {uid} reached the broker in {lossy_for:?} of loss: {counts:?}"
        );
    }
    took.sort();
    let failed = bed.gateway().count_log("CoAP write failed");
    eprintln!(
        "CoAP 30 % loss ({loss:?}): {dropped} of {packets} packets dropped ({:.0} %) over \
         {lossy_for:.1?}; {} LED writes reached the nodes in {:.1?} (median) to {:.1?} (max), \
         {failed} gave up after every retransmission and {resent} were written again; \
         temperatures at the broker {counts:?} of about {} posted each",
        dropped as f64 / packets.max(1) as f64 * 100.0,
        took.len(),
        took[took.len() / 2],
        took[took.len() - 1],
        lossy_for.as_secs() / COAP_INTERVAL_SECS,
    );
}

/// Only the uplink's connection goes dead (as when a NAT forgets it): the table changes
/// before the gateway's ping notices, so the joining node's `new`, the leaving one's `out` and
/// the LED updates wait unacknowledged in that connection's send queue. The gateway gives up on
/// it and its next connection replays the table. Then the dead connection's path comes back
/// and the gateway's kernel delivers what was queued, after the replay: none of it may take
/// the broker away from the gateway's table.
#[test]
fn changes_queued_on_a_dead_connection_do_not_come_back_stale() {
    let Some(mut bed) = Testbed::new("queued on a dead connection") else {
        return;
    };
    let line = bed
        .broker
        .as_ref()
        .expect("a broker")
        .wait_for_log(&["gateway connected"], TIMEOUT);
    let port = line
        .split(&format!("peer={GATEWAY_IP}:"))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the gateway's port")
        .to_owned();
    for (ns, matching) in [
        (&bed.gateway_ns, format!("tcp sport {port}")),
        (&bed.broker_ns, format!("tcp dport {port}")),
    ] {
        let rules = format!(
            "table inet aiot_cut {{\n  chain out {{\n    type filter hook output priority 0; \
             policy accept;\n    {matching} drop\n  }}\n}}\n"
        );
        let file = bed.path(&format!("cut-{}.nft", ns.name));
        std::fs::write(&file, rules).expect("rules written");
        if let Err(why) = ns.exec("nft", &["-f", &file]) {
            eprintln!("SKIPPED queued on a dead connection: no nftables ({why})");
            return;
        }
    }
    let before = bed.uplink_losses();
    let cut = Instant::now();
    bed.churn();
    let (detected, _) = bed.uplink_lost(before, cut, detection_bound());
    bed.gateway()
        .wait_for_count("connected to broker", 2, recovery_bound());
    // The new connection's replay is through; the dead one still holds the changes.
    std::thread::sleep(Duration::from_secs(2));
    for ns in [&bed.gateway_ns, &bed.broker_ns] {
        ns.exec("nft", &["delete", "table", "inet", "aiot_cut"])
            .expect("path back");
    }
    let let_go = bed.settle();
    eprintln!(
        "queued on a dead connection: the gateway gave up on it after {detected:.1?}; after its \
         path came back the broker let go of it in {let_go:.1?} and agreed with the gateway"
    );
}

/// The table changes on a half-open uplink before the gateway's ping notices, so the changes
/// wait in the dead connection's send queue while the gateway reconnects.
#[test]
fn changes_made_on_a_half_open_uplink_before_the_ping_notices() {
    let Some(mut bed) = Testbed::new("changes on a half-open uplink") else {
        return;
    };
    let before = bed.uplink_losses();
    let cut = Instant::now();
    qdisc(bed.uplink(), "add", &["bfifo", "limit", "0"]).expect("a dropping qdisc");
    bed.churn();
    let (detected, _) = bed.uplink_lost(before, cut, detection_bound());
    qdisc(bed.uplink(), "del", &[]).expect("path restored");
    let recovered = bed.converge(3, recovery_bound());
    let let_go = bed.settle();
    eprintln!(
        "changes on a half-open uplink: made before the ping noticed ({detected:.1?}); the \
         broker agreed {recovered:.1?} after the path came back and let go of the dead \
         connection {let_go:.1?} later"
    );
}
