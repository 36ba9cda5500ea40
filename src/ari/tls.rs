//! TLS client settings for ARI over `https` / `wss`.
//!
//! Owns: building the one rustls [`ClientConfig`] that both the REST client
//! (reqwest, `use_preconfigured_tls`) and the events WebSocket (tokio-tungstenite,
//! `Connector::Rustls`) use: the webpki (Mozilla) roots, plus every certificate of
//! `asterisk.ca_file` (PEM, may hold several), or, only when `asterisk.ssl_verify` is
//! set to `false` explicitly, a verifier that accepts any certificate (with one
//! warning per process). Must not: open sockets, log certificate contents or
//! credentials, or turn verification off for any reason other than `ssl_verify:
//! false`. The crypto provider is rustls' `ring`, chosen explicitly so the process
//! default provider never matters.

#![forbid(unsafe_code)]

use std::sync::{Arc, Once};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::error::AriError;
use crate::config::AsteriskConfig;

/// Largest `ca_file` read (4 MiB); a CA bundle is a few hundred KiB.
pub const MAX_CA_FILE_BYTES: u64 = 4 * 1024 * 1024;

static NO_VERIFY_WARNING: Once = Once::new();

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the TLS client configuration for ARI from `asterisk.ca_file` and
/// `asterisk.ssl_verify`.
///
/// Called once when the REST client and the events task are set up (for `https`;
/// calling it for `http` is harmless). Returns [`AriError::Config`] when `ca_file`
/// cannot be read or holds no usable certificate.
pub fn client_config(cfg: &AsteriskConfig) -> Result<Arc<ClientConfig>, AriError> {
    if !cfg.ssl_verify {
        return insecure_client_config();
    }
    let pem = match &cfg.ca_file {
        Some(path) => Some(read_ca_file(path)?),
        None => None,
    };
    client_config_with_ca_pem(pem.as_deref())
}

/// A configuration that trusts the webpki roots plus every certificate in `ca_pem`
/// (PEM text; `None` for the roots alone). [`AriError::Config`] when `ca_pem` holds
/// no certificate or one rustls refuses.
pub fn client_config_with_ca_pem(ca_pem: Option<&[u8]>) -> Result<Arc<ClientConfig>, AriError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = ca_pem {
        let mut added = 0usize;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| AriError::Config {
                detail: format!("asterisk.ca_file: bad PEM: {e}"),
            })?;
            roots.add(cert).map_err(|e| AriError::Config {
                detail: format!("asterisk.ca_file: certificate refused: {e}"),
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(AriError::Config {
                detail: "asterisk.ca_file holds no PEM certificate".to_string(),
            });
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| AriError::Internal {
            detail: format!("rustls protocol versions: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A configuration that accepts any server certificate (signatures on the handshake
/// are still checked). Used only for `ssl_verify: false`; logs a warning the first
/// time it is built in the process.
pub fn insecure_client_config() -> Result<Arc<ClientConfig>, AriError> {
    NO_VERIFY_WARNING.call_once(|| {
        tracing::warn!(
            "asterisk.ssl_verify is false: the ARI TLS certificate is NOT verified; \
             anyone on the path can read the ARI credentials and calls"
        );
    });
    let provider = provider();
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| AriError::Internal {
            detail: format!("rustls protocol versions: {e}"),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert { provider }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn read_ca_file(path: &str) -> Result<Vec<u8>, AriError> {
    let meta = std::fs::metadata(path).map_err(|e| AriError::Config {
        detail: format!("asterisk.ca_file {path:?}: {e}"),
    })?;
    if meta.len() > MAX_CA_FILE_BYTES {
        return Err(AriError::Config {
            detail: format!(
                "asterisk.ca_file {path:?} is {} bytes, over the {MAX_CA_FILE_BYTES}-byte limit",
                meta.len()
            ),
        });
    }
    std::fs::read(path).map_err(|e| AriError::Config {
        detail: format!("asterisk.ca_file {path:?}: {e}"),
    })
}

/// Accepts any certificate chain; still checks handshake signatures so the peer
/// holds the key of the certificate it showed.
#[derive(Debug)]
struct AcceptAnyCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A throw-away self-signed CA (openssl, EC P-256); never used for anything real.
    const TEST_CA: &str = include_str!("testdata/test_ca.pem");

    #[test]
    fn default_roots_build() {
        let cfg = AsteriskConfig::default();
        assert!(client_config(&cfg).is_ok());
    }

    #[test]
    fn ca_pem_is_added() {
        let two = format!("{TEST_CA}\n{TEST_CA}");
        assert!(client_config_with_ca_pem(Some(two.as_bytes())).is_ok());
    }

    #[test]
    fn bad_ca_is_a_config_error() {
        let e = client_config_with_ca_pem(Some(b"no pem here")).unwrap_err();
        assert!(matches!(e, AriError::Config { .. }), "{e}");
        let cfg = AsteriskConfig {
            ca_file: Some("/nonexistent/voxd-ca.pem".into()),
            ..AsteriskConfig::default()
        };
        let e = client_config(&cfg).unwrap_err();
        assert_eq!(e.as_label(), "config");
    }

    #[test]
    fn no_verify_builds() {
        let cfg = AsteriskConfig {
            ssl_verify: false,
            ..AsteriskConfig::default()
        };
        assert!(client_config(&cfg).is_ok());
        assert!(client_config(&cfg).is_ok());
    }
}
