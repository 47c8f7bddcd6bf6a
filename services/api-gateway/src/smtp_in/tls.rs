//! The submission listeners' certificate: `submission.tls_cert` + `tls_key` (PEM), or, with
//! neither set, a self-signed one for `smtp.helo_name` generated at start. Clients that verify
//! certificates need a real one; the log says when it is self-signed.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use super::SmtpInError;

/// The acceptor for both listeners.
pub fn acceptor(cert: &Path, key: &Path, hostname: &str) -> Result<TlsAcceptor, SmtpInError> {
    let (chain, key) = match (cert.as_os_str().is_empty(), key.as_os_str().is_empty()) {
        (true, true) => {
            tracing::warn!(
                hostname,
                "submission: no submission.tls_cert configured; using a self-signed certificate generated at start"
            );
            self_signed(hostname)?
        }
        (false, false) => (read_chain(cert)?, read_key(key)?),
        _ => return Err(SmtpInError::HalfConfigured),
    };
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn self_signed(
    hostname: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), SmtpInError> {
    let name = if hostname.is_empty() { "localhost" } else { hostname };
    let certified = rcgen::generate_simple_self_signed(vec![name.to_string()])?;
    let key = PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
    Ok((vec![certified.cert.der().clone()], PrivateKeyDer::Pkcs8(key)))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, SmtpInError> {
    let pem = read(path, "submission.tls_cert")?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("submission.tls_cert", path, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error("submission.tls_cert", path, "holds no CERTIFICATE block".into()));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, SmtpInError> {
    let pem = read(path, "submission.tls_key")?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| pem_error("submission.tls_key", path, format!("no private key: {e}")))
}

fn read(path: &Path, key: &'static str) -> Result<Vec<u8>, SmtpInError> {
    std::fs::read(path).map_err(|source| SmtpInError::Read {
        key,
        path: path.display().to_string(),
        source,
    })
}

fn pem_error(key: &'static str, path: &Path, message: String) -> SmtpInError {
    SmtpInError::Pem { key, path: path.display().to_string(), message }
}
