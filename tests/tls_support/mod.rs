//! Certificates made in the test (rcgen) and a TLS client that is not aiot's own code.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;

/// A test certificate authority that writes its files into a directory.
pub struct Ca {
    dir: PathBuf,
    name: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM files.
#[derive(Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Leaf {
    pub fn cert_str(&self) -> &str {
        self.cert.to_str().expect("utf-8 path")
    }
    pub fn key_str(&self) -> &str {
        self.key.to_str().expect("utf-8 path")
    }
    /// The certificate's DER, to compare with what a server presents.
    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(&self.cert).expect("a PEM certificate")
    }
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("aiot test CA {name}"));
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        std::fs::write(dir.join(format!("{name}-ca.pem")), issuer.pem()).expect("CA written");
        Ca {
            dir: dir.to_owned(),
            name: name.to_owned(),
            issuer,
        }
    }

    pub fn pem_path(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    pub fn pem_str(&self) -> String {
        self.pem_path().to_str().expect("utf-8 path").to_owned()
    }

    /// A certificate for `localhost` and 127.0.0.1 (servers) or a client, written as
    /// `<file>.pem` and `<file>-key.pem`; `expired` makes one that ran out in 2020.
    pub fn leaf(&self, file: &str, expired: bool) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, file);
        if expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let leaf = Leaf {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}-key.pem")),
        };
        std::fs::write(&leaf.cert, cert.pem()).expect("certificate written");
        std::fs::write(&leaf.key, key.serialize_pem()).expect("key written");
        leaf
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS connection to `addr` as `localhost`, trusting `ca`, with an optional client
/// certificate.
pub async fn tls_connect(
    addr: SocketAddr,
    ca: &Path,
    client: Option<&Leaf>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA PEM")).expect("CA added");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&leaf.cert)
                    .expect("cert file")
                    .map(|c| c.expect("cert PEM"))
                    .collect(),
                PrivateKeyDer::from_pem_file(&leaf.key).expect("key PEM"),
            )
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
}

/// The certificate a TLS server presented.
pub fn served(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server presented a certificate")
        .clone()
        .into_owned()
}

pub type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A web client on `wss://localhost:PORT/ws` that has said `new`.
pub async fn wss_client(addr: SocketAddr, ca: &Path) -> Wss {
    use futures_util::SinkExt;
    let stream = tls_connect(addr, ca, None)
        .await
        .expect("TLS to the broker");
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/ws", addr.port()), stream)
            .await
            .expect("websocket over TLS");
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"type":"new","data":"client"}"#,
    ))
    .await
    .expect("hello sent");
    ws
}

/// Reads JSON messages until one matches `wanted`; panics with what it saw after `timeout`.
pub async fn wait_for(
    ws: &mut Wss,
    timeout: std::time::Duration,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) => {
                let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                if wanted(&value) {
                    return value;
                }
                seen.push(value);
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no matching message ({other:?}); saw {seen:#?}"),
        }
    }
}

/// A plain HTTP/1.1 GET over TLS; returns the status.
pub async fn https_status(addr: SocketAddr, ca: &Path, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tls_connect(addr, ca, None).await.expect("TLS");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let head = String::from_utf8_lossy(&raw);
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head}"))
}
