//! What the appliance relies on, as its units use the binary: the server roles refuse root
//! unless asked (the one-shot and loopback commands do not), run unprivileged with an ambient
//! CAP_NET_BIND_SERVICE for a port below 1024, and find their key file under systemd's
//! `$STATE_DIRECTORY`.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{GATEWAY_ON_LOOPBACK, Lines, TIMEOUT, collect_lines};

const BIN: &str = env!("CARGO_BIN_EXE_aiot");
const NOBODY: &str = "65534";

/// A process whose log is collected; killed when dropped.
struct Proc {
    child: Child,
    log: Lines,
}

impl Proc {
    fn spawn(mut command: Command) -> Proc {
        command
            .env("RUST_LOG", "aiot=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("starts");
        let log = collect_lines(child.stderr.take().expect("piped"));
        Proc { child, log }
    }

    fn text(&self) -> String {
        self.log.0.lock().expect("log lock").join("\n")
    }

    /// Waits until a log line contains `needle` (true) or the process exits (false).
    fn reaches(&mut self, needle: &str) -> bool {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if self.text().contains(needle) {
                return true;
            }
            if self.child.try_wait().expect("try_wait").is_some() {
                // The last lines may still be on their way through the pipe.
                std::thread::sleep(Duration::from_millis(100));
                return self.text().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "neither {needle:?} nor an exit within {TIMEOUT:?}:\n{}",
            self.text()
        );
    }

    fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // The last lines may still be on their way through the pipe.
                std::thread::sleep(Duration::from_millis(100));
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("still running:\n{}", self.text());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn gateway(extra: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("gateway")
        .args(GATEWAY_ON_LOOPBACK)
        .args(extra)
        .env_remove("AIOT_ALLOW_ROOT");
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// `setpriv` running `BIN` as nobody, with `caps` (e.g. "+net_bind_service") inheritable and
/// ambient, as systemd's `AmbientCapabilities=` does.
fn as_nobody(caps: Option<&str>) -> Command {
    let mut command = Command::new("setpriv");
    command.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
    ]);
    if let Some(caps) = caps {
        command.args([
            &format!("--inh-caps={caps}"),
            &format!("--ambient-caps={caps}"),
        ]);
    }
    command.arg(BIN).env_remove("AIOT_ALLOW_ROOT");
    command
}

#[test]
fn server_roles_refuse_root_unless_asked() {
    if !is_root() {
        eprintln!("not root: nothing to refuse here (CI runs as root)");
        return;
    }
    let mut refused = Proc::spawn(gateway(&[], &[]));
    assert_eq!(refused.exit_code(), Some(1));
    let text = refused.text();
    assert!(
        text.contains("refusing to run the gateway as root"),
        "{text}"
    );
    assert!(text.contains("--allow-root"), "{text}");
    assert!(text.contains("AIOT_ALLOW_ROOT=1"), "{text}");

    // A false value of the variable does not count as asking.
    let mut refused = Proc::spawn(gateway(&[], &[("AIOT_ALLOW_ROOT", "0")]));
    assert_eq!(refused.exit_code(), Some(1), "{}", refused.text());

    for role in ["broker", "dashboard"] {
        let mut command = Command::new(BIN);
        command
            .args([role, "--bind", "127.0.0.1"])
            .env_remove("AIOT_ALLOW_ROOT");
        let mut refused = Proc::spawn(command);
        assert_eq!(refused.exit_code(), Some(1), "{}", refused.text());
        assert!(refused.text().contains(&format!("run the {role} as root")));
    }

    let mut flag = Proc::spawn(gateway(&["--allow-root"], &[]));
    assert!(flag.reaches("listening for web clients"), "{}", flag.text());
    let mut env = Proc::spawn(gateway(&[], &[("AIOT_ALLOW_ROOT", "1")]));
    assert!(env.reaches("listening for web clients"), "{}", env.text());
}

#[test]
fn demo_nodes_keys_and_config_run_as_root_without_asking() {
    let mut demo = Command::new(BIN);
    demo.args([
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
    ])
    .env_remove("AIOT_ALLOW_ROOT");
    let mut demo = Proc::spawn(demo);
    assert!(demo.reaches("connected to broker"), "{}", demo.text());

    let mut node = Command::new(BIN);
    node.args([
        "node",
        "ws",
        "--gateway-host",
        "127.0.0.1",
        "--gateway-port",
        "9",
    ])
    .env_remove("AIOT_ALLOW_ROOT");
    let mut node = Proc::spawn(node);
    // It keeps trying to reach a gateway that is not there, rather than refusing.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        node.child.try_wait().expect("try_wait").is_none(),
        "{}",
        node.text()
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    let status = Command::new(BIN)
        .args(["keys", "generate", "--key-file"])
        .arg(&keys)
        .env_remove("AIOT_ALLOW_ROOT")
        .stdout(Stdio::null())
        .status()
        .expect("runs");
    assert!(status.success());
    let status = Command::new(BIN)
        .args(["config", "check", "config/default.toml"])
        .env_remove("AIOT_ALLOW_ROOT")
        .stdout(Stdio::null())
        .status()
        .expect("runs");
    assert!(status.success());
}

#[test]
fn an_unprivileged_gateway_needs_no_flag() {
    let mut command = as_nobody(None);
    command.arg("gateway").args(GATEWAY_ON_LOOPBACK);
    let mut gateway = Proc::spawn(command);
    assert!(
        gateway.reaches("listening for web clients"),
        "{}",
        gateway.text()
    );
}

/// A port below 1024 that is free on 127.0.0.1 right now.
fn free_privileged_port() -> u16 {
    (600..1000)
        .map(|_| fastrand::u16(600..1000))
        .find(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port below 1024")
}

#[test]
fn an_ambient_net_bind_service_gives_a_privileged_port_and_nothing_else_does() {
    if !is_root() {
        eprintln!("not root: cannot switch users to test capabilities");
        return;
    }
    let port = free_privileged_port().to_string();
    // The loopback flags with the web port replaced by the privileged one.
    let mut args: Vec<&str> = GATEWAY_ON_LOOPBACK.to_vec();
    let at = args
        .iter()
        .position(|a| *a == "--web-port")
        .expect("--web-port")
        + 1;
    args[at] = &port;

    let mut without = as_nobody(None);
    without.arg("gateway").args(&args);
    let mut without = Proc::spawn(without);
    assert_eq!(without.exit_code(), Some(1), "{}", without.text());
    assert!(
        without.text().contains("ermission denied"),
        "{}",
        without.text()
    );

    let mut with = as_nobody(Some("+net_bind_service"));
    with.arg("gateway").args(&args);
    let mut with = Proc::spawn(with);
    assert!(
        with.reaches(&format!("addr=127.0.0.1:{port}")),
        "{}",
        with.text()
    );
}

#[test]
fn the_default_key_file_lives_in_the_state_directory() {
    let state = tempfile::tempdir().expect("temp dir");
    let home = tempfile::tempdir().expect("temp dir");
    let output = Command::new(BIN)
        .args(["keys", "generate"])
        .env("STATE_DIRECTORY", state.path())
        .env("HOME", home.path())
        .output()
        .expect("runs");
    assert!(output.status.success(), "{output:?}");
    assert!(state.path().join("keys").is_file());
    assert!(!home.path().join(".pyaiot").exists());

    // The broker finds it there with no --key-file.
    let mut broker = Command::new(BIN);
    broker
        .args(["broker", "--bind", "127.0.0.1", "--broker-port", "0"])
        .env("STATE_DIRECTORY", state.path())
        .env("HOME", home.path())
        .env("AIOT_ALLOW_ROOT", "1");
    let mut broker = Proc::spawn(broker);
    assert!(broker.reaches("listening"), "{}", broker.text());
    assert!(!broker.text().contains("key file"), "{}", broker.text());
}
