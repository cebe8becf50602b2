//! TLS for both ends of herd.
//!
//! - [`server`]: the server's certificate, from files (`--tls-cert/--tls-key`)
//!   or made on first start (`--tls self-signed`: a CA and a certificate it
//!   signs, kept in the data directory).
//! - [`client`]: what workers and the CLI trust. With a pin, exactly the
//!   server key it names (no trust on first use, no CA needed); without
//!   one, the machine's CA certificates.
//!
//! A pin reads `sha256//BASE64`: the SHA-256 of the certificate's public
//! key (its SubjectPublicKeyInfo), the form `curl --pinnedpubkey` takes, so
//! the install one-liner checks the same pin with curl before it runs
//! anything and hands it to the worker.
//!
//! Architecture invariant: every TLS connection herd makes or takes uses
//! the ring provider given explicitly here, never a process default.

pub mod client;
pub mod server;

use base64::Engine;
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no {what} in PEM form (-----BEGIN …-----)")]
    NoPem {
        path: std::path::PathBuf,
        what: &'static str,
    },
    #[error("{0} is not an X.509 certificate: {1}")]
    BadCertificate(String, String),
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("`{0}` is not a pin: a pin reads sha256// and the base64 of 32 bytes (as `herd server` prints it)")]
    BadPin(String),
    #[error("this machine has no CA certificates to check the server with: install ca-certificates, or pass the server's pin (--tls-pin)")]
    NoRoots,
}

/// The provider of every TLS configuration herd makes.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The pin of a certificate (DER): `sha256//` and the base64 of the
/// SHA-256 of its SubjectPublicKeyInfo.
pub fn spki_pin(cert_der: &[u8]) -> Result<String, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| TlsError::BadCertificate("the certificate".into(), e.to_string()))?;
    Ok(pin_of_spki(cert.tbs_certificate.subject_pki.raw))
}

fn pin_of_spki(spki_der: &[u8]) -> String {
    format!(
        "sha256//{}",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki_der))
    )
}

/// Checks the form of a pin given by a person; returns it trimmed.
pub fn parse_pin(text: &str) -> Result<String, TlsError> {
    let t = text.trim();
    let ok = t.strip_prefix("sha256//").is_some_and(|b64| {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .is_ok_and(|bytes| bytes.len() == 32)
    });
    if ok {
        Ok(t.to_string())
    } else {
        Err(TlsError::BadPin(t.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_checked_for_form() {
        let pin = pin_of_spki(b"key");
        assert_eq!(parse_pin(&format!(" {pin}\n")).expect("a pin"), pin);
        for bad in [
            "",
            "sha256//",
            "sha1//AAAA",
            "sha256//not base64!",
            "sha256//AAAA",
        ] {
            assert!(parse_pin(bad).is_err(), "{bad}");
        }
    }
}
