//! TLS and login towards an external MQTT broker: a rustls client configuration on ring (no
//! process-wide crypto provider is installed, so nothing else in the process is affected) and
//! the password read from a file.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// A client configuration that trusts the CA certificates in `ca_file` (PEM), or the
/// system's roots without one.
pub fn client_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("cannot read the MQTT CA file {}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                bail!(
                    "the MQTT CA file {} holds no usable certificate",
                    path.display()
                );
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "some system root certificates are unreadable");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                bail!(
                    "no system root certificates found for MQTT over TLS \
                     (install ca-certificates, or give the broker's CA with --mqtt-ca)"
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("no TLS protocol version available")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The password in `path`: its first line, without the line end (what `echo secret > file`
/// writes). An empty file is an error rather than an empty password.
pub fn password_from_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the MQTT password file {}", path.display()))?;
    let password = text.lines().next().unwrap_or_default();
    if password.is_empty() {
        bail!("the MQTT password file {} is empty", path.display());
    }
    Ok(password.to_owned())
}

/// What a failed connection means for the operator, when retrying cannot fix it by itself:
/// a refused login or a certificate that does not check out. `None` for the ordinary
/// failures (broker down, network) that only need time.
pub fn explain(error: &rumqttc::ConnectionError) -> Option<String> {
    use rumqttc::ConnectReturnCode as Code;
    match error {
        rumqttc::ConnectionError::ConnectionRefused(code) => Some(match code {
            Code::BadUserNamePassword | Code::NotAuthorized => format!(
                "the MQTT broker refused the login ({code:?}): check the user name and password"
            ),
            other => format!("the MQTT broker refused the connection ({other:?})"),
        }),
        rumqttc::ConnectionError::Tls(tls) => {
            let text = tls.to_string();
            Some(if text.contains("certificate") {
                format!(
                    "the MQTT broker's TLS certificate is not trusted ({text}): check --mqtt-ca \
                     and the broker's host name"
                )
            } else {
                format!("TLS to the MQTT broker failed: {text}")
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_the_first_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("password");
        std::fs::write(&path, "s3cret word\nignored\n").expect("write");
        assert_eq!(password_from_file(&path).expect("read"), "s3cret word");
        std::fs::write(&path, "\n").expect("write");
        let error = password_from_file(&path).expect_err("empty").to_string();
        assert!(error.contains("is empty"), "{error}");
        let error = password_from_file(&dir.path().join("none"))
            .expect_err("missing")
            .to_string();
        assert!(
            error.contains("cannot read the MQTT password file"),
            "{error}"
        );
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let error = format!("{:#}", client_config(Some(&path)).expect_err("no cert"));
        assert!(error.contains("no usable certificate"), "{error}");
        let error = format!(
            "{:#}",
            client_config(Some(&dir.path().join("none"))).expect_err("missing")
        );
        assert!(error.contains("cannot read the MQTT CA file"), "{error}");
    }
}
