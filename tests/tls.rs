//! TLS on the broker and the uplink, with real processes and certificates made here: wss://
//! end to end, refusals that say why, mutual TLS, and a certificate reload on SIGHUP that
//! leaves the connections that are up alone.

mod common;
mod tls_support;

use std::time::Duration;

use common::{Aiot, Peer, TIMEOUT, broker_with_keys_args, gateway, is_update, key_file};
use serde_json::json;
use tls_support::{Ca, https_status, served, tls_connect, wait_for, wss_client};

/// A gateway whose uplink goes to `wss://localhost:PORT/gw`, with `extra` flags.
fn tls_gateway(
    broker: std::net::SocketAddr,
    keys: &str,
    extra: &[&str],
) -> (Aiot, std::net::SocketAddr, std::net::SocketAddr) {
    let url = format!("wss://localhost:{}/gw", broker.port());
    let mut args = vec!["--broker-url", &url, "--key-file", keys];
    args.extend_from_slice(extra);
    gateway(None, &args)
}

#[tokio::test]
async fn a_node_reaches_a_wss_web_client_through_a_wss_uplink() {
    let certs = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(certs.path(), "main");
    let server = ca.leaf("broker", false);
    let (broker, addr, dir) = broker_with_keys_args(&[
        "--tls-cert",
        server.cert_str(),
        "--tls-key",
        server.key_str(),
    ]);
    broker.wait_for_log(&["listening", "scheme=TLS"], TIMEOUT);
    let keys = key_file(&dir);
    // The gateway's own dashboard over https:// too, with the same kind of flags.
    let web_cert = ca.leaf("gateway-web", false);
    let (gateway, node_addr, web_addr) = tls_gateway(
        addr,
        &keys,
        &[
            "--broker-ca",
            &ca.pem_str(),
            "--tls-cert",
            web_cert.cert_str(),
            "--tls-key",
            web_cert.key_str(),
        ],
    );
    gateway.wait_for_log(&["connected to broker", "wss://localhost"], TIMEOUT);

    let mut node = Peer::node(node_addr).await;
    node.send_json(&json!({"type": "update", "data": {"temperature": "21°C"}}))
        .await;
    let mut client = wss_client(addr, &ca.pem_path()).await;
    // The node's value, replayed to this client, then a live one broadcast. (The gateway's
    // own replay, addressed to the client, may carry either value: protocol.md.)
    wait_for(&mut client, TIMEOUT, |m| {
        is_update(m, None, "temperature", &json!("21°C"))
    })
    .await;
    node.send_json(&json!({"type": "update", "data": {"temperature": "22°C"}}))
        .await;
    wait_for(&mut client, TIMEOUT, |m| {
        is_update(m, None, "temperature", &json!("22°C")) && m["dst"] == "all"
    })
    .await;

    assert_eq!(https_status(addr, &ca.pem_path(), "/healthz").await, 200);
    assert_eq!(
        https_status(web_addr, &ca.pem_path(), "/healthz").await,
        200
    );
    // Plain HTTP to a TLS port is not served.
    let plain = tokio::time::timeout(
        TIMEOUT,
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
    )
    .await
    .expect("an answer in time");
    assert!(plain.is_err(), "plain ws:// to the TLS port must fail");
}

#[test]
fn a_wrong_ca_and_an_expired_certificate_are_refused_with_clear_log_lines() {
    let certs = tempfile::tempdir().expect("temp dir");
    let trusted = Ca::new(certs.path(), "trusted");
    let stranger = Ca::new(certs.path(), "stranger");

    let foreign = stranger.leaf("foreign", false);
    let (broker, addr, dir) = broker_with_keys_args(&[
        "--tls-cert",
        foreign.cert_str(),
        "--tls-key",
        foreign.key_str(),
    ]);
    let (gateway, _, _) = tls_gateway(addr, &key_file(&dir), &["--broker-ca", &trusted.pem_str()]);
    gateway.wait_for_log(
        &[
            "the broker's certificate is not signed by a CA we trust",
            "retrying in",
        ],
        TIMEOUT,
    );
    broker.wait_for_log(
        &["TLS handshake failed", "refused our certificate"],
        TIMEOUT,
    );
    assert_eq!(gateway.count_log("connected to broker"), 0);

    let expired = trusted.leaf("expired", true);
    let (broker, addr, dir) = broker_with_keys_args(&[
        "--tls-cert",
        expired.cert_str(),
        "--tls-key",
        expired.key_str(),
    ]);
    let (gateway, _, _) = tls_gateway(addr, &key_file(&dir), &["--broker-ca", &trusted.pem_str()]);
    gateway.wait_for_log(
        &["the broker's certificate has expired", "retrying in"],
        TIMEOUT,
    );
    broker.wait_for_log(&["TLS handshake failed"], TIMEOUT);
    assert_eq!(gateway.count_log("connected to broker"), 0);
}

#[test]
fn mutual_tls_refuses_a_gateway_without_a_client_certificate_and_admits_one_with() {
    let certs = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(certs.path(), "servers");
    let clients = Ca::new(certs.path(), "clients");
    let server = ca.leaf("broker", false);
    let (broker, addr, dir) = broker_with_keys_args(&[
        "--tls-cert",
        server.cert_str(),
        "--tls-key",
        server.key_str(),
        "--tls-client-ca",
        &clients.pem_str(),
    ]);
    let keys = key_file(&dir);

    let (without, _, _) = tls_gateway(addr, &keys, &["--broker-ca", &ca.pem_str()]);
    without.wait_for_log(&["requires a client certificate", "retrying in"], TIMEOUT);
    broker.wait_for_log(
        &["TLS handshake failed", "presented no certificate"],
        TIMEOUT,
    );

    // A certificate from another CA is no better.
    let stranger = ca.leaf("stranger-client", false);
    let (wrong, _, _) = tls_gateway(
        addr,
        &keys,
        &[
            "--broker-ca",
            &ca.pem_str(),
            "--tls-client-cert",
            stranger.cert_str(),
            "--tls-client-key",
            stranger.key_str(),
        ],
    );
    wrong.wait_for_log(&["TLS: the broker refused", "retrying in"], TIMEOUT);
    broker.wait_for_log(
        &[
            "TLS handshake failed",
            "not signed by the CA of --tls-client-ca",
        ],
        TIMEOUT,
    );

    let mine = clients.leaf("gateway-1", false);
    let (with, _, _) = tls_gateway(
        addr,
        &keys,
        &[
            "--broker-ca",
            &ca.pem_str(),
            "--tls-client-cert",
            mine.cert_str(),
            "--tls-client-key",
            mine.key_str(),
        ],
    );
    with.wait_for_log(&["connected to broker"], TIMEOUT);
    broker.wait_for_log(&["gateway connected"], TIMEOUT);
    assert_eq!(without.count_log("connected to broker"), 0);
    assert_eq!(wrong.count_log("connected to broker"), 0);
}

#[tokio::test]
async fn sighup_serves_a_new_certificate_to_new_connections_and_keeps_the_uplink() {
    let certs = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(certs.path(), "main");
    let first = ca.leaf("broker", false);
    let first_der = first.der();
    let (broker, addr, dir) =
        broker_with_keys_args(&["--tls-cert", first.cert_str(), "--tls-key", first.key_str()]);
    let before = tls_connect(addr, &ca.pem_path(), None).await.expect("TLS");
    assert_eq!(served(&before), first_der);

    let (gateway, node_addr, _) =
        tls_gateway(addr, &key_file(&dir), &["--broker-ca", &ca.pem_str()]);
    gateway.wait_for_log(&["connected to broker"], TIMEOUT);
    let mut node = Peer::node(node_addr).await;
    node.send_json(&json!({"type": "update", "data": {"led": "0"}}))
        .await;
    let mut client = wss_client(addr, &ca.pem_path()).await;
    wait_for(&mut client, TIMEOUT, |m| {
        is_update(m, None, "led", &json!("0"))
    })
    .await;

    // The same file names, a new certificate and key (as a renewal writes them).
    let second = ca.leaf("broker", false);
    let second_der = second.der();
    assert_ne!(first_der, second_der);
    broker.signal(nix::sys::signal::Signal::SIGHUP);
    broker.wait_for_log(&["TLS certificate and key reloaded"], TIMEOUT);
    let after = tls_connect(addr, &ca.pem_path(), None).await.expect("TLS");
    assert_eq!(
        served(&after),
        second_der,
        "new connections get the new certificate"
    );

    // The uplink and the web client from before are still up and still carry updates.
    node.send_json(&json!({"type": "update", "data": {"led": "1"}}))
        .await;
    wait_for(&mut client, TIMEOUT, |m| {
        is_update(m, None, "led", &json!("1"))
    })
    .await;
    assert_eq!(gateway.count_log("connected to broker"), 1);
    assert_eq!(gateway.count_log("connection lost"), 0);

    // A broken file on reload keeps the certificate in use, and the broker up.
    std::fs::write(&second.key, "-----BEGIN PRIVATE KEY-----\ngarbage\n").expect("write");
    broker.signal(nix::sys::signal::Signal::SIGHUP);
    broker.wait_for_log(
        &["TLS reload failed, keeping the certificate in use"],
        TIMEOUT,
    );
    let still = tls_connect(addr, &ca.pem_path(), None).await.expect("TLS");
    assert_eq!(served(&still), second_der);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(gateway.count_log("connected to broker"), 1);
}

#[test]
fn bad_tls_files_stop_the_start_with_the_file_named() {
    let certs = tempfile::tempdir().expect("temp dir");
    let missing = certs.path().join("absent.pem");
    let missing = missing.to_str().expect("utf-8");
    let (mut broker, (), _dir) = {
        let dir = tempfile::tempdir().expect("temp dir");
        let keys = dir.path().join("keys");
        aiot::keys::Keys::generate()
            .write(&keys, false)
            .expect("keys");
        let broker = Aiot::spawn(&[
            "broker",
            "--bind",
            "127.0.0.1",
            "--broker-port",
            "0",
            "--key-file",
            keys.to_str().expect("utf-8"),
            "--tls-cert",
            missing,
            "--tls-key",
            missing,
        ]);
        (broker, (), dir)
    };
    let status = broker.wait_exit(TIMEOUT).expect("the broker exits");
    assert!(!status.success());
    broker.wait_for_log(&["absent.pem"], TIMEOUT);
}
