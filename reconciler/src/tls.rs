//! TLS, both sides, with one rustls and one crypto provider (`ring`): the Master's HTTPS
//! certificate and key (`[master.tls]`), and the extra trust anchors of requests and fetches over
//! https (reqwest's platform verifier does the rest).
//!
//! The provider is installed process-wide by [`install_provider`] because reqwest (built with
//! `rustls-no-provider`, under gix's HTTP transport) takes the process default when it builds any
//! client, plain-HTTP ones included, and panics if there is none.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read the {what}: {error}")]
    Read {
        path: PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
    #[error("{path}: not a PEM {what}: {error}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        error: rustls::pki_types::pem::Error,
    },
    #[error("{path}: no {expected} in this file")]
    Missing {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{certificate} and {key} cannot be used together: {error}")]
    Unusable {
        certificate: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
}

/// Makes `ring` the process's rustls provider. Idempotent; call it before anything builds an
/// HTTP client (`main` does, first thing).
pub fn install_provider() {
    // Err means a provider is already installed (ours, by an earlier call): nothing to do.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.to_owned(),
        what,
        error,
    })
}

/// Every certificate of a PEM file, in order (a chain: the server's own first). At least one.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let what = "certificate";
    let pem = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem {
            path: path.to_owned(),
            what,
            error,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            path: path.to_owned(),
            expected: "`-----BEGIN CERTIFICATE-----` block",
        });
    }
    Ok(certs)
}

/// The Master's server configuration: the certificate chain and private key of `[master.tls]`,
/// TLS 1.2 and 1.3, HTTP/1.1 (the only protocol the Master speaks).
pub fn server_config(
    certificate: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = certificates(certificate)?;
    let what = "private key";
    let pem = read(key, what)?;
    let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|error| match error {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Missing {
            path: key.to_owned(),
            expected: "private key (PKCS#8 `BEGIN PRIVATE KEY`, PKCS#1 `BEGIN RSA PRIVATE KEY` \
                       or SEC1 `BEGIN EC PRIVATE KEY`)",
        },
        error => TlsError::Pem {
            path: key.to_owned(),
            what,
            error,
        },
    })?;
    let unusable = |error| TlsError::Unusable {
        certificate: certificate.to_owned(),
        key: key.to_owned(),
        error,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(unusable)?
    .with_no_client_auth()
    // Also checks that the key belongs to the certificate.
    .with_single_cert(certs, private)
    .map_err(unusable)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The certificates of `GIT_SSL_CAINFO` for reqwest (gix's HTTP transport and Steward's own
/// requests), to merge into the platform's trust store as git does.
pub fn reqwest_extra_roots() -> Result<Vec<reqwest::Certificate>, String> {
    let Some(path) = ca_file_from_env() else {
        return Ok(Vec::new());
    };
    certificates(&path)
        .map_err(|e| format!("GIT_SSL_CAINFO: {e}"))?
        .into_iter()
        .map(|der| reqwest::Certificate::from_der(&der))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("GIT_SSL_CAINFO={}: {e}", path.display()))
}

/// The CA file named by `GIT_SSL_CAINFO` (git's own variable, so one setting serves `git` and
/// Steward's fetches), if set and not empty.
pub fn ca_file_from_env() -> Option<PathBuf> {
    std::env::var_os("GIT_SSL_CAINFO")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_the_reason() {
        let dir = std::env::temp_dir().join(format!("steward-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let missing = dir.join("missing.pem");
        let e = server_config(&missing, &missing).expect_err("missing");
        let text = e.to_string();
        assert!(
            text.contains("missing.pem: cannot read the certificate"),
            "{text}"
        );

        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").expect("write");
        let text = server_config(&empty, &empty)
            .expect_err("empty")
            .to_string();
        assert!(
            text.contains("empty.pem: no `-----BEGIN CERTIFICATE-----`"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
