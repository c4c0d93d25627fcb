//! Fixtures shared by the delivery tests: registries from text, RSA keys, a test PKI.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::{EndpointError, EndpointRegistry};

/// A registry from `text`, with environment variables taken from `env` only.
pub fn registry_with_env(
    text: &str,
    dir: &Path,
    env: &[(&str, &str)],
) -> Result<EndpointRegistry, EndpointError> {
    let lookup = |name: &str| {
        env.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (*v).to_string())
            .ok_or(std::env::VarError::NotPresent)
    };
    EndpointRegistry::from_toml_reusing(text, dir, "endpoints.toml", None, &lookup)
}

/// A registry from `text` that must be valid.
pub fn registry(text: &str, dir: &Path) -> EndpointRegistry {
    registry_with_env(text, dir, &[]).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Writes `contents` to `dir/name`.
pub fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write fixture");
    path
}

/// A 2048-bit RSA key pair (private PKCS#8 PEM, public SPKI PEM), made once per test
/// run: RSA generation is the slow part.
pub fn rsa_key() -> &'static (String, String) {
    static KEY: OnceLock<(String, String)> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .expect("RSA key generation (rcgen with aws-lc-rs)");
        (key.serialize_pem(), key.public_key_pem())
    })
}

/// A certificate and its key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: rustls_pki_types::CertificateDer<'static>,
    pub key_der: rustls_pki_types::PrivateKeyDer<'static>,
}

/// A test CA that issues server certificates for 127.0.0.1 and localhost, and client
/// certificates.
pub struct TestCa {
    pub cert: Issued,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        let issued = issued(cert, &key);
        TestCa {
            cert: issued,
            issuer: Issuer::new(params, key),
        }
    }

    pub fn server_certificate(&self) -> Issued {
        self.issue(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    pub fn client_certificate(&self) -> Issued {
        self.issue(Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, names: Vec<String>, usage: ExtendedKeyUsagePurpose) -> Issued {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "sprig test");
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        issued(cert, &key)
    }
}

fn issued(cert: rcgen::Certificate, key: &KeyPair) -> Issued {
    Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().clone(),
        key_der: rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    }
}
