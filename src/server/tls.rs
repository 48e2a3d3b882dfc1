//! [`TlsConfig`]: the certificate and key a listener offers over STARTTLS or implicit TLS,
//! loaded from PEM files with errors that say what is wrong.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// A listener's TLS settings: a rustls server configuration (ring provider, TLS 1.2 and
/// 1.3), shared by all its connections.
///
/// Clones share one slot: [`reload_pem_files`](Self::reload_pem_files) or
/// [`replace`](Self::replace) on any clone (the one given to `ServerOptions::tls`, kept by
/// the caller, from any thread) changes the certificate for the connections that start TLS
/// afterwards; connections already encrypted keep theirs. This is how the `smtpd` command
/// renews its certificate on SIGHUP.
#[derive(Clone)]
pub struct TlsConfig {
    current: Arc<Mutex<Arc<ServerConfig>>>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

/// Why a certificate and key could not be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A file could not be read or parsed as PEM.
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The certificate file holds no certificate.
    NoCertificate(PathBuf),
    /// rustls refused the pair (the key does not belong to the certificate, an unsupported
    /// key type).
    Refused(String),
}

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsConfigError::Read { path, reason } => {
                write!(f, "cannot read {}: {reason}", path.display())
            }
            TlsConfigError::NoCertificate(path) => {
                write!(f, "no PEM certificate in {}", path.display())
            }
            TlsConfigError::Refused(reason) => {
                write!(f, "certificate and key cannot be used together: {reason}")
            }
        }
    }
}

impl std::error::Error for TlsConfigError {}

fn pem_reason(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind".into(),
        other => format!("{other:?}"),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsConfig {
    /// Loads a certificate chain (PEM, leaf first) and its private key (PEM: PKCS#8, PKCS#1
    /// or SEC1).
    ///
    /// # Errors
    /// A missing or unreadable file, a file without a certificate or key, or a key that does
    /// not match the certificate.
    pub fn from_pem_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsConfig, TlsConfigError> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| TlsConfigError::Read {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        };
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsConfigError::Read {
                path: cert.to_owned(),
                reason: pem_reason(e),
            })?;
        if certs.is_empty() {
            return Err(TlsConfigError::NoCertificate(cert.to_owned()));
        }
        let key_der =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsConfigError::Read {
                path: key.to_owned(),
                reason: pem_reason(e),
            })?;
        TlsConfig::from_der(certs, key_der)
    }

    /// From a DER certificate chain (leaf first) and private key.
    ///
    /// # Errors
    /// A key that does not match the certificate, or that rustls cannot use.
    pub fn from_der(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<TlsConfig, TlsConfigError> {
        let provider = provider();
        let signing = provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| TlsConfigError::Refused(e.to_string()))?;
        let certified = rustls::sign::CertifiedKey::new(certs.clone(), signing);
        certified
            .keys_match()
            .map_err(|e| TlsConfigError::Refused(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsConfigError::Refused(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsConfigError::Refused(e.to_string()))?;
        Ok(TlsConfig::from_rustls(Arc::new(server)))
    }

    /// A rustls configuration of your own (client certificates, ALPN, another certificate
    /// resolver).
    pub fn from_rustls(server: Arc<ServerConfig>) -> TlsConfig {
        TlsConfig {
            current: Arc::new(Mutex::new(server)),
        }
    }

    /// The rustls configuration new handshakes use now.
    pub fn rustls(&self) -> Arc<ServerConfig> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes every clone of this configuration use `other`'s certificate (and settings) from
    /// the next handshake on.
    pub fn replace(&self, other: &TlsConfig) {
        let new = other.rustls();
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = new;
    }

    /// Loads a new certificate and key as [`from_pem_files`](Self::from_pem_files) and, if
    /// they are good, uses them from the next handshake on.
    ///
    /// # Errors
    /// As [`from_pem_files`](Self::from_pem_files); the certificate in use is then kept.
    pub fn reload_pem_files(
        &self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<(), TlsConfigError> {
        let new = TlsConfig::from_pem_files(cert, key)?;
        self.replace(&new);
        Ok(())
    }
}
