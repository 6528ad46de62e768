//! TLS: the server side of a node's HTTP port, and the trust every HTTP client of a node (and
//! of its peons) places in the cluster's certificate authority.
//!
//! A node with `--tls-cert` and `--tls-key` serves HTTPS only: a client speaking plain HTTP to
//! it fails the handshake and gets no answer. Every client this process builds through
//! [`client_builder`] trusts the system's roots and the CA given with [`trust`]
//! (`--tls-ca`), which is how nodes reach each other over HTTPS with a private CA. A worker
//! hands the CA to its peons in [`CA_ENV`].

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Environment variable naming the CA's PEM file for the peons of a worker.
pub const CA_ENV: &str = "RAFTLORD_TLS_CA";

/// Certificates trusted beside the system's roots.
static TRUSTED: RwLock<Vec<reqwest::Certificate>> = RwLock::new(Vec::new());

/// Trusts the certificates of the PEM file `ca` in every client built from now on.
pub fn trust(ca: &Path) -> Result<(), String> {
    let pem = std::fs::read(ca).map_err(|e| format!("cannot read the CA file {}: {e}", ca.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("the CA file {} holds no usable PEM certificate: {e}", ca.display()))?;
    if certs.is_empty() {
        return Err(format!("the CA file {} holds no certificate", ca.display()));
    }
    TRUSTED.write().unwrap_or_else(|p| p.into_inner()).extend(certs);
    Ok(())
}

/// Trusts the CA named in [`CA_ENV`], if any (a peon, started by a worker with TLS on).
pub fn trust_from_env() -> Result<(), String> {
    match std::env::var_os(CA_ENV) {
        Some(path) if !path.is_empty() => trust(Path::new(&path)),
        _ => Ok(()),
    }
}

/// A client builder that trusts the system's roots and the cluster's CA.
pub fn client_builder() -> reqwest::ClientBuilder {
    let trusted = TRUSTED.read().unwrap_or_else(|p| p.into_inner());
    trusted
        .iter()
        .fold(reqwest::Client::builder(), |b, c| b.add_root_certificate(c.clone()))
}

/// The server side of TLS for the certificate chain in `cert` and the private key in `key`
/// (PEM files).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("cannot read the certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("cannot read the key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not make a usable pair: {e}"))?;
    Ok(Arc::new(config))
}
