//! The command line as a user meets it: help, keys, config.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

fn aiot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aiot"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("aiot runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_command_has_help() {
    for command in [
        vec![],
        vec!["broker"],
        vec!["gateway"],
        vec!["node"],
        vec!["node", "ws"],
        vec!["keys"],
        vec!["keys", "generate"],
        vec!["config"],
        vec!["config", "check"],
        vec!["demo"],
    ] {
        let mut args = command.clone();
        args.push("--help");
        let output = aiot(&args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            text(&output.stderr)
        );
        assert!(text(&output.stdout).contains("Usage"), "{args:?}");
    }
}

#[test]
fn pyaiot_flag_names_are_accepted() {
    let help = text(&aiot(&["gateway", "--help"]).stdout);
    for flag in [
        "--broker-host",
        "--broker-port",
        "--key-file",
        "--gateway-port",
        "--web-port",
        "--max-time",
        "--debug",
    ] {
        assert!(help.contains(flag), "gateway --help lacks {flag}");
    }
    let help = text(&aiot(&["broker", "--help"]).stdout);
    assert!(help.contains("--broker-port") && help.contains("--key-file"));
}

#[test]
fn keys_generate_writes_a_private_pyaiot_key_file_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("new").join("keys");
    let path_text = path.to_str().expect("utf-8");
    let output = aiot(&["keys", "generate", "--key-file", path_text]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let content = std::fs::read_to_string(&path).expect("written");
    assert!(content.starts_with("[keys]\n"), "{content}");
    assert!(content.contains("secret = ") && content.contains("private = "));
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().expect("dir")), 0o700);

    let again = aiot(&["keys", "generate", "--key-file", path_text]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("--force"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&path).expect("still there"),
        content
    );

    let forced = aiot(&["keys", "generate", "--key-file", path_text, "--force"]);
    assert!(forced.status.success());
    assert_ne!(std::fs::read_to_string(&path).expect("replaced"), content);
}

#[test]
fn keys_default_to_pyaiot_s_path_under_home() {
    let home = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_aiot"))
        .args(["keys", "generate"])
        .env("HOME", home.path())
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(home.path().join(".pyaiot/keys").is_file());
}

#[test]
fn config_default_prints_a_file_that_config_check_accepts() {
    let output = aiot(&["config", "default"]);
    assert!(output.status.success());
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("aiot.toml");
    std::fs::write(&path, &output.stdout).expect("write");
    let check = aiot(&["config", "check", path.to_str().expect("utf-8")]);
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert!(text(&check.stdout).contains("OK"));
}

#[test]
fn config_check_names_the_unknown_key_and_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, "[broker]\nprot = 8000\n").expect("write");
    let check = aiot(&["config", "check", path.to_str().expect("utf-8")]);
    assert!(!check.status.success());
    let stderr = text(&check.stderr);
    assert!(
        stderr.contains("prot") && stderr.contains("broken.toml"),
        "{stderr}"
    );

    // The same file given to a role stops it before it listens.
    let run = aiot(&["--config", path.to_str().expect("utf-8"), "gateway"]);
    assert!(!run.status.success());
    assert!(text(&run.stderr).contains("prot"));
}

#[test]
fn flags_override_the_config_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("aiot.toml");
    // A port that cannot be bound in the file; the flag must win.
    std::fs::write(
        &path,
        "[gateway]\nbind = \"127.0.0.1\"\ngateway_port = 1\nweb_port = 1\n",
    )
    .expect("write");
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_aiot"))
        .args(["--config", path.to_str().expect("utf-8"), "gateway"])
        .args(common::GATEWAY_ON_LOOPBACK)
        .env("RUST_LOG", "aiot=info")
        .env("AIOT_ALLOW_ROOT", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let alive = gateway.try_wait().expect("try_wait").is_none();
    let _ = gateway.kill();
    let output = gateway.wait_with_output().expect("output");
    assert!(
        alive,
        "the gateway listens on the flags' ports: {}",
        text(&output.stderr)
    );
}
