//! What a browser controls in a websocket upgrade or a login: `Origin`, `Host` and `Cookie`
//! (one line each of the input). Nothing panics; an origin that parses prints and parses back
//! the same; no cookie, however made, opens a session that was never handed out.
#![no_main]

use std::time::Duration;

use aiot::web::auth::{Access, Auth};
use aiot::web::origin::{OriginPolicy, parse_origin, split_host_port};
use aiot::web::password::Verifier;
use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";

fuzz_target!(|data: &[u8]| {
    let mut lines = data.splitn(3, |&b| b == b'\n');
    let mut headers = HeaderMap::new();
    for name in [header::ORIGIN, header::HOST, header::COOKIE] {
        if let Some(value) = lines.next().and_then(|l| HeaderValue::from_bytes(l).ok()) {
            headers.insert(name, value);
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        if let Some((scheme, host, port)) = parse_origin(origin) {
            let again = format!("{scheme}://{host}:{port}");
            assert_eq!(parse_origin(&again), Some((scheme, host, port)));
        }
        let _ = split_host_port(origin);
    }
    let _ = OriginPolicy::new(&[]).check(&headers);
    let auth = Auth::new(
        Some(Verifier::from_phc(HASH).expect("a valid hash")),
        Duration::from_secs(60),
        5,
    );
    assert_eq!(auth.access(&headers), Access::Anonymous);
});
