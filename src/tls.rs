//! TLS for our listeners (`https://`, `wss://`) and for the gateway's uplink: rustls with ring
//! (a C compiler is all a Buildroot cross build needs), PEM files, and reloading on SIGHUP.
//!
//! Server side: the certificate, key and optional client CA are read into one rustls
//! `ServerConfig`, swapped whole on reload; each new connection takes the current one, so a
//! reload never touches a connection that is already up. Handshakes run beside the accept loop
//! (a slow or silent client never holds up the next one) under a deadline and a cap.
//!
//! Client side: the broker's certificate is checked against `--broker-ca` when given (only
//! that CA: a private deployment pins its own), else against the Mozilla roots compiled into
//! the binary (`webpki-roots`). Compiled-in roots work on a Buildroot image that has no
//! `/etc/ssl` at all, where reading the system store (`rustls-native-certs`) finds nothing;
//! the price is that they age with the binary.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more wait in the kernel's accept queue.
const MAX_HANDSHAKES: usize = 256;
/// Accepted TLS connections waiting for the HTTP server to take them.
const ACCEPTED_QUEUE: usize = 64;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The files a TLS server is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate signed by one.
    pub client_ca: Option<PathBuf>,
}

/// A TLS server configuration that can be reloaded from its files.
#[derive(Debug)]
pub struct ServerTls {
    files: ServerFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Reads the files; any problem is an error naming the file.
    pub fn load(files: ServerFiles) -> anyhow::Result<Arc<Self>> {
        let config = server_config(&files)?;
        Ok(Arc::new(ServerTls {
            files,
            current: RwLock::new(Arc::new(config)),
        }))
    }

    /// Reads the files again. On error the configuration in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = server_config(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    pub fn requires_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn server_config(files: &ServerFiles) -> anyhow::Result<ServerConfig> {
    let chain = certificates(&files.cert)?;
    let key = private_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &files.client_ca {
        Some(path) => {
            let roots = Arc::new(root_store(path)?);
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .build()
                    .with_context(|| format!("client CA {}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).with_context(|| {
        format!(
            "the key {} does not go with the certificate {}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    // axum serves HTTP/1.1 only here; saying so lets a client that offers ALPN pick it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read PEM certificates from {}", path.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "no certificate (-----BEGIN CERTIFICATE-----) in {}",
        path.display()
    );
    Ok(chain)
}

fn private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "the private key {} can be read by other users (chmod 600 it)",
                path.display()
            );
        }
    }
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("cannot read a PEM private key from {}", path.display()))
}

fn root_store(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots
            .add(cert)
            .with_context(|| format!("not a usable CA certificate in {}", path.display()))?;
    }
    Ok(roots)
}

/// A listener that hands out TLS connections, for `axum::serve`.
pub struct TlsListener {
    accepted: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` and shakes hands with `tls`'s current configuration, until `shutdown`.
    pub fn new(
        tcp: TcpListener,
        tls: Arc<ServerTls>,
        name: &'static str,
        shutdown: CancellationToken,
    ) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, accepted) = mpsc::channel(ACCEPTED_QUEUE);
        tokio::spawn(accept_loop(tcp, tls, name, shutdown, tx));
        Ok(TlsListener { accepted, local })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    tls: Arc<ServerTls>,
    name: &'static str,
    shutdown: CancellationToken,
    tx: mpsc::Sender<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            () = tx.closed() => return,
            accepted = tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: give the system a moment.
                    tracing::warn!(listener = name, "accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Our messages are small and latency-bound (see web::serve).
        let _ = stream.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.current());
        let tx = tx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send((stream, peer)).await;
                }
                // A port probe or a scanner: connected and left without a word.
                Ok(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
                    tracing::debug!(listener = name, %peer, "closed before the TLS handshake");
                }
                Ok(Err(error)) => {
                    tracing::warn!(listener = name, %peer, "TLS handshake failed: {}", explain_server(&error));
                }
                Err(_) => {
                    tracing::info!(listener = name, %peer, "TLS handshake timed out after {HANDSHAKE_TIMEOUT:?}");
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept loop ends only at shutdown, when axum stops calling us anyway.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The watchdog's check of a TLS listener: it still accepts connections. (An HTTP request
/// would need a client certificate where the listener requires one.)
pub fn probe(name: &str, addr: SocketAddr) -> crate::runtime::notify::Probe {
    let addr = match addr.ip() {
        ip if ip.is_unspecified() && addr.is_ipv4() => {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        ip if ip.is_unspecified() => {
            SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    };
    crate::runtime::notify::Probe::new(format!("{name} at {addr} (TLS)"), move || async move {
        TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| format!("connect: {e}"))
    })
}

fn explain_server(error: &io::Error) -> String {
    use rustls::{AlertDescription, CertificateError, Error};
    match error.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
        Some(Error::NoCertificatesPresented) => {
            "the client presented no certificate, and this listener requires one (--tls-client-ca)"
                .into()
        }
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            "the client's certificate is not signed by the CA of --tls-client-ca".into()
        }
        Some(Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => "the client's certificate has expired".into(),
        Some(Error::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown,
        )) => format!(
            "the client refused our certificate ({error}): does it trust the CA that signed --tls-cert?"
        ),
        _ => error.to_string(),
    }
}

/// The files of the uplink's TLS client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFiles {
    /// PEM CA certificates to trust instead of the compiled-in roots.
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain and key, for brokers that require one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Builds the uplink's TLS client configuration from its files (read at every connection
/// attempt, so renewed certificates are picked up without a restart).
pub fn client_config(files: &ClientFiles) -> anyhow::Result<Arc<ClientConfig>> {
    let roots = match &files.ca {
        Some(path) => root_store(path)?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    let mut config = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .with_context(|| {
                format!(
                    "the key {} does not go with the certificate {}",
                    key.display(),
                    cert.display()
                )
            })?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            anyhow::bail!("a client certificate needs both --tls-client-cert and --tls-client-key")
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Opens a TLS connection to `host` over `stream`.
pub async fn connect(
    config: Arc<ClientConfig>,
    host: &str,
    stream: TcpStream,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "not a valid TLS server name"))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
}

/// Says in words what a TLS failure on the uplink means, if `error` is one.
pub fn explain_client(error: &io::Error) -> Option<String> {
    use rustls::{AlertDescription, CertificateError, Error};
    let tls = error.get_ref()?.downcast_ref::<Error>()?;
    Some(match tls {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "TLS: the broker's certificate is not signed by a CA we trust (--broker-ca, or the compiled-in public roots without it)".into()
        }
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "TLS: the broker's certificate has expired".into(),
        Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "TLS: the broker's certificate is not valid yet (is our clock right?)".into(),
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "TLS: the broker's certificate is not for the host name we connected to".into(),
        // webpki's words for a self-signed `openssl req -x509` certificate (CA:TRUE).
        Error::InvalidCertificate(CertificateError::Other(other))
            if format!("{other:?}").contains("CaUsedAsEndEntity") =>
        {
            "TLS: the broker's certificate is a CA certificate, which cannot serve as a server's: sign a server certificate with that CA and give the CA to --broker-ca".into()
        }
        Error::AlertReceived(
            AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure,
        ) => format!(
            "TLS: the broker refused us ({tls}): it requires a client certificate (--tls-client-cert, --tls-client-key)"
        ),
        Error::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown,
        ) => format!("TLS: the broker refused our client certificate ({tls})"),
        other => format!("TLS: {other}"),
    })
}

/// Reloads on SIGHUP: each of `reloads` is called in turn and logs its own outcome. Without
/// a handler SIGHUP would end the process; with one, `systemctl reload` works.
pub fn reload_on_sighup(
    supervisor: &crate::runtime::Supervisor,
    reloads: Vec<Box<dyn Fn() + Send + Sync>>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let shutdown = supervisor.shutdown_token();
    supervisor.spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                received = hangups.recv() => {
                    if received.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP received, reloading");
                    for reload in &reloads {
                        reload();
                    }
                }
            }
        }
    });
    Ok(())
}

/// A reload step for a TLS server, for [`reload_on_sighup`].
pub fn reload_step(tls: Arc<ServerTls>, name: &'static str) -> Box<dyn Fn() + Send + Sync> {
    Box::new(move || match tls.reload() {
        Ok(()) => tracing::info!(listener = name, "TLS certificate and key reloaded"),
        Err(error) => tracing::error!(
            listener = name,
            "TLS reload failed, keeping the certificate in use: {error:#}"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_mismatched_files_name_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let files = ServerFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
        };
        let error = format!("{:#}", ServerTls::load(files.clone()).expect_err("missing"));
        assert!(error.contains("cert.pem"), "{error}");
        std::fs::write(&cert, "not pem").expect("write");
        std::fs::write(&key, "not pem").expect("write");
        let error = format!("{:#}", ServerTls::load(files).expect_err("empty"));
        assert!(error.contains("no certificate"), "{error}");
        let error = format!(
            "{:#}",
            client_config(&ClientFiles {
                ca: None,
                cert: Some(cert),
                key: None
            })
            .expect_err("half a client certificate")
        );
        assert!(error.contains("--tls-client-key"), "{error}");
    }

    #[test]
    fn the_compiled_in_roots_are_there() {
        assert!(webpki_roots::TLS_SERVER_ROOTS.len() > 100);
        client_config(&ClientFiles::default()).expect("public roots");
    }
}
