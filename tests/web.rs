//! Serving the dashboard and the operator endpoints: MIME types, compression, ETags, the
//! security headers, `/api/*`, `/healthz`, `/metrics`, and `aiot dashboard`.

mod common;

use std::io::Read as _;

use common::{Aiot, Peer, TIMEOUT, broker_with_keys, gateway, http_get, key_file};
use serde_json::json;

#[tokio::test]
async fn the_page_and_its_files_are_served_with_the_right_headers() {
    let (_gateway, _, web) = gateway(None, &["--title", "Greenhouse"]);
    let page = http_get(web, "/", &[]).await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .expect("type")
            .starts_with("text/html")
    );
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert!(
        !page.text().contains("<script>"),
        "no inline script in the page"
    );

    for (path, mime) in [
        ("/static/app.js", "javascript"),
        ("/app.js", "javascript"),
        ("/static/style.css", "text/css"),
        ("/static/logo.svg", "image/svg+xml"),
    ] {
        let file = http_get(web, path, &[]).await;
        assert_eq!(file.status, 200, "{path}");
        assert!(
            file.header("content-type").expect("type").contains(mime),
            "{path}"
        );
        assert!(file.header("etag").is_some(), "{path}");
        assert_eq!(file.header("cache-control"), Some("no-cache"));
    }
    assert_eq!(http_get(web, "/static/nope.js", &[]).await.status, 404);
    assert_eq!(
        http_get(web, "/static/../Cargo.toml", &[]).await.status,
        404
    );

    let config = http_get(web, "/api/config", &[]).await;
    assert_eq!(config.status, 200);
    let config = config.json();
    assert_eq!(config["title"], "Greenhouse");
    assert_eq!(config["role"], "gateway");
    assert_eq!(config["ws_url"], serde_json::Value::Null);
}

#[tokio::test]
async fn assets_are_compressed_when_accepted_and_revalidated_with_etags() {
    let (_gateway, _, web) = gateway(None, &[]);
    let plain = http_get(web, "/static/style.css", &[]).await;
    let etag = plain.header("etag").expect("etag").to_owned();

    let gzip = http_get(web, "/static/style.css", &[("Accept-Encoding", "gzip")]).await;
    assert_eq!(gzip.header("content-encoding"), Some("gzip"));
    assert_eq!(gzip.header("vary"), Some("accept-encoding"));
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&gzip.body[..])
        .read_to_end(&mut unzipped)
        .expect("valid gzip");
    assert_eq!(unzipped, plain.body);
    assert!(gzip.body.len() < plain.body.len() / 2);

    // A browser's usual offer gets gzip (brotli is not served: docs/benchmarks.md), and a
    // client that takes only brotli gets the file as it is.
    let browser = http_get(
        web,
        "/static/style.css",
        &[("Accept-Encoding", "gzip, deflate, br")],
    )
    .await;
    assert_eq!(browser.header("content-encoding"), Some("gzip"));
    assert_eq!(browser.body, gzip.body);
    let br_only = http_get(web, "/static/style.css", &[("Accept-Encoding", "br")]).await;
    assert_eq!(br_only.header("content-encoding"), None);
    assert_eq!(br_only.body, plain.body);

    let again = http_get(web, "/static/style.css", &[("If-None-Match", &etag)]).await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    let changed = http_get(web, "/static/style.css", &[("If-None-Match", "\"other\"")]).await;
    assert_eq!(changed.status, 200);
}

#[tokio::test]
async fn healthz_history_and_metrics_tell_the_truth() {
    let (_broker, broker_addr, keys) = broker_with_keys();
    let (gateway, node_addr, web) = gateway(Some((broker_addr, &key_file(&keys))), &[]);
    gateway.wait_for_log(&["connected to broker"], TIMEOUT);
    let mut node = Peer::node(node_addr).await;
    for reading in ["20°C", "21.5°C", "23°C"] {
        node.send_json(&json!({"type": "update", "data": {"temperature": reading}}))
            .await;
    }
    let mut client = Peer::client(&format!("ws://{web}/ws")).await;
    let update = client
        .wait_for(TIMEOUT, |m| {
            m["endpoint"] == "temperature" && m["data"] == "23°C"
        })
        .await;
    let uid = update["uid"].as_str().expect("uid").to_owned();

    let health = http_get(web, "/healthz", &[]).await.json();
    assert_eq!(health["role"], "gateway");
    assert_eq!(health["nodes"], 1);
    assert_eq!(health["uplink"], "connected");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));

    let history = http_get(web, "/api/history", &[]).await.json();
    let points = history[&uid]["temperature"].as_array().expect("points");
    let values: Vec<f64> = points
        .iter()
        .map(|p| p[1].as_f64().expect("number"))
        .collect();
    assert_eq!(values, [20.0, 21.5, 23.0]);
    let one = http_get(web, &format!("/api/history?uid={uid}"), &[])
        .await
        .json();
    assert_eq!(one, history);

    let metrics = http_get(web, "/metrics", &[]).await;
    assert!(
        metrics
            .header("content-type")
            .expect("type")
            .starts_with("text/plain")
    );
    let text = metrics.text();
    for expected in [
        "aiot_nodes 1\n",
        "aiot_uplink_connected 1\n",
        "aiot_connections{channel=\"websocket_node\"} 1\n",
        "aiot_connections{channel=\"web_client\"} 1\n",
        "aiot_messages_received_total{channel=\"websocket_node\"} 3\n",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    // The hub, two HTTP servers, the uplink, the node's and the client's sessions at least.
    let tasks: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("aiot_tokio_tasks "))
        .expect("aiot_tokio_tasks")
        .parse()
        .expect("a number");
    assert!(tasks >= 6, "{tasks} tasks in\n{text}");
    let broker_metrics = http_get(broker_addr, "/metrics", &[]).await.text();
    assert!(
        broker_metrics.contains("aiot_connections{channel=\"gateway\"} 1\n"),
        "{broker_metrics}"
    );
    let broker_health = http_get(broker_addr, "/healthz", &[]).await.json();
    assert_eq!(broker_health["role"], "broker");
    assert_eq!(broker_health["uplink"], serde_json::Value::Null);
}

#[tokio::test]
async fn the_standalone_dashboard_points_browsers_at_its_broker() {
    let dashboard = Aiot::spawn(&[
        "dashboard",
        "--bind",
        "127.0.0.1",
        "--web-port",
        "0",
        "--broker-host",
        "broker.example",
        "--broker-port",
        "8443",
        "--broker-ssl",
        "--title",
        "Fleet",
        "--camera-url",
        "http://camera.local/snap.jpg",
    ]);
    let addr = dashboard.listening("dashboard");
    let config = http_get(addr, "/api/config", &[]).await.json();
    assert_eq!(config["ws_url"], "wss://broker.example:8443/ws");
    assert_eq!(config["role"], "dashboard");
    assert_eq!(config["title"], "Fleet");
    assert_eq!(config["camera_url"], "http://camera.local/snap.jpg");
    assert_eq!(http_get(addr, "/", &[]).await.status, 200);
    assert_eq!(http_get(addr, "/api/history", &[]).await.status, 404);
}
