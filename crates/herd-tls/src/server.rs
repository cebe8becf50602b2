//! The server's certificate: from files, or a CA and a certificate made on
//! first start and kept (so the pin stays the same across restarts).

use crate::{provider, spki_pin, TlsError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A loaded certificate, ready to accept connections.
pub struct ServerCert {
    pub config: Arc<rustls::ServerConfig>,
    /// What clients pin (`sha256//…`).
    pub pin: String,
    pub cert_path: PathBuf,
    /// The CA that signed a self-signed setup's certificate (to install in
    /// a browser's or machine's trust store, if wanted).
    pub ca_path: Option<PathBuf>,
}

/// Reads a certificate chain and its key, both PEM.
pub fn from_files(cert: &Path, key: &Path) -> Result<ServerCert, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoPem {
            path: cert.to_path_buf(),
            what: "certificate",
        });
    };
    let pin = spki_pin(leaf)
        .map_err(|e| TlsError::BadCertificate(cert.display().to_string(), e.to_string()))?;
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|_| TlsError::NoPem {
        path: key.to_path_buf(),
        what: "private key",
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServerCert {
        config: Arc::new(config),
        pin,
        cert_path: cert.to_path_buf(),
        ca_path: None,
    })
}

/// `--tls self-signed`: the certificate in `dir` (DATA/tls), made on first
/// start for `names` (host names and addresses the server is reached by).
pub fn self_signed(dir: &Path, names: &[String]) -> Result<ServerCert, TlsError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let ca = dir.join("ca.pem");
    if !cert.exists() || !key.exists() {
        make_self_signed(dir, names)?;
    }
    let mut loaded = from_files(&cert, &key)?;
    loaded.ca_path = ca.exists().then_some(ca);
    Ok(loaded)
}

fn make_self_signed(dir: &Path, names: &[String]) -> Result<(), TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "herd server CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let mut names: Vec<String> = names.to_vec();
    for n in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|m| m == n) {
            names.push(n.to_string());
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "herd server");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer)?;

    let files = [
        ("ca.pem", ca_cert.pem(), false),
        ("ca-key.pem", ca_key.serialize_pem(), true),
        (
            "cert.pem",
            format!("{}{}", cert.pem(), ca_cert.pem()),
            false,
        ),
        ("key.pem", key.serialize_pem(), true),
    ];
    for (name, text, private) in files {
        let path = dir.join(name);
        write_file(&path, &text, private).map_err(write_err(&path))?;
    }
    Ok(())
}

fn write_file(path: &Path, text: &str, private: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_setup_is_made_once_and_keeps_its_pin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = dir.path().join("tls");
        let first = self_signed(&tls, &["herd.example".into()]).expect("made");
        let again = self_signed(&tls, &[]).expect("loaded");
        assert_eq!(first.pin, again.pin, "a restart keeps the certificate");
        assert!(crate::parse_pin(&first.pin).is_ok());
        assert_eq!(again.ca_path.as_deref(), Some(tls.join("ca.pem").as_path()));
        use std::os::unix::fs::PermissionsExt;
        for private in ["key.pem", "ca-key.pem"] {
            let mode = std::fs::metadata(tls.join(private))
                .expect("exists")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{private}");
        }
    }

    #[test]
    fn missing_or_wrong_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("c.pem");
        let err = from_files(&cert, &cert).err().expect("missing").to_string();
        assert!(err.contains("c.pem"), "{err}");
        std::fs::write(&cert, "not pem").expect("write");
        let err = from_files(&cert, &cert).err().expect("not pem").to_string();
        assert!(err.contains("no certificate"), "{err}");
    }
}
