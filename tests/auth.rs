//! Gateway authentication on `/gw`: pyaiot's Fernet token, both directions with Python's
//! `cryptography`, 401 before the upgrade, and a gateway with the wrong key that keeps trying.

mod common;

use std::process::Command;

use common::{Aiot, TIMEOUT, broker_with_keys, gateway, key_file};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

fn python(args: &[&str]) -> std::process::Output {
    Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/fernet_token.py"
        ))
        .args(args)
        .output()
        .expect("python3 runs (ci/test installs it with the cryptography package)")
}

/// Opens `/gw` offering `subprotocols` (as one header line), and returns the HTTP status.
async fn gw_status(addr: std::net::SocketAddr, subprotocols: Option<&str>) -> u16 {
    let mut request = format!("ws://{addr}/gw")
        .into_client_request()
        .expect("request");
    if let Some(value) = subprotocols {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            value.parse().expect("header value"),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected handshake error: {other}"),
    }
}

#[tokio::test]
async fn tokens_made_by_python_open_the_broker_and_ours_verify_in_python() {
    let (_broker, addr, dir) = broker_with_keys();
    let keys = key_file(&dir);

    let made = python(&["make", &keys]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let python_token = String::from_utf8(made.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let loaded = aiot::keys::Keys::load(std::path::Path::new(&keys)).expect("key file loads");
    assert!(
        loaded.verify(&python_token),
        "a Python token verifies in aiot"
    );
    assert_eq!(
        gw_status(addr, Some(&format!("token, {python_token}"))).await,
        101
    );

    let ours = loaded.token();
    let verified = python(&["verify", &keys, &ours]);
    assert!(
        verified.status.success(),
        "an aiot token verifies in Python: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let other = tempfile::tempdir().expect("temp dir");
    let other_keys = other.path().join("keys");
    aiot::keys::Keys::generate()
        .write(&other_keys, false)
        .expect("written");
    let refused = python(&["verify", other_keys.to_str().expect("utf-8"), &ours]);
    assert_eq!(refused.status.code(), Some(2), "and fails under other keys");
}

/// The token with one character of its ciphertext changed.
fn tampered(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let middle = chars.len() / 2;
    chars[middle] = if chars[middle] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[tokio::test]
async fn missing_or_wrong_tokens_get_401_before_any_upgrade() {
    let (broker, addr, dir) = broker_with_keys();
    let other = tempfile::tempdir().expect("temp dir");
    let wrong = aiot::keys::Keys::generate();
    wrong
        .write(&other.path().join("keys"), false)
        .expect("written");
    let right = aiot::keys::Keys::load(&dir.path().join("keys"))
        .expect("loads")
        .token();

    for subprotocols in [
        None,
        Some("token".to_owned()),
        Some(format!("bearer, {right}")),
        Some(format!("token, {right}, extra")),
        Some(format!("token, {}", wrong.token())),
        Some("token, garbage".to_owned()),
        Some(format!("token, {}", tampered(&right))),
    ] {
        assert_eq!(
            gw_status(addr, subprotocols.as_deref()).await,
            401,
            "{subprotocols:?}"
        );
    }
    assert_eq!(gw_status(addr, Some(&format!("token, {right}"))).await, 101);
    broker.wait_for_log(&["gateway refused", "invalid token"], TIMEOUT);
    assert!(
        !broker.log_text().contains(&right),
        "no token or secret in the log"
    );
}

#[test]
fn a_gateway_with_the_wrong_key_keeps_retrying_and_says_why() {
    let (_broker, addr, _dir) = broker_with_keys();
    let other = tempfile::tempdir().expect("temp dir");
    let wrong_keys = other.path().join("keys");
    aiot::keys::Keys::generate()
        .write(&wrong_keys, false)
        .expect("written");
    let (mut gateway, _, _) = gateway(Some((addr, wrong_keys.to_str().expect("utf-8"))), &[]);
    // Attempts 1 and 2 wait at most 0.5 s and 1 s: three refusals come within a few seconds.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while gateway.count_log("the broker refused our key (HTTP 401)") < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            gateway.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    gateway.wait_for_log(&["refused our key", "retrying in"], TIMEOUT);
    assert!(
        gateway.wait_exit(std::time::Duration::ZERO).is_none(),
        "the gateway is still up"
    );
}

#[test]
fn the_broker_refuses_to_start_without_a_key_file_and_says_how_to_make_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nope");
    let mut broker = Aiot::spawn(&[
        "broker",
        "--broker-port",
        "0",
        "--key-file",
        missing.to_str().expect("utf-8"),
    ]);
    let status = broker.wait_exit(TIMEOUT).expect("exits");
    assert!(!status.success());
    let output = Command::new(env!("CARGO_BIN_EXE_aiot"))
        .args(["broker", "--broker-port", "0", "--key-file"])
        .env("AIOT_ALLOW_ROOT", "1")
        .arg(&missing)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("aiot keys generate"), "{stderr}");
    assert!(stderr.contains("nope"), "{stderr}");
}
