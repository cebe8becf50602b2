//! What workers and the CLI trust: the pinned server key, or else the
//! machine's CA certificates.

use crate::{provider, spki_pin, TlsError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use std::sync::Arc;

/// A client configuration: with `pin`, only a server whose certificate
/// carries that key is accepted (its name and issuer do not matter: the
/// pin is the trust); without, the usual check against the machine's CAs.
///
/// For `https://`/`wss://` addresses only: see [`needed`].
pub fn config(pin: Option<&str>) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match pin {
        Some(p) => Arc::new(PinnedVerifier {
            pin: crate::parse_pin(p)?,
            provider: Arc::clone(&provider),
        }),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::NoRoots);
            }
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(config)
}

/// Whether a connection to `url` needs a TLS configuration (a pin given
/// for a plain-HTTP address is an error the caller reports).
pub fn needed(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("wss://")
}

/// Why a connection failed verification, in words, if a certificate
/// problem (anywhere in `err`'s chain) was the cause.
pub fn refusal(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(describe(tls));
        }
        // An io::Error hides what it wraps from `source()`.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

fn describe(err: &rustls::Error) -> String {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other))) => {
            match other.downcast_ref::<PinMismatch>() {
                Some(m) => m.to_string(),
                None => other.to_string(),
            }
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "it is not signed by a CA this machine trusts: if the server made its own (`--tls self-signed`), pass its pin with --tls-pin or HERD_TLS_PIN (`herd server` prints it)".into()
        }
        other => other.to_string(),
    }
}

/// The server presented a key other than the pinned one.
#[derive(Debug)]
pub struct PinMismatch {
    pub expected: String,
    pub presented: String,
}

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server's certificate has the key {}, not the pinned {}: if its certificate was replaced on purpose, ask its admin for the new pin (`herd server` prints it); otherwise someone may be intercepting the connection",
            self.presented, self.expected
        )
    }
}

impl std::error::Error for PinMismatch {}

#[derive(Debug)]
struct PinnedVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = spki_pin(end_entity).map_err(|_| CertificateError::BadEncoding)?;
        // Pins are public; equality of two public strings needs no
        // constant-time compare.
        if presented == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(CertificateError::Other(OtherError(Arc::new(PinMismatch {
                expected: self.pin.clone(),
                presented,
            })))
            .into())
        }
    }

    // The handshake signatures prove the server holds the pinned key.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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
